"""Group commit on the fleet's PostgreSQL (real server, real store and pipeline in this process).

- a group holding an input whose lease another replica holds, and an input
  whose done key another input of the group claimed: only those two are
  dropped (LEASE_LOST, DUPLICATE); the others commit once, exactly;
- a group writes each table once: one COPY and one upsert for counters,
  interfaces and insights, one INSERT for every done key, whatever the number
  of inputs (counted in the server's own statement log).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg.conninfo import conninfo_to_dict

from streamer.aggregate.state import FlowState
from streamer.commit_group import Limits
from streamer.export.telemetry import Telemetry
from streamer.pipeline import DUPLICATE, Pipeline
from streamer.schema import DEFAULT_FIELDS
from streamer.sources.base import LEASE_LOST, Delivery, single_chunk
from streamer.store.base import Done
from tests.integration.test_fleet_faults import members, sql, totals_of

pytestmark = pytest.mark.integration

HOUR = 3600.0
SHARD = "kinesis_shard"


def body(eni: str, n: int, end: int = 1_764_000_000) -> bytes:
    lines = "".join(f"2 123456789012 {eni} 10.0.0.1 10.0.0.2 1024 22 6 1 40 {end - 5} {end} REJECT OK\n" for _ in range(n))
    return gzip.compress((" ".join(DEFAULT_FIELDS) + "\n" + lines).encode())


def object_delivery(key: str, eni: str, n: int) -> Delivery:
    data = body(eni, n)
    return Delivery(location=f"s3://b/{key}", body=lambda: single_chunk(data), done=[Done("s3", key)], size=len(data))


def shard_delivery(shard: str, epoch: int | None, eni: str, n: int) -> Delivery:
    data = body(eni, n)
    return Delivery(
        location=f"kinesis://s/{shard}",
        body=lambda: single_chunk(data),
        cursors={("s", shard): "10"},
        expected={("s", shard): None},
        lease=(SHARD, f"s/{shard}"),
        epoch=epoch,
        size=len(data),
    )


def inputs_per_commit(telemetry: Telemetry) -> list[tuple[str, float]]:
    return [(s.name, s.value) for m in telemetry.commit_inputs.collect() for s in m.samples if not s.name.endswith("_bucket")]


async def test_a_lost_lease_and_a_duplicate_claim_drop_only_their_inputs_from_the_group(pg_url: str) -> None:
    with members(pg_url, "r1", "r2") as (r1, r2):
        mine = await r1.store.call(r1.pg.acquire, SHARD, "s/0", 30)
        assert mine is not None
        assert await r2.store.call(r2.pg.acquire, SHARD, "s/1", 30) is not None
        pipe = Pipeline(
            FlowState(), r1.store, r1.telemetry, r1.pool, partials_window_seconds=60, group=Limits(delay_seconds=HOUR)
        )
        deliveries = [
            shard_delivery("0", mine, "eni-shard0", 10),
            shard_delivery("1", 1, "eni-shard1", 20),  # r2's shard: not r1's to count
            object_delivery("k1", "eni-k1", 30),
            object_delivery("k1", "eni-k1", 30),  # the same object again, in the same group
            object_delivery("k2", "eni-k2", 40),
        ]
        outcomes = await asyncio.gather(*(pipe.process("s", d) for d in deliveries))
        assert (outcomes[0], outcomes[1], sorted(outcomes[2:4]), outcomes[4]) == ("ok", LEASE_LOST, [DUPLICATE, "ok"], "ok")
        expected = {
            ("eni-shard0", "REJECT"): [10, 10, 400],
            ("eni-k1", "REJECT"): [30, 30, 1200],
            ("eni-k2", "REJECT"): [40, 40, 1600],
        }
        assert totals_of(pipe.state) == expected
        assert totals_of(await r1.store.call(r1.pg.load_state)) == expected
        assert await r1.cursors("s") == {"0": "10"}
        assert sql(pg_url, "SELECT key FROM done ORDER BY key") == [("k1",), ("k2",)]
        assert sql(pg_url, "SELECT count(*) FROM window_partials") == [(3,)]  # one per counted input
        assert inputs_per_commit(r1.telemetry) == [("streamer_commit_inputs_count", 1.0), ("streamer_commit_inputs_sum", 3.0)]


async def test_a_group_writes_each_table_with_one_staged_upsert(pg_url: str, postgres_server: Any) -> None:
    database = conninfo_to_dict(pg_url)["dbname"]
    sql(pg_url, f"ALTER DATABASE {database} SET log_statement = 'all'")  # new sessions log every statement
    log = postgres_server.log
    with members(pg_url, "r1") as (r1,):
        offset = log.stat().st_size
        telemetry = Telemetry(CollectorRegistry())
        with ThreadPoolExecutor(2) as pool:
            pipe = Pipeline(
                FlowState(),
                r1.store,
                telemetry,
                pool,
                partials_window_seconds=60,
                max_interfaces=5000,
                insights_window_seconds=60,
                nacl_pairing=True,
                group=Limits(delay_seconds=HOUR),
            )
            n = 6
            outcomes = await asyncio.gather(*(pipe.process("s", insight_delivery(f"k{i}", i)) for i in range(n)))
        assert outcomes == ["ok"] * n
        assert inputs_per_commit(telemetry) == [("streamer_commit_inputs_count", 1.0), ("streamer_commit_inputs_sum", float(n))]
        written = log.read_text(errors="replace")[offset:]
        committed = await r1.store.call(r1.pg.load_state)

    def statements(fragment: str) -> int:
        return sum(1 for line in written.splitlines() if fragment in line and ("statement:" in line or "execute" in line))

    assert statements("COPY staged_counters") == 1
    assert statements("INSERT INTO counters SELECT") == 1
    assert statements("COPY staged_interfaces") == 1
    assert statements("INSERT INTO interfaces SELECT") == 1
    assert statements("COPY staged_insights") == 1
    assert statements("INSERT INTO insights SELECT") == 1
    assert statements("INSERT INTO done") == 1
    assert statements("INSERT INTO totals") == len(pipe.state.totals)  # one per key, not per key and input
    # the leader's queue keeps each input's partials (windows, and pairing candidates with insights on)
    partials = sql(pg_url, "SELECT count(*) FROM window_partials")[0][0]
    assert statements("INSERT INTO window_partials") == partials >= n
    assert totals_of(committed) == totals_of(pipe.state)
    assert committed.insights.num_rows == pipe.state.insights.num_rows > 0
    assert committed.seen.keys() == pipe.state.seen.keys()


def insight_delivery(key: str, i: int) -> Delivery:
    """An object of the insight cases (v5 fields): per-ENI counters, membership and insight rows."""
    from streamer.schema import V5_ALL_FIELDS
    from streamer.synth import insight_cases, insight_table, to_lines

    cases, _ = insight_cases(1_764_000_000 + i * 120)
    text = " ".join(V5_ALL_FIELDS) + "\n" + "\n".join(to_lines(insight_table(cases)).to_pylist()) + "\n"
    data = gzip.compress(text.encode())
    return Delivery(location=f"s3://b/{key}", body=lambda: single_chunk(data), done=[Done("s3", key)], size=len(data))


async def test_a_key_claimed_first_by_an_input_whose_lease_is_lost_leaves_it_to_the_next_claim(pg_url: str) -> None:
    """An object listed under a partition lease another replica now holds, and the same object from a source
    without a lease (an S3 event), in one group: the first is not counted here (LEASE_LOST), so its claim is
    none: the second counts the object, once."""
    with members(pg_url, "r1", "r2") as (r1, r2):
        theirs = await r2.store.call(r2.pg.acquire, "s3_partition", "s/0", 30)
        assert theirs is not None
        pipe = Pipeline(
            FlowState(), r1.store, r1.telemetry, r1.pool, partials_window_seconds=60, group=Limits(delay_seconds=HOUR)
        )
        listed = dataclasses.replace(object_delivery("k1", "eni-k1", 30), lease=("s3_partition", "s/0"), epoch=theirs)
        deliveries = [listed, object_delivery("k1", "eni-k1", 30)]
        outcomes = await asyncio.gather(*(pipe.process("s", d) for d in deliveries))
        assert outcomes == [LEASE_LOST, "ok"]
        assert totals_of(await r1.store.call(r1.pg.load_state)) == {("eni-k1", "REJECT"): [30, 30, 1200]}
        assert sql(pg_url, "SELECT key FROM done ORDER BY key") == [("k1",)]
