"""Receive Amazon Data Firehose HTTP endpoint deliveries, exactly once.

Firehose POSTs `{"requestId", "timestamp", "records": [{"data": base64}]}`
(optionally `Content-Encoding: gzip`) with the access key in the
`X-Amz-Firehose-Access-Key` header, and retries a request that did not get a
200 with the same `requestId`. So the `requestId` is the input's done key:
it is committed in the same transaction as the counts it produced, and only
then is 200 sent. A retry of a committed request is answered 200 and counts
nothing; a kill -9 between the commit and the response is exactly that case.

Responses: 200 `{requestId, timestamp}` after the commit, also when some
records could not be read (each is one `invalid_payload` decode error, the
others count); 401 for a missing or wrong key (compared in constant time with
every accepted key, never logged; each 401 counted, a line logged at most
once a minute; a placeholder key, or one shorter than MIN_KEY_CHARS, is
refused at start; `authentication: none` checks no key, and says so); 400
only for a body that is not a Firehose request (not JSON, no requestId, no
records list), with nothing counted; 413 when the body plus what its gzip'd
records inflate to is above `max_request_bytes` (both inflated by us, in
bounded steps, so a gzip bomb costs at most the limit); 503 beyond `max_concurrent_requests` and while
shutting down (nothing committed: Firehose retries); 408 for a body slower
than `body_timeout_seconds`; 500 only if the commit failed. Shutdown drains:
requests being committed finish (up to `DRAIN_SECONDS`) while new ones get 503.

A record is a CloudWatch Logs payload (gzip'd JSON, from a subscription
filter) or flow-log text (a flow log publishing straight to Firehose, in
`log_format`). Both become headerless lines for the vectorized decoder.

Firehose only talks HTTPS: terminate TLS in front (an ALB, an ingress) or
give `tls_cert_file` and `tls_key_file`.

The listener holds at most `max_connections` (see http_listener), so slow
clients cannot use up the process's files. What a request sends (its ids,
a record's error) is escaped and cut before a log line echoes it. The done key
is the requestId itself (`done_key`: injective, also for ids that are not text).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import Field, SecretStr, field_validator, model_validator

from streamer.decode.cloudwatch import payload_text
from streamer.decode.errors import ErrorCounts
from streamer.decode.gzip import GZIP_MAGIC
from streamer.logs import Throttle, printable, quieted
from streamer.schema import parse_log_format
from streamer.settings import SourceSettings, check_log_format
from streamer.sources.base import BuildContext, Delivery, Sink, Source
from streamer.sources.http_listener import CappedListener
from streamer.store.base import Done

log = logging.getLogger(__name__)

NAMESPACE = "firehose"
#: done keys of request ids that are not plain text (a lone surrogate or a NUL, sent as a JSON escape)
ESCAPED_NAMESPACE = "firehose-json"
INVALID_PAYLOAD = "invalid_payload"
ACCESS_KEY_HEADER = "X-Amz-Firehose-Access-Key"
#: the records' lines are handed on in chunks of about this much (never all joined at once)
CHUNK_BYTES = 4 << 20
#: read and inflate the body in steps this big: memory stays near the limit whatever the compression ratio
STEP_BYTES = 1 << 20
#: on shutdown, how long requests already being committed may take to finish
DRAIN_SECONDS = 5.0
#: after refusing a request whose body we did not read (503, 408, 413), how long its rest is read and dropped
LINGER_SECONDS = 1.0
#: a warning a client can repeat at will (a wrong key, no key) is logged at most once per this; all are counted
WARN_INTERVAL_SECONDS = 60.0
#: fault-injection seam for the crash test: seconds to wait between the commit and the response
_RESPONSE_DELAY_ENV = "STREAMER_TEST_FIREHOSE_RESPONSE_DELAY_SECONDS"


class FirehoseHttpSourceConfig(SourceSettings):
    type: Literal["firehose_http"]
    #: host:port this source listens on (its own port, not the /metrics one)
    listen_address: str = "0.0.0.0:9109"
    #: the URL path Firehose POSTs to
    path: str = "/"
    #: the access key configured on the Firehose stream (or `access_keys`, or `access_key_file`)
    access_key: SecretStr | None = None
    #: several keys accepted at once, so that a key can be rotated without a failed delivery
    access_keys: list[SecretStr] | None = None
    #: a file holding the key(s), one per line, blank lines ignored (a mounted Secret)
    access_key_file: Path | None = None
    #: `access_key` (default): every request must carry one of the keys. `none`: no key is checked, for a
    #: listener reachable only through an authenticating proxy or a private network (a WARNING says so)
    authentication: Literal["access_key", "none"] = "access_key"
    #: largest request accepted: the body plus what its gzip'd records inflate to (caps gzip bombs too)
    max_request_bytes: int = Field(default=64 << 20, ge=1024)
    #: requests handled at once; beyond this 503 (Firehose retries it)
    max_concurrent_requests: int = Field(default=4, ge=1, le=1024)
    #: connections held at once (each is a file descriptor); beyond this a new one replaces the oldest that is
    #: not inside a request. Lowered at start, with a warning, to what the open-file limit (ulimit -n) leaves
    max_connections: int = Field(default=256, ge=1, le=65536)
    #: a connection must send a request's headers within this (also how long an idle one is kept:
    #: above an ALB's 60 s idle timeout, so the ALB, not us, closes idle connections)
    header_timeout_seconds: float = Field(default=75.0, gt=0)
    #: the whole body must arrive within this, else 408 and the connection is closed
    body_timeout_seconds: float = Field(default=60.0, gt=0)
    #: LogFormat of flow-log text records (flow logs published straight to Firehose); default v2
    log_format: str | None = None
    #: serve HTTPS directly (else terminate TLS in front: an ALB or an ingress)
    tls_cert_file: Path | None = None
    #: the private key of `tls_cert_file`
    tls_key_file: Path | None = None

    _log_format = field_validator("log_format")(check_log_format)

    @field_validator("listen_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 0.0.0.0:9109")
        return value

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @field_validator("access_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty: an empty key would let anyone in (an unset secret?)")
        if value is not None and (weak := key_weakness(value.get_secret_value())):
            raise ValueError(weak)
        return value

    @field_validator("access_keys")
    @classmethod
    def _keys_not_empty(cls, value: list[SecretStr] | None) -> list[SecretStr] | None:
        if value is not None:
            if not value:
                raise ValueError("lists no key")
            for i, key in enumerate(value):
                if not key.get_secret_value().strip():
                    raise ValueError(f"key {i} is empty: an empty key would let anyone in")
                if weak := key_weakness(key.get_secret_value()):
                    raise ValueError(f"key {i} {weak}")
        return value

    @model_validator(mode="after")
    def _key_and_tls(self) -> FirehoseHttpSourceConfig:
        given = [self.access_key is not None, self.access_keys is not None, self.access_key_file is not None]
        if self.authentication == "none":
            if any(given):
                raise ValueError("authentication: none takes no access_key, access_keys nor access_key_file")
        elif sum(given) != 1:
            raise ValueError(
                "give exactly one of access_key, access_keys and access_key_file (Firehose sends it), "
                "or authentication: none behind a gate of your own"
            )
        if self.access_key_file is not None:
            keys = self.keys_from_file()
            if not keys:
                raise ValueError(f"access_key_file {self.access_key_file}: holds no key (one per line)")
            for line, key in _numbered_keys(self.access_key_file):
                if weak := key_weakness(key):
                    raise ValueError(f"access_key_file {self.access_key_file}: line {line} {weak}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    def keys_from_file(self) -> list[str]:
        assert self.access_key_file is not None
        return [key for _, key in _numbered_keys(self.access_key_file)]

    def accepted_keys(self) -> list[str]:
        """Every accepted key (empty only with `authentication: none`); stripped, as a header's value is, and as
        the key file's lines are (a Secret made with `echo` ends in a newline no request can carry)."""
        if self.access_key is not None:
            return [self.access_key.get_secret_value().strip()]
        if self.access_keys is not None:
            return [k.get_secret_value().strip() for k in self.access_keys]
        if self.access_key_file is not None:
            return self.keys_from_file()
        return []

    async def build(self, ctx: BuildContext) -> FirehoseHttpSource:
        return FirehoseHttpSource(ctx.name, self)


