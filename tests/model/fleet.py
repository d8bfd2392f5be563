"""The fleet's world: the same fake AWS and checks as world.py, with the real PostgreSQL store and several
replicas (real Service instances, each its own store, leases and pipeline) sharing one database.

The replicas reach PostgreSQL through a TCP proxy that the model can black out (the database away: calls
hang, then every connection held meanwhile is dropped). The oracle reads the database directly, not
through the proxy: the committed counters are the sum over the replicas' rows. Lease faults are made in
the database itself, as another replica would: a lease's expiry moved into the past (its holder loses it at
the next renewal, and whoever claims it next takes it under a new epoch), the leader's lease likewise.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from streamer.aggregate.anomaly import Settings
from streamer.aggregate.detection import SNAPSHOT_NAME, Detection
from streamer.aggregate.insights import NACL
from streamer.aggregate.nacl_totals import TOTALS_SNAPSHOT, Totals
from streamer.config import parse_config
from streamer.defaults import LATENESS_SECONDS, WINDOW_SECONDS
from streamer.pipeline import Store
from streamer.service import Service
from streamer.sources.kinesis import SHARD_LEASE, KinesisSource
from streamer.store.leases import LEADER
from streamer.store.pgtimeouts import Timeouts
from streamer.store.postgres import PostgresStore
from tests.integration.postgres import Postgres
from tests.integration.slowproxy import Blackhole
from tests.model.world import (
    LOG_FORMAT,
    QUEUE,
    STREAM,
    Committed,
    DidNotStop,
    Faults,
    InjectsCommitFaults,
    MetricsWentDown,
    ServiceDied,
    World,
    _records,
    _window_totals,
    check,
    in_context,
    restart_after,
    stop,
    until_started,
)

#: a lease not renewed for this long goes to another replica (the least the config allows)
LEASE_SECONDS = 2.0


class FaultyPostgresStore(InjectsCommitFaults, PostgresStore):
    """The real PostgreSQL store, whose group commits fail when the model says so."""

    faults: Faults


class FleetService(Service):
    """The real service of one replica; only its store is the fault-injecting one."""

    faults: Faults

    async def _open_store(self) -> Store:
        cp = self.config.checkpoint
        assert cp.url is not None
        timeouts = Timeouts(
            cp.connect_timeout_seconds,
            cp.statement_timeout_seconds,
            cp.keepalive_idle_seconds,
            cp.keepalive_interval_seconds,
            cp.keepalive_count,
            cp.tcp_user_timeout_seconds,
        )
        url, replica = cp.url.get_secret_value(), self.config.fleet.replica_id
        pg = await asyncio.to_thread(FaultyPostgresStore, url, replica, None, cp.pool_size, timeouts)
        pg.faults = self.faults
        return Store(pg, threads=cp.pool_size)


class FleetWorld(World):
    """`replicas` services over one PostgreSQL database (a fresh one per schedule)."""

    def __init__(self, sources: Sequence[str], pg: Postgres, replicas: int) -> None:
        self.pg = pg
        self.database = pg.database()
        self.url = pg.url(self.database)
        PostgresStore(self.url, "model-oracle").close()  # the schema, before the oracle's first look
        self.proxy = Blackhole(pg.port)
        self._proxying = self.proxy.running()
        self._proxying.__enter__()
        self.replicas = [f"replica-{i}" for i in range(replicas)]
        self.fleet: dict[str, tuple[FleetService, asyncio.Task[None]]] = {}
        #: each running replica's stop event (set: the path SIGTERM takes)
        self.stops: dict[str, asyncio.Event] = {}
        #: per replica: the highest records total scraped from its /metrics (restarts included)
        self.scraped_by: dict[str, int] = {}
        super().__init__(sources)

    def _fleet_doc(self, replica: str) -> dict[str, Any]:
        sources: list[dict[str, Any]] = []
        if "s3" in self.sources:
            sources.append(
                {
                    "type": "s3_sqs",
                    "name": "sqs",
                    "queue_url": QUEUE,
                    "wait_time_seconds": 1,
                    "visibility_timeout_seconds": 30,
                    "max_receive_count": 1000,
                    "backlog_interval_seconds": 3600,
                }
            )
        if "kinesis" in self.sources:
            sources.append(
                {
                    "type": "kinesis",
                    "name": "kinesis",
                    "stream_name": STREAM,
                    "start_position": "trim_horizon",
                    "poll_interval_seconds": 0.02,
                    "shard_refresh_seconds": 0.05,
                    "batch_records": 3,
                    "log_format": LOG_FORMAT,
                }
            )
        proxied = f"postgresql://postgres@127.0.0.1:{self.proxy.port}/{self.database}"
        return {
            "http": {"listen_address": "127.0.0.1:0"},
            "checkpoint": {
                "url": proxied,
                "group_commit_delay_seconds": 0.3,
                "connect_timeout_seconds": 2,
                "statement_timeout_seconds": 2,
                "tcp_user_timeout_seconds": 2,
                "pool_size": 3,
            },
            "fleet": {"replica_id": replica, "lease_seconds": LEASE_SECONDS},
            "sources": sources,
            "decode_workers": 1,
            "insights": {"nacl_pairing": True},
        }

    # --- the replicas ---------------------------------------------------------------------------

    async def start(self) -> None:
        for replica in self.replicas:
            if replica not in self.fleet:
                await self.start_one(replica)

    async def start_one(self, replica: str) -> None:
        before = self.committed_of(replica)
        service = FleetService(parse_config(self._fleet_doc(replica), {}), self.clients)  # type: ignore[arg-type]
        service.faults = self.faults
        stop_event = asyncio.Event()
        task = in_context(self.faults, service.run(stop_event))
        await until_started(service, task, f"replica {replica}", 20)
        self.fleet[replica] = (service, task)
        self.stops[replica] = stop_event
        for source in service.sources:
            if isinstance(source, KinesisSource):
                source.retry_seconds = 0.05
        assert service.pipeline is not None
        if service.pipeline.commits == 0:
            live = _records(service.pipeline.state.counters.table().to_pylist())
            # (or its rows now: a commit that landed and then raised counts no commit, but is reloaded)
            now = self.committed_of(replica)
            check(live in (before, now), MetricsWentDown, f"{replica}'s restored counters differ from its committed rows")

    def running(self) -> dict[str, asyncio.Task[None]]:
        return {replica: task for replica, (_, task) in self.fleet.items()}

    async def stop_one(self, replica: str, graceful: bool = False) -> None:
        """Cancel one replica abruptly (its leases are left to expire), or stop it as SIGTERM does
        (`graceful`: it hands its leases back); its committed rows stay."""
        _, task = self.fleet.pop(replica)
        await stop(task, replica, self.stops.pop(replica) if graceful else None)

    async def crash(self, port_taken: bool = False, which: int = 0, busy: bool = False, graceful: bool = False) -> None:
        """One replica crashes (everything of it cancelled), or is stopped as SIGTERM does (`graceful`), and a
        new one starts under its name."""
        if busy:
            await self.busy()
        replica = self.replicas[which % len(self.replicas)]
        died: ServiceDied | None = None
        if replica in self.fleet:
            try:
                await self.stop_one(replica, graceful)
            except ServiceDied as exc:  # a finding; the schedule goes on with a new replica
                died = exc
        await restart_after(died, self.start_one(replica))

    async def down(self, which: int, graceful: bool = False) -> None:
        """One replica is gone (crashed, or stopped as SIGTERM does; not restarted yet): the others take its
        leases once they expire, or at once when it handed them back."""
        replica = self.replicas[which % len(self.replicas)]
        if replica in self.fleet and len(self.fleet) > 1:
            await self.stop_one(replica, graceful)

    async def lease_lost(self, kind: str | None) -> None:
        """Expire leases in the database, as a replica that found them stale would: each holder loses its
        lease at its next renewal and whoever claims it next holds it under a new epoch."""
        where = "" if kind is None else " WHERE kind = %s"
        args = () if kind is None else (kind,)
        await asyncio.to_thread(self._sql, f"UPDATE leases SET expires_at = 0{where}", *args)

    async def leader_steps_down(self) -> None:
        await self.lease_lost(LEADER[0])

    async def busy(self) -> None:
        """An input on its way: read and decoding, or waiting in its group for the commit (0.3 s), when the
        fault that follows lands (faults between steps would otherwise land on an idle fleet)."""
        if "kinesis" in self.sources:
            for which in range(len(self.kinesis.open_shards())):
                await self.kinesis_record(1, which)
        else:
            await self.s3_object(1, 1)
        await asyncio.sleep(0.1)

    async def lease_taken(self) -> None:
        """Every shard lease handed to another replica in the database while its holder has records in
        flight: the new holder claims it under a new epoch and reads from the committed cursor."""
        await self.busy()
        owners = self._sql("SELECT name, owner FROM leases WHERE kind = %s", SHARD_LEASE)
        for name, owner in owners:
            others = [r for r in self.replicas if r != owner and r in self.fleet]
            if others:
                self._sql(
                    "UPDATE leases SET owner = %s, expires_at = 0 WHERE kind = %s AND name = %s", others[0], SHARD_LEASE, name
                )

    async def database_away(self, seconds: float, busy: bool = False) -> None:
        """The network to the database drops everything for a while; the connections held meanwhile are dead."""
        if busy:
            await self.busy()
        self.proxy.block()
        await asyncio.sleep(seconds)
        self.proxy.heal(reset=True)

    def _sql(self, statement: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(statement, args or None)
            return cur.fetchall() if cur.description else []

    def idle(self) -> bool:
        if len(self.fleet) < 1:
            return False
        for service, _ in self.fleet.values():
            busy = sum(
                service.registry.get_sample_value("streamer_inputs_in_flight", {"source": s.name}) or 0 for s in service.sources
            )
            if busy:
                return False
        visible = any(m.visible_at <= self.clock.now for m in self.sqs.queues[QUEUE].values())
        behind = any(
            self.kinesis.served.get(shard, 0) < len(self.kinesis.shards[shard].records)
            for service, _ in self.fleet.values()
            for source in service.sources
            if isinstance(source, KinesisSource)
            for shard in source.reading
        )
        return not visible and not behind

    # --- the oracle ----------------------------------------------------------------------------

    def committed(self) -> Committed:
        with psycopg.connect(self.url, autocommit=False) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            records = {
                str(eni): int(n)
                for eni, n in conn.execute("SELECT interface_id, SUM(records) FROM counters GROUP BY interface_id").fetchall()
            }
            done = {(str(ns), str(key)) for ns, key in conn.execute("SELECT namespace, key FROM done").fetchall()}
            cursors = {
                str(p): str(v)
                for p, v in conn.execute("SELECT partition, value FROM cursors WHERE source = 'kinesis'").fetchall()
            }
        return Committed({k: v for k, v in records.items() if v}, done, cursors)

    def committed_of(self, replica: str) -> dict[str, int]:
        rows = self._sql("SELECT interface_id, SUM(records) FROM counters WHERE replica_id = %s GROUP BY interface_id", replica)
        return {str(k): int(v) for k, v in rows if v}

    def committed_rows(self) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
        """Every replica's counter rows and decode errors; the insights summed over replicas, with the NACL
        return rejects the leader paired (its totals' snapshot: records per ENI, no bytes)."""
        cols = ("interface_id", "action", "records", "packets", "bytes")
        rows = [dict(zip(cols, r, strict=True)) for r in self._sql(f"SELECT {', '.join(cols)} FROM counters")]
        errors = self._sql("SELECT reason, count FROM decode_errors WHERE count > 0")
        summed = "SELECT kind, key1, key2, SUM(records), SUM(bytes) FROM insights GROUP BY 1, 2, 3 HAVING SUM(records) > 0"
        insights: list[Any] = [(str(k), str(a), str(b), int(r), int(n)) for k, a, b, r, n in self._sql(summed)]
        blob = self._snapshot(TOTALS_SNAPSHOT)
        if blob is not None:
            totals = Totals.restore(blob, time.time())
            insights += [(NACL, eni, "", n, 0) for eni, n in totals.counts.items() if n]
        return rows, errors, insights

    def _snapshot(self, name: str) -> bytes | None:
        rows = self._sql("SELECT value FROM snapshots WHERE name = %s", name)
        return bytes(rows[0][0]) if rows else None

    def committed_windows(self) -> dict[tuple[str, int], tuple[int, ...]] | None:
        """The leader's event-time windows (folded from every replica's partials), per ENI and window."""
        blob = self._snapshot(SNAPSHOT_NAME)
        if blob is None:
            return {} if not self.committed().records else None
        restored = Detection.restore(blob, Settings(window_seconds=WINDOW_SECONDS), LATENESS_SECONDS)
        return _window_totals(restored.windows.stats)

    def comparable_insights(self, replayed: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The leader keeps paired NACL rejects as records per ENI only."""
        return sorted((k, a, b, r, 0 if k == NACL else n) for k, a, b, r, n in replayed)

    async def drained(self, limit: float = 5.0) -> None:
        """Wait until the leader has taken every replica's window partials (its snapshots are complete)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while self._sql("SELECT count(*) FROM window_partials")[0][0] and loop.time() < deadline:  # noqa: ASYNC110 - polling a database
            await asyncio.sleep(0.1)

    async def check_monotone(self) -> None:
        """Each replica's records total on /metrics never decreases (its restarts included) and never exceeds
        its committed rows."""
        if self.http is None:
            return
        from prometheus_client.parser import text_string_to_metric_families

        for replica, (service, _) in list(self.fleet.items()):
            if service.port is None:
                continue
            async with self.http.get(f"http://127.0.0.1:{service.port}/metrics") as resp:
                text = await resp.text()
            total = 0
            for family in text_string_to_metric_families(text):
                if family.name == "vpcflow_records":
                    total += int(sum(s.value for s in family.samples if s.name == "vpcflow_records_total"))
            committed = sum(self.committed_of(replica).values())
            seen = self.scraped_by.get(replica, 0)
            check(total >= seen, MetricsWentDown, f"{replica}'s /metrics went down: {seen} -> {total}")
            check(total <= committed, MetricsWentDown, f"{replica}'s /metrics shows {total} records, {committed} committed")
            self.scraped_by[replica] = total

    async def settle(self) -> None:
        self.proxy.heal()
        await self.start()  # replicas taken down come back
        await super().settle()
        await self.drained()

    async def close(self) -> None:
        stuck: DidNotStop | ServiceDied | None = None
        for replica in list(self.fleet):
            try:
                await self.stop_one(replica, graceful=True)  # as SIGTERM stops it
            except (DidNotStop, ServiceDied) as exc:  # raised once the rest is closed: a finding
                stuck = stuck or exc
        self.proxy.heal(reset=True)
        try:
            await super().close()
        finally:
            self._proxying.__exit__(None, None, None)
            with contextlib.suppress(Exception):
                self.pg.psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
        if stuck is not None:
            raise stuck
