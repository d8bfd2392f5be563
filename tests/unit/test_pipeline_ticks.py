"""Event-time ticks in the pipeline, on a real SQLite checkpoint: a tick that only moves the watermark commits
nothing, and loses nothing the next commit must write."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate.anomaly import Settings
from streamer.aggregate.detection import DETECTOR_SNAPSHOT, SNAPSHOT_NAME, Detection
from streamer.aggregate.eventtime import EventClock
from streamer.aggregate.state import FlowState
from streamer.aggregate.windows import window_batch
from streamer.export.telemetry import Telemetry
from streamer.pipeline import Pipeline, Store
from streamer.schema import DEFAULT_FIELDS
from streamer.sources.base import Delivery, single_chunk
from streamer.store.base import Commit, Done
from streamer.store.sqlite import CheckpointStore

T0 = 1_764_000_000
LATENESS = 900
SETTINGS = Settings(window_seconds=60, warmup_windows=2)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as p:
        yield p


def body(end: int) -> bytes:
    line = f"2 123456789012 eni-a 10.0.0.1 10.0.0.2 1024 22 6 1 40 {end - 5} {end} REJECT OK\n"
    return gzip.compress((" ".join(DEFAULT_FIELDS) + "\n" + line * 3).encode())


def clock(now: float) -> EventClock:
    return EventClock(LATENESS, 600, True, frozenset({"s3"}), started_at=now)


async def test_a_tick_that_closes_nothing_keeps_the_detector_to_write_with_the_next_commit(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """A checkpoint written in one blob (before the detector had its own part) is restored with its detector
    unsaved; a tick that moves the watermark but closes no window must not forget that, or the next commit
    writes the windows alone, and the restart after it starts every baseline from nothing."""
    old = Detection.create(SETTINGS, 0)
    for i in range(4):  # a few closed windows: eni-a has a baseline
        ends = pa.array([T0 - 7000 + 60 * i] * 3)
        old, _ = old.advance([window_batch(pa.table({"interface-id": ["eni-a"] * 3, "action": ["REJECT"] * 3, "end": ends}), 60)])
    old, _ = old.flush()
    assert old.detector.baseline_table.num_rows == 1
    store = CheckpointStore(tmp_path / "state.db")
    store.commit(Commit(snapshots={SNAPSHOT_NAME: old.snapshot()}))  # the old layout: one blob, nothing else

    now = [float(T0)]
    restored = Detection.restore(store.snapshot(SNAPSHOT_NAME) or b"", SETTINGS, LATENESS, clock(now[0]), now[0])
    pipe = Pipeline(FlowState(), Store(store), Telemetry(CollectorRegistry()), pool, restored, clock=lambda: now[0])
    now[0] += 700  # every source idle: event time follows the wall clock; no window is open, so none closes
    assert await pipe.tick() == 0
    assert pipe.detection is not None
    assert pipe.detection.windows.watermark == int(now[0]) - LATENESS  # the tick moved the watermark
    assert store.snapshot(DETECTOR_SNAPSHOT) is None  # and committed nothing

    delivery = Delivery("s3://b/k", lambda: single_chunk(body(int(now[0]) - 60)), [Done("s3", "b/k")])
    assert await pipe.process("s3", delivery) == "ok"  # opens a window, closes none
    saved = store.snapshot(DETECTOR_SNAPSHOT)
    assert saved is not None
    again = Detection.restore(store.snapshot(SNAPSHOT_NAME) or b"", SETTINGS, LATENESS, clock(now[0]), now[0], saved)
    assert again.detector.baselines == old.detector.baselines
    # written once: the commit after it writes the windows alone again
    delivery = Delivery("s3://b/k2", lambda: single_chunk(body(int(now[0]) - 50)), [Done("s3", "b/k2")])
    store.commit(Commit(snapshots={DETECTOR_SNAPSHOT: b"marker"}))
    assert await pipe.process("s3", delivery) == "ok"
    assert store.snapshot(DETECTOR_SNAPSHOT) == b"marker"
    pipe.close()
    pipe.store.close()
