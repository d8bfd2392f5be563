"""Fuzzing as a test: mutated inputs through ObjectReader, payload_lines and the Parquet reader.

Mutated gzip, CloudWatch Logs JSON with a wrong type at every level,
Parquet with wrong column types, NUL bytes, huge numbers and truncated
documents. The property is on the decoders themselves, not on the catch-all
in Ingestor: each input either decodes or raises the project's DecodeError
family (so every reason is a deliberate, bounded label), and payload_lines
never raises at all.
"""

from __future__ import annotations

import gzip
import io
import itertools
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamer.decode.cloudwatch import unpack_records
from streamer.decode.errors import DecodeError, DecodeFailedError, ErrorCounts
from streamer.decode.objects import ObjectReader
from streamer.schema import DEFAULT_FIELDS, FIELDS

LINE = "2 123456789012 eni-a 10.0.0.1 10.0.0.2 1024 22 6 1 40 1700000000 1700000060 REJECT OK"
TEXT = (" ".join(DEFAULT_FIELDS) + "\n" + "\n".join([LINE] * 40) + "\n").encode()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HUGE = st.sampled_from([2**63, 2**64 + 1, -(2**63) - 1, 10**30, 1e308, -1e308, 1e-320])
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), HUGE, st.floats(allow_nan=False), st.text(max_size=20))
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


def payload_lines(records: list[bytes]) -> tuple[list[str], int]:
    """Lines of Kinesis records as a list, and how many records or events were skipped."""
    end, text, errors = unpack_records(records)
    assert end == len(records)
    return text.decode().splitlines(), errors.total


def decode(data: bytes | list[bytes], reader: ObjectReader | None = None) -> tuple[int, ErrorCounts]:
    """Rows and line errors; only the DecodeError family may escape, and never the catch-all wrapper."""
    reader = reader or ObjectReader(chunk_bytes=256)
    errors = ErrorCounts()
    rows = 0
    failure: DecodeError | None = None
    try:
        for unit in reader.units([data] if isinstance(data, bytes) else data):
            rows += unit(errors).num_rows
    except DecodeError as exc:
        failure = exc
    assert not isinstance(failure, DecodeFailedError)  # raised by decoders on purpose, not wrapped after the fact
    return rows, errors


def payload(events: list[Any]) -> dict[str, Any]:
    return {"messageType": "DATA_MESSAGE", "owner": "1", "logGroup": "g", "logStream": "s", "logEvents": events}


def event(message: Any = LINE, i: int = 0) -> dict[str, Any]:
    return {"id": str(i), "timestamp": 1700000000000, "message": message}


