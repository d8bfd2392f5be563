"""Format sniffing, header resolution and line chunking of whole objects."""

from __future__ import annotations

import gzip
import io
from concurrent.futures import ThreadPoolExecutor

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.decode.errors import ErrorCounts
from streamer.decode.objects import ObjectReader, line_chunks
from streamer.ingest import Ingestor
from streamer.schema import DEFAULT_FIELDS
from tests.helpers import decode_bytes

LINE = "2 123456789010 eni-{i} 10.0.0.1 10.0.0.2 443 49152 6 {i} 840 1439387263 1439387264 {a} OK\n"
HEADER = " ".join(DEFAULT_FIELDS) + "\n"


def text(n: int, header: bool = True) -> bytes:
    body = "".join(LINE.format(i=i, a="ACCEPT" if i % 3 else "REJECT") for i in range(n))
    return ((HEADER if header else "") + body).encode()


def test_line_chunks_end_on_newlines_and_lose_nothing() -> None:
    data = text(5000)
    parts = [data[i : i + 777] for i in range(0, len(data), 777)]
    chunks = list(line_chunks(parts, size=10_000))
    assert b"".join(chunks) == data
    assert all(c.endswith(b"\n") for c in chunks)


def test_missing_final_newline() -> None:
    rows, errors, _ = decode_bytes(text(3).rstrip(b"\n"))
    assert len(rows) == 3
    assert errors.counts == {}


@pytest.mark.parametrize("compress", [False, True])
def test_many_chunks_count_exactly(compress: bool) -> None:
    data = text(20_000)
    blob = gzip.compress(data) if compress else data
    rows, errors, failure = decode_bytes([blob[i : i + 5000] for i in range(0, len(blob), 5000)])
    assert failure is None
    assert errors.counts == {}
    assert sorted(r["packets"] for r in rows) == list(range(20_000))


def test_header_order_wins_over_default() -> None:
    data = b"interface-id action bytes\neni-x REJECT 10\neni-y ACCEPT 5\n"
    rows, _, _ = decode_bytes(data)
    assert rows == [
        {"interface-id": "eni-x", "action": "REJECT", "bytes": 10},
        {"interface-id": "eni-y", "action": "ACCEPT", "bytes": 5},
    ]


@pytest.mark.parametrize("piece", [3, 17, 4096, 1 << 20])
def test_the_header_is_found_in_a_first_chunk_made_of_many_pieces(piece: int) -> None:
    """The header is read from the head of the first chunk, without joining it: whatever the pieces, and after
    many blank lines (more than the first look reads), it is the same header."""
    header = b"\n \n" * 3000 + b"interface-id action bytes packets\n"
    line = b"eni-x REJECT 10 1\n"
    data = header + line * 300
    rows, errors, failure = decode_bytes([data[i : i + piece] for i in range(0, len(data), piece)], chunk_bytes=5000)
    assert failure is None
    assert errors.counts == {}
    assert len(rows) == 300
    assert rows[0] == {"interface-id": "eni-x", "action": "REJECT", "bytes": 10, "packets": 1}


def test_unknown_field_in_header_is_read_as_a_string_and_named() -> None:
    rows, errors, failure = decode_bytes(b"version interface-id frobnicate\n2 eni-a x\n")
    assert failure is None
    assert rows == [{"version": 2, "interface-id": "eni-a", "frobnicate": "x"}]
    assert errors.unknown_fields == {"frobnicate"}


def test_log_format_for_headerless_input() -> None:
    rows, _, _ = decode_bytes(b"eni-a 7\n", "${interface-id} ${packets}")
    assert rows == [{"interface-id": "eni-a", "packets": 7}]


def test_truncated_gzip_keeps_what_decoded_and_reports() -> None:
    blob = gzip.compress(text(50_000))
    rows, _, failure = decode_bytes(blob[: len(blob) - 100])
    assert failure is not None
    assert failure.reason == "truncated"
    assert 0 < len(rows) < 50_000


