"""deploy/aws/streamer.yaml: it lints clean, its IAM statements are deploy/iam's and what the code calls,
it deploys into moto's CloudFormation for each DeliveryPath, and streamer configured from the stack's
outputs (`streamer config-from-stack`) counts what arrives through what the stack created."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamer.config import load_config
from tests.integration.conftest import (
    Truth,
    aws_key,
    boto,
    exported_totals,
    flow_object,
    more_polls,
    objects_by_outcome,
    running,
    wait_metrics,
)
from tests.integration.test_deploy import DEPLOY, actions_called, granted_actions

pytestmark = pytest.mark.integration

TEMPLATE = DEPLOY / "aws" / "streamer.yaml"
PATHS = ["s3-sqs", "s3-eventbridge-sqs", "cloudwatch-kinesis", "cloudwatch-firehose"]

#: Resource types of the template that moto 5.2.5's CloudFormation does not create (it skips them with a
#: warning); the deploy test checks this list against moto's own, so it fails when moto learns one.
MOTO_LACKS = {
    "AWS::S3::BucketPolicy",
    "AWS::SQS::QueuePolicy",
    "AWS::Logs::SubscriptionFilter",
    "AWS::KinesisFirehose::DeliveryStream",
}

#: What each DeliveryPath creates (logical ids).
TO_S3 = {"FlowLogBucket", "FlowLogBucketPolicy", "FlowLogToS3", "DeadLetterQueue", "Queue", "QueuePolicy"}
TO_LOGS = {"LogGroup", "FlowLogRole", "FlowLogToLogs", "SubscriptionRole", "SubscriptionFilter"}
AS_ROLE = {"StreamerRole", "StreamerPolicy"}
CREATES = {
    "s3-sqs": TO_S3 | AS_ROLE,
    "s3-eventbridge-sqs": TO_S3 | AS_ROLE | {"ObjectCreatedRule"},
    "cloudwatch-kinesis": TO_LOGS | AS_ROLE | {"Stream"},
    "cloudwatch-firehose": TO_LOGS | {"FailedDeliveriesBucket", "FirehoseRole", "DeliveryStream"},
}

NOW = dt.datetime.now(dt.UTC)
EPOCH = int(NOW.timestamp()) - 1200


def template() -> dict[str, Any]:
    """The template in long form (cfn-lint's reader knows the short-form tags)."""
    from cfnlint.decode import decode

    doc, problems = decode(str(TEMPLATE))
    assert not problems, problems
    return dict(json.loads(json.dumps(doc)))


# --- static checks ------------------------------------------------------------------------------


def test_cfn_lint_passes() -> None:
    from cfnlint.api import lint_file

    assert [str(m) for m in lint_file(TEMPLATE)] == []


def test_cfn_lint_would_catch_a_broken_template(tmp_path: Path) -> None:
    """The check above is live: a template that references a missing resource fails it."""
    from cfnlint.api import lint_file

    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("!GetAtt DeadLetterQueue.Arn", "!GetAtt NoSuchQueue.Arn"))
    assert lint_file(broken)


def branches(node: Any) -> list[Any]:
    """Every value a node can take: both sides of each Fn::If."""
    if isinstance(node, dict) and "Fn::If" in node:
        return [*branches(node["Fn::If"][1]), *branches(node["Fn::If"][2])]
    return [node]


def statements(node: Any) -> Iterator[dict[str, Any]]:
    """Every IAM statement anywhere in the template, under any condition."""
    if isinstance(node, dict):
        if "Statement" in node and "Version" in node:
            for value in branches(node["Statement"]):
                for item in value if isinstance(value, list) else [value]:
                    yield from (s for s in branches(item) if isinstance(s, dict))
        else:
            for value in node.values():
                yield from statements(value)
    elif isinstance(node, list):
        for value in node:
            yield from statements(value)


def actions(statement: dict[str, Any]) -> set[str]:
    return granted_actions({"Statement": [statement]})


def condition_keys(statement: dict[str, Any]) -> set[tuple[str, str]]:
    return {(op, key) for op, tests in statement.get("Condition", {}).items() for key in tests}