#: a key must be at least this long: Firehose sends it in clear (under TLS) with every request, and it is all that
#: stands between the internet and the counters
MIN_KEY_CHARS = 16
#: what a key must not be, or contain, once lowercased and stripped of all but letters and digits
_PLACEHOLDERS = frozenset({"changeme", "replaceme", "placeholder", "youraccesskey", "yourkey", "yoursecret", "accesskey"})
_PLACEHOLDER_WORDS = ("changeme", "replaceme", "placeholder", "youraccesskey", "yourkey", "yoursecret")


def key_weakness(key: str) -> str | None:
    """Why a key is refused at start (never the key itself: it would end up in a log), or None."""
    folded = "".join(c for c in key.lower() if c.isalnum())
    if folded in _PLACEHOLDERS or any(word in folded for word in _PLACEHOLDER_WORDS):
        return "is a placeholder: set the key the Firehose stream sends"
    if len(key.strip()) < MIN_KEY_CHARS:
        return f"is {len(key.strip())} characters: use at least {MIN_KEY_CHARS} (e.g. openssl rand -hex 24)"
    return None


def _numbered_keys(path: Path) -> list[tuple[int, str]]:
    """(line number, key) for each non-blank line of a key file; none when it cannot be read."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [(i, line.strip()) for i, line in enumerate(lines, 1) if line.strip()]


class BadRequest(Exception):
    """400: the body is not a Firehose delivery (nothing is counted)."""


class TooLarge(Exception):
    """413: the body is larger than `max_request_bytes` once inflated."""


class FirehoseHttpSource(Source):
    def __init__(self, name: str, config: FirehoseHttpSourceConfig, clock: Callable[[], float] = time.time) -> None:
        super().__init__(name)
        self.config = config
        self.log_format = parse_log_format(config.log_format) if config.log_format else None
        self._keys = [key.encode() for key in config.accepted_keys()]
        self._clock = clock
        self._stopping = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0  # requests past the key check, up to max_concurrent_requests
        #: set once the port is bound (`port` is then known)
        self.listening = asyncio.Event()
        self._response_delay = float(os.environ.get(_RESPONSE_DELAY_ENV, "0") or 0)
        self.port: int | None = None
        self._unauthorized_log = Throttle(WARN_INTERVAL_SECONDS)
        self._keyless_log = Throttle(WARN_INTERVAL_SECONDS)

    @property
    def host(self) -> str:
        return self.config.listen_address.rpartition(":")[0] or "0.0.0.0"

    async def run(self, sink: Sink) -> None:
        # A run after a crash (the port was taken at start, say) serves again: the last run's stop is over.
        self._stopping = False

        def report(reason: str, message: str, logged: bool) -> None:
            _source_error(sink, self.name, reason, message, logged)

        listener = CappedListener(self.name, self.config.max_connections, report, self._tls())
        app = web.Application(client_max_size=self.config.max_request_bytes + STEP_BYTES, middlewares=[listener.middleware])

        async def handle(request: web.Request) -> web.Response:
            return await self._handle(sink, request)

        app.router.add_post(self.config.path, handle)
        # We inflate the body ourselves, in bounded steps (aiohttp's own inflater has no output limit).
        # aiohttp arms keepalive_timeout as soon as a connection opens: headers not complete by then, it is closed.
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=2.0,
            auto_decompress=False,
            keepalive_timeout=self.config.header_timeout_seconds,
            lingering_time=LINGER_SECONDS,
        )
        await runner.setup()
        try:
            assert runner.server is not None
            await listener.start(runner.server, self.host, int(self.config.listen_address.rpartition(":")[2]))
            self.port = listener.port
            self.ready = True
            self.listening.set()
            log.info("%s: accepting Firehose deliveries on %s:%s%s", self.name, self.host, self.port, self.config.path)
            if self.config.authentication == "none":
                log.warning(
                    "%s: authentication: none: any request to %s:%s%s is counted without a key; only safe behind an"
                    " authenticating proxy or on a private network",
                    self.name,
                    self.host,
                    self.port,
                    self.config.path,
                )
            await asyncio.Event().wait()
        finally:
            self._stopping = True
            self.ready = False
            with contextlib.suppress(TimeoutError):  # new requests get 503 meanwhile
                await asyncio.wait_for(self._idle.wait(), DRAIN_SECONDS)
            await listener.stop()
            await runner.cleanup()

    def _tls(self) -> ssl.SSLContext | None:
        if self.config.tls_cert_file is None or self.config.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)
        return context

    def _authorized(self, given: bytes) -> bool:
        """Compared with every key, in constant time, with no early exit that would tell which one matched."""
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        return matched

    async def _handle(self, sink: Sink, request: web.Request) -> web.Response:
        request_id = _printable(request.headers.get("X-Amz-Firehose-Request-Id", ""))
        shown = printable(request_id) or "?"  # what a log line may echo of it
        if self._stopping:
            return self._reply(503, request_id, "shutting down", close=True)
        if not self._let_in(sink, request, shown):
            return self._reply(401, request_id, "missing or wrong access key", close=True)
        if self._busy >= self.config.max_concurrent_requests:  # its body is never read: Firehose retries it
            sink.source_error(self.name, "busy", f"request {shown}: {self._busy} requests in progress")
            return self._reply(503, request_id, "busy, retry", close=True)
        self._busy += 1
        try:
            return await self._serve(sink, request, request_id)
        finally:
            self._busy -= 1

    def _let_in(self, sink: Sink, request: web.Request, shown: str) -> bool:
        """The key check. What fails it is counted, each time, but logged at most once a minute (a client
        can repeat it at will); with `authentication: none`, so is a request that carries no key."""
        given = request.headers.get(ACCESS_KEY_HEADER, "")
        if self.config.authentication == "none":
            if not given and (quiet := self._keyless_log.allow()) is not None:
                log.warning(
                    "%s: request %s from %s carries no access key: counted, as authentication is none%s",
                    self.name,
                    shown,
                    request.remote,
                    quieted(quiet),
                )
            return True
        if self._authorized(given.encode("utf-8", "surrogateescape")):
            return True
        quiet = self._unauthorized_log.allow()
        message = f"request {shown} from {request.remote}: missing or wrong access key{quieted(quiet or 0)}"
        _source_error(sink, self.name, "unauthorized", message, logged=quiet is not None)
        return False

    async def _serve(self, sink: Sink, request: web.Request, request_id: str) -> web.Response:
        shown = printable(request_id) or "?"
        try:
            raw_id, data = await self._receive(request)
            request_id = _printable(raw_id)  # echoed in the answer; the done key is made from the id as sent
            shown = printable(request_id)
        except TimeoutError:
            sink.source_error(self.name, "timeout", f"request {shown}: body not received in time")
            return self._reply(408, request_id, "body not received in time", close=True)
        except TooLarge as exc:
            sink.source_error(self.name, "too_large", f"request {shown}: {exc}")
            return self._reply(413, request_id, str(exc), close=True)
        except BadRequest as exc:
            sink.source_error(self.name, "bad_request", f"request {shown}: {exc}")
            return self._reply(400, request_id, str(exc))
        if self._stopping:  # stopping while the body came in: commit nothing, Firehose retries
            return self._reply(503, request_id, "shutting down")
        if data.errors:
            log.warning(
                "%s: request %s: %d of %d record(s) skipped %s, e.g. %s",
                self.name,
                shown,
                sum(data.errors.values()),
                data.records,
                data.errors,
                printable(data.example or "", 200),
            )
        delivery = Delivery(
            location=f"firehose://{self.name}/{shown}",
            body=data.stream,
            done=[done_key(raw_id)],
            arrived_at=self._clock(),
            log_format=self.log_format,
            headerless=True,
            errors=data.errors,
        )
        self._inflight += 1
        self._idle.clear()
        try:
            await sink.process(self.name, delivery)
        except Exception as exc:  # not committed: Firehose retries the same requestId
            sink.source_error(self.name, "commit_failed", f"{delivery.location}: {exc}")
            return self._reply(500, request_id, "not stored, retry")
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
        if self._response_delay:
            await asyncio.sleep(self._response_delay)
        sink.polled(self.name)
        return self._reply(200, request_id)

    async def _receive(self, request: web.Request) -> tuple[str, _Records]:
        """Read and parse the body; only the records' lines outlive this (the body is not held while committing)."""
        async with asyncio.timeout(self.config.body_timeout_seconds):
            held = [await self._read_body(request)]
        return await asyncio.to_thread(self._parse, held)

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, inflated when gzip'd, refusing anything past `max_request_bytes` without holding more."""
        limit = self.config.max_request_bytes
        if request.content_length is not None and request.content_length > limit and not _gzipped(request):
            raise TooLarge(f"body of {request.content_length} bytes is over max_request_bytes ({limit})")
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if _gzipped(request) else None
        parts: list[bytes] = []
        held = 0
        while chunk := await request.content.read(STEP_BYTES):
            pending = chunk
            while pending:
                if inflater is None:
                    out, pending = pending, b""
                else:
                    try:
                        out = inflater.decompress(pending, limit - held + 1)
                    except zlib.error as exc:
                        raise BadRequest(f"invalid gzip body: {exc}") from exc
                    pending = inflater.unconsumed_tail
                    if inflater.eof and inflater.unused_data:
                        raise BadRequest("trailing bytes after the gzip body")
                held += len(out)
                if held > limit:
                    raise TooLarge(f"body is over max_request_bytes ({limit}) once decompressed")
                parts.append(out)
                if inflater is not None and not out and pending:
                    break  # no progress: wait for more input
        if inflater is not None and not inflater.eof:
            raise BadRequest("gzip body ended early")
        return b"".join(parts)

    def _parse(self, held: list[bytes]) -> tuple[str, _Records]:
        """requestId and the records' lines (a worker thread: base64 and gunzip are not free).

        Only a body that is not a Firehose request is a BadRequest; a record
        that cannot be read is counted (`invalid_payload`) and the rest count.
        """
        body = held.pop()  # the only reference: the body is freed once parsed
        size = len(body)
        try:
            # The stdlib parser, not orjson: on a body of long base64 strings it peaks at twice the body, orjson at 13x.
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:  # also bad UTF-8, and numbers too long to convert
            raise BadRequest(f"not JSON: {str(exc)[:200]}") from exc
        del body
        if not isinstance(doc, dict) or not isinstance(doc.get("requestId"), str) or not doc["requestId"]:
            raise BadRequest("no requestId")
        records = doc.get("records")
        if not isinstance(records, list):
            raise BadRequest("no records list")
        return doc["requestId"], records_lines(records, self.config.max_request_bytes - size)

    def _reply(self, status: int, request_id: str, error: str | None = None, close: bool = False) -> web.Response:
        doc: dict[str, Any] = {"requestId": request_id, "timestamp": int(self._clock() * 1000)}
        if error is not None:
            doc["errorMessage"] = error
        response = web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")
        if close:  # the body may be unread: do not wait for it to keep the connection
            response.force_close()
        return response


