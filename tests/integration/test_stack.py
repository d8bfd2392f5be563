"""The compose stack's logic without Docker: `streamer demo` (embedded S3, real service)
scraped by a real Prometheus that loads deploy/'s rules, sending its alert to a real
Alertmanager. The spike alert is seen and fires in Alertmanager, the demo exits 0, and
the dashboard's panels have data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "streamer.json"
#: Panels that must show data in the demo (the subnet view needs vpc-id/subnet-id, errors need errors).
MUST_HAVE_DATA = {
    "Rejected records/s per ENI",
    "Accepted records/s per ENI",
    "Top 10 rejecting ENIs (dashboard range)",
    "Bytes/s per ENI and action",
    "Reject anomaly score per ENI",
    "Reject spike alerts firing",
    "Records/s decoded per source",
    "Inputs finished per source and outcome",
    "Delivery delay (p50 / p90)",
    "Lag: since last input / behind event time",
    "NACL return rejects/s per ENI",
    "S3/DynamoDB via NAT: bytes/s and est. monthly NAT cost",
    "ENIs reachable from the internet over IPv6 (dashboard range)",
    "Egress bytes/s by traffic path",
}


def query(prometheus: str, expr: str) -> list[dict[str, object]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    doc = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def test_demo_with_prometheus_and_alertmanager(alertmanager: str, prometheus_factory: Callable[[str], str]) -> None:
    port = free_port()
    prometheus = prometheus_factory(f"127.0.0.1:{port}")
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamer",
            "demo",
            "--duration",
            "45",
            "--spike-after",
            "8",
            "--listen",
            f"127.0.0.1:{port}",
            "--alertmanager-url",
            alertmanager,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        panels = json.loads(DASHBOARD.read_text())["panels"]
        empty: set[str] = set(MUST_HAVE_DATA)
        deadline = time.monotonic() + 40
        while empty and time.monotonic() < deadline:
            time.sleep(2)
            for panel in panels:
                if panel["title"] in empty:
                    exprs = [t["expr"] for t in panel["targets"]]
                    concrete = [
                        e.replace("$__rate_interval", "1m").replace("$__range", "10m").replace("$interface", ".*") for e in exprs
                    ]
                    if any(query(prometheus, e) for e in concrete):
                        empty.discard(panel["title"])
        assert not empty, f"panels without data: {sorted(empty)}"
        out, err = demo.communicate(timeout=90)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, err[-3000:]
    assert "ALERT VPCFlowRejectSpike" in out
    assert "demo finished: alert seen for eni-" in out
    assert "Traceback" not in err
    assert "NoSuchBucket" not in err  # the demo's bucket exists before the first listing
    # A clean run: the only warnings are the scan's own.
    assert [line for line in err.splitlines() if "WARNING" in line and "reject spike on" not in line] == []
    alerts = json.loads(urllib.request.urlopen(f"{alertmanager}/api/v2/alerts", timeout=10).read())
    spikes = [a for a in alerts if a["labels"]["alertname"] == "VPCFlowRejectSpike"]
    assert len(spikes) == 1
    assert spikes[0]["status"]["state"] == "active"
    victim = out.split("alert seen for ")[1].split()[0].rstrip(",")
    assert spikes[0]["labels"]["interface_id"] == victim
    # The alert names the workload from what the records carry (instance-id, interface-type): no EC2 call.
    instance = spikes[0]["labels"]["instance_id"]
    assert instance == f"i-{victim.removeprefix('eni-')}"
    assert spikes[0]["annotations"]["interface_type"] == "interface"
    assert f"alert seen for {victim} (interface, {instance})" in out
