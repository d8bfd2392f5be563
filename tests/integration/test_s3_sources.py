"""S3 polling and S3 -> SQS notifications against moto in server mode, through aiobotocore."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import io
import json
from pathlib import Path

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import (
    Metrics,
    Truth,
    ascrape,
    aws_key,
    boto,
    exported_totals,
    flow_object,
    free_port,
    more_polls,
    objects_by_outcome,
    running,
    service_config,
    status,
    summed_totals,
    wait_metrics,
)

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
EPOCH = int(NOW.timestamp()) - 1200


def s3_source(endpoint: str, bucket: str, **extra: object) -> dict[str, object]:
    return {"type": "s3", "bucket": bucket, "endpoint_url": endpoint, "poll_interval_seconds": 0.2, **extra}


def finished(n: int, outcome: str | None = "ok"):  # type: ignore[no-untyped-def]
    def check(metrics: Metrics) -> bool:
        outcomes = objects_by_outcome(metrics)
        return (sum(outcomes.values()) if outcome is None else outcomes.get(outcome, 0)) >= n

    return check


async def test_poll_reads_daily_hourly_and_hive_layouts_across_accounts_and_regions(aws: str, tmp_path: Path) -> None:
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    truth = Truth()
    keys = [
        aws_key(NOW, "daily", account="111111111111", n=1),
        aws_key(NOW, "hourly", account="111111111111", region="eu-west-1", n=2),
        aws_key(NOW, "hive", account="222222222222", n=3),
        aws_key(NOW, "daily", prefix="other-prefix", n=4),  # outside the configured prefix: not ours
    ]
    for i, key in enumerate(keys):
        s3.put_object(Bucket="flow-logs", Key=key, Body=flow_object(truth if i < 3 else None, 2000, seed=i, start_epoch=EPOCH))
    s3.put_object(Bucket="flow-logs", Key="AWSLogs/README.txt", Body=b"not a flow log")

    async with running(service_config(tmp_path, [s3_source(aws, "flow-logs")])) as service:
        metrics = await wait_metrics(service.port, finished(3), what="3 objects")
        metrics = await more_polls(service.port)
        assert exported_totals(metrics) == truth.totals
        assert objects_by_outcome(metrics) == {"ok": 3}
        assert await status(service.port, "/readyz") == 200


async def test_late_object_in_an_old_partition_is_picked_up_once(aws: str, tmp_path: Path) -> None:
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    truth = Truth()
    s3.put_object(Bucket="flow-logs", Key=aws_key(NOW, "hourly", n=1), Body=flow_object(truth, 500, 1, EPOCH))
    config = service_config(tmp_path, [s3_source(aws, "flow-logs", lookback_seconds=6 * 3600)])
    async with running(config) as service:
        await wait_metrics(service.port, finished(1), what="first object")
        three_hours_ago = NOW - dt.timedelta(hours=3)
        late_key = aws_key(three_hours_ago, "hourly", n=2)
        s3.put_object(Bucket="flow-logs", Key=late_key, Body=flow_object(truth, 700, 2, int(three_hours_ago.timestamp())))
        too_old = NOW - dt.timedelta(hours=30)  # outside the lookback window: never listed
        s3.put_object(
            Bucket="flow-logs", Key=aws_key(too_old, "hourly", n=3), Body=flow_object(None, 10, 3, int(too_old.timestamp()))
        )
        await wait_metrics(service.port, finished(2), what="late object")
        metrics = await more_polls(service.port)  # several more polls: nothing is counted twice
        assert objects_by_outcome(metrics) == {"ok": 2}
        assert exported_totals(metrics) == truth.totals
        assert sum(metrics["streamer_delivery_delay_seconds_count"].values()) == 2


async def test_parquet_and_corrupt_objects_beside_good_ones(aws: str, tmp_path: Path) -> None:
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    truth = Truth()
    s3.put_object(Bucket="flow-logs", Key=aws_key(NOW, "daily", n=1), Body=flow_object(truth, 1000, 1, EPOCH))
    s3.put_object(Bucket="flow-logs", Key=aws_key(NOW, "daily", n=2), Body=flow_object(truth, 1000, 2, EPOCH))
    truncated = flow_object(None, 5000, 3, EPOCH)
    s3.put_object(Bucket="flow-logs", Key=aws_key(NOW, "daily", n=3), Body=truncated[: len(truncated) // 2])
    s3.put_object(Bucket="flow-logs", Key=aws_key(NOW, "daily", n=4), Body=b"\x1f\x8b" + b"\x00garbage" * 100)
    s3.put_object(Bucket="flow-logs", Key=aws_key(NOW, "daily", n=5), Body=bytes(range(256)) * 40)
    table = pa.table(
        {
            "version": pa.array([5, 5, 5], pa.int32()),
            "interface_id": ["eni-parquet", "eni-parquet", "eni-parquet"],
            "action": ["REJECT", "ACCEPT", "REJECT"],
            "log_status": ["OK", "OK", "OK"],
            "packets": pa.array([1, 2, 3], pa.int64()),
            "bytes": pa.array([100, 200, 300], pa.int64()),
            "start": pa.array([EPOCH] * 3, pa.int64()),
            "end": pa.array([EPOCH + 60] * 3, pa.int64()),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.put_object(Bucket="flow-logs", Key=aws_key(NOW, "daily", n=6).replace(".log.gz", ".log.parquet"), Body=buf.getvalue())
    truth.totals[("eni-parquet", "REJECT")] = [2, 4, 400]
    truth.totals[("eni-parquet", "ACCEPT")] = [1, 2, 200]

    async with running(service_config(tmp_path, [s3_source(aws, "flow-logs")])) as service:
        metrics = await wait_metrics(service.port, finished(6, None), what="6 objects")
        assert objects_by_outcome(metrics) == {"ok": 3, "failed": 3}
        errors = {dict(k)["reason"]: v for k, v in metrics["streamer_decode_errors_total"].items()}
        assert errors == {"truncated": 1, "corrupt_gzip": 1, "unknown_format": 1}
        totals = exported_totals(metrics)
        for key, value in truth.totals.items():  # the truncated object's leading records count too
            assert totals[key][0] >= value[0]
        assert totals[("eni-parquet", "REJECT")] == [2, 4, 400]
        errors = {dict(k)["reason"]: v for k, v in metrics["streamer_decode_errors_total"].items()}
        assert errors == {"truncated": 1, "corrupt_gzip": 1, "unknown_format": 1}


async def test_readyz_fails_until_the_first_listing(aws: str, tmp_path: Path) -> None:
    async with running(service_config(tmp_path, [s3_source(aws, "no-such-bucket")])) as service:
        assert await status(service.port, "/readyz") == 503
        metrics = await wait_metrics(service.port, lambda m: bool(m.get("streamer_source_errors_total")), what="listing error")
        reasons = {dict(k)["reason"] for k in metrics["streamer_source_errors_total"]}
        assert "NoSuchBucket" in reasons
        assert await status(service.port, "/readyz") == 503
        assert await status(service.port, "/healthz") == 200


def make_queue_with_notifications(aws: str, bucket: str) -> str:
    s3, sqs = boto("s3", aws), boto("sqs", aws)
    s3.create_bucket(Bucket=bucket)
    url = sqs.create_queue(QueueName="flow-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    return str(url)


async def test_sqs_notifications_with_two_competing_consumers(aws: str, tmp_path: Path) -> None:
    url = make_queue_with_notifications(aws, "flow-logs")
    s3, sqs = boto("s3", aws), boto("sqs", aws)
    truth = Truth()
    n_objects = 12
    for i in range(n_objects):
        key = aws_key(NOW, "daily", n=i)
        if i == 3:
            key = key.replace(".log.gz", "+with space=.log.gz")  # URL-encoded in the event
        s3.put_object(Bucket="flow-logs", Key=key, Body=flow_object(truth, 800, i, EPOCH))
    sqs.send_message(QueueUrl=url, MessageBody="this is not json")

    def source(name: str) -> dict[str, object]:
        # One object at a time each: with the default bytes in flight, one replica may take all 12 small objects.
        return {
            "type": "s3_sqs",
            "name": name,
            "queue_url": url,
            "endpoint_url": aws,
            "wait_time_seconds": 1,
            "max_messages": 2,
            "max_bytes_in_flight": 1,
        }

    async with (
        running(service_config(tmp_path / "a", [source("sqs-a")])) as a,
        running(service_config(tmp_path / "b", [source("sqs-b")])) as b,
    ):
        ports = [a.port, b.port]
        deadline = asyncio.get_running_loop().time() + 90
        while True:
            scrapes = [await ascrape(p) for p in ports]
            if sum(objects_by_outcome(m).get("ok", 0) for m in scrapes) >= n_objects:
                break
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.2)
        scrapes = [await more_polls(p, 2) for p in ports]
        assert summed_totals(scrapes) == truth.totals
        assert sum(objects_by_outcome(m).get("ok", 0) for m in scrapes) == n_objects
        assert all(objects_by_outcome(m).get("ok", 0) > 0 for m in scrapes), "both replicas should have taken work"
        reasons = {dict(k)["reason"] for m in scrapes for k in m.get("streamer_source_errors_total", {})}
        assert "bad_message" in reasons
        attrs = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )
        assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"
        assert attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"


async def test_sns_wrapped_test_event_and_duplicate_notifications(aws: str, tmp_path: Path) -> None:
    s3, sqs = boto("s3", aws), boto("sqs", aws)
    s3.create_bucket(Bucket="flow-logs")
    url = sqs.create_queue(QueueName="wrapped")["QueueUrl"]
    truth = Truth()
    key = aws_key(NOW, "hive", n=7)
    resp = s3.put_object(Bucket="flow-logs", Key=key, Body=flow_object(truth, 100, 7, EPOCH))
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "eventTime": NOW.isoformat(),
                "s3": {
                    "bucket": {"name": "flow-logs"},
                    "object": {"key": key.replace("=", "%3D"), "eTag": resp["ETag"].strip('"'), "size": 1},
                },
            }
        ]
    }
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Event": "s3:TestEvent", "Bucket": "flow-logs"}))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Type": "Notification", "Message": json.dumps(event)}))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event))  # the same object again: counted once
    source = {"type": "s3_sqs", "queue_url": url, "endpoint_url": aws, "wait_time_seconds": 1}
    async with running(service_config(tmp_path, [source])) as service:
        metrics = await wait_metrics(service.port, finished(2, None), what="two notifications")
        assert objects_by_outcome(metrics) == {"ok": 1, "duplicate": 1}
        assert exported_totals(metrics) == truth.totals
        # Nothing is in flight once both are done (each input is counted in while it is worked, and out after).
        assert list(metrics["streamer_inputs_in_flight"].values()) == [0]
        assert list(metrics["streamer_input_bytes_in_flight"].values()) == [0]


def test_flow_object_helper() -> None:
    assert gzip.decompress(flow_object(None, 3, 1, EPOCH)).count(b"\n") == 4


async def test_polling_and_notifications_on_one_bucket_count_each_object_once(aws: str, tmp_path: Path) -> None:
    """s3 and s3_sqs read the same objects at the same time: the done check inside the transaction keeps one."""
    url = make_queue_with_notifications(aws, "flow-logs")
    s3 = boto("s3", aws)
    truth = Truth()
    n_objects = 10
    for i in range(n_objects):
        s3.put_object(Bucket="flow-logs", Key=aws_key(NOW, "daily", n=i), Body=flow_object(truth, 3000, i, EPOCH))
    sources = [
        s3_source(aws, "flow-logs", max_concurrent_objects=4),
        {"type": "s3_sqs", "queue_url": url, "endpoint_url": aws, "wait_time_seconds": 1, "max_messages": 10},
    ]
    async with running(service_config(tmp_path, sources)) as service:
        await wait_metrics(service.port, finished(n_objects), what="every object")
        metrics = await more_polls(service.port, 6)  # both sources have looked again, several times
        assert objects_by_outcome(metrics)["ok"] == n_objects  # the other source's tries were duplicates, or skipped
        assert exported_totals(metrics) == truth.totals


async def test_every_message_held_stays_invisible_while_a_slow_batch_is_worked(aws: str, tmp_path: Path) -> None:
    """Two consumers, each with its own checkpoint (so a message seen twice would count twice). Objects
    trickle in through a slow proxy, so a batch takes longer than the visibility timeout: messages still
    waiting their turn must be kept invisible too, or the other consumer would take them."""
    from tests.integration.slowproxy import SlowProxy

    url = make_queue_with_notifications(aws, "flow-logs")
    s3 = boto("s3", aws)
    truth = Truth()
    for i in range(14):
        s3.put_object(Bucket="flow-logs", Key=aws_key(NOW, "daily", n=i), Body=flow_object(truth, 3000, i, EPOCH))
    size = len(flow_object(None, 3000, 0, EPOCH))
    rate = size // 2  # about two seconds per object: a batch of 10 takes twice the visibility timeout
    with SlowProxy(int(aws.rsplit(":", 1)[1]), rate, b"GET /flow-logs/").running() as proxy:
        endpoint = f"http://127.0.0.1:{proxy.port}"

        def source(name: str) -> dict[str, object]:
            return {
                "type": "s3_sqs",
                "name": name,
                "queue_url": url,
                "endpoint_url": endpoint,
                "wait_time_seconds": 1,
                "max_messages": 10,
                "visibility_timeout_seconds": 10,
                "visibility_keepalive_seconds": 2,
            }

        async with (
            running(service_config(tmp_path / "a", [source("sqs-a")])) as a,
            running(service_config(tmp_path / "b", [source("sqs-b")])) as b,
        ):
            ports = [a.port, b.port]
            deadline = asyncio.get_running_loop().time() + 120
            while sum([objects_by_outcome(await ascrape(p)).get("ok", 0) for p in ports]) < 14:
                assert asyncio.get_running_loop().time() < deadline, "timed out"
                await asyncio.sleep(0.5)
            scrapes = [await more_polls(p, 2) for p in ports]
            assert summed_totals(scrapes) == truth.totals  # nothing counted twice
            extended = sum(s.extended for svc in (a, b) for s in svc.sources)  # type: ignore[attr-defined]
            assert extended > 0


async def test_a_wrong_bucket_or_endpoint_shows_in_one_line_within_seconds(
    aws: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a minute of silent retries: each source's first call is tried once, its failure logged in one line
    naming the source, the call and the AWS error, and /readyz says why (the source keeps retrying meanwhile)."""
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sources = [
        s3_source(aws, "no-such-bucket", name="wrong-bucket"),
        s3_source(closed, "flow-logs", name="wrong-endpoint"),
    ]
    sources = [{**s, "poll_interval_seconds": 60} for s in sources]
    started = asyncio.get_running_loop().time()
    async with running(service_config(tmp_path, sources)) as service:
        elapsed = asyncio.get_running_loop().time() - started
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        lines = {name: [m for m in errors if m.startswith(f"source {name}: ")] for name in ("wrong-bucket", "wrong-endpoint")}
        assert len(lines["wrong-bucket"]) == 1
        assert "ListObjectsV2 failed" in lines["wrong-bucket"][0]
        assert "NoSuchBucket" in lines["wrong-bucket"][0]
        assert len(lines["wrong-endpoint"]) == 1
        assert "ListObjectsV2 failed" in lines["wrong-endpoint"][0]
        assert "Could not connect" in lines["wrong-endpoint"][0]
        assert elapsed < 20  # seconds, where retries alone take about a minute
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{service.port}/readyz") as resp:
            assert resp.status == 503
            body = await resp.text()
        assert "not ready: wrong-bucket: ListObjectsV2 failed: NoSuchBucket" in body
        assert "not ready: wrong-endpoint: ListObjectsV2 failed: EndpointConnectionError" in body
