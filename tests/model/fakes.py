"""In-memory fakes of the AWS calls our sources make, with the faults moto cannot inject.

They replace the aiobotocore client objects (what `AwsClients` hands a source), never our own code.
Time that AWS keeps (SQS visibility, Kinesis iterator age) is a `Clock` the model moves on purpose,
so a redelivery or an expired iterator happens at a chosen step, not after a real wait. Responses have
the shapes moto gives for the same calls (`test_contract.py` checks that, so the fakes cannot drift).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

MAX_HASH = 2**128 - 1
#: AWS: a shard iterator expires five minutes after it was returned
ITERATOR_SECONDS = 300.0


def client_error(code: str, operation: str, message: str = "", status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def _meta() -> dict[str, Any]:
    return {"ResponseMetadata": {"HTTPStatusCode": 200}}


class Clock:
    """AWS's own time, in seconds: moved only by the model (a visibility timeout runs out, an iterator expires)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.moved: list[Callable[[], None]] = []

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for hook in self.moved:
            hook()


# --- S3 ----------------------------------------------------------------------------------------


@dataclass
class _Object:
    body: bytes
    etag: str
    modified: dt.datetime


class _Body:
    """The streaming body aiobotocore returns: an async context manager with `iter_chunks` and `read`."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aenter__(self) -> _Body:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self) -> bytes:
        return self._data

    async def iter_chunks(self, size: int = 1024) -> AsyncIterator[bytes]:
        for start in range(0, len(self._data), size):
            yield self._data[start : start + size]
            await asyncio.sleep(0)


class FakeS3:
    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, _Object]] = {}

    def create_bucket(self, Bucket: str) -> None:
        self.buckets.setdefault(Bucket, {})

    async def put_object(self, Bucket: str, Key: str, Body: bytes) -> dict[str, Any]:
        etag = hashlib.md5(Body).hexdigest()
        self.buckets[Bucket][Key] = _Object(Body, etag, dt.datetime.now(dt.UTC).replace(microsecond=0))
        return {**_meta(), "ETag": f'"{etag}"'}

    async def get_object(self, Bucket: str, Key: str, IfMatch: str | None = None) -> dict[str, Any]:
        objects = self.buckets.get(Bucket)
        if objects is None:
            raise client_error("NoSuchBucket", "GetObject", status=404)
        obj = objects.get(Key)
        if obj is None:
            raise client_error("NoSuchKey", "GetObject", status=404)
        if IfMatch is not None and IfMatch.strip('"') != obj.etag:
            raise client_error("PreconditionFailed", "GetObject", status=412)
        return {
            **_meta(),
            "Body": _Body(obj.body),
            "ETag": f'"{obj.etag}"',
            "ContentLength": len(obj.body),
            "LastModified": obj.modified,
        }

    async def list_objects_v2(
        self,
        Bucket: str,
        Prefix: str = "",
        StartAfter: str = "",
        ContinuationToken: str | None = None,
        MaxKeys: int = 1000,
    ) -> dict[str, Any]:
        objects = self.buckets.get(Bucket)
        if objects is None:
            raise client_error("NoSuchBucket", "ListObjectsV2", status=404)
        after = ContinuationToken or StartAfter
        keys = sorted(k for k in objects if k.startswith(Prefix) and k > after)
        page, rest = keys[:MaxKeys], keys[MaxKeys:]
        out: dict[str, Any] = {**_meta(), "IsTruncated": bool(rest), "KeyCount": len(page), "Name": Bucket, "Prefix": Prefix}
        if page:
            out["Contents"] = [
                {"Key": k, "ETag": f'"{objects[k].etag}"', "Size": len(objects[k].body), "LastModified": objects[k].modified}
                for k in page
            ]
        if rest:
            out["NextContinuationToken"] = page[-1]
        return out


# --- SQS ---------------------------------------------------------------------------------------


@dataclass
class _Message:
    id: str
    body: str
    sent: float
    visible_at: float = 0.0
    receives: int = 0
    receipts: set[str] = field(default_factory=set)


class FakeSqs:
    """One queue per URL: visibility timeouts on the model's clock, redelivery, receive counts.

    `on_delete(message_id)` runs when a message is deleted (acknowledged upstream).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.queues: dict[str, dict[str, _Message]] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self.on_delete: Callable[[str], None] = lambda _: None
        clock.moved.append(self._changed.set)

    def create_queue(self, url: str) -> None:
        self.queues.setdefault(url, {})

    def _queue(self, url: str, operation: str) -> dict[str, _Message]:
        queue = self.queues.get(url)
        if queue is None:
            raise client_error("AWS.SimpleQueueService.NonExistentQueue", operation)
        return queue

    async def send_message(self, QueueUrl: str, MessageBody: str) -> dict[str, Any]:
        message = _Message(f"m-{next(self._ids)}", MessageBody, self.clock.now, visible_at=self.clock.now)
        self._queue(QueueUrl, "SendMessage")[message.id] = message
        self._changed.set()
        return {**_meta(), "MessageId": message.id, "MD5OfMessageBody": hashlib.md5(MessageBody.encode()).hexdigest()}

    async def receive_message(
        self,
        QueueUrl: str,
        MaxNumberOfMessages: int = 1,
        WaitTimeSeconds: int = 0,
        VisibilityTimeout: int = 30,
        MessageSystemAttributeNames: list[str] | None = None,
        AttributeNames: list[str] | None = None,
    ) -> dict[str, Any]:
        queue = self._queue(QueueUrl, "ReceiveMessage")
        # A long poll waits (a little real time: the model's steps are short) for a message to become visible.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(WaitTimeSeconds, 0.2)
        while True:
            ready = [m for m in queue.values() if m.visible_at <= self.clock.now][:MaxNumberOfMessages]
            if ready or loop.time() >= deadline:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - loop.time()))
        out: list[dict[str, Any]] = []
        for message in ready:
            message.visible_at = self.clock.now + VisibilityTimeout
            message.receives += 1
            receipt = f"{message.id}#{message.receives}"
            message.receipts.add(receipt)
            attrs = {"ApproximateReceiveCount": str(message.receives), "SentTimestamp": str(int(message.sent * 1000))}
            wanted = set(MessageSystemAttributeNames or []) | set(AttributeNames or [])
            out.append(
                {
                    "MessageId": message.id,
                    "ReceiptHandle": receipt,
                    "MD5OfBody": hashlib.md5(message.body.encode()).hexdigest(),
                    "Body": message.body,
                    "Attributes": {k: v for k, v in attrs.items() if k in wanted or "All" in wanted},
                }
            )
        return {**_meta(), "Messages": out} if out else _meta()

    def _by_receipt(self, queue: dict[str, _Message], receipt: str) -> _Message | None:
        message = queue.get(receipt.partition("#")[0])
        return message if message is not None and receipt in message.receipts else None

    async def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> dict[str, Any]:
        queue = self._queue(QueueUrl, "DeleteMessage")
        if "#" not in ReceiptHandle:
            raise client_error("ReceiptHandleIsInvalid", "DeleteMessage")
        message = self._by_receipt(queue, ReceiptHandle)
        if message is not None:  # SQS: an older receipt of the message deletes it too
            del queue[message.id]
            self.on_delete(message.id)
        return _meta()

    async def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        queue = self._queue(QueueUrl, "ChangeMessageVisibilityBatch")
        ok, failed = [], []
        for entry in Entries:
            message = self._by_receipt(queue, entry["ReceiptHandle"])
            if message is None:
                failed.append({"Id": entry["Id"], "SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "invalid"})
                continue
            message.visible_at = self.clock.now + int(entry["VisibilityTimeout"])
            ok.append({"Id": entry["Id"]})
        self._changed.set()
        out: dict[str, Any] = {**_meta(), "Successful": ok}
        if failed:
            out["Failed"] = failed
        return out

    async def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        queue = self._queue(QueueUrl, "GetQueueAttributes")
        visible = sum(1 for m in queue.values() if m.visible_at <= self.clock.now)
        attrs = {
            "QueueArn": f"arn:aws:sqs:us-east-1:123456789012:{QueueUrl.rsplit('/', 1)[-1]}",
            "ApproximateNumberOfMessages": str(visible),
            "ApproximateNumberOfMessagesNotVisible": str(len(queue) - visible),
        }
        return {**_meta(), "Attributes": {k: v for k, v in attrs.items() if k in AttributeNames or "All" in AttributeNames}}


# --- Kinesis -----------------------------------------------------------------------------------


@dataclass
class _Shard:
    id: str
    lo: int
    hi: int
    start: int
    parent: str | None = None
    adjacent: str | None = None
    records: list[tuple[int, bytes, float]] = field(default_factory=list)
    end: int | None = None  # closed by a reshard: its ending sequence number

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ShardId": self.id,
            "HashKeyRange": {"StartingHashKey": str(self.lo), "EndingHashKey": str(self.hi)},
            "SequenceNumberRange": {"StartingSequenceNumber": str(self.start)},
        }
        if self.end is not None:
            out["SequenceNumberRange"]["EndingSequenceNumber"] = str(self.end)
        if self.parent is not None:
            out["ParentShardId"] = self.parent
        if self.adjacent is not None:
            out["AdjacentParentShardId"] = self.adjacent
        return out


class FakeKinesis:
    """One stream: shards with sequence numbers, split and merge, iterators that expire on the model's clock.

    `latest[shard]` records, for every LATEST iterator handed out while the shard had no committed cursor
    (`cursor_of`, set by the world: None for none), how many of the shard's records it skipped. Only those may
    skip records (`start_position: latest` on a first start); one taken over a committed cursor skips nothing
    the model excuses.
    """

    def __init__(self, clock: Clock, stream: str, shards: int = 1) -> None:
        self.clock = clock
        self.stream = stream
        self._seq = itertools.count(49_000_000_000_000_000_000)
        self._shard_ids = itertools.count()
        self.shards: dict[str, _Shard] = {}
        self._iterators: dict[str, tuple[str, int, float]] = {}
        self._tokens = itertools.count()
        self.latest: dict[str, list[int]] = {}
        self.cursor_of: Callable[[str], str | None] = lambda shard: None
        #: per shard, how far GetRecords has read (the model waits for the readers to catch up between steps)
        self.served: dict[str, int] = {}
        step = (MAX_HASH + 1) // shards
        for i in range(shards):
            self._new_shard(i * step, MAX_HASH if i == shards - 1 else (i + 1) * step - 1)

    def _new_shard(self, lo: int, hi: int, parent: str | None = None, adjacent: str | None = None) -> _Shard:
        shard = _Shard(f"shardId-{next(self._shard_ids):012d}", lo, hi, next(self._seq), parent, adjacent)
        self.shards[shard.id] = shard
        return shard

    def open_shards(self) -> list[str]:
        return [s.id for s in self.shards.values() if s.end is None]

    def _stream(self, name: str | None, operation: str) -> None:
        if name is not None and name != self.stream:
            raise client_error("ResourceNotFoundException", operation, f"Stream {name} not found")

    def _shard(self, shard_id: str, operation: str) -> _Shard:
        shard = self.shards.get(shard_id)
        if shard is None:
            raise client_error("ResourceNotFoundException", operation, f"Shard {shard_id} not found")
        return shard

    async def put_record(
        self,
        StreamName: str,
        Data: bytes,
        PartitionKey: str,
        ExplicitHashKey: str | None = None,
    ) -> dict[str, Any]:
        self._stream(StreamName, "PutRecord")
        key = int(ExplicitHashKey) if ExplicitHashKey is not None else int(hashlib.md5(PartitionKey.encode()).hexdigest(), 16)
        shard = next(s for s in self.shards.values() if s.end is None and s.lo <= key <= s.hi)
        seq = next(self._seq)
        shard.records.append((seq, Data, self.clock.now))
        return {**_meta(), "ShardId": shard.id, "SequenceNumber": str(seq)}

    async def list_shards(
        self,
        StreamName: str | None = None,
        NextToken: str | None = None,
        MaxResults: int = 10000,
    ) -> dict[str, Any]:
        self._stream(StreamName, "ListShards")
        shards = [s.describe() for s in self.shards.values()]
        start = int(NextToken) if NextToken else 0
        page = shards[start : start + MaxResults]
        out: dict[str, Any] = {**_meta(), "Shards": page}
        if start + MaxResults < len(shards):
            out["NextToken"] = str(start + MaxResults)
        return out

    async def get_shard_iterator(
        self,
        StreamName: str,
        ShardId: str,
        ShardIteratorType: str,
        StartingSequenceNumber: str | None = None,
    ) -> dict[str, Any]:
        self._stream(StreamName, "GetShardIterator")
        shard = self._shard(ShardId, "GetShardIterator")
        seqs = [r[0] for r in shard.records]
        if ShardIteratorType == "TRIM_HORIZON":
            index = 0
        elif ShardIteratorType == "LATEST":
            index = len(seqs)
            if self.cursor_of(ShardId) is None:
                self.latest.setdefault(ShardId, []).append(index)
        elif ShardIteratorType in ("AFTER_SEQUENCE_NUMBER", "AT_SEQUENCE_NUMBER"):
            assert StartingSequenceNumber is not None
            target = int(StartingSequenceNumber)
            after = ShardIteratorType == "AFTER_SEQUENCE_NUMBER"
            index = next((i for i, s in enumerate(seqs) if (s > target if after else s >= target)), len(seqs))
        else:
            raise client_error("InvalidArgumentException", "GetShardIterator", ShardIteratorType)
        return {**_meta(), "ShardIterator": self._token(ShardId, index)}

    def _token(self, shard_id: str, index: int) -> str:
        token = f"it-{next(self._tokens)}"
        self._iterators[token] = (shard_id, index, self.clock.now)
        return token

    async def get_records(self, ShardIterator: str, Limit: int = 10000) -> dict[str, Any]:
        found = self._iterators.get(ShardIterator)
        if found is None:
            raise client_error("InvalidArgumentException", "GetRecords", "invalid iterator")
        shard_id, index, issued = found
        if self.clock.now - issued > ITERATOR_SECONDS:
            raise client_error("ExpiredIteratorException", "GetRecords", "Iterator expired")
        shard = self.shards[shard_id]
        taken = shard.records[index : index + Limit]
        after = index + len(taken)
        self.served[shard_id] = max(self.served.get(shard_id, 0), after)
        records = [
            {
                "SequenceNumber": str(seq),
                "ApproximateArrivalTimestamp": dt.datetime.fromtimestamp(at, dt.UTC),
                "Data": data,
                "PartitionKey": "k",
            }
            for seq, data, at in taken
        ]
        out: dict[str, Any] = {**_meta(), "Records": records, "MillisBehindLatest": 0}
        if shard.end is None or after < len(shard.records):
            out["NextShardIterator"] = self._token(shard_id, after)
        else:
            out["ChildShards"] = [
                {
                    "ShardId": s.id,
                    "ParentShards": [p for p in (s.parent, s.adjacent) if p],
                    "HashKeyRange": s.describe()["HashKeyRange"],
                }
                for s in self.shards.values()
                if shard_id in (s.parent, s.adjacent)
            ]
        return out

    def _close(self, shard: _Shard) -> None:
        shard.end = next(self._seq)

    async def split_shard(self, StreamName: str, ShardToSplit: str, NewStartingHashKey: str) -> dict[str, Any]:
        self._stream(StreamName, "SplitShard")
        parent = self._shard(ShardToSplit, "SplitShard")
        middle = int(NewStartingHashKey)
        if parent.end is not None or not parent.lo < middle <= parent.hi:
            raise client_error("InvalidArgumentException", "SplitShard", "cannot split")
        self._close(parent)
        self._new_shard(parent.lo, middle - 1, parent=parent.id)
        self._new_shard(middle, parent.hi, parent=parent.id)
        return _meta()

    async def merge_shards(self, StreamName: str, ShardToMerge: str, AdjacentShardToMerge: str) -> dict[str, Any]:
        self._stream(StreamName, "MergeShards")
        a, b = self._shard(ShardToMerge, "MergeShards"), self._shard(AdjacentShardToMerge, "MergeShards")
        if a.end is not None or b.end is not None or a.hi + 1 != b.lo:
            raise client_error("InvalidArgumentException", "MergeShards", "not adjacent open shards")
        self._close(a)
        self._close(b)
        self._new_shard(a.lo, b.hi, parent=a.id, adjacent=b.id)
        return _meta()


class FakeAwsClients:
    """What the service builds its sources with (in place of `streamer.aws.AwsClients`): the world's fakes."""

    def __init__(self, s3: FakeS3, sqs: FakeSqs, kinesis: FakeKinesis) -> None:
        self._s3, self._sqs, self._kinesis = s3, sqs, kinesis

    async def s3(self, region: str, endpoint_url: str | None = None, fast: bool = False) -> FakeS3:
        return self._s3

    async def sqs(self, region: str, endpoint_url: str | None = None, fast: bool = False) -> FakeSqs:
        return self._sqs

    async def kinesis(self, region: str, endpoint_url: str | None = None, fast: bool = False) -> FakeKinesis:
        return self._kinesis

    def default_region(self) -> str | None:
        return "us-east-1"

    async def close(self) -> None:
        return None