@st.composite
def mistyped_payload(draw: st.DrawFn) -> bytes:
    """A valid payload with one value, anywhere in it, replaced by a JSON value of any type."""
    doc = payload([event(LINE, i) for i in range(3)])
    where = draw(st.sampled_from(["root", "messageType", "logGroup", "logEvents", "event", "message", "id", "timestamp"]))
    value = draw(JSON)
    if where == "root":
        out: Any = value
    elif where in ("messageType", "logGroup", "logEvents"):
        doc[where] = value
        out = doc
    elif where == "event":
        doc["logEvents"][draw(st.integers(0, 2))] = value
        out = doc
    else:
        doc["logEvents"][draw(st.integers(0, 2))][where] = value
        out = doc
    try:
        raw = orjson.dumps(out)
    except TypeError:  # an int beyond 64 bits: write it by hand, as a careless producer would
        raw = repr(out).replace("'", '"').replace("None", "null").replace("True", "true").replace("False", "false").encode()
    cut = draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, len(raw))))  # sometimes a truncated document
    return raw if cut is None else raw[:cut]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """Bytes flipped, NULs inserted, or the tail cut off."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "nul", "cut"]))
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "nul":
            out[at:at] = b"\x00" * draw(st.integers(1, 64))
        else:
            del out[at:]
    return bytes(out)


@FUZZ
@given(data=st.data())
def test_mutated_gzip_decodes_or_raises_a_decode_error(data: st.DataObject) -> None:
    inner = data.draw(st.sampled_from([TEXT, orjson.dumps(payload([event()] * 5))]))
    blob = data.draw(mutated(gzip.compress(inner)))
    cuts = data.draw(st.lists(st.integers(1, max(1, len(blob))), max_size=4))
    points = sorted({0, len(blob), *cuts})
    decode([blob[a:b] for a, b in itertools.pairwise(points)] or [blob])


@FUZZ
@given(data=st.data())
def test_mutated_text_with_nul_bytes_and_huge_numbers(data: st.DataObject) -> None:
    huge = data.draw(st.sampled_from([str(10**30), str(2**64), "-1", "1e9", "9" * 400]))
    lines = TEXT.replace(b" 40 ", f" {huge} ".encode(), data.draw(st.integers(0, 40)))
    decode(data.draw(mutated(lines)))


@FUZZ
@given(docs=st.lists(mistyped_payload(), min_size=1, max_size=4), good=st.booleans(), compress=st.booleans())
@example(docs=[b'{"messageType": "DATA_MESSAGE", "logEvents": 1}'], good=True, compress=True)  # issue 17: TypeError
@example(docs=[b'{"logEvents": [1, {"message": 5}], "messageType": [1]}'], good=True, compress=False)
def test_json_with_a_wrong_type_at_every_level(docs: list[bytes], good: bool, compress: bool) -> None:
    valid = orjson.dumps(payload([event(LINE, 9)]))
    body = b"".join(docs) + (valid if good else b"")  # Firehose-style: back to back
    decode(gzip.compress(body) if compress else body)
    decode(b"\n".join(docs))  # one per line


@FUZZ
@given(records=st.lists(st.tuples(mistyped_payload(), st.booleans()), max_size=6), valid=st.integers(0, 3))
@example(records=[(b'{"logEvents": 1}', True), (b'{"logEvents": [{"message": 1e999}]}', False)], valid=2)
def test_payload_lines_never_raises_and_keeps_the_valid_records(records: list[tuple[bytes, bool]], valid: int) -> None:
    data = [gzip.compress(r) if z else r for r, z in records]
    good = [gzip.compress(orjson.dumps(payload([event(LINE, i)]))) for i in range(valid)]
    lines, bad = payload_lines(data + good)
    assert lines.count(LINE) >= valid
    assert bad <= len(data) + 3 * len(data)  # a record, or each of its three events


ARROW_TYPES = {
    "string": (pa.string(), st.text(max_size=10)),
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "int32": (pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    "uint64": (pa.uint64(), st.integers(0, 2**64 - 1)),
    "float": (pa.float64(), st.floats(allow_nan=True)),
    "bool": (pa.bool_(), st.booleans()),
    "binary": (pa.binary(), st.binary(max_size=10)),
    "list": (pa.list_(pa.string()), st.lists(st.text(max_size=5), max_size=2)),
    "struct": (pa.struct([("x", pa.int64())]), st.fixed_dictionaries({"x": st.integers(0, 9)})),
    "timestamp": (pa.timestamp("s"), st.integers(0, 2**33)),
    "null": (pa.null(), st.none()),
}


@st.composite
def odd_parquet(draw: st.DrawFn) -> bytes:
    """A Parquet file whose flow-log columns have any Arrow type, any values."""
    names = draw(st.lists(st.sampled_from([f.parquet_name for f in FIELDS.values()][:16]), min_size=1, max_size=6, unique=True))
    rows = draw(st.integers(0, 5))
    columns = {}
    for name in names:
        arrow_type, values = ARROW_TYPES[draw(st.sampled_from(sorted(ARROW_TYPES)))]
        column = [draw(st.one_of(st.none(), values)) for _ in range(rows)]
        columns[name] = pa.array(column, arrow_type)
    return parquet(columns)


def parquet(columns: dict[str, pa.Array]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


@FUZZ
@given(blob=odd_parquet(), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3))
@example(blob=parquet({"interface_id": pa.array([["eni-a"]])}), flips=[])  # issue 17: ArrowNotImplementedError
def test_parquet_with_wrong_column_types(blob: bytes, flips: list[tuple[int, int]]) -> None:
    out = bytearray(blob)
    for at, bits in flips:
        out[at % len(out)] ^= bits
    decode(bytes(out), ObjectReader())
