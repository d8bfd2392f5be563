"""Network insights: VPC signals operators act on, from the same decoded batches.

Each signal is a vectorized reduce of one batch (Arrow compute, a hash join;
no per-record Python) into rows of one long table of exact sums,
`(kind, key1, key2) -> records, bytes`, folded like the counters and
committed with them. A signal is computed only when the format carries the
fields it needs; a format without them simply gets no rows.

- `nacl_return_rejects` (key1 = ENI): a REJECT to an ephemeral port
  (1024-65535) whose reversed flow (addresses and ports swapped, same
  protocol) was ACCEPTed on the same ENI in the same window or one at most
  the lateness earlier. Security groups are stateful and never evaluate
  replies; NACLs are stateless, so this is a NACL dropping replies (usually a
  missing rule for the ephemeral ports). A batch yields only hashed
  candidates; `pairing.Pairing` pairs them across chunks, inputs, replicas
  and restarts (`add_pairs` folds in its counts).
- `gateway_endpoint_candidates` (VPC, service): egress to S3 or DynamoDB
  (`pkt-dst-aws-service`) leaving through a NAT gateway (traffic-path 1) or an
  internet gateway (8): traffic a free gateway endpoint would carry.
- `ipv6_internet_inbound` (ENI, action): ingress from a global-unicast IPv6
  source (2000::/3) that starts a connection: with `tcp-flags`, SYN without
  ACK (`flags & 18 == 2`); without, TCP/UDP to a port < 1024 from one >= 1024.
  Either action shows the ENI is reachable from the internet over IPv6 (not
  behind an egress-only internet gateway).
- `traffic_path` (VPC, path name): egress bytes by `traffic-path`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamer.aggregate import pairing
from streamer.aggregate.columns import codes_or_null, equals, int_values, ints, valid, word_kinds

try:
    from streamer.decode import _scan
except ImportError:  # built without a C compiler
    _scan = None  # type: ignore[assignment]

NACL = "nacl_return_rejects"
GATEWAY = "gateway_endpoint_candidates"
IPV6 = "ipv6_internet_inbound"
PATHS = "traffic_path"
KINDS = (NACL, GATEWAY, IPV6, PATHS)
#: kinds whose first key is an interface id (capped with the per-ENI counters)
ENI_KINDS = (NACL, IPV6)

#: `traffic-path` values (v5) and their label values
PATH_NAMES = {
    1: "same_vpc",
    2: "internet_or_gateway_endpoint",
    3: "virtual_private_gateway",
    4: "peering_intra_region",
    5: "peering_inter_region",
    6: "local_gateway",
    7: "gateway_endpoint",
    8: "internet_gateway",
}
GATEWAY_SERVICES = ("S3", "DYNAMODB")
#: NAT gateway (1) and internet gateway (8): the paths a gateway endpoint would replace
GATEWAY_PATHS = (1, 8)

SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("key1", pa.string(), nullable=False),
        pa.field("key2", pa.string(), nullable=False),
        pa.field("records", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
    ]
)
KEYS = ("kind", "key1", "key2")
#: no sums (a table is immutable: one is shared)
_EMPTY = SCHEMA.empty_table()
#: Columns of a decoded table the insights read (each signal uses those the format has).
COLUMNS = (
    "interface-id",
    "action",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "bytes",
    "start",
    "end",
    "tcp-flags",
    "flow-direction",
    "traffic-path",
    "pkt-dst-aws-service",
    "vpc-id",
)
#: the native IPv6, traffic-path and gateway counts (None: no native part, an older one, or STREAMER_NATIVE=0)
_native_counts = getattr(_scan, "insight_counts", None) if os.environ.get("STREAMER_NATIVE", "1") != "0" else None
_FLOW = ("interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol")
_GLOBAL_IPV6 = r"^[23][0-9a-fA-F]{3}:"


@dataclasses.dataclass
class InsightBatch:
    """One batch's insight sums, and its NACL pairing candidates."""

    sums: pa.Table
    examples: dict[str, str] = dataclasses.field(default_factory=dict)
    #: NACL pairing candidates, paired across inputs by `pairing.Pairing`
    pairs: pairing.Candidates | None = None


