"""build_persistence(url): the checkpointer, the store (transcript archive) and the session index, from one URL."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from langgraph.checkpoint.base import WRITES_IDX_MAP, BaseCheckpointSaver, CheckpointTuple
from langgraph.store.base import BaseStore

from checkpoints.audit import AuditLog, PostgresAuditLog, SqliteAuditLog
from checkpoints.retention import enable_incremental_vacuum
from checkpoints.self_repair import Recreated, StorageRepair, exit_for_restart, file_identity, remove_stale_wal
from checkpoints.session_index import PostgresSessionIndex, SessionIndex, SqliteSessionIndex
from checkpoints.storage import (
    DEFAULT_STATEMENT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    StorageUnavailable,
    acheck_pooled,
    display_url,
    pg_connect_kwargs,
    statement_timeout_sql,
)

if TYPE_CHECKING:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver


class CheckpointURLError(ValueError):
    """TEAMGRAPH_CHECKPOINT_URL is not one of the supported forms."""


@dataclass
class Persistence:
    url: str
    checkpointer: BaseCheckpointSaver
    store: BaseStore
    sessions: SessionIndex
    audit: AuditLog
    data_dir: Path | None = None  # where an embedded database lives (readiness checks it takes writes)
    repair: StorageRepair | None = None  # recreates tables dropped while the server runs (None: memory://)


PROBE_BYTES = 64 * 1024


def probe_directory(directory: Path) -> None:
    """Write, sync and remove a small file in `directory`: fails when the disk is full or the directory is
    read-only (file modes alone do not tell: root ignores them)."""
    probe = directory / ".teamgraph-write-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"\0" * PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            probe.unlink()


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db` -> Path."""
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if not path:
        raise CheckpointURLError(f"{display_url(url)!r}: give a file, e.g. sqlite:///./data/teamgraph.db")
    return Path(path)


