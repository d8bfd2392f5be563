"""The numpy column helpers agree with Arrow's kernels they replace (nulls, slices, dictionaries)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.aggregate.columns import equals, ints, valid

WORDS = st.one_of(st.none(), st.sampled_from(["ACCEPT", "REJECT", "ingress", "egress", ""]))


def _sliced(col: pa.Array, front: int) -> pa.ChunkedArray:
    front = min(front, len(col))
    return pa.chunked_array([col.slice(0, front), col.slice(front)], col.type)  # two chunks, one with an offset


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), max_size=50), st.integers(0, 50))
def test_ints_are_the_values_and_the_null_marker(values: list[int | None], front: int) -> None:
    for type_ in (pa.int32(), pa.int64()):
        col = _sliced(pa.array(values, type_), front)
        assert ints(col, -7).tolist() == [-7 if v is None else v for v in values]
        assert valid(col).tolist() == [v is not None for v in values]


@settings(max_examples=200, deadline=None)
@given(st.lists(WORDS, max_size=50), st.integers(0, 50), st.sampled_from(["ACCEPT", "egress", "", "absent"]))
def test_equals_is_arrows_equal_with_nulls_false(values: list[str | None], front: int, value: str) -> None:
    plain = pa.array(values, pa.string())
    want = pc.fill_null(pc.equal(plain, value), False).to_pylist()
    for col in (_sliced(plain, front), _sliced(plain.dictionary_encode(), front)):
        assert equals(col, value).tolist() == want
        assert valid(col).tolist() == [v is not None for v in values]