def columns(fields: Collection[str], nacl_pairing: bool) -> tuple[str, ...]:
    """The columns the signals read from a format with `fields`: without NACL pairing, the flow's addresses,
    ports and times only where the IPv6 signal reads them (a format with `flow-direction`), e.g. none on v2."""
    if nacl_pairing:
        return COLUMNS
    have = set(fields)
    wanted = ["bytes", "end", "traffic-path", "flow-direction", "pkt-dst-aws-service", "vpc-id"]
    if "flow-direction" in have:  # `_ipv6`
        wanted += ["interface-id", "action", "srcaddr"]
        wanted += ["tcp-flags"] if "tcp-flags" in have else ["protocol", "srcport", "dstport"]
    return tuple(wanted)


def insight_batch(table: pa.Table, window_seconds: int, max_time: int | None = None, nacl_pairing: bool = False) -> InsightBatch:
    """The signals of one decoded batch, NACL pairing candidates with `nacl_pairing` (records later than
    `max_time` are none)."""
    if not table.num_rows:
        return InsightBatch(_EMPTY)
    have = set(table.column_names)
    parts: list[pa.Table] = []
    pairs = None
    if nacl_pairing and have.issuperset((*_FLOW, "action")):
        pairs = _nacl(table, window_seconds, max_time)
    gateway = have.issuperset(("pkt-dst-aws-service", "traffic-path", "flow-direction"))
    ipv6 = have.issuperset(("interface-id", "action", "srcaddr", "flow-direction")) and (
        "tcp-flags" in have or have.issuperset(("protocol", "srcport", "dstport"))
    )
    paths = "traffic-path" in have
    counted = _native_signals(table, ipv6, paths, gateway) if _native_counts is not None else None
    if counted is not None:
        parts.extend(counted)
    else:
        parts.extend(signal(table) for signal, wanted in ((_gateway, gateway), (_ipv6, ipv6), (_paths, paths)) if wanted)
    parts = [p for p in parts if p.num_rows]
    # a row per (kind, key) already: put together, not folded
    sums = parts[0] if len(parts) == 1 else pa.concat_tables(parts) if parts else _EMPTY
    return InsightBatch(sums, pairs=pairs)


def _str(table: pa.Table, name: str) -> pa.ChunkedArray:
    col = table.column(name)
    return pc.cast(col, pa.string()) if col.type != pa.string() else col


def _vpc(table: pa.Table) -> pa.ChunkedArray | pa.Array:
    if "vpc-id" in table.column_names:
        return pc.fill_null(_str(table, "vpc-id"), "-")
    return pa.array(["-"] * table.num_rows, pa.string())


def _nacl(table: pa.Table, window_seconds: int, max_time: int | None) -> pairing.Candidates:
    """Accepted requests and rejected possible replies, hashed: `pairing.Pairing` pairs them across
    chunks, inputs and replicas, not here."""
    times = [n for n in ("end", "start") if n in table.column_names]
    return pairing.candidates(table.select([*_FLOW, "action", *times]), window_seconds, max_time)


