"""The embedded checkpoint store: one SQLite transaction per group of finished inputs.

"These positions are done" is committed together with the state they
produced (counter deltas, window snapshots), and only then is the input
acknowledged upstream. A kill -9 at any moment therefore loses nothing and
counts nothing twice: either the transaction landed (positions are done,
counters include the object) or it did not (the object is read again).

Positions come in two kinds:
- done keys: set membership, e.g. `s3://bucket/key#etag`, pruned after a retention;
- cursors: a value per (source, partition), e.g. a Kinesis shard's sequence number.

The done-key check is part of the transaction: a commit whose key is already
done (another source on the same bucket got there first) is rolled back and
reported as a duplicate, so an object is never counted twice. A group of
inputs (`commit_group`) is decided by the one claim rule both stores share
(`store.plan`); if one is refused nothing is written and the refusals are
reported, for the caller to commit the others again.

All calls are blocking; the service runs them on one dedicated thread.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa

from streamer.aggregate import insights as ins
from streamer.aggregate.counters import SCHEMA, Counters
from streamer.aggregate.state import LOG_STATUS, FlowState
from streamer.store.base import CheckpointError, Commit, Done, Refused, pause_in_transaction
from streamer.store.context_table import SQLITE_DDL, SqliteContextTable
from streamer.store.plan import Live, Plan, Wanted, plan, wanted

log = logging.getLogger(__name__)

_SCHEMA_VERSION = 3
_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    interface_id TEXT NOT NULL, action TEXT NOT NULL, log_status TEXT NOT NULL,
    records INTEGER NOT NULL, packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (interface_id, action, log_status)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decode_errors (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS done (
    namespace TEXT NOT NULL, key TEXT NOT NULL, outcome TEXT NOT NULL, done_at REAL NOT NULL,
    PRIMARY KEY (namespace, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS done_at ON done (done_at);
CREATE TABLE IF NOT EXISTS cursors (
    source TEXT NOT NULL, partition TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (source, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS interfaces (interface_id TEXT PRIMARY KEY, last_seen REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS insights (
    kind TEXT NOT NULL, key1 TEXT NOT NULL, key2 TEXT NOT NULL, records INTEGER NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (kind, key1, key2)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (name TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (name, key)) WITHOUT ROWID;
"""
#: schema 1 had no interface membership: every interface already counted becomes a member, seen now
_MIGRATE_1_TO_2 = "INSERT OR IGNORE INTO interfaces SELECT DISTINCT interface_id, ? FROM counters WHERE interface_id != 'other'"
#: schema 2 summed log-status totals from the per-interface rows: they start from today's rows
_MIGRATE_2_TO_3 = (
    f"INSERT OR IGNORE INTO totals SELECT '{LOG_STATUS}', log_status, SUM(records) FROM counters GROUP BY log_status"
)
#: free pages returned to the file system per `vacuum` call (4 KiB each): a bounded pause
VACUUM_PAGES = 2048
#: commits between two `vacuum` calls (forgotten interfaces and replaced snapshots free pages all the time)
VACUUM_EVERY_COMMITS = 100
#: the write-ahead log is cut back to this after each checkpoint, instead of staying at its largest
WAL_LIMIT_BYTES = 32 * 2**20


