"""`Pairing.pair` against a plain-Python model of its rule, on random inputs with many colliding keys.

The model is the module's rule written out with sets: a reply pairs with a request of the same key whose
window is the same or at most the lateness earlier, whichever arrives first, each reject once; windows
older than the newest minus the lateness are dropped after each input. Its speed-ups (which windows a
reply can reach, every waiting reply looked up at once) must count exactly what the rule counts.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from streamer.aggregate.pairing import Candidates, Pairing, _distinct, _stretches

W = 60
LATENESS = 180

Request = tuple[int, int]  # window, key
Reply = tuple[int, int, str]  # window, key, eni


def model(inputs: list[tuple[list[Request], list[Reply]]], lateness: int) -> Counter[str]:
    requests: dict[int, set[int]] = {}
    waiting: dict[int, list[tuple[str, int]]] = {}
    newest: int | None = None
    counts: Counter[str] = Counter()
    for reqs, reps in inputs:
        seen = [w for w, _ in reqs] + [w for w, _, _ in reps]
        if not seen:
            continue
        newest = max(seen) if newest is None else max(newest, *seen)
        added: dict[int, set[int]] = {}
        for w, k in reqs:
            if k not in requests.setdefault(w, set()):
                requests[w].add(k)
                added.setdefault(w, set()).add(k)
        hit = [any(k in keys for q, keys in requests.items() if 0 <= w - q <= lateness) for w, k, _ in reps]
        counts.update(e for (_, _, e), h in zip(reps, hit, strict=True) if h)
        for w, rows in waiting.items():
            paired = [any(0 <= w - q <= lateness and k in new for q, new in added.items()) for _, k in rows]
            counts.update(e for (e, _), p in zip(rows, paired, strict=True) if p)
            waiting[w] = [row for row, p in zip(rows, paired, strict=True) if not p]
        for (w, k, e), h in zip(reps, hit, strict=True):
            if not h:
                waiting.setdefault(w, []).append((e, k))
        floor = newest - lateness
        for w in [w for w in {*requests, *waiting} if w < floor]:
            requests.pop(w, None)
            waiting.pop(w, None)
    return +counts


def candidates(reqs: list[Request], reps: list[Reply]) -> Candidates:
    windows = np.array([w for w, _ in reqs], np.int64)
    keys = np.array([k for _, k in reqs], np.uint64)
    text = pa.table(
        {
            "eni": pa.array([e for _, _, e in reps], pa.string()),
            "example": pa.array([f"{e} {k}" for _, k, e in reps], pa.string()),
        }
    )
    return Candidates(
        _stretches(*_distinct(windows, keys, W)),
        np.array([w for w, _, _ in reps], np.int64),
        np.array([k for _, k, _ in reps], np.uint64),
        text,
    )


def random_inputs(rng: random.Random) -> list[tuple[list[Request], list[Reply]]]:
    out = []
    start = 0
    for _ in range(rng.randint(1, 12)):
        start += W * rng.randint(0, 3)  # event time moves on, sometimes past the lateness
        low, high = max(0, start - 5 * W), start + 2 * W
        reqs = [(rng.randrange(low, high, W), rng.randrange(24)) for _ in range(rng.randint(0, 30))]
        reps = [(rng.randrange(low, high, W), rng.randrange(24), f"eni-{rng.randrange(3)}") for _ in range(rng.randint(0, 12))]
        out.append((reqs, reps))
    return out


@pytest.mark.parametrize("seed", range(300))
def test_pairing_counts_what_the_rule_counts(seed: int) -> None:
    inputs = random_inputs(random.Random(seed))
    state, counts = Pairing(LATENESS), Counter[str]()
    for reqs, reps in inputs:
        state, paired, _ = state.pair(candidates(reqs, reps), write=seed % 2 == 0)
        counts.update(paired.counts)
    assert +counts == model(inputs, LATENESS)
