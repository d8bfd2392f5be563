"""Every call to PostgreSQL is bounded in time, and a stopping replica can cut them all short.

A database that goes away cleanly refuses connections; one behind a failed
network, a failover or a frozen host just stops answering, and a socket
waiting for that answer waits for the kernel's TCP timeouts (15 minutes to
2 hours). So four limits apply, each configurable (`checkpoint.*_seconds`):

- connect: libpq's `connect_timeout`, and how long a call waits for a
  connection from the pool (which checks it with a round trip first);
- statement: the server cancels a statement running longer
  (`statement_timeout`, and `idle_in_transaction_session_timeout` so a
  half-open client cannot hold row locks), and the client gives up on a whole
  call (one transaction) that has not finished a second later: a watchdog thread
  shuts the connection's socket down, which makes the blocked call raise at
  once and the pool replace the connection. This is the only limit that
  holds when the network in between still accepts bytes but nothing comes
  back (a proxy or a load balancer whose backend is gone);
- keepalives: an idle connection is probed, and dropped when probes go
  unanswered;
- `tcp_user_timeout`: data sent but not acknowledged for this long drops the
  connection (the kernel's own retransmission limit is ~15 minutes).

A connection lost is reconnected with psycopg_pool's backoff (1 s, doubling), which has no ceiling of its
own: after an outage of a minute its next attempt could be a minute away. Each attempt is given up after
`RECONNECT_SECONDS`, so the next call that waits for a connection starts a fresh one: once the database
answers again, a replica has it back within a few seconds, however long it was away. Opening the pool at
start waits the same way, as a caller, for the whole connect limit.

`GuardedPool.abort` (SIGTERM) severs every call in flight and closes the pool,
so a stop never waits on the database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from streamer.store.base import DatabaseUnavailable, StatementTimeout, TransactionConflict

#: how long psycopg_pool keeps retrying one lost connection (its delays: 1, 2, then cut at this) before
#: leaving it to the next caller to start again from a 1 s delay
RECONNECT_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """The limits above, in seconds (defaults match `checkpoint.*` in settings.py)."""

    connect_seconds: int = 10
    statement_seconds: float = 30.0
    keepalive_idle_seconds: int = 10
    keepalive_interval_seconds: int = 5
    keepalive_count: int = 3
    tcp_user_timeout_seconds: float = 30.0

    @property
    def call_seconds(self) -> float:
        """How long the client waits for one call: a second past the server's own limit, so that a server that
        answers cancels cleanly first (the connection stays usable) and only silence is cut."""
        return self.statement_seconds + 1

    def libpq(self, options: str = "") -> dict[str, Any]:
        """libpq connection parameters; `options` are the URL's own server options, kept."""
        ms = int(self.statement_seconds * 1000)
        server = f"-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms}"
        return {
            "connect_timeout": max(2, self.connect_seconds),  # libpq treats less than 2 as 2
            "keepalives": 1,
            "keepalives_idle": self.keepalive_idle_seconds,
            "keepalives_interval": self.keepalive_interval_seconds,
            "keepalives_count": self.keepalive_count,
            "tcp_user_timeout": int(self.tcp_user_timeout_seconds * 1000),
            "options": f"{options} {server}".strip(),
        }


class Watchdog:
    """One thread that severs connections whose call outlived its deadline."""

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, psycopg.Connection[Any]]] = {}
        self._severed: set[int] = set()
        self._next = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
        self._thread.start()

    def arm(self, conn: psycopg.Connection[Any], seconds: float) -> int:
        with self._cond:
            self._next += 1
            self._armed[self._next] = (time.monotonic() + seconds, conn)
            self._cond.notify()
            return self._next

    def disarm(self, token: int) -> bool:
        """False when the call was cut short (late or aborted)."""
        with self._cond:
            self._armed.pop(token, None)
            if token in self._severed:
                self._severed.discard(token)
                return False
            return True

    def sever_all(self) -> None:
        with self._cond:
            armed, self._armed = list(self._armed.values()), {}
            self._severed.clear()  # aborting: nobody asks any more
        for _, conn in armed:
            sever(conn)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                late = [t for t, (deadline, _) in self._armed.items() if deadline <= now]
                for token in late:
                    self._severed.add(token)
                    sever(self._armed.pop(token)[1])
                upcoming = [deadline for deadline, _ in self._armed.values()]
                self._cond.wait(min(upcoming) - now if upcoming else None)


