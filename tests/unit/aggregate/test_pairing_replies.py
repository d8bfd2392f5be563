"""NACL waiting replies under backscatter: a row per (ENI, hash) with a count, at most `max_waiting_replies`
rows per window (the rest dropped and counted), and pieces appended, never rewritten (issue 29 item 4)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.aggregate import pairing as pairing_module
from streamer.aggregate.pairing import PREFIX, REPLIES, Candidates, Pairing, Pieces, _encode_replies
from tests.unit.aggregate.test_pairing import ENI, LATENESS, W, commit, delta, nacl, reply, request, run


def waiting(pairing: Pairing) -> dict[int, dict[int, int]]:
    """window -> hash -> replies waiting."""
    return {
        w: dict(zip(t.column("hash").to_pylist(), t.column("n").to_pylist(), strict=True))
        for w, t in pairing.replies.items()
        if t.num_rows
    }


def test_the_same_reply_again_counts_up_its_row_and_pairs_as_many() -> None:
    state, pairing = run([[reply(W + 6)] * 3, [reply(W + 7)] * 2])
    assert [t.num_rows for t in pairing.replies.values()] == [1]
    assert list(waiting(pairing)[W].values()) == [5]
    state, pairing = run([[reply(W + 6)] * 3, [reply(W + 7)] * 2, [request(W + 5)]])
    assert nacl(state) == {ENI: 5}
    assert not pairing.replies


def test_a_row_is_an_eni_and_a_hash_the_same_hash_under_two_enis_stays_two_rows() -> None:
    """The candidates' hash covers the ENI; a wire input may still carry one hash under two ENIs: each is
    counted under its own."""
    text = pa.table({"eni": ["eni-1", "eni-2", "eni-1"], "example": ["a", "b", "c"]})
    found = Candidates([], np.full(3, W, np.int64), np.full(3, 7, np.uint64), text)
    pairing, _, _ = Pairing(LATENESS).pair(found)
    assert sorted(zip(*(pairing.replies[W].column(c).to_pylist() for c in ("eni", "n")), strict=True)) == [
        ("eni-1", 2),
        ("eni-2", 1),
    ]
    _, paired, _ = pairing.pair(requests(W, [7]))
    assert paired.counts == {"eni-1": 2, "eni-2": 1}


def test_a_window_holds_at_most_its_cap_and_counts_what_it_drops() -> None:
    pairing = Pairing(LATENESS, max_waiting_replies=3)
    d = delta([reply(W + 6, port=p) for p in range(50001, 50006)])
    assert d.pairs is not None
    pairing, paired, _ = pairing.pair(d.pairs)
    assert (paired.dropped, sum(len(v) for v in waiting(pairing).values())) == (2, 3)
    # one held already counts up (never dropped); a newcomer finds no room
    d = delta([reply(W + 8, port=50001), reply(W + 8, port=50009)])
    assert d.pairs is not None
    pairing, paired, _ = pairing.pair(d.pairs)
    assert paired.dropped == 1
    assert sorted(waiting(pairing)[W].values()) == [1, 1, 2]
    # another window has room of its own; a reply that pairs is no waiting reply and is never dropped
    d = delta([reply(W + 66, port=50009), request(W + 5, port=50009), reply(W + 9, port=50009)])
    assert d.pairs is not None
    pairing, paired, _ = pairing.pair(d.pairs)
    assert (paired.dropped, paired.counts) == (0, {ENI: 2})


def backscatter(window: int, keys: np.ndarray) -> Candidates:
    n = len(keys)
    examples = [f"{ENI} 192.0.2.{k % 250}:443 -> 10.0.1.5:{k} protocol 6 REJECT" for k in keys]
    text = pa.table({"eni": [ENI] * n, "example": examples})
    return Candidates([], np.full(n, window, np.int64), np.asarray(keys, np.uint64), text)


def requests(window: int, keys: list[int]) -> Candidates:
    none = pa.table({"eni": pa.array([], pa.string()), "example": pa.array([], pa.string())})
    return Candidates([(window, np.unique(np.asarray(keys, np.uint64)))], np.zeros(0, np.int64), np.zeros(0, np.uint64), none)


def test_each_commit_appends_its_own_waiting_replies_and_rewrites_none() -> None:
    """20 inputs of 500 unpaired replies each into one window: every commit writes about the same bytes (it
    grew with the window before), no piece is written twice, and the pieces restore the state exactly."""
    pairing = Pairing(LATENESS, max_waiting_replies=100_000)
    stored: dict[str, bytes] = {}
    sizes, names = [], []
    for i in range(20):
        pairing, _, pieces = pairing.pair(backscatter(W, np.arange(i * 500, (i + 1) * 500) + 10_000))
        written = {n: v for n, v in pieces.snapshots.items() if n != f"{PREFIX}meta"}
        sizes.append(sum(len(v) for v in written.values()))
        names.extend(written)
        commit(stored, pieces)
    assert max(sizes) < 1.1 * min(sizes)
    assert len(names) == len(set(names)) == 20
    assert waiting(Pairing.restore(stored, LATENESS, 100_000)) == waiting(pairing)
    # requests pair a few of them: what goes is written as their hashes, 8 bytes each, not the window again
    pairing, paired, pieces = pairing.pair(requests(W, [10_000, 10_001, 10_002]))
    assert paired.counts == {ENI: 3}
    step = f"{pairing.seq - 1:012d}"
    assert {n: len(v) for n, v in pieces.snapshots.items() if n != f"{PREFIX}meta"} == {
        f"{PREFIX}w/{W:012d}/q{step}": 3 * 8,  # the requests
        f"{PREFIX}w/{W:012d}/p{step}": 3 * 8,  # the replies they paired
    }
    commit(stored, pieces)
    assert waiting(Pairing.restore(stored, LATENESS, 100_000)) == waiting(pairing)


def test_a_checkpoint_with_one_reply_piece_per_window_restores_and_carries_on() -> None:
    """Before pieces were appended, a window's replies were one piece `r`, a row per reply."""
    rows = pa.table({"eni": [ENI] * 3, "hash": pa.array([7, 7, 9], pa.uint64()), "n": [1, 1, 1], "example": ["a", "b", "c"]})
    stored = {f"{PREFIX}meta": b'{"newest": %d, "seq": 4}' % W, f"{PREFIX}w/{W:012d}/r": _encode_replies(rows.cast(REPLIES))}
    pairing = Pairing.restore(stored, LATENESS)
    assert waiting(pairing) == {W: {7: 2, 9: 1}}
    pairing, paired, pieces = pairing.pair(requests(W, [7, 9]))
    assert paired.counts == {ENI: 3}
    commit(stored, pieces)
    assert sorted(stored) == [f"{PREFIX}meta", f"{PREFIX}w/{W:012d}/q000000000004"]  # the old piece went too


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.booleans(),  # requests (else replies)
            st.integers(0, 3),  # window: W + 60 * this (the lateness spans them all but one step)
            st.lists(st.integers(1, 12), min_size=1, max_size=8),  # hashes
        ),
        min_size=1,
        max_size=12,
    ),
    cap=st.integers(1, 6),
    compact=st.sampled_from([0, 2, 1024]),
    every=st.integers(1, 3),
)
def test_the_pieces_restore_exactly_what_the_live_state_holds(
    steps: list[tuple[bool, int, list[int]]], cap: int, compact: int, every: int
) -> None:
    """Any order of requests and replies, any cap, pieces compacted often or never, steps committed one by one
    or `every` few together (their pieces folded, as a group commit or a leader's slice does): after every
    commit, a state restored from the pieces holds the same waiting replies, and pairs and drops the same."""
    old = pairing_module.COMPACT_ROWS
    pairing_module.COMPACT_ROWS = compact
    try:
        live = Pairing(120, max_waiting_replies=cap)
        restarted = live
        stored: dict[str, bytes] = {}
        pending = Pieces()
        for i, (is_request, window, keys) in enumerate(steps):
            w = W + 60 * window
            found = requests(w, keys) if is_request else backscatter(w, np.asarray(keys))
            live, paired_live, _ = live.pair(found)
            restarted, paired, pieces = restarted.pair(found)
            assert (paired.counts, paired.dropped) == (paired_live.counts, paired_live.dropped)
            pending.then(pieces)
            if (i + 1) % every == 0 or i + 1 == len(steps):
                commit(stored, pending)
                pending = Pieces()
                restarted = Pairing.restore(stored, 120, cap)
                assert waiting(restarted) == waiting(live)
            assert all(t.num_rows <= cap for t in live.replies.values())
    finally:
        pairing_module.COMPACT_ROWS = old


