"""Kinesis keeps several batches in flight, against moto over HTTP: shards in parallel, and within a shard the
next batch read while the one before it commits, with the shard's cursor still committed in order.

The sink here is a test double of our own Sink interface (not of an I/O
boundary): it holds each batch until the test releases it, and it checks each
batch's compare-and-set against the cursor it committed last, as the store
does, so what is in flight at a moment is observable without timing assumptions.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import pytest

from streamer.aws import AwsClients
from streamer.sources.base import DUPLICATE, BuildContext, Delivery
from streamer.sources.kinesis import KinesisSource, KinesisSourceConfig
from tests.integration.conftest import boto, until

pytestmark = pytest.mark.integration


class Held:
    def __init__(self, shard: str, delivery: Delivery) -> None:
        self.shard = shard
        self.delivery = delivery
        self.gate = asyncio.Event()
        #: what `process` does once released: return this outcome, or raise
        self.outcome = "ok"


class HoldingSink:
    """Holds every batch until released; commits a batch's cursor only if its expected cursor is the last one."""

    def __init__(self) -> None:
        self.calls: list[Held] = []
        self.committed: dict[str, str | None] = {}
        #: per shard, the lines committed, in commit order
        self.lines: dict[str, list[str]] = {}
        self.errors: list[str] = []

    def held(self, shard: str) -> list[Held]:
        return [h for h in self.calls if h.shard == shard and not h.gate.is_set()]

    def in_process(self) -> set[str]:
        return {h.shard for h in self.calls if not h.gate.is_set()}

    async def process(self, source: str, delivery: Delivery) -> str:
        [(_, shard)] = delivery.cursors
        call = Held(shard, delivery)
        self.calls.append(call)
        await call.gate.wait()
        if call.outcome == "fail":
            raise RuntimeError("the database went away")
        if call.outcome == DUPLICATE:
            return DUPLICATE
        assert delivery.expected[(source, shard)] == self.committed.get(shard), "a cursor committed out of order"
        self.committed[shard] = delivery.cursors[(source, shard)]
        body = b"".join([chunk async for chunk in delivery.body()]).decode()
        self.lines.setdefault(shard, []).extend(body.splitlines())
        return "ok"

    async def give_up(self, source: str, delivery: Delivery, reason: str) -> None:
        raise AssertionError(f"gave up {delivery.location}: {reason}")

    def source_error(self, source: str, reason: str, message: str) -> None:
        self.errors.append(reason)

    def polled(self, source: str) -> None:
        pass

    def behind(self, source: str, shard: str, seconds: float | None) -> None:
        pass

    def queue_backlog(self, source: str, waiting: int, held: int, oldest_age_seconds: float | None) -> None:
        raise AssertionError("not a queue")


def stream(aws: str, shards: int, per_shard: int) -> tuple[list[str], dict[str, list[str]]]:
    """A stream with `per_shard` records in each shard (one line each); returns the shard ids and their lines."""
    kinesis = boto("kinesis", aws)
    kinesis.create_stream(StreamName="flowlogs", ShardCount=shards)
    listed = kinesis.list_shards(StreamName="flowlogs")["Shards"]
    lines: dict[str, list[str]] = {}
    for shard in listed:
        shard_id = shard["ShardId"]
        for n in range(per_shard):
            line = f"{shard_id} record {n}"
            events = [{"id": str(n), "timestamp": 1, "message": line}]
            doc = {"messageType": "DATA_MESSAGE", "logGroup": "g", "logStream": "s", "logEvents": events}
            data = gzip.compress(json.dumps(doc).encode())
            key = shard["HashKeyRange"]["StartingHashKey"]
            kinesis.put_record(StreamName="flowlogs", Data=data, PartitionKey="p", ExplicitHashKey=key)
            lines.setdefault(shard_id, []).append(line)
    return [s["ShardId"] for s in listed], lines


