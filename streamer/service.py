"""Builds the running service from a Config and runs it until told to stop.

Startup and a later reload would share this one path: config -> AWS
clients -> checkpoint store (state restored) -> sources -> pipeline ->
HTTP. Sources run in one TaskGroup; SIGTERM/SIGINT set a stop event, the
group is cancelled, in-flight deliveries are abandoned uncommitted (they are
read again on the next start) and the store is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry

from streamer.aggregate import context as ctx
from streamer.aggregate import insights as ins
from streamer.aggregate.anomaly import Settings
from streamer.aggregate.detection import DETECTOR_SNAPSHOT, SNAPSHOT_NAME, Detection
from streamer.aggregate.eventtime import EventClock
from streamer.aggregate.pairing import PREFIX as PAIRING_PREFIX
from streamer.aggregate.pairing import Paired, Pairing
from streamer.aggregate.state import FlowState
from streamer.aws import AwsClients
from streamer.commit_group import Limits
from streamer.config import Config
from streamer.enrich import Enricher
from streamer.export.alerts import Alerter
from streamer.export.http import build_app, serve
from streamer.export.metrics import DetectionCollector, FlowCollector, InsightsCollector, InterfaceInfoCollector
from streamer.export.telemetry import Telemetry
from streamer.pipeline import Pipeline, Store
from streamer.sources.base import BuildContext, OwnsEverything, Source, aws_error_reason
from streamer.store.leader import LeaderCollector, LeaderDetector
from streamer.store.leases import Coordinator, LeaseCollector
from streamer.store.sqlite import CheckpointStore

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 3600
#: how often event time is checked against the wall clock (idle sources, quiet periods)
TICK_SECONDS = 1.0
#: a source's first call gets this long before it is reported as unanswered
FIRST_CALL_SECONDS = 8.0
#: on SIGTERM, calls to the checkpoint still running after this long are cut short (the database may be away)
STOP_GRACE_SECONDS = 2.0
#: how long a stopping replica tries to give its leases back
LEAVE_SECONDS = 2.0
#: the event-loop lag probe sleeps this long, then observes how late it woke
LAG_PROBE_SECONDS = 0.25
#: a source that ran this long before crashing restarts after the shortest backoff again
CLEAN_RUN_SECONDS = 60.0


class _Stop(Exception):
    pass


class Service:
    def __init__(self, config: Config, clients: AwsClients) -> None:
        self.config = config
        self.clients = clients
        self.sources: list[Source] = []
        self.registry = CollectorRegistry(auto_describe=True)
        self.telemetry = Telemetry(self.registry)
        self.port: int | None = None
        self.pipeline: Pipeline | None = None
        self.alerter: Alerter | None = None
        self.started = asyncio.Event()
        #: set before the service's task group cancels its tasks (see `_run_source`)
        self.stopping = False
        self._stop_marked = asyncio.Event()
        self.coordinator: Coordinator | None = None
        self.leader: LeaderDetector | None = None
        self.store: Store | None = None
        self.enricher: Enricher | None = None

    def ready(self) -> bool:
        store_ok = self.store is None or self.store.problem is None
        return bool(self.sources) and all(s.ready for s in self.sources) and store_ok

    def not_ready_reasons(self) -> list[str]:
        """What /readyz says: the checkpoint database if it does not answer, each source not ready yet, with its
        first call's failure if it had one."""
        problem = self.store.problem if self.store is not None else None
        reasons = [f"checkpoint database: {problem}"] if problem is not None else []
        return reasons + [f"{s.name}: {s.problem or 'starting'}" for s in self.sources if not s.ready]

    async def _first_calls(self) -> None:
        """Each source's first call, once, quickly: a misconfiguration is one line within seconds, not a
        minute of silent retries. The sources then start as usual (and keep retrying)."""

        async def one(source: Source) -> None:
            try:
                await asyncio.wait_for(source.first_call(self.clients), FIRST_CALL_SECONDS)
                return
            except TimeoutError:
                error = f"no answer within {FIRST_CALL_SECONDS:.0f} s"
            except Exception as exc:  # the AWS error, whatever its kind, is the message
                error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                self.telemetry.source_error(source.name, aws_error_reason(exc))
            source.problem = f"{source.first_call_name} failed: {error}"
            log.error("source %s: %s", source.name, source.problem)

        await asyncio.gather(*(one(s) for s in self.sources))

    async def _build_sources(self, store: Store) -> list[Source]:
        """Each source's config builds it (see sources/registry.py): no list of kinds here."""

        async def done_among(namespace: str, keys: list[str]) -> set[str]:
            return await store.call(store.store.done_among, namespace, keys)

        async def snapshot(key: str) -> bytes | None:
            return await store.call(store.store.snapshot, key)

        sources: list[Source] = []
        for index, cfg in enumerate(self.config.sources):
            name = self.config.source_name(index)
            coordinator = self.coordinator if self.coordinator is not None else OwnsEverything()
            partitions = self.config.fleet.s3_partitions if self.coordinator is not None else 1
            ctx = BuildContext(name, self.clients, done_among, self._cursors(store, name), snapshot, coordinator, partitions)
            sources.append(await cfg.build(ctx))
        return sources

    @staticmethod
    def _cursors(store: Store, name: str) -> Callable[[], Awaitable[dict[str, str]]]:
        async def load() -> dict[str, str]:
            return await store.call(store.store.cursors, name)

        return load

    async def _open_store(self) -> Store:
        cp = self.config.checkpoint
        if cp.url is None:
            return Store(CheckpointStore(cp.path))
        from streamer.store.pgtimeouts import Timeouts  # only fleets need the driver
        from streamer.store.postgres import PostgresStore

        url, replica = cp.url.get_secret_value(), self.config.fleet.replica_id
        timeouts = Timeouts(
            cp.connect_timeout_seconds,
            cp.statement_timeout_seconds,
            cp.keepalive_idle_seconds,
            cp.keepalive_interval_seconds,
            cp.keepalive_count,
            cp.tcp_user_timeout_seconds,
        )
        pg = await asyncio.to_thread(PostgresStore, url, replica, cp.password_file, cp.pool_size, timeouts)
        return Store(pg, threads=cp.pool_size)

    async def run(self, stop: asyncio.Event) -> None:
        store = await self._open_store()
        self.store = store
        workers = self.config.decode_workers or min(4, os.cpu_count() or 2)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        runner = None
        fleet = self.config.checkpoint.url is not None
        abort: asyncio.TimerHandle | None = None
        try:
            state = await store.call(store.store.load_state)
            book = ctx.ContextBook()
            alerter = Alerter(self.config.alerts, self.registry, context=book.get)
            leader = None
            if fleet:
                self.coordinator, leader = await self._join_fleet(store, alerter)
                detection = None
            else:
                detection = await self._restore_detection(store)
            enricher = self._enricher(book, store, leader)
            await enricher.load()
            self.enricher = enricher
            pipeline = Pipeline(
                state,
                store,
                self.telemetry,
                pool,
                detection,
                alerter.notify,
                max_future_skew_seconds=self.config.anomaly.max_future_skew_seconds,
                max_interfaces=self.config.metrics.max_interfaces,
                interface_idle_seconds=self.config.metrics.interface_idle_seconds,
                insights_window_seconds=self.config.anomaly.window_seconds if self.config.insights.enabled else None,
                partials_window_seconds=self.config.anomaly.window_seconds if fleet else None,
                group=self._group_limits(),
                nacl_pairing=self._nacl_pairing,
                **(await self._restore_pairing(store, fleet)),
                context_columns=self._context_columns(),
                on_context=enricher.observe,
            )
            self.pipeline = pipeline
            self.alerter = alerter
            self.leader = leader
            self.registry.register(FlowCollector(lambda: pipeline.state, self.config.metrics.max_interfaces))
            if self.config.insights.enabled:
                price = self.config.insights.nat_gateway_price_per_gb
                collector = InsightsCollector(lambda: _with_paired(pipeline.state, leader), price, self._nacl_pairing)
                self.registry.register(collector)
            members = lambda: pipeline.state.seen.keys()  # noqa: E731
            current = (lambda: leader.detection) if leader is not None else (lambda: pipeline.detection)
            self.registry.register(DetectionCollector(current, members, self.config.metrics.max_interfaces))
            self.registry.register(InterfaceInfoCollector(book.get, members))
            self.sources = await self._build_sources(store)
            for source in self.sources:  # read at scrape time, never stale
                self.telemetry.ready.labels(source.name).set_function(_readiness(source))
            app = build_app(self.registry, self.ready, self.not_ready_reasons)
            runner, self.port = await serve(app, self.config.http.host, self.config.http.port)
            await self._first_calls()
            log.info(
                "serving on %s:%d; %d source(s); restored %d counter rows",
                self.config.http.host,
                self.port,
                len(self.sources),
                state.counters.table().num_rows,
            )
            self.started.set()
            try:
                async with asyncio.TaskGroup() as group:
                    for source in self.sources:
                        group.create_task(self._run_source(source, pipeline))
                    group.create_task(self._prune(store))
                    group.create_task(self._probe_lag())
                    if leader is not None and self.coordinator is not None:
                        group.create_task(self.coordinator.run())
                        group.create_task(leader.run())
                    else:
                        group.create_task(self._tick(pipeline))
                    group.create_task(alerter.run())  # with no target too: it expires alerts
                    group.create_task(enricher.run())  # beside the pipeline: it never holds a record back
                    try:
                        await stop.wait()
                    finally:
                        # However the wait ends (the stop, this task cancelled, a task of the group failed), the
                        # group cancels its tasks next: a source failing from now on is not restarted. Commits in
                        # flight finish (they are shielded), unless the database does not answer: then they are cut
                        # short (else they wait for it to answer, which nothing looks for once the heartbeat stops).
                        self._mark_stopping()
                        grace = 0 if store.problem is not None else STOP_GRACE_SECONDS
                        abort = asyncio.get_running_loop().call_later(grace, store.abort)
                    log.info("stopping")
                    raise _Stop  # cancels every task in the group
            except* _Stop:
                pass
        finally:
            if self.coordinator is not None:
                if store.problem is None:  # the others take over now, not when the leases expire
                    await self.coordinator.leave(LEAVE_SECONDS)
                else:
                    log.warning("the database does not answer: leases are left to expire (%s)", store.problem)
                self.coordinator.close()
            if runner is not None:
                await runner.cleanup()
            if abort is not None:
                abort.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            if self.pipeline is not None:
                self.pipeline.close()
            store.abort()  # what is left in flight is a cancelled call's thread: never wait for it
            store.close()
            await self.clients.close()
            log.info("stopped")

    def _context_columns(self) -> tuple[str, ...]:
        """The records' context fields (decoded only where the format has them); the account only when a role
        is chosen by it: a v2 format then costs nothing more to decode."""
        enrich = self.config.enrich
        where = (("region",) + (("account-id",) if enrich.role_arn else ())) if enrich is not None else ()
        return ctx.CONTEXT_FIELDS + where

    def _enricher(self, book: ctx.ContextBook, store: Store, leader: LeaderDetector | None) -> Enricher:
        """ENI context (records, and EC2 with an `enrich:` section); in a fleet only the leader describes."""
        enrich = self.config.enrich
        region = (enrich.region if enrich is not None else None) or self.clients.default_region() or "us-east-1"
        return Enricher(
            book,
            store.store,
            store.call,
            self.registry,
            config=enrich,
            client_for=self.clients.ec2_as if enrich is not None else None,
            default_region=region,
            active=lambda: self.pipeline.state.seen if self.pipeline is not None else {},
            idle_seconds=self.config.metrics.interface_idle_seconds,
            leader=(lambda: leader.leader) if leader is not None else (lambda: True),
            fleet=leader is not None,
        )

    def _group_limits(self) -> Limits:
        """When inputs decoded close together stop waiting for each other and commit (commit_group.py)."""
        cp = self.config.checkpoint
        return Limits(cp.group_commit_max_inputs, cp.group_commit_max_bytes, cp.group_commit_delay_seconds)

    async def _join_fleet(self, store: Store, alerter: Alerter) -> tuple[Coordinator, LeaderDetector]:
        """Leases and the leader's detector over the shared database (see fleet.py)."""
        from streamer.store.postgres import PostgresStore

        assert isinstance(store.store, PostgresStore)
        coordinator = Coordinator(store.store, self.config.fleet.lease_seconds, store.call)
        await coordinator.heartbeat()
        cfg = self.config.anomaly
        settings = self._settings()
        leader = LeaderDetector(
            coordinator,
            lambda: Detection.create(settings, cfg.lateness_seconds, self.event_clock()),
            lambda blob: Detection.restore(blob, settings, cfg.lateness_seconds, self.event_clock()),
            alerter,
            store.call,
            pairing_lateness_seconds=cfg.lateness_seconds if self._nacl_pairing else None,
            pairing_max_waiting_replies=self.config.insights.max_waiting_replies_per_window,
            on_replies_dropped=self.telemetry.nacl_replies_dropped.inc,
            max_interfaces=self.config.metrics.max_interfaces,
            interface_idle_seconds=self.config.metrics.interface_idle_seconds,
            replica_retention_seconds=self.config.fleet.replica_retention_seconds,
        )
        self.registry.register(LeaseCollector(coordinator))
        self.registry.register(LeaderCollector(leader))
        log.info("replica %s joined a fleet of %d", coordinator.replica_id, len(coordinator.live))
        return coordinator, leader

    def _settings(self) -> Settings:
        cfg = self.config.anomaly
        idle = self.config.metrics.interface_idle_seconds  # baselines go with their ENI's series
        settings = Settings(
            cfg.window_seconds, cfg.score_threshold, cfg.min_rejected_records, cfg.warmup_windows, cfg.baseline_alpha, idle
        )
        if settings.baseline_idle_seconds > idle:
            log.info(
                "metrics.interface_idle_seconds (%g) is shorter than the warm-up (anomaly.warmup_windows x window_seconds):"
                " detector baselines are kept %g s, or bursty ENIs would never warm up",
                idle,
                settings.baseline_idle_seconds,
            )
        return settings

    def event_clock(self) -> EventClock:
        """Live event time over the configured sources (see aggregate/eventtime.py)."""
        cfg = self.config.anomaly
        names = frozenset(self.config.source_name(i) for i in range(len(self.config.sources)))
        return EventClock(cfg.lateness_seconds, cfg.idle_timeout_seconds, True, names, started_at=time.time())

    @property
    def _nacl_pairing(self) -> bool:
        """NACL return rejects are paired (opt-in: `insights.nacl_pairing`, with the insights on)."""
        return self.config.insights.enabled and self.config.insights.nacl_pairing

    async def _restore_pairing(self, store: Store, fleet: bool) -> dict[str, Any]:
        """The NACL pairing state of one process (pairing on). A fleet's replicas send their candidates
        to the leader instead, which pairs what every replica saw (store/leader.py)."""
        if not self._nacl_pairing or fleet:
            return {}
        pieces = await store.call(store.store.snapshots, PAIRING_PREFIX)
        cap = self.config.insights.max_waiting_replies_per_window
        return {"pairing": await asyncio.to_thread(Pairing.restore, pieces, self.config.anomaly.lateness_seconds, cap)}

    async def _restore_detection(self, store: Store) -> Detection:
        cfg = self.config.anomaly
        settings = self._settings()
        blob = await store.call(store.store.snapshot, SNAPSHOT_NAME)
        if blob is None:
            return Detection.create(settings, cfg.lateness_seconds, self.event_clock())
        baselines = await store.call(store.store.snapshot, DETECTOR_SNAPSHOT)
        detection = Detection.restore(blob, settings, cfg.lateness_seconds, self.event_clock(), detector=baselines)
        log.info(
            "restored %d ENI baselines and %d open windows", len(detection.detector.baselines), detection.windows.stats.num_rows
        )
        return detection

    async def _run_source(self, source: Source, pipeline: Pipeline) -> None:
        backoff = RestartBackoff()
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await source.run(pipeline)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one source must not stop the others: log, back off, restart it
                # The cancellation that stops this task can be lost: Python 3.11's TaskGroup swallows one that
                # arrives while the source's own group is stopping on a failure (cpython#116720), and the failure
                # comes out instead. So the service's stop mark decides, not the cancellation: looked at after a
                # yield (a stop begun in this very iteration marks itself then), and again after the backoff,
                # which the mark cuts short. Restarting would run the source for ever, the service waiting on it.
                await asyncio.sleep(0)
                if self.stopping:
                    log.exception("source %s failed while stopping", source.name)
                    return
                delay = backoff.after(loop.time() - started)
                log.exception("source %s failed; restarting in %.0f s", source.name, delay)
                self.telemetry.source_error(source.name, "crashed")
                await self._backoff(delay)
                if self.stopping:
                    return

    async def _backoff(self, seconds: float) -> None:
        """Wait `seconds`, or less if the service is marked stopping. Not `asyncio.timeout`: before 3.11.3 its
        expiry is a CancelledError in a task that still counts a swallowed cancellation (gh-102780)."""
        marked = asyncio.ensure_future(self._stop_marked.wait())
        try:
            await asyncio.wait([marked], timeout=seconds)
        finally:
            marked.cancel()

    def _mark_stopping(self) -> None:
        self.stopping = True
        self._stop_marked.set()

    async def _prune(self, store: Store) -> None:
        while True:
            try:
                removed = await store.call(store.store.prune, self.config.checkpoint.retention_seconds)
                if removed:
                    log.info("forgot %d done keys older than the retention", removed)
            except Exception as exc:  # housekeeping: a database blip or a slow delete waits for the next round
                log.warning("pruning done keys failed (tried again in %d s): %s", PRUNE_INTERVAL_SECONDS, exc)
            await asyncio.sleep(PRUNE_INTERVAL_SECONDS)

    async def _probe_lag(self) -> None:
        """streamer_event_loop_lag_seconds: anything that blocks the loop delays scrapes and lease renewals."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            self.telemetry.loop_lag.observe(max(0.0, loop.time() - started - LAG_PROBE_SECONDS))

    async def _tick(self, pipeline: Pipeline) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                await pipeline.tick()
            except Exception:  # a failed commit here is retried on the next tick
                log.exception("advancing event time failed")


class RestartBackoff:
    """How long to wait before restarting a crashed source: doubling while it keeps crashing, from the
    start again once it had run cleanly for `reset_after_seconds` (one crash a day is not a crash loop)."""

    def __init__(self, first: float = 1.0, limit: float = 300.0, reset_after_seconds: float = CLEAN_RUN_SECONDS) -> None:
        self.first = first
        self.limit = limit
        self.reset_after_seconds = reset_after_seconds
        self.next = first

    def after(self, ran_seconds: float) -> float:
        """The delay after a run that lasted `ran_seconds` and then crashed."""
        if ran_seconds >= self.reset_after_seconds:
            self.next = self.first
        delay = self.next
        self.next = min(self.next * 2, self.limit)
        return delay


def _with_paired(state: FlowState, leader: LeaderDetector | None) -> FlowState:
    """A replica's insights, plus, on the fleet's leader, the NACL return rejects it paired for everyone."""
    if leader is None or leader.totals is None or not leader.totals.counts:
        return state
    examples = dict(state.insight_examples)
    insights = ins.add_pairs(state.insights, examples, Paired(dict(leader.totals.counts), dict(leader.totals.examples)))
    return dataclasses.replace(state, insights=insights, insight_examples=examples)


def _readiness(source: Source) -> Callable[[], float]:
    return lambda: 1.0 if source.ready else 0.0


async def run_until_signalled(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Service(config, AwsClients()).run(stop)
