"""A rolling upgrade: replicas still on code from before the `totals` table keep its log-status totals exact.

Such a replica upserts its per-interface counters and nothing else (it never heard of `totals`). Once it is
restarted on today's code it exports its log-status totals from that table, so what it counted meanwhile must
be there: the database adds it (a trigger for sessions that do not say they write totals themselves).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from streamer.aggregate.state import FlowState
from streamer.store.base import Commit
from streamer.store.postgres import PostgresStore
from tests.unit.aggregate.test_state import delta

pytestmark = pytest.mark.integration

#: the counters upsert of a replica on old code (as it was before `totals`)
OLD_UPSERT = (
    "INSERT INTO counters VALUES (%s, %s, 'ACCEPT', %s, %s, 1, 10) ON CONFLICT (replica_id, interface_id, action, log_status) "
    "DO UPDATE SET records = counters.records + excluded.records, packets = counters.packets + excluded.packets, "
    "bytes = counters.bytes + excluded.bytes"
)


def old_replica(url: str, *rows: tuple[Any, ...]) -> None:
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(OLD_UPSERT, rows)


def test_counts_of_a_replica_on_old_code_reach_its_totals_and_todays_code_counts_once(pg_url: str) -> None:
    PostgresStore(pg_url, "new").close()  # today's code migrated the database
    old_replica(pg_url, ("old", "eni-a", "OK", 5), ("old", "eni-b", "OK", 2), ("old", "eni-a", "NODATA", 3))
    old_replica(pg_url, ("old", "eni-a", "OK", 4))  # an update of an existing row adds only its increase
    with psycopg.connect(pg_url) as conn:  # old code forgetting an idle interface never lowers the totals
        conn.execute("DELETE FROM counters WHERE replica_id = 'old' AND interface_id = 'eni-b'")
    store = PostgresStore(pg_url, "old")  # restarted on today's code
    try:
        assert store.load_state().totals == {("log_status", "OK"): 11, ("log_status", "NODATA"): 3}
        change: FlowState = delta({"eni-a": 6})
        assert store.commit(Commit(change))
        want = {("log_status", "OK"): 11 + 6, ("log_status", "NODATA"): 3}
        assert store.load_state().totals == want  # written once, by today's code, not again by the trigger
    finally:
        store.close()


#: the totals upsert of a replica on schema-3 code (from `totals` to migration 4): it writes them itself, in the
#: counters' transaction, and its sessions do not carry today's streamer.totals=on
SCHEMA3_TOTALS = (
    "INSERT INTO totals VALUES (%s, 'log_status', %s, %s) ON CONFLICT (replica_id, name, key) "
    "DO UPDATE SET value = totals.value + excluded.value"
)


def test_a_replica_on_schema_3_code_writing_its_totals_itself_is_not_counted_twice(pg_url: str) -> None:
    """A rolling upgrade from the code just before migration 4: its commits upsert counters and totals in one
    transaction; the database must not add the counters' increase to the totals again."""
    PostgresStore(pg_url, "new").close()
    with psycopg.connect(pg_url) as conn:  # one commit of schema-3 code: 5 + 2 OK records
        conn.cursor().executemany(OLD_UPSERT, [("s3", "eni-a", "OK", 5), ("s3", "eni-b", "OK", 2)])
        conn.execute(SCHEMA3_TOTALS, ("s3", "OK", 7))
    with psycopg.connect(pg_url) as conn:  # its next commit: the totals first, then the counters
        conn.execute(SCHEMA3_TOTALS, ("s3", "OK", 4))
        conn.execute(OLD_UPSERT, ("s3", "eni-a", "OK", 4))
    store = PostgresStore(pg_url, "s3")  # restarted on today's code
    try:
        assert store.load_state().totals == {("log_status", "OK"): 11}
    finally:
        store.close()


def test_schema_2_code_counts_every_row_of_a_transaction_and_todays_code_without_its_option_counts_once(
    pg_url: str,
) -> None:
    """Several counter rows of one status in one old transaction all reach the totals; today's code whose session
    option was lost on the way (a connection pooler that drops startup options) still counts once."""
    PostgresStore(pg_url, "new").close()
    old_replica(pg_url, ("old", "eni-a", "OK", 5), ("old", "eni-b", "OK", 2), ("old", "eni-a", "OK", 1))
    store = PostgresStore(pg_url, "lost")
    try:
        with psycopg.connect(pg_url) as conn:  # what a commit of today's code writes, in a session without the option
            conn.execute(OLD_UPSERT, ("lost", "eni-a", "OK", 6))
            conn.execute(SCHEMA3_TOTALS, ("lost", "OK", 6))
        assert store.load_state().totals == {("log_status", "OK"): 6}
    finally:
        store.close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT value FROM totals WHERE replica_id = 'old' AND key = 'OK'").fetchall()
    assert rows == [(8,)]
