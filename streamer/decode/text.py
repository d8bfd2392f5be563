"""Space-separated flow-log text -> Arrow tables, vectorized.

Clean chunks (every line has the layout's field count, numbers are digits)
go through a small native tokenizer (`_scan.c`) that converts only the
columns a consumer asked for and steps over the rest; it hands Arrow its
buffers without copies. Any other chunk, or every chunk where the native
part was not built (or STREAMER_NATIVE=0), is parsed by Arrow's CSV reader
with explicit types. Both give the same table for a clean chunk, record
for record (tests/unit/decode/test_native.py). Neither has per-record Python.

Bad lines take a slower path that is still vectorized per chunk:
- wrong field count: Arrow hands each such row to a callback; rows that only
  suffer from runs of spaces (seen in AWS's own doc examples) are repaired,
  the rest counted;
- undecodable bytes: the lines holding them are cut out of the chunk;
- non-numeric values in numeric fields: the chunk is re-read as strings and
  validated with a vectorized regex, bad rows dropped and counted.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Collection, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from streamer.decode.bounds import drop_impossible_counts
from streamer.decode.errors import INVALID_NUMBER, INVALID_UTF8, WRONG_FIELD_COUNT, ErrorCounts
from streamer.decode.tgw import ATTACHMENT, attachment_as_interface, needs_attachment
from streamer.schema import DICTIONARY_FIELDS, MILLISECONDS_THRESHOLD, TAG_FIELDS, arrow_schema, field

#: One CSV block per chunk keeps each dictionary column in one piece, so
#: group-bys need no dictionary unification.
_BLOCK_BYTES = 32 << 20
_DICT = pa.dictionary(pa.int32(), pa.string())
_NUMBER = r"^[0-9]{1,18}$"  # int64-safe; flow-log numbers are never negative
_INT32_MAX = 2**31 - 1
#: undecodable bytes (as surrogate escapes), and NUL, which no text column can hold (PostgreSQL refuses it)
_UNDECODABLE = re.compile("[\udc80-\udcff\x00]")

try:
    from streamer.decode import _scan
except ImportError:  # built without a C compiler: Arrow alone
    _scan = None  # type: ignore[assignment]

#: Whether clean chunks take the native tokenizer (STREAMER_NATIVE=0 turns it off, e.g. to compare).
NATIVE = _scan is not None and os.environ.get("STREAMER_NATIVE", "1") != "0"
_SKIP, _INTEGER, _STRING, _DICTIONARY, _INT32 = 0, 1, 2, 3, 4
#: a build that parses int32 fields itself (kind 4): no int64 column to cast and range-check afterwards
_NATIVE_INT32 = getattr(_scan, "VERSION", 1) >= 2
_MAX_PARTS = 64  # as in _scan.c
#: stands for a space inside a tag value while a repaired row is re-read as space-separated text
_SPACE_HELD = "\x1f"


#: A chunk as the buffers it was cut into (each ends a line but maybe the last), joined only if needed.
Parts = tuple[bytes | memoryview, ...]


def join(chunk: bytes | Parts) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    return chunk[0] if len(chunk) == 1 and isinstance(chunk[0], bytes) else b"".join(chunk)


#: Rows with the wrong field count held as a Python string each, at most (per chunk). Past this they are
#: packed into one string per this many: a chunk of millions of tiny bad lines (a payload of one-byte
#: events) never becomes millions of Python strings (about 20x the chunk), and every row is still
#: repaired (a v11 tag value with a space may be on every line).
MAX_KEPT_BAD_ROWS = 10_000


class BadRows:
    """The text of rows Arrow rejected, in batches of at most MAX_KEPT_BAD_ROWS; all but the last packed
    into one string each. Arrow may call `keep` from its reading threads."""

    def __init__(self) -> None:
        self._rows: list[str] = []
        self._packed: list[str] = []
        self._lock = threading.Lock()

    def keep(self, text: str) -> None:
        with self._lock:
            self._rows.append(text)
            if len(self._rows) >= MAX_KEPT_BAD_ROWS:
                self._packed.append("\n".join(self._rows))  # a row never holds a newline
                self._rows = []

    def __bool__(self) -> bool:
        return bool(self._rows or self._packed)

    def batches(self) -> Iterator[list[str]]:
        """The rows, at most MAX_KEPT_BAD_ROWS at a time."""
        for packed in self._packed:
            yield packed.split("\n")
        if self._rows:
            yield self._rows

    def __iter__(self) -> Iterator[str]:
        for batch in self.batches():
            yield from batch


class TextDecoder:
    """Decodes chunks of complete lines that follow one field layout."""

    def __init__(
        self,
        fields: tuple[str, ...],
        columns: Collection[str] | None = None,
        header_line: bytes | None = None,
        use_threads: bool = False,
    ) -> None:
        self.fields = fields
        wanted = set(fields) if columns is None else set(columns)
        #: Transit Gateway logs: the attachment stands in for the interface (read even when not asked for)
        self._tgw = needs_attachment(fields, columns)
        self._keep_attachment = ATTACHMENT in wanted
        if self._tgw:
            wanted.add(ATTACHMENT)
        self.columns = tuple(f for f in fields if f in wanted)
        tags = [i for i, f in enumerate(fields) if f in TAG_FIELDS]
        #: where the EC2 tag fields sit (first, last): values with spaces are fitted there (`_fit_tags`)
        self._tag_span = (tags[0], tags[-1]) if tags else None
        self.schema = arrow_schema(self.columns)
        self._header = header_line.rstrip(b"\r\n") if header_line else None
        self._read = pcsv.ReadOptions(column_names=list(fields), use_threads=use_threads, block_size=_BLOCK_BYTES)
        self._typed = pcsv.ConvertOptions(
            include_columns=list(self.columns),
            column_types={f: _DICT if f in DICTIONARY_FIELDS else field(f).type for f in self.columns},
            null_values=["-"],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        self._kinds = bytes(
            _SKIP
            if f not in wanted
            else _INT32
            if field(f).type == pa.int32() and _NATIVE_INT32
            else _INTEGER
            if field(f).numeric
            else _DICTIONARY
            if f in DICTIONARY_FIELDS
            else _STRING
            for f in fields
        )
        self._wanted_kinds = [k for k in self._kinds if k != _SKIP]  # in `self.columns` order
        self.native = NATIVE
        self._as_text = pcsv.ConvertOptions(
            include_columns=list(self.columns),
            column_types={f: pa.string() for f in self.columns},
            null_values=["-"],
            strings_can_be_null=True,
        )

    def decode(self, chunk: bytes | Parts, errors: ErrorCounts) -> pa.Table:
        """Records of `chunk` (whole lines, maybe as its parts); bad lines are counted in `errors`.

        Low-cardinality string columns may come back dictionary-encoded; their
        values are the catalogue's strings either way.
        """
        if self.native:
            scanned = self._scan(chunk)
            if scanned is not None:
                return self._finish(scanned, errors)
        chunk = join(chunk)
        if self._header is not None and self._header in chunk:
            chunk = _drop_lines(chunk, self._header)
        if not chunk.isascii() or b"\x00" in chunk:
            chunk = _drop_undecodable_lines(chunk, errors)
        bad_rows = BadRows()
        try:
            table = self._parse(chunk, self._typed, bad_rows)
        except pa.ArrowInvalid:
            bad_rows = BadRows()
            table = self._parse_checked(chunk, errors, bad_rows)
        if bad_rows:
            repaired = [r for batch in bad_rows.batches() if (r := self._repair(batch, errors)) is not None]
            if repaired:
                table = pa.concat_tables([table.cast(self.schema), *repaired])
        return self._finish(table, errors)

    def _finish(self, table: pa.Table, errors: ErrorCounts) -> pa.Table:
        table = drop_impossible_counts(_normalize_times(table), errors)
        return attachment_as_interface(table, self._keep_attachment) if self._tgw else table

    def _scan(self, chunk: bytes | Parts) -> pa.Table | None:
        """The native tokenizer's table, or None when the chunk needs Arrow's slower, forgiving path."""
        if isinstance(chunk, tuple) and len(chunk) > _MAX_PARTS:  # many small pieces (plain-text objects)
            chunk = join(chunk)
        got = _scan.scan(chunk, self._kinds, self._header or b"")
        if got is None or got[0] == 0:
            return None
        rows, cols = got
        arrays: list[pa.Array] = []
        try:
            for name, kind, (nulls, bitmap, *buffers) in zip(self.columns, self._wanted_kinds, cols, strict=True):
                validity = None if bitmap is None else pa.py_buffer(bitmap)
                target = field(name).type
                if field(name).numeric:  # buffers: int32 values (kind 4) or int64 ones
                    width = pa.int32() if kind == _INT32 else pa.int64()
                    arr = pa.Array.from_buffers(width, rows, [validity, pa.py_buffer(buffers[0])], nulls)
                    arrays.append(arr if target == width else arr.cast(target))  # out of int32 range: Arrow's path
                elif len(buffers) == 2:  # offsets, data
                    arrays.append(pa.Array.from_buffers(pa.string(), rows, [validity, *map(pa.py_buffer, buffers)], nulls))
                else:  # codes, the dictionary's offsets and data
                    codes, offsets, data = buffers
                    values = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
                    words = pa.Array.from_buffers(pa.string(), len(offsets) // 4 - 1, values)
                    indices = pa.Array.from_buffers(pa.int32(), rows, [validity, pa.py_buffer(codes)], nulls)
                    arrays.append(pa.DictionaryArray.from_arrays(indices, words))
        except pa.ArrowInvalid:
            return None
        return pa.Table.from_arrays(arrays, names=list(self.columns))

    def empty(self) -> pa.Table:
        table = self.schema.empty_table()
        return attachment_as_interface(table, self._keep_attachment) if self._tgw else table

    def _parse(self, chunk: bytes, convert: pcsv.ConvertOptions, bad_rows: BadRows) -> pa.Table:
        if not chunk:
            return self.empty() if convert is self._typed else self._as_text_empty()

        def on_invalid(row: pcsv.InvalidRow) -> str:
            bad_rows.keep(row.text)
            return "skip"

        parse = pcsv.ParseOptions(delimiter=" ", quote_char=False, invalid_row_handler=on_invalid)
        return pcsv.read_csv(pa.py_buffer(chunk), read_options=self._read, parse_options=parse, convert_options=convert)

    def _as_text_empty(self) -> pa.Table:
        return pa.schema([pa.field(f, pa.string()) for f in self.columns]).empty_table()

    def _parse_checked(self, chunk: bytes, errors: ErrorCounts, bad_rows: BadRows) -> pa.Table:
        """Read as strings, drop rows with non-numeric numbers, then cast."""
        table = self._parse(chunk, self._as_text, bad_rows)
        numeric = [f for f in self.columns if field(f).numeric]
        if numeric and table.num_rows:
            ok = None
            for name in numeric:
                col = table.column(name)
                digits = pc.fill_null(pc.match_substring_regex(col, _NUMBER), False)
                if field(name).type != pa.int64():  # 18 digits fit int64, not int32: compare the value too
                    value = pc.cast(pc.if_else(digits, col, "0"), pa.int64())
                    digits = pc.and_(digits, pc.less_equal(value, _INT32_MAX))
                valid = pc.or_(pc.is_null(col), digits)
                ok = valid if ok is None else pc.and_(ok, valid)
            assert ok is not None
            bad = table.num_rows - pc.sum(ok).as_py() if table.num_rows else 0
            if bad:
                example = _first_row_text(table.filter(pc.invert(ok)))
                errors.add(INVALID_NUMBER, bad, example)
                table = table.filter(ok)
        return table.cast(self.schema)

    def _repair(self, bad_rows: list[str], errors: ErrorCounts) -> pa.Table | None:
        """Rows with the wrong field count: fix whitespace runs, count the rest."""
        fixed: list[str] = []
        spaced = False
        wrong, example = 0, None
        width = len(self.fields)
        shortest = 2 * width - 1  # a token and a separator per field
        for text in bad_rows:  # only rows Arrow rejected: not the main path
            if len(text) < shortest:  # too short for every field: not split (it may be millions of them)
                if not text.isspace():
                    wrong += 1
                    example = example or text
                continue
            tokens = text.split()
            if len(tokens) > width and (fitted := self._fit_tags(tokens)) is not None:
                tokens, spaced = fitted, True
            if len(tokens) == width:
                fixed.append(" ".join(tokens))
            elif tokens:
                wrong += 1  # counted at once: a batch may be thousands of one-byte lines
                example = example or text
        errors.add(WRONG_FIELD_COUNT, wrong, example)
        if not fixed:
            return None
        leftovers = BadRows()
        table = self._parse_checked(("\n".join(fixed) + "\n").encode(), errors, leftovers)
        for text in leftovers:
            errors.add(WRONG_FIELD_COUNT, 1, text)
        if spaced:
            for i, name in enumerate(table.column_names):
                if name in TAG_FIELDS:
                    table = table.set_column(i, name, pc.replace_substring(table.column(i), _SPACE_HELD, " "))
        return table

    def _fit_tags(self, tokens: list[str]) -> list[str] | None:
        """A record whose EC2 tag value holds spaces, as one token per field; None if it cannot be told.

        AWS writes a tag's value as it is (spaces included: nothing we could read says it escapes them),
        so the extra tokens belong to the tag fields. Every field before the first tag field and after
        the last one still sits at its place. With one tag field, the extra tokens are its value; with
        several side by side, which one holds the spaces cannot be told, so they are all unknown ("-"):
        the record still counts. Tag fields with other fields between them: not repaired.
        """
        if self._tag_span is None:
            return None
        first, last = self._tag_span
        after = len(self.fields) - last - 1
        head, middle, tail = tokens[:first], tokens[first : len(tokens) - after], tokens[len(tokens) - after :]
        if first == last:
            return [*head, _SPACE_HELD.join(middle), *tail]
        if all(f in TAG_FIELDS for f in self.fields[first : last + 1]):
            return [*head, *["-"] * (last - first + 1), *tail]
        return None


def _drop_lines(chunk: bytes, line: bytes) -> bytes:
    """Remove every line equal to `line` (repeated header lines)."""
    if chunk.startswith(line + b"\n") or chunk.startswith(line + b"\r\n"):
        chunk = chunk[chunk.index(b"\n") + 1 :]
    return chunk.replace(b"\n" + line + b"\r\n", b"\n").replace(b"\n" + line + b"\n", b"\n")


def _drop_undecodable_lines(chunk: bytes, errors: ErrorCounts) -> bytes:
    """Cut out lines that are not valid UTF-8 or hold a NUL byte, counting each once (as invalid_utf8).

    surrogateescape maps each undecodable byte to a lone surrogate, which a
    C-speed regex then finds; valid text (even a literal U+FFFD) is kept.
    """
    text = chunk.decode("utf-8", "surrogateescape")
    if _UNDECODABLE.search(text) is None:
        return chunk
    parts: list[str] = []
    pos = 0
    while (match := _UNDECODABLE.search(text, pos)) is not None:
        start = text.rfind("\n", 0, match.start()) + 1
        end = text.find("\n", match.start())
        end = len(text) if end == -1 else end + 1
        parts.append(text[pos:start])
        errors.add(INVALID_UTF8, 1, text[start:end].rstrip("\n").encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        pos = end
    parts.append(text[pos:])
    return "".join(parts).encode()


def _first_row_text(table: pa.Table) -> str:
    row = table.slice(0, 1).to_pylist()[0]
    return " ".join("-" if v is None else str(v) for v in row.values())


def _normalize_times(table: pa.Table) -> pa.Table:
    """Epoch milliseconds (seen in the wild) become seconds like everything else."""
    for name in ("start", "end"):
        if name in table.column_names and table.num_rows:
            col = table.column(name)
            if (pc.max(col).as_py() or 0) > MILLISECONDS_THRESHOLD:
                big = pc.greater(col, MILLISECONDS_THRESHOLD)
                fixed = pc.if_else(big, pc.divide(col, 1000), col)
                table = table.set_column(table.column_names.index(name), name, fixed)
    return table
