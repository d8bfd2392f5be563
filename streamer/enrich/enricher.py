"""The enricher: keeps every active ENI's context, in its own task, never in the way of counting.

The pipeline hands over each input's record-context tables (`observe`, O(1)); this task folds them,
writes what changed to the checkpoint store's context cache, and, with an `enrich:` section, has EC2
describe each ENI on first sight and again every `refresh_seconds` while it stays active. Calls are
paced by a token bucket per account and region (EC2 throttles per account and region; every account
without a role shares streamer's own), and a failed call (throttled, denied, unreachable) pauses that
account and region with doubling backoff: a metric
(`streamer_enrich_errors_total{reason}`) and at most one log line a minute per reason, nothing else.

A restart reads the cache back, so ENIs described within `refresh_seconds` are not described again.
In a fleet every replica writes what its records said and when it last saw each ENI; only the leader
describes, and every replica reads the leader's answers from the shared table. An ENI EC2 no longer
knows keeps its last-known context (marked deleted) until it is forgotten like its series.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge

from streamer.aggregate import context as ctx
from streamer.aggregate.state import OTHER_INTERFACE
from streamer.enrich import ec2
from streamer.settings import EnrichConfig
from streamer.store.base import StateStore

log = logging.getLogger(__name__)
T = TypeVar("T")

#: how often the task wakes (folds what the pipeline handed over, describes what is due)
TICK_SECONDS = 1.0
#: a fleet's replicas read the shared cache this often (and the leader sees what the others saw)
RELOAD_SECONDS = 30.0
#: forgotten ENIs' rows are deleted this often
FORGET_EVERY_SECONDS = 3600.0
#: a failure reason is logged at most once per this many seconds (the metric counts every one)
LOG_EVERY_SECONDS = 60.0
#: the longest pause after failures
MAX_BACKOFF_SECONDS = 300.0

#: EC2 client for (region, endpoint, role ARN or None, STS endpoint, assume the role again): built in streamer/aws.py
ClientFor = Callable[[str, str | None, str | None, str | None, bool], Awaitable[Any]]
Call = Callable[..., Awaitable[Any]]


class TokenBucket:
    """`rate` calls a second on average, up to `burst` at once."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.at = burst, clock()

    async def take(self) -> None:
        while True:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


