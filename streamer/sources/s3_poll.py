"""Poll an S3 bucket for flow-log objects, including late ones.

Every poll walks `AWSLogs/` down to the account/region folders (both key
layouts, every account and region present), then lists only the day and
hour partitions that overlap the lookback window. Objects not yet done
(by key + ETag, in the checkpoint store) are handed to the pipeline oldest
first, several at once so that the next GETs run while earlier objects
decode: as many as fit in `max_bytes_in_flight` (an object larger than
that goes alone), and at most `max_concurrent_objects`. An object that
keeps failing to read is given up after a few attempts, counted, and never
blocks the rest.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field

from streamer.aws import AwsClients
from streamer.schema import parse_log_format
from streamer.settings import AwsSourceSettings
from streamer.sources import s3_layout
from streamer.sources.base import (
    S3_NAMESPACE,
    BuildContext,
    Coordinator,
    OwnsEverything,
    Sink,
    Source,
    SourceError,
    aws_error_reason,
)
from streamer.sources.inflight import BytesInFlight
from streamer.sources.s3_objects import S3Object, object_delivery
from streamer.store.base import CheckpointError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
#: source error reason when an object could not be finished for a reason other than reading it (the checkpoint)
COMMIT_FAILED = "commit_failed"
#: lease kind of S3 polling partitions (fleet)
PARTITION_LEASE = "s3_partition"


class S3SourceConfig(AwsSourceSettings):
    type: Literal["s3"]
    #: the bucket the flow log (or the Firehose stream) delivers to
    bucket: str = Field(min_length=3, max_length=63)
    #: `aws`: flow logs delivered to S3 (AWSLogs/..., daily, hourly or Hive); `firehose`: a Firehose stream's
    #: S3 destination (<prefix>YYYY/MM/DD/HH/<stream>-...)
    layout: Literal["aws", "firehose"] = "aws"
    #: anything before AWSLogs/ (aws), or before YYYY/MM/DD/HH/ (firehose)
    prefix: str = ""
    #: time between two listings
    poll_interval_seconds: float = Field(default=60, gt=0)
    #: how far back to look for late objects
    lookback_seconds: int = Field(default=21600, gt=0)
    #: objects read and decoded at once, at most (the pipeline reads 8 at a time; more would only wait there)
    max_concurrent_objects: int = Field(default=8, ge=1, le=32)
    #: objects in flight are bounded by their summed size as stored (one larger object still goes alone)
    max_bytes_in_flight: int = Field(default=16 << 20, ge=1)

    async def build(self, ctx: BuildContext) -> S3PollSource:
        s3 = await ctx.clients.s3(self.region, self.endpoint_url)

        async def done_among(keys: list[str]) -> set[str]:
            return await ctx.done_among(S3_NAMESPACE, keys)

        return S3PollSource(ctx.name, self, s3, done_among, coordinator=ctx.coordinator, partitions=ctx.s3_partitions)


class S3PollSource(Source):
    def __init__(
        self,
        name: str,
        config: S3SourceConfig,
        s3: S3Client,
        done_among: Callable[[list[str]], Awaitable[set[str]]],
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        coordinator: Coordinator | None = None,
        partitions: int = 1,
    ) -> None:
        super().__init__(name)
        self.coordinator = coordinator or OwnsEverything()
        self.partitions = partitions
        self.config = config
        self.s3 = s3
        self._done_among = done_among
        self._clock = clock
        self._attempts: dict[str, int] = {}
        self.log_format = parse_log_format(config.log_format) if config.log_format else None
        #: object bytes being read and decoded; keys of those objects
        self.budget = BytesInFlight(config.max_bytes_in_flight)
        self.in_flight: set[str] = set()

    first_call_name = "ListObjectsV2"

    async def first_call(self, clients: AwsClients) -> None:
        s3 = await clients.s3(self.config.region, self.config.endpoint_url, fast=True)
        prefix = self.config.prefix if self.config.layout == "firehose" else s3_layout.root(self.config.prefix)
        await s3.list_objects_v2(Bucket=self.config.bucket, Prefix=prefix, MaxKeys=1)

    async def run(self, sink: Sink) -> None:
        while True:
            try:
                await self.poll_once(sink)
            except CheckpointError as exc:
                # The database is away while the leases or done keys are read (each object's own failure is
                # caught with it): the next poll looks again. Raised, it would restart the source after a
                # backoff that grows with each blip, and go on waiting it out once the database is back.
                sink.source_error(self.name, type(exc).__name__, f"polling s3://{self.config.bucket}: {exc}")
            await asyncio.sleep(self.config.poll_interval_seconds)

    async def poll_once(self, sink: Sink) -> int:
        """One listing and everything it found; returns how many objects were processed."""
        try:
            objects = await self.list_window()
        except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
            sink.source_error(self.name, aws_error_reason(exc), f"listing s3://{self.config.bucket}/{self.config.prefix}: {exc}")
            return 0
        self.ready = True
        # In a fleet, each replica reads the objects of the key-hash partitions it holds a lease on.
        owned = await self.coordinator.claim(PARTITION_LEASE, [self.partition_name(i) for i in range(self.partitions)])
        objects = [o for o in objects if self.partition_of(o.key) in owned]
        done = await self._done_among([o.done_key for o in objects])
        todo = sorted((o for o in objects if o.done_key not in done), key=lambda o: (o.last_modified, o.key))

        async def one(obj: S3Object) -> None:
            try:
                await self._process(sink, obj)
            except Exception as exc:  # never cancel the poll's other objects: this one is tried next poll
                sink.source_error(self.name, COMMIT_FAILED, f"s3://{obj.bucket}/{obj.key}: {type(exc).__name__}: {exc}")
            finally:
                self.in_flight.discard(obj.done_key)
                self.budget.give(obj.size)

        async with asyncio.TaskGroup() as group:
            for obj in todo:  # started in order, each once it fits
                await self.budget.wait_until(functools.partial(self._room_for, obj))
                self.budget.take(obj.size)
                self.in_flight.add(obj.done_key)
                group.create_task(one(obj))
        sink.polled(self.name)
        return len(todo)

    def _room_for(self, obj: S3Object) -> bool:
        return self.budget.fits(obj.size) and len(self.in_flight) < self.config.max_concurrent_objects

    def partition_name(self, index: int) -> str:
        return f"{self.name}/{index}"

    def partition_of(self, key: str) -> str:
        """The lease an object is read under: a stable hash of its key."""
        return self.partition_name(zlib.crc32(key.encode()) % self.partitions)

    async def _process(self, sink: Sink, obj: S3Object) -> None:
        delivery = object_delivery(self.s3, obj, self.log_format)
        delivery.lease = (PARTITION_LEASE, self.partition_of(obj.key))
        try:
            await sink.process(self.name, delivery)
            self._attempts.pop(obj.done_key, None)
        except SourceError as exc:
            attempts = self._attempts.get(obj.done_key, 0) + 1
            self._attempts[obj.done_key] = attempts
            sink.source_error(self.name, exc.reason, f"{exc} (attempt {attempts} of {MAX_ATTEMPTS})")
            if attempts >= MAX_ATTEMPTS:
                await sink.give_up(self.name, delivery, "read_error")
                self._attempts.pop(obj.done_key, None)

    async def list_window(self) -> list[S3Object]:
        """Objects in the partitions that overlap the lookback window."""
        now = self._clock()
        if self.config.layout == "firehose":
            return await self._list_firehose_hours(now)
        root = s3_layout.root(self.config.prefix)
        found: list[S3Object] = []
        for account_dir in await self._folders(root):
            for service_dir in await self._folders(account_dir):
                hive = s3_layout.SERVICE_DIRS.get(service_dir.removeprefix(account_dir))
                if hive is None:
                    continue
                layout = s3_layout.Layout(hive)
                for region_dir in await self._folders(service_dir):
                    for day in s3_layout.days_in_window(now, self.config.lookback_seconds):
                        found.extend(await self._list_day(region_dir + layout.day(day), layout, day, now))
        return found

    async def _list_firehose_hours(self, now: dt.datetime) -> list[S3Object]:
        """Firehose writes `<prefix>YYYY/MM/DD/HH/` (UTC, by arrival): list each hour in the lookback."""
        found: list[S3Object] = []
        for hour in s3_layout.hours_in_window(now, self.config.lookback_seconds):
            objects, _ = await self._list(s3_layout.firehose_hour(self.config.prefix, hour), delimiter=False, any_name=True)
            found.extend(objects)
        return found

    async def _list_day(self, day_prefix: str, layout: s3_layout.Layout, day: dt.date, now: dt.datetime) -> list[S3Object]:
        objects, folders = await self._list(day_prefix, delimiter=True)
        for folder in folders:
            hour = layout.hour_of(folder)
            if hour is not None and s3_layout.hour_in_window(day, hour, now, self.config.lookback_seconds):
                objects.extend((await self._list(folder, delimiter=False))[0])
        return objects

    async def _folders(self, prefix: str) -> list[str]:
        return (await self._list(prefix, delimiter=True))[1]

    async def _list(self, prefix: str, delimiter: bool, any_name: bool = False) -> tuple[list[S3Object], list[str]]:
        paginator = self.s3.get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = "/"
        objects: list[S3Object] = []
        folders: list[str] = []
        async for page in paginator.paginate(**kwargs):
            folders.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
            for item in page.get("Contents", []):
                if s3_layout.is_flow_log_object(item["Key"]) or (any_name and s3_layout.is_object_name(item["Key"])):
                    objects.append(
                        S3Object(
                            bucket=self.config.bucket,
                            key=item["Key"],
                            etag=str(item.get("ETag", "")).strip('"'),
                            last_modified=item["LastModified"].timestamp(),
                            size=int(item.get("Size", 0)),
                        )
                    )
        return objects, folders