def _source_error(sink: Sink, source: str, reason: str, message: str, logged: bool) -> None:
    """Counted always, logged when `logged`; the keyword goes only with False, so a Sink that predates it
    still takes every error that is logged."""
    if logged:
        sink.source_error(source, reason, message)
    else:
        sink.source_error(source, reason, message, logged=False)


def _gzipped(request: web.Request) -> bool:
    return request.headers.get("Content-Encoding", "").strip().lower() == "gzip"


class _Records:
    """The lines of one request's records (in chunks of whole lines), and what could not be read."""

    def __init__(self, chunks: list[bytes], errors: dict[str, int], records: int, example: str | None) -> None:
        self.chunks = chunks
        self.errors = errors
        self.records = records
        self.example = example

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class BadRecord(Exception):
    """One record cannot be read: counted as `invalid_payload`, the request's other records still count."""


def records_lines(records: list[Any], budget: int) -> _Records:
    """Flow-log lines of Firehose records: CloudWatch Logs payloads (gzip'd JSON) or flow-log text.

    Gzip'd records are inflated in one shared `budget` (what is left of
    `max_request_bytes` after the body), step by step: past it, TooLarge
    (413). Any other failure of one record (not base64, not gzip after all,
    JSON of the wrong shape, ...) makes it one `invalid_payload` error.
    """
    errors = ErrorCounts()
    chunks: list[bytes] = []
    text: list[bytes] = []  # lines of the chunk being filled
    held = 0
    for i, record in enumerate(records):  # Firehose records (batches), not flow-log records
        records[i] = None  # each record's base64 is freed as soon as it is read
        found = ErrorCounts()
        try:
            data = _record_bytes(record)
            if data[:2] == GZIP_MAGIC:
                data = _inflate(data, budget)
                budget -= len(data)
            lines = _record_text(data, found)
        except (TooLarge, MemoryError):
            raise  # MemoryError: the machine's fault, not the record's: the request fails and Firehose retries it
        except Exception as exc:  # whatever one record does wrong, it is that record's error only
            errors.add(INVALID_PAYLOAD, 1, f"record {i}: {type(exc).__name__}: {exc}")
            continue
        errors.merge(found)
        if lines:
            text.append(lines)
            held += len(lines)
        if held >= CHUNK_BYTES:
            chunks.append(b"\n".join([*text, b""]))
            text, held = [], 0
    if text:
        chunks.append(b"\n".join([*text, b""]))
    example = next(iter(errors.examples.values()), None)
    return _Records(chunks, dict(errors.counts), len(records), example)


