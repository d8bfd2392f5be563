"""Exact per-ENI accept/reject totals, computed a whole batch at a time.

`count_batch` turns a decoded table into a small table of partial sums with
one Arrow hash group-by (no per-row Python); `Counters` keeps those partials
and folds them together with another group-by when they pile up, so memory
is bounded by the number of distinct keys, not by records seen. Sums are
int64 and exact. Missing interface-id / action / log-status is keyed `-`.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

KEYS = ("interface_id", "action", "log_status")
VALUES = ("records", "packets", "bytes")
SCHEMA = pa.schema(
    [pa.field(k, pa.string(), nullable=False) for k in KEYS] + [pa.field(v, pa.int64(), nullable=False) for v in VALUES]
)
#: Columns of a decoded flow-log table that the counters read.
COLUMNS = ("interface-id", "action", "log-status", "packets", "bytes")
_COMPACT_AFTER = 32


def count_batch(table: pa.Table) -> pa.Table:
    """Partial sums of one decoded batch, keyed by interface, action, status."""
    n = table.num_rows
    if n == 0:
        return SCHEMA.empty_table()

    def column(name: str, typ: pa.DataType) -> pa.ChunkedArray | pa.Array:
        return table.column(name) if name in table.column_names else pa.nulls(n, typ)

    keyed = pa.table(
        {
            "interface_id": column("interface-id", pa.string()),
            "action": column("action", pa.string()),
            "log_status": column("log-status", pa.string()),
            "packets": column("packets", pa.int64()),
            "bytes": column("bytes", pa.int64()),
        }
    )
    if any(pa.types.is_dictionary(c.type) and c.num_chunks > 1 for c in keyed.columns):
        keyed = keyed.unify_dictionaries()
    grouped = keyed.group_by(list(KEYS), use_threads=False).aggregate([("packets", "sum"), ("bytes", "sum"), ([], "count_all")])
    return _canonical(grouped, "count_all", "packets_sum", "bytes_sum")


def _canonical(grouped: pa.Table, records: str, packets: str, nbytes: str) -> pa.Table:
    dash = pa.scalar("-")

    def key(name: str) -> pa.ChunkedArray:
        return pc.fill_null(pc.cast(grouped.column(name), pa.string()), dash)

    return pa.table(
        {
            "interface_id": key("interface_id"),
            "action": key("action"),
            "log_status": key("log_status"),
            "records": pc.cast(grouped.column(records), pa.int64()),
            "packets": pc.fill_null(pc.cast(grouped.column(packets), pa.int64()), 0),
            "bytes": pc.fill_null(pc.cast(grouped.column(nbytes), pa.int64()), 0),
        },
        schema=SCHEMA,
    )


def combine(parts: Iterable[pa.Table]) -> pa.Table:
    """Fold partial-sum tables into one with a row per key."""
    tables = [p for p in parts if p.num_rows]
    if not tables:
        return SCHEMA.empty_table()
    if len(tables) == 1:
        return tables[0]
    grouped = (
        pa.concat_tables(tables)
        .group_by(list(KEYS), use_threads=False)
        .aggregate([("records", "sum"), ("packets", "sum"), ("bytes", "sum")])
    )
    return _canonical(grouped, "records_sum", "packets_sum", "bytes_sum")


class Counters:
    """Running totals: partial tables folded lazily."""

    def __init__(self, initial: pa.Table | None = None) -> None:
        self._parts: list[pa.Table] = [] if initial is None else [initial.cast(SCHEMA)]

    def add(self, part: pa.Table) -> None:
        if part.num_rows:
            self._parts.append(part)
        if len(self._parts) > _COMPACT_AFTER:
            self._parts = [combine(self._parts)]

    def merge(self, other: Counters) -> None:
        self.add(other.table())

    def table(self) -> pa.Table:
        """One row per (interface_id, action, log_status)."""
        self._parts = [combine(self._parts)] if self._parts else []
        return self._parts[0] if self._parts else SCHEMA.empty_table()

    def by_interface(self) -> dict[str, dict[str, dict[str, int]]]:
        """{interface: {action: {records, packets, bytes}}} summed over log status."""
        t = self.table()
        if not t.num_rows:
            return {}
        g = t.group_by(["interface_id", "action"], use_threads=False).aggregate(
            [("records", "sum"), ("packets", "sum"), ("bytes", "sum")]
        )
        out: dict[str, dict[str, dict[str, int]]] = {}
        for row in g.to_pylist():  # one row per key, not per record
            out.setdefault(row["interface_id"], {})[row["action"]] = {
                "records": row["records_sum"],
                "packets": row["packets_sum"],
                "bytes": row["bytes_sum"],
            }
        return out

    def by_log_status(self) -> dict[str, int]:
        t = self.table()
        if not t.num_rows:
            return {}
        g = t.group_by(["log_status"], use_threads=False).aggregate([("records", "sum")])
        return dict(zip(g.column("log_status").to_pylist(), g.column("records_sum").to_pylist(), strict=True))

    def total_records(self, actions: tuple[str, ...] = ("ACCEPT", "REJECT")) -> int:
        t = self.table()
        mask = pc.is_in(t.column("action"), pa.array(list(actions)))
        return int(pc.sum(t.column("records").filter(mask)).as_py() or 0)
