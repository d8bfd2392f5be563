"""Consume S3 event notifications from SQS (direct, SNS-wrapped or via EventBridge), competing-consumer safe.

A message is deleted only after every object it names has been committed;
while a large object is processed the message's visibility is extended, so
another replica does not pick it up meanwhile. Keys in events are
URL-encoded (`unquote_plus`). `s3:TestEvent` and non-create events are
deleted without work; a message that cannot be parsed, or that was received
more than `max_receive_count` times, is counted, logged and deleted.

Held messages are kept invisible ten receipts per ChangeMessageVisibilityBatch
call. On a stop, the messages received but not finished (never started, or
abandoned midway) are made visible again at once, so another consumer or the
restarted one takes them without waiting out their visibility timeout; the
objects a message names are done in the checkpoint, so a redelivery of one
that was committed before the stop counts nothing twice. A run that crashed
gives back what it held the same way, and the run the service restarts holds
nothing of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote_plus

import orjson
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, model_validator

from streamer.aws import AwsClients
from streamer.schema import parse_log_format
from streamer.settings import AwsSourceSettings
from streamer.sources.base import BuildContext, Sink, Source, SourceError, aws_error_reason
from streamer.sources.s3_objects import S3Object, object_delivery

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import ChangeMessageVisibilityBatchRequestEntryTypeDef, MessageTypeDef

log = logging.getLogger(__name__)
#: messages held at once, as a multiple of `max_messages` (a receive), besides the bytes-in-flight bound
MESSAGES_IN_FLIGHT_PER_RECEIVE = 2
#: receipts per ChangeMessageVisibilityBatch call (the API's maximum)
VISIBILITY_BATCH = 10
#: how long a stop waits to make unfinished messages visible again (else they reappear after their timeout)
RELEASE_SECONDS = 5.0
#: a helper loop that failed is started again after at most this (the keep-alive sooner, if its interval is shorter)
HELPER_RESTART_SECONDS = 5.0


class S3SqsSourceConfig(AwsSourceSettings):
    type: Literal["s3_sqs"]
    #: the SQS queue receiving the bucket's ObjectCreated notifications (or EventBridge events)
    queue_url: str
    #: long-poll wait per ReceiveMessage
    wait_time_seconds: int = Field(default=20, ge=0, le=20)
    #: visibility timeout; extended while a large object is processed
    visibility_timeout_seconds: int = Field(default=300, ge=10, le=43200)
    #: messages per ReceiveMessage call
    max_messages: int = Field(default=10, ge=1, le=10)
    #: a message received more often than this is given up (logged, counted, deleted)
    max_receive_count: int = Field(default=5, ge=1)
    #: how often a held message's visibility is extended (default: a third of the timeout)
    visibility_keepalive_seconds: float | None = Field(default=None, gt=0)
    #: how often the queue's depth is read (GetQueueAttributes) for streamer_sqs_messages
    backlog_interval_seconds: float = Field(default=60, gt=0)
    #: objects read and decoded at once are bounded by their summed size (one larger object still goes alone)
    max_bytes_in_flight: int = Field(default=16 << 20, ge=1)

    @model_validator(mode="after")
    def _keepalive_in_time(self) -> S3SqsSourceConfig:
        if self.visibility_keepalive_seconds is not None and self.visibility_keepalive_seconds >= self.visibility_timeout_seconds:
            raise ValueError(
                f"visibility_keepalive_seconds ({self.visibility_keepalive_seconds:g}) must be shorter than "
                f"visibility_timeout_seconds ({self.visibility_timeout_seconds}), or messages reappear while held"
            )
        return self

    @property
    def keepalive_seconds(self) -> float:
        return self.visibility_keepalive_seconds or self.visibility_timeout_seconds / 3

    async def build(self, ctx: BuildContext) -> S3SqsSource:
        sqs = await ctx.clients.sqs(self.region, self.endpoint_url)
        s3 = await ctx.clients.s3(self.region, self.endpoint_url)
        return S3SqsSource(ctx.name, self, sqs, s3)


class BadMessage(ValueError):
    pass


def objects_in_message(body: str) -> list[S3Object]:
    """The created objects an S3 notification names: direct, SNS-wrapped, or an EventBridge event."""
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
            doc = orjson.loads(doc["Message"])
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadMessage("not a JSON object")
    if doc.get("Event") == "s3:TestEvent":
        return []
    if "detail-type" in doc:
        return _eventbridge_objects(doc)
    records = doc.get("Records")
    if not isinstance(records, list):
        raise BadMessage("no Records")
    out: list[S3Object] = []
    for rec in records:
        if not str(rec.get("eventName", "")).startswith("ObjectCreated"):
            continue
        try:
            s3 = rec["s3"]
            obj = s3["object"]
            out.append(
                S3Object(
                    bucket=s3["bucket"]["name"],
                    key=unquote_plus(obj["key"]),
                    etag=str(obj.get("eTag", "")).strip('"'),
                    last_modified=_event_time(rec.get("eventTime")),
                    size=int(obj.get("size", 0)),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadMessage(f"malformed record: {exc!r}") from exc
    return out


def _eventbridge_objects(doc: dict[str, Any]) -> list[S3Object]:
    """S3 -> EventBridge rule -> SQS: one event, one object; other detail types are not ours.

    Unlike a notification's, the key is taken as it is (not URL-decoded), and
    the ETag is `etag` (moto writes `eTag`: both are read).
    """
    if doc.get("source") != "aws.s3":
        raise BadMessage(f"EventBridge event from {doc.get('source')!r}, not aws.s3")
    if doc.get("detail-type") != "Object Created":
        return []
    try:
        detail = doc["detail"]
        obj = detail["object"]
        return [
            S3Object(
                bucket=detail["bucket"]["name"],
                key=obj["key"],
                etag=str(obj.get("etag", obj.get("eTag", ""))).strip('"'),
                last_modified=_event_time(doc.get("time")),
                size=int(obj.get("size", 0)),
            )
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadMessage(f"malformed EventBridge event: {exc!r}") from exc


def _event_time(value: Any) -> float:
    import datetime as dt

    if not isinstance(value, str):
        return 0.0
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _message_bytes(message: MessageTypeDef) -> int:
    """The summed size of the objects a message names (a message that cannot be parsed weighs nothing)."""
    try:
        return sum(obj.size for obj in objects_in_message(message.get("Body", "")))
    except Exception:  # parsed again in _handle, which counts and deletes it
        return 0


class S3SqsSource(Source):
    def __init__(self, name: str, config: S3SqsSourceConfig, sqs: SQSClient, s3: S3Client) -> None:
        super().__init__(name)
        self.config = config
        self.sqs = sqs
        self.s3 = s3
        self.log_format = parse_log_format(config.log_format) if config.log_format else None
        #: visibility extensions made (every message held is kept invisible while it is worked)
        self.extended = 0
        #: keep-alive rounds run (each extends every message held then; tests wait on it)
        self.keepalive_rounds = 0
        #: receipts of messages received and not yet finished
        self._held: set[str] = set()
        #: receipts of messages whose work was cancelled midway (a stop): made visible again on the way out
        self._abandoned: set[str] = set()
        #: messages made visible again on a stop
        self.released = 0
        #: object bytes of the messages being worked, and whether another message may start
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._working: set[asyncio.Task[None]] = set()
        #: now minus SentTimestamp of the oldest message in the last non-empty receive
        self._oldest_age: float | None = None

    first_call_name = "GetQueueAttributes"

    async def first_call(self, clients: AwsClients) -> None:
        sqs = await clients.sqs(self.config.region, self.config.endpoint_url, fast=True)
        await sqs.get_queue_attributes(QueueUrl=self.config.queue_url, AttributeNames=["QueueArn"])

    async def run(self, sink: Sink) -> None:
        """Receive ahead while objects are read: messages are worked concurrently, up to
        `max_bytes_in_flight` of object bytes (a larger object goes alone), so decoding and the next
        download overlap and both cores stay busy on many small objects."""
        self._start_clean()
        keepalive_pause = min(HELPER_RESTART_SECONDS, self.config.keepalive_seconds)
        keeper = asyncio.create_task(
            self._supervised(sink, "visibility_keepalive", lambda: self._keep_invisible(sink, self._held), keepalive_pause)
        )
        watcher = asyncio.create_task(
            self._supervised(sink, "backlog_watch", lambda: self._watch_backlog(sink), HELPER_RESTART_SECONDS)
        )
        try:
            while True:
                await self.receive_once(sink)
        finally:
            keeper.cancel()
            watcher.cancel()
            tasks = list(self._working)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, keeper, watcher, return_exceptions=True)
            await self._release(sink, self._held | self._abandoned)
            self._start_clean()

    def _start_clean(self) -> None:
        """Forget what a run held (the service restarts a crashed source on the same object).

        On the way out its messages were given back, or reappear when their visibility timeout runs out, and
        are received again under new receipts (their objects' done keys make a second commit count nothing).
        Kept, the old receipts would be extended by the next run's keep-alive (SQS takes an old receipt for a
        message's visibility: it would stay hidden) and given back again at its stop; and the bytes of tasks
        cancelled before they ever ran (a crash right after a receive) would stay in flight, over the bound,
        so that the next run never received again."""
        self._held.clear()
        self._abandoned.clear()
        self._working.clear()
        self._in_flight = 0
        self._room.set()

    async def _supervised(self, sink: Sink, what: str, loop: Callable[[], Awaitable[None]], pause: float) -> None:
        """Run a helper loop for as long as the source runs, starting it again `pause` after any failure.

        The loops handle the AWS and network errors they expect; anything else (a bug, an answer of a
        shape no one foresaw) used to end their task unseen, as nobody awaits it before the source stops:
        held messages were no longer extended, so they reappeared to other consumers while being worked,
        and the queue depth froze. Each failure is logged with its traceback and counted (`{what}_failed`).
        """
        while True:
            try:
                await loop()
            except Exception as exc:
                log.error("%s: %s failed: %s; restarting it in %g s", self.name, what, exc, pause, exc_info=True)
                sink.source_error(self.name, f"{what}_failed", f"{type(exc).__name__}: {exc}", logged=False)
            await asyncio.sleep(pause)

    async def _watch_backlog(self, sink: Sink) -> None:
        """Queue depth at a modest interval (an operator's backlog alert reads it)."""
        while True:
            try:
                resp = await self.sqs.get_queue_attributes(
                    QueueUrl=self.config.queue_url,
                    AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
                )
                attrs = resp.get("Attributes", {})
                waiting = int(attrs.get("ApproximateNumberOfMessages", "0"))
                held = int(attrs.get("ApproximateNumberOfMessagesNotVisible", "0"))
                sink.queue_backlog(self.name, waiting, held, self._oldest_age)
            except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
                sink.source_error(self.name, aws_error_reason(exc), f"reading the depth of {self.config.queue_url}: {exc}")
            await asyncio.sleep(self.config.backlog_interval_seconds)

    async def receive_once(self, sink: Sink) -> int:
        """One ReceiveMessage; its messages are started (in flight) once there is room; returns how many."""
        await self._room.wait()
        try:
            resp = await self.sqs.receive_message(
                QueueUrl=self.config.queue_url,
                MaxNumberOfMessages=self.config.max_messages,
                WaitTimeSeconds=self.config.wait_time_seconds,
                VisibilityTimeout=self.config.visibility_timeout_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
        except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
            sink.source_error(self.name, aws_error_reason(exc), f"receiving from {self.config.queue_url}: {exc}")
            await asyncio.sleep(min(5.0, self.config.wait_time_seconds or 1.0))
            return 0
        self.ready = True
        messages = resp.get("Messages", [])
        sent = [int(m.get("Attributes", {}).get("SentTimestamp", 0)) for m in messages]
        if any(sent):
            self._oldest_age = max(0.0, time.time() - min(t for t in sent if t) / 1000)
        # Every message held, not only the ones being decoded, stays invisible to other replicas until done.
        self._held.update(m["ReceiptHandle"] for m in messages)
        for message in messages:
            size = _message_bytes(message)
            while self._working and (self._full(size) or len(self._working) >= self._max_messages_in_flight):
                self._room.clear()
                await self._room.wait()
            self._in_flight += size
            task = asyncio.create_task(self._work(sink, message, size))
            self._working.add(task)
            task.add_done_callback(self._working.discard)
        if self._full(0) or len(self._working) >= self._max_messages_in_flight:
            self._room.clear()
        sink.polled(self.name)
        return len(messages)

    @property
    def _max_messages_in_flight(self) -> int:
        """Bytes alone would let thousands of small objects' messages be held at once: one replica would
        hoard the queue, and extending so many receipts would outlast their visibility timeout."""
        return MESSAGES_IN_FLIGHT_PER_RECEIVE * self.config.max_messages

    def _full(self, size: int) -> bool:
        return self._in_flight + size > self.config.max_bytes_in_flight

    async def _work(self, sink: Sink, message: MessageTypeDef, size: int) -> None:
        try:
            await self._handle(sink, message)
        except asyncio.CancelledError:  # stopped midway: given back on the way out, unless it was being deleted
            if message["ReceiptHandle"] in self._held:
                self._abandoned.add(message["ReceiptHandle"])
            raise
        except Exception as exc:  # nobody awaits this task: report here (the message is not deleted, SQS redelivers)
            log.exception("%s: message %s failed", self.name, message.get("MessageId"))
            sink.source_error(self.name, "crashed", f"message {message.get('MessageId')}: {type(exc).__name__}: {exc}")
        finally:
            self._held.discard(message["ReceiptHandle"])
            self._in_flight -= size
            self._working.discard(asyncio.current_task())
            if not self._full(0) and len(self._working) < self._max_messages_in_flight:
                self._room.set()

    async def _keep_invisible(self, sink: Sink, held: set[str]) -> None:
        while True:
            await asyncio.sleep(self.config.keepalive_seconds)
            receipts = list(held)
            for start in range(0, len(receipts), VISIBILITY_BATCH):
                chunk = [r for r in receipts[start : start + VISIBILITY_BATCH] if r in held]  # not finished since
                self.extended += await self._change_visibility(sink, chunk, self.config.visibility_timeout_seconds)
            self.keepalive_rounds += 1

    async def _release(self, sink: Sink, receipts: set[str]) -> None:
        """Make unfinished messages visible again (a stop), within RELEASE_SECONDS."""
        if not receipts:
            return
        ordered = sorted(receipts)
        try:
            async with asyncio.timeout(RELEASE_SECONDS):
                for start in range(0, len(ordered), VISIBILITY_BATCH):
                    self.released += await self._change_visibility(sink, ordered[start : start + VISIBILITY_BATCH], 0)
        except TimeoutError:
            sink.source_error(self.name, "TimeoutError", f"{self.config.queue_url}: giving back unfinished messages timed out")
        log.info("%s: %d unfinished message(s) made visible again", self.name, self.released)

    async def _change_visibility(self, sink: Sink, receipts: list[str], seconds: int) -> int:
        """One ChangeMessageVisibilityBatch; returns how many receipts it changed. A failure only risks a
        redelivery (deduplicated by the objects' done keys) or a later one (the timeout runs out)."""
        if not receipts:
            return 0
        entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": seconds} for i, r in enumerate(receipts)
        ]
        try:
            resp = await self.sqs.change_message_visibility_batch(QueueUrl=self.config.queue_url, Entries=entries)
        except (ClientError, BotoCoreError, OSError) as exc:
            sink.source_error(self.name, aws_error_reason(exc), f"changing visibility: {exc}")
            return 0
        for failed in resp.get("Failed", []):
            code = failed.get("Code", "failed")
            if code == "ReceiptHandleIsInvalid" and receipts[int(failed["Id"])] not in self._held | self._abandoned:
                continue  # deleted meanwhile (it finished while the call was on its way)
            sink.source_error(self.name, code, f"changing visibility: {failed.get('Message', '')}")
        return len(resp.get("Successful", []))

    async def _handle(self, sink: Sink, message: MessageTypeDef) -> None:
        receipt = message["ReceiptHandle"]
        received = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            objects = objects_in_message(message.get("Body", ""))
        except Exception as exc:  # BadMessage, or a shape no check foresaw (`"Records": [1]`): deleted, not retried
            sink.source_error(self.name, "bad_message", f"{self.config.queue_url}: message {message.get('MessageId')}: {exc}")
            await self._delete(sink, receipt)
            return

        for obj in objects:
            delivery = object_delivery(self.s3, obj, self.log_format)
            try:
                await sink.process(self.name, delivery)
            except Exception as exc:  # a read (SourceError) or the checkpoint: SQS redelivers, a bounded number of times
                reason = exc.reason if isinstance(exc, SourceError) else "commit_failed"
                sink.source_error(self.name, reason, f"{exc} (receive {received} of {self.config.max_receive_count})")
                if received < self.config.max_receive_count or not isinstance(exc, SourceError):
                    # not deleted: SQS redelivers after the visibility timeout; an object whose commit keeps
                    # failing is never marked done unread (its message goes to the queue's dead-letter queue)
                    return
                await sink.give_up(self.name, delivery, "read_error")
        await self._delete(sink, receipt)

    async def _delete(self, sink: Sink, receipt: str) -> None:
        self._held.discard(receipt)  # finished: neither extended nor given back from now on
        try:
            await self.sqs.delete_message(QueueUrl=self.config.queue_url, ReceiptHandle=receipt)
        except (ClientError, BotoCoreError, OSError) as exc:
            # Redelivery is harmless: the objects are done in the checkpoint and are skipped.
            sink.source_error(self.name, aws_error_reason(exc), f"deleting message: {exc}")
