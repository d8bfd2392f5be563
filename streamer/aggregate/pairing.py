"""NACL return rejects paired across chunks, inputs, replicas and restarts.

A rejected reply and its accepted request are often in different objects
(each direction is captured in its own aggregation window, delivered minutes
apart). So every input leaves behind, per window, what may still pair:

- requests: TCP or UDP ACCEPTs from an ephemeral port (1024-65535) to a
  lower port, as a 64-bit hash of the flow their reply would have (ENI,
  addresses and ports swapped, same protocol): a sorted set of hashes per
  window, 8 bytes an entry;
- replies that found no request yet: REJECTs to an ephemeral port from a
  lower one, a row per (ENI, hash) with how many wait and an example line.
  Most rejects are scans of service ports, which no reply goes to; but an
  internet-facing ENI also rejects backscatter (replies to spoofed SYNs),
  which no request ever answers. So a window holds at most
  `max_waiting_replies` rows (`insights.max_waiting_replies_per_window`);
  a reply already held counts up its row, a newcomer beyond the cap is
  dropped and counted (`Paired.dropped`).

A reply pairs with a request when the request's window is the same or at most
`lateness_seconds` earlier, whichever of the two arrives first. Each reject
record counts once. Windows older than the newest window seen minus the
lateness are dropped: a record that late is late for the detector too.

The state is committed with the counters as snapshot pieces (see `Pieces`):
each commit appends only the requests it adds (`pairing/w/<window>/q<seq>`),
the reply rows it adds or counts up (`.../r<seq>`) and the row keys (ENI
and hash, 8 bytes each) of the waiting replies it paired (`.../p<seq>`), and
drops old windows by name prefix. A window whose reply pieces hold more than twice its rows
(plus `COMPACT_ROWS`) has them rewritten as one `r<seq>`. So a kill -9 loses
nothing, a retried input (not committed, or a duplicate) pairs nothing twice,
and a commit writes what its input changed, not the whole state. (A
checkpoint from before kept a window's replies in one piece `.../r`, a row per
reply: it restores as the first step of its window.)

Hashes are computed on whole batches over Arrow's buffers (no per-record
Python): the address strings by `_scan.hash_strings` when the native part is
built, else by numpy (`_string_hash`, the reference: both give the same
hashes, so builds with and without a compiler pair with each other's state);
the cheap integer tests (protocol, ports, action) come first.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
from collections.abc import Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from streamer.aggregate.columns import equals, int_array, ints, valid, word_kinds

try:
    from streamer.decode import _scan
except ImportError:  # built without a C compiler
    _scan = None  # type: ignore[assignment]

#: the native string hash (None: no native part, one built before it, or STREAMER_NATIVE=0)
_native_hash = getattr(_scan, "hash_strings", None) if os.environ.get("STREAMER_NATIVE", "1") != "0" else None
#: the native candidate selection (None likewise)
_native_candidates = getattr(_scan, "nacl_candidates", None) if os.environ.get("STREAMER_NATIVE", "1") != "0" else None
#: the native merge of a window's request set with a batch's, and sort of a batch's requests (None likewise)
_native_merge = getattr(_scan, "merge_keys", None) if os.environ.get("STREAMER_NATIVE", "1") != "0" else None
_native_sort = getattr(_scan, "sort_requests", None) if os.environ.get("STREAMER_NATIVE", "1") != "0" else None

#: the ports a reply goes back to (AWS's advice for NACL rules covering every client's ephemeral range);
#: only TCP (6) and UDP (17) flows have ports
EPHEMERAL = (1024, 65535)
#: every piece of the pairing state is named under this prefix
PREFIX = "pairing/"
META = PREFIX + "meta"
#: one input's candidates: requests (window, hash) and replies (also ENI and the example line)
CANDIDATES = pa.schema(
    [
        pa.field("window", pa.int64()),
        pa.field("hash", pa.uint64()),
        pa.field("request", pa.bool_()),
        pa.field("eni", pa.string()),
        pa.field("example", pa.string()),
    ]
)
REPLIES = pa.schema(
    [pa.field("eni", pa.string()), pa.field("hash", pa.uint64()), pa.field("n", pa.int64()), pa.field("example", pa.string())]
)
#: rows of waiting replies one window holds at most (`insights.max_waiting_replies_per_window`)
MAX_WAITING_REPLIES = 20_000
_MUL = np.uint64(0x9E3779B97F4A7C15)
#: the string hash's base (odd: invertible mod 2^64) and its inverse
_P = np.uint64(1_000_003)
_INV = np.uint64(pow(1_000_003, -1, 2**64))


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit moves every output bit (in place on `h`, which it returns:
    one temporary instead of five)."""
    t = h >> np.uint64(30)
    h ^= t
    h *= np.uint64(0xBF58476D1CE4E5B9)
    np.right_shift(h, np.uint64(27), out=t)
    h ^= t
    h *= np.uint64(0x94D049BB133111EB)
    np.right_shift(h, np.uint64(31), out=t)
    h ^= t
    return h


