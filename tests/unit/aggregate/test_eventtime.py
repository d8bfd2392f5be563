"""The watermark rules as a table: min over active sources, idleness, never back, wall clock when quiet."""

from __future__ import annotations

import pytest

from streamer.aggregate.eventtime import EventClock

LATE = 100
IDLE = 600


def clock(*deliveries: tuple[str, int, float], sources: tuple[str, ...] = ("a", "b"), follow: bool = True) -> EventClock:
    """A clock started at wall time 0 that saw `deliveries` (source, newest event time, wall time)."""
    c = EventClock(LATE, IDLE, follow, frozenset(sources), started_at=0.0)
    for source, event_time, wall in deliveries:
        c = c.observe(source, event_time, wall).advance(wall)
    return c


CASES = [
    # (what, deliveries, sources, wall time now, expected watermark)
    ("nothing delivered yet: no watermark", [], ("a", "b"), 10, None),
    ("one source delivered, the other not yet: held back", [("a", 5000, 10)], ("a", "b"), 20, None),
    ("both delivered: the minimum minus lateness", [("a", 5000, 10), ("b", 4000, 10)], ("a", "b"), 20, 3900),
    ("a single source: its mark minus lateness", [("a", 5000, 10)], ("a",), 20, 4900),
    ("never-delivering source stops holding after the idle timeout", [("a", 5000, 10)], ("a", "b"), IDLE, 4900),
    ("an idle source stops holding", [("a", 5000, 700), ("b", 4000, 10)], ("a", "b"), 700, 4900),
    ("every source idle: the wall clock", [("a", 5000, 10), ("b", 4000, 10)], ("a", "b"), 60_000, 60_000 - LATE),
    ("the watermark never goes back", [("a", 5000, 10), ("a", 3000, 20)], ("a",), 30, 4900),
    ("a source that comes back behind does not pull it back", [("a", 5000, 5010), ("b", 4000, 5020)], ("a", "b"), 5030, 4900),
]


@pytest.mark.parametrize(("what", "deliveries", "sources", "now", "expected"), CASES, ids=[c[0] for c in CASES])
def test_watermark_rules(
    what: str, deliveries: list[tuple[str, int, float]], sources: tuple[str, ...], now: float, expected: int | None
) -> None:
    assert clock(*deliveries, sources=sources).advance(now).watermark == expected


def test_replay_never_follows_the_wall_clock() -> None:
    """Replaying hours-old data: the wall clock is far ahead, and still nothing is late."""
    c = EventClock(LATE, IDLE, follow_wall_clock=False).observe("replay", 5000, 10_000_000).advance(10_000_000)
    assert c.watermark == 4900
    assert c.advance(20_000_000).watermark == 4900


def test_a_delivery_without_event_time_is_no_activity() -> None:
    c = clock(("a", 5000, 10), ("b", 4000, 10), ("a", 5000, 690)).observe("b", None, 700).advance(700)
    assert c.watermark == 4900  # b is idle: its empty delivery did not keep it active


def test_snapshot_keeps_marks_and_watermark_and_restarts_activity() -> None:
    c = clock(("a", 5000, 10), ("b", 4000, 10))
    again = EventClock(LATE, IDLE, True, frozenset({"a", "b"})).restored(c.snapshot(), now=1_000)
    assert (dict(again.marks), again.watermark) == ({"a": 5000, "b": 4000}, 3900)
    assert again.active(1_000 + IDLE - 1) == ["a", "b"]  # both hold until they have been quiet a whole timeout
    assert again.source_watermarks() == {"a": 4900, "b": 3900}
