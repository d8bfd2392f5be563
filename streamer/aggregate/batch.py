"""Everything computed from one decoded batch, on a worker thread.

The reduce step of the ingest pool: per-ENI counter partials plus the
newest record end (for delivery delay). Results are small and are merged
on the event loop.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.compute as pc

from streamer.aggregate import counters

#: Columns the live pipeline needs decoded.
COLUMNS = (*counters.COLUMNS, "end")


@dataclasses.dataclass
class BatchResult:
    counters: pa.Table
    max_end: int | None


def reduce_batch(table: pa.Table) -> BatchResult:
    max_end = None
    if "end" in table.column_names and table.num_rows:
        max_end = pc.max(table.column("end")).as_py()
    return BatchResult(counters.count_batch(table), max_end)
