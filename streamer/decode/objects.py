"""One object's bytes -> units of decoding work.

An object is a file, an S3 object or a payload. Its format is sniffed from
its first bytes (gzip, Parquet, JSON, else text); text takes its field order
from a header line when it has one, else from the configured LogFormat,
else the v2 default. Text is split into chunks of whole lines, and a JSON
stream (CloudWatch Logs payloads back to back) into whole documents, never
at newlines, so that memory stays bounded whatever the object's size; each
chunk becomes a *unit*: a callable that decodes it, safe to run on a worker
thread.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from itertools import chain

import pyarrow as pa

from streamer.decode.cloudwatch import MAX_JSON_BYTES, Documents, document_lines
from streamer.decode.errors import ErrorCounts, UnknownFormatError
from streamer.decode.gzip import GZIP_MAGIC, gunzip_stream
from streamer.decode.parquet import PARQUET_MAGIC, iter_parquet, parquet_fields
from streamer.decode.text import Parts, TextDecoder, join
from streamer.schema import DEFAULT_FIELDS, FIELDS, header_fields, unknown

#: Target size of one chunk of text handed to the parser.
CHUNK_BYTES = 4 << 20
#: A text "line" longer than this without a newline is cut (it is garbage anyway). JSON is never cut.
MAX_LINE_BYTES = 1 << 20

#: Enough leading bytes to tell gzip and Parquet magic numbers apart.
_SNIFF_BYTES = 4

Unit = Callable[[ErrorCounts], pa.Table]
#: the columns wanted: a set, or a choice by an object's fields (some signal reads a column only on some formats)
Columns = Collection[str] | Callable[[tuple[str, ...]], Collection[str]]


@dataclasses.dataclass(frozen=True)
class ObjectReader:
    """How to read objects: the LogFormat for headerless text, the columns wanted."""

    log_format: tuple[str, ...] | None = None
    columns: Columns | None = None
    chunk_bytes: int = CHUNK_BYTES
    use_threads: bool = False  # parallelism comes from the ingest pool; nesting it oversubscribes
    #: input never has a header line (CloudWatch events): use log_format as is
    headerless: bool = False

    def units(self, raw: Iterable[bytes]) -> Iterator[Unit]:
        """Decoding units for an object given as raw (maybe compressed) chunks.

        Raises a DecodeError subclass when the object as a whole is unusable;
        units already yielded stay valid (callers discard them on error).
        Headerless input is never sniffed: its lines are event messages already
        taken out of JSON, so one that looks like JSON, gzip or Parquet is one bad line.
        """
        stream = iter(raw)
        if self.headerless:
            yield from self._line_units(stream)
            return
        first = _head(stream, _SNIFF_BYTES)
        if not first:
            return
        if first.startswith(PARQUET_MAGIC):
            yield from self._parquet_units(chain([first], stream))
            return
        pieces: Iterator[bytes] = chain([first], stream)
        if first.startswith(GZIP_MAGIC):
            pieces = gunzip_stream(pieces)
            inner = _head(pieces, _SNIFF_BYTES)
            pieces = chain([inner], pieces)
            if inner.startswith(GZIP_MAGIC):  # Firehose compression over CloudWatch's own gzip: twice
                pieces = gunzip_stream(pieces)
        yield from self._text_units(pieces)

    def _text_units(self, pieces: Iterator[bytes]) -> Iterator[Unit]:
        # Sniffed before any cutting at newlines: a JSON stream is split into documents, never into lines.
        head = _first_nonblank(pieces)
        if head is None:
            return
        stripped = head.lstrip()
        if stripped.startswith(b"{"):
            yield from self._json_units(chain([head], pieces))
            return
        yield from self._line_units(chain([head], pieces))

    def _line_units(self, pieces: Iterator[bytes]) -> Iterator[Unit]:
        # Chunks stay as their parts here: the decode worker joins them, not the thread that inflates.
        chunks = line_parts(pieces, self.chunk_bytes)
        first = _first_nonempty(chunks)
        if first is None:
            return
        if self.headerless:  # lines that came out of JSON: never a file, never a header
            decoder = self.decoder()
        else:
            # Only the head of the first chunk is looked at (and copied): joining or stripping all of it would
            # cost two or three copies of a chunk per object on this thread, most of a small object's time.
            if _looks_binary(_prefix(first, 4096)):
                raise UnknownFormatError("binary data that is neither gzip nor Parquet")
            decoder = self._decoder_for(_first_line(first))
        strangers = set(unknown(decoder.fields))
        for chunk in chain([first], chunks):
            yield _text_unit(decoder, chunk, strangers)

    def _decoder_for(self, first_line: bytes) -> TextDecoder:
        fields = header_fields(first_line.decode("utf-8", "replace"))
        if fields is not None:
            return TextDecoder(fields, self.wanted(fields), header_line=first_line, use_threads=self.use_threads)
        fields = self.log_format or DEFAULT_FIELDS
        return TextDecoder(fields, self.wanted(fields), header_line=" ".join(fields).encode(), use_threads=self.use_threads)

    def decoder(self, fields: tuple[str, ...] | None = None) -> TextDecoder:
        """A text decoder for headerless lines (CloudWatch events)."""
        fields = fields or self.log_format or DEFAULT_FIELDS
        return TextDecoder(fields, self.wanted(fields), use_threads=self.use_threads)

    def wanted(self, fields: tuple[str, ...]) -> Collection[str] | None:
        """The columns to decode from an object with `fields`."""
        return self.columns(fields) if callable(self.columns) else self.columns

    def _json_units(self, pieces: Iterator[bytes]) -> Iterator[Unit]:
        """CloudWatch Logs payloads: one, or many back to back (Firehose), a unit per few MB of documents.

        Documents are found across piece boundaries; memory is about one
        chunk plus the largest document (a larger one is an error, skipped).
        """
        decoder = self.decoder()
        strangers = set(unknown(decoder.fields))
        documents = Documents(MAX_JSON_BYTES)
        held = 0
        parts: list[bytes] = []
        for piece in pieces:
            parts.append(piece)
            held += len(piece)
            if held < self.chunk_bytes:
                continue
            docs = documents.feed(b"".join(parts))
            parts, held = [], 0
            if docs:
                yield _json_unit(decoder, docs, documents.take_errors(), strangers)
        docs = documents.feed(b"".join(parts)) + documents.close()
        yield _json_unit(decoder, docs, documents.take_errors(), strangers)

    def _parquet_units(self, raw: Iterator[bytes]) -> Iterator[Unit]:
        with tempfile.SpooledTemporaryFile(max_size=32 << 20) as spool:
            for piece in raw:
                spool.write(piece)
            spool.seek(0)
            pfile, fields = parquet_fields(spool)  # type: ignore[arg-type]
            if not any(f in FIELDS for f in fields):
                raise UnknownFormatError("Parquet file has no flow-log columns")
            strangers = set(unknown(fields))
            errors = ErrorCounts(unknown_fields=set(strangers))
            for table in iter_parquet(pfile, fields, self.wanted(fields), errors):
                yield _ready_unit(table, errors)
                errors = ErrorCounts(unknown_fields=set(strangers))


def _json_unit(decoder: TextDecoder, docs: list[object], found: ErrorCounts, strangers: set[str]) -> Unit:
    def unit(errors: ErrorCounts) -> pa.Table:
        errors.merge(found)
        errors.unknown_fields |= strangers
        lines = document_lines(docs, errors)
        return decoder.decode(("\n".join(lines) + "\n").encode() if lines else b"", errors)

    return unit


def _text_unit(decoder: TextDecoder, chunk: bytes | Parts, strangers: set[str]) -> Unit:
    def unit(errors: ErrorCounts) -> pa.Table:
        errors.unknown_fields |= strangers
        return decoder.decode(chunk, errors)

    return unit


def _ready_unit(table: pa.Table, found: ErrorCounts) -> Unit:
    def unit(errors: ErrorCounts) -> pa.Table:
        errors.merge(found)
        return table

    return unit


_CONTROL_BYTES = [bytes([c]) for c in (*range(0, 9), *range(14, 32))]


def _looks_binary(sample: bytes) -> bool:
    """More than 5% control bytes: not text (a stray one is just a bad line)."""
    controls = sum(sample.count(c) for c in _CONTROL_BYTES)
    return controls * 20 > len(sample)


def _head(stream: Iterator[bytes], size: int) -> bytes:
    """At least `size` bytes from the start of the stream (less only at its end)."""
    parts: list[bytes] = []
    held = 0
    for piece in stream:
        parts.append(piece)
        held += len(piece)
        if held >= size:
            break
    return b"".join(parts)


def _first_nonblank(stream: Iterator[bytes]) -> bytes | None:
    """The first piece holding more than whitespace (leading blank pieces mean nothing to any format)."""
    for piece in stream:
        if piece.strip():
            return piece
    return None


def _first_nonempty(stream: Iterator[bytes | Parts]) -> bytes | Parts | None:
    for piece in stream:
        if _size(piece):
            return piece
    return None


def _size(chunk: bytes | Parts) -> int:
    return len(chunk) if isinstance(chunk, bytes) else sum(len(p) for p in chunk)


def _prefix(chunk: bytes | Parts, size: int) -> bytes:
    """The first `size` bytes of a chunk (all of it when shorter), copying no more than that."""
    if isinstance(chunk, bytes):
        return chunk[:size]
    out: list[bytes] = []
    for part in chunk:
        if size <= 0:
            break
        out.append(bytes(part[:size]))
        size -= len(out[-1])
    return b"".join(out)


def _first_line(chunk: bytes | Parts) -> bytes:
    """`join(chunk).lstrip().split(b"\\n", 1)[0]`, reading only as far as that line ends."""
    total = _size(chunk)
    size = 4096
    while True:
        head = _prefix(chunk, size).lstrip()
        if b"\n" in head or size >= total:
            return head.split(b"\n", 1)[0]
        size *= 4


def line_chunks(pieces: Iterable[bytes], size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Re-cut a byte stream into chunks of at least `size` bytes ending at a newline."""
    return (join(parts) for parts in line_parts(pieces, size))


