"""CloudWatch Logs payloads -> flow-log lines.

A subscription filter delivers gzip-compressed JSON
(`messageType`, `logGroup`, `logStream`, `logEvents[{id,timestamp,message}]`);
Firehose/Lambda hand the same document around decoded, and some shippers
wrap each record as `{"message": "..."}` per line. All become plain lines
for the text decoder; JSON parsing is orjson's, one document at a time.

Firehose writes such documents to S3 back to back: `{...}{...}` with no
separator, one per line, or (once gunzipped) one gzip member each.
`Documents` splits that stream, however large, across reads: candidate
boundaries (`}` then optional whitespace then `{`) are found by a regex,
and a document that does not parse at its candidate (a `}{` inside a string)
is walked structurally instead, so the work stays linear.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from streamer.decode.errors import (
    INVALID_JSON,
    INVALID_PAYLOAD,
    RECORD_TOO_LARGE,
    DecodeError,
    ErrorCounts,
    InvalidPayloadError,
    UnknownFormatError,
)
from streamer.decode.gzip import GZIP_MAGIC, MAX_PIECE_BYTES, gunzip_stream


@dataclasses.dataclass
class Payload:
    """What one CloudWatch Logs document carried."""

    message_type: str
    log_group: str
    log_stream: str
    event_ids: list[str]
    lines: list[str]
    #: events that were not `{"message": "<text>", ...}` (skipped, each counted as an invalid payload)
    bad_events: int = 0


def parse_payload(document: bytes) -> Payload:
    """One subscription document (already gunzipped).

    CONTROL_MESSAGE documents come back with no lines. Raises
    UnknownFormatError when the bytes are not such a document, and
    InvalidPayloadError when its fields have the wrong types.
    """
    try:
        doc = orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        raise UnknownFormatError(f"not a CloudWatch Logs payload: {exc}") from exc
    if not isinstance(doc, dict) or "logEvents" not in doc:
        raise UnknownFormatError("JSON document without logEvents")
    message_type, events = _events(doc)
    good = [e for e in events if isinstance(e, dict) and isinstance(e.get("message"), str)]
    return Payload(
        message_type=message_type,
        log_group=str(doc.get("logGroup", "")),
        log_stream=str(doc.get("logStream", "")),
        event_ids=[str(e.get("id", "")) for e in good],
        lines=[e["message"] for e in good],
        bad_events=len(events) - len(good),
    )


def _events(doc: dict[str, object]) -> tuple[str, list[object]]:
    """A payload's message type and its events (none unless DATA_MESSAGE); InvalidPayloadError if mistyped."""
    message_type = doc.get("messageType", "DATA_MESSAGE")
    if not isinstance(message_type, str):
        raise InvalidPayloadError(f"messageType is a {type(message_type).__name__}, not a string")
    if message_type != "DATA_MESSAGE":
        return message_type, []
    events = doc.get("logEvents")
    if events is None:
        return message_type, []
    if not isinstance(events, list):
        raise InvalidPayloadError(f"logEvents is a {type(events).__name__}, not a list")
    return message_type, events


#: What one record (a gzip'd CloudWatch Logs payload) may inflate to. CloudWatch's own payloads stay far
#: below it; a record past it (a gzip bomb: 1 MiB can inflate to 1 GiB) is one error, never held whole.
MAX_RECORD_BYTES = 16 << 20
#: A payload up to this size is parsed by orjson: a Python object for every event, about 20x its size but
#: briefly and for one record. A larger one is read by Arrow's JSON reader into columns (about its own
#: size), so that a record of many tiny events never becomes millions of Python objects.
SMALL_PAYLOAD_BYTES = 256 << 10

_PAYLOAD_SCHEMA = pa.schema(
    [
        ("messageType", pa.string()),
        ("logEvents", pa.list_(pa.struct([("message", pa.string())]))),
        ("message", pa.string()),  # a `{"message": "..."}` wrapper (Firehose records)
    ]
)


class RecordTooLargeError(DecodeError):
    reason = RECORD_TOO_LARGE


def inflate_record(data: bytes, limit: int = MAX_RECORD_BYTES) -> bytes:
    """A record's bytes, gunzipped if gzip'd; RecordTooLargeError past `limit` (never inflating much more)."""
    if data[:2] != GZIP_MAGIC:
        return data
    parts: list[bytes] = []
    held = 0
    for piece in gunzip_stream([data], max_piece=min(MAX_PIECE_BYTES, limit + 1)):
        held += len(piece)
        if held > limit:
            raise RecordTooLargeError(f"inflates past {limit} bytes")
        parts.append(piece)
    return b"".join(parts)


