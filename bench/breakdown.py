"""Where the time goes: each stage of the decode path timed alone, on one thread.

    python bench/breakdown.py bench/data/v2-2000000.log.gz

Stages: ISA-L inflate; cutting line chunks; parsing each chunk (the native
tokenizer when built, else Arrow's CSV reader; STREAMER_NATIVE=0 forces
Arrow) for the counters' columns, then the live path's columns; the
counters' group-by; the live path's windows and insights reduce, the
window partials alone, folding them and the detector's step (STREAMER_DENSE=0
times Arrow's group-by for the partials). Each stage is reported as the
records/s it alone would allow. With two cores, inflate runs on one and the
rest is spread over both, so the whole cannot beat the slowest of
"inflate" and "everything / 2". Nothing here asserts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamer.aggregate.anomaly import Settings  # noqa: E402
from streamer.aggregate.batch import columns, reducer  # noqa: E402
from streamer.aggregate.counters import COLUMNS, count_batch  # noqa: E402
from streamer.aggregate.detection import Detection  # noqa: E402
from streamer.aggregate.windows import merge, window_batch  # noqa: E402
from streamer.decode.errors import ErrorCounts  # noqa: E402
from streamer.decode.gzip import gunzip_stream  # noqa: E402
from streamer.decode.objects import line_chunks, line_parts  # noqa: E402
from streamer.decode.text import TextDecoder, join  # noqa: E402
from streamer.replay import read_chunks  # noqa: E402
from streamer.schema import header_fields  # noqa: E402


def timed(label: str, records: int, fn):  # type: ignore[no-untyped-def]
    best = float("inf")
    out = None
    for _ in range(3):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    print(f"{label:<58} {records / best / 1e6:8.2f} M/s {best:8.3f} s")
    return out, best


def main() -> None:
    path = sys.argv[1]

    def inflate() -> list[bytes]:
        with open(path, "rb") as handle:
            return list(gunzip_stream(read_chunks(handle)))

    pieces = inflate()
    chunks = list(line_chunks(iter(pieces)))
    header = chunks[0].split(b"\n", 1)[0]
    fields = header_fields(header.decode())
    assert fields is not None
    records = sum(c.count(b"\n") for c in chunks) - 1
    print(f"{Path(path).name}: {records:,} records, {sum(map(len, pieces)) / 1e6:.0f} MB text, {len(fields)} fields")
    timed("inflate (ISA-L, streamed)", records, inflate)
    parts, _ = timed("cut at newlines (on the inflating thread)", records, lambda: list(line_parts(iter(pieces))))
    timed("join each chunk's parts (Arrow's path only)", records, lambda: [join(p) for p in parts])
    for label, wanted in (("counters", COLUMNS), ("live path", columns(True, True, True))):
        decoder = TextDecoder(fields, wanted, header_line=header)
        parser = "native" if decoder.native else "Arrow CSV"
        tables, _ = timed(
            f"{parser} parse, {label} columns ({len(decoder.columns)})",
            records,
            lambda d=decoder: [d.decode(c, ErrorCounts()) for c in parts],
        )
        if label == "counters":
            timed("  counters group-by", records, lambda t=tables: [count_batch(x) for x in t])
        else:
            reduce = reducer(60, None, 60, True)  # every signal, NACL pairing too
            results, _ = timed("  counters + windows + insights reduce", records, lambda t=tables, r=reduce: [r(x) for x in t])
            timed("  window partials alone", records, lambda t=tables: [window_batch(x, 60) for x in t])
            batches = [r.windows for r in results if r.windows is not None]
            folded, _ = timed("  fold the partials (one thread, after the last chunk)", records, lambda b=batches: merge(b))
            timed(
                "  detector: close and score every window (one thread)",
                records,
                lambda f=folded: Detection.create(Settings(), 900).advance(f)[0].flush(),
            )


if __name__ == "__main__":
    main()
