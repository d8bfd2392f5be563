"""The HTTP face: /metrics, /healthz, /readyz on aiohttp.

Health says the process serves; readiness says the sources have started
reading (a callable the service supplies). Exposition is rendered from our
own registry, never the global one, by prometheus_client's own encoders:
OpenMetrics when the scraper asks for it, gzip when it accepts it, and no
`*_created` series (they double every counter and nothing reads them).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import choose_encoder

disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated


def build_app(
    registry: CollectorRegistry, ready: Callable[[], bool] = lambda: True, reasons: Callable[[], list[str]] = list
) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encode(registry)
        headers = {"Content-Type": content_type}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, 1)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="".join(f"not ready: {r}\n" for r in reasons()) or "not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/-/healthy", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/-/ready", readyz)
    return app


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner (to clean up) and the bound port.

    Shutdown waits at most a couple of seconds for open scrapes: aiohttp's
    default of 60 s would stall SIGTERM/Ctrl-C behind a slow client.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port
