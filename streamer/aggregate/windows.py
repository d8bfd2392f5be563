"""Per-ENI tumbling windows in event time, with a watermark and allowed lateness.

A record belongs to the window of its own time (`end`, else `start`), never
its arrival. Workers reduce each batch to a small partial (`window_batch`):
per (interface, window) counts, plus per-window counts of rejected source
addresses and destination ports for alert context. The event loop folds
partials into `Windows`:

- the watermark comes from the `EventClock` (per-source marks, idleness,
  wall clock when everything is quiet; see eventtime.py);
- a record more than the future skew ahead of the wall clock is *future*:
  kept out of every window and out of event time (the totals elsewhere
  still include it), so one broken clock cannot close every window;
- a partial row whose window already closed is *late*: counted in
  `late_records` (the totals elsewhere still include it) and not applied;
- windows whose end is at or before the watermark close and are handed to
  the detector, in window order;
- rejected totals per VPC and subnet (exported as counters) follow the active
  subnets: one with nothing counted for `idle_seconds` of wall clock (the
  service's `metrics.interface_idle_seconds`, as for ENIs) is forgotten, its
  series disappear, and its records stay in its VPC's total, which never goes
  down (a VPC goes when its last subnet does).

`Windows.advance` does not mutate: it returns the next state, so that state
can be checkpointed together with the positions that produced it and only
then replace the live one.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from streamer.aggregate.columns import is_value, key
from streamer.aggregate.eventtime import EventClock

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
    [
        ("vpc_id", pa.string()),
        ("subnet_id", pa.string()),
        ("rejected_records", pa.int64()),
        ("rejected_bytes", pa.int64()),
        #: the wall time the subnet was last counted: idle for `Windows.idle_seconds`, it is forgotten
        ("seen", pa.float64()),
    ]
)

#: Columns of a decoded table that windows read.
COLUMNS = ("interface-id", "action", "start", "end", "packets", "bytes", "srcaddr", "dstport", "vpc-id", "subnet-id")
#: Whether batches' stats are counted on integer codes (`_stats_dense`); STREAMER_DENSE=0 forces Arrow's
#: group-by, the reference, e.g. to compare.
DENSE = os.environ.get("STREAMER_DENSE", "1") != "0"
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
    #: records ahead of the wall clock by more than the allowed skew (kept out of windows)
    future: int = 0
    future_example: str | None = None


def _col(table: pa.Table, name: str, typ: pa.DataType) -> pa.ChunkedArray | pa.Array:
    if name in table.column_names:
        col = table.column(name)
        return pc.cast(col, typ) if col.type != typ else col
    return pa.nulls(table.num_rows, typ)


def window_batch(table: pa.Table, window_seconds: int, max_time: int | None = None) -> WindowBatch:
    """Vectorized per-(interface, window) partial of one decoded batch.

    Rows without an interface or a time are grouped like the rest and their
    (null-keyed) groups dropped afterwards: cheaper than filtering every
    column of the batch first. Rows later than `max_time` (the wall clock
    plus the allowed skew) are counted as future and left out.
    """
    if not table.num_rows:
        return WindowBatch(STATS.empty_table(), SOURCES.empty_table(), PORTS.empty_table(), None)
    times = pc.coalesce(_col(table, "end", pa.int64()), _col(table, "start", pa.int64()))
    future, example = 0, None
    if max_time is not None:
        ahead = pc.fill_null(pc.greater(times, max_time), False)
        future = int(pc.sum(ahead).as_py() or 0)
        if future:
            example = _example(table, ahead)
            times = pc.if_else(ahead, pa.scalar(None, pa.int64()), times)
    start = pc.multiply(pc.divide(times, window_seconds), window_seconds)
    action = key(table, "action")
    reject = is_value(action, "REJECT")
    interfaces = key(table, "interface-id")
    if isinstance(interfaces, pa.ChunkedArray) and pa.types.is_dictionary(interfaces.type):
        words = interfaces.chunk(0).dictionary  # key(): one chunk
        if pc.count_distinct(words).as_py() != len(words):  # a value twice (Parquet): grouping codes would split it
            interfaces = pc.cast(interfaces, pa.string())
    dense = _dense(table, interfaces, start, action, reject, window_seconds) if DENSE else None
    if dense is not None:
        stats, sources, ports = dense
    else:
        stats = _stats(table, interfaces, start, action, reject)
        rejected = pa.table(
            {
                "interface_id": interfaces,
                "window_start": start,
                "srcaddr": _col(table, "srcaddr", pa.string()),
                "dstport": _col(table, "dstport", pa.int32()),
            }
        ).filter(reject)
        sources = _count_by(rejected, "srcaddr", SOURCES)
        ports = _count_by(rejected, "dstport", PORTS)
    return WindowBatch(stats, sources, ports, pc.max(times).as_py(), future, example)


def _stats(
    table: pa.Table,
    interfaces: pa.ChunkedArray | pa.Array,
    start: pa.ChunkedArray,
    action: pa.ChunkedArray | pa.Array,
    reject: pa.ChunkedArray | pa.Array,
) -> pa.Table:
    """Per-(interface, window) stats of a batch by Arrow's hash aggregation: the reference."""
    zero = pa.scalar(0, pa.int64())
    columns = {
        "interface_id": interfaces,
        "window_start": start,
        "rej": pc.cast(reject, pa.int64()),
        "acc": pc.cast(is_value(action, "ACCEPT"), pa.int64()),
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
    return stats


def _dense(
    table: pa.Table,
    interfaces: pa.ChunkedArray | pa.Array,
    start: pa.ChunkedArray | pa.Array,
    action: pa.ChunkedArray | pa.Array,
    reject: pa.ChunkedArray | pa.Array,
    window_seconds: int,
) -> tuple[pa.Table, pa.Table, pa.Table] | None:
    """The batch's stats, sources and ports counted on integer codes, or None when the batch does not suit.

    The decoder hands interface ids dictionary-encoded, so each row already
    has an integer code; with its window's number that is a cell of a small
    grid (~2,000 ENIs x the windows a batch spans), summed exactly with numpy.
    Arrow's group-by (`_stats`, `_count_by`; STREAMER_DENSE=0) is the
    reference: it costs ~4x more here, mostly in its per-call machinery.
    """
    if not isinstance(interfaces, pa.ChunkedArray) or not pa.types.is_dictionary(interfaces.type) or interfaces.num_chunks != 1:
        return None
    codes = interfaces.chunk(0)
    valid = pc.and_(codes.is_valid(), start.is_valid()).to_numpy(zero_copy_only=False)
    if not valid.any():
        return STATS.empty_table(), SOURCES.empty_table(), PORTS.empty_table()
    starts = pc.fill_null(start, 0).to_numpy(zero_copy_only=False)
    low = int(starts[valid].min())
    n_windows = (int(starts[valid].max()) - low) // window_seconds + 1
    cells = len(codes.dictionary) * n_windows
    if cells > 4 * len(starts) + (1 << 16):
        return None
    cell = codes.indices.fill_null(0).to_numpy().astype(np.int64) * n_windows + (starts - low) // window_seconds
    rejected = reject.to_numpy(zero_copy_only=False) & valid  # is_value: never null
    accepted = is_value(action, "ACCEPT").to_numpy(zero_copy_only=False) & valid

    def interface_and_window(used: np.ndarray) -> dict[str, pa.Array]:
        return {
            "interface_id": codes.dictionary.take(pa.array(used // n_windows)),
            "window_start": pa.array(low + (used % n_windows) * window_seconds, pa.int64()),
        }

    records = np.bincount(cell[valid], minlength=cells)
    used = np.flatnonzero(records)
    columns = interface_and_window(used)
    for name, column in (("vpc_id", "vpc-id"), ("subnet_id", "subnet-id")):
        if column in table.column_names:
            values = _col(table, column, pa.string()).filter(pa.array(valid))
            columns[name] = _max_string(values, cell[valid], cells, used)
        else:
            columns[name] = pa.nulls(len(used), pa.string())
    columns["records"] = pa.array(records[used])
    columns["rejected_records"] = pa.array(np.bincount(cell[rejected], minlength=cells)[used])
    for name, column in (("rejected_packets", "packets"), ("rejected_bytes", "bytes")):
        total = np.zeros(cells, np.int64)
        np.add.at(total, cell[rejected], pc.fill_null(_col(table, column, pa.int64()), 0).to_numpy()[rejected])
        columns[name] = pa.array(total[used])
    columns["accepted_records"] = pa.array(np.bincount(cell[accepted], minlength=cells)[used])
    stats = pa.table(columns).select(STATS.names).cast(STATS)

    def count(column: str, typ: pa.DataType, schema: pa.Schema) -> pa.Table:
        """Rejected rows per (cell, value): a few thousand per batch, so a sort of their combined codes."""
        values = _col(table, column, typ)
        rows = rejected & values.is_valid().to_numpy(zero_copy_only=False)
        if not rows.any():
            return schema.empty_table()
        found = pc.dictionary_encode(values.filter(pa.array(rows)))
        found = found.combine_chunks() if isinstance(found, pa.ChunkedArray) else found
        width = len(found.dictionary)
        keys, counts = np.unique(cell[rows] * width + found.indices.to_numpy(), return_counts=True)
        out = interface_and_window(keys // width)
        out[column] = found.dictionary.take(pa.array(keys % width))
        out["count"] = pa.array(counts, pa.int64())
        return pa.table(out).select(schema.names).cast(schema)

    return stats, count("srcaddr", pa.string(), SOURCES), count("dstport", pa.int32(), PORTS)


def _example(table: pa.Table, mask: pa.ChunkedArray | pa.Array) -> str:
    """One future record, for the warning line: its interface and times."""
    row = table.filter(mask).slice(0, 1).to_pylist()[0]
    return " ".join(f"{k}={row[k]}" for k in ("interface-id", "start", "end") if k in row)


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


def merge(batches: list[WindowBatch]) -> list[WindowBatch]:
    """One input's partials folded into one (none stay none). The live pipeline does this in the decode
    thread, so that `Windows.advance`, under the commit lock, only folds one table per kind into the state."""
    if not batches:
        return []
    times = [b.max_time for b in batches if b.max_time is not None]
    return [
        WindowBatch(
            fold_stats([b.stats for b in batches]),
            fold_context([b.sources for b in batches], "srcaddr", SOURCES),
            fold_context([b.ports for b in batches], "dstport", PORTS),
            max(times) if times else None,
            sum(b.future for b in batches),
            next((b.future_example for b in batches if b.future_example), None),
        )
    ]


_STAT_SUMS = [n for n in STATS.names if n not in (*KEY, "vpc_id", "subnet_id")]


def fold_stats(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if len(tables) > 1:
        dense = _fold_stats_dense(pa.concat_tables(tables))
        if dense is not None:
            return dense
    return _fold(tables, list(KEY), _STAT_SUMS, STATS, ["vpc_id", "subnet_id"])


def _fold_stats_dense(table: pa.Table) -> pa.Table | None:
    """`_fold` of stats rows by counting into dense arrays over (interface code, window code), or None when
    that grid would be much larger than the rows.

    Folding an input's partials (hundreds of thousands of rows) is on one
    thread after its last batch; Arrow's hash aggregation spends most of it
    on the generic machinery, where two integer codes and numpy sums (exact,
    int64) do the same in a third of the time. The Arrow fold stays the
    reference (tests/unit/aggregate/test_windows.py checks both agree).
    """
    enis = pc.dictionary_encode(table.column("interface_id")).combine_chunks()
    starts = pc.dictionary_encode(table.column("window_start")).combine_chunks()
    n_enis, n_starts = len(enis.dictionary), len(starts.dictionary)
    cells = n_enis * n_starts
    if enis.null_count or starts.null_count or cells > 4 * table.num_rows + (1 << 16):
        return None
    cell = enis.indices.to_numpy().astype(np.int64) * n_starts + starts.indices.to_numpy()
    seen = np.zeros(cells, bool)
    seen[cell] = True
    used = np.flatnonzero(seen)
    columns: dict[str, pa.Array] = {
        "interface_id": enis.dictionary.take(pa.array(used // n_starts)),
        "window_start": starts.dictionary.take(pa.array(used % n_starts)),
    }
    for name in ("vpc_id", "subnet_id"):
        columns[name] = _max_string(table.column(name), cell, cells, used)
    for name in _STAT_SUMS:
        total = np.zeros(cells, np.int64)
        np.add.at(total, cell, table.column(name).to_numpy())
        columns[name] = pa.array(total[used])
    return pa.table(columns).select(STATS.names).cast(STATS)


def _max_string(col: pa.ChunkedArray, cell: np.ndarray, cells: int, used: np.ndarray) -> pa.Array:
    """Arrow's hash "max" of a string column per cell (null where a cell has no value), by ranks."""
    if col.null_count == len(col):
        return pa.nulls(len(used), pa.string())
    codes = pc.dictionary_encode(col).combine_chunks()
    order = pc.sort_indices(codes.dictionary).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    row_rank = np.where(codes.is_valid().to_numpy(zero_copy_only=False), rank[codes.indices.fill_null(0).to_numpy()], -1)
    best = np.full(cells, -1, np.int64)
    np.maximum.at(best, cell, row_rank)
    top = best[used]
    return codes.dictionary.take(pa.array(order[np.maximum(top, 0)], mask=top < 0))


def fold_context(tables: list[pa.Table], column: str, schema: pa.Schema) -> pa.Table:
    folded = _fold(tables, [*KEY, column], ["count"], schema)
    if folded.num_rows > MAX_CONTEXT_ROWS:
        folded = folded.filter(pc.greater(folded.column("count"), 1))
    return folded


@dataclasses.dataclass(frozen=True)
class Closed:
    """Windows that just closed, ready for the detector (rows in no particular order)."""

    stats: pa.Table
    sources: pa.Table
    ports: pa.Table

    def top(self, interface_id: str, window_start: int, which: str, k: int = 5) -> list[tuple[str, int]]:
        table, column = (self.sources, "srcaddr") if which == "sources" else (self.ports, "dstport")
        mask = pc.and_(pc.equal(table.column("interface_id"), interface_id), pc.equal(table.column("window_start"), window_start))
        rows = table.filter(mask).sort_by([("count", "descending"), (column, "ascending")]).slice(0, k).to_pylist()
        return [(str(r[column]), int(r["count"])) for r in rows]


#: the source name replay uses (one source, event time only)
REPLAY_SOURCE = "replay"


@dataclasses.dataclass(frozen=True)
class Windows:
    """Open windows plus the event clock; immutable, advanced by `advance` and `tick`."""

    window_seconds: int
    clock: EventClock
    stats: pa.Table = dataclasses.field(default_factory=STATS.empty_table)
    sources: pa.Table = dataclasses.field(default_factory=SOURCES.empty_table)
    ports: pa.Table = dataclasses.field(default_factory=PORTS.empty_table)
    subnets: pa.Table = dataclasses.field(default_factory=SUBNETS.empty_table)
    late_records: int = 0
    future_records: int = 0
    #: wall-clock seconds after which a subnet with nothing counted is forgotten
    idle_seconds: float = 86400
    #: rejected records of forgotten subnets, per VPC that still has others (its total never goes down)
    vpcs: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def lateness_seconds(self) -> int:
        return self.clock.lateness_seconds

    @property
    def watermark(self) -> int | None:
        return self.clock.watermark

    def tick(self, now: float | None = None) -> tuple[Windows, Closed]:
        """Let the wall clock move event time (idle sources, quiet periods) and close what that ends."""
        now = time.time() if now is None else now
        clock = self.clock.advance(now)
        if clock is self.clock:
            return self, _nothing()
        return dataclasses.replace(self, clock=clock)._forget_subnets(now).close(clock.watermark)

    def advance(
        self, batches: list[WindowBatch], source: str = REPLAY_SOURCE, now: float | None = None
    ) -> tuple[Windows, Closed]:
        """Fold one input's partials from `source` in; returns the next state and what closed."""
        nxt, closed = self.advance_many([(batches, source)], now)
        return nxt, closed[0]

    def advance_many(
        self, inputs: Sequence[tuple[list[WindowBatch], str]], now: float | None = None
    ) -> tuple[Windows, list[Closed]]:
        """`advance` by each input in turn: the same final state, the same windows closed after each input.

        The open windows' sources and ports (the state's largest tables) are folded with the inputs' once,
        at the end, not once per input (a group commit's plan spent most of its time there). Exact: a fold
        sums by key, so folding the state with every input at once gives the rows of folding them one by
        one; closing filters by a key column, so it can filter the parts first. Arrow's fold keeps no row
        order, so the state's sources and ports are left sorted by key: the same bytes in a snapshot however
        the inputs were grouped. Only the cut at MAX_CONTEXT_ROWS depends on when folds happen: once the
        parts hold that many rows, they are folded (and cut) at that input, as one by one would.
        """
        now = time.time() if now is None else now
        step = self
        sources, ports = [self.sources], [self.ports]
        out: list[Closed] = []
        for batches, source in inputs:
            stats = fold_stats([b.stats for b in batches])
            new_sources = fold_context([b.sources for b in batches], "srcaddr", SOURCES)
            new_ports = fold_context([b.ports for b in batches], "dstport", PORTS)
            subnets = step._subnets(stats, now)
            late = 0
            wm = step.watermark
            if wm is not None and stats.num_rows:
                on_time = pc.greater(pc.add(stats.column("window_start"), step.window_seconds), wm)
                late = int(pc.sum(stats.column("records").filter(pc.invert(on_time))).as_py() or 0)
                stats = stats.filter(on_time)
                new_sources = _on_time(new_sources, step.window_seconds, wm)
                new_ports = _on_time(new_ports, step.window_seconds, wm)
            times = [b.max_time for b in batches if b.max_time is not None]
            clock = step.clock.observe(source, max(times) if times else None, now).advance(now)
            sources = _with_part(sources, new_sources, "srcaddr", SOURCES)
            ports = _with_part(ports, new_ports, "dstport", PORTS)
            step = dataclasses.replace(
                step,
                stats=fold_stats([step.stats, stats]),
                subnets=subnets,
                clock=clock,
                late_records=step.late_records + late,
                future_records=step.future_records + sum(b.future for b in batches),
            )._forget_subnets(now)
            watermark = clock.watermark
            if watermark is None or not step.stats.num_rows:  # as `close`
                out.append(_nothing())
                continue
            stats_open, stats_closed = _split(step.stats, step.window_seconds, watermark)
            src_split = [_split(t, step.window_seconds, watermark) for t in sources]
            port_split = [_split(t, step.window_seconds, watermark) for t in ports]
            sources, ports = [o for o, _ in src_split], [o for o, _ in port_split]
            out.append(
                Closed(
                    stats_closed,
                    fold_context([c for _, c in src_split], "srcaddr", SOURCES),
                    fold_context([c for _, c in port_split], "dstport", PORTS),
                )
            )
            step = dataclasses.replace(step, stats=stats_open)
        final = dataclasses.replace(
            step,
            sources=_in_key_order(fold_context(sources, "srcaddr", SOURCES), "srcaddr"),
            ports=_in_key_order(fold_context(ports, "dstport", PORTS), "dstport"),
        )
        return final, out

    def close(self, watermark: int | None) -> tuple[Windows, Closed]:
        """Split off every window that ends at or before `watermark` (None: nothing; flush: a big number)."""
        if watermark is None or not self.stats.num_rows:
            return self, _nothing()

        stats_open, stats_closed = _split(self.stats, self.window_seconds, watermark)
        src_open, src_closed = _split(self.sources, self.window_seconds, watermark)
        port_open, port_closed = _split(self.ports, self.window_seconds, watermark)
        closed = Closed(stats_closed, src_closed, port_closed)  # in no order: the detector orders by window
        return dataclasses.replace(self, stats=stats_open, sources=src_open, ports=port_open), closed

    def flush(self) -> tuple[Windows, Closed]:
        """Close everything (end of a replay)."""
        return self.close(2**62)

    def _subnets(self, stats: pa.Table, now: float) -> pa.Table:
        """Rejected totals per VPC/subnet (exact, late records included), each stamped `now`."""
        if not stats.num_rows:
            return self.subnets
        have = stats.filter(pc.is_valid(stats.column("vpc_id")))
        if not have.num_rows:
            return self.subnets
        g = have.group_by(["vpc_id", "subnet_id"], use_threads=False).aggregate(
            [("rejected_records", "sum"), ("rejected_bytes", "sum")]
        )
        part = g.rename_columns(["vpc_id", "subnet_id", "rejected_records", "rejected_bytes"])
        part = part.append_column("seen", pa.array(np.full(part.num_rows, now, np.float64))).select(SUBNETS.names).cast(SUBNETS)
        return _fold([self.subnets, part], ["vpc_id", "subnet_id"], ["rejected_records", "rejected_bytes"], SUBNETS, ["seen"])

    def _forget_subnets(self, now: float) -> Windows:
        """Subnets with nothing counted for `idle_seconds` forgotten (their series go); their rejected records
        stay in their VPC's total while the VPC has other subnets."""
        if not self.subnets.num_rows:
            return self
        idle = pc.greater_equal(pc.subtract(pa.scalar(now, pa.float64()), self.subnets.column("seen")), self.idle_seconds)
        if not pc.any(idle).as_py():
            return self
        gone, kept = self.subnets.filter(idle), self.subnets.filter(pc.invert(idle))
        vpcs = dict(self.vpcs)
        for vpc, n in zip(gone.column("vpc_id").to_pylist(), gone.column("rejected_records").to_pylist(), strict=True):
            vpcs[vpc] = vpcs.get(vpc, 0) + n
        still = set(kept.column("vpc_id").to_pylist())  # a VPC with no subnet left goes
        return dataclasses.replace(self, subnets=kept, vpcs={vpc: n for vpc, n in vpcs.items() if vpc in still})

    def vpc_rejected_records(self) -> dict[str, int]:
        """Rejected records per VPC: its subnets' and its forgotten subnets' (never goes down while it is held)."""
        out = dict(self.vpcs)
        subnets = self.subnets
        for vpc, n in zip(subnets.column("vpc_id").to_pylist(), subnets.column("rejected_records").to_pylist(), strict=True):
            out[vpc] = out.get(vpc, 0) + n
        return out

    # --- snapshot -------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        # The subnets' times and the VPCs' carried totals go in the head, not in the tables: a replica on older
        # code (a rolling upgrade) reads this snapshot too, and its tables must keep their old shape.
        subnets = self.subnets.drop_columns(["seen"])
        parts = [to_ipc(t) for t in (self.stats, self.sources, self.ports, subnets)]
        meta = {
            "clock": self.clock.snapshot(),
            "late_records": self.late_records,
            "future_records": self.future_records,
            "sizes": [len(p) for p in parts],
            "subnet_seen": self.subnets.column("seen").to_pylist(),
            "vpcs": self.vpcs,
        }
        return orjson.dumps(meta) + b"\n" + b"".join(parts)

    @classmethod
    def restore(
        cls, blob: bytes, window_seconds: int, clock: EventClock, now: float | None = None, idle_seconds: float = 86400
    ) -> Windows:
        """Windows from a snapshot; `clock` gives the settings, the snapshot its marks and watermark."""
        now = time.time() if now is None else now
        head, _, rest = blob.partition(b"\n")
        meta = orjson.loads(head)
        if "clock" in meta:
            doc = meta["clock"]
        else:  # snapshots before per-source event time kept only the newest time seen
            old = meta.get("max_time")
            doc = {"marks": {}, "watermark": None if old is None else old - clock.lateness_seconds}
        tables = []
        pos = 0
        for size in meta["sizes"]:
            tables.append(pa.ipc.open_stream(rest[pos : pos + size]).read_all())
            pos += size
        stats, sources, ports, subnets = tables
        seen = meta.get("subnet_seen")
        if seen is None or len(seen) != subnets.num_rows:  # written before subnets were forgotten: seen now
            seen = np.full(subnets.num_rows, now, np.float64)
        subnets = subnets.select([n for n in SUBNETS.names if n != "seen"]).append_column("seen", pa.array(seen, pa.float64()))
        return cls(
            window_seconds,
            clock.restored(doc, now),
            stats=stats,
            sources=sources,
            ports=ports,
            subnets=subnets.select(SUBNETS.names).cast(SUBNETS),
            late_records=meta["late_records"],
            future_records=meta.get("future_records", 0),
            idle_seconds=idle_seconds,
            vpcs={str(k): int(v) for k, v in meta.get("vpcs", {}).items()},
        )


def _nothing() -> Closed:
    return Closed(STATS.empty_table(), SOURCES.empty_table(), PORTS.empty_table())


def _split(table: pa.Table, window_seconds: int, watermark: int) -> tuple[pa.Table, pa.Table]:
    """Rows of windows still open at `watermark`, and of those it closes."""
    done = pc.less_equal(pc.add(table.column("window_start"), window_seconds), watermark)
    return table.filter(pc.invert(done)), table.filter(done)


def _in_key_order(table: pa.Table, column: str) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in (*KEY, column)])


def _with_part(parts: list[pa.Table], new: pa.Table, column: str, schema: pa.Schema) -> list[pa.Table]:
    """The state's unfolded parts plus an input's: folded now (and cut) only once they hold MAX_CONTEXT_ROWS
    rows, where folding one input at a time could first have cut (its fold has at most as many rows)."""
    kept = [t for t in (*parts, new) if t.num_rows]
    if sum(t.num_rows for t in kept) <= MAX_CONTEXT_ROWS:
        return kept
    return [fold_context(kept, column, schema)]


def _on_time(table: pa.Table, window_seconds: int, watermark: int) -> pa.Table:
    return table.filter(pc.greater(pc.add(table.column("window_start"), window_seconds), watermark))


def to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC stream bytes (snapshots)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def encode_partial(batches: list[WindowBatch]) -> bytes:
    """One input's window partials, folded, as bytes: what a fleet replica commits for the leader."""
    (one,) = merge(batches) or [WindowBatch(STATS.empty_table(), SOURCES.empty_table(), PORTS.empty_table(), None)]
    parts = [to_ipc(t) for t in (one.stats, one.sources, one.ports)]
    meta = {"max_time": one.max_time, "future": one.future, "sizes": [len(p) for p in parts]}
    return orjson.dumps(meta) + b"\n" + b"".join(parts)


def decode_partial(blob: bytes) -> WindowBatch:
    head, _, rest = blob.partition(b"\n")
    meta = orjson.loads(head)
    tables, pos = [], 0
    for size in meta["sizes"]:
        tables.append(pa.ipc.open_stream(rest[pos : pos + size]).read_all())
        pos += size
    stats, sources, ports = tables
    return WindowBatch(stats.cast(STATS), sources.cast(SOURCES), ports.cast(PORTS), meta["max_time"], meta["future"])
