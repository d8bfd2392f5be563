"""The ENI context cache in the checkpoint store (`interface_context`), for SQLite and PostgreSQL.

A cache beside the checkpoint, not part of it: rows are written in their own small transactions,
never inside an input's commit, so a slow describe or a failed write never delays counting. A
restart reads it back instead of describing every ENI again; in a fleet it is shared, every
replica writing what its records said and when it last saw each ENI, the leader writing what EC2
said. The two writers own separate columns, so neither overwrites the other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from streamer.aggregate.context import ContextRow

if TYPE_CHECKING:
    from streamer.store.pgtimeouts import GuardedPool

SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS interface_context (
    interface_id TEXT PRIMARY KEY, records TEXT, ec2 TEXT, seen_at REAL NOT NULL, described_at REAL) WITHOUT ROWID;
"""
#: PostgreSQL migration (appended to store.postgres.MIGRATIONS)
POSTGRES_MIGRATION = """
    CREATE TABLE interface_context (interface_id TEXT PRIMARY KEY, records TEXT, ec2 TEXT,
        seen_at DOUBLE PRECISION NOT NULL, described_at DOUBLE PRECISION);
"""

_PUT_SEEN = (
    "INSERT INTO interface_context (interface_id, records, seen_at) VALUES ({m}, {m}, {m}) "
    "ON CONFLICT (interface_id) DO UPDATE SET records = COALESCE(excluded.records, interface_context.records), "
    "seen_at = {greatest}(excluded.seen_at, interface_context.seen_at)"
)
_PUT_EC2 = (
    "INSERT INTO interface_context (interface_id, ec2, seen_at, described_at) VALUES ({m}, {m}, {m}, {m}) "
    "ON CONFLICT (interface_id) DO UPDATE SET ec2 = excluded.ec2, described_at = excluded.described_at"
)
_SELECT = "SELECT interface_id, records, ec2, seen_at, described_at FROM interface_context"
_FORGET = "DELETE FROM interface_context WHERE seen_at <= {m}"


def _rows(found: Sequence[Sequence[Any]]) -> list[ContextRow]:
    return [ContextRow(str(r[0]), r[1], r[2], float(r[3]), None if r[4] is None else float(r[4])) for r in found]


class SqliteContextTable:
    """Mixed into store.sqlite.CheckpointStore (its `_db`, autocommit, one thread)."""

    _db: sqlite3.Connection

    def contexts(self) -> list[ContextRow]:
        return _rows(self._db.execute(_SELECT).fetchall())

    def put_seen(self, rows: Sequence[tuple[str, str | None, float]]) -> None:
        """(interface, records JSON or None to keep what is there, seen at)."""
        self._many(_PUT_SEEN.format(m="?", greatest="MAX"), rows)

    def put_described(self, rows: Sequence[tuple[str, str, float]]) -> None:
        """(interface, EC2 JSON, described at)."""
        self._many(_PUT_EC2.format(m="?"), [(eni, doc, at, at) for eni, doc, at in rows])

    def forget_contexts(self, seen_before: float) -> int:
        """Delete the rows of ENIs last seen at or before `seen_before` (wall clock): forgotten with their series."""
        cur = self._db.execute(_FORGET.format(m="?"), (seen_before,))
        return int(cur.rowcount)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        self._db.execute("BEGIN")
        try:
            self._db.executemany(sql, rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise


class PostgresContextTable:
    """Mixed into store.postgres.PostgresStore (its `_pool`; every call bounded by its timeouts)."""

    _pool: GuardedPool

    def contexts(self) -> list[ContextRow]:
        with self._pool.connection() as conn:
            found = conn.execute(_SELECT).fetchall()
            conn.rollback()
        return _rows(found)

    def put_seen(self, rows: Sequence[tuple[str, str | None, float]]) -> None:
        self._many(_PUT_SEEN.format(m="%s", greatest="GREATEST"), sorted(rows))  # one order: concurrent replicas never deadlock

    def put_described(self, rows: Sequence[tuple[str, str, float]]) -> None:
        self._many(_PUT_EC2.format(m="%s"), sorted((eni, doc, at, at) for eni, doc, at in rows))

    def forget_contexts(self, seen_before: float) -> int:
        with self._pool.connection() as conn:
            cur = conn.execute(_FORGET.format(m="%s"), (seen_before,))
            conn.commit()
            return int(cur.rowcount)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._pool.connection() as conn:
            with conn.cursor() as cur:
                cur.executemany(sql, rows)
            conn.commit()
