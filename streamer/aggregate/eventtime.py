"""Event time for the whole service: per-source marks, idleness, and the watermark.

Flow logs arrive minutes late, out of order, and each source at its own lag
(S3 objects 5-10 min, CloudWatch 1-10 min). A single "newest time seen"
watermark fails in three ways that Flink/Beam users know well; the rules
here avoid each by default:

1. *One broken clock.* A record more than `max_future_skew_seconds` ahead of
   the wall clock never moves event time (the windows code keeps it out of
   every window; it still counts in the totals).
2. *A lagging source.* Each source keeps its own mark (its newest event
   time); the watermark is the minimum over the sources that are active,
   minus `lateness_seconds`. A source with nothing new for
   `idle_timeout_seconds` stops holding it back. A source that has delivered
   nothing since start holds it back until `idle_timeout_seconds` have passed
   (its first listing may take a while, and that backlog must not be late).
3. *A quiet period.* When every source is idle, event time follows the wall
   clock, so the newest windows close (and alert) without more traffic.

Replay runs on event time only (`follow_wall_clock=False`): its one source is
never idle, so replaying hours-old data never makes it late.

The watermark never goes back. `EventClock` is immutable; marks and the
watermark are snapshotted with the windows, wall-clock activity is not (after a
restart every source counts as just started).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

DEFAULT_IDLE_TIMEOUT_SECONDS = 600
DEFAULT_MAX_FUTURE_SKEW_SECONDS = 300
#: name of the combined watermark in metrics
ALL_SOURCES = "all"


@dataclasses.dataclass(frozen=True)
class EventClock:
    lateness_seconds: int
    idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS
    #: False in replay: event time comes from the records only
    follow_wall_clock: bool = True
    #: sources that hold the watermark (configured ones; replay adds its own)
    sources: frozenset[str] = frozenset()
    #: newest event time delivered per source (seconds)
    marks: Mapping[str, int] = dataclasses.field(default_factory=dict)
    #: wall time of each source's last delivery that carried event time (not snapshotted)
    active_at: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: wall time the clock started (restored clocks start anew)
    started_at: float = 0.0
    watermark: int | None = None

    def observe(self, source: str, max_time: int | None, now: float) -> EventClock:
        """A delivery from `source` whose newest (trusted) event time is `max_time`."""
        if max_time is None:
            return self if source in self.sources else dataclasses.replace(self, sources=self.sources | {source})
        old = self.marks.get(source)
        marks = {**self.marks, source: max_time if old is None else max(old, max_time)}
        return dataclasses.replace(
            self, sources=self.sources | {source}, marks=marks, active_at={**self.active_at, source: now}
        )

    def active(self, now: float) -> list[str]:
        """Sources that hold the watermark at wall time `now`."""
        if not self.follow_wall_clock:
            return sorted(self.sources)
        return sorted(s for s in self.sources if now - self.active_at.get(s, self.started_at) < self.idle_timeout_seconds)

    def candidate(self, now: float) -> int | None:
        """The watermark the rules give at `now`, before the never-go-back rule."""
        active = self.active(now)
        if active:
            if any(s not in self.marks for s in active):
                return None  # a source that has delivered nothing yet holds everything back
            return min(self.marks[s] for s in active) - self.lateness_seconds
        if self.follow_wall_clock and self.sources:
            return int(now) - self.lateness_seconds  # every source idle: follow the wall clock
        if self.marks:
            return max(self.marks.values()) - self.lateness_seconds
        return None

    def advance(self, now: float) -> EventClock:
        """The clock with its watermark moved to what the rules give at `now` (never back)."""
        cand = self.candidate(now)
        if cand is None or (self.watermark is not None and cand <= self.watermark):
            return self
        return dataclasses.replace(self, watermark=cand)

    def source_watermarks(self) -> dict[str, int]:
        """Each source's own watermark (its mark minus the lateness)."""
        return {s: m - self.lateness_seconds for s, m in sorted(self.marks.items()) if s in self.sources}

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        return {"marks": dict(self.marks), "watermark": self.watermark}

    def restored(self, doc: Mapping[str, object], now: float) -> EventClock:
        """This clock's settings with the marks and watermark of a snapshot; every source starts anew at `now`."""
        marks = doc.get("marks") or {}
        wm = doc.get("watermark")
        assert isinstance(marks, dict)
        return dataclasses.replace(
            self,
            marks={str(k): int(v) for k, v in marks.items()},
            watermark=None if wm is None else int(str(wm)),
            active_at={},
            started_at=now,
        )
