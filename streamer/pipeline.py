"""decode -> aggregate -> checkpoint -> apply, for many deliveries at once.

The event loop streams each delivery's bytes; a worker thread runs the same
Ingestor as `replay`, pulling chunks back from the loop. Decoded inputs that
are ready close together commit as one group (`commit_group`): one
transaction holding every input's claim and their merged deltas (on the
store's own thread), and only then is the group applied to the live state
that /metrics reads. The source acknowledges upstream after `process`
returns, which is after its input's group committed.

Commit-and-apply is one shielded step: a cancellation (SIGTERM) arriving
while a group's transaction runs waits for it and for the apply, so live
state never lags the checkpoint (a stale state's next snapshot would
overwrite the committed one); inputs not yet in a group are abandoned. `tick`
lets event time follow the wall clock when sources go quiet, through the
same lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import pyarrow as pa

from streamer.aggregate.anomaly import Anomaly
from streamer.aggregate.batch import BatchResult, columns, delta_of, plus, reducer
from streamer.aggregate.detection import SNAPSHOT_NAME, Detection
from streamer.aggregate.pairing import PARTIAL_SOURCE, PREFIX, Pairing, Pieces, encode_candidates
from streamer.aggregate.state import FlowState
from streamer.aggregate.windows import WindowBatch, encode_partial, merge
from streamer.commit_group import Grouper, Limits, Member
from streamer.decode.objects import ObjectReader
from streamer.export.telemetry import Telemetry
from streamer.ingest import Ingestor, ObjectResult, account
from streamer.sources.base import DUPLICATE, LEASE_LOST, Delivery, SourceError
from streamer.store.base import Commit, Done, LeaseLost, Refused, StateStore

log = logging.getLogger(__name__)
T = TypeVar("T")
#: inputs read and decoded at once beyond the decode workers (more wait, not yet downloading); sources bound
#: what they hand over by bytes. Each one holds its chunks in flight: more readers than cores only add memory.
SPARE_READERS = 1


class _Stopped(Exception):
    """The service is shutting down; abandon the delivery uncommitted."""


#: while the database does not answer, calls look again this often (they wait rather than fail in a loop)
PAUSE_SECONDS = 0.5


class Store:
    """The checkpoint store behind dedicated threads (its calls block): one for SQLite, a few for PostgreSQL.

    While a database store reports a problem (it did not answer), calls wait for it to answer again (the
    fleet's heartbeat keeps asking) instead of failing one after another: sources pause, then resume on
    their own. A stop (`abort`) ends the wait.
    """

    def __init__(self, store: StateStore, threads: int = 1) -> None:
        self.store = store
        self._thread = ThreadPoolExecutor(threads, thread_name_prefix="checkpoint")
        self.stopping = False

    @property
    def problem(self) -> str | None:
        """Why the store does not answer, None while it does."""
        return getattr(self.store, "problem", None)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        # Polled: the problem is cleared on another thread, by the heartbeat's call.
        while self.problem is not None and not self.stopping:  # noqa: ASYNC110
            await asyncio.sleep(PAUSE_SECONDS)
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def abort(self) -> None:
        """Stop without waiting on the database: calls in flight are cut short, waiting ones fail."""
        self.stopping = True
        abort = getattr(self.store, "abort", None)
        if abort is not None:
            abort()

    def close(self) -> None:
        self.stopping = True
        self._thread.shutdown(wait=True, cancel_futures=True)
        self.store.close()


@dataclasses.dataclass(frozen=True)
class _Input:
    """A decoded input waiting for its group: its change before capping, and its window parts."""

    source: str
    change: Commit
    window_parts: list[WindowBatch]


#: a group member's result: committed (False: counted before) and the anomalies its windows closed
_Result = tuple[bool, list[Anomaly]]


class Pipeline:
    """The Sink every source hands its deliveries to."""

    def __init__(
        self,
        state: FlowState,
        store: Store,
        telemetry: Telemetry,
        pool: ThreadPoolExecutor,
        detection: Detection | None = None,
        on_anomalies: Callable[[list[Anomaly]], None] | None = None,
        max_future_skew_seconds: int = 300,
        max_interfaces: int | None = None,
        interface_idle_seconds: float = 86400,
        clock: Callable[[], float] = time.time,
        insights_window_seconds: int | None = None,
        partials_window_seconds: int | None = None,
        group: Limits | None = None,
        pairing: Pairing | None = None,
        nacl_pairing: bool = False,
        context_columns: tuple[str, ...] = (),
        on_context: Callable[[list[pa.Table]], None] | None = None,
    ) -> None:
        self.state = state
        self.store = store
        self.telemetry = telemetry
        self.pool = pool
        self.detection = detection
        self.on_anomalies = on_anomalies
        self.max_future_skew_seconds = max_future_skew_seconds
        self.max_interfaces = max_interfaces
        self.interface_idle_seconds = interface_idle_seconds
        self.clock = clock
        #: fleet replicas: no local detection; each input's window partial is committed for the leader
        self.partials_window_seconds = partials_window_seconds
        windowed = detection is not None or partials_window_seconds is not None
        #: NACL pairing candidates are chosen (insights on): paired in `pairing` (given: on), or by a fleet's leader
        self.nacl_pairing = (nacl_pairing or pairing is not None) and insights_window_seconds is not None
        base = columns(windowed, insights_window_seconds is not None, self.nacl_pairing)
        self.columns = plus(base, context_columns)
        #: the records' ENI context goes here (the enricher folds it on its own task)
        self.on_context = on_context
        self.window_seconds = detection.windows.window_seconds if detection is not None else partials_window_seconds
        self.insights_window_seconds = insights_window_seconds
        #: NACL return-reject pairing state, committed with the counters as snapshot pieces
        self.pairing = pairing
        #: inputs (and event-time ticks) committed (tests and readiness wait on this, not on sleeps)
        self.commits = 0
        #: transactions that committed a group of inputs
        self.group_commits = 0
        #: a commit failed with an unknown outcome: live state is reloaded from the store before the next one
        self._stale = False
        #: that commit's windows snapshot, detection and alerts: live (and sent) if the snapshot is what landed
        self._unconfirmed: tuple[bytes, Detection, list[Anomaly]] | None = None
        # Decoding runs concurrently; advancing the shared window state and committing it do not.
        self._commit_lock = asyncio.Lock()
        #: inputs between arrival and their group: a group waits for them only while some are decoding
        self._decoding = 0
        self._groups: Grouper[_Input, _Result] = Grouper(group or Limits(), self._commit_group, lambda: self._decoding)
        # Each input's reading thread waits on its download: never in the loop's default executor, which the
        # downloads themselves need (aiohttp resolves names there), or many inputs in flight would deadlock.
        self._readers = ThreadPoolExecutor((pool._max_workers or 1) + SPARE_READERS, thread_name_prefix="ingest")
        #: a group's NACL pairing runs here while its windows advance the detector (`_plan`)
        self._pairer = ThreadPoolExecutor(1, thread_name_prefix="pairing")

    async def process(self, source: str, delivery: Delivery) -> str:
        inputs, size = self.telemetry.inputs_in_flight.labels(source), self.telemetry.bytes_in_flight.labels(source)
        inputs.inc()
        size.inc(delivery.size)
        try:
            return await self._process(source, delivery)
        finally:
            inputs.dec()
            size.dec(delivery.size)

    async def _process(self, source: str, delivery: Delivery) -> str:
        self._decoding += 1
        try:
            if delivery.done and await self._already_done(delivery.done):
                self.telemetry.finished(source, DUPLICATE, 0, None)
                return DUPLICATE
            result, delta, max_end, window_parts = await self._decode(delivery)
        finally:
            self._decoding -= 1
        if delta.context is not None:
            if self.on_context is not None:
                self.on_context(delta.context)
            delta.context = None
        outcome = account(result, delta, delivery.location)
        for reason, count in delivery.errors.items():
            delta.count(reason, count)
        future = sum(p.future for p in window_parts)
        if future:
            example = next(p.future_example for p in window_parts if p.future_example)
            log.warning(
                "%s: %d record(s) more than %d s ahead of the wall clock: counted, but they move no event time, e.g. %r",
                delivery.location,
                future,
                self.max_future_skew_seconds,
                example,
            )
        done_as = outcome if result.failure is None else result.failure.reason  # the checkpoint keeps why
        change = Commit(
            delta,
            [Done(d.namespace, d.key, done_as) for d in delivery.done],
            dict(delivery.cursors),
            dict(delivery.snapshots),
            lease=delivery.lease,
            epoch=delivery.epoch,
            expected=dict(delivery.expected),
        )
        if self.partials_window_seconds is not None and window_parts:
            change.partials.append((source, encode_partial(window_parts)))
        if self.partials_window_seconds is not None and self.insights_window_seconds is not None and delta.pairs is not None:
            change.partials.append((PARTIAL_SOURCE, encode_candidates(delta.pairs)))  # the leader pairs them
        try:
            committed, anomalies = await self._groups.submit(_Input(source, change, window_parts), delivery.size)
        except LeaseLost as exc:  # another replica reads this partition now and counts it
            log.warning("%s: not counted here: %s", delivery.location, exc)
            self.telemetry.finished(source, LEASE_LOST, 0, None)
            return LEASE_LOST
        if not committed:
            self.telemetry.finished(source, DUPLICATE, 0, None)
            return DUPLICATE
        if future:
            self.telemetry.future_records.labels(source).inc(future)
        if result.errors.unknown_fields:  # once per input: counted when it commits, like its records
            self.telemetry.unknown_fields(result.errors.unknown_fields, delivery.location)
        if anomalies and self.on_anomalies is not None:
            self.on_anomalies(anomalies)
        delay = None if delivery.arrived_at is None or max_end is None else delivery.arrived_at - max_end
        self.telemetry.finished(source, outcome, result.rows, delay)
        return outcome

    async def tick(self) -> int:
        """Move event time with the wall clock (idle sources, quiet periods); returns windows closed."""
        if self.detection is None:
            return 0
        closed, anomalies = await self._shielded(self._tick())
        if anomalies and self.on_anomalies is not None:
            self.on_anomalies(anomalies)
        return closed

    async def _tick(self) -> tuple[int, list[Anomaly]]:
        async with self._commit_lock:
            await self._reload_if_stale()  # never commit windows over the ones an unknown commit may have written
            assert self.detection is not None
            before = self.detection
            after, anomalies = before.tick(self.clock())
            if after is before:
                return 0, []
            closed = before.windows.stats.num_rows - after.windows.stats.num_rows
            if closed:  # a moved watermark alone rides along with the next input's commit
                await self.store.call(self.store.store.commit, Commit(snapshots=after.snapshot_parts(before)))
                self.commits += 1
                after = after.saved()
            self.detection = after
            return closed, anomalies

    async def _commit_group(self, members: list[Member[_Input, _Result]]) -> None:
        """Under the lock: cap, advance windows, commit the group, then apply it to live state.

        An input whose claim is refused (counted before, or its lease lost) is dropped and the rest are
        planned and committed again, so capping and detection end as if the survivors had committed one
        by one. A failure with an unknown outcome fails every input of the group (sources retry; the
        claims find each retry counted or not). An input refused as counted before is answered only once
        the group's outcome is known: its done key may be held by an earlier input of this very group,
        whose commit can still fail (answered DUPLICATE at once, it would be acknowledged upstream while
        nothing holds its key).
        """
        async with self._commit_lock:
            now = self.clock()
            await self._reload_if_stale()
            live = members
            counted: list[Member[_Input, _Result]] = []  # refused as counted before: answered after the commit
            while True:
                # In a thread: folding and snapshotting a big state takes long enough to stall scrapes.
                changes, after, paired, anomalies = await asyncio.to_thread(self._plan, [m.item for m in live], now)
                started = time.perf_counter()
                try:
                    refused = await self.store.call(self.store.store.commit_group, changes)
                except Exception:
                    # The server may have committed before the connection failed: /metrics would be low if it did
                    # (the retry finds it counted), high if it did not and we applied it. Read back what is there.
                    self._stale = True
                    if self.detection is not None:  # its detector part may have landed: the next commit rewrites it
                        self.detection = dataclasses.replace(self.detection, detector_unsaved=True)
                        if after is not None:  # if it landed, its inputs' retries are duplicates: keep what it did
                            found = [a for each in anomalies for a in each]
                            self._unconfirmed = (changes[-1].snapshots[SNAPSHOT_NAME], after, found)
                    with contextlib.suppress(Exception):  # the database is away: reloaded before the next commit
                        await self._reload_if_stale()
                    raise
                if not refused:
                    break
                live, before = _drop(live, refused)
                counted.extend(before)
                if not live:
                    break
            for member in counted:  # the group's outcome is known now: what held their keys has landed
                member.result.set_result((False, []))
            if not live:
                return
            self.telemetry.commit_seconds.observe(time.perf_counter() - started)
            self.telemetry.commit_inputs.observe(len(live))
            self.commits += len(live)
            self.group_commits += 1
            if after is not None:
                self.detection = after.saved()
            self.pairing = paired
            for member, change, found in zip(live, changes, anomalies, strict=False):
                if change.delta.replies_dropped:
                    self.telemetry.nacl_replies_dropped.inc(change.delta.replies_dropped)
                self.state.forget(change.forget)
                self.state.apply(change.delta)
                member.result.set_result((True, found))

    def _plan(
        self, inputs: list[_Input], now: float
    ) -> tuple[list[Commit], Detection | None, Pairing | None, list[list[Anomaly]]]:
        """Each input paired, capped and its windows advanced as if committed one by one after the ones
        before it, plus one change holding the group's detection snapshot (written once per group). The
        inputs' own changes are left as they were (a refused claim plans the group again)."""
        seen = FlowState(seen=dict(self.state.seen))  # capping reads and moves membership only
        detection, pairing = self.detection, self.pairing
        deltas = [item.change.delta for item in inputs]
        # Pairing and detection depend on nothing of each other: with both on, the group's pairing runs on its
        # own thread while the windows advance the detector here (both mostly numpy and Arrow, which let go
        # of the GIL), so a commit waits for the longer of the two, not for both.
        pairs = self._pairer.submit(_pair_all, pairing, deltas) if pairing is not None and detection is not None else None
        anomalies: list[list[Anomaly]] = [[] for _ in inputs]
        try:
            if detection is not None:  # the group's windows folded once, as if advanced input by input
                detection, anomalies = detection.advance_many([(item.window_parts, item.source) for item in inputs], now)
        except BaseException:
            if pairs is not None:  # not left running into the next plan
                concurrent.futures.wait([pairs])
                if not pairs.cancelled() and pairs.exception() is not None:
                    log.warning("the pairing failed too: %s", pairs.exception())
            raise
        each, pairing = pairs.result() if pairs is not None else _pair_all(pairing, deltas)
        changes: list[Commit] = []
        for item, (delta, pieces) in zip(inputs, each, strict=True):
            change = dataclasses.replace(
                item.change, snapshots=dict(item.change.snapshots), drop_snapshots=list(item.change.drop_snapshots)
            )
            if pieces is not None:
                for prefix in pieces.drop:  # dropped before written, like the stores do
                    change.snapshots = {n: v for n, v in change.snapshots.items() if not n.startswith(prefix)}
                change.drop_snapshots.extend(pieces.drop)
                change.snapshots.update(pieces.snapshots)
            change.delta = delta
            if self.max_interfaces is not None:
                change.delta, change.forget = seen.capped(delta, self.max_interfaces, self.interface_idle_seconds, now)
                for eni in change.forget:
                    del seen.seen[eni]
                seen.seen.update(change.delta.seen)
            changes.append(change)
        if self.detection is not None and detection is not None:
            changes.append(Commit(snapshots=detection.snapshot_parts(self.detection)))
        return changes, detection, pairing, anomalies

    async def _reload_if_stale(self) -> None:
        """Live counters from the store after a commit whose outcome is unknown (under the commit lock).

        If that commit landed, its inputs are done: their retries are duplicates and never reach the detector.
        The windows it wrote are then the plan's own (byte for byte), so the plan's detection becomes the live
        one and the alerts it closed go out now; otherwise the live detection stays as it was."""
        if self._stale:
            if self._unconfirmed is not None:
                written, after, found = self._unconfirmed
                if await self.store.call(self.store.store.snapshot, SNAPSHOT_NAME) == written:
                    self.detection = after.saved()
                    if found and self.on_anomalies is not None:
                        self.on_anomalies(found)
                self._unconfirmed = None
            self.state = await self.store.call(self.store.store.load_state)
            if self.pairing is not None:
                pieces = await self.store.call(self.store.store.snapshots, PREFIX)
                lateness, cap = self.pairing.lateness_seconds, self.pairing.max_waiting_replies
                self.pairing = await asyncio.to_thread(Pairing.restore, pieces, lateness, cap)
            self._stale = False
            log.info("live state reloaded from the checkpoint after a commit with an unknown outcome")

    @staticmethod
    async def _shielded(step: Awaitable[T]) -> T:
        """Run `step` to the end even if the caller is cancelled meanwhile; then let the cancellation through
        (also when the step failed)."""
        task = asyncio.ensure_future(step)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            while not task.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                # Stopping wins: a failed step must not replace the cancellation, or a retry loop
                # above would swallow it and the process would never stop.
                log.warning("stopping; the step in flight failed: %s", task.exception())
            raise

    async def give_up(self, source: str, delivery: Delivery, reason: str) -> None:
        log.error("%s: giving up: %s", delivery.location, reason)
        change = Commit(
            FlowState(),
            [Done(d.namespace, d.key, reason) for d in delivery.done],
            dict(delivery.cursors),
            dict(delivery.snapshots),
        )
        await self._shielded(self.store.call(self.store.store.commit, change))
        self.telemetry.finished(source, reason, 0, None)

    def polled(self, source: str) -> None:
        self.telemetry.polls.labels(source).inc()

    def behind(self, source: str, shard: str, seconds: float | None) -> None:
        if seconds is None:
            with contextlib.suppress(KeyError):
                self.telemetry.behind.remove(source, shard)
        else:
            self.telemetry.behind.labels(source, shard).set(seconds)

    def close(self) -> None:
        """Stop the reading threads (the service's decode pool is its own to shut down)."""
        self._readers.shutdown(wait=False, cancel_futures=True)
        self._pairer.shutdown(wait=False)  # a plan in flight (if any) still gets its pairing

    def queue_backlog(self, source: str, waiting: int, held: int, oldest_age_seconds: float | None) -> None:
        self.telemetry.queue_messages.labels(source, "waiting").set(waiting)
        self.telemetry.queue_messages.labels(source, "held").set(held)
        if oldest_age_seconds is not None:
            self.telemetry.queue_age.labels(source).set(oldest_age_seconds)

    def source_error(self, source: str, reason: str, message: str, *, logged: bool = True) -> None:
        if logged:
            log.warning("%s: %s: %s", source, reason, message)
        self.telemetry.source_error(source, reason)

    async def _already_done(self, done: list[Done]) -> bool:
        by_ns: dict[str, list[str]] = {}
        for d in done:
            by_ns.setdefault(d.namespace, []).append(d.key)
        for namespace, keys in by_ns.items():
            if len(await self.store.call(self.store.store.done_among, namespace, keys)) < len(keys):
                return False
        return True

    async def _decode(self, delivery: Delivery) -> tuple[ObjectResult[BatchResult], FlowState, int | None, list[WindowBatch]]:
        loop = asyncio.get_running_loop()
        body = _Body(delivery.body())
        stop = threading.Event()
        reader = ObjectReader(log_format=delivery.log_format, columns=self.columns, headerless=delivery.headerless)
        max_time = int(self.clock()) + self.max_future_skew_seconds
        with_context = self.on_context is not None
        reduce = reducer(
            self.window_seconds, max_time, self.insights_window_seconds, self.nacl_pairing, with_context=with_context
        )
        ingest: Ingestor[BatchResult] = Ingestor(reader, reduce, self.pool)

        def work() -> tuple[ObjectResult[BatchResult], FlowState, int | None, list[WindowBatch]]:
            parts: list[BatchResult] = []
            result = ingest.run(_pull(body, loop, stop), parts.append)
            ends = [p.max_end for p in parts if p.max_end is not None and p.max_end <= max_time]
            partials = [p.windows for p in parts if p.windows is not None]
            # The delta (counters, insights, pairing candidates) is built on a decode thread while the window
            # partials fold here: independent, and for a big input each takes long enough to matter.
            pending = self.pool.submit(delta_of, parts) if partials else None
            try:
                windows = merge(partials)
            except BaseException:
                if pending is not None:
                    concurrent.futures.wait([pending])
                    if not pending.cancelled() and pending.exception() is not None:
                        log.warning("%s: building the delta failed too: %s", delivery.location, pending.exception())
                raise
            delta = pending.result() if pending is not None else delta_of(parts)
            return result, delta, max(ends) if ends else None, windows

        try:
            return await loop.run_in_executor(self._readers, work)
        except _Stopped as exc:
            raise asyncio.CancelledError from exc
        finally:
            stop.set()
            await body.close()


def _pair_all(pairing: Pairing | None, deltas: list[FlowState]) -> tuple[list[tuple[FlowState, Pieces | None]], Pairing | None]:
    """Each delta paired after the ones before it (copies: a refused claim plans the group again from the
    originals), with the snapshot pieces that commit its pairing; and the pairing state after them all."""
    out: list[tuple[FlowState, Pieces | None]] = []
    for delta in deltas:
        if pairing is None or delta.pairs is None:
            out.append((delta, None))
            continue
        delta = dataclasses.replace(delta, insight_examples=dict(delta.insight_examples))  # pairing adds to it
        pairing, pieces = delta.pair_with(pairing)
        out.append((delta, pieces))
    return out, pairing


def _drop(
    members: list[Member[_Input, _Result]], refused: list[Refused]
) -> tuple[list[Member[_Input, _Result]], list[Member[_Input, _Result]]]:
    """The members not refused, in order, and those refused as counted before (left unresolved: the caller
    answers them once the group's outcome is known); a member whose lease is lost is failed at once."""
    gone = {r.index: r for r in refused}
    counted = []
    for index, member in enumerate(members):
        if index in gone:
            why = gone[index].lease_lost
            if why is None:
                counted.append(member)
            else:
                member.result.set_exception(LeaseLost(why))
    return [m for i, m in enumerate(members) if i not in gone], counted


class _Body:
    """An async body read from a worker thread, one `anext` at a time, that closes cleanly mid-read.

    Closing while a read is pending (SIGTERM in the middle of a download) must
    first cancel and await that read: `aclose()` on a generator that is still
    running raises "asynchronous generator is already running", which would
    turn a clean stop into a source crash and a restart.
    """

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self.body = body
        self.reading: asyncio.Task[bytes | None] | None = None
        self.closed = False

    async def next(self) -> bytes | None:
        if self.closed:
            return None
        self.reading = asyncio.ensure_future(self._next())
        try:
            return await self.reading
        finally:
            self.reading = None

    async def _next(self) -> bytes | None:
        try:
            return await anext(self.body)
        except StopAsyncIteration:
            return None
        except SourceError:
            raise
        except Exception as exc:  # anything else from the network is a read failure too
            raise SourceError(type(exc).__name__, str(exc)) from exc

    async def close(self) -> None:
        self.closed = True
        reading = self.reading
        if reading is not None and not reading.done():
            reading.cancel()
            await asyncio.wait([reading])
        if isinstance(self.body, AsyncGenerator):
            with contextlib.suppress(RuntimeError):  # belt and braces: never turn a stop into a crash
                await self.body.aclose()


def _pull(body: _Body, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> Iterator[bytes]:
    """Chunks of an async body, fetched from a worker thread."""
    while True:
        future = asyncio.run_coroutine_threadsafe(body.next(), loop)
        while True:
            try:
                chunk = future.result(timeout=0.5)
                break
            except FutureTimeout:
                if stop.is_set():
                    future.cancel()
                    raise _Stopped from None
        if chunk is None:
            return
        yield chunk
