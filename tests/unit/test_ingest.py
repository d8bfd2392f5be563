"""The one rule for a bad input (streamer/ingest.py): whatever decoding one input raises ends that input
with a bounded reason, what decoded before still counts; read failures, our own reduce step failing and
a MemoryError pass through untouched (the input is read again)."""

from __future__ import annotations

import functools
import gzip
import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamer.aggregate.state import FlowState
from streamer.decode.errors import DecodeError, ErrorCounts
from streamer.decode.objects import ObjectReader
from streamer.ingest import FAILED, Ingestor, account
from streamer.schema import DEFAULT_FIELDS

LINE = b"2 123456789012 eni-a 10.0.0.1 10.0.0.2 1024 22 6 1 40 1700000000 1700000060 REJECT OK\n"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as p:
        yield p


def text(lines: int) -> bytes:
    return " ".join(DEFAULT_FIELDS).encode() + b"\n" + LINE * lines


class _BadEni:
    """A reader whose units fail while decoding a chunk that holds eni-bad (as a payload of the wrong shape would)."""

    def __init__(self, reader: ObjectReader) -> None:
        self.reader = reader

    def units(self, raw: Iterator[bytes]) -> Iterator[Callable[[ErrorCounts], pa.Table]]:
        for unit in self.reader.units(raw):
            yield functools.partial(self._decode, unit)

    @staticmethod
    def _decode(unit: Callable[[ErrorCounts], pa.Table], errors: ErrorCounts) -> pa.Table:
        table = unit(errors)
        if "eni-bad" in table.column("interface-id").to_pylist():
            raise TypeError("'int' object is not iterable")
        return table


def test_an_unexpected_exception_fails_the_input_with_one_bounded_reason(pool: ThreadPoolExecutor) -> None:
    kept: list[int] = []
    reader = _BadEni(ObjectReader(chunk_bytes=len(LINE) * 10))
    bad = LINE.replace(b"eni-a", b"eni-bad")
    pieces = [text(10), LINE * 10, bad * 10] + [LINE * 10] * 7  # ten chunks of ten records; the third fails
    result = Ingestor(reader, lambda t: int(t.num_rows), pool).run(pieces, kept.append)  # type: ignore[arg-type]
    assert isinstance(result.failure, DecodeError)
    assert result.failure.reason == "decode_failed"
    assert "TypeError: 'int' object is not iterable" in str(result.failure)
    assert sum(kept) == 20  # the two batches before the failing one count; the ones after it do not
    state = FlowState()
    assert account(result, state, "s3://b/k") == FAILED
    assert state.decode_errors == {"decode_failed": 1}


@pytest.mark.parametrize("error", [MemoryError("out of memory"), TypeError("a bug in the reduce step")])
def test_a_failing_reduce_step_is_not_bad_input_and_passes_through(pool: ThreadPoolExecutor, error: Exception) -> None:
    """Issue 28 (b): a MemoryError or a bug on a decode worker's reduce step used to become a decode failure, and
    the object was committed as done with only the batches before it counted. It is not the object's fault: it
    passes through (the source does not acknowledge, the object is read again)."""

    def reduce(table: pa.Table) -> int:
        if "eni-bad" in table.column("interface-id").to_pylist():
            raise error
        return int(table.num_rows)

    reader = ObjectReader(chunk_bytes=len(LINE) * 10)
    bad = LINE.replace(b"eni-a", b"eni-bad")
    pieces = [text(10), LINE * 10, bad * 10] + [LINE * 10] * 7
    with pytest.raises(type(error), match=str(error)):
        Ingestor(reader, reduce, pool).run(pieces)


def test_a_memory_error_while_decoding_passes_through(pool: ThreadPoolExecutor) -> None:
    def short(errors: ErrorCounts) -> pa.Table:
        raise MemoryError("no room")

    class Short(_BadEni):
        def units(self, raw: Iterator[bytes]) -> Iterator[Callable[[ErrorCounts], pa.Table]]:
            for _ in self.reader.units(raw):
                yield short

    with pytest.raises(MemoryError):
        Ingestor(Short(ObjectReader()), lambda t: t, pool).run([text(10)])  # type: ignore[arg-type]


def test_a_parquet_list_column_fails_the_file_as_unsupported_column(pool: ThreadPoolExecutor) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"interface_id": [["eni-a"]], "action": ["ACCEPT"], "packets": [1]}), buf)
    result = Ingestor(ObjectReader(), lambda t: t, pool).run([buf.getvalue()])
    assert result.failure is not None
    assert result.failure.reason == "unsupported_column"
    assert "interface_id" in str(result.failure)


