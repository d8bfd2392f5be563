"""ENI churn through a real `streamer run`: interfaces expire, and no exported counter ever goes down.

Objects arrive one after another, each over its own fresh ENIs (plus a few
that stay), with `metrics.interface_idle_seconds` small, so interfaces are
forgotten all through the run. /metrics is scraped every second: per series,
a counter never decreases, and a series vanishes only with its interface
(every series of that interface at once). At the end, the label-less totals
(log-status, skipped lines) equal what was delivered, although most
interfaces that carried those records are gone.
"""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import signal
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from streamer.store.base import Commit
from streamer.synth import TrafficProfile, eni_ids, generate_table, to_lines
from tests.integration.conftest import Metrics, Truth, aws_key, boto, exported_totals, objects_by_outcome, scrape
from tests.integration.test_crash_restart import Harness, wait_until

pytestmark = pytest.mark.integration

Series = tuple[str, tuple[tuple[str, str], ...]]
STEADY = ("eni-0steady000000001", "eni-0steady000000002")


def churn_object(i: int, records: int, start_epoch: int, status: dict[str, int], truth: Truth | None = None) -> bytes:
    """Records over 10 ENIs of object `i` alone and the steady ones, one bad line; log-status counted in `status`,
    per-interface totals in `truth`."""
    profile = TrafficProfile(records=records, enis=12, seed=i, start_epoch=start_epoch, span_seconds=300, nodata_ratio=0.01)
    table = generate_table(profile)
    names = pa.array([*STEADY, *[f"eni-0churn{i:05d}{j:04d}" for j in range(10)]])
    index = pc.index_in(table.column("interface-id"), pa.array(eni_ids(12)))
    table = table.set_column(table.column_names.index("interface-id"), "interface-id", pc.take(names, index))
    for value in table.column("log-status").to_pylist():
        status[value] = status.get(value, 0) + 1
    if truth is not None:
        truth.add_rows(table.to_pylist())
    lines = to_lines(table).to_pylist()
    text = " ".join(profile.fields) + "\n" + "\n".join(lines[:5]) + "\nnot a flow log line\n" + "\n".join(lines[5:]) + "\n"
    return gzip.compress(text.encode())


def counters(metrics: Metrics) -> dict[Series, float]:
    return {(name, labels): v for name, series in metrics.items() if name.endswith("_total") for labels, v in series.items()}


def interfaces(series: dict[Series, float]) -> set[str]:
    return {dict(labels)["interface_id"] for _, labels in series if "interface_id" in dict(labels)}


