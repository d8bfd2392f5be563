"""Event-time windows: records land in their own window; late ones are counted, not applied."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamer.aggregate import windows as windows_module
from streamer.aggregate.batch import columns
from streamer.aggregate.eventtime import EventClock
from streamer.aggregate.windows import (
    _STAT_SUMS,
    KEY,
    STATS,
    WindowBatch,
    Windows,
    _fold,
    _fold_stats_dense,
    fold_stats,
    merge,
    window_batch,
)
from streamer.decode.objects import ObjectReader
from streamer.ingest import Ingestor

T0 = 1_764_000_000.0


def replay_windows(window: int, lateness: int) -> Windows:
    """Windows on event time only, as replay runs them."""
    return Windows(window, EventClock(lateness, follow_wall_clock=False))


def batch(rows: list[tuple[str, str, int]], window: int = 60, max_time: int | None = None):  # type: ignore[no-untyped-def]
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
    return window_batch(table, window, max_time)


def test_records_go_to_the_window_of_their_own_time_not_arrival() -> None:
    w = replay_windows(60, 300)
    w, closed = w.advance([batch([("eni-a", "REJECT", 1000), ("eni-a", "REJECT", 1010), ("eni-a", "ACCEPT", 1075)])])
    assert closed.stats.num_rows == 0  # watermark 775: nothing closed yet
    rows = {r["window_start"]: r for r in w.stats.to_pylist()}
    assert rows[960]["rejected_records"] == 2
    assert rows[1020]["accepted_records"] == 1


def test_late_within_lateness_updates_its_window_later_ones_are_counted_late() -> None:
    w = replay_windows(60, 300)
    w, _ = w.advance([batch([("eni-a", "REJECT", 2000)])])  # watermark 1700
    w, _ = w.advance([batch([("eni-a", "REJECT", 1750)])])  # window [1740,1800) still open: applied
    assert {r["window_start"]: r["rejected_records"] for r in w.stats.to_pylist()} == {1740: 1, 1980: 1}
    w, _ = w.advance([batch([("eni-a", "REJECT", 1500), ("eni-a", "ACCEPT", 1501)])])  # window [1500,1560) closed long ago
    assert w.late_records == 2
    assert 1500 not in {r["window_start"] for r in w.stats.to_pylist()}


def test_windows_close_when_the_watermark_passes_them_in_order() -> None:
    w = replay_windows(60, 120)
    w, _ = w.advance([batch([("eni-a", "REJECT", 1000), ("eni-b", "REJECT", 1070)])])
    w, closed = w.advance([batch([("eni-a", "ACCEPT", 1300)])])  # watermark 1180
    assert [(r["interface_id"], r["window_start"]) for r in closed.stats.to_pylist()] == [("eni-a", 960), ("eni-b", 1020)]
    assert closed.top("eni-a", 960, "sources") == [("192.0.2.1", 1)]
    assert closed.top("eni-b", 1020, "ports") == [("22", 1)]


def test_subnet_view_counts_every_rejected_record_including_late_ones() -> None:
    w = replay_windows(60, 0)
    w, _ = w.advance([batch([("eni-a", "REJECT", 5000)])])
    w, _ = w.advance([batch([("eni-a", "REJECT", 10)])])  # late
    assert w.subnets.drop_columns(["seen"]).to_pylist() == [
        {"vpc_id": "vpc-1", "subnet_id": "subnet-1", "rejected_records": 2, "rejected_bytes": 80}
    ]


def subnet_batch(subnet: str, end: int):  # type: ignore[no-untyped-def]
    one = batch([("eni-" + subnet, "REJECT", end)])
    return dataclasses.replace(one, stats=one.stats.set_column(3, "subnet_id", pa.array([subnet])))


def test_idle_subnets_are_forgotten_like_enis_and_their_vpc_total_never_goes_down() -> None:
    """One subnet after another over a week: the subnet view holds the subnets counted within the idle time
    (wall clock, as ENIs), not every one ever seen; the VPC's total keeps the forgotten ones' records."""
    day = 86400.0
    w = Windows(60, EventClock(0, follow_wall_clock=False), idle_seconds=day)
    totals = []
    for i in range(14):  # a new subnet every half day, each counted once
        w, _ = w.advance([subnet_batch(f"subnet-{i}", 1000 + i)], now=T0 + i * day / 2)
        totals.append(w.vpc_rejected_records()["vpc-1"])
    assert sorted(w.subnets.column("subnet_id").to_pylist()) == ["subnet-12", "subnet-13"]  # 11: a day idle, as ENIs
    assert totals == list(range(1, 15))  # the VPC's counter only grows
    again = Windows.restore(w.snapshot(), 60, EventClock(0, follow_wall_clock=False), T0 + 7 * day, day)
    assert again.vpc_rejected_records() == {"vpc-1": 14}
    assert again.subnets.equals(w.subnets)
    # a tick of the wall clock forgets too (nothing new from anywhere); the VPC goes with its last subnet
    ticking = Windows(60, EventClock(0, follow_wall_clock=True, sources=frozenset({"s"}), started_at=T0), idle_seconds=day)
    ticking, _ = ticking.advance([subnet_batch("subnet-x", 1000)], "s", now=T0)
    ticking, _ = ticking.tick(T0 + 2 * day)
    assert ticking.subnets.num_rows == 0
    assert ticking.vpc_rejected_records() == {}


def test_a_snapshot_from_before_subnets_were_forgotten_restores_them_as_seen_now() -> None:
    w, _ = replay_windows(60, 0).advance([batch([("eni-a", "REJECT", 5000)])])
    meta, _, rest = w.snapshot().partition(b"\n")
    doc = orjson.loads(meta)
    assert pa.ipc.open_stream(rest[sum(doc["sizes"][:3]) :]).read_all().schema.names == [  # the old tables' shape
        "vpc_id",
        "subnet_id",
        "rejected_records",
        "rejected_bytes",
    ]
    old = {k: v for k, v in doc.items() if k not in ("subnet_seen", "vpcs")}  # what older code wrote
    again = Windows.restore(orjson.dumps(old) + b"\n" + rest, 60, EventClock(0, follow_wall_clock=False), T0)
    assert again.subnets.column("seen").to_pylist() == [float(T0)]
    assert again.vpc_rejected_records() == {"vpc-1": 1}


def test_snapshot_round_trip() -> None:
    w = replay_windows(60, 300)
    w, _ = w.advance([batch([("eni-a", "REJECT", 1000), ("eni-b", "ACCEPT", 1100)])])
    again = Windows.restore(w.snapshot(), 60, EventClock(300, follow_wall_clock=False))
    assert again.stats.equals(w.stats)
    assert again.sources.equals(w.sources)
    assert (again.watermark, again.late_records, dict(again.clock.marks)) == (w.watermark, w.late_records, {"replay": 1100})


def test_rows_without_time_or_interface_are_ignored() -> None:
    table = pa.table({"interface-id": [None, "eni-a"], "action": ["REJECT", "REJECT"], "end": pa.array([100, None], pa.int64())})
    assert window_batch(table, 60).stats.num_rows == 0


def test_a_record_from_a_broken_clock_counts_in_no_window_and_moves_no_event_time() -> None:
    now = 1_000_000
    w = replay_windows(60, 120)
    part = batch([("eni-a", "REJECT", now - 30), ("eni-b", "REJECT", now + 30 * 86400)], max_time=now + 300)
    assert (part.future, part.max_time) == (1, now - 30)
    assert part.future_example is not None
    assert "eni-b" in part.future_example
    w, _ = w.advance([part])
    assert w.watermark == now - 30 - 120  # not 30 days ahead
    assert w.future_records == 1
    assert {r["interface_id"] for r in w.stats.to_pylist()} == {"eni-a"}
    # The next records are on time, not late.
    w, _ = w.advance([batch([("eni-a", "REJECT", now + 10)], max_time=now + 300)])
    assert w.late_records == 0


def test_a_lagging_source_keeps_its_records_on_time() -> None:
    """S3 ten minutes behind Kinesis, lateness two minutes: none of S3's records are late."""
    base = 100_000
    clock = EventClock(120, idle_timeout_seconds=600, sources=frozenset({"kinesis", "s3"}), started_at=base)
    w = Windows(60, clock)
    for minute in range(20):
        now = float(base + minute * 60)
        w, _ = w.advance([batch([("eni-k", "REJECT", base + minute * 60)])], "kinesis", now)
        w, _ = w.advance([batch([("eni-s", "REJECT", base + minute * 60 - 600)])], "s3", now)
    assert w.late_records == 0
    assert w.watermark == base + 19 * 60 - 600 - 120  # held by the lagging source
    # Kinesis alone (S3 idle) would have made every S3 record late: the old, global rule.
    alone = Windows(60, EventClock(120, follow_wall_clock=False))
    for minute in range(20):
        alone, _ = alone.advance([batch([("eni-k", "REJECT", base + minute * 60)])], "kinesis", 0)
        alone, _ = alone.advance([batch([("eni-s", "REJECT", base + minute * 60 - 600)])], "kinesis", 0)
    assert alone.late_records > 0


