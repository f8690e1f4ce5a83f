"""Checkpoint retention: remove a session's superseded checkpoints (and their writes and blobs), compact SQLite,
and measure what a session stores.

LangGraph's savers keep every checkpoint of every turn. A session only ever resumes from its latest checkpoint;
the older ones serve `GET /sessions/{id}/history` and time travel, so a tenant keeps the newest
`retention.keep_checkpoints` of them and the rest go after each turn. Postgres keeps channel values in
`checkpoint_blobs` by version, shared between checkpoints: a blob goes only once no kept checkpoint refers to it
(LangGraph's own `keep_latest` prune statements are reused for that, with more than one checkpoint kept).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

from checkpoints.storage import pg_connect_kwargs

STORE_NAMESPACES = ("transcripts", "voice_items")  # the store entries that belong to one session's thread


async def prune_checkpoints(checkpointer: BaseCheckpointSaver, thread_id: str, keep: int) -> int:
    """Remove all but the newest `keep` checkpoints of every namespace of `thread_id`, with their writes (and,
    on Postgres, the blobs only they referred to). Returns how many checkpoints were removed. The caller holds
    the session's turn lock, so no turn of this thread writes meanwhile."""
    if keep < 1:
        raise ValueError("keep must be at least 1: a session resumes from its latest checkpoint")
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    if isinstance(checkpointer, AsyncSqliteSaver):
        return await _prune_sqlite(checkpointer, thread_id, keep)
    if isinstance(checkpointer, InMemorySaver):
        return _prune_memory(checkpointer, thread_id, keep)
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    if isinstance(checkpointer, AsyncPostgresSaver):
        return await _prune_postgres(checkpointer, thread_id, keep)
    raise TypeError(f"no checkpoint retention for {type(checkpointer).__name__}")


async def _prune_sqlite(saver: Any, thread_id: str, keep: int) -> int:
    removed = 0
    async with saver.lock:
        conn = saver.conn
        await conn.execute("BEGIN IMMEDIATE")
        try:
            async with conn.execute(
                "SELECT DISTINCT checkpoint_ns FROM checkpoints WHERE thread_id = ?", (thread_id,)
            ) as cur:
                namespaces = [row[0] for row in await cur.fetchall()]
            for ns in namespaces:
                # checkpoint ids are time-ordered (uuid6), so the newest sort last
                async with conn.execute(
                    "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
                    "ORDER BY checkpoint_id DESC LIMIT -1 OFFSET ?",
                    (thread_id, ns, keep),
                ) as cur:
                    unkept = [row[0] for row in await cur.fetchall()]
                if not unkept:
                    continue
                marks = ",".join("?" * len(unkept))
                await conn.execute(
                    f"DELETE FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id IN ({marks})",
                    (thread_id, ns, *unkept),
                )
                await conn.execute(
                    f"DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id IN ({marks})",
                    (thread_id, ns, *unkept),
                )
                # the oldest kept checkpoint no longer has a parent to point at (as LangGraph's own prune does)
                await conn.execute(
                    f"UPDATE checkpoints SET parent_checkpoint_id = NULL WHERE thread_id = ? AND checkpoint_ns = ? "
                    f"AND parent_checkpoint_id IN ({marks})",
                    (thread_id, ns, *unkept),
                )
                removed += len(unkept)
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
    return removed


def _prune_memory(saver: Any, thread_id: str, keep: int) -> int:
    removed = 0
    for ns, checkpoints in saver.storage.get(thread_id, {}).items():
        unkept = sorted(checkpoints, reverse=True)[keep:]
        for checkpoint_id in unkept:
            del checkpoints[checkpoint_id]
            saver.writes.pop((thread_id, ns, checkpoint_id), None)
        removed += len(unkept)
    return removed


