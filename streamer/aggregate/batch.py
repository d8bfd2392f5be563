"""Everything computed from one decoded batch, on a worker thread.

The reduce step of the ingest pool: per-ENI counter partials, the window
partial for anomaly detection (when enabled), the network insights (when
enabled), and the newest record end (for delivery delay). Results are small
and are merged on the event loop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from streamer.aggregate import context, counters, insights, windows
from streamer.aggregate.pairing import Candidates
from streamer.aggregate.state import FlowState

if TYPE_CHECKING:
    from streamer.decode.objects import Columns

#: Columns the live pipeline needs decoded, without and with windows.
COLUMNS = (*counters.COLUMNS, "end")
COLUMNS_WITH_WINDOWS = tuple(dict.fromkeys((*COLUMNS, *windows.COLUMNS)))


def columns(windows: bool, with_insights: bool, nacl_pairing: bool = False) -> Columns:
    """What to decode for counters, plus windows and/or insights (with NACL pairing: its flow columns; without,
    a choice by the object's fields, see `insights.columns`)."""
    base = COLUMNS_WITH_WINDOWS if windows else COLUMNS
    if not with_insights:
        return base
    if nacl_pairing:
        return tuple(dict.fromkeys((*base, *insights.COLUMNS)))
    return functools.partial(_with_insights, base)


def plus(wanted: Columns, extra: tuple[str, ...]) -> Columns:
    """`wanted` and the `extra` fields too (the records' ENI context), as a tuple or a choice by the fields."""
    if not extra:
        return wanted
    if not callable(wanted):
        return tuple(dict.fromkeys((*wanted, *extra)))
    return functools.partial(_plus, wanted, extra)


def _plus(
    wanted: Callable[[tuple[str, ...]], Collection[str]], extra: tuple[str, ...], fields: tuple[str, ...]
) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*wanted(fields), *extra)))


def _with_insights(base: tuple[str, ...], fields: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*base, *insights.columns(fields, False))))


@dataclasses.dataclass
class BatchResult:
    counters: pa.Table
    max_end: int | None
    windows: windows.WindowBatch | None = None
    insights: insights.InsightBatch | None = None
    #: the context fields the records carry, one row per interface (None: the format carries none)
    context: pa.Table | None = None


def reducer(
    window_seconds: int | None,
    max_time: int | None = None,
    insights_window_seconds: int | None = None,
    nacl_pairing: bool = False,
    with_context: bool = False,
) -> Callable[[pa.Table], BatchResult]:
    """The per-batch reduce: counters always, windows when `window_seconds` is set,
    insights when `insights_window_seconds` is (NACL pairing candidates too with `nacl_pairing`),
    the records' ENI context when `with_context`.

    `max_time` is the newest event time windows trust (wall clock plus the
    allowed skew); later records still count, but in no window and in no NACL pairing.
    """

    def reduce(table: pa.Table) -> BatchResult:
        max_end = None
        if "end" in table.column_names and table.num_rows:
            max_end = pc.max(table.column("end")).as_py()
        part = windows.window_batch(table, window_seconds, max_time) if window_seconds else None
        found = None
        if insights_window_seconds:
            found = insights.insight_batch(table, insights_window_seconds, max_time, nacl_pairing)
        about = context.record_context(table) if with_context else None
        return BatchResult(counters.count_batch(table), max_end, part, found, about)

    return reduce


def delta_of(parts: list[BatchResult]) -> FlowState:
    """One input's counters and insights, from its batches' results."""
    delta = FlowState(counters.Counters(counters.combine(p.counters for p in parts)))
    about = [p.context for p in parts if p.context is not None]
    if about:
        delta.context = about
    found = [p.insights for p in parts if p.insights is not None]
    if found:
        delta.insights = insights.fold(f.sums for f in found)
        for f in found:
            insights.merge_examples(delta.insight_examples, f.examples)
        pairs = [f.pairs for f in found if f.pairs is not None and f.pairs.num_rows]
        if pairs:
            delta.pairs = Candidates.join(pairs)
    return delta