def _gateway(table: pa.Table) -> pa.Table:
    path = int_values(table.column("traffic-path"))
    mask = np.logical_or.reduce([path == p for p in GATEWAY_PATHS])
    if not mask.any():
        return SCHEMA.empty_table()
    mask &= equals(table.column("flow-direction"), "egress")
    if not mask.any():
        return SCHEMA.empty_table()
    service = table.column("pkt-dst-aws-service")
    mask &= np.logical_or.reduce([equals(service, name) for name in GATEWAY_SERVICES])
    rows = np.flatnonzero(mask)
    if not len(rows):
        return SCHEMA.empty_table()
    nbytes = ints(table.column("bytes"), 0) if "bytes" in table.column_names else np.zeros(table.num_rows, np.int64)
    vpc = table.column("vpc-id") if "vpc-id" in table.column_names else pa.nulls(table.num_rows, pa.string())
    grouped = _count(_codes(vpc), _codes(service), rows, nbytes)
    if grouped is not None:
        vpcs, services, records, total = grouped
        return _rows(GATEWAY, pc.fill_null(vpcs, "-"), services, records, total)
    table = table.select([n for n in ("vpc-id", "pkt-dst-aws-service", "bytes") if n in table.column_names])
    table = table.take(rows)
    picked = pa.table({"vpc": _vpc(table), "service": _str(table, "pkt-dst-aws-service"), "bytes": _bytes(table)})
    g = picked.group_by(["vpc", "service"], use_threads=False).aggregate([([], "count_all"), ("bytes", "sum")])
    return _rows(GATEWAY, g.column("vpc"), g.column("service"), g.column("count_all"), g.column("bytes_sum"))


def _ipv6(table: pa.Table) -> pa.Table:
    have = set(table.column_names)
    if "tcp-flags" in have:
        flags = int_values(table.column("tcp-flags"))
        starts = (flags & 18 == 2) & (flags >= 0)
    else:
        proto, sport, dport = (int_values(table.column(n)) for n in ("protocol", "srcport", "dstport"))
        starts = ((proto == 6) | (proto == 17)) & (dport >= 0) & (dport < 1024) & (sport >= 1024)
    rows = np.flatnonzero(starts & equals(table.column("flow-direction"), "ingress"))  # integer tests first
    if not len(rows):
        return SCHEMA.empty_table()
    rows = rows[_global_ipv6(table.column("srcaddr"), rows)]
    eni, action = table.column("interface-id"), table.column("action")
    for col in (eni, action):
        if col.null_count:
            rows = rows[valid(col)[rows]]
    if not len(rows):
        return SCHEMA.empty_table()
    grouped = _count(_codes(eni), _codes(action), rows, None)
    if grouped is not None:
        return _rows(IPV6, *grouped[:3], None)
    picked = pa.table({"eni": _str(table, "interface-id"), "action": _str(table, "action")}).take(rows)
    g = picked.group_by(["eni", "action"], use_threads=False).aggregate([([], "count_all")])
    return _rows(IPV6, g.column("eni"), g.column("action"), g.column("count_all"), None)


def _global_ipv6(col: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> np.ndarray:
    """Whether each of `rows` of an address column matches `_GLOBAL_IPV6`: on a plain string column, read
    from its bytes, a test at a time on the rows still in (a regex over every connection start would cost
    more than the rest of the signal; most addresses are IPv4 and fail the fifth byte)."""
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks != 1:
            return _global_ipv6(col.combine_chunks(), rows)
        col = col.chunk(0)
    if col.type != pa.string() or col.buffers()[2] is None:
        hit = pc.fill_null(pc.match_substring_regex(col.take(rows), _GLOBAL_IPV6), False)
        return np.asarray(hit.to_numpy(zero_copy_only=False), bool)
    offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset : col.offset + len(col) + 1]
    data = np.frombuffer(col.buffers()[2], np.uint8)
    start = offsets[rows]
    out: np.ndarray = offsets[rows + 1] - start >= 5
    if col.null_count:
        out &= valid(col)[rows]
    at = np.flatnonzero(out)
    colon = data[start[at] + 4] == ord(":")  # "2600:" has its colon here; "203.0" a dot, "34.1" a digit
    out[at[~colon]] = False
    at = at[colon]
    head = data[start[at, None] + np.arange(4)]
    hexdigit = (head >= 48) & (head <= 57) | (head >= 65) & (head <= 70) | (head >= 97) & (head <= 102)
    out[at] = ((head[:, 0] == ord("2")) | (head[:, 0] == ord("3"))) & hexdigit[:, 1:].all(axis=1)
    return out


