"""Event-time windows: records land in their own window; late ones are counted, not applied."""

from __future__ import annotations

import pyarrow as pa

from streamer.aggregate.windows import Windows, window_batch


def batch(rows: list[tuple[str, str, int]], window: int = 60):  # type: ignore[no-untyped-def]
    eni, action, end = zip(*rows, strict=True)
    table = pa.table(
        {
            "interface-id": eni,
            "action": action,
            "end": pa.array(end, pa.int64()),
            "packets": pa.array([1] * len(rows), pa.int64()),
            "bytes": pa.array([40] * len(rows), pa.int64()),
            "srcaddr": ["192.0.2.1"] * len(rows),
            "dstport": pa.array([22] * len(rows), pa.int32()),
            "vpc-id": ["vpc-1"] * len(rows),
            "subnet-id": ["subnet-1"] * len(rows),
        }
    )
    return window_batch(table, window)


def test_records_go_to_the_window_of_their_own_time_not_arrival() -> None:
    w = Windows(60, lateness_seconds=300)
    w, closed = w.advance([batch([("eni-a", "REJECT", 1000), ("eni-a", "REJECT", 1010), ("eni-a", "ACCEPT", 1075)])])
    assert closed.stats.num_rows == 0  # watermark 775: nothing closed yet
    rows = {r["window_start"]: r for r in w.stats.to_pylist()}
    assert rows[960]["rejected_records"] == 2
    assert rows[1020]["accepted_records"] == 1


def test_late_within_lateness_updates_its_window_later_ones_are_counted_late() -> None:
    w = Windows(60, lateness_seconds=300)
    w, _ = w.advance([batch([("eni-a", "REJECT", 2000)])])  # watermark 1700
    w, _ = w.advance([batch([("eni-a", "REJECT", 1750)])])  # window [1740,1800) still open: applied
    assert {r["window_start"]: r["rejected_records"] for r in w.stats.to_pylist()} == {1740: 1, 1980: 1}
    w, _ = w.advance([batch([("eni-a", "REJECT", 1500), ("eni-a", "ACCEPT", 1501)])])  # window [1500,1560) closed long ago
    assert w.late_records == 2
    assert 1500 not in {r["window_start"] for r in w.stats.to_pylist()}


def test_windows_close_when_the_watermark_passes_them_in_order() -> None:
    w = Windows(60, lateness_seconds=120)
    w, _ = w.advance([batch([("eni-a", "REJECT", 1000), ("eni-b", "REJECT", 1070)])])
    w, closed = w.advance([batch([("eni-a", "ACCEPT", 1300)])])  # watermark 1180
    assert [(r["interface_id"], r["window_start"]) for r in closed.stats.to_pylist()] == [("eni-a", 960), ("eni-b", 1020)]
    assert closed.top("eni-a", 960, "sources") == [("192.0.2.1", 1)]
    assert closed.top("eni-b", 1020, "ports") == [("22", 1)]


def test_subnet_view_counts_every_rejected_record_including_late_ones() -> None:
    w = Windows(60, lateness_seconds=0)
    w, _ = w.advance([batch([("eni-a", "REJECT", 5000)])])
    w, _ = w.advance([batch([("eni-a", "REJECT", 10)])])  # late
    assert w.subnets.to_pylist() == [{"vpc_id": "vpc-1", "subnet_id": "subnet-1", "rejected_records": 2, "rejected_bytes": 80}]


def test_snapshot_round_trip() -> None:
    w = Windows(60, lateness_seconds=300)
    w, _ = w.advance([batch([("eni-a", "REJECT", 1000), ("eni-b", "ACCEPT", 1100)])])
    again = Windows.restore(w.snapshot(), 60, 300)
    assert again.stats.equals(w.stats)
    assert again.sources.equals(w.sources)
    assert (again.max_time, again.late_records) == (w.max_time, w.late_records)


def test_rows_without_time_or_interface_are_ignored() -> None:
    table = pa.table({"interface-id": [None, "eni-a"], "action": ["REJECT", "REJECT"], "end": pa.array([100, None], pa.int64())})
    assert window_batch(table, 60).stats.num_rows == 0
