"""The fleet leader's NACL return-reject totals through the real LeaderDetector on real PostgreSQL.

Capped like every per-ENI series (newcomers beyond `max_interfaces` under
"other"), forgotten after `interface_idle_seconds` of the leader's clock,
rewritten only by a step that counted or forgot something, and carried over
by the next leader, also from a snapshot written before the cap.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamer.aggregate.nacl_totals import TOTALS_SNAPSHOT
from streamer.aggregate.pairing import PARTIAL_SOURCE
from streamer.aggregate.state import OTHER_INTERFACE, FlowState
from streamer.aws import AwsClients
from streamer.export.alerts import Alerter
from streamer.export.metrics import InsightsCollector
from streamer.pipeline import Store
from streamer.service import Service, _with_paired
from streamer.settings import AlertsConfig
from streamer.store.base import Commit
from streamer.store.leader import LeaderDetector
from streamer.store.leases import LEADER
from streamer.store.postgres import PostgresStore
from tests.integration.conftest import service_config
from tests.integration.test_fleet_faults import Member, members, sql
from tests.integration.test_fleet_faults import leader_of as fleet_leader
from tests.unit.aggregate.test_pairing import LATENESS
from tests.unit.store.test_leader import pairs_of

pytestmark = pytest.mark.integration

CAP, IDLE = 2, 100.0


class Clock:
    """The leader's wall clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def leader_of(m: Member, clock: Clock) -> LeaderDetector:
    return fleet_leader(m, clock=clock, pairing_lateness_seconds=LATENESS, max_interfaces=CAP, interface_idle_seconds=IDLE)


def exported(leader: LeaderDetector) -> dict[str, float]:
    """`vpcflow_nacl_return_rejects_total` as the leader's /metrics builds it (its replica counted none)."""
    registry = CollectorRegistry()
    registry.register(InsightsCollector(lambda: _with_paired(FlowState(), leader), 0.045, nacl_pairing=True))
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "vpcflow_nacl_return_rejects_total":
                out[s.labels["interface_id"]] = s.value
    return out


def version(url: str) -> int:
    """The transaction that last wrote the totals' snapshot row (PostgreSQL's xmin: every write moves it)."""
    ((xmin,),) = sql(url, "SELECT xmin::text::bigint FROM snapshots WHERE name = %s", TOTALS_SNAPSHOT)
    return int(xmin)


def stored(url: str) -> dict[str, object]:
    ((value,),) = sql(url, "SELECT value FROM snapshots WHERE name = %s", TOTALS_SNAPSHOT)
    return dict(orjson.loads(bytes(value)))


async def test_the_leaders_totals_are_capped_forgotten_when_idle_written_on_change_and_survive_a_leader_change(
    pg_url: str,
) -> None:
    clock = Clock(1000.0)
    scrapes: list[dict[str, float]] = []

    def scrape(leader: LeaderDetector) -> dict[str, float]:
        scrapes.append(exported(leader))
        return scrapes[-1]

    with members(pg_url, "r1", "r2") as (r1, r2):
        one, two = leader_of(r1, clock), leader_of(r2, clock)
        r1.pg.commit(Commit(partials=[(PARTIAL_SOURCE, pairs_of({"eni-a": 3, "eni-b": 2, "eni-c": 1}))]))
        assert await one.step() == 1
        assert scrape(one) == {"eni-a": 3, "eni-b": 2, OTHER_INTERFACE: 1}  # eni-c: beyond the cap
        written = version(pg_url)

        clock.now = 1050.0
        r2.pg.commit(Commit(partials=[(PARTIAL_SOURCE, pairs_of({"eni-d": 2}, requests_only=True))]))
        assert await one.step() == 1  # paired nothing
        assert await one.step() == 0  # took nothing, nobody idle
        assert version(pg_url) == written  # neither step rewrote the totals
        assert scrape(one) == {"eni-a": 3, "eni-b": 2, OTHER_INTERFACE: 1}

        sql(pg_url, "UPDATE leases SET expires_at = 0 WHERE kind = %s", LEADER[0])
        clock.now = 1060.0
        r1.pg.commit(Commit(partials=[(PARTIAL_SOURCE, pairs_of({"eni-c": 2, "eni-a": 1}))]))
        assert await two.step() == 1  # r2 leads: restores membership and counts, then counts on
        assert two.totals is not None
        assert two.totals.seen == {"eni-a": 1060.0, "eni-b": 1000.0}
        assert scrape(two) == {"eni-a": 4, "eni-b": 2, OTHER_INTERFACE: 3}  # eni-c still beyond the cap
        assert stored(pg_url)["seen"] == {"eni-a": 1060.0, "eni-b": 1000.0}

        clock.now = 1100.0
        written = version(pg_url)
        assert await two.step() == 0  # nothing taken, but eni-b is idle: forgotten and written
        assert version(pg_url) != written
        assert scrape(two) == {"eni-a": 4, OTHER_INTERFACE: 3}
        r1.pg.commit(Commit(partials=[(PARTIAL_SOURCE, pairs_of({"eni-e": 1}))]))
        assert await two.step() == 1  # the freed slot goes to a newcomer
        assert scrape(two) == {"eni-a": 4, "eni-e": 1, OTHER_INTERFACE: 3}

        clock.now = 1300.0
        assert await two.step() == 0
        assert scrape(two) == {OTHER_INTERFACE: 3}
        assert stored(pg_url) == {"counts": {OTHER_INTERFACE: 3}, "examples": {}, "seen": {}}
    for before, after in itertools.pairwise(scrapes):  # a series only grows, until it goes
        assert all(after.get(eni, n) >= n for eni, n in before.items()), (before, after)