@contextlib.asynccontextmanager
async def build_persistence(
    url: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
    recreate_deleted_file: bool = True,
) -> AsyncIterator[Persistence]:
    """Open everything a session needs in the database `url` names; closes it all on exit.
    `timeout_s` bounds a Postgres connect and a wait for a pooled connection, `statement_timeout_s` a statement.
    `recreate_deleted_file`: a SQLite file deleted while the server runs is recreated in place; False (one of
    several worker processes on the file) makes the process exit instead, and its supervisor starts a new one on
    a new file (see checkpoints/self_repair.py)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        async with _sqlite(url, recreate_deleted_file) as p:
            yield p
    elif scheme in ("postgres", "postgresql"):
        async with _postgres(url, timeout_s, statement_timeout_s) as p:
            yield p
    elif scheme == "memory":
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.store.memory import InMemoryStore

        index = SqliteSessionIndex.in_memory()
        # one in-memory database for both, so an audited change of the index is one transaction (AuditLog.append_if)
        yield Persistence(url, InMemorySaver(), InMemoryStore(), index, SqliteAuditLog(None, index.shared_connection()))
    else:
        raise CheckpointURLError(
            f"unsupported checkpoint URL {display_url(url)!r}: use sqlite:///path.db, postgresql://user@host:port/db "
            "or memory://"
        )


@contextlib.asynccontextmanager
async def _sqlite(url: str, recreate_deleted_file: bool = True) -> AsyncIterator[Persistence]:
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.store.sqlite.aio import AsyncSqliteStore

    path = sqlite_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        # several worker processes may open a new file at once: one of them creates the tables at a time
        setup_lock = os.open(f"{path}.setup-lock", os.O_RDWR | os.O_CREAT, 0o600)
        await asyncio.to_thread(fcntl.flock, setup_lock, fcntl.LOCK_EX)
        try:
            remove_stale_wal(path)  # a -wal/-shm left by a database file that was deleted is not this file's
            # before any table exists in a new file; an existing file converts once (see enable_incremental_vacuum)
            enable_incremental_vacuum(path)
            sessions = SqliteSessionIndex(path)  # also switches the file to WAL, so readers never block the writer
            audit = SqliteAuditLog(path)
            identity = file_identity(path)

            async def connect() -> Any:
                conn = await aiosqlite.connect(str(path), isolation_level=None)
                await conn.execute("PRAGMA busy_timeout = 5000")
                await conn.execute("PRAGMA synchronous = NORMAL")
                return conn

            checkpointer = AsyncSqliteSaver(await connect())
            await checkpointer.setup()
            store = AsyncSqliteStore(await connect())
            await store.setup()
            stack.push_async_callback(lambda: checkpointer.conn.close())
            stack.push_async_callback(lambda: store.conn.close())
        finally:
            fcntl.flock(setup_lock, fcntl.LOCK_UN)
            os.close(setup_lock)

        async def setup() -> Recreated:
            session_index = await asyncio.to_thread(sessions.repair_schema)
            audit_tables = await asyncio.to_thread(audit.repair_schema)
            found = Recreated(session_index=session_index, audit=audit_tables.events, audit_keys=audit_tables.keys)
            # the store's migrations are numbered (store_migrations): a store table dropped under a version row
            # that says it exists would never come back, so the version rows go with it (its steps then run
            # again on the new table); the checkpointer's setup is "create if not exists" only
            for table in ("checkpoints", "writes", "store"):
                found.checkpoints = found.checkpoints or not await _sqlite_has(store.conn, table)
            if not await _sqlite_has(store.conn, "store") and await _sqlite_has(store.conn, "store_migrations"):
                await store.conn.execute("delete from store_migrations")
            for saver in (checkpointer, store):
                saver.is_setup = False  # their setup() returns at once when it ran before
                await saver.setup()
            return found

        def file_replaced() -> bool:
            return file_identity(path) != identity

        async def reopen() -> None:
            # every connection to the deleted file closes before the new file opens: the last one to close
            # removes the old -wal/-shm, which the new file must not inherit (see remove_stale_wal)
            nonlocal identity
            async with checkpointer.lock, store.lock:
                await checkpointer.conn.close()
                await store.conn.close()
                sync_locks = (*sessions.locks(), *audit.locks())
                await asyncio.to_thread(_reopen_sync, path, sync_locks, (sessions, audit))
                checkpointer.conn, store.conn = await connect(), await connect()
                identity = file_identity(path)

        repair = StorageRepair(
            "sqlite",
            setup,
            file_replaced,
            reopen if recreate_deleted_file else exit_for_restart,
            restarts_worker=not recreate_deleted_file,
        )
        watcher = asyncio.create_task(repair.watch())
        try:
            yield Persistence(url, checkpointer, store, sessions, audit, data_dir=path.parent, repair=repair)
        finally:
            watcher.cancel()
            sessions.close()
            audit.close()


CHECKPOINT_SYNC_DEFERRED = "__checkpoint_sync_deferred"  # run config key; "__" keys stay out of checkpoint metadata
_deferring: contextvars.ContextVar[bool] = contextvars.ContextVar("teamgraph_checkpoint_sync_deferred", default=False)


def _turn_saver_class() -> type[AsyncPostgresSaver]:
    """LangGraph's AsyncPostgresSaver (langgraph-checkpoint-postgres 3.2, pinned in constraints.txt), with two
    changes to its per-turn work:

    - In a run whose config sets CHECKPOINT_SYNC_DEFERRED its checkpoint commits do not wait for the WAL flush:
      a promise, made by the caller, that a durable commit on this database follows the run's last checkpoint
      before anything is acknowledged (a turn: the observer's closing audit write,
      server/observability/turn_observer.py). Postgres flushes its WAL in order, so that commit's flush puts the
      checkpoint on disk too, and a turn waits for one disk sync instead of two. Every other write (a run
      without the key, pending writes, deletes, the store) commits as before.
    - It serializes and deserializes on the event loop instead of in a worker thread
      (`asyncio.to_thread(self._dump_blobs / _dump_writes / _load_writes, ...)` in the library). The work is
      pickling-free msgpack of one turn's state, which holds the GIL either way, so the thread bought no
      parallelism; each hop cost a thread-pool handoff and a GIL exchange (about 0.3-1.5 ms of CPU on a busy
      2-core machine, two per turn: the write's blobs and the read's pending writes). Same statements, same
      rows, same order: only where the Python runs changed."""
    from langgraph.checkpoint.base import get_serializable_checkpoint_metadata
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from langgraph.checkpoint.serde.types import _DeltaSnapshot
    from psycopg.types.json import Jsonb

    class TurnPostgresSaver(AsyncPostgresSaver):
        async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
            token = _deferring.set(bool((config.get("configurable") or {}).get(CHECKPOINT_SYNC_DEFERRED)))
            try:
                return await self._aput_inline(config, checkpoint, metadata, new_versions)
            finally:
                _deferring.reset(token)

        async def _aput_inline(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
            # AsyncPostgresSaver.aput of 3.2.0, with _dump_blobs called here rather than in a worker thread
            configurable = config["configurable"].copy()
            thread_id = configurable.pop("thread_id")
            checkpoint_ns = configurable.pop("checkpoint_ns")
            checkpoint_id = configurable.pop("checkpoint_id", None)
            copy = checkpoint.copy()
            copy["channel_values"] = copy["channel_values"].copy()
            next_config = {
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": checkpoint_ns,
                    "checkpoint_id": checkpoint["id"],
                }
            }
            # primitive values stay inline in the checkpoint row, the others go to the blobs table
            blob_values = {}
            for k, v in checkpoint["channel_values"].items():
                if isinstance(v, _DeltaSnapshot):
                    blob_values[k] = copy["channel_values"].pop(k)
                    copy["channel_values"][k] = True
                elif v is None or isinstance(v, (str, int, float, bool)):
                    pass
                else:
                    blob_values[k] = copy["channel_values"].pop(k)
            async with self._cursor(pipeline=True) as cur:
                if blob_versions := {k: v for k, v in new_versions.items() if k in blob_values}:
                    await cur.executemany(
                        self.UPSERT_CHECKPOINT_BLOBS_SQL,
                        self._dump_blobs(thread_id, checkpoint_ns, blob_values, blob_versions),
                    )
                await cur.execute(
                    self.UPSERT_CHECKPOINTS_SQL,
                    (
                        thread_id,
                        checkpoint_ns,
                        checkpoint["id"],
                        checkpoint_id,
                        Jsonb(copy),
                        Jsonb(get_serializable_checkpoint_metadata(config, metadata)),
                    ),
                )
            return next_config

        async def aput_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
            # AsyncPostgresSaver.aput_writes of 3.2.0, with _dump_writes called here
            query = (
                self.UPSERT_CHECKPOINT_WRITES_SQL
                if all(w[0] in WRITES_IDX_MAP for w in writes)
                else self.INSERT_CHECKPOINT_WRITES_SQL
            )
            configurable = config["configurable"]
            params = self._dump_writes(
                configurable["thread_id"], configurable["checkpoint_ns"], configurable["checkpoint_id"], task_id,
                task_path, writes,
            )  # fmt: skip
            async with self._cursor(pipeline=True) as cur:
                await cur.executemany(query, params)

        def latest_query(self, thread_id: str) -> tuple[str, tuple[str, str]]:
            """The statement and arguments with which `aget_tuple` reads the thread's latest checkpoint (root
            namespace), to be sent elsewhere (the turn lock's round trip, Engine.lease_turn) in binary format; its
            row goes to `latest_from_row`."""
            where = "WHERE thread_id = %s AND checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1"
            return self.SELECT_SQL + where, (thread_id, "")

        async def latest_from_row(self, value: Any) -> tuple[bool, CheckpointTuple | None]:
            """What `aget_tuple` returns for the row (None: no row) of `latest_query`, as (True, it); (False, None)
            for a checkpoint older than format 4 with a parent, for which `aget_tuple` reads more (pending sends)."""
            if value is None:
                return True, None
            if value["checkpoint"]["v"] < 4 and value["parent_checkpoint_id"]:
                return False, None
            return True, await self._load_checkpoint_tuple(value)

        async def _load_checkpoint_tuple(self, value: Any) -> CheckpointTuple:
            # AsyncPostgresSaver._load_checkpoint_tuple of 3.2.0, with _load_writes called here
            thread_id, checkpoint_ns = value["thread_id"], value["checkpoint_ns"]
            parent = value["parent_checkpoint_id"]
            return CheckpointTuple(
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
                                  "checkpoint_id": value["checkpoint_id"]}},
                {  # type: ignore[typeddict-item]
                    **value["checkpoint"],
                    "channel_values": {
                        **(value["checkpoint"].get("channel_values") or {}),
                        **self._load_blobs(value["channel_values"]),
                    },
                },
                value["metadata"],
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns, "checkpoint_id": parent}}
                if parent
                else None,
                self._load_writes(value["pending_writes"]),
            )  # fmt: skip

        @contextlib.asynccontextmanager
        async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[Any]:
            # aput writes the blobs and the checkpoint in one pipeline, one implicit transaction: a local
            # setting in it lasts until its commit, and no longer
            async with super()._cursor(pipeline=pipeline) as cur:
                if pipeline and _deferring.get():
                    await cur.execute("select set_config('synchronous_commit', 'off', true)")
                yield cur

    return TurnPostgresSaver


# LangGraph's Postgres tables, and the table of migration versions that says they exist
_LANGGRAPH_PG_TABLES = (
    (("checkpoints", "checkpoint_blobs", "checkpoint_writes"), "checkpoint_migrations"),
    (("store",), "store_migrations"),
)


async def _sqlite_has(conn: Any, table: str) -> bool:
    cursor = await conn.execute("select 1 from sqlite_master where type = 'table' and name = ?", [table])
    return await cursor.fetchone() is not None


def _reopen_sync(path: Path, locks: tuple[Any, ...], parts: tuple[Any, ...]) -> None:
    """The synchronous half of a reopen: under the parts' locks, close them, clear the deleted file's WAL, and
    open them again on the file now at `path` (created empty, with its tables, when there is none)."""
    with contextlib.ExitStack() as held:
        for lock in locks:
            held.enter_context(lock)
        for part in parts:
            part.close_for_reopen()
        remove_stale_wal(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        enable_incremental_vacuum(path)
        for part in parts:
            part.open_again()


def postgres_unreachable(url: str, exc: BaseException) -> StorageUnavailable:
    """A one-line reason for a database that cannot be reached at start-up (libpq's first line, no password)."""
    # libpq: 'connection failed: connection to server at "h", port p failed: <cause>' then a hint line
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = first.rsplit("failed: ", 1)[-1].removeprefix("FATAL:").strip()
    where = urlparse(url)
    try:
        target = f"{where.hostname or 'localhost'}:{where.port or 5432}{where.path or ''}"
    except ValueError:  # a port that is no number (libpq's reason says so)
        target = f"{where.hostname or 'localhost'}{where.path or ''}"
    return StorageUnavailable(f"cannot connect to PostgreSQL at {target}: {reason}")


@contextlib.asynccontextmanager
async def _postgres(url: str, timeout_s: float, statement_timeout_s: float) -> AsyncIterator[Persistence]:
    import psycopg
    from langgraph.store.postgres.aio import AsyncPostgresStore
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    # one direct connect first: its error names the cause (refused, no such database, auth), where a pool
    # would only report that it timed out
    try:
        probe = await psycopg.AsyncConnection.connect(url, **pg_connect_kwargs(timeout_s))
        await probe.close()
    except psycopg.OperationalError as exc:
        raise postgres_unreachable(url, exc) from exc

    async def configure(conn: Any) -> None:
        await conn.execute(statement_timeout_sql(statement_timeout_s))

    pool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=10,
        open=False,
        timeout=timeout_s,  # a turn waits this long for a connection, then answers 503 (not psycopg's 30 s)
        configure=configure,
        # a connection the database dropped (restart, outage) is replaced before use, so service resumes by
        # itself once the database is back (a poll of its socket tells, see went_away)
        check=acheck_pooled,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row, **pg_connect_kwargs(timeout_s)},
    )
    await pool.open(wait=True, timeout=timeout_s * 3)
    sessions = PostgresSessionIndex(url, timeout_s, statement_timeout_s)
    audit = PostgresAuditLog(url, timeout_s, statement_timeout_s)
    try:
        checkpointer = _turn_saver_class()(pool)  # type: ignore[call-arg]
        store = AsyncPostgresStore(pool)  # type: ignore[arg-type]
        async with _one_setup_at_a_time(url, timeout_s):
            await checkpointer.setup()
            await store.setup()

        async def setup() -> Recreated:
            session_index = await asyncio.to_thread(sessions.repair_schema)
            audit_tables = await asyncio.to_thread(audit.repair_schema)
            found = Recreated(session_index=session_index, audit=audit_tables.events, audit_keys=audit_tables.keys)
            # LangGraph's migrations start over when their version table went with the rest (dropped database
            # or schema); when only its tables went, their version rows go too (every step is idempotent)
            langgraph_intact = True
            async with pool.connection() as conn:
                for tables, versions in _LANGGRAPH_PG_TABLES:
                    row = await (await conn.execute(
                        "select bool_or(to_regclass(t) is null) as missing, to_regclass(%s) is not null as versioned"
                        " from unnest(%s::text[]) as t", [versions, list(tables)]
                    )).fetchone()  # fmt: skip
                    if row and row["missing"]:
                        found.checkpoints = True
                    if row and row["missing"] and row["versioned"]:
                        await conn.execute(f"delete from {versions}")
                    langgraph_intact = langgraph_intact and bool(row and not row["missing"] and row["versioned"])
            if not langgraph_intact:  # only then: the setup lock costs a connection of its own (a /readyz repair)
                async with _one_setup_at_a_time(url, timeout_s):
                    await checkpointer.setup()
                    await store.setup()
            return found

        yield Persistence(url, checkpointer, store, sessions, audit, repair=StorageRepair("postgres", setup))
    finally:
        sessions.close()
        audit.close()
        await pool.close()


