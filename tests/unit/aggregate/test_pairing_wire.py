"""Candidates from the wire (`decode_candidates`), rows in any order as any replica version may send them,
pair exactly as the candidates the replica computed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from streamer.aggregate import pairing
from streamer.aggregate.pairing import Candidates, Pairing


def _found() -> Candidates:
    rows = []
    for i in range(300):  # requests and their rejected replies over several windows, with repeats
        w = 1_764_000_000 + (i % 7) * 60
        eni, a, b, port = f"eni-{i % 3}", f"10.0.0.{i % 11}", f"52.0.0.{i % 5}", 40000 + i % 13
        if i % 3:
            rows.append((eni, a, b, port, 443, 6, "ACCEPT", w + 1))
        rows.append((eni, b, a, 443, port, 6, "REJECT", w + 61 * (i % 4)))
    names = ("interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol", "action", "end")
    table = pa.table({n: [r[k] for r in rows] for k, n in enumerate(names)})
    return pairing.candidates(table, 60)


def _run(found: Candidates) -> tuple[object, ...]:
    state, paired, pieces = Pairing(600).pair(found)
    replies = {w: sorted(map(str, t.to_pylist())) for w, t in state.replies.items()}
    lines = set(found.reply_text.column("example").to_pylist())
    assert all(eni in text and text in lines for eni, text in paired.examples.items())  # a real reject each (any)
    return (
        paired.counts,
        sorted(paired.examples),
        {w: a.tolist() for w, a in state.requests.items()},
        replies,
        sorted(pieces.snapshots),
    )


def test_candidates_from_the_wire_in_any_order_pair_as_computed() -> None:
    found = _found()
    assert found.num_requests
    assert len(found.reply_keys)
    table = found.table()
    for seed in range(5):
        shuffled = table.take(pa.array(np.random.default_rng(seed).permutation(table.num_rows)))
        blob = pairing.encode_candidates(Candidates.of_table(shuffled))
        assert _run(pairing.decode_candidates(blob)) == _run(found)
        assert _run(Candidates.of_table(shuffled)) == _run(found)
    counts = _run(found)[0]
    assert isinstance(counts, dict)
    assert sum(counts.values()) > 0