def _paths(table: pa.Table) -> pa.Table:
    path = int_values(table.column("traffic-path"))
    known = (path >= 1) & (path <= 8)
    rows = np.flatnonzero(known)
    if not len(rows):
        return SCHEMA.empty_table()
    names = _PATH_WORDS
    nbytes = ints(table.column("bytes"), 0) if "bytes" in table.column_names else np.zeros(table.num_rows, np.int64)
    vpc = table.column("vpc-id") if "vpc-id" in table.column_names else pa.nulls(table.num_rows, pa.string())
    # a known path's number is its own code (rows not known are never looked at)
    grouped = _count(_codes(vpc), (path, pa.array(np.arange(9), pa.int64())), rows, nbytes)
    if grouped is not None:
        vpcs, paths, records, total = grouped
        return _rows(PATHS, pc.fill_null(vpcs, "-"), pc.take(names, paths), records, total)
    picked = pa.table({"vpc": vpc, "path": ints(table.column("traffic-path")), "bytes": nbytes}).take(rows)
    g = picked.group_by(["vpc", "path"], use_threads=False).aggregate([([], "count_all"), ("bytes", "sum")])
    vpcs = pc.fill_null(pc.cast(g.column("vpc"), pa.string()), "-")  # a few groups: cheap to convert now
    return _rows(PATHS, vpcs, pc.take(names, g.column("path")), g.column("count_all"), g.column("bytes_sum"))


#: a key column as small integer codes (-1 null) and the values they stand for
Codes = tuple[np.ndarray, pa.Array]


def _codes(col: pa.ChunkedArray | pa.Array) -> Codes | None:
    """A key column as small integer codes and the values they stand for: a dictionary's indices (nulls:
    code -1 for null), or a small non-negative integer column's values; None otherwise."""
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks != 1:
            return None
        col = col.chunk(0)
    if pa.types.is_dictionary(col.type):
        if not col.null_count:
            return int_values(col.indices), col.dictionary
        codes = ints(col.indices)
        codes[~valid(col)] = -1
        return codes, col.dictionary
    if pa.types.is_null(col.type):
        return np.full(len(col), -1, np.int64), pa.array([], pa.string())
    if pa.types.is_integer(col.type) and not col.null_count and len(col):
        values = int_values(col)
        if values.min() >= 0 and values.max() < 256:
            return values, pa.array(np.arange(int(values.max()) + 1), pa.int64())
    return None


def _count(
    first: Codes | None, second: Codes | None, rows: np.ndarray, nbytes: np.ndarray | None
) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray] | None:
    """Records (and bytes) of `rows` per (key1, key2), given as codes (`_codes`), counted with bincount
    (no hash group-by); None when a key has no codes.

    Bytes are summed exactly: bincount's float64 weights take the low and high 32 bits apart, each sum
    exact below 2^53 (fewer than 2^21 rows a batch)."""
    if first is None or second is None or len(rows) >= 1 << 21:
        return None
    (a, values_a), (b, values_b) = first, second
    width = len(values_b) + 1
    key = (a[rows].astype(np.int64) + 1) * width + (b[rows] + 1)  # +1: code -1 (null) is group 0
    size = (len(values_a) + 1) * width
    if len(rows) < size:  # few rows (most batches): their distinct keys, not a count per possible key
        groups, records = np.unique(key, return_counts=True)
        inverse = np.searchsorted(groups, key) if nbytes is not None else None
    else:
        counted = np.bincount(key, minlength=size)
        groups = np.flatnonzero(counted)
        records, inverse = counted[groups], None
    total = np.zeros(len(groups), np.int64)
    if nbytes is not None:
        chosen = nbytes[rows]
        index, size = (inverse, len(groups)) if inverse is not None else (key, size)
        low = np.bincount(index, weights=(chosen & 0xFFFFFFFF).astype(np.float64), minlength=size)
        high = np.bincount(index, weights=(chosen >> 32).astype(np.float64), minlength=size)
        if inverse is None:
            low, high = low[groups], high[groups]
        total = low.astype(np.int64) + (high.astype(np.int64) << 32)
    at_a, at_b = groups // width - 1, groups % width - 1
    labels_a = values_a.take(pa.array(at_a.clip(0), mask=at_a < 0))
    labels_b = values_b.take(pa.array(at_b.clip(0), mask=at_b < 0))
    return labels_a, labels_b, records.astype(np.int64), total