def _strings_hash(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A uint64 per value of a string column (nulls hash as ""): a dictionary column hashes its few distinct
    values and spreads them through its codes; a plain one hashes every value (natively when built: no
    dictionary_encode pass, which costs more than the hashing)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    out = [np.zeros(0, np.uint64)]
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            indices = pc.fill_null(chunk.indices, 0) if chunk.indices.null_count else chunk.indices
            codes = np.asarray(indices.to_numpy(zero_copy_only=False))
            values = chunk.dictionary
            out.append(hash_strings(values)[codes] if len(values) else np.zeros(len(chunk), np.uint64))
        else:
            out.append(hash_strings(chunk))
    return out[1] if len(out) == 2 else np.concatenate(out)


def hash_strings(col: pa.Array) -> np.ndarray:
    """`_string_hash` of every value, by `_scan.hash_strings` when the native part is built and on."""
    if col.type != pa.string():
        col = pc.cast(col, pa.string())
    if _native_hash is None:
        return _string_hash(col)
    offsets, data = col.buffers()[1:3]
    if offsets is None:  # an empty array may have no buffers
        return np.zeros(len(col), np.uint64)
    return np.frombuffer(_native_hash(offsets, data if data is not None else b"", col.offset, len(col)), np.uint64)


def _string_hash(col: pa.Array) -> np.ndarray:
    """The reference string hash (`_scan.hash_strings` computes the same natively):
    sum(byte_j * P^(len-1-j)) mod 2^64 per string, for all strings at once: prefix sums of
    byte_j * P^-j over the data buffer (P is odd, so invertible mod 2^64), differenced at the offsets."""
    n = len(col)
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[col.offset : col.offset + n + 1].astype(np.int64)
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
        return _mix(h ^ (lengths * _MUL))  # a new array: mixed in place


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


def _flag(mask: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(mask.to_numpy(zero_copy_only=False), bool)


_K = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))


