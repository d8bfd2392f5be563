"""The checkpoint store's interface: what a finished input changes, and the errors every store raises.

Two stores implement it: SQLite (`store.sqlite`, one process, the embedded
default) and PostgreSQL (`store.postgres`, a fleet of replicas). The
pipeline and the sources see only this module.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from streamer.aggregate.context import ContextRow
from streamer.aggregate.state import FlowState


class CheckpointError(RuntimeError):
    """The store cannot be opened or written (disk full, wrong file, newer schema)."""


class DatabaseUnavailable(CheckpointError):
    """The database did not answer (refused, lost, or silent past a timeout): worth retrying once it answers."""


class TransactionConflict(CheckpointError):
    """The database aborted a transaction to break a deadlock or a serialization conflict: nothing of it was
    written (its outcome is known), so it can be tried again at once; the database itself is fine."""


class StatementTimeout(CheckpointError):
    """The server cancelled a statement that ran past `statement_timeout` (a slow query, a long lock wait):
    nothing of its transaction was written, and the database answered, so it is not "away"."""


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


@dataclasses.dataclass(frozen=True)
class Refused:
    """One input of a group whose claim failed: nothing of the group was written.

    `lease_lost` is why its lease is no longer held; None means counted before
    (a done key that exists, or a compare-and-set cursor that moved).
    """

    index: int
    lease_lost: str | None = None


def merged(changes: Sequence[Commit]) -> Commit:
    """The changes of a group whose claims all held, as one change: the effect of committing them in order.

    Deltas add up; later cursors, snapshots and membership times win (the stores drop snapshot prefixes
    before writing, so a prefix a later change drops also removes what an earlier one wrote under it);
    forgotten interfaces are
    never ones an earlier change of the same group counted (capping forgets only interfaces idle
    at the group's one `now`), so deleting them all before the upserts is exact. The claims
    themselves (done keys, expected cursors, leases) are decided by `store.plan`, for both stores.
    """
    if len(changes) == 1:
        return changes[0]
    delta = FlowState()
    out = Commit(delta)
    for change in changes:
        delta.apply(change.delta)
        out.done.extend(change.done)
        out.cursors.update(change.cursors)
        for prefix in change.drop_snapshots:  # what a later change drops goes, even if an earlier one wrote it
            for name in [n for n in out.snapshots if n.startswith(prefix)]:
                del out.snapshots[name]
        out.drop_snapshots.extend(change.drop_snapshots)
        out.snapshots.update(change.snapshots)
        out.forget.extend(eni for eni in change.forget if eni not in out.forget)
        out.expected.update(change.expected)
        out.partials.extend(change.partials)
    return out


def pause_in_transaction(changes: Sequence[Commit]) -> None:
    """Test-only seam: STREAMER_TEST_COMMIT_PAUSE=PATH makes a group of two or more inputs stop inside its
    transaction (written, not committed), note its size in PATH, and wait there (a test kills the process)."""
    path = os.environ.get("STREAMER_TEST_COMMIT_PAUSE")
    inputs = sum(1 for c in changes if c.done or c.expected)
    if path and inputs >= 2:
        Path(path).write_text(f"{inputs}\n")
        time.sleep(float(os.environ.get("STREAMER_TEST_COMMIT_PAUSE_SECONDS", "30")))


class StateStore(Protocol):
    """What the pipeline and the sources need from a checkpoint: SQLite (one process) or PostgreSQL (a fleet)."""

    def load_state(self) -> FlowState: ...

    def commit(self, change: Commit) -> bool: ...

    def commit_group(self, changes: Sequence[Commit]) -> list[Refused]: ...

    def done_among(self, namespace: str, keys: Iterable[str]) -> set[str]: ...

    def cursors(self, source: str) -> dict[str, str]: ...

    def snapshot(self, name: str) -> bytes | None: ...

    def snapshots(self, prefix: str) -> dict[str, bytes]: ...

    def prune(self, older_than_seconds: float) -> int: ...

    def close(self) -> None: ...

    # the ENI context cache beside the checkpoint (store/context_table.py)
    def contexts(self) -> list[ContextRow]: ...

    def put_seen(self, rows: Sequence[tuple[str, str | None, float]]) -> None: ...

    def put_described(self, rows: Sequence[tuple[str, str, float]]) -> None: ...

    def forget_contexts(self, seen_before: float) -> int: ...
