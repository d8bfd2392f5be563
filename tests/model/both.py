"""One schedule, two stores: the model's steps go to a SQLite world and a PostgreSQL world (one replica) alike.

Each world is checked on its own after every step (safety, monotone /metrics) and at the end (liveness,
same as replay). At the end the two committed outcomes are compared as well: the inputs committed (by
their place in the schedule: S3 done keys hold an ETag that differs between the worlds' bodies), and the
records per ENI. The stores decide group claims (done keys, cursors) each in its own SQL; a difference
here is a difference between the stores, whatever the timing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.postgres import Postgres
from tests.model.fleet import FleetWorld
from tests.model.world import DidNotStop, ServiceDied, Violation, World, check, first_finding


class StoresDiffer(Violation):
    """The same schedule committed different outcomes on SQLite and on PostgreSQL."""


class BothStores:
    """Two worlds driven alike: `sqlite` (World) and `postgres` (FleetWorld with one replica)."""

    def __init__(self, sources: tuple[str, ...], pg: Postgres) -> None:
        self.sqlite = World(sources)
        self.postgres = FleetWorld(sources, pg, replicas=1)
        self.worlds: tuple[World, World] = (self.sqlite, self.postgres)

    async def _each(self, name: str, *args: Any) -> None:
        """A delivery or a fault goes to each world in turn (the same order of inputs in both)."""
        for world in self.worlds:
            await getattr(world, name)(*args)

    async def _both(self, name: str, *args: Any) -> None:
        """Waiting (the services running on) in both worlds at once."""
        await asyncio.gather(*(getattr(world, name)(*args) for world in self.worlds))

    # --- what the model calls ------------------------------------------------------------------

    async def open(self) -> None:
        await self._each("open")

    async def close(self) -> None:
        stuck: list[Exception] = []
        for world in self.worlds:
            try:
                await world.close()
            except (DidNotStop, ServiceDied) as exc:
                stuck.append(exc)
        if stuck:
            raise first_finding(stuck)

    async def quiet(self) -> None:
        await self._both("quiet")

    async def settle(self) -> None:
        await self._both("settle")

    async def s3_object(self, records: int, copies: int) -> None:
        await self._each("s3_object", records, copies)

    async def kinesis_record(self, records: int, which: int) -> None:
        await self._each("kinesis_record", records, which)

    async def reshard(self, split: bool, which: int, then: int = 0) -> None:
        await self._each("reshard", split, which, then)

    async def crash(self, port_taken: bool = False, graceful: bool = False) -> None:
        found: list[Exception] = []
        for step in (self.sqlite.crash(port_taken, graceful), self.postgres.crash(which=0, graceful=graceful)):
            try:  # both worlds take the step, whatever one of them found
                await step
            except Exception as exc:
                found.append(exc)
        if found:
            raise first_finding(found)

    def arm_commit(self, kind: str, skip: int) -> None:
        for world in self.worlds:
            world.arm_commit(kind, skip)

    def arm_memory(self, skip: int) -> None:
        for world in self.worlds:
            world.arm_memory(skip)

    def jump(self, seconds: int) -> None:
        for world in self.worlds:
            world.jump(seconds)

    def check_safety(self) -> None:
        for world in self.worlds:
            world.check_safety()

    async def check_monotone(self) -> None:
        for world in self.worlds:
            await world.check_monotone()

    def check_replay(self) -> None:
        """Each world equals its replay, and the two committed the same inputs and the same records per ENI."""
        for world in self.worlds:
            world.check_replay()
        outcomes = []
        for world in self.worlds:
            state = world.committed()
            inputs = [n for n, item in enumerate(world.inputs) if world.is_committed(item, state)]
            outcomes.append((inputs, state.records))
        (inputs_a, records_a), (inputs_b, records_b) = outcomes
        check(inputs_a == inputs_b, StoresDiffer, f"inputs committed: SQLite {inputs_a}, PostgreSQL {inputs_b}")
        check(records_a == records_b, StoresDiffer, f"records per ENI: SQLite {records_a}, PostgreSQL {records_b}")
