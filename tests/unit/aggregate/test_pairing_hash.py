"""The pairing's string hash: the native one (`_scan.hash_strings`) equals the numpy reference, which a
build without a C compiler (or STREAMER_NATIVE=0) runs; a mismatch would stop replicas or restarts on
the other build from pairing with committed requests."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.aggregate import pairing
from streamer.decode import text


@pytest.fixture(autouse=True)
def native_built() -> None:
    if getattr(text._scan, "hash_strings", None) is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the native part was not built in CI (streamer/decode/_scan.c needs a C compiler)")
        pytest.skip("native part not built")


def native(col: pa.Array) -> np.ndarray:
    offsets, data = col.buffers()[1:3]
    return np.frombuffer(text._scan.hash_strings(offsets, data or b"", col.offset, len(col)), np.uint64)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=80)), max_size=60), st.integers(0, 5), st.integers(0, 5))
def test_native_and_numpy_hashes_are_equal(values: list[str | None], cut_front: int, cut_back: int) -> None:
    col = pa.array(values, pa.string())
    col = col.slice(min(cut_front, len(col)), max(0, len(col) - cut_front - cut_back))  # sliced: offset != 0
    assert native(col).tolist() == pairing._string_hash(col).tolist()


def test_addresses_hash_the_same_both_ways_and_apart() -> None:
    col = pa.array(["10.0.1.5", "52.94.1.10", "2600:1f18::1", "", "10.0.1.50"])
    got = native(col)
    assert got.tolist() == pairing._string_hash(col).tolist()
    assert len(set(got.tolist())) == 5


def test_bad_offsets_raise_instead_of_reading_out_of_bounds() -> None:
    offsets = np.array([0, 4, 100], np.int32).tobytes()
    with pytest.raises(ValueError, match="outside the data"):
        text._scan.hash_strings(offsets, b"abcd", 0, 2)
    with pytest.raises(ValueError, match="not monotonic"):
        text._scan.hash_strings(np.array([0, 3, 2, 4], np.int32).tobytes(), b"abcd", 0, 3)
    with pytest.raises(ValueError, match="too short"):
        text._scan.hash_strings(offsets, b"abcd", 0, 5)
