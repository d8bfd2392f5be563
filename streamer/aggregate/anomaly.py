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
`metrics.interface_idle_seconds`) are forgotten.

Baselines live in an Arrow table and each closing window updates all its ENIs
at once (a join plus numpy), so replaying a day of 2,000 ENIs takes seconds.
"""

from __future__ import annotations

import dataclasses
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
    #: metrics.interface_idle_seconds: the detector holds what the active ENIs need, nothing more)
    idle_seconds: float = IDLE_SECONDS


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
        """Score closed windows (in window order) and update baselines; returns the next detector."""
        stats = closed.stats
        if not stats.num_rows:
            return self, []
        base, scores, anomalies = self.baseline_table, self.score_table, []
        for start in sorted(set(stats.column("window_start").to_pylist())):  # a few per input, not per ENI
            rows = stats.filter(pc.equal(stats.column("window_start"), start))
            base, scores, found = self._step(base, scores, rows, int(start), closed)
            anomalies.extend(found)
        newest = int(pc.max(stats.column("window_start")).as_py())
        active = pc.greater_equal(base.column("last_window"), newest - self.settings.idle_seconds)
        base = base.filter(active)
        scores = scores.filter(pc.is_in(scores.column("interface_id"), base.column("interface_id")))
        return dataclasses.replace(self, baseline_table=base, score_table=scores), anomalies

    def _step(
        self, base: pa.Table, scores: pa.Table, rows: pa.Table, start: int, closed: Closed
    ) -> tuple[pa.Table, pa.Table, list[Anomaly]]:
        s = self.settings
        joined = rows.join(base, "interface_id", join_type="left outer")
        mean = np.nan_to_num(joined.column("mean").to_numpy(zero_copy_only=False).astype(float))
        var = np.nan_to_num(joined.column("var").to_numpy(zero_copy_only=False).astype(float))
        windows = np.nan_to_num(joined.column("windows").to_numpy(zero_copy_only=False).astype(float)).astype(np.int64)
        last = joined.column("last_window").to_numpy(zero_copy_only=False).astype(float)
        # Windows with no traffic since the last one count as zeros, in closed form (q = 1 - alpha):
        # mean_k = q^k mean, var_k = q^k var + mean^2 q^k (1 - q^k).
        gap = np.where(
            np.isnan(last), 0, np.clip((start - np.nan_to_num(last)) // s.window_seconds - 1, 0, MAX_GAP_WINDOWS)
        ).astype(np.int64)
        qk = (1 - s.alpha) ** gap
        var = qk * var + mean * mean * qk * (1 - qk)
        mean = qk * mean
        windows = windows + gap
        observed = joined.column("rejected_records").to_numpy(zero_copy_only=False).astype(float)
        spread = np.maximum(np.maximum(np.sqrt(var), np.sqrt(mean)), 1.0)
        score = (observed - mean) / spread
        warmed = windows >= s.warmup_windows
        spike = warmed & (score >= s.score_threshold) & (observed >= s.min_rejected_records)
        anomalies = [self._anomaly(joined, int(i), start, mean[i], spread[i], score[i], closed) for i in np.flatnonzero(spike)]
        # A spike moves the baseline only up to the threshold.
        value = np.where(warmed, np.minimum(observed, mean + s.score_threshold * spread), observed)
        diff = value - mean
        incr = s.alpha * diff
        updated = pa.table(
            {
                "interface_id": joined.column("interface_id"),
                "mean": mean + incr,
                "var": (1 - s.alpha) * (var + diff * incr),
                "windows": windows + 1,
                "last_window": np.full(len(mean), start, dtype=np.int64),
            },
            schema=BASELINES,
        )
        keep = pc.invert(pc.is_in(base.column("interface_id"), updated.column("interface_id")))
        base = pa.concat_tables([base.filter(keep), updated])
        warm_ids = updated.column("interface_id").filter(pa.array(warmed))
        new_scores = pa.table(
            {"interface_id": warm_ids, "score": score[warmed], "window_start": np.full(int(warmed.sum()), start, dtype=np.int64)},
            schema=SCORES,
        )
        scores = pa.concat_tables([scores.filter(pc.invert(pc.is_in(scores.column("interface_id"), warm_ids))), new_scores])
        return base, scores, anomalies

    def _anomaly(self, joined: pa.Table, i: int, start: int, mean: float, spread: float, score: float, closed: Closed) -> Anomaly:
        row = joined.slice(int(i), 1).to_pylist()[0]
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
