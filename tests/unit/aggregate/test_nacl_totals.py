"""The fleet leader's paired NACL counts: a sticky cap, "other" only grows, idle ENIs go, snapshots restore."""

from __future__ import annotations

import random

import orjson

from streamer.aggregate.nacl_totals import Totals
from streamer.aggregate.pairing import Paired
from streamer.aggregate.state import OTHER_INTERFACE


def paired(counts: dict[str, int]) -> Paired:
    return Paired(counts, {eni: f"{eni} 52.94.1.10:443 -> 10.0.1.5:50001 protocol 6 REJECT" for eni in counts})


def test_newcomers_beyond_the_cap_count_under_other_busiest_first_and_members_keep_theirs() -> None:
    totals = Totals()
    assert totals.add(paired({"eni-a": 1, "eni-b": 5, "eni-c": 3}), 2, now=10.0)
    assert totals.counts == {"eni-b": 5, "eni-c": 3, OTHER_INTERFACE: 1}
    assert totals.seen == {"eni-b": 10.0, "eni-c": 10.0}
    assert set(totals.examples) == {"eni-b", "eni-c"}  # "other" has no example, like a single process's
    # the tail becomes the busiest: no re-ranking, a member keeps its series, "other" grows
    totals.add(paired({"eni-a": 50, "eni-d": 40, "eni-c": 1}), 2, now=20.0)
    assert totals.counts == {"eni-b": 5, "eni-c": 4, OTHER_INTERFACE: 91}
    assert totals.seen == {"eni-b": 10.0, "eni-c": 20.0}


def test_nothing_paired_changes_nothing() -> None:
    totals = Totals()
    totals.add(paired({"eni-a": 2}), 5, now=1.0)
    before = totals.copy()
    assert not totals.add(Paired({}, {}), 5, now=99.0)
    assert totals == before
    assert totals.seen == {"eni-a": 1.0}


def test_members_idle_for_the_idle_time_are_forgotten_and_free_their_slots() -> None:
    totals = Totals()
    totals.add(paired({"eni-a": 3, "eni-b": 2, "eni-x": 1}), 2, now=0.0)  # eni-x: beyond the cap
    totals.add(paired({"eni-a": 1}), 2, now=50.0)
    assert totals.forget_idle(99.0, 100) == []
    assert totals.forget_idle(100.0, 100) == ["eni-b"]  # eni-a was counted at 50
    assert totals.counts == {"eni-a": 4, OTHER_INTERFACE: 1}  # "other" is never forgotten
    assert set(totals.examples) == set(totals.seen) == {"eni-a"}
    totals.add(paired({"eni-c": 7, "eni-d": 1}), 2, now=101.0)  # the freed slot goes to the busiest newcomer
    assert totals.counts == {"eni-a": 4, "eni-c": 7, OTHER_INTERFACE: 2}
    assert totals.forget_idle(201.0, 100) == ["eni-a", "eni-c"]
    assert totals.counts == {OTHER_INTERFACE: 2}
    assert totals.seen == totals.examples == {}


def test_no_count_ever_decreases_and_every_pair_is_counted_somewhere_under_churn() -> None:
    """500 steps over 2,000 short-lived ENIs, cap 50: membership stays bounded, a series only grows until it
    goes, "other" only grows, and what is exported plus what was forgotten is everything paired."""
    rng = random.Random(7)
    totals, limit, idle = Totals(), 50, 30.0
    paired_sum = forgotten_sum = 0
    last: dict[str, int] = {}
    for step in range(500):
        now = float(step)
        batch = {f"eni-{rng.randrange(step * 4, step * 4 + 40):05d}": rng.randint(1, 5) for _ in range(rng.randint(0, 8))}
        totals.add(paired(batch), limit, now)
        paired_sum += sum(batch.values())
        before = dict(totals.counts)
        gone = totals.forget_idle(now, idle)
        forgotten_sum += sum(before[eni] for eni in gone)
        assert len(totals.seen) <= limit
        assert set(totals.counts) - {OTHER_INTERFACE} == set(totals.seen)
        for eni, n in totals.counts.items():
            assert n >= last.get(eni, 0), (step, eni)
        for eni in gone:
            last.pop(eni, None)
        last.update(totals.counts)
        assert sum(totals.counts.values()) + forgotten_sum == paired_sum
    assert totals.counts[OTHER_INTERFACE] > 0
    assert len(totals.counts) < 100  # of the ~2,000 ENIs seen


def test_a_snapshot_restores_membership_stamps_counts_and_examples() -> None:
    totals = Totals()
    totals.add(paired({"eni-a": 3, "eni-b": 2, "eni-c": 1}), 2, now=5.5)
    totals.add(paired({"eni-a": 1}), 2, now=8.0)
    back = Totals.restore(totals.snapshot(), now=1000.0)
    assert back == totals
    assert back.seen == {"eni-a": 8.0, "eni-b": 5.5}
    assert not back.stale
    back.add(paired({"eni-d": 9}), 2, now=1001.0)  # the cap is still full after the restore
    assert back.counts == {"eni-a": 4, "eni-b": 2, OTHER_INTERFACE: 10}


def test_a_snapshot_from_before_the_cap_restores_its_enis_as_members_seen_now() -> None:
    """A rolling upgrade: the old leader wrote counts and examples only."""
    old = orjson.dumps({"counts": {"eni-a": 3, "eni-b": 2, "eni-c": 1}, "examples": {"eni-a": "x", "eni-b": "y", "eni-c": "z"}})
    back = Totals.restore(old, now=500.0)
    assert back.stale  # the next commit rewrites it with the stamps
    assert back.counts == {"eni-a": 3, "eni-b": 2, "eni-c": 1}
    assert back.seen == dict.fromkeys(("eni-a", "eni-b", "eni-c"), 500.0)
    back.add(paired({"eni-b": 1, "eni-d": 4}), 2, now=600.0)  # more than the cap: all keep theirs, newcomers go to "other"
    assert back.counts == {"eni-a": 3, "eni-b": 3, "eni-c": 1, OTHER_INTERFACE: 4}
    assert back.forget_idle(650.0, 150) == ["eni-a", "eni-c"]  # idle since the restore
    assert Totals.restore(back.snapshot(), now=0.0) == back


def test_without_a_cap_every_eni_is_a_member_and_still_forgotten_when_idle() -> None:
    totals = Totals()
    totals.add(paired({f"eni-{i}": 1 for i in range(20)}), None, now=0.0)
    assert len(totals.seen) == 20
    assert OTHER_INTERFACE not in totals.counts
    assert len(totals.forget_idle(10.0, 10)) == 20
