"""The session index: one row per thread (tenant, team, title, created and updated times), beside the checkpoints.

A session has two names: `thread_id`, the checkpointer's key (internal), and `client_id`, the id its tenant uses
(what the API calls the session id). Client ids are unique per tenant only, so two tenants can both use
`interview-42` and neither can tell the other does. Rows from before client ids existed got client_id =
thread_id when the column was added, so they answer to the id their tenant always used.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlite_utils

from checkpoints.audit import Statement
from checkpoints.schema_migrations import upgrade_postgres, upgrade_sqlite
from checkpoints.storage import DEFAULT_STATEMENT_TIMEOUT_S, DEFAULT_TIMEOUT_S, pg_connect_kwargs, sync_pool_options

TITLE_LENGTH = 60  # a title derived from a message is cut to this
MAX_TITLE_CHARS = 200  # the longest title a client may set (POST/PATCH /sessions) or an import may bring

# Invisible format characters (Cf) that can disguise what a title says when it is listed: bidi embeddings and
# overrides (U+202A-U+202E) and isolates (U+2066-U+2069), the zero-width space and the byte order mark. Other Cf
# characters are part of ordinary text and stay: the joiners (U+200C, U+200D: scripts, emoji sequences), the
# left-to-right/right-to-left and Arabic letter marks (U+200E, U+200F, U+061C: Hebrew and Arabic titles), the soft
# hyphen and word joiner of pasted text, and the tag characters of subdivision flag emoji (U+E0020-U+E007F)
DISGUISING = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200B, 0xFEFF))


def unprintable_in_title(c: str) -> bool:
    """What a title may not hold: control characters (Cc: tabs, line breaks), line and paragraph separators (Zl,
    Zp: U+2028, U+2029) and the invisible format characters that can disguise it (`DISGUISING`)."""
    return c in DISGUISING or unicodedata.category(c) in ("Cc", "Zl", "Zp")


def printable_title(text: str) -> str:
    """`text` as a title the rules of POST/PATCH /sessions accept, made so rather than refused (titles derived
    from a message): control characters and line/paragraph separators become spaces, disguising characters go,
    surrounding blanks go."""
    return "".join(("" if c in DISGUISING else " ") if unprintable_in_title(c) else c for c in text).strip()


@dataclass(frozen=True)
class SessionRecord:
    thread_id: str
    tenant: str
    team: str
    title: str
    created_at: str
    updated_at: str
    client_id: str = ""  # the tenant's name for the session; empty = thread_id
    user_id: str | None = None  # the tenant's id for the end user the session is about (erasure)
    # the Idempotency-Key of the POST /sessions that created it (unique per tenant) and a hash of that request
    idempotency_key: str | None = None
    idempotency_fingerprint: str | None = None

    @property
    def id(self) -> str:
        """The session id the tenant sees and sends."""
        return self.client_id or self.thread_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PendingDeletion:
    """A session whose deletion started (its index row is gone) and has not finished removing its data."""

    thread_id: str
    tenant: str
    team: str
    started_at: str
    client_id: str  # the id the tenant used for the session


@dataclass(frozen=True)
class IdempotentTurn:
    """A turn sent with an Idempotency-Key: what the request was (its fingerprint) and, once done, its answer.

    `result` is None while the turn runs, or when the process died during it; `before_checkpoint` is the
    session's latest checkpoint when the turn started, which tells whether such a turn was stored."""

    fingerprint: str
    before_checkpoint: str | None
    result_type: str | None
    result: bytes | None