def _bytes(table: pa.Table) -> pa.ChunkedArray | pa.Array:
    if "bytes" in table.column_names:
        return pc.fill_null(pc.cast(table.column("bytes"), pa.int64()), 0)
    return pa.array([0] * table.num_rows, pa.int64())


def _rows(
    kind: str,
    key1: pa.ChunkedArray | pa.Array,
    key2: pa.ChunkedArray | pa.Array | None,
    records: pa.ChunkedArray | pa.Array,
    nbytes: pa.ChunkedArray | pa.Array | None,
) -> pa.Table:
    n = len(key1)
    return pa.table(
        {
            "kind": pa.array([kind] * n, pa.string()),
            "key1": pc.cast(key1, pa.string()),
            "key2": pc.cast(key2, pa.string()) if key2 is not None else pa.array([""] * n, pa.string()),
            "records": pc.cast(records, pa.int64()),
            "bytes": pc.cast(nbytes, pa.int64()) if nbytes is not None else pa.array([0] * n, pa.int64()),
        },
        schema=SCHEMA,
    )


def _native_signals(table: pa.Table, ipv6: bool, paths: bool, gateway: bool) -> list[pa.Table] | None:
    """`_gateway`, `_ipv6` and `_paths` (those wanted) in one pass of `_scan.insight_counts`, on the key
    columns' dictionary codes; None when a key column is not one dictionary (then the numpy signals run)."""
    assert _native_counts is not None
    if not (ipv6 or paths or gateway):
        return []
    n = table.num_rows
    have = set(table.column_names)

    def coded(name: str) -> tuple[np.ndarray, pa.Array] | None:
        col = table.column(name)
        if col.num_chunks != 1 or not pa.types.is_dictionary(col.type) or col.type.value_type != pa.string():
            return None
        chunk = col.chunk(0)
        return codes_or_null(chunk), chunk.dictionary

    def integers(name: str) -> np.ndarray | bytes:
        return int_values(table.column(name)) if name in have else b""

    direction = coded("flow-direction") if ipv6 or gateway else None
    vpc = coded("vpc-id") if "vpc-id" in have else (np.full(n, -1, np.int32), pa.array([], pa.string()))
    service = coded("pkt-dst-aws-service") if gateway else None
    eni = coded("interface-id") if ipv6 else None
    action = coded("action") if ipv6 else None
    if ((ipv6 or gateway) and direction is None) or vpc is None or (gateway and service is None):
        return None
    if ipv6 and (eni is None or action is None):
        return None
    src = table.column("srcaddr") if ipv6 else None
    if src is not None:
        src = src.combine_chunks() if src.num_chunks != 1 else src.chunk(0)
        if src.type != pa.string():
            return None
    (dir_codes, dir_words), (svc_codes, svc_words) = direction or _NOTHING, service or _NOTHING
    (eni_codes, eni_words), (action_codes, action_words) = eni or _NOTHING, action or _NOTHING
    # the count grids grow with the product of two dictionaries, not with the rows: a high-cardinality column
    # (a misdeclared format, a slice of a large dictionary) goes to the numpy signals, which count by rows
    cells = (len(vpc[1]) + 1) * ((9 if paths else 0) + (len(svc_words) if gateway else 0))
    if cells + (len(eni_words) * len(action_words) if ipv6 else 0) > 32 * n + 65536:
        return None
    dir_kinds = word_kinds(dir_words, _DIRECTIONS)
    svc_kinds = word_kinds(svc_words, _SERVICES) if len(svc_words) else b""
    flags = integers("tcp-flags") if ipv6 and "tcp-flags" in have else b""
    by_ports = ipv6 and not len(flags)
    counts = _native_counts(
        n, flags, *(integers(c) if by_ports else b"" for c in ("protocol", "srcport", "dstport")),
        dir_codes, dir_kinds, *_string_buffers(src), src.offset if src is not None else 0,
        valid(src).view(np.uint8) if src is not None and src.null_count else b"",
        eni_codes, len(eni_words), action_codes, len(action_words),
        integers("traffic-path") if paths or gateway else b"", vpc[0], len(vpc[1]), svc_codes, svc_kinds,
        _int64s(table.column("bytes")) if "bytes" in have and (paths or gateway) else b"",
        ipv6, paths, gateway,
    )  # fmt: skip
    ipv6_n, path_n, path_b, gw_n, gw_b = (np.frombuffer(b, np.int64) for b in counts)
    grids: list[Cells | None] = []
    if gateway:
        grids.append(_cells(GATEWAY, gw_n, gw_b, vpc[1], svc_words, len(svc_words), vpc_first=True))
    if ipv6:
        grids.append(_cells(IPV6, ipv6_n, None, eni_words, action_words, len(action_words), vpc_first=False))
    if paths:
        grids.append(_cells(PATHS, path_n, path_b, vpc[1], _PATH_WORDS, 9, vpc_first=True))
    return _cells_table([g for g in grids if g is not None])