async def _prune_postgres(saver: Any, thread_id: str, keep: int) -> int:
    from langgraph.checkpoint.postgres.base import (
        PRUNE_BLOBS_SQL,
        PRUNE_CHECKPOINTS_SQL,
        PRUNE_PARENTS_SQL,
        PRUNE_REFERENCED_BLOBS_SQL,
        PRUNE_SNAPSHOT_SQL,
        PRUNE_UNKEPT_SQL,
        PRUNE_WRITES_SQL,
        _garbage_blobs,
    )

    removed = 0
    async with saver._cursor() as cur, cur.connection.transaction():
        # one snapshot for every statement: what a run saves meanwhile is neither seen nor deleted
        await cur.execute(PRUNE_SNAPSHOT_SQL)
        await cur.execute(
            "SELECT checkpoint_ns, array_agg(checkpoint_id ORDER BY checkpoint_id DESC) AS ids "
            "FROM checkpoints WHERE thread_id = %s GROUP BY checkpoint_ns",
            (thread_id,),
        )
        for row in await cur.fetchall():
            ns, ids = row["checkpoint_ns"], row["ids"]
            if len(ids) <= keep:
                continue
            kept = ids[:keep]
            await cur.execute(PRUNE_UNKEPT_SQL, (thread_id, ns, kept), prepare=False)
            unkept = [r["checkpoint_id"] for r in await cur.fetchall()]
            await cur.execute(PRUNE_WRITES_SQL, (thread_id, ns, unkept), prepare=False)
            await cur.execute(PRUNE_CHECKPOINTS_SQL, (thread_id, ns, kept), prepare=False)
            freed = await cur.fetchall()
            await cur.execute(PRUNE_PARENTS_SQL, (thread_id, ns, kept, kept), prepare=False)
            if freed:
                await cur.execute(PRUNE_REFERENCED_BLOBS_SQL, (thread_id, ns), prepare=False)
                referenced = await cur.fetchall()
                for channel, versions in _garbage_blobs(freed, referenced).items():
                    await cur.execute(PRUNE_BLOBS_SQL, (thread_id, ns, channel, versions), prepare=False)
            removed += len(unkept)
    return removed


# ---- SQLite file compaction


def enable_incremental_vacuum(path: Path) -> bool:
    """Make the SQLite file reuse and release freed pages (`auto_vacuum = INCREMENTAL`); returns True when the
    file is (now) in that mode. A new file takes the mode at once; an existing one needs one VACUUM, which
    needs the file to itself: when another connection holds it, this returns False and the next start retries
    (nothing changes meanwhile, the file just keeps its free pages)."""
    conn = sqlite3.connect(path, timeout=1, isolation_level=None)
    try:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            return True
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
        if has_tables:
            try:
                conn.execute("VACUUM")  # rewrites the file in the new mode; atomic (a crash leaves the old file)
            except sqlite3.OperationalError:
                return False
        return bool(conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2)
    finally:
        conn.close()


