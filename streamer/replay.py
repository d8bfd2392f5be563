"""Replay local files through the same decode and aggregation as the service.

Used by `streamer replay` for forensics and for checking our decoding
against other tools. Inputs are files, directories (recursed) or `-`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import pyarrow as pa

from streamer.aggregate import insights as ins
from streamer.aggregate.batch import COLUMNS, COLUMNS_WITH_WINDOWS, BatchResult, delta_of, reducer
from streamer.aggregate.pairing import Candidates, Paired, Pairing
from streamer.aggregate.state import FlowState
from streamer.decode.objects import ObjectReader
from streamer.ingest import Ingestor, account

log = logging.getLogger(__name__)


def _acero_without_datasets() -> None:
    """Load Arrow's query engine (behind every `group_by`) without `pyarrow.dataset`, which it imports only to
    recognise datasets (replay groups tables only). Datasets pull in filesystems, TLS and Parquet encryption:
    about a tenth of a one-line replay's start (tests/unit/test_cli_imports.py). A later `import pyarrow.dataset`
    (e.g. by `pyarrow.parquet`) still loads it."""
    if "pyarrow.acero" in sys.modules or "pyarrow.dataset" in sys.modules:
        return
    sys.modules["pyarrow.dataset"] = None  # type: ignore[assignment]  # an ImportError, which acero expects
    try:
        import pyarrow.acero  # noqa: F401
    finally:
        del sys.modules["pyarrow.dataset"]


_acero_without_datasets()

if TYPE_CHECKING:  # a replay without --alerts never loads the detector
    from streamer.aggregate.anomaly import Anomaly
    from streamer.aggregate.detection import Detection

SUFFIXES = (".log", ".log.gz", ".parquet", ".gz")
#: what a Firehose stream names its S3 objects (no fixed suffix): <stream>-<n>-YYYY-MM-DD-HH-MM-SS-<uuid>
FIREHOSE_NAME = re.compile(r".+-\d+-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-[0-9a-fA-F-]{36}(\.gz)?")
READ_BYTES = 1 << 20
#: batches' partials held before they are folded into the totals (each is a few thousand rows at most)
FOLD_PARTS = 64


class InputError(Exception):
    """A path given on the command line cannot be read."""


@dataclasses.dataclass(frozen=True)
class Input:
    name: str
    path: Path | None  # None for stdin
    size: int


def expand(paths: list[str]) -> list[Input]:
    """Files to read, in a stable order; raises InputError for an unreadable path."""
    out: list[Input] = []
    for raw in paths:
        if raw == "-":
            out.append(Input("-", None, 0))
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_input(p.name))
            out.extend(Input(str(p), p, p.stat().st_size) for p in found)
        elif path.is_file() and os.access(path, os.R_OK):
            out.append(Input(str(path), path, path.stat().st_size))
        else:
            raise InputError(f"cannot read {raw}: {'no such file or directory' if not path.exists() else 'permission denied'}")
    return out


def _is_input(name: str) -> bool:
    return name.endswith(SUFFIXES) or FIREHOSE_NAME.fullmatch(name) is not None


def read_chunks(handle: BinaryIO, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    while chunk := handle.read(READ_BYTES):
        if progress is not None:
            progress(len(chunk))
        yield chunk


def _read(item: Input, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """An input's chunks, the file open only while they are read."""
    with open_input(item) as handle:
        yield from read_chunks(handle, progress)


def open_input(item: Input) -> BinaryIO:
    if item.path is None:
        return sys.stdin.buffer
    return item.path.open("rb")