def test_binary_garbage_is_unknown_format() -> None:
    _, _, failure = decode_bytes(b"\x00\x01\x02 not a flow log \x00" * 10)
    assert failure is not None
    assert failure.reason == "unknown_format"


def test_parquet_with_aws_column_names() -> None:
    table = pa.table(
        {
            "version": pa.array([2, 2], pa.int32()),
            "interface_id": ["eni-a", "eni-b"],
            "action": ["ACCEPT", None],
            "log_status": ["OK", "NODATA"],
            "packets": pa.array([3, None], pa.int64()),
            "bytes": pa.array([300, None], pa.int64()),
            "start": pa.array([1, 1], pa.int64()),
            "end": pa.array([2, 2], pa.int64()),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    rows, errors, failure = decode_bytes(buf.getvalue())
    assert failure is None
    assert errors.counts == {}
    assert rows[0] == {
        "version": 2,
        "interface-id": "eni-a",
        "packets": 3,
        "bytes": 300,
        "start": 1,
        "end": 2,
        "action": "ACCEPT",
        "log-status": "OK",
    }
    assert rows[1]["action"] is None


def test_cloudwatch_payload_and_control_message() -> None:
    doc = {
        "messageType": "DATA_MESSAGE",
        "logGroup": "/vpc/flowlogs",
        "logStream": "eni-a-all",
        "logEvents": [{"id": "1", "timestamp": 1, "message": LINE.format(i=1, a="REJECT").strip()}],
    }
    rows, _, _ = decode_bytes(orjson.dumps(doc))
    assert [r["action"] for r in rows] == ["REJECT"]
    rows, _, _ = decode_bytes(orjson.dumps({**doc, "messageType": "CONTROL_MESSAGE"}))
    assert rows == []


def decode_headerless(data: bytes) -> tuple[list[dict[str, object]], ErrorCounts, object]:
    """As a Kinesis batch, a CloudWatch sweep or a Firehose request hands on its event messages."""
    tables: list[pa.Table] = []
    with ThreadPoolExecutor(2) as pool:
        result = Ingestor(ObjectReader(headerless=True), lambda t: t, pool).run([data], tables.append)
    return [row for table in tables for row in table.to_pylist()], result.errors, result.failure


@pytest.mark.parametrize(
    "odd",
    [
        b'{"x":1}',  # an event message that is JSON
        b'  {"messageType": "DATA_MESSAGE", "logEvents": []}',
        b"PAR1 not a Parquet file",  # starts like the Parquet magic
        b"version account-id interface-id",  # looks like a header: still just a bad line
    ],
)
@pytest.mark.parametrize("where", ["first", "last"])
def test_headerless_lines_are_never_sniffed_an_odd_message_is_one_bad_line(odd: bytes, where: str) -> None:
    flows = text(5, header=False)
    data = odd + b"\n" + flows if where == "first" else flows + odd + b"\n"
    rows, errors, failure = decode_headerless(data)
    assert failure is None
    assert sorted(int(str(r["packets"])) for r in rows) == list(range(5))
    assert sum(errors.counts.values()) == 1


ODD_MESSAGES = st.sampled_from(
    [b'{"x":1}', b"{", b"[1, 2]", b"PAR1", b"\x1f\x8b\x08 not gzip", b"version interface-id", b"garbage", b"1 2 3"]
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 999), ODD_MESSAGES), min_size=1, max_size=40))
def test_headerless_batches_count_every_flow_line_and_one_error_per_odd_message(items: list[int | bytes]) -> None:
    """Whatever comes first or in between, a flow line counts and anything else is one bad line."""
    lines = [LINE.format(i=i, a="ACCEPT").encode().rstrip(b"\n") if isinstance(i, int) else i for i in items]
    rows, errors, failure = decode_headerless(b"\n".join(lines) + b"\n")
    assert failure is None
    assert sorted(int(str(r["packets"])) for r in rows) == sorted(i for i in items if isinstance(i, int))
    assert sum(errors.counts.values()) == sum(isinstance(i, bytes) for i in items)