R = TypeVar("R")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def from_row(cls: type[R], row: Mapping[str, Any]) -> R:
    """A stored row as `cls` (a dataclass), leaving out the columns `cls` does not know: a table read with
    `select *` gets columns from later schema steps (a later release's replica may have run them first)."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in row.items() if k in known})


def record_of(row: Mapping[str, Any]) -> SessionRecord:
    """A session index row as a SessionRecord (`from_row`)."""
    return from_row(SessionRecord, row)


def new_record(
    thread_id: str,
    tenant: str,
    team: str,
    title: str = "",
    client_id: str | None = None,
    user_id: str | None = None,
    idempotency_key: str | None = None,
    idempotency_fingerprint: str | None = None,
) -> SessionRecord:
    """The row a new session is stored as."""
    stamp = now()
    return SessionRecord(thread_id, tenant, team, title.strip(), stamp, stamp, client_id or thread_id, user_id,
                         idempotency_key, idempotency_fingerprint)  # fmt: skip


def title_from(text: str) -> str:
    """A session title from the first message: its first line with text, made printable (`printable_title`: a
    title derived from a turn never refuses the turn), cut to a readable length."""
    line = next((t for t in (printable_title(ln) for ln in text.splitlines()) if t), "")
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "\u2026"


class SessionIndex(Protocol):
    # True when a read is a network round trip (Postgres): the server then reads in a worker thread, never on
    # the event loop; a local SQLite read on its own connection is cheaper than the thread hop
    network: bool

    def create(
        self,
        thread_id: str,
        tenant: str,
        team: str,
        title: str = "",
        client_id: str | None = None,
        user_id: str | None = None,
    ) -> SessionRecord: ...
    def get(self, thread_id: str) -> SessionRecord | None: ...
    def find(self, tenant: str, client_id: str) -> SessionRecord | None: ...
    def list(
        self, tenant: str, team: str | None = None, limit: int = 50, before: tuple[str, str] | None = None
    ) -> list[SessionRecord]: ...
    def tenants(self) -> builtins.list[str]: ...
    def touch(self, thread_id: str, title_if_empty: str = "") -> None: ...
    def idle(self, tenant: str, updated_before: str, limit: int = 500) -> builtins.list[SessionRecord]: ...
    def of_user(self, tenant: str, user_id: str) -> builtins.list[SessionRecord]: ...
    def rename(self, thread_id: str, title: str) -> SessionRecord | None: ...
    def delete(self, thread_id: str) -> bool: ...
    # Audited changes: the statements that make them, for the audit log to run in the transaction that writes
    # their entries (`AuditLog.append_if`: each must change a row, else nothing is written).
    # Tag a session with its end user, once: nothing to change when it has a user id already.
    def tag_user_change(self, thread_id: str, user_id: str) -> builtins.list[Statement]: ...
    # `at`: the session's new updated_at (now when None), so the caller knows the row it wrote without reading it
    def rename_change(self, thread_id: str, title: str, at: str | None = None) -> builtins.list[Statement]: ...
    # A new session's row (`create_change`) and the record it stores: written with its `session_created` entry in
    # one transaction; the insert changes nothing when the thread id, the tenant's client id or the tenant's
    # idempotency key is taken, or when a deletion of that client id or thread is pending
    def create_change(
        self,
        thread_id: str,
        tenant: str,
        team: str,
        title: str = "",
        client_id: str | None = None,
        user_id: str | None = None,
        idempotency_key: str | None = None,
        idempotency_fingerprint: str | None = None,
    ) -> tuple[builtins.list[Statement], SessionRecord]: ...
    # the tenant's session created by a POST /sessions with this Idempotency-Key, or None
    def created_with_key(self, tenant: str, key: str) -> SessionRecord | None: ...
    # Deleting a session is two steps: first its index row becomes a pending-deletion row (from then on the
    # session is gone for every reader and cannot be claimed again), and once its checkpoints, archive and voice
    # items are removed and the deletion is audited, the pending row goes too (`finish_delete_change`); a crash in
    # between leaves the pending row, and the next start or a repeated DELETE finishes the job
    def begin_delete_change(self, thread_id: str) -> builtins.list[Statement]: ...
    def pending_deletion(self, tenant: str, client_id: str) -> PendingDeletion | None: ...
    def pending_deletions(self) -> tuple[PendingDeletion, ...]: ...
    def forget_idempotent_turns(self, thread_id: str) -> None: ...
    def finish_delete_change(self, thread_id: str) -> builtins.list[Statement]: ...
    # Idempotency-Key -> the turn's stored answer, per tenant and session (dropped with the session)
    def idempotent_turn(self, tenant: str, thread_id: str, key: str) -> IdempotentTurn | None: ...
    def start_idempotent_turn(
        self, tenant: str, thread_id: str, key: str, fingerprint: str, before_checkpoint: str | None
    ) -> None: ...
    def finish_idempotent_turn(self, tenant: str, thread_id: str, key: str, result: tuple[str, bytes]) -> None: ...
    def forget_idempotent_turn(self, tenant: str, thread_id: str, key: str) -> None: ...
    def probe_write(self) -> None: ...
    def close(self) -> None: ...


WAL_SWITCH_WAIT_S = 30.0


def _switch_to_wal(conn: sqlite3.Connection, wait_s: float = WAL_SWITCH_WAIT_S) -> None:
    """PRAGMA journal_mode = WAL, waiting while another process writes. SQLite answers "database is locked" at once,
    without its busy handler, while another connection holds a write transaction on a file in rollback mode (a
    version-1 file that a second worker is upgrading as this one starts), so the switch is tried again until
    `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class SqliteSessionIndex:
    """Session index in a SQLite file (the checkpoint database) via sqlite-utils."""

    network = False

    def __init__(self, path: Path | str | None):
        self._path = path
        self._lock = threading.Lock()
        # reads get their own connection and lock: under WAL they never wait for a writer, so a read on the
        # event loop cannot queue behind a write that waits for the async store (which needs the loop to commit)
        self._read_lock = threading.Lock() if path else self._lock
        self.db, self._read = self._connect()
        # tables, columns and indexes by numbered steps (checkpoints/schema_migrations.py); the factory's setup
        # lock and SQLite's write lock run them one process at a time
        upgrade_sqlite(self.db.conn, "session_index")

    def _connect(self) -> tuple[sqlite_utils.Database, sqlite_utils.Database]:
        path = self._path
        conn = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, timeout=5.0)
        if path:
            _switch_to_wal(conn)
            # with WAL, NORMAL never corrupts the file; only the last commits can be lost on a power cut
            conn.execute("PRAGMA synchronous = NORMAL")
        db = sqlite_utils.Database(conn)
        if not path:  # an in-memory database exists on one connection only
            return db, db
        return db, sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False, timeout=5.0))

    def repair_schema(self) -> bool:
        """Recreate missing tables (checkpoints/self_repair.py); True when the sessions table was gone."""
        with self._lock:
            conn = self.db.conn
            missing = not conn.execute(
                "select 1 from sqlite_master where type = 'table' and name = 'sessions'"
            ).fetchone()
            upgrade_sqlite(conn, "session_index", repair=True)
        return missing

    def close_for_reopen(self) -> None:
        """First half of a reopen on a new file (self-repair of a deleted file): the caller holds `locks()`."""
        self.close()

    def open_again(self) -> None:
        """Second half: connect to the file now at the path and create its tables; the caller holds `locks()`."""
        self.db, self._read = self._connect()
        upgrade_sqlite(self.db.conn, "session_index")

    def locks(self) -> tuple[threading.Lock, ...]:
        return (self._lock,) if self._read_lock is self._lock else (self._lock, self._read_lock)

    @classmethod
    def in_memory(cls) -> SqliteSessionIndex:
        return cls(None)

    def create(
        self,
        thread_id: str,
        tenant: str,
        team: str,
        title: str = "",
        client_id: str | None = None,
        user_id: str | None = None,
    ) -> SessionRecord:
        stamp = now()
        row: dict[str, Any] = {
            "thread_id": thread_id,
            "tenant": tenant,
            "team": team,
            "title": title.strip(),
            "created_at": stamp,
            "updated_at": stamp,
            "client_id": client_id or thread_id,
            "user_id": user_id,
        }
        # plain SQL: sqlite-utils' Table API reads sqlite_master on every call; the connection's context
        # commits, or rolls back when the id is taken (IntegrityError reaches the caller)
        with self._lock, self.db.conn:
            self.db.execute(
                "insert into sessions (thread_id, tenant, team, title, created_at, updated_at, client_id, user_id) "
                "values (:thread_id, :tenant, :team, :title, :created_at, :updated_at, :client_id, :user_id)",
                row,
            )
        return record_of(row)

    def get(self, thread_id: str) -> SessionRecord | None:
        with self._read_lock:  # every turn asks: plain SQL, no sqlite_master lookups
            rows = list(self._read.query("select * from sessions where thread_id = ?", [thread_id]))
        return record_of(rows[0]) if rows else None

    def find(self, tenant: str, client_id: str) -> SessionRecord | None:
        with self._read_lock:
            rows = list(
                self._read.query("select * from sessions where tenant = ? and client_id = ?", [tenant, client_id])
            )
        return record_of(rows[0]) if rows else None

    def list(
        self, tenant: str, team: str | None = None, limit: int = 50, before: tuple[str, str] | None = None
    ) -> list[SessionRecord]:
        where, args = "tenant = ?", [tenant]
        if team:
            where += " and team = ?"
            args.append(team)
        if before:
            where += " and (updated_at < ? or (updated_at = ? and thread_id < ?))"
            args += [before[0], before[0], before[1]]
        sql = f"select * from sessions where {where} order by updated_at desc, thread_id desc limit ?"
        with self._read_lock:
            return [record_of(r) for r in self._read.query(sql, [*args, limit])]

    def tenants(self) -> builtins.list[str]:
        """Every tenant with a session (one since removed from the bundles too), read only."""
        with self._read_lock:
            return [r[0] for r in self._read.execute("select distinct tenant from sessions order by 1").fetchall()]

    def idle(self, tenant: str, updated_before: str, limit: int = 500) -> builtins.list[SessionRecord]:
        """The tenant's sessions last active before `updated_before` (ISO time), least recent first (retention)."""
        sql = "select * from sessions where tenant = ? and updated_at < ? order by updated_at, thread_id limit ?"
        with self._read_lock:
            return [record_of(r) for r in self._read.query(sql, [tenant, updated_before, limit])]

    def of_user(self, tenant: str, user_id: str) -> builtins.list[SessionRecord]:
        """The tenant's sessions tagged with the end user `user_id` (erasure)."""
        with self._read_lock:
            rows = self._read.query("select * from sessions where tenant = ? and user_id = ?", [tenant, user_id])
            return [record_of(r) for r in rows]

    def tag_user_change(self, thread_id: str, user_id: str) -> builtins.list[Statement]:
        return [("update sessions set user_id = ? where thread_id = ? and user_id is null", [user_id, thread_id])]

    def rename_change(self, thread_id: str, title: str, at: str | None = None) -> builtins.list[Statement]:
        return [("update sessions set title = ?, updated_at = ? where thread_id = ?", [title, at or now(), thread_id])]

    def create_change(
        self,
        thread_id: str,
        tenant: str,
        team: str,
        title: str = "",
        client_id: str | None = None,
        user_id: str | None = None,
        idempotency_key: str | None = None,
        idempotency_fingerprint: str | None = None,
    ) -> tuple[builtins.list[Statement], SessionRecord]:
        record = new_record(
            thread_id, tenant, team, title, client_id, user_id, idempotency_key, idempotency_fingerprint
        )
        # one statement: a pending deletion of the same client id or thread (a DELETE that started and has not
        # finished) is checked by the insert itself, so a create racing that DELETE cannot slip in between a check
        # and the insert and bring the id back while its old data is being removed. Only the taken ids are
        # ignored: `on conflict do nothing` (no target: SQLite 3.24+; several clauses would need 3.35, newer than
        # some Python 3.11 builds link) skips unique and primary-key conflicts only, while `insert or ignore` also
        # skipped rows that break NOT NULL or CHECK, turning a bug into "the id is taken"
        sql = (
            "insert into sessions (thread_id, tenant, team, title, created_at, updated_at, client_id,"
            " user_id, idempotency_key, idempotency_fingerprint) select ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
            " where not exists (select 1 from session_deletions"
            " where (tenant = ? and client_id = ?) or thread_id = ?)"
            " on conflict do nothing"
        )
        return [(sql, [*astuple(record), record.tenant, record.id, record.thread_id])], record

    def created_with_key(self, tenant: str, key: str) -> SessionRecord | None:
        with self._read_lock:
            rows = list(
                self._read.query("select * from sessions where tenant = ? and idempotency_key = ?", [tenant, key])
            )
        return record_of(rows[0]) if rows else None

    def begin_delete_change(self, thread_id: str) -> builtins.list[Statement]:
        return [
            ("insert or replace into session_deletions (thread_id, tenant, team, started_at, client_id)"
             " select thread_id, tenant, team, ?, coalesce(client_id, thread_id) from sessions where thread_id = ?",
             [now(), thread_id]),
            ("delete from sessions where thread_id = ?", [thread_id]),
        ]  # fmt: skip

    def shared_connection(self) -> tuple[sqlite3.Connection, threading.Lock]:
        """The connection and lock of an in-memory index, for an audit log in the same database (memory://)."""
        assert self._path is None, "a file database gives each its own connection"
        return self.db.conn, self._lock

    def touch(self, thread_id: str, title_if_empty: str = "") -> None:
        with self._lock:
            self.db.execute(
                "update sessions set updated_at = ?, title = case when title = '' then ? else title end "
                "where thread_id = ?",
                [now(), title_from(title_if_empty), thread_id],
            )
            self.db.conn.commit()

    def rename(self, thread_id: str, title: str) -> SessionRecord | None:
        with self._lock:
            self.db.execute(
                "update sessions set title = ?, updated_at = ? where thread_id = ?", [title, now(), thread_id]
            )
            self.db.conn.commit()
        return self.get(thread_id)

    def delete(self, thread_id: str) -> bool:
        with self._lock:
            cursor = self.db.execute("delete from sessions where thread_id = ?", [thread_id])
            self.db.conn.commit()
            return cursor.rowcount > 0

    def pending_deletion(self, tenant: str, client_id: str) -> PendingDeletion | None:
        with self._read_lock:
            rows = list(
                self._read.query(
                    "select * from session_deletions where tenant = ? and client_id = ?", [tenant, client_id]
                )
            )
        return from_row(PendingDeletion, rows[0]) if rows else None

    def pending_deletions(self) -> tuple[PendingDeletion, ...]:
        with self._read_lock:
            return tuple(from_row(PendingDeletion, r) for r in self._read.query("select * from session_deletions"))

    def forget_idempotent_turns(self, thread_id: str) -> None:
        with self._lock, self.db.conn:
            self.db.execute("delete from idempotency_keys where thread_id = ?", [thread_id])

    def finish_delete_change(self, thread_id: str) -> builtins.list[Statement]:
        return [("delete from session_deletions where thread_id = ?", [thread_id])]

    def idempotent_turn(self, tenant: str, thread_id: str, key: str) -> IdempotentTurn | None:
        with self._read_lock:
            rows = list(
                self._read.query(
                    "select fingerprint, before_checkpoint, result_type, result from idempotency_keys"
                    " where tenant = ? and thread_id = ? and key = ?",
                    [tenant, thread_id, key],
                )
            )
        return IdempotentTurn(**rows[0]) if rows else None

    def start_idempotent_turn(
        self, tenant: str, thread_id: str, key: str, fingerprint: str, before_checkpoint: str | None
    ) -> None:
        with self._lock, self.db.conn:
            self.db.execute(
                "insert or replace into idempotency_keys (tenant, thread_id, key, fingerprint, before_checkpoint,"
                " created_at) values (?, ?, ?, ?, ?, ?)",
                [tenant, thread_id, key, fingerprint, before_checkpoint, now()],
            )

    def finish_idempotent_turn(self, tenant: str, thread_id: str, key: str, result: tuple[str, bytes]) -> None:
        with self._lock, self.db.conn:
            self.db.execute(
                "update idempotency_keys set result_type = ?, result = ?"
                " where tenant = ? and thread_id = ? and key = ?",
                [result[0], result[1], tenant, thread_id, key],
            )

    def forget_idempotent_turn(self, tenant: str, thread_id: str, key: str) -> None:
        with self._lock, self.db.conn:
            self.db.execute(
                "delete from idempotency_keys where tenant = ? and thread_id = ? and key = ?", [tenant, thread_id, key]
            )

    def probe_write(self) -> None:
        with self._lock, self.db.conn:
            self.db.execute("insert or replace into teamgraph_ready (id, at) values (1, ?)", [now()])

    def close(self) -> None:
        if self._read is not self.db:
            self._read.conn.close()
        self.db.conn.close()


class PostgresSessionIndex:
    """Session index in Postgres, shared by several server replicas."""

    network = True
    # a tenant's session by its client id (also read under a turn lock, on the lock's connection: Engine.lease_turn)
    FIND_SQL = "select * from teamgraph_sessions where tenant = %s and client_id = %s"

    def __init__(
        self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S, statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S
    ):
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=4,
            open=True,
            # prepare_threshold None: never a server-side prepared statement, whose `select *` fails with "cached
            # plan must not change result type" once a newer replica adds a column (a rolling upgrade)
            kwargs={
                "autocommit": True,
                "prepare_threshold": None,
                "row_factory": dict_row,
                **pg_connect_kwargs(timeout_s),
            },
            **sync_pool_options(timeout_s, statement_timeout_s),
        )
        # tables, columns and indexes by numbered steps (checkpoints/schema_migrations.py), one replica at a time
        try:
            with self.pool.connection() as conn:
                upgrade_postgres(conn, "session_index")
        except BaseException:
            self.pool.close()
            raise

    def of_user(self, tenant: str, user_id: str) -> builtins.list[SessionRecord]:
        """The tenant's sessions tagged with the end user `user_id` (erasure)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "select * from teamgraph_sessions where tenant = %s and user_id = %s", [tenant, user_id]
            ).fetchall()
        return [record_of(r) for r in rows]  # type: ignore[arg-type]

    def tag_user_change(self, thread_id: str, user_id: str) -> builtins.list[Statement]:
        sql = "update teamgraph_sessions set user_id = %s where thread_id = %s and user_id is null"
        return [(sql, [user_id, thread_id])]

    def rename_change(self, thread_id: str, title: str, at: str | None = None) -> builtins.list[Statement]:
        sql = "update teamgraph_sessions set title = %s, updated_at = %s where thread_id = %s"
        return [(sql, [title, at or now(), thread_id])]

    def create_change(
        self,
        thread_id: str,
        tenant: str,
        team: str,
        title: str = "",
        client_id: str | None = None,
        user_id: str | None = None,
        idempotency_key: str | None = None,
        idempotency_fingerprint: str | None = None,
    ) -> tuple[builtins.list[Statement], SessionRecord]:
        record = new_record(
            thread_id, tenant, team, title, client_id, user_id, idempotency_key, idempotency_fingerprint
        )
        # one statement with the pending-deletion check (see SqliteSessionIndex.create_change); the casts: the
        # values come from a select, which does not take the columns' types from the insert. Postgres allows one
        # conflict target; without one, `do nothing` covers unique constraints only (the three taken-id cases),
        # never NOT NULL or CHECK violations
        sql = (
            "insert into teamgraph_sessions (thread_id, tenant, team, title, created_at, updated_at, client_id,"
            " user_id, idempotency_key, idempotency_fingerprint) select %s::text, %s::text, %s::text, %s::text,"
            " %s::text, %s::text, %s::text, %s::text, %s::text, %s::text"
            " where not exists (select 1 from teamgraph_session_deletions"
            " where (tenant = %s and client_id = %s) or thread_id = %s) on conflict do nothing"
        )
        # and once more, in a statement of its own: under read committed the insert's check uses the snapshot of
        # the insert's start. A DELETE that had deleted the row and put its pending row there without committing
        # makes the insert wait on the deleted row; when the DELETE commits, the conflict is gone and the row goes
        # in, though the check never saw the pending row. A new statement takes a new snapshot and sees it: no row
        # then, and append_if rolls the insert back
        pending = (
            "select 1 where not exists (select 1 from teamgraph_session_deletions"
            " where (tenant = %s and client_id = %s) or thread_id = %s)"
        )
        where = [record.tenant, record.id, record.thread_id]
        return [(sql, [*astuple(record), *where]), (pending, where)], record

    def created_with_key(self, tenant: str, key: str) -> SessionRecord | None:
        row = self._one("select * from teamgraph_sessions where tenant = %s and idempotency_key = %s", [tenant, key])
        return record_of(row) if row else None

    def begin_delete_change(self, thread_id: str) -> builtins.list[Statement]:
        return [
            ("insert into teamgraph_session_deletions (thread_id, tenant, team, started_at, client_id)"
             " select thread_id, tenant, team, %s, coalesce(client_id, thread_id) from teamgraph_sessions"
             " where thread_id = %s on conflict (thread_id) do update set tenant = excluded.tenant,"
             " team = excluded.team, started_at = excluded.started_at, client_id = excluded.client_id",
             [now(), thread_id]),
            ("delete from teamgraph_sessions where thread_id = %s", [thread_id]),
        ]  # fmt: skip

    def _one(self, sql: str, args: list[Any]) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            return conn.execute(sql, args).fetchone()  # type: ignore[return-value]

    def create(
        self,
        thread_id: str,
        tenant: str,
        team: str,
        title: str = "",
        client_id: str | None = None,
        user_id: str | None = None,
    ) -> SessionRecord:
        stamp = now()
        row = self._one(
            "insert into teamgraph_sessions"
            " (thread_id, tenant, team, title, created_at, updated_at, client_id, user_id)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s) returning *",
            [thread_id, tenant, team, title.strip(), stamp, stamp, client_id or thread_id, user_id],
        )
        assert row is not None
        return record_of(row)

    def get(self, thread_id: str) -> SessionRecord | None:
        row = self._one("select * from teamgraph_sessions where thread_id = %s", [thread_id])
        return record_of(row) if row else None

    def find(self, tenant: str, client_id: str) -> SessionRecord | None:
        row = self._one(self.FIND_SQL, [tenant, client_id])
        return record_of(row) if row else None

    def list(
        self, tenant: str, team: str | None = None, limit: int = 50, before: tuple[str, str] | None = None
    ) -> list[SessionRecord]:
        sql, args = "select * from teamgraph_sessions where tenant = %s", [tenant]
        if team:
            sql += " and team = %s"
            args.append(team)
        if before:
            sql += " and (updated_at, thread_id) < (%s, %s)"
            args += list(before)
        sql += " order by updated_at desc, thread_id desc limit %s"
        with self.pool.connection() as conn:
            return [record_of(r) for r in conn.execute(sql, [*args, limit]).fetchall()]  # type: ignore[arg-type]

    def tenants(self) -> builtins.list[str]:
        """Every tenant with a session (one since removed from the bundles too), read only."""
        with self.pool.connection() as conn:
            rows = conn.execute("select distinct tenant from teamgraph_sessions order by 1").fetchall()
        return [r["tenant"] for r in rows]  # type: ignore[call-overload]

    def idle(self, tenant: str, updated_before: str, limit: int = 500) -> builtins.list[SessionRecord]:
        """The tenant's sessions last active before `updated_before` (ISO time), least recent first (retention)."""
        sql = (
            "select * from teamgraph_sessions where tenant = %s and updated_at < %s"
            " order by updated_at, thread_id limit %s"
        )
        with self.pool.connection() as conn:
            rows = conn.execute(sql, [tenant, updated_before, limit]).fetchall()
        return [record_of(r) for r in rows]  # type: ignore[arg-type]

    def touch(self, thread_id: str, title_if_empty: str = "") -> None:
        # every turn ends with this write, and waiting for its WAL flush (a disk sync, ~4 ms on a plain disk) is
        # most of its cost: it commits without waiting (synchronous_commit off for this transaction only). What
        # a database crash could lose is at most this activity time (the title stays empty, and the next turn sets
        # it); nothing is left half-written, and the turn's earlier writes were flushed by its closing audit commit.
        # One round trip: the two statements of an autocommit pipeline run as one implicit transaction, committed
        # at its Sync, and the setting is local to it
        with self.pool.connection() as conn, conn.pipeline():
            conn.execute("select set_config('synchronous_commit', 'off', true)")
            conn.execute(
                "update teamgraph_sessions set updated_at = %s,"
                " title = case when title = '' then %s else title end where thread_id = %s",
                [now(), title_from(title_if_empty), thread_id],
            )

    def rename(self, thread_id: str, title: str) -> SessionRecord | None:
        row = self._one(
            "update teamgraph_sessions set title = %s, updated_at = %s where thread_id = %s returning *",
            [title, now(), thread_id],
        )
        return record_of(row) if row else None

    def delete(self, thread_id: str) -> bool:
        with self.pool.connection() as conn:
            return conn.execute("delete from teamgraph_sessions where thread_id = %s", [thread_id]).rowcount > 0

    def pending_deletion(self, tenant: str, client_id: str) -> PendingDeletion | None:
        row = self._one(
            "select * from teamgraph_session_deletions where tenant = %s and client_id = %s", [tenant, client_id]
        )
        return from_row(PendingDeletion, row) if row else None

    def pending_deletions(self) -> tuple[PendingDeletion, ...]:
        with self.pool.connection() as conn:
            rows = conn.execute("select * from teamgraph_session_deletions").fetchall()
        return tuple(from_row(PendingDeletion, r) for r in rows)  # type: ignore[arg-type]

    def forget_idempotent_turns(self, thread_id: str) -> None:
        with self.pool.connection() as conn:
            conn.execute("delete from teamgraph_idempotency_keys where thread_id = %s", [thread_id])

    def finish_delete_change(self, thread_id: str) -> builtins.list[Statement]:
        return [("delete from teamgraph_session_deletions where thread_id = %s", [thread_id])]

    def idempotent_turn(self, tenant: str, thread_id: str, key: str) -> IdempotentTurn | None:
        row = self._one(
            "select fingerprint, before_checkpoint, result_type, result from teamgraph_idempotency_keys"
            " where tenant = %s and thread_id = %s and key = %s",
            [tenant, thread_id, key],
        )
        if row is None:
            return None
        return IdempotentTurn(**{**row, "result": bytes(row["result"]) if row["result"] is not None else None})

    def start_idempotent_turn(
        self, tenant: str, thread_id: str, key: str, fingerprint: str, before_checkpoint: str | None
    ) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "insert into teamgraph_idempotency_keys (tenant, thread_id, key, fingerprint, before_checkpoint,"
                " created_at) values (%s, %s, %s, %s, %s, %s) on conflict (tenant, thread_id, key) do update set"
                " fingerprint = excluded.fingerprint, before_checkpoint = excluded.before_checkpoint,"
                " result_type = null, result = null, created_at = excluded.created_at",
                [tenant, thread_id, key, fingerprint, before_checkpoint, now()],
            )

    def finish_idempotent_turn(self, tenant: str, thread_id: str, key: str, result: tuple[str, bytes]) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "update teamgraph_idempotency_keys set result_type = %s, result = %s"
                " where tenant = %s and thread_id = %s and key = %s",
                [result[0], result[1], tenant, thread_id, key],
            )

    def forget_idempotent_turn(self, tenant: str, thread_id: str, key: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "delete from teamgraph_idempotency_keys where tenant = %s and thread_id = %s and key = %s",
                [tenant, thread_id, key],
            )

    def repair_schema(self) -> bool:
        """Recreate missing tables (checkpoints/self_repair.py); True when the sessions table was gone."""
        with self.pool.connection() as conn:
            row = conn.execute("select to_regclass('teamgraph_sessions') is null as missing").fetchone()
            upgrade_postgres(conn, "session_index", repair=True)
        return bool(row and row["missing"])

    def probe_write(self) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "insert into teamgraph_ready values (1, %s) on conflict (id) do update set at = excluded.at", [now()]
            )

    def close(self) -> None:
        self.pool.close()
