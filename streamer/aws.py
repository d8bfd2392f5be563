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
#: clients for a source's first call: one attempt, short timeouts, so a misconfiguration shows in seconds
FAST = {"retries": {"mode": "standard", "max_attempts": 1}, "connect_timeout": 3, "read_timeout": 10}


class AwsClients:
    """A cache of clients keyed by (service, region, endpoint); close() releases them."""

    def __init__(self, session: AioSession | None = None) -> None:
        self._session = session or get_session()
        self._stack = AsyncExitStack()
        self._clients: dict[tuple[str, str, str | None, bool], Any] = {}

    async def get(self, service: str, region: str, endpoint_url: str | None = None, fast: bool = False) -> Any:
        """A client; `fast` ones try once with short timeouts (first calls), the others retry adaptively."""
        key = (service, region, endpoint_url, fast)
        if key not in self._clients:
            if fast:
                config = AioConfig(max_pool_connections=4, **FAST)
            else:
                config = AioConfig(retries=RETRIES, connect_timeout=10, read_timeout=60, max_pool_connections=32)
            creator = self._session.create_client(service, region_name=region, endpoint_url=endpoint_url, config=config)
            self._clients[key] = await self._stack.enter_async_context(creator)
        return self._clients[key]

    async def close(self) -> None:
        await self._stack.aclose()
        self._clients.clear()
