"""Firehose objects: CloudWatch Logs payloads back to back, one per line, or one gzip member each;
flow-log lines with no header; all sniffed from the content, not the key."""

from __future__ import annotations

import gzip

import orjson
import pytest

from streamer.schema import DEFAULT_FIELDS
from streamer.synth import TrafficProfile, generate_table, to_lines
from tests.helpers import decode_bytes


def payloads(n: int = 4, per: int = 25) -> tuple[list[bytes], list[str]]:
    """`n` DATA_MESSAGE documents of `per` events, plus one CONTROL_MESSAGE; and every line they carry."""
    table = generate_table(TrafficProfile(records=n * per, enis=5, seed=4))
    lines = [str(x) for x in to_lines(table).to_pylist()]
    docs = []
    for i in range(n):
        events = [{"id": f"{i}-{j}", "timestamp": 1, "message": m} for j, m in enumerate(lines[i * per : (i + 1) * per])]
        docs.append(
            orjson.dumps(
                {
                    "messageType": "DATA_MESSAGE",
                    "owner": "123456789012",
                    "logGroup": "/vpc",
                    "logStream": "eni",
                    "logEvents": events,
                }
            )
        )
    control = orjson.dumps(
        {
            "messageType": "CONTROL_MESSAGE",
            "logGroup": "",
            "logStream": "",
            "logEvents": [{"id": "", "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}],
        }
    )
    docs.insert(2, control)
    return docs, lines


@pytest.mark.parametrize(
    ("packing", "pack"),
    [
        ("concatenated", lambda docs: gzip.compress(b"".join(docs))),
        ("one per line", lambda docs: b"\n".join(docs) + b"\n"),
        ("one gzip member each", lambda docs: b"".join(gzip.compress(d) for d in docs)),
        ("members, then Firehose's own gzip", lambda docs: gzip.compress(b"".join(gzip.compress(d) for d in docs))),
        ("concatenated, plain", lambda docs: b"".join(docs)),
    ],
)
def test_every_packing_yields_every_event_once_and_skips_control_messages(packing: str, pack) -> None:  # type: ignore[no-untyped-def]
    docs, lines = payloads()
    rows, errors, failure = decode_bytes(pack(docs), chunk_bytes=700)  # small chunks: documents span chunk edges
    assert failure is None
    assert errors.counts == {}
    assert len(rows) == len(lines) == 100
    assert [r["interface-id"] for r in rows] == [line.split()[2] for line in lines]


def test_a_brace_pair_inside_a_message_is_not_a_document_boundary() -> None:
    line = "2 123456789012 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 40 100 160 ACCEPT OK"
    odd = orjson.dumps({"logEvents": [{"message": line}], "note": "a }{ b } \n {"})
    rows, errors, _ = decode_bytes(odd + odd)
    assert len(rows) == 2
    assert errors.counts == {}


def test_a_broken_document_is_counted_and_the_rest_still_counts() -> None:
    docs, _ = payloads(n=3)
    data = b"\n".join([docs[0], b'{"logEvents": [ truncated', docs[1], docs[3]]) + b"\n"
    rows, errors, failure = decode_bytes(data)
    assert failure is None
    assert errors.counts == {"invalid_json": 1}
    assert len(rows) == 75


def test_direct_put_flow_log_lines_without_a_header_use_the_configured_format() -> None:
    fields = ["interface-id", "action", "srcaddr", "dstaddr", "packets", "bytes", "start", "end", "log-status"]
    table = generate_table(TrafficProfile(records=50, enis=3, seed=2, fields=[*DEFAULT_FIELDS, "vpc-id"])).select(fields)
    body = gzip.compress(("\n".join(to_lines(table).to_pylist()) + "\n").encode())
    rows, errors, _ = decode_bytes(body, log_format=" ".join(f"${{{f}}}" for f in fields))
    assert errors.counts == {}
    assert len(rows) == 50
    assert rows[0]["interface-id"] == table.column("interface-id")[0].as_py()
