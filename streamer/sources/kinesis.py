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
`start_position` applies to the very first start only; shards discovered
later always start at TRIM_HORIZON so that no record is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field

from streamer.aws import AwsClients
from streamer.decode.cloudwatch import payload_lines
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


class KinesisSourceConfig(AwsSourceSettings):
    type: Literal["kinesis"]
    stream_name: str
    start_position: Literal["trim_horizon", "latest"] = "trim_horizon"
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    #: how often to look for new shards (resharding)
    shard_refresh_seconds: float = Field(default=60, gt=0)
    #: Kinesis records per GetRecords call (one checkpoint commit each)
    batch_records: int = Field(default=10_000, ge=1, le=10_000)

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
        self._waiting = False
        self._iterating: set[str] = set()  # shards whose first iterator was obtained

    first_call_name = "ListShards"

    async def first_call(self, clients: AwsClients) -> None:
        kinesis = await clients.kinesis(self.config.region, self.config.endpoint_url, fast=True)
        await kinesis.list_shards(StreamName=self.config.stream_name, MaxResults=1)

    async def run(self, sink: Sink) -> None:
        self.positions = await self._load_cursors()
        self._first_start = not self.positions
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    try:
                        await self._schedule(sink, group)
                    except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
                        sink.source_error(self.name, aws_error_reason(exc), f"listing shards of {self.config.stream_name}: {exc}")
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
            parents = [p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p and p in known]
            if any(self.positions.get(p) != SHARD_END for p in parents):
                self._waiting = True
                continue  # a parent still has records: children wait
            ready[self.lease_name(shard_id)] = shard
        owned = await self.coordinator.claim(SHARD_LEASE, sorted(ready))
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
        elif self._first_start and self.config.start_position == "latest":
            kwargs["ShardIteratorType"] = "LATEST"
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        return str((await self.kinesis.get_shard_iterator(**kwargs))["ShardIterator"])

    async def _read_shard(self, sink: Sink, shard: ShardTypeDef) -> None:
        try:
            await self._read_shard_leased(sink, shard)
        finally:  # another replica (or a later task) reports this shard's lag from now on: no stale series here
            sink.behind(self.name, shard["ShardId"], None)

    async def _read_shard_leased(self, sink: Sink, shard: ShardTypeDef) -> None:
        """Read one shard while its lease is held under the epoch it was taken with.

        `committed` is the cursor this task last saw committed: each batch is a compare-and-set from it, so
        a retry after an unknown outcome, or a batch read before the lease was lost and won back, never
        counts twice nor moves the cursor backwards. A lost lease (or a new epoch) ends the task; the next
        schedule starts a fresh one from the committed cursor.
        """
        shard_id = shard["ShardId"]
        lease = self.lease_name(shard_id)
        epoch = self.coordinator.epoch(SHARD_LEASE, lease)
        ending = shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
        iterator: str | None = None
        committed = self.positions.get(shard_id)
        while True:
            if not self.coordinator.owns(SHARD_LEASE, lease) or self.coordinator.epoch(SHARD_LEASE, lease) != epoch:
                log.info("%s: shard %s is read by another replica now", self.name, shard_id)
                self._iterating.discard(shard_id)
                return
            try:
                if iterator is None:
                    iterator = await self._iterator(shard_id, committed)
                    self._iterating.add(shard_id)
                    self._update_ready()
                resp = await self.kinesis.get_records(ShardIterator=iterator, Limit=self.config.batch_records)
            except ClientError as exc:
                code = aws_error_reason(exc)
                if code == "ExpiredIteratorException":
                    iterator = None
                    continue
                sink.source_error(self.name, code, f"{self.config.stream_name}/{shard_id}: {exc}")
                await asyncio.sleep(1.0 if code == "ProvisionedThroughputExceededException" else 5.0)
                continue
            except (TimeoutError, BotoCoreError, OSError) as exc:
                sink.source_error(self.name, type(exc).__name__, f"{self.config.stream_name}/{shard_id}: {exc}")
                await asyncio.sleep(5.0)
                continue
            records = resp.get("Records", [])
            if "MillisBehindLatest" in resp:
                sink.behind(self.name, shard_id, resp["MillisBehindLatest"] / 1000)
            next_iterator = resp.get("NextShardIterator")
            last = records[-1]["SequenceNumber"] if records else committed
            drained = next_iterator is None or (
                not records and ending is not None and last is not None and int(last) >= int(ending)
            )
            if records or drained:
                cursor = SHARD_END if drained else str(last)
                outcome = await self._deliver(sink, shard_id, records, committed, cursor, epoch)
                if outcome == LEASE_LOST:
                    self._iterating.discard(shard_id)
                    return  # the lease moved on: the new owner resumes from the committed cursor
                if outcome == DUPLICATE:  # the cursor moved on: this batch was counted; read on from there
                    try:
                        committed = (await self._load_cursors()).get(shard_id)
                    except Exception as exc:  # the database is away: a fresh task starts from the cursor later
                        sink.source_error(self.name, "commit_failed", f"{self.config.stream_name}/{shard_id}: {exc}")
                        self._iterating.discard(shard_id)
                        return
                    log.info("%s: shard %s was read up to %s already: reading on from there", self.name, shard_id, committed)
                    if committed is not None:
                        self.positions[shard_id] = committed
                    if committed == SHARD_END:
                        self._iterating.discard(shard_id)
                        return
                    iterator = None
                    continue
                committed = cursor
            sink.polled(self.name)
            if drained:
                log.info("%s: shard %s drained", self.name, shard_id)
                return
            iterator = next_iterator
            if not records:
                await asyncio.sleep(max(MIN_POLL_SECONDS, self.config.poll_interval_seconds))

    async def _deliver(
        self, sink: Sink, shard_id: str, records: list[RecordTypeDef], before: str | None, cursor: str, epoch: int | None
    ) -> str:
        """Commit one batch, moving the shard's cursor from `before` to `cursor`; returns the outcome
        (LEASE_LOST: the lease was lost meanwhile; DUPLICATE: the cursor had moved on, nothing counted)."""
        lines, bad = await asyncio.to_thread(payload_lines, [r["Data"] for r in records])
        if bad:
            where = f"{self.config.stream_name}/{shard_id}"
            sink.source_error(self.name, INVALID_PAYLOAD, f"{where}: {bad} record(s) or event(s) are not CloudWatch payloads")
        body = ("\n".join(lines) + "\n").encode() if lines else b""
        delivery = Delivery(
            location=f"kinesis://{self.config.stream_name}/{shard_id}",
            body=lambda: single_chunk(body),
            cursors={(self.name, shard_id): cursor},
            expected={(self.name, shard_id): before},
            log_format=self.log_format,
            headerless=True,
            errors={INVALID_PAYLOAD: bad} if bad else {},
            lease=(SHARD_LEASE, self.lease_name(shard_id)),
            epoch=epoch,
        )
        while True:
            try:
                outcome = await sink.process(self.name, delivery)
                break
            except Exception as exc:  # the batch is in memory; retry the commit rather than skip it
                sink.source_error(self.name, "commit_failed", f"{delivery.location}: {exc}")
                await asyncio.sleep(5.0)
        if outcome not in (LEASE_LOST, DUPLICATE):
            self.positions[shard_id] = cursor
        return outcome