def deploy_iam_statements() -> dict[str, list[dict[str, Any]]]:
    by_sid: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((DEPLOY / "iam").glob("*.json")):
        for statement in json.loads(path.read_text())["Statement"]:
            by_sid.setdefault(statement["Sid"], []).append(statement)
    return by_sid


def test_every_iam_statement_in_the_template_is_one_of_deploy_iam() -> None:
    """Same Sid, effect, principal, actions and condition keys: the template and deploy/iam cannot drift apart."""
    found = list(statements(template()["Resources"]))
    assert len(found) >= 14
    documented = deploy_iam_statements()
    for statement in found:
        sid = statement.get("Sid")
        assert sid in documented, f"{sid}: not in deploy/iam/*.json"
        for doc in documented[sid]:
            assert actions(statement) == actions(doc), sid
            assert statement["Effect"] == doc["Effect"], sid
            assert condition_keys(statement) == condition_keys(doc), sid  # no guard dropped on either side
            assert statement.get("Principal") == doc.get("Principal") or (
                set(statement["Principal"]) == set(doc["Principal"]) == {"AWS"}  # the streamer role: a parameter
            ), sid


@pytest.mark.parametrize(("branch", "module", "policy"), [(0, "s3_sqs.py", "s3_sqs.json"), (1, "kinesis.py", "kinesis.json")])
def test_the_streamer_policy_grants_exactly_what_its_source_calls(branch: int, module: str, policy: str) -> None:
    streamer_policy = template()["Resources"]["StreamerPolicy"]["Properties"]
    granted = branches(streamer_policy["PolicyDocument"]["Statement"])[branch]
    assert {a for s in granted for a in actions(s)} == actions_called(module)
    doc = json.loads((DEPLOY / "iam" / policy).read_text())
    assert [s["Sid"] for s in granted] == [s["Sid"] for s in doc["Statement"]]


def test_firehose_path_creates_no_streamer_role_user_or_policy() -> None:
    """firehose_http makes no AWS call (tests/integration/test_deploy.py): its path needs no identity."""
    doc = template()
    assert doc["Resources"]["StreamerPolicy"]["Condition"] == "StreamerCallsAws"
    assert doc["Conditions"]["StreamerRoleNeeded"]["Fn::And"][0] == {"Condition": "StreamerCallsAws"}
    assert doc["Conditions"]["StreamerUserNeeded"]["Fn::And"][0] == {"Condition": "StreamerCallsAws"}
    assert doc["Conditions"]["StreamerCallsAws"] == {"Fn::Or": [{"Condition": "ToS3"}, {"Condition": "IsKinesis"}]}
    assert doc["Conditions"]["ToS3"] == {"Fn::Or": [{"Condition": "IsS3Sqs"}, {"Condition": "IsS3EventBridge"}]}


# --- deploying into moto ------------------------------------------------------------------------