def sever(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down under the thread blocked on it: its call raises at once."""
    with contextlib.suppress(Exception):  # already closed: nothing to cut
        fd = os.dup(conn.pgconn.socket)
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)


class Health:
    """Whether the database answers, shared by a store's pools: the last connection-level failure, cleared by
    the next call that succeeds on any of them (the heartbeat's, every second while it fails)."""

    problem: str | None = None


class GuardedPool:
    """A psycopg pool whose `connection()` is bounded by the timeouts, and that knows whether the database answers.

    Connection-level failures (refused, lost, cut) leave it as `DatabaseUnavailable`, one line. A statement the
    server cancelled at `statement_timeout` leaves it as `StatementTimeout`: the database answered. A
    transaction the server aborted to break a deadlock or a serialization conflict (SQLSTATE 40P01, 40001, which
    psycopg also files under OperationalError) leaves it as `TransactionConflict`: the database answered.
    """

    def __init__(
        self, conninfo: str, kwargs: dict[str, Any], timeouts: Timeouts, size: int, name: str, health: Health, where: str
    ) -> None:
        self.timeouts = timeouts
        self.where = where  # the URL without its password, for messages
        self.health = health
        self.watchdog = Watchdog()
        self.aborted = False
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=size,
            kwargs=kwargs,
            open=False,
            name=name,
            check=self._check,
            timeout=timeouts.connect_seconds,
            reconnect_timeout=RECONNECT_SECONDS,
        )

    def open(self) -> None:
        """Open the pool and wait up to the connect limit for a first connection, as a caller waits: the pool's
        own wait (`open(wait=True)`) watches its first attempt alone, which is given up after RECONNECT_SECONDS."""
        self._pool.open(wait=False)
        self._pool.putconn(self._getconn(self.timeouts.connect_seconds))

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection before handing it out, itself bounded (it is a round trip)."""
        token = self.watchdog.arm(conn, self.timeouts.connect_seconds)
        try:
            ConnectionPool.check_connection(conn)
        finally:
            self.watchdog.disarm(token)

    def _getconn(self, seconds: float) -> psycopg.Connection[Any]:
        # In short waits, so that an abort is noticed within a second (a closed pool fails only new waiters).
        deadline = time.monotonic() + seconds
        while True:
            if self.aborted:
                raise PoolClosed("the replica is stopping")
            try:
                return self._pool.getconn(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
            except PoolTimeout:
                if time.monotonic() >= deadline:
                    raise PoolTimeout(f"no database connection within {seconds:g} s") from None

    @contextlib.contextmanager
    def connection(self, seconds: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one call (one transaction): committed on success, rolled back on error, severed
        when late. `seconds` shortens both waits (a stop's last call)."""
        try:
            conn = self._getconn(min(seconds or self.timeouts.connect_seconds, self.timeouts.connect_seconds))
        except psycopg.OperationalError as exc:
            self.health.problem = _line(exc)
            raise DatabaseUnavailable(f"{self.where}: {self.health.problem}") from exc
        limit = min(seconds or self.timeouts.call_seconds, self.timeouts.call_seconds)
        token = self.watchdog.arm(conn, limit)
        try:
            with conn:
                yield conn
        except psycopg.OperationalError as exc:  # no answer, lost, refused or cancelled by the timeout
            if _rolled_back(exc):  # deadlock or serialization failure: the server answered
                self.watchdog.disarm(token)
                self.health.problem = None
                raise TransactionConflict(f"{self.where}: {_line(exc)}") from exc
            answered = self.watchdog.disarm(token)
            if answered and exc.sqlstate == _CANCELLED:  # the server's statement_timeout: slow, not away
                self.health.problem = None
                raise StatementTimeout(f"{self.where}: {_line(exc)}") from exc
            self.health.problem = _line(exc) if answered else f"no answer from the database within {limit:g} s"
            raise DatabaseUnavailable(f"{self.where}: {self.health.problem}") from exc
        else:
            self.health.problem = None
        finally:
            self.watchdog.disarm(token)
            self._pool.putconn(conn)

    def abort(self) -> None:
        """Stop now: sever calls in flight, fail waiters, drop the pool (its workers are daemon threads)."""
        self.aborted = True
        self.watchdog.sever_all()
        self.close(timeout=0.5)

    def close(self, timeout: float = 5.0) -> None:
        self._pool.close(timeout=timeout)
        self.watchdog.close()


#: SQLSTATEs of a transaction the server aborted to let another go on: serialization failure, deadlock detected
_CONFLICTS = frozenset({"40001", "40P01"})
#: SQLSTATE of a statement the server cancelled (statement_timeout); a cancel by the watchdog is a cut instead
_CANCELLED = "57014"


def _rolled_back(exc: psycopg.Error) -> bool:
    """The server aborted the transaction for a conflict and said so (nothing of it was written). psycopg files
    these under OperationalError; not every class-40 state qualifies (40003: completion unknown)."""
    return exc.sqlstate in _CONFLICTS


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
