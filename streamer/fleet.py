"""A fleet: N replicas over one PostgreSQL that behave like one process.

Work is split by leases kept in the database (the Kinesis Client Library's
lease-table pattern): each lease has an owner and an expiry, renewed every
third of `fleet.lease_seconds`; a replica that dies stops renewing, and its
leases are taken over once they expire. Each replica claims its fair share
of a kind's leases (an even split over the live replicas) and gives back
extras when replicas join, so the work rebalances by itself.

One replica holds the `leader` lease. It drains the window partials every
replica commits with its inputs, advances the one Detection (windows on the
fleet's event time, the detector, its baselines) and commits the result in a
transaction fenced by its lease, together with the alerts it is about to
send. A new leader restores both and continues: no alert is lost or repeated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamer.aggregate.anomaly import Anomaly
from streamer.aggregate.detection import SNAPSHOT_NAME, Detection
from streamer.aggregate.windows import decode_partial
from streamer.checkpoint import LeaseLost
from streamer.export.alerts import ActiveAlert, Alerter

if TYPE_CHECKING:  # the driver is imported only when a fleet is configured
    from streamer.checkpoint_pg import PostgresStore

log = logging.getLogger(__name__)

LEADER = ("leader", "detector")
ALERTS_SNAPSHOT = "alerts"
TICK_SECONDS = 1.0


class Coordinator:
    """This replica's leases, renewed in the background; the sources' view of who reads what."""

    def __init__(self, store: PostgresStore, lease_seconds: float, call: Callable[..., Any]) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self._call = call  # runs a blocking store call on a thread
        self.held: set[tuple[str, str]] = set()
        self.live: list[str] = [store.replica_id]
        self._lock = asyncio.Lock()

    @property
    def replica_id(self) -> str:
        return self.store.replica_id

    def owns(self, kind: str, name: str) -> bool:
        return (kind, name) in self.held

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
            share = 1 if kind == LEADER[0] else self.share(len(names))
            mine = sorted(n for n in names if (kind, n) in self.held)
            for name in mine[share:]:  # a replica joined: give back what is over the share
                await self._call(self.store.release, kind, name)
                self.held.discard((kind, name))
            mine = mine[:share]
            if len(mine) < share:
                owners = await self._call(self.store.lease_owners, kind)
                for name in names:
                    if len(mine) >= share:
                        break
                    if name in mine or owners.get(name) not in (None, self.replica_id):
                        continue
                    if await self._call(self.store.acquire, kind, name, self.lease_seconds):
                        self.held.add((kind, name))
                        mine.append(name)
            return {n for n in names if (kind, n) in self.held}

    async def heartbeat(self) -> None:
        """Renew presence and leases now."""
        async with self._lock:
            kept, live = await self._call(self.store.heartbeat, sorted(self.held), self.lease_seconds)
            for lost in self.held - kept:
                log.warning("lease %s/%s was taken over", *lost)
            self.held = kept
            self.live = live or [self.replica_id]

    async def run(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except Exception as exc:  # the database is away: leases expire on their own, counts stay exact
                log.warning("renewing leases failed: %s", exc)
            await asyncio.sleep(self.lease_seconds / 3)


class LeaderDetector:
    """Runs the detector on the merged partials while this replica holds the leader lease."""

    def __init__(
        self,
        coordinator: Coordinator,
        fresh: Callable[[], Detection],
        restore: Callable[[bytes], Detection],
        alerter: Alerter,
        call: Callable[..., Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.coordinator = coordinator
        self.fresh = fresh
        self.restore = restore
        self.alerter = alerter
        self._call = call
        self.clock = clock
        self.detection: Detection | None = None
        self.steps = 0

    @property
    def leader(self) -> bool:
        return self.coordinator.owns(*LEADER)

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except LeaseLost:
                self._step_down()
            except Exception:  # keep trying: the partials wait in the database
                log.exception("leader step failed")
            await asyncio.sleep(TICK_SECONDS)

    async def step(self) -> int:
        """One round: claim or keep the leader lease; as leader, apply what the replicas committed. Returns partials applied."""
        if not await self.coordinator.claim(*_leader_kind()):
            self._step_down()
            return 0
        store = self.coordinator.store
        if self.detection is None:
            await self._take_over(store)
        assert self.detection is not None
        taken = await self._call(store.take_partials)
        detection, anomalies = self.detection, []
        now = self.clock()
        for _, source, body in taken:
            detection, found = detection.advance([decode_partial(body)], source, now)
            anomalies.extend(found)
        detection, found = detection.tick(now)
        anomalies.extend(found)
        alerts = self.alerter.preview(anomalies)
        snapshots = {SNAPSHOT_NAME: detection.snapshot(), ALERTS_SNAPSHOT: _encode_alerts(alerts)}
        await self._call(store.commit_detection, LEADER, [i for i, _, _ in taken], snapshots)
        self.detection = detection
        self.alerter.notify(anomalies)
        self.steps += 1
        return len(taken)

    async def _take_over(self, store: PostgresStore) -> None:
        blob = await self._call(store.snapshot, SNAPSHOT_NAME)
        self.detection = self.fresh() if blob is None else self.restore(blob)
        alerts = await self._call(store.snapshot, ALERTS_SNAPSHOT)
        self.alerter.active = _decode_alerts(alerts) if alerts else {}
        log.info(
            "%s is the leader: %d open windows, %d baselines, %d active alerts",
            self.coordinator.replica_id,
            self.detection.windows.stats.num_rows,
            self.detection.detector.baseline_table.num_rows,
            len(self.alerter.active),
        )

    def _step_down(self) -> None:
        if self.detection is not None:
            log.info("%s is no longer the leader", self.coordinator.replica_id)
        self.detection = None
        self.alerter.active = {}
        self.alerter.resolved = []


def _leader_kind() -> tuple[str, list[str]]:
    return LEADER[0], [LEADER[1]]


def _encode_alerts(active: dict[str, ActiveAlert]) -> bytes:
    return orjson.dumps(
        {
            eni: {
                "anomaly": dataclasses.asdict(a.anomaly),
                "starts_at": a.starts_at,
                "last_detected": a.last_detected,
                "windows": a.windows,
            }
            for eni, a in active.items()
        }
    )


def _decode_alerts(blob: bytes) -> dict[str, ActiveAlert]:
    out: dict[str, ActiveAlert] = {}
    for eni, doc in orjson.loads(blob).items():
        fields = doc["anomaly"]
        fields["top_sources"] = [tuple(x) for x in fields["top_sources"]]
        fields["top_ports"] = [tuple(x) for x in fields["top_ports"]]
        out[eni] = ActiveAlert(Anomaly(**fields), doc["starts_at"], doc["last_detected"], doc["windows"])
    return out


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
