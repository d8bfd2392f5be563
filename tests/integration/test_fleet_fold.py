"""Rows of replicas gone longer than a retention are folded into one shared set of rows (issue 29, item 9).

Per-replica counters, membership, insights, totals and skipped-line counts used to stay forever: the k8s
Deployment names replicas after pods, so every rollout left a set behind. The leader now folds a replica gone
(not seen, or left cleanly) longer than `fleet.replica_retention_seconds` into the rows of `FOLDED`: every
sum over replicas is unchanged, and the folded interfaces are forgotten when idle like everyone's, so the rows
follow the live replicas and the active ENIs.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from streamer.aggregate.state import FlowState
from streamer.store.base import Commit
from streamer.store.leases import LEADER
from streamer.store.postgres import FOLDED, PostgresStore
from tests.integration.test_fleet_faults import leader_of, members, sql
from tests.unit.aggregate.test_state import mixed

pytestmark = pytest.mark.integration

PER_REPLICA = {
    "counters": "interface_id, action, log_status",
    "decode_errors": "reason",
    "insights": "kind, key1, key2",
    "totals": "name, key",
}
VALUES = {"counters": "records, packets, bytes", "decode_errors": "count", "insights": "records, bytes", "totals": "value"}


def sums(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """Every per-replica table summed over the replicas."""
    out = {}
    for table, keys in PER_REPLICA.items():
        summed = ", ".join(f"sum({v})" for v in VALUES[table].split(", "))
        out[table] = set(sql(url, f"SELECT {keys}, {summed} FROM {table} GROUP BY {keys}"))
    return out


def replicas_in(url: str) -> set[str]:
    tables = [*PER_REPLICA, "interfaces"]
    return {r for t in tables for (r,) in sql(url, f"SELECT DISTINCT replica_id FROM {t}")}


def counted(store: PostgresStore, eni: str, statuses: list[str], seen: float) -> None:
    change: FlowState = mixed(eni, statuses, "vpc-1")
    change.seen = {eni: seen}
    assert store.commit(Commit(change))


async def test_the_leader_folds_replicas_gone_past_the_retention_and_every_sum_stays(pg_url: str) -> None:
    now = time.time()
    with members(pg_url, "r1", "r2", "r3") as (r1, r2, r3):
        for m in (r1, r2, r3):
            await m.coordinator.heartbeat()
        counted(r1.pg, "eni-a", ["OK", "OK"], now)
        counted(r2.pg, "eni-a", ["OK", "NODATA"], now)
        counted(r2.pg, "eni-b", ["OK"], now - 10)
        counted(r3.pg, "eni-c", ["OK"], now)
        before = sums(pg_url)
        sql(pg_url, "UPDATE replicas SET seen_at = seen_at - 1000 WHERE replica_id = 'r2'")  # r2 died long ago
        await r3.coordinator.leave()  # r3 left cleanly just now: within the retention, kept
        one = leader_of(r1, replica_retention_seconds=500)
        await one.step()
        assert replicas_in(pg_url) == {"r1", "r3", FOLDED}
        assert sums(pg_url) == before
        assert sql(pg_url, "SELECT replica_id FROM replicas ORDER BY 1") == [("r1",), ("r3",)]
        assert r1.pg.load_state().counters.table().num_rows == 1  # the live ones keep their own rows

        sql(pg_url, "UPDATE replicas SET left_at = left_at - 1000 WHERE replica_id = 'r3'")
        one.fold_at = 0  # the next step folds again (they are a minute apart)
        await one.step()
        assert replicas_in(pg_url) == {"r1", FOLDED}
        assert sums(pg_url) == before  # folded into the same shared rows, added up

        # folded interfaces idle past interface_idle_seconds are forgotten; totals never lower
        sql(pg_url, f"UPDATE interfaces SET last_seen = last_seen - 100000 WHERE replica_id = '{FOLDED}'")
        one.fold_at = 0
        await one.step()
        assert sql(pg_url, f"SELECT count(*) FROM counters WHERE replica_id = '{FOLDED}'") == [(0,)]
        assert sql(pg_url, f"SELECT count(*) FROM interfaces WHERE replica_id = '{FOLDED}'") == [(0,)]
        after = sums(pg_url)
        assert after["totals"] == before["totals"]
        assert after["decode_errors"] == before["decode_errors"]
        assert not [r for r in after["insights"] if r[1] in {"eni-b", "eni-c"}]  # per-ENI insights go with them
        assert r1.coordinator.owns(*LEADER)
