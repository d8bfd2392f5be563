"""Big Firehose objects as Firehose writes them: CloudWatch Logs payloads back to back, no separator.

Shared by the decode tests, the S3 integration test and bench/firehose_objects.py.
The truth is kept as totals per interface, never as rows, so a 50 MB object
costs little beyond its own bytes.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import strategies as st

from streamer.synth import TrafficProfile, generate_table, to_lines

#: how each payload is packed in the object
PACKINGS = ("plain", "gzip", "gzip members")


def payload_stream(target_bytes: int, seed: int = 1, fields: tuple[str, ...] | None = None) -> tuple[list[bytes], pa.Table]:
    """Payload documents (about `target_bytes` in all, 20 to 400 events each) and the records they carry.

    Every 50th payload names a log stream with `}{` and `\\"` in it (a boundary
    inside a string), and every 7th is followed by a CONTROL_MESSAGE.
    """
    records = max(1, target_bytes // 160)
    profile = TrafficProfile(records=records, enis=40, seed=seed, **({"fields": fields} if fields else {}))
    table = generate_table(profile)
    lines = [str(x) for x in to_lines(table).to_pylist()]
    docs: list[bytes] = []
    at, n = 0, 0
    while at < len(lines):
        size = 20 + (n * 37) % 381
        events = [{"id": f"{n}-{j}", "timestamp": 1, "message": m} for j, m in enumerate(lines[at : at + size])]
        stream = 'eni-"}{ \\"}{' if n % 50 == 0 else f"eni-{n % 40}"
        doc = {"messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "/vpc/flow", "logStream": stream}
        docs.append(orjson.dumps({**doc, "subscriptionFilters": ["to-firehose"], "logEvents": events}))
        if n % 7 == 0:
            control = {"messageType": "CONTROL_MESSAGE", "logGroup": "", "logStream": "", "logEvents": []}
            docs.append(orjson.dumps({**control, "logEvents": [{"id": "", "timestamp": 0, "message": "CWL CONTROL MESSAGE"}]}))
        at += size
        n += 1
    return docs, table


def pack(docs: list[bytes], packing: str) -> bytes:
    """The object's bytes: plain back to back, Firehose's gzip over that, or one gzip member per payload."""
    if packing == "plain":
        return b"".join(docs)
    if packing == "gzip":
        return gzip.compress(b"".join(docs), 1)
    if packing == "gzip members":
        return b"".join(gzip.compress(d, 1) for d in docs)
    raise ValueError(packing)


def pieces(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    """The object as S3 hands it over: chunks that cut documents anywhere."""
    for at in range(0, len(data), size):
        yield data[at : at + size]


def totals(table: pa.Table) -> dict[str, tuple[int, int, int]]:
    """interface id -> (records, packets, bytes), of a generated (strings) or a decoded (numbers) table."""
    columns: dict[str, pa.ChunkedArray] = {"eni": pc.cast(table.column("interface-id"), pa.string())}
    for name in ("packets", "bytes"):
        column = table.column(name)
        if pa.types.is_string(column.type):
            column = pc.cast(pc.if_else(pc.equal(column, "-"), None, column), pa.int64())
        columns[name] = column
    grouped = pa.table(columns).group_by("eni").aggregate([([], "count_all"), ("packets", "sum"), ("bytes", "sum")])
    rows = zip(*(grouped.column(c).to_pylist() for c in ("eni", "count_all", "packets_sum", "bytes_sum")), strict=True)
    return {str(k): (int(c), int(p or 0), int(b or 0)) for k, c, p, b in rows}


def add(into: dict[str, tuple[int, int, int]], more: dict[str, tuple[int, int, int]]) -> None:
    for key, (c, p, b) in more.items():
        c0, p0, b0 = into.get(key, (0, 0, 0))
        into[key] = (c0 + c, p0 + p, b0 + b)


def _b64(data: bytes) -> dict[str, str]:
    return {"data": base64.b64encode(data).decode()}


def firehose_bodies() -> st.SearchStrategy[bytes]:
    """Firehose request bodies mutated: wrong types at every level, NUL bytes, huge numbers, truncation."""
    scalar = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.just("\x00"),
    )
    anything = st.recursive(
        scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8
    )
    payload = st.fixed_dictionaries(
        {
            "messageType": st.one_of(st.just("DATA_MESSAGE"), anything),
            "logEvents": st.one_of(
                anything, st.lists(st.one_of(anything, st.fixed_dictionaries({"id": anything, "message": anything})), max_size=3)
            ),
        }
    )
    record_bytes = st.one_of(
        payload.map(lambda d: json.dumps(d).encode()),
        payload.map(lambda d: gzip.compress(json.dumps(d).encode())),
        st.binary(max_size=64),
        st.just(b"\x00\x00{\x00}"),
    )
    record = st.one_of(record_bytes.map(_b64), anything, st.fixed_dictionaries({"data": anything}))
    request = st.fixed_dictionaries(
        {
            "requestId": st.one_of(st.text(min_size=1, max_size=12), anything),
            "timestamp": anything,
            "records": st.one_of(st.lists(record, max_size=4), anything),
        }
    )
    body = request.map(lambda d: json.dumps(d).encode())
    cut = st.tuples(body, st.floats(min_value=0, max_value=1)).map(lambda t: t[0][: int(len(t[0]) * t[1])])
    return st.one_of(body, cut, st.binary(max_size=200), body.map(lambda b: b.replace(b'"', b"\x00", 1)))