def test_quiet_period_closes_the_newest_windows_by_the_wall_clock() -> None:
    clock = EventClock(120, idle_timeout_seconds=600, sources=frozenset({"s3"}), started_at=0)
    w = Windows(60, clock)
    w, closed = w.advance([batch([("eni-a", "REJECT", 10_000)])], "s3", 10_100.0)
    assert closed.stats.num_rows == 0
    w, closed = w.tick(10_100.0 + 599)  # not idle yet
    assert closed.stats.num_rows == 0
    w, closed = w.tick(10_100.0 + 600)  # idle: event time = wall clock
    assert [r["window_start"] for r in closed.stats.to_pylist()] == [9960]
    assert w.watermark == 10_700 - 120


def test_merging_an_inputs_partials_first_changes_nothing() -> None:
    """The pipeline folds one object's partials in its decode thread (`merge`) before `advance`."""
    parts = [
        batch([("eni-a", "REJECT", 1000), ("eni-b", "ACCEPT", 1010)], max_time=None),
        batch([("eni-a", "REJECT", 1005), ("eni-a", "REJECT", 2000)]),
        batch([("eni-c", "REJECT", 1500), ("eni-b", "REJECT", 3000)], max_time=2500),  # one record "future"
    ]
    (merged,) = merge(parts)
    assert merged.future == 1
    assert merged.future_example is not None
    for w0 in (replay_windows(60, 300), replay_windows(60, 300).advance([batch([("eni-z", "ACCEPT", 900)])])[0]):
        direct, closed_direct = w0.advance(parts, now=5000.0)
        folded, closed_folded = w0.advance([merged], now=5000.0)
        order = [(k, "ascending") for k in (*KEY, "srcaddr")]
        assert direct.stats.sort_by(order[:2]).equals(folded.stats.sort_by(order[:2]))
        assert direct.sources.sort_by(order).equals(folded.sources.sort_by(order))
        assert direct.clock == folded.clock
        assert closed_direct.stats.equals(closed_folded.stats)
    assert merge(parts[:1]) == parts[:1]