def for_moto(doc: dict[str, Any]) -> dict[str, Any]:
    """The template without the resources moto cannot create; references to them become placeholders."""
    dropped = {name for name, r in doc["Resources"].items() if r["Type"] in MOTO_LACKS}

    def swap(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("Ref") in dropped:
                return f"not-in-moto-{node['Ref']}"
            if "Fn::GetAtt" in node and node["Fn::GetAtt"][0] in dropped:
                return f"arn:aws:not-in-moto:us-east-1:123456789012:{node['Fn::GetAtt'][0]}"
            return {k: swap(v) for k, v in node.items() if not (k == "DependsOn" and v in dropped)}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    out = swap(doc)
    out["Resources"] = {name: r for name, r in out["Resources"].items() if name not in dropped}
    return dict(out)


def deploy(aws: str, path: str, name: str, **params: str) -> dict[str, str]:
    """Create the stack in moto; returns its outputs."""
    vpc = boto("ec2", aws).create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    values = {"DeliveryPath": path, "VpcId": vpc, **params}
    if path == "cloudwatch-firehose":
        values.setdefault("FirehoseEndpointHost", "streamer.example.com")
        values.setdefault("FirehoseAccessKey", "k" * 32)
    cfn = boto("cloudformation", aws)
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(for_moto(template())),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    (stack,) = cfn.describe_stacks(StackName=name)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def created(aws: str, name: str) -> dict[str, str]:
    """Logical id -> physical id of what the stack created."""
    summaries = boto("cloudformation", aws).list_stack_resources(StackName=name)["StackResourceSummaries"]
    return {s["LogicalResourceId"]: s["PhysicalResourceId"] for s in summaries if s.get("LogicalResourceId")}


def streamer(*args: str, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(environ or {})}
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def config_from_stack(aws: str, name: str, tmp_path: Path) -> Path:
    """`streamer config-from-stack` against moto's CloudFormation; the config it prints passes check-config."""
    key_file = tmp_path / "firehose-access-key"
    key_file.write_text("k" * 32)
    proc = streamer(
        "config-from-stack", "--stack", name, "--region", "us-east-1", "--endpoint-url", aws, "--access-key-file", str(key_file)
    )
    assert proc.returncode == 0, proc.stderr
    config = tmp_path / "streamer.yaml"
    config.write_text(proc.stdout)
    checked = streamer("check-config", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    return config


def test_moto_lacks_exactly_the_resource_types_named_here() -> None:
    from moto.cloudformation.parsing import get_model_map

    types = {r["Type"] for r in template()["Resources"].values()}
    assert types - set(get_model_map()) == MOTO_LACKS


@pytest.mark.parametrize("path", PATHS)
def test_the_template_deploys_into_moto_for_each_delivery_path(aws: str, tmp_path: Path, path: str) -> None:
    name = "streamer-" + path
    outputs = deploy(aws, path, name)
    doc = template()
    lacking = {n for n, r in doc["Resources"].items() if r["Type"] in MOTO_LACKS}
    assert set(created(aws, name)) == CREATES[path] - lacking

    (flow_log,) = boto("ec2", aws).describe_flow_logs()["FlowLogs"]
    assert flow_log["LogFormat"] == doc["Parameters"]["LogFormat"]["Default"] == outputs["LogFormat"]
    assert flow_log["TrafficType"] == "ALL"
    assert flow_log["LogDestinationType"] == ("s3" if path.startswith("s3") else "cloud-watch-logs")
    if path.startswith("s3"):
        assert flow_log["LogDestination"] == f"arn:aws:s3:::{outputs['BucketName']}"
        sqs = boto("sqs", aws)
        attrs = sqs.get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["RedrivePolicy"])["Attributes"]
        dlq = sqs.get_queue_attributes(QueueUrl=outputs["DeadLetterQueueUrl"], AttributeNames=["QueueArn"])["Attributes"]
        assert json.loads(attrs["RedrivePolicy"])["deadLetterTargetArn"] == dlq["QueueArn"]
    if path == "s3-eventbridge-sqs":
        (target,) = boto("events", aws).list_targets_by_rule(Rule=f"{name}-flow-log-objects")["Targets"]
        assert target["Arn"].endswith(":" + outputs["QueueUrl"].rsplit("/", 1)[1])
    if path == "cloudwatch-kinesis":
        assert boto("kinesis", aws).describe_stream_summary(StreamName=outputs["StreamName"])
    if path != "cloudwatch-firehose":
        role = outputs["StreamerRoleArn"].rsplit("/", 1)[1]
        (attached,) = boto("iam", aws).list_attached_role_policies(RoleName=role)["AttachedPolicies"]
        assert granted_actions(policy_document(aws, attached["PolicyArn"])) == actions_called(
            "kinesis.py" if "kinesis" in path else "s3_sqs.py"
        )
        assert "StreamerUserName" not in outputs
        trust = boto("iam", aws).get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
        assert trust["Statement"][0]["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}  # no StreamerPrincipalArn
    else:
        assert "StreamerRoleArn" not in outputs

    config = load_config(config_from_stack(aws, name, tmp_path), {})
    (source,) = config.sources
    assert source.type == outputs["SourceType"]


def policy_document(aws: str, arn: str) -> dict[str, Any]:
    iam = boto("iam", aws)
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    return dict(json.loads(document) if isinstance(document, str) else document)


def test_streamer_runs_as_a_user_when_asked(aws: str, tmp_path: Path) -> None:
    """StreamerRunsAs=user: an IAM user with the same policy, and no role."""
    outputs = deploy(aws, "s3-sqs", "as-user", StreamerRunsAs="user")
    assert "StreamerRoleArn" not in outputs
    user = outputs["StreamerUserName"]
    (attached,) = boto("iam", aws).list_attached_user_policies(UserName=user)["AttachedPolicies"]
    assert granted_actions(policy_document(aws, attached["PolicyArn"])) == actions_called("s3_sqs.py")
    assert "StreamerRole" not in created(aws, "as-user")
    text = config_from_stack(aws, "as-user", tmp_path).read_text()
    assert f"# run streamer as IAM user {user} (create its access key: aws iam create-access-key --user-name {user})" in text


def test_the_role_trusts_the_principal_given(aws: str) -> None:
    principal = "arn:aws:iam::123456789012:role/eks-streamer-pods"
    outputs = deploy(aws, "cloudwatch-kinesis", "trusting", StreamerPrincipalArn=principal)
    role = boto("iam", aws).get_role(RoleName=outputs["StreamerRoleArn"].rsplit("/", 1)[1])["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"AWS": principal}


def test_config_from_an_outputs_file_is_the_same_as_from_the_stack(aws: str, tmp_path: Path) -> None:
    deploy(aws, "cloudwatch-kinesis", "kin")
    from_stack = config_from_stack(aws, "kin", tmp_path).read_text()
    described = tmp_path / "outputs.json"
    described.write_text(json.dumps(boto("cloudformation", aws).describe_stacks(StackName="kin"), default=str))
    key_file = str(tmp_path / "firehose-access-key")
    proc = streamer("config-from-stack", "--outputs", str(described), "--access-key-file", key_file)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == from_stack


def test_config_from_stack_names_what_is_wrong_in_one_line(aws: str, tmp_path: Path) -> None:
    missing = streamer("config-from-stack", "--stack", "no-such-stack", "--region", "us-east-1", "--endpoint-url", aws)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
    assert "no-such-stack" in missing.stderr
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"SourceType": "s3_sqs", "Region": "us-east-1"}))
    incomplete = streamer("config-from-stack", "--outputs", str(outputs))
    assert incomplete.returncode == 2
    assert incomplete.stderr == "streamer: error: stack output QueueUrl is missing (is this a deploy/aws/streamer.yaml stack?)\n"


