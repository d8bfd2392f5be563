"""A listening socket that holds at most `max_connections` connections, for an HTTP server anyone can reach.

Each connection holds a file descriptor until aiohttp's timeouts close it, and
one that sends half a header is held for `header_timeout_seconds`. Without a
cap, a few hundred of them use up the process's open files: `/healthz` hangs,
deliveries fail, and asyncio's own accept loop logs one traceback per pending
connection per tick (CPython's `_accept_connection` goes on trying `backlog`
times after EMFILE: 900,000 lines in 30 s was measured). So this module
accepts by itself, instead of `loop.create_server` (aiohttp's TCPSite):

- At the cap, a new connection evicts the oldest one that is not inside a
  request (idle, or still sending its headers), so slow clients cannot starve
  one that sends its request at once. Only when every connection is inside a
  request is the new one closed. Connections in a request are marked by
  `middleware`.
- The cap is lowered, with a warning, to what the open-file limit leaves
  (the limit is the process's: listeners already started keep their share).
- An accept that fails for want of files (EMFILE, ENFILE, ...) while a
  connection waits closes the oldest one outside a request, as at the cap;
  with none to close it waits a while and tries again. Each failure is
  counted, and logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import select
import socket
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from streamer.logs import Throttle, quieted

log = logging.getLogger(__name__)

#: accept failures that mean "no file descriptor or memory for now": wait, then try again
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: how long the accept loop waits after such a failure
ACCEPT_RETRY_SECONDS = 0.5
#: open files left for everything else (the metrics server, the store, AWS clients, threads) when lowering the cap
RESERVED_FILES = 64
#: listening backlog: connections the kernel queues while we are not accepting
BACKLOG = 128
#: one warning a minute at most for what clients can repeat at will
WARN_INTERVAL_SECONDS = 60.0

#: reports a counted event: (reason, message, logged); the caller counts it and logs it when `logged`
Report = Callable[[str, str, bool], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def open_files_limit() -> int | None:
    """The soft RLIMIT_NOFILE (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def open_files() -> int:
    """File descriptors open now (0 where /proc is not there)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def effective_cap(wanted: int, limit: int | None, open_now: int) -> int:
    """`wanted`, or what the open-file limit leaves once RESERVED_FILES and what is open are set aside (at least 1)."""
    if limit is None:
        return wanted
    return max(1, min(wanted, limit - open_now - RESERVED_FILES))


#: listeners started and not stopped: each holds a share of the process's open-file limit
_LISTENING: set[CappedListener] = set()


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.transport: asyncio.Transport | None = None
        self.starting: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        if self.transport is not None:
            return self.transport.is_closing()
        return self.starting is not None and self.starting.done()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # a reset: the peer was not going to finish anyway
        elif self.starting is not None:
            self.starting.cancel()  # still in its TLS handshake


def _waiting(listening: socket.socket) -> bool:
    """Whether a connection waits to be accepted (poll: it takes no file, unlike epoll, nor a bound, unlike select)."""
    poller = select.poll()
    poller.register(listening, select.POLLIN)
    return bool(poller.poll(0))


class CappedListener:
    """Accepts connections for a protocol factory (aiohttp's `runner.server`), at most `max_connections` at once.

    Made before the aiohttp app, whose `middlewares` must hold `middleware`.
    """

    def __init__(self, name: str, max_connections: int, report: Report, ssl_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        self._factory: Callable[[], asyncio.BaseProtocol] | None = None
        self._report = report
        self._ssl = ssl_context
        self.max_connections = max_connections
        self._connections: dict[int, _Connection] = {}  # by id, oldest first
        self._in_request: dict[asyncio.BaseTransport, int] = {}
        self._sockets: list[socket.socket] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._full_log = Throttle(WARN_INTERVAL_SECONDS)
        self._exhausted_log = Throttle(WARN_INTERVAL_SECONDS)

    @property
    def port(self) -> int | None:
        return int(self._sockets[0].getsockname()[1]) if self._sockets else None

    @property
    def connections(self) -> int:
        return len(self._connections)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the request's connection as inside a request (never evicted) while the handler runs."""
        transport = request.transport
        if transport is None:
            return await handler(request)
        self._in_request[transport] = self._in_request.get(transport, 0) + 1
        try:
            return await handler(request)
        finally:
            if (left := self._in_request.pop(transport) - 1) > 0:
                self._in_request[transport] = left

    async def start(
        self, factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, setting: str = "max_connections"
    ) -> None:
        """Bind (every address `host` resolves to) and start accepting; lowers the cap to fit the open-file limit."""
        self._factory = factory
        limit = open_files_limit()
        # What another listener may still open is spoken for, as much as what is open now.
        others = sum(max(0, other.max_connections - other._open()) for other in _LISTENING if other is not self)
        cap = effective_cap(self.max_connections, limit, open_files() + others)
        if cap < self.max_connections:
            log.warning(
                "%s: %s lowered from %d to %d: the open-file limit (ulimit -n) is %s, for every listener; raise it, or lower %s",
                self.name,
                setting,
                self.max_connections,
                cap,
                limit,
                setting,
            )
            self.max_connections = cap
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
                sock.setblocking(False)
        except BaseException:
            self._close_sockets()
            raise
        self._tasks = [asyncio.create_task(self._accept(sock)) for sock in self._sockets]
        _LISTENING.add(self)

    async def stop(self) -> None:
        """Stop accepting (connections already made are the server's to close)."""
        _LISTENING.discard(self)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._close_sockets()
        for connection in list(self._connections.values()):
            if connection.transport is None:
                connection.close()

    def _open(self) -> int:
        return sum(not connection.closed for connection in self._connections.values())

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listening)
            except ConnectionAbortedError:
                continue  # gone before we took it
            except OSError as exc:  # out of files (or memory), or anything else: never the end of accepting
                reason = "open_files" if exc.errno in _EXHAUSTED else "accept_failed"
                quiet = self._exhausted_log.allow()
                # Out of files while holding idle ones (the rest of the process took the reserve): one of ours
                # makes room, as at the cap, or slow clients keep deliveries out for header_timeout_seconds.
                # (Linux fails an accept for want of a file even when no one waits: then nothing is closed.)
                room = exc.errno in (errno.EMFILE, errno.ENFILE) and _waiting(listening) and self._evict_oldest_idle()
                retry = "closed the oldest connection outside a request" if room else f"trying again in {ACCEPT_RETRY_SECONDS} s"
                message = f"cannot accept a connection: {exc}; {retry}"
                self._report(reason, message + quieted(quiet or 0), quiet is not None)
                await asyncio.sleep(0 if room else ACCEPT_RETRY_SECONDS)  # its file is closed on the next turn
                continue
            try:
                self._admit(sock)
            except Exception:  # a bug here must cost one connection, not the listener
                log.exception("%s: admitting a connection failed", self.name)
                sock.close()
            # sock_accept returns without yielding while connections wait in the backlog: without this turn of
            # the loop a burst is accepted whole before the connections it evicts are closed (on the next turn),
            # over the cap and out of files, and nothing else on the loop runs meanwhile.
            await asyncio.sleep(0)

    def _admit(self, sock: socket.socket) -> None:
        for key in [key for key, c in self._connections.items() if c.closed]:
            del self._connections[key]
        if len(self._connections) >= self.max_connections:
            quiet = self._full_log.allow()
            if not self._evict_oldest_idle():
                sock.close()
                message = f"{self.max_connections} connections, all inside a request: a new one closed"
                self._report("connections_full", message + quieted(quiet or 0), quiet is not None)
                return
            message = f"{self.max_connections} connections: the oldest outside a request closed for a new one"
            self._report("connections_full", message + quieted(quiet or 0), quiet is not None)
        connection = _Connection(sock)
        self._connections[id(connection)] = connection
        connection.starting = asyncio.create_task(self._start(connection))

    def _evict_oldest_idle(self) -> bool:
        """Close the oldest connection that is not inside a request; False: there is none."""
        for key, connection in self._connections.items():
            if not connection.closed and connection.transport not in self._in_request:
                del self._connections[key]
                connection.close()
                return True
        return False

    async def _start(self, connection: _Connection) -> None:
        assert self._factory is not None
        loop = asyncio.get_running_loop()
        try:
            connection.transport, _ = await loop.connect_accepted_socket(self._factory, connection.sock, ssl=self._ssl)
        except (OSError, ssl.SSLError, TimeoutError):  # a failed TLS handshake, a reset: that connection only
            connection.sock.close()
        except asyncio.CancelledError:  # evicted or stopped before it was made (asyncio closes a half-made transport)
            connection.sock.close()
            raise
