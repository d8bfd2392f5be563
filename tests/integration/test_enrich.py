"""ENI context from a real EC2 API (moto in server mode, through aiobotocore as in production).

- ENIs of several kinds (an instance's, a NAT gateway's, a Lambda function's, an ECS task's deleted
  mid-run) and their tags reach vpcflow_interface_info and the spike alert's labels and annotations;
- a denied describe and a throttled one (EC2's own error documents, from a proxy in front of moto)
  are counted by reason, back off, and change no count;
- two accounts, each through its own role (STS AssumeRole): moto keeps accounts apart, so only the
  right role sees each ENI; a restart reads the cache back and describes nothing again.
"""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from streamer.schema import DEFAULT_FIELDS, V5_ALL_FIELDS
from streamer.synth import Spike, TrafficProfile, eni_ids, generate_table, spike_table, to_lines
from tests.integration.conftest import (
    Metrics,
    Truth,
    ascrape,
    aws_key,
    boto,
    exported_totals,
    objects_by_outcome,
    running,
    service_config,
    until,
    wait_metrics,
)
from tests.integration.ec2fault import Ec2Fault

pytestmark = pytest.mark.integration

BASE = 1_764_000_000
SPIKE_START = BASE + 40 * 60
ANOMALY = {"window_seconds": 60, "lateness_seconds": 120, "score_threshold": 4, "min_rejected_records": 50, "warmup_windows": 10}


def world(ec2: Any) -> dict[str, str]:
    """An instance, a NAT gateway's, a Lambda function's and an ECS task's ENI, in one subnet; kind -> ENI id."""
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="web", Description="web", VpcId=vpc)["GroupId"]

    def named(name: str) -> list[dict[str, Any]]:
        return [{"ResourceType": "network-interface", "Tags": [{"Key": "Name", "Value": name}]}]

    instance = ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet,
        SecurityGroupIds=[sg],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web-1"}]}],
    )["Instances"][0]
    nat = ec2.create_network_interface(SubnetId=subnet, Description="Interface for NAT Gateway nat-0a1b2c3d4e5f60718")
    lam = ec2.create_network_interface(
        SubnetId=subnet, Groups=[sg], Description="AWS Lambda VPC ENI-orders-fn-2c5f", TagSpecifications=named("orders-fn")
    )
    task = ec2.create_network_interface(
        SubnetId=subnet,
        Groups=[sg],
        Description="arn:aws:ecs:us-east-1:123456789012:attachment/5f1c2d3e",
        TagSpecifications=named("task-1"),
    )
    return {
        "instance": instance["NetworkInterfaces"][0]["NetworkInterfaceId"],
        "instance_id": instance["InstanceId"],
        "sg": sg,
        "subnet": subnet,
        "nat": nat["NetworkInterface"]["NetworkInterfaceId"],
        "lambda": lam["NetworkInterface"]["NetworkInterfaceId"],
        "task": task["NetworkInterface"]["NetworkInterfaceId"],
    }


def flow_objects(
    truth: Truth,
    enis: list[str],
    spike: str | None = None,
    fields: tuple[str, ...] = DEFAULT_FIELDS,
    accounts: list[str] | None = None,
) -> list[bytes]:
    """An hour of traffic on `enis` in six 10-minute objects (a scan on `spike` at minute 40), rows added to `truth`."""
    profile = TrafficProfile(records=24_000, enis=len(enis), span_seconds=3600, start_epoch=BASE, seed=7, fields=fields)
    parts = [generate_table(profile)]
    if spike is not None:
        parts.append(spike_table(Spike(eni_ids(len(enis))[enis.index(spike)], SPIKE_START, records=700), fields))
    table = pa.concat_tables(parts).sort_by([("start", "ascending")])
    where = pc.index_in(table.column("interface-id"), value_set=pa.array(eni_ids(len(enis))))
    table = table.set_column(table.column_names.index("interface-id"), "interface-id", pa.array(enis).take(where))
    if accounts is not None:
        table = table.set_column(table.column_names.index("account-id"), "account-id", pa.array(accounts).take(where))
    truth.add_rows(table.to_pylist())
    starts = pc.cast(table.column("start"), pa.int64())
    out = []
    for k in range(6):
        part = table.filter(pc.and_(pc.greater_equal(starts, BASE + k * 600), pc.less(starts, BASE + (k + 1) * 600)))
        text = " ".join(fields) + "\n" + "\n".join(to_lines(part).to_pylist()) + "\n"
        out.append(gzip.compress(text.encode()))
    return out


def info(metrics: Metrics) -> dict[str, dict[str, str]]:
    """vpcflow_interface_info's labels by interface."""
    return {dict(k)["interface_id"]: dict(k) for k in metrics.get("vpcflow_interface_info", {})}


