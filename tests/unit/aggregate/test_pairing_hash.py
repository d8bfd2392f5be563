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


@pytest.mark.parametrize("native_on", [True, False])
def test_a_flows_key_is_the_one_earlier_builds_committed(native_on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests committed before this build (as pieces, or by another replica) must still pair: the key
    of a request and of its rejected reply is the same fixed number, with the native hash and without."""
    if not native_on:
        monkeypatch.setattr(pairing, "_native_hash", None)
    table = pa.table(
        {
            "interface-id": pa.array(["eni-0abc", "eni-0abc"]).dictionary_encode(),
            "srcaddr": ["10.0.1.5", "52.94.1.10"],
            "dstaddr": ["52.94.1.10", "10.0.1.5"],
            "srcport": pa.array([50001, 443], pa.int32()),
            "dstport": pa.array([443, 50001], pa.int32()),
            "protocol": pa.array([6, 6], pa.int32()),
            "action": pa.array(["ACCEPT", "REJECT"]).dictionary_encode(),
            "end": [1764000060, 1764000120],
        }
    )
    found = pairing.candidates(table, 60).table()
    assert found.column("hash").to_pylist() == [3347842645855010868, 3347842645855010868]
    assert found.column("request").to_pylist() == [True, False]
