"""What an SQS message names: S3 notifications direct, SNS-wrapped, or as EventBridge events."""

from __future__ import annotations

import json

import pytest

from streamer.sources.s3_sqs import BadMessage, objects_in_message

KEY = "AWSLogs/123456789012/vpcflowlogs/us-east-1/2026/12/02/07/123456789012_vpcflowlogs_us-east-1_fl-1_20261202T0700Z_ab.log.gz"


def eventbridge(detail_type: str = "Object Created", **object_fields: object) -> dict[str, object]:
    """The shape AWS documents for S3 events delivered by an EventBridge rule to SQS."""
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": detail_type,
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-12-02T07:05:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:s3:::flow-logs"],
        "detail": {
            "version": "0",
            "bucket": {"name": "flow-logs"},
            "object": {"key": KEY, "size": 5120, "etag": "b1946ac92492d2347c6235b4d2611184", **object_fields},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "reason": "PutObject",
        },
    }


def test_an_eventbridge_object_created_event_names_its_object() -> None:
    (obj,) = objects_in_message(json.dumps(eventbridge()))
    assert (obj.bucket, obj.key, obj.etag, obj.size) == ("flow-logs", KEY, "b1946ac92492d2347c6235b4d2611184", 5120)
    assert obj.last_modified == 1796195100.0  # 2026-12-02T07:05:00Z


def test_eventbridge_etag_spelled_as_moto_spells_it_is_read_too() -> None:
    doc = eventbridge()
    doc["detail"]["object"] = {"key": KEY, "size": 1, "eTag": "abc"}  # type: ignore[index]
    (obj,) = objects_in_message(json.dumps(doc))
    assert obj.etag == "abc"


def test_other_eventbridge_detail_types_name_nothing() -> None:
    assert objects_in_message(json.dumps(eventbridge("Object Deleted"))) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"source": "aws.ec2"}, "not aws.s3"),
        ({"detail": {"bucket": {"name": "b"}}}, "malformed EventBridge event"),
        ({"detail": {"bucket": {"name": "b"}, "object": {"key": KEY, "size": "big"}}}, "malformed EventBridge event"),
    ],
)
def test_a_malformed_eventbridge_event_is_a_bad_message(change: dict[str, object], reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        objects_in_message(json.dumps({**eventbridge(), **change}))


def test_direct_and_sns_wrapped_notifications_still_read() -> None:
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-12-02T07:05:00Z",
                "s3": {"bucket": {"name": "flow-logs"}, "object": {"key": "a+b%3D.log.gz", "eTag": '"e"', "size": 3}},
            }
        ]
    }
    direct = objects_in_message(json.dumps(event))
    wrapped = objects_in_message(json.dumps({"Type": "Notification", "Message": json.dumps(event)}))
    assert direct == wrapped
    assert [o.key for o in direct] == ["a b=.log.gz"]
