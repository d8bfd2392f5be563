"""Poll a CloudWatch Logs group with FilterLogEvents over a sliding window.

Each poll asks for events timestamped in [last end - lateness, now], so an
event that is ingested late (up to `lateness_seconds` after its timestamp)
is still seen; event ids already counted are skipped. The ids that can
still reappear (timestamps inside the lateness window) are part of the
checkpoint, committed with the state their events produced, together with
the window's end. A sweep is committed in pieces of `max_bytes_per_delivery`
as its pages arrive; only the last piece moves the window end, so a crash
mid-sweep re-reads from the old end and skips the ids already committed.
Events ingested later than the lateness are not seen: for
that, or for high volume, use a subscription filter to Kinesis.

The LogFormat comes from `log_format`, or from ec2:DescribeFlowLogs when a
`flow_log_id` is given.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import orjson
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field

from streamer.aws import AwsClients
from streamer.schema import DEFAULT_FIELDS, parse_log_format
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
from streamer.store.base import CheckpointError

if TYPE_CHECKING:
    from types_aiobotocore_ec2 import EC2Client
    from types_aiobotocore_logs import CloudWatchLogsClient
    from types_aiobotocore_logs.type_defs import FilteredLogEventTypeDef

log = logging.getLogger(__name__)

END = "end_ms"
#: about what one seen event id costs in the checkpoint (JSON): every piece rewrites the whole map, so a piece is
#: at least as large as that map; a catch-up sweep then writes at most about twice its text, not pieces times ids
SEEN_ID_BYTES = 100
#: lease kind of the CloudWatch poller (fleet)
LEASE = "cloudwatch"


class CloudWatchSourceConfig(AwsSourceSettings):
    type: Literal["cloudwatch"]
    #: the log group the flow log publishes to
    log_group: str
    #: read only the log streams whose name starts with this (one stream per ENI)
    log_stream_prefix: str | None = None
    #: time between two FilterLogEvents sweeps
    poll_interval_seconds: float = Field(default=30, gt=0)
    #: events whose ingestion lags this much are still counted once
    lateness_seconds: int = Field(default=900, ge=0)
    #: on a first start, how far back to read
    start_lookback_seconds: int = Field(default=3600, ge=0)
    #: discover log_format from ec2:DescribeFlowLogs
    flow_log_id: str | None = None
    #: a sweep is committed in pieces of at most this much message text (what one sweep holds), or of about
    #: the size of its seen event ids' checkpoint when that is larger (each piece rewrites it)
    max_bytes_per_delivery: int = Field(default=8 << 20, gt=0)

    async def build(self, ctx: BuildContext) -> CloudWatchSource:
        logs = await ctx.clients.logs(self.region, self.endpoint_url)
        ec2 = await ctx.clients.ec2(self.region, self.endpoint_url) if self.flow_log_id else None
        return CloudWatchSource(ctx.name, self, logs, ctx.cursors, ctx.snapshot, ec2, coordinator=ctx.coordinator)


async def discover_log_format(ec2: EC2Client, flow_log_id: str) -> tuple[str, ...]:
    """The LogFormat of a flow log, as configured in EC2."""
    resp = await ec2.describe_flow_logs(FlowLogIds=[flow_log_id])
    logs = resp.get("FlowLogs", [])
    if not logs:
        raise ValueError(f"flow log {flow_log_id} not found")
    fmt = logs[0].get("LogFormat")
    return parse_log_format(fmt) if fmt else DEFAULT_FIELDS


def _event_key(event: FilteredLogEventTypeDef) -> str:
    """Event ids are unique per group in AWS; prefixing the stream keeps them unique anywhere."""
    return f"{event.get('logStreamName', '')}/{event['eventId']}"


class CloudWatchSource(Source):
    def __init__(
        self,
        name: str,
        config: CloudWatchSourceConfig,
        logs: CloudWatchLogsClient,
        cursors: Callable[[], Awaitable[dict[str, str]]],
        snapshot: Callable[[str], Awaitable[bytes | None]],
        ec2: EC2Client | None = None,
        clock: Callable[[], float] = time.time,
        coordinator: Coordinator | None = None,
    ) -> None:
        super().__init__(name)
        #: one poller at a time in a fleet (a lease); it resumes from the shared cursor when it takes over
        self.coordinator = coordinator or OwnsEverything()
        self._owned = False
        self._epoch: int | None = None
        self.config = config
        self.logs = logs
        self.ec2 = ec2
        self._load_cursors = cursors
        self._load_snapshot = snapshot
        self._clock = clock
        self.log_format = parse_log_format(config.log_format) if config.log_format else None
        self.end_ms: int | None = None
        self.seen: dict[str, int] = {}  # event id -> timestamp (ms), inside the lateness window

    @property
    def snapshot_name(self) -> str:
        return f"cloudwatch-seen:{self.name}"

    async def _restore(self) -> None:
        cursors = await self._load_cursors()
        self.end_ms = int(cursors[END]) if END in cursors else None
        blob = await self._load_snapshot(self.snapshot_name)
        self.seen = {str(k): int(v) for k, v in orjson.loads(blob).items()} if blob else {}
        if self.log_format is None and self.config.flow_log_id and self.ec2 is not None:
            self.log_format = await discover_log_format(self.ec2, self.config.flow_log_id)
            log.info("%s: log format of %s: %s", self.name, self.config.flow_log_id, " ".join(self.log_format))

    first_call_name = "FilterLogEvents"

    async def first_call(self, clients: AwsClients) -> None:
        logs = await clients.logs(self.config.region, self.config.endpoint_url, fast=True)
        await logs.filter_log_events(logGroupName=self.config.log_group, limit=1, startTime=int(self._clock() * 1000) - 60_000)

    async def run(self, sink: Sink) -> None:
        while True:
            try:
                await self._restore()
                break
            except (ClientError, BotoCoreError, OSError, ValueError) as exc:
                sink.source_error(self.name, aws_error_reason(exc), f"starting: {exc}")
                await asyncio.sleep(self.config.poll_interval_seconds)
            except CheckpointError as exc:
                sink.source_error(self.name, type(exc).__name__, f"starting: {exc}")
                await asyncio.sleep(self.config.poll_interval_seconds)
        while True:
            try:
                await self.poll_once(sink)
            except CheckpointError as exc:
                # The database is away while the lease, window end or seen ids are read: the next poll looks
                # again, from what the store holds (pieces of this sweep may have been committed). Raised, it
                # would restart the source after a backoff that grows with each blip.
                self._owned = False
                sink.source_error(self.name, type(exc).__name__, f"polling {self.config.log_group}: {exc}")
            await asyncio.sleep(self.config.poll_interval_seconds)

    async def poll_once(self, sink: Sink) -> int:
        """One FilterLogEvents sweep; returns how many new events were delivered."""
        if not await self.coordinator.claim(LEASE, [self.name]):
            self._owned = False
            self.ready = True  # another replica polls: this one is ready, and idle
            return 0
        epoch = self.coordinator.epoch(LEASE, self.name)
        if not self._owned or epoch != self._epoch:
            await self._restore()  # the previous owner's window end and seen ids (also after losing and regaining)
            self._owned, self._epoch = True, epoch
        now_ms = int(self._clock() * 1000)
        lateness_ms = self.config.lateness_seconds * 1000
        if self.end_ms is None:
            start_ms = now_ms - self.config.start_lookback_seconds * 1000
        else:
            start_ms = max(0, min(self.end_ms, now_ms) - lateness_ms)
        # The sweep is delivered in pieces as its pages arrive. Every piece commits its events' ids with
        # their state and leaves the window end as it is (expected = written = the old end: the claim planner
        # accepts a same-value compare-and-set and writes nothing); only the last piece moves the end to now.
        # A crash mid-sweep resumes from the old end, skipping the ids committed: nothing lost, nothing twice.
        # Held: one piece and one page (and the seen ids).
        seen = dict(self.seen)  # this sweep's; ids from start_ms on stay until its last piece (a resume re-reads them)
        # The end a piece commits: the old one, or on a first start the one a resume reads from start_ms with
        # (a resume's own lookback would begin later and miss the rest of this sweep).
        hold = str(self.end_ms if self.end_ms is not None else start_ms + lateness_ms)
        committed = None if self.end_ms is None else str(self.end_ms)
        parts: list[bytes] = []
        size = delivered = 0
        try:
            async for page in self._filter(start_ms, now_ms):
                for event in page:
                    key = _event_key(event)
                    if key in seen:
                        continue
                    line = event["message"].encode() + b"\n"
                    if parts and size + len(line) > max(
                        self.config.max_bytes_per_delivery, SEEN_ID_BYTES * (len(seen) - len(parts))
                    ):
                        count = len(parts)
                        if not await self._deliver(sink, epoch, parts, seen, committed, hold):
                            return delivered
                        committed = hold
                        delivered, size = delivered + count, 0
                    parts.append(line)
                    size += len(line)
                    seen[key] = int(event["timestamp"])
                self.ready = True
        except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
            sink.source_error(self.name, aws_error_reason(exc), f"FilterLogEvents on {self.config.log_group}: {exc}")
            if delivered:
                self._owned = False  # pieces were committed: resume from the store's seen ids
            return delivered
        self.ready = True
        for key in [k for k, v in seen.items() if v < now_ms - lateness_ms]:
            del seen[key]
        count = len(parts)
        if not await self._deliver(sink, epoch, parts, seen, committed, str(now_ms)):
            return delivered
        self.end_ms = now_ms
        self.seen = seen
        sink.polled(self.name)
        return delivered + count

    async def _deliver(
        self, sink: Sink, epoch: int | None, parts: list[bytes], seen: dict[str, int], old: str | None, new: str
    ) -> bool:
        """Commit one piece of a sweep (its lines; `parts` is emptied) with the seen ids so far, the window end
        compare-and-set from `old` to `new` (the same value but for a first start's first piece and the last)."""
        body = b"".join(parts)
        parts.clear()
        delivery = Delivery(
            location=f"cloudwatch://{self.config.log_group}",
            body=lambda: single_chunk(body),
            cursors={(self.name, END): new},
            expected={(self.name, END): old},
            snapshots={self.snapshot_name: orjson.dumps(seen)},
            log_format=self.log_format,
            headerless=True,
            lease=(LEASE, self.name),
            epoch=epoch,
        )
        outcome = await sink.process(self.name, delivery)
        if outcome in (LEASE_LOST, DUPLICATE):
            # Not counted here: another replica polls (or polled) this window. Keep nothing of this sweep;
            # when the lease is ours again, resume from the committed window end and seen ids.
            self._owned = False
            return False
        return True

    async def _filter(self, start_ms: int, end_ms: int) -> AsyncIterator[list[FilteredLogEventTypeDef]]:
        """The sweep's events, page by page (one page held at a time: at most 1 MB or 10,000 events)."""
        kwargs: dict[str, Any] = {"logGroupName": self.config.log_group, "startTime": start_ms, "endTime": end_ms}
        if self.config.log_stream_prefix:
            kwargs["logStreamNamePrefix"] = self.config.log_stream_prefix
        paginator = self.logs.get_paginator("filter_log_events")
        async for page in paginator.paginate(**kwargs):
            yield page.get("events", [])
