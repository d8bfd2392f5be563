"""Tests on decoded string columns that stay cheap on dictionary-encoded ones.

Low-cardinality fields (action, interface-id, flow-direction, ...) are
decoded dictionary-encoded. Comparing such a column with a string makes
Arrow decode every row first; here the test runs once per distinct value
and the answer is spread to the rows through the codes.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc


def _per_value(col: pa.ChunkedArray | pa.Array, test: Callable[[pa.Array], pa.Array]) -> pa.ChunkedArray | pa.Array:
    if not pa.types.is_dictionary(col.type):
        return test(col)
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    return pa.chunked_array([pc.take(test(c.dictionary), c.indices) for c in chunks], pa.bool_())


def is_value(col: pa.ChunkedArray | pa.Array, value: str) -> pa.ChunkedArray | pa.Array:
    """col == value; False where null."""
    return pc.fill_null(_per_value(col, lambda c: pc.equal(c, value)), False)


def is_in(col: pa.ChunkedArray | pa.Array, values: pa.Array) -> pa.ChunkedArray | pa.Array:
    """col is one of values; False where null."""
    return pc.fill_null(_per_value(col, lambda c: pc.is_in(c, value_set=values)), False)


def key(table: pa.Table, name: str) -> pa.ChunkedArray | pa.Array:
    """A string column to group by, as decoded: dictionary-encoded stays so (grouping on the codes is
    cheaper than turning every row into a string); callers cast only the grouped result."""
    if name not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    col = table.column(name)
    if (pa.types.is_dictionary(col.type) and col.num_chunks == 1) or col.type == pa.string():
        return col
    return pc.cast(col, pa.string())  # several dictionaries would need unifying first: rare, so plain strings
