"""TextDecoder: bad lines are skipped and counted, the rest counts exactly."""

from __future__ import annotations

from streamer.decode.errors import ErrorCounts
from streamer.decode.text import TextDecoder
from streamer.schema import DEFAULT_FIELDS

GOOD = b"2 123456789010 eni-a 10.0.0.1 10.0.0.2 443 49152 6 10 840 1439387263 1439387264 ACCEPT OK\n"
HEADER = b" ".join(f.encode() for f in DEFAULT_FIELDS)


def decode(chunk: bytes, columns: tuple[str, ...] | None = None) -> tuple[list[dict[str, object]], ErrorCounts]:
    errors = ErrorCounts()
    table = TextDecoder(DEFAULT_FIELDS, columns, header_line=HEADER).decode(chunk, errors)
    return table.to_pylist(), errors


def test_dash_is_null_and_numbers_are_typed() -> None:
    rows, errors = decode(b"2 123456789010 eni-a - - - - - - - 1431280876 1431280934 - NODATA\n")
    assert rows[0]["packets"] is None
    assert rows[0]["action"] is None
    assert rows[0]["start"] == 1431280876
    assert errors.counts == {}


def test_wrong_field_count_is_counted_and_the_rest_kept() -> None:
    rows, errors = decode(GOOD + b"2 123456789010 eni-a 10.0.0.1 ACCEPT OK\n" + GOOD)
    assert len(rows) == 2
    assert errors.counts == {"wrong_field_count": 1}
    assert "eni-a 10.0.0.1 ACCEPT" in errors.examples["wrong_field_count"]


def test_runs_of_spaces_and_trailing_space_are_repaired() -> None:
    rows, errors = decode(GOOD.replace(b" eni-a ", b"  eni-a   ") + GOOD.rstrip(b"\n") + b" \n")
    assert len(rows) == 2
    assert errors.counts == {}


def test_non_numeric_value_in_numeric_field() -> None:
    rows, errors = decode(GOOD + GOOD.replace(b" 840 ", b" 8x0 ") + GOOD)
    assert len(rows) == 2
    assert errors.counts == {"invalid_number": 1}


def test_number_too_large_for_int64_is_invalid() -> None:
    rows, errors = decode(GOOD.replace(b" 840 ", b" 99999999999999999999999 "))
    assert rows == []
    assert errors.counts == {"invalid_number": 1}


def test_number_too_large_for_an_int32_field_is_invalid_and_the_rest_kept() -> None:
    """A port of 2^32 used to escape as an Arrow cast error instead of a counted bad line."""
    rows, errors = decode(GOOD + GOOD.replace(b" 443 ", b" 4294967296 ") + GOOD)
    assert len(rows) == 2
    assert errors.counts == {"invalid_number": 1}
    assert "4294967296" in errors.examples["invalid_number"]


def test_undecodable_bytes_drop_only_their_line() -> None:
    rows, errors = decode(GOOD + GOOD.replace(b"eni-a", b"eni-\xff\xfe") + GOOD)
    assert len(rows) == 2
    assert errors.counts == {"invalid_utf8": 1}


def test_literal_replacement_character_is_valid_text() -> None:
    rows, errors = decode(GOOD.replace(b"eni-a", "eni-\ufffd".encode()))
    assert rows[0]["interface-id"] == "eni-\ufffd"
    assert errors.counts == {}


def test_repeated_header_lines_and_blank_lines_are_not_records() -> None:
    rows, errors = decode(HEADER + b"\n" + GOOD + b"\n\n" + HEADER + b"\r\n" + GOOD)
    assert len(rows) == 2
    assert errors.counts == {}


def test_crlf_line_endings() -> None:
    rows, errors = decode(GOOD.replace(b"\n", b"\r\n") * 2)
    assert [r["log-status"] for r in rows] == ["OK", "OK"]
    assert errors.counts == {}


def test_millisecond_timestamps_become_seconds() -> None:
    rows, _ = decode(GOOD.replace(b"1439387263 1439387264", b"1512564058000 1512564059000") + GOOD)
    assert [(r["start"], r["end"]) for r in rows] == [(1512564058, 1512564059), (1439387263, 1439387264)]


def test_only_requested_columns_are_converted() -> None:
    rows, _ = decode(GOOD, columns=("interface-id", "bytes"))
    assert rows == [{"interface-id": "eni-a", "bytes": 840}]


def test_empty_chunk() -> None:
    rows, errors = decode(b"")
    assert rows == []
    assert errors.counts == {}


def test_a_line_with_a_nul_byte_is_one_error_on_either_path_and_the_rest_counts() -> None:
    """No store can hold a NUL in text (PostgreSQL refuses it): the line goes, counted, before it reaches one."""
    good = b"2 1 eni-a 1.1.1.1 2.2.2.2 1 2 6 1 40 100 160 ACCEPT OK\n"
    chunk = good * 3 + b"2 1 eni-a\x00b 1.1.1.1 2.2.2.2 1 2 6 1 40 100 160 ACCEPT OK\n" + good * 70
    for native in (True, False):
        decoder = TextDecoder(DEFAULT_FIELDS, None)
        decoder.native = decoder.native and native
        errors = ErrorCounts()
        table = decoder.decode(chunk, errors)
        assert table.num_rows == 73
        assert errors.counts == {"invalid_utf8": 1}
        assert all("\x00" not in str(v) for v in table.column("interface-id").to_pylist())
