"""CloudWatch Logs payloads -> flow-log lines.

A subscription filter delivers gzip-compressed JSON
(`messageType`, `logGroup`, `logStream`, `logEvents[{id,timestamp,message}]`);
Firehose/Lambda hand the same document around decoded, and some shippers
wrap each record as `{"message": "..."}` per line. All become plain lines
for the text decoder; JSON parsing is orjson's, one document at a time.

Firehose writes such documents to S3 back to back: `{...}{...}` with no
separator, one per line, or (once gunzipped) one gzip member each.
`Documents` splits that stream: candidate boundaries (`}` then optional
whitespace then `{`) are found by a regex, and a candidate that does not
parse (a `}{` inside a string) is joined to the next one.
"""

from __future__ import annotations

import dataclasses
import re

import orjson

from streamer.decode.errors import (
    INVALID_JSON,
    INVALID_PAYLOAD,
    ErrorCounts,
    InvalidPayloadError,
    UnknownFormatError,
)
from streamer.decode.gzip import GZIP_MAGIC, gunzip_stream


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


def payload_lines(records: list[bytes]) -> tuple[list[str], int]:
    """Flow-log lines of subscription records (each a gzip'd, or plain, CloudWatch Logs document),
    and how many records (or events in them) were not such documents. CONTROL_MESSAGEs give no lines.

    The unit is the record: whatever one raises, it alone is skipped.
    """
    lines: list[str] = []
    bad = 0
    for data in records:
        try:
            document = b"".join(gunzip_stream([data])) if data[:2] == GZIP_MAGIC else data
            payload = parse_payload(document)
        except Exception:  # any record that is not a payload, however it fails, is one bad record
            bad += 1
            continue
        lines.extend(payload.lines)
        bad += payload.bad_events
    return lines, bad


_BOUNDARY = re.compile(rb"\}\s*(?=\{)")


class Documents:
    """Splits a stream of concatenated JSON documents into whole ones, a buffer at a time."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes, final: bool = False) -> tuple[list[object], bytes]:
        """Whole documents parsed so far, and (when `final`) bytes that never formed one."""
        buf = self._rest + data
        cuts = [m.end() for m in _BOUNDARY.finditer(buf)]
        pieces, start = [], 0
        for cut in cuts:
            pieces.append(buf[start:cut])
            start = cut
        tail = buf[start:]
        if final:
            pieces.append(tail)
            tail = b""
        docs: list[object] = []
        pending = b""
        for piece in pieces:
            pending += piece
            try:
                docs.append(orjson.loads(pending))
                pending = b""
            except orjson.JSONDecodeError:
                continue  # a boundary inside a string, or an incomplete document: join the next piece
        self._rest = pending + tail
        if final:
            rest, self._rest = self._rest, b""
            return docs, rest
        return docs, b""


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
