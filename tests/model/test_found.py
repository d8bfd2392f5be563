"""The schedules the model test found (tests/model/FOUND.md), replayed step by step as regression tests.

Each failed on the code before its fix (5ff2bef), with the message quoted in its docstring.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.model.world import World


@pytest.fixture
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    w = World(request.param)
    await w.open()
    try:
        yield w
    finally:
        await w.close()


async def step(world: World) -> None:
    """What the model does after every step: let the service run until it is quiet, then check safety."""
    await world.quiet()
    world.check_safety()
    await world.check_monotone()


@pytest.mark.parametrize("world", [("s3",)], indirect=True)
async def test_a_duplicate_notification_in_one_group_is_not_acknowledged_before_the_object_commits(world: World) -> None:
    """(a) commit_fails(before, skip=1); s3_object(copies=2): "SQS message m-2 deleted, but ... is not committed"."""
    world.faults.commits.extend([None, "before"])  # the group's first try is refused (same key twice), its retry fails
    await world.s3_object(2, copies=2)
    await step(world)
    await world.settle()
    world.check_replay()


@pytest.mark.parametrize("world", [("firehose",)], indirect=True)
async def test_a_concurrent_firehose_retry_is_not_answered_before_the_first_copy_commits(world: World) -> None:
    """(a), Firehose: commit_fails(before, skip=1); firehose_request(concurrent=True): "answered 200, but not committed"."""
    world.faults.commits.extend([None, "before"])
    await world.firehose_request(2, concurrent=True)
    await step(world)
    await world.settle()
    world.check_replay()


@pytest.mark.parametrize("world", [("s3",)], indirect=True)
async def test_b_memory_error_on_a_decode_worker_leaves_the_object_to_be_read_again(world: World) -> None:
    """(b) decode_worker_memory_error(skip=0); s3_object(): "counted 0, committed state says 2"."""
    world.faults.memory = 0
    await world.s3_object(2, copies=1)
    await step(world)
    await world.settle()
    world.check_replay()


@pytest.mark.parametrize("world", [("kinesis",)], indirect=True)
async def test_c_latest_never_applies_to_a_child_shard(world: World) -> None:
    """(c) kinesis_record(); reshard(split, then=2): "liveness: still not ... counted ... kinesis <seq>"."""
    await world.kinesis_record(1, 0)
    await step(world)
    await world.reshard(split=True, which=0, then=2)
    await step(world)
    await world.settle()
    world.check_replay()


@pytest.mark.parametrize("world", [("firehose",)], indirect=True)
async def test_d_firehose_endpoint_accepts_again_after_its_source_restarts(world: World) -> None:
    """(d) crash(port_taken=True); firehose_request(): "liveness: ... Firehose req-... unanswered" (503 forever)."""
    await world.crash(port_taken=True)
    await step(world)
    await world.firehose_request(1, concurrent=False)
    await step(world)
    await world.settle()
    world.check_replay()
