"""Consume the Kinesis Data Stream a CloudWatch Logs subscription filter writes to.

Each Kinesis record is a gzip'd CloudWatch Logs document; DATA_MESSAGE
events become lines for the vectorized decoder, CONTROL_MESSAGE documents
are skipped. One GetRecords batch is one delivery: its lines plus the
shard's new sequence number, committed in the same transaction as the state
they produced. On restart every shard resumes AFTER its committed sequence
number, so nothing is lost or counted twice.

Resharding: a child shard is read only once its parent(s) are drained
(GetRecords returned no next iterator, or the parent's ending sequence
number has been read); a drained shard is committed as SHARD_END.
`start_position` applies to the very first start only, and there only to
the shards without a parent that the first schedule starts reading: a child
of a reshard, or a shard taken over from another replica later, always
starts at TRIM_HORIZON (or its committed cursor), so that no record is
skipped.

Several inputs move at once: every shard is read by its own task, and
within a shard the next batch is fetched and unpacked while the one before
it is decoded and committed. Batches of one shard are still handed over one
at a time, in order, so its cursor only ever moves forward from what is
committed. Reading ahead is bounded by the bytes the source holds
(`max_bytes_in_flight`: the batches' inflated text, not the records as read;
a GetRecords answer with more is cut into several batches, each committing
the cursor of its last record) and paced to AWS's 5 GetRecords/s per shard.
A record inflates to at most 16 MiB (past it: one `record_too_large`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field

from streamer.aws import AwsClients
from streamer.decode.cloudwatch import unpack_records
from streamer.schema import parse_log_format
from streamer.settings import AwsSourceSettings
from streamer.sources.base import (
    DUPLICATE,
    LEASE_LOST,
    BuildContext,
    Coordinator,
    Delivery,
    OwnsEverything,
    Sink,
    Source,
    aws_error_reason,
    single_chunk,
)
from streamer.sources.inflight import BytesInFlight
from streamer.store.base import CheckpointError

if TYPE_CHECKING:
    from types_aiobotocore_kinesis import KinesisClient
    from types_aiobotocore_kinesis.type_defs import RecordTypeDef, ShardTypeDef

log = logging.getLogger(__name__)

SHARD_END = "SHARD_END"
#: lease kind of Kinesis shards (fleet)
SHARD_LEASE = "kinesis_shard"

#: AWS allows 5 GetRecords per second per shard.
MIN_POLL_SECONDS = 0.2
INVALID_PAYLOAD = "invalid_payload"
#: batches a shard reads ahead of the one being committed, at most (besides the bytes bound)
READ_AHEAD_BATCHES = 2


class KinesisSourceConfig(AwsSourceSettings):
    type: Literal["kinesis"]
    #: the Kinesis Data Stream the subscription filter writes to
    stream_name: str
    #: where a shard with no checkpoint starts on the very first start: the oldest record or only new ones
    start_position: Literal["trim_horizon", "latest"] = "trim_horizon"
    #: pause between GetRecords calls on a shard that returned nothing new
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    #: how often to look for new shards (resharding)
    shard_refresh_seconds: float = Field(default=60, gt=0)
    #: Kinesis records per GetRecords call (one checkpoint commit each)
    batch_records: int = Field(default=10_000, ge=1, le=10_000)
    #: batches read ahead of their commit are bounded by the text they hold (inflated, not as read); a
    #: GetRecords answer with more is cut into batches of about this much, each committing its last record
    max_bytes_in_flight: int = Field(default=16 << 20, ge=1)

    async def build(self, ctx: BuildContext) -> KinesisSource:
        kinesis = await ctx.clients.kinesis(self.region, self.endpoint_url)
        return KinesisSource(ctx.name, self, kinesis, ctx.cursors, coordinator=ctx.coordinator)


class KinesisSource(Source):
    def __init__(
        self,
        name: str,
        config: KinesisSourceConfig,
        kinesis: KinesisClient,
        cursors: Callable[[], Awaitable[dict[str, str]]],
        coordinator: Coordinator | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name)
        #: in a fleet, each replica reads the shards it holds a lease on (its fair share)
        self.coordinator = coordinator or OwnsEverything()
        self.config = config
        self.kinesis = kinesis
        self._load_cursors = cursors
        self.log_format = parse_log_format(config.log_format) if config.log_format else None
        self.positions: dict[str, str] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._first_start = True
        #: first start, `latest`: the shards the first schedule started that may still begin at LATEST (each once)
        self._latest: set[str] | None = None
        self._waiting = False
        self._iterating: set[str] = set()  # shards whose first iterator was obtained
        self.clock = clock
        #: pause before a failed commit is tried again (the batch is in memory)
        self.retry_seconds = 5.0
        #: per shard: batches read and not yet handed to the sink, and their bytes plus the one being committed
        self.ahead: dict[str, int] = {}
        self._held: dict[str, int] = {}
        #: shards whose reading ahead waits for bytes to be given back
        self.waiting: set[str] = set()
        self._budget = BytesInFlight(config.max_bytes_in_flight)

    first_call_name = "ListShards"

    async def first_call(self, clients: AwsClients) -> None:
        kinesis = await clients.kinesis(self.config.region, self.config.endpoint_url, fast=True)
        await kinesis.list_shards(StreamName=self.config.stream_name, MaxResults=1)

    async def run(self, sink: Sink) -> None:
        self.positions = await self._load_cursors()
        self._first_start = not self.positions
        self._latest = None
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    try:
                        await self._schedule(sink, group)
                    except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
                        sink.source_error(self.name, aws_error_reason(exc), f"listing shards of {self.config.stream_name}: {exc}")
                    except CheckpointError as exc:
                        # The database is away while the shards' cursors or leases are read: the shards being read
                        # go on (their commits wait and retry), the next schedule looks again. Raised, it would
                        # stop every shard and restart the source after a backoff that grows with each blip.
                        sink.source_error(
                            self.name, type(exc).__name__, f"scheduling the shards of {self.config.stream_name}: {exc}"
                        )
                    await asyncio.sleep(self._refresh_seconds())
        finally:
            self._running.clear()

    @property
    def reading(self) -> set[str]:
        """Shards currently being read."""
        return {shard for shard, task in self._running.items() if not task.done()}

    def _refresh_seconds(self) -> float:
        # Look again soon while children wait for a parent to drain, and often in a fleet (replicas join,
        # leave and die: shares change, expired leases are taken over), else at the configured pace.
        if self._waiting:
            return 1.0
        fleet = not isinstance(self.coordinator, OwnsEverything)
        return min(2.0, self.config.shard_refresh_seconds) if fleet else self.config.shard_refresh_seconds

    def lease_name(self, shard_id: str) -> str:
        return f"{self.name}/{shard_id}"

    async def list_shards(self) -> list[ShardTypeDef]:
        shards: list[ShardTypeDef] = []
        kwargs: dict[str, Any] = {"StreamName": self.config.stream_name}
        while True:
            page = await self.kinesis.list_shards(**kwargs)
            shards.extend(page.get("Shards", []))
            token = page.get("NextToken")
            if not token:
                return shards
            kwargs = {"NextToken": token}

    async def _schedule(self, sink: Sink, group: asyncio.TaskGroup) -> None:
        shards = await self.list_shards()
        known = {s["ShardId"] for s in shards}
        for shard_id, task in list(self._running.items()):
            if task.done():
                del self._running[shard_id]
        self.positions = {**self.positions, **(await self._load_cursors())}  # other replicas' progress too
        self._waiting = False
        ready: dict[str, ShardTypeDef] = {}
        for shard in shards:
            shard_id = shard["ShardId"]
            if self.positions.get(shard_id) == SHARD_END:
                continue
            parents = _parents(shard, known)
            if any(self.positions.get(p) != SHARD_END for p in parents):
                self._waiting = True
                continue  # a parent still has records: children wait
            ready[self.lease_name(shard_id)] = shard
        owned = await self.coordinator.claim(SHARD_LEASE, sorted(ready))
        if self._latest is None:  # the first schedule: only what it starts, and no child, may begin at LATEST
            orphans = {ready[n]["ShardId"] for n in owned if not _parents(ready[n], known)}
            self._latest = orphans if self._first_start and self.config.start_position == "latest" else set()
        for name in sorted(owned):
            shard = ready[name]
            if shard["ShardId"] not in self._running:
                self._running[shard["ShardId"]] = group.create_task(self._read_shard(sink, shard))
        self._update_ready()

    def _update_ready(self) -> None:
        """Ready once every shard being read has its iterator (or there is nothing to read)."""
        self.ready = self.reading <= self._iterating

    async def _iterator(self, shard_id: str, position: str | None) -> str:
        kwargs: dict[str, Any] = {"StreamName": self.config.stream_name, "ShardId": shard_id}
        if position is not None:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=position)
        elif self._latest is not None and shard_id in self._latest:
            self._latest.discard(shard_id)  # once: a new iterator without a cursor reads everything still there
            kwargs["ShardIteratorType"] = "LATEST"
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        return str((await self.kinesis.get_shard_iterator(**kwargs))["ShardIterator"])

    async def _read_shard(self, sink: Sink, shard: ShardTypeDef) -> None:
        try:
            await self._read_shard_leased(sink, shard)
        finally:  # another replica (or a later task) reports this shard's lag from now on: no stale series here
            self._iterating.discard(shard["ShardId"])
            sink.behind(self.name, shard["ShardId"], None)

    async def _read_shard_leased(self, sink: Sink, shard: ShardTypeDef) -> None:
        """Read one shard while its lease is held under the epoch it was taken with.

        A reader task fetches and unpacks batches ahead; this task commits them one after another. `committed`
        is the cursor last seen committed: each batch is a compare-and-set from the cursor before it, so a retry
        after an unknown outcome, or a batch read before the lease was lost and won back, never counts twice nor
        moves the cursor backwards. A batch found counted already (DUPLICATE) drops what was read ahead and reads
        on from the committed cursor; a lost lease (or a new epoch) ends the task, and the next schedule starts
        a fresh one from the committed cursor.
        """
        shard_id = shard["ShardId"]
        epoch = self.coordinator.epoch(SHARD_LEASE, self.lease_name(shard_id))
        committed = self.positions.get(shard_id)
        while True:
            batches: asyncio.Queue[_Batch] = asyncio.Queue()
            reader = asyncio.create_task(self._read_ahead(sink, shard, committed, batches))
            try:
                outcome = await self._commit_in_order(sink, shard_id, epoch, batches, reader)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                while not batches.empty():  # read ahead, never handed over: read again from the cursor
                    self._drop(shard_id, batches.get_nowait())
            if outcome != DUPLICATE:
                return
            try:  # the cursor moved on: that batch was counted; read on from there
                committed = (await self._load_cursors()).get(shard_id)
            except Exception as exc:  # the database is away: a fresh task starts from the cursor later
                sink.source_error(self.name, "commit_failed", f"{self.config.stream_name}/{shard_id}: {exc}")
                return
            log.info("%s: shard %s was read up to %s already: reading on from there", self.name, shard_id, committed)
            if committed is not None:
                self.positions[shard_id] = committed
            if committed == SHARD_END:
                return

    async def _commit_in_order(
        self, sink: Sink, shard_id: str, epoch: int | None, batches: asyncio.Queue[_Batch], reader: asyncio.Task[None]
    ) -> str:
        """Hand the batches read ahead to the sink one at a time, in order: a batch goes only once the one before
        it has committed, so a shard's cursor commits in order, and a batch whose commit fails is retried before
        anything after it is handed over. Returns why it stopped (LEASE_LOST, DUPLICATE, or SHARD_END)."""
        lease = self.lease_name(shard_id)
        while True:
            if not self.coordinator.owns(SHARD_LEASE, lease) or self.coordinator.epoch(SHARD_LEASE, lease) != epoch:
                log.info("%s: shard %s is read by another replica now", self.name, shard_id)
                return LEASE_LOST
            batch = await _next_batch(batches, reader)
            self.ahead[shard_id] -= 1
            self._budget.notify()  # the reader may fetch the next one
            try:
                if batch.cursor is not None:
                    outcome = await self._deliver(sink, shard_id, batch, epoch)
                    if outcome in (LEASE_LOST, DUPLICATE):
                        return outcome  # LEASE_LOST: the new owner resumes from the committed cursor
                if batch.behind is not None:
                    sink.behind(self.name, shard_id, batch.behind)
                sink.polled(self.name)
            finally:
                self._release(shard_id, batch.size)
            if batch.drained:
                log.info("%s: shard %s drained", self.name, shard_id)
                return SHARD_END

    def _may_read(self, shard_id: str) -> bool:
        """Read ahead a few batches at most, and while the source holds fewer bytes than its bound; a shard
        holding nothing always reads its next batch (every shard moves, however large the others' batches)."""
        if self.ahead.get(shard_id, 0) >= READ_AHEAD_BATCHES:
            return False
        return self._held.get(shard_id, 0) == 0 or self._budget.held < self._budget.limit

    def _take(self, shard_id: str, batch: _Batch) -> None:
        self.ahead[shard_id] = self.ahead.get(shard_id, 0) + 1
        self._held[shard_id] = self._held.get(shard_id, 0) + batch.size
        self._budget.take(batch.size)

    def _release(self, shard_id: str, size: int) -> None:
        self._held[shard_id] -= size
        self._budget.give(size)

    def _drop(self, shard_id: str, batch: _Batch) -> None:
        self.ahead[shard_id] -= 1
        self._release(shard_id, batch.size)

    async def _read_ahead(self, sink: Sink, shard: ShardTypeDef, position: str | None, batches: asyncio.Queue[_Batch]) -> None:
        """Fetch and unpack the shard's batches from `position` on, in order, while earlier ones commit."""
        shard_id = shard["ShardId"]
        ending = shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
        pace = Pace(MIN_POLL_SECONDS, self.clock)
        iterator: str | None = None
        while True:
            await self._wait_for_room(shard_id)
            await asyncio.sleep(pace.delay())
            try:
                if iterator is None:
                    iterator = await self._iterator(shard_id, position)
                    self._iterating.add(shard_id)
                    self._update_ready()
                resp = await self.kinesis.get_records(ShardIterator=iterator, Limit=self.config.batch_records)
            except ClientError as exc:
                code = aws_error_reason(exc)
                if code == "ExpiredIteratorException":
                    iterator = None  # a new one from the last batch read (not committed: that one is queued)
                    continue
                sink.source_error(self.name, code, f"{self.config.stream_name}/{shard_id}: {exc}")
                await asyncio.sleep(1.0 if code == "ProvisionedThroughputExceededException" else 5.0)
                continue
            except (TimeoutError, BotoCoreError, OSError) as exc:
                sink.source_error(self.name, type(exc).__name__, f"{self.config.stream_name}/{shard_id}: {exc}")
                await asyncio.sleep(5.0)
                continue
            records = resp.get("Records", [])
            next_iterator = resp.get("NextShardIterator")
            last = records[-1]["SequenceNumber"] if records else position
            drained = next_iterator is None or (
                not records and ending is not None and last is not None and int(last) >= int(ending)
            )
            behind = resp["MillisBehindLatest"] / 1000 if "MillisBehindLatest" in resp else None
            await self._unpack_in_pieces(sink, shard_id, records, position, drained, behind, batches)
            if drained:
                return
            position, iterator = last, next_iterator
            if not records:
                await asyncio.sleep(max(MIN_POLL_SECONDS, self.config.poll_interval_seconds))

    async def _unpack_in_pieces(
        self,
        sink: Sink,
        shard_id: str,
        records: list[RecordTypeDef],
        before: str | None,
        drained: bool,
        behind: float | None,
        batches: asyncio.Queue[_Batch],
    ) -> None:
        """Queue one GetRecords answer as batches of about `max_bytes_in_flight` of inflated text each.

        What a batch holds is its text, so that is what counts against `max_bytes_in_flight`: 10 MB of
        gzip'd records can inflate to far more. An answer whose text is larger is cut into several
        batches, each committing the cursor of its last record, and each waiting for room before it is
        inflated. So a shard holds at most the bound plus one batch, whatever the compression ratio.
        """
        data = [r["Data"] for r in records]
        at = 0
        while True:
            if at:  # the first piece was waited for before GetRecords
                await self._wait_for_room(shard_id)
            end, body, errors = (
                await asyncio.to_thread(unpack_records, data, at, self.config.max_bytes_in_flight) if data else (0, b"", None)
            )
            last = end >= len(data)
            bad = dict(errors.counts) if errors is not None else {}
            if bad and errors is not None:
                where = f"{self.config.stream_name}/{shard_id}"
                example = next(iter(errors.examples.values()), "")
                for reason, count in bad.items():
                    sink.source_error(self.name, reason, f"{where}: {count} record(s) or event(s) skipped, e.g. {example}")
            cursor = SHARD_END if drained and last else (records[end - 1]["SequenceNumber"] if records else None)
            batch = _Batch(body, bad, before, cursor, drained and last, len(body), behind if last else None)
            self._take(shard_id, batch)
            batches.put_nowait(batch)
            if last:
                return
            before, at = cursor, end

    async def _wait_for_room(self, shard_id: str) -> None:
        if not self._may_read(shard_id):
            self.waiting.add(shard_id)
            try:
                await self._budget.wait_until(lambda: self._may_read(shard_id))
            finally:
                self.waiting.discard(shard_id)

    async def _deliver(self, sink: Sink, shard_id: str, batch: _Batch, epoch: int | None) -> str:
        """Commit one batch, moving the shard's cursor from `batch.before` to `batch.cursor`; returns the outcome
        (LEASE_LOST: the lease was lost meanwhile; DUPLICATE: the cursor had moved on, nothing counted)."""
        assert batch.cursor is not None
        body = batch.body
        delivery = Delivery(
            location=f"kinesis://{self.config.stream_name}/{shard_id}",
            body=lambda: single_chunk(body),
            cursors={(self.name, shard_id): batch.cursor},
            expected={(self.name, shard_id): batch.before},
            log_format=self.log_format,
            headerless=True,
            errors=dict(batch.bad),
            lease=(SHARD_LEASE, self.lease_name(shard_id)),
            epoch=epoch,
            size=batch.size,
        )
        while True:
            try:
                outcome = await sink.process(self.name, delivery)
                break
            except Exception as exc:  # the batch is in memory; retry the commit rather than skip it
                sink.source_error(self.name, "commit_failed", f"{delivery.location}: {exc}")
                await asyncio.sleep(self.retry_seconds)
        if outcome not in (LEASE_LOST, DUPLICATE):
            self.positions[shard_id] = batch.cursor
        return outcome


def _parents(shard: ShardTypeDef, known: set[str]) -> list[str]:
    """The shard's parents that are still listed (a parent past the retention period is gone)."""
    return [p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p and p in known]


@dataclasses.dataclass
class _Batch:
    """One GetRecords answer, unpacked while the batch before it commits."""

    body: bytes
    #: records (or events in them) that are not CloudWatch payloads, by reason (invalid_payload, record_too_large)
    bad: dict[str, int]
    #: the shard's cursor before this batch (compare-and-set), and after it (None: an empty read, nothing to commit)
    before: str | None
    cursor: str | None
    drained: bool
    #: the bytes it holds (its inflated text): held against `max_bytes_in_flight` until committed
    size: int
    #: MillisBehindLatest, in seconds
    behind: float | None = None


async def _next_batch(batches: asyncio.Queue[_Batch], reader: asyncio.Task[None]) -> _Batch:
    """The next batch read ahead; a reader that failed (a bug: AWS errors are retried there) fails the shard too."""
    if batches.empty() and not reader.done():
        getter = asyncio.ensure_future(batches.get())
        try:
            await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # Cancelled just as the getter took a batch: back into the queue, where the shard task's cleanup gives
            # its read-ahead slot and bytes back (else they stay taken: the shard would read no more, for good).
            if getter.done() and not getter.cancelled():
                batches.put_nowait(getter.result())
            raise
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
    if not batches.empty():
        return batches.get_nowait()
    reader.result()  # raises what the reader failed with
    raise RuntimeError("a shard's reader ended before its last batch")


class Pace:
    """At most one call per `interval` (AWS allows five GetRecords a second per shard), however fast batches commit."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self.clock = clock
        self._next: float | None = None

    def delay(self) -> float:
        """How long to wait before the next call; the call is then counted as made at that time."""
        now = self.clock()
        wait = 0.0 if self._next is None else max(0.0, self._next - now)
        self._next = now + wait + self.interval
        return wait
