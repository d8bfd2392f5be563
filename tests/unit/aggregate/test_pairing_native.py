"""The native candidate selection (`_scan.nacl_candidates`) gives the same table as the numpy reference,
on any batch: nulls anywhere, dictionary or plain columns, int32 or int64 ports, sliced arrays, records
without a time or beyond `max_time`. A build without a C compiler (or STREAMER_NATIVE=0) runs the
reference, and its candidates must pair with the native build's committed state."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.aggregate import pairing
from tests.native import require_native


@pytest.fixture(autouse=True)
def native_built() -> None:
    require_native(pairing._native_candidates is not None)


ENIS = st.one_of(st.none(), st.sampled_from(["eni-0a", "eni-0b", "eni-0c"]))
ADDRESSES = st.one_of(st.none(), st.sampled_from(["10.0.1.5", "52.94.1.10", "2600:1f18::1", "", "10.0.1.50"]))
PORTS = st.one_of(st.none(), st.sampled_from([0, 22, 443, 1023, 1024, 50001, 65535, 65536]), st.integers(-5, 70000))
PROTOCOLS = st.one_of(st.none(), st.sampled_from([1, 6, 17, 262]))
ACTIONS = st.one_of(st.none(), st.sampled_from(["ACCEPT", "REJECT", "-", "accept"]))
TIMES = st.one_of(st.none(), st.integers(-120, 1_000))
ROW = st.tuples(ENIS, ADDRESSES, ADDRESSES, PORTS, PORTS, PROTOCOLS, ACTIONS, TIMES, TIMES)
#: a row likely to be a reply (rare among random rows)
REPLY = st.tuples(
    ENIS, ADDRESSES, ADDRESSES, st.sampled_from([0, 22, 443]), st.sampled_from([1024, 50001, 65535]),
    st.sampled_from([6, 17]), st.just("REJECT"), st.integers(0, 1_000), TIMES,
)  # fmt: skip


def batch(rows: list[tuple[object, ...]], dictionary: bool, wide: bool, front: int) -> pa.Table:
    names = ("interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol", "action", "end", "start")
    ports = pa.int64() if wide else pa.int32()
    types = (pa.string(), pa.string(), pa.string(), ports, ports, ports, pa.string(), pa.int64(), pa.int64())
    cols = [pa.array([r[i] for r in rows], t) for i, t in enumerate(types)]
    if dictionary:
        cols[0], cols[6] = cols[0].dictionary_encode(), cols[6].dictionary_encode()
    front = min(front, len(rows) - 1)
    return pa.table(dict(zip(names, [c.slice(front) for c in cols], strict=True)))  # sliced: offsets != 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(ROW, min_size=1, max_size=60),
    st.booleans(),
    st.booleans(),
    st.integers(0, 3),
    st.one_of(st.none(), st.integers(0, 1_000)),
)
def test_native_and_numpy_candidates_are_equal(
    rows: list[tuple[object, ...]], dictionary: bool, wide: bool, front: int, max_time: int | None
) -> None:
    table = batch(rows, dictionary, wide, front)
    native = pairing.candidates(table, 60, max_time).table()
    saved = pairing._native_candidates
    pairing._native_candidates = None
    try:
        reference = pairing.candidates(table, 60, max_time).table()
    finally:
        pairing._native_candidates = saved
    assert native.to_pylist() == reference.to_pylist()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(ROW, REPLY), min_size=1, max_size=80), st.booleans(), st.booleans(), st.integers(0, 3))
def test_few_replies_get_the_same_example_lines_from_python_as_from_arrow(
    rows: list[tuple[object, ...]], dictionary: bool, wide: bool, front: int
) -> None:
    """A batch's few replies are formatted in Python, many by Arrow kernels: the same lines either way."""
    table = batch(rows, dictionary, wide, front)
    few = pairing.candidates(table, 60).reply_text
    saved = pairing._FEW_EXAMPLES
    pairing._FEW_EXAMPLES = 0
    try:
        many = pairing.candidates(table, 60).reply_text
    finally:
        pairing._FEW_EXAMPLES = saved
    assert few.to_pylist() == many.to_pylist()
    assert few.schema == many.schema