async def test_a_leader_upgraded_from_totals_without_membership_keeps_their_series_until_idle(pg_url: str) -> None:
    old = {"counts": {"eni-a": 3, "eni-b": 2, "eni-c": 1}, "examples": {"eni-a": "x", "eni-b": "y", "eni-c": "z"}}
    clock = Clock(5000.0)
    with members(pg_url, "r1") as (r1,):
        r1.pg.commit(Commit(snapshots={TOTALS_SNAPSHOT: orjson.dumps(old)}))  # as the previous release left it
        one = leader_of(r1, clock)
        assert await one.step() == 0
        assert exported(one) == {"eni-a": 3, "eni-b": 2, "eni-c": 1}  # more than the cap: each keeps its own
        assert stored(pg_url)["seen"] == dict.fromkeys(("eni-a", "eni-b", "eni-c"), 5000.0)  # rewritten at once
        written = version(pg_url)
        assert await one.step() == 0
        assert version(pg_url) == written
        r1.pg.commit(Commit(partials=[(PARTIAL_SOURCE, pairs_of({"eni-d": 2, "eni-a": 1}))]))
        clock.now = 5050.0
        assert await one.step() == 1
        assert exported(one) == {"eni-a": 4, "eni-b": 2, "eni-c": 1, OTHER_INTERFACE: 2}
        clock.now = 5100.0
        assert await one.step() == 0
        assert exported(one) == {"eni-a": 4, OTHER_INTERFACE: 2}


async def test_the_service_gives_its_leader_the_metrics_cap_and_idle_time(pg_url: str, tmp_path: Path) -> None:
    source = {"type": "kinesis", "name": "stream", "stream_name": "flowlogs"}
    config = service_config(
        tmp_path,
        [source],
        checkpoint={"url": pg_url},
        metrics={"max_interfaces": 7, "interface_idle_seconds": 60},
        insights={"nacl_pairing": True},
    )
    store = Store(PostgresStore(pg_url, "r1"), threads=1)
    try:
        _, leader = await Service(config, AwsClients())._join_fleet(store, Alerter(AlertsConfig(), CollectorRegistry()))
        assert (leader.max_interfaces, leader.interface_idle_seconds, leader.pairing_lateness_seconds) == (7, 60, 900)
    finally:
        store.close()


async def test_by_default_the_fleet_leader_pairs_nothing(pg_url: str, tmp_path: Path) -> None:
    """NACL pairing is opt-in (`insights.nacl_pairing`): without it the leader keeps no pairing state."""
    config = service_config(tmp_path, [{"type": "kinesis", "stream_name": "flowlogs"}], checkpoint={"url": pg_url})
    store = Store(PostgresStore(pg_url, "r1"), threads=1)
    try:
        _, leader = await Service(config, AwsClients())._join_fleet(store, Alerter(AlertsConfig(), CollectorRegistry()))
        assert leader.pairing_lateness_seconds is None
    finally:
        store.close()
