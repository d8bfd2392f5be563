"""AWS clients are built here and only here, then passed in.

One aiobotocore session, the standard credential chain (environment,
profile, IRSA web identity, instance role), botocore's adaptive retry mode
for throttling and 5xx, and an endpoint URL per source for S3-compatible
stores, VPC endpoints and tests. Nothing here logs credentials.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session

RETRIES = {"mode": "adaptive", "max_attempts": 8}


class AwsClients:
    """A cache of clients keyed by (service, region, endpoint); close() releases them."""

    def __init__(self, session: AioSession | None = None) -> None:
        self._session = session or get_session()
        self._stack = AsyncExitStack()
        self._clients: dict[tuple[str, str, str | None], Any] = {}

    async def get(self, service: str, region: str, endpoint_url: str | None = None) -> Any:
        key = (service, region, endpoint_url)
        if key not in self._clients:
            config = AioConfig(retries=RETRIES, connect_timeout=10, read_timeout=60, max_pool_connections=32)
            creator = self._session.create_client(service, region_name=region, endpoint_url=endpoint_url, config=config)
            self._clients[key] = await self._stack.enter_async_context(creator)
        return self._clients[key]

    async def close(self) -> None:
        await self._stack.aclose()
        self._clients.clear()
