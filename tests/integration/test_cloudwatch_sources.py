"""CloudWatch Logs sources against moto in server mode: subscription filter ->
Kinesis -> streamer, and FilterLogEvents polling with allowed lateness."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate.state import FlowState
from streamer.aws import AwsClients
from streamer.export.telemetry import Telemetry
from streamer.pipeline import Pipeline, Store
from streamer.sources.base import Delivery
from streamer.sources.cloudwatch import SEEN_ID_BYTES, CloudWatchSource, CloudWatchSourceConfig
from streamer.sources.kinesis import KinesisSource
from streamer.store.base import DatabaseUnavailable
from streamer.store.sqlite import CheckpointStore
from streamer.synth import TrafficProfile, generate_table, to_lines
from tests.integration.conftest import (
    Metrics,
    Truth,
    boto,
    exported_totals,
    more_polls,
    running,
    service_config,
    until,
    wait_metrics,
)

pytestmark = pytest.mark.integration

GROUP = "/vpc/flowlogs"


def records_for(truth: Truth | None, n: int, seed: int, enis: int = 5) -> list[str]:
    """Flow-log lines (default v2 format) of a generated batch, added to `truth`."""
    table = generate_table(TrafficProfile(records=n, enis=enis, seed=seed, start_epoch=int(time.time()) - 1800, span_seconds=600))
    if truth is not None:
        truth.add_rows(table.to_pylist())
    return [str(x) for x in to_lines(table).to_pylist()]


def put_events(logs: Any, stream: str, lines: list[str], timestamp_ms: int) -> None:
    for i in range(0, len(lines), 500):
        batch = lines[i : i + 500]
        logs.put_log_events(
            logGroupName=GROUP,
            logStreamName=stream,
            logEvents=[{"timestamp": timestamp_ms + j, "message": m} for j, m in enumerate(batch)],
        )


def log_group(aws: str, streams: list[str]) -> Any:
    logs = boto("logs", aws)
    logs.create_log_group(logGroupName=GROUP)
    for stream in streams:
        logs.create_log_stream(logGroupName=GROUP, logStreamName=stream)
    return logs


def subscribe_to_kinesis(aws: str, logs: Any, shards: int = 1) -> str:
    kinesis = boto("kinesis", aws)
    kinesis.create_stream(StreamName="flowlogs", ShardCount=shards)
    arn = kinesis.describe_stream(StreamName="flowlogs")["StreamDescription"]["StreamARN"]
    logs.put_subscription_filter(
        logGroupName=GROUP,
        filterName="to-kinesis",
        filterPattern="",
        destinationArn=arn,
        roleArn="arn:aws:iam::123456789012:role/cwl",
    )
    return str(arn)


def records_total(metrics: Metrics) -> int:
    return int(sum(v[0] for v in exported_totals(metrics).values()))


def kinesis_source(aws: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "kinesis",
        "name": "kinesis",
        "stream_name": "flowlogs",
        "endpoint_url": aws,
        "poll_interval_seconds": 0.2,
        **extra,
    }


async def test_subscription_filter_to_kinesis_counts_exactly_and_skips_bad_records(aws: str, tmp_path: Path) -> None:
    logs = log_group(aws, ["eni-a-all", "eni-b-all"])
    subscribe_to_kinesis(aws, logs, shards=2)
    truth = Truth()
    now_ms = int(time.time() * 1000)
    put_events(logs, "eni-a-all", records_for(truth, 1200, 1), now_ms - 60_000)
    put_events(logs, "eni-b-all", [*records_for(truth, 800, 2), "this event is not a flow log"], now_ms - 30_000)
    kinesis = boto("kinesis", aws)
    control = {
        "messageType": "CONTROL_MESSAGE",
        "logGroup": "",
        "logStream": "",
        "logEvents": [{"id": "1", "timestamp": 1, "message": "x"}],
    }
    kinesis.put_record(StreamName="flowlogs", Data=gzip.compress(json.dumps(control).encode()), PartitionKey="c")
    kinesis.put_record(StreamName="flowlogs", Data=b"\x00not gzip, not json", PartitionKey="d")

    async with running(service_config(tmp_path, [kinesis_source(aws)])) as service:
        await wait_metrics(service.port, lambda m: records_total(m) >= 2000, what="2000 records")
        metrics = await more_polls(service.port, 6)
        assert exported_totals(metrics) == truth.totals
        errors = {dict(k)["reason"]: v for k, v in metrics["streamer_decode_errors_total"].items()}
        assert errors == {"wrong_field_count": 1, "invalid_payload": 1}
        assert metrics["streamer_source_ready"][(("source", "kinesis"),)] == 1
        # Each shard's lag behind its newest record, from GetRecords' MillisBehindLatest: caught up here.
        behind = {dict(k)["shard"]: v for k, v in metrics["streamer_kinesis_behind_seconds"].items()}
        assert sorted(behind) == ["shardId-000000000000", "shardId-000000000001"]
        assert all(v == 0 for v in behind.values())


async def test_kinesis_resumes_from_checkpoint_and_drains_parents_before_children(aws: str, tmp_path: Path) -> None:
    logs = log_group(aws, ["eni-a-all"])
    subscribe_to_kinesis(aws, logs, shards=1)
    truth = Truth()
    now_ms = int(time.time() * 1000)
    put_events(logs, "eni-a-all", records_for(truth, 600, 1), now_ms - 60_000)
    config = service_config(tmp_path, [kinesis_source(aws, start_position="latest", shard_refresh_seconds=0.5)])
    async with running(config) as service:
        # start_position=latest on a first start: what was there before is skipped.
        await wait_metrics(
            service.port, lambda m: m.get("streamer_source_ready", {}).get((("source", "kinesis"),)) == 1, what="ready"
        )
        assert records_total(await more_polls(service.port, 3)) == 0
        truth = Truth()
        put_events(logs, "eni-a-all", records_for(truth, 400, 2), now_ms - 50_000)
        await wait_metrics(service.port, lambda m: records_total(m) >= 400, what="records after start")
    # While stopped: more records, then a reshard. Restart resumes after the checkpoint (not "latest").
    put_events(logs, "eni-a-all", records_for(truth, 300, 3), now_ms - 40_000)
    kinesis = boto("kinesis", aws)
    kinesis.update_shard_count(StreamName="flowlogs", TargetShardCount=2, ScalingType="UNIFORM_SCALING")
    async with running(config) as service:
        await wait_metrics(service.port, lambda m: records_total(m) >= 700, what="resumed records")
        source = service.sources[0]
        assert isinstance(source, KinesisSource)
        children = {"shardId-000000000001", "shardId-000000000002"}
        deadline = asyncio.get_running_loop().time() + 30
        while source.reading != children:  # the parent drains, then the children start
            assert asyncio.get_running_loop().time() < deadline, source.reading
            await asyncio.sleep(0.1)
        metrics = await more_polls(service.port, 4)
        assert exported_totals(metrics) == truth.totals
    store = CheckpointStore(tmp_path / "state.db")
    assert store.cursors("kinesis")["shardId-000000000000"] == "SHARD_END"
    store.close()


def cloudwatch_source(aws: str, **extra: Any) -> dict[str, Any]:
    return {"type": "cloudwatch", "name": "cwl", "log_group": GROUP, "endpoint_url": aws, "poll_interval_seconds": 0.3, **extra}


async def test_filter_log_events_counts_late_events_once(aws: str, tmp_path: Path) -> None:
    logs = log_group(aws, ["eni-a-all", "eni-b-all"])
    truth = Truth()
    now_ms = int(time.time() * 1000)
    put_events(logs, "eni-a-all", records_for(truth, 500, 1), now_ms - 120_000)
    config = service_config(tmp_path, [cloudwatch_source(aws, lateness_seconds=600, log_stream_prefix="eni-")])
    async with running(config) as service:
        await wait_metrics(service.port, lambda m: records_total(m) >= 500, what="first events")
        # Late events: timestamped before the last poll's end, ingested now (inside the lateness).
        put_events(logs, "eni-b-all", [*records_for(truth, 300, 2), "garbage event"], now_ms - 300_000)
        await wait_metrics(service.port, lambda m: records_total(m) >= 800, what="late events")
        metrics = await more_polls(service.port)  # more polls over the same window: nothing twice
        assert exported_totals(metrics) == truth.totals
        errors = {dict(k)["reason"]: v for k, v in metrics["streamer_decode_errors_total"].items()}
        assert errors == {"wrong_field_count": 1}
    # A restart keeps the seen-ids window: still nothing twice.
    async with running(config) as service:
        assert exported_totals(await more_polls(service.port)) == truth.totals


async def test_log_format_discovered_from_describe_flow_logs(aws: str, tmp_path: Path) -> None:
    logs = log_group(aws, ["eni-x-all"])
    ec2 = boto("ec2", aws)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    flow_log = ec2.create_flow_logs(
        ResourceIds=[vpc],
        ResourceType="VPC",
        TrafficType="ALL",
        LogGroupName=GROUP,
        DeliverLogsPermissionArn="arn:aws:iam::123456789012:role/x",
        LogFormat="${interface-id} ${action} ${packets} ${bytes}",
    )["FlowLogIds"][0]
    put_events(logs, "eni-x-all", ["eni-x REJECT 3 120", "eni-x ACCEPT 1 40"], int(time.time() * 1000) - 10_000)
    async with running(service_config(tmp_path, [cloudwatch_source(aws, flow_log_id=flow_log)])) as service:
        metrics = await wait_metrics(service.port, lambda m: records_total(m) >= 2, what="custom-format events")
        assert exported_totals(metrics) == {("eni-x", "REJECT"): [1, 3, 120], ("eni-x", "ACCEPT"): [1, 1, 40]}


# --- a sweep in pieces ------------------------------------------------------------------------------


class Crash(RuntimeError):
    pass


class PieceSink:
    """The real pipeline; records each delivery's body size and crashes the source once, right after its
    delivery number `crash_after` committed."""

    def __init__(self, pipeline: Pipeline, crash_after: int | None = None, crash: Exception | None = None) -> None:
        self.pipeline = pipeline
        self.crash_after = crash_after
        self.crash = crash or Crash("the source crashed after a piece committed")
        self.sizes: list[int] = []
        self.snapshot_bytes: list[int] = []

    async def process(self, source: str, delivery: Delivery) -> str:
        self.sizes.append(sum([len(chunk) async for chunk in delivery.body()]))
        self.snapshot_bytes.append(sum(len(blob) for blob in delivery.snapshots.values() if blob is not None))
        outcome = await self.pipeline.process(source, delivery)
        assert outcome == "ok"
        if len(self.sizes) == self.crash_after:
            raise self.crash
        return outcome

    def source_error(self, source: str, reason: str, message: str) -> None:
        raise AssertionError(f"{reason}: {message}")

    def polled(self, source: str) -> None:
        pass


def counted(pipeline: Pipeline) -> dict[tuple[str, str], list[int]]:
    totals: dict[tuple[str, str], list[int]] = {}
    for row in pipeline.state.counters.table().to_pylist():
        acc = totals.setdefault((row["interface_id"], row["action"]), [0, 0, 0])
        for i, name in enumerate(("records", "packets", "bytes")):
            acc[i] += row[name]
    return totals


PIECE = 32 << 10


@contextlib.asynccontextmanager
async def piece_sources(aws: str, tmp_path: Path) -> AsyncIterator[tuple[Pipeline, Callable[..., Awaitable[CloudWatchSource]]]]:
    """The real pipeline over a SQLite checkpoint, and a factory of fresh pollers on it (a restart), each with
    its clock `later` seconds ahead."""
    store = Store(CheckpointStore(tmp_path / "state.db"))
    clients = AwsClients()
    config = CloudWatchSourceConfig(
        type="cloudwatch",
        log_group=GROUP,
        endpoint_url=aws,
        lateness_seconds=900,
        max_bytes_per_delivery=PIECE,
        poll_interval_seconds=0.05,
    )

    async def fresh(later: float = 0, away: frozenset[int] = frozenset()) -> CloudWatchSource:
        """`away`: the numbers of the window-end loads that find the database away."""
        logs = await clients.logs("us-east-1", aws)
        loads = itertools.count(1)

        async def cursors() -> dict[str, str]:
            if next(loads) in away:
                raise DatabaseUnavailable("postgresql://db/streamer: no database connection within 2 s")
            return await store.call(store.store.cursors, "cwl")

        snapshot = lambda name: store.call(store.store.snapshot, name)  # noqa: E731
        return CloudWatchSource("cwl", config, logs, cursors, snapshot, clock=lambda: time.time() + later)

    with ThreadPoolExecutor(2) as pool:
        pipeline = Pipeline(FlowState(), store, Telemetry(CollectorRegistry()), pool)
        try:
            yield pipeline, fresh
        finally:
            pipeline.close()
            await clients.close()
            store.close()


async def test_a_sweep_larger_than_max_bytes_per_delivery_is_committed_in_pieces(aws: str, tmp_path: Path) -> None:
    """Held bytes are bounded: no delivery body is larger than `max_bytes_per_delivery` or the seen ids'
    checkpoint that each piece rewrites, whichever is larger, so a sweep is never held whole and a long sweep
    writes about its text in seen ids, not pieces times ids; every event is counted once, and a further sweep
    over the same window counts nothing."""
    logs = log_group(aws, ["eni-a-all", "eni-b-all"])
    truth = Truth()
    now_ms = int(time.time() * 1000)
    put_events(logs, "eni-a-all", records_for(truth, 2000, 1), now_ms - 120_000)
    put_events(logs, "eni-b-all", records_for(truth, 2000, 2), now_ms - 60_000)
    async with piece_sources(aws, tmp_path) as (pipeline, fresh):
        source = await fresh()
        sink = PieceSink(pipeline)
        assert await source.poll_once(sink) == 4000
        text = sum(sink.sizes)
        assert text > 4 * PIECE
        assert len(sink.sizes) >= 4  # in pieces, never whole
        assert max(sink.sizes) <= max(PIECE, SEEN_ID_BYTES * 4000 + 1024)
        assert sink.sizes[0] <= PIECE
        # each piece rewrites the seen ids, so a piece is at least as big as they are: in all, no more than the text
        assert sum(sink.snapshot_bytes) <= text
        assert counted(pipeline) == truth.totals
        assert await source.poll_once(sink) == 0
        assert counted(pipeline) == truth.totals


async def test_a_crash_after_a_piece_committed_neither_loses_nor_repeats_an_event(aws: str, tmp_path: Path) -> None:
    """The poller crashes right after its first piece committed, on a first start (no window end yet) and
    again once a window end exists; a new poller on the same checkpoint resumes from the committed window
    end and skips the ids the pieces committed: every event counted once."""
    logs = log_group(aws, ["eni-a-all"])
    truth = Truth()
    now_ms = int(time.time() * 1000)
    # Older than the lateness, near the end of the first start's lookback (an hour): a restart 10 minutes later
    # reads them only if it resumes from the crashed sweep's start, not from its own lookback.
    put_events(logs, "eni-a-all", records_for(truth, 2000, 1), now_ms - 3_300_000)
    async with piece_sources(aws, tmp_path) as (pipeline, fresh):
        with pytest.raises(Crash):
            await (await fresh()).poll_once(PieceSink(pipeline, crash_after=1))
        assert 0 < sum(n for n, _, _ in counted(pipeline).values()) < 2000  # one piece only
        source = await fresh(600)
        await source.poll_once(PieceSink(pipeline))
        assert counted(pipeline) == truth.totals
        put_events(logs, "eni-a-all", records_for(truth, 2000, 2), now_ms - 30_000)
        with pytest.raises(Crash):
            await (await fresh(600)).poll_once(PieceSink(pipeline, crash_after=2))
        source = await fresh(600)
        await source.poll_once(PieceSink(pipeline))
        assert await source.poll_once(PieceSink(pipeline)) == 0
        assert counted(pipeline) == truth.totals


class ErrorsSink(PieceSink):
    """PieceSink that keeps the source errors it is told of instead of failing on them."""

    def __init__(self, pipeline: Pipeline, crash_after: int | None = None, crash: Exception | None = None) -> None:
        super().__init__(pipeline, crash_after, crash)
        self.errors: list[str] = []

    def source_error(self, source: str, reason: str, message: str) -> None:
        self.errors.append(reason)


async def test_the_database_away_while_the_poller_reads_its_window_polls_again_without_a_restart(
    aws: str, tmp_path: Path
) -> None:
    """The window end and seen ids are read from the database at start and when a poll (re)takes the lease:
    while it is away, the error is counted and the next poll looks again. It failed the source instead, which
    the service restarted after a backoff that grows with each blip (up to 300 s)."""
    logs = log_group(aws, ["eni-a-all"])
    truth = Truth()
    put_events(logs, "eni-a-all", records_for(truth, 50, 1), int(time.time() * 1000) - 60_000)
    async with piece_sources(aws, tmp_path) as (pipeline, fresh):
        source = await fresh(away=frozenset({1, 3, 4}))  # at start, then the first poll's two tries
        sink = ErrorsSink(pipeline)
        runner = asyncio.create_task(source.run(sink))
        try:
            await until(lambda: counted(pipeline) == truth.totals or runner.done(), "every event counted")
            assert not runner.done(), runner
            assert sink.errors == ["DatabaseUnavailable"] * 3
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


async def test_the_database_away_after_a_piece_committed_resumes_from_the_store_without_counting_twice(
    aws: str, tmp_path: Path
) -> None:
    """A later piece of a sweep fails on the database after an earlier one committed its events and seen ids:
    the next poll reads the window end and seen ids again from the store (as a restart would), so the
    committed piece's events are not counted a second time."""
    logs = log_group(aws, ["eni-a-all"])
    truth = Truth()
    put_events(logs, "eni-a-all", records_for(truth, 10, 1), int(time.time() * 1000) - 120_000)
    async with piece_sources(aws, tmp_path) as (pipeline, fresh):
        source = await fresh()
        await source.poll_once(PieceSink(pipeline))  # a window end and seen ids, committed
        put_events(logs, "eni-a-all", records_for(truth, 2000, 2), int(time.time() * 1000) - 60_000)
        away = DatabaseUnavailable("postgresql://db/streamer: no database connection within 2 s")
        sink = ErrorsSink(pipeline, crash_after=1, crash=away)
        runner = asyncio.create_task(source.run(sink))
        try:
            await until(lambda: len(sink.errors) == 1 or runner.done(), "the piece that fails")
            polls = len(sink.sizes)
            await until(lambda: len(sink.sizes) >= polls + 5 or runner.done(), "further polls")
            assert not runner.done(), runner
            assert sink.errors == ["DatabaseUnavailable"]
            assert counted(pipeline) == truth.totals
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
