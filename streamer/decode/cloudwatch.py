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
import zlib

import orjson

from streamer.decode.errors import INVALID_JSON, DecodeError, ErrorCounts, UnknownFormatError
from streamer.decode.gzip import GZIP_MAGIC, gunzip_stream


@dataclasses.dataclass
class Payload:
    """What one CloudWatch Logs document carried."""

    message_type: str
    log_group: str
    log_stream: str
    event_ids: list[str]
    lines: list[str]


def parse_payload(document: bytes) -> Payload:
    """One subscription document (already gunzipped).

    CONTROL_MESSAGE documents come back with no lines. Raises
    UnknownFormatError when the bytes are not such a document.
    """
    try:
        doc = orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        raise UnknownFormatError(f"not a CloudWatch Logs payload: {exc}") from exc
    if not isinstance(doc, dict) or "logEvents" not in doc:
        raise UnknownFormatError("JSON document without logEvents")
    events = doc.get("logEvents") or []
    if doc.get("messageType", "DATA_MESSAGE") != "DATA_MESSAGE":
        events = []
    ids = [str(e.get("id", "")) for e in events if isinstance(e, dict)]
    lines = [str(e.get("message", "")) for e in events if isinstance(e, dict)]
    return Payload(
        message_type=str(doc.get("messageType", "DATA_MESSAGE")),
        log_group=str(doc.get("logGroup", "")),
        log_stream=str(doc.get("logStream", "")),
        event_ids=ids,
        lines=lines,
    )


def payload_lines(records: list[bytes]) -> tuple[list[str], int]:
    """Flow-log lines of subscription records (each a gzip'd, or plain, CloudWatch Logs document),
    and how many records were not such documents. CONTROL_MESSAGEs give no lines."""
    lines: list[str] = []
    bad = 0
    for data in records:
        try:
            document = b"".join(gunzip_stream([data])) if data[:2] == GZIP_MAGIC else data
            lines.extend(parse_payload(document).lines)
        except (OSError, EOFError, zlib.error, DecodeError):
            bad += 1
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

    CONTROL_MESSAGE payloads give nothing; anything else is counted as invalid JSON.
    """
    lines: list[str] = []
    for doc in docs:  # one per payload (a batch of events), not per record
        if isinstance(doc, dict) and "logEvents" in doc:
            if doc.get("messageType", "DATA_MESSAGE") == "DATA_MESSAGE":
                lines.extend(str(e.get("message", "")) for e in doc.get("logEvents") or [] if isinstance(e, dict))
        elif isinstance(doc, dict) and isinstance(doc.get("message"), str):
            lines.append(doc["message"])
        else:
            errors.add(INVALID_JSON, 1, orjson.dumps(doc).decode()[:200])
    return lines
