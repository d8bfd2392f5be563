"""The fleet's leader: one replica merges every replica's window partials and runs the detector.

One replica holds the `leader` lease. It drains the window partials every
replica commits with its inputs, advances the one Detection (windows on the
fleet's event time, the detector, its baselines) and commits the result in a
transaction fenced by its lease, together with the alerts it is about to
send. A new leader restores both and continues: no alert is lost or repeated.

The work runs off the event loop (decoding and folding partials, and the
snapshot, take tens to hundreds of milliseconds each at thousands of ENIs)
in slices capped by count and time, each committed on its own, so a backlog
never starves the heartbeat and a lost lease wastes at most one slice. Any
failed step, and any change of the lease's epoch (lost and won back, even
between two steps), drops the in-memory state: the next step restores it
from the database, never carrying on from a state another leader moved past.

A partial that cannot be applied (a rolling upgrade that changed its
encoding, a bug) is tried once more, in case the fault was passing; failing
again, it is set aside: moved to `window_partials_aside` with the reason,
counted (`streamer_leader_partials_set_aside_total`) and logged once, and the
queue goes on. Otherwise one bad row would stop detection for the fleet.

With insights on, it also pairs the NACL candidates every replica commits;
the counts it exports are capped and forgotten when idle like every per-ENI
series (aggregate/nacl_totals.py), and a slice rewrites their snapshot only
when it counted or forgot something.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from streamer.aggregate.anomaly import Anomaly
from streamer.aggregate.detection import SNAPSHOT_NAME, Detection
from streamer.aggregate.nacl_totals import TOTALS_SNAPSHOT, Totals
from streamer.aggregate.pairing import MAX_WAITING_REPLIES, PARTIAL_SOURCE, PREFIX, Pairing, Pieces, decode_candidates
from streamer.aggregate.windows import decode_partial
from streamer.export.alerts import ActiveAlert, Alerter
from streamer.store.base import CheckpointError, LeaseLost
from streamer.store.leases import LEADER, Coordinator

if TYPE_CHECKING:  # the driver is imported only when a fleet is configured
    from streamer.store.postgres import PostgresStore

log = logging.getLogger(__name__)

ALERTS_SNAPSHOT = "alerts"
TICK_SECONDS = 1.0
#: one slice applies at most this many partials (and bytes of them: one can be a megabyte at 2,000 ENIs) ...
SLICE_PARTIALS = 100
SLICE_BYTES = 16 << 20
#: ... and takes no more once this long has gone (then snapshots and commits what it applied)
SLICE_SECONDS = 1.0
#: the leader folds the rows of replicas gone past the retention at most this often
FOLD_EVERY_SECONDS = 300.0
#: a partial that fails to apply this many times (in a row, on this leader) is set aside
SET_ASIDE_AFTER_FAILURES = 2
#: how much of the failure is kept as the set-aside partial's reason
REASON_CHARS = 500


class PartialFailed(Exception):
    """One partial of a slice could not be applied: `partial` is its queue id, `cause` why."""

    def __init__(self, partial: int, cause: BaseException) -> None:
        super().__init__(f"partial {partial}: {type(cause).__name__}: {cause}")
        self.partial = partial
        self.cause = cause


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
        pairing_lateness_seconds: int | None = None,
        max_interfaces: int | None = None,
        interface_idle_seconds: float = 86400,
        pairing_max_waiting_replies: int = MAX_WAITING_REPLIES,
        on_replies_dropped: Callable[[int], object] | None = None,
        replica_retention_seconds: float | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.fresh = fresh
        self.restore = restore
        self.alerter = alerter
        self._call = call
        self.clock = clock
        self.detection: Detection | None = None
        #: NACL return-reject pairing over every replica's candidates (insights on), and what it counted
        self.pairing_lateness_seconds = pairing_lateness_seconds
        self.pairing_max_waiting_replies = pairing_max_waiting_replies
        #: told how many unpaired replies a committed slice could not keep waiting (a metric)
        self.on_replies_dropped = on_replies_dropped
        self.pairing: Pairing | None = None
        self.totals: Totals | None = None
        #: the paired counts' per-ENI cap and idle time (metrics.max_interfaces, metrics.interface_idle_seconds)
        self.max_interfaces = max_interfaces
        self.interface_idle_seconds = interface_idle_seconds
        self._epoch: int | None = None  # the leader lease's epoch `detection` was restored under
        self.steps = 0
        #: the last step applied partials: the next one follows without waiting a tick
        self.backlog = False
        #: partial id -> failures to apply it so far, and how many this replica set aside
        self._failures: dict[int, int] = {}
        self.set_aside = 0
        #: rows of replicas gone this long are folded (None: never), next when time.monotonic() passes fold_at
        self.replica_retention_seconds = replica_retention_seconds
        self.fold_at = 0.0

    @property
    def leader(self) -> bool:
        return self.coordinator.owns(*LEADER)

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except LeaseLost:
                self.backlog = False
                self._step_down()
            except CheckpointError as exc:  # the database is away: one line, then as below
                log.warning("leader step failed: %s", exc)
                self.backlog = False
                self._step_down()
            except Exception:  # keep trying: the partials wait in the database
                log.exception("leader step failed")
                self.backlog = False
                self._step_down()  # its commit may have landed or not: restore from the database
            await asyncio.sleep(0 if self.backlog else TICK_SECONDS)

    async def step(self) -> int:
        """One slice: claim or keep the leader lease; as leader, apply what the replicas committed.
        Returns partials applied."""
        if not await self.coordinator.claim(*_leader_kind()):
            self._step_down()
            return 0
        store = self.coordinator.store
        epoch = self.coordinator.epoch(*LEADER)
        if self.detection is None or epoch != self._epoch:
            await self._take_over(store)
            self._epoch = epoch
        assert self.detection is not None
        taken = await self._call(store.take_partials, SLICE_PARTIALS, SLICE_BYTES)
        pairs = _Pairs(self.pairing, self.totals, self.max_interfaces, self.interface_idle_seconds)
        try:
            detection, anomalies, consumed, blob = await asyncio.to_thread(_apply, self.detection, taken, self.clock(), pairs)
        except PartialFailed as failed:
            self._step_down()  # the slice may have moved the state part way: the next step restores it
            await self._failed(store, failed, epoch)
            self.backlog = True  # the others wait: go on now
            return 0
        alerts = self.alerter.preview(anomalies)
        snapshots = {SNAPSHOT_NAME: blob, ALERTS_SNAPSHOT: _encode_alerts(alerts), **pairs.snapshots()}
        try:
            await self._call(store.commit_detection, LEADER, consumed, snapshots, epoch, pairs.pieces.drop)
        except BaseException:
            self._step_down()  # committed or not, lease lost or not: the next step restores from the database
            raise
        self.detection = detection
        self.pairing, self.totals = pairs.pairing, pairs.totals
        if pairs.dropped and self.on_replies_dropped is not None:
            self.on_replies_dropped(pairs.dropped)
        self.alerter.notify(anomalies)
        self.steps += 1
        self.backlog = bool(taken)  # there may be more: look again now (an empty queue waits a tick)
        for applied in consumed if self._failures else ():  # failed once, then applied: out of the queue
            self._failures.pop(applied, None)
        await self._fold(store, epoch)
        return len(consumed)

    async def _fold(self, store: PostgresStore, epoch: int | None) -> None:
        """Now and then, the rows of replicas gone past the retention go into the shared ones (a failure is
        tried again next time; it is no reason to step down)."""
        if self.replica_retention_seconds is None or time.monotonic() < self.fold_at:
            return
        self.fold_at = time.monotonic() + FOLD_EVERY_SECONDS
        idle_before = self.clock() - self.interface_idle_seconds
        try:
            gone = await self._call(store.fold_gone_replicas, LEADER, epoch, self.replica_retention_seconds, idle_before)
        except LeaseLost:
            raise
        except Exception as exc:
            log.warning("folding the rows of replicas gone failed (tried again later): %s", exc)
            return
        if gone:
            log.info("rows of replicas gone for %.0f s folded into the shared rows: %s", self.replica_retention_seconds, gone)

    async def _failed(self, store: PostgresStore, failed: PartialFailed, epoch: int | None) -> None:
        """Count a failure to apply a partial; at the second, set it aside (logged once, with the reason)."""
        times = self._failures[failed.partial] = self._failures.get(failed.partial, 0) + 1
        if times < SET_ASIDE_AFTER_FAILURES:
            log.info("%s; trying it once more before it is set aside", " ".join(str(failed).split())[:REASON_CHARS])
            return
        reason = " ".join(f"{type(failed.cause).__name__}: {failed.cause}".split())[:REASON_CHARS]
        if await self._call(store.set_aside_partial, LEADER, epoch, failed.partial, reason):
            self.set_aside += 1
            log.error(
                "window partial %d cannot be applied (%s): set aside in window_partials_aside, detection goes on",
                failed.partial,
                reason,
            )
        del self._failures[failed.partial]

    async def _take_over(self, store: PostgresStore) -> None:
        blob = await self._call(store.snapshot, SNAPSHOT_NAME)
        self.detection = self.fresh() if blob is None else await asyncio.to_thread(self.restore, blob)  # big: off the loop
        if self.pairing_lateness_seconds is not None:
            lateness = self.pairing_lateness_seconds
            pieces = await self._call(store.snapshots, PREFIX)
            self.pairing = await asyncio.to_thread(Pairing.restore, pieces, lateness, self.pairing_max_waiting_replies)
            totals = await self._call(store.snapshot, TOTALS_SNAPSHOT)
            self.totals = Totals() if totals is None else Totals.restore(totals, self.clock())
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
        self.pairing = self.totals = None
        self._epoch = None
        self.alerter.active = {}
        self.alerter.resolved = []


@dataclasses.dataclass
class _Pairs:
    """The pairing state a slice moves on (a copy: the leader keeps its own until the slice is committed)."""

    pairing: Pairing | None
    totals: Totals | None
    #: the totals' per-ENI cap (None: none) and idle time
    max_interfaces: int | None = None
    idle_seconds: float = 86400
    #: the snapshot pieces of every step of the slice, committed with it
    pieces: Pieces = dataclasses.field(default_factory=Pieces)
    #: the slice counted or forgot something: the totals' snapshot is rewritten (else it is left as it is)
    changed: bool = False
    #: unpaired replies the slice could not keep waiting (`Paired.dropped`)
    dropped: int = 0

    def __post_init__(self) -> None:
        if self.totals is not None:
            self.totals = self.totals.copy()
            self.changed = self.totals.stale

    def apply(self, body: bytes, now: float) -> None:
        if self.pairing is not None and self.totals is not None:
            self.pairing, paired, pieces = self.pairing.pair(decode_candidates(body))
            self.changed |= self.totals.add(paired, self.max_interfaces, now)
            self.dropped += paired.dropped
            self.pieces.then(pieces)

    def tick(self, now: float) -> None:
        """The end of the slice: members idle by the leader's clock are forgotten."""
        if self.totals is not None and self.totals.forget_idle(now, self.idle_seconds):
            self.changed = True

    def snapshots(self) -> dict[str, bytes]:
        if self.pairing is None or self.totals is None:
            return {}
        if not self.changed:
            return dict(self.pieces.snapshots)
        self.totals.stale = False  # written with this slice (the leader keeps this copy only if it commits)
        return {**self.pieces.snapshots, TOTALS_SNAPSHOT: self.totals.snapshot()}