def errors(metrics: Metrics, reason: str) -> int:
    return int(sum(v for k, v in metrics.get("streamer_enrich_errors_total", {}).items() if dict(k)["reason"] == reason))


def requests(metrics: Metrics) -> int:
    return int(sum(metrics.get("streamer_enrich_requests_total", {}).values()))


def put(aws: str, bodies: list[bytes], first: int = 0, bucket: str = "flow-logs") -> None:
    s3 = boto("s3", aws)
    if first == 0:
        s3.create_bucket(Bucket=bucket)
    now = dt.datetime.now(dt.UTC)
    for i, body in enumerate(bodies, start=first):
        s3.put_object(Bucket=bucket, Key=aws_key(now, "daily", n=i), Body=body)


def source(aws: str) -> list[dict[str, Any]]:
    return [{"type": "s3", "bucket": "flow-logs", "endpoint_url": aws, "poll_interval_seconds": 0.3, "max_concurrent_objects": 1}]


async def test_ec2_context_names_the_workload_in_the_info_metric_and_the_alert(aws: str, tmp_path: Path) -> None:
    ec2 = boto("ec2", aws)
    w = world(ec2)
    enis = [w["instance"], w["nat"], w["lambda"], w["task"]]
    truth = Truth()
    bodies = flow_objects(truth, enis, spike=w["instance"])
    put(aws, bodies[:3])
    config = service_config(
        tmp_path,
        source(aws),
        anomaly=ANOMALY,
        alerts={"resend_interval_seconds": 0.5, "hold_seconds": 900},
        enrich={"endpoint_url": aws, "region": "us-east-1", "refresh_seconds": 1},
    )
    async with running(config) as service:
        named = lambda m: all(info(m).get(e, {}).get("interface_type") for e in enis)  # noqa: E731
        metrics = await wait_metrics(service.port, lambda m: objects_by_outcome(m).get("ok") == 3 and named(m), what="context")
        got = info(metrics)
        assert got[w["instance"]]["instance_id"] == w["instance_id"]
        assert got[w["instance"]]["name"] == "web-1"  # the ENI has no Name tag: its instance's
        assert got[w["instance"]]["security_groups"] == w["sg"]
        assert got[w["nat"]]["description"] == "Interface for NAT Gateway nat-0a1b2c3d4e5f60718"
        assert got[w["lambda"]]["name"] == "orders-fn"
        assert got[w["task"]]["name"] == "task-1"
        assert {g["subnet_id"] for g in got.values()} == {w["subnet"]}
        book = service.enricher.book if service.enricher is not None else None
        assert book is not None
        who = {kind: (ctx.requester if (ctx := book.get(w[kind])) else None) for kind in ("instance", "nat", "lambda", "task")}
        assert who == {"instance": "instance", "nat": "nat_gateway", "lambda": "lambda", "task": "ecs"}

        # The task ends and its ENI is deleted; its last records still arrive, and it is described again.
        ec2.delete_network_interface(NetworkInterfaceId=w["task"])
        put(aws, bodies[3:], first=3)
        await until(lambda: bool(book.ec2.get(w["task"], {}).get("deleted")), "the deleted ENI described again")
        metrics = await wait_metrics(service.port, lambda m: objects_by_outcome(m).get("ok") == 6, what="every object")
        assert info(metrics)[w["task"]]["name"] == "task-1"  # its last-known context stays
        assert info(metrics)[w["task"]]["description"].startswith("arn:aws:ecs:")

        alerter = service.alerter
        assert alerter is not None
        await until(lambda: w["instance"] in alerter.active, "the spike alert")
        (alert,) = [a for a in alerter.alertmanager_payload() if a["labels"]["interface_id"] == w["instance"]]
        assert alert["labels"]["instance_id"] == w["instance_id"]
        assert alert["labels"]["name"] == "web-1"
        assert alert["annotations"]["interface_type"] == "interface"
        assert alert["annotations"]["requester"] == "instance"
        assert alert["annotations"]["security_groups"] == w["sg"]
        assert f"{w['instance']} (web-1, interface, {w['instance_id']})" in alert["annotations"]["summary"]
        assert exported_totals(await ascrape(service.port)) == truth.totals


