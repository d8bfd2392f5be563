"""The embedded store's cursors are compare-and-set, like the fleet's: a moved cursor means "already counted"."""

from __future__ import annotations

from pathlib import Path

from streamer.store.base import Commit
from streamer.store.sqlite import CheckpointStore
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