class CheckpointStore(SqliteContextTable):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Before any table exists, so a new file can hand freed pages back (`vacuum`); see _incremental.
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            self._commits = 0
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() if self._has_meta() else None
            version = None if row is None else int(row[0])
            if version is not None and version > _SCHEMA_VERSION:
                raise CheckpointError(
                    f"{path}: checkpoint schema {version} is newer than this streamer's {_SCHEMA_VERSION}: upgrade streamer"
                )
            self._db.executescript(_DDL + SQLITE_DDL)  # the context cache: additive, no version bump
            if version == 1:
                self._db.execute(_MIGRATE_1_TO_2, (time.time(),))
            if version is not None and version < 3:
                self._db.execute(_MIGRATE_2_TO_3)
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(_SCHEMA_VERSION),))
            self._incremental()
        except (sqlite3.Error, OSError) as exc:
            raise CheckpointError(f"{path}: cannot open checkpoint store: {exc}") from exc

    def _incremental(self) -> None:
        """A file made before auto_vacuum was set gets it with one full VACUUM, once."""
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("VACUUM")

    def _has_meta(self) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is not None

    def close(self) -> None:
        self._db.close()

    def load_state(self) -> FlowState:
        rows = self._db.execute("SELECT interface_id, action, log_status, records, packets, bytes FROM counters").fetchall()
        columns: list[tuple[object, ...]] = list(zip(*rows, strict=True)) if rows else [() for _ in SCHEMA.names]
        table = pa.table({name: pa.array(col, SCHEMA.field(name).type) for name, col in zip(SCHEMA.names, columns, strict=True)})
        errors = dict(self._db.execute("SELECT reason, count FROM decode_errors").fetchall())
        seen = {str(k): float(v) for k, v in self._db.execute("SELECT interface_id, last_seen FROM interfaces").fetchall()}
        rows = self._db.execute("SELECT kind, key1, key2, records, bytes FROM insights").fetchall()
        insights = pa.Table.from_pylist([dict(zip(ins.SCHEMA.names, r, strict=True)) for r in rows], ins.SCHEMA)
        totals = {(str(n), str(k)): int(v) for n, k, v in self._db.execute("SELECT name, key, value FROM totals")}
        return FlowState(Counters(table.cast(SCHEMA)), errors, seen, insights, totals=totals)

    def commit(self, change: Commit) -> bool:
        """Apply one input's change in a single transaction (all or nothing).

        Returns False, changing nothing, when one of its done keys is already
        done: the input was counted before (by this or another source).
        """
        return not self.commit_group([change])

    def commit_group(self, changes: Sequence[Commit]) -> list[Refused]:
        """Several inputs in one transaction, decided by the one claim rule (`store.plan`): if a member is
        refused (counted before), nothing is written and the refusals are returned. Else the merged change
        is written with one statement per table, and [] is returned."""
        now = time.time()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                decided = plan(changes, self._live(wanted(changes)))
                if decided.change is None:
                    self._db.execute("ROLLBACK")
                    return decided.refused
                self._write(decided, now)
                pause_in_transaction(changes)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise CheckpointError(f"{self.path}: commit failed: {exc}") from exc
        self._commits += 1
        if self._commits % VACUUM_EVERY_COMMITS == 0:
            self._vacuum_quietly()  # after COMMIT: a vacuum failure must not report a landed commit as failed
        return []

    def _live(self, want: Wanted) -> Live:
        """What the claims are judged against (one process: every lease is this process's)."""
        done: set[tuple[str, str]] = set()
        for namespace, keys in _by_namespace([Done(n, k) for n, k in want.done]).items():
            done |= {(namespace, k) for k in self.done_among(namespace, keys)}
        cursors: dict[tuple[str, str], str] = {}
        for source, partition in want.cursors:
            row = self._db.execute("SELECT value FROM cursors WHERE source = ? AND partition = ?", (source, partition)).fetchone()
            if row is not None:
                cursors[(source, partition)] = str(row[0])
        return Live(frozenset(done), cursors)

    def _write(self, decided: Plan, now: float) -> None:
        change = decided.change
        assert change is not None
        counters = _rows(change.delta.counters.table(), ("interface_id", "action", "log_status", "records", "packets", "bytes"))
        self._db.executemany("DELETE FROM counters WHERE interface_id = ?", [(eni,) for eni in change.forget])
        self._db.executemany("DELETE FROM interfaces WHERE interface_id = ?", [(eni,) for eni in change.forget])
        self._db.executemany(
            f"DELETE FROM insights WHERE key1 = ? AND kind IN ({','.join('?' * len(ins.ENI_KINDS))})",
            [(eni, *ins.ENI_KINDS) for eni in change.forget],
        )
        self._db.executemany(
            "INSERT INTO insights VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT DO UPDATE SET records = records + excluded.records, bytes = bytes + excluded.bytes",
            _rows(change.delta.insights, ("kind", "key1", "key2", "records", "bytes")),
        )
        self._db.executemany(
            "INSERT INTO interfaces VALUES (?, ?) ON CONFLICT DO UPDATE SET last_seen = excluded.last_seen",
            list(change.delta.seen.items()),
        )
        self._db.executemany(
            "INSERT INTO counters VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO UPDATE SET records = records + excluded.records, "
            "packets = packets + excluded.packets, bytes = bytes + excluded.bytes",
            counters,
        )
        self._db.executemany(
            "INSERT INTO totals VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET value = value + excluded.value",
            [(name, key, n) for (name, key), n in change.delta.totals.items()],
        )
        self._db.executemany(
            "INSERT INTO decode_errors VALUES (?, ?) ON CONFLICT DO UPDATE SET count = count + excluded.count",
            list(change.delta.decode_errors.items()),
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?)",
            [(d.namespace, d.key, d.outcome, now) for d in decided.done],
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO cursors VALUES (?, ?, ?)",
            [*decided.blind, *((w.source, w.partition, w.after) for w in decided.swaps)],
        )
        self._db.executemany(
            "DELETE FROM snapshots WHERE name >= ? AND name < ?", [_range(p) for p in change.drop_snapshots]
        )
        self._db.executemany("INSERT OR REPLACE INTO snapshots VALUES (?, ?)", list(change.snapshots.items()))

    def _vacuum_quietly(self) -> None:
        try:
            self.vacuum()
        except sqlite3.Error as exc:
            log.warning("%s: returning free pages failed (tried again later): %s", self.path, exc)

    def done_among(self, namespace: str, keys: Iterable[str]) -> set[str]:
        """Which of `keys` are already done."""
        found: set[str] = set()
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == 500:
                found |= self._done_batch(namespace, batch)
                batch = []
        if batch:
            found |= self._done_batch(namespace, batch)
        return found

    def _done_batch(self, namespace: str, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(f"SELECT key FROM done WHERE namespace = ? AND key IN ({marks})", (namespace, *keys))
        return {r[0] for r in rows}

    def cursors(self, source: str) -> dict[str, str]:
        return dict(self._db.execute("SELECT partition, value FROM cursors WHERE source = ?", (source,)).fetchall())

    def snapshot(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM snapshots WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def snapshots(self, prefix: str) -> dict[str, bytes]:
        """Every snapshot whose name starts with `prefix` (state kept in pieces)."""
        rows = self._db.execute("SELECT name, value FROM snapshots WHERE name >= ? AND name < ?", _range(prefix))
        return {str(n): bytes(v) for n, v in rows}

    def prune(self, older_than_seconds: float) -> int:
        """Forget done keys older than the retention, and give freed pages back; returns how many keys."""
        cutoff = time.time() - older_than_seconds
        cur = self._db.execute("DELETE FROM done WHERE done_at < ?", (cutoff,))
        self._vacuum_quietly()
        return int(cur.rowcount)

    def vacuum(self, pages: int = VACUUM_PAGES) -> int:
        """Return up to `pages` free pages to the file system (forgotten rows, pruned keys, replaced
        snapshots leave them); returns how many remain free."""
        self._db.executescript(f"PRAGMA incremental_vacuum({int(pages)});")  # execute() frees one page only
        return int(self._db.execute("PRAGMA freelist_count").fetchone()[0])

    def size_bytes(self) -> int:
        """The database file plus its write-ahead log."""
        wal = self.path.with_name(self.path.name + "-wal")
        return sum(p.stat().st_size for p in (self.path, wal) if p.exists())


def _rows(table: pa.Table, names: tuple[str, ...]) -> list[tuple[object, ...]]:
    """A table's rows as tuples in `names`' order: a commit binds thousands of counter rows, and positional
    tuples built column by column cost about half of `to_pylist`'s dicts bound by name (bench/delivery.py's
    profile: the counters' upsert and its rows were a third of the SQLite commit)."""
    return list(zip(*(table.column(n).to_pylist() for n in names), strict=True))


def _range(prefix: str) -> tuple[str, str]:
    """The names starting with `prefix`, as a range the primary key answers (names compare as bytes)."""
    return (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)) if prefix else ("", chr(0x10FFFF))


def _by_namespace(done: list[Done]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in done:
        out.setdefault(d.namespace, []).append(d.key)
    return out
