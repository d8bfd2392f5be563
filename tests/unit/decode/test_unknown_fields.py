"""A field the catalogue does not know never costs a record (issue 31 item 4).

It is read as a string, left out of every signal, and reported: in the
object's ErrorCounts (`unknown_fields`), then once per object in
`streamer_unknown_fields_total{field}` (bounded), logged once per name.
"""

from __future__ import annotations

import gzip
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate.anomaly import Settings
from streamer.aggregate.detection import Detection
from streamer.aggregate.state import FlowState
from streamer.export.telemetry import MAX_UNKNOWN_FIELDS, OTHER_FIELD, Telemetry
from streamer.pipeline import Pipeline, Store
from streamer.schema import DEFAULT_FIELDS, header_fields, parse_log_format
from streamer.settings import check_log_format
from streamer.sources.base import Delivery, single_chunk
from streamer.store.base import Done
from streamer.store.sqlite import CheckpointStore
from tests.helpers import decode_bytes

SIGNALS = ("interface-id", "action", "log-status", "packets", "bytes")
NOW = int(time.time())


def body(header: str, n: int) -> bytes:
    rows = "".join(f"2 eni-{i % 3} x{i} 3 120 {'ACCEPT' if i % 2 else 'REJECT'} OK\n" for i in range(n))
    return (header + "\n" + rows).encode()


@pytest.mark.parametrize(
    "header",
    [
        "version interface-id frobnicate packets bytes action log-status",
        "version interface_id frobnicate packets bytes action log_status",
    ],
)
def test_a_header_with_an_unknown_field_counts_every_record(header: str) -> None:
    rows, errors, failure = decode_bytes(body(header, 50))
    assert failure is None
    assert errors.counts == {}
    assert errors.unknown_fields == {"frobnicate"}
    assert len(rows) == 50
    assert rows[7] == {
        "version": 2,
        "interface-id": "eni-1",
        "frobnicate": "x7",
        "packets": 3,
        "bytes": 120,
        "action": "ACCEPT",
        "log-status": "OK",
    }


def test_the_unknown_field_is_left_out_of_the_signals() -> None:
    rows, errors, failure = decode_bytes(
        body("version interface-id frobnicate packets bytes action log-status", 10), columns=SIGNALS
    )
    assert failure is None
    assert errors.unknown_fields == {"frobnicate"}
    assert len(rows) == 10
    assert set(rows[0]) == set(SIGNALS)


def test_a_header_that_starts_with_an_unknown_field_is_still_a_header() -> None:
    data = b"next-year-field version interface-id packets action\nzz 2 eni-a 4 REJECT\nzz 2 eni-b 5 ACCEPT\n"
    rows, errors, failure = decode_bytes(data, columns=("interface-id", "packets", "action"))
    assert failure is None
    assert errors.counts == {}
    assert errors.unknown_fields == {"next-year-field"}
    assert rows == [
        {"interface-id": "eni-a", "packets": 4, "action": "REJECT"},
        {"interface-id": "eni-b", "packets": 5, "action": "ACCEPT"},
    ]


def test_records_are_never_taken_for_a_header() -> None:
    assert header_fields("2 123456789012 eni-a 10.0.0.1") is None
    assert header_fields("eni-a ACCEPT OK") is None  # name-like tokens, none a field we know
    assert header_fields("version bogus") == ("version", "bogus")


def test_a_log_format_with_an_unknown_field_counts_every_record() -> None:
    assert parse_log_format("${interface-id} ${new-thing} ${packets}") == ("interface-id", "new-thing", "packets")
    rows, errors, failure = decode_bytes(b"eni-a zz 7\neni-b - 8\n", "${interface-id} ${new-thing} ${packets}")
    assert failure is None
    assert errors.unknown_fields == {"new-thing"}
    assert rows == [
        {"interface-id": "eni-a", "new-thing": "zz", "packets": 7},
        {"interface-id": "eni-b", "new-thing": None, "packets": 8},
    ]


def test_a_log_format_token_that_is_no_name_at_all_is_still_refused() -> None:
    with pytest.raises(ValueError, match="not a flow-log field name"):
        parse_log_format("${version} ${not a name!}")


