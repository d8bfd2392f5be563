"""Windows and detector together: one state, one snapshot, advanced per input."""

from __future__ import annotations

import dataclasses
import struct

from streamer.aggregate.anomaly import Anomaly, Detector, Settings
from streamer.aggregate.windows import WindowBatch, Windows

SNAPSHOT_NAME = "detection"


@dataclasses.dataclass(frozen=True)
class Detection:
    windows: Windows
    detector: Detector
    anomalies_total: int = 0

    @classmethod
    def create(cls, settings: Settings, lateness_seconds: int) -> Detection:
        return cls(Windows(settings.window_seconds, lateness_seconds), Detector(settings))

    def advance(self, batches: list[WindowBatch]) -> tuple[Detection, list[Anomaly]]:
        windows, closed = self.windows.advance(batches)
        detector, anomalies = self.detector.observe(closed)
        return Detection(windows, detector, self.anomalies_total + len(anomalies)), anomalies

    def flush(self) -> tuple[Detection, list[Anomaly]]:
        """Close every open window (end of a replay)."""
        windows, closed = self.windows.flush()
        detector, anomalies = self.detector.observe(closed)
        return Detection(windows, detector, self.anomalies_total + len(anomalies)), anomalies

    def snapshot(self) -> bytes:
        w, d = self.windows.snapshot(), self.detector.snapshot()
        return struct.pack(">QQ", len(w), self.anomalies_total) + w + d

    @classmethod
    def restore(cls, blob: bytes, settings: Settings, lateness_seconds: int) -> Detection:
        size, anomalies = struct.unpack(">QQ", blob[:16])
        windows = Windows.restore(blob[16 : 16 + size], settings.window_seconds, lateness_seconds)
        detector = Detector.restore(blob[16 + size :], settings)
        return cls(windows, detector, anomalies)
