"""NACL return rejects paired across chunks, inputs and restarts.

A rejected reply and its accepted request are often in different objects
(each direction is captured in its own aggregation window, delivered minutes
apart). So every input leaves behind, per (ENI, window), what may still pair:

- requests: a 64-bit hash of the flow their reply would have (addresses and
  ports swapped, same protocol and ENI), one entry per distinct flow;
- replies that found no request yet: the hash of their own flow, with a count.

A REJECT at window `wr` pairs with an ACCEPT at window `wq` on the same ENI
when `0 <= wr - wq <= lateness`: the request's window is the same or earlier,
whichever of the two arrives first. Each reject record counts once. Entries
whose window is older than the newest window seen minus the lateness are
dropped: nothing that could still pair with them is accepted any more.

Hashes are computed on whole batches with numpy, over Arrow's buffers (no
per-record Python). The state is a
snapshot committed with the counters, so it survives kill -9 and a retried
input (not committed, or committed and then a duplicate) pairs nothing twice.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

SNAPSHOT_NAME = "pairing"
#: one input's candidates, before pairing (the reply tuple is kept only until then, for the example)
CANDIDATES = pa.schema(
    [
        pa.field("eni", pa.string()),
        pa.field("window", pa.int64()),
        pa.field("hash", pa.uint64()),
        pa.field("request", pa.bool_()),
        # the record's flow: for the example line of a counted reject only (a request's, reversed)
        pa.field("src", pa.string()),
        pa.field("dst", pa.string()),
        pa.field("sport", pa.int64()),
        pa.field("dport", pa.int64()),
        pa.field("proto", pa.int64()),
    ]
)
REQUESTS = pa.schema([pa.field("window", pa.int64()), pa.field("hash", pa.uint64())])
REPLIES = pa.schema(
    [pa.field("eni", pa.string()), pa.field("window", pa.int64()), pa.field("hash", pa.uint64()), pa.field("n", pa.int64())]
)
_MUL = np.uint64(0x9E3779B97F4A7C15)
#: the string hash's base (odd: invertible mod 2^64) and its inverse
_P = np.uint64(1_000_003)
_INV = np.uint64(pow(1_000_003, -1, 2**64))


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit moves every output bit."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = h ^ (h >> np.uint64(31))
    return out


def _column_hash(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A uint64 per value: integers as they are, strings by a polynomial hash of their bytes."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_integer(col.type):
        return np.asarray(pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)).astype(np.uint64)
    # each distinct value once (ENIs and addresses repeat within a batch), then one take per row
    encoded = pc.dictionary_encode(pc.cast(col, pa.string()))
    indices = np.asarray(encoded.indices.to_numpy(zero_copy_only=False))
    out: np.ndarray = _string_hash(encoded.dictionary)[indices]
    return out


def _string_hash(col: pa.Array) -> np.ndarray:
    """sum(byte_j * P^(len-1-j)) mod 2^64 per string, for all strings at once: prefix sums of
    byte_j * P^-j over the data buffer (P is odd, so invertible mod 2^64), differenced at the offsets."""
    n = len(col)
    width = np.int64 if pa.types.is_large_string(col.type) else np.int32
    offsets = np.frombuffer(col.buffers()[1], dtype=width)[col.offset : col.offset + n + 1].astype(np.int64)
    data_buffer = col.buffers()[2]
    first, last = int(offsets[0]), int(offsets[-1])
    raw = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    data = raw[first:last].astype(np.uint64)
    offsets -= first
    size = len(data)
    inverse, powers = _powers(size)
    with np.errstate(over="ignore"):
        sums = np.zeros(size + 1, np.uint64)
        np.cumsum(data * inverse[1 : size + 1], dtype=np.uint64, out=sums[1:])
        h = (sums[offsets[1:]] - sums[offsets[:-1]]) * powers[offsets[1:]]
        lengths = (offsets[1:] - offsets[:-1]).astype(np.uint64)
        return _mix(h ^ (lengths * _MUL))


_POWERS: tuple[np.ndarray, np.ndarray] = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """P^-k and P^k for k = 0..size at least (computed once, grown when a batch needs more)."""
    global _POWERS
    inverse, powers = _POWERS
    if len(powers) <= size:
        n = max(size + 1, 2 * len(powers))
        with np.errstate(over="ignore"):
            inverse = np.cumprod(np.concatenate(([np.uint64(1)], np.full(n - 1, _INV, np.uint64))), dtype=np.uint64)
            powers = np.cumprod(np.concatenate(([np.uint64(1)], np.full(n - 1, _P, np.uint64))), dtype=np.uint64)
        _POWERS = (inverse, powers)  # one assignment: threads see the old pair or the new one
    return inverse, powers


def candidates(flows: pa.Table, is_request: pa.Array, is_reject: pa.Array) -> pa.Table:
    """Requests (hash of their reply's flow) and rejects (hash of their own) of `flows`: valid rows of
    interface-id, srcaddr, dstaddr, srcport, dstport, protocol and window."""
    keep = pc.or_(is_request, is_reject)
    request = is_request
    if not pc.all(keep).as_py():  # the caller passes accepts and rejects only: no copy then
        flows, request = flows.filter(keep), pc.filter(is_request, keep)
    if not flows.num_rows:
        return CANDIDATES.empty_table()
    cols = {n: flows.column(n) for n in ("interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol")}
    h = {n: _column_hash(c) for n, c in cols.items()}
    req = np.asarray(request.to_numpy(zero_copy_only=False), bool)
    # a request's reply comes back from where it went: its key is its flow reversed
    a = np.where(req, h["dstaddr"], h["srcaddr"])
    b = np.where(req, h["srcaddr"], h["dstaddr"])
    pa_ = np.where(req, h["dstport"], h["srcport"])
    pb = np.where(req, h["srcport"], h["dstport"])
    with np.errstate(over="ignore"):
        key = np.zeros(flows.num_rows, np.uint64)
        for part in (h["interface-id"], a, b, pa_, pb, h["protocol"]):
            key = _mix((key * _MUL) ^ part)
    src, dst, sport, dport = cols["srcaddr"], cols["dstaddr"], cols["srcport"], cols["dstport"]
    return pa.table(
        {
            "eni": pc.cast(cols["interface-id"], pa.string()),
            "window": pc.cast(flows.column("window"), pa.int64()),
            "hash": pa.array(key, pa.uint64()),
            "request": request,
            "src": pc.cast(src, pa.string()),
            "dst": pc.cast(dst, pa.string()),
            "sport": pc.cast(sport, pa.int64()),
            "dport": pc.cast(dport, pa.int64()),
            "proto": pc.cast(cols["protocol"], pa.int64()),
        },
        schema=CANDIDATES,
    )


def _text(row: pa.Table) -> str:
    """The example line of a reject from its candidate row, or from its request's (reversed: the same flow)."""
    r = row.slice(0, 1).to_pylist()[0]
    src, sport, dst, dport = r["src"], r["sport"], r["dst"], r["dport"]
    if r["request"]:
        src, sport, dst, dport = dst, dport, src, sport
    return f"{r['eni']} {src}:{sport} -> {dst}:{dport} protocol {r['proto']} REJECT"


@dataclasses.dataclass(frozen=True)
class Paired:
    """What one input's pairing counted: rejects per ENI and an example record per ENI."""

    counts: dict[str, int]
    examples: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Pairing:
    """Requests and waiting replies that may still pair (immutable: a new one per input)."""

    lateness_seconds: int
    requests: pa.Table = dataclasses.field(default_factory=REQUESTS.empty_table)
    replies: pa.Table = dataclasses.field(default_factory=REPLIES.empty_table)
    #: the newest window seen: the state keeps `lateness_seconds` before it
    newest: int | None = None

    def pair(self, found: pa.Table) -> tuple[Pairing, Paired]:
        """Pair one input's candidates with the state and among themselves."""
        if not found.num_rows:
            return self, Paired({}, {})
        is_req = found.column("request")
        new_req = found.select(["window", "hash"]).filter(is_req)  # numbers only: no strings copied
        rejects = found.filter(pc.invert(is_req))
        newest = pc.max(found.column("window")).as_py()
        newest = newest if self.newest is None else max(newest, self.newest)
        requests = pa.concat_tables([self.requests, new_req.cast(REQUESTS)])  # flow logs repeat a flow rarely
        counts: dict[str, int] = {}
        examples: dict[str, str] = {}
        # New rejects against every request known (old and new).
        rejects = rejects.append_column("row", pa.array(np.arange(rejects.num_rows), pa.int64()))
        hit_rows = _matches(rejects, requests, self.lateness_seconds)
        hit = rejects.take(hit_rows)
        waiting = rejects.filter(pc.invert(pc.is_in(rejects.column("row"), value_set=hit_rows)))
        _count(hit, counts, examples)
        # Replies waiting from earlier inputs against the new requests.
        old = self.replies.append_column("row", pa.array(np.arange(self.replies.num_rows), pa.int64()))
        late_rows = _matches(old, new_req.cast(REQUESTS), self.lateness_seconds)
        if len(late_rows):
            late = old.take(late_rows)
            g = late.group_by(["eni"], use_threads=False).aggregate([("n", "sum")])
            for eni, n in zip(g.column("eni").to_pylist(), g.column("n_sum").to_pylist(), strict=True):
                counts[eni] = counts.get(eni, 0) + n
            _late_examples(late, found, examples)
            old = old.filter(pc.invert(pc.is_in(old.column("row"), value_set=late_rows)))
        waiting_g = (
            waiting.group_by(["eni", "window", "hash"], use_threads=False)
            .aggregate([([], "count_all")])
            .rename_columns(["eni", "window", "hash", "n"])
            .cast(REPLIES)
        )
        replies = pa.concat_tables([old.select(REPLIES.names), waiting_g])
        floor = newest - self.lateness_seconds
        requests = requests.filter(pc.greater_equal(requests.column("window"), floor))
        replies = replies.filter(pc.greater_equal(replies.column("window"), floor))
        return Pairing(self.lateness_seconds, requests, replies, newest), Paired(counts, examples)

    def nbytes(self) -> int:
        return int(self.requests.nbytes + self.replies.nbytes)

    def snapshot(self) -> bytes:
        sink = io.BytesIO()
        newest = -1 if self.newest is None else self.newest
        sink.write(newest.to_bytes(8, "big", signed=True))
        for table in (self.requests, self.replies):
            buf = io.BytesIO()
            with pa.ipc.new_stream(buf, table.schema) as w:
                w.write_table(table)
            body = buf.getvalue()
            sink.write(len(body).to_bytes(8, "big"))
            sink.write(body)
        return sink.getvalue()

    @classmethod
    def restore(cls, blob: bytes, lateness_seconds: int) -> Pairing:
        newest = int.from_bytes(blob[:8], "big", signed=True)
        at, tables = 8, []
        for _ in range(2):
            size = int.from_bytes(blob[at : at + 8], "big")
            tables.append(pa.ipc.open_stream(blob[at + 8 : at + 8 + size]).read_all())
            at += 8 + size
        return cls(lateness_seconds, tables[0], tables[1], None if newest < 0 else newest)


def _matches(replies: pa.Table, requests: pa.Table, lateness: int) -> pa.Array:
    """Sorted, distinct `row` values of `replies` that pair with some request."""
    if not replies.num_rows or not requests.num_rows:
        return pa.array([], pa.int64())
    # a cheap semi-join first: of the many requests, only those some reply hashes to
    requests = requests.filter(pc.is_in(requests.column("hash"), value_set=pc.unique(replies.column("hash"))))
    if not requests.num_rows:
        return pa.array([], pa.int64())
    left = replies.select(["hash", "window", "row"]).rename_columns(["hash", "reply_window", "row"])
    joined = left.join(requests, ["hash"], join_type="inner", use_threads=False)
    if not joined.num_rows:
        return pa.array([], pa.int64())
    gap = pc.subtract(joined.column("reply_window"), joined.column("window"))
    ok = joined.filter(pc.and_(pc.greater_equal(gap, 0), pc.less_equal(gap, lateness)))
    rows = pc.unique(ok.column("row"))
    return pc.take(rows, pc.sort_indices(rows))


def _count(hit: pa.Table, counts: dict[str, int], examples: dict[str, str]) -> None:
    if not hit.num_rows:
        return
    g = hit.group_by(["eni"], use_threads=False).aggregate([([], "count_all"), ("row", "min")])
    for eni, n, row in zip(*(g.column(c).to_pylist() for c in ("eni", "count_all", "row_min")), strict=True):
        counts[eni] = counts.get(eni, 0) + n
        examples.setdefault(eni, _text(hit.filter(pc.equal(hit.column("row"), row))))


def _late_examples(late: pa.Table, found: pa.Table, examples: dict[str, str]) -> None:
    """A waiting reply's example: the request that paired it, reversed, is the reply's own flow."""
    for eni in pc.unique(late.column("eni")).to_pylist():
        if eni in examples:
            continue
        mine = late.filter(pc.equal(late.column("eni"), eni))
        req = found.filter(pc.and_(found.column("request"), pc.is_in(found.column("hash"), value_set=mine.column("hash"))))
        if req.num_rows:
            examples[eni] = _text(req)


# --- the fleet: replicas send candidates to the leader, which pairs them all ------------------------

#: the `source` of a window partial that carries one input's pairing candidates instead of windows
PARTIAL_SOURCE = "~nacl_pairs"
#: the leader's running counts of paired rejects (and examples), committed with its pairing state
TOTALS_SNAPSHOT = "pairing.totals"


def encode_candidates(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    with pa.ipc.new_stream(buf, CANDIDATES) as w:
        w.write_table(table.cast(CANDIDATES))
    return buf.getvalue()


def decode_candidates(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(blob).read_all().cast(CANDIDATES)


@dataclasses.dataclass
class Totals:
    """Rejects the fleet's leader paired, per ENI, with an example each: exported by the leader."""

    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, paired: Paired) -> None:
        for eni, n in paired.counts.items():
            self.counts[eni] = self.counts.get(eni, 0) + n
        for eni, text in paired.examples.items():
            self.examples.setdefault(eni, text)

    def snapshot(self) -> bytes:
        return orjson.dumps({"counts": self.counts, "examples": self.examples})

    @classmethod
    def restore(cls, blob: bytes) -> Totals:
        doc = orjson.loads(blob)
        return cls(dict(doc["counts"]), dict(doc["examples"]))
