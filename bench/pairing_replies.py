"""Bytes a commit writes for NACL waiting replies: backscatter on internet-facing ENIs (issue 29 item 4).

    python bench/pairing_replies.py                      # 10 inputs of 20,000 unpaired replies, one window
    python bench/pairing_replies.py --inputs 30 --replies 50000

Each input brings `--replies` rejects to an ephemeral port from a low one that no request ever answers
(replies to spoofed SYNs: SYN-ACKs and RSTs from random hosts), all in one window, over `--enis` ENIs. The
pairing state is advanced as the pipeline does and its snapshot pieces kept as a store keeps them
(prefixes dropped, then pieces written). Per commit: bytes written, rows held, pieces in the store, and
the restore's time. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamer.aggregate.pairing import Candidates, Pairing, Pieces

W = 1_764_000_000 - 1_764_000_000 % 60


def backscatter(n: int, enis: int, rng: np.random.Generator) -> Candidates:
    """`n` unpaired replies in one window: random hashes, real-looking ENIs and example lines."""
    eni_ids = pc.binary_join_element_wise(
        "eni-", pc.utf8_lpad(pc.cast(pa.array(rng.integers(0, enis, n)), pa.string()), 17, "0"), ""
    )
    src = pc.binary_join_element_wise(*(pc.cast(pa.array(rng.integers(1, 255, n)), pa.string()) for _ in range(4)), ".")
    example = pc.binary_join_element_wise(
        eni_ids,
        " ",
        src,
        ":443 -> 10.0.1.5:",
        pc.cast(pa.array(rng.integers(1024, 65535, n)), pa.string()),
        " protocol 6 REJECT",
        "",
    )
    text = pa.table({"eni": eni_ids, "example": example})
    keys = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    return Candidates([], np.full(n, W, np.int64), keys, text)


def store(stored: dict[str, bytes], pieces: Pieces) -> None:
    for prefix in pieces.drop:
        for name in [n for n in stored if n.startswith(prefix)]:
            del stored[name]
    stored.update(pieces.snapshots)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--replies", type=int, default=20_000)
    parser.add_argument("--enis", type=int, default=50)
    parser.add_argument("--lateness-seconds", type=int, default=900)
    parser.add_argument("--max-replies", type=int, default=None, help="rows a window holds (default: the service's)")
    args = parser.parse_args()
    rng = np.random.default_rng(29)
    pairing = Pairing(args.lateness_seconds)
    if args.max_replies is not None:
        pairing = dataclasses.replace(pairing, max_waiting_replies=args.max_replies)
    stored: dict[str, bytes] = {}
    total = dropped = 0
    print(f"{'commit':>6} {'written KB':>10} {'rows held':>9} {'dropped':>8} {'pieces':>6} {'stored KB':>9} {'restore ms':>10}")
    for i in range(args.inputs):
        pairing, paired, pieces = pairing.pair(backscatter(args.replies, args.enis, rng))
        dropped += paired.dropped
        written = sum(len(v) for v in pieces.snapshots.values())
        total += written
        store(stored, pieces)
        t0 = time.perf_counter()
        again = Pairing.restore(stored, args.lateness_seconds, pairing.max_waiting_replies)
        restore_ms = (time.perf_counter() - t0) * 1000
        assert again.entries() == pairing.entries()
        held = sum(t.num_rows for t in pairing.replies.values())
        stored_kb = sum(len(v) for v in stored.values()) / 1e3
        print(f"{i + 1:>6} {written / 1e3:>10.1f} {held:>9} {dropped:>8} {len(stored):>6} {stored_kb:>9.1f} {restore_ms:>10.1f}")
    print(f"total written {total / 1e6:.1f} MB over {args.inputs} commits")


if __name__ == "__main__":
    main()
