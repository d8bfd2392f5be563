"""Space-separated flow-log text -> Arrow tables, vectorized.

Chunks of whole lines are parsed by Arrow's multi-threaded CSV reader with
explicit types, converting only the columns a consumer asked for (address
strings are the expensive part). The fast path has no per-record Python.

Bad lines take a slower path that is still vectorized per chunk:
- wrong field count: Arrow hands each such row to a callback; rows that only
  suffer from runs of spaces (seen in AWS's own doc examples) are repaired,
  the rest counted;
- undecodable bytes: the lines holding them are cut out of the chunk;
- non-numeric values in numeric fields: the chunk is re-read as strings and
  validated with a vectorized regex, bad rows dropped and counted.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from streamer.decode.errors import INVALID_NUMBER, INVALID_UTF8, WRONG_FIELD_COUNT, ErrorCounts
from streamer.schema import DICTIONARY_FIELDS, FIELDS, MILLISECONDS_THRESHOLD, arrow_schema

#: One CSV block per chunk keeps each dictionary column in one piece, so
#: group-bys need no dictionary unification.
_BLOCK_BYTES = 32 << 20
_DICT = pa.dictionary(pa.int32(), pa.string())
_NUMBER = r"^[0-9]{1,18}$"  # int64-safe; flow-log numbers are never negative
_UNDECODABLE = re.compile("[\udc80-\udcff]")


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
        self.columns = tuple(f for f in fields if f in wanted)
        self.schema = arrow_schema(self.columns)
        self._header = header_line.rstrip(b"\r\n") if header_line else None
        self._read = pcsv.ReadOptions(column_names=list(fields), use_threads=use_threads, block_size=_BLOCK_BYTES)
        self._typed = pcsv.ConvertOptions(
            include_columns=list(self.columns),
            column_types={f: _DICT if f in DICTIONARY_FIELDS else FIELDS[f].type for f in self.columns},
            null_values=["-"],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        self._as_text = pcsv.ConvertOptions(
            include_columns=list(self.columns),
            column_types={f: pa.string() for f in self.columns},
            null_values=["-"],
            strings_can_be_null=True,
        )

    def decode(self, chunk: bytes, errors: ErrorCounts) -> pa.Table:
        """Records of `chunk` (whole lines); bad lines are counted in `errors`.

        Low-cardinality string columns may come back dictionary-encoded; their
        values are the catalogue's strings either way.
        """
        if self._header is not None and self._header in chunk:
            chunk = _drop_lines(chunk, self._header)
        if not chunk.isascii():
            chunk = _drop_undecodable_lines(chunk, errors)
        bad_rows: list[str] = []
        try:
            table = self._parse(chunk, self._typed, bad_rows)
        except pa.ArrowInvalid:
            bad_rows.clear()
            table = self._parse_checked(chunk, errors, bad_rows)
        if bad_rows:
            repaired = self._repair(bad_rows, errors)
            if repaired is not None:
                table = pa.concat_tables([table.cast(self.schema), repaired])
        return _normalize_times(table)

    def empty(self) -> pa.Table:
        return self.schema.empty_table()

    def _parse(self, chunk: bytes, convert: pcsv.ConvertOptions, bad_rows: list[str]) -> pa.Table:
        if not chunk:
            return self.empty() if convert is self._typed else self._as_text_empty()

        def on_invalid(row: pcsv.InvalidRow) -> str:
            bad_rows.append(row.text)
            return "skip"

        parse = pcsv.ParseOptions(delimiter=" ", quote_char=False, invalid_row_handler=on_invalid)
        return pcsv.read_csv(pa.py_buffer(chunk), read_options=self._read, parse_options=parse, convert_options=convert)

    def _as_text_empty(self) -> pa.Table:
        return pa.schema([pa.field(f, pa.string()) for f in self.columns]).empty_table()

    def _parse_checked(self, chunk: bytes, errors: ErrorCounts, bad_rows: list[str]) -> pa.Table:
        """Read as strings, drop rows with non-numeric numbers, then cast."""
        table = self._parse(chunk, self._as_text, bad_rows)
        numeric = [f for f in self.columns if FIELDS[f].numeric]
        if numeric and table.num_rows:
            ok = None
            for name in numeric:
                col = table.column(name)
                valid = pc.or_kleene(pc.is_null(col), pc.match_substring_regex(col, _NUMBER))
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
        for text in bad_rows:  # only rows Arrow rejected: not the main path
            tokens = text.split()
            if len(tokens) == len(self.fields):
                fixed.append(" ".join(tokens))
            elif tokens:
                errors.add(WRONG_FIELD_COUNT, 1, text)
        if not fixed:
            return None
        leftovers: list[str] = []
        table = self._parse_checked(("\n".join(fixed) + "\n").encode(), errors, leftovers)
        for text in leftovers:
            errors.add(WRONG_FIELD_COUNT, 1, text)
        return table


def _drop_lines(chunk: bytes, line: bytes) -> bytes:
    """Remove every line equal to `line` (repeated header lines)."""
    if chunk.startswith(line + b"\n") or chunk.startswith(line + b"\r\n"):
        chunk = chunk[chunk.index(b"\n") + 1 :]
    return chunk.replace(b"\n" + line + b"\r\n", b"\n").replace(b"\n" + line + b"\n", b"\n")


def _drop_undecodable_lines(chunk: bytes, errors: ErrorCounts) -> bytes:
    """Cut out lines that are not valid UTF-8, counting each once.

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
