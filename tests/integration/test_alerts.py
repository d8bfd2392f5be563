"""A known spike on one ENI fires exactly one alert in a real Alertmanager, none for steady ENIs;
the webhook gets it too; a restart keeps the baselines."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from aiohttp import web

from streamer.synth import Spike, TrafficProfile, eni_ids, generate_table, spike_table, to_lines
from tests.integration.conftest import (
    Metrics,
    am_alerts,
    ascrape,
    aws_key,
    boto,
    objects_by_outcome,
    running,
    service_config,
    wait_metrics,
)

pytestmark = pytest.mark.integration

BASE = 1_764_000_000  # event time of the traffic; objects themselves are "delivered" now
ENIS = 8
VICTIM = eni_ids(ENIS)[3]
SPIKE_START = BASE + 40 * 60


def objects() -> list[bytes]:
    """One hour of steady traffic on 8 ENIs in six 10-minute objects; a scan on VICTIM at minute 40."""
    profile = TrafficProfile(records=60_000, enis=ENIS, span_seconds=3600, start_epoch=BASE, seed=5)
    table = pa.concat_tables([generate_table(profile), spike_table(Spike(VICTIM, SPIKE_START, records=700))])
    table = table.sort_by([("start", "ascending")])
    starts = pa.array(table.column("start").to_pylist()).cast(pa.int64()).to_pylist()
    out = []
    for k in range(6):
        lo, hi = BASE + k * 600, BASE + (k + 1) * 600
        idx = [i for i, s in enumerate(starts) if lo <= s < hi]
        part = table.take(pa.array(idx))
        text = " ".join(profile.fields) + "\n" + "\n".join(to_lines(part).to_pylist()) + "\n"
        out.append(gzip.compress(text.encode()))
    return out


async def test_spike_fires_exactly_one_alert_in_alertmanager_and_webhook(aws: str, alertmanager: str, tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    now = dt.datetime.now(dt.UTC)
    for i, body in enumerate(objects()):
        s3.put_object(Bucket="flow-logs", Key=aws_key(now, "daily", n=i), Body=body)
    config = service_config(
        tmp_path,
        [{"type": "s3", "bucket": "flow-logs", "endpoint_url": aws, "poll_interval_seconds": 0.3, "max_concurrent_objects": 1}],
        anomaly={
            "window_seconds": 60,
            "lateness_seconds": 120,
            "score_threshold": 4,
            "min_rejected_records": 50,
            "warmup_windows": 10,
        },
        alerts={
            "alertmanager_url": alertmanager,
            "webhook_url": f"http://127.0.0.1:{hook_port}/hook",
            "resend_interval_seconds": 0.5,
            "hold_seconds": 900,
            "severity": "page",
        },
    )
    try:
        async with running(config) as service:
            deadline = asyncio.get_running_loop().time() + 60
            alerts: list[dict[str, Any]] = []
            while not alerts:
                assert asyncio.get_running_loop().time() < deadline, "no alert reached Alertmanager"
                await asyncio.sleep(0.3)
                alerts = await am_alerts(alertmanager)
            # The rest of the backlog, and several re-sends: still one alert.
            def sent(m: Metrics) -> float:
                return sum(v for k, v in m.get("streamer_alert_notifications_total", {}).items() if dict(k)["result"] == "ok")

            first = sent(await ascrape(service.port))
            await wait_metrics(
                service.port,
                lambda m: objects_by_outcome(m).get("ok") == 6 and sent(m) >= first + 4,
                what="every object and more re-sends",
            )
            alerts = await am_alerts(alertmanager)
            assert len(alerts) == 1, alerts
            alert = alerts[0]
            assert alert["labels"]["interface_id"] == VICTIM
            assert alert["labels"]["severity"] == "page"
            assert alert["status"]["state"] == "active"
            start = dt.datetime.fromtimestamp(SPIKE_START, dt.UTC).isoformat().replace("+00:00", "Z")
            assert alert["annotations"]["window_start"] == start
            assert "198.51.100.7" in alert["annotations"]["top_sources"]
            assert int(alert["annotations"]["observed_rejected_records"]) >= 700
            assert float(alert["annotations"]["baseline_rejected_records"]) < 30
            assert service.pipeline is not None
            assert service.pipeline.detection is not None
            baselines = dict(service.pipeline.detection.detector.baselines)
            assert set(baselines) == set(eni_ids(ENIS))
            assert received, "webhook got nothing"
            hooked = {a["labels"]["interface_id"] for doc in received for a in doc["alerts"]}
            assert hooked == {VICTIM}
            assert received[-1]["alerts"][0]["anomaly"]["window_start"] == SPIKE_START
        # Restart: the baselines (and open windows) come back from the checkpoint.
        async with running(config) as service:
            assert service.pipeline is not None
            assert service.pipeline.detection is not None
            assert dict(service.pipeline.detection.detector.baselines) == baselines
    finally:
        await runner.cleanup()