def test_parquet_with_unknown_columns_counts_every_record() -> None:
    table = pa.table(
        {
            "version": pa.array([2, 2], pa.int32()),
            "interface_id": ["eni-a", "eni-b"],
            "packets": pa.array([1, 2], pa.int64()),
            "action": ["ACCEPT", "REJECT"],
            "new_number": pa.array([5, 6], pa.int64()),
            "new_list": pa.array([[1], [2, 3]], pa.list_(pa.int64())),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    rows, errors, failure = decode_bytes(buf.getvalue())
    assert failure is None
    assert errors.unknown_fields == {"new-number", "new-list"}
    assert [(r["interface-id"], r["packets"], r["new-number"], r["new-list"]) for r in rows] == [
        ("eni-a", 1, "5", None),
        ("eni-b", 2, "6", None),
    ]
    rows, _, failure = decode_bytes(buf.getvalue(), columns=SIGNALS)
    assert failure is None
    assert len(rows) == 2
    assert "new-number" not in rows[0]


def test_the_metric_keeps_a_bounded_label_set_and_logs_each_name_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    telemetry = Telemetry(registry)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            telemetry.unknown_fields({"alpha"}, "s3://b/k")
        for i in range(MAX_UNKNOWN_FIELDS + 5):
            telemetry.unknown_fields({f"f{i:03d}"}, "s3://b/k")
    assert registry.get_sample_value("streamer_unknown_fields_total", {"field": "alpha"}) == 3
    assert registry.get_sample_value("streamer_unknown_fields_total", {"field": OTHER_FIELD}) == 6
    labels = {s.labels["field"] for m in registry.collect() for s in m.samples if s.name == "streamer_unknown_fields_total"}
    assert len(labels) == MAX_UNKNOWN_FIELDS + 1
    named = [r for r in caplog.records if "'alpha'" in r.getMessage()]
    assert len(named) == 1


async def test_the_object_counts_as_usual_and_the_field_is_counted_once(tmp_path: Path) -> None:
    """Through the live pipeline: today's `skipped: unknown_field 1` and nothing counted is gone."""
    header = " ".join((*DEFAULT_FIELDS, "shiny-new"))
    rows = "".join(f"2 1 eni-a 10.0.0.1 10.0.0.2 1024 22 6 1 40 {NOW - 605} {NOW - 600} REJECT OK v{i}\n" for i in range(40))
    blob = gzip.compress((header + "\n" + rows).encode())
    registry = CollectorRegistry()
    with ThreadPoolExecutor(2) as pool:
        pipe = Pipeline(
            FlowState(),
            Store(CheckpointStore(tmp_path / "c.db")),
            Telemetry(registry),
            pool,
            Detection.create(Settings(window_seconds=60), 120),
        )
        delivery = Delivery(location="s3://b/k", body=lambda: single_chunk(blob), done=[Done("s3", "b/k#e")])
        assert await pipe.process("s3", delivery) == "ok"
    assert pipe.state.counters.total_records() == 40
    assert pipe.state.decode_errors == {}
    assert registry.get_sample_value("streamer_unknown_fields_total", {"field": "shiny-new"}) == 1


def test_a_log_format_with_an_unknown_field_starts_with_a_warning_naming_a_likely_typo(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert check_log_format("${version} ${interfce-id} ${next-year}") == "${version} ${interfce-id} ${next-year}"
    messages = [r.getMessage() for r in caplog.records]
    assert any("'interfce-id'" in m and "a typo of 'interface-id'" in m for m in messages)
    assert any("'next-year'" in m and "typo" not in m for m in messages)


async def test_an_input_found_counted_already_adds_nothing_to_the_metric(tmp_path: Path) -> None:
    """Counted when the input commits, like the records: a Kinesis batch delivered again after an unknown
    commit outcome (or read by two replicas) is DUPLICATE and must not count its unknown fields twice."""
    body = ("2 eni-a zz 3 120 REJECT OK\n" * 5).encode()
    registry = CollectorRegistry()
    with ThreadPoolExecutor(2) as pool:
        pipe = Pipeline(FlowState(), Store(CheckpointStore(tmp_path / "c.db")), Telemetry(registry), pool, None)

        def delivery() -> Delivery:
            return Delivery(
                location="kinesis://s/shard-0",
                body=lambda: single_chunk(body),
                cursors={("k", "shard-0"): "9"},
                expected={("k", "shard-0"): None},
                log_format=parse_log_format("version interface-id next-year packets bytes action log-status"),
                headerless=True,
            )

        assert await pipe.process("k", delivery()) == "ok"
        assert await pipe.process("k", delivery()) == "duplicate"
    assert pipe.state.counters.total_records() == 5
    assert registry.get_sample_value("streamer_unknown_fields_total", {"field": "next-year"}) == 1
