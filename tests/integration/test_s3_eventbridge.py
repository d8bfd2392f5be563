"""S3 -> EventBridge rule -> SQS against moto: moto's S3 sends real EventBridge events to the rule's queue."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from tests.integration.conftest import (
    Truth,
    aws_key,
    boto,
    exported_totals,
    flow_object,
    more_polls,
    objects_by_outcome,
    running,
    service_config,
    wait_metrics,
)

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
EPOCH = int(NOW.timestamp()) - 1200


def eventbridge_to_queue(endpoint: str, bucket: str) -> str:
    """A bucket with EventBridge notifications on, and a rule sending its Object Created events to a queue."""
    s3, sqs, events = boto("s3", endpoint), boto("sqs", endpoint), boto("events", endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}})
    url = sqs.create_queue(QueueName="flow-log-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {"source": ["aws.s3"], "detail-type": ["Object Created"], "detail": {"bucket": {"name": [bucket]}}}
    events.put_rule(Name="flow-log-objects", EventPattern=json.dumps(pattern))
    events.put_targets(Rule="flow-log-objects", Targets=[{"Id": "queue", "Arn": arn}])
    return str(url)


async def test_objects_announced_through_eventbridge_are_counted_once(aws: str, tmp_path: Path) -> None:
    url = eventbridge_to_queue(aws, "flow-logs")
    s3, sqs = boto("s3", aws), boto("sqs", aws)
    truth = Truth()
    for i in range(3):
        s3.put_object(Bucket="flow-logs", Key=aws_key(NOW, "hourly", n=i), Body=flow_object(truth, 500, i, EPOCH))
    body = json.loads(sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)["Messages"][0]["Body"])
    assert (body["detail-type"], body["source"]) == ("Object Created", "aws.s3")  # moto delivered the real shape
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({**body, "detail-type": "Object Deleted"}))  # not ours
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))  # a duplicate delivery: counted once

    source = {"type": "s3_sqs", "queue_url": url, "endpoint_url": aws, "wait_time_seconds": 1}
    async with running(service_config(tmp_path, [source])) as service:
        await wait_metrics(service.port, lambda m: sum(objects_by_outcome(m).values()) >= 4, what="4 objects")
        metrics = await more_polls(service.port, 2)
        assert objects_by_outcome(metrics) == {"ok": 3, "duplicate": 1}
        assert exported_totals(metrics) == truth.totals
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
