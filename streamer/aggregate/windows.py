"""Per-ENI tumbling windows in event time, with a watermark and allowed lateness.

A record belongs to the window of its own time (`end`, else `start`), never
its arrival. Workers reduce each batch to a small partial (`window_batch`):
per (interface, window) counts, plus per-window counts of rejected source
addresses and destination ports for alert context. The event loop folds
partials into `Windows`:

- watermark = newest event time seen - lateness;
- a partial row whose window already closed is *late*: counted in
  `late_records` (the totals elsewhere still include it) and not applied;
- windows whose end is at or before the watermark close and are handed to
  the detector, in window order.

`Windows.advance` does not mutate: it returns the next state, so that state
can be checkpointed together with the positions that produced it and only
then replace the live one.
"""

from __future__ import annotations

import dataclasses
import io

import orjson
import pyarrow as pa
import pyarrow.compute as pc

KEY = ("interface_id", "window_start")
STATS = pa.schema(
    [
        ("interface_id", pa.string()),
        ("window_start", pa.int64()),
        ("vpc_id", pa.string()),
        ("subnet_id", pa.string()),
        ("records", pa.int64()),
        ("rejected_records", pa.int64()),
        ("rejected_packets", pa.int64()),
        ("rejected_bytes", pa.int64()),
        ("accepted_records", pa.int64()),
    ]
)
SOURCES = pa.schema(
    [("interface_id", pa.string()), ("window_start", pa.int64()), ("srcaddr", pa.string()), ("count", pa.int64())]
)
PORTS = pa.schema([("interface_id", pa.string()), ("window_start", pa.int64()), ("dstport", pa.int32()), ("count", pa.int64())])
SUBNETS = pa.schema(
    [("vpc_id", pa.string()), ("subnet_id", pa.string()), ("rejected_records", pa.int64()), ("rejected_bytes", pa.int64())]
)
#: Columns of a decoded table that windows read.
COLUMNS = ("interface-id", "action", "start", "end", "packets", "bytes", "srcaddr", "dstport", "vpc-id", "subnet-id")
#: Above this many (window, address) rows, addresses seen once are dropped: top-5 lists stay
#: right for heavy hitters while a scan from a million addresses cannot exhaust memory.
MAX_CONTEXT_ROWS = 200_000


@dataclasses.dataclass
class WindowBatch:
    """A worker's partial for one batch."""

    stats: pa.Table
    sources: pa.Table
    ports: pa.Table
    max_time: int | None


def _col(table: pa.Table, name: str, typ: pa.DataType) -> pa.ChunkedArray | pa.Array:
    if name in table.column_names:
        col = table.column(name)
        return pc.cast(col, typ) if col.type != typ else col
    return pa.nulls(table.num_rows, typ)


def window_batch(table: pa.Table, window_seconds: int) -> WindowBatch:
    """Vectorized per-(interface, window) partial of one decoded batch.

    Rows without an interface or a time are grouped like the rest and their
    (null-keyed) groups dropped afterwards: cheaper than filtering every
    column of the batch first.
    """
    if not table.num_rows:
        return WindowBatch(STATS.empty_table(), SOURCES.empty_table(), PORTS.empty_table(), None)
    times = pc.coalesce(_col(table, "end", pa.int64()), _col(table, "start", pa.int64()))
    start = pc.multiply(pc.divide(times, window_seconds), window_seconds)
    action = _col(table, "action", pa.string())
    reject = pc.fill_null(pc.equal(action, "REJECT"), False)
    zero = pa.scalar(0, pa.int64())
    columns = {
        "interface_id": _col(table, "interface-id", pa.string()),
        "window_start": start,
        "rej": pc.cast(reject, pa.int64()),
        "acc": pc.cast(pc.fill_null(pc.equal(action, "ACCEPT"), False), pa.int64()),
        "rej_packets": pc.if_else(reject, pc.fill_null(_col(table, "packets", pa.int64()), 0), zero),
        "rej_bytes": pc.if_else(reject, pc.fill_null(_col(table, "bytes", pa.int64()), 0), zero),
    }
    aggs: list[tuple[object, str]] = [
        ([], "count_all"),
        ("rej", "sum"),
        ("rej_packets", "sum"),
        ("rej_bytes", "sum"),
        ("acc", "sum"),
    ]
    places = [n for n in ("vpc-id", "subnet-id") if n in table.column_names]
    for name in places:  # an ENI lives in one VPC and subnet: any value of the group will do
        columns[name] = _col(table, name, pa.string())
        aggs.append((name, "max"))
    g = pa.table(columns).group_by(["interface_id", "window_start"], use_threads=False).aggregate(aggs)
    g = g.filter(pc.and_(pc.is_valid(g.column("interface_id")), pc.is_valid(g.column("window_start"))))
    n = g.num_rows
    stats = pa.table(
        {
            "interface_id": g.column("interface_id"),
            "window_start": g.column("window_start"),
            "vpc_id": g.column("vpc-id_max") if "vpc-id" in places else pa.nulls(n, pa.string()),
            "subnet_id": g.column("subnet-id_max") if "subnet-id" in places else pa.nulls(n, pa.string()),
            "records": g.column("count_all"),
            "rejected_records": g.column("rej_sum"),
            "rejected_packets": g.column("rej_packets_sum"),
            "rejected_bytes": g.column("rej_bytes_sum"),
            "accepted_records": g.column("acc_sum"),
        },
    ).cast(STATS)
    rejected = pa.table(
        {
            "interface_id": columns["interface_id"],
            "window_start": start,
            "srcaddr": _col(table, "srcaddr", pa.string()),
            "dstport": _col(table, "dstport", pa.int32()),
        }
    ).filter(reject)
    sources = _count_by(rejected, "srcaddr", SOURCES)
    ports = _count_by(rejected, "dstport", PORTS)
    return WindowBatch(stats, sources, ports, pc.max(times).as_py())


