"""The native tokenizer (_scan.c) and Arrow's CSV reader give the same table, record for record.

Every chunk is decoded both ways: with the native part, and with it turned
off (what a machine without a C compiler runs). Clean chunks must be taken by
the native part; chunks with bad lines must fall back to Arrow, which counts
and repairs them. Either way the tables and error counts are equal.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.decode import text
from streamer.decode.errors import ErrorCounts
from streamer.decode.objects import ObjectReader, line_parts
from streamer.decode.text import TextDecoder, join
from streamer.schema import DEFAULT_FIELDS, FIELDS, V5_ALL_FIELDS
from tests.native import require_native


@pytest.fixture(autouse=True)
def native_built() -> None:
    require_native(text._scan is not None, "the native tokenizer")


def both(fields: tuple[str, ...], chunk: bytes, columns: tuple[str, ...] | None = None) -> tuple[pa.Table, pa.Table, bool]:
    """(native table, Arrow table, whether the native part took the chunk) with equal error counts."""
    decoder = TextDecoder(fields, columns, header_line=" ".join(fields).encode())
    decoder.native = True
    native_errors, arrow_errors = ErrorCounts(), ErrorCounts()
    native = decoder.decode(chunk, native_errors)
    taken = decoder._scan(chunk) is not None
    decoder.native = False
    arrow = decoder.decode(chunk, arrow_errors)
    assert native_errors.counts == arrow_errors.counts
    assert native_errors.examples == arrow_errors.examples
    return native, arrow, taken


def assert_same(native: pa.Table, arrow: pa.Table) -> None:
    assert native.schema == arrow.schema
    assert native.to_pylist() == arrow.to_pylist()
    assert native.combine_chunks().equals(arrow.combine_chunks())


def test_a_clean_chunk_is_taken_natively_with_arrow_types() -> None:
    chunk = (
        b"2 123456789010 eni-1 10.0.0.1 10.0.0.2 443 5000 6 10 840 1700000000 1700000060 ACCEPT OK\n"
        b"2 123456789010 eni-2 - - - - - - - 1700000000 1700000060 - NODATA\r\n"
        b"\n"
        b"2 123456789010 eni-1 2001:db8::1 10.0.0.2 999999999 1 17 9999999999999 0 1700000000 1700000060 REJECT OK"
    )
    native, arrow, taken = both(DEFAULT_FIELDS, chunk)
    assert taken
    assert native.num_rows == 3
    assert_same(native, arrow)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"2 123456789010 eni-1 10.0.0.1 10.0.0.2 443 5000 6 10 840 1700000000 1700000060 ACCEPT", "a field short"),
        (b"2 123456789010 eni-1 10.0.0.1 10.0.0.2 443 5000 6 10 840 1700000000 1700000060 ACCEPT OK x", "a field more"),
        (b"2 123456789010 eni-1  10.0.0.1 10.0.0.2 443 5000 6 10 840 1700000000 1700000060 ACCEPT", "a double space"),
        (b"2 123456789010 eni-1 10.0.0.1 10.0.0.2 443 5000 6 ten 840 1700000000 1700000060 ACCEPT OK", "a word for a number"),
        (b"2 123456789010 eni-1 10.0.0.1 10.0.0.2 443 5000 6 1234567890123456789 840 1 2 ACCEPT OK", "19 digits"),
        (b"2 123456789010 eni-1 10.0.0.1 10.0.0.2 4294967296 5000 6 10 840 1 2 ACCEPT OK", "beyond int32"),
        (b"2 123456789010 eni-1 10.0.0.1 10.0.0.2 443 5000 6 10 840 1700000000 1700000060 ACCEPT OK ", "a trailing space"),
        (b"2 123456789010 eni-1 10.0.0.1 10.0.0.2 443 5000 6 +10 840 1700000000 1700000060 ACCEPT OK", "a signed number"),
    ],
)
def test_a_chunk_with_a_bad_line_falls_back_to_arrow(line: bytes, why: str) -> None:
    good = b"2 123456789010 eni-1 10.0.0.1 10.0.0.2 443 5000 6 10 840 1700000000 1700000060 ACCEPT OK\n"
    native, arrow, taken = both(DEFAULT_FIELDS, good + line + b"\n" + good)
    assert not taken, why
    assert_same(native, arrow)


def test_epoch_milliseconds_are_normalized_on_both_paths() -> None:
    chunk = b"2 123456789010 eni-1 10.0.0.1 10.0.0.2 443 5000 6 10 840 1700000000000 1700000060000 ACCEPT OK\n"
    native, arrow, taken = both(DEFAULT_FIELDS, chunk)
    assert taken
    assert native.column("start").to_pylist() == [1700000000]
    assert_same(native, arrow)


# --- property: random chunks, clean and dirty, in random field orders and column choices ----------

NUMBER = st.one_of(st.integers(0, 2**31 - 1).map(str), st.integers(0, 10**18 - 1).map(str), st.just("-"))
WORD = st.one_of(
    st.sampled_from(["ACCEPT", "REJECT", "OK", "NODATA", "SKIPDATA", "eni-0a1b", "eni-0c2d", "-", "egress", "10.0.0.1"]),
    st.text(alphabet="abcdef0123456789:.-_/", min_size=1, max_size=12),
)
DIRT = st.sampled_from(["", " ", "x", "1.5", "-1", "99999999999999999999", "\t7"])


@st.composite
def chunks(draw: st.DrawFn) -> tuple[tuple[str, ...], tuple[str, ...], bytes]:
    fields = tuple(draw(st.permutations(V5_ALL_FIELDS))[: draw(st.integers(3, len(V5_ALL_FIELDS)))])
    columns = tuple(f for f in fields if draw(st.booleans())) or fields[:1]
    lines = []
    for _ in range(draw(st.integers(1, 40))):
        values = [draw(NUMBER if FIELDS[f].numeric else WORD) for f in fields]
        if draw(st.integers(0, 30)) == 0:  # now and then a bad value or a bad field count
            at = draw(st.integers(0, len(values) - 1))
            values[at] = draw(DIRT)
        if draw(st.integers(0, 40)) == 0:
            values = values[:-1]
        lines.append(" ".join(values) + draw(st.sampled_from(["\n", "\n", "\n", "\r\n", "\n\n"])))
    chunk = "".join(lines)
    if draw(st.booleans()):
        chunk = chunk.rstrip("\n")  # the last line without its newline
    return fields, columns, chunk.encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks())
def test_native_and_arrow_agree_on_random_chunks(case: tuple[tuple[str, ...], tuple[str, ...], bytes]) -> None:
    fields, columns, chunk = case
    native, arrow, _ = both(fields, chunk, columns)
    assert_same(native, arrow)


def test_clean_random_chunks_are_taken_natively() -> None:
    """Not only the fallback is exercised: a clean v5 chunk with nulls everywhere goes native."""
    line = " ".join("-" if i % 3 == 0 else ("7" if FIELDS[f].numeric else "w") for i, f in enumerate(V5_ALL_FIELDS))
    native, arrow, taken = both(V5_ALL_FIELDS, (line + "\n").encode() * 100)
    assert taken
    assert_same(native, arrow)


def test_every_corpus_text_file_decodes_the_same_both_ways(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(p for p in corpus.rglob("*") if p.suffix in (".log", ".gz") and "parquet" not in p.name)
    assert len(files) >= 30
    for path in files:
        results = []
        for native in (True, False):
            monkeypatch.setattr(text, "NATIVE", native)
            reader = ObjectReader(chunk_bytes=1 << 12)
            errors = ErrorCounts()
            try:
                tables = [unit(errors) for unit in reader.units([path.read_bytes()])]
                outcome = ([row for t in tables for row in t.to_pylist()], errors.counts)
            except Exception as exc:  # a file the reader refuses: refused the same way both times
                outcome = ([], {type(exc).__name__: str(exc)})
            results.append(outcome)
        assert results[0] == results[1], path


# --- chunks as their parts: the pieces the inflater produced, never joined ---------------------------

HEADER_LINE = " ".join(DEFAULT_FIELDS)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 400), min_size=1, max_size=30),
    st.integers(20, 200),
    st.sampled_from([1_000, 3_000, 100_000]),
)
def test_parts_decode_like_their_join(cuts: list[int], n: int, size: int) -> None:
    lines = [
        f"2 123456789010 eni-{i % 7} 10.0.0.{i % 250} 10.0.1.1 {i} 443 6 {i} {i * 10} 1700000000 1700000060 "
        f"{'REJECT' if i % 3 else 'ACCEPT'} OK"
        for i in range(n)
    ]
    lines.insert(n // 2, HEADER_LINE)  # a repeated header line (concatenated objects) is no record
    data = (HEADER_LINE + "\n" + "\n".join(lines) + "\n").encode()
    pieces, at = [], 0
    for cut in cuts:
        pieces.append(data[at : at + cut])
        at += cut
    pieces.append(data[at:])
    pieces = [p for p in pieces if p]
    chunks = list(line_parts(pieces, size))
    assert b"".join(join(c) for c in chunks) == data
    decoder = TextDecoder(DEFAULT_FIELDS, header_line=HEADER_LINE.encode())
    rows = []
    for chunk in chunks:
        if isinstance(chunk, tuple):
            assert all(bytes(p).endswith(b"\n") for p in chunk)  # every part ends a line
            assert decoder._scan(chunk) is not None  # taken natively, as its parts
        decoder.native = True
        native = decoder.decode(chunk, ErrorCounts())
        decoder.native = False
        arrow = decoder.decode(join(chunk), ErrorCounts())
        assert_same(native, arrow)
        rows.extend(native.column("srcport").to_pylist())
    assert rows == list(range(n))
