"""build_persistence(url): the checkpointer, the store (transcript archive) and the session index, from one URL."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

from checkpoints.audit import AuditLog, PostgresAuditLog, SqliteAuditLog
from checkpoints.session_index import PostgresSessionIndex, SessionIndex, SqliteSessionIndex


class CheckpointURLError(ValueError):
    """TEAMGRAPH_CHECKPOINT_URL is not one of the supported forms."""


@dataclass
class Persistence:
    url: str
    checkpointer: BaseCheckpointSaver
    store: BaseStore
    sessions: SessionIndex
    audit: AuditLog


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db` -> Path."""
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if not path:
        raise CheckpointURLError(f"{url!r}: give a file, e.g. sqlite:///./data/teamgraph.db")
    return Path(path)


@contextlib.asynccontextmanager
async def build_persistence(url: str) -> AsyncIterator[Persistence]:
    """Open everything a session needs in the database `url` names; closes it all on exit."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        async with _sqlite(url) as p:
            yield p
    elif scheme in ("postgres", "postgresql"):
        async with _postgres(url) as p:
            yield p
    elif scheme == "memory":
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.store.memory import InMemoryStore

        yield Persistence(url, InMemorySaver(), InMemoryStore(), SqliteSessionIndex.in_memory(), SqliteAuditLog(None))
    else:
        raise CheckpointURLError(
            f"unsupported checkpoint URL {url!r}: use sqlite:///path.db, postgresql://user@host:port/db or memory://"
        )


@contextlib.asynccontextmanager
async def _sqlite(url: str) -> AsyncIterator[Persistence]:
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
            sessions = SqliteSessionIndex(path)  # also switches the file to WAL, so readers never block the writer
            audit = SqliteAuditLog(path)
            conns = []
            for _ in range(2):
                conn = await aiosqlite.connect(str(path), isolation_level=None)
                stack.push_async_callback(conn.close)
                await conn.execute("PRAGMA busy_timeout = 5000")
                await conn.execute("PRAGMA synchronous = NORMAL")
                conns.append(conn)
            checkpointer = AsyncSqliteSaver(conns[0])
            await checkpointer.setup()
            store = AsyncSqliteStore(conns[1])
            await store.setup()
        finally:
            fcntl.flock(setup_lock, fcntl.LOCK_UN)
            os.close(setup_lock)
        try:
            yield Persistence(url, checkpointer, store, sessions, audit)
        finally:
            sessions.close()
            audit.close()


@contextlib.asynccontextmanager
async def _postgres(url: str) -> AsyncIterator[Persistence]:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from langgraph.store.postgres.aio import AsyncPostgresStore
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=10,
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    )
    await pool.open(wait=True, timeout=10)
    sessions = PostgresSessionIndex(url)
    audit = PostgresAuditLog(url)
    try:
        checkpointer = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await checkpointer.setup()
        store = AsyncPostgresStore(pool)  # type: ignore[arg-type]
        await store.setup()
        yield Persistence(url, checkpointer, store, sessions, audit)
    finally:
        sessions.close()
        audit.close()
        await pool.close()


def open_audit_log(url: str) -> AuditLog:
    """The audit log alone (for `teamgraph audit ...`), in the database TEAMGRAPH_CHECKPOINT_URL names."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return SqliteAuditLog(sqlite_path(url))
    if scheme in ("postgres", "postgresql"):
        return PostgresAuditLog(url)
    raise CheckpointURLError(f"{url!r} keeps no audit log between processes; use sqlite:/// or postgresql://")
