"""The fleet under faults on the paths without done keys: Kinesis, CloudWatch polling and the leader.

Real PostgreSQL and moto; replicas are the real components (store, leases,
pipeline, sources) in this process where a fault has to land at an exact
point (a batch read but not yet committed), real processes otherwise.

- fencing: every acquisition bumps a lease's epoch, and cursors are
  compare-and-set, so an input read under an older holding, or retried after
  a commit whose outcome was unknown, is never counted twice and never moves
  a cursor backwards;
- an unknown commit outcome (committed on the server, raised on the client:
  a test-only seam) leaves Kinesis exact on /metrics;
- the CloudWatch poller keeps nothing of a sweep it could not commit, and
  resumes from the committed window when it gets its lease back;
- the leader restores from the database whenever its lease's epoch changed
  or a step failed, and drains a backlog off the event loop without losing
  its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate.anomaly import Settings
from streamer.aggregate.detection import SNAPSHOT_NAME, Detection
from streamer.aggregate.state import FlowState
from streamer.aggregate.windows import encode_partial, window_batch
from streamer.aws import AwsClients
from streamer.export.alerts import Alerter
from streamer.export.telemetry import Telemetry
from streamer.pipeline import Pipeline, Store
from streamer.settings import AlertsConfig
from streamer.sources.base import LEASE_LOST, Delivery
from streamer.sources.cloudwatch import LEASE as CLOUDWATCH_LEASE
from streamer.sources.cloudwatch import CloudWatchSource, CloudWatchSourceConfig
from streamer.sources.kinesis import SHARD_LEASE, KinesisSource, KinesisSourceConfig
from streamer.store.base import Commit, LeaseLost
from streamer.store.leader import LeaderDetector
from streamer.store.leases import LEADER, Coordinator
from streamer.store.postgres import PostgresStore
from streamer.synth import TrafficProfile, generate_table, to_lines
from tests.integration.conftest import Metrics, Truth, boto, exported_totals, more_polls, running, service_config, wait_metrics
from tests.unit.aggregate.test_state import delta

pytestmark = pytest.mark.integration

GROUP = "/vpc/flowlogs"


def lines_for(truth: Truth, n: int, seed: int) -> list[str]:
    table = generate_table(TrafficProfile(records=n, enis=6, seed=seed, start_epoch=int(time.time()) - 1800, span_seconds=600))
    truth.add_rows(table.to_pylist())
    return [str(x) for x in to_lines(table).to_pylist()]


def put(logs: Any, stream: str, lines: list[str]) -> None:
    """One PutLogEvents call: one Kinesis record through the subscription filter."""
    now_ms = int(time.time() * 1000) - 5000  # inside the next sweep's window
    logs.put_log_events(
        logGroupName=GROUP, logStreamName=stream, logEvents=[{"timestamp": now_ms + j, "message": m} for j, m in enumerate(lines)]
    )


def kinesis_stream(aws: str, shards: int) -> Any:
    logs = boto("logs", aws)
    logs.create_log_group(logGroupName=GROUP)
    kinesis = boto("kinesis", aws)
    kinesis.create_stream(StreamName="flowlogs", ShardCount=shards)
    arn = kinesis.describe_stream(StreamName="flowlogs")["StreamDescription"]["StreamARN"]
    logs.put_subscription_filter(
        logGroupName=GROUP, filterName="k", filterPattern="", destinationArn=arn, roleArn="arn:aws:iam::123456789012:role/x"
    )
    return logs


def sql(url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, args or None)
        return cur.fetchall() if cur.description else []


def log_cursor_writes(url: str) -> None:
    """Every value a cursor is set to, in order (a trigger in the database itself)."""
    sql(url, "CREATE TABLE cursor_log (at BIGSERIAL PRIMARY KEY, partition TEXT, value TEXT)")
    sql(
        url,
        "CREATE FUNCTION log_cursor() RETURNS trigger AS $$ BEGIN "
        "INSERT INTO cursor_log (partition, value) VALUES (NEW.partition, NEW.value); RETURN NEW; END $$ LANGUAGE plpgsql",
    )
    sql(url, "CREATE TRIGGER log_cursor AFTER INSERT OR UPDATE ON cursors FOR EACH ROW EXECUTE FUNCTION log_cursor()")


def landed(url: str) -> int:
    """Batches committed (each writes its shard's cursor once), whatever their commit answered."""
    return int(sql(url, "SELECT count(*) FROM cursor_log")[0][0])


def answered(metrics: Metrics) -> int:
    """Inputs answered with any outcome (a commit that raised answers nothing: the batch is retried)."""
    return int(sum(metrics.get("streamer_objects_total", {}).values()))


def assert_cursors_only_moved_forward(url: str) -> None:
    by_partition: dict[str, list[int]] = {}
    for partition, value in sql(url, "SELECT partition, value FROM cursor_log ORDER BY at"):
        if value != "SHARD_END":
            by_partition.setdefault(partition, []).append(int(value))
    assert by_partition
    for values in by_partition.values():
        assert values == sorted(set(values)), values  # strictly forward: never back, never the same batch twice


class Member:
    """One replica's real components, in this process: store, leases, pipeline."""

    def __init__(self, url: str, replica_id: str, lease_seconds: float = 30) -> None:
        self.pg = PostgresStore(url, replica_id)
        self.store = Store(self.pg, threads=4)
        self.coordinator = Coordinator(self.pg, lease_seconds, self.store.call)
        self.pool = ThreadPoolExecutor(1)
        self.registry = CollectorRegistry()
        self.telemetry = Telemetry(self.registry)
        self.pipeline = Pipeline(FlowState(), self.store, self.telemetry, self.pool, partials_window_seconds=60)

    def totals(self) -> dict[tuple[str, str], list[int]]:
        return totals_of(self.pipeline.state)

    def outcomes(self) -> dict[str, float]:
        return {
            s.labels["outcome"]: s.value for m in self.telemetry.objects.collect() for s in m.samples if s.name.endswith("_total")
        }

    async def cursors(self, source: str) -> dict[str, str]:
        return await self.store.call(self.pg.cursors, source)

    def close(self) -> None:
        self.pool.shutdown()
        self.store.close()


def totals_of(state: FlowState) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for row in state.counters.table().to_pylist():
        acc = out.setdefault((row["interface_id"], row["action"]), [0, 0, 0])
        acc[0] += row["records"]
        acc[1] += row["packets"]
        acc[2] += row["bytes"]
    return out


def summed(*totals: dict[tuple[str, str], list[int]]) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for t in totals:
        for key, values in t.items():
            acc = out.setdefault(key, [0, 0, 0])
            for i in range(3):
                acc[i] += values[i]
    return out


@contextlib.contextmanager
def members(url: str, *ids: str, lease_seconds: float = 30) -> Iterator[list[Member]]:
    made = [Member(url, i, lease_seconds) for i in ids]
    try:
        yield made
    finally:
        for m in made:
            m.close()


async def until(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Interrupted:
    """A replica's sink that runs `fault` once, at its n-th delivery: read, not yet committed."""

    def __init__(self, pipeline: Pipeline, at: int, fault: Any) -> None:
        self.pipeline = pipeline
        self.at = at
        self.fault = fault
        self.calls = 0
        self.outcomes: list[str] = []

    async def process(self, source: str, delivery: Delivery) -> str:
        self.calls += 1
        if self.calls == self.at:
            await self.fault()
        outcome = await self.pipeline.process(source, delivery)
        self.outcomes.append(outcome)
        return outcome

    async def give_up(self, source: str, delivery: Delivery, reason: str) -> None:
        await self.pipeline.give_up(source, delivery, reason)

    def source_error(self, source: str, reason: str, message: str) -> None:
        self.pipeline.source_error(source, reason, message)

    def polled(self, source: str) -> None:
        self.pipeline.polled(source)

    def behind(self, source: str, shard: str, seconds: float | None) -> None:
        self.pipeline.behind(source, shard, seconds)

    def queue_backlog(self, source: str, waiting: int, held: int, oldest_age_seconds: float | None) -> None:
        self.pipeline.queue_backlog(source, waiting, held, oldest_age_seconds)


@contextlib.asynccontextmanager
async def task(coro: Any) -> AsyncIterator[asyncio.Task[Any]]:
    t = asyncio.create_task(coro)
    try:
        yield t
    finally:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t


# --- the store ------------------------------------------------------------------------------------


def test_every_acquisition_bumps_the_epoch_and_cursors_are_compare_and_set(pg_url: str) -> None:
    a, b = PostgresStore(pg_url, "r1"), PostgresStore(pg_url, "r2")
    shard = ("kinesis_shard", "s/0")
    try:
        first = a.acquire(*shard, 30)
        assert first == 1
        assert a.commit(
            Commit(delta({"eni-a": 1}), cursors={("s", "0"): "10"}, expected={("s", "0"): None}, lease=shard, epoch=1)
        )
        a.release(*shard)
        assert b.acquire(*shard, 30) == 2
        b.release(*shard)
        assert a.acquire(*shard, 30) == 3  # a holds it again, under a new epoch
        # what a read under its first holding is fenced off, although a holds the lease again
        with pytest.raises(LeaseLost):
            a.commit(Commit(delta({"eni-a": 1}), cursors={("s", "0"): "20"}, expected={("s", "0"): "10"}, lease=shard, epoch=1))
        # a cursor that moved means "already counted": nothing changes
        stale = Commit(delta({"eni-a": 5}), cursors={("s", "0"): "15"}, expected={("s", "0"): None}, lease=shard, epoch=3)
        assert not a.commit(stale)
        assert a.commit(
            Commit(delta({"eni-a": 2}), cursors={("s", "0"): "20"}, expected={("s", "0"): "10"}, lease=shard, epoch=3)
        )
        assert not a.commit(
            Commit(delta({"eni-a": 2}), cursors={("s", "0"): "20"}, expected={("s", "0"): "10"}, lease=shard, epoch=3)
        )
        assert a.cursors("s") == {"0": "20"}
        assert a.load_state().counters.total_records(("REJECT",)) == 3
    finally:
        a.close()
        b.close()


# --- Kinesis --------------------------------------------------------------------------------------


async def test_commits_with_an_unknown_outcome_leave_kinesis_exact(
    aws: str, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 2nd and 5th commits land on the server, then raise on the client (a connection dropped
    before the reply): the batches of those groups are retried, found counted (their cursors moved), and
    /metrics is neither low (the retry counts nothing) nor high (the first attempt is not applied twice).

    Every batch that landed is answered exactly once: by its commit, or (landed by an ambiguous commit) by its
    retry as a duplicate. The retry comes `retry_seconds` (5 s) after the failure, so /metrics is exact before
    it: the test waits for the answers, not only for the totals. A retry of the 2nd commit's batch may itself
    ride in the 5th commit's group (refused as counted, the group's outcome unknown): it fails once more, so
    commit_failed may exceed the duplicates by one."""
    monkeypatch.setenv("STREAMER_TEST_AMBIGUOUS_COMMITS", "2,5")
    logs = kinesis_stream(aws, shards=2)
    truth = Truth()
    for s in range(4):
        logs.create_log_stream(logGroupName=GROUP, logStreamName=f"eni-{s}")
    source = {"type": "kinesis", "name": "stream", "stream_name": "flowlogs", "endpoint_url": aws, "batch_records": 1}
    source["poll_interval_seconds"] = 0.2
    config = service_config(tmp_path, [source], checkpoint={"url": pg_url}, fleet={"replica_id": "alone", "lease_seconds": 3})
    PostgresStore(pg_url, "migrate").close()
    log_cursor_writes(pg_url)
    async with running(config) as service:
        for round_ in range(3):
            for s in range(4):
                put(logs, f"eni-{s}", lines_for(truth, 120, round_ * 10 + s))
        metrics = await wait_metrics(service.port, lambda m: exported_totals(m) == truth.totals, 120, "exact totals")
        # every batch that landed (one cursor write each) answered: by its commit, or by its retry (5 s later)
        metrics = await wait_metrics(service.port, lambda m: answered(m) >= landed(pg_url), 60, "every landed batch answered")
        metrics = await more_polls(service.port, 6)
        assert exported_totals(metrics) == truth.totals
        assert answered(metrics) == landed(pg_url)  # none answered twice
        errors = {dict(k)["reason"]: v for k, v in metrics.get("streamer_source_errors_total", {}).items()}
        # The seam fired twice; each time every batch of that transaction's group saw the failure (both shards'
        # batches can share one, a refused retry among them), and each batch it landed was answered a duplicate.
        outcomes = {dict(k)["outcome"]: v for k, v in metrics["streamer_objects_total"].items()}
        assert 2 <= outcomes.get("duplicate", 0) <= errors.get("commit_failed", 0) <= 4
        assert errors["commit_failed"] - outcomes["duplicate"] <= 1
    assert_cursors_only_moved_forward(pg_url)


async def test_a_shard_lease_lost_and_won_back_mid_batch_counts_exactly_and_never_moves_the_cursor_back(
    aws: str, pg_url: str
) -> None:
    """r1 has read its 3rd batch when its lease expires; r2 takes the shard and reads on (that batch
    included), then lets go; r1 takes the shard back (a new epoch) before its batch commits. That batch is
    not counted by r1, its old iterator is dropped, and r1 reads on from r2's committed cursor."""
    logs = kinesis_stream(aws, shards=1)
    logs.create_log_stream(logGroupName=GROUP, logStreamName="eni-all")
    truth = Truth()
    for seed in range(6):
        put(logs, "eni-all", lines_for(truth, 50, seed))
    config = KinesisSourceConfig(
        type="kinesis",
        stream_name="flowlogs",
        endpoint_url=aws,
        batch_records=1,
        poll_interval_seconds=0.2,
        shard_refresh_seconds=0.3,
    )
    clients = AwsClients()
    with members(pg_url, "r1", "r2") as (r1, r2):
        log_cursor_writes(pg_url)
        kinesis = await clients.kinesis("us-east-1", aws)
        one = KinesisSource("stream", config, kinesis, lambda: r1.cursors("stream"), coordinator=r1.coordinator)
        two = KinesisSource("stream", config, kinesis, lambda: r2.cursors("stream"), coordinator=r2.coordinator)
        lease = (SHARD_LEASE, "stream/shardId-000000000000")
        epochs: list[int | None] = []

        async def move_the_lease_and_back() -> None:
            epochs.append(r1.coordinator.epoch(*lease))
            sql(pg_url, "UPDATE leases SET expires_at = 0 WHERE kind = %s", SHARD_LEASE)
            async with task(two.run(r2.pipeline)):
                await until(lambda: r2.pipeline.commits >= 3, 60, "r2 to read on")
            await r2.store.call(r2.pg.release, *lease)
            r2.coordinator.held.clear()
            await r1.coordinator.heartbeat()  # r1 learns it lost the lease ...
            await until(lambda: r1.coordinator.epoch(*lease) is not None, 30, "r1 to take the shard back")
            epochs.append(r1.coordinator.epoch(*lease))  # ... and holds it again, under a new epoch

        sink = Interrupted(r1.pipeline, 3, move_the_lease_and_back)
        async with task(one.run(sink)):
            await until(lambda: LEASE_LOST in sink.outcomes, 60, "r1's in-flight batch to be refused")
            for seed in range(6, 9):
                put(logs, "eni-all", lines_for(truth, 50, seed))
            await until(lambda: summed(r1.totals(), r2.totals()) == truth.totals, 60, "exact sums")
        await clients.close()
        before, after = epochs
        assert before is not None
        assert after is not None
        assert after > before
        assert summed(r1.totals(), r2.totals()) == truth.totals
        assert sink.outcomes.count(LEASE_LOST) == 1
        assert r1.pipeline.commits + r2.pipeline.commits == 9  # each batch committed once
    assert_cursors_only_moved_forward(pg_url)


# --- CloudWatch polling ---------------------------------------------------------------------------


async def test_the_cloudwatch_poller_keeps_nothing_of_a_sweep_it_lost_and_resumes_from_the_committed_window(
    aws: str, pg_url: str
) -> None:
    """r1's sweep (events A) is in flight when its lease moves to r2, which counts A, then B. r1's sweep
    is refused and r1 keeps neither its window end nor its seen ids; when it polls again it takes the
    lease back and resumes from r2's window: only C is new. Every event counted once."""
    logs = boto("logs", aws)
    logs.create_log_group(logGroupName=GROUP)
    logs.create_log_stream(logGroupName=GROUP, logStreamName="eni-all")
    truth = Truth()
    config = CloudWatchSourceConfig(type="cloudwatch", log_group=GROUP, endpoint_url=aws, lateness_seconds=900)
    clients = AwsClients()
    with members(pg_url, "r1", "r2") as (r1, r2):
        client = await clients.logs("us-east-1", aws)

        def snapshot(m: Member) -> Any:
            return lambda name: m.store.call(m.pg.snapshot, name)

        one = CloudWatchSource("group", config, client, lambda: r1.cursors("group"), snapshot(r1), coordinator=r1.coordinator)
        two = CloudWatchSource("group", config, client, lambda: r2.cursors("group"), snapshot(r2), coordinator=r2.coordinator)
        lease = (CLOUDWATCH_LEASE, "group")

        async def move_the_lease() -> None:
            sql(pg_url, "UPDATE leases SET expires_at = 0 WHERE kind = %s", CLOUDWATCH_LEASE)
            assert await two.poll_once(r2.pipeline) == 40  # B, from r1's committed window
            put(logs, "eni-all", lines_for(truth, 40, 3))  # C
            assert await two.poll_once(r2.pipeline) == 40
            await r2.store.call(r2.pg.release, *lease)
            r2.coordinator.held.clear()
            await r1.coordinator.heartbeat()

        put(logs, "eni-all", lines_for(truth, 40, 1))  # A
        assert await one.poll_once(r1.pipeline) == 40
        end, seen = one.end_ms, dict(one.seen)
        put(logs, "eni-all", lines_for(truth, 40, 2))  # B: in r1's sweep, which will be refused
        sink = Interrupted(r1.pipeline, 1, move_the_lease)
        await one.poll_once(sink)
        assert sink.outcomes == [LEASE_LOST]
        assert (one.end_ms, one.seen) == (end, seen)  # nothing of the refused sweep is kept
        put(logs, "eni-all", lines_for(truth, 40, 4))  # D
        assert await one.poll_once(r1.pipeline) == 40  # only D: A, B and C are in the committed seen ids
        assert r1.coordinator.owns(*lease)
        await clients.close()
        assert summed(r1.totals(), r2.totals()) == truth.totals


# --- the leader -----------------------------------------------------------------------------------


def typed(table: pa.Table) -> pa.Table:
    """Generated rows as the decoder types them (numbers, "-" as null)."""
    numeric = {"srcport", "dstport", "protocol", "packets", "bytes", "start", "end"}
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if name in numeric:
            col = pc.cast(pc.if_else(pc.equal(col, "-"), pa.scalar(None, pa.string()), col), pa.int64())
        cols[name] = col
    return pa.table(cols)


def partial(seed: int, start_epoch: int, enis: int = 20, records: int = 400) -> bytes:
    """One input's encoded window partial, as a replica commits it for the leader."""
    table = typed(generate_table(TrafficProfile(records=records, enis=enis, seed=seed, start_epoch=start_epoch, span_seconds=60)))
    return encode_partial([window_batch(table, 60, int(time.time()) + 300)])


def leader_of(m: Member, **options: Any) -> LeaderDetector:
    """A leader detector on `m`'s store and coordinator (`options`: LeaderDetector's keywords)."""
    settings = Settings(window_seconds=60)
    return LeaderDetector(
        m.coordinator,
        lambda: Detection.create(settings, 3600),
        lambda blob: Detection.restore(blob, settings, 3600),
        Alerter(AlertsConfig(), CollectorRegistry()),
        m.store.call,
        **options,
    )


def records_in(detection: Detection | None) -> int:
    assert detection is not None
    return int(pc.sum(detection.windows.stats.column("records")).as_py() or 0)


async def test_a_leader_that_lost_and_won_back_its_lease_restores_from_the_database(pg_url: str) -> None:
    """r1 leads, its lease expires, r2 leads one step (applies a partial), lets go; r1 takes the lease
    back with no step in between. r1 must continue from r2's state, not from its own older one."""
    base = int(time.time()) // 60 * 60 - 600
    with members(pg_url, "r1", "r2") as (r1, r2):
        one, two = leader_of(r1), leader_of(r2)
        for seed in range(3):
            assert r1.pg.commit(Commit(partials=[("s", partial(seed, base))]))
            if seed == 0:
                assert await one.step() == 1
            elif seed == 1:
                sql(pg_url, "UPDATE leases SET expires_at = 0 WHERE kind = %s", LEADER[0])
                assert await two.step() == 1
                await r2.store.call(r2.pg.release, *LEADER)
                await r1.coordinator.heartbeat()
                assert not one.leader
            else:
                assert await one.step() == 1
        assert records_in(one.detection) == 3 * 400  # r2's partial included: nothing lost, nothing overwritten
        blob = r1.pg.snapshot(SNAPSHOT_NAME)
        assert blob is not None
        assert records_in(Detection.restore(blob, Settings(window_seconds=60), 3600)) == 3 * 400


async def test_a_leader_whose_commit_failed_steps_down_and_restores_from_the_database(pg_url: str) -> None:
    base = int(time.time()) // 60 * 60 - 600
    with members(pg_url, "r1") as (r1,):
        one = leader_of(r1)
        r1.pg.commit(Commit(partials=[("s", partial(0, base))]))
        assert await one.step() == 1
        sql(
            pg_url,
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql",
        )
        sql(pg_url, "CREATE TRIGGER refuse BEFORE UPDATE ON snapshots FOR EACH ROW EXECUTE FUNCTION refuse()")
        r1.pg.commit(Commit(partials=[("s", partial(1, base))]))
        with pytest.raises(Exception, match="disk full"):
            await one.step()
        assert one.detection is None  # stepped down: nothing of the failed step is kept
        sql(pg_url, "DROP TRIGGER refuse ON snapshots")
        assert await one.step() == 1  # the partial waited in the database
        assert records_in(one.detection) == 2 * 400


def test_the_leader_drains_a_backlog_of_2000_partials_off_its_event_loop_without_losing_its_lease(
    aws: str, pg_url: str, tmp_path: Path
) -> None:
    """2,000 queued partials over 2,000 ENIs (tens of ms each to apply): two real replicas, 4 s leases. The
    leader lease is acquired once (epoch 1) and the event loop of every replica never lags 1 s."""
    from tests.integration.test_fleet import Fleet, wait_for

    boto("kinesis", aws).create_stream(StreamName="flowlogs", ShardCount=1)
    base = int(time.time()) // 60 * 60 - 1200
    blobs = [partial(seed, base + 60 * (seed % 10), enis=2000, records=4000) for seed in range(10)]
    loader = PostgresStore(pg_url, "loader")
    try:
        for chunk in range(10):
            assert loader.commit(Commit(partials=[("stream", blobs[i % 10]) for i in range(chunk * 200, chunk * 200 + 200)]))
    finally:
        loader.close()

    def queued() -> int:
        return int(sql(pg_url, "SELECT count(*) FROM window_partials")[0][0])

    assert queued() == 2000
    config = {
        "checkpoint": {"url": pg_url},
        "sources": [{"type": "kinesis", "name": "stream", "stream_name": "flowlogs", "endpoint_url": aws}],
        "anomaly": {"window_seconds": 60, "lateness_seconds": 1500},
        "fleet": {"lease_seconds": 4},
        "decode_workers": 1,
    }
    seen: set[int] = set()

    def drained() -> bool:
        seen.add(queued())
        return 0 in seen

    with Fleet(tmp_path, config, n=2) as fleet:
        wait_for(drained, 900, "the backlog to drain", fleet)
        assert len(seen - {0, 2000}) >= 3  # slice by slice, each committed on its own
        assert sql(pg_url, "SELECT epoch FROM leases WHERE kind = %s", LEADER[0]) == [(1,)]  # one leader throughout
        for replica in fleet.replicas:
            metrics = replica.scrape()
            assert metrics is not None
            count = metrics["streamer_event_loop_lag_seconds_count"][()]
            under_1s = metrics["streamer_event_loop_lag_seconds_bucket"][(("le", "1.0"),)]
            assert count > 0
            assert under_1s == count, (replica.replica_id, metrics["streamer_event_loop_lag_seconds_bucket"])
    assert "Traceback" not in fleet.logs()


# --- the database crashes -------------------------------------------------------------------------


def test_a_postgresql_crash_under_load_leaves_the_sums_exact_and_one_alert(aws: str, alertmanager: str, tmp_path: Path) -> None:
    """Three replicas read S3 via SQS (with a scan no replica sees alone) and a 4-shard Kinesis stream;
    PostgreSQL is killed with SIGQUIT mid-way, stays down 5 s and restarts (crash recovery). No replica is
    restarted: the fleet's sums end exact and Alertmanager holds exactly one alert."""
    import datetime as dt
    import random

    from tests.integration.conftest import aws_key, free_port
    from tests.integration.postgres import running_postgres
    from tests.integration.test_fleet import VICTIM, Fleet, am_alerts, fleet_objects, wait_for

    s3, sqs = boto("s3", aws), boto("sqs", aws)
    s3.create_bucket(Bucket="flow-logs")
    url = sqs.create_queue(QueueName="fleet", Attributes={"VisibilityTimeout": "10"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket="flow-logs",
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    logs = kinesis_stream(aws, shards=4)
    for s in range(8):
        logs.create_log_stream(logGroupName=GROUP, logStreamName=f"eni-{s}")
    truth = Truth()
    now = dt.datetime.now(dt.UTC)
    base = int(now.timestamp()) // 60 * 60 - 45 * 60
    objects = fleet_objects(base, truth)
    random.Random(5).shuffle(objects)

    def kinesis_round(round_: int) -> None:
        for s in range(8):  # no rejects: the scan is the only anomaly
            profile = TrafficProfile(
                records=100, enis=6, seed=1000 + round_ * 10 + s, start_epoch=base + 20 * 60, reject_ratio=0.0
            )
            table = generate_table(profile)
            truth.add_rows(table.to_pylist())
            put(logs, f"eni-{s}", [str(x) for x in to_lines(table).to_pylist()])

    with running_postgres(free_port()) as pg:
        config = {
            "checkpoint": {"url": pg.url(pg.database())},
            "sources": [
                {
                    "type": "s3_sqs",
                    "name": "queue",
                    "queue_url": url,
                    "endpoint_url": aws,
                    "wait_time_seconds": 1,
                    "max_messages": 4,
                    "visibility_timeout_seconds": 10,
                },
                {"type": "kinesis", "name": "stream", "stream_name": "flowlogs", "endpoint_url": aws, "batch_records": 5},
            ],
            "anomaly": {"window_seconds": 60, "lateness_seconds": 1500, "idle_timeout_seconds": 25, "warmup_windows": 10},
            "alerts": {"alertmanager_url": alertmanager, "resend_interval_seconds": 1},
            "fleet": {"lease_seconds": 3},
            "decode_workers": 1,
        }
        with Fleet(tmp_path, config) as fleet:
            for i, body in enumerate(objects):
                s3.put_object(Bucket="flow-logs", Key=aws_key(now, "daily", n=i), Body=body)
            kinesis_round(0)
            kinesis_round(1)
            wait_for(lambda: sum(v[0] for v in fleet.totals().values()) >= 20 * 300, 120, "a third of the load", fleet)
            counted = sum(v[0] for v in fleet.totals().values())
            pg.crash()
            kinesis_round(2)  # the load goes on while the database is down
            time.sleep(5)  # the outage itself, not a wait for a condition
            pg.start()
            kinesis_round(3)
            wait_for(lambda: fleet.totals() == truth.totals, 240, "the fleet's sums to equal the truth", fleet)
            assert all(r.alive for r in fleet.replicas)  # recovered without a restart
            assert counted < sum(v[0] for v in truth.totals.values())  # the crash landed mid-load
            wait_for(lambda: bool(am_alerts(alertmanager)), 120, "the scan's alert", fleet)
            time.sleep(3)  # re-sends from whichever replica leads: still one alert
            alerts = am_alerts(alertmanager)
            assert [a["labels"]["interface_id"] for a in alerts] == [VICTIM], alerts
            assert fleet.totals() == truth.totals
