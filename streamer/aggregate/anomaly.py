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
ENIs idle for a day (event time) are forgotten.
"""

from __future__ import annotations

import dataclasses
import math

import orjson

from streamer.aggregate.windows import Closed

IDLE_SECONDS = 86400
MAX_GAP_WINDOWS = 500


@dataclasses.dataclass(frozen=True)
class Settings:
    window_seconds: int = 60
    score_threshold: float = 4.0
    min_rejected_records: int = 50
    warmup_windows: int = 10
    alpha: float = 0.1


@dataclasses.dataclass(frozen=True)
class Baseline:
    mean: float = 0.0
    var: float = 0.0
    windows: int = 0
    last_window: int | None = None

    @property
    def spread(self) -> float:
        return max(math.sqrt(self.var), math.sqrt(self.mean), 1.0)

    def step(self, value: float, alpha: float) -> Baseline:
        diff = value - self.mean
        incr = alpha * diff
        return dataclasses.replace(
            self, mean=self.mean + incr, var=(1 - alpha) * (self.var + diff * incr), windows=self.windows + 1
        )


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


@dataclasses.dataclass(frozen=True)
class Detector:
    settings: Settings
    baselines: dict[str, Baseline] = dataclasses.field(default_factory=dict)
    #: last score per warmed-up ENI, with the window it belongs to
    scores: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)

    def observe(self, closed: Closed) -> tuple[Detector, list[Anomaly]]:
        """Score closed windows (in window order) and update baselines; returns the next detector."""
        s = self.settings
        baselines = dict(self.baselines)
        scores = dict(self.scores)
        anomalies: list[Anomaly] = []
        newest = None
        for row in closed.stats.to_pylist():  # one row per ENI and closed window, not per record
            eni = row["interface_id"]
            start = int(row["window_start"])
            newest = start if newest is None else max(newest, start)
            base = baselines.get(eni, Baseline())
            if base.last_window is not None:
                if start <= base.last_window:
                    continue  # already scored (cannot happen with a watermark; kept for safety)
                gap = min((start - base.last_window) // s.window_seconds - 1, MAX_GAP_WINDOWS)
                for _ in range(max(0, gap)):
                    base = base.step(0.0, s.alpha)
            observed = int(row["rejected_records"])
            score = (observed - base.mean) / base.spread
            warmed = base.windows >= s.warmup_windows
            if warmed:
                scores[eni] = (score, start)
            if warmed and score >= s.score_threshold and observed >= s.min_rejected_records:
                anomalies.append(
                    Anomaly(
                        interface_id=eni,
                        vpc_id=row["vpc_id"],
                        subnet_id=row["subnet_id"],
                        window_start=start,
                        window_end=start + s.window_seconds,
                        rejected_records=observed,
                        rejected_packets=int(row["rejected_packets"]),
                        rejected_bytes=int(row["rejected_bytes"]),
                        accepted_records=int(row["accepted_records"]),
                        baseline=base.mean,
                        baseline_spread=base.spread,
                        score=score,
                        top_sources=closed.top(eni, start, "sources"),
                        top_ports=closed.top(eni, start, "ports"),
                    )
                )
            capped = min(float(observed), base.mean + s.score_threshold * base.spread) if warmed else float(observed)
            baselines[eni] = dataclasses.replace(base.step(capped, s.alpha), last_window=start)
        if newest is not None:
            idle = [e for e, b in baselines.items() if b.last_window is not None and b.last_window < newest - IDLE_SECONDS]
            for eni in idle:
                baselines.pop(eni, None)
                scores.pop(eni, None)
        return dataclasses.replace(self, baselines=baselines, scores=scores), anomalies

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "baselines": {k: [b.mean, b.var, b.windows, b.last_window] for k, b in self.baselines.items()},
                "scores": self.scores,
            }
        )

    @classmethod
    def restore(cls, blob: bytes, settings: Settings) -> Detector:
        doc = orjson.loads(blob)
        baselines = {k: Baseline(float(m), float(v), int(n), w) for k, (m, v, n, w) in doc["baselines"].items()}
        scores = {k: (float(sc), int(w)) for k, (sc, w) in doc["scores"].items()}
        return cls(settings, baselines, scores)