def _apply(
    detection: Detection, taken: list[tuple[int, str, bytes]], now: float, pairs: _Pairs | None = None
) -> tuple[Detection, list[Anomaly], list[int], bytes]:
    """One slice, on a worker thread: partials in queue order until the slice's time is up (at least one),
    then the wall-clock tick and the snapshot. Returns the new state, its anomalies, the ids applied.
    Partials of NACL pairing candidates go to `pairs` instead (their snapshots are taken by the caller)."""
    deadline = time.monotonic() + SLICE_SECONDS
    anomalies: list[Anomaly] = []
    consumed: list[int] = []
    for i, source, body in taken:
        if consumed and time.monotonic() > deadline:
            break
        try:
            if source == PARTIAL_SOURCE:
                if pairs is not None:
                    pairs.apply(body, now)
            else:
                detection, found = detection.advance([decode_partial(body)], source, now)
                anomalies.extend(found)
        except Exception as exc:
            raise PartialFailed(i, exc) from exc
        consumed.append(i)
    detection, found = detection.tick(now)
    anomalies.extend(found)
    if pairs is not None:
        pairs.tick(now)
    return detection, anomalies, consumed, detection.snapshot()


class LeaderCollector(Collector):
    """streamer_leader_partials_set_aside_total: window partials this replica, as leader, could not apply."""

    def __init__(self, leader: LeaderDetector) -> None:
        self.leader = leader

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "streamer_leader_partials_set_aside",
            "Window partials this replica, as leader, failed to apply twice and set aside (window_partials_aside).",
            value=self.leader.set_aside,
        )


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
                "context_labels": a.context_labels,
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
        out[eni] = ActiveAlert(
            Anomaly(**fields), doc["starts_at"], doc["last_detected"], doc["windows"], doc.get("context_labels")
        )
    return out