async def test_a_denied_describe_counts_everything_and_counts_the_error(aws: str, tmp_path: Path) -> None:
    w = world(boto("ec2", aws))
    enis = [w["instance"], w["nat"], w["lambda"], w["task"]]
    truth = Truth()
    put(aws, flow_objects(truth, enis, fields=V5_ALL_FIELDS))
    async with Ec2Fault(aws).running() as proxy:
        proxy.fail["DescribeNetworkInterfaces"] = ("UnauthorizedOperation", None)
        config = service_config(tmp_path, source(aws), enrich={"endpoint_url": proxy.url, "region": "us-east-1"})
        async with running(config) as service:
            metrics = await wait_metrics(
                service.port,
                lambda m: objects_by_outcome(m).get("ok") == 6 and errors(m, "access_denied") >= 1,
                what="every object and a denied describe",
            )
            assert exported_totals(metrics) == truth.totals
            got = info(metrics)[w["lambda"]]  # what the records carry, without EC2's names
            assert got["vpc_id"] == "vpc-0a1b2c3d4e5f67890"
            assert got["instance_id"].startswith("i-")
            assert got["name"] == ""
            assert sum(errors(metrics, r) for r in ("throttled", "assume_role", "unreachable", "error")) == 0


async def test_throttled_describes_back_off_and_counting_goes_on(aws: str, tmp_path: Path) -> None:
    w = world(boto("ec2", aws))
    enis = [w["instance"], w["nat"], w["lambda"], w["task"]]
    truth = Truth()
    put(aws, flow_objects(truth, enis))
    async with Ec2Fault(aws).running() as proxy:
        proxy.fail["DescribeNetworkInterfaces"] = ("RequestLimitExceeded", 3)
        backoff = 0.2
        config = service_config(
            tmp_path, source(aws), enrich={"endpoint_url": proxy.url, "region": "us-east-1", "backoff_seconds": backoff}
        )
        async with running(config) as service:
            metrics = await wait_metrics(
                service.port,
                lambda m: objects_by_outcome(m).get("ok") == 6 and info(m).get(w["lambda"], {}).get("name") == "orders-fn",
                what="every object, then the context once EC2 answers",
            )
            assert exported_totals(metrics) == truth.totals
            assert errors(metrics, "throttled") == 3
            calls = proxy.calls["DescribeNetworkInterfaces"]
            gaps = [b - a for a, b in itertools.pairwise(calls)][:3]
            # each retry waited at least its pause, doubling: 0.2, 0.4, 0.8 s
            assert [g >= backoff * 2**i for i, g in enumerate(gaps)] == [True, True, True], gaps


def _account_world(aws: str, account: str, name: str) -> str:
    """One named ENI in `account` (moto keeps accounts apart by the credentials of an assumed role)."""
    sts = boto("sts", aws)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/setup", RoleSessionName="test-setup")["Credentials"]
    ec2 = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=aws,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.1.0/24")["Subnet"]["SubnetId"]
    tags = [{"ResourceType": "network-interface", "Tags": [{"Key": "Name", "Value": name}]}]
    return str(ec2.create_network_interface(SubnetId=subnet, TagSpecifications=tags)["NetworkInterface"]["NetworkInterfaceId"])


async def test_two_accounts_each_through_its_role_and_a_restart_describes_nothing_again(aws: str, tmp_path: Path) -> None:
    a, b = "111111111111", "222222222222"
    eni_a, eni_b = _account_world(aws, a, "billing-db"), _account_world(aws, b, "search-api")
    assert boto("ec2", aws).describe_network_interfaces()["NetworkInterfaces"] == []  # our own account sees neither
    truth = Truth()
    put(aws, flow_objects(truth, [eni_a, eni_b], accounts=[a, b]))
    enrich = {
        "endpoint_url": aws,
        "sts_endpoint_url": aws,
        "region": "us-east-1",
        "role_arn": {a: f"arn:aws:iam::{a}:role/streamer-enrich", b: f"arn:aws:iam::{b}:role/streamer-enrich"},
    }
    config = service_config(tmp_path, source(aws), enrich=enrich)
    async with running(config) as service:
        metrics = await wait_metrics(
            service.port,
            lambda m: (
                objects_by_outcome(m).get("ok") == 6
                and {info(m).get(e, {}).get("name") for e in (eni_a, eni_b)} == {"billing-db", "search-api"}
            ),
            what="both accounts' names",
        )
        assert exported_totals(metrics) == truth.totals
        assert errors(metrics, "assume_role") == errors(metrics, "access_denied") == 0

    async with running(config) as service:  # the same checkpoint: the cache comes back with it
        enricher = service.enricher
        assert enricher is not None
        steps = enricher.steps
        await until(lambda: enricher.steps >= steps + 3, "three enricher steps")
        metrics = await ascrape(service.port)
        assert {info(metrics)[e]["name"] for e in (eni_a, eni_b)} == {"billing-db", "search-api"}
        assert requests(metrics) == 0


