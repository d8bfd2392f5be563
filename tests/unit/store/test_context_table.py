"""The ENI context cache in SQLite: the records' writer and EC2's writer own separate columns."""

from __future__ import annotations

import time
from pathlib import Path

from streamer.store.sqlite import CheckpointStore


def test_two_writers_never_overwrite_each_other(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state.db")
    now = time.time()
    store.put_seen([("eni-a", '{"vpc_id":"vpc-1"}', now - 5), ("eni-b", None, now - 5)])
    store.put_described([("eni-a", '{"name":"web"}', now - 4)])
    store.put_seen([("eni-a", None, now - 1)])  # no record context this time: what is there stays
    store.put_seen([("eni-b", None, now - 9)])  # an older sighting never moves seen_at back
    rows = {r.interface_id: r for r in store.contexts()}
    assert rows["eni-a"].records == '{"vpc_id":"vpc-1"}'
    assert rows["eni-a"].ec2 == '{"name":"web"}'
    assert rows["eni-a"].seen_at == now - 1
    assert rows["eni-a"].described_at == now - 4
    assert rows["eni-b"].seen_at == now - 5
    assert rows["eni-b"].described_at is None
    store.close()

    reopened = CheckpointStore(tmp_path / "state.db")  # a restart reads it back
    assert {r.interface_id for r in reopened.contexts()} == {"eni-a", "eni-b"}
    assert reopened.forget_contexts(now - 3) == 1  # eni-b: seen 5 s ago
    assert [r.interface_id for r in reopened.contexts()] == ["eni-a"]
    reopened.close()


def test_a_file_of_the_schema_before_gets_the_table(tmp_path: Path) -> None:
    import sqlite3

    store = CheckpointStore(tmp_path / "state.db")
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("DROP TABLE interface_context")  # as a checkpoint written before the cache existed
    db.commit()
    db.close()
    store = CheckpointStore(tmp_path / "state.db")
    store.put_seen([("eni-a", None, time.time())])
    assert [r.interface_id for r in store.contexts()] == ["eni-a"]
    store.close()