SETUP_LOCK_WAIT_S = 60.0


@contextlib.asynccontextmanager
async def _one_setup_at_a_time(url: str, timeout_s: float) -> AsyncIterator[None]:
    """LangGraph's setup() of the checkpointer and the store (`create table if not exists`, then numbered
    migrations, each its own statement) is not safe from two processes at once: on an empty database the second
    of two workers or replicas starting together failed (UniqueViolation on the migrations table or pg_type) and
    did not start. Serialised by a session advisory lock scoped to the schema, as our own migrations are
    (schema_migrations.upgrade_postgres, a different key); a later process finds the tables and its setup only
    checks the versions. On a connection of its own, so the lock goes with it however the setup ends. Polled
    (`pg_try_advisory_lock`), not waited for: a statement blocked on the lock holds a snapshot, and the setup's
    `create index concurrently` in the process holding it waits for every such snapshot to end (a deadlock
    Postgres does not detect; it ended at the statement timeout)."""
    import psycopg

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **pg_connect_kwargs(timeout_s))
    try:
        deadline = asyncio.get_running_loop().time() + SETUP_LOCK_WAIT_S
        while True:
            cur = await conn.execute(
                "select pg_try_advisory_lock(hashtext('teamgraph-langgraph-setup:' || current_schema()))"
            )
            row = await cur.fetchone()
            if row is not None and row[0]:
                break
            if asyncio.get_running_loop().time() > deadline:  # a clear failure (503, or a start that says why)
                raise StorageUnavailable(
                    f"another process has held LangGraph's checkpointer setup for {SETUP_LOCK_WAIT_S:.0f} s "
                    "(its `create index concurrently` may be waiting for a long transaction to end)"
                )
            await asyncio.sleep(0.05)
        yield
    finally:
        await conn.close()


