"""Counts no flow carries are dropped before they are summed, so no counter wraps negative."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from streamer.decode.bounds import MAX_COUNT
from streamer.decode.errors import ErrorCounts
from streamer.decode.text import TextDecoder
from streamer.schema import DEFAULT_FIELDS


def line(packets: int, size: int) -> bytes:
    return f"2 1 eni-a 1.1.1.1 2.2.2.2 1 2 6 {packets} {size} 100 160 ACCEPT OK\n".encode()


def test_values_beyond_the_bound_are_invalid_numbers_on_either_path_and_sums_stay_exact() -> None:
    for big in (2**63 - 1, MAX_COUNT + 1, 10**17):  # 19 digits (Arrow's path), then ones the native scanner reads
        chunk = line(1, 40) * 50 + line(1, big) * 2 + line(big, 40) + line(MAX_COUNT, MAX_COUNT) + line(1, 40) * 50
        for native in (True, False):
            decoder = TextDecoder(DEFAULT_FIELDS, None)
            decoder.native = decoder.native and native
            errors = ErrorCounts()
            table = decoder.decode(chunk, errors)
            assert errors.counts == {"invalid_number": 3}, (big, native)
            assert table.num_rows == 101
            assert pc.sum(table.column("bytes")).as_py() == 100 * 40 + MAX_COUNT
            assert table.column("bytes").type == pa.int64()
