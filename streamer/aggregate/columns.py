"""Tests on decoded string columns that stay cheap on dictionary-encoded ones.

Low-cardinality fields (action, interface-id, flow-direction, ...) are
decoded dictionary-encoded. Comparing such a column with a string makes
Arrow decode every row first; here the test runs once per distinct value
and the answer is spread to the rows through the codes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def int_array(values: np.ndarray) -> pa.Array:
    """An integer numpy array as Arrow, without a copy and without `pa.array`'s masked-array check, which
    imports numpy.ma (a tenth of a one-line replay's start; tests/unit/test_cli_imports.py)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


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


# --- as numpy arrays: a batch's integer and flag tests without an Arrow kernel call per test ----------


def _chunks_of(col: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    return list(col.chunks) if isinstance(col, pa.ChunkedArray) else [col]


def _joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _valid_chunk(chunk: pa.Array) -> np.ndarray:
    n = len(chunk)
    bitmap = chunk.buffers()[0]
    if not chunk.null_count or bitmap is None:
        return np.ones(n, bool)
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
    return bits[chunk.offset : chunk.offset + n].view(bool)


def valid(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """True where not null (the validity bitmap unpacked, no kernel call)."""
    return _joined([_valid_chunk(c) for c in _chunks_of(col)], bool)


def _values(chunk: pa.Array) -> np.ndarray:
    """An integer array's values buffer as numpy (zero copy; whatever lies under a null)."""
    dtype = np.dtype(chunk.type.to_pandas_dtype())
    data = chunk.buffers()[1]
    if data is None:
        return np.zeros(len(chunk), dtype)
    return np.frombuffer(data, dtype)[chunk.offset : chunk.offset + len(chunk)]


def ints(col: pa.ChunkedArray | pa.Array, null: int = -1) -> np.ndarray:
    """An integer column as int64, `null` where null."""
    parts = []
    for chunk in _chunks_of(col):
        if not pa.types.is_integer(chunk.type):
            chunk = pc.cast(chunk, pa.int64())
        values = _values(chunk)
        if not chunk.null_count:
            parts.append(values.astype(np.int64))
        elif values.dtype.kind == "i":  # one pass: the values where valid, `null` where not (signed: as int64)
            parts.append(np.where(_valid_chunk(chunk), values, np.int64(null)))
        else:
            values = values.astype(np.int64)
            values[~_valid_chunk(chunk)] = null
            parts.append(values)
    return _joined(parts, np.int64)


def equals(col: pa.ChunkedArray | pa.Array, value: str) -> np.ndarray:
    """col == value as numpy booleans, False where null; on a dictionary, a test of its codes."""
    parts = []
    for chunk in _chunks_of(col):
        if pa.types.is_dictionary(chunk.type):
            codes = _codes_of(chunk.dictionary, value)
            indices = _values(chunk.indices)
            found = indices == codes[0] if len(codes) == 1 else np.isin(indices, codes)
            parts.append(found & _valid_chunk(chunk) if chunk.null_count else found)
        else:
            parts.append(np.asarray(pc.fill_null(pc.equal(chunk, value), False).to_numpy(zero_copy_only=False), bool))
    return _joined(parts, bool)


#: a dictionary this small is searched in Python (a few microseconds) rather than by an Arrow kernel call
_SMALL_DICTIONARY = 16


def _codes_of(words: pa.Array, value: str) -> np.ndarray:
    """The codes of a dictionary whose word is `value`."""
    if len(words) <= _SMALL_DICTIONARY and words.type == pa.string():
        return np.array([i for i, w in enumerate(words.to_pylist()) if w == value], np.int64)
    return np.flatnonzero(np.asarray(pc.fill_null(pc.equal(words, value), False).to_numpy(zero_copy_only=False), bool))


def word_kinds(words: pa.Array, kinds: dict[str, int]) -> np.ndarray:
    """A byte per dictionary word: `kinds[word]`, 0 for any other word (or null). A small dictionary is
    read in Python (microseconds); a large one is compared by Arrow, a kind at a time."""
    if len(words) <= _SMALL_DICTIONARY and words.type == pa.string():
        return np.array([kinds.get(w, 0) if w is not None else 0 for w in words.to_pylist()], np.uint8)
    out = np.zeros(len(words), np.uint8)
    for word, kind in kinds.items():
        out[equals(words, word)] = kind
    return out


def codes_or_null(col: pa.Array) -> np.ndarray:
    """A dictionary array's int32 codes, -1 where null (as decoded, no copy, when there is no null)."""
    codes = _values(col.indices)
    if codes.dtype != np.int32:
        codes = codes.astype(np.int32)
    if not col.null_count:
        return codes
    return np.where(_valid_chunk(col), codes, np.int32(-1))


def int_values(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An integer column as numpy without a copy when it is one chunk with no nulls (its own dtype), else
    `ints` (int64, -1 where null): for tests and keys that work on any integer width."""
    chunks = _chunks_of(col)
    if len(chunks) == 1 and not chunks[0].null_count and pa.types.is_integer(chunks[0].type):
        return _values(chunks[0])
    return ints(col)
