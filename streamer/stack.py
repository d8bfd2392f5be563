"""A streamer.yaml from the outputs of a deploy/aws/streamer.yaml stack.

The template's outputs name what a source needs (SourceType, Region,
QueueUrl, StreamName, FirehosePath, LogFormat), so nobody copies an ARN or
a queue URL by hand. They come from CloudFormation DescribeStacks, or from a
JSON file: `aws cloudformation describe-stacks` output as it is, its
`Stacks[0].Outputs` list, or a plain `{"OutputKey": "value"}` object.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from streamer.aws import AwsClients

#: where the firehose_http source reads the key the stack's FirehoseAccessKey parameter set
ACCESS_KEY_FILE = "/etc/streamer/firehose-access-key"


class StackError(ValueError):
    """The outputs are not a streamer stack's; the message is one line."""


def outputs_from_json(text: str) -> dict[str, str]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StackError(f"not JSON: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("Stacks"), list) and doc["Stacks"]:
        doc = doc["Stacks"][0].get("Outputs", [])
    if isinstance(doc, list):
        try:
            return {str(o["OutputKey"]): str(o["OutputValue"]) for o in doc}
        except (KeyError, TypeError):
            raise StackError("a list of outputs holds {OutputKey, OutputValue} objects") from None
    if isinstance(doc, dict) and all(isinstance(v, str) for v in doc.values()):
        return {str(k): v for k, v in doc.items()}
    raise StackError("expected describe-stacks output, a list of outputs, or an {OutputKey: value} object")


async def outputs_from_stack(clients: AwsClients, stack: str, region: str, endpoint_url: str | None = None) -> dict[str, str]:
    """One DescribeStacks call (cloudformation:DescribeStacks on the stack)."""
    cfn = await clients.cloudformation(region, endpoint_url)
    resp = await cfn.describe_stacks(StackName=stack)
    (found,) = resp["Stacks"]
    status = found["StackStatus"]
    if status not in ("CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE"):
        raise StackError(f"stack {stack} is {status}: its outputs are not ready")
    return {o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", []) if "OutputKey" in o and "OutputValue" in o}


def _need(outputs: dict[str, str], key: str) -> str:
    value = outputs.get(key)
    if not value:
        raise StackError(f"stack output {key} is missing (is this a deploy/aws/streamer.yaml stack?)")
    return value


def source_from_outputs(outputs: dict[str, str], access_key_file: str = ACCESS_KEY_FILE) -> dict[str, Any]:
    """The `sources:` entry for the stack's DeliveryPath."""
    kind = _need(outputs, "SourceType")
    if kind == "s3_sqs":  # S3 text objects carry a header line: no log_format needed
        queue_url = _need(outputs, "QueueUrl")
        return {"type": "s3_sqs", "name": "flow-logs", "queue_url": queue_url, "region": _need(outputs, "Region")}
    if kind == "kinesis":
        return {
            "type": "kinesis",
            "name": "flow-logs",
            "stream_name": _need(outputs, "StreamName"),
            "region": _need(outputs, "Region"),
            "log_format": _need(outputs, "LogFormat"),
        }
    if kind == "firehose_http":
        return {
            "type": "firehose_http",
            "name": "flow-logs",
            "listen_address": "0.0.0.0:9109",
            "path": _need(outputs, "FirehosePath"),
            "access_key_file": access_key_file,
            "log_format": _need(outputs, "LogFormat"),
        }
    raise StackError(f"stack output SourceType {kind!r} is not s3_sqs, kinesis or firehose_http")


def render(outputs: dict[str, str], access_key_file: str = ACCESS_KEY_FILE) -> str:
    """A complete streamer.yaml; its comments say what the stack expects of the host running it."""
    source = source_from_outputs(outputs, access_key_file)
    doc = {
        "http": {"listen_address": "0.0.0.0:9108"},
        "checkpoint": {"path": "/var/lib/streamer/state.db"},
        "sources": [source],
    }
    notes = ["# streamer.yaml from the stack's outputs (streamer config-from-stack)"]
    if role := outputs.get("StreamerRoleArn"):
        notes.append(f"# run streamer as {role} (only the calls its source makes)")
    if user := outputs.get("StreamerUserName"):
        notes.append(f"# run streamer as IAM user {user} (create its access key: aws iam create-access-key --user-name {user})")
    if source["type"] == "firehose_http":
        notes.append(f"# put the stack's FirehoseAccessKey in {access_key_file}; serve {outputs['FirehosePath']} over HTTPS")
    return "\n".join(notes) + "\n" + yaml.safe_dump(doc, sort_keys=False, width=1000)
