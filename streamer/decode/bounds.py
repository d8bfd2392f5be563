"""Counts no real flow can carry, dropped before they are summed.

A record's `packets` and `bytes` cover one aggregation interval (1 or 10
minutes) of one flow: even 100 Gbit/s for 10 minutes is 7.5e12 bytes. A
value beyond MAX_COUNT is a broken or hostile record; summed into an int64
counter, a few of them would wrap it negative (a counter that goes down) or
overflow the checkpoint. Such rows are dropped and counted as invalid_number.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from streamer.decode.errors import INVALID_NUMBER, ErrorCounts

#: largest packets or bytes value one record may carry (10^13: over 100 Gbit/s for 10 minutes)
MAX_COUNT = 10**13
_COUNTS = ("packets", "bytes")


def drop_impossible_counts(table: pa.Table, errors: ErrorCounts) -> pa.Table:
    """`table` without rows whose packets or bytes exceed MAX_COUNT (or are negative), each counted once."""
    ok = None
    for name in _COUNTS:
        if name not in table.column_names or not table.num_rows:
            continue
        col = table.column(name)
        low, high = pc.min_max(col).values()
        if (high.as_py() or 0) <= MAX_COUNT and (low.as_py() or 0) >= 0:
            continue
        valid = pc.or_kleene(pc.is_null(col), pc.and_(pc.less_equal(col, MAX_COUNT), pc.greater_equal(col, 0)))
        ok = valid if ok is None else pc.and_(ok, valid)
    if ok is None:
        return table
    bad = table.num_rows - (pc.sum(ok).as_py() or 0)
    if bad:
        errors.add(INVALID_NUMBER, bad, f"packets or bytes beyond {MAX_COUNT:.0e}, which no flow carries in one record")
        table = table.filter(ok)
    return table