def check_storage(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Before serving: the URL is supported and its database answers and takes writes. Raises
    CheckpointURLError (the URL itself is wrong) or StorageUnavailable (the database is not there), each with a
    one-line reason."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = sqlite_path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            probe_directory(path.parent)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write to {path.parent}: {exc.strerror or exc}") from exc
        if path.is_file() and path.stat().st_size:
            check_sqlite_file(path)
    elif scheme in ("postgres", "postgresql"):
        import psycopg

        try:
            psycopg.connect(url, **pg_connect_kwargs(timeout_s)).close()
        except psycopg.OperationalError as exc:
            raise postgres_unreachable(url, exc) from exc
        except psycopg.Error as exc:  # libpq cannot parse it: its message quotes the URL, password and all
            raise CheckpointURLError(f"libpq cannot read this URL ({type(exc).__name__})") from None
    elif scheme != "memory":
        raise CheckpointURLError(
            f"unsupported scheme {scheme + '://' if scheme else '(none)'}: "
            "use sqlite:///path.db, postgresql://user@host:port/db or memory://"
        )


def check_sqlite_file(path: Path) -> None:
    """An existing file is a SQLite database: a wrong path or a damaged file is named here, not in a traceback of
    the app's start-up. Read only, so a database another process serves is not disturbed."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if not any(words in str(exc) for words in ("not a database", "malformed", "encrypted")):
            return  # locked, busy or the like: the app's start-up has its own answers to those
        raise StorageUnavailable(f"{path} is not a SQLite database this can open ({exc})") from exc


def open_audit_log(url: str) -> AuditLog:
    """The audit log alone (for `teamgraph audit ...`), in the database TEAMGRAPH_CHECKPOINT_URL names."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return SqliteAuditLog(sqlite_path(url))
    if scheme in ("postgres", "postgresql"):
        return PostgresAuditLog(url)
    raise CheckpointURLError(
        f"{display_url(url)!r} keeps no audit log between processes; use sqlite:/// or postgresql://"
    )
