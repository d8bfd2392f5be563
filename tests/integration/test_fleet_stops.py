"""The fleet under network faults, clock skew and rolling restarts: real PostgreSQL, real processes, moto.

- blackholed database traffic (a proxy that stops forwarding): a call fails
  within the configured timeout, the store recovers by itself when traffic
  flows again (dead pooled connections are checked and replaced), a replica
  says why on /readyz meanwhile, and SIGTERM stops it without the database;
- a rolling restart with SIGTERM: each replica gives its leases back and
  deregisters, so no shard and no leadership is unowned for longer than one
  heartbeat;
- replicas whose wall clocks are 25 s ahead and 25 s behind (libfaketime):
  leases are judged on the database's clock, so none changes hands.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from streamer.synth import TrafficProfile, generate_table
from tests.integration.conftest import Truth, aws_key, boto
from tests.integration.slowproxy import Blackhole
from tests.integration.test_fleet import Fleet, Replica, gz, leases_by_replica, wait_for

pytestmark = pytest.mark.integration


def proxied(pg_url: str, proxy: Blackhole) -> str:
    """The same database, reached through the proxy."""
    head, _, tail = pg_url.rpartition("@")
    _, _, rest = tail.partition("/")
    return f"{head}@127.0.0.1:{proxy.port}/{rest}"


def in_thread(fn: Callable[[], Any], hang_seconds: float) -> Any:
    """Run `fn` on a thread; its result or exception. A hang check: fails if it has not returned by `hang_seconds`."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(hang_seconds)
    assert not t.is_alive(), f"the call still hangs after {hang_seconds} s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_a_blackholed_database_fails_calls_within_the_timeout_and_the_store_recovers_by_itself(pg_url: str) -> None:
    from streamer.store.base import Commit, DatabaseUnavailable
    from streamer.store.pgtimeouts import Timeouts
    from streamer.store.postgres import PostgresStore

    port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    lease = ("kinesis_shard", "s/0")
    with Blackhole(port).running() as proxy:
        timeouts = Timeouts(connect_seconds=2, statement_seconds=2)
        store = PostgresStore(proxied(pg_url, proxy), "r1", pool_size=2, timeouts=timeouts)
        try:
            assert store.acquire(*lease, 60)
            assert store.acquire("kinesis_shard", "s/1", 60)
            with store._pool.connection() as conn:  # every connection carries the timeouts
                params = conn.info.get_parameters()
                assert conn.execute("SHOW statement_timeout").fetchone() == ("2s",)
            assert (params["keepalives"], params["keepalives_idle"], params["tcp_user_timeout"]) == ("1", "10", "30000")
            assert params["connect_timeout"] == "2"
            with psycopg.connect(pg_url) as holder:
                holder.execute("SELECT * FROM leases WHERE name = 's/0' FOR UPDATE")  # held directly, not proxied
                # Both of the store's connections wait on the lock: the heartbeat, on its own, is not held up.
                failed: list[BaseException] = []
                calls = [
                    threading.Thread(target=_commit, args=(store, Commit(lease=lease), failed), daemon=True) for _ in range(2)
                ]
                for call in calls:
                    call.start()
                wait_for(lambda: _waiting_on_a_lock(pg_url) == 2, 30, "both commits to wait on the lock")
                assert in_thread(lambda: store.heartbeat([("kinesis_shard", "s/1")], 60), 30)[0] == {("kinesis_shard", "s/1")}
                # The server answers: it cancels the statements at its statement_timeout, cleanly.
                for call in calls:
                    call.join(30)
                assert [type(e.__cause__).__name__ for e in failed] == ["QueryCanceled", "QueryCanceled"]
                assert [type(e).__name__ for e in failed] == ["StatementTimeout", "StatementTimeout"]
                assert store.problem is None  # a slow statement is not the database away: nobody pauses
                assert store.cursors("s") == {}
                # A call in flight when the network goes silent: the server cancels it, but that answer never
                # comes back either. The replica cuts the call a second after the server's limit.
                call = threading.Thread(target=_commit, args=(store, Commit(lease=lease), failed), daemon=True)
                call.start()
                wait_for(lambda: _waiting_on_a_lock(pg_url) == 1, 30, "the commit to wait on the lock")
                proxy.block()
                call.join(30)
                assert not call.is_alive(), "the commit still hangs"
                holder.rollback()
            assert isinstance(failed[-1], DatabaseUnavailable)
            assert store.problem == "no answer from the database within 3 s"
            with pytest.raises(DatabaseUnavailable):  # a new call: the pool's check of an idle connection is cut too
                in_thread(lambda: store.cursors("s"), 30)
            assert store.problem == "no database connection within 2 s"
            with pytest.raises(DatabaseUnavailable):  # and the heartbeat's own connection
                in_thread(lambda: store.heartbeat([], 3), 30)
            proxy.heal(reset=True)  # every connection open during the outage is dead now
            wait_for(lambda: _answers(store), 30, "the store to answer again")
            kept, live = store.heartbeat([lease], 60)
            assert (kept, live) == ({lease}, ["r1"])
            assert store.problem is None
            # Connections that die while idle in the pool are found by the pool's check and replaced, not used.
            wait_for(lambda: _idle(store) == 2, 30, "two idle connections in the pool")
            proxy.heal(reset=True)
            for _ in range(4):
                assert store.cursors("s") == {}
        finally:
            in_thread(store.close, 30)


