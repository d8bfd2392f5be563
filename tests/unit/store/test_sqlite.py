"""The embedded store: cursors are compare-and-set, like the fleet's (a moved cursor means "already counted");
the schema migration keeps totals apart; freed pages go back to the file system."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow as pa

from streamer.aggregate.counters import Counters, count_batch
from streamer.aggregate.state import LOG_STATUS, FlowState
from streamer.store.base import Commit, Done, Refused
from streamer.store.sqlite import VACUUM_EVERY_COMMITS, CheckpointStore
from tests.unit.aggregate.test_state import delta


def test_a_cursor_that_moved_since_the_input_was_read_commits_nothing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state.db")
    shard = ("stream", "shardId-0")
    assert store.commit(Commit(delta({"eni-a": 1}), cursors={shard: "10"}, expected={shard: None}))
    # the same batch again (a retry after an unknown outcome): its cursor is no longer where it was read
    assert not store.commit(Commit(delta({"eni-a": 1}), cursors={shard: "10"}, expected={shard: None}))
    assert not store.commit(Commit(delta({"eni-a": 7}), cursors={shard: "5"}, expected={shard: "3"}))
    assert store.commit(Commit(delta({"eni-a": 2}), cursors={shard: "20"}, expected={shard: "10"}))
    assert store.cursors("stream") == {"shardId-0": "20"}
    assert store.load_state().counters.total_records(("REJECT",)) == 3
    store.close()


def rows(enis: list[str], status: str = "OK") -> FlowState:
    n = len(enis)
    table = pa.table(
        {"interface-id": enis, "action": ["ACCEPT"] * n, "log-status": [status] * n, "packets": [1] * n, "bytes": [1] * n}
    )
    return FlowState(Counters(count_batch(table)))


def test_schema_2_gets_its_totals_from_todays_rows_and_incremental_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = CheckpointStore(path)
    assert store.commit(Commit(rows(["eni-a", "eni-b"])))
    assert store.commit(Commit(rows(["eni-a"], "NODATA")))
    store.close()
    # Make it a schema-2 file as earlier releases wrote it: no totals table, no auto_vacuum.
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TABLE totals")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    db.execute("PRAGMA auto_vacuum=NONE")
    db.execute("VACUUM")
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    db.close()
    store = CheckpointStore(path)
    assert store.load_state().totals == {(LOG_STATUS, "OK"): 2, (LOG_STATUS, "NODATA"): 1}
    assert store._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    assert store._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "3"


def test_forgotten_rows_and_pruned_keys_give_their_pages_back(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state.db")
    enis = [f"eni-{i:05d}" for i in range(20_000)]
    assert store.commit(Commit(rows(enis), [Done("s3", f"key-{i}") for i in range(5_000)]))
    full = store.size_bytes()
    assert store.commit(Commit(forget=enis))
    assert store.prune(older_than_seconds=-1) == 5_000
    assert free_pages(store) == 0  # the prune gave them back
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.size_bytes() < full / 4
    assert store.load_state().counters.table().num_rows == 0


def free_pages(store: CheckpointStore) -> int:
    return int(store._db.execute("PRAGMA freelist_count").fetchone()[0])


def test_commits_give_freed_pages_back_every_so_often(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state.db")
    enis = [f"eni-{i:05d}" for i in range(5_000)]
    assert store.commit(Commit(rows(enis)))
    assert store.commit(Commit(forget=enis))
    assert free_pages(store) > 0
    for _ in range(VACUUM_EVERY_COMMITS - 2):
        assert store.commit(Commit())
    assert free_pages(store) == 0


class _VacuumFails(CheckpointStore):
    def vacuum(self, pages: int = 0) -> int:
        raise sqlite3.OperationalError("database or disk is full")


def test_a_failed_vacuum_after_a_commit_does_not_report_the_commit_as_failed(tmp_path: Path) -> None:
    """The pages are given back after COMMIT: a failure there is logged, and the landed commit stays landed."""
    from streamer.store import sqlite as store_module

    store = _VacuumFails(tmp_path / "state.db")
    for n in range(store_module.VACUUM_EVERY_COMMITS):
        assert store.commit(Commit(done=[Done("s3", f"k{n}")])) is True
    assert store.prune(0) >= 0  # pruning gives pages back the same way
    store.close()


def test_a_group_checks_each_claim_in_order_and_a_refused_one_writes_nothing(tmp_path: Path) -> None:
    """Consecutive batches of one shard in one group chain their cursors; a stale batch or a done key
    already claimed (before, or earlier in the group) is refused, and then nothing of the group is written."""
    store = CheckpointStore(tmp_path / "state.db")
    shard = ("stream", "shardId-0")
    assert store.commit(Commit(delta({"eni-a": 1}), [Done("s3", "old")]))
    first = Commit(delta({"eni-a": 2}), cursors={shard: "10"}, expected={shard: None})
    second = Commit(delta({"eni-b": 3}), cursors={shard: "20"}, expected={shard: "10"})
    stale = Commit(delta({"eni-a": 100}), cursors={shard: "10"}, expected={shard: None})  # first's batch again
    new = Commit(delta({"eni-c": 4}), [Done("s3", "new")])
    twice = Commit(delta({"eni-c": 100}), [Done("s3", "new")])
    again = Commit(delta({"eni-c": 100}), [Done("s3", "old")])
    assert store.commit_group([first, stale, new, twice, second, again]) == [Refused(1), Refused(3), Refused(5)]
    assert store.cursors("stream") == {}
    assert store.done_among("s3", ["new"]) == set()
    assert store.load_state().counters.total_records(("REJECT",)) == 1  # nothing of the group
    assert store.commit_group([first, new, second]) == []
    assert store.cursors("stream") == {"shardId-0": "20"}
    assert store.done_among("s3", ["old", "new"]) == {"old", "new"}
    by_eni = store.load_state().counters.by_interface()
    assert {eni: v["REJECT"]["records"] for eni, v in by_eni.items()} == {"eni-a": 3, "eni-b": 3, "eni-c": 4}
    store.close()


def test_snapshots_under_a_prefix_are_read_together_and_dropped_by_prefix_with_a_commit(tmp_path: Path) -> None:
    """State kept in pieces: a commit drops prefixes before it writes; a duplicate commit drops nothing."""
    store = CheckpointStore(tmp_path / "state.db")
    pieces = {"p/w/1/q1": b"a", "p/w/1/q2": b"b", "p/w/2/q1": b"c", "p/meta": b"m", "p.totals": b"t", "q": b"x"}
    assert store.commit(Commit(done=[Done("s3", "k1")], snapshots=pieces))
    assert store.snapshots("p/") == {n: v for n, v in pieces.items() if n.startswith("p/")}
    assert not store.commit(Commit(done=[Done("s3", "k1")], drop_snapshots=["p/w/1/"]))  # counted before: no change
    assert store.snapshots("p/w/1/") == {"p/w/1/q1": b"a", "p/w/1/q2": b"b"}
    assert store.commit(Commit(done=[Done("s3", "k2")], drop_snapshots=["p/w/1/", "p/w/2/"], snapshots={"p/w/2/q3": b"d"}))
    assert store.snapshots("p/") == {"p/w/2/q3": b"d", "p/meta": b"m"}
    assert store.snapshot("p.totals") == b"t"
    assert store.snapshot("q") == b"x"
    store.close()