async def test_without_enrich_the_records_context_alone_makes_the_info_metric(aws: str, tmp_path: Path) -> None:
    truth = Truth()
    enis = ["eni-0aaaaaaaaaaaaaaa1", "eni-0aaaaaaaaaaaaaaa2"]
    put(aws, flow_objects(truth, enis, fields=V5_ALL_FIELDS))
    async with running(service_config(tmp_path, source(aws))) as service:
        metrics = await wait_metrics(
            service.port, lambda m: objects_by_outcome(m).get("ok") == 6 and len(info(m)) == 2, what="every object, its context"
        )
        got = info(metrics)
        assert set(got) == set(enis)
        assert all(g["vpc_id"] == "vpc-0a1b2c3d4e5f67890" and g["instance_id"].startswith("i-") for g in got.values())
        assert requests(metrics) == 0
        assert exported_totals(metrics) == truth.totals


async def test_accounts_without_a_role_share_one_pace_and_one_pause(aws: str, tmp_path: Path) -> None:
    """ENIs of accounts with no role in `role_arn` are all described with streamer's own credentials, against one
    account's EC2 limits: a throttled call pauses them all (one pacing bucket too), not only its own account's."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from streamer.aggregate.context import ContextBook
    from streamer.aws import AwsClients
    from streamer.enrich import Enricher
    from streamer.settings import EnrichConfig
    from streamer.store.sqlite import CheckpointStore

    store = CheckpointStore(tmp_path / "state.db")
    clients = AwsClients()
    seen = {"eni-0b0000000000000001": 1000.0, "eni-0c0000000000000001": 1000.0}
    async with Ec2Fault(aws).running() as proxy:
        proxy.fail["DescribeNetworkInterfaces"] = ("RequestLimitExceeded", 1)
        config = EnrichConfig(
            endpoint_url=proxy.url,
            region="us-east-1",
            role_arn={"111111111111": "arn:aws:iam::111111111111:role/streamer-enrich"},
        )
        registry = CollectorRegistry()
        enricher = Enricher(
            ContextBook(),
            store,
            lambda fn, *args: asyncio.to_thread(fn, *args),
            registry,
            config=config,
            client_for=clients.ec2_as,
            default_region="us-east-1",
            active=lambda: seen,
            idle_seconds=86400,
            clock=lambda: 1000.0,
        )
        enricher.observe(
            [
                pa.table({"interface_id": ["eni-0b0000000000000001"], "account_id": ["222222222222"]}),
                pa.table({"interface_id": ["eni-0c0000000000000001"], "account_id": ["333333333333"]}),
            ]
        )
        try:
            await enricher.step()
        finally:
            await clients.close()
            store.close()
        assert registry.get_sample_value("streamer_enrich_errors_total", {"reason": "throttled"}) == 1
        assert len(proxy.calls["DescribeNetworkInterfaces"]) == 1  # the other unroled account waited out the pause


async def test_a_role_session_denied_is_assumed_again_at_the_next_try(aws: str, tmp_path: Path) -> None:
    """An assumed role's session can be refused before it expires (IAM's "revoke active sessions" denies every
    session issued before it): the next try assumes the role again instead of reusing the refused session
    until its expiry (up to an hour without context for that account)."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from streamer.aggregate.context import ContextBook
    from streamer.aws import AwsClients
    from streamer.enrich import Enricher
    from streamer.settings import EnrichConfig
    from streamer.store.sqlite import CheckpointStore

    account = "111111111111"
    eni = _account_world(aws, account, "billing-db")
    store = CheckpointStore(tmp_path / "state.db")
    clients = AwsClients()
    seen = {eni: 1000.0}
    now = [1000.0]
    async with Ec2Fault(aws).running() as proxy:
        proxy.fail["DescribeNetworkInterfaces"] = ("UnauthorizedOperation", 1)
        config = EnrichConfig(
            endpoint_url=proxy.url,
            sts_endpoint_url=proxy.url,
            region="us-east-1",
            role_arn={account: f"arn:aws:iam::{account}:role/streamer-enrich"},
        )
        registry = CollectorRegistry()
        enricher = Enricher(
            ContextBook(),
            store,
            lambda fn, *args: asyncio.to_thread(fn, *args),
            registry,
            config=config,
            client_for=clients.ec2_as,
            default_region="us-east-1",
            active=lambda: seen,
            idle_seconds=86400,
            clock=lambda: now[0],
        )
        enricher.observe([pa.table({"interface_id": [eni], "account_id": [account]})])
        try:
            await enricher.step()  # denied
            now[0] += 60  # past the pause
            await enricher.step()
        finally:
            await clients.close()
            store.close()
        assert registry.get_sample_value("streamer_enrich_errors_total", {"reason": "access_denied"}) == 1
        assert len(proxy.calls["AssumeRole"]) == 2
        known = enricher.book.get(eni)
        assert known is not None
        assert known.name == "billing-db"