def _idle(store: Any) -> int:
    return int(store._pool._pool.get_stats().get("pool_available", 0))


def _commit(store: Any, change: Any, failed: list[BaseException]) -> None:
    try:
        store.commit(change)
    except BaseException as exc:
        failed.append(exc)


def _waiting_on_a_lock(pg_url: str) -> int:
    """Sessions waiting on a lock (asked on a connection of its own: a transaction sees frozen statistics)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
    return 0 if row is None else int(row[0])


def _answers(store: Any) -> bool:
    from streamer.store.base import DatabaseUnavailable

    try:
        store.cursors("s")
    except DatabaseUnavailable:
        return False
    return True


def readyz(replica: Replica) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{replica.port}/readyz", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode()
    except OSError:
        return 0, ""


def leading(replica: Replica) -> float | None:
    m = replica.scrape()
    return None if m is None else m.get("streamer_leader", {}).get((), 0)


def sqs_bucket(aws: str) -> tuple[Any, str]:
    s3, sqs = boto("s3", aws), boto("sqs", aws)
    s3.create_bucket(Bucket="flow-logs")
    url = sqs.create_queue(QueueName="faults", Attributes={"VisibilityTimeout": "10"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket="flow-logs",
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    return s3, url


def put_objects(s3: Any, truth: Truth, first: int, count: int) -> None:
    now = dt.datetime.now(dt.UTC)
    for i in range(first, first + count):
        table = generate_table(TrafficProfile(records=200, enis=5, seed=i, start_epoch=int(now.timestamp()) - 1800))
        truth.add_rows(table.to_pylist())
        s3.put_object(Bucket="flow-logs", Key=aws_key(now, "daily", n=i), Body=gz(table))


def test_a_replica_waits_out_a_blackholed_database_recovers_without_a_restart_and_stops_without_it(
    aws: str, pg_url: str, tmp_path: Path
) -> None:
    s3, queue = sqs_bucket(aws)
    truth = Truth()
    port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    with Blackhole(port).running() as proxy:
        config = {
            "checkpoint": {"url": proxied(pg_url, proxy), "connect_timeout_seconds": 2, "statement_timeout_seconds": 2},
            "sources": [
                {"type": "s3_sqs", "name": "queue", "queue_url": queue, "endpoint_url": aws, "wait_time_seconds": 1}
            ],
            "fleet": {"lease_seconds": 3},
            "decode_workers": 1,
        }
        fleet = Fleet(tmp_path, config, n=1)
        (replica,) = fleet.replicas
        with fleet:
            put_objects(s3, truth, 0, 4)
            wait_for(lambda: fleet.totals() == truth.totals, 60, "the first objects", fleet)
            wait_for(lambda: readyz(replica)[0] == 200, 30, "ready", fleet)

            proxy.block()
            wait_for(lambda: readyz(replica)[0] == 503, 30, "/readyz to say the database does not answer", fleet)
            assert "not ready: checkpoint database: no " in readyz(replica)[1]
            # Unrenewed for the lease time on its own monotonic clock: it stops leading here.
            wait_for(lambda: leading(replica) == 0, 30, "the replica to give up its leases locally", fleet)
            put_objects(s3, truth, 4, 4)  # read, not counted until the database answers
            crashes = lambda: sum(  # noqa: E731
                v for labels, v in (replica.scrape() or {}).get("streamer_source_errors_total", {}).items()
                if dict(labels).get("reason") == "crashed"
            )
            before = crashes()
            proxy.heal(reset=True)
            wait_for(lambda: fleet.totals() == truth.totals, 90, "the objects sent meanwhile, counted once", fleet)
            wait_for(lambda: readyz(replica)[0] == 200, 30, "ready again, without a restart", fleet)
            assert crashes() == before  # the source paused; nothing crashed and restarted
            wait_for(lambda: leading(replica) == 1, 30, "the replica to lead again", fleet)
            assert replica.alive

            proxy.block()
            wait_for(lambda: readyz(replica)[0] == 503, 30, "/readyz to say the database does not answer", fleet)
            assert replica.proc is not None
            replica.proc.send_signal(signal.SIGTERM)
            # A hang check, not a speed test: the stop does not wait on the database.
            assert replica.proc.wait(timeout=15) == 0, fleet.logs()
        assert "Traceback" not in fleet.logs()


# --- leases: who holds what, seen from the database ----------------------------------------------------------


class LeaseWatch:
    """Samples the leases table (on the database's clock) in the background: gaps and changes of hands.

    A lease counts as owned only while its owner's process runs: one left to a dead replica is a gap.
    """

    def __init__(self, pg_url: str, fleet: Fleet, kinds: tuple[str, ...] = ("kinesis_shard", "leader")) -> None:
        self.pg_url = pg_url
        self.fleet = fleet
        self.kinds = kinds
        self.samples: list[tuple[float, dict[tuple[str, str], str | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-watch", daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            while not self._stop.is_set():
                running = {r.replica_id for r in self.fleet.replicas if r.alive}
                rows = conn.execute(
                    "SELECT kind, name, CASE WHEN expires_at > extract(epoch FROM clock_timestamp()) THEN owner END, "
                    "extract(epoch FROM clock_timestamp()) FROM leases WHERE kind = ANY(%s)",
                    (list(self.kinds),),
                ).fetchall()
                if rows:
                    self.samples.append((float(rows[0][3]), {(k, n): o if o in running else None for k, n, o, _ in rows}))
                self._stop.wait(0.1)

    def __enter__(self) -> LeaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def longest_gaps(self) -> dict[tuple[str, str], float]:
        """Per lease: the longest time (database clock) it had no live owner."""
        gaps: dict[tuple[str, str], float] = {}
        since: dict[tuple[str, str], float] = {}
        for t, owners in self.samples:
            for lease, owner in owners.items():
                if owner is None:
                    since.setdefault(lease, t)
                elif lease in since:
                    gaps[lease] = max(gaps.get(lease, 0.0), t - since.pop(lease))
                else:
                    gaps.setdefault(lease, 0.0)
        for lease, t0 in since.items():  # still unowned at the end
            gaps[lease] = max(gaps.get(lease, 0.0), self.samples[-1][0] - t0)
        return gaps

    def handoffs(self) -> int:
        """How many times a lease went from one owner to a different one."""
        last: dict[tuple[str, str], str] = {}
        changes = 0
        for _, owners in self.samples:
            for lease, owner in owners.items():
                if owner is None:
                    continue
                if lease in last and last[lease] != owner:
                    changes += 1
                last[lease] = owner
        return changes


def kinesis_stream(aws: str, shards: int = 4) -> None:
    boto("kinesis", aws).create_stream(StreamName="flowlogs", ShardCount=shards)


def settled(fleet: Fleet) -> bool:
    """4 shards split 2/1/1 over the 3 replicas, and one leader."""
    shards = leases_by_replica(fleet, "kinesis_shard")
    leaders = leases_by_replica(fleet, "leader")
    return sorted(map(len, shards.values())) == [1, 1, 2] and sum(map(len, leaders.values())) == 1


def test_a_rolling_restart_with_sigterm_leaves_no_shard_or_leadership_unowned_longer_than_a_heartbeat(
    aws: str, pg_url: str, tmp_path: Path
) -> None:
    kinesis_stream(aws)
    lease_seconds = 12.0  # renewed every 4 s: one heartbeat (a lease left to a stopped replica: up to 12 s)
    config = {
        "checkpoint": {"url": pg_url},
        "sources": [{"type": "kinesis", "name": "stream", "stream_name": "flowlogs", "endpoint_url": aws}],
        "fleet": {"lease_seconds": lease_seconds},
        "decode_workers": 1,
    }
    with Fleet(tmp_path, config) as fleet:
        wait_for(lambda: settled(fleet), 90, "4 shards and the leader over 3 replicas", fleet)
        with LeaseWatch(pg_url, fleet) as watch:
            for replica in fleet.replicas:
                held = set(leases_by_replica(fleet, "kinesis_shard").get(replica.replica_id, set()))
                assert replica.proc is not None
                replica.proc.send_signal(signal.SIGTERM)
                assert replica.proc.wait(timeout=30) == 0, fleet.logs()  # a hang check
                # Its leases went to the others (a stopped replica holds nothing), then it comes back.
                wait_for(
                    lambda h=held: h <= {n for s in leases_by_replica(fleet, "kinesis_shard").values() for n in s},
                    30,
                    "the stopped replica's shards taken over",
                    fleet,
                )
                replica.start()
                wait_for(lambda r=replica: r.replica_id in leases_by_replica(fleet, "kinesis_shard"), 60, "a share again", fleet)
                wait_for(lambda: settled(fleet), 60, "the fleet settled again", fleet)
        gaps = watch.longest_gaps()
        assert set(gaps) == {("leader", "detector")} | {("kinesis_shard", f"stream/shardId-00000000000{i}") for i in range(4)}
        assert watch.handoffs() >= 3  # every replica's leases changed hands at least once
        heartbeat = lease_seconds / 3
        assert max(gaps.values()) < heartbeat, gaps
    assert "Traceback" not in fleet.logs()


def libfaketime(skew: str) -> dict[str, str]:
    """The environment that runs a process under libfaketime with its wall clock off by `skew` (e.g. "+25s").

    Only the wall clock: a real host with a wrong time still has a steady monotonic clock. Preloaded
    directly (not through the `faketime` wrapper, which would stand between a signal and the process).
    """
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is not installed (scripts/bootstrap.sh --test installs Debian's faketime)")
    return {"LD_PRELOAD": found[0], "FAKETIME": skew, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


class SkewedReplica(Replica):
    """A replica on a host whose wall clock is off by `skew`."""

    def __init__(self, tmp_path: Path, replica_id: str, config: dict[str, Any], skew: str) -> None:
        super().__init__(tmp_path, replica_id, config)
        self.skew = skew

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **libfaketime(self.skew)},
        )


def test_replicas_25_seconds_ahead_and_behind_hand_no_lease_over_for_a_minute(aws: str, pg_url: str, tmp_path: Path) -> None:
    kinesis_stream(aws)
    config = {
        "checkpoint": {"url": pg_url},
        "sources": [{"type": "kinesis", "name": "stream", "stream_name": "flowlogs", "endpoint_url": aws}],
        "fleet": {"lease_seconds": 30},  # the default: skews of 25 s are most of it
        "decode_workers": 1,
    }
    fleet = Fleet(tmp_path, config)
    fleet.replicas[1] = SkewedReplica(tmp_path, "r2", config, "+25s")
    fleet.replicas[2] = SkewedReplica(tmp_path, "r3", config, "-25s")
    with fleet:
        wait_for(lambda: settled(fleet) and len(live_replicas(pg_url)) == 3, 90, "4 shards and the leader over 3 replicas", fleet)
        assert _wall_clock_of(fleet.replicas[1]) - _wall_clock_of(fleet.replicas[2]) > 45  # the skews are real
        with LeaseWatch(pg_url, fleet) as watch:
            wait_for(lambda: len(watch.samples) > 1 and watch.samples[-1][0] - watch.samples[0][0] >= 60, 120, "a minute")
            assert all(r.alive for r in fleet.replicas)
            assert live_replicas(pg_url) == ["r1", "r2", "r3"]  # nobody takes anybody for dead
        assert watch.handoffs() == 0
        assert max(watch.longest_gaps().values()) == 0.0  # and every lease owned all along
        assert settled(fleet)
        leaders = [r.replica_id for r in fleet.replicas if (m := r.scrape()) and m.get("streamer_leader", {}).get((), 0) == 1]
        assert len(leaders) == 1
    assert not any(r.alive for r in fleet.replicas)  # SIGTERM reached the skewed processes themselves
    assert "Traceback" not in fleet.logs()


def live_replicas(pg_url: str) -> list[str]:
    """Replicas seen within the lease time, on the database's clock."""
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT replica_id FROM replicas WHERE seen_at > extract(epoch FROM clock_timestamp()) - 30 ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def _wall_clock_of(replica: Replica) -> float:
    """The replica's own wall clock, read under the same libfaketime set-up."""
    out = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={**os.environ, **libfaketime(getattr(replica, "skew", "+0s"))},
    ).stdout
    return float(out)