def unpack_records(
    records: Sequence[bytes], start: int = 0, limit: int = 1 << 62, max_record_bytes: int = MAX_RECORD_BYTES
) -> tuple[int, bytes, ErrorCounts]:
    """Flow-log text of subscription records (each a gzip'd, or plain, CloudWatch Logs document) from
    `start` on, until the text reaches `limit` bytes (at least one record): the index after the last
    record read, its lines (each ending in a newline), and what could not be read.

    What is held is bounded by the text: `limit` plus one record's, and a record inflates to at most
    `max_record_bytes` (past it: one `record_too_large`). The unit is the record: whatever one raises but
    MemoryError (not the record's fault: it passes through),
    it alone is skipped (one `invalid_payload`); an event of the wrong shape in it is one too.
    CONTROL_MESSAGEs give nothing.
    """
    parts: list[bytes] = []
    errors = ErrorCounts()
    held = 0
    at = start
    while at < len(records) and (at == start or held < limit):
        data, at = records[at], at + 1
        found = ErrorCounts()
        try:
            text = payload_text(inflate_record(data, max_record_bytes), found, wrappers=False)
        except RecordTooLargeError as exc:
            errors.add(RECORD_TOO_LARGE, 1, f"record {at - 1}: {exc}")
            continue
        except MemoryError:
            raise  # the machine's fault, not the record's: the shard reads it again (skipped, it would be lost)
        except Exception as exc:  # any record that is not a payload, however it fails, is one bad record
            errors.add(INVALID_PAYLOAD, 1, f"record {at - 1}: {type(exc).__name__}: {exc}")
            continue
        errors.merge(found)
        parts.append(text)
        held += len(text)
    return at, b"".join(parts), errors


def payload_text(data: bytes, errors: ErrorCounts, wrappers: bool = True) -> bytes:
    """Flow-log lines (each ending in a newline) of one record's JSON, with bad events counted in `errors`.

    `wrappers`: the record may hold several documents back to back and `{"message": ...}` wrappers
    (Firehose); else it is exactly one CloudWatch Logs payload (Kinesis), and anything else raises.
    A record over SMALL_PAYLOAD_BYTES is read into Arrow columns; one that Arrow cannot read as payloads
    (an event of the wrong type in it) raises as a whole: its events are never turned into Python objects.
    """
    if len(data) > SMALL_PAYLOAD_BYTES:
        return _arrow_payload_text(data, errors, wrappers)
    if not wrappers:
        payload = parse_payload(data)
        errors.add(INVALID_PAYLOAD, payload.bad_events, 'an event that is not {"message": "<text>"}')
        return "".join(f"{line}\n" for line in payload.lines).encode()
    documents = Documents()
    docs = documents.feed(data) + documents.close()
    errors.merge(documents.errors)
    lines = document_lines(docs, errors)
    return "".join(f"{line}\n" for line in lines).encode()


def _arrow_payload_text(data: bytes, errors: ErrorCounts, wrappers: bool) -> bytes:
    import pyarrow.json as pj  # only for large records

    options = pj.ParseOptions(explicit_schema=_PAYLOAD_SCHEMA, unexpected_field_behavior="ignore", newlines_in_values=True)
    read = pj.ReadOptions(use_threads=False, block_size=len(data) + 64)  # one block: a document never straddles two
    try:
        table = pj.read_json(pa.py_buffer(data), read_options=read, parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InvalidPayloadError(f"a large record ({len(data)} bytes) that is not CloudWatch Logs payloads: {exc}") from exc
    events = table.column("logEvents")
    payloads = pc.is_valid(events)
    if not wrappers and (table.num_rows != 1 or not payloads[0].as_py()):
        raise UnknownFormatError("not one CloudWatch Logs payload")
    data_message = pc.fill_null(pc.equal(table.column("messageType"), "DATA_MESSAGE"), True)
    messages = pc.list_flatten(events.filter(pc.and_(payloads, data_message))).combine_chunks()
    lines = messages.flatten()[0] if len(messages) else pa.array([], pa.string())  # flatten: offsets applied
    errors.add(INVALID_PAYLOAD, lines.null_count, 'an event that is not {"message": "<text>"}')
    if wrappers:
        wrapped = table.column("message").filter(pc.invert(payloads))
        errors.add(INVALID_JSON, wrapped.null_count, 'a document that is neither a payload nor {"message": ...}')
        lines = pa.concat_arrays([lines, wrapped.combine_chunks()]) if len(wrapped) else lines
    return _joined(lines.drop_null())


def _joined(lines: pa.Array) -> bytes:
    """`"".join(line + "\\n")` of a string array, in Arrow (no Python string per line)."""
    if not len(lines):
        return b""
    ended = pa.concat_arrays([lines.cast(pa.string()), pa.array([""], pa.string())])
    whole = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(ended)], pa.int32()), ended), "\n")[0]
    return bytes(whole.as_buffer().to_pybytes())  # bytes() of bytes is the same object: no copy


