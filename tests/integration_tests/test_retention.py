"""Retention as an operator sees it: a long session's stored bytes stay flat, history and transcript keep working
with what is kept, the SQLite file reuses freed pages; on a real SQLite file and on the machine's PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpoints.retention import enable_incremental_vacuum, stored_bytes
from nodes.memory_keeper import read_archive
from personas.schema import RetentionSettings
from server.engine import Engine
from tests.conftest import fresh_postgres_schema, open_engine


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/teamgraph.db"
    else:
        with fresh_postgres_schema("tg_retention") as pg_url:
            yield pg_url


def set_retention(engine: Engine, tenant: str, **settings: Any) -> None:
    bundle = engine.bundles.tenants[tenant]
    engine.bundles.tenants[tenant] = bundle.model_copy(update={"retention": RetentionSettings(**settings)})


async def chat(engine: Engine, session: Any, turns: int, start: int = 0) -> None:
    for i in range(start, start + turns):
        await engine.run_turn(session, {"messages": [{"role": "user", "content": f"Where is order {i}? It is late."}]})


async def checkpoint_count(engine: Engine, thread_id: str) -> int:
    return len([c async for c in engine.persistence.checkpointer.alist({"configurable": {"thread_id": thread_id}})])


async def test_a_long_chat_keeps_its_newest_checkpoints_and_archive_and_still_works(url: str) -> None:
    async with open_engine(url) as engine:
        set_retention(engine, "veneo", keep_checkpoints=5, archive_messages=10)
        session = await engine.create_session("veneo", "veneo_chat")
        await chat(engine, session, 30)

        assert await checkpoint_count(engine, session.thread_id) == 5
        history = await engine.history(session, limit=50)
        assert len(history) == 5
        # every kept checkpoint still loads, and paging from one of them works
        assert len(await engine.history(session, limit=50, before=history[1]["checkpoint_id"])) == 3
        transcript = await engine.transcript(session)
        texts = [str(m.content) for m in transcript if m.type == "human"]
        assert texts[-1] == "Where is order 29? It is late."
        assert "Where is order 0? It is late." not in texts  # the oldest archived messages are gone
        assert len(await read_archive(engine.persistence.store, session.thread_id)) <= 10
        # the transcript is still in order with no gaps at its end
        assert texts[-5:] == [f"Where is order {i}? It is late." for i in range(25, 30)]

        await chat(engine, session, 1, start=30)  # the session resumes from what is kept
        assert (await engine.state(session))["messages"][-2].content == "Where is order 30? It is late."


async def test_default_retention_keeps_a_session_flat(url: str) -> None:
    """The issue's bound, at a size a test can afford: bytes after 120 turns within 1.5x of after 20 (bench/storage.py
    measures 1,000)."""
    async with open_engine(url) as engine:
        session = await engine.create_session("veneo", "veneo_chat")
        await chat(engine, session, 20)
        after_20 = await stored_bytes(engine.persistence.checkpointer, engine.persistence.store, session.thread_id)
        await chat(engine, session, 100, start=20)
        after_120 = await stored_bytes(engine.persistence.checkpointer, engine.persistence.store, session.thread_id)
        assert after_120["checkpoints_rows"] == RetentionSettings().keep_checkpoints
        assert after_120["total"] <= 1.5 * after_20["total"], (after_20, after_120)


async def test_without_limits_nothing_is_removed(url: str) -> None:
    async with open_engine(url) as engine:
        set_retention(engine, "veneo", keep_checkpoints=100000, archive_messages=None)
        session = await engine.create_session("veneo", "veneo_chat")
        await chat(engine, session, 25)
        assert await checkpoint_count(engine, session.thread_id) >= 25
        texts = [str(m.content) for m in await engine.transcript(session) if m.type == "human"]
        assert texts == [f"Where is order {i}? It is late." for i in range(25)]


def test_sqlite_files_reuse_and_release_freed_pages(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("create table t (x blob)")
    conn.executemany("insert into t values (?)", [(b"x" * 4000,) for _ in range(500)])
    conn.commit()
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()

    assert enable_incremental_vacuum(old)  # an existing file converts with one VACUUM, keeping its rows
    conn = sqlite3.connect(old, isolation_level=None)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert conn.execute("select count(*) from t").fetchone()[0] == 500
    conn.execute("delete from t")
    size_before = old.stat().st_size
    conn.executescript("PRAGMA incremental_vacuum;")
    conn.close()
    assert old.stat().st_size < size_before / 4

    busy = tmp_path / "busy.db"
    holder = sqlite3.connect(busy, isolation_level=None)
    holder.execute("create table t (x)")
    holder.execute("begin")
    holder.execute("insert into t values (1)")
    assert enable_incremental_vacuum(busy) is False  # in use: left as it is, the next start retries
    holder.execute("rollback")
    holder.close()
    assert enable_incremental_vacuum(busy)


async def test_a_new_database_file_is_created_with_incremental_vacuum(tmp_path: Path) -> None:
    async with open_engine(f"sqlite:///{tmp_path}/teamgraph.db"):
        pass
    conn = sqlite3.connect(tmp_path / "teamgraph.db")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    conn.close()