async def source_on(aws: str, clients: AwsClients, cursors: Any = None, **extra: Any) -> KinesisSource:
    config = KinesisSourceConfig.model_validate(
        {"type": "kinesis", "stream_name": "flowlogs", "endpoint_url": aws, "poll_interval_seconds": 0.2, **extra}
    )

    async def none(*_: object) -> dict[str, str]:
        return {}

    source = await config.build(BuildContext("kinesis", clients, none, cursors or none, none))  # type: ignore[arg-type]
    source.retry_seconds = 0.05
    return source


async def stop(runner: asyncio.Task[None]) -> None:
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


async def test_shards_are_read_in_parallel_and_each_reads_ahead_of_its_commit(aws: str) -> None:
    shards, lines = stream(aws, shards=4, per_shard=6)
    clients = AwsClients()
    sink = HoldingSink()
    try:
        source = await source_on(aws, clients, batch_records=2)
        runner = asyncio.create_task(source.run(sink))
        # Every shard's first batch is in the sink at once: no shard waits for another's commit.
        await until(lambda: sink.in_process() == set(shards), "a batch of every shard in flight", context=sink.in_process)
        # While those are held, each shard has fetched and unpacked its next batch, but not handed it over.
        await until(lambda: all(source.ahead.get(s, 0) >= 1 for s in shards), "batches read ahead", context=lambda: source.ahead)
        assert all(len(sink.held(s)) == 1 for s in shards)
        assert len(sink.calls) == 4
        # Releasing one shard's batch lets its next one through, with the committed cursor as its expected one.
        first = sink.held(shards[0])[0]
        first.gate.set()
        await until(lambda: len(sink.held(shards[0])) == 1 and len(sink.calls) == 5, "the next batch of that shard")
        [second] = sink.held(shards[0])
        assert second.delivery.expected == first.delivery.cursors
        # Release everything as it comes: each shard's records arrive once, in order.
        def release_all() -> bool:
            for call in sink.calls:
                call.gate.set()
            return all(sink.lines.get(s) == lines[s] for s in shards)

        await until(release_all, "every record once, in order", context=lambda: sink.lines)
        assert len(sink.calls) == 4 * 3  # three batches of two records per shard, each handed over once
        assert sink.errors == []
        await stop(runner)
    finally:
        await clients.close()


async def test_reading_ahead_stops_at_the_bytes_in_flight(aws: str) -> None:
    [shard], lines = stream(aws, shards=1, per_shard=4)
    clients = AwsClients()
    sink = HoldingSink()
    try:
        source = await source_on(aws, clients, batch_records=2, max_bytes_in_flight=1)
        runner = asyncio.create_task(source.run(sink))
        await until(lambda: len(sink.held(shard)) == 1, "the first batch")
        # The first batch already holds more than the bound: the next is not read until it commits.
        await until(lambda: shard in source.waiting, "the reader waiting for room")
        assert source.ahead[shard] == 0
        sink.calls[0].gate.set()
        await until(lambda: len(sink.calls) == 2, "the second batch, read once the first committed")
        # Each GetRecords answer (two records) is cut into a batch per record: each holds more than the bound.
        assert [len(c.delivery.cursors) for c in sink.calls] == [1, 1]

        def release_all() -> bool:
            for call in sink.calls:
                call.gate.set()
            return sink.lines.get(shard) == lines[shard]

        await until(release_all, "every record")
        assert len(sink.calls) == 4
        await stop(runner)
    finally:
        await clients.close()


async def test_a_batch_that_fails_to_commit_holds_back_the_batches_read_after_it(aws: str) -> None:
    [shard], lines = stream(aws, shards=1, per_shard=4)
    clients = AwsClients()
    sink = HoldingSink()
    try:
        source = await source_on(aws, clients, batch_records=2)
        runner = asyncio.create_task(source.run(sink))
        await until(lambda: len(sink.calls) == 1 and source.ahead.get(shard) == 1, "a batch held and the next read ahead")
        sink.calls[0].outcome = "fail"  # its commit fails: it is tried again, before the batch after it
        sink.calls[0].gate.set()
        await until(lambda: len(sink.calls) == 2, "the retry")
        assert sink.calls[1].delivery.cursors == sink.calls[0].delivery.cursors
        assert sink.committed == {}
        sink.calls[1].gate.set()
        await until(lambda: len(sink.calls) == 3, "the next batch, once the first committed")
        assert sink.calls[2].delivery.expected == sink.calls[0].delivery.cursors
        sink.calls[2].gate.set()
        await until(lambda: sink.lines.get(shard) == lines[shard], "every record, once")
        assert sink.errors == ["commit_failed"]
        await stop(runner)
    finally:
        await clients.close()


