"""The one claim rule of a group commit, as a pure function: both stores only read for it and write what it says.

A store reads, inside its transaction, what the group's claims are judged against (`Live`: which of the
group's done keys exist, each expected cursor's value, whether each lease is held under its epoch), asks
`plan` which members are refused, and, when none is, writes the plan's rows (PostgreSQL reads the done keys
by inserting them, the only way to lock a key that does not exist yet: a refusal rolls them back). So SQLite
and PostgreSQL cannot decide a group differently, and the rule can be tested without a database.

The rule, member by member in the group's order:
- a member whose lease is not held (or held under another epoch) is refused for it (`lease_lost`);
- else a member is refused as counted before when one of its done keys exists, or was claimed by an
  earlier member that was not refused, or when one of its expected cursors does not have the value the
  checkpoint has, as the earlier members that were not refused leave it;
- a refused member claims nothing: its done keys and cursors are as if it were not in the group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from streamer.store.base import Commit, Done, Refused, merged

Key = tuple[str, str]
#: a lease as read: (kind, name) and the epoch the input was read under (None: any)
LeaseRead = tuple[str, str, int | None]


@dataclasses.dataclass(frozen=True)
class Wanted:
    """What a group's claims are judged against, each kind sorted (the order rows are locked in)."""

    leases: list[LeaseRead]
    done: list[Key]
    cursors: list[Key]


@dataclasses.dataclass(frozen=True)
class Live:
    """The checkpoint as the transaction sees it, for the group's claims only."""

    #: the group's done keys that exist already
    done: frozenset[Key] = frozenset()
    #: each expected cursor's value (absent or None: no cursor yet)
    cursors: Mapping[Key, str] = dataclasses.field(default_factory=dict)
    #: each lease reading -> whether it is held under that epoch (absent: held; a store without leases)
    leases: Mapping[LeaseRead, bool] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Swap:
    """A compare-and-set cursor: from the value the transaction read to the group's last value."""

    source: str
    partition: str
    before: str | None
    after: str


@dataclasses.dataclass(frozen=True)
class Plan:
    """Refused members (then nothing is written), or the rows to write."""

    refused: list[Refused]
    #: the group's merged change (counters, snapshots, partials, blind cursors, ...); None when refused
    change: Commit | None = None
    #: done rows to insert, sorted (the lock order): none of them exists
    done: list[Done] = dataclasses.field(default_factory=list)
    #: compare-and-set cursors, sorted (the lock order); unchanged ones left out
    swaps: list[Swap] = dataclasses.field(default_factory=list)
    #: cursors set without a check (inputs that read no cursor under compare-and-set), sorted
    blind: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


def wanted(changes: Sequence[Commit]) -> Wanted:
    """The rows the group's claims are judged against."""
    leases = {(*c.lease, c.epoch) for c in changes if c.lease is not None}
    return Wanted(
        leases=sorted(leases, key=lambda r: (r[0], r[1], -1 if r[2] is None else r[2])),
        done=sorted({(d.namespace, d.key) for c in changes for d in c.done}),
        cursors=sorted({key for c in changes for key in c.expected}),
    )


def plan(changes: Sequence[Commit], live: Live, holder: str = "this replica") -> Plan:
    """The group decided by the one claim rule (module docstring) against `live`."""
    refused: list[Refused] = []
    claimed: dict[Key, Done] = {}
    cursors: dict[Key, str | None] = dict(live.cursors)
    for index, change in enumerate(changes):
        if change.lease is not None and not live.leases.get((*change.lease, change.epoch), True):
            refused.append(Refused(index, f"lease {change.lease[0]}/{change.lease[1]} is no longer {holder}'s"))
            continue
        keys = [(d.namespace, d.key) for d in change.done]
        if any(k in live.done or k in claimed for k in keys) or any(
            cursors.get(key) != before for key, before in change.expected.items()
        ):
            refused.append(Refused(index))
            continue
        for d in change.done:
            claimed.setdefault((d.namespace, d.key), d)
        for key in change.expected:
            cursors[key] = change.cursors.get(key, cursors.get(key))
    if refused:
        return Plan(refused)
    change = merged(changes)
    expected = {key for c in changes for key in c.expected}
    swaps = [
        Swap(*key, live.cursors.get(key), after)
        for key in sorted(expected)
        if (after := cursors.get(key)) is not None and after != live.cursors.get(key)
    ]
    blind = sorted((s, p, v) for (s, p), v in change.cursors.items() if (s, p) not in expected)
    return Plan([], change, [claimed[k] for k in sorted(claimed)], swaps, blind)
