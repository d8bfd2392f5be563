"""Windows and detector together: one state, one snapshot, advanced per input."""

from __future__ import annotations

import dataclasses
import struct

from streamer.aggregate.anomaly import Anomaly, Detector, Settings
from streamer.aggregate.eventtime import EventClock
from streamer.aggregate.windows import REPLAY_SOURCE, Closed, WindowBatch, Windows

SNAPSHOT_NAME = "detection"


@dataclasses.dataclass(frozen=True)
class Detection:
    windows: Windows
    detector: Detector
    anomalies_total: int = 0

    @classmethod
    def create(cls, settings: Settings, lateness_seconds: int, clock: EventClock | None = None) -> Detection:
        """A fresh state; without `clock`, event time comes from the records only (replay)."""
        clock = clock or EventClock(lateness_seconds, follow_wall_clock=False)
        return cls(Windows(settings.window_seconds, clock), Detector(settings))

    def advance(
        self, batches: list[WindowBatch], source: str = REPLAY_SOURCE, now: float | None = None
    ) -> tuple[Detection, list[Anomaly]]:
        return self._observe(*self.windows.advance(batches, source, now))

    def tick(self, now: float | None = None) -> tuple[Detection, list[Anomaly]]:
        """Move event time with the wall clock where the rules say so; detect on what closed."""
        windows, closed = self.windows.tick(now)
        if windows is self.windows:
            return self, []
        return self._observe(windows, closed)

    def flush(self) -> tuple[Detection, list[Anomaly]]:
        """Close every open window (end of a replay)."""
        return self._observe(*self.windows.flush())

    def _observe(self, windows: Windows, closed: Closed) -> tuple[Detection, list[Anomaly]]:
        detector, anomalies = self.detector.observe(closed)
        return Detection(windows, detector, self.anomalies_total + len(anomalies)), anomalies

    def snapshot(self) -> bytes:
        w, d = self.windows.snapshot(), self.detector.snapshot()
        return struct.pack(">QQ", len(w), self.anomalies_total) + w + d

    @classmethod
    def restore(
        cls, blob: bytes, settings: Settings, lateness_seconds: int, clock: EventClock | None = None, now: float | None = None
    ) -> Detection:
        clock = clock or EventClock(lateness_seconds, follow_wall_clock=False)
        size, anomalies = struct.unpack(">QQ", blob[:16])
        windows = Windows.restore(blob[16 : 16 + size], settings.window_seconds, clock, now)
        detector = Detector.restore(blob[16 + size :], settings)
        return cls(windows, detector, anomalies)
