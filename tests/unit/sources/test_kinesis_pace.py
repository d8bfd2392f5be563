"""Reading ahead must not break AWS's 5 GetRecords/s per shard: calls are spaced however fast batches commit."""

from __future__ import annotations

import pytest

from streamer.sources.kinesis import MIN_POLL_SECONDS, Pace


def test_calls_are_spaced_by_the_interval_however_soon_they_are_asked_for() -> None:
    now = [100.0]
    pace = Pace(MIN_POLL_SECONDS, lambda: now[0])
    assert pace.delay() == 0.0  # the first call goes at once
    assert pace.delay() == pytest.approx(MIN_POLL_SECONDS)  # asked again at once: waits a whole interval
    now[0] += 0.3  # the second call went at 100.2; asked at 100.3
    assert pace.delay() == pytest.approx(0.1)
    now[0] += 5.0  # long after the last call: at once
    assert pace.delay() == 0.0


def test_five_calls_a_second_at_most() -> None:
    now = [0.0]
    pace = Pace(MIN_POLL_SECONDS, lambda: now[0])
    starts = []
    for _ in range(20):
        now[0] += pace.delay()  # the caller sleeps that long, then calls
        starts.append(now[0])
    assert all(sum(1 for t in starts if w <= t < w + 1.0 - 1e-6) <= 5 for w in starts)  # float sums drift a little