# --- end to end: streamer configured from the stack ----------------------------------------------


def notification_from_template(queue_arn: str) -> dict[str, Any]:
    """The bucket's NotificationConfiguration as the template writes it, in the S3 API's shape
    (moto's CloudFormation creates the bucket but ignores this property, so the test applies it)."""
    bucket = template()["Resources"]["FlowLogBucket"]["Properties"]
    direct, _eventbridge = branches(bucket["NotificationConfiguration"])
    (queue,) = direct["QueueConfigurations"]
    assert queue["Queue"] == {"Fn::GetAtt": ["Queue", "Arn"]}
    rules = [{"Name": r["Name"], "Value": r["Value"]} for r in queue["Filter"]["S3Key"]["Rules"]]
    return {
        "QueueConfigurations": [{"QueueArn": queue_arn, "Events": [queue["Event"]], "Filter": {"Key": {"FilterRules": rules}}}]
    }


def overrides(tmp_path: Path, **source: str) -> dict[str, str]:
    """What differs from AWS in a test (moto's endpoint, a temporary checkpoint, any free port), as the
    environment variables a container would set."""
    return {
        "STREAMER__CHECKPOINT__PATH": str(tmp_path / "state.db"),
        "STREAMER__HTTP__LISTEN_ADDRESS": "127.0.0.1:0",
        **{f"STREAMER__SOURCES__0__{k.upper()}": v for k, v in source.items()},
    }