def test_a_few_replies_example_lines_read_as_their_records() -> None:
    """Formatted in Python: plain or dictionary columns, int32 or int64 ports."""
    rows = [("eni-0a", "52.94.1.10", "10.0.1.5", 443, 50001, 6, "REJECT", 70, None)] * 3
    for dictionary, wide in ((False, False), (True, True)):
        lines = pairing.candidates(batch(rows, dictionary, wide, 0), 60).reply_text.column("example").to_pylist()
        assert lines == ["eni-0a 52.94.1.10:443 -> 10.0.1.5:50001 protocol 6 REJECT"] * 3


def test_requests_come_sorted_by_window_then_key_each_once() -> None:
    """What `_add_requests` merges: each batch's requests already in order (repeats of one flow in one
    window are one request)."""
    n = 8
    table = pa.table(
        {
            "interface-id": ["eni-0a"] * n,
            "srcaddr": ["10.0.1.5", "10.0.1.6", "10.0.1.5", "10.0.1.7", "10.0.1.5", "10.0.1.6", "10.0.1.8", "10.0.1.5"],
            "dstaddr": ["52.94.1.10"] * n,
            "srcport": pa.array([50001] * n, pa.int32()),
            "dstport": pa.array([443] * n, pa.int32()),
            "protocol": pa.array([6] * n, pa.int32()),
            "action": ["ACCEPT"] * n,
            "end": [130, 70, 130, 10, 70, 130, 70, 130],
        }
    )
    found = pairing.candidates(table, 60).table()
    keys = list(zip(found.column("window").to_pylist(), found.column("hash").to_pylist(), strict=True))
    assert keys == sorted(set(keys))
    assert [w for w, _ in keys] == [0, 60, 60, 60, 120, 120]


def test_offsets_out_of_order_before_a_candidate_are_an_error_not_a_read_outside_the_data() -> None:
    """Only candidate rows' offsets are looked at: a row skipped before one must not let it start before
    the data (a start of -2^30 read 1 GiB before the buffer: a crash)."""
    import numpy as np

    from streamer.decode import _scan

    def i32(*v: int) -> np.ndarray:
        return np.array(v, np.int32)

    bad, good = i32(0, -(1 << 30), 5), i32(0, 2, 5)
    args = (np.array([10, 10], np.int64), i32(40000, 443), i32(443, 40000), i32(6, 6), b"", i32(5, 1))
    rest = (np.array([1, 2], np.uint8), i32(0, 0), np.array([1], np.uint64))
    with pytest.raises(ValueError, match="monotonic"):
        _scan.nacl_candidates(*args, *rest, bad, b"abcde", 0, good, b"abcde", 0, 60, 1 << 62)
    with pytest.raises(ValueError, match="monotonic"):
        _scan.nacl_candidates(*args, *rest, good, b"abcde", 0, bad, b"abcde", 0, 60, 1 << 62)


def test_an_int32_time_column_selects_as_an_int64_one() -> None:
    """A source whose times come as int32 (not the decoders': they cast to int64) is no error."""
    rows = [("eni-0a", "52.94.1.10", "10.0.1.5", 443, 50001, 6, "REJECT", 70, None)]
    wide = batch(rows, False, False, 0)
    narrow = wide.set_column(wide.column_names.index("end"), "end", wide.column("end").cast(pa.int32()))
    assert pairing.candidates(narrow, 60).table().to_pylist() == pairing.candidates(wide, 60).table().to_pylist()


KEYS = st.lists(st.integers(0, 40), max_size=40).map(lambda v: sorted(set(v)))


