"""Logging setup: one line per event, plain text or JSON lines.

Nothing here ever formats credentials: config objects redact secrets in
their repr, and AWS clients are never logged.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup(level: str = "info", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "aiobotocore", "aiohttp.access", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


#: what a client sent is echoed in a log line at most this long (a header can be 8 KB)
ECHO_CHARS = 128


def printable(text: str, limit: int = ECHO_CHARS) -> str:
    """A client's text as one safe piece of a log line: control and format characters (a newline would forge
    a line of its own, a bidi override would hide one) and backslashes escaped, cut to about `limit` characters."""
    if len(text) <= limit and text.isprintable() and "\\" not in text:
        return text
    out: list[str] = []
    size = 0
    for i, ch in enumerate(text):
        piece = _escaped(ch)
        if size + len(piece) > limit:
            return "".join(out) + f"...(+{len(text) - i} chars)"
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _escaped(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch.isprintable() or ch == " ":
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class Throttle:
    """At most one log line per `interval_seconds` for an event that a client can repeat at will; the ones
    in between are not logged, only counted, and the next line says how many there were."""

    def __init__(self, interval_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._next = float("-inf")
        self._quiet = 0

    def allow(self) -> int | None:
        """None: do not log this one. Else log it: the number of events not logged since the last line."""
        now = self._clock()
        if now < self._next:
            self._quiet += 1
            return None
        self._next = now + self.interval_seconds
        quiet, self._quiet = self._quiet, 0
        return quiet


def quieted(count: int) -> str:
    """The end of a throttled line: how many like it were not logged."""
    return f" (and {count} more not logged)" if count else ""
