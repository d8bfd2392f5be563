"""Candidates from the wire (`decode_candidates`), rows in any order as any replica version may send them,
pair exactly as the candidates the replica computed."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def test_an_inputs_joined_batches_go_on_the_wire_as_before_and_pair_the_same_from_it() -> None:
    """Joined batches keep their requests' sets side by side (one window in several): on the wire that is
    every batch's requests in turn, then every batch's replies (as when the arrays were concatenated, so
    replicas of either version read it), and the leader pairs what it reads as the replica would."""
    full = _found()
    table = full.table()
    cuts = [0, 90, 200, table.num_rows]  # three batches, windows spread over each
    batches = [Candidates.of_table(table.slice(a, b - a)) for a, b in itertools.pairwise(cuts)]
    joined = Candidates.join(batches)
    windows = [w for w, _ in joined.requests]
    assert len(windows) > len(set(windows))  # a window in several stretches
    wire = joined.table()
    each = [b.table() for b in batches]
    is_req = wire.column("request").to_pylist()
    n_req = sum(is_req)
    assert is_req == [True] * n_req + [False] * (wire.num_rows - n_req)
    requests = pa.concat_tables([t.filter(t.column("request")) for t in each])
    replies = pa.concat_tables([t.filter(pc.invert(t.column("request"))) for t in each])
    assert wire.slice(0, n_req).equals(requests)
    assert wire.slice(n_req).equals(replies)
    assert _run(pairing.decode_candidates(pairing.encode_candidates(joined))) == _run(joined) == _run(full)


def test_an_inputs_batches_are_joined_by_listing_their_request_sets_not_copying_them() -> None:
    parts = [_found() for _ in range(3)]
    joined = Candidates.join(parts)
    listed = [keys for part in parts for _, keys in part.requests]
    assert len(listed) > 3
    assert len(joined.requests) == len(listed)
    assert all(a is b for (_, a), b in zip(joined.requests, listed, strict=True))
