"""Run objects through decode and partial aggregation on a worker pool.

The calling thread inflates gzip and cuts line chunks (ISA-L releases the
GIL); workers parse each chunk with Arrow and reduce it to small partial
tables. At most `2 * workers + 2` chunks are in flight, which bounds memory, and
results are merged in order on the calling thread. Several objects in a row
(`run_many`) flow through without a pause between them. Both replay and the live
service go through here, so they count identically.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import pyarrow as pa

from streamer.aggregate.state import FlowState
from streamer.decode.errors import DecodeError, ErrorCounts, as_decode_error
from streamer.decode.objects import ObjectReader, Unit

R = TypeVar("R")
log = logging.getLogger(__name__)

#: the outcome of an input that failed as a whole (streamer_objects_total); its reason is a decode error
FAILED = "failed"


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

        This is the one rule for bad input, for replay and every source alike:
        whatever decoding raises (a DecodeError, or anything else: a TypeError
        from a payload of the wrong shape, an Arrow error from an odd Parquet
        column) ends the object and sets `failure`, a DecodeError with a bounded
        reason; batches decoded before the failing one are valid records and
        are kept. What is not the object's fault passes through unchanged, and
        the object is not done (its source reads it again): what the *input
        iterator* raises (a network read, a shutdown), what `sink` raises, what
        the `reduce` step raises (our own code: a bug there must not mark an
        object done with part of it counted), and a MemoryError anywhere.
        """
        (result,) = self._drive([raw], sink)
        return result

    def run_many(
        self, objects: Iterable[Iterable[bytes]], each: Callable[[R], None] | None = None
    ) -> Iterator[ObjectResult[R]]:
        """`run` over objects in order, one result each (results kept), as each object's last batch is in;
        `each` sees every result in order as soon as it is in (e.g. to drop what need not be kept).

        The next object's chunks go to the workers while the previous one's
        finish, as if they were one object: waiting for each object's last
        batch before inflating the next would leave a core idle at every
        object boundary, which is most of the time for small objects.
        Objects fail one by one, under `run`'s rule.
        """
        return self._drive(objects, each, keep=True)

    def _drive(
        self, objects: Iterable[Iterable[bytes]], sink: Callable[[R], None] | None, keep: bool = False
    ) -> Iterator[ObjectResult[R]]:
        jobs: deque[_Job[R]] = deque()  # objects not handed out yet, in order
        pending: deque[tuple[_Job[R], Future[tuple[R, int, ErrorCounts]]]] = deque()

        def collect() -> None:
            job, fut = pending.popleft()
            if job.dropping:  # a unit before it failed: it is dropped, unseen
                if not fut.cancel():
                    fut.exception()  # running: wait, so that the in-flight bound holds
                return
            try:
                value, rows, errors = fut.result()
            except Exception as exc:  # a unit failed on a worker: it and the object's units after it are dropped
                job.failure, job.dropping = exc, True
                return
            job.result.rows += rows
            job.result.errors.merge(errors)
            if sink is not None:
                try:
                    sink(value)
                except Exception as exc:  # e.g. stdout closed under `replay --output records | head`
                    raise _NotTheInput(exc) from exc
            if sink is None or keep:
                job.result.results.append(value)

        def finished() -> Iterator[ObjectResult[R]]:
            while jobs and jobs[0].read and not (pending and pending[0][0] is jobs[0]):
                job = jobs.popleft()
                if job.failure is not None:
                    job.result.failure = as_decode_error(job.failure)
                yield job.result

        try:
            for raw in objects:
                job: _Job[R] = _Job(ObjectResult(ErrorCounts(), 0, []))
                jobs.append(job)
                units = self.reader.units(_reading(raw))
                try:
                    while job.failure is None:
                        try:
                            unit = next(units)
                        except StopIteration:
                            break
                        except MemoryError:
                            raise  # the machine's fault, not the object's: it is read again
                        except Exception as exc:  # the object went bad here: what was cut before still counts
                            job.failure = exc
                            break
                        pending.append((job, self.pool.submit(self._work, unit)))
                        while len(pending) >= self.depth:
                            collect()
                        yield from finished()
                finally:
                    if isinstance(units, Generator):  # a failure left it part-way: release its spool now
                        units.close()
                job.read = True
                yield from finished()
            while pending:
                collect()
                yield from finished()
        except _NotTheInput as exc:
            raise exc.error  # noqa: B904 - the reader's (or sink's) own exception, as it was raised
        finally:
            for _, fut in pending:
                fut.cancel()

    def _work(self, unit: Unit) -> tuple[R, int, ErrorCounts]:
        errors = ErrorCounts()
        try:
            table = unit(errors)
        except MemoryError as exc:  # the machine's fault, not the object's
            raise _NotTheInput(exc) from exc
        try:
            return self.reduce(table), table.num_rows, errors
        except BaseException as exc:  # our own step (or memory) failed: the records are fine, read them again
            raise _NotTheInput(exc) from exc


@dataclasses.dataclass
class _Job(Generic[R]):
    """One object on its way through `Ingestor._drive`."""

    result: ObjectResult[R]
    #: every unit of the object was submitted (or cutting it failed)
    read: bool = False
    #: what ended the object early (cutting it, or one of its units)
    failure: Exception | None = None
    #: a unit failed: the object's units still pending are dropped (what was cut before a cutting failure counts)
    dropping: bool = False


class _NotTheInput(BaseException):
    """Carries what reading the input, `sink` or `reduce` raised past the decoders, which must not take it for bad input.

    A BaseException, so no decoder's `except Exception` turns a network
    error or a shutdown into a failed object.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _reading(raw: Iterable[bytes]) -> Iterator[bytes]:
    stream = iter(raw)
    while True:
        try:
            chunk = next(stream)
        except StopIteration:
            return
        except Exception as exc:
            raise _NotTheInput(exc) from exc
        yield chunk


def account(result: ObjectResult[R], state: FlowState, location: str) -> str:
    """Count an object's skipped lines and its failure in `state`, log each reason once; returns the outcome.

    The outcome is "ok", or FAILED for an object that failed as a whole (its
    reason is counted among the decode errors). Replay and the live pipeline
    both go through here, so they report bad input alike.
    """
    state.add_errors(result.errors)
    for reason, example in result.errors.examples.items():
        log.warning("%s: skipped %d line(s): %s, e.g. %r", location, result.errors.counts[reason], reason, example)
    if result.failure is None:
        return "ok"
    state.count(result.failure.reason)
    log.error("%s: %s: %s", location, result.failure.reason, result.failure)
    return FAILED
