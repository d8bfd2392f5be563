"""streamer.yaml from a stack's outputs: every DeliveryPath's outputs make a config that validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from streamer.config import parse_config
from streamer.stack import StackError, outputs_from_json, render

FORMAT = "${version} ${interface-id} ${srcaddr} ${dstaddr} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}"
COMMON = {"Region": "eu-west-1", "LogFormat": FORMAT}
OUTPUTS = {
    "s3_sqs": {**COMMON, "SourceType": "s3_sqs", "QueueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/q"},
    "kinesis": {**COMMON, "SourceType": "kinesis", "StreamName": "flows", "StreamerRoleArn": "arn:aws:iam::1:role/r"},
    "firehose_http": {**COMMON, "SourceType": "firehose_http", "FirehosePath": "/firehose"},
}


@pytest.mark.parametrize("kind", sorted(OUTPUTS))
def test_each_source_type_renders_a_valid_config(kind: str, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("secret-key-value")
    text = render(OUTPUTS[kind], str(key))
    config = parse_config(yaml.safe_load(text), {})
    (source,) = config.sources
    assert source.type == kind
    if kind == "s3_sqs":
        assert (source.queue_url, source.region, source.log_format) == (OUTPUTS[kind]["QueueUrl"], "eu-west-1", None)
    if kind == "kinesis":
        assert (source.stream_name, source.region, source.log_format) == ("flows", "eu-west-1", FORMAT)
        assert "# run streamer as arn:aws:iam::1:role/r" in text
    if kind == "firehose_http":
        assert (source.path, source.access_key_file, source.log_format) == ("/firehose", key, FORMAT)
        assert "secret-key-value" not in text


def test_outputs_read_from_describe_stacks_a_list_or_a_mapping() -> None:
    listed = [{"OutputKey": k, "OutputValue": v} for k, v in OUTPUTS["kinesis"].items()]
    assert outputs_from_json(json.dumps({"Stacks": [{"StackName": "s", "Outputs": listed}]})) == OUTPUTS["kinesis"]
    assert outputs_from_json(json.dumps(listed)) == OUTPUTS["kinesis"]
    assert outputs_from_json(json.dumps(OUTPUTS["kinesis"])) == OUTPUTS["kinesis"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[1]", "OutputKey, OutputValue"),
        ('{"a": 1}', "expected describe-stacks output"),
    ],
)
def test_unreadable_outputs_are_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(StackError, match=message):
        outputs_from_json(text)


def test_an_unknown_source_type_or_missing_output_is_named() -> None:
    with pytest.raises(StackError, match="SourceType 's3' is not"):
        render({**COMMON, "SourceType": "s3"})
    with pytest.raises(StackError, match="stack output StreamName is missing"):
        render({**COMMON, "SourceType": "kinesis"})