async def test_a_batch_counted_elsewhere_drops_what_was_read_ahead_and_reads_on_from_the_cursor(aws: str) -> None:
    [shard], lines = stream(aws, shards=1, per_shard=6)
    clients = AwsClients()
    sink = HoldingSink()
    cursors: dict[str, str] = {}

    async def committed() -> dict[str, str]:
        return dict(cursors)

    try:
        source = await source_on(aws, clients, cursors=committed, batch_records=2)
        runner = asyncio.create_task(source.run(sink))
        await until(lambda: len(sink.calls) == 1 and source.ahead.get(shard) == 1, "a batch held and the next read ahead")
        # Another replica committed the first two batches meanwhile: this one is a duplicate.
        first = sink.calls[0]
        ((_, cursor_after_first),) = first.delivery.cursors.items()
        kinesis = boto("kinesis", aws)
        after = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": cursor_after_first}
        iterator = kinesis.get_shard_iterator(StreamName="flowlogs", ShardId=shard, **after)["ShardIterator"]
        cursors[shard] = kinesis.get_records(ShardIterator=iterator, Limit=2)["Records"][-1]["SequenceNumber"]
        sink.committed[shard] = cursors[shard]
        first.outcome = DUPLICATE
        first.gate.set()
        # What was read ahead (the second batch) is dropped: the source reads on after the committed cursor.
        await until(lambda: len(sink.calls) == 2, "the batch after the committed cursor")
        assert sink.calls[1].delivery.expected == {("kinesis", shard): cursors[shard]}
        sink.calls[1].gate.set()
        await until(lambda: sink.lines.get(shard) == lines[shard][4:], "the records after the cursor, once")
        await stop(runner)
    finally:
        await clients.close()


async def test_the_database_away_while_shards_are_scheduled_stops_no_shard(aws: str) -> None:
    """The schedule reads the cursors (and, in a fleet, the leases) from the database: while it is away, the
    shards being read go on and the next schedule looks again. The model test found the whole source failing
    instead, every shard's batches dropped and the source restarted after a backoff that grew with each blip."""
    from streamer.store.base import DatabaseUnavailable

    [shard], lines = stream(aws, shards=1, per_shard=2)
    calls = 0

    async def cursors(*_: object) -> dict[str, str]:
        nonlocal calls
        calls += 1
        if calls in (2, 3):  # the first schedules after start: the database is away
            raise DatabaseUnavailable("postgresql://db/streamer: no database connection within 2 s")
        return {}

    clients = AwsClients()
    sink = HoldingSink()
    try:
        source = await source_on(aws, clients, cursors=cursors, batch_records=1, shard_refresh_seconds=0.1)
        runner = asyncio.create_task(source.run(sink))
        await until(lambda: len(sink.held(shard)) == 1, "the first batch, held")
        await until(lambda: calls >= 4, "schedules past the outage", context=lambda: (calls, sink.errors))
        assert not runner.done(), runner.exception() if runner.done() and not runner.cancelled() else "cancelled"
        assert sink.errors == ["DatabaseUnavailable", "DatabaseUnavailable"]
        assert len(sink.calls) == 1  # the held batch was not dropped and read again

        def release_all() -> bool:
            for call in sink.calls:
                call.gate.set()
            return sink.lines.get(shard) == lines[shard]

        await until(release_all, "every record once")
        await stop(runner)
    finally:
        await clients.close()
