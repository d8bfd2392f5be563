"""Rejected-traffic spike detection on closed windows, per ENI.

Each ENI has an adaptive baseline of rejected records per window: an EWMA of
the mean and variance (`baseline_alpha`). Windows in which an ENI sent
nothing count as zeros, so a quiet ENI's baseline decays. A closed window is
a spike when the ENI is warmed up (`warmup_windows` windows seen), its
rejected count is at least `min_rejected_records`, and its score

    score = (observed - mean) / max(std, sqrt(mean), 1)

is at least `score_threshold`. The denominator's floor keeps tiny, steady
baselines from turning a handful of rejects into huge scores (a Poisson
count's spread is about sqrt(mean)). A spike updates the baseline only up
to the threshold, so a long attack does not quickly become "normal".
ENIs idle for `idle_seconds` (event time; a day by default, the service's
`metrics.interface_idle_seconds`, never less than the warm-up) are forgotten.

Baselines live in an Arrow table between inputs; while windows close they are
numpy arrays indexed by an integer code per ENI, and each closing window
updates all its ENIs at once, so replaying a day of 2,000 ENIs takes seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamer.aggregate.windows import Closed, to_ipc

IDLE_SECONDS = 86400
MAX_GAP_WINDOWS = 500


@dataclasses.dataclass(frozen=True)
class Settings:
    window_seconds: int = 60
    score_threshold: float = 4.0
    min_rejected_records: int = 50
    warmup_windows: int = 10
    alpha: float = 0.1
    #: event-time seconds without traffic after which an ENI's baseline is forgotten (the service passes
    #: metrics.interface_idle_seconds: the detector holds what the active ENIs need, nothing more); never less
    #: than the warm-up, see `baseline_idle_seconds`
    idle_seconds: float = IDLE_SECONDS

    @property
    def baseline_idle_seconds(self) -> float:
        """How long a quiet ENI keeps its baseline: `idle_seconds`, but at least the warm-up
        (`warmup_windows` windows). Shorter, an ENI that sends in bursts loses its baseline between bursts
        and never warms up, so it never alerts. A floor here, not a config error: the same setting also
        expires the ENI's series, where a short time is a fair choice (fewer series)."""
        return max(self.idle_seconds, self.warmup_windows * self.window_seconds)


@dataclasses.dataclass(frozen=True)
class Baseline:
    mean: float = 0.0
    var: float = 0.0
    windows: int = 0
    last_window: int | None = None


@dataclasses.dataclass(frozen=True)
class Anomaly:
    """A window in which an ENI's rejected traffic spiked: everything an alert needs."""

    interface_id: str
    vpc_id: str | None
    subnet_id: str | None
    window_start: int
    window_end: int
    rejected_records: int
    rejected_packets: int
    rejected_bytes: int
    accepted_records: int
    baseline: float
    baseline_spread: float
    score: float
    top_sources: list[tuple[str, int]]
    top_ports: list[tuple[str, int]]

    def to_json(self) -> dict[str, object]:
        doc = dataclasses.asdict(self)
        doc["baseline"] = round(self.baseline, 3)
        doc["baseline_spread"] = round(self.baseline_spread, 3)
        doc["score"] = round(self.score, 3)
        doc["top_sources"] = [{"address": a, "records": n} for a, n in self.top_sources]
        doc["top_ports"] = [{"port": int(p), "records": n} for p, n in self.top_ports]
        return doc


BASELINES = pa.schema(
    [
        ("interface_id", pa.string()),
        ("mean", pa.float64()),
        ("var", pa.float64()),
        ("windows", pa.int64()),
        ("last_window", pa.int64()),
    ]
)
SCORES = pa.schema([("interface_id", pa.string()), ("score", pa.float64()), ("window_start", pa.int64())])


