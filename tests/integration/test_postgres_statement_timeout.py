"""A statement the server cancels at `statement_timeout` is a slow call, not the database away.

The store's `problem` (which pauses every store caller until the heartbeat answers) stays None, the call
fails on its own with `StatementTimeout`, and the next call goes through at once.
"""

from __future__ import annotations

import psycopg
import pytest

from streamer.store.base import Commit, DatabaseUnavailable, Done, StatementTimeout
from streamer.store.pgtimeouts import Timeouts
from streamer.store.postgres import PostgresStore

pytestmark = pytest.mark.integration


def test_a_statement_timeout_fails_the_call_without_marking_the_database_away(pg_url: str) -> None:
    store = PostgresStore(pg_url, "r1", timeouts=Timeouts(statement_seconds=0.5))
    try:
        epoch = store.acquire("shard", "s/0", 30)
        assert epoch is not None
        with psycopg.connect(pg_url) as blocker:  # holds the lease row: the commit's lease check waits on it
            blocker.execute("SELECT 1 FROM leases WHERE kind = 'shard' FOR UPDATE")
            with pytest.raises(StatementTimeout) as raised:
                store.commit(Commit(done=[Done("s3", "k")], lease=("shard", "s/0"), epoch=epoch))
            assert not isinstance(raised.value, DatabaseUnavailable)
            assert store.problem is None
        assert store.commit(Commit(done=[Done("s3", "k")], lease=("shard", "s/0"), epoch=epoch))
        assert store.done_among("s3", ["k"]) == {"k"}
    finally:
        store.close()
