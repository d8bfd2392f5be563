"""Concatenated JSON of any size: documents found across chunk edges, never cut at a newline, memory bounded
by the largest document, each broken one a single error."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.decode.cloudwatch import MAX_JSON_BYTES, Documents
from streamer.decode.objects import ObjectReader
from streamer.ingest import Ingestor
from tests.firehose_data import PACKINGS, add, pack, payload_stream, pieces, totals

ODD = [{"logEvents": [{"message": 'a }{ b \\" }{ "\\\\'}], "n": i, "tail": "x\\\\"} for i in range(12)]


def split(data: bytes, step: int, limit: int = 1 << 20) -> tuple[list[object], dict[str, int]]:
    documents = Documents(limit)
    found: list[object] = []
    for at in range(0, len(data), step):
        found += documents.feed(data[at : at + step])
    found += documents.close()
    return found, documents.errors.counts


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 10_000])
@pytest.mark.parametrize("separator", [b"", b"\n", b" \r\n "])
def test_documents_with_braces_quotes_and_backslashes_in_strings_split_exactly_wherever_the_chunks_cut(
    step: int, separator: bytes
) -> None:
    data = separator.join(orjson.dumps(d) for d in ODD)
    assert split(data, step) == (ODD, {})


@pytest.mark.parametrize("step", [1, 5, 100_000])
def test_bytes_between_documents_and_a_broken_document_are_one_error_each(step: int) -> None:
    docs = [{"logEvents": [], "n": i} for i in range(4)]
    d = [orjson.dumps(x) for x in docs]
    data = d[0] + b"\ngarbage line\n" + d[1] + b'\n{"logEvents": [ truncated\n' + d[2] + b"\n" + d[3] + b"\n"
    found, errors = split(data, step)
    assert found == docs
    assert errors == {"invalid_json": 2}


@pytest.mark.parametrize("step", [100, 1_000_000])
def test_a_document_over_the_limit_is_one_error_walked_to_its_end_and_the_stream_goes_on(step: int) -> None:
    small = [{"logEvents": [], "n": i} for i in range(2)]
    big = {"logEvents": [{"message": "x" * 5000, "brace": "}{"}]}
    data = orjson.dumps(small[0]) + orjson.dumps(big) + orjson.dumps(small[1])
    found, errors = split(data, step, limit=1000)
    assert found == small
    assert errors == {"invalid_json": 1}


def test_a_document_that_never_closes_is_one_error_and_holds_no_more_than_the_limit() -> None:
    documents = Documents(limit=1 << 16)
    assert documents.feed(orjson.dumps({"logEvents": []})) == []  # whole only once the next one starts
    assert documents.feed(b'{"logEvents": [{"message": "') == [{"logEvents": []}]
    for _ in range(50):
        assert documents.feed(b"\\\\ no quote here }{ " * 1000) == []
        assert len(documents._buf) <= (1 << 16) + 20_000
    assert documents.close() == []
    assert documents.errors.counts == {"invalid_json": 1}


Totals = dict[str, tuple[int, int, int]]


def decode_totals(chunks: Iterable[bytes], chunk_bytes: int = 4 << 20) -> tuple[Totals, dict[str, int], object]:
    """Per-interface totals of one object through the real decode path (tables reduced on the workers)."""
    found: Totals = {}
    with ThreadPoolExecutor(2) as pool:
        result = Ingestor(ObjectReader(chunk_bytes=chunk_bytes), totals, pool).run(chunks, lambda t: add(found, t))
    return found, result.errors.counts, result.failure


@pytest.mark.parametrize("packing", PACKINGS)
def test_a_50_mb_firehose_object_of_back_to_back_payloads_counts_every_record(packing: str) -> None:
    docs, table = payload_stream(50 << 20, seed=3)
    raw = b"".join(docs)
    assert len(raw) >= 50 << 20
    assert b"\n" not in raw  # one 50 MB "line"
    data = pack(docs, packing)
    del docs, raw
    found, errors, failure = decode_totals(pieces(data))
    assert failure is None
    assert errors == {}
    assert found == totals(table)
    assert sum(c for c, _, _ in found.values()) == table.num_rows


def test_payloads_one_per_line_with_a_broken_one_keep_the_documents_around_it() -> None:
    docs, table = payload_stream(2 << 20, seed=5)
    broken = docs[10][: len(docs[10]) // 2]  # truncated inside an event
    data = b"\n".join([*docs[:10], broken, *docs[11:]]) + b"\n"
    lost = orjson.loads(docs[10])["logEvents"]
    found, errors, failure = decode_totals(pieces(data, 1 << 16), chunk_bytes=1 << 18)
    assert failure is None
    assert errors == {"invalid_json": 1}
    assert sum(c for c, _, _ in found.values()) == table.num_rows - len(lost)


def test_text_lines_longer_than_a_mebibyte_are_still_cut() -> None:
    """Only JSON is exempt: a text "line" without newlines is cut, fails as a line, and the rest counts."""
    line = b"2 123456789012 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 40 100 160 ACCEPT OK\n"
    data = line + b"x" * (3 << 20) + b"\n" + line
    found, errors, failure = decode_totals(pieces(data, 1 << 18))
    assert failure is None
    assert found == {"eni-1": (2, 2, 80)}
    assert sum(errors.values()) >= 1


def test_a_table_helper_sanity_check() -> None:
    table = pa.table({"interface-id": ["a", "a", "b"], "packets": ["1", "-", "2"], "bytes": ["10", "-", "20"]})
    assert totals(table) == {"a": (2, 1, 10), "b": (1, 2, 20)}


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(alphabet=st.sampled_from('{}"\\ab\n\x00é')),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    docs=st.lists(st.dictionaries(st.text(max_size=4), _json_value, max_size=4), max_size=6),
    separators=st.lists(st.sampled_from([b"", b"\n", b"  ", b"\r\n"]), min_size=6, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
)
def test_any_documents_cut_anywhere_come_back_whole_and_in_order(
    docs: list[dict[str, object]], separators: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(orjson.dumps(d) + sep for d, sep in zip(docs, separators, strict=False))
    documents = Documents()
    found: list[object] = []
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        found += documents.feed(data[start:cut])
        start = max(start, cut)
    found += documents.feed(data[start:]) + documents.close()
    assert (found, documents.errors.counts) == (docs, {})


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | st.text(alphabet=st.sampled_from('{}"\\:,[] a\n'), max_size=200).map(str.encode))
def test_any_bytes_split_into_documents_or_errors_and_never_raise(data: bytes) -> None:
    documents = Documents(limit=64)
    found = documents.feed(data[: len(data) // 2]) + documents.feed(data[len(data) // 2 :]) + documents.close()
    assert all(isinstance(d, dict) for d in found)
    assert documents.errors.total <= len(data)


def test_the_default_limit_on_one_document_is_64_mib() -> None:
    assert Documents().limit == MAX_JSON_BYTES == 64 << 20
