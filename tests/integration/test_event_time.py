"""Event time you can trust, end to end against moto S3 and a real Alertmanager.

Each test is a case in which the old rule (one global watermark = newest
time seen - lateness, moved only by data) kept a real scan from alerting:
- one record from a broken clock, 30 days ahead, in an earlier object;
- a second source that delivers 10 minutes behind the first;
- a scan in the last window before the traffic stops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from streamer.schema import DEFAULT_FIELDS
from streamer.synth import Spike, TrafficProfile, eni_ids, generate_table, spike_table, to_lines
from tests.integration.conftest import am_alerts, ascrape, aws_key, boto, running, service_config, wait_metrics

pytestmark = pytest.mark.integration

ENIS = 8
VICTIM = eni_ids(ENIS)[3]
DETECTOR = {"window_seconds": 60, "lateness_seconds": 120, "score_threshold": 4, "min_rejected_records": 50, "warmup_windows": 10}


def gz(table: pa.Table) -> bytes:
    text = " ".join(DEFAULT_FIELDS) + "\n" + "\n".join(to_lines(table).to_pylist()) + "\n"
    return gzip.compress(text.encode())


def traffic(base: int, minutes: int, seed: int, spike_at: int | None = None, victim: str = VICTIM) -> pa.Table:
    """Steady traffic on 8 ENIs for `minutes`, with a scan on `victim` at `spike_at` (epoch), sorted by time."""
    profile = TrafficProfile(records=1000 * minutes, enis=ENIS, span_seconds=60 * minutes, start_epoch=base, seed=seed)
    parts = [generate_table(profile)]
    if spike_at is not None:
        parts.append(spike_table(Spike(victim, spike_at, records=700)))
    return pa.concat_tables(parts).sort_by([("start", "ascending")])


def split(table: pa.Table, base: int, minutes_per_object: int, objects: int) -> list[pa.Table]:
    starts = pa.array(table.column("start").to_pylist()).cast(pa.int64()).to_pylist()
    out = []
    for k in range(objects):
        lo, hi = base + k * minutes_per_object * 60, base + (k + 1) * minutes_per_object * 60
        out.append(table.take(pa.array([i for i, s in enumerate(starts) if lo <= s < hi], pa.int64())))
    return out


def s3_source(bucket: str, endpoint: str, name: str | None = None) -> dict[str, Any]:
    src = {"type": "s3", "bucket": bucket, "endpoint_url": endpoint, "poll_interval_seconds": 0.3, "max_concurrent_objects": 1}
    if name:
        src["name"] = name
    return src


async def wait_alert(url: str, seconds: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while True:
        alerts = await am_alerts(url)
        if alerts:
            return alerts
        assert time.monotonic() < deadline, "no alert reached Alertmanager"
        await asyncio.sleep(0.2)


def records_late(metrics: dict[str, Any]) -> float:
    return float(sum(metrics.get("streamer_late_records_total", {}).values()))


async def test_a_broken_clock_record_does_not_silence_the_next_scan(
    aws: str, alertmanager: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = 1_764_000_000
    objects = split(traffic(base, 60, seed=5, spike_at=base + 40 * 60), base, 10, 6)
    broken = objects[0].slice(0, 1).to_pylist()[0]
    ahead = int(time.time()) + 30 * 86400
    broken.update({"interface-id": eni_ids(ENIS)[0], "start": str(ahead - 10), "end": str(ahead)})
    objects[0] = pa.concat_tables([objects[0], pa.Table.from_pylist([broken], objects[0].schema)])
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    now = dt.datetime.now(dt.UTC)
    for i, table in enumerate(objects):
        s3.put_object(Bucket="flow-logs", Key=aws_key(now, "daily", n=i), Body=gz(table))
    total = sum(t.num_rows for t in objects)
    config = service_config(
        tmp_path, [s3_source("flow-logs", aws, "s3")], anomaly=DETECTOR, alerts={"alertmanager_url": alertmanager}
    )
    async with running(config) as service:
        alerts = await wait_alert(alertmanager, 60)
        assert [a["labels"]["interface_id"] for a in alerts] == [VICTIM]
        metrics = await wait_metrics(
            service.port, lambda m: sum(m.get("vpcflow_records_total", {}).values()) == total, what="every record counted"
        )
        assert metrics["streamer_future_records_total"] == {(("source", "s3"),): 1.0}
        assert records_late(metrics) == 0
        watermark = metrics["streamer_watermark_timestamp_seconds"][(("source", "all"),)]
        assert watermark < time.time()  # the broken record never moved event time
    warnings = [r.getMessage() for r in caplog.records if "ahead of the wall clock" in r.getMessage()]
    assert len(warnings) == 1  # one line for the object, naming it and the record
    assert aws_key(now, "daily", n=0) in warnings[0]
    assert eni_ids(ENIS)[0] in warnings[0]


async def test_a_source_ten_minutes_behind_still_alerts(aws: str, alertmanager: str, tmp_path: Path) -> None:
    """Bucket "ahead" is read first, fully; bucket "behind" then delivers the same hour 10 minutes behind, with a scan."""
    base = 1_764_000_000
    lag = 600
    ahead = split(traffic(base, 60, seed=5), base, 10, 6)
    others = eni_ids(2 * ENIS)[ENIS:]
    victim = others[2]
    behind_profile = TrafficProfile(records=60_000, enis=ENIS, span_seconds=3600, start_epoch=base - lag, seed=9)
    behind_table = generate_table(behind_profile)
    rename = dict(zip(eni_ids(ENIS), others, strict=True))
    behind_table = behind_table.set_column(
        2, "interface-id", pa.array([rename[e] for e in behind_table.column("interface-id").to_pylist()])
    )
    behind_table = pa.concat_tables([behind_table, spike_table(Spike(victim, base - lag + 40 * 60, records=700))]).sort_by(
        [("start", "ascending")]
    )
    behind = split(behind_table, base - lag, 10, 6)
    s3 = boto("s3", aws)
    for bucket in ("ahead", "behind"):
        s3.create_bucket(Bucket=bucket)
    now = dt.datetime.now(dt.UTC)
    for i, table in enumerate(ahead):
        s3.put_object(Bucket="ahead", Key=aws_key(now, "daily", n=i), Body=gz(table))
    config = service_config(
        tmp_path,
        [s3_source("ahead", aws, "kinesis-like"), s3_source("behind", aws, "s3-behind")],
        anomaly=DETECTOR,
        alerts={"alertmanager_url": alertmanager},
    )
    async with running(config) as service:
        await wait_metrics(
            service.port,
            lambda m: sum(m.get("vpcflow_records_total", {}).values()) == sum(t.num_rows for t in ahead),
            what="the leading source's hour counted",
        )
        for i, table in enumerate(behind):
            s3.put_object(Bucket="behind", Key=aws_key(now, "daily", n=i), Body=gz(table))
        alerts = await wait_alert(alertmanager, 60)
        assert [a["labels"]["interface_id"] for a in alerts] == [victim]
        metrics = await wait_metrics(
            service.port,
            lambda m: sum(m.get("vpcflow_records_total", {}).values()) == sum(t.num_rows for t in ahead + behind),
            what="both sources counted",
        )
        assert records_late(metrics) == 0
        marks = metrics["streamer_watermark_timestamp_seconds"]
        assert marks[(("source", "kinesis-like"),)] - marks[(("source", "s3-behind"),)] == pytest.approx(lag, abs=120)


async def test_a_scan_in_the_last_window_before_silence_alerts_by_the_wall_clock(
    aws: str, alertmanager: str, tmp_path: Path
) -> None:
    """Traffic up to a minute ago, the scan in its last window, then nothing: the window closes on the wall clock."""
    now = int(time.time())
    base = now - 20 * 60 - (now % 60)
    spike_at = base + 18 * 60  # the last whole window of the traffic
    table = traffic(base, 19, seed=3, spike_at=spike_at)
    table = table.filter(pa.compute.less(pa.compute.cast(table.column("end"), pa.int64()), spike_at + 60))
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    when = dt.datetime.now(dt.UTC)
    for i, part in enumerate(split(table, base, 5, 4)):
        s3.put_object(Bucket="flow-logs", Key=aws_key(when, "daily", n=i), Body=gz(part))
    idle, lateness, poll = 4, 5, 0.3
    config = service_config(
        tmp_path,
        [s3_source("flow-logs", aws, "s3")],
        anomaly={**DETECTOR, "lateness_seconds": lateness, "idle_timeout_seconds": idle},
        alerts={"alertmanager_url": alertmanager},
    )
    async with running(config) as service:
        metrics = await wait_metrics(
            service.port,
            lambda m: sum(m.get("vpcflow_records_total", {}).values()) == table.num_rows,
            what="every record counted",
        )
        counted_at = time.monotonic()
        # Data alone cannot close the scan's window: the newest record is inside it.
        assert metrics["streamer_watermark_timestamp_seconds"][(("source", "all"),)] < spike_at + 60
        alerts = await wait_alert(alertmanager, idle + lateness + poll + 10)
        assert [a["labels"]["interface_id"] for a in alerts] == [VICTIM]
        assert time.monotonic() - counted_at < idle + lateness + poll + 10
        after = await ascrape(service.port)
        assert after["streamer_watermark_timestamp_seconds"][(("source", "all"),)] >= spike_at + 60
