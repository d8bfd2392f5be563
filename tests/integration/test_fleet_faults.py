"""The fleet under network faults, clock skew and restarts: real PostgreSQL, real processes, moto.

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

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.integration.slowproxy import Blackhole
from tests.integration.test_fleet import wait_for

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
    from streamer.store.base import CheckpointError, Commit
    from streamer.store.pgtimeouts import Timeouts
    from streamer.store.postgres import PostgresStore

    port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    with Blackhole(port).running() as proxy:
        store = PostgresStore(proxied(pg_url, proxy), "r1", timeouts=Timeouts(connect_seconds=2, statement_seconds=2))
        try:
            assert store.acquire("kinesis_shard", "s/0", 60)
            assert store.problem is None
            # A call in flight when the network goes: it waits on a row lock held (directly) elsewhere, then
            # its answer can never come back. The replica cuts it at the statement timeout.
            with psycopg.connect(pg_url) as holder:
                holder.execute("SELECT * FROM leases FOR UPDATE")
                failed: list[BaseException] = []
                call = threading.Thread(target=_commit, args=(store, Commit(lease=("kinesis_shard", "s/0")), failed), daemon=True)
                call.start()
                wait_for(lambda: _waiting_on_a_lock(holder), 30, "the commit to wait on the lock")
                proxy.block()
                call.join(30)
                assert not call.is_alive(), "the commit still hangs"
                holder.rollback()
            assert [type(e).__name__ for e in failed] == ["CheckpointError"]
            assert store.problem == "no answer from the database within 2 s"
            with pytest.raises(CheckpointError):  # a new call: the pool's check of its idle connection is cut too
                in_thread(lambda: store.commit(Commit()), 30)
            assert store.problem == "no database connection within 2 s"
            with pytest.raises(psycopg.OperationalError):  # and the heartbeat's own connection
                in_thread(lambda: store.heartbeat([], 3), 30)
            proxy.heal(reset=True)  # every connection open during the outage is dead now
            wait_for(lambda: _answers(store), 30, "the store to answer again")
            # Pooled connections are checked before use: the dead ones were replaced, no call fails on one.
            for _ in range(8):
                assert store.cursors("s") == {}
            kept, live = store.heartbeat([("kinesis_shard", "s/0")], 60)
            assert (kept, live) == ({("kinesis_shard", "s/0")}, ["r1"])
            assert store.problem is None
        finally:
            in_thread(store.close, 30)


def _commit(store: Any, change: Any, failed: list[BaseException]) -> None:
    try:
        store.commit(change)
    except BaseException as exc:
        failed.append(exc)


def _waiting_on_a_lock(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    ).fetchone()
    return row is not None and int(row[0]) > 0


def _answers(store: Any) -> bool:
    try:
        store.cursors("s")
    except psycopg.OperationalError:
        return False
    return True
