"""A replica has its database back within seconds of its return, however long it was away.

psycopg_pool retries a lost connection with a delay that doubles without a ceiling: after an outage of 16 s
its next attempt was 7 s past the database's return, and after a minute's outage a minute past it (found by
the fleet model: 25 short outages in a row left the replicas unable to commit for longer than the model
waits, seed 820138145). The store gives each attempt up after RECONNECT_SECONDS, and the next call starts a
fresh one; opening the pool at start waits as a caller too, for the whole connect limit.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from streamer.store.base import CheckpointError, DatabaseUnavailable
from streamer.store.pgtimeouts import RECONNECT_SECONDS, Timeouts
from streamer.store.postgres import PostgresStore
from tests.integration.slowproxy import Blackhole
from tests.integration.test_fleet_stops import in_thread, proxied

pytestmark = pytest.mark.integration

#: long enough for the unbounded backoff to reach 8 s (attempts 2 s each: at 0, 3, 7, 13, then 23)
OUTAGE_SECONDS = 16.0


def test_after_a_long_outage_the_store_answers_within_seconds_of_the_database(pg_url: str) -> None:
    port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    with Blackhole(port).running() as proxy:
        store = PostgresStore(proxied(pg_url, proxy), "r1", pool_size=2, timeouts=Timeouts(connect_seconds=2))
        try:
            assert store.cursors("s") == {}
            proxy.block()
            away = time.monotonic()
            failures = 0
            while time.monotonic() - away < OUTAGE_SECONDS:  # callers go on calling, as the heartbeat does
                try:
                    in_thread(lambda: store.cursors("s"), 30)
                except DatabaseUnavailable:
                    failures += 1
                time.sleep(0.5)
            assert failures >= 3
            proxy.heal(reset=True)
            back = time.monotonic()
            while True:
                try:
                    assert in_thread(lambda: store.cursors("s"), 30) == {}
                    break
                except DatabaseUnavailable:
                    time.sleep(0.2)
            # a retry at most 2 s after the last failure (psycopg's 1 s, 2 s, then a fresh attempt), a connect
            # and its check: well under the 7 s the unbounded backoff took here
            assert time.monotonic() - back < RECONNECT_SECONDS
        finally:
            in_thread(store.close, 30)


def test_a_replica_starting_before_its_database_opens_it_within_the_connect_limit(pg_url: str) -> None:
    """The database answers 5.5 s after the replica starts (they start together), within `connect_seconds`
    (12). The pool's own wait at opening watched its first attempt alone: given up after 5 s (its tries at
    about 0, 1, 3 and 5 s), nothing tried again and the start failed at 12 s (found by review)."""
    probe = socket.socket()  # bound, not listening: refused, and no other socket takes the port meanwhile
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    proxy = Blackhole(int(pg_url.rsplit(":", 1)[1].split("/")[0]), port=port)
    running = proxy.running()

    listening = threading.Event()

    def database_up() -> None:
        probe.close()
        running.__enter__()
        listening.set()

    opener = threading.Timer(5.5, database_up)
    opener.start()
    url = f"{pg_url.rpartition('@')[0]}@127.0.0.1:{port}/{pg_url.rpartition('/')[2]}"
    try:
        started = time.monotonic()
        try:
            store = PostgresStore(url, "r1", timeouts=Timeouts(connect_seconds=12))
        except CheckpointError as exc:
            raise AssertionError(f"not opened after {time.monotonic() - started:.1f} s: {exc}") from exc
        try:
            assert store.cursors("s") == {}
        finally:
            in_thread(store.close, 30)
    finally:
        opener.join()
        assert listening.is_set(), "the proxy did not listen: a failure above is not the store's"
        running.__exit__(None, None, None)
