"""Malformed inputs ahead of valid ones never stall a source (a real `streamer run` process against moto).

S3 polling, S3 + SQS notifications, a Kinesis stream and a CloudWatch Logs
group (FilterLogEvents) each get poison inputs first: a CloudWatch Logs payload whose `logEvents` is not a list, a
Parquet file whose `interface_id` is a list, corrupt gzip, an SQS message of
the wrong shape, Kinesis records that are not payloads or carry events of
the wrong type, log events full of NUL bytes. Every valid record behind them counts exactly, within a few
polls; no source is ever restarted; each bad input is counted once and never
retried; the failed objects' SQS messages are deleted.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import signal
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.integration.conftest import Metrics, Truth, aws_key, boto, exported_totals, flow_object, polls, scrape
from tests.integration.test_cloudwatch_sources import records_for
from tests.integration.test_crash_restart import Harness, wait_until

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
EPOCH = int(NOW.timestamp()) - 1200


def parquet_with_a_list_column() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"interface_id": [["eni-x"]], "action": ["REJECT"], "packets": [1], "bytes": [40]}), buf)
    return buf.getvalue()


def put_objects(s3: Any, bucket: str, truth: Truth, seed: int) -> int:
    """Three bad objects first (by time and key, so they are read first), then three good ones; returns good records."""
    bad = [
        gzip.compress(b'{"messageType": "DATA_MESSAGE", "logEvents": 1}'),  # TypeError before: now one invalid_payload
        parquet_with_a_list_column(),  # ArrowNotImplementedError before: now the object fails as unsupported_column
        b"\x1f\x8b" + b"\x00garbage" * 50,  # corrupt_gzip
    ]
    for n, body in enumerate(bad):
        key = aws_key(NOW, "daily", n=n)
        s3.put_object(Bucket=bucket, Key=key.replace(".log.gz", ".log.parquet") if n == 1 else key, Body=body)
    records = 0
    for n in range(3):
        s3.put_object(Bucket=bucket, Key=aws_key(NOW, "daily", n=10 + n), Body=flow_object(truth, 3000, seed + n, EPOCH))
        records += 3000
    return records


def payload(events: Any, **extra: Any) -> bytes:
    doc = {"messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "/vpc", "logStream": "s", "logEvents": events}
    return gzip.compress(json.dumps({**doc, **extra}).encode())


def events(lines: list[str]) -> list[dict[str, Any]]:
    return [{"id": str(i), "timestamp": int(time.time() * 1000), "message": m} for i, m in enumerate(lines)]


def put_kinesis(kinesis: Any, truth: Truth) -> int:
    kinesis.create_stream(StreamName="flowlogs", ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName="flowlogs")
    good = records_for(truth, 2000, 7)
    bad = [
        payload(1),  # logEvents not a list
        payload([], messageType=["DATA_MESSAGE"]),  # messageType not a string
        b"\x00not gzip, not json",
        payload([1, *events(good[:1])]),  # one bad event beside a good one: the good one counts
        payload(events(["\x00" * 300])),  # NUL bytes: one bad line, not a "binary" batch
    ]
    for data in bad:
        kinesis.put_record(StreamName="flowlogs", Data=data, PartitionKey="p")
    for i in range(1, len(good), 250):
        kinesis.put_record(StreamName="flowlogs", Data=payload(events(good[i : i + 250])), PartitionKey="p")
    return len(good)


def put_log_events(logs: Any, truth: Truth) -> int:
    """A log event of NUL bytes ahead of valid ones (once a whole sweep failed as "binary" for it)."""
    logs.create_log_group(logGroupName="/vpc/bad")
    logs.create_log_stream(logGroupName="/vpc/bad", logStreamName="eni-all")
    good = records_for(truth, 500, 9)
    now_ms = int(time.time() * 1000) - 60_000
    messages = ["\x00" * 300, *good]
    logs.put_log_events(
        logGroupName="/vpc/bad",
        logStreamName="eni-all",
        logEvents=[{"timestamp": now_ms + i, "message": m} for i, m in enumerate(messages)],
    )
    return len(good)


def input_records(metrics: Metrics, source: str) -> int:
    return int(metrics.get("streamer_input_records_total", {}).get((("source", source),), 0))


def by_outcome(metrics: Metrics, source: str) -> dict[str, int]:
    return {
        dict(k)["outcome"]: int(v) for k, v in metrics.get("streamer_objects_total", {}).items() if dict(k)["source"] == source
    }


def test_malformed_inputs_ahead_of_valid_ones_never_stall_a_source(aws: str, tmp_path: Path) -> None:
    s3, sqs, kinesis = boto("s3", aws), boto("sqs", aws), boto("kinesis", aws)
    truth = Truth()
    s3.create_bucket(Bucket="polled")
    polled = put_objects(s3, "polled", truth, 100)

    s3.create_bucket(Bucket="notified")
    url = sqs.create_queue(QueueName="flow-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket="notified",
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": [1]}))  # AttributeError before: a poison message
    notified = put_objects(s3, "notified", truth, 200)
    streamed = put_kinesis(kinesis, truth)
    swept = put_log_events(boto("logs", aws), truth)

    h = Harness(tmp_path, {})
    common = {"endpoint_url": aws, "poll_interval_seconds": 0.2}
    sources = [
        {"type": "s3", "name": "poll", "bucket": "polled", **common},
        {"type": "s3_sqs", "name": "sqs", "queue_url": url, "wait_time_seconds": 1, "max_messages": 2, "endpoint_url": aws},
        {"type": "kinesis", "name": "kinesis", "stream_name": "flowlogs", "batch_records": 3, **common},
        {"type": "cloudwatch", "name": "cw", "log_group": "/vpc/bad", **common},
    ]
    doc = yaml.safe_load(h.config.read_text())
    h.config.write_text(yaml.safe_dump({**doc, "sources": sources}))
    proc = h.start()
    try:

        def scraped() -> Metrics:
            try:
                return scrape(h.port)
            except OSError:
                return {}

        def counted(source: str, n: int) -> bool:
            assert proc.poll() is None, h.log.read_text()[-3000:]
            return input_records(scraped(), source) >= n

        wait_until(lambda: counted("poll", polled), 60, "the polled bucket's valid records")
        assert polls(scraped(), "poll") <= 2  # the bad objects ahead cost no extra poll
        wait_until(lambda: counted("sqs", notified), 60, "the notified bucket's valid records")
        wait_until(lambda: counted("kinesis", streamed), 60, "the stream's valid records")
        wait_until(lambda: counted("cw", swept), 60, "the log group's valid records")
        wait_until(lambda: exported_totals(scraped()) == truth.totals, 30, "exact totals")

        before = polls(scraped())
        wait_until(lambda: polls(scraped()) >= before + 6, 60, "6 more polls")  # nothing is retried meanwhile
        metrics = scraped()
        assert exported_totals(metrics) == truth.totals
        assert {s: input_records(metrics, s) for s in ("poll", "sqs", "kinesis", "cw")} == {
            "poll": polled,
            "sqs": notified,
            "kinesis": streamed,
            "cw": swept,
        }
        for source in ("poll", "sqs"):  # each bad object once: the failed ones as failed, the bad payload as ok
            assert by_outcome(metrics, source) == {"ok": 4, "failed": 2}
        errors = {dict(k)["reason"]: int(v) for k, v in metrics["streamer_decode_errors_total"].items()}
        assert errors == {
            "invalid_payload": 2 + 4,  # one per bucket; Kinesis: three bad records and one bad event
            "unsupported_column": 2,
            "corrupt_gzip": 2,
            "invalid_utf8": 2,  # the NUL lines: one in a Kinesis payload, one log event
        }
        source_errors = {tuple(dict(k).values()): int(v) for k, v in metrics.get("streamer_source_errors_total", {}).items()}
        assert source_errors.get(("bad_message", "sqs")) == 1
        assert not [k for k in source_errors if "crashed" in k], source_errors
        attrs = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        assert (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = h.log.read_text()
    assert "restarting" not in log
    assert "Traceback" not in log
    for location in ("s3://polled/", "s3://notified/"):  # one line per failed object, naming it and why
        assert sum(1 for line in log.splitlines() if location in line and "unsupported_column" in line) == 1
        assert sum(1 for line in log.splitlines() if location in line and "corrupt_gzip" in line) == 1


class FailingSink:
    """The pipeline's side of a poll, with a checkpoint that fails for one object (a disk error, a bug)."""

    def __init__(self, failing: str) -> None:
        self.failing = failing
        self.processed: list[str] = []
        self.errors: list[tuple[str, str]] = []

    async def process(self, source: str, delivery: Any) -> str:
        if delivery.location.endswith(self.failing):
            raise RuntimeError("database disk image is malformed")
        async for _ in delivery.body():
            pass
        self.processed.append(delivery.location)
        return "ok"

    async def give_up(self, source: str, delivery: Any, reason: str) -> None:
        raise AssertionError("not used")

    def source_error(self, source: str, reason: str, message: str) -> None:
        self.errors.append((reason, message))

    def polled(self, source: str) -> None:
        pass


