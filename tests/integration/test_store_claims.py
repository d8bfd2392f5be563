"""One claim rule: the same group against the same checkpoint is decided alike by SQLite and PostgreSQL.

Each case sets both stores up with the same committed claims (done keys, cursors), commits the same group
to each and compares which members they refuse. The rule itself (store/plan.py) is tested on its own in
tests/unit/store/test_plan.py; here it is checked through both thin SQL layers.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.store.base import Commit, Done, Refused
from streamer.store.postgres import PostgresStore
from streamer.store.sqlite import CheckpointStore
from tests.unit.store.test_plan import members

pytestmark = pytest.mark.integration

S3 = "s3"
P0, P1 = ("s", "0"), ("s", "1")


def obj(key: str) -> Commit:
    return Commit(done=[Done(S3, key)])


def read(cursor: tuple[str, str], before: str | None, after: str, key: str | None = None) -> Commit:
    """A shard's input: moves `cursor` from `before` to `after` (and may also hold a done key)."""
    return Commit(done=[Done(S3, key)] if key else [], cursors={cursor: after}, expected={cursor: before})


#: name -> (what is committed first, the group)
CASES: dict[str, tuple[list[Commit], list[Commit]]] = {
    # the first member holds key k but its cursor moved (counted before): it claims nothing, the second holds k
    "a key held by a member refused for its cursor is the next one's": (
        [read(P0, None, "5")],
        [read(P0, "3", "9", key="k"), obj("k")],
    ),
    # a member refused on one partition moves no other: the next one's expected value is checked as it left it
    "a member refused on one partition moves none of its others": (
        [read(P1, None, "7")],
        [Commit(cursors={P0: "1", P1: "8"}, expected={P0: None, P1: "6"}), read(P0, "1", "2")],
    ),
    "a key done before, and one twice in the group": (
        [obj("old")],
        [obj("old"), obj("new"), obj("new"), obj("other")],
    ),
    "cursors chained through the group": (
        [read(P0, None, "1")],
        [read(P0, "1", "2"), read(P0, "2", "3"), read(P0, "2", "4"), read(P1, None, "1")],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sqlite_and_postgres_refuse_the_same_members_of_a_group(name: str, pg_url: str, tmp_path: Path) -> None:
    before, group = CASES[name]
    lite = CheckpointStore(tmp_path / "c.db")
    pg = PostgresStore(pg_url, "r1")
    try:
        decided: dict[str, list[Refused]] = {}
        for label, store in (("sqlite", lite), ("postgres", pg)):
            for change in before:
                assert store.commit(change)
            decided[label] = store.commit_group(group)
        assert decided["sqlite"] == decided["postgres"], decided
        assert lite.cursors("s") == pg.cursors("s")
    finally:
        lite.close()
        pg.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.lists(members(), max_size=3), group=st.lists(members(), min_size=1, max_size=5))
def test_random_groups_are_decided_alike_by_both_stores(seed: list[Commit], group: list[Commit], pg_url: str) -> None:
    lite = CheckpointStore(Path(":memory:"))
    pg = PostgresStore(pg_url, "r1", pool_size=1)
    try:
        with psycopg.connect(pg_url) as conn:
            conn.execute("TRUNCATE done, cursors")
        for change in seed:
            assert lite.commit(change) == pg.commit(change)
        assert lite.commit_group(group) == pg.commit_group(group)
        assert lite.cursors("s") == pg.cursors("s")
        assert lite.done_among("s3", "abc") == pg.done_among("s3", "abc")
    finally:
        lite.close()
        pg.close()
