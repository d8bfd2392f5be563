"""Windows and detector together: one state, advanced per input, snapshotted in two parts.

The open windows change with every input (an object's records span the whole
lateness horizon), so their part (`SNAPSHOT_NAME`) is written with every
commit: its size follows the active ENIs times the open windows. The
detector's baselines change only when a window closes, so their part
(`DETECTOR_SNAPSHOT`) is written only then (`snapshot_parts`). Both are
bounded by the active ENIs: windows close with the watermark, and baselines
idle for `Settings.idle_seconds` are dropped.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence

from streamer.aggregate.anomaly import Anomaly, Detector, Settings
from streamer.aggregate.eventtime import EventClock
from streamer.aggregate.windows import REPLAY_SOURCE, Closed, WindowBatch, Windows

SNAPSHOT_NAME = "detection"
#: the detector's baselines and scores, written only when they change
DETECTOR_SNAPSHOT = "detection.baselines"


@dataclasses.dataclass(frozen=True)
class Detection:
    windows: Windows
    detector: Detector
    anomalies_total: int = 0
    #: restored from a one-blob snapshot: the next `snapshot_parts` must write the detector too
    detector_unsaved: bool = dataclasses.field(default=False, compare=False)

    @classmethod
    def create(cls, settings: Settings, lateness_seconds: int, clock: EventClock | None = None) -> Detection:
        """A fresh state; without `clock`, event time comes from the records only (replay)."""
        clock = clock or EventClock(lateness_seconds, follow_wall_clock=False)
        return cls(Windows(settings.window_seconds, clock, idle_seconds=settings.idle_seconds), Detector(settings))

    def advance(
        self, batches: list[WindowBatch], source: str = REPLAY_SOURCE, now: float | None = None
    ) -> tuple[Detection, list[Anomaly]]:
        return self._observe(*self.windows.advance(batches, source, now))

    def advance_many(
        self, inputs: Sequence[tuple[list[WindowBatch], str]], now: float | None = None
    ) -> tuple[Detection, list[list[Anomaly]]]:
        """`advance` by each input in turn (a commit group), the windows folded once (`Windows.advance_many`);
        the anomalies each input's windows closed, in order."""
        windows, closed = self.windows.advance_many(inputs, now)
        detection, found = self, []
        for each in closed:  # the detector reads only what closed
            detection, anomalies = detection._observe(windows, each)
            found.append(anomalies)
        return detection if inputs else self, found

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
        # A detector not yet written stays unwritten until a commit writes it: a step that closes nothing (a
        # tick moving only the watermark) keeps the flag, or the next commit would write the windows alone.
        unsaved = self.detector_unsaved and detector is self.detector
        return Detection(windows, detector, self.anomalies_total + len(anomalies), unsaved), anomalies

    def saved(self) -> Detection:
        """This state once a commit wrote its `snapshot_parts` (the detector is in the store now)."""
        return dataclasses.replace(self, detector_unsaved=False) if self.detector_unsaved else self

    def snapshot(self, with_detector: bool = True) -> bytes:
        """Windows and (unless told otherwise) the detector, in one blob."""
        w, d = self.windows.snapshot(), self.detector.snapshot() if with_detector else b""
        return struct.pack(">QQ", len(w), self.anomalies_total) + w + d

    def snapshot_parts(self, before: Detection | None) -> dict[str, bytes]:
        """What to commit after moving on from `before` (None: everything): the windows always, the
        detector only when it changed (a window closed), so a commit costs what changed."""
        parts = {SNAPSHOT_NAME: self.snapshot(with_detector=False)}
        if before is None or before.detector_unsaved or before.detector is not self.detector:
            parts[DETECTOR_SNAPSHOT] = self.detector.snapshot()
        return parts

    @classmethod
    def restore(
        cls,
        blob: bytes,
        settings: Settings,
        lateness_seconds: int,
        clock: EventClock | None = None,
        now: float | None = None,
        detector: bytes | None = None,
    ) -> Detection:
        """From `snapshot()`, or from `snapshot_parts` (the windows' blob and the `detector` blob, if one was written)."""
        clock = clock or EventClock(lateness_seconds, follow_wall_clock=False)
        size, anomalies = struct.unpack(">QQ", blob[:16])
        windows = Windows.restore(blob[16 : 16 + size], settings.window_seconds, clock, now, settings.idle_seconds)
        embedded = blob[16 + size :]
        rest = embedded or detector
        return cls(windows, Detector.restore(rest, settings) if rest else Detector(settings), anomalies, bool(embedded))
