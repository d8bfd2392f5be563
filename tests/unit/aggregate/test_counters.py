from __future__ import annotations

import pyarrow as pa

from streamer.aggregate.counters import SCHEMA, Counters, combine, count_batch


def batch(rows: list[tuple[str | None, str | None, str | None, int | None, int | None]]) -> pa.Table:
    eni, action, status, packets, nbytes = zip(*rows, strict=True)
    return pa.table(
        {
            "interface-id": pa.array(eni, pa.string()),
            "action": pa.array(action, pa.string()),
            "log-status": pa.array(status, pa.string()),
            "packets": pa.array(packets, pa.int64()),
            "bytes": pa.array(nbytes, pa.int64()),
        }
    )


def test_count_batch_groups_and_sums_exactly() -> None:
    part = count_batch(
        batch([("eni-a", "ACCEPT", "OK", 1, 10), ("eni-a", "ACCEPT", "OK", 2, 20), ("eni-a", "REJECT", "OK", 3, 30)])
    )
    rows = sorted(part.to_pylist(), key=lambda r: r["action"])
    assert rows == [
        {"interface_id": "eni-a", "action": "ACCEPT", "log_status": "OK", "records": 2, "packets": 3, "bytes": 30},
        {"interface_id": "eni-a", "action": "REJECT", "log_status": "OK", "records": 1, "packets": 3, "bytes": 30},
    ]


def test_missing_values_are_keyed_dash_and_sum_zero() -> None:
    part = count_batch(batch([(None, None, "NODATA", None, None)]))
    assert part.to_pylist() == [
        {"interface_id": "-", "action": "-", "log_status": "NODATA", "records": 1, "packets": 0, "bytes": 0}
    ]


def test_formats_without_interface_or_action_columns() -> None:
    part = count_batch(pa.table({"srcaddr": ["10.0.0.1", "10.0.0.2"]}))
    assert part.to_pylist() == [{"interface_id": "-", "action": "-", "log_status": "-", "records": 2, "packets": 0, "bytes": 0}]


def test_counters_compact_without_losing_anything() -> None:
    counters = Counters()
    for i in range(100):
        counters.add(count_batch(batch([(f"eni-{i % 7}", "REJECT", "OK", 1, i)])))
    assert counters.total_records() == 100
    assert sum(v["REJECT"]["bytes"] for v in counters.by_interface().values()) == sum(range(100))
    assert len(counters.table()) == 7


def test_int64_sums_beyond_32_bits() -> None:
    big = 3_000_000_000_000
    part = combine([count_batch(batch([("eni-a", "ACCEPT", "OK", 1, big)]))] * 5)
    assert part.column("bytes").to_pylist() == [5 * big]
    assert part.schema == SCHEMA
