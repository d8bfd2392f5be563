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