async def compact_sqlite(checkpointer: BaseCheckpointSaver, max_pages: int = 2000) -> int:
    """Give up to `max_pages` free pages back to the file system (incremental vacuum); returns how many pages
    were free before. Pages freed by pruning are reused by new rows either way; this bounds the file too."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    if not isinstance(checkpointer, AsyncSqliteSaver):
        return 0
    async with checkpointer.lock:
        async with checkpointer.conn.execute("PRAGMA freelist_count") as cur:
            row = await cur.fetchone()
        free = int(row[0]) if row else 0
        if free:
            with contextlib.suppress(sqlite3.OperationalError):  # busy: the next pass does it
                # the pragma frees one page per step: a plain execute steps once, a script runs it to the end
                await checkpointer.conn.executescript(f"PRAGMA incremental_vacuum({int(max_pages)});")
    return free


# ---- measurement


async def stored_bytes(checkpointer: BaseCheckpointSaver, store: BaseStore, thread_id: str) -> dict[str, int]:
    """Bytes one session's rows take: checkpoints, writes, blobs (Postgres) and its store entries (transcript
    archive, voice records). Row payload sizes, not pages: what retention controls."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    namespaces = [f"{ns}.{thread_id}" for ns in STORE_NAMESPACES]
    if isinstance(checkpointer, AsyncSqliteSaver):
        queries = {
            "checkpoints": (
                "SELECT coalesce(sum(length(thread_id) + length(checkpoint_ns) + length(checkpoint_id) "
                "+ coalesce(length(parent_checkpoint_id), 0) + length(type) + length(checkpoint) "
                "+ length(metadata)), 0), count(*) FROM checkpoints WHERE thread_id = ?",
                (thread_id,),
            ),
            "writes": (
                "SELECT coalesce(sum(length(thread_id) + length(checkpoint_ns) + length(checkpoint_id) "
                "+ length(task_id) + length(channel) + coalesce(length(type), 0) "
                "+ coalesce(length(value), 0) + 8), 0), "
                "count(*) FROM writes WHERE thread_id = ?",
                (thread_id,),
            ),
        }
        sizes: dict[str, int] = {}
        async with checkpointer.lock:
            for name, (sql, params) in queries.items():
                async with checkpointer.conn.execute(sql, params) as cur:
                    counted = await cur.fetchone()
                assert counted is not None
                sizes[name], sizes[f"{name}_rows"] = int(counted[0]), int(counted[1])
        conn = store.conn  # type: ignore[attr-defined]
        marks = ",".join("?" * len(namespaces))
        async with conn.execute(
            f"SELECT coalesce(sum(length(prefix) + length(key) + length(value)), 0), count(*) FROM store "
            f"WHERE prefix IN ({marks})",
            namespaces,
        ) as cur:
            store_row = await cur.fetchone()
        assert store_row is not None
        sizes["store"], sizes["store_rows"] = int(store_row[0]), int(store_row[1])
        sizes["blobs"] = sizes["blobs_rows"] = 0
    else:
        sizes = {}
        async with checkpointer._cursor() as cur:  # type: ignore[attr-defined]
            for name, table in (("checkpoints", "checkpoints"), ("writes", "checkpoint_writes"),
                                ("blobs", "checkpoint_blobs")):  # fmt: skip
                await cur.execute(
                    f"SELECT coalesce(sum(pg_column_size(t.*)), 0) AS b, count(*) AS n FROM {table} t "
                    "WHERE thread_id = %s",
                    (thread_id,),
                )
                row = await cur.fetchone()
                sizes[name], sizes[f"{name}_rows"] = int(row["b"]), int(row["n"])
            await cur.execute(
                "SELECT coalesce(sum(pg_column_size(s.*)), 0) AS b, count(*) AS n FROM store s WHERE prefix = ANY(%s)",
                (namespaces,),
            )
            row = await cur.fetchone()
            sizes["store"], sizes["store_rows"] = int(row["b"]), int(row["n"])
    sizes["total"] = sizes["checkpoints"] + sizes["writes"] + sizes["blobs"] + sizes["store"]
    return sizes


# ---- one retention pass at a time across processes and replicas


@contextlib.asynccontextmanager
async def retention_leader(url: str) -> AsyncIterator[bool]:
    """Try to become the one process that applies retention now: yields True when this one holds the lock
    (Postgres: a session advisory lock; SQLite: an exclusive flock beside the file), False when another does.
    Never waits: the other pass does the work."""
    scheme = urlparse(url).scheme
    if scheme in ("postgres", "postgresql"):
        import psycopg

        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **pg_connect_kwargs())
        try:
            # one lock per schema, like the schema migrations': deployments sharing a database keep apart
            key = "hashtext('teamgraph-retention:' || current_schema())"
            row = await (await conn.execute(f"select pg_try_advisory_lock({key})")).fetchone()
            held = bool(row and row[0])
            try:
                yield held
            finally:
                if held:
                    await conn.execute(f"select pg_advisory_unlock({key})")
        finally:
            await conn.close()
    elif scheme == "sqlite":
        from checkpoints.factory import sqlite_path

        fd = os.open(f"{sqlite_path(url)}.retention-lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    else:  # memory://: one process by definition
        yield True


async def run_retention_passes(engine: Any, interval_s: float) -> None:
    """The server's background task: every `interval_s`, the one process holding the retention lock applies
    every tenant's retention (`Engine.prune_sessions`); a failed pass is logged and the next one retries."""
    import asyncio

    import structlog

    log = structlog.get_logger("teamgraph.retention")
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with retention_leader(engine.persistence.url) as leader:
                if leader:
                    report = await engine.prune_sessions()
                    log.info("retention_pass", **{t: {k: v for k, v in c.items() if k != "expired_ids"}
                                                  for t, c in report.items()})  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("retention_pass_failed", error=f"{type(exc).__name__}: {exc}")