def test_interfaces_expire_while_no_counter_ever_decreases(aws: str, tmp_path: Path) -> None:
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    source: dict[str, Any] = {"type": "s3", "bucket": "flow-logs", "endpoint_url": aws, "poll_interval_seconds": 0.2}
    h = Harness(tmp_path, source, extra={"metrics": {"interface_idle_seconds": 2, "max_interfaces": 40}})
    status: dict[str, int] = {}
    now = dt.datetime.now(dt.UTC)
    n_objects = 24
    scrapes: list[dict[Series, float]] = []
    proc = h.start()
    try:
        wait_until(lambda: _up(h.port), 60, "/metrics")
        next_scrape = time.monotonic()
        for i in range(n_objects):
            body = churn_object(i, 2000, int(now.timestamp()) - 900 + i * 10, status)
            s3.put_object(Bucket="flow-logs", Key=aws_key(now, "daily", n=i), Body=body)
            wait_until(lambda i=i: _done(h.port) > i, 60, f"object {i}")
            while time.monotonic() >= next_scrape:  # a scrape a second, as Prometheus would
                scrapes.append(counters(scrape(h.port)))
                next_scrape += 1.0
            time.sleep(0.3)  # pacing the deliveries, so interfaces go idle between them
        scrapes.append(counters(scrape(h.port)))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "Traceback" not in h.log.read_text()
    assert len(scrapes) >= 5
    for before, after in itertools.pairwise(scrapes):
        went_down = {k: (v, after[k]) for k, v in before.items() if k in after and after[k] < v}
        assert not went_down
        vanished = before.keys() - after.keys()
        assert all("interface_id" in dict(labels) for _, labels in vanished), vanished
        assert not interfaces(dict.fromkeys(vanished)) & interfaces(after)  # an interface goes with all its series
    last = scrapes[-1]
    forgotten = {f"eni-0churn{i:05d}{j:04d}" for i in range(n_objects - 4) for j in range(10)} - interfaces(last)
    assert len(forgotten) > 100  # most churned interfaces expired during the run
    assert set(STEADY) <= interfaces(last)
    exported = {dict(labels)["log_status"]: v for (name, labels), v in last.items() if name == "vpcflow_log_status_total"}
    assert exported == status  # every delivered record, whatever became of its interface
    assert last[("streamer_decode_errors_total", (("reason", "wrong_field_count"),))] == n_objects


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Any:
    """The embedded SQLite checkpoint, or a fleet's PostgreSQL with one replica alone on it."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_server")


def test_sigkill_with_interfaces_expiring_then_restart_counts_exactly(aws: str, tmp_path: Path, store: Any) -> None:
    """The crash-restart check with expiry on: killed mid-backlog while interfaces are being forgotten, the
    label-less totals end exact, and every interface still exported has exactly its own records."""
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    truth, status = Truth(), {}  # type: ignore[var-annotated]
    now = dt.datetime.now(dt.UTC)
    n_objects = 30
    for i in range(n_objects):
        body = churn_object(i, 4000, int(now.timestamp()) - 900 + i * 10, status, truth)
        s3.put_object(Bucket="flow-logs", Key=aws_key(now, "daily", n=i), Body=body)
    source: dict[str, Any] = {
        "type": "s3",
        "bucket": "flow-logs",
        "endpoint_url": aws,
        "poll_interval_seconds": 0.2,
        "max_concurrent_objects": 1,
    }
    h = Harness(tmp_path, source, store, extra={"metrics": {"interface_idle_seconds": 0.5}})
    kills = []
    for threshold in (2, 9, 17, 24):
        h.kill_when(lambda t=threshold: h.done_objects() >= t, f"{threshold} objects")
        kills.append(h.done_objects())
    assert any(0 < k < n_objects for k in kills), kills
    # Each object brings 10 new interfaces: some were forgotten before the last start.
    assert h.query("SELECT count(*) FROM interfaces") < len(STEADY) + 10 * h.done_objects()
    proc = h.start()
    try:
        wait_until(lambda: h.done_objects() == n_objects, 120, "every object")
        wait_until(lambda: _up(h.port) and _log_status(scrape(h.port)) == status, 60, "every record's log-status")
        metrics = scrape(h.port)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert "Traceback" not in h.log.read_text()
    exported = exported_totals(metrics)
    assert exported  # the last objects' interfaces, at least
    assert {k: v for k, v in truth.totals.items() if k[0] in {eni for eni, _ in exported}} == exported
    assert len({eni for eni, _ in truth.totals} - {eni for eni, _ in exported}) > 10  # forgotten ones are gone
    assert _log_status(metrics) == status
    assert metrics["streamer_decode_errors_total"][(("reason", "wrong_field_count"),)] == n_objects


def _log_status(metrics: Metrics) -> dict[str, float]:
    return {dict(k)["log_status"]: v for k, v in metrics.get("vpcflow_log_status_total", {}).items()}


def _up(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def _done(port: int) -> int:
    return sum(objects_by_outcome(scrape(port)).values())


def test_postgres_migration_gives_todays_log_status_totals_their_own_rows(postgres_server: Any) -> None:
    """A database from before the totals table: its log-status totals start from the per-interface rows."""
    import psycopg

    from streamer.store.postgres import MIGRATIONS, PostgresStore

    database = postgres_server.database()
    url = postgres_server.url(database)
    mine = next(i for i, sql in enumerate(MIGRATIONS) if "CREATE TABLE totals" in sql)
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE streamer_schema (version INTEGER NOT NULL)")
        for number, sql in enumerate(MIGRATIONS[:mine], start=1):
            conn.execute(sql)
            conn.execute("INSERT INTO streamer_schema VALUES (%s)", (number,))
        conn.execute(
            "INSERT INTO counters VALUES ('r1', 'eni-a', 'ACCEPT', 'OK', 5, 9, 90), ('r1', 'eni-b', 'ACCEPT', 'OK', 2, 1, 10), "
            "('r1', 'eni-a', '-', 'NODATA', 3, 0, 0), ('r2', 'eni-a', 'ACCEPT', 'OK', 4, 1, 1)"
        )
    store = PostgresStore(url, "r1")
    try:
        assert store.load_state().totals == {("log_status", "OK"): 7, ("log_status", "NODATA"): 3}
        assert store.commit(Commit(forget=["eni-a"]))
        assert store.load_state().totals == {("log_status", "OK"): 7, ("log_status", "NODATA"): 3}
        assert set(store.load_state().counters.by_interface()) == {"eni-b"}
    finally:
        store.close()
