"""A shard task cancelled just as its next batch is taken from the read-ahead queue gives that batch back."""

from __future__ import annotations

import asyncio

from streamer.sources.kinesis import _Batch, _next_batch


def _batch() -> _Batch:
    return _Batch(body=b"x", bad={}, before=None, cursor="1", drained=False, size=1)


async def test_a_batch_taken_as_the_shard_task_is_cancelled_goes_back_to_the_queue() -> None:
    """The shard task's cleanup drops what is still queued, giving its read-ahead slot and bytes back; a batch
    lost between the queue and the task would keep them taken, and after two such a shard reads no more."""
    batches: asyncio.Queue[_Batch] = asyncio.Queue()
    reader = asyncio.create_task(asyncio.sleep(3600))
    got: list[_Batch] = []

    async def shard() -> None:
        got.append(await _next_batch(batches, reader))

    task = asyncio.create_task(shard())
    try:
        await asyncio.sleep(0.01)  # waiting for the reader's next batch
        batch = _batch()
        batches.put_nowait(batch)
        await asyncio.sleep(0)  # the getter takes it...
        task.cancel()  # ...as the source's task group stops
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        assert not got
        assert batches.qsize() == 1
        assert batches.get_nowait() is batch
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