@settings(max_examples=300, deadline=None)
@given(KEYS, KEYS.filter(bool), st.booleans())
def test_native_and_numpy_merges_of_a_window_s_requests_are_equal(known: list[int], new: list[int], huge: bool) -> None:
    """`_scan.merge_keys` against `_merge_reference`: the union and what is new, in order (keys near 2^64
    too: unsigned order)."""
    import numpy as np

    require_native(pairing._native_merge is not None)
    shift = 2**64 - 64 if huge else 0
    a, b = (np.array([k + shift for k in v], np.uint64) for v in (known, new))
    union, fresh = pairing._merge_native(a, b)
    ref_union, ref_fresh = pairing._merge_reference(a, b)
    assert union.tolist() == ref_union.tolist()
    assert fresh.tolist() == ref_fresh.tolist()


def test_the_native_merge_refuses_an_output_too_small() -> None:
    import numpy as np

    from streamer.decode import _scan

    keys = np.arange(4, dtype=np.uint64)
    with pytest.raises(ValueError, match="wrong size"):
        _scan.merge_keys(keys, keys, np.empty(7, np.uint64), np.empty(4, np.uint64))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 40), st.integers(0, 30)), max_size=80), st.booleans())
def test_native_and_numpy_orders_of_a_batch_s_requests_are_equal(rows: list[tuple[int, int]], huge: bool) -> None:
    """`_scan.sort_requests` against `_distinct`'s numpy path: by window, then key, each pair once (windows
    far apart and keys near 2^64 too)."""
    import numpy as np

    require_native(pairing._native_sort is not None)
    shift = 2**64 - 40 if huge else 0
    windows = np.array([w * 60 * (2**30 if huge else 1) for w, _ in rows], np.int64)
    keys = np.array([k + shift for _, k in rows], np.uint64)
    native = pairing._distinct(windows, keys, 60)
    saved, pairing._native_sort = pairing._native_sort, None
    try:
        reference = pairing._distinct(windows, keys, 60)
    finally:
        pairing._native_sort = saved
    assert native[0].tolist() == reference[0].tolist()
    assert native[1].tolist() == reference[1].tolist()


def test_the_native_merge_and_sort_refuse_buffers_not_of_plain_integers() -> None:
    """Their outputs get raw 64-bit words: an array of Python objects (or floats, or one of another width)
    given as one must be a ValueError, not pointers written over (a crash when the array is freed). In a
    child process, so that a crash fails this test instead of ending the run."""
    import subprocess
    import sys

    require_native(pairing._native_merge is not None and pairing._native_sort is not None)
    script = """
import numpy as np
from streamer.decode import _scan

keys, wins = np.arange(2, dtype=np.uint64), np.arange(2, dtype=np.int64)
calls = [
    lambda: _scan.merge_keys(keys, keys, np.empty(4, object), np.empty(2, np.uint64)),
    lambda: _scan.merge_keys(keys, keys, np.empty(4, np.uint64), np.empty(2, object)),
    lambda: _scan.merge_keys(np.array([1, 2], object), keys, np.empty(4, np.uint64), np.empty(2, np.uint64)),
    lambda: _scan.merge_keys(keys, keys, np.empty(4, np.float64), np.empty(2, np.uint64)),
    lambda: _scan.merge_keys(np.arange(4, dtype=np.int32), keys, np.empty(4, np.uint64), np.empty(2, np.uint64)),
    lambda: _scan.sort_requests(wins, keys, np.empty(2, object), np.empty(2, np.uint64)),
    lambda: _scan.sort_requests(wins, keys, np.empty(2, np.int64), np.empty(2, object)),
]
for call in calls:
    try:
        call()
    except ValueError:
        continue
    raise SystemExit("accepted")
assert _scan.merge_keys(keys, keys, np.empty(4, np.uint64), np.empty(2, np.uint64)) == (2, 0)
assert _scan.sort_requests(wins, keys, np.empty(2, np.int64), np.empty(2, np.uint64)) == 2
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
