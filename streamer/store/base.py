"""The checkpoint store's interface: what a finished input changes, and the errors every store raises.

Two stores implement it: SQLite (`store.sqlite`, one process, the embedded
default) and PostgreSQL (`store.postgres`, a fleet of replicas). The
pipeline and the sources see only this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Protocol

from streamer.aggregate.state import FlowState


class CheckpointError(RuntimeError):
    """The store cannot be opened or written (disk full, wrong file, newer schema)."""


class DatabaseUnavailable(CheckpointError):
    """The database did not answer (refused, lost, or silent past a timeout): worth retrying once it answers."""


class LeaseLost(Exception):
    """The lease an input was read under is held by another replica now: nothing was committed."""


@dataclasses.dataclass(frozen=True)
class Done:
    """An input finished with `outcome` ("ok" or the reason it was given up)."""

    namespace: str
    key: str
    outcome: str = "ok"


@dataclasses.dataclass
class Commit:
    """Everything one finished input changes, applied atomically."""

    delta: FlowState = dataclasses.field(default_factory=FlowState)
    done: list[Done] = dataclasses.field(default_factory=list)
    cursors: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    snapshots: dict[str, bytes] = dataclasses.field(default_factory=dict)
    #: name prefixes of snapshots this commit deletes, before it writes `snapshots` (state kept in pieces)
    drop_snapshots: list[str] = dataclasses.field(default_factory=list)
    #: idle interfaces whose counters and membership are dropped
    forget: list[str] = dataclasses.field(default_factory=list)
    #: fleet: the lease (kind, name) this input was read under; the commit fails if it is no longer held
    lease: tuple[str, str] | None = None
    #: fleet: the lease's epoch when the input was read; a lease lost and won back since has a new one
    epoch: int | None = None
    #: compare-and-set: the value each of these cursors must still have (None: no cursor yet); a cursor
    #: that moved means the input was counted already (the commit changes nothing and returns False)
    expected: dict[tuple[str, str], str | None] = dataclasses.field(default_factory=dict)
    #: fleet: window partials for the leader's detector, (source, encoded partial)
    partials: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)


class StateStore(Protocol):
    """What the pipeline and the sources need from a checkpoint: SQLite (one process) or PostgreSQL (a fleet)."""

    def load_state(self) -> FlowState: ...

    def commit(self, change: Commit) -> bool: ...

    def done_among(self, namespace: str, keys: Iterable[str]) -> set[str]: ...

    def cursors(self, source: str) -> dict[str, str]: ...

    def snapshot(self, name: str) -> bytes | None: ...

    def snapshots(self, prefix: str) -> dict[str, bytes]: ...

    def prune(self, older_than_seconds: float) -> int: ...

    def close(self) -> None: ...
