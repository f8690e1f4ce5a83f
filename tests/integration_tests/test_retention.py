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


def backdate(engine: Engine, url: str, thread_id: str, days: float) -> None:
    """Make a session look idle for `days` (what a real deployment gets by waiting)."""
    from datetime import UTC, datetime, timedelta

    stamp = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds")
    if url.startswith("sqlite"):
        with engine.sessions.db.conn:  # type: ignore[attr-defined]
            engine.sessions.db.execute(  # type: ignore[attr-defined]
                "update sessions set updated_at = ? where thread_id = ?", [stamp, thread_id]
            )
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("update teamgraph_sessions set updated_at = %s where thread_id = %s", [stamp, thread_id])


async def test_idle_sessions_expire_like_a_delete_and_the_pass_is_audited(url: str) -> None:
    async with open_engine(url) as engine:
        set_retention(engine, "veneo", idle_days=30, keep_checkpoints=3, archive_messages=None)
        old = await engine.create_session("veneo", "veneo_chat")
        await chat(engine, old, 12)  # enough for the memory keeper to archive messages
        await engine.persistence.store.aput(("voice_items", old.thread_id), "item-1", {"applied": True})
        recent = await engine.create_session("veneo", "veneo_chat")
        await chat(engine, recent, 2)
        backdate(engine, url, old.thread_id, days=31)

        dry = await engine.prune_sessions(dry_run=True)
        assert dry["veneo"]["expired"] == 1 and dry["veneo"]["expired_ids"] == [old.id]
        assert await engine.find_session("veneo", old.id) is not None  # a dry run changes nothing
        assert await read_archive(engine.persistence.store, old.thread_id)

        report = await engine.prune_sessions()
        assert report["veneo"]["expired"] == 1
        assert await engine.find_session("veneo", old.id) is None
        assert await checkpoint_count(engine, old.thread_id) == 0
        assert await read_archive(engine.persistence.store, old.thread_id) == []
        assert await engine.persistence.store.aget(("voice_items", old.thread_id), "item-1") is None
        assert (await engine.find_session("veneo", recent.id)) is not None
        assert len((await engine.state(recent))["messages"]) == 4

        events = [e.event_type for e in engine.audit.query("veneo", session=old.id, limit=1000)]
        assert events[-3:] == ["session_expired", "session_delete_started", "session_deleted"]
        summary = engine.audit.query("veneo", event_type="sessions_pruned")
        assert summary[-1].payload["expired"] == 1
        assert engine.audit.verify("veneo").ok
        # the demo tenant keeps its sessions (no idle_days): nothing of it expired
        assert report["demo"]["expired"] == 0


async def test_a_lowered_checkpoint_limit_applies_to_idle_sessions_on_the_next_pass(url: str) -> None:
    async with open_engine(url) as engine:
        set_retention(engine, "veneo", keep_checkpoints=10)
        session = await engine.create_session("veneo", "veneo_chat")
        await chat(engine, session, 8)
        assert await checkpoint_count(engine, session.thread_id) >= 8
        set_retention(engine, "veneo", keep_checkpoints=2)
        report = await engine.prune_sessions()
        assert report["veneo"]["checkpoints_removed"] >= 6
        assert await checkpoint_count(engine, session.thread_id) == 2
        await chat(engine, session, 1, start=8)


async def test_only_one_process_applies_retention_at_a_time(url: str) -> None:
    from checkpoints.retention import retention_leader

    async with retention_leader(url) as first, retention_leader(url) as second:
        assert first and not second
    async with retention_leader(url) as again:
        assert again


async def test_the_retention_lock_is_one_per_postgres_schema() -> None:
    """Deployments (and test runs) that share one PostgreSQL database in schemas of their own apply their
    retention independently: holding one schema's lock does not stop another schema's pass."""
    from checkpoints.retention import retention_leader

    with fresh_postgres_schema("tg_retention_a") as a, fresh_postgres_schema("tg_retention_b") as b:
        async with retention_leader(a) as first, retention_leader(b) as other, retention_leader(a) as again:
            assert first and other and not again


