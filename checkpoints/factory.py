"""build_persistence(url): the checkpointer, the store (transcript archive) and the session index, from one URL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

from checkpoints.session_index import PostgresSessionIndex, SessionIndex, SqliteSessionIndex


class CheckpointURLError(ValueError):
    """TEAMGRAPH_CHECKPOINT_URL is not one of the supported forms."""


@dataclass
class Persistence:
    url: str
    checkpointer: BaseCheckpointSaver
    store: BaseStore
    sessions: SessionIndex


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

        yield Persistence(url, InMemorySaver(), InMemoryStore(), SqliteSessionIndex.in_memory())
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
    sessions = SqliteSessionIndex(path)  # also switches the file to WAL, so readers never block the writer
    async with contextlib.AsyncExitStack() as stack:
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
        try:
            yield Persistence(url, checkpointer, store, sessions)
        finally:
            sessions.close()


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
    try:
        checkpointer = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await checkpointer.setup()
        store = AsyncPostgresStore(pool)  # type: ignore[arg-type]
        await store.setup()
        yield Persistence(url, checkpointer, store, sessions)
    finally:
        sessions.close()
        await pool.close()