def _count_by(table: pa.Table, column: str, schema: pa.Schema) -> pa.Table:
    if not table.num_rows:
        return schema.empty_table()
    valid = pc.and_(
        pc.and_(pc.is_valid(table.column(column)), pc.is_valid(table.column("interface_id"))),
        pc.is_valid(table.column("window_start")),
    )
    g = (
        table.select(["interface_id", "window_start", column])
        .filter(valid)
        .group_by(["interface_id", "window_start", column], use_threads=False)
    )
    out = g.aggregate([([], "count_all")]).rename_columns(["interface_id", "window_start", column, "count"])
    return out.select(schema.names).cast(schema)


def _fold(tables: list[pa.Table], keys: list[str], sums: list[str], schema: pa.Schema, keep: list[str] | None = None) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return schema.empty_table()
    if len(tables) == 1:
        return tables[0]
    aggs: list[tuple[str, str]] = [(c, "sum") for c in sums] + [(c, "max") for c in keep or []]
    g = pa.concat_tables(tables).group_by(keys, use_threads=False).aggregate(aggs)
    renamed = {f"{c}_sum": c for c in sums} | {f"{c}_max": c for c in keep or []}
    return g.rename_columns([renamed.get(n, n) for n in g.column_names]).select(schema.names).cast(schema)


def fold_stats(tables: list[pa.Table]) -> pa.Table:
    return _fold(
        tables, list(KEY), [n for n in STATS.names if n not in (*KEY, "vpc_id", "subnet_id")], STATS, ["vpc_id", "subnet_id"]
    )


def fold_context(tables: list[pa.Table], column: str, schema: pa.Schema) -> pa.Table:
    folded = _fold(tables, [*KEY, column], ["count"], schema)
    if folded.num_rows > MAX_CONTEXT_ROWS:
        folded = folded.filter(pc.greater(folded.column("count"), 1))
    return folded


@dataclasses.dataclass(frozen=True)
class Closed:
    """Windows that just closed, ready for the detector."""

    stats: pa.Table
    sources: pa.Table
    ports: pa.Table

    def top(self, interface_id: str, window_start: int, which: str, k: int = 5) -> list[tuple[str, int]]:
        table, column = (self.sources, "srcaddr") if which == "sources" else (self.ports, "dstport")
        mask = pc.and_(pc.equal(table.column("interface_id"), interface_id), pc.equal(table.column("window_start"), window_start))
        rows = table.filter(mask).sort_by([("count", "descending"), (column, "ascending")]).slice(0, k).to_pylist()
        return [(str(r[column]), int(r["count"])) for r in rows]


