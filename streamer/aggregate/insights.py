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
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from streamer.aggregate import pairing
from streamer.aggregate.columns import is_in, is_value

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
_FLOW = ("interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol")
_GLOBAL_IPV6 = r"^[23][0-9a-fA-F]{3}:"


@dataclasses.dataclass
class InsightBatch:
    """One batch's insight sums, and its NACL pairing candidates."""

    sums: pa.Table
    examples: dict[str, str] = dataclasses.field(default_factory=dict)
    #: NACL pairing candidates (`pairing.CANDIDATES`), paired across inputs by `pairing.Pairing`
    pairs: pa.Table | None = None


def insight_batch(table: pa.Table, window_seconds: int, max_time: int | None = None) -> InsightBatch:
    """All four signals of one decoded batch (records later than `max_time` are no pairing candidates)."""
    if not table.num_rows:
        return InsightBatch(SCHEMA.empty_table())
    have = set(table.column_names)
    parts: list[pa.Table] = []
    pairs = None
    if have.issuperset((*_FLOW, "action")):
        pairs = _nacl(table, window_seconds, max_time)
    if have.issuperset(("pkt-dst-aws-service", "traffic-path", "flow-direction")):
        parts.append(_gateway(table))
    if have.issuperset(("interface-id", "action", "srcaddr", "flow-direction")) and (
        "tcp-flags" in have or have.issuperset(("protocol", "srcport", "dstport"))
    ):
        parts.append(_ipv6(table))
    if "traffic-path" in have:
        parts.append(_paths(table))
    return InsightBatch(fold(parts), pairs=pairs)


def _str(table: pa.Table, name: str) -> pa.ChunkedArray:
    col = table.column(name)
    return pc.cast(col, pa.string()) if col.type != pa.string() else col


def _vpc(table: pa.Table) -> pa.ChunkedArray | pa.Array:
    if "vpc-id" in table.column_names:
        return pc.fill_null(_str(table, "vpc-id"), "-")
    return pa.array(["-"] * table.num_rows, pa.string())


def _nacl(table: pa.Table, window_seconds: int, max_time: int | None) -> pa.Table:
    """Accepted requests and rejected possible replies, hashed: `pairing.Pairing` pairs them across
    chunks, inputs and replicas, not here."""
    times = [n for n in ("end", "start") if n in table.column_names]
    return pairing.candidates(table.select([*_FLOW, "action", *times]), window_seconds, max_time)


def _gateway(table: pa.Table) -> pa.Table:
    path = table.column("traffic-path")
    mask = pc.and_(
        pc.and_(
            is_value(table.column("flow-direction"), "egress"),
            is_in(table.column("pkt-dst-aws-service"), pa.array(GATEWAY_SERVICES)),
        ),
        pc.fill_null(pc.is_in(path, value_set=pa.array(GATEWAY_PATHS, path.type)), False),
    )
    if not pc.any(mask).as_py():
        return SCHEMA.empty_table()
    table = table.filter(mask)
    picked = pa.table({"vpc": _vpc(table), "service": _str(table, "pkt-dst-aws-service"), "bytes": _bytes(table)})
    g = picked.group_by(["vpc", "service"], use_threads=False).aggregate([([], "count_all"), ("bytes", "sum")])
    return _rows(GATEWAY, g.column("vpc"), g.column("service"), g.column("count_all"), g.column("bytes_sum"))


def _ipv6(table: pa.Table) -> pa.Table:
    have = set(table.column_names)
    inbound = is_value(table.column("flow-direction"), "ingress")
    if "tcp-flags" in have:
        starts = pc.equal(pc.bit_wise_and(table.column("tcp-flags"), pa.scalar(18, table.column("tcp-flags").type)), 2)
    else:
        proto = table.column("protocol")
        starts = pc.and_(
            pc.is_in(proto, value_set=pa.array([6, 17], proto.type)),
            pc.and_(pc.less(table.column("dstport"), 1024), pc.greater_equal(table.column("srcport"), 1024)),
        )
    mask = pc.and_(inbound, pc.fill_null(starts, False))
    if not pc.any(mask).as_py():
        return SCHEMA.empty_table()
    table = table.select(["interface-id", "action", "srcaddr"]).filter(mask)  # the regex runs on connection starts only
    table = table.filter(pc.fill_null(pc.match_substring_regex(table.column("srcaddr"), _GLOBAL_IPV6), False))
    if not table.num_rows:
        return SCHEMA.empty_table()
    picked = pa.table({"eni": _str(table, "interface-id"), "action": _str(table, "action")})
    picked = picked.filter(pc.and_(pc.is_valid(picked.column("eni")), pc.is_valid(picked.column("action"))))
    g = picked.group_by(["eni", "action"], use_threads=False).aggregate([([], "count_all")])
    return _rows(IPV6, g.column("eni"), g.column("action"), g.column("count_all"), None)


def _paths(table: pa.Table) -> pa.Table:
    path = table.column("traffic-path")
    names = pa.array([None, *[PATH_NAMES[i] for i in range(1, 9)]], pa.string())
    known = pc.fill_null(pc.and_(pc.greater_equal(path, 1), pc.less_equal(path, 8)), False)
    if not pc.any(known).as_py():
        return SCHEMA.empty_table()
    vpc = table.column("vpc-id") if "vpc-id" in table.column_names else pa.nulls(table.num_rows, pa.string())
    picked = pa.table({"vpc": vpc, "path": path, "bytes": _bytes(table)}).filter(known)
    g = picked.group_by(["vpc", "path"], use_threads=False).aggregate([([], "count_all"), ("bytes", "sum")])
    labels = pc.take(names, pc.cast(g.column("path"), pa.int64()))
    vpcs = pc.fill_null(pc.cast(g.column("vpc"), pa.string()), "-")  # a few groups: cheap to convert now
    return _rows(PATHS, vpcs, labels, g.column("count_all"), g.column("bytes_sum"))


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


def report(sums: pa.Table, examples: dict[str, str], nat_price_per_gib: float) -> dict[str, object]:
    """The `"insights"` section of `replay --output json`."""
    doc: dict[str, dict[str, object]] = {
        "nacl_return_rejects": {},
        "gateway_endpoint_candidates": {},
        "ipv6_internet_inbound": {},
        "traffic_path_bytes": {},
    }
    for row in sums.sort_by([(k, "ascending") for k in KEYS]).to_pylist():  # one row per series
        kind, k1, k2 = row["kind"], row["key1"], row["key2"]
        if kind == NACL:
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