#: a key column that is absent: no codes, no words
_NOTHING = (np.zeros(0, np.int32), pa.array([], pa.string()))
_DIRECTIONS = {"ingress": 1, "egress": 2}
_SERVICES = dict.fromkeys(GATEWAY_SERVICES, 1)
#: path names at their numbers (0 is no path)
_PATH_WORDS = pa.array([None, *[PATH_NAMES[i] for i in range(1, 9)]], pa.string())
#: one signal's non-empty cells: its kind, both keys, records and bytes (None: 0)
Cells = tuple[str, pa.Array, pa.Array, np.ndarray, np.ndarray | None]


def _string_buffers(col: pa.Array | None) -> tuple[object, object]:
    """A string array's offsets and data buffers (an empty one may have no data buffer)."""
    if col is None:
        return b"", b""
    offsets, data = col.buffers()[1:3]
    return offsets, data if data is not None else b""


def _int64s(col: pa.ChunkedArray) -> np.ndarray:
    """An integer column as int64, 0 where null: as decoded (no copy) when it is one int64 chunk without nulls."""
    values = int_values(col)
    return values if values.dtype == np.int64 and not col.null_count else ints(col, 0)


def _cells(
    kind: str, records: np.ndarray, nbytes: np.ndarray | None, first: pa.Array, second: pa.Array, width: int, vpc_first: bool
) -> Cells | None:
    """The non-empty cells of a count grid (cell = row * width + column) with their keys: a VPC first key
    has a null row first (shown as "-"), an interface first key has none. None: no cell counted."""
    cells = np.flatnonzero(records)
    if not len(cells):
        return None
    row, col = cells // width - (1 if vpc_first else 0), cells % width
    if not len(first):
        key1 = pa.nulls(len(cells), pa.string())
    elif (row < 0).any():
        key1 = first.take(pa.array(row.clip(0), mask=row < 0))
    else:
        key1 = first.take(pa.array(row))
    if vpc_first and key1.null_count:
        key1 = pc.fill_null(key1, "-")
    return kind, key1, second.take(pa.array(col)), records[cells], nbytes[cells] if nbytes is not None else None


