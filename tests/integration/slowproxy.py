"""TCP proxies on 127.0.0.1 for faults, for real: a slow S3 download (`SlowProxy`), a database behind a
network that stops answering (`Blackhole`).

The slow one sits between the service and moto, forwards requests as they are and
trickles responses at `bytes_per_second`, and tells the test how much of a
response whose request line contains `watch` has gone through, so a signal
can land in the middle of a download.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Self


class _ProxyThread:
    """A TCP server on 127.0.0.1 running its own event loop on a thread, for the length of `running()`."""

    def __init__(self, target_port: int, name: str, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _starting(self) -> None:
        """Set-up on the proxy's loop, before it accepts connections."""

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._starting()
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Self]:
        self._thread.start()
        if not self._ready.wait(10):  # it could not listen (its thread says why): not the code under test's fault
            raise RuntimeError(f"the proxy did not start listening on 127.0.0.1:{self.port}")
        try:
            yield self
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


class SlowProxy(_ProxyThread):
    def __init__(self, target_port: int, bytes_per_second: int, watch: bytes) -> None:
        super().__init__(target_port, "slow-proxy")
        self.bytes_per_second = bytes_per_second
        self.watch = watch
        self.watched_bytes = 0

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        watched = {"on": False}
        try:
            target_r, target_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self.watch in data:
                    watched["on"] = True
                target_w.write(data)
                await target_w.drain()

        async def downstream() -> None:
            step = max(1, self.bytes_per_second // 20)
            while data := await target_r.read(step):
                client_w.write(data)
                await client_w.drain()
                if watched["on"]:
                    self.watched_bytes += len(data)
                    await asyncio.sleep(len(data) / self.bytes_per_second)

        try:
            await asyncio.gather(upstream(), downstream())
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (client_w, target_w):
                with contextlib.suppress(Exception):
                    w.close()


class Blackhole(_ProxyThread):
    """A TCP proxy on 127.0.0.1 that can stop forwarding, like a network that drops every packet.

    While `blocked`, connections stay open and accept bytes but nothing reaches the other side and nothing
    comes back, so only the client's own timeouts end its calls (refused connections would be the easy
    case). `heal(reset=True)` also drops the connections held meanwhile, as the server would have after a
    long partition: a pooled connection is then dead without its client knowing.
    """

    def __init__(self, target_port: int, port: int = 0) -> None:
        """`port`: where it listens (0: any free port)."""
        super().__init__(target_port, "blackhole-proxy", port)
        self._flowing = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    def _starting(self) -> None:
        self._flowing.set()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.add(client_w)
        try:
            await self._flowing.wait()  # a connection made during the outage hangs too
            target_r, target_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except (OSError, asyncio.CancelledError):
            client_w.close()
            return
        self._writers.add(target_w)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                await self._flowing.wait()  # held, never delivered while blocked
                w.write(data)
                await w.drain()

        try:
            await asyncio.gather(pump(client_r, target_w), pump(target_r, client_w))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (client_w, target_w):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.close()

    def block(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def heal(self, reset: bool = False) -> None:
        def go() -> None:
            if reset:
                for w in list(self._writers):
                    w.transport.abort()
                self._writers.clear()
            self._flowing.set()

        self._loop.call_soon_threadsafe(go)