@dataclasses.dataclass(frozen=True)
class Windows:
    """Open windows plus the watermark; immutable, advanced by `advance`."""

    window_seconds: int
    lateness_seconds: int
    stats: pa.Table = dataclasses.field(default_factory=STATS.empty_table)
    sources: pa.Table = dataclasses.field(default_factory=SOURCES.empty_table)
    ports: pa.Table = dataclasses.field(default_factory=PORTS.empty_table)
    subnets: pa.Table = dataclasses.field(default_factory=SUBNETS.empty_table)
    max_time: int | None = None
    late_records: int = 0

    @property
    def watermark(self) -> int | None:
        return None if self.max_time is None else self.max_time - self.lateness_seconds

    def advance(self, batches: list[WindowBatch]) -> tuple[Windows, Closed]:
        """Fold one input's partials in; returns the next state and what closed."""
        stats = fold_stats([b.stats for b in batches])
        sources = fold_context([b.sources for b in batches], "srcaddr", SOURCES)
        ports = fold_context([b.ports for b in batches], "dstport", PORTS)
        subnets = self._subnets(stats)
        late = 0
        wm = self.watermark
        if wm is not None and stats.num_rows:
            on_time = pc.greater(pc.add(stats.column("window_start"), self.window_seconds), wm)
            late = int(pc.sum(stats.column("records").filter(pc.invert(on_time))).as_py() or 0)
            stats = stats.filter(on_time)
            sources = _on_time(sources, self.window_seconds, wm)
            ports = _on_time(ports, self.window_seconds, wm)
        times = [b.max_time for b in batches if b.max_time is not None]
        max_time = max([*times, *([self.max_time] if self.max_time is not None else [])], default=None)
        nxt = dataclasses.replace(
            self,
            stats=fold_stats([self.stats, stats]),
            sources=fold_context([self.sources, sources], "srcaddr", SOURCES),
            ports=fold_context([self.ports, ports], "dstport", PORTS),
            subnets=subnets,
            max_time=max_time,
            late_records=self.late_records + late,
        )
        return nxt.close(None if max_time is None else max_time - self.lateness_seconds)

    def close(self, watermark: int | None) -> tuple[Windows, Closed]:
        """Split off every window that ends at or before `watermark` (None: nothing; flush: a big number)."""
        if watermark is None or not self.stats.num_rows:
            return self, Closed(STATS.empty_table(), SOURCES.empty_table(), PORTS.empty_table())

        def split(table: pa.Table) -> tuple[pa.Table, pa.Table]:
            done = pc.less_equal(pc.add(table.column("window_start"), self.window_seconds), watermark)
            return table.filter(pc.invert(done)), table.filter(done)

        stats_open, stats_closed = split(self.stats)
        src_open, src_closed = split(self.sources)
        port_open, port_closed = split(self.ports)
        closed = Closed(
            stats_closed.sort_by([("window_start", "ascending"), ("interface_id", "ascending")]), src_closed, port_closed
        )
        return dataclasses.replace(self, stats=stats_open, sources=src_open, ports=port_open), closed

    def flush(self) -> tuple[Windows, Closed]:
        """Close everything (end of a replay)."""
        return self.close(2**62)

    def _subnets(self, stats: pa.Table) -> pa.Table:
        """Rejected totals per VPC/subnet (exact, late records included)."""
        if not stats.num_rows:
            return self.subnets
        have = stats.filter(pc.is_valid(stats.column("vpc_id")))
        if not have.num_rows:
            return self.subnets
        g = have.group_by(["vpc_id", "subnet_id"], use_threads=False).aggregate(
            [("rejected_records", "sum"), ("rejected_bytes", "sum")]
        )
        part = g.rename_columns(["vpc_id", "subnet_id", "rejected_records", "rejected_bytes"]).select(SUBNETS.names).cast(SUBNETS)
        return _fold([self.subnets, part], ["vpc_id", "subnet_id"], ["rejected_records", "rejected_bytes"], SUBNETS)

    # --- snapshot -------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        parts = [to_ipc(t) for t in (self.stats, self.sources, self.ports, self.subnets)]
        meta = {"max_time": self.max_time, "late_records": self.late_records, "sizes": [len(p) for p in parts]}
        return orjson.dumps(meta) + b"\n" + b"".join(parts)

    @classmethod
    def restore(cls, blob: bytes, window_seconds: int, lateness_seconds: int) -> Windows:
        head, _, rest = blob.partition(b"\n")
        meta = orjson.loads(head)
        tables = []
        pos = 0
        for size in meta["sizes"]:
            tables.append(pa.ipc.open_stream(rest[pos : pos + size]).read_all())
            pos += size
        stats, sources, ports, subnets = tables
        return cls(
            window_seconds,
            lateness_seconds,
            stats=stats,
            sources=sources,
            ports=ports,
            subnets=subnets,
            max_time=meta["max_time"],
            late_records=meta["late_records"],
        )


def _on_time(table: pa.Table, window_seconds: int, watermark: int) -> pa.Table:
    return table.filter(pc.greater(pc.add(table.column("window_start"), window_seconds), watermark))


def to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC stream bytes (snapshots)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()