_ROW = st.tuples(
    st.sampled_from(["eni-a", "eni-b", "eni-c", "eni-d"]),
    st.sampled_from([0, 60, 120, 1_764_000_000]),
    st.one_of(st.none(), st.sampled_from(["vpc-1", "vpc-2", "vpc-10"])),
    st.one_of(st.none(), st.sampled_from(["subnet-x", "subnet-y"])),
    st.integers(0, 2**40),
)


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.lists(_ROW, max_size=12), min_size=2, max_size=5))
def test_the_dense_fold_of_window_stats_equals_arrows(parts: list[list[tuple[str, int, str | None, str | None, int]]]) -> None:
    """Folding stats counts on integer codes with numpy; Arrow's hash aggregation is the reference."""
    parts = [list({(r[0], r[1]): r for r in rows}.values()) for rows in parts]  # a partial has one row per key
    tables = [
        pa.table(
            {
                "interface_id": [r[0] for r in rows],
                "window_start": pa.array([r[1] for r in rows], pa.int64()),
                "vpc_id": pa.array([r[2] for r in rows], pa.string()),
                "subnet_id": pa.array([r[3] for r in rows], pa.string()),
                **{n: pa.array([r[4] + i for r in rows], pa.int64()) for i, n in enumerate(_STAT_SUMS)},
            },
            schema=STATS,
        )
        for rows in parts
    ]
    order = [("interface_id", "ascending"), ("window_start", "ascending")]
    assume(sum(1 for t in tables if t.num_rows) >= 2)  # one partial alone is returned as it is
    dense = _fold_stats_dense(pa.concat_tables(tables))
    assert dense is not None
    assert dense.sort_by(order).equals(_fold(tables, list(KEY), _STAT_SUMS, STATS, ["vpc_id", "subnet_id"]).sort_by(order))
    assert fold_stats(tables).sort_by(order).equals(dense.sort_by(order))


def test_a_fold_over_a_sparse_grid_takes_arrows_way() -> None:
    """400 ENIs each in its own window: a 400 x 400 grid for 800 rows is not worth it; the fold is still right."""
    rows = 400
    table = pa.table(
        {
            "interface_id": [f"eni-{i}" for i in range(rows)],
            "window_start": pa.array([60 * i for i in range(rows)], pa.int64()),
            "vpc_id": pa.nulls(rows, pa.string()),
            "subnet_id": pa.nulls(rows, pa.string()),
            **{n: pa.array([1] * rows, pa.int64()) for n in _STAT_SUMS},
        },
        schema=STATS,
    )
    assert _fold_stats_dense(pa.concat_tables([table, table])) is None
    folded = fold_stats([table, table])
    assert folded.num_rows == rows
    assert set(folded.column("records").to_pylist()) == {2}


