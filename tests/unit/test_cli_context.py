"""`streamer replay --output json` carries the ENI context the records hold (a real subprocess)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

FIELDS = "version account-id interface-id instance-id vpc-id subnet-id az-id interface-type srcaddr dstaddr action log-status"
LINES = [
    "9 111111111111 eni-a i-0123 vpc-1 subnet-1 use1-az1 interface 10.0.0.1 10.0.0.2 ACCEPT OK",
    "9 111111111111 eni-b - vpc-1 subnet-2 use1-az2 nat_gateway 10.0.0.3 10.0.0.4 REJECT OK",
    "9 111111111111 eni-c - vpc-1 subnet-2 use1-az2 lambda 10.0.0.5 10.0.0.6 ACCEPT OK",
]


def test_replay_json_names_what_each_eni_is(tmp_path: Path) -> None:
    path = tmp_path / "a.log.gz"
    path.write_bytes(gzip.compress((FIELDS + "\n" + "\n".join(LINES) + "\n").encode()))
    proc = subprocess.run(
        [sys.executable, "-m", "streamer", "replay", "--output", "json", str(path)], capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    context = json.loads(proc.stdout)["context"]
    assert context["eni-a"] == {
        "interface_id": "eni-a",
        "account_id": "111111111111",
        "instance_id": "i-0123",
        "vpc_id": "vpc-1",
        "subnet_id": "subnet-1",
        "az": "use1-az1",
        "interface_type": "interface",
    }
    assert context["eni-b"]["interface_type"] == "nat_gateway"
    assert "instance_id" not in context["eni-b"]
    assert context["eni-c"]["interface_type"] == "lambda"
