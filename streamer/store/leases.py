"""Leases: N replicas over one PostgreSQL split the work like one process.

Work is split by leases kept in the database (the Kinesis Client Library's
lease-table pattern): each lease has an owner and an expiry, renewed every
third of `fleet.lease_seconds`; a replica that dies stops renewing, and its
leases are taken over once they expire. Each replica claims its fair share
of a kind's leases (an even split over the live replicas) and gives back
extras when replicas join, so the work rebalances by itself. One lease,
`leader`, is not shared out: see `store.leader`.

Expiry is judged on the database's clock (see `store.postgres`); the only
clock a replica reads itself is its own monotonic one, to give up its
leases locally once it has not renewed them for `lease_seconds`. Renewal
runs on a thread and a connection of its own, outside the claims' lock, so
neither commits nor a hanging database call hold it up. On a clean stop
a replica gives its leases back and deregisters (`leave`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # the driver is imported only when a fleet is configured
    from streamer.store.postgres import PostgresStore

log = logging.getLogger(__name__)

LEADER = ("leader", "detector")


class Coordinator:
    """This replica's leases, renewed in the background; the sources' view of who reads what."""

    def __init__(self, store: PostgresStore, lease_seconds: float, call: Callable[..., Any]) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self._call = call  # runs a blocking store call on a thread
        self.held: set[tuple[str, str]] = set()
        #: the epoch each held lease was acquired under (what commits read under it are fenced by)
        self.epochs: dict[tuple[str, str], int] = {}
        self.live: list[str] = [store.replica_id]
        self._lock = asyncio.Lock()
        #: renewals' own thread (and, in the store, their own connection): never queued behind commits
        self._renewer = ThreadPoolExecutor(1, thread_name_prefix="lease-renewer")
        #: this replica's monotonic time when the last successful renewal started
        self._renewed_at: float | None = None
        self._taken = 0
        self._taken_at: dict[tuple[str, str], int] = {}

    @property
    def replica_id(self) -> str:
        return self.store.replica_id

    def owns(self, kind: str, name: str) -> bool:
        return (kind, name) in self.held

    def epoch(self, kind: str, name: str) -> int | None:
        """The epoch of a held lease (None if not held): it changes when the lease is lost and won back."""
        return self.epochs.get((kind, name)) if (kind, name) in self.held else None

    def share(self, count: int) -> int:
        """How many of `count` leases are this replica's: an even split over the live replicas, the
        remainder going to the first ones by id (so the shares add up to exactly `count`)."""
        live = sorted(set(self.live) | {self.replica_id})
        base, extra = divmod(count, len(live))
        return base + (1 if live.index(self.replica_id) < extra else 0)

    async def claim(self, kind: str, names: list[str]) -> set[str]:
        """This replica's fair share of `names`: keep what it holds, take free or expired ones, give back extras.

        The leader lease is not shared out: whoever holds it keeps it, and anyone takes it once it expires.
        """
        async with self._lock:
            owners, live = await self._call(self.store.claim_view, kind, self.lease_seconds)
            self.live = live or [self.replica_id]
            share = 1 if kind == LEADER[0] else self.share(len(names))
            mine = sorted(n for n in names if (kind, n) in self.held)
            for name in mine[share:]:  # a replica joined: give back what is over the share
                await self._call(self.store.release, kind, name)
                self.held.discard((kind, name))
            mine = mine[:share]
            if len(mine) < share:
                for name in names:
                    if len(mine) >= share:
                        break
                    if name in mine or owners.get(name) not in (None, self.replica_id):
                        continue
                    epoch = await self._call(self.store.acquire, kind, name, self.lease_seconds)
                    if epoch is not None:
                        self._taken += 1
                        self._taken_at[(kind, name)] = self._taken
                        self.held.add((kind, name))
                        self.epochs[(kind, name)] = epoch
                        mine.append(name)
            return {n for n in names if (kind, n) in self.held}

    async def heartbeat(self) -> None:
        """Renew presence and leases now. The claims' lock is not held across the call: a lease taken
        meanwhile is kept, one renewed here but given back meanwhile stays given back."""
        started = time.monotonic()
        sent, mark = set(self.held), self._taken
        loop = asyncio.get_running_loop()
        kept, live = await loop.run_in_executor(self._renewer, self.store.heartbeat, sorted(sent), self.lease_seconds)
        for lost in sent - kept:
            if lost in self.held and self._taken_at.get(lost, 0) <= mark:
                log.warning("lease %s/%s was taken over", *lost)
                self.held.discard(lost)
        self.live = live or [self.replica_id]
        self._renewed_at = started

    def expire(self) -> None:
        """Give up every lease locally once it has gone unrenewed for `lease_seconds` on this replica's own
        monotonic clock: by then the database may have handed it to another replica."""
        if self.held and self._renewed_at is not None and time.monotonic() - self._renewed_at >= self.lease_seconds:
            log.warning("leases not renewed for %.0f s: giving them up here", self.lease_seconds)
            self.held = set()

    @property
    def problem(self) -> str | None:
        """Why the database does not answer, None while it does (shown on /readyz)."""
        return self.store.problem

    async def run(self) -> None:
        """Renew every third of the lease time; every second while the database is away (so the replica
        notices its return quickly)."""
        while True:
            try:
                await self.heartbeat()
                failing = False
            except Exception as exc:  # the database is away: leases expire on their own, counts stay exact
                log.warning("renewing leases failed: %s", exc)
                failing = True
            self.expire()
            await asyncio.sleep(min(1.0, self.lease_seconds / 3) if failing else self.lease_seconds / 3)

    async def leave(self, timeout_seconds: float = 2.0) -> None:
        """A clean stop: give every lease back and deregister, so the others take over at once.
        Best effort, bounded: with the database away, the leases expire on their own."""
        self.held = set()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._renewer, self.store.leave, timeout_seconds), timeout_seconds + 1)
            log.info("replica %s left the fleet: its leases are free", self.replica_id)
        except Exception as exc:
            log.warning("could not give the leases back (they expire on their own): %s", exc)

    def close(self) -> None:
        self._renewer.shutdown(wait=False, cancel_futures=True)


class LeaseCollector(Collector):
    """streamer_leases{kind,name} (1 per lease held) and streamer_leader, read at scrape time."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        leases = GaugeMetricFamily("streamer_leases", "Leases this replica holds (1 each).", labels=["kind", "name"])
        for kind, name in sorted(self.coordinator.held):
            leases.add_metric([_kind_label(kind), name], 1)
        yield leases
        yield GaugeMetricFamily(
            "streamer_leader", "1 while this replica runs the fleet's detector.", value=1 if self.coordinator.owns(*LEADER) else 0
        )


def _kind_label(kind: str) -> str:
    return kind
