"""The one claim rule on its own (store/plan.py); tests/integration/test_store_claims.py runs it through both stores."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.store.base import Commit, Done, Refused
from streamer.store.plan import Live, Swap, plan, wanted
from streamer.store.sqlite import CheckpointStore

P0, P1 = ("s", "0"), ("s", "1")


def obj(key: str, outcome: str = "ok") -> Commit:
    return Commit(done=[Done("s3", key, outcome)])


def read(cursor: tuple[str, str], before: str | None, after: str, key: str | None = None) -> Commit:
    return Commit(done=[Done("s3", key)] if key else [], cursors={cursor: after}, expected={cursor: before})


def test_a_member_refused_for_its_cursor_claims_none_of_its_done_keys() -> None:
    decided = plan([read(P0, "3", "9", key="k"), obj("k")], Live(cursors={P0: "5"}))
    assert decided.refused == [Refused(0)]


def test_a_member_refused_on_one_partition_moves_none_of_its_others() -> None:
    first = Commit(cursors={P0: "1", P1: "8"}, expected={P0: None, P1: "6"})
    decided = plan([first, read(P0, "1", "2")], Live(cursors={P1: "7"}))
    assert decided.refused == [Refused(0), Refused(1)]


def test_a_member_whose_lease_is_lost_claims_nothing_and_says_why() -> None:
    lost = Commit(done=[Done("s3", "k")], lease=("shard", "s/0"), epoch=3)
    decided = plan([lost, obj("k")], Live(leases={("shard", "s/0", 3): False}), "r1")
    assert decided.refused == [Refused(0, "lease shard/s/0 is no longer r1's")]


def test_keys_done_before_or_earlier_in_the_group_refuse_the_later_member() -> None:
    decided = plan([obj("old"), obj("new"), obj("new"), obj("other")], Live(done=frozenset({("s3", "old")})))
    assert decided.refused == [Refused(0), Refused(2)]


def test_a_group_whose_claims_hold_writes_sorted_keys_and_one_swap_per_cursor_from_the_value_read() -> None:
    group = [obj("b", "gave-up"), read(P1, None, "1"), obj("a"), read(P0, "1", "2"), read(P0, "2", "3")]
    want = wanted(group)
    assert want.done == [("s3", "a"), ("s3", "b")]
    assert want.cursors == [P0, P1]
    decided = plan(group, Live(cursors={P0: "1"}))
    assert decided.refused == []
    assert decided.change is not None
    assert decided.done == [Done("s3", "a"), Done("s3", "b", "gave-up")]
    assert decided.swaps == [Swap("s", "0", "1", "3"), Swap("s", "1", None, "1")]
    assert decided.blind == []


def test_cursors_no_member_compares_are_written_blind_and_unchanged_ones_not_at_all() -> None:
    group = [Commit(cursors={("cw", "g"): "t9"}), Commit(expected={P0: "4"})]
    decided = plan(group, Live(cursors={P0: "4"}))
    assert decided.blind == [("cw", "g", "t9")]
    assert decided.swaps == []


# --- the rule is the one of committing the members one by one ---------------------------------------

KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.sampled_from([None, "1", "2", "3"])


@st.composite
def members(draw: st.DrawFn) -> Commit:
    keys = draw(st.lists(KEYS, max_size=2, unique=True))
    cursors = draw(st.dictionaries(st.sampled_from([P0, P1]), st.tuples(VALUES, st.sampled_from(["1", "2", "3"])), max_size=2))
    return Commit(
        done=[Done("s3", k) for k in keys],
        cursors={key: after for key, (_, after) in cursors.items()},
        expected={key: before for key, (before, _) in cursors.items()},
    )


@settings(max_examples=100, deadline=None)
@given(seed=st.lists(members(), max_size=3), group=st.lists(members(), min_size=1, max_size=5))
def test_a_group_refuses_exactly_the_members_that_committed_one_by_one_would_be_refused(
    seed: list[Commit], group: list[Commit]
) -> None:
    """SQLite, the planner's thin layer: a group, then its survivors, leave the checkpoint as committing each member
    alone, in order, does; and it refuses those a lone commit refuses."""
    alone, grouped = CheckpointStore(Path(":memory:")), CheckpointStore(Path(":memory:"))
    try:
        for change in seed:
            assert alone.commit(change) == grouped.commit(change)
        one_by_one = [i for i, change in enumerate(group) if not alone.commit(change)]
        refused = [r.index for r in grouped.commit_group(group)]
        assert refused == one_by_one
        if refused:  # nothing was written: the caller commits the others again
            assert grouped.commit_group([c for i, c in enumerate(group) if i not in refused]) == []
        assert grouped.cursors("s") == alone.cursors("s")
        assert grouped.done_among("s3", "abc") == alone.done_among("s3", "abc")
    finally:
        alone.close()
        grouped.close()
