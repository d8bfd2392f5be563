"""A window partial the leader cannot apply twice is set aside, and the others go on (issue 29, item 2).

Before: the leader stepped down and retried, `take_partials` returned the same oldest rows, no window ever
closed again, and a traceback was logged every second. Now the partial is tried once more (a fault may be
passing), then moved to `window_partials_aside` with the reason (kept for inspection), counted in
`streamer_leader_partials_set_aside_total` and logged once.
"""

from __future__ import annotations

import logging
import time

import pytest
from prometheus_client import CollectorRegistry

from streamer.store.base import Commit
from streamer.store.leader import LeaderCollector
from tests.integration.test_fleet_faults import leader_of, members, partial, records_in, sql

pytestmark = pytest.mark.integration


async def test_a_partial_that_fails_twice_is_set_aside_counted_logged_once_and_the_others_go_on(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = int(time.time()) // 60 * 60 - 600
    with members(pg_url, "r1") as (r1,):
        one = leader_of(r1)
        registry = CollectorRegistry()
        registry.register(LeaderCollector(one))
        assert r1.pg.commit(Commit(partials=[("s", partial(0, base)), ("s", b"written by another version")]))
        assert r1.pg.commit(Commit(partials=[("s", partial(2, base))]))
        (bad,) = [i for (i,) in sql(pg_url, "SELECT id FROM window_partials WHERE body = 'written by another version'")]
        caplog.set_level(logging.INFO, "streamer.store.leader")
        applied = [await one.step() for _ in range(4)]
        assert sum(applied) == 2  # both good partials, once each
        assert records_in(one.detection) == 2 * 400
        assert sql(pg_url, "SELECT count(*) FROM window_partials") == [(0,)]
        aside = sql(pg_url, "SELECT id, source, body, reason FROM window_partials_aside")
        assert [(i, s, bytes(b)) for i, s, b, _ in aside] == [(bad, "s", b"written by another version")]
        assert aside[0][3]  # why, for whoever inspects it
        assert registry.get_sample_value("streamer_leader_partials_set_aside_total") == 1
        told = [r for r in caplog.records if r.levelno >= logging.WARNING and str(bad) in r.getMessage()]
        assert len(told) == 1, [r.getMessage() for r in caplog.records]
        assert told[0].exc_info is None
        assert "\n" not in told[0].getMessage()