def _cells_table(parts: list[Cells]) -> list[pa.Table]:
    """The signals' cells as one table of `SCHEMA` (one Arrow table a batch, not one a signal)."""
    if not parts:
        return []
    if len(parts) == 1:
        kind, key1, key2, records, nbytes = parts[0]
        return [_rows(kind, key1, key2, records, nbytes)]
    kinds = [kind for kind, key1, *_ in parts for _ in range(len(key1))]
    sums = [p[4] if p[4] is not None else np.zeros(len(p[3]), np.int64) for p in parts]
    table = pa.table(
        {
            "kind": pa.array(kinds, pa.string()),
            "key1": pa.concat_arrays([_as_string(p[1]) for p in parts]),
            "key2": pa.concat_arrays([_as_string(p[2]) for p in parts]),
            "records": np.concatenate([p[3] for p in parts]).astype(np.int64, copy=False),
            "bytes": np.concatenate(sums).astype(np.int64, copy=False),
        },
        schema=SCHEMA,
    )
    return [table]


def _as_string(col: pa.Array) -> pa.Array:
    return col if col.type == pa.string() else pc.cast(col, pa.string())


def fold(parts: Iterable[pa.Table]) -> pa.Table:
    """Sum insight tables into one row per (kind, key1, key2)."""
    tables = [p for p in parts if p.num_rows]
    if not tables:
        return SCHEMA.empty_table()
    if len(tables) == 1:
        return tables[0]
    g = pa.concat_tables(tables).group_by(list(KEYS), use_threads=False).aggregate([("records", "sum"), ("bytes", "sum")])
    return g.rename_columns(["kind", "key1", "key2", "records", "bytes"]).select(SCHEMA.names).cast(SCHEMA)


def add_pairs(delta_sums: pa.Table, examples: dict[str, str], paired: pairing.Paired) -> pa.Table:
    """`delta_sums` with the NACL counts of `paired` added (and their examples merged into `examples`)."""
    if not paired.counts:
        return delta_sums
    enis = list(paired.counts)
    rows = _rows(NACL, pa.array(enis, pa.string()), None, pa.array([paired.counts[e] for e in enis], pa.int64()), None)
    merge_examples(examples, paired.examples)
    return fold([delta_sums, rows])


def merge_examples(into: dict[str, str], more: dict[str, str]) -> None:
    """Keep the first example seen per ENI."""
    for eni, text in more.items():
        into.setdefault(eni, text)


def report(sums: pa.Table, examples: dict[str, str], nat_price_per_gib: float, nacl_pairing: bool = False) -> dict[str, object]:
    """The `"insights"` section of `replay --output json` (`nacl_return_rejects` only with `nacl_pairing`:
    an empty one would say none were found)."""
    doc: dict[str, dict[str, object]] = {
        **({"nacl_return_rejects": {}} if nacl_pairing else {}),
        "gateway_endpoint_candidates": {},
        "ipv6_internet_inbound": {},
        "traffic_path_bytes": {},
    }
    for row in sums.sort_by([(k, "ascending") for k in KEYS]).to_pylist():  # one row per series
        kind, k1, k2 = row["kind"], row["key1"], row["key2"]
        if kind == NACL:
            if nacl_pairing:
                doc["nacl_return_rejects"][k1] = {"records": row["records"], "example": examples.get(k1, "")}
        elif kind == GATEWAY:
            cost = round(row["bytes"] / 2**30 * nat_price_per_gib, 6)
            entry = {"records": row["records"], "bytes": row["bytes"], "estimated_nat_cost_usd": cost}
            doc["gateway_endpoint_candidates"].setdefault(k1, {})[k2] = entry  # type: ignore[index]
        elif kind == IPV6:
            doc["ipv6_internet_inbound"].setdefault(k1, {})[k2] = row["records"]  # type: ignore[index]
        elif kind == PATHS:
            doc["traffic_path_bytes"].setdefault(k1, {})[k2] = row["bytes"]  # type: ignore[index]
    return dict(doc)