#: One JSON document (a CloudWatch Logs payload) larger than this is one error, never held whole.
MAX_JSON_BYTES = 64 << 20

#: where a document may end and the next begin: `}`, optional whitespace, `{` (the `{` is not consumed)
_BOUNDARY = re.compile(rb"\}\s*(?=\{)")
#: after a document that never closed: also a line that starts with `{` (never inside a valid JSON string)
_RESYNC = re.compile(rb"(?:\}|\n)\s*(?=\{)")
_SPACE = re.compile(rb"\s*")
#: everything up to the next brace outside a string: plain bytes and whole strings, in one C-speed match
_SKIP = re.compile(rb'(?:[^{}"]+|"[^"\\\n]*(?:\\[^\n][^"\\\n]*)*")*')
#: the inside of a JSON string from where we are, up to its closing quote (a raw newline is never inside one)
_STRING_REST = re.compile(rb'[^"\\\n]*(?:\\[^\n][^"\\\n]*)*')


class Documents:
    """Splits a stream of concatenated JSON documents (`{..}{..}`, or one per line) into parsed ones.

    Linear in the stream and holding at most about one document plus the
    data fed: a candidate boundary (`}` `{`) is parsed once by orjson;
    only when that fails (a `}{` inside a string, a broken document) is the
    document walked structurally (strings and braces) from its start, with
    the walk's state kept across feeds, so nothing is parsed twice. A broken
    document (one broken off inside a string ends at that line), bytes between
    documents that are not one, and a document over `limit` bytes (walked to
    its end without being held) are each one `invalid_json` error in `errors`. A document still open at the end of the
    stream is one error, and what follows its start is split again at the
    next `}{` or line that starts with `{`, each piece a document or one error.
    """

    def __init__(self, limit: int = MAX_JSON_BYTES) -> None:
        self.limit = limit
        self.errors = ErrorCounts()
        self._buf = b""  # from the start of the current document (or the unread bytes)
        self._searched = 0  # no boundary before this offset of _buf
        self._junk = False  # skipping bytes that are not a document (already counted)
        self._walk: _Walk | None = None  # set while the current document is walked structurally
        self._dropped = False  # the current document is over `limit`: walked, not held

    def feed(self, data: bytes) -> list[object]:
        """Documents completed by `data`."""
        return self._drain(data, final=False)

    def close(self) -> list[object]:
        """The last documents, at the end of the stream; what never formed one is counted in `errors`."""
        docs = self._drain(b"", final=True)
        self._buf, self._searched, self._junk, self._walk, self._dropped = b"", 0, False, None, False
        return docs

    def take_errors(self) -> ErrorCounts:
        """The errors counted so far, leaving none."""
        errors, self.errors = self.errors, ErrorCounts()
        return errors

    def _error(self, why: str, buf: bytes | memoryview, at: int) -> None:
        sample = bytes(memoryview(buf)[at : at + 120]).decode("utf-8", "replace")
        self.errors.add(INVALID_JSON, 1, f"{why}: {sample}")

    def _drain(self, data: bytes, final: bool) -> list[object]:
        docs: list[object] = []
        buf = self._buf + data if self._buf else data
        pos = 0
        while True:
            if self._walk is not None:
                end = self._walk.run(buf)
                if end is None:  # still open at the end of what we have
                    if not final:
                        if len(buf) - pos > self.limit:
                            self._dropped = True
                        if self._dropped:
                            pos = len(buf)  # the walk goes on; the bytes are not kept
                        break
                    self._walk = None
                    if self._dropped:
                        self._error(f"document over {self.limit} bytes, never closed", buf, pos)
                    else:
                        self._error("document never closed", buf, pos)
                        docs.extend(self._resync(memoryview(buf)[pos + 1 :]))
                    pos = len(buf)
                    break
                broken, self._walk = self._walk.broken, None
                if self._dropped:
                    self._dropped = False
                    self._error(f"document over {self.limit} bytes", buf, pos)
                elif broken:
                    self._error("document broken off inside a string", buf, pos)
                else:
                    self._parse_one(memoryview(buf)[pos:end], docs)
                pos = self._searched = end
                continue
            # Between documents: whitespace, then `{` (anything else is one error, up to the next `{`).
            pos = _SPACE.match(buf, pos).end()  # type: ignore[union-attr]
            if pos == len(buf):
                break
            if buf[pos] != 0x7B:
                brace = buf.find(b"{", pos)
                if not self._junk:
                    self._error("not a JSON document", buf, pos)
                self._junk = brace < 0
                pos = len(buf) if brace < 0 else brace
                continue
            self._junk = False
            found = _BOUNDARY.search(buf, max(pos, self._searched))
            if found is not None or final:
                cut = len(buf) if found is None else found.end()
                if cut - pos > self.limit:  # too big to hold, however it came: walked to its end, one error
                    self._walk, self._dropped = _Walk(pos), True
                    continue
                try:
                    docs.append(orjson.loads(memoryview(buf)[pos:cut]))
                except orjson.JSONDecodeError:  # a boundary inside a string, or a broken document: walk it
                    self._walk = _Walk(pos)
                    continue
                pos = self._searched = cut
                continue
            # no boundary yet: wait for more, resuming the search at the last `}` we have
            self._searched = max(pos, buf.rfind(b"}", pos))
            if len(buf) - pos > self.limit:
                self._walk = _Walk(pos)
                continue
            break
        self._searched = max(0, self._searched - pos)
        if self._walk is not None:
            self._walk.at -= pos
        self._buf = buf[pos:] if pos < len(buf) else b""
        return docs

    def _parse_one(self, piece: memoryview, docs: list[object]) -> None:
        try:
            docs.append(orjson.loads(piece))
        except orjson.JSONDecodeError as exc:
            self._error(f"invalid JSON ({exc})", piece, 0)

    def _resync(self, rest: memoryview) -> list[object]:
        """After a document that never closed: each piece between the next boundaries, parsed or one error."""
        docs: list[object] = []
        starts = [m.end() for m in _RESYNC.finditer(rest)]
        if not starts:
            return docs
        for begin, end in zip(starts, [*starts[1:], len(rest)], strict=True):
            piece = rest[begin:end]
            if bytes(piece).strip():
                self._parse_one(piece, docs)
        return docs


