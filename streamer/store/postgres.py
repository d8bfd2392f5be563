"""The fleet's checkpoint: one PostgreSQL shared by every replica, behind the SQLite store's interface.

A group of inputs commits in one transaction, decided exactly as with SQLite
(one planner, `store.plan`): each one's claim (the done key, or the cursor under a lease), their counter deltas
merged into one staged upsert per table, and their window partials for the
leader. What is per replica and what is shared:

- per replica (`replica_id`): counters, skipped-line counts, insight sums and
  interface membership. Each replica exports what it committed; a replica
  restarted under the same id resumes its own; `sum()` over the fleet is exact;
- shared: done keys (a claim that already exists means "already counted":
  roll back, count nothing), cursors, snapshots, leases, the window-partials
  queue the leader drains, and the leader's detection state.

Leases fence commits: an input read under a lease (a Kinesis shard, an S3
partition, the CloudWatch poller) commits only while this replica still holds
it, under the same epoch (bumped on every acquisition), so neither a replica
that lost its lease nor one that lost and won it back meanwhile can count what
another holder counted. Cursors are compare-and-set: a commit whose cursor
has moved since the input was read (a retry after an unknown outcome, an old
iterator) changes nothing and means "already counted".

Lease expiry and liveness are judged on the database's clock alone
(`clock_timestamp()` in the SQL): a replica's own clock never enters a
lease, so a replica whose clock is off by minutes neither steals leases nor
takes the others for dead. (KCL's alternative, a renewal counter each
observer times on its own monotonic clock, would also do for taking leases
over, but the commit fence runs inside the database's transaction, where
only the database's clock is at hand.)

Migrations are numbered; a replica that finds a newer schema than it knows
refuses to start. Calls are blocking (psycopg 3 on a small pool): the service
runs them on threads, each bounded in time (see `store.pgtimeouts`); the
heartbeat has a connection of its own, so renewals never queue behind
commits. The password never appears in a message.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa

from streamer.aggregate import insights as ins
from streamer.aggregate.counters import SCHEMA, Counters
from streamer.aggregate.state import LOG_STATUS, FlowState
from streamer.store.base import (
    CheckpointError,
    Commit,
    LeaseLost,
    Refused,
    TransactionConflict,
    pause_in_transaction,
)
from streamer.store.context_table import POSTGRES_MIGRATION, PostgresContextTable
from streamer.store.pgtimeouts import GuardedPool, Health, Timeouts
from streamer.store.plan import Live, Plan, plan, wanted

log = logging.getLogger(__name__)
#: a transaction the server aborted (deadlock, serialization failure) is claimed again up to this many times in all
COMMIT_ATTEMPTS = 5
#: the pause before claiming again, times the attempt number, with jitter (the other side finishes meanwhile)
CONFLICT_PAUSE_SECONDS = 0.05

#: numbered migrations; each runs once, in order, in its own transaction
MIGRATIONS: list[str] = [
    """
    CREATE TABLE counters (
        replica_id TEXT NOT NULL, interface_id TEXT NOT NULL, action TEXT NOT NULL, log_status TEXT NOT NULL,
        records BIGINT NOT NULL, packets BIGINT NOT NULL, bytes BIGINT NOT NULL,
        PRIMARY KEY (replica_id, interface_id, action, log_status));
    CREATE TABLE decode_errors (replica_id TEXT NOT NULL, reason TEXT NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (replica_id, reason));
    CREATE TABLE interfaces (replica_id TEXT NOT NULL, interface_id TEXT NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (replica_id, interface_id));
    CREATE TABLE insights (replica_id TEXT NOT NULL, kind TEXT NOT NULL, key1 TEXT NOT NULL, key2 TEXT NOT NULL,
        records BIGINT NOT NULL, bytes BIGINT NOT NULL, PRIMARY KEY (replica_id, kind, key1, key2));
    CREATE TABLE done (namespace TEXT NOT NULL, key TEXT NOT NULL, outcome TEXT NOT NULL,
        done_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (namespace, key));
    CREATE INDEX done_at ON done (done_at);
    CREATE TABLE cursors (source TEXT NOT NULL, partition TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (source, partition));
    CREATE TABLE snapshots (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE leases (kind TEXT NOT NULL, name TEXT NOT NULL, owner TEXT, expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (kind, name));
    CREATE TABLE replicas (replica_id TEXT PRIMARY KEY, seen_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE window_partials (id BIGSERIAL PRIMARY KEY, source TEXT NOT NULL, body BYTEA NOT NULL);
    """,
    # every acquisition of a lease bumps its epoch: fences what was read under an earlier holding
    "ALTER TABLE leases ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;",
    # Totals that are not per interface, apart from the per-interface rows (forgetting one never lowers
    # them); log-status totals start from today's rows.
    f"""
    CREATE TABLE totals (replica_id TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL, value BIGINT NOT NULL,
        PRIMARY KEY (replica_id, name, key));
    INSERT INTO totals SELECT replica_id, '{LOG_STATUS}', log_status, SUM(records) FROM counters
        GROUP BY replica_id, log_status;
    """,
    # - window partials the leader could not apply (twice), kept for inspection instead of blocking the queue;
    # - when a replica left cleanly (its rows are folded a retention later, see `fold_gone_replicas`);
    # - a rolling upgrade: replicas still on code from before `totals` upsert counters only. For their sessions
    #   (today's connect with streamer.totals=on, see TOTALS_OPTION) the database adds each row's increase to
    #   the log-status totals, so a replica restarted on today's code finds them exact. The WHEN is evaluated
    #   without calling the function: today's upserts pay almost nothing.
    f"""
    CREATE TABLE window_partials_aside (id BIGINT PRIMARY KEY, source TEXT NOT NULL, body BYTEA NOT NULL,
        reason TEXT NOT NULL, set_aside_at DOUBLE PRECISION NOT NULL);
    ALTER TABLE replicas ADD COLUMN left_at DOUBLE PRECISION;
    CREATE FUNCTION streamer_old_code_totals() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO totals VALUES (NEW.replica_id, '{LOG_STATUS}', NEW.log_status,
            NEW.records - CASE WHEN TG_OP = 'UPDATE' THEN OLD.records ELSE 0 END)
        ON CONFLICT (replica_id, name, key) DO UPDATE SET value = totals.value + excluded.value;
        RETURN NULL;
    END $$;
    CREATE TRIGGER streamer_old_code_totals AFTER INSERT OR UPDATE ON counters FOR EACH ROW
        WHEN (current_setting('streamer.totals', true) IS DISTINCT FROM 'on')
        EXECUTE FUNCTION streamer_old_code_totals();
    """,
    # the ENI context cache (store/context_table.py), shared by the fleet
    POSTGRES_MIGRATION,
    # Code of schema 3 (from `totals` to migration 4) writes the totals itself, without the session
    # option: migration 4's trigger added its counters' increase a second time. What tells the two kinds of old code
    # apart is what a transaction does: a session without the option that writes `totals` itself marks its
    # transaction (streamer.writes_totals, transaction-local; not the totals the trigger writes, at depth 2), and
    # the counters' increase is added at COMMIT (a deferred trigger) only if the transaction never wrote totals.
    # So schema-2 code is made exact, schema-3 code (and today's, should its option be lost on the way, as
    # a connection pooler may do) counts once. Today's sessions queue nothing (the WHEN runs at once).
    f"""
    DROP TRIGGER streamer_old_code_totals ON counters;
    CREATE FUNCTION streamer_writes_totals() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF pg_trigger_depth() = 1 THEN
            PERFORM set_config('streamer.writes_totals', 'on', true);
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER streamer_writes_totals BEFORE INSERT OR UPDATE ON totals FOR EACH ROW
        WHEN (current_setting('streamer.totals', true) IS DISTINCT FROM 'on')
        EXECUTE FUNCTION streamer_writes_totals();
    CREATE OR REPLACE FUNCTION streamer_old_code_totals() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('streamer.writes_totals', true) IS DISTINCT FROM 'on' THEN
            INSERT INTO totals VALUES (NEW.replica_id, '{LOG_STATUS}', NEW.log_status,
                NEW.records - CASE WHEN TG_OP = 'UPDATE' THEN OLD.records ELSE 0 END)
            ON CONFLICT (replica_id, name, key) DO UPDATE SET value = totals.value + excluded.value;
        END IF;
        RETURN NULL;
    END $$;
    CREATE CONSTRAINT TRIGGER streamer_old_code_totals AFTER INSERT OR UPDATE ON counters
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
        WHEN (current_setting('streamer.totals', true) IS DISTINCT FROM 'on')
        EXECUTE FUNCTION streamer_old_code_totals();
    """,
]

#: the replica id the rows of replicas gone past the retention are folded into (not a valid host name)
FOLDED = "(folded)"
#: per-replica tables whose rows add up, with their key and value columns (folding sums them)
_ADDITIVE = {
    "counters": (("interface_id", "action", "log_status"), ("records", "packets", "bytes")),
    "decode_errors": (("reason",), ("count",)),
    "insights": (("kind", "key1", "key2"), ("records", "bytes")),
    "totals": (("name", "key"), ("value",)),
}

#: server option of every session of today's code: it writes `totals` itself (see migrations 4 and 6 above)
TOTALS_OPTION = "-c streamer.totals=on"


#: the database's clock, in epoch seconds: the only clock leases and liveness are judged on
DB_NOW = "extract(epoch FROM clock_timestamp())"


def connection_info(url: str, password_file: Path | None, timeouts: Timeouts | None = None) -> dict[str, Any]:
    """libpq connection parameters: the URL, the timeouts, a password from a file if given (else the URL's or PGPASSWORD)."""
    params: dict[str, Any] = {"conninfo": url, "application_name": "streamer"}
    if timeouts is not None:
        try:
            from psycopg.conninfo import conninfo_to_dict

            options = str(conninfo_to_dict(url).get("options") or "")
        except psycopg.Error:
            options = ""
        params.update(timeouts.libpq(options))
    if password_file is not None:
        try:
            params["password"] = password_file.read_text().strip()
        except OSError as exc:
            raise CheckpointError(f"checkpoint.password_file {password_file}: cannot read: {exc.strerror}") from None
    return params


#: advisory lock key held while migrating ("streamer" in ASCII)
_MIGRATION_LOCK = 0x73747265616D6572


class PostgresStore(PostgresContextTable):
    """CheckpointStore's interface over PostgreSQL, for one replica of a fleet."""

    def __init__(
        self,
        url: str,
        replica_id: str,
        password_file: Path | None = None,
        pool_size: int = 4,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.replica_id = replica_id
        timeouts = timeouts or Timeouts()
        info = connection_info(url, password_file, timeouts)
        conninfo = info.pop("conninfo")
        info["options"] = f"{info.get('options', '')} {TOTALS_OPTION}".strip()
        self._where = _redacted(conninfo)
        kwargs = {**info, "autocommit": False}
        self._health = Health()
        self._pool = GuardedPool(conninfo, kwargs, timeouts, pool_size, "streamer", self._health, self._where)
        #: the heartbeat's own connection: renewals never wait behind commits
        self._lease_pool = GuardedPool(conninfo, kwargs, timeouts, 1, "streamer-leases", self._health, self._where)
        self._commits = itertools.count(1)
        self._ambiguous = _ambiguous_commits()
        try:
            self._pool.open()
            self._lease_pool.open()
            self._migrate()
        except (psycopg.Error, TimeoutError, OSError) as exc:
            self._close_quietly()
            raise CheckpointError(f"{self._where}: cannot open the checkpoint database: {_message(exc)}") from None
        except CheckpointError:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):  # closing after a failed start: nothing more to report
            self._pool.close()
            self._lease_pool.close()

    def _migrate(self) -> None:
        with self._pool.connection() as conn:
            # Replicas starting together migrate once: CREATE ... IF NOT EXISTS alone races in PostgreSQL.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS streamer_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM streamer_schema").fetchone()
            version = int(row[0]) if row and row[0] is not None else 0
            if version > len(MIGRATIONS):
                raise CheckpointError(
                    f"{self._where}: the database schema is version {version}, newer than this streamer's "
                    f"{len(MIGRATIONS)}: upgrade streamer before starting it against this database"
                )
            for number in range(version + 1, len(MIGRATIONS) + 1):
                conn.execute(MIGRATIONS[number - 1])
                conn.execute("INSERT INTO streamer_schema VALUES (%s)", (number,))
            conn.commit()

    @property
    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT max(version) FROM streamer_schema").fetchone()
            return int(row[0]) if row and row[0] is not None else 0

    @property
    def problem(self) -> str | None:
        """Why the database does not answer (the last call's failure), None while it does."""
        return self._health.problem

    def close(self) -> None:
        self._pool.close()
        self._lease_pool.close()

    def abort(self) -> None:
        """Cut every call in flight short and close (a stop that must not wait on the database)."""
        self._lease_pool.abort()
        self._pool.abort()

    # --- the CheckpointStore interface -----------------------------------------------------------

    def load_state(self) -> FlowState:
        """This replica's counters, errors, membership and insights."""
        with self._pool.connection() as conn:
            me = (self.replica_id,)
            rows = conn.execute(
                "SELECT interface_id, action, log_status, records, packets, bytes FROM counters WHERE replica_id = %s", me
            ).fetchall()
            errors: dict[str, int] = dict(
                conn.execute("SELECT reason, count FROM decode_errors WHERE replica_id = %s", me).fetchall()
            )
            seen: dict[str, float] = dict(
                conn.execute("SELECT interface_id, last_seen FROM interfaces WHERE replica_id = %s", me).fetchall()
            )
            found = conn.execute("SELECT kind, key1, key2, records, bytes FROM insights WHERE replica_id = %s", me).fetchall()
            sums = conn.execute("SELECT name, key, value FROM totals WHERE replica_id = %s", me).fetchall()
        table = pa.Table.from_pylist([dict(zip(SCHEMA.names, r, strict=True)) for r in rows], SCHEMA)
        insights = pa.Table.from_pylist([dict(zip(ins.SCHEMA.names, r, strict=True)) for r in found], ins.SCHEMA)
        errors = {str(k): int(v) for k, v in errors.items()}
        totals = {(str(n), str(k)): int(v) for n, k, v in sums}
        return FlowState(Counters(table), errors, {str(k): float(v) for k, v in seen.items()}, insights, totals=totals)

    def commit(self, change: Commit) -> bool:
        """One input in one transaction. False (nothing changed) when a claim exists already;
        LeaseLost when the input's lease is no longer this replica's."""
        refused = self.commit_group([change])
        if refused and refused[0].lease_lost is not None:
            raise LeaseLost(refused[0].lease_lost)
        return not refused

    def commit_group(self, changes: Sequence[Commit]) -> list[Refused]:
        """Several inputs in one transaction, decided by the one claim rule both stores share (`store.plan`:
        lease and epoch, done keys, compare-and-set cursors); if one is refused, the transaction is rolled
        back and the refusals returned. Else the merged change is written with one staged upsert per table.

        Rows several replicas may lock (leases, cursors, done keys, snapshots) are locked in one global
        order, so two groups sharing keys wait for each other instead of deadlocking. A transaction the
        server aborts anyway (a deadlock with another session, a serialization failure), or one whose view
        another replica's claim made stale, wrote nothing: it is decided again from the start, a few times,
        before the failure is reported."""
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                return self._commit_group_once(changes)
            except TransactionConflict as exc:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                log.warning("%s: commit tried again (%d of %d): %s", self._where, attempt + 1, COMMIT_ATTEMPTS, exc)
                time.sleep(random.uniform(0.5, 1.0) * CONFLICT_PAUSE_SECONDS * attempt)
        raise AssertionError("unreachable")

    def _commit_group_once(self, changes: Sequence[Commit]) -> list[Refused]:
        me = self.replica_id
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                try:
                    decided = plan(changes, self._read_claims(cur, changes, me), me)
                    if decided.change is None:
                        conn.rollback()
                        return decided.refused
                    self._claim(cur, decided)
                    self._write(cur, decided.change, decided.blind, me)
                    pause_in_transaction(changes)
                    conn.commit()
                    if next(self._commits) in self._ambiguous:
                        raise CheckpointError(f"{self._where}: connection lost after COMMIT (test seam)")
                except BaseException:
                    conn.rollback()
                    raise
        except psycopg.Error as exc:
            raise CheckpointError(f"{self._where}: commit failed: {_message(exc)}") from exc
        return []

    def _read_claims(self, cur: psycopg.Cursor[Any], changes: Sequence[Commit], me: str) -> Live:
        """What the claims are judged against, read inside the transaction, each kind in sorted order whatever
        the order of the inputs (two groups sharing rows wait for each other instead of deadlocking): leases
        (kept shared), cursors (locked for update), then done keys. A key that does not exist yet cannot be
        locked by reading it, so done keys are read by inserting them all (one statement): those not inserted
        existed (or another replica's transaction holding them committed meanwhile). If the plan refuses a
        member, the transaction is rolled back; if not, the rows inserted are exactly the plan's done keys
        (members that all hold are disjoint)."""
        want = wanted(changes)
        leases = {read: self._holds(cur, read[0], read[1], me, read[2]) for read in want.leases}
        cursors: dict[tuple[str, str], str] = {}
        if want.cursors:
            cur.execute(
                "SELECT source, partition, value FROM cursors WHERE (source, partition) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[])) "
                'ORDER BY source COLLATE "C", partition COLLATE "C" FOR UPDATE',
                ([s for s, _ in want.cursors], [p for _, p in want.cursors]),
            )
            cursors = {(str(s), str(p)): str(v) for s, p, v in cur.fetchall()}
        done: frozenset[tuple[str, str]] = frozenset()
        if want.done:
            outcome: dict[tuple[str, str], str] = {}
            for change in changes:
                for d in change.done:
                    outcome.setdefault((d.namespace, d.key), d.outcome)
            cur.execute(
                "INSERT INTO done SELECT n, k, o, %s FROM unnest(%s::text[], %s::text[], %s::text[]) "
                "WITH ORDINALITY AS claims(n, k, o, i) ORDER BY i ON CONFLICT DO NOTHING RETURNING namespace, key",
                (time.time(), [n for n, _ in want.done], [k for _, k in want.done], [outcome[key] for key in want.done]),
            )
            inserted = {(str(n), str(k)) for n, k in cur.fetchall()}
            done = frozenset(key for key in want.done if key not in inserted)
        return Live(done, cursors, leases)

    def _claim(self, cur: psycopg.Cursor[Any], decided: Plan) -> None:
        """The plan's compare-and-set cursors (its done keys went in with the read). A first cursor another
        replica inserted between the read and here means the plan was made on a stale view: nothing of it is
        kept, and the group is decided again from the start (`TransactionConflict`)."""
        for swap in decided.swaps:
            if not _swap_cursor(cur, swap.source, swap.partition, swap.before, swap.after):
                raise TransactionConflict(f"{self._where}: cursor {swap.source}/{swap.partition} moved meanwhile")

    def _write(self, cur: psycopg.Cursor[Any], change: Commit, blind: list[tuple[str, str, str]], me: str) -> None:
        if change.forget:  # one statement per table, however many interfaces go
            gone = list(change.forget)
            cur.execute("DELETE FROM counters WHERE replica_id = %s AND interface_id = ANY(%s)", (me, gone))
            cur.execute("DELETE FROM interfaces WHERE replica_id = %s AND interface_id = ANY(%s)", (me, gone))
            cur.execute(
                "DELETE FROM insights WHERE replica_id = %s AND key1 = ANY(%s) AND kind = ANY(%s)",
                (me, gone, list(ins.ENI_KINDS)),
            )
        counters = change.delta.counters.table()
        if counters.num_rows:  # thousands of interfaces per object: COPY, then one upsert
            _copy(cur, "counters", counters, ("interface_id", "action", "log_status", "records", "packets", "bytes"))
            cur.execute(
                "INSERT INTO counters SELECT %s, * FROM staged_counters "
                "ON CONFLICT (replica_id, interface_id, action, log_status) "
                "DO UPDATE SET records = counters.records + excluded.records, "
                "packets = counters.packets + excluded.packets, bytes = counters.bytes + excluded.bytes",
                (me,),
            )
        if change.delta.totals:
            cur.executemany(
                "INSERT INTO totals VALUES (%s, %s, %s, %s) ON CONFLICT (replica_id, name, key) "
                "DO UPDATE SET value = totals.value + excluded.value",
                [(me, name, key, n) for (name, key), n in change.delta.totals.items()],
            )
        if change.delta.decode_errors:
            cur.executemany(
                "INSERT INTO decode_errors VALUES (%s, %s, %s) ON CONFLICT (replica_id, reason) "
                "DO UPDATE SET count = decode_errors.count + excluded.count",
                [(me, reason, n) for reason, n in change.delta.decode_errors.items()],
            )
        if change.delta.seen:
            seen = pa.table({"interface_id": list(change.delta.seen), "last_seen": list(change.delta.seen.values())})
            _copy(cur, "interfaces", seen, ("interface_id", "last_seen"))
            cur.execute(
                "INSERT INTO interfaces SELECT %s, * FROM staged_interfaces ON CONFLICT (replica_id, interface_id) "
                "DO UPDATE SET last_seen = excluded.last_seen",
                (me,),
            )
        if change.delta.insights.num_rows:
            _copy(cur, "insights", change.delta.insights, ("kind", "key1", "key2", "records", "bytes"))
            cur.execute(
                "INSERT INTO insights SELECT %s, * FROM staged_insights ON CONFLICT (replica_id, kind, key1, key2) "
                "DO UPDATE SET records = insights.records + excluded.records, bytes = insights.bytes + excluded.bytes",
                (me,),
            )
        if blind:
            cur.executemany(
                "INSERT INTO cursors VALUES (%s, %s, %s) ON CONFLICT (source, partition) DO UPDATE SET value = excluded.value",
                blind,
            )
        if change.drop_snapshots:
            cur.execute(_DROP_SNAPSHOTS, (change.drop_snapshots,))
        if change.snapshots:
            cur.executemany(
                "INSERT INTO snapshots VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                sorted(change.snapshots.items()),
            )
        if change.partials:
            cur.executemany("INSERT INTO window_partials (source, body) VALUES (%s, %s)", change.partials)

    def done_among(self, namespace: str, keys: Iterable[str]) -> set[str]:
        wanted = list(keys)
        if not wanted:
            return set()
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT key FROM done WHERE namespace = %s AND key = ANY(%s)", (namespace, wanted)).fetchall()
            conn.rollback()
        return {r[0] for r in rows}

    def cursors(self, source: str) -> dict[str, str]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT partition, value FROM cursors WHERE source = %s", (source,)).fetchall()
            conn.rollback()
        return {str(p): str(v) for p, v in rows}

    def snapshot(self, name: str) -> bytes | None:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT value FROM snapshots WHERE name = %s", (name,)).fetchone()
            conn.rollback()
        return None if row is None else bytes(row[0])

    def snapshots(self, prefix: str) -> dict[str, bytes]:
        """Every snapshot whose name starts with `prefix` (state kept in pieces)."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT name, value FROM snapshots WHERE left(name, length(%s)) = %s", (prefix, prefix)
            ).fetchall()
            conn.rollback()
        return {str(n): bytes(v) for n, v in rows}

    def prune(self, older_than_seconds: float) -> int:
        with self._pool.connection() as conn:
            cur = conn.execute("DELETE FROM done WHERE done_at < %s", (time.time() - older_than_seconds,))
            conn.commit()
            return int(cur.rowcount)

    # --- leases ----------------------------------------------------------------------------------

    @staticmethod
    def _holds(cur: psycopg.Cursor[Any], kind: str, name: str, owner: str, epoch: int | None = None) -> bool:
        """Whether `owner` holds the lease (on the database's clock; under `epoch`, if given); the row stays
        locked until the transaction ends (no takeover meanwhile)."""
        cur.execute(
            f"SELECT owner = %s AND expires_at > {DB_NOW}, epoch FROM leases WHERE kind = %s AND name = %s FOR SHARE",
            (owner, kind, name),
        )
        row = cur.fetchone()
        return row is not None and bool(row[0]) and epoch in (None, int(row[1]))

    def heartbeat(self, held: list[tuple[str, str]], lease_seconds: float) -> tuple[set[tuple[str, str]], list[str]]:
        """Renew this replica's presence and its leases, on the heartbeat's own connection (call it from one
        thread); returns the leases still held and the live replicas."""
        with self._lease_pool.connection() as conn, conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO replicas (replica_id, seen_at) VALUES (%s, {DB_NOW}) "
                "ON CONFLICT (replica_id) DO UPDATE SET seen_at = excluded.seen_at, left_at = NULL",
                (self.replica_id,),
            )
            # Locked in the commits' order (Python's sort: code points, which is the "C" collation's byte order
            # in UTF-8, whatever the database's default collation), so a renewal and a commit of a group holding
            # several leases wait for each other rather than each holding a row the other needs.
            cur.execute(
                f"UPDATE leases SET expires_at = {DB_NOW} + %s FROM (SELECT kind, name FROM leases "
                f"WHERE owner = %s AND expires_at > {DB_NOW} "
                "AND (kind, name) IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
                'ORDER BY kind COLLATE "C", name COLLATE "C" FOR UPDATE) AS mine '
                "WHERE leases.kind = mine.kind AND leases.name = mine.name RETURNING leases.kind, leases.name",
                (lease_seconds, self.replica_id, [k for k, _ in held], [n for _, n in held]),
            )
            kept = {(str(k), str(n)) for k, n in cur.fetchall()}
            live = self._live(cur, lease_seconds)
        return kept, live

    @staticmethod
    def _live(cur: psycopg.Cursor[Any], lease_seconds: float) -> list[str]:
        """Replicas seen within the lease time, on the database's clock."""
        cur.execute(f"SELECT replica_id FROM replicas WHERE seen_at > {DB_NOW} - %s ORDER BY replica_id", (lease_seconds,))
        return [str(r[0]) for r in cur.fetchall()]

    def acquire(self, kind: str, name: str, lease_seconds: float) -> int | None:
        """Take a lease that is free, expired (on the database's clock) or already ours; returns its new epoch,
        None if another holds it."""
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO leases (kind, name, owner, expires_at, epoch) VALUES (%s, %s, %s, {DB_NOW} + %s, 1) "
                "ON CONFLICT (kind, name) DO UPDATE "
                "SET owner = excluded.owner, expires_at = excluded.expires_at, epoch = leases.epoch + 1 "
                f"WHERE leases.owner IS NULL OR leases.owner = excluded.owner OR leases.expires_at <= {DB_NOW} "
                "RETURNING epoch",
                (kind, name, self.replica_id, lease_seconds),
            )
            row = cur.fetchone()
            conn.commit()
        return None if row is None else int(row[0])

    def release(self, kind: str, name: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "UPDATE leases SET owner = NULL, expires_at = 0 WHERE kind = %s AND name = %s AND owner = %s",
                (kind, name, self.replica_id),
            )
            conn.commit()

    def lease_owners(self, kind: str) -> dict[str, str | None]:
        """name -> current owner (None when free or expired, on the database's clock)."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT name, CASE WHEN expires_at > {DB_NOW} THEN owner END FROM leases WHERE kind = %s", (kind,)
            ).fetchall()
            conn.rollback()
        return {str(n): (None if o is None else str(o)) for n, o in rows}

    def claim_view(self, kind: str, lease_seconds: float) -> tuple[dict[str, str | None], list[str]]:
        """What a claim decides on, read together: the kind's owners and the live replicas (so a replica that
        left is out of the fair share at once, not after the next heartbeat)."""
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT name, CASE WHEN expires_at > {DB_NOW} THEN owner END FROM leases WHERE kind = %s", (kind,))
            owners = {str(n): (None if o is None else str(o)) for n, o in cur.fetchall()}
            live = self._live(cur, lease_seconds)
            conn.rollback()
        return owners, live

    def leave(self, timeout_seconds: float) -> None:
        """A clean stop: give every lease back and deregister, so the others take over at once. On the
        heartbeat's connection, bounded by `timeout_seconds` (the database may be away)."""
        with self._lease_pool.connection(timeout_seconds) as conn, conn.cursor() as cur:
            cur.execute("UPDATE leases SET owner = NULL, expires_at = 0 WHERE owner = %s", (self.replica_id,))
            # Out of the live ones at once; its rows are folded a retention after it left (fold_gone_replicas).
            cur.execute(f"UPDATE replicas SET seen_at = 0, left_at = {DB_NOW} WHERE replica_id = %s", (self.replica_id,))

    # --- rows of replicas gone -------------------------------------------------------------------

    def fold_gone_replicas(
        self, lease: tuple[str, str], epoch: int | None, retention_seconds: float, idle_before: float
    ) -> list[str]:
        """The leader's step, fenced by its lease: the rows of every replica not seen (or gone since it left
        cleanly) for `retention_seconds`, on the database's clock, are added into FOLDED's, so every sum over
        the replicas stays as it was; then FOLDED's interfaces last seen before `idle_before` are forgotten,
        as every replica forgets its own (totals stay). Returns the replicas folded. (A replica whose row is
        missing, as code from before `left_at` leaves it, counts as gone past the retention.)

        What is deleted is what is folded (DELETE ... RETURNING): a replica that comes back meanwhile loses
        nothing it commits, it starts its own rows again."""
        with self._pool.connection() as conn, conn.cursor() as cur:
            try:
                if not self._holds(cur, *lease, self.replica_id, epoch):
                    raise LeaseLost(f"lease {lease[0]}/{lease[1]} is no longer {self.replica_id}'s")
                known = " UNION ".join(f"SELECT replica_id FROM {t}" for t in [*_ADDITIVE, "interfaces"])
                cur.execute(
                    f"SELECT r FROM ({known}) AS known(r) WHERE r <> %s AND NOT EXISTS (SELECT 1 FROM replicas "
                    f"WHERE replica_id = r AND greatest(seen_at, left_at) > {DB_NOW} - %s) ORDER BY r",
                    (FOLDED, retention_seconds),
                )
                gone = [str(r) for (r,) in cur.fetchall()]
                if gone:
                    for table, (keys, values) in _ADDITIVE.items():
                        k, v = ", ".join(keys), ", ".join(f"sum({c})" for c in values)
                        add = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in values)
                        cur.execute(
                            f"WITH gone AS (DELETE FROM {table} WHERE replica_id = ANY(%s) RETURNING *) "
                            f"INSERT INTO {table} SELECT %s, {k}, {v} FROM gone GROUP BY {k} "
                            f"ON CONFLICT (replica_id, {k}) DO UPDATE SET {add}",
                            (gone, FOLDED),
                        )
                    cur.execute(
                        "WITH gone AS (DELETE FROM interfaces WHERE replica_id = ANY(%s) RETURNING *) "
                        "INSERT INTO interfaces SELECT %s, interface_id, max(last_seen) FROM gone GROUP BY interface_id "
                        "ON CONFLICT (replica_id, interface_id) DO UPDATE "
                        "SET last_seen = greatest(interfaces.last_seen, excluded.last_seen)",
                        (gone, FOLDED),
                    )
                    cur.execute("DELETE FROM replicas WHERE replica_id = ANY(%s)", (gone,))
                cur.execute(
                    "DELETE FROM interfaces WHERE replica_id = %s AND last_seen < %s RETURNING interface_id",
                    (FOLDED, idle_before),
                )
                idle = [str(i) for (i,) in cur.fetchall()]
                if idle:
                    cur.execute("DELETE FROM counters WHERE replica_id = %s AND interface_id = ANY(%s)", (FOLDED, idle))
                    cur.execute(
                        "DELETE FROM insights WHERE replica_id = %s AND key1 = ANY(%s) AND kind = ANY(%s)",
                        (FOLDED, idle, list(ins.ENI_KINDS)),
                    )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return gone

    # --- the leader's queue of window partials ---------------------------------------------------

    def take_partials(self, limit: int = 1000, max_bytes: int = 64 << 20) -> list[tuple[int, str, bytes]]:
        """The oldest partials, at most `limit` of them and about `max_bytes` (always at least one)."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, source, body FROM (SELECT id, source, body, "
                "sum(octet_length(body)) OVER (ORDER BY id) - octet_length(body) AS before "
                "FROM window_partials ORDER BY id LIMIT %s) AS oldest WHERE before < %s ORDER BY id",
                (limit, max_bytes),
            ).fetchall()
            conn.rollback()
        return [(int(i), str(s), bytes(b)) for i, s, b in rows]

    def set_aside_partial(self, lease: tuple[str, str], epoch: int | None, partial: int, reason: str) -> bool:
        """The leader's step for a partial it cannot apply, fenced by its lease: moved to `window_partials_aside`
        with `reason`, out of the queue. False if it was gone already."""
        with self._pool.connection() as conn, conn.cursor() as cur:
            try:
                if not self._holds(cur, *lease, self.replica_id, epoch):
                    raise LeaseLost(f"lease {lease[0]}/{lease[1]} is no longer {self.replica_id}'s")
                cur.execute(
                    f"INSERT INTO window_partials_aside SELECT id, source, body, %s, {DB_NOW} FROM window_partials "
                    "WHERE id = %s ON CONFLICT DO NOTHING",
                    (reason, partial),
                )
                cur.execute("DELETE FROM window_partials WHERE id = %s", (partial,))
                moved = cur.rowcount == 1
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return moved

    def commit_detection(
        self,
        lease: tuple[str, str],
        consumed: list[int],
        snapshots: dict[str, bytes],
        epoch: int | None = None,
        drop_snapshots: list[str] | None = None,
    ) -> None:
        """The leader's step, fenced by its lease (and epoch): consumed partials go, the new detection state
        stays (snapshots under `drop_snapshots` prefixes go first)."""
        with self._pool.connection() as conn, conn.cursor() as cur:
            try:
                if not self._holds(cur, *lease, self.replica_id, epoch):
                    raise LeaseLost(f"lease {lease[0]}/{lease[1]} is no longer {self.replica_id}'s")
                if consumed:
                    cur.execute("DELETE FROM window_partials WHERE id = ANY(%s)", (consumed,))
                if drop_snapshots:
                    cur.execute(_DROP_SNAPSHOTS, (drop_snapshots,))
                cur.executemany(
                    "INSERT INTO snapshots VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    list(snapshots.items()),
                )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise


#: snapshots under any of the given name prefixes (collation-proof: no range or LIKE on names)
_DROP_SNAPSHOTS = "DELETE FROM snapshots WHERE EXISTS (SELECT 1 FROM unnest(%s::text[]) AS p WHERE left(name, length(p)) = p)"


def _swap_cursor(cur: psycopg.Cursor[Any], source: str, partition: str, before: str | None, after: str | None) -> bool:
    """Compare-and-set one expected cursor to its new value; False if it has moved (nothing written that the
    caller does not roll back)."""
    if before is None:
        cur.execute("INSERT INTO cursors VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", (source, partition, after))
    else:
        cur.execute(
            "UPDATE cursors SET value = %s WHERE source = %s AND partition = %s AND value = %s",
            (after, source, partition, before),
        )
    return cur.rowcount == 1


def _ambiguous_commits() -> frozenset[int]:
    """Test-only seam: STREAMER_TEST_AMBIGUOUS_COMMITS="2,5" makes this store's 2nd and 5th commits raise
    after the server committed them, like a connection dropped before the reply."""
    spec = os.environ.get("STREAMER_TEST_AMBIGUOUS_COMMITS", "")
    return frozenset(int(n) for n in spec.split(",") if n.strip())


#: per-connection staging tables for COPY (emptied at each commit)
_STAGING = {
    "counters": "interface_id TEXT, action TEXT, log_status TEXT, records BIGINT, packets BIGINT, bytes BIGINT",
    "interfaces": "interface_id TEXT, last_seen DOUBLE PRECISION",
    "insights": "kind TEXT, key1 TEXT, key2 TEXT, records BIGINT, bytes BIGINT",
}


def _copy(cur: psycopg.Cursor[Any], name: str, table: pa.Table, columns: tuple[str, ...]) -> None:
    """Stage a small Arrow table (one row per key, never per record) with COPY: far cheaper than row upserts."""
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS staged_{name} ({_STAGING[name]}) ON COMMIT DELETE ROWS")
    rows = zip(*(table.column(c).to_pylist() for c in columns), strict=True)
    with cur.copy(f"COPY staged_{name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _redacted(conninfo: str) -> str:
    """The URL without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "postgresql://?"
    host = parts.get("host") or os.environ.get("PGHOST", "localhost")
    port = parts.get("port") or os.environ.get("PGPORT", "5432")
    return f"postgresql://{parts.get('user') or os.environ.get('PGUSER', '')}@{host}:{port}/{parts.get('dbname', '')}"


def _message(exc: BaseException) -> str:
    """One line, no password (libpq never echoes it)."""
    return " ".join(str(exc).split()) or type(exc).__name__
