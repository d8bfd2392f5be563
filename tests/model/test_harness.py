"""The model's own checks see what they claim to (each found missing by a review of the harness).

A service that dies is a violation, not something a replica's takeover or a liveness bound hides; a stop
asked as SIGTERM asks it is modelled as well as a cancellation; only a LATEST iterator taken while its shard
had no committed cursor excuses the records it skips.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.model.fakes import Clock, FakeKinesis
from tests.model.world import ServiceDied, World, stop


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World(("s3",))
    await w.open()
    try:
        yield w
    finally:
        await w.close()


async def test_a_service_that_stops_with_an_error_is_a_violation() -> None:
    async def service() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("the store would not close") from None

    task = asyncio.create_task(service())
    await asyncio.sleep(0)
    with pytest.raises(ServiceDied, match="the store would not close"):
        await stop(task, "the service")


async def test_a_service_that_ended_by_itself_is_a_violation(world: World) -> None:
    assert world.task is not None
    world.check_safety()
    world.task.cancel()  # behind the model's back: as a service whose run() returned or raised
    await asyncio.gather(world.task, return_exceptions=True)
    with pytest.raises(ServiceDied, match="ended by itself"):
        world.check_safety()
    with pytest.raises(ServiceDied, match="had ended by itself before its stop: cancelled"):
        await world.close()  # (and once more, by the fixture: nothing left to stop)
    world.task = None


async def test_a_graceful_stop_takes_the_path_sigterm_takes_and_the_next_service_counts(world: World) -> None:
    old = world.task
    assert old is not None
    await world.crash(graceful=True)
    assert old.done()
    assert not old.cancelled()  # it returned: stop.wait() ended it
    assert old.exception() is None
    assert world.task is not None
    assert world.task is not old
    await world.s3_object(2, copies=1)
    await world.quiet()
    world.check_safety()
    await world.settle()


async def test_only_a_latest_iterator_over_no_cursor_excuses_what_it_skips() -> None:
    kinesis = FakeKinesis(Clock(), "flows", shards=1)
    [shard] = list(kinesis.shards)
    await kinesis.put_record(StreamName="flows", Data=b"x", PartitionKey="a")
    cursors: dict[str, str] = {}
    kinesis.cursor_of = cursors.get
    await kinesis.get_shard_iterator(StreamName="flows", ShardId=shard, ShardIteratorType="LATEST")
    assert kinesis.latest == {shard: [1]}
    cursors[shard] = "49000000000000000000000"  # a cursor committed: a LATEST now would be a regression
    await kinesis.put_record(StreamName="flows", Data=b"y", PartitionKey="a")
    await kinesis.get_shard_iterator(StreamName="flows", ShardId=shard, ShardIteratorType="LATEST")
    assert kinesis.latest == {shard: [1]}


async def test_stopping_a_service_that_had_already_ended_is_a_violation() -> None:
    async def service() -> None:
        return None  # as a run() that returned without being asked to stop

    task = asyncio.create_task(service())
    await task
    with pytest.raises(ServiceDied, match="had ended by itself before its stop: returned"):
        await stop(task, "the service", asyncio.Event())
