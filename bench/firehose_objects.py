"""Firehose objects: 50 MB of CloudWatch Logs payloads back to back, through the real decode path.

    python bench/firehose_objects.py [--mb 50]

Objects are generated once into bench/data/; each case is read in 1 MiB
pieces in its own child process, so its peak RSS (VmHWM) is decoding's
own: plain, Firehose's gzip over the stream, one gzip member per payload, and
a worst case for the document splitter (every event holds `}{` in a string,
which sends each document through the structural walk). Prints MB/s,
records/s and peak RSS; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


DATA = ROOT / "bench" / "data"


def generate(case: str, mb: int) -> tuple[Path, int]:
    """The object for a case, written once to bench/data/ (its record count beside it)."""
    from tests.firehose_data import pack, payload_stream

    path = DATA / f"firehose-{mb}mb-{case.replace(' ', '-')}.bin"
    count = path.with_suffix(".records")
    if not count.exists():
        docs, table = payload_stream(mb << 20, seed=7)
        if case == "braces in every string":
            docs = [d.replace(b'"timestamp":1', b'"timestamp":1,"note":"}{"') for d in docs]
        DATA.mkdir(exist_ok=True)
        path.write_bytes(pack(docs, "plain" if case == "braces in every string" else case))
        count.write_text(str(table.num_rows))
    return path, int(count.read_text())


def child(path: str) -> dict[str, float]:
    """Read the object in 1 MiB pieces (as S3 hands it over) and decode it; imports excluded from the peak."""
    from concurrent.futures import ThreadPoolExecutor

    from streamer.aggregate.counters import COLUMNS
    from streamer.decode.objects import ObjectReader
    from streamer.ingest import Ingestor

    def pieces() -> Iterator[bytes]:
        with open(path, "rb") as handle:
            while piece := handle.read(1 << 20):
                yield piece

    before = _peak_kib()
    with ThreadPoolExecutor(2) as pool:
        start = time.perf_counter()
        result = Ingestor(ObjectReader(columns=COLUMNS), lambda t: t.num_rows, pool).run(pieces())
        seconds = time.perf_counter() - start
    peak = _peak_kib()
    return {
        "records": result.rows,
        "errors": result.errors.total,
        "seconds": seconds,
        "peak_mib": peak / 1024,
        "before_mib": before / 1024,
    }


def _peak_kib() -> int:
    """VmHWM: this process's own peak (ru_maxrss would carry the parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    print(f"{'case':<24} {'file MB':>8} {'records':>9} {'exact':>6} {'records/s':>10} {'peak RSS':>9} {'after imports':>14}")
    for case in ("plain", "gzip", "gzip members", "braces in every string"):
        path, records = generate(case, args.mb)
        out = subprocess.run([sys.executable, __file__, "--child", str(path)], check=True, capture_output=True, text=True).stdout
        r = json.loads(out.splitlines()[-1])
        exact = "yes" if r["records"] == records and not r["errors"] else "NO"
        print(
            f"{case:<24} {path.stat().st_size / 1e6:>8.1f} {r['records']:>9,} {exact:>6} "
            f"{r['records'] / r['seconds']:>10,.0f} {r['peak_mib']:>5.0f} MiB {r['before_mib']:>10.0f} MiB"
        )


if __name__ == "__main__":
    main()