async def test_an_object_that_cannot_be_finished_does_not_cancel_the_others_of_its_poll(aws: str) -> None:
    from streamer.aws import AwsClients
    from streamer.sources.s3_poll import S3PollSource, S3SourceConfig

    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="polled")
    keys = [aws_key(NOW, "daily", n=n) for n in range(6)]
    for key in keys:
        s3.put_object(Bucket="polled", Key=key, Body=flow_object(None, 10, 1, EPOCH))
    clients = AwsClients()
    try:
        config = S3SourceConfig(type="s3", bucket="polled", endpoint_url=aws, max_concurrent_objects=2)
        source = S3PollSource("poll", config, await clients.s3("us-east-1", aws), lambda keys: _nothing_done())
        sink = FailingSink(keys[0])
        assert await source.poll_once(sink) == 6
    finally:
        await clients.close()
    assert sorted(sink.processed) == sorted(f"s3://polled/{k}" for k in keys[1:])
    [(reason, message)] = sink.errors
    assert reason == "commit_failed"
    assert keys[0] in message
    assert "database disk image is malformed" in message


async def _nothing_done() -> set[str]:
    return set()


async def test_an_object_whose_commit_keeps_failing_is_never_given_up_unread(aws: str) -> None:
    """The last receive of an SQS message whose object cannot be committed leaves the message to SQS (and its
    dead-letter queue) rather than marking the object done with nothing counted."""
    from streamer.aws import AwsClients
    from streamer.sources.s3_sqs import S3SqsSource, S3SqsSourceConfig

    s3, sqs = boto("s3", aws), boto("sqs", aws)
    s3.create_bucket(Bucket="notified")
    key = aws_key(NOW, "daily", n=0)
    s3.put_object(Bucket="notified", Key=key, Body=flow_object(None, 10, 1, EPOCH))
    url = sqs.create_queue(QueueName="commit-fails")["QueueUrl"]
    s3_part = {"bucket": {"name": "notified"}, "object": {"key": key, "size": 1, "eTag": "e"}}
    event = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": s3_part}]}
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event))
    message = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, MessageSystemAttributeNames=["ApproximateReceiveCount"])
    [msg] = message["Messages"]
    clients = AwsClients()
    try:
        config = S3SqsSourceConfig(type="s3_sqs", queue_url=url, endpoint_url=aws, max_receive_count=1)
        source = S3SqsSource("sqs", config, await clients.sqs("us-east-1", aws), await clients.s3("us-east-1", aws))
        sink = FailingSink(key)  # its give_up fails the test
        await source._handle(sink, msg)  # type: ignore[arg-type]
    finally:
        await clients.close()
    [(reason, _)] = sink.errors
    assert reason == "commit_failed"
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    left = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
    assert sum(int(v) for v in left["Attributes"].values()) == 1  # not deleted