def test_pieces_of_a_window_mostly_paired_are_rewritten_as_one() -> None:
    pairing = Pairing(LATENESS, max_waiting_replies=10_000)
    stored: dict[str, bytes] = {}
    pairing, _, pieces = pairing.pair(backscatter(W, np.arange(3000)))
    commit(stored, pieces)
    pairing, _, pieces = pairing.pair(requests(W, list(range(2900))))  # 2,900 go; 100 wait
    commit(stored, pieces)
    replies = [n for n in stored if n.startswith(f"{PREFIX}w/{W:012d}/") and "/q" not in n]
    assert len(replies) == 1  # one piece holding the 100, not 3,000 rows and 2,900 paired hashes
    assert waiting(Pairing.restore(stored, LATENESS, 10_000)) == waiting(pairing) == {W: dict.fromkeys(range(2900, 3000), 1)}


def test_every_reply_piece_is_whole_8_byte_words_so_the_release_before_reads_it_without_failing() -> None:
    """A rolling upgrade can hand the fleet's leader lease back to a replica on the release before, which reads
    every piece but `r` as 8-byte request hashes: a piece of any other length would fail its restore (and its
    every step). Arrow's IPC stream pads to 8 bytes; the paired hashes are 8 bytes each. (Its requests read
    from them never match a real reply's hash; the waiting replies it does not see pair again once the lease
    is back on this release.)"""
    pairing, stored = Pairing(LATENESS, max_waiting_replies=5), {}
    for i, keys in enumerate([[1], [2, 3, 4], [5, 6, 7, 8, 9, 10]]):
        pairing, _, pieces = pairing.pair(backscatter(W + 60 * i, np.asarray(keys)))
        commit(stored, pieces)
    pairing, _, pieces = pairing.pair(requests(W + 60, [2, 3]))
    commit(stored, pieces)
    reply_pieces = {n: v for n, v in stored.items() if "/r" in n or "/p" in n}
    assert len(reply_pieces) == 4
    assert all(len(v) % 8 == 0 for v in reply_pieces.values())
