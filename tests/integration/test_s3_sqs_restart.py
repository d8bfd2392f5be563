"""s3_sqs restarted after a crash (as the service restarts a crashed source) starts clean, against moto over HTTP.

The run that crashed gives back what it held; the next run must not carry its
bookkeeping over: no receipt of the crashed run is extended (moto, like SQS,
accepts an old receipt for a message's visibility, so a stale one would keep
a message hidden), none is given back again later, and no object bytes of
tasks that never started keep the next run from receiving. With the real
pipeline and checkpoint, every object is then counted exactly once.

The crash is raised by the test's sink from `polled` (the source's own call
after each receive): the moment the crash lands is then exact.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate.state import FlowState
from streamer.aws import AwsClients
from streamer.export.telemetry import Telemetry
from streamer.pipeline import Pipeline, Store
from streamer.sources.base import BuildContext, Delivery
from streamer.store.sqlite import CheckpointStore
from tests.integration.conftest import Truth, boto, flow_object
from tests.integration.test_s3_sqs_in_flight import MIB, HoldingSink, event, nothing, queue, sqs_config, until

pytestmark = pytest.mark.integration


class Crash(RuntimeError):
    pass


class CrashingSink(HoldingSink):
    """Holds each object until released; crashes the source once, right after its receive number `crash_at`;
    records source errors instead of failing on them."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at = crash_at
        self.errors: list[tuple[str, str]] = []

    def polled(self, source: str) -> None:
        super().polled(source)
        if self.polls == self.crash_at:
            raise Crash("the source crashed")

    def source_error(self, source: str, reason: str, message: str) -> None:
        self.errors.append((reason, message))


def extended_receipts(source: Any) -> list[list[str]]:
    """The receipts of every ChangeMessageVisibilityBatch the source's real client sends, as botocore emits them."""
    calls: list[list[str]] = []
    source.sqs.meta.events.register(
        "provide-client-params.sqs.ChangeMessageVisibilityBatch",
        lambda params, **_: calls.append([e["ReceiptHandle"] for e in params["Entries"]]),
    )
    return calls


async def test_a_restart_after_a_crash_right_after_a_receive_receives_again_and_extends_only_its_own(aws: str) -> None:
    """The crash lands before the received messages' tasks ever ran: the messages are given back, but (before
    the fix) their receipts stayed held and their bytes in flight, so the restarted run extended the crashed
    run's receipts and, the bytes above the bound, never received again."""
    sqs = boto("sqs", aws)
    url = sqs.create_queue(QueueName="restart")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=event("big", 20 * MIB))  # larger than the bound: it goes alone
    clients = AwsClients()
    sink = CrashingSink(crash_at=1)
    try:
        config = sqs_config(url, aws, visibility_timeout_seconds=10, visibility_keepalive_seconds=1, max_bytes_in_flight=8 * MIB)
        source = await config.build(BuildContext("sqs", clients, nothing, nothing, nothing))  # type: ignore[arg-type]
        calls = extended_receipts(source)
        with pytest.raises(Crash):
            await source.run(sink)
        assert source.released == 1  # given back at once
        assert queue(sqs, url) == ("1", "0")
        crashed = {r for call in calls for r in call}
        runner = asyncio.create_task(source.run(sink))  # what the service does after its backoff
        await until(lambda: sink.started == ["s3://b/big"], "the object received again and started", seconds=20)
        before = len(calls)
        await until(lambda: len(calls) >= before + 3, "three rounds of extensions")
        assert all(r not in crashed for call in calls[before:] for r in call)
        assert [len(call) for call in calls[before:]] == [1] * (len(calls) - before)  # the one message held now
        sink.release["s3://b/big"].set()
        await until(lambda: queue(sqs, url) == ("0", "0"), "the message deleted")
        settled, rounds = len(calls), source.keepalive_rounds
        await until(lambda: source.keepalive_rounds >= rounds + 2, "two more keep-alive rounds")
        assert len(calls) == settled  # nothing of either run is extended any more
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert source.released == 1  # the stop gives back nothing: nothing is held, no receipt of the crashed run
        assert sink.errors == []
    finally:
        await clients.close()