class Enricher:
    def __init__(
        self,
        book: ctx.ContextBook,
        store: StateStore,
        call: Call,
        registry: CollectorRegistry,
        *,
        config: EnrichConfig | None,
        client_for: ClientFor | None,
        default_region: str,
        active: Callable[[], Mapping[str, float]],
        idle_seconds: float,
        leader: Callable[[], bool] = lambda: True,
        fleet: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.book, self.store, self.call = book, store, call
        self.config, self.client_for, self.default_region = config, client_for, default_region
        self.active, self.idle_seconds, self.leader, self.fleet, self.clock = active, idle_seconds, leader, fleet, clock
        self.refresh_seconds = config.refresh_seconds if config is not None else 600.0
        self._pending: list[pa.Table] = []
        #: record context of ENIs not (yet) members, kept for one step
        self._waiting: dict[str, dict[str, str]] = {}
        self._dirty: set[str] = set()
        self._stored_seen: dict[str, float] = {}
        self._buckets: dict[tuple[str | None, str], TokenBucket] = {}
        self._pause: dict[tuple[str | None, str], float] = {}
        self._paused_until: dict[tuple[str | None, str], float] = {}
        #: (role, region) whose session a call refused: assumed again at the next try
        self._renew: set[tuple[str, str]] = set()
        self._logged: dict[str, tuple[float, int]] = {}
        self._reloaded = self._forgot = float("-inf")
        #: completed steps (tests wait on this, not on sleeps)
        self.steps = 0
        self.errors = Counter(
            "streamer_enrich_errors_total",
            "EC2 context calls that failed, by reason (the records count without context).",
            ["reason"],
            registry=registry,
        )
        for reason in ec2.REASONS:
            self.errors.labels(reason)
        self.requests = Counter(
            "streamer_enrich_requests_total", "EC2 calls made for ENI context, by API call.", ["call"], registry=registry
        )
        known = Gauge("streamer_enrich_interfaces", "ENIs with context, by where it came from.", ["origin"], registry=registry)
        known.labels("records").set_function(lambda: len(self.book.records))
        known.labels("ec2").set_function(lambda: len(self.book.ec2))

    # --- from the pipeline ------------------------------------------------------------------------

    def observe(self, tables: list[pa.Table]) -> None:
        """An input's record-context tables (context.record_context); folded later, on this task."""
        self._pending.extend(tables)

    # --- the task ---------------------------------------------------------------------------------

    async def load(self) -> None:
        """The cache as the store holds it (at start: what was described before a restart stays described)."""
        rows = await self.call(self.store.contexts)
        for row in rows:
            self._take_row(row, local=False)
        log.info("ENI context: %d interfaces restored from the checkpoint", len(rows))

    async def run(self, tick_seconds: float = TICK_SECONDS) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the cache is a cache: one line, and try again next tick
                self._warn("error", f"ENI context step failed: {type(exc).__name__}: {exc}")
            self.steps += 1
            await asyncio.sleep(self._wait(tick_seconds))

    def _wait(self, tick_seconds: float) -> float:
        """Until the next tick, or sooner when a pause ends before it (short backoffs are kept)."""
        now = self.clock()
        ends = [at - now for at in self._paused_until.values() if at > now]
        return max(0.01, min([tick_seconds, *ends]))

    async def step(self) -> None:
        now = self.clock()
        self._fold(now)
        await self._flush(now)
        if self.fleet and now - self._reloaded >= min(RELOAD_SECONDS, self.refresh_seconds / 4):
            self._reloaded = now
            for row in await self.call(self.store.contexts):
                self._take_row(row, local=True)
        if self.leader():
            if now - self._forgot >= FORGET_EVERY_SECONDS:
                self._forgot = now
                # the table's last-seen times lag by up to refresh_seconds / 2 (written sparingly): keep a margin
                await self.call(self.store.forget_contexts, now - self.idle_seconds - self.refresh_seconds)
            if self.config is not None and self.client_for is not None:
                await self._describe_due(now)
        idle = [eni for eni, at in list(self.book.seen_at.items()) if now - at >= self.idle_seconds]
        self.book.forget(idle)  # with their series
        for eni in idle:
            self._stored_seen.pop(eni, None)
            self._dirty.discard(eni)

    def _fold(self, now: float) -> None:
        """What the records said, for ENIs with their own series (members of the cap) only: the others are
        counted under "other", so they get no context, no row and no describe. An input's context can come
        before its commit makes its ENIs members: it waits one step for that."""
        active = self.active()
        for eni, at in list(active.items()):
            if eni != OTHER_INTERFACE and at > self.book.seen_at.get(eni, float("-inf")):
                self.book.seen_at[eni] = at
        pending, self._pending = self._pending, []
        folded, waited, self._waiting = ctx.fold(pending), self._waiting, {}
        for eni, fields in [*waited.items(), *folded.items()]:
            if eni not in self.book.seen_at:
                if eni in folded and eni not in waited:
                    self._waiting[eni] = fields
                continue
            before = self.book.records.get(eni)
            after = {**(before or {}), **fields}
            if after != before:
                self.book.records[eni] = after
                self._dirty.add(eni)

    async def _flush(self, now: float) -> None:
        """Changed record context, and last-seen times the store has not heard of for a while."""
        stale = now - self.refresh_seconds / 2
        wanted = self.config is not None  # without EC2, rows only for ENIs whose records say something
        rows = []
        for eni, at in self.book.seen_at.items():
            if eni in self._dirty or (
                (wanted or eni in self.book.records) and self._stored_seen.get(eni, float("-inf")) < min(at, stale)
            ):
                rows.append((eni, ctx.dumps(self.book.records.get(eni)), at))
        if not rows:
            return
        await self.call(self.store.put_seen, rows)
        for eni, _, at in rows:
            self._stored_seen[eni] = at
            self._dirty.discard(eni)

    def _take_row(self, row: ctx.ContextRow, local: bool) -> None:
        eni = row.interface_id
        records = ctx.loads(row.records)
        if records is not None and not (local and eni in self.book.records):  # this replica's own records win
            self.book.records[eni] = {str(k): str(v) for k, v in records.items()}
        ec2_doc = ctx.loads(row.ec2)
        if ec2_doc is not None and row.described_at is not None:
            self.book.ec2[eni] = ec2_doc
            self.book.described_at[eni] = row.described_at
        self.book.seen_at[eni] = max(row.seen_at, self.book.seen_at.get(eni, float("-inf")))
        self._stored_seen[eni] = max(row.seen_at, self._stored_seen.get(eni, float("-inf")))

    # --- EC2 --------------------------------------------------------------------------------------

    def due(self, now: float) -> list[str]:
        """ENIs never described, and ENIs seen since their last describe once it is `refresh_seconds` old."""
        out = []
        for eni, seen in self.book.seen_at.items():
            if not eni.startswith("eni-"):  # "other", Transit Gateway attachments, "-"
                continue
            at = self.book.described_at.get(eni)
            if at is None or (now - at >= self.refresh_seconds and seen > at):
                out.append(eni)
        return sorted(out)

    async def _describe_due(self, now: float) -> None:
        assert self.config is not None
        groups: dict[tuple[str | None, str], list[str]] = {}
        for eni in self.due(now):
            records = self.book.records.get(eni) or {}
            region = records.get("region") or self.config.region or self.default_region
            groups.setdefault((records.get("account_id"), region), []).append(eni)
        for key, enis in groups.items():
            if self._paused_until.get(self._limits(key), float("-inf")) > self.clock():
                continue
            for start in range(0, len(enis), ec2.BATCH):
                if not await self._describe_batch(key, enis[start : start + ec2.BATCH]):
                    break

    async def _describe_batch(self, key: tuple[str | None, str], enis: list[str]) -> bool:
        assert self.config is not None
        assert self.client_for is not None
        account, region = key
        role = self.config.role_arn.get(account) if account is not None else None
        bucket = self._buckets.setdefault(
            self._limits(key), TokenBucket(self.config.max_requests_per_second, 2 * self.config.max_requests_per_second)
        )
        try:
            renew = role is not None and (role, region) in self._renew
            try:
                client = await self.client_for(region, self.config.endpoint_url, role, self.config.sts_endpoint_url, renew)
            except Exception as exc:
                reason = (
                    "assume_role"
                    if role is not None and ec2.error_reason(exc) not in ("throttled", "unreachable")
                    else ec2.error_reason(exc)
                )
                raise _Failed(reason, f"assuming {role}: {exc}") from exc
            if role is not None:
                self._renew.discard((role, region))

            async def before(call: str) -> None:
                await bucket.take()
                self.requests.labels(call).inc()

            found = await ec2.describe(client, enis, before)
        except _Failed as failed:
            self._failed(key, failed.reason, failed.message)
            return False
        except Exception as exc:  # every failure of a call is counted by reason and paused on
            if role is not None and ec2.session_refused(exc):
                self._renew.add((role, region))
            self._failed(key, ec2.error_reason(exc), f"{type(exc).__name__}: {exc}")
            return False
        self._pause.pop(self._limits(key), None)
        at = self.clock()
        rows = []
        for eni in enis:
            doc = found.get(eni)
            if doc is None:
                last = self.book.ec2.get(eni)
                # Known before: deleted since, its last-known context stays, marked. Never known: another
                # account's ENI without a role (or gone before its first describe): nothing to say, asked again later.
                doc = {**last, "deleted": True} if last and not last.get("not_found") else {"not_found": True}
            self.book.ec2[eni] = doc
            self.book.described_at[eni] = at
            rows.append((eni, ctx.dumps(doc) or "{}", at))
        await self.call(self.store.put_described, rows)
        return True

    def _limits(self, key: tuple[str | None, str]) -> tuple[str | None, str]:
        """Whose EC2 limits a group's calls count against: (its role, region), None for streamer's own
        credentials. Every account without a role is described with those, against one account's limits,
        so they share one pace and one pause."""
        account, region = key
        roles = self.config.role_arn if self.config is not None else {}
        return (roles.get(account) if account is not None else None), region

    def _failed(self, key: tuple[str | None, str], reason: str, message: str) -> None:
        self.errors.labels(reason).inc()
        limits = self._limits(key)
        pause = min(MAX_BACKOFF_SECONDS, self._pause.get(limits, self.config.backoff_seconds / 2 if self.config else 0.5) * 2)
        self._pause[limits] = pause
        self._paused_until[limits] = self.clock() + pause
        account, region = key
        self._warn(
            reason, f"ENI context for account {account or '(own)'} in {region}: {reason}: {message}; next try in {pause:.0f} s"
        )

    def _warn(self, reason: str, message: str) -> None:
        now = time.monotonic()
        last, quiet = self._logged.get(reason, (float("-inf"), 0))
        if now - last >= LOG_EVERY_SECONDS:
            more = f" ({quiet} more like it since the last line)" if quiet else ""
            log.warning("%s%s", " ".join(message.split()), more)
            self._logged[reason] = (now, 0)
        else:
            self._logged[reason] = (last, quiet + 1)


class _Failed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message