@pytest.mark.parametrize("path", ["s3-sqs", "s3-eventbridge-sqs"])
async def test_streamer_from_the_stack_counts_objects_in_its_bucket(aws: str, tmp_path: Path, path: str) -> None:
    """s3-sqs on a new bucket; s3-eventbridge-sqs on an existing bucket whose EventBridge notifications are
    turned on by hand (the docs' command): moto's S3 sends the event, the stack's rule routes it."""
    s3, sqs = boto("s3", aws), boto("sqs", aws)
    params = {}
    if path == "s3-eventbridge-sqs":
        s3.create_bucket(Bucket="existing-flow-logs")
        params["ExistingBucketName"] = "existing-flow-logs"
    outputs = deploy(aws, path, "flows", **params)
    bucket = outputs["BucketName"]
    assert "QueueConfigurations" not in s3.get_bucket_notification_configuration(Bucket=bucket)  # moto ignored it
    if path == "s3-sqs":
        arn = sqs.get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=notification_from_template(arn))
    else:
        assert bucket == "existing-flow-logs"
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=docs_eventbridge_configuration())
    truth = Truth()
    for i in range(2):
        s3.put_object(Bucket=bucket, Key=aws_key(NOW, "hourly", n=i), Body=flow_object(truth, 400, i, EPOCH))
    s3.put_object(Bucket=bucket, Key="elsewhere/not-a-flow-log.txt", Body=b"outside AWSLogs/: never announced")

    config = load_config(config_from_stack(aws, "flows", tmp_path), overrides(tmp_path, endpoint_url=aws, wait_time_seconds="1"))
    async with running(config) as service:
        await wait_metrics(service.port, lambda m: objects_by_outcome(m).get("ok", 0) >= 2, what="2 objects")
        metrics = await more_polls(service.port, 2)
        assert objects_by_outcome(metrics) == {"ok": 2}
        assert exported_totals(metrics) == truth.totals


async def test_streamer_from_the_stack_counts_what_the_subscription_filter_sends(aws: str, tmp_path: Path) -> None:
    """cloudwatch-kinesis: the subscription filter (which moto's CloudFormation skips) is applied from the
    template's own properties; moto delivers the log group's events to the stack's stream."""
    from tests.integration.test_cloudwatch_sources import records_for

    outputs = deploy(aws, "cloudwatch-kinesis", "flows")
    ids = created(aws, "flows")
    group = ids["LogGroup"]
    spec = template()["Resources"]["SubscriptionFilter"]["Properties"]
    kinesis, logs = boto("kinesis", aws), boto("logs", aws)
    stream_arn = kinesis.describe_stream_summary(StreamName=outputs["StreamName"])["StreamDescriptionSummary"]["StreamARN"]
    assert spec["DestinationArn"]["Fn::If"][1] == {"Fn::GetAtt": ["Stream", "Arn"]}
    role = boto("iam", aws).get_role(RoleName=ids["SubscriptionRole"])["Role"]["Arn"]
    logs.put_subscription_filter(
        logGroupName=group, filterName="streamer", filterPattern=spec["FilterPattern"], destinationArn=stream_arn, roleArn=role
    )
    logs.create_log_stream(logGroupName=group, logStreamName="eni-a-all")
    truth = Truth()
    now_ms = int(time.time() * 1000)
    lines = records_for(truth, 300, 1)
    logs.put_log_events(
        logGroupName=group,
        logStreamName="eni-a-all",
        logEvents=[{"timestamp": now_ms + i, "message": m} for i, m in enumerate(lines)],
    )

    config = load_config(
        config_from_stack(aws, "flows", tmp_path), overrides(tmp_path, endpoint_url=aws, poll_interval_seconds="0.2")
    )
    assert config.sources[0].log_format == outputs["LogFormat"]
    async with running(config) as service:
        await wait_metrics(service.port, lambda m: exported_totals(m) == truth.totals, what="300 records")


# --- the docs' "The AWS side in one stack" (docs/sources/cloudformation.md) -----------------------------


def stack_page() -> str:
    return (DEPLOY.parent / "docs" / "sources" / "cloudformation.md").read_text()


