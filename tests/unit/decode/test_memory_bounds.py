"""What one input makes the process hold is bounded by inflated bytes, not by compressed ones (issue 29 item 3).

Python allocations are measured with tracemalloc (Arrow's own buffers are not in it: that is the
point, a record's events must not become Python objects). bench/memory.py measures the same cases
at full scale as peak RSS.
"""

from __future__ import annotations

import base64
import gzip
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import orjson

from streamer.decode.cloudwatch import MAX_RECORD_BYTES, unpack_records
from streamer.decode.errors import ErrorCounts
from streamer.decode.text import MAX_KEPT_BAD_ROWS, TextDecoder
from streamer.schema import DEFAULT_FIELDS
from streamer.sources.firehose_http import records_lines

LINE = "2 123456789012 eni-0a1b2c3d 10.0.0.1 10.0.0.2 443 49152 6 1 40 1700000000 1700000060 ACCEPT OK"
MIB = 1 << 20


def peak(call: Callable[[], Any]) -> tuple[Any, int]:
    """What `call` returns, and the most Python memory it held at once beyond what was there before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = call()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def good_record(*lines: str) -> bytes:
    events = [{"id": str(i), "timestamp": 1, "message": line} for i, line in enumerate(lines)]
    return gzip.compress(orjson.dumps({"messageType": "DATA_MESSAGE", "logGroup": "g", "logStream": "s", "logEvents": events}))


def bomb(inflated: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MIB)
    return b"".join([*(compressor.compress(zeros) for _ in range(inflated // MIB)), compressor.flush()])


def tiny_events(inflated: int) -> bytes:
    """A gzip'd payload of one-byte events, about `inflated` bytes once inflated."""
    piece = ",".join(f'{{"id":"{i}","timestamp":1,"message":"x"}}' for i in range(10_000)).encode()
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    out = [compressor.compress(b'{"messageType":"DATA_MESSAGE","logGroup":"g","logStream":"s","logEvents":[')]
    written = 0
    while written < inflated:
        out.append(compressor.compress((b"," if written else b"") + piece))
        written += len(piece) + 1
    out.append(compressor.compress(b"]}"))
    out.append(compressor.flush())
    return b"".join(out)


def test_a_gzip_bomb_record_is_one_error_and_the_rest_of_the_batch_counts() -> None:
    records = [good_record(LINE), bomb(4 * MAX_RECORD_BYTES), good_record(LINE, LINE)]
    (end, text, errors), held = peak(lambda: unpack_records(records))
    assert end == 3
    assert text == (LINE + "\n").encode() * 3
    assert errors.counts == {"record_too_large": 1}
    assert "record 1" in errors.examples["record_too_large"]
    assert held < MAX_RECORD_BYTES + 8 * MIB  # never the 64 MiB it inflates to


def test_a_batch_of_records_is_cut_at_the_text_limit() -> None:
    records = [good_record(*[LINE] * 100) for _ in range(10)]
    text_per_record = 100 * (len(LINE) + 1)
    end, text, errors = unpack_records(records, 0, limit=3 * text_per_record)
    assert (end, len(text), errors.counts) == (3, 3 * text_per_record, {})
    end, text, _ = unpack_records(records, 8, limit=3 * text_per_record)
    assert (end, len(text)) == (10, 2 * text_per_record)
    end, text, _ = unpack_records(records, 0, limit=1)  # at least one record, however small the limit
    assert end == 1


def test_a_kinesis_payload_of_tiny_events_is_never_a_python_object_per_event() -> None:
    record = tiny_events(8 * MIB)
    (end, text, errors), held = peak(lambda: unpack_records([record]))
    assert end == 1
    assert errors.counts == {}
    events = text.count(b"\n")
    assert events > 200_000
    assert text == b"x\n" * events
    assert held < 3 * 8 * MIB  # the inflated record and its text; orjson's objects alone are ~20x


def test_a_firehose_record_of_tiny_events_is_never_a_python_object_per_event() -> None:
    """The endpoint's record parser (issue 29: a 10.5 KB request raised peak RSS by 76 MiB)."""
    records: list[Any] = [{"data": base64.b64encode(tiny_events(8 * MIB)).decode()}]
    found, held = peak(lambda: records_lines(records, 64 * MIB))
    assert found.errors == {}
    assert sum(chunk.count(b"\n") for chunk in found.chunks) > 200_000
    assert held < 3 * 8 * MIB


def test_lines_of_the_wrong_field_count_are_counted_without_holding_each() -> None:
    """A chunk of a million bad lines: counted one by one, but only the first few kept (for repair)."""
    decoder = TextDecoder(DEFAULT_FIELDS)
    errors = ErrorCounts()
    chunk = b"x\n" * 1_000_000
    table, held = peak(lambda: decoder.decode(chunk, errors))
    assert table.num_rows == 0
    assert errors.counts == {"wrong_field_count": 1_000_000}
    assert held < 8 * MIB  # a Python string per line would be ~60 MiB
    assert MAX_KEPT_BAD_ROWS <= 100_000


def test_every_repairable_line_of_a_chunk_is_repaired_however_many() -> None:
    """Keeping bad rows bounded must not cost the rows that can be repaired: a v11 tag value with a space
    (or a double space) on every line of a chunk is common, and each such line still counts."""
    n = 2 * MAX_KEPT_BAD_ROWS + 7
    tagged = TextDecoder((*DEFAULT_FIELDS, "instance-tag"))
    errors = ErrorCounts()
    table = tagged.decode(f"{LINE} web server\n".encode() * n, errors)
    assert errors.counts == {}
    assert table.num_rows == n
    assert set(table.column("instance-tag").to_pylist()) == {"web server"}
    errors = ErrorCounts()
    table = TextDecoder(DEFAULT_FIELDS).decode(f"{LINE.replace(' ACCEPT', '  ACCEPT')}\nx\n".encode() * n, errors)
    assert errors.counts == {"wrong_field_count": n}
    assert table.num_rows == n
