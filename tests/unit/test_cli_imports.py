"""Cold start: each command imports only what it uses (bench/run.py --cold-start measures the time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LINE = "2 123456789010 eni-0a1b2c3d4e5f60718 10.0.0.5 203.0.113.9 443 51000 6 10 8400 1700000000 1700000060 REJECT OK\n"

#: Each run in a fresh interpreter; the modules loaded once the command returned go to stderr's last line.
PROBE = """
import json, sys
from streamer.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def loaded(*argv: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True, timeout=60)
    doc = json.loads(out.stderr.strip().splitlines()[-1])
    assert doc["code"] == 0, out.stderr
    return set(doc["modules"])


def heavy(modules: set[str], *roots: str) -> set[str]:
    return {m for m in modules if m.split(".")[0] in roots}


def test_help_loads_no_heavy_module() -> None:
    modules = loaded("--help")
    assert heavy(modules, "pyarrow", "numpy", "pydantic", "asyncio", "aiohttp", "aiobotocore", "botocore") == set()


def test_replay_loads_no_config_service_or_aws_module(tmp_path: Path) -> None:
    path = tmp_path / "one.log"
    path.write_text(LINE)
    modules = loaded("replay", "--output", "json", str(path))
    assert "pyarrow.csv" in modules  # it did decode
    assert heavy(modules, "pydantic", "asyncio", "aiohttp", "aiobotocore", "botocore", "prometheus_client", "psycopg") == set()
    assert "pyarrow.parquet" not in modules  # only a Parquet object needs it


def test_one_line_replay_loads_no_masked_arrays(tmp_path: Path) -> None:
    """The line is a rejected possible reply: its example and waiting row go to Arrow without numpy.ma
    (`pa.array` of a numpy array imports it: a tenth of the start-up)."""
    path = tmp_path / "one.log"
    path.write_text(LINE)
    modules = loaded("replay", "--output", "json", str(path))
    assert "streamer.aggregate.pairing" in modules  # the insights ran
    assert "numpy.ma" not in modules
    assert "streamer.aggregate.detection" not in modules  # no --alerts: no detector
    assert "streamer.aggregate.anomaly" not in modules


def test_config_from_an_outputs_file_loads_no_aws_client_or_pydantic(tmp_path: Path) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"SourceType": "s3_sqs", "Region": "us-east-1", "QueueUrl": "https://sqs/q"}))
    modules = loaded("config-from-stack", "--outputs", str(path))
    assert heavy(modules, "pyarrow", "pydantic", "asyncio", "aiobotocore", "botocore") == set()


def test_one_line_replay_loads_no_datasets_filesystems_or_tls(tmp_path: Path) -> None:
    """Arrow's query engine (every group_by) imports pyarrow.dataset when it can: filesystems, TLS and
    Parquet encryption, about a tenth of the start-up; replay groups tables only."""
    path = tmp_path / "one.log"
    path.write_text(LINE)
    modules = loaded("replay", "--output", "json", str(path))
    assert "pyarrow.acero" in modules  # it did group
    assert {"pyarrow.dataset", "pyarrow._dataset", "pyarrow.fs", "pyarrow._fs", "ssl"} & modules == set()


def test_a_parquet_replay_still_loads_datasets_after_the_query_engine(tmp_path: Path) -> None:
    """Loading the query engine without pyarrow.dataset leaves that module importable later."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "one.parquet"
    fields = LINE.split()
    names = ["version", "account_id", "interface_id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol",
             "packets", "bytes", "start", "end", "action", "log_status"]  # fmt: skip
    ints = {"version", "srcport", "dstport", "protocol", "packets", "bytes", "start", "end"}
    pq.write_table(pa.table({n: [int(v)] if n in ints else [v] for n, v in zip(names, fields, strict=True)}), path)
    probe = PROBE.replace("print(json", "import pyarrow.dataset as ds; assert ds.dataset\nprint(json")
    out = subprocess.run(
        [sys.executable, "-c", probe, "replay", "--output", "json", str(path)], capture_output=True, text=True, timeout=60
    )
    doc = json.loads(out.stderr.strip().splitlines()[-1])
    assert doc["code"] == 0, out.stderr
    assert "pyarrow.acero" in doc["modules"]
    assert "pyarrow.dataset" in doc["modules"]
