"""Sessions stored by the version-1 code (tests/fixtures/v1) stay readable and resumable by today's code.

The fixture databases were written once by the old code; every schema change since must upgrade them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import POSTGRES_URL, fresh_postgres_schema, open_engine

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "v1"
MANIFEST = json.loads((FIXTURES / "sessions.json").read_text(encoding="utf-8"))


def restore_postgres_fixture(url: str) -> None:
    """Load postgres.sql into the schema that `url`'s search_path names (the dump names its own schema)."""
    schema = re.search(r"search_path%3D(\w+)", url)
    assert schema is not None
    sql = (FIXTURES / "postgres.sql").read_text(encoding="utf-8")
    sql = sql.replace(f"CREATE SCHEMA {MANIFEST['postgres_schema']};", "")
    sql = re.sub(rf"\b{MANIFEST['postgres_schema']}\.", f"{schema.group(1)}.", sql)
    subprocess.run(
        ["psql", "--quiet", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", POSTGRES_URL],
        input=sql,
        text=True,
        check=True,
        capture_output=True,
    )


async def _check_sessions(url: str, stored: list[dict[str, Any]]) -> None:
    async with open_engine(url) as engine:
        for item in stored:
            record = engine.get_session(item["tenant"], item["thread_id"])
            assert record.team == item["team"]
            assert record.title == item["title"]
            transcript = await engine.transcript(record)
            assert len(transcript) == item["messages"]
            state = await engine.state(record)
            assert set(item["state_keys"]) <= set(state)
            if item["team"] == "veneo_chat":
                first = [m.content for m in transcript if m.type == "human"][:2]
                assert first == item["turns"][:2]  # the archived start of the conversation is still there
                turn = {"messages": [{"role": "user", "content": "Do you ship abroad?"}]}
                after = await engine.run_turn(record, turn)
                assert after["messages"][-1].type == "ai"
                assert len(await engine.transcript(record)) == item["messages"] + 2
            elif item.get("phase") == "done":
                assert state["phase"] == "done" and state["summary"]
            else:
                assert state["phase"] == "asking"
                before = len(state["evaluations"])
                after = await engine.run_turn(record, {"messages": [{"role": "user", "content": "I measured it."}]})
                assert len(after["evaluations"]) == before + 1


async def test_v1_sqlite_sessions_read_and_resume(tmp_path: Path) -> None:
    db = tmp_path / "teamgraph.db"
    shutil.copy(FIXTURES / "teamgraph.db", db)
    await _check_sessions(f"sqlite:///{db}", MANIFEST["sqlite"])


@pytest.mark.postgres
async def test_v1_postgres_sessions_read_and_resume() -> None:
    with fresh_postgres_schema("tg_v1fix") as url:
        restore_postgres_fixture(url)
        await _check_sessions(url, MANIFEST["postgres"])


@pytest.mark.postgres
def test_v1_postgres_chat_session_resumes_over_the_api_and_is_stored_in_the_current_version() -> None:
    """A turn over the API on a version-1 session: on Postgres its version check reads the latest checkpoint in
    the turn lock's round trip (Engine.lease_turn), finds it old, and the session is upgraded before the turn."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings
    from states.migrations import current_version, stored_version

    [chat] = [item for item in MANIFEST["postgres"] if item["team"] == "veneo_chat"]
    with fresh_postgres_schema("tg_v1api") as url:
        restore_postgres_fixture(url)
        app = create_app(Settings(_env_file=None, checkpoint_url=url))  # type: ignore[call-arg]
        with TestClient(app) as client:
            r = client.post(
                "/teams/veneo_chat/invoke",
                headers={"X-API-Key": "tg-veneo-key"},
                json={
                    "input": {"messages": [{"role": "user", "content": "Do you ship abroad?"}]},
                    "config": {"configurable": {"thread_id": chat["thread_id"]}},
                },
            )
            assert r.status_code == 200, r.text
            engine = app.state.engine
            record = engine.get_session("veneo", chat["thread_id"])
            latest = client.portal.call(  # type: ignore[union-attr]
                engine.persistence.checkpointer.aget_tuple,
                {"configurable": {"thread_id": record.thread_id, "checkpoint_ns": ""}},
            )
            assert stored_version(latest.metadata) == current_version(engine.graph_id("veneo_chat"))
            assert len(client.portal.call(engine.transcript, record)) == chat["messages"] + 2  # type: ignore[union-attr]
