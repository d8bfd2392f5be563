"""Kinesis's `max_bytes_in_flight` bounds what the source holds: inflated text, not compressed records
(issue 29 item 3), against moto over HTTP. A GetRecords answer with more text than the bound is cut
into several batches, each committing the cursor of its last record.
"""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest

from streamer.aws import AwsClients
from tests.integration.conftest import boto, until
from tests.integration.test_kinesis_in_flight import HoldingSink, source_on, stop

pytestmark = pytest.mark.integration

LINE = "2 123456789012 eni-{n} 10.0.0.1 10.0.0.2 443 49152 6 1 40 1700000000 1700000060 ACCEPT OK"
#: flow-log lines per record: about 1 MiB of text, which gzip'd JSON carries in ~20 KB
PER_RECORD = 10_000


def stream(aws: str, records: int) -> tuple[str, list[str], int]:
    """One shard of `records` records, each ~1 MiB of text (gzip'd: a few KB); its id, lines and the compressed size."""
    kinesis = boto("kinesis", aws)
    kinesis.create_stream(StreamName="flowlogs", ShardCount=1)
    [shard] = kinesis.list_shards(StreamName="flowlogs")["Shards"]
    lines: list[str] = []
    compressed = 0
    for n in range(records):
        mine = [LINE.format(n=n)] * PER_RECORD
        events = [{"id": str(i), "timestamp": 1, "message": line} for i, line in enumerate(mine)]
        data = gzip.compress(
            json.dumps({"messageType": "DATA_MESSAGE", "logGroup": "g", "logStream": "s", "logEvents": events}).encode()
        )
        compressed += len(data)
        kinesis.put_record(StreamName="flowlogs", Data=data, PartitionKey="p")
        lines += mine
    return shard["ShardId"], lines, compressed


async def test_the_bytes_in_flight_are_the_inflated_text(aws: str) -> None:
    """A bound far above the compressed batches but below one batch's text: nothing is read ahead."""
    shard, lines, compressed = stream(aws, records=4)
    text = len(lines) * (len(lines[0]) + 1)
    limit = 512 << 10
    assert compressed < limit < text // 4  # each record: a few KB as read, ~1 MiB held
    clients = AwsClients()
    sink = HoldingSink()
    try:
        source = await source_on(aws, clients, batch_records=1, max_bytes_in_flight=limit)
        runner = asyncio.create_task(source.run(sink))
        await until(lambda: len(sink.held(shard)) == 1, "the first batch")
        await until(lambda: shard in source.waiting, "the reader waiting for room")
        assert source.ahead[shard] == 0  # the batch being committed holds more than the bound already
        assert source._budget.held == text // 4
        assert sink.calls[0].delivery.size == text // 4
        for n in range(1, 5):
            sink.calls[n - 1].gate.set()
            if n < 4:
                await until(lambda n=n: len(sink.calls) == n + 1, f"batch {n + 1}, once the one before it committed")
        await until(lambda: sink.lines.get(shard) == lines, "every line once, in order")
        await stop(runner)
    finally:
        await clients.close()


async def test_an_answer_with_more_text_than_the_bound_is_cut_into_batches(aws: str) -> None:
    shard, lines, _ = stream(aws, records=4)
    per_record = PER_RECORD * (len(lines[0]) + 1)
    clients = AwsClients()
    sink = HoldingSink()
    try:
        # One GetRecords answer of 4 records; ~1.5 records' text per batch: cut after 2 and after 4.
        source = await source_on(aws, clients, batch_records=10, max_bytes_in_flight=per_record * 3 // 2)
        runner = asyncio.create_task(source.run(sink))
        await until(lambda: len(sink.held(shard)) == 1, "the first batch")
        await until(lambda: shard in source.waiting, "the second batch waiting for room")
        first = sink.calls[0]
        assert first.delivery.size == 2 * per_record
        assert source._budget.held == 2 * per_record
        first.gate.set()
        await until(lambda: len(sink.calls) == 2, "the second batch of the same answer")
        second = sink.calls[1]
        assert second.delivery.expected == first.delivery.cursors  # committed in order, from the first's cursor
        assert second.delivery.size == 2 * per_record
        second.gate.set()
        await until(lambda: sink.lines.get(shard) == lines, "every line once, in order")
        assert sink.errors == []
        await stop(runner)
    finally:
        await clients.close()


async def test_a_crash_between_the_batches_of_one_answer_neither_skips_nor_repeats_a_record(aws: str) -> None:
    """The first batch of a cut answer commits, the process dies while the second is held: a fresh source
    resumes after the first batch's last record, and every line counts once."""
    shard, lines, _ = stream(aws, records=4)
    per_record = PER_RECORD * (len(lines[0]) + 1)
    clients = AwsClients()
    sink = HoldingSink()

    async def committed(*_: object) -> dict[str, str]:
        return {s: c for s, c in sink.committed.items() if c is not None}

    try:
        source = await source_on(aws, clients, batch_records=10, max_bytes_in_flight=per_record * 3 // 2)
        runner = asyncio.create_task(source.run(sink))
        await until(lambda: len(sink.calls) == 1, "the first batch")
        sink.calls[0].gate.set()
        await until(lambda: len(sink.calls) == 2, "the second batch of the same answer")
        await stop(runner)  # the second is never committed
        assert sink.lines[shard] == lines[: 2 * PER_RECORD]
        sink.calls.clear()
        again = await source_on(aws, clients, cursors=committed, batch_records=10, max_bytes_in_flight=per_record * 3 // 2)
        runner = asyncio.create_task(again.run(sink))
        await until(lambda: len(sink.calls) == 1, "the rest, from the committed cursor")
        sink.calls[0].gate.set()
        await until(lambda: len(sink.lines[shard]) == len(lines), "every line")
        assert sink.lines[shard] == lines
        await stop(runner)
    finally:
        await clients.close()
