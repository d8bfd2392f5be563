"""s3_sqs keeps several objects in flight, bounded by their summed size, against moto over HTTP.

The sink here is a test double of our own Sink interface (not of an I/O
boundary): it holds each object until the test releases it, so what is in
flight at a moment is observable without timing assumptions.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from streamer.aws import AwsClients
from streamer.sources.base import BuildContext, Delivery
from streamer.sources.s3_sqs import S3SqsSourceConfig
from tests.integration.conftest import boto, until

pytestmark = pytest.mark.integration

MIB = 1 << 20


class HoldingSink:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.done: list[str] = []
        self.polls = 0
        self.backlog: list[tuple[int, int, float | None]] = []

    async def process(self, source: str, delivery: Delivery) -> str:
        self.started.append(delivery.location)
        gate = self.release.setdefault(delivery.location, asyncio.Event())
        await gate.wait()
        self.done.append(delivery.location)
        return "ok"

    async def give_up(self, source: str, delivery: Delivery, reason: str) -> None:
        raise AssertionError(f"gave up {delivery.location}: {reason}")

    def source_error(self, source: str, reason: str, message: str) -> None:
        raise AssertionError(f"{reason}: {message}")

    def polled(self, source: str) -> None:
        self.polls += 1

    def behind(self, source: str, shard: str, seconds: float | None) -> None:
        raise AssertionError("not a stream")

    def queue_backlog(self, source: str, waiting: int, held: int, oldest_age_seconds: float | None) -> None:
        self.backlog.append((waiting, held, oldest_age_seconds))


def event(key: str, size: int) -> str:
    obj = {"key": key, "size": size, "eTag": "abc"}
    return json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": obj}}]})


def queue(sqs: Any, url: str) -> tuple[str, str]:
    """(visible, held) messages."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return attrs[names[0]], attrs[names[1]]


async def nothing(*_: object) -> None:
    return None


async def test_objects_are_worked_concurrently_up_to_the_bytes_in_flight(aws: str) -> None:
    sqs = boto("sqs", aws)
    url = sqs.create_queue(QueueName="in-flight")["QueueUrl"]
    for key in ("a", "b", "c"):
        sqs.send_message(QueueUrl=url, MessageBody=event(key, 3 * MIB))
    config = S3SqsSourceConfig.model_validate(
        {
            "type": "s3_sqs",
            "queue_url": url,
            "endpoint_url": aws,
            "wait_time_seconds": 1,
            "max_bytes_in_flight": 8 * MIB,
            "backlog_interval_seconds": 0.1,
        }
    )
    clients = AwsClients()
    sink = HoldingSink()
    try:
        source = await config.build(BuildContext("sqs", clients, nothing, nothing, nothing))  # type: ignore[arg-type]
        runner = asyncio.create_task(source.run(sink))
        # 3 + 3 MiB fit in 8 and are worked at once; the third 3 MiB object waits for room.
        await until(lambda: len(sink.started) == 2, "two objects in flight")
        assert sink.done == []
        sink.release[sink.started[0]].set()
        await until(lambda: len(sink.started) == 3, "a third object once one finished")
        assert len(sink.done) == 1
        # A 20 MiB object is larger than the bound: it goes alone, once nothing else is in flight.
        sqs.send_message(QueueUrl=url, MessageBody=event("big", 20 * MIB))
        await until(lambda: queue(sqs, url) == ("0", "3"), "the big object's message received (held with b and c)")
        # The queue's depth is reported as read from GetQueueAttributes: nothing waiting, three held.
        await until(
            lambda: sink.backlog[-1][:2] == (0, 3) and sink.backlog[-1][2] is not None,
            "the depth: three held, and the oldest message's age",
            context=lambda: sink.backlog[-3:],
        )
        age = sink.backlog[-1][2]
        assert age is not None
        assert 0 <= age < 600  # the oldest message received was sent moments ago
        sink.release[sink.started[1]].set()
        await until(lambda: len(sink.done) == 2, "the second object done")
        assert "s3://b/big" not in sink.started, "the big object waits until nothing is in flight"
        sink.release[sink.started[2]].set()
        await until(lambda: "s3://b/big" in sink.started, "the big object, alone")
        assert len(sink.done) == 3
        sink.release["s3://b/big"].set()
        await until(lambda: len(sink.done) == 4, "every object")
        await until(lambda: queue(sqs, url) == ("0", "0"), "every message deleted")
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    finally:
        await clients.close()


