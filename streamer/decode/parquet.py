"""Parquet flow-log objects -> Arrow tables with the catalogue's types.

AWS writes underscore column names and typed columns; files written by other
tools (pandas) may carry ports as strings, 'None' for missing values or an
int64 account id, so every column is coerced to the catalogue type, with
unconvertible values dropped and counted like bad text lines. A column of a
kind no value of which fits (a list, a struct) fails the file as
`unsupported_column`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc

from streamer.decode.bounds import drop_impossible_counts
from streamer.decode.errors import INVALID_NUMBER, ErrorCounts, UnknownFormatError, UnsupportedColumnError
from streamer.decode.tgw import ATTACHMENT, attachment_as_interface, needs_attachment
from streamer.schema import BY_PARQUET_NAME, FIELDS, arrow_schema, field, is_field_name, normalize_name

if TYPE_CHECKING:
    import pyarrow.parquet as pq

PARQUET_MAGIC = b"PAR1"
_MISSING = ["-", "", "None", "null"]
_NUMBER = r"^[0-9]{1,18}$"
#: what a damaged file raises from Arrow: any Arrow error, or a UnicodeDecodeError from a mangled column name
_UNREADABLE = (pa.ArrowException, OSError, ValueError)


def parquet_fields(source: BinaryIO) -> tuple[pq.ParquetFile, tuple[str, ...]]:
    """Open a Parquet object and map its known columns to AWS field names."""
    import pyarrow.parquet as pq  # only when a Parquet object arrives: it is slow to import

    try:
        pfile = pq.ParquetFile(source)
    except _UNREADABLE as exc:
        raise UnknownFormatError(f"unreadable Parquet: {exc}") from exc
    names = tuple(name for c in pfile.schema_arrow.names if (name := _field_name(c)) is not None)
    return pfile, names


def _field_name(column: str) -> str | None:
    """The AWS name of a Parquet column: a catalogue field, or one we do not know written the AWS way
    (lowercase, underscores); None for anything else (a pandas index column)."""
    known = BY_PARQUET_NAME.get(column)
    if known is not None:
        return known.name
    name = normalize_name(column)
    return name if is_field_name(name) and name.replace("-", "_") == column else None


def iter_parquet(
    pfile: pq.ParquetFile, fields: tuple[str, ...], columns: Collection[str] | None, errors: ErrorCounts
) -> Iterator[pa.Table]:
    """Batches of the wanted columns, renamed and coerced to catalogue types."""
    asked = set(fields) if columns is None else set(columns)
    tgw = needs_attachment(fields, columns)
    wanted = [f for f in fields if f in asked or (tgw and f == ATTACHMENT)]
    schema = arrow_schema(tuple(wanted))
    try:
        batches = pfile.iter_batches(batch_size=131_072, columns=[field(f).parquet_name for f in wanted])
        for batch in batches:
            table = _coerce(pa.Table.from_batches([batch]), wanted, schema, errors)
            yield attachment_as_interface(table, ATTACHMENT in asked) if tgw else table
    except _UNREADABLE as exc:
        raise UnknownFormatError(f"unreadable Parquet data: {exc}") from exc


def _coerce(table: pa.Table, wanted: list[str], schema: pa.Schema, errors: ErrorCounts) -> pa.Table:
    ok = None
    cols: dict[str, pa.ChunkedArray] = {}
    for name in wanted:
        col = table.column(field(name).parquet_name)
        target = field(name).type
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = pc.if_else(pc.is_in(col, pa.array(_MISSING)), pa.scalar(None, col.type), col)
            if pa.types.is_integer(target):
                valid = pc.or_kleene(pc.is_null(col), pc.match_substring_regex(col, _NUMBER))
                ok = valid if ok is None else pc.and_(ok, valid)
        cols[name] = col
    if ok is not None and table.num_rows:
        bad = table.num_rows - (pc.sum(ok).as_py() or 0)
        if bad:
            errors.add(INVALID_NUMBER, bad, "non-numeric value in a numeric Parquet column")
            cols = {k: v.filter(ok) for k, v in cols.items()}
    out = pa.table(cols)
    if not out.num_rows:
        return schema.empty_table()
    return drop_impossible_counts(pa.table([_cast(out.column(f.name), f) for f in schema], schema=schema), errors)


def _cast(col: pa.ChunkedArray, target: pa.Field) -> pa.ChunkedArray:
    """A column as its catalogue type; a column of another kind (a list, a struct, floats for a count) fails the file.

    A column we do not know is used by nothing: one that cannot be a string is all nulls, never a failure.
    """
    try:
        return col.cast(target.type)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        if target.name not in FIELDS:
            return pa.chunked_array([pa.nulls(len(col), target.type)])
        name = field(target.name).parquet_name
        raise UnsupportedColumnError(f"Parquet column {name} of type {col.type} cannot be read as {target.type}: {exc}") from exc