def _key(eni: np.ndarray, a: np.ndarray, b: np.ndarray, port_a: np.ndarray, port_b: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """The flow's 64-bit hash: its ports and protocol packed exactly into one integer
    (port_a << 24 | port_b << 8 | protocol), the (already mixed) string hashes weighted by position, so
    (a, b) and (b, a) differ. Arguments are fresh arrays (gathered rows): `eni` and `port_a` are reused."""
    packed = port_a.astype(np.uint64)
    packed <<= np.uint64(16)
    packed |= port_b.astype(np.uint64)
    packed <<= np.uint64(8)
    packed |= (proto & 0xFF).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = eni
        h *= _K[0]
        h += a * _K[1]
        h += b * _K[2]
        h += _mix(packed)
        return _mix(h)


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compared by identity
class Candidates:
    """One batch's (or one input's) pairing candidates as they come from `candidates`: requests as a sorted
    set of keys per window (a batch's, several batches' joined without a copy), replies as windows, keys,
    ENIs and example lines. Arrays, not one flagged table: the pairing step takes the two apart without a
    filter, a batch builds no table for its requests, and a request's window is not repeated per request."""

    #: (window, its request keys): each batch's sorted and distinct, any number per window
    requests: list[tuple[int, np.ndarray]]
    reply_windows: np.ndarray
    reply_keys: np.ndarray
    #: the replies' `eni` and `example` (`_REPLY_TEXT`), a row per reply
    reply_text: pa.Table

    @property
    def num_requests(self) -> int:
        return sum(len(keys) for _, keys in self.requests)

    @property
    def num_rows(self) -> int:
        return self.num_requests + len(self.reply_keys)

    @classmethod
    def join(cls, parts: list[Candidates]) -> Candidates:
        """Several batches' candidates as one input's (their requests' sets listed, not copied)."""
        parts = [p for p in parts if p.num_rows]
        if len(parts) <= 1:
            return parts[0] if parts else _NONE
        texts = [p.reply_text for p in parts if p.reply_text.num_rows]
        return cls(
            [stretch for p in parts for stretch in p.requests],
            np.concatenate([p.reply_windows for p in parts]),
            np.concatenate([p.reply_keys for p in parts]),
            pa.concat_tables(texts) if texts else _NO_TEXT,
        )

    def table(self) -> pa.Table:
        """As one `CANDIDATES` table: what a replica sends the leader (and what tests look at)."""
        n_req, n_rep = self.num_requests, len(self.reply_keys)
        request_windows = [np.full(len(keys), w, np.int64) for w, keys in self.requests]
        return pa.table(
            {
                "window": np.concatenate([*request_windows, self.reply_windows]),
                "hash": np.concatenate([*(keys for _, keys in self.requests), self.reply_keys]),
                "request": np.concatenate([np.ones(n_req, bool), np.zeros(n_rep, bool)]),
                "eni": pa.concat_arrays([pa.nulls(n_req, pa.string()), *self.reply_text.column("eni").chunks]),
                "example": pa.concat_arrays([pa.nulls(n_req, pa.string()), *self.reply_text.column("example").chunks]),
            },
            schema=CANDIDATES,
        )

    @classmethod
    def of_table(cls, table: pa.Table) -> Candidates:
        """A `CANDIDATES` table's rows, in any order (a replica of any version sent it): its requests
        grouped by window (the pairing step sorts each window's keys)."""
        windows = np.asarray(table.column("window").to_numpy(), np.int64)
        hashes = np.asarray(table.column("hash").to_numpy(), np.uint64)
        is_req = _flag(table.column("request"))
        replies = table.filter(pa.array(~is_req)).select(["eni", "example"])
        request_windows, request_keys = windows[is_req], hashes[is_req]
        order = np.argsort(request_windows, kind="stable")
        return cls(
            _stretches(request_windows[order], request_keys[order]),
            windows[~is_req],
            hashes[~is_req],
            replies.cast(_REPLY_TEXT),
        )


def _stretches(windows: np.ndarray, keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Keys grouped by window as (window, slice of `keys`), given windows in order."""
    if not len(keys):
        return []
    cuts = [0, *(np.flatnonzero(windows[1:] != windows[:-1]) + 1).tolist(), len(keys)]
    return [(int(windows[start]), keys[start:end]) for start, end in itertools.pairwise(cuts)]


_REPLY_TEXT = pa.schema([pa.field("eni", pa.string()), pa.field("example", pa.string())])
_NO_TEXT = _REPLY_TEXT.empty_table()
_NONE = Candidates([], np.zeros(0, np.int64), np.zeros(0, np.uint64), _NO_TEXT)


def candidates(table: pa.Table, window_seconds: int, max_time: int | None = None) -> Candidates:
    """One batch's requests and possible replies: needs interface-id, srcaddr, dstaddr, srcport, dstport,
    protocol, action and end or start. A record later than `max_time` (the wall clock plus the allowed
    skew) is none: its window would make every window kept look older than the lateness.

    Selected and keyed in one native pass (`_scan.nacl_candidates`) when built, else by numpy
    (`_select_reference`, the reference: both give the same candidates)."""
    times = [table.column(n) for n in ("end", "start") if n in table.column_names]
    if not times or not table.num_rows:
        return _NONE
    # a null end is -1 (not what lies under the null, 0 from the tokenizer): then the start, else none
    t = (ints(times[0]) if times[0].null_count else _values_or_ints(times[0])).astype(np.int64, copy=False)
    if len(times) > 1 and times[0].null_count:
        t = np.where(t < 0, ints(times[1]), t)
    select = _select_native if _native_candidates is not None else _select_reference
    got = select(table, t, window_seconds, max_time)
    if got is None:
        return _NONE
    request_windows, request_keys, r, reply_windows, reply_keys = got
    requests = _stretches(*_distinct(request_windows, request_keys, window_seconds))
    return Candidates(requests, reply_windows, reply_keys, _examples(table, r))


#: the requests' windows and keys; the replies' rows, windows and keys
Selected = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _select_reference(table: pa.Table, t: np.ndarray, window_seconds: int, max_time: int | None) -> Selected | None:
    """The candidates' rows, windows and keys by numpy: the cheap integer tests first, then the strings
    hashed and keyed (the reference `_scan.nacl_candidates` must equal)."""
    sport, dport, proto = (ints(table.column(n)) for n in ("srcport", "dstport", "protocol"))
    low, high = EPHEMERAL
    # A request leaves from an ephemeral port to a lower one; its reply comes back the other way.
    ok = (t >= 0) & ((proto == 6) | (proto == 17))
    if max_time is not None:
        ok &= t <= max_time
    req = ok & (sport >= low) & (sport <= high) & (dport < sport) & (dport >= 0)
    rep = ok & (dport >= low) & (dport <= high) & (sport < dport) & (sport >= 0)
    if not (req.any() or rep.any()):
        return None
    action = table.column("action")
    req &= equals(action, "ACCEPT")
    rep &= equals(action, "REJECT")
    eni, src, dst = (table.column(n) for n in ("interface-id", "srcaddr", "dstaddr"))
    for col in (eni, src, dst):
        if col.null_count:
            present = valid(col)
            req &= present
            rep &= present
    q, r = np.flatnonzero(req), np.flatnonzero(rep)
    if not (len(q) or len(r)):
        return None
    he, hs, hd = (_strings_hash(c) for c in (eni, src, dst))
    window = t // window_seconds * window_seconds
    # a request's reply comes back from where it went: its key is its own flow reversed
    request_keys = _key(he[q], hd[q], hs[q], dport[q], sport[q], proto[q])
    reply_keys = _key(he[r], hs[r], hd[r], sport[r], dport[r], proto[r])
    return window[q], request_keys, r, window[r], reply_keys


def _select_native(table: pa.Table, t: np.ndarray, window_seconds: int, max_time: int | None) -> Selected | None:
    """`_select_reference` in one pass of `_scan.nacl_candidates`: the columns go as their buffers and
    dictionary codes (no copy per row but where a column is neither), nulls as one byte per row."""
    assert _native_candidates is not None  # chosen by `candidates` only then
    ports = [_single(table.column(c)) for c in ("srcport", "dstport", "protocol")]
    eni, action, src, dst = (_single(table.column(c)) for c in ("interface-id", "action", "srcaddr", "dstaddr"))
    src, dst = (c if c.type == pa.string() else pc.cast(c, pa.string()) for c in (src, dst))
    action_codes, action_kinds = _coded(action, _action_kinds)
    eni_codes, eni_hashes = _coded(eni, hash_strings)
    if not action_kinds.any():
        return None
    nulls = [c for c in (*ports, eni, action, src, dst) if c.null_count]
    present = np.logical_and.reduce([valid(c) for c in nulls]).view(np.uint8) if nulls else b""
    (src_offsets, src_data), (dst_offsets, dst_data) = (c.buffers()[1:3] for c in (src, dst))
    got = _native_candidates(
        t, *(_values_or_ints(c) for c in ports), present, action_codes, action_kinds, eni_codes, eni_hashes,
        src_offsets, src_data or b"", src.offset, dst_offsets, dst_data or b"", dst.offset,
        window_seconds, _NEVER if max_time is None else max_time,
    )  # fmt: skip
    n_req, n_rep, rows, windows, keys = got
    if not (n_req or n_rep):
        return None
    n = table.num_rows
    rows_at, windows_at, keys_at = (np.frombuffer(b, d) for b, d in ((rows, np.int32), (windows, np.int64), (keys, np.uint64)))
    back = slice(n - 1, n - n_rep - 1 if n_rep < n else None, -1)  # replies were written from the back
    # the replies are copied out: a view would keep the whole batch's buffers alive as long as the candidates
    return windows_at[:n_req], keys_at[:n_req], rows_at[back].astype(np.int64), windows_at[back].copy(), keys_at[back].copy()


def _coded(col: pa.Array, per_value: Callable[[pa.Array], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A string column as int32 codes and `per_value` of the words they stand for: a dictionary's own
    indices and words; any other column is its own words (code i is row i)."""
    if pa.types.is_dictionary(col.type):
        codes = _values_or_ints(col.indices)
        return (codes if codes.dtype == np.int32 else codes.astype(np.int32)), per_value(col.dictionary)
    words = col if col.type == pa.string() else pc.cast(col, pa.string())
    return np.arange(len(col), dtype=np.int32), per_value(words)


def _action_kinds(words: pa.Array) -> np.ndarray:
    """1 ACCEPT, 2 REJECT, 0 anything else (or null), a byte per word."""
    return word_kinds(words, _ACTIONS)


_ACTIONS = {"ACCEPT": 1, "REJECT": 2}
#: `max_time` when there is none
_NEVER = 2**63 - 1


def _distinct(windows: np.ndarray, keys: np.ndarray, window_seconds: int) -> tuple[np.ndarray, np.ndarray]:
    """Requests sorted by window, then key, each once: sorted and deduplicated here, on the batch's worker
    thread, the state's merge (`_add_requests`, one thread for every input) only merges sorted runs."""
    if len(keys) < 2:
        return windows.copy(), keys.copy()  # not views of the batch's buffers (see `_select_native`)
    if _native_sort is not None:  # a radix sort in one call (`_scan.sort_requests`; what follows is the reference)
        out_windows, out_keys = np.empty(len(keys), np.int64), np.empty(len(keys), np.uint64)
        n = _native_sort(np.ascontiguousarray(windows, np.int64), np.ascontiguousarray(keys, np.uint64), out_windows, out_keys)
        return out_windows[:n], out_keys[:n]
    if windows[0] == windows[-1] and (windows == windows[0]).all():  # most batches: one window
        keys = np.sort(keys)
    else:
        # a batch spans few windows: their numbers from the first fit 16 bits, which numpy sorts by radix
        steps = (windows - windows.min()) // window_seconds
        few = steps.max() < 1 << 16
        order = np.argsort(steps.astype(np.uint16) if few else windows, kind="stable")
        windows, keys = windows[order], keys[order]
        cuts = [0, *(np.flatnonzero(windows[1:] != windows[:-1]) + 1).tolist(), len(keys)]
        for start, end in itertools.pairwise(cuts):
            keys[start:end].sort()
    keep = np.ones(len(keys), bool)
    keep[1:] = (keys[1:] != keys[:-1]) | (windows[1:] != windows[:-1])
    return windows[keep], keys[keep]


def _single(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def _values_or_ints(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An int32 or int64 column's values as they are (no copy; anything under a null), else as int64 with
    -1 for null."""
    chunk = _single(col)
    if chunk.type in (pa.int32(), pa.int64()) and chunk.buffers()[1] is not None:
        return np.frombuffer(chunk.buffers()[1], chunk.type.to_pandas_dtype())[chunk.offset : chunk.offset + len(chunk)]
    return ints(chunk)


#: replies in a batch up to this many get their example lines from Python strings (an Arrow kernel call
#: costs more than formatting a few lines); more (a scan of ephemeral ports) from Arrow, by whole columns
_FEW_EXAMPLES = 64
_EXAMPLE_COLUMNS = ("interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol")


def _examples(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """The interface ids and example lines ("eni src:port -> dst:port protocol p REJECT") of `rows`
    (`_REPLY_TEXT`)."""
    if not len(rows):
        return _NO_TEXT
    if len(rows) <= _FEW_EXAMPLES:
        at = int_array(rows)
        eni, src, dst, sport, dport, proto = (_words_at(_single(table.column(c)), rows, at) for c in _EXAMPLE_COLUMNS)
        lines = [
            None if None in (e, s, d, sp, dp, p) else f"{e} {s}:{sp} -> {d}:{dp} protocol {p} REJECT"
            for e, s, d, sp, dp, p in zip(eni, src, dst, sport, dport, proto, strict=True)
        ]
        return pa.table([pa.array(eni, pa.string()), pa.array(lines, pa.string())], schema=_REPLY_TEXT)
    at = int_array(rows)
    text = [_text_at(_single(table.column(c)), rows, at) for c in _EXAMPLE_COLUMNS]
    example = pc.binary_join_element_wise(
        text[0], " ", text[1], ":", text[3], " -> ", text[2], ":", text[4], " protocol ", text[5], " REJECT", ""
    )
    return pa.table([text[0], example], schema=_REPLY_TEXT)


def _words_at(col: pa.Array, rows: np.ndarray, at: pa.Array) -> list[object]:
    """The values at a few `rows` (`at` as Arrow) as Python strings: an integer as its decimal text, None
    where null. A dictionary's words are looked up by code (its `to_pylist` converts the whole dictionary)."""
    if pa.types.is_integer(col.type):
        return [None if v is None else str(v) for v in col.take(at).to_pylist()]
    if not pa.types.is_dictionary(col.type):
        taken: list[object] = col.take(at).to_pylist()
        return taken
    if not len(col.dictionary):
        return [None] * len(rows)
    indices = col.indices
    codes = np.frombuffer(indices.buffers()[1], indices.type.to_pandas_dtype())[indices.offset :][rows]
    # a code under a null may be anything
    words: list[object] = col.dictionary.take(int_array(codes.clip(0, len(col.dictionary) - 1))).to_pylist()
    if not col.null_count:
        return words
    present = valid(col)[rows].tolist()
    return [w if ok else None for w, ok in zip(words, present, strict=True)]


def _text_at(col: pa.Array, rows: np.ndarray, at: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(col.type):  # the few rows' words, not the whole column decoded
        return pc.cast(col.dictionary.take(int_array(ints(col.indices, 0)[rows])), pa.string())
    taken = col.take(at)
    return taken if taken.type == pa.string() else pc.cast(taken, pa.string())


@dataclasses.dataclass(frozen=True)
class Paired:
    """What one input's pairing counted: rejects per ENI and an example record per ENI; and the unpaired
    replies it could not keep waiting (their window held `max_waiting_replies` rows already)."""

    counts: dict[str, int]
    examples: dict[str, str]
    dropped: int = 0


@dataclasses.dataclass
class Pieces:
    """The snapshot pieces one pairing step writes, and the name prefixes it drops (before writing)."""

    snapshots: dict[str, bytes] = dataclasses.field(default_factory=dict)
    drop: list[str] = dataclasses.field(default_factory=list)

    def then(self, later: Pieces) -> None:
        """Fold a later step's pieces into these (what it drops goes, even if written here)."""
        for prefix in later.drop:
            for name in [n for n in self.snapshots if n.startswith(prefix)]:
                del self.snapshots[name]
        self.drop.extend(later.drop)
        self.snapshots.update(later.snapshots)


def _window_prefix(window: int) -> str:
    return f"{PREFIX}w/{window:012d}/"


def _isin(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.searchsorted(sorted_set, values)
    np.minimum(at, len(sorted_set) - 1, out=at)  # not clip(): its checks cost more than the search
    found: np.ndarray = sorted_set[at] == values
    return found


def _encode_replies(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    with pa.ipc.new_stream(buf, REPLIES) as w:
        w.write_table(table)
    return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class Pairing:
    """Requests and waiting replies that may still pair (immutable: a new one per input)."""

    lateness_seconds: int
    #: window -> sorted distinct hashes of the requests seen in it
    requests: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    #: window -> its waiting replies (`REPLIES`), a row per (ENI, hash) with how many wait (a hash covers its ENI)
    replies: dict[int, pa.Table] = dataclasses.field(default_factory=dict)
    #: the newest window seen: the state keeps `lateness_seconds` before it
    newest: int | None = None
    #: the next requests piece's number (pieces of one window never share a name)
    seq: int = 0
    #: rows a window holds at most in `replies` (newcomers beyond it are dropped, counted in `Paired.dropped`)
    max_waiting_replies: int = MAX_WAITING_REPLIES
    #: window -> rows its reply pieces hold in the store (appended rows and paired row keys): past twice what it
    #: holds, the window's reply pieces are rewritten as one
    written: dict[int, int] = dataclasses.field(default_factory=dict)

    def pair(self, found: Candidates, write: bool = True) -> tuple[Pairing, Paired, Pieces]:
        """Pair one input's candidates with the state and among themselves (and, with `write`, the
        pieces that commit the change)."""
        if not found.num_rows:
            return self, Paired({}, {}), Pieces()
        lateness = self.lateness_seconds
        rep_w, rep_h = found.reply_windows, found.reply_keys
        top = max([w for w, keys in found.requests if len(keys)] + ([int(rep_w.max())] if len(rep_w) else []))
        newest = top if self.newest is None else max(top, self.newest)
        requests, replies, written = dict(self.requests), dict(self.replies), dict(self.written)
        pieces = Pieces()
        added = _add_requests(requests, found.requests)
        counts: dict[str, int] = {}
        examples: dict[str, str] = {}
        # New replies against every request known, old and new (only windows a reply may reach).
        rep = found.reply_text
        hit = np.zeros(len(rep_h), bool)
        reach = (int(rep_w.min()) - lateness, int(rep_w.max())) if len(rep_h) else (1, 0)
        for q, known in requests.items():
            if not reach[0] <= q <= reach[1]:
                continue
            close = (rep_w >= q) & (rep_w - q <= lateness) & ~hit
            if close.any():
                hit[close] = _isin(rep_h[close], known)
        if hit.any():
            _tally(rep.filter(pa.array(hit)), np.ones(int(hit.sum()), np.int64), counts, examples)
        # Replies waiting from earlier inputs against the requests this one added: every waiting reply at
        # once against each window added (a few numpy calls per window added, not per pair of windows); their
        # rows go.
        paired_rows: dict[int, np.ndarray] = {}
        late_by_window = _late(self.replies, added, lateness) if added and self.replies else {}
        for w, late in late_by_window.items():
            table = self.replies[w]
            _tally(table.filter(pa.array(late)), np.asarray(table.column("n").to_numpy())[late], counts, examples)
            replies[w] = table.filter(pa.array(~late))
            paired_rows[w] = _row_keys(table.column("eni").filter(pa.array(late)), _hashes(table)[late])
        # Replies that found nothing wait in their window: a row per (ENI, hash) with a count, newcomers only
        # while the window holds fewer than `max_waiting_replies` rows (the rest are dropped and counted).
        appended: dict[int, pa.Table] = {}
        dropped = 0
        unpaired = np.flatnonzero(~hit)
        if len(unpaired):
            unpaired = unpaired[np.argsort(rep_w[unpaired], kind="stable")]  # by window, arrival order kept
            waiting_windows = rep_w[unpaired]
            cuts = np.flatnonzero(waiting_windows[1:] != waiting_windows[:-1]) + 1
            for start, end in zip([0, *cuts.tolist()], [*cuts.tolist(), len(unpaired)], strict=True):
                w = int(waiting_windows[start])
                rows = unpaired[start:end]
                held, add, lost = _wait(replies.get(w), rep.take(int_array(rows)), rep_h[rows], self.max_waiting_replies)
                dropped += lost
                if add is not None:
                    replies[w], appended[w] = held, add
        # What may no longer pair goes; the rest is written as pieces.
        floor = newest - lateness
        for w in [w for w in {*requests, *replies} if w < floor]:
            requests.pop(w, None)
            replies.pop(w, None)
            written.pop(w, None)
            if w in self.requests or w in self.replies:
                pieces.drop.append(_window_prefix(w))
        for q, new in added.items() if write else ():
            if q >= floor and len(new):
                pieces.snapshots[f"{_window_prefix(q)}q{self.seq:012d}"] = new.tobytes()
        for w in {*paired_rows, *appended}:
            if w < floor:
                continue
            prefix = _window_prefix(w)
            if not replies[w].num_rows:  # nothing waits there any more
                del replies[w]
                written.pop(w, None)
                pieces.drop.extend([f"{prefix}r", f"{prefix}p"])
                continue
            gone, add = paired_rows.get(w), appended.get(w)
            written[w] = written.get(w, 0) + (0 if gone is None else len(gone)) + (0 if add is None else add.num_rows)
            if written[w] > 2 * replies[w].num_rows + COMPACT_ROWS:  # rewritten as one piece: what it holds
                written[w] = replies[w].num_rows
                if write:
                    pieces.drop.extend([f"{prefix}r", f"{prefix}p"])
                    pieces.snapshots[f"{prefix}r{self.seq:012d}"] = _encode_replies(replies[w])
                continue
            if write and gone is not None:  # applied before the same step's appended rows (`restore`)
                pieces.snapshots[f"{prefix}p{self.seq:012d}"] = np.unique(gone).tobytes()
            if write and add is not None:
                pieces.snapshots[f"{prefix}r{self.seq:012d}"] = _encode_replies(add)
        pieces.snapshots[META] = orjson.dumps({"newest": newest, "seq": self.seq + 1})
        after = Pairing(lateness, requests, replies, newest, self.seq + 1, self.max_waiting_replies, written)
        return after, Paired(counts, examples, dropped), pieces

    def entries(self) -> int:
        return sum(len(a) for a in self.requests.values()) + sum(int(t.num_rows) for t in self.replies.values())

    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.requests.values()) + sum(int(t.nbytes) for t in self.replies.values())

    @classmethod
    def restore(cls, pieces: dict[str, bytes], lateness_seconds: int, max_waiting_replies: int = MAX_WAITING_REPLIES) -> Pairing:
        """The state from the pieces committed under `PREFIX` (none: an empty state). A window's reply pieces
        apply in step order (a step's paired rows before its appended rows); a checkpoint written before
        they were appended holds one piece `r` per window, a row per reply, which comes first."""
        if META not in pieces:
            return cls(lateness_seconds, max_waiting_replies=max_waiting_replies)
        meta = orjson.loads(pieces[META])
        parts: dict[int, list[np.ndarray]] = {}
        steps: dict[int, list[tuple[int, int, bytes]]] = {}
        for name, blob in pieces.items():
            if name == META:
                continue
            window_text, part = name[len(PREFIX) + 2 :].split("/")
            window = int(window_text)
            if part[0] == "q":
                parts.setdefault(window, []).append(np.frombuffer(blob, np.uint64))
            else:  # "r" (before appending), "p<seq>", "r<seq>"
                steps.setdefault(window, []).append((int(part[1:] or -1), 0 if part[0] == "p" else 1, blob))
        requests = {w: np.unique(np.concatenate(p)) for w, p in parts.items()}
        replies: dict[int, pa.Table] = {}
        written: dict[int, int] = {}
        for window, found in steps.items():
            tables: list[pa.Table] = []
            for _, kind, blob in sorted(found, key=lambda step: step[:2]):
                if kind == 0:
                    gone = np.frombuffer(blob, np.uint64)
                    tables = [t.filter(pa.array(~np.isin(_row_keys(t.column("eni"), _hashes(t)), gone))) for t in tables]
                    written[window] = written.get(window, 0) + len(gone)
                else:
                    table = pa.ipc.open_stream(blob).read_all().cast(REPLIES)
                    tables.append(table)
                    written[window] = written.get(window, 0) + table.num_rows
            held = _fold_replies(tables)
            if held.num_rows:
                replies[window] = held
        return cls(
            lateness_seconds, requests, replies, int(meta["newest"]), int(meta["seq"]), max_waiting_replies, written
        )


#: a window's reply pieces are rewritten as one when they hold more than twice its rows plus this many
COMPACT_ROWS = 1024


def _fold_replies(tables: list[pa.Table]) -> pa.Table:
    """Reply rows as one row per (ENI, hash): counts summed, the first example kept."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return REPLIES.empty_table()
    table = pa.concat_tables(tables)
    hashes = _hashes(table)
    keys, first, inverse = np.unique(_row_keys(table.column("eni"), hashes), return_index=True, return_inverse=True)
    if len(keys) == len(hashes):
        return table.combine_chunks()
    n = np.zeros(len(keys), np.int64)
    np.add.at(n, inverse, np.asarray(table.column("n").to_numpy(), np.int64))
    order = np.argsort(first, kind="stable")  # rows in the order they first came
    rows = first[order]
    return _reply_rows(table, int_array(rows), hashes[rows], n[order])


def _reply_rows(text: pa.Table, rows: pa.Array, hashes: np.ndarray, n: np.ndarray) -> pa.Table:
    """`REPLIES` rows: the ENI and example of `rows` of `text`, with their hashes and counts."""
    eni, example = text.column("eni").take(rows), text.column("example").take(rows)
    keys, counts = int_array(np.asarray(hashes, np.uint64)), int_array(np.asarray(n, np.int64))  # no pa.array: numpy.ma
    return pa.table([eni, keys, counts, example], schema=REPLIES)


def _hashes(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column("hash").to_numpy(), np.uint64)


def _row_keys(eni: pa.ChunkedArray | pa.Array, hashes: np.ndarray) -> np.ndarray:
    """What names a waiting reply's row: its ENI and its hash, mixed into 64 bits. (The candidates' hash
    covers the ENI already, `_key`; rows that arrive with the same hash under another ENI stay apart all the
    same, each counted under its own ENI.)"""
    with np.errstate(over="ignore"):
        mixed = _strings_hash(eni) * _K[0]  # a new array: mixed in place
        mixed += hashes
        return _mix(mixed)


def _wait(held: pa.Table | None, text: pa.Table, hashes: np.ndarray, limit: int) -> tuple[pa.Table, pa.Table | None, int]:
    """One window's unpaired replies (`text`'s rows, their `hashes`, in arrival order) added to what waits
    there: an (ENI, hash) already held counts up its row; a new one gets a row while the window has room.
    Returns the window's rows, the rows to append to its pieces (None: nothing changed) and the replies
    dropped."""
    keys, first, n = np.unique(_row_keys(text.column("eni"), hashes), return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")  # first come, first kept
    keys, first, n = keys[order], first[order], n[order]
    known = np.zeros(len(keys), bool)
    size = 0 if held is None else held.num_rows
    if size:
        assert held is not None
        held_keys = _row_keys(held.column("eni"), _hashes(held))
        by_key = np.argsort(held_keys, kind="stable")
        at = np.searchsorted(held_keys, keys, sorter=by_key).clip(0, size - 1)
        known = held_keys[by_key[at]] == keys
    fresh = np.flatnonzero(~known)
    room = max(0, limit - size)
    kept = np.concatenate([np.flatnonzero(known), fresh[:room]])
    lost = int(n[fresh[room:]].sum())
    if not len(kept):
        return held if held is not None else REPLIES.empty_table(), None, lost
    kept.sort()
    add = _reply_rows(text, int_array(first[kept]), hashes[first[kept]], n[kept])
    if not size:
        return add, add, lost
    assert held is not None
    counts = np.asarray(held.column("n").to_numpy(), np.int64).copy()
    np.add.at(counts, by_key[at[known]], n[known])
    new_rows = add.filter(pa.array(~known[kept]))
    return pa.concat_tables([held.set_column(2, "n", int_array(counts)), new_rows]).combine_chunks(), add, lost


def _late(waiting: dict[int, pa.Table], added: dict[int, np.ndarray], lateness: int) -> dict[int, np.ndarray]:
    """Which waiting replies a request just added pairs with (same key, its window the same or at most
    `lateness` earlier): a mask per waiting window that has any, in `waiting`'s order."""
    windows = list(waiting)
    hashes = [np.asarray(waiting[w].column("hash").to_numpy(), np.uint64) for w in windows]
    every = np.concatenate(hashes) if len(hashes) > 1 else hashes[0]
    at = np.repeat(np.asarray(windows, np.int64), [len(h) for h in hashes])
    late = np.zeros(len(every), bool)
    for q, new in added.items():
        near = (at >= q) & (at - q <= lateness)
        if near.any():
            late |= near & _isin(every, new)
    if not late.any():
        return {}
    cuts = np.cumsum([0, *(len(h) for h in hashes)])
    masks = (late[cuts[i] : cuts[i + 1]] for i in range(len(windows)))
    return {w: mask for w, mask in zip(windows, masks, strict=True) if mask.any()}


def _add_requests(requests: dict[int, np.ndarray], stretches: list[tuple[int, np.ndarray]]) -> dict[int, np.ndarray]:
    """Merge new requests into `requests` (copies of the windows touched); returns what is new per window."""
    added: dict[int, np.ndarray] = {}
    by_window: dict[int, list[np.ndarray]] = {}
    for w, keys in stretches:
        if len(keys):
            by_window.setdefault(w, []).append(keys)
    merge = _merge_native if _native_merge is not None else _merge_reference
    for w, parts in by_window.items():
        # sorted runs (one per batch, `_distinct`), merged by a stable sort; a wire input's any order is sorted
        h_part = np.sort(parts[0] if len(parts) == 1 else np.concatenate(parts), kind="stable")
        fresh = h_part[np.concatenate(([True], h_part[1:] != h_part[:-1]))]
        known = requests.get(w)
        merged, fresh = merge(known if known is not None else _NO_KEYS, fresh)
        if len(fresh):
            requests[w] = merged
            added[w] = fresh
    return added


_NO_KEYS = np.zeros(0, np.uint64)


def _merge_reference(known: np.ndarray, fresh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A window's request set with a batch's (both sorted, distinct): the union (`known` itself when nothing
    is new) and the keys that are new. `_scan.merge_keys` computes the same in one pass."""
    if not len(known):
        return _merged(known, fresh, np.zeros(len(fresh), np.int64)), fresh
    at = np.searchsorted(known, fresh)
    new = known[np.minimum(at, len(known) - 1)] != fresh
    fresh = fresh[new]
    return (_merged(known, fresh, at[new]) if len(fresh) else known), fresh


def _merge_native(known: np.ndarray, fresh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_merge_reference` by `_scan.merge_keys`: the union is written into a block from Arrow's allocator
    (see `_merged`), cut to its size when some keys were known already."""
    assert _native_merge is not None
    n = len(known) + len(fresh)
    out = np.frombuffer(pa.allocate_buffer(n * 8), np.uint64) if n else np.zeros(0, np.uint64)
    added = np.empty(len(fresh), np.uint64)
    size, n_added = _native_merge(np.ascontiguousarray(known), np.ascontiguousarray(fresh), out, added)
    if not n_added:
        return known, added[:0]
    if size < n:  # keys known already: the set in a block of its own size, not a view of a larger one
        out = _merged(out[:size], _NO_KEYS, _NO_KEYS.astype(np.int64))
    return out, added[:n_added]


def _merged(known: np.ndarray, fresh: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Sorted `known` with sorted `fresh` (none in `known`) inserted at `at`: a new request set.

    Its block comes from Arrow's allocator, not malloc: the sets live for many inputs while the
    pairing's temporaries come and go, and in malloc's heap the two together left holes (the 10 M
    replay's peak RSS grew by tens of MiB)."""
    n = len(known) + len(fresh)
    out = np.frombuffer(pa.allocate_buffer(n * 8), np.uint64) if n else np.zeros(0, np.uint64)
    if not len(known) or not len(fresh):  # a new window (or nothing new): a copy, no scatter
        out[:] = fresh if len(fresh) else known
        return out
    where = at + np.arange(len(fresh))
    rest = np.ones(n, bool)
    rest[where] = False
    out[rest] = known
    out[where] = fresh
    return out


def _tally(hit: pa.Table, n: np.ndarray, counts: dict[str, int], examples: dict[str, str]) -> None:
    """Add paired rejects (`eni`, `example` columns; `n` records each) to the per-ENI counts and examples."""
    if not hit.num_rows:
        return
    g = pa.table({"eni": hit.column("eni"), "n": n, "example": hit.column("example")})
    g = g.group_by(["eni"], use_threads=False).aggregate([("n", "sum"), ("example", "first")])
    for eni, total, text in zip(*(g.column(c).to_pylist() for c in ("eni", "n_sum", "example_first")), strict=True):
        counts[eni] = counts.get(eni, 0) + total
        examples.setdefault(eni, text)


# --- the fleet: replicas send candidates to the leader, which pairs them all ------------------------

#: the `source` of a window partial that carries one input's pairing candidates instead of windows
PARTIAL_SOURCE = "~nacl_pairs"


def encode_candidates(found: Candidates) -> bytes:
    buf = io.BytesIO()
    with pa.ipc.new_stream(buf, CANDIDATES) as w:
        w.write_table(found.table())
    return buf.getvalue()


def decode_candidates(blob: bytes) -> Candidates:
    return Candidates.of_table(pa.ipc.open_stream(blob).read_all().cast(CANDIDATES))
