"""S3 polling keeps several objects in flight, bounded by their summed size, against moto over HTTP.

The sink here is a test double of our own Sink interface (not of an I/O
boundary): it holds each object until the test releases it, so what is in
flight at a moment is observable without timing assumptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import pytest

from streamer.aws import AwsClients
from streamer.sources.base import Delivery
from streamer.sources.s3_poll import S3PollSource, S3SourceConfig
from tests.integration.conftest import aws_key, boto, until

pytestmark = pytest.mark.integration


class HoldingSink:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.done: list[str] = []

    async def process(self, source: str, delivery: Delivery) -> str:
        self.started.append(delivery.location)
        await self.release.setdefault(delivery.location, asyncio.Event()).wait()
        self.done.append(delivery.location)
        return "ok"

    def let_go(self, location: str) -> None:
        self.release.setdefault(location, asyncio.Event()).set()

    async def give_up(self, source: str, delivery: Delivery, reason: str) -> None:
        raise AssertionError(f"gave up {delivery.location}: {reason}")

    def source_error(self, source: str, reason: str, message: str) -> None:
        raise AssertionError(f"{reason}: {message}")

    def polled(self, source: str) -> None:
        pass

    def behind(self, source: str, shard: str, seconds: float | None) -> None:
        raise AssertionError("not a stream")

    def queue_backlog(self, source: str, waiting: int, held: int, oldest_age_seconds: float | None) -> None:
        raise AssertionError("not a queue")


async def nothing_done(keys: list[str]) -> set[str]:
    return set()


async def test_objects_are_read_concurrently_up_to_the_bytes_in_flight(aws: str) -> None:
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="polled")
    now = dt.datetime.now(dt.UTC)
    # Three 3 kB objects, then one of 20 kB (larger than the bound), oldest first.
    sizes = [3000, 3000, 3000, 20_000]
    keys = [aws_key(now, "daily", n=n) for n in range(len(sizes))]
    for key, size in zip(keys, sizes, strict=True):
        s3.put_object(Bucket="polled", Key=key, Body=bytes(size))
    a, b, c, big = (f"s3://polled/{k}" for k in keys)
    clients = AwsClients()
    sink = HoldingSink()
    try:
        config = S3SourceConfig(type="s3", bucket="polled", endpoint_url=aws, max_bytes_in_flight=8000)
        source = S3PollSource("poll", config, await clients.s3("us-east-1", aws), nothing_done)
        poll = asyncio.create_task(source.poll_once(sink))
        # 3 + 3 kB fit in 8 and are read at once; the third waits for room.
        # Together: an object that has its bytes reaches the sink a moment later (under load, visibly later).
        await until(lambda: source.budget.waiting == 1 and len(sink.started) == 2, "the third object waiting for room")
        assert sink.started == [a, b]
        sink.let_go(a)
        await until(lambda: sink.started == [a, b, c], "the third object once one finished")
        # The big object waits until nothing else is in flight, then goes alone.
        await until(lambda: source.budget.waiting == 1 and len(sink.done) == 1, "the big object waiting")
        sink.let_go(b)
        await until(lambda: len(sink.done) == 2 and source.budget.waiting == 1, "the second done, the big one still waiting")
        assert big not in sink.started
        sink.let_go(c)
        await until(lambda: big in sink.started, "the big object, alone")
        assert sink.started == [a, b, c, big]
        assert len(source.in_flight) == 1
        sink.let_go(big)
        assert await asyncio.wait_for(poll, 30) == 4
        assert source.budget.held == 0
        assert source.in_flight == set()
    finally:
        await clients.close()


async def test_many_small_objects_are_read_a_few_at_a_time(aws: str) -> None:
    """Bytes alone would start every small object at once; `max_concurrent_objects` caps them too."""
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="polled")
    now = dt.datetime.now(dt.UTC)
    keys = [aws_key(now, "daily", n=n) for n in range(6)]
    for key in keys:
        s3.put_object(Bucket="polled", Key=key, Body=b"x")
    clients = AwsClients()
    sink = HoldingSink()
    try:
        config = S3SourceConfig(type="s3", bucket="polled", endpoint_url=aws, max_concurrent_objects=3)
        source = S3PollSource("poll", config, await clients.s3("us-east-1", aws), nothing_done)
        poll = asyncio.create_task(source.poll_once(sink))
        await until(lambda: source.budget.waiting == 1 and len(sink.started) == 3, "the fourth object waiting")
        for n, key in enumerate(keys):
            await until(lambda n=n: len(sink.started) > n, f"object {n} started")  # type: ignore[misc]
            sink.let_go(f"s3://polled/{key}")
            assert len(sink.started) - len(sink.done) <= 3
        assert await asyncio.wait_for(poll, 30) == 6
    finally:
        await clients.close()


class ErrorsSink(HoldingSink):
    """Lets every object through at once and keeps the source errors it is told of."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    async def process(self, source: str, delivery: Delivery) -> str:
        self.let_go(delivery.location)
        return await super().process(source, delivery)

    def source_error(self, source: str, reason: str, message: str) -> None:
        self.errors.append(reason)


async def test_the_database_away_while_a_poll_reads_its_done_keys_polls_again_without_a_restart(aws: str) -> None:
    """A poll reads the leases and done keys from the database: while it is away, the error is counted and the
    next poll looks again. It failed the source instead, which the service restarted after a backoff that
    grows with each blip (up to 300 s)."""
    from streamer.store.base import DatabaseUnavailable

    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="polled")
    key = aws_key(dt.datetime.now(dt.UTC), "daily")
    s3.put_object(Bucket="polled", Key=key, Body=bytes(100))
    calls = 0

    async def done_among(keys: list[str]) -> set[str]:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise DatabaseUnavailable("postgresql://db/streamer: no database connection within 2 s")
        return set()

    clients = AwsClients()
    sink = ErrorsSink()
    try:
        config = S3SourceConfig(type="s3", bucket="polled", endpoint_url=aws, poll_interval_seconds=0.05)
        source = S3PollSource("poll", config, await clients.s3("us-east-1", aws), done_among)
        runner = asyncio.create_task(source.run(sink))
        try:
            await until(lambda: sink.done or runner.done(), "the object read")
            assert not runner.done(), runner
            assert sink.done == [f"s3://polled/{key}"]
            assert sink.errors == ["DatabaseUnavailable", "DatabaseUnavailable"]
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    finally:
        await clients.close()
