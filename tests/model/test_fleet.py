"""Exactly once in a fleet: the model's schedules with two replicas over one real PostgreSQL.

The same deliveries, faults and checks as test_model.py (fleet.py's world: two real services, each its own
store, leases and pipeline, sharing one database behind a proxy the model can black out), and the faults
of a fleet as rules: a lease lost and taken again under a new epoch, the leader stepping down, the database
away for a while, one replica crashed (and started again, or left down until the end). The committed
counters are summed over the replicas' rows; the leader's event-time windows and paired NACL rejects are
compared with replay too. test_both_stores runs the S3+SQS schedules on SQLite and PostgreSQL alike and
compares what each committed.

CI runs a small fixed number of schedules (MODEL_FLEET_EXAMPLES); scripts/model.sh runs more.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from tests.model.both import BothStores
from tests.model.fleet import FleetWorld
from tests.model.test_model import PROFILE, Model

#: a fleet's schedule costs several times a single process's (two services, a database): a few, fixed
FLEET_PROFILE = settings(PROFILE, max_examples=int(os.environ.get("MODEL_FLEET_EXAMPLES", str(min(3, PROFILE.max_examples)))))


class Fleet(Model):
    """The model with a fleet's world, and the fleet's faults."""

    pg: ClassVar[Any] = None
    replicas: ClassVar[int] = 2

    def make_world(self) -> FleetWorld:
        return FleetWorld(self.sources, self.pg, self.replicas)

    @property
    def fleet(self) -> FleetWorld:
        assert isinstance(self.world, FleetWorld)
        return self.world

    crash = None  # type: ignore[assignment]  # a fleet's crash names its replica: crash_replica

    @rule(which=st.integers(0, 1), busy=st.booleans())
    def crash_replica(self, which: int, busy: bool) -> None:
        """`busy`: an input is in flight when it crashes."""
        self.run(self.fleet.crash(which=which, busy=busy))

    @rule(which=st.integers(0, 1), graceful=st.booleans())
    def replica_down(self, which: int, graceful: bool) -> None:
        """`graceful`: stopped as SIGTERM stops it (its leases handed back), else cancelled."""
        self.run(self.fleet.down(which, graceful))

    @rule(kind=st.sampled_from([None, "kinesis_shard", "leader"]))
    def lease_lost(self, kind: str | None) -> None:
        self.run(self.fleet.lease_lost(kind))

    @precondition(lambda self: "kinesis" in self.sources)
    @rule()
    def lease_taken(self) -> None:
        self.run(self.fleet.lease_taken())

    @rule(seconds=st.sampled_from([0.5, 2.5]), busy=st.booleans())
    def database_away(self, seconds: float, busy: bool) -> None:
        self.run(self.fleet.database_away(seconds, busy))


class FleetS3Sqs(Fleet):
    sources = ("s3",)


class FleetKinesis(Fleet):
    sources = ("kinesis",)


FLEETS = {"s3_sqs": FleetS3Sqs, "kinesis": FleetKinesis}


class BothS3Sqs(Model):
    """The S3+SQS model's schedules on SQLite and on PostgreSQL alike, their outcomes compared (both.py)."""

    sources = ("s3",)
    pg: ClassVar[Any] = None

    def make_world(self) -> BothStores:
        return BothStores(self.sources, self.pg)


@pytest.mark.parametrize("world", sorted(FLEETS))
def test_fleet_model(world: str, postgres_server: Any) -> None:
    machine = FLEETS[world]
    machine.pg = postgres_server
    machine.TestCase.settings = FLEET_PROFILE
    machine.TestCase().runTest()


def test_both_stores(postgres_server: Any) -> None:
    BothS3Sqs.pg = postgres_server
    BothS3Sqs.TestCase.settings = FLEET_PROFILE
    BothS3Sqs.TestCase().runTest()
