"""An HTTP proxy in front of moto that answers EC2 calls with EC2's own errors, for real faults over HTTP.

It runs in the test's event loop (aiohttp). Every request goes through to moto unchanged, except the
calls named in `fail`: those get EC2's error document with the status EC2 uses (503
RequestLimitExceeded for throttling, 403 UnauthorizedOperation for a denied call), as many times as
`fail` says. It notes when each call of a watched action arrived, so a test can check the pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web

STATUS = {"RequestLimitExceeded": 503, "UnauthorizedOperation": 403}


class Ec2Fault:
    def __init__(self, target: str) -> None:
        self.target = target
        #: action -> (error code, how many more calls get it; None: every call)
        self.fail: dict[str, tuple[str, int | None]] = {}
        #: action -> loop times of the calls that reached the proxy
        self.calls: dict[str, list[float]] = {}
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        action = parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
        self.calls.setdefault(action, []).append(asyncio.get_running_loop().time())
        failing = self.fail.get(action)
        if failing is not None and (failing[1] is None or failing[1] > 0):
            code, left = failing
            self.fail[action] = (code, None if left is None else left - 1)
            doc = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                f"<Code>{code}</Code><Message>injected by the test's proxy</Message>"
                "</Error></Errors><RequestID>ec2fault</RequestID></Response>"
            )
            return web.Response(status=STATUS[code], body=doc.encode(), content_type="text/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            aiohttp.ClientSession() as http,
            http.request(request.method, self.target + request.path_qs, data=body, headers=headers) as resp,
        ):
            payload = await resp.read()
            return web.Response(status=resp.status, body=payload, content_type=resp.content_type)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Ec2Fault]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()
