"""Replicas committing groups that share done keys never deadlock, and a deadlock forced from outside is retried.

Two stores (two replicas, real PostgreSQL) commit in threads; a third plain
connection holds a key uncommitted so that each commit is caught at a known
point of its claim (the server's own lock waits, read from pg_stat_activity,
say when): the interleaving that made a cycle is reproduced every time, not
by luck.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from streamer.aggregate.state import FlowState
from streamer.store.base import Commit, Done
from streamer.store.postgres import PostgresStore

pytestmark = pytest.mark.integration


def change(keys: list[str]) -> Commit:
    """An input holding these S3 objects' done keys; it counts one 'probe' error, to see it counted once."""
    delta = FlowState()
    delta.count("probe", 1)
    return Commit(delta, [Done("s3", k) for k in keys])


def waiting_on_locks(url: str) -> int:
    """Backends of this database waiting for a lock now (another connection, outside any transaction)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def wait_until(predicate: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def counted(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT replica_id, count FROM decode_errors WHERE reason = 'probe'").fetchall()
    return {str(r): int(n) for r, n in rows}


def done_keys(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return sorted(str(r[0]) for r in conn.execute("SELECT key FROM done").fetchall())


@pytest.fixture
def replicas(pg_url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    a, b = PostgresStore(pg_url, "a"), PostgresStore(pg_url, "b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_groups_sharing_done_keys_in_opposite_orders_commit_one_and_refuse_the_other(
    pg_url: str, replicas: tuple[PostgresStore, PostgresStore], caplog: pytest.LogCaptureFixture
) -> None:
    """b holds y and waits (on z, held by a third connection); a takes x and waits on y. When z is given
    back, b goes on to x: claimed in their own orders, each would hold what the other waits for (PostgreSQL
    aborts one with "deadlock detected"). Claimed in one global order, a waits on b from its first key: b
    commits, a finds its keys counted (refused, nothing of it written)."""
    a, b = replicas
    blocker = psycopg.connect(pg_url)
    try:
        blocker.execute("INSERT INTO done VALUES ('s3', 'z', 'ok', 0)")
        with ThreadPoolExecutor(2) as pool:
            second = pool.submit(b.commit_group, [change(["y", "z", "x"])])
            wait_until(lambda: waiting_on_locks(pg_url) == 1, "b waiting on z")
            first = pool.submit(a.commit_group, [change(["x", "y"])])
            wait_until(lambda: waiting_on_locks(pg_url) == 2, "a waiting on b")
            blocker.rollback()
            refused_a, refused_b = first.result(timeout=60), second.result(timeout=60)
    finally:
        blocker.close()
    assert refused_b == []
    assert [r.index for r in refused_a] == [0]
    assert counted(pg_url) == {"b": 1}
    assert done_keys(pg_url) == ["x", "y", "z"]
    assert a.problem is None  # nobody took a lock conflict for a database outage
    assert b.problem is None
    # no deadlock was needed to get there (a retry after one would end the same way)
    assert not [r for r in caplog.records if "deadlock" in r.getMessage()]


def test_a_deadlock_that_still_happens_is_retried_and_counts_once(
    pg_url: str, replicas: tuple[PostgresStore, PostgresStore]
) -> None:
    """Another session (not ours: a manual fix-up, a migration) takes z, then x after a has taken x and waits
    on z: PostgreSQL aborts a's transaction (it waited first, so its deadlock check runs first). Nothing of it
    was written, so the store claims again, waits for the other session, and commits: counted once, and the
    database is not reported unavailable for it."""
    a, _ = replicas
    other = psycopg.connect(pg_url)
    try:
        other.execute("SET deadlock_timeout = '60s'")  # the cycle is broken on a's side
        other.execute("INSERT INTO done VALUES ('s3', 'z', 'ok', 0)")
        with ThreadPoolExecutor(2) as pool:
            commit = pool.submit(a.commit_group, [change(["x", "z"])])
            wait_until(lambda: waiting_on_locks(pg_url) == 1, "a holding x, waiting on z")
            closing = pool.submit(other.execute, "INSERT INTO done VALUES ('s3', 'x', 'ok', 0)")
            closing.result(timeout=60)  # a was aborted: x is the other session's now
            wait_until(lambda: waiting_on_locks(pg_url) == 1, "a, claiming again, waiting on the other session")
            other.rollback()
            refused = commit.result(timeout=60)
    finally:
        other.close()
    assert refused == []
    assert counted(pg_url) == {"a": 1}
    assert done_keys(pg_url) == ["x", "z"]
    assert a.problem is None


def test_a_renewal_and_a_group_under_two_leases_wait_for_each_other_instead_of_deadlocking(
    pg_url: str, replicas: tuple[PostgresStore, PostgresStore], caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat renews leases a and b while a group commits inputs read under b, then a (the order they
    finished in). Another session's share lock on b holds the renewal at b after it locked a; the group's check
    of b passes (shares do not conflict), and it waits on a. When b is free, a renewal going on to b would wait
    on the group, and the group on the renewal. Both lock in the names' order: the group waits at a, the
    renewal finishes, the group commits; no transaction is aborted and tried again."""
    store, _ = replicas
    kind = "kinesis_shard"
    epochs = {name: store.acquire(kind, name, 60) for name in ("a", "b")}
    other = psycopg.connect(pg_url)
    try:
        other.execute("SELECT 1 FROM leases WHERE name = 'b' FOR SHARE")
        inputs = [dataclasses.replace(change([name]), lease=(kind, name), epoch=epochs[name]) for name in ("b", "a")]
        with ThreadPoolExecutor(2) as pool:
            renewal = pool.submit(store.heartbeat, [(kind, "a"), (kind, "b")], 60)
            wait_until(lambda: waiting_on_locks(pg_url) == 1, "the renewal waiting at b")
            commit = pool.submit(store.commit_group, inputs)
            wait_until(lambda: waiting_on_locks(pg_url) == 2, "the group waiting at a")
            other.rollback()
            kept, _ = renewal.result(timeout=60)
            refused = commit.result(timeout=60)
    finally:
        other.close()
    assert kept == {(kind, "a"), (kind, "b")}
    assert refused == []
    assert counted(pg_url) == {"a": 2}
    assert not [r for r in caplog.records if "tried again" in r.getMessage()]