def replay_counts(
    inputs: list[Input],
    reader: ObjectReader,
    pool: ThreadPoolExecutor,
    progress: Callable[[int], None] | None = None,
    detection: Detection | None = None,
    max_future_skew_seconds: int = 300,
    insights_window_seconds: int | None = None,
    lateness_seconds: int = 900,  # defaults.LATENESS_SECONDS (the cli passes its own)
    nacl_pairing: bool = False,
    on_context: Callable[[list[pa.Table]], None] | None = None,
) -> tuple[FlowState, list[Anomaly]]:
    """Counters over all inputs, and with `detection` the anomalies they contain.

    Bad objects are logged once and counted by reason. Inputs are taken in
    order, so event time advances as it did live (records only: hours-old data
    is never late); at the end every window is closed so that a spike in the
    last minutes is reported too. A record ahead of the wall clock by more than
    `max_future_skew_seconds` counts, but moves no event time. With
    `nacl_pairing` (and insights), NACL return rejects pair across all inputs,
    within `lateness_seconds`; without, no thread pairs anything. With `on_context`,
    the ENI context the records carry (aggregate/context.py) is handed to it.
    """
    state = FlowState()
    anomalies: list[Anomaly] = []
    cutoff = int(time.time()) + max_future_skew_seconds
    pairing = nacl_pairing and insights_window_seconds is not None
    window_seconds = detection.windows.window_seconds if detection is not None else None
    reduce = reducer(window_seconds, cutoff, insights_window_seconds, pairing, with_context=on_context is not None)
    ingest: Ingestor[BatchResult] = Ingestor(reader, reduce, pool)
    bodies = (_read(item, progress) for item in inputs)
    parts: list[BatchResult] = []  # several inputs' partials, folded together: one fold per input would cost more
    with ThreadPoolExecutor(1, thread_name_prefix="pairing") if pairing else contextlib.nullcontext() as thread:
        pairs = _Pairs(Pairing(lateness_seconds), thread) if thread is not None else None
        counted = pairs.counted if pairs is not None else _as_is
        for item, result in zip(inputs, ingest.run_many(bodies), strict=True):
            if pairs is not None:
                pairs.take(result.results)
            if detection is not None:
                detection, found = detection.advance([p.windows for p in result.results if p.windows is not None])
                anomalies.extend(found)
            account(result, state, item.name)
            parts.extend(result.results)
            if len(parts) >= FOLD_PARTS:
                state.apply(counted(_context(delta_of(parts), on_context)))
                parts = []
        state.apply(counted(_context(delta_of(parts), on_context)))
    if pairs is not None and pairs.dropped:
        log.warning(
            "NACL pairing: %d unpaired replies were not kept waiting for a request (their window held %d already)",
            pairs.dropped,
            pairs.pairing.max_waiting_replies,
        )
    if detection is not None:
        detection, found = detection.flush()
        anomalies.extend(found)
    return state, sorted(anomalies, key=lambda a: (a.window_start, a.interface_id))


def _context(delta: FlowState, on_context: Callable[[list[pa.Table]], None] | None) -> FlowState:
    if delta.context is not None and on_context is not None:
        on_context(delta.context)
    delta.context = None
    return delta


def _as_is(delta: FlowState) -> FlowState:
    return delta


class _Pairs:
    """NACL pairing input by input, by the live rule: an input's candidates (all its batches', joined) pair as
    one, after the inputs before it. Batch by batch, the state's floor (the newest window minus the lateness)
    would move between the batches of one object, and a pair live counts would be lost here. Nothing is
    committed; an input's candidates are dropped once paired.

    The pairing runs on its own thread, an input at a time in order: on the reading thread it held up the
    inflating that every batch waits for. At most `AHEAD` inputs' candidates wait for it."""

    AHEAD = 4

    def __init__(self, pairing: Pairing, thread: ThreadPoolExecutor) -> None:
        self.pairing = pairing
        self.thread = thread
        self.pending: collections.deque[Future[Paired]] = collections.deque()
        self.found: list[Paired] = []
        #: unpaired replies not kept waiting (their window was full), as live
        self.dropped = 0

    def take(self, parts: list[BatchResult]) -> None:
        """Pair one input's candidates (its batches' results, in order) on the pairing thread."""
        found = []
        for part in parts:
            if part.insights is not None and part.insights.pairs is not None:
                found.append(part.insights.pairs)
                part.insights.pairs = None
        if found:
            self.pending.append(self.thread.submit(self._pair, Candidates.join(found)))
            while len(self.pending) > self.AHEAD:
                self.found.append(self.pending.popleft().result())

    def _pair(self, found: Candidates) -> Paired:
        self.pairing, paired, _ = self.pairing.pair(found, write=False)  # one thread: in order
        self.dropped += paired.dropped
        return paired

    def counted(self, delta: FlowState) -> FlowState:
        """`delta` with what was paired since the last call added."""
        while self.pending:
            self.found.append(self.pending.popleft().result())
        for paired in self.found:
            delta.insights = ins.add_pairs(delta.insights, delta.insight_examples, paired)
        self.found = []
        return delta


def replay_records(
    inputs: list[Input], reader: ObjectReader, pool: ThreadPoolExecutor, sink: Callable[[pa.Table], None]
) -> FlowState:
    """Hand every decoded table to `sink` in input order; returns errors only."""
    state = FlowState()
    ingest: Ingestor[pa.Table] = Ingestor(reader, lambda t: t, pool)
    for item in inputs:
        with open_input(item) as handle:
            result = ingest.run(read_chunks(handle), sink)
        account(result, state, item.name)
    return state


__all__ = ["COLUMNS", "COLUMNS_WITH_WINDOWS", "Input", "InputError", "expand", "replay_counts", "replay_records"]
