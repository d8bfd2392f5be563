"""What is kept of a DescribeNetworkInterfaces answer, who made each ENI, and the bounded error reasons."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from streamer.enrich.ec2 import REASONS, error_reason, keep, requester


@pytest.mark.parametrize(
    ("ni", "who"),
    [
        ({"InterfaceType": "nat_gateway", "Description": "Interface for NAT Gateway nat-1"}, "nat_gateway"),
        (
            {"InterfaceType": "interface", "Description": "Interface for NAT Gateway nat-1", "RequesterManaged": True},
            "nat_gateway",
        ),
        ({"InterfaceType": "lambda", "Description": "AWS Lambda VPC ENI-fn-1", "RequesterManaged": True}, "lambda"),
        ({"InterfaceType": "interface", "Description": "AWS Lambda VPC ENI-fn-1"}, "lambda"),
        ({"InterfaceType": "network_load_balancer", "Description": "ELB net/x/1"}, "elb"),
        ({"InterfaceType": "interface", "Description": "ELB app/my-alb/50dc6c495c0c9188", "RequesterId": "amazon-elb"}, "elb"),
        ({"InterfaceType": "interface", "Description": "arn:aws:ecs:us-east-1:1:attachment/x", "RequesterManaged": True}, "ecs"),
        ({"InterfaceType": "vpc_endpoint", "Description": "VPC Endpoint Interface vpce-1"}, "vpc_endpoint"),
        ({"InterfaceType": "interface", "Description": "RDSNetworkInterface", "RequesterId": "amazon-rds"}, "rds"),
        ({"InterfaceType": "interface", "Attachment": {"InstanceId": "i-1"}}, "instance"),
        ({"InterfaceType": "efa", "Attachment": {"InstanceId": "i-1"}}, "instance"),
        ({"InterfaceType": "interface", "RequesterManaged": True, "Description": "something new"}, "aws_managed"),
        ({"InterfaceType": "interface"}, "unattached"),
        ({"InterfaceType": "a_type_from_next_year"}, "a_type_from_next_year"),
    ],
)
def test_requester(ni: dict[str, Any], who: str) -> None:
    assert requester(ni) == who


def test_keep_takes_names_groups_and_place() -> None:
    ni = {
        "NetworkInterfaceId": "eni-1",
        "InterfaceType": "interface",
        "Description": "Primary network interface",
        "Attachment": {"InstanceId": "i-1"},
        "TagSet": [{"Key": "team", "Value": "x"}, {"Key": "Name", "Value": "web-1-eth0"}],
        "Groups": [{"GroupId": "sg-2", "GroupName": "b"}, {"GroupId": "sg-1", "GroupName": "a"}],
        "SubnetId": "subnet-1",
        "VpcId": "vpc-1",
        "AvailabilityZone": "us-east-1a",
        "OwnerId": "111111111111",
    }
    assert keep(ni) == {
        "interface_type": "interface",
        "requester": "instance",
        "description": "Primary network interface",
        "instance_id": "i-1",
        "name": "web-1-eth0",
        "security_groups": ["sg-1", "sg-2"],
        "subnet_id": "subnet-1",
        "vpc_id": "vpc-1",
        "az": "us-east-1a",
        "account_id": "111111111111",
    }


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "DescribeNetworkInterfaces")


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (_client_error("RequestLimitExceeded"), "throttled"),
        (_client_error("UnauthorizedOperation"), "access_denied"),
        (_client_error("AccessDenied"), "access_denied"),
        (_client_error("InternalError"), "error"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "unreachable"),
        (TimeoutError(), "unreachable"),
        (ValueError("x"), "error"),
    ],
)
def test_error_reasons_are_bounded(exc: BaseException, reason: str) -> None:
    assert error_reason(exc) == reason
    assert reason in REASONS