_RECORD = st.tuples(
    st.one_of(st.none(), st.sampled_from(["eni-a", "eni-b", "eni-c"])),
    st.one_of(st.none(), st.sampled_from(["ACCEPT", "REJECT"])),
    st.one_of(st.none(), st.integers(0, 400)),
    st.one_of(st.none(), st.integers(0, 400)),
    st.one_of(st.none(), st.integers(0, 2**40)),
    st.one_of(st.none(), st.sampled_from(["vpc-1", "vpc-2"])),
    st.one_of(st.none(), st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1"])),
    st.one_of(st.none(), st.sampled_from([22, 443, 0, 65535])),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(_RECORD, min_size=1, max_size=40),
    window=st.sampled_from([60, 7]),
    places=st.booleans(),
    max_time=st.one_of(st.none(), st.integers(0, 400)),
)
def test_a_batch_counted_on_codes_equals_arrows_group_by(
    records: list[tuple[str | None, str | None, int | None, int | None, int | None, str | None, str | None, int | None]],
    window: int,
    places: bool,
    max_time: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch partial as the decoder hands it (interface ids dictionary-encoded): numpy's dense count and
    Arrow's group-by (STREAMER_DENSE=0, the reference) give the same stats, sources and ports."""
    columns = {
        "interface-id": pa.array([r[0] for r in records], pa.string()).dictionary_encode(),
        "action": pa.array([r[1] for r in records], pa.string()).dictionary_encode(),
        "start": pa.array([r[2] for r in records], pa.int64()),
        "end": pa.array([r[3] for r in records], pa.int64()),
        "packets": pa.array([r[4] for r in records], pa.int64()),
        "bytes": pa.array([None if r[4] is None else 2 * r[4] for r in records], pa.int64()),
        "srcaddr": pa.array([r[6] for r in records], pa.string()),
        "dstport": pa.array([r[7] for r in records], pa.int32()),
    }
    if places:
        columns["vpc-id"] = pa.array([r[5] for r in records], pa.string()).dictionary_encode()
        columns["subnet-id"] = pa.array([None if r[5] is None else r[5] + "-s" for r in records], pa.string())
    table = pa.table(columns)
    order = [("interface_id", "ascending"), ("window_start", "ascending")]
    monkeypatch.setattr(windows_module, "DENSE", True)
    dense = window_batch(table, window, max_time)
    monkeypatch.setattr(windows_module, "DENSE", False)
    arrow = window_batch(table, window, max_time)
    assert dense.stats.sort_by(order).equals(arrow.stats.sort_by(order))
    for kind, column in (("sources", "srcaddr"), ("ports", "dstport")):
        by = [*order, (column, "ascending")]
        assert getattr(dense, kind).sort_by(by).equals(getattr(arrow, kind).sort_by(by))
    assert (dense.max_time, dense.future) == (arrow.max_time, arrow.future)


def test_corpus_batches_counted_on_codes_equal_arrows_group_by(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every text and Parquet sample of the corpus, decoded as the live path decodes it: both ways agree."""
    reader = ObjectReader(columns=columns(True, True, True))
    tables: list[pa.Table] = []
    with ThreadPoolExecutor(2) as pool:
        for path in sorted(corpus.rglob("*")):
            if path.suffix in (".log", ".gz", ".parquet"):
                Ingestor(reader, lambda t: t, pool).run([path.read_bytes()], tables.append)
    tables = [t for t in tables if t.num_rows]
    assert sum(t.num_rows for t in tables) > 100
    order = [("interface_id", "ascending"), ("window_start", "ascending")]
    for table in tables:
        monkeypatch.setattr(windows_module, "DENSE", True)
        dense = window_batch(table, 60)
        monkeypatch.setattr(windows_module, "DENSE", False)
        arrow = window_batch(table, 60)
        assert dense.stats.sort_by(order).equals(arrow.stats.sort_by(order))
        for kind, column in (("sources", "srcaddr"), ("ports", "dstport")):
            by = [*order, (column, "ascending")]
            assert getattr(dense, kind).sort_by(by).equals(getattr(arrow, kind).sort_by(by))


def test_streamer_dense_0_counts_batches_with_arrows_group_by() -> None:
    """The switch to compare with the reference, as the README says."""
    import subprocess
    import sys

    code = "from streamer.aggregate import windows; print(windows.DENSE)"
    got = [
        subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, check=True).stdout.strip()
        for env in ({"STREAMER_DENSE": "1"}, {"STREAMER_DENSE": "0"})
    ]
    assert got == [b"True", b"False"]


def test_a_dictionary_that_repeats_a_value_still_gives_one_row_per_interface_and_window() -> None:
    """A dictionary from elsewhere (Parquet) may hold a value twice; the codes would then split one ENI in two."""
    interfaces = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), pa.array(["eni-a", "eni-a"]))
    table = pa.table(
        {
            "interface-id": interfaces,
            "action": ["REJECT", "REJECT", "ACCEPT"],
            "end": pa.array([100, 100, 100], pa.int64()),
            "packets": pa.array([1, 2, 3], pa.int64()),
            "bytes": pa.array([10, 20, 30], pa.int64()),
        }
    )
    stats = window_batch(table, 60).stats.to_pylist()
    assert [(r["interface_id"], r["records"], r["rejected_packets"]) for r in stats] == [("eni-a", 3, 3)]


_INPUT_ROW = st.tuples(
    st.sampled_from(["eni-a", "eni-b", "eni-c"]),
    st.sampled_from(["192.0.2.1", "192.0.2.2", "198.51.100.7"]),
    st.sampled_from([22, 443, 3389]),
    st.integers(900, 1500),
)


def _input(rows: list[tuple[str, str, int, int]]) -> list[WindowBatch]:
    if not rows:
        return []
    eni, src, port, end = zip(*rows, strict=True)
    table = pa.table(
        {
            "interface-id": eni,
            "action": ["REJECT"] * len(rows),
            "end": pa.array(end, pa.int64()),
            "packets": pa.array([1] * len(rows), pa.int64()),
            "bytes": pa.array([40] * len(rows), pa.int64()),
            "srcaddr": src,
            "dstport": pa.array(port, pa.int32()),
            "vpc-id": ["vpc-1"] * len(rows),
            "subnet-id": ["subnet-1"] * len(rows),
        }
    )
    return [window_batch(table, 60)]


@pytest.mark.parametrize("max_rows", [3, 200_000])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.lists(_INPUT_ROW, max_size=10),
    inputs=st.lists(st.tuples(st.lists(_INPUT_ROW, max_size=10), st.sampled_from(["s1", "s2"])), max_size=5),
)
def test_advancing_a_group_at_once_equals_advancing_input_by_input(
    max_rows: int, before: list[tuple[str, str, int, int]], inputs: list[tuple[list[tuple[str, str, int, int]], str]]
) -> None:
    """A commit group folds its windows once (`advance_many`): the same state, byte for byte, and the same
    windows closed after each input (their rows in no particular order, as `Closed` says); with a low
    MAX_CONTEXT_ROWS, cut at the same inputs."""
    saved = windows_module.MAX_CONTEXT_ROWS
    windows_module.MAX_CONTEXT_ROWS = max_rows
    try:
        w0 = Windows(60, EventClock(120, follow_wall_clock=False)).advance(_input(before), "s1", now=T0)[0]
        steps = [(_input(rows), source) for rows, source in inputs]
        one_by_one, closed_each = w0, []
        for parts, source in steps:
            one_by_one, closed = one_by_one.advance(parts, source, now=T0)
            closed_each.append(closed)
        at_once, closed_at_once = w0.advance_many(steps, now=T0)
    finally:
        windows_module.MAX_CONTEXT_ROWS = saved
    for name in ("stats", "sources", "ports", "subnets"):  # row order too: a snapshot's bytes are the same
        assert getattr(at_once, name).equals(getattr(one_by_one, name)), name
    assert (
        dataclasses.replace(
            at_once, stats=one_by_one.stats, sources=one_by_one.sources, ports=one_by_one.ports, subnets=one_by_one.subnets
        )
        == one_by_one
    )
    assert len(closed_at_once) == len(closed_each)
    for got, want in zip(closed_at_once, closed_each, strict=True):
        assert got.stats.schema == want.stats.schema
        for name in ("stats", "sources", "ports"):
            assert _rows(getattr(got, name)) == _rows(getattr(want, name)), name


def _rows(table: pa.Table) -> list[tuple[object, ...]]:
    """A table's schema-typed rows in a canonical order."""
    return sorted(tuple(r.values()) for r in table.to_pylist())
