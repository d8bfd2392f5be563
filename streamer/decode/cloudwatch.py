"""CloudWatch Logs payloads -> flow-log lines.

A subscription filter delivers gzip-compressed JSON
(`messageType`, `logGroup`, `logStream`, `logEvents[{id,timestamp,message}]`);
Firehose/Lambda hand the same document around decoded, and some shippers
wrap each record as `{"message": "..."}` per line. All become plain lines
for the text decoder; JSON parsing is orjson's, one document at a time.
"""

from __future__ import annotations

import dataclasses

import orjson

from streamer.decode.errors import INVALID_JSON, ErrorCounts, UnknownFormatError


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


def json_lines(data: bytes, errors: ErrorCounts) -> list[str]:
    """Flow-log lines from a JSON object or NDJSON of `{"message": ...}` objects."""
    try:
        return parse_payload(data).lines
    except UnknownFormatError:
        pass
    lines: list[str] = []
    for raw in data.splitlines():  # rare wrapper format, not the main path
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            errors.add(INVALID_JSON, 1, raw.decode("utf-8", "replace"))
            continue
        if isinstance(obj, dict) and isinstance(obj.get("message"), str):
            lines.append(obj["message"])
        else:
            errors.add(INVALID_JSON, 1, raw.decode("utf-8", "replace"))
    return lines
