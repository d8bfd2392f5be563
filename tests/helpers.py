"""Test helpers that go through the real decode path (no shortcuts)."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from streamer.decode.errors import ErrorCounts
from streamer.decode.objects import ObjectReader
from streamer.ingest import Ingestor
from streamer.schema import FIELDS, parse_log_format


def decode_bytes(
    data: bytes | list[bytes], log_format: str | None = None, columns: Any = None, chunk_bytes: int = 1 << 16
) -> tuple[list[dict[str, Any]], ErrorCounts, Any]:
    """Rows (AWS names), line errors and the object-level failure for one object."""
    reader = ObjectReader(
        log_format=parse_log_format(log_format) if log_format else None, columns=columns, chunk_bytes=chunk_bytes
    )
    tables: list[pa.Table] = []
    with ThreadPoolExecutor(2) as pool:
        result = Ingestor(reader, lambda t: t, pool).run([data] if isinstance(data, bytes) else data, tables.append)
    rows = [row for table in tables for row in table.to_pylist()]
    return rows, result.errors, result.failure


def decode_path(path: Path, log_format: str | None = None) -> tuple[list[dict[str, Any]], ErrorCounts, Any]:
    return decode_bytes(path.read_bytes(), log_format)


def typed(name: str, value: Any) -> Any:
    """A value as we decode it: '-' is None, numeric fields are ints."""
    if value is None or value == "-":
        return None
    if FIELDS[name].numeric:
        return int(value)
    return str(value)


def epoch(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def hyphen(key: str) -> str:
    return key.replace("_", "-")
