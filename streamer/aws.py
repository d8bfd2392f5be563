"""AWS clients are built here and only here, then passed in.

One aiobotocore session, the standard credential chain (environment,
profile, IRSA web identity, instance role), botocore's adaptive retry mode
for throttling and 5xx, and an endpoint URL per source for S3-compatible
stores, VPC endpoints and tests. Nothing here logs credentials.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, cast

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session

if TYPE_CHECKING:  # types-aiobotocore-*: installed with the test extra, never needed at run time
    from types_aiobotocore_cloudformation import CloudFormationClient
    from types_aiobotocore_ec2 import EC2Client
    from types_aiobotocore_kinesis import KinesisClient
    from types_aiobotocore_logs import CloudWatchLogsClient
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient


#: an assumed role's credentials are renewed this long before they expire
RENEW_BEFORE_SECONDS = 300
#: how long assumed-role credentials are asked for (the role's maximum session may be longer)
ROLE_SESSION_SECONDS = 3600


@dataclasses.dataclass
class _Assumed:
    client: Any
    creator: Any
    expires_at: float


class AwsClients:
    """A cache of clients keyed by (service, region, endpoint); close() releases them."""

    def __init__(self, session: AioSession | None = None) -> None:
        self._session = session or get_session()
        self._stack = AsyncExitStack()
        self._clients: dict[tuple[str, str, str | None, bool | str], Any] = {}
        self._assumed: dict[tuple[str, str, str | None], _Assumed] = {}

    async def s3(self, region: str, endpoint_url: str | None = None, fast: bool = False) -> S3Client:
        return cast("S3Client", await self._get("s3", region, endpoint_url, fast))

    async def sqs(self, region: str, endpoint_url: str | None = None, fast: bool = False) -> SQSClient:
        return cast("SQSClient", await self._get("sqs", region, endpoint_url, fast))

    async def logs(self, region: str, endpoint_url: str | None = None, fast: bool = False) -> CloudWatchLogsClient:
        return cast("CloudWatchLogsClient", await self._get("logs", region, endpoint_url, fast))

    async def kinesis(self, region: str, endpoint_url: str | None = None, fast: bool = False) -> KinesisClient:
        return cast("KinesisClient", await self._get("kinesis", region, endpoint_url, fast))

    async def ec2(self, region: str, endpoint_url: str | None = None, fast: bool = False) -> EC2Client:
        return cast("EC2Client", await self._get("ec2", region, endpoint_url, fast))

    async def ec2_as(
        self,
        region: str,
        endpoint_url: str | None = None,
        role_arn: str | None = None,
        sts_endpoint_url: str | None = None,
        renew: bool = False,
    ) -> EC2Client:
        """EC2 for describing ENIs: one attempt per call (the caller paces, backs off and counts throttling
        itself), as `role_arn` when given (STS AssumeRole, renewed before the credentials expire, or now with
        `renew`: a session refused before its expiry, e.g. revoked, is not used again)."""
        if role_arn is None:
            return cast("EC2Client", await self._get("ec2", region, endpoint_url, "single"))
        key = (role_arn, region, endpoint_url)
        held = self._assumed.get(key)
        if held is not None and not renew and held.expires_at - time.time() > RENEW_BEFORE_SECONDS:
            return cast("EC2Client", held.client)
        sts = await self._get("sts", region, sts_endpoint_url, True)
        answer = await sts.assume_role(RoleArn=role_arn, RoleSessionName="streamer-enrich", DurationSeconds=ROLE_SESSION_SECONDS)
        creds = answer["Credentials"]
        session: Any = self._session
        creator = session.create_client(
            "ec2",
            region_name=region,
            endpoint_url=endpoint_url,
            config=_single(),
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        client = await creator.__aenter__()
        if held is not None:
            self._assumed.pop(key)
            await held.creator.__aexit__(None, None, None)
        self._assumed[key] = _Assumed(client, creator, creds["Expiration"].timestamp())
        return cast("EC2Client", client)

    def default_region(self) -> str | None:
        """The region the standard chain names (AWS_REGION, AWS_DEFAULT_REGION, the profile), if any."""
        region = self._session.get_config_variable("region")
        return str(region) if region else None

    async def cloudformation(self, region: str, endpoint_url: str | None = None) -> CloudFormationClient:
        """For `streamer config-from-stack`: one DescribeStacks, tried once with short timeouts."""
        return cast("CloudFormationClient", await self._get("cloudformation", region, endpoint_url, True))

    async def _get(self, service: str, region: str, endpoint_url: str | None, fast: bool | str) -> Any:
        """A client; `fast` ones try once with short timeouts (first calls), "single" ones make exactly one
        attempt per call, the others retry adaptively."""
        key = (service, region, endpoint_url, fast)
        if key not in self._clients:
            if fast == "single":
                config = _single()
            elif fast:
                config = _once()
            else:
                config = AioConfig(
                    retries={"mode": "adaptive", "max_attempts": 8}, connect_timeout=10, read_timeout=60, max_pool_connections=32
                )
            session: Any = self._session  # create_client's overloads want a literal service name
            creator = session.create_client(service, region_name=region, endpoint_url=endpoint_url, config=config)
            self._clients[key] = await self._stack.enter_async_context(creator)
        return self._clients[key]

    async def close(self) -> None:
        for held in self._assumed.values():
            await held.creator.__aexit__(None, None, None)
        self._assumed.clear()
        await self._stack.aclose()
        self._clients.clear()


def _single() -> AioConfig:
    """Exactly one attempt (`total_max_attempts`; botocore's `max_attempts` counts retries after the first):
    for callers that pace, back off and count throttling themselves."""
    return AioConfig(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=3, read_timeout=10)


def _once() -> AioConfig:
    """One attempt, short timeouts: for first calls, and for callers that retry on their own terms."""
    return AioConfig(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=3, read_timeout=10, max_pool_connections=4)
