"""50 MB Firehose objects (CloudWatch Logs payloads back to back, no newline) through the real S3 source with
`layout: firehose`, against moto over HTTP: every record counts exactly, plain and gzip'd both ways."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from tests.firehose_data import PACKINGS, add, pack, payload_stream, totals
from tests.integration.conftest import boto, exported_totals, objects_by_outcome, running, service_config, wait_metrics
from tests.integration.test_firehose import records_total

pytestmark = pytest.mark.integration


async def test_50_mb_firehose_objects_count_every_record(aws: str, tmp_path: Path) -> None:
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="firehose-big")
    now = dt.datetime.now(dt.UTC)
    truth: dict[str, tuple[int, int, int]] = {}
    for i, packing in enumerate(PACKINGS):
        docs, table = payload_stream(50 << 20, seed=20 + i)
        assert sum(len(d) for d in docs) >= 50 << 20
        add(truth, totals(table))
        key = f"flows/{now:%Y/%m/%d/%H}/flowlogs-{i}-{now:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}"
        s3.put_object(Bucket="firehose-big", Key=key, Body=pack(docs, packing))
        del docs, table
    source = {
        "type": "s3",
        "bucket": "firehose-big",
        "layout": "firehose",
        "prefix": "flows/",
        "endpoint_url": aws,
        "poll_interval_seconds": 0.5,
    }
    records = sum(c for c, _, _ in truth.values())
    async with running(service_config(tmp_path, [source])) as service:
        metrics = await wait_metrics(service.port, lambda m: objects_by_outcome(m).get("ok") == 3, seconds=600, what="3 objects")
        assert records_total(metrics) == records
        found: dict[str, tuple[int, int, int]] = {}
        for (eni, _action), (count, packets, nbytes) in exported_totals(metrics).items():
            add(found, {eni: (count, packets, nbytes)})
        assert found == truth
        assert objects_by_outcome(metrics) == {"ok": 3}
        assert not any(metrics.get("streamer_decode_errors_total", {}).values())
