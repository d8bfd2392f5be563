"""Who commits together: the group bounds, a lone input, cancellation and failure (streamer/commit_group.py).

The commit function here is the test's own: it records each group and lets the
test decide when the commit ends, so nothing depends on timing. A delay of an
hour stands for "never": a test that finishes at all shows nobody waited for it.
"""

from __future__ import annotations

import asyncio

import pytest

from streamer.commit_group import Grouper, Limits, Member

HOUR = 3600.0


class Recorder:
    """Commits each group when `gate` is open; records the groups; returns each item doubled."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.committing = asyncio.Event()
        self.fail: Exception | None = None

    async def commit(self, members: list[Member[int, int]]) -> None:
        self.groups.append([m.item for m in members])
        self.committing.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        for m in members:
            m.result.set_result(2 * m.item)


async def until(predicate: object, what: str) -> None:
    async with asyncio.timeout(30):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 - a plain list, no event to wait on
            await asyncio.sleep(0.005)


async def test_a_lone_input_commits_at_once_when_nothing_else_is_decoding() -> None:
    rec = Recorder()
    grouper: Grouper[int, int] = Grouper(Limits(delay_seconds=HOUR), rec.commit, lambda: 0)
    assert await asyncio.wait_for(grouper.submit(7, 100), 30) == 14
    assert rec.groups == [[7]]


async def test_inputs_ready_together_commit_as_one_group_in_the_order_they_were_ready() -> None:
    rec = Recorder()
    decoding = [5]
    grouper: Grouper[int, int] = Grouper(Limits(delay_seconds=HOUR), rec.commit, lambda: decoding[0])

    async def decoded(i: int) -> int:
        decoding[0] -= 1  # as the pipeline does: an input leaves decoding as it is submitted, in one step
        return await grouper.submit(i, 10)

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(decoded(i)))
        await asyncio.sleep(0)
    assert await asyncio.gather(*tasks) == [0, 2, 4, 6, 8]
    assert rec.groups == [[0, 1, 2, 3, 4]]
    assert (grouper.groups, grouper.inputs) == (1, 5)


async def test_a_group_closes_at_its_input_bound_and_the_rest_form_the_next() -> None:
    rec = Recorder()
    grouper: Grouper[int, int] = Grouper(Limits(max_inputs=2, delay_seconds=HOUR), rec.commit, lambda: 1)
    tasks = [asyncio.create_task(grouper.submit(i, 10)) for i in range(4)]
    await asyncio.gather(*tasks)
    assert rec.groups == [[0, 1], [2, 3]]


async def test_a_group_closes_at_its_byte_bound_and_a_larger_input_goes_alone() -> None:
    rec = Recorder()
    decoding = [1]
    grouper: Grouper[int, int] = Grouper(Limits(max_bytes=100, delay_seconds=HOUR), rec.commit, lambda: decoding[0])
    tasks = [asyncio.create_task(grouper.submit(i, size)) for i, size in enumerate([40, 40, 40, 500])]
    await until(lambda: len(rec.groups) == 3, "three groups")
    decoding[0] = 0  # the last input arrives; nothing else is coming
    tasks.append(asyncio.create_task(grouper.submit(4, 10)))
    await asyncio.gather(*tasks)
    assert rec.groups == [[0, 1], [2], [3], [4]]


async def test_the_delay_bounds_the_wait_for_inputs_still_decoding() -> None:
    rec = Recorder()
    grouper: Grouper[int, int] = Grouper(Limits(delay_seconds=0.05), rec.commit, lambda: 3)  # never all decoded
    assert await asyncio.wait_for(grouper.submit(1, 10), 30) == 2
    assert rec.groups == [[1]]


async def test_cancelled_before_its_group_an_input_is_abandoned_and_the_others_commit() -> None:
    rec = Recorder()
    decoding = [2]
    grouper: Grouper[int, int] = Grouper(Limits(delay_seconds=HOUR), rec.commit, lambda: decoding[0])
    first = asyncio.create_task(grouper.submit(1, 10))
    second = asyncio.create_task(grouper.submit(2, 10))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    decoding[0] = 0
    grouper._arrived.set()  # what the next submission (or a cancellation) does
    assert await asyncio.wait_for(second, 30) == 4
    assert rec.groups == [[2]]


async def test_cancelled_while_its_group_commits_an_input_waits_for_the_commit_then_stops() -> None:
    rec = Recorder()
    rec.gate.clear()
    grouper: Grouper[int, int] = Grouper(Limits(delay_seconds=HOUR), rec.commit, lambda: 0)
    task = asyncio.create_task(grouper.submit(1, 10))
    await asyncio.wait_for(rec.committing.wait(), 30)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()  # still waiting for the transaction in flight
    rec.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.groups == [[1]]


async def test_a_failed_commit_fails_every_input_of_the_group_and_the_next_group_still_runs() -> None:
    rec = Recorder()
    rec.fail = RuntimeError("disk I/O error")
    rec.gate.clear()
    decoding = [0]
    grouper: Grouper[int, int] = Grouper(Limits(delay_seconds=HOUR), rec.commit, lambda: decoding[0])
    tasks = [asyncio.create_task(grouper.submit(i, 10)) for i in range(3)]
    await asyncio.sleep(0)
    await asyncio.wait_for(rec.committing.wait(), 30)
    rec.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results), results
    rec.fail = None
    assert await asyncio.wait_for(grouper.submit(9, 10), 30) == 18