def line_parts(pieces: Iterable[bytes], size: int = CHUNK_BYTES) -> Iterator[bytes | Parts]:
    """`line_chunks` without the join: each chunk as parts that each end a line.

    Only a line that spans two pieces is copied; the rest of each piece is
    passed on as a view. So the thread that inflates copies next to nothing,
    and the native tokenizer reads the parts where they lie (Arrow's path
    joins them, on a worker).
    """
    parts: list[bytes | memoryview] = []
    held = 0
    carry = b""
    for piece in pieces:
        last = piece.rfind(b"\n")
        if last < 0:
            carry += piece
            if len(carry) > MAX_LINE_BYTES:  # far too long without a newline: hand it on, it fails as a line
                parts.append(carry + b"\n")
                held += len(carry)
                carry = b""
        else:
            begin = 0
            if carry:
                begin = piece.find(b"\n") + 1
                parts.append(carry + piece[:begin])
                held += len(carry) + begin
            end = last + 1
            if end > begin:
                parts.append(piece if begin == 0 and end == len(piece) else memoryview(piece)[begin:end])
                held += end - begin
            carry = piece[end:]
        if held >= size:
            yield parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else tuple(parts)
            parts, held = [], 0
    if carry.strip():
        parts.append(carry + b"\n")
    if parts:
        yield parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else tuple(parts)