class _Walk:
    """Where a structural walk of one document stands: offset, brace depth, inside a string, after a backslash.

    A raw newline inside a string is never valid JSON: it means the document
    broke off (truncated mid-string), so the walk stops there (`broken`) and
    the stream is read on from that line.
    """

    def __init__(self, at: int) -> None:
        self.at = at
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.broken = False

    def run(self, buf: bytes) -> int | None:
        """Walk on through `buf`; the offset just past the document's end (or where it broke), None if not there yet."""
        at, n = self.at, len(buf)
        while at < n:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                    if buf[at] == 0x0A:
                        return self._stop(at, broken=True)
                    at += 1
                    continue
                stop = _STRING_REST.match(buf, at).end()  # type: ignore[union-attr]
                if stop == n:
                    at = n
                    break
                if buf[stop] == 0x22:
                    at = stop + 1
                    self.in_string = False
                    continue
                if stop == n - 1 and buf[stop] == 0x5C:  # a backslash at the very end escapes what comes next
                    self.escaped = True
                    at = n
                    break
                return self._stop(stop, broken=True)  # a newline inside the string
            at = _SKIP.match(buf, at).end()  # type: ignore[union-attr]
            if at == n:
                break
            char = buf[at]
            at += 1
            if char == 0x22:  # a string that goes on past what we have, or breaks off
                self.in_string = True
            elif char == 0x7B:
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth <= 0:
                    return self._stop(at, broken=False)
        self.at = at
        return None

    def _stop(self, at: int, broken: bool) -> int:
        self.at, self.broken = at, broken
        return at


def document_lines(docs: list[object], errors: ErrorCounts) -> list[str]:
    """Flow-log lines of parsed documents: DATA_MESSAGE payloads' events, or `{"message": ...}` wrappers.

    CONTROL_MESSAGE payloads give nothing. The unit is the document: a payload
    of the wrong shape, or an event in it, is counted as an invalid payload;
    anything else as invalid JSON.
    """
    lines: list[str] = []
    for doc in docs:  # one per payload (a batch of events), not per record
        if isinstance(doc, dict) and "logEvents" in doc:
            try:
                _, events = _events(doc)
            except InvalidPayloadError as exc:
                errors.add(INVALID_PAYLOAD, 1, str(exc))
                continue
            for event in events:
                if isinstance(event, dict) and isinstance(event.get("message"), str):
                    lines.append(event["message"])
                else:
                    errors.add(INVALID_PAYLOAD, 1, orjson.dumps(event).decode()[:200])
        elif isinstance(doc, dict) and isinstance(doc.get("message"), str):
            lines.append(doc["message"])
        else:
            errors.add(INVALID_JSON, 1, orjson.dumps(doc).decode()[:200])
    return lines
