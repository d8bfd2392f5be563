"""Firehose HTTP against a real `streamer run`: malformed requests and records ahead of valid ones.

Every valid record counts exactly, each bad record is one decode error, a
malformed request is 400 (counted nowhere else), no source is ever restarted,
and no mutated body (hypothesis) gets a 500 or puts a traceback in the log.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.firehose_data import firehose_bodies
from tests.integration.conftest import Truth, exported_totals, free_port, objects_by_outcome, scrape
from tests.integration.test_firehose import (
    KEY,
    firehose_request,
    flow_lines,
    http_records,
    http_source,
    payload,
    records_total,
    wait_until_ready,
)

pytestmark = pytest.mark.integration


class Streamer:
    """A `streamer run` process with one firehose_http source; its log is kept to be read."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.log = tmp / "streamer.log"
        config = tmp / "streamer.yaml"
        source = http_source(listen_address=f"127.0.0.1:{self.port}", max_request_bytes=4 << 20)
        doc = {"http": {"listen_address": f"127.0.0.1:{self.http_port}"}, "checkpoint": {"path": str(tmp / "state.db")}}
        config.write_text(yaml.safe_dump({**doc, "sources": [source]}))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamer", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=os.environ.copy(),
            )
        wait_until_ready(self.http_port, self.proc)

    def post(self, body: bytes, gzip_body: bool = False, **extra: str) -> int:
        headers = {"X-Amz-Firehose-Access-Key": KEY, "Content-Type": "application/json", **extra}
        if gzip_body:
            headers["Content-Encoding"] = "gzip"
            body = gzip.compress(body)
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def metrics(self) -> dict[str, Any]:
        return scrape(self.http_port)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
        return int(self.proc.returncode)


@pytest.fixture
def streamer(tmp_path: Path) -> Iterator[Streamer]:
    process = Streamer(tmp_path)
    try:
        yield process
    finally:
        process.stop()


def b64(data: bytes) -> dict[str, str]:
    return {"data": base64.b64encode(data).decode()}


#: records that are each one bad input (one decode error), whatever the request around them
BAD_RECORDS: list[object] = [
    b64(gzip.compress(b'{"logEvents": 1}')),  # gzip'd payload whose logEvents is not a list
    {"data": "!!not base64!!"},
    b64(b"{garbage json"),
    b64(gzip.compress(b"{}")[:-6]),  # truncated gzip
    {"data": 7},
    "not a record",
]


def decode_errors(metrics: dict[str, Any]) -> int:
    return int(sum(metrics.get("streamer_decode_errors_total", {}).values()))


def source_errors(metrics: dict[str, Any]) -> dict[str, int]:
    return {dict(k)["reason"]: int(v) for k, v in metrics.get("streamer_source_errors_total", {}).items()}


def test_bad_requests_and_records_ahead_of_valid_ones_cost_only_themselves(streamer: Streamer) -> None:
    truth = Truth()
    assert streamer.post(b"{not json") == 400
    assert streamer.post(json.dumps({"records": []}).encode()) == 400  # no requestId
    assert streamer.post(json.dumps({"requestId": "x", "records": {"data": "e30="}}).encode()) == 400
    # Bad records first, then valid ones, in one request: 200, the valid ones counted.
    mixed = json.loads(firehose_request("mixed", http_records(truth, 1)))
    mixed["records"] = BAD_RECORDS + mixed["records"]
    assert streamer.post(json.dumps(mixed).encode()) == 200
    # A request of nothing but bad records: 200 too (nothing to retry), each counted once.
    assert streamer.post(json.dumps({"requestId": "all-bad", "records": BAD_RECORDS}).encode(), gzip_body=True) == 200
    assert streamer.post(json.dumps({"requestId": "all-bad", "records": BAD_RECORDS}).encode()) == 200  # a retry
    for i in range(2, 6):
        assert streamer.post(firehose_request(f"good-{i}", http_records(truth, i)), gzip_body=i % 2 == 0) == 200
    metrics = streamer.metrics()
    assert exported_totals(metrics) == truth.totals
    assert records_total(metrics) == sum(v[0] for v in truth.totals.values())
    assert decode_errors(metrics) == 2 * len(BAD_RECORDS)
    assert objects_by_outcome(metrics) == {"ok": 6, "duplicate": 1}
    assert source_errors(metrics) == {"bad_request": 3}
    assert streamer.stop() == 0
    log = streamer.log.read_text()
    assert "restarting" not in log
    assert "Traceback" not in log
    assert sum("request mixed:" in line for line in log.splitlines()) == 1  # logged once, with the request id