def _record_bytes(record: object) -> bytes:
    if not isinstance(record, dict) or not isinstance(record.get("data"), str):
        raise BadRecord("no data string")
    try:
        return base64.b64decode(record["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRecord("data is not base64") from exc


def _inflate(data: bytes, budget: int) -> bytes:
    """A gzip'd record, inflated to at most `budget` bytes (TooLarge past it), never allocating more."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data, max(budget, 0) + 1)
    except zlib.error as exc:
        raise BadRecord(f"invalid gzip: {exc}") from exc
    if len(inflated) > budget:
        raise TooLarge("the records are over max_request_bytes once decompressed")
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data.strip(b"\x00"):
        raise BadRecord("truncated gzip, or bytes after it")
    if inflated[:2] == GZIP_MAGIC:
        raise BadRecord("gzip inside gzip")
    return inflated


def _record_text(data: bytes, errors: ErrorCounts) -> bytes:
    """A record's flow-log lines: a CloudWatch Logs payload's events, or the record's own lines.

    A large payload's events are read into Arrow columns, never into a Python object each (payload_text).
    """
    if data.lstrip()[:1] != b"{":
        return data.rstrip(b"\n")
    return payload_text(data, errors)[:-1]


def done_key(request_id: str) -> Done:
    """The request's done key, one per requestId (injective).

    An ordinary id (text both stores can hold) is its own key, as it always
    was, so an upgrade re-counts no retry. Any other id (a lone surrogate or a
    NUL, from a JSON escape; PostgreSQL text takes neither) is its JSON string,
    ASCII with every escape, in a namespace of its own that no ordinary id reaches.
    """
    if "\x00" not in request_id and (request_id.isascii() or _encodes(request_id)):
        return Done(NAMESPACE, request_id)
    return Done(ESCAPED_NAMESPACE, json.dumps(request_id))


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    """A client's id as text that can be logged, stored and echoed: undecodable bytes from a header
    (surrogate escapes) and lone surrogates from a JSON escape become U+FFFD instead of a 500."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if not text.isascii() else text
