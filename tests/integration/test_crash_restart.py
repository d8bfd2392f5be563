"""kill -9 at any moment, restart: counters end exactly equal to the truth.

The service runs as a real process (`streamer run --config`) against moto;
it is killed with SIGKILL in the middle of the backlog several times (once
a given number of objects is committed, so the kills land mid-way), then
restarted until the backlog is done. SIGTERM must stop it cleanly and fast.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import Truth, aws_key, boto, exported_totals, flow_object, free_port, scrape

pytestmark = pytest.mark.integration

N_OBJECTS = 40


def done_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM done").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env=env,
    )


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigkill_at_any_moment_then_restart_counts_exactly(aws: str, tmp_path: Path) -> None:
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    truth = Truth()
    now = dt.datetime.now(dt.UTC)
    for i in range(N_OBJECTS):
        when = now - dt.timedelta(minutes=i)
        layout = ("daily", "hourly", "hive")[i % 3]
        s3.put_object(
            Bucket="flow-logs", Key=aws_key(when, layout, n=i), Body=flow_object(truth, 8000, i, int(when.timestamp()) - 900)
        )
    port = free_port()
    db = tmp_path / "state" / "state.db"
    config = tmp_path / "streamer.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "http": {"listen_address": f"127.0.0.1:{port}"},
                "checkpoint": {"path": str(db)},
                "sources": [
                    {
                        "type": "s3",
                        "bucket": "flow-logs",
                        "endpoint_url": aws,
                        "poll_interval_seconds": 0.2,
                        "max_concurrent_objects": 2,
                    }
                ],
            }
        )
    )
    log = tmp_path / "streamer.log"
    kills = []
    for threshold in (1, 9, 17, 26, 33):
        proc = start(config, log)
        try:
            wait_until(lambda t=threshold, p=proc: done_count(db) >= t or p.poll() is not None, 60, f"{threshold} objects")
            assert proc.poll() is None, log.read_text()[-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills.append(done_count(db))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert any(0 < k < N_OBJECTS for k in kills), kills

    proc = start(config, log)
    try:
        wait_until(lambda: done_count(db) >= N_OBJECTS, 120, "the whole backlog")

        def ready() -> bool:
            try:
                return exported_totals(scrape(port)) == truth.totals
            except OSError:
                return False

        wait_until(ready, 30, "exact totals on /metrics")
        assert exported_totals(scrape(port)) == truth.totals
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def committed_records(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT coalesce(sum(records), 0) FROM counters").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def write_config(tmp_path: Path, port: int, source: dict[str, object]) -> tuple[Path, Path]:
    db = tmp_path / "state" / "state.db"
    config = tmp_path / "streamer.yaml"
    config.write_text(
        yaml.safe_dump({"http": {"listen_address": f"127.0.0.1:{port}"}, "checkpoint": {"path": str(db)}, "sources": [source]})
    )
    return config, db


def finish_and_compare(config: Path, log: Path, port: int, truth: Truth) -> None:
    proc = start(config, log)
    try:

        def exact() -> bool:
            try:
                return exported_totals(scrape(port)) == truth.totals
            except OSError:
                return False

        wait_until(exact, 90, "exact totals on /metrics")
        time.sleep(1.0)  # and they stay exact
        assert exported_totals(scrape(port)) == truth.totals
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def cloudwatch_group(aws: str) -> object:
    logs = boto("logs", aws)
    logs.create_log_group(logGroupName="/vpc/flowlogs")
    logs.create_log_stream(logGroupName="/vpc/flowlogs", logStreamName="eni-all")
    return logs


def put_lines(logs, truth: Truth, n: int, seed: int, timestamp_ms: int) -> None:  # type: ignore[no-untyped-def]
    from streamer.synth import TrafficProfile, generate_table, to_lines

    table = generate_table(TrafficProfile(records=n, enis=8, seed=seed, start_epoch=timestamp_ms // 1000 - 600))
    truth.add_rows(table.to_pylist())
    lines = to_lines(table).to_pylist()
    for i in range(0, len(lines), 200):
        events = [{"timestamp": timestamp_ms + i + j, "message": m} for j, m in enumerate(lines[i : i + 200])]
        logs.put_log_events(logGroupName="/vpc/flowlogs", logStreamName="eni-all", logEvents=events)


def test_sigkill_kinesis_then_restart_counts_exactly(aws: str, tmp_path: Path) -> None:
    logs = cloudwatch_group(aws)
    kinesis = boto("kinesis", aws)
    kinesis.create_stream(StreamName="flowlogs", ShardCount=2)
    arn = kinesis.describe_stream(StreamName="flowlogs")["StreamDescription"]["StreamARN"]
    logs.put_subscription_filter(  # type: ignore[attr-defined]
        logGroupName="/vpc/flowlogs",
        filterName="k",
        filterPattern="",
        destinationArn=arn,
        roleArn="arn:aws:iam::123456789012:role/x",
    )
    truth = Truth()
    put_lines(logs, truth, 30_000, 1, int(time.time() * 1000) - 120_000)  # 150 Kinesis records
    total = sum(v[0] for v in truth.totals.values())
    port = free_port()
    source = {"type": "kinesis", "stream_name": "flowlogs", "endpoint_url": aws, "poll_interval_seconds": 0.2, "batch_records": 3}
    config, db = write_config(tmp_path, port, source)
    log = tmp_path / "streamer.log"
    kills = []
    for fraction in (0.1, 0.35, 0.6, 0.85):
        proc = start(config, log)
        try:
            wait_until(
                lambda f=fraction, p=proc: committed_records(db) >= f * total or p.poll() is not None, 60, f"{fraction:.0%}"
            )
            assert proc.poll() is None, log.read_text()[-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills.append(committed_records(db))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert any(0 < k < total for k in kills), kills
    finish_and_compare(config, log, port, truth)


def test_sigkill_filter_log_events_then_restart_counts_exactly(aws: str, tmp_path: Path) -> None:
    logs = cloudwatch_group(aws)
    truth = Truth()
    now_ms = int(time.time() * 1000)
    port = free_port()
    source = {
        "type": "cloudwatch",
        "log_group": "/vpc/flowlogs",
        "endpoint_url": aws,
        "poll_interval_seconds": 0.2,
        "lateness_seconds": 900,
    }
    config, db = write_config(tmp_path, port, source)
    log = tmp_path / "streamer.log"
    for round_ in range(4):
        # Each round lands later than the last poll but inside the lateness window.
        put_lines(logs, truth, 2000, round_, now_ms - 600_000 + round_ * 1000)
        expected = sum(v[0] for v in truth.totals.values())
        proc = start(config, log)
        try:
            wait_until(lambda e=expected, p=proc: committed_records(db) >= e or p.poll() is not None, 60, f"round {round_}")
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1 * round_)  # kill at different moments relative to the next polls
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert committed_records(db) == expected
    finish_and_compare(config, log, port, truth)
