"""Run one object through decode and partial aggregation on a worker pool.

The calling thread inflates gzip and cuts line chunks (ISA-L releases the
GIL); workers parse each chunk with Arrow and reduce it to small partial
tables. At most `2 * workers + 2` chunks are in flight, which bounds memory, and
results are merged in order on the calling thread. Both replay and the live
service go through here, so they count identically.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import pyarrow as pa

from streamer.aggregate.state import FlowState
from streamer.decode.errors import DecodeError, ErrorCounts
from streamer.decode.objects import ObjectReader, Unit

R = TypeVar("R")
log = logging.getLogger(__name__)


@dataclasses.dataclass
class ObjectResult(Generic[R]):
    """What an object produced: merged partial results, skipped lines, row count."""

    errors: ErrorCounts
    rows: int
    results: list[R]
    #: Set when the object as a whole failed part-way (what decoded before still counts).
    failure: DecodeError | None = None


class Ingestor(Generic[R]):
    """Applies `reduce` (run on workers) to every decoded batch of an object."""

    def __init__(self, reader: ObjectReader, reduce: Callable[[pa.Table], R], pool: ThreadPoolExecutor) -> None:
        self.reader = reader
        self.reduce = reduce
        self.pool = pool
        # Enough chunks in flight that inflating never waits on one slow parse; still bounded.
        self.depth = 2 * (pool._max_workers or 1) + 2

    def run(self, raw: Iterable[bytes], sink: Callable[[R], None] | None = None) -> ObjectResult[R]:
        """Decode an object. With `sink`, each result is handed over in order, not kept.

        An object that turns out bad part-way (truncated or corrupt gzip,
        unknown format) sets `failure`; batches decoded before that point are
        valid records and are kept.
        """
        result: ObjectResult[R] = ObjectResult(ErrorCounts(), 0, [])
        pending: deque[Future[tuple[R, int, ErrorCounts]]] = deque()

        def collect(fut: Future[tuple[R, int, ErrorCounts]]) -> None:
            value, rows, errors = fut.result()
            result.rows += rows
            result.errors.merge(errors)
            if sink is None:
                result.results.append(value)
            else:
                sink(value)

        try:
            for unit in self.reader.units(raw):
                pending.append(self.pool.submit(self._work, unit))
                while len(pending) >= self.depth:
                    collect(pending.popleft())
            while pending:
                collect(pending.popleft())
        except DecodeError as exc:
            while pending:
                collect(pending.popleft())
            result.failure = exc
        finally:
            for fut in pending:
                fut.cancel()
        return result

    def _work(self, unit: Unit) -> tuple[R, int, ErrorCounts]:
        errors = ErrorCounts()
        table = unit(errors)
        return self.reduce(table), table.num_rows, errors


def account(result: ObjectResult[R], state: FlowState, location: str) -> str:
    """Count an object's skipped lines and its failure in `state`, log each reason once; returns the outcome.

    Replay and the live pipeline both go through here, so they report bad input alike.
    """
    state.add_errors(result.errors)
    for reason, example in result.errors.examples.items():
        log.warning("%s: skipped %d line(s): %s, e.g. %r", location, result.errors.counts[reason], reason, example)
    if result.failure is None:
        return "ok"
    state.count(result.failure.reason)
    log.error("%s: %s: %s", location, result.failure.reason, result.failure)
    return result.failure.reason
