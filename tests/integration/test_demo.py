"""`streamer demo` end to end: embedded S3, real service, the spike alert is seen, exit 0."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.integration.conftest import free_port, parse_metrics

pytestmark = pytest.mark.integration


def test_demo_shows_the_spike_alert_and_exits_zero() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "demo", "--duration", "35", "--spike-after", "8", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = {}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not metrics.get("vpcflow_records_total"):
            with contextlib.suppress(OSError):
                metrics = parse_metrics(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
            time.sleep(0.5)
        assert metrics.get("vpcflow_records_total"), "demo never served counters"
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "ALERT VPCFlowRejectSpike" in out
    assert "demo finished: alert seen for eni-" in out
    assert "Traceback" not in err