def test_an_event_message_that_is_json_costs_itself_wherever_it_is(streamer: Streamer) -> None:
    """Issue 29.1: five flow lines after a JSON message counted 0 (read as a JSON stream), before it 5."""
    truth = Truth()
    first = gzip.compress(payload(['{"x":1}', *flow_lines(truth, 5, 1)]))
    last = gzip.compress(payload([*flow_lines(truth, 5, 2), '{"x":1}']))
    assert streamer.post(firehose_request("json-first", [first])) == 200
    assert streamer.post(firehose_request("json-last", [last])) == 200
    metrics = streamer.metrics()
    assert exported_totals(metrics) == truth.totals
    assert records_total(metrics) == 10
    assert decode_errors(metrics) == 2


def test_request_ids_that_differ_only_in_half_characters_each_count_once(streamer: Streamer) -> None:
    """Issue 29.7: the second of "h-\\ud800" and "h-\\udbff" was dropped as a duplicate of the first."""
    truth = Truth()
    for i, request_id in enumerate(["h-\ud800", "h-\udbff", "h-\x00"]):
        assert streamer.post(firehose_request(request_id, [gzip.compress(payload(flow_lines(truth, 5, i)))])) == 200
    assert streamer.post(firehose_request("h-\ud800", [gzip.compress(payload(flow_lines(None, 5, 0)))])) == 200  # a retry
    metrics = streamer.metrics()
    assert objects_by_outcome(metrics) == {"ok": 3, "duplicate": 1}
    assert exported_totals(metrics) == truth.totals


FORGED = "2026-12-07 10:00:00,000 WARNING streamer.pipeline: forged"


def test_a_request_id_cannot_forge_a_log_line_and_401s_cannot_flood_the_log(streamer: Streamer) -> None:
    """Issue 29.6: a body requestId holding a newline made a line of its own; each 401 logged ~8 KB, unthrottled."""
    body = json.dumps({"requestId": f"r1\n{FORGED}", "records": BAD_RECORDS[:1]}).encode()
    assert streamer.post(body) == 200
    header_id = "h" + "x" * 8000  # a header holds no control character (aiohttp answers 400), but 8 KB, yes
    for _ in range(50):
        assert streamer.post(body, **{"X-Amz-Firehose-Access-Key": "wrong-" + KEY, "X-Amz-Firehose-Request-Id": header_id}) == 401
    assert source_errors(streamer.metrics()) == {"unauthorized": 50}  # every one counted
    assert streamer.stop() == 0
    lines = streamer.log.read_text().splitlines()
    assert not [line for line in lines if line.startswith(FORGED)]
    assert sum("request r1\\x0a2026" in line for line in lines) == 1  # the id is there, escaped
    unauthorized = [line for line in lines if "unauthorized" in line]
    assert len(unauthorized) == 1  # throttled: the first, then at most one a minute
    assert all(len(line) < 1000 for line in lines)


def test_mutated_requests_never_get_a_500_nor_a_traceback(tmp_path_factory: pytest.TempPathFactory) -> None:
    process = Streamer(tmp_path_factory.mktemp("fuzz"))
    statuses: set[int] = set()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=firehose_bodies(), gzip_body=st.booleans())
    def one(body: bytes, gzip_body: bool) -> None:
        status = process.post(body, gzip_body)
        statuses.add(status)
        assert status in (200, 400, 413), (status, body[:200])

    try:
        one()
        assert process.proc.poll() is None
        assert statuses >= {200, 400}
    finally:
        assert process.stop() == 0
    log = process.log.read_text()
    assert "Traceback" not in log
    assert "restarting" not in log