def shell_commands(section: str) -> list[list[str]]:
    """The section's sh blocks, one argv per command (continuation lines joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(shlex.split(line.split(" > ")[0].split("    #")[0]))
    return commands


def test_docs_deploys_every_delivery_path_with_parameters_the_template_has() -> None:
    doc = template()
    deploys = [c for c in shell_commands(stack_page()) if c[:3] == ["aws", "cloudformation", "deploy"]]
    paths = []
    for argv in deploys:
        assert argv[argv.index("--template-file") + 1] == "deploy/aws/streamer.yaml"
        assert (DEPLOY.parent / "deploy" / "aws" / "streamer.yaml").is_file()
        assert argv[argv.index("--capabilities") + 1] == "CAPABILITY_IAM"  # roles without fixed names
        overrides = dict(a.split("=", 1) for a in argv[argv.index("--parameter-overrides") + 1 :])
        assert set(overrides) <= set(doc["Parameters"])
        assert "VpcId" in overrides
        paths.append(overrides["DeliveryPath"])
    assert paths == PATHS == doc["Parameters"]["DeliveryPath"]["AllowedValues"]


def test_docs_config_commands_parse_and_name_every_other_parameter() -> None:
    from streamer.cli import build_parser
    from streamer.stack import ACCESS_KEY_FILE

    section = stack_page()
    commands = [c for c in shell_commands(section) if c[0] == "streamer"]
    assert [c[1] for c in commands] == ["config-from-stack", "check-config"]
    for argv in commands:
        build_parser().parse_args(argv[1:])
    assert build_parser().parse_args(["config-from-stack", "--stack", "s"]).access_key_file == ACCESS_KEY_FILE
    assert f"(default\n`{ACCESS_KEY_FILE}`)" in section
    in_commands = {"DeliveryPath", "VpcId", "ExistingBucketName", "FirehoseEndpointHost", "FirehoseAccessKey"}
    others = section[section.index("Other parameters:") : section.index("CloudFormation cannot")]
    assert set(re.findall(r"`(\w+)`", others)) == set(template()["Parameters"]) - in_commands


def docs_eventbridge_configuration() -> dict[str, Any]:
    """The JSON of the docs' put-bucket-notification-configuration command."""
    (command,) = re.findall(r"`(aws s3api put-bucket-notification-configuration [^`]+)`", stack_page())
    argv = shlex.split(command)
    return dict(json.loads(argv[argv.index("--notification-configuration") + 1]))


def test_a_firehose_config_without_its_key_file_fails_check_config_naming_it(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps({"SourceType": "firehose_http", "Region": "us-east-1", "LogFormat": "${version}", "FirehosePath": "/"})
    )
    proc = streamer("config-from-stack", "--outputs", str(outputs), "--access-key-file", str(tmp_path / "missing"))
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "streamer.yaml").write_text(proc.stdout)
    checked = streamer("check-config", "--config", str(tmp_path / "streamer.yaml"))
    assert checked.returncode == 2
    assert "sources.0: access_key_file" in checked.stderr


async def test_streamer_from_the_stack_counts_what_firehose_would_post(aws: str, tmp_path: Path) -> None:
    """cloudwatch-firehose: moto creates no delivery stream (and its HTTP destination sends no access key),
    so the test posts what the stack's stream would: a subscription payload, to the stack's path and key."""
    import aiohttp

    from streamer.sources.firehose_http import FirehoseHttpSource
    from tests.integration.test_firehose import LOG_FORMAT, firehose_request, flow_lines, payload, post

    outputs = deploy(aws, "cloudwatch-firehose", "flows", LogFormat=LOG_FORMAT, FirehoseEndpointPath="/firehose")
    config = load_config(config_from_stack(aws, "flows", tmp_path), overrides(tmp_path, listen_address="127.0.0.1:0"))
    assert config.sources[0].log_format == outputs["LogFormat"] == LOG_FORMAT
    truth = Truth()
    body = firehose_request("req-1", [gzip.compress(payload(flow_lines(truth, 120, 1)))])
    async with running(config) as service:
        (source,) = service.sources  # type: ignore[attr-defined]
        assert isinstance(source, FirehoseHttpSource)
        deadline = time.monotonic() + 30
        while source.port is None:
            assert time.monotonic() < deadline, "the Firehose source never listened"
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{source.port}{outputs['FirehosePath']}"
            assert (await post(http, url, body, key="k" * 32))[0] == 200
        await wait_metrics(service.port, lambda m: exported_totals(m) == truth.totals, what="120 records")