def test_cli_prune_counts_on_a_dry_run_then_expires(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess

    from tests.integration_tests.cli_runner import run_cli

    repo = Path(__file__).resolve().parents[2]
    bundles = tmp_path / "personas"
    shutil.copytree(repo / "personas", bundles)
    tenant = bundles / "tenants" / "veneo.yaml"
    tenant.write_text(tenant.read_text() + "retention:\n  idle_days: 7\n")
    db = tmp_path / "tg.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEAMGRAPH_", "OPENAI_", "LANGSMITH_"))}
    env |= {"TEAMGRAPH_CHECKPOINT_URL": f"sqlite:///{db}", "TEAMGRAPH_PERSONAS_DIR": str(bundles)}
    teamgraph = str(repo / ".venv" / "bin" / "teamgraph")

    def run(*args: str, stdin: str = "", in_a_process: bool = False) -> subprocess.CompletedProcess[str]:
        """In the test process (CliRunner), or as a `teamgraph` process of its own."""
        if not in_a_process:
            return run_cli(args, env, tmp_path, stdin)
        return subprocess.run([teamgraph, *args], env=env, cwd=tmp_path, input=stdin, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    assert run("chat", "--tenant", "veneo", stdin="Where is my order?\n").returncode == 0
    listed = run("sessions", "list", "--tenant", "veneo").stdout.split()
    session_id = listed[0]
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("update sessions set updated_at = '2020-01-01T00:00:00+00:00'")
    conn.close()

    dry = run("sessions", "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "veneo: would expire 1 idle session(s)" in dry.stdout and session_id in dry.stdout
    assert session_id in run("sessions", "list", "--tenant", "veneo").stdout

    done = run("sessions", "prune", in_a_process=True)
    assert done.returncode == 0, done.stderr
    assert "veneo: expired 1 idle session(s)" in done.stdout
    assert session_id not in run("sessions", "list", "--tenant", "veneo").stdout
    assert run("audit", "verify", "--tenant", "veneo").returncode == 0


async def test_a_failed_retention_step_does_not_fail_the_stored_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.engine

    async def broken(*args: Any) -> int:
        raise RuntimeError("prune failed")

    async with open_engine(f"sqlite:///{tmp_path}/tg.db") as engine:
        session = await engine.create_session("veneo", "veneo_chat")
        monkeypatch.setattr(server.engine, "prune_checkpoints", broken)
        state = await engine.run_turn(session, {"messages": [{"role": "user", "content": "Hello"}]})
        assert state["messages"][0].content == "Hello"
        monkeypatch.undo()
        assert (await engine.state(session))["messages"][0].content == "Hello"


def test_the_server_applies_retention_in_the_background(tmp_path: Path) -> None:
    import time

    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    url = f"sqlite:///{tmp_path}/tg.db"
    app = create_app(Settings(_env_file=None, checkpoint_url=url, retention_interval_s=0.2))  # type: ignore[call-arg]
    headers = {"Authorization": "Bearer tg-veneo-key"}
    with TestClient(app) as client:
        engine = app.state.engine
        set_retention(engine, "veneo", idle_days=1)
        session_id = client.post("/sessions", json={"team": "veneo_chat"}, headers=headers).json()["id"]
        record = engine.get_session("veneo", session_id)
        backdate(engine, url, record.thread_id, days=2)
        deadline = time.monotonic() + 20
        while client.get(f"/sessions/{session_id}", headers=headers).status_code != 404:
            assert time.monotonic() < deadline, "the background pass never expired the idle session"
            time.sleep(0.2)
        events = [e.event_type for e in engine.audit.query("veneo", session=session_id)]
        assert "session_expired" in events and events[-1] == "session_deleted"