async def test_many_small_objects_are_held_a_few_receives_at_a_time_not_hoarded(aws: str) -> None:
    """Bytes alone would admit thousands of tiny objects' messages: one replica would hold the whole queue."""
    sqs = boto("sqs", aws)
    url = sqs.create_queue(QueueName="small-objects")["QueueUrl"]
    for n in range(40):
        sqs.send_message(QueueUrl=url, MessageBody=event(f"k{n}", 1000))
    config = S3SqsSourceConfig.model_validate(
        {"type": "s3_sqs", "queue_url": url, "endpoint_url": aws, "wait_time_seconds": 1, "max_messages": 2}
    )
    clients = AwsClients()
    sink = HoldingSink()
    try:
        source = await config.build(BuildContext("sqs", clients, nothing, nothing, nothing))  # type: ignore[arg-type]
        runner = asyncio.create_task(source.run(sink))
        await until(lambda: len(sink.started) == 4, "two receives' worth of objects in flight")
        for _ in range(20):  # a few more rounds of the source's loop: nothing more is received or started
            await asyncio.sleep(0.05)
        visible, held = (int(v) for v in queue(sqs, url))
        assert len(sink.started) == 4, (len(sink.started), visible, held)  # no more started while none finished
        assert held <= 6  # at most one receive ahead of the four in flight
        assert visible >= 34
        for n in range(40):  # finish objects one by one as they start
            await until(lambda n=n: len(sink.started) > n, f"object {n} started")  # type: ignore[misc]
            sink.release.setdefault(sink.started[n], asyncio.Event()).set()
            assert len(sink.started) - len(sink.done) <= 4
        await until(lambda: len(sink.done) == 40, "every object")
        await until(lambda: queue(sqs, url) == ("0", "0"), "every message deleted")
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    finally:
        await clients.close()


def sqs_config(url: str, aws: str, **extra: Any) -> S3SqsSourceConfig:
    settings = {"type": "s3_sqs", "queue_url": url, "endpoint_url": aws, "wait_time_seconds": 1, **extra}
    return S3SqsSourceConfig.model_validate(settings)


async def test_a_stop_makes_messages_received_but_unfinished_visible_again_at_once(aws: str) -> None:
    """Without it, what a stopping replica had received ahead would stay invisible for the visibility timeout
    (300 s here): the restart or another consumer takes it at once instead."""
    sqs = boto("sqs", aws)
    url = sqs.create_queue(QueueName="stop")["QueueUrl"]
    for key in ("a", "b", "c"):
        sqs.send_message(QueueUrl=url, MessageBody=event(key, 3 * MIB))
    clients = AwsClients()
    sink = HoldingSink()
    try:
        config = sqs_config(url, aws, max_messages=3, max_bytes_in_flight=MIB)
        source = await config.build(BuildContext("sqs", clients, nothing, nothing, nothing))  # type: ignore[arg-type]
        runner = asyncio.create_task(source.run(sink))
        # One object is worked (larger than the bound, it goes alone); the other two wait, received ahead.
        await until(lambda: len(sink.started) == 1 and queue(sqs, url) == ("0", "3"), "three held, one started")
        runner.cancel()  # what SIGTERM does to a source
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert source.released == 3  # the two never started, and the one abandoned midway (nothing deleted)
        assert sink.done == []
        assert queue(sqs, url) == ("3", "0")
        again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        assert sorted(json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"] for m in again) == ["a", "b", "c"]
    finally:
        await clients.close()


async def test_held_messages_stay_invisible_past_their_timeout_extended_ten_per_call(aws: str) -> None:
    sqs = boto("sqs", aws)
    url = sqs.create_queue(QueueName="slow")["QueueUrl"]
    for n in range(12):
        sqs.send_message(QueueUrl=url, MessageBody=event(f"k{n}", 1000))
    clients = AwsClients()
    sink = HoldingSink()
    single: list[int] = []
    batches: list[int] = []
    try:
        config = sqs_config(url, aws, visibility_timeout_seconds=10, visibility_keepalive_seconds=1)
        source = await config.build(BuildContext("sqs", clients, nothing, nothing, nothing))  # type: ignore[arg-type]
        # The real client's calls, seen as botocore emits them: how many receipts each extension carried.
        events = source.sqs.meta.events  # type: ignore[attr-defined]
        one, many = "provide-client-params.sqs.ChangeMessageVisibility", "provide-client-params.sqs.ChangeMessageVisibilityBatch"
        events.register(one, lambda params, **_: single.append(1))
        events.register(many, lambda params, **_: batches.append(len(params["Entries"])))
        runner = asyncio.create_task(source.run(sink))
        await until(lambda: len(sink.started) == 12, "twelve slow objects in flight")
        base = source.extended
        # Eleven rounds of extensions of all twelve, a second apart: longer than the 10 s timeout since receipt.
        await until(lambda: source.extended >= base + 12 * 11, "eleven rounds of extensions", seconds=60)
        assert queue(sqs, url) == ("0", "12")
        assert sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []) == []
        assert len(sink.started) == 12  # none reappeared (and was received again) meanwhile
        assert single == []
        assert max(batches) == 10
        assert sum(batches) >= 12 * 11
        for location in sink.started:
            sink.release[location].set()
        await until(lambda: len(sink.done) == 12, "every object")
        await until(lambda: queue(sqs, url) == ("0", "0"), "every message deleted")
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert source.released == 0
    finally:
        await clients.close()
