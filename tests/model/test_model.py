"""Exactly once, checked by machine: random schedules of deliveries and faults through the whole pipeline.

Hypothesis drives the real sources, pipeline, group commit and SQLite store (world.py) against fake AWS
(fakes.py) and shrinks a failing schedule to a minimal one. After every step: safety (what was
acknowledged upstream is committed; the committed counters are exactly the committed inputs') and
monotone /metrics; at the end, liveness (with the faults stopped everything is acknowledged and counted)
and the committed counters equal replay of the same inputs.

Each world runs one kind of source (so that a CI budget of examples is spent where each fault bites);
`scripts/model.sh` runs them for longer with random seeds. MODEL_PROFILE=ci (default) is derandomized:
CI runs the same schedules every time; MODEL_PROFILE=long draws new ones (`--hypothesis-seed`) and keeps
what it finds in .hypothesis/model.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.internal.conjecture import engine
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.model.world import DidNotStop, ServiceDied, Violation, World

ROOT = Path(__file__).resolve().parents[2]
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("MODEL_EXAMPLES", "12")),
    stateful_step_count=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("MODEL_EXAMPLES", "100000")),
    stateful_step_count=25,
    deadline=None,
    database=DirectoryBasedExampleDatabase(str(ROOT / ".hypothesis" / "model")),
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
PROFILE = settings.get_profile(os.environ.get("MODEL_PROFILE", "ci"))
# A failing schedule costs a liveness timeout per shrink step: bound the shrinking (Hypothesis's own cap is 300 s).
engine.MAX_SHRINKING_SECONDS = int(os.environ.get("MODEL_SHRINK_SECONDS", "60"))

records = st.integers(1, 3)


class Model(RuleBasedStateMachine):
    """Deliveries and faults as rules; the invariants run after every step."""

    sources: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.world = self.make_world()
        #: the first violation of each kind, and the step it was seen after; raised at the end of the schedule,
        #: so that every schedule draws the same steps whatever the timing (a replay that fails one step later
        #: would otherwise look like a different schedule to Hypothesis)
        self.violations: dict[type[Exception], tuple[int, Exception]] = {}
        self.steps = 0
        self.run(self.world.open())

    def make_world(self) -> Any:
        return World(self.sources)

    def run(self, step: Coroutine[Any, Any, Any]) -> Any:
        async def with_time() -> Any:
            out = await step
            await self.world.quiet()  # the service runs on until nothing is in flight
            return out

        self.steps += 1
        self.found(lambda: self.loop.run_until_complete(with_time()))

    def found(self, check: Callable[[], None]) -> None:
        """Run a step or a check; what fails is kept for the end of the schedule (any exception: a world that
        raises mid-schedule would draw fewer steps than its replay, which Hypothesis calls flaky generation).
        Once a service did not stop, the rest of the schedule is not run (steps are still drawn): it would
        only add findings about a world with a stuck service in it."""
        if DidNotStop in self.violations:
            return
        try:
            check()
        except Exception as exc:
            self.violations.setdefault(type(exc), (self.steps, exc))

    # --- deliveries ----------------------------------------------------------------------------

    @precondition(lambda self: "s3" in self.sources)
    @rule(n=records, copies=st.integers(1, 2))
    def s3_object(self, n: int, copies: int) -> None:
        self.run(self.world.s3_object(n, copies))

    @precondition(lambda self: "kinesis" in self.sources)
    @rule(n=records, shard=st.integers(0, 3))
    def kinesis_record(self, n: int, shard: int) -> None:
        self.run(self.world.kinesis_record(n, shard))

    @precondition(lambda self: "firehose" in self.sources)
    @rule(n=records, concurrent=st.booleans())
    def firehose_request(self, n: int, concurrent: bool) -> None:
        self.run(self.world.firehose_request(n, concurrent))

    @precondition(lambda self: "firehose" in self.sources)
    @rule(which=st.integers(0, 5))
    def firehose_again(self, which: int) -> None:
        self.run(self.world.firehose_again(which))

    # --- faults --------------------------------------------------------------------------------

    @rule(kind=st.sampled_from(["before", "after"]), skip=st.integers(0, 2))
    def commit_fails(self, kind: str, skip: int) -> None:
        """The skip+1-th group commit from now fails before it lands, or lands and then raises."""
        self.world.arm_commit(kind, skip)
        self.run(_nothing())

    @rule(skip=st.integers(0, 1))
    def decode_worker_memory_error(self, skip: int) -> None:
        self.world.arm_memory(skip)
        self.run(_nothing())

    @precondition(lambda self: "kinesis" in self.sources)
    @rule(split=st.booleans(), shard=st.integers(0, 3), then=st.integers(0, 2))
    def reshard(self, split: bool, shard: int, then: int) -> None:
        self.run(self.world.reshard(split, shard, then))

    @rule(port_taken=st.booleans(), graceful=st.booleans())
    def crash(self, port_taken: bool, graceful: bool) -> None:
        """Cancelled (a crash), or stopped as SIGTERM stops it (`graceful`), then started again."""
        self.run(self.world.crash(port_taken and "firehose" in self.sources, graceful))

    @rule(seconds=st.sampled_from([31, 301]))
    def clock_jump(self, seconds: int) -> None:
        """AWS's clock moves: held messages reappear (31 s), shard iterators expire (301 s)."""
        self.world.jump(seconds)
        self.run(_nothing())

    @rule()
    def settle(self) -> None:
        self.run(self.world.settle())

    # --- properties ----------------------------------------------------------------------------

    @invariant()
    def safe(self) -> None:
        self.found(self.world.check_safety)

    @invariant()
    def monotone(self) -> None:
        self.found(lambda: self.loop.run_until_complete(self.world.check_monotone()))

    def teardown(self) -> None:
        try:
            self.run(self.world.settle())
            self.found(self.world.check_replay)
        finally:
            try:
                self.loop.run_until_complete(self.world.close())
            except (DidNotStop, ServiceDied) as exc:  # the service did not stop (cleanly) at the end of the schedule
                self.violations.setdefault(type(exc), (self.steps, exc))
            self.loop.close()
        if self.violations:
            step, first = min(self.violations.values(), key=lambda v: v[0])
            if isinstance(first, Violation):
                raise type(first)(f"after step {step}: {first}") from first
            raise first


async def _nothing() -> None:
    return None


class S3Sqs(Model):
    sources = ("s3",)


class Kinesis(Model):
    sources = ("kinesis",)


class Firehose(Model):
    sources = ("firehose",)


WORLDS = {"s3_sqs": S3Sqs, "kinesis": Kinesis, "firehose": Firehose}


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_model(world: str) -> None:
    machine = WORLDS[world]
    machine.TestCase.settings = PROFILE
    machine.TestCase().runTest()