def test_what_the_input_iterator_raises_passes_through_unchanged(pool: ThreadPoolExecutor) -> None:
    """A network read failing is not the object's fault: the source retries it (bounded), not the decoder."""

    def body() -> Iterator[bytes]:
        data = gzip.compress(text(1000))
        yield data[:100]
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError, match="peer went away"):
        Ingestor(ObjectReader(), lambda t: t, pool).run(body())


def test_a_failure_part_way_keeps_what_decoded_before(pool: ThreadPoolExecutor) -> None:
    data = gzip.compress(text(5000))
    kept: list[pa.Table] = []
    reader = ObjectReader(chunk_bytes=len(LINE) * 100)
    result = Ingestor(reader, lambda t: t, pool).run([data[: len(data) // 2]], kept.append)
    assert result.failure is not None
    assert result.failure.reason == "truncated"
    assert 0 < sum(t.num_rows for t in kept) < 5000


def test_what_the_sink_raises_passes_through_unchanged(pool: ThreadPoolExecutor) -> None:
    """`replay --output records | head` closes stdout: that is not a bad input."""

    def sink(table: pa.Table) -> None:
        raise BrokenPipeError("stdout closed")

    with pytest.raises(BrokenPipeError):
        Ingestor(ObjectReader(), lambda t: t, pool).run([text(10)], sink)


def test_several_objects_in_a_row_give_what_each_gives_alone(pool: ThreadPoolExecutor) -> None:
    """`run_many` keeps the next object's chunks decoding while the previous one finishes; results stay per object."""
    reader = ObjectReader(chunk_bytes=len(LINE) * 7)
    objects = [gzip.compress(text(n)) for n in (30, 1, 0, 55)] + [text(12)]
    ingest = Ingestor(reader, lambda t: int(t.num_rows), pool)
    alone = [ingest.run([o]) for o in objects]
    together = list(ingest.run_many([[o] for o in objects]))
    assert [(r.rows, r.results, r.failure) for r in together] == [(r.rows, r.results, r.failure) for r in alone]
    assert [r.rows for r in together] == [30, 1, 0, 55, 12]


def test_one_bad_object_among_several_fails_alone(pool: ThreadPoolExecutor) -> None:
    reader = _BadEni(ObjectReader(chunk_bytes=len(LINE) * 10))
    bad = LINE.replace(b"eni-a", b"eni-bad")
    truncated = gzip.compress(text(5000))
    objects = [
        [text(20)],
        [text(10), LINE * 10, bad * 10, LINE * 30],  # its third chunk fails: the two before count, the rest not
        [truncated[: len(truncated) // 2]],  # cut short: what was cut before the end counts
        [text(25)],
    ]
    results = list(Ingestor(reader, lambda t: int(t.num_rows), pool).run_many(objects))  # type: ignore[arg-type]
    assert [r.failure.reason if r.failure else None for r in results] == [None, "decode_failed", "truncated", None]
    assert sum(results[0].results) == 20
    assert sum(results[1].results) == 20
    assert 0 < sum(results[2].results) < 5000
    assert sum(results[3].results) == 25


def test_a_read_failure_in_a_later_object_passes_through(pool: ThreadPoolExecutor) -> None:
    def body() -> Iterator[bytes]:
        yield text(5)[:50]
        raise ConnectionResetError("peer went away")

    results = Ingestor(ObjectReader(), lambda t: t, pool).run_many([[text(3)], body()])
    with pytest.raises(ConnectionResetError, match="peer went away"):
        list(results)


def test_the_next_object_decodes_while_the_previous_one_finishes(pool: ThreadPoolExecutor) -> None:
    """No pause at object boundaries: the first object's only batch finishes only once the second object's
    batch has started on the other worker (waiting with a deadline, so a regression fails instead of hanging)."""
    second_started = threading.Event()

    def reduce(table: pa.Table) -> bool:
        if "eni-b" in table.column("interface-id").to_pylist():
            second_started.set()
            return True
        return second_started.wait(timeout=30)

    objects = [[text(5)], [text(5).replace(b"eni-a", b"eni-b")]]
    results = list(Ingestor(ObjectReader(), reduce, pool).run_many(objects))
    assert [r.results for r in results] == [[True], [True]]
