"""The detector: warm-up, spikes with context, steady ENIs quiet, baselines survive restarts."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.aggregate.anomaly import MAX_GAP_WINDOWS, Baseline, Detector, Settings
from streamer.aggregate.detection import DETECTOR_SNAPSHOT, SNAPSHOT_NAME, Detection
from streamer.aggregate.windows import PORTS, SOURCES, STATS, Closed, window_batch

SETTINGS = Settings(window_seconds=60, score_threshold=4, min_rejected_records=50, warmup_windows=5, alpha=0.2)


def traffic(eni: str, window_start: int, rejects: int, accepts: int = 20, source: str = "192.0.2.1"):  # type: ignore[no-untyped-def]
    n = rejects + accepts
    table = pa.table(
        {
            "interface-id": [eni] * n,
            "action": ["REJECT"] * rejects + ["ACCEPT"] * accepts,
            "end": pa.array([window_start + 5] * n, pa.int64()),
            "packets": pa.array([1] * n, pa.int64()),
            "bytes": pa.array([40] * n, pa.int64()),
            "srcaddr": [source] * rejects + ["10.0.0.5"] * accepts,
            "dstport": pa.array([22] * rejects + [443] * accepts, pa.int32()),
        }
    )
    return window_batch(table, 60)


def run(det: Detection, windows: list[list[tuple[str, int]]], start: int = 0):  # type: ignore[no-untyped-def]
    found = []
    for i, per_eni in enumerate(windows):
        det, anomalies = det.advance([traffic(eni, start + i * 60, rejects) for eni, rejects in per_eni])
        found.extend(anomalies)
    det, anomalies = det.flush()
    return det, found + anomalies


def test_spike_on_one_eni_fires_once_with_context_and_steady_enis_stay_quiet() -> None:
    det = Detection.create(SETTINGS, lateness_seconds=0)
    steady = [[("eni-a", 10 + i % 3), ("eni-b", 30 + i % 5)] for i in range(20)]
    steady[15] = [("eni-a", 400), ("eni-b", 31)]
    det, anomalies = run(det, steady)
    assert [(a.interface_id, a.window_start, a.window_end) for a in anomalies] == [("eni-a", 900, 960)]
    a = anomalies[0]
    assert a.rejected_records == 400
    assert 9 < a.baseline < 13
    assert a.top_sources == [("192.0.2.1", 400)]
    assert a.top_ports == [("22", 400)]
    assert "eni-a" in det.detector.scores


def test_no_alert_during_warm_up_or_below_the_floor() -> None:
    det = Detection.create(SETTINGS, lateness_seconds=0)
    _, anomalies = run(det, [[("eni-a", 1)], [("eni-a", 1)], [("eni-a", 500)]])  # not warmed up
    assert anomalies == []
    quiet = [[("eni-q", 0)] for _ in range(10)] + [[("eni-q", 40)]]  # huge score, under min_rejected_records
    _, anomalies = run(Detection.create(SETTINGS, 0), quiet)
    assert anomalies == []


def test_quiet_windows_count_as_zero_so_baselines_decay() -> None:
    det = Detection.create(SETTINGS, lateness_seconds=0)
    det, _ = run(det, [[("eni-a", 100)] for _ in range(10)])
    before = det.detector.baselines["eni-a"].mean
    det, _ = run(det, [[("eni-a", 0)]], start=60 * 30)  # 19 empty windows in between
    assert det.detector.baselines["eni-a"].mean < before * 0.05


def test_a_restart_keeps_the_baselines() -> None:
    windows = [[("eni-a", 10 + i % 3)] for i in range(12)]
    det, _ = run(Detection.create(SETTINGS, lateness_seconds=0), windows)
    restored = Detection.restore(det.snapshot(), SETTINGS, 0)
    assert restored.detector.baselines == det.detector.baselines
    _, anomalies = run(restored, [[("eni-a", 500)]], start=12 * 60)
    assert [a.interface_id for a in anomalies] == ["eni-a"]


def test_detector_snapshot_round_trip() -> None:
    det = Detector(SETTINGS)
    assert Detector.restore(det.snapshot(), SETTINGS) == det


def test_baselines_of_idle_enis_expire_so_the_detector_holds_only_active_ones() -> None:
    settings = Settings(window_seconds=60, warmup_windows=5, alpha=0.2, idle_seconds=600)
    det = Detection.create(settings, lateness_seconds=0)
    # Each ENI sends for three windows, then the next one takes over: 40 ENIs over 120 windows.
    churn = [[(f"eni-{i // 3:03d}", 5)] for i in range(120)]
    det, _ = run(det, churn)
    assert len(det.detector.baselines) <= 600 // 180 + 2  # ENIs seen within the last 600 s, not all 40
    assert set(det.detector.scores) <= set(det.detector.baselines)


def test_a_bursty_eni_warms_up_even_when_the_idle_time_is_shorter_than_the_warm_up() -> None:
    """metrics.interface_idle_seconds of one window: an ENI that sends every fourth window would lose its
    baseline between bursts and never warm up. Baselines are kept for the warm-up (5 windows) at least."""
    settings = Settings(window_seconds=60, min_rejected_records=50, warmup_windows=5, alpha=0.2, idle_seconds=60)
    windows: list[list[tuple[str, int]]] = []
    for i in range(40):  # a steady ENI moves event time every window; the bursty one sends every fourth
        windows.append([("eni-steady", 5), *([("eni-burst", 10)] if i % 4 == 0 else [])])
    windows.append([("eni-steady", 5), ("eni-burst", 400)])
    det, anomalies = run(Detection.create(settings, lateness_seconds=0), windows)
    assert det.detector.baselines["eni-burst"].windows >= settings.warmup_windows
    assert [(a.interface_id, a.window_start) for a in anomalies] == [("eni-burst", 40 * 60)]


def test_snapshot_parts_write_the_detector_only_when_it_changed() -> None:
    det, _ = run(Detection.create(SETTINGS, lateness_seconds=0), [[("eni-a", 10 + i % 3)] for i in range(12)])
    parts = det.snapshot_parts(None)
    assert set(parts) == {SNAPSHOT_NAME, DETECTOR_SNAPSHOT}
    opened, _ = det.advance([traffic("eni-a", 13 * 60, 5)])  # a new window opens, none closes
    assert opened.detector is det.detector
    assert set(opened.snapshot_parts(det)) == {SNAPSHOT_NAME}
    stored = {**parts, **opened.snapshot_parts(det)}
    again = Detection.restore(stored[SNAPSHOT_NAME], SETTINGS, 0, detector=stored[DETECTOR_SNAPSHOT])
    assert again.detector.baselines == det.detector.baselines
    assert again.windows.stats.equals(opened.windows.stats)


def test_a_one_blob_snapshot_is_written_in_parts_at_the_next_commit() -> None:
    """A checkpoint from before the split: its detector is re-saved on the first commit, not lost."""
    det, _ = run(Detection.create(SETTINGS, lateness_seconds=0), [[("eni-a", 10 + i % 3)] for i in range(12)])
    old = Detection.restore(det.snapshot(), SETTINGS, 0)
    moved, _ = old.advance([traffic("eni-a", 13 * 60, 5)])
    parts = moved.snapshot_parts(old)
    assert DETECTOR_SNAPSHOT in parts
    again = Detection.restore(parts[SNAPSHOT_NAME], SETTINGS, 0, detector=parts[DETECTOR_SNAPSHOT])
    assert again.detector.baselines == det.detector.baselines


def _reference(
    settings: Settings, inputs: list[list[dict[str, int]]]
) -> tuple[dict[str, Baseline], dict[str, float], list[tuple[str, int, float]]]:
    """The detector's rule, ENI by ENI in plain Python: what the vectorized detector must compute."""
    s = settings
    base: dict[str, Baseline] = {}
    scores: dict[str, float] = {}
    found: list[tuple[str, int, float]] = []
    window = 0
    for windows in inputs:
        newest = None
        for per_eni in windows:
            start = window * s.window_seconds
            window += 1
            for eni, observed in sorted(per_eni.items()):
                b = base.get(eni, Baseline())
                gap = (
                    0 if b.last_window is None else min(max((start - b.last_window) // s.window_seconds - 1, 0), MAX_GAP_WINDOWS)
                )
                qk = (1 - s.alpha) ** gap
                var, mean, seen = qk * b.var + b.mean * b.mean * qk * (1 - qk), qk * b.mean, b.windows + gap
                spread = max(math.sqrt(var), math.sqrt(mean), 1.0)
                score = (observed - mean) / spread
                warmed = seen >= s.warmup_windows
                if warmed and score >= s.score_threshold and observed >= s.min_rejected_records:
                    found.append((eni, start, score))
                value = min(observed, mean + s.score_threshold * spread) if warmed else observed
                diff = value - mean
                base[eni] = Baseline(mean + s.alpha * diff, (1 - s.alpha) * (var + diff * s.alpha * diff), seen + 1, start)
                if warmed:
                    scores[eni] = score
            newest = start if per_eni else newest
        if newest is not None:
            base = {e: b for e, b in base.items() if b.last_window is not None and b.last_window >= newest - s.idle_seconds}
            scores = {e: v for e, v in scores.items() if e in base}
    return base, scores, found


def _closed(windows: list[dict[str, int]], first: int, settings: Settings) -> Closed:
    rows = [(eni, (first + i) * settings.window_seconds, n) for i, per_eni in enumerate(windows) for eni, n in per_eni.items()]
    rows.reverse()  # the detector must not rely on the order of closed rows
    n = len(rows)
    stats = pa.table(
        {
            "interface_id": [r[0] for r in rows],
            "window_start": pa.array([r[1] for r in rows], pa.int64()),
            "vpc_id": pa.nulls(n, pa.string()),
            "subnet_id": pa.nulls(n, pa.string()),
            "records": pa.array([r[2] + 1 for r in rows], pa.int64()),
            "rejected_records": pa.array([r[2] for r in rows], pa.int64()),
            "rejected_packets": pa.array([r[2] for r in rows], pa.int64()),
            "rejected_bytes": pa.array([40 * r[2] for r in rows], pa.int64()),
            "accepted_records": pa.array([1] * n, pa.int64()),
        },
        schema=STATS,
    )
    return Closed(stats, SOURCES.empty_table(), PORTS.empty_table())


_ENIS = st.sampled_from(["eni-a", "eni-b", "eni-c", "eni-d", "eni-e"])
_WINDOW = st.dictionaries(_ENIS, st.integers(0, 300), max_size=5)


@settings(max_examples=150, deadline=None)
@given(inputs=st.lists(st.lists(_WINDOW, max_size=6), max_size=6), restart=st.integers(0, 6))
def test_the_vectorized_detector_computes_the_rule_eni_by_eni(inputs: list[list[dict[str, int]]], restart: int) -> None:
    rule = Settings(
        window_seconds=60, score_threshold=2.0, min_rejected_records=20, warmup_windows=3, alpha=0.3, idle_seconds=300
    )
    det, found, window = Detector(rule), [], 0
    for i, windows in enumerate(inputs):
        if i == restart:  # a restart in between: baselines and scores come back from the snapshot
            det = Detector.restore(det.snapshot(), rule)
        det, anomalies = det.observe(_closed(windows, window, rule))
        found.extend((a.interface_id, a.window_start, a.score) for a in anomalies)
        window += len(windows)
    base, scores, expected = _reference(rule, inputs)
    assert [(e, w) for e, w, _ in found] == [(e, w) for e, w, _ in expected]
    assert [x for _, _, x in found] == pytest.approx([x for _, _, x in expected])
    assert set(det.baselines) == set(base)
    for eni, b in base.items():
        got = det.baselines[eni]
        assert (got.windows, got.last_window) == (b.windows, b.last_window)
        assert (got.mean, got.var) == (pytest.approx(b.mean), pytest.approx(b.var, abs=1e-9))
    assert {e: v for e, (v, _) in det.scores.items()} == pytest.approx(scores)