async def test_a_restart_after_a_crash_with_objects_in_flight_counts_every_object_once(aws: str, tmp_path: Path) -> None:
    """Real pipeline and checkpoint: the source crashes at its second receive, with the first receive's objects
    being read or committed; the restarted run finishes the queue. Objects committed before the crash are
    received again (given back or not yet deleted) and found done: every record counts once, no message is
    left, and no receipt of the crashed run is touched again (no visibility error for a deleted message)."""
    s3, sqs = boto("s3", aws), boto("sqs", aws)
    s3.create_bucket(Bucket="flow-logs")
    url = sqs.create_queue(QueueName="restart-counted")["QueueUrl"]
    truth = Truth()
    for n in range(6):
        data = flow_object(truth, 2000, seed=n, start_epoch=1_764_000_000 + 600 * n)
        etag = s3.put_object(Bucket="flow-logs", Key=f"k{n}.log.gz", Body=data)["ETag"].strip('"')
        sqs.send_message(QueueUrl=url, MessageBody=created("flow-logs", f"k{n}.log.gz", len(data), etag))
    store = Store(CheckpointStore(tmp_path / "state.db"))
    clients = AwsClients()
    errors: list[tuple[str, str]] = []
    with ThreadPoolExecutor(2) as pool:
        pipeline = Pipeline(FlowState(), store, Telemetry(CollectorRegistry()), pool)
        sink = CountingSink(pipeline, crash_at=2, errors=errors)
        try:
            config = sqs_config(url, aws, max_messages=2, visibility_timeout_seconds=10, visibility_keepalive_seconds=1)
            source = await config.build(BuildContext("sqs", clients, nothing, nothing, nothing))  # type: ignore[arg-type]
            with pytest.raises(Crash):
                await source.run(sink)
            runner = asyncio.create_task(source.run(sink))
            await until(lambda: queue(sqs, url) == ("0", "0"), "every message deleted", seconds=60)
            rounds = source.keepalive_rounds
            await until(lambda: source.keepalive_rounds >= rounds + 2, "two keep-alive rounds after the last deletion")
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner
        finally:
            pipeline.close()
            await clients.close()
            store.close()
    counted: dict[tuple[str, str], list[int]] = {}
    for row in pipeline.state.counters.table().to_pylist():
        acc = counted.setdefault((row["interface_id"], row["action"]), [0, 0, 0])
        for i, name in enumerate(("records", "packets", "bytes")):
            acc[i] += row[name]
    assert counted == truth.totals
    assert sum(n for n, _, _ in counted.values()) == 6 * 2000
    assert errors == []


def created(bucket: str, key: str, size: int, etag: str) -> str:
    obj = {"key": key, "size": size, "eTag": etag}
    return json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": obj}}]})


class CountingSink:
    """The real pipeline, with a crash of the source injected once at its receive number `crash_at`."""

    def __init__(self, pipeline: Pipeline, crash_at: int, errors: list[tuple[str, str]]) -> None:
        self.pipeline = pipeline
        self.crash_at = crash_at
        self.polls = 0
        self.errors = errors

    async def process(self, source: str, delivery: Delivery) -> str:
        return await self.pipeline.process(source, delivery)

    async def give_up(self, source: str, delivery: Delivery, reason: str) -> None:
        await self.pipeline.give_up(source, delivery, reason)

    def source_error(self, source: str, reason: str, message: str) -> None:
        self.errors.append((reason, message))

    def polled(self, source: str) -> None:
        self.polls += 1
        if self.polls == self.crash_at:
            raise Crash("the source crashed")

    def behind(self, source: str, shard: str, seconds: float | None) -> None:
        raise AssertionError("not a stream")

    def queue_backlog(self, source: str, waiting: int, held: int, oldest_age_seconds: float | None) -> None:
        self.pipeline.queue_backlog(source, waiting, held, oldest_age_seconds)
