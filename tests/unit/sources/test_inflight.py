"""The bytes-in-flight bound the sources share, and its defaults as the README states them."""

from __future__ import annotations

import asyncio

from streamer.sources.inflight import BytesInFlight
from streamer.sources.kinesis import KinesisSourceConfig
from streamer.sources.s3_poll import S3SourceConfig
from streamer.sources.s3_sqs import S3SqsSourceConfig


def test_inputs_fit_while_the_sum_stays_within_the_limit_and_a_larger_one_goes_alone() -> None:
    budget = BytesInFlight(8)
    assert budget.fits(20)  # nothing held: even one larger than the limit
    budget.take(3)
    assert budget.fits(5)
    assert not budget.fits(6)
    budget.take(5)
    assert not budget.fits(1)
    budget.give(8)
    assert budget.held == 0


async def test_a_waiter_wakes_when_bytes_are_given_back() -> None:
    budget = BytesInFlight(8)
    budget.take(6)
    waiter = asyncio.create_task(budget.wait_until(lambda: budget.fits(4)))
    await asyncio.sleep(0)  # the waiter runs until it waits (no I/O here: one turn of the loop)
    assert budget.waiting == 1
    budget.give(1)  # 5 held: 4 more still do not fit
    for _ in range(5):  # turns of the loop, not time: it wakes, looks, and waits again
        await asyncio.sleep(0)
    assert not waiter.done()
    assert budget.waiting == 1
    budget.give(2)
    await asyncio.wait_for(waiter, 5)
    assert budget.waiting == 0


def test_defaults() -> None:
    s3 = S3SourceConfig(type="s3", bucket="bucket")
    assert (s3.max_bytes_in_flight, s3.max_concurrent_objects) == (16 << 20, 8)
    assert KinesisSourceConfig(type="kinesis", stream_name="s").max_bytes_in_flight == 16 << 20
    assert S3SqsSourceConfig(type="s3_sqs", queue_url="https://sqs/q").max_bytes_in_flight == 16 << 20
