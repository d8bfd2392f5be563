"""Everything computed from one decoded batch, on a worker thread.

The reduce step of the ingest pool: per-ENI counter partials, the window
partial for anomaly detection (when enabled), and the newest record end
(for delivery delay). Results are small and are merged on the event loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from streamer.aggregate import counters, windows

#: Columns the live pipeline needs decoded, without and with windows.
COLUMNS = (*counters.COLUMNS, "end")
COLUMNS_WITH_WINDOWS = tuple(dict.fromkeys((*COLUMNS, *windows.COLUMNS)))


@dataclasses.dataclass
class BatchResult:
    counters: pa.Table
    max_end: int | None
    windows: windows.WindowBatch | None = None


def reducer(window_seconds: int | None, max_time: int | None = None) -> Callable[[pa.Table], BatchResult]:
    """The per-batch reduce: counters always, windows when `window_seconds` is set.

    `max_time` is the newest event time windows trust (wall clock plus the
    allowed skew); later records still count, but in no window.
    """

    def reduce(table: pa.Table) -> BatchResult:
        max_end = None
        if "end" in table.column_names and table.num_rows:
            max_end = pc.max(table.column("end")).as_py()
        part = windows.window_batch(table, window_seconds, max_time) if window_seconds else None
        return BatchResult(counters.count_batch(table), max_end, part)

    return reduce
