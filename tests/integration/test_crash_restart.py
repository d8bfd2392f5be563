"""kill -9 at any moment, restart: counters end exactly equal to the truth.

The service runs as a real process (`streamer run --config`) against moto. It
is killed with SIGKILL in the middle of its backlog several times (once a
given share of the work is committed, so the kills land mid-way), then
restarted until the backlog is done; /metrics must then equal the truth.
SIGTERM must stop it cleanly and fast, also in the middle of a slow
download. Covered for S3 polling, Kinesis and FilterLogEvents sources.
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.synth import TrafficProfile, generate_table, to_lines
from tests.integration.conftest import Truth, aws_key, boto, exported_totals, flow_object, free_port, polls, scrape
from tests.integration.slowproxy import SlowProxy

pytestmark = pytest.mark.integration


def query(db: Path, sql: str) -> int:
    """One number from the checkpoint, read-only (WAL lets us read while the service writes)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def done_objects(db: Path) -> int:
    return query(db, "SELECT count(*) FROM done")


def committed_records(db: Path) -> int:
    return query(db, "SELECT coalesce(sum(records), 0) FROM counters")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Harness:
    """One service config, started and killed as a real process; SQLite, or a fleet's PostgreSQL alone."""

    def __init__(self, tmp_path: Path, source: dict[str, Any], postgres: Any = None, extra: dict[str, Any] | None = None) -> None:
        self.port = free_port()
        self.db = tmp_path / "state" / "state.db"
        self.config = tmp_path / "streamer.yaml"
        self.log = tmp_path / "streamer.log"
        self.postgres = postgres
        checkpoint: dict[str, Any] = {"path": str(self.db)}
        if postgres is not None:
            self.database = postgres.database()
            checkpoint = {"url": postgres.url(self.database)}
        doc = {"http": {"listen_address": f"127.0.0.1:{self.port}"}, "checkpoint": checkpoint, "sources": [source]}
        doc.update(extra or {})
        if postgres is not None:
            doc["fleet"] = {"replica_id": "alone", "lease_seconds": 3}
        self.config.write_text(yaml.safe_dump(doc))

    def query(self, sql: str) -> int:
        if self.postgres is None:
            return query(self.db, sql)
        try:
            return int(self.postgres.psql(sql, self.database) or 0)
        except AssertionError:
            return 0  # tables not created yet

    def done_objects(self) -> int:
        return self.query("SELECT count(*) FROM done")

    def committed_records(self) -> int:
        return self.query("SELECT coalesce(sum(records), 0) FROM counters")

    def start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def kill_when(self, reached: Callable[[], bool], what: str) -> None:
        """Start the service, SIGKILL it as soon as `reached()` holds."""
        proc = self.start()
        try:
            wait_until(lambda: reached() or proc.poll() is not None, 60, what)
            assert proc.poll() is None, self.log.read_text()[-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def finish_and_compare(self, truth: Truth) -> None:
        """Run until /metrics shows exactly the truth, then SIGTERM: clean exit within 5 s."""
        proc = self.start()
        try:

            def exact() -> bool:
                try:
                    return exported_totals(scrape(self.port)) == truth.totals
                except OSError:
                    return False

            wait_until(exact, 120, "exact totals on /metrics")
            before = polls(scrape(self.port))
            wait_until(lambda: polls(scrape(self.port)) >= before + 3, 60, "3 more polls")
            assert exported_totals(scrape(self.port)) == truth.totals  # and they stay exact
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - started < 5
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "Traceback" not in self.log.read_text()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Any:
    """The embedded SQLite checkpoint, or a fleet's PostgreSQL with one replica alone on it."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_server")


def test_sigkill_s3_polling_then_restart_counts_exactly(aws: str, tmp_path: Path, store: Any) -> None:
    n_objects = 40
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    truth = Truth()
    now = dt.datetime.now(dt.UTC)
    for i in range(n_objects):
        when = now - dt.timedelta(minutes=i)
        layout = ("daily", "hourly", "hive")[i % 3]
        s3.put_object(
            Bucket="flow-logs", Key=aws_key(when, layout, n=i), Body=flow_object(truth, 8000, i, int(when.timestamp()) - 900)
        )
    h = Harness(
        tmp_path,
        {"type": "s3", "bucket": "flow-logs", "endpoint_url": aws, "poll_interval_seconds": 0.2, "max_concurrent_objects": 2},
        store,
    )
    kills = []
    for threshold in (1, 9, 17, 26, 33):
        h.kill_when(lambda t=threshold: h.done_objects() >= t, f"{threshold} objects")
        kills.append(h.done_objects())
    assert any(0 < k < n_objects for k in kills), kills
    h.finish_and_compare(truth)


def cloudwatch_group(aws: str) -> Any:
    logs = boto("logs", aws)
    logs.create_log_group(logGroupName="/vpc/flowlogs")
    logs.create_log_stream(logGroupName="/vpc/flowlogs", logStreamName="eni-all")
    return logs


def put_lines(logs: Any, truth: Truth, n: int, seed: int, timestamp_ms: int) -> None:
    table = generate_table(TrafficProfile(records=n, enis=8, seed=seed, start_epoch=timestamp_ms // 1000 - 600))
    truth.add_rows(table.to_pylist())
    lines = to_lines(table).to_pylist()
    for i in range(0, len(lines), 200):
        events = [{"timestamp": timestamp_ms + i + j, "message": m} for j, m in enumerate(lines[i : i + 200])]
        logs.put_log_events(logGroupName="/vpc/flowlogs", logStreamName="eni-all", logEvents=events)


def test_sigkill_kinesis_then_restart_counts_exactly(aws: str, tmp_path: Path, store: Any) -> None:
    logs = cloudwatch_group(aws)
    kinesis = boto("kinesis", aws)
    kinesis.create_stream(StreamName="flowlogs", ShardCount=2)
    arn = kinesis.describe_stream(StreamName="flowlogs")["StreamDescription"]["StreamARN"]
    logs.put_subscription_filter(
        logGroupName="/vpc/flowlogs",
        filterName="k",
        filterPattern="",
        destinationArn=arn,
        roleArn="arn:aws:iam::123456789012:role/x",
    )
    truth = Truth()
    put_lines(logs, truth, 30_000, 1, int(time.time() * 1000) - 120_000)  # 150 Kinesis records
    total = sum(v[0] for v in truth.totals.values())
    h = Harness(
        tmp_path,
        {"type": "kinesis", "stream_name": "flowlogs", "endpoint_url": aws, "poll_interval_seconds": 0.2, "batch_records": 3},
        store,
    )
    kills = []
    for share in (0.1, 0.35, 0.6, 0.85):
        h.kill_when(lambda s=share: h.committed_records() >= s * total, f"{share:.0%} of the records")
        kills.append(h.committed_records())
    assert any(0 < k < total for k in kills), kills
    h.finish_and_compare(truth)


def test_sigkill_filter_log_events_then_restart_counts_exactly(aws: str, tmp_path: Path) -> None:
    logs = cloudwatch_group(aws)
    truth = Truth()
    now_ms = int(time.time() * 1000)
    h = Harness(
        tmp_path,
        {
            "type": "cloudwatch",
            "log_group": "/vpc/flowlogs",
            "endpoint_url": aws,
            "poll_interval_seconds": 0.2,
            "lateness_seconds": 900,
        },
    )
    for round_ in range(4):
        # Each round lands after the last poll but inside the lateness window.
        put_lines(logs, truth, 2000, round_, now_ms - 600_000 + round_ * 1000)
        expected = sum(v[0] for v in truth.totals.values())
        h.kill_when(lambda e=expected: committed_records(h.db) >= e, f"round {round_}")
        assert committed_records(h.db) == expected
    h.finish_and_compare(truth)


def test_sigterm_in_the_middle_of_a_large_download_exits_within_5_s(aws: str, tmp_path: Path) -> None:
    """The object trickles in through a slow proxy; SIGTERM lands while a chunk read is pending."""
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    now = dt.datetime.now(dt.UTC)
    key = aws_key(now, "daily", n=1)
    body = flow_object(None, 120_000, 3, int(now.timestamp()) - 900)
    s3.put_object(Bucket="flow-logs", Key=key, Body=body)
    rate = 256 * 1024
    assert len(body) > 4 * rate  # the download takes several seconds
    with SlowProxy(int(aws.rsplit(":", 1)[1]), rate, key.encode()).running() as proxy:
        h = Harness(
            tmp_path,
            {"type": "s3", "bucket": "flow-logs", "endpoint_url": f"http://127.0.0.1:{proxy.port}", "poll_interval_seconds": 0.2},
        )
        proc = h.start()
        try:
            wait_until(lambda: proxy.watched_bytes >= rate or proc.poll() is not None, 60, "the download to be under way")
            assert proc.poll() is None, h.log.read_text()[-2000:]
            assert proxy.watched_bytes < len(body)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - started < 5
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = h.log.read_text()
    assert "Traceback" not in log
    assert "already running" not in log
    assert "restarting" not in log
    assert done_objects(h.db) == 0  # abandoned uncommitted: read again on the next start


def test_sigkill_then_restart_keeps_network_insights_exact(aws: str, tmp_path: Path) -> None:
    """Objects of insight cases with known answers; killed mid-backlog: the insight counters end exact."""
    from streamer.schema import V5_ALL_FIELDS
    from streamer.synth import insight_cases, insight_table

    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    now = dt.datetime.now(dt.UTC)
    n_objects = 30
    for i in range(n_objects):
        # 17 minutes apart, beyond the 900 s lateness: the same flows in two objects never pair with each other
        cases, expected = insight_cases(int(now.timestamp()) - 1020 * (n_objects + 1) + i * 1020)
        text = " ".join(V5_ALL_FIELDS) + "\n" + "\n".join(to_lines(insight_table(cases)).to_pylist()) + "\n"
        s3.put_object(Bucket="flow-logs", Key=aws_key(now, "daily", n=i), Body=gzip.compress(text.encode()))
    source = {"type": "s3", "bucket": "flow-logs", "endpoint_url": aws, "poll_interval_seconds": 0.2}
    h = Harness(tmp_path, source, extra={"insights": {"nacl_pairing": True}})
    for threshold in (3, 11, 19):
        h.kill_when(lambda t=threshold: done_objects(h.db) >= t, f"{threshold} objects")
    proc = h.start()
    try:
        wait_until(lambda: done_objects(h.db) == n_objects, 60, "every object")
        before = polls(scrape(h.port))
        wait_until(lambda: polls(scrape(h.port)) >= before + 2, 60, "2 more polls")
        metrics = scrape(h.port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    nacl = {dict(k)["interface_id"]: v for k, v in metrics["vpcflow_nacl_return_rejects_total"].items()}
    assert nacl == {eni: n * n_objects for eni, n in expected["nacl_return_rejects"].items()}  # type: ignore[union-attr]
    ipv6 = {tuple(dict(k).values()): v for k, v in metrics["vpcflow_ipv6_internet_inbound_records_total"].items()}
    assert ipv6 == {("REJECT", "eni-0ipv6000000000001"): 2 * n_objects, ("ACCEPT", "eni-0ipv6000000000001"): n_objects}
    gateway = {dict(k)["service"]: v for k, v in metrics["vpcflow_gateway_endpoint_candidate_bytes_total"].items()}
    assert gateway == {"S3": 4 * 2**30 * n_objects, "DYNAMODB": 5000 * n_objects}
    paths = {dict(k)["path"]: v for k, v in metrics["vpcflow_traffic_path_bytes_total"].items()}
    gib = 2**30
    per_object = {"same_vpc": 3 * gib + 5000, "internet_gateway": gib, "gateway_endpoint": 7000}
    assert paths == {path: b * n_objects for path, b in per_object.items()}
