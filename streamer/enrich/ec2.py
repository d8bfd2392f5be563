"""Describing ENIs: the EC2 calls, what is kept of their answers, and the bounded error reasons.

Per batch of up to 200 ENIs (EC2 accepts at most 200 filter values per call): one
`DescribeNetworkInterfaces` with the `network-interface-id` filter, paginated. The filter, not the
`NetworkInterfaceIds` parameter, because one deleted ENI in the list fails the whole call with
InvalidNetworkInterfaceID.NotFound, while a filter answers for the ENIs that exist. Attached
instances' `Name` tags come from one `DescribeTags` per batch (resource-id filter, key Name): the
tags only, cheaper than DescribeInstances, which returns every attribute of every instance.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

#: EC2's limit on filter values per call
BATCH = 200
#: page size of DescribeNetworkInterfaces (EC2 allows 5-1000)
PAGE = 1000

#: InterfaceType -> requester (types not listed here are kept as they are)
_BY_TYPE = {
    "nat_gateway": "nat_gateway",
    "lambda": "lambda",
    "network_load_balancer": "elb",
    "load_balancer": "elb",
    "gateway_load_balancer": "elb",
    "vpc_endpoint": "vpc_endpoint",
    "gateway_load_balancer_endpoint": "vpc_endpoint",
    "transit_gateway": "transit_gateway",
    "api_gateway_managed": "api_gateway",
    "global_accelerator_managed": "global_accelerator",
    "quicksight": "quicksight",
    "iot_rules_managed": "iot",
    "aws_codestar_connections_managed": "codestar",
}
#: description prefix -> requester, for interfaces whose type says only "interface"
_BY_DESCRIPTION = (
    ("ELB ", "elb"),
    ("Interface for NAT Gateway", "nat_gateway"),
    ("AWS Lambda VPC ENI", "lambda"),
    ("arn:aws:ecs:", "ecs"),
    ("VPC Endpoint Interface", "vpc_endpoint"),
    ("RDSNetworkInterface", "rds"),
    ("EFS mount target", "efs"),
    ("Network Interface for Transit Gateway Attachment", "transit_gateway"),
    ("AWS created network interface for directory", "directory_service"),
    ("Amazon EKS", "eks"),
    ("ElastiCache", "elasticache"),
)
#: RequesterId -> requester
_BY_REQUESTER_ID = {"amazon-elb": "elb", "amazon-rds": "rds", "amazon-elasticache": "elasticache", "amazon-redshift": "redshift"}

#: error codes -> the bounded `reason` label of streamer_enrich_errors_total
_THROTTLED = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException"}
_DENIED = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure", "InvalidClientTokenId"}
#: error codes of credentials refused before they expire (with access_denied: an assumed role is assumed again)
_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}
REASONS = ("throttled", "access_denied", "assume_role", "unreachable", "error")


def requester(ni: Mapping[str, Any]) -> str:
    """Who made the ENI, from its type, description, requester id and attachment (a bounded set of words)."""
    kind = str(ni.get("InterfaceType") or "interface")
    if kind in _BY_TYPE:
        return _BY_TYPE[kind]
    description = str(ni.get("Description") or "")
    for prefix, who in _BY_DESCRIPTION:
        if description.startswith(prefix):
            return who
    by_id = _BY_REQUESTER_ID.get(str(ni.get("RequesterId") or ""))
    if by_id is not None:
        return by_id
    if kind not in ("interface", "efa", "efa-only", "trunk", "branch"):
        return kind
    if ni.get("RequesterManaged"):
        return "aws_managed"
    if (ni.get("Attachment") or {}).get("InstanceId"):
        return "instance"
    return "unattached"


def _tag(tags: Any, key: str = "Name") -> str | None:
    for tag in tags or ():
        if tag.get("Key") == key:
            return str(tag.get("Value"))
    return None


def keep(ni: Mapping[str, Any]) -> dict[str, Any]:
    """What is kept of one NetworkInterfaces entry (a JSON-able document, as stored)."""
    doc: dict[str, Any] = {
        "interface_type": ni.get("InterfaceType") or "interface",
        "requester": requester(ni),
        "description": ni.get("Description") or None,
        "instance_id": (ni.get("Attachment") or {}).get("InstanceId"),
        "name": _tag(ni.get("TagSet")),
        "security_groups": sorted(g["GroupId"] for g in ni.get("Groups") or () if g.get("GroupId")),
        "subnet_id": ni.get("SubnetId"),
        "vpc_id": ni.get("VpcId"),
        "az": ni.get("AvailabilityZone"),
        "account_id": ni.get("OwnerId"),
    }
    return {k: v for k, v in doc.items() if v not in (None, "", [])}


async def describe(client: Any, interfaces: list[str], before: Callable[[str], Awaitable[None]]) -> dict[str, dict[str, Any]]:
    """The ENIs among `interfaces` (at most BATCH) that EC2 knows, with their instances' names. An ENI
    missing from the answer no longer exists. `before(call)` is awaited before every call (pacing);
    the client's errors are raised as they come (the caller counts them)."""
    found: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"Filters": [{"Name": "network-interface-id", "Values": interfaces}], "MaxResults": PAGE}
    while True:
        await before("DescribeNetworkInterfaces")
        page = await client.describe_network_interfaces(**kwargs)
        for ni in page.get("NetworkInterfaces", ()):
            found[ni["NetworkInterfaceId"]] = keep(ni)
        token = page.get("NextToken")
        if not token:
            break
        kwargs["NextToken"] = token
    instances = sorted({d["instance_id"] for d in found.values() if d.get("instance_id")})
    if instances:
        names: dict[str, str] = {}
        tag_args: dict[str, Any] = {
            "Filters": [{"Name": "resource-id", "Values": instances}, {"Name": "key", "Values": ["Name"]}],
            "MaxResults": PAGE,
        }
        while True:
            await before("DescribeTags")
            page = await client.describe_tags(**tag_args)
            for tag in page.get("Tags", ()):
                names[tag["ResourceId"]] = str(tag.get("Value"))
            token = page.get("NextToken")
            if not token:
                break
            tag_args["NextToken"] = token
        for doc in found.values():
            name = names.get(doc.get("instance_id") or "")
            if name:
                doc["instance_name"] = name
    return found


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(((response or {}).get("Error") or {}).get("Code") or "") if isinstance(response, dict) else ""


def session_refused(exc: BaseException) -> bool:
    """The call's credentials were refused (denied, expired, revoked): an assumed role's session is not reused."""
    return error_reason(exc) == "access_denied" or _code(exc) in _EXPIRED


def error_reason(exc: BaseException) -> str:
    """The bounded reason of a failed call."""
    code = _code(exc)
    if code in _THROTTLED:
        return "throttled"
    if code in _DENIED or code.startswith("AccessDenied"):
        return "access_denied"
    if isinstance(exc, OSError | TimeoutError) or type(exc).__name__ in (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
    ):
        return "unreachable"
    return "error"