@dataclasses.dataclass(frozen=True)
class Detector:
    """Baselines and last scores per ENI, as Arrow tables; updated one closing window at a time, vectorized over ENIs."""

    settings: Settings
    baseline_table: pa.Table = dataclasses.field(default_factory=BASELINES.empty_table)
    score_table: pa.Table = dataclasses.field(default_factory=SCORES.empty_table)

    @property
    def baselines(self) -> dict[str, Baseline]:
        return {
            r["interface_id"]: Baseline(r["mean"], r["var"], r["windows"], r["last_window"])
            for r in self.baseline_table.to_pylist()
        }

    @property
    def scores(self) -> dict[str, tuple[float, int]]:
        return {r["interface_id"]: (r["score"], r["window_start"]) for r in self.score_table.to_pylist()}

    def observe(self, closed: Closed) -> tuple[Detector, list[Anomaly]]:
        """Score closed windows (in window order) and update baselines; returns the next detector.

        Every ENI involved (baselines, scores, closed rows) gets an integer code
        once; baselines and scores then live in numpy arrays indexed by code,
        and each window updates its ENIs' slots in place. Joining and
        re-filtering the baseline table per window cost more than the
        arithmetic, for 60 windows per input.
        """
        stats = closed.stats
        if not stats.num_rows:
            return self, []
        s = self.settings
        base, old_scores = self.baseline_table, self.score_table
        starts = stats.column("window_start").to_numpy()
        if len(starts) > 1 and bool(np.any(starts[1:] < starts[:-1])):
            stats = stats.take(np.argsort(starts, kind="stable"))
            starts = stats.column("window_start").to_numpy()
        ids = pa.chunked_array(
            [
                *base.column("interface_id").chunks,
                *old_scores.column("interface_id").chunks,
                *stats.column("interface_id").chunks,
            ],
            pa.string(),
        )
        encoded = pc.dictionary_encode(ids).combine_chunks()
        names, codes = encoded.dictionary, encoded.indices.to_numpy()
        base_codes = codes[: base.num_rows]
        score_codes = codes[base.num_rows : base.num_rows + old_scores.num_rows]
        row_codes = codes[base.num_rows + old_scores.num_rows :]
        k = len(names)
        mean, var = np.zeros(k), np.zeros(k)
        windows = np.zeros(k, np.int64)
        last = np.full(k, np.nan)
        mean[base_codes] = _floats(base.column("mean"))
        var[base_codes] = _floats(base.column("var"))
        windows[base_codes] = _floats(base.column("windows")).astype(np.int64)
        last[base_codes] = _floats(base.column("last_window"))
        score, score_start, scored = np.zeros(k), np.zeros(k, np.int64), np.zeros(k, bool)
        score[score_codes] = _floats(old_scores.column("score"))
        score_start[score_codes] = old_scores.column("window_start").to_numpy(zero_copy_only=False)
        scored[score_codes] = True
        observed_all = _floats(stats.column("rejected_records"))
        bounds = [0, *(np.flatnonzero(starts[1:] != starts[:-1]) + 1).tolist(), len(starts)]
        anomalies: list[Anomaly] = []
        for a, b in itertools.pairwise(bounds):  # a few windows per input, not per ENI
            start = int(starts[a])
            idx = row_codes[a:b]
            m, v, w, l_ = mean[idx], var[idx], windows[idx], last[idx]
            # Windows with no traffic since the last one count as zeros, in closed form (q = 1 - alpha):
            # mean_k = q^k mean, var_k = q^k var + mean^2 q^k (1 - q^k).
            gap = np.where(
                np.isnan(l_), 0, np.clip((start - np.nan_to_num(l_)) // s.window_seconds - 1, 0, MAX_GAP_WINDOWS)
            ).astype(np.int64)
            qk = (1 - s.alpha) ** gap
            v = qk * v + m * m * qk * (1 - qk)
            m = qk * m
            w = w + gap
            observed = observed_all[a:b]
            spread = np.maximum(np.maximum(np.sqrt(v), np.sqrt(m)), 1.0)
            sc = (observed - m) / spread
            warmed = w >= s.warmup_windows
            spike = warmed & (sc >= s.score_threshold) & (observed >= s.min_rejected_records)
            found = [self._anomaly(stats, a + int(i), start, m[i], spread[i], sc[i], closed) for i in np.flatnonzero(spike)]
            anomalies.extend(sorted(found, key=lambda x: x.interface_id))
            # A spike moves the baseline only up to the threshold.
            value = np.where(warmed, np.minimum(observed, m + s.score_threshold * spread), observed)
            diff = value - m
            incr = s.alpha * diff
            mean[idx] = m + incr
            var[idx] = (1 - s.alpha) * (v + diff * incr)
            windows[idx] = w + 1
            last[idx] = start
            score[idx[warmed]] = sc[warmed]
            score_start[idx[warmed]] = start
            scored[idx[warmed]] = True
        newest = int(starts[-1])
        keep = np.flatnonzero(last >= newest - s.baseline_idle_seconds)  # NaN (no baseline) compares False
        base = pa.table(
            {
                "interface_id": names.take(pa.array(keep)),
                "mean": mean[keep],
                "var": var[keep],
                "windows": windows[keep],
                "last_window": last[keep].astype(np.int64),
            },
            schema=BASELINES,
        )
        kept = keep[scored[keep]]
        scores = pa.table(
            {"interface_id": names.take(pa.array(kept)), "score": score[kept], "window_start": score_start[kept]}, schema=SCORES
        )
        return dataclasses.replace(self, baseline_table=base, score_table=scores), anomalies

    def _anomaly(self, stats: pa.Table, i: int, start: int, mean: float, spread: float, score: float, closed: Closed) -> Anomaly:
        row = stats.slice(i, 1).to_pylist()[0]
        eni = row["interface_id"]
        return Anomaly(
            interface_id=eni,
            vpc_id=row["vpc_id"],
            subnet_id=row["subnet_id"],
            window_start=start,
            window_end=start + self.settings.window_seconds,
            rejected_records=int(row["rejected_records"]),
            rejected_packets=int(row["rejected_packets"]),
            rejected_bytes=int(row["rejected_bytes"]),
            accepted_records=int(row["accepted_records"]),
            baseline=float(mean),
            baseline_spread=float(spread),
            score=float(score),
            top_sources=closed.top(eni, start, "sources"),
            top_ports=closed.top(eni, start, "ports"),
        )

    def snapshot(self) -> bytes:
        parts = [to_ipc(self.baseline_table), to_ipc(self.score_table)]
        return struct.pack(">Q", len(parts[0])) + parts[0] + parts[1]

    @classmethod
    def restore(cls, blob: bytes, settings: Settings) -> Detector:
        (size,) = struct.unpack(">Q", blob[:8])
        base = pa.ipc.open_stream(blob[8 : 8 + size]).read_all().cast(BASELINES)
        scores = pa.ipc.open_stream(blob[8 + size :]).read_all().cast(SCORES)
        return cls(settings, base, scores)


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=float)
