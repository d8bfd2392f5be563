"""The native count of the IPv6, traffic-path and gateway signals (`_scan.insight_counts`) equals the
numpy signals (`_ipv6`, `_paths`, `_gateway`), which a build without a C compiler (or
STREAMER_NATIVE=0) runs: on any batch, with nulls anywhere, int32 or int64 integers, sliced arrays,
with or without tcp-flags, vpc-id or bytes."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.aggregate import insights as ins
from tests.native import require_native


@pytest.fixture(autouse=True)
def native_built() -> None:
    require_native(ins._native_counts is not None)


def maybe(values: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.none(), values)


FIELDS = {
    "interface-id": maybe(st.sampled_from(["eni-0a", "eni-0b"])),
    "action": maybe(st.sampled_from(["ACCEPT", "REJECT"])),
    "srcaddr": maybe(st.sampled_from(["2600:1f18::1", "3fff:a::9", "2001:db8::1", "fe80::1", "203.0.113.9", "10.0.0.1", "2a0"])),
    "srcport": maybe(st.sampled_from([22, 443, 1023, 1024, 50001])),
    "dstport": maybe(st.sampled_from([22, 443, 1023, 1024, 50001])),
    "protocol": maybe(st.sampled_from([1, 6, 17])),
    "tcp-flags": maybe(st.sampled_from([0, 2, 3, 18, 19, 1])),
    "flow-direction": maybe(st.sampled_from(["ingress", "egress"])),
    "traffic-path": maybe(st.integers(0, 9)),
    "pkt-dst-aws-service": maybe(st.sampled_from(["S3", "DYNAMODB", "EC2"])),
    "vpc-id": maybe(st.sampled_from(["vpc-a", "vpc-b"])),
    "bytes": maybe(st.integers(0, 10**13)),
}
ROW = st.fixed_dictionaries(FIELDS)
INTS = ("srcport", "dstport", "protocol", "tcp-flags", "traffic-path")
WORDS = ("interface-id", "action", "flow-direction", "pkt-dst-aws-service", "vpc-id")


def batch(rows: list[dict[str, object]], wide: bool, drop: list[str], front: int) -> pa.Table:
    cols = {}
    for name in FIELDS:
        if name in drop:
            continue
        values = [r[name] for r in rows]
        if name in INTS:
            col = pa.array(values, pa.int64() if wide else pa.int32())
        elif name == "bytes":
            col = pa.array(values, pa.int64())
        else:
            col = pa.array(values, pa.string())
            if name in WORDS:
                col = col.dictionary_encode()
        cols[name] = col.slice(min(front, len(rows) - 1))
    return pa.table(cols)


def both(table: pa.Table) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    native = ins.insight_batch(table, 60).sums
    saved = ins._native_counts
    ins._native_counts = None
    try:
        reference = ins.insight_batch(table, 60).sums
    finally:
        ins._native_counts = saved

    def rows(t: pa.Table) -> list[dict[str, object]]:  # the order of a kind's rows carries no meaning
        return sorted(t.to_pylist(), key=lambda r: (r["kind"], r["key1"], r["key2"]))

    return rows(native), rows(reference)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(ROW, min_size=1, max_size=60),
    st.booleans(),
    st.lists(st.sampled_from(["tcp-flags", "vpc-id", "bytes", "pkt-dst-aws-service"]), max_size=2, unique=True),
    st.integers(0, 3),
)
def test_native_and_numpy_signals_count_the_same(rows: list[dict[str, object]], wide: bool, drop: list[str], front: int) -> None:
    native, reference = both(batch(rows, wide, drop, front))
    assert native == reference


def test_some_of_each_signal_is_counted() -> None:
    """The property above compares rows: here each signal has some, so equal tables are not both empty."""
    row = {
        "interface-id": "eni-0a",
        "action": "ACCEPT",
        "srcaddr": "2600:1f18::1",
        "srcport": 50001,
        "dstport": 443,
        "protocol": 6,
        "tcp-flags": 2,
        "flow-direction": "ingress",
        "traffic-path": None,
        "pkt-dst-aws-service": None,
        "vpc-id": "vpc-a",
        "bytes": 100,
    }
    egress = {**row, "flow-direction": "egress", "traffic-path": 8, "pkt-dst-aws-service": "S3", "bytes": 2**40}
    native, reference = both(batch([row, egress, egress], True, [], 0))
    assert native == reference
    assert {(r["kind"], r["key1"], r["key2"], r["records"], r["bytes"]) for r in native} == {
        (ins.IPV6, "eni-0a", "ACCEPT", 1, 0),
        (ins.GATEWAY, "vpc-a", "S3", 2, 2**41),
        (ins.PATHS, "vpc-a", "internet_gateway", 2, 2**41),
    }


def test_a_buffer_of_the_wrong_size_is_an_error_not_a_read_outside_it() -> None:
    with pytest.raises(ValueError, match="wrong size"):
        ins._native_counts(
            10,
            b"",
            b"",
            b"",
            b"",
            b"",
            b"",
            b"",
            b"",
            0,
            b"",
            b"",
            0,
            b"",
            0,
            b"\x00" * 8,
            b"",
            0,
            b"",
            b"",
            b"",
            False,
            True,
            False,
        )


def test_high_cardinality_keys_cost_memory_by_rows_not_by_the_key_grid() -> None:
    """A misdeclared format can put a high-cardinality column where vpc-id and pkt-dst-aws-service are
    expected: the count grid (vpc x service words) must not grow with the product of the two dictionaries
    (a 32 MB text block would ask for hundreds of GB), whatever the rows hold."""
    import tracemalloc

    n = 3000
    words = [f"w-{i}" for i in range(n)]
    table = pa.table(
        {
            "flow-direction": pa.array(["egress"] * n, pa.string()).dictionary_encode(),
            "traffic-path": pa.array([8] * n, pa.int32()),
            "pkt-dst-aws-service": pa.array(["S3", *words[1:]], pa.string()).dictionary_encode(),
            "vpc-id": pa.array(words, pa.string()).dictionary_encode(),
            "bytes": pa.array([1] * n, pa.int64()),
        }
    )
    tracemalloc.start()
    try:
        native, reference = both(table)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert native == reference
    assert peak < 16 << 20, f"{peak >> 20} MB traced for {n} rows"


def test_word_counts_whose_grid_overflows_are_an_error_not_a_write_outside_it() -> None:
    """n_eni * n_action (and n * 8) are products of caller-given sizes: one that wraps must not size the
    output small and then index it by the codes (a write outside it). Run apart: the bug is a segfault."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from streamer.aggregate import insights as ins\n"
        "i32 = lambda *v: np.array(v, np.int32)\n"
        "try:\n"
        "    ins._native_counts(1, i32(2), b'', b'', b'', i32(0), np.array([1], np.uint8), i32(0, 5), b'2600:', 0, b'',\n"
        "                       i32(1), 2**40, i32(0), 2**24, b'', b'', 0, b'', b'', b'', True, False, False)\n"
        "except (ValueError, MemoryError) as exc:\n"
        "    print('refused', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert "refused" in done.stdout, done.stdout
