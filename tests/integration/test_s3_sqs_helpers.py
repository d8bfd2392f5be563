"""s3_sqs's helper loops (visibility keep-alive, backlog watcher) survive a failure, against moto over HTTP.

Issue 29.14: an exception the loops did not expect (anything but an AWS or a
network error) ended their task, and nobody awaited it until the source
stopped: held messages were no longer extended (they reappeared to other
consumers while still being worked), the queue depth froze, and nothing was
logged nor counted. The failure is injected where AWS answers, through
botocore's own event hooks on the source's real client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from streamer.aws import AwsClients
from streamer.sources.base import BuildContext
from tests.integration.conftest import boto, until
from tests.integration.test_s3_sqs_in_flight import MIB, HoldingSink, event, nothing, queue, sqs_config

pytestmark = pytest.mark.integration


class Unexpected(Exception):
    """Not an AWS error, nor a network one: what a bug, or an answer of a shape no one foresaw, raises."""


class CountingSink(HoldingSink):
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[tuple[str, str]] = []

    def source_error(self, source: str, reason: str, message: str, *, logged: bool = True) -> None:
        self.errors.append((reason, message))


def fail_first(client: Any, operation: str, times: int = 1) -> list[int]:
    """The first `times` calls of `operation` raise Unexpected; returns the list of calls made (all of them)."""
    calls: list[int] = []

    def hook(**_: object) -> None:
        calls.append(len(calls))
        if len(calls) <= times:
            raise Unexpected(f"{operation} answered nonsense")

    client.meta.events.register(f"before-call.sqs.{operation}", hook)
    return calls


async def test_the_keep_alive_and_the_backlog_watcher_are_logged_counted_and_restarted(
    aws: str, caplog: pytest.LogCaptureFixture
) -> None:
    sqs = boto("sqs", aws)
    url = sqs.create_queue(QueueName="helpers")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=event("big", 2 * MIB))
    clients = AwsClients()
    sink = CountingSink()
    try:
        config = sqs_config(
            url, aws, visibility_timeout_seconds=10, visibility_keepalive_seconds=0.5, backlog_interval_seconds=0.2
        )
        source = await config.build(BuildContext("sqs", clients, nothing, nothing, nothing))  # type: ignore[arg-type]
        extended = fail_first(source.sqs, "ChangeMessageVisibilityBatch", times=2)
        watched = fail_first(source.sqs, "GetQueueAttributes")
        with caplog.at_level(logging.ERROR):
            runner = asyncio.create_task(source.run(sink))
            await until(lambda: sink.started == ["s3://b/big"], "the object started (and held)")
            await until(lambda: source.extended >= 2, "the held message extended again after two failed rounds", seconds=30)
            await until(lambda: len(sink.backlog) >= 2, "the depth read again after a failed read", seconds=30)
        assert len(extended) >= 4
        assert len(watched) >= 3
        reasons = [reason for reason, _ in sink.errors]
        assert reasons.count("visibility_keepalive_failed") == 2
        assert reasons.count("backlog_watch_failed") == 1
        assert sum("Unexpected" in message for _, message in sink.errors) == 3
        assert sum("restarting it" in r.getMessage() and r.exc_info is not None for r in caplog.records) == 3
        assert queue(sqs, url) == ("0", "1")  # still held while it is worked
        sink.release["s3://b/big"].set()
        await until(lambda: queue(sqs, url) == ("0", "0"), "the message deleted")
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    finally:
        await clients.close()
