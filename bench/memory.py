"""Peak memory of the adversarial input, per source: what one input can make the process hold.

    python bench/memory.py                 # every case, each in a fresh process
    python bench/memory.py --case kinesis-bomb --bomb-mib 1024
    PYTHONPATH=/other/checkout python bench/memory.py   # the same cases against another checkout

Cases (issue 29 item 3):
- kinesis-bomb: one Kinesis record that is a gzip bomb (`--bomb-mib` of zeros, about 1/1000 of that
  compressed), next to a good record, unpacked as the Kinesis source does;
- kinesis-tiny: a full GetRecords answer (10 records of ~1 MiB gzip'd each, the Kinesis limits) whose
  payloads are tiny events (`"message": "x"`), unpacked in batches of `max_bytes_in_flight` (16 MiB,
  the default) and each decoded, as the source and the pipeline do;
- firehose-tiny: one Firehose request whose gzip'd records are payloads of tiny events inflating to
  `max_request_bytes` (64 MiB, the default), parsed as the endpoint does and decoded.

Each case runs in its own process; it prints the compressed and inflated sizes, the peak RSS before
the input is unpacked (imports and the input itself) and after, and the growth (VmHWM). Nothing asserts
here; tests/unit/decode/test_memory_bounds.py asserts the bound on a small scale.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: another checkout given there is the one measured

CASES = ("kinesis-bomb", "kinesis-tiny", "firehose-tiny")
LINE = "2 123456789012 eni-0a1b2c3d 10.0.0.1 10.0.0.2 443 49152 6 1 40 1700000000 1700000060 ACCEPT OK"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_payload(inflated: int) -> bytes:
    """A CloudWatch Logs payload of one-byte events, about `inflated` bytes, gzip'd (streamed: never whole)."""
    import zlib

    piece = ",".join(f'{{"id":"{i}","timestamp":1,"message":"x"}}' for i in range(20_000)).encode()
    head = b'{"messageType":"DATA_MESSAGE","logGroup":"g","logStream":"s","logEvents":['
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    out = [compressor.compress(head)]
    written = len(head)
    first = True
    while written < inflated:
        chunk = piece if first else b"," + piece
        first = False
        out.append(compressor.compress(chunk))
        written += len(chunk)
    out.append(compressor.compress(b'],"x":"' + LINE.encode() + b'"}'))
    out.append(compressor.flush())
    return b"".join(out)


def bomb(mib: int) -> bytes:
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join([*(compressor.compress(zeros) for _ in range(mib)), compressor.flush()])


def good_record() -> bytes:
    import gzip

    doc = {
        "messageType": "DATA_MESSAGE",
        "logGroup": "g",
        "logStream": "s",
        "logEvents": [{"id": "1", "timestamp": 1, "message": LINE}],
    }
    return gzip.compress(json.dumps(doc).encode())


def unpack(records: list[bytes], limit: int) -> Iterator[tuple[bytes, dict[str, int]]]:
    """Batches of text as the Kinesis source makes them (this checkout's API, or the one before it)."""
    try:
        from streamer.decode.cloudwatch import unpack_records
    except ImportError:  # before issue 29: every line of the answer as a Python string, one batch
        from streamer.decode.cloudwatch import payload_lines  # type: ignore[attr-defined]

        lines, bad = payload_lines(records)
        yield ("\n".join(lines) + "\n").encode() if lines else b"", {"invalid_payload": bad}
        return
    at = 0
    while at < len(records):
        at, text, errors = unpack_records(records, at, limit)
        yield text, dict(errors.counts)


def decode(chunks: list[bytes]) -> tuple[int, dict[str, int]]:
    """Rows and errors of headerless lines, decoded unit by unit as the pipeline does."""
    from streamer.aggregate.counters import COLUMNS
    from streamer.decode.errors import ErrorCounts
    from streamer.decode.objects import ObjectReader

    rows = 0
    errors = ErrorCounts()
    for unit in ObjectReader(columns=COLUMNS, headerless=True).units(chunks):
        rows += unit(errors).num_rows
    return rows, dict(errors.counts)


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    import streamer.decode.text
    import streamer.sources.firehose_http  # noqa: F401

    result: dict[str, Any] = {"case": case}
    if case == "kinesis-bomb":
        records = [bomb(args.bomb_mib), good_record()]
        result |= {"compressed_bytes": sum(map(len, records)), "inflates_to_mib": args.bomb_mib}
        before = peak_mib()
        batches = [(len(text), errors) for text, errors in unpack(records, 16 << 20)]
        result |= {"batches": batches}
    elif case == "kinesis-tiny":
        records = [tiny_payload(args.record_inflated_mib << 20) for _ in range(10)]
        result |= {"compressed_bytes": sum(map(len, records)), "inflates_to_mib": 10 * args.record_inflated_mib}
        before = peak_mib()
        rows = 0
        batches = 0
        found: dict[str, int] = {}
        for text, _ in unpack(records, 16 << 20):
            batches += 1
            got, errors = decode([text])
            rows += got
            for reason, n in errors.items():
                found[reason] = found.get(reason, 0) + n
            del text
        result |= {"batches": batches, "valid_rows": rows, "errors": found}
    else:
        from streamer.sources.firehose_http import records_lines

        per_record = 16 << 20
        n = max(1, (args.request_mib << 20) // per_record)
        records = [{"data": base64.b64encode(tiny_payload(per_record - (1 << 20))).decode()} for _ in range(n)]
        result |= {"compressed_bytes": sum(len(r["data"]) * 3 // 4 for r in records), "inflates_to_mib": n * 15}
        before = peak_mib()
        found = records_lines(records, args.request_mib << 20)
        rows, errors = decode(found.chunks)
        result |= {"valid_rows": rows, "errors": errors}
    after = peak_mib()
    result |= {"peak_before_mib": round(before, 1), "peak_after_mib": round(after, 1), "growth_mib": round(after - before, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES, action="append")
    parser.add_argument("--bomb-mib", type=int, default=256, help="what the Kinesis bomb record inflates to")
    parser.add_argument("--record-inflated-mib", type=int, default=12, help="each tiny-event Kinesis record, inflated")
    parser.add_argument("--request-mib", type=int, default=64, help="a Firehose request's inflated size (max_request_bytes)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        [case] = args.case
        print(json.dumps(run_case(case, args)))
        return
    for case in args.case or CASES:
        argv = [sys.executable, __file__, "--child", "--case", case, "--bomb-mib", str(args.bomb_mib)]
        argv += ["--record-inflated-mib", str(args.record_inflated_mib), "--request-mib", str(args.request_mib)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy(), check=False)
        print(proc.stdout.strip() or f'{{"case": "{case}", "failed": {json.dumps(proc.stderr[-800:])}}}', flush=True)


if __name__ == "__main__":
    main()
