"""Writes the malformed inputs found while fuzzing (issue 17) next to this file, with expected.json.

Run once by hand (`python tests/data/malformed/generate.py`); the bytes are checked in, so a change here
shows as a diff of the corpus. Each file is small; each one broke, or nearly broke, a decoder.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
HEADER = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"
LINE = "2 123456789012 eni-0malformed0001 10.0.0.1 10.0.0.2 1024 22 6 1 40 1700000000 1700000060 REJECT OK"


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def parquet(columns: dict[str, pa.Array]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def payload(events: object, **extra: object) -> bytes:
    doc = {"messageType": "DATA_MESSAGE", "logGroup": "/vpc", "logStream": "eni", "logEvents": events, **extra}
    return json.dumps(doc).encode()


def event(message: object) -> dict[str, object]:
    return {"id": "1", "timestamp": 1700000000000, "message": message}


text = (HEADER + "\n" + "\n".join([LINE] * 5) + "\n").encode()
FILES: dict[str, tuple[bytes, dict[str, object]]] = {
    "logevents-not-a-list.log.gz": (gz(payload(1)), {"records": 0, "errors": {"invalid_payload": 1}}),
    "messagetype-not-a-string.log": (payload([], messageType=[1]), {"records": 0, "errors": {"invalid_payload": 1}}),
    "events-of-the-wrong-type.log": (
        payload([1, event(5), event(LINE)]),
        {"records": 1, "errors": {"invalid_payload": 2}},
    ),
    "bad-payload-between-good-ones.log": (
        payload([event(LINE)]) + payload("abc") + payload([event(LINE)]),
        {"records": 2, "errors": {"invalid_payload": 1}},
    ),
    "truncated-document.log": (payload([event(LINE)])[:60], {"records": 0, "errors": {"invalid_json": 1}}),
    "huge-number-in-json.log": (b'{"logEvents": [{"message": 1e999}]}\n', {"records": 0, "errors": {"invalid_json": 1}}),
    "huge-numbers.log": (
        "\n".join([HEADER, LINE.replace(" 1 40 ", f" {10**30} 40 "), LINE.replace(" 40 ", f" {2**64} "), LINE, ""]).encode(),
        {"records": 1, "errors": {"invalid_number": 2}},
    ),
    "nul-bytes-in-a-line.log": (
        text + b"\x00\x00\x00\n",
        {"records": 5, "errors": {"invalid_utf8": 1}},  # a NUL is no text any store can hold
    ),
    "binary.log": (bytes(range(32)) * 64, {"records": 0, "errors": {}, "failure": "unknown_format"}),
    "corrupt.log.gz": (b"\x1f\x8b" + b"\x00garbage" * 20, {"records": 0, "errors": {}, "failure": "corrupt_gzip"}),
    # only the trailer missing; records count per whole chunk before the damage, and this file is one chunk
    "truncated.log.gz": (gz(text)[:-8], {"records": 0, "errors": {}, "failure": "truncated"}),
    "interface-id-list.parquet": (
        parquet({"interface_id": pa.array([["eni-a"]]), "action": pa.array(["REJECT"]), "packets": pa.array([1])}),
        {"records": 0, "errors": {}, "failure": "unsupported_column"},
    ),
    "packets-struct.parquet": (
        parquet({"interface_id": pa.array(["eni-a"]), "packets": pa.array([{"x": 1}])}),
        {"records": 0, "errors": {}, "failure": "unsupported_column"},
    ),
    # found by test_fuzz.py: a column name that is not UTF-8 made pyarrow raise UnicodeDecodeError on open
    "column-name-not-utf8.parquet": (
        parquet({"interface_id": pa.array(["eni-a"]), "packets": pa.array([1])}).replace(b"packets", b"pa\xe5kets"),
        {"records": 0, "errors": {}, "failure": "unknown_format"},
    ),
    "packets-fractional.parquet": (
        parquet({"interface_id": pa.array(["eni-a"]), "packets": pa.array([1.5])}),
        {"records": 0, "errors": {}, "failure": "unsupported_column"},
    ),
}

if __name__ == "__main__":
    for name, (data, _) in FILES.items():
        (HERE / name).write_bytes(data)
    expected = {name: {"failure": None, **want} for name, (_, want) in FILES.items()}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
