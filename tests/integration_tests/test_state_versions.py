"""Versioned session state: real version-1 sessions (tests/fixtures/v1) are upgraded by the migrations, lazily
when read (in memory) or resumed (stored), and a session newer than the code is refused, never touched."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.engine import Engine
from server.settings import Settings
from states.migrations import METADATA_KEY, SessionSchemaTooNew, chat_v1_to_v2, current_version, interview_v1_to_v2
from states.veneo_chat import ReviewDecision
from tests.conftest import open_engine
from tests.integration_tests.test_v1_fixtures import FIXTURES, MANIFEST

CHAT = next(s for s in MANIFEST["sqlite"] if s["team"] == "veneo_chat")
INTERVIEW = next(s for s in MANIFEST["sqlite"] if s["team"] == "interview" and s.get("phase") != "done")
VENEO = {"X-API-Key": "tg-veneo-key"}


@pytest.fixture
def v1_db(tmp_path: Path) -> Path:
    path = tmp_path / "teamgraph.db"
    shutil.copy(FIXTURES / "teamgraph.db", path)
    return path


async def stored(engine: Engine, tenant: str, session_id: str) -> tuple[dict[str, Any], int | None]:
    """The latest checkpoint's values as stored (no migration) and the version its metadata records."""
    record = engine.get_session(tenant, session_id)
    snapshot = await engine.graph(record.team).aget_state(engine.run_config(record))
    return dict(snapshot.values), (snapshot.metadata or {}).get(METADATA_KEY)


async def test_chat_v1_decisions_get_their_layers(v1_db: Path) -> None:
    async with open_engine(f"sqlite:///{v1_db}") as engine:
        values, version = await stored(engine, "veneo", CHAT["thread_id"])
    assert version is None  # written before versions: version 1
    old = values["review_decisions"]
    assert old and all("layers" not in d for d in old)

    new = chat_v1_to_v2(values)["review_decisions"]

    assert len(new) == len(old)
    for before, after in zip(old, new, strict=True):
        assert {k: v for k, v in after.items() if k != "layers"} == before  # nothing else changes
        ReviewDecision.model_validate(after)  # the version-2 model holds it
        assert [layer["layer"] for layer in after["layers"]] == before["reviewed_by"].split("+")
        acting = after["layers"][-1]
        if before["action"] == "approve":
            assert all(layer["verdict"] == "pass" for layer in after["layers"])
        else:
            assert (acting["verdict"], acting["category"]) == (before["action"], before["category"])
    injection = next(d for d in new if d["category"] == "prompt_injection")  # turn 4 of the fixture
    assert injection["layers"][-1]["stage"] == "input" and injection["layers"][-1]["score"] is None
    assert chat_v1_to_v2({"review_decisions": new}) == {"review_decisions": new}  # a v2 decision is left alone


async def test_reading_a_v1_chat_upgrades_in_memory_and_a_turn_stores_it(v1_db: Path) -> None:
    async with open_engine(f"sqlite:///{v1_db}") as engine:
        record = engine.get_session("veneo", CHAT["thread_id"])
        state, version = await engine.versioned_state(record)
        assert version == 1 and all(d["layers"] for d in state["review_decisions"])
        assert (await stored(engine, "veneo", CHAT["thread_id"]))[1] is None  # a read writes nothing

        after = await engine.run_turn(record, {"messages": [{"role": "user", "content": "Do you ship abroad?"}]})

        values, version = await stored(engine, "veneo", CHAT["thread_id"])
        assert version == current_version("veneo_chat") == 2
        assert all(d["layers"] for d in values["review_decisions"])
        assert after["review_decisions"][-1]["turn"] == after["review_decisions"][-2]["turn"] + 1
        history = await engine.history(record, limit=5)
        assert history[1]["source"] == "update"  # the upgrade is its own checkpoint, before the turn
        assert len(await engine.transcript(record)) == CHAT["messages"] + 2


async def test_interview_v1_gets_answer_keys_stored_privately_at_its_next_turn(v1_db: Path) -> None:
    async with open_engine(f"sqlite:///{v1_db}") as engine:
        record = engine.get_session(INTERVIEW["tenant"], INTERVIEW["thread_id"])
        state, version = await engine.versioned_state(record)
        assert version == 1 and current_version("interview") == 2
        keys = state["answer_keys"]  # built in memory from the v1 session's questions and documents
        assert [k["question"] for k in keys] == [q["text"] for q in state["questions"]]
        assert interview_v1_to_v2({**state, "answer_keys": keys}) == {}  # a v2 session is left alone
        assert interview_v1_to_v2({"questions": []}) == {}  # so is one still in set-up
        assert (await stored(engine, INTERVIEW["tenant"], INTERVIEW["thread_id"]))[1] is None  # a read writes nothing

        after = await engine.run_turn(record, {"messages": [{"role": "user", "content": "I measured it."}]})

        assert "answer_keys" not in after  # private: not in the turn's output
        values, version = await stored(engine, INTERVIEW["tenant"], INTERVIEW["thread_id"])
        assert version == 2 and "answer_keys" not in values  # nor in a state snapshot
        checkpoint = await engine.persistence.checkpointer.aget_tuple(engine.run_config(record))
        assert checkpoint is not None and checkpoint.checkpoint["channel_values"]["answer_keys"] == keys
        assert after["evaluations"][-1]["scored_by"] == "fallback"  # the keyed session still scores


def test_api_never_shows_a_v1_interview_s_answer_keys(v1_db: Path) -> None:
    app = create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{v1_db}"))  # type: ignore[call-arg]
    headers = (
        {"X-API-Key": "tg-veneo-key"} if INTERVIEW["tenant"] == "veneo" else {"Authorization": "Bearer tg-demo-key"}
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get(f"/sessions/{INTERVIEW['thread_id']}", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["schema_version"] == 1 and r.json()["state"]["questions"]
        assert "answer_keys" not in r.text
        r = client.get(f"/sessions/{INTERVIEW['thread_id']}/export", headers=headers)
        assert r.status_code == 200, r.text
        assert "answer_keys" not in r.text


async def make_too_new(engine: Engine, tenant: str, session_id: str) -> None:
    """Store a checkpoint as a newer Teamgraph would: its metadata names a version this code does not know."""
    record = engine.get_session(tenant, session_id)
    config = engine.run_config(record)
    config["metadata"] = {**config.get("metadata", {}), METADATA_KEY: 99}
    await engine.graph(record.team).aupdate_state(config, {}, as_node="memory_keeper")


async def test_a_session_newer_than_the_code_is_refused_and_left_alone(v1_db: Path) -> None:
    async with open_engine(f"sqlite:///{v1_db}") as engine:
        await make_too_new(engine, "veneo", CHAT["thread_id"])
        record = engine.get_session("veneo", CHAT["thread_id"])
        before = await engine.history(record, limit=50)
        with pytest.raises(SessionSchemaTooNew, match=r"state version 99.* up to 2"):
            await engine.state(record)
        with pytest.raises(SessionSchemaTooNew):
            await engine.run_turn(record, {"messages": [{"role": "user", "content": "hello"}]})
        assert await engine.history(record, limit=50) == before  # nothing written


def test_api_reports_schema_version_and_409_for_a_too_new_session(v1_db: Path) -> None:
    app = create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{v1_db}"))  # type: ignore[call-arg]
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get(f"/sessions/{CHAT['thread_id']}", headers=VENEO)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["schema_version"] == 1
        assert all(d["layers"] for d in body["state"]["review_decisions"])  # shown in the current version
        assert body["state"]["rolling_summary"]

        r = client.post(
            "/teams/veneo_chat/invoke",
            headers=VENEO,
            json={"input": {"messages": [{"role": "user", "content": "Is there a warranty?"}]},
                  "config": {"configurable": {"thread_id": CHAT["thread_id"]}}},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        assert client.get(f"/sessions/{CHAT['thread_id']}", headers=VENEO).json()["schema_version"] == 2

    async def too_new() -> None:
        async with open_engine(f"sqlite:///{v1_db}") as engine:
            await make_too_new(engine, "veneo", CHAT["thread_id"])

    import asyncio

    asyncio.run(too_new())
    with TestClient(create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{v1_db}")),  # type: ignore[call-arg]
                    raise_server_exceptions=False) as client:  # fmt: skip
        r = client.get(f"/sessions/{CHAT['thread_id']}", headers=VENEO)
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "session_schema_too_new" and "99" in error["message"] and "2" in error["message"]
        r = client.post(
            "/teams/veneo_chat/invoke",
            headers=VENEO,
            json={"input": {"messages": [{"role": "user", "content": "hi"}]},
                  "config": {"configurable": {"thread_id": CHAT["thread_id"]}}},
        )  # fmt: skip
        assert r.status_code == 409 and r.json()["error"]["code"] == "session_schema_too_new", r.text


def test_an_idempotent_turn_on_a_v1_session_notes_the_upgraded_checkpoint(v1_db: Path) -> None:
    """The upgrade is stored before the Idempotency-Key notes the session's latest checkpoint: a turn that the
    server loses is then retried, not reported as possibly stored (idempotent_turn_outcome_unknown)."""
    app = create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{v1_db}"))  # type: ignore[call-arg]
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post(
            "/teams/veneo_chat/invoke",
            headers={**VENEO, "Idempotency-Key": "k-1"},
            json={"input": {"messages": [{"role": "user", "content": "Is there a warranty?"}]},
                  "config": {"configurable": {"thread_id": CHAT["thread_id"]}}},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
        record = engine.get_session("veneo", CHAT["thread_id"])
        history = client.portal.call(engine.history, record, 3)  # type: ignore[union-attr]
        assert [h["source"] for h in history[:2]] == ["loop", "update"]  # the turn, then the upgrade before it
        noted = engine.sessions.idempotent_turn("veneo", record.thread_id, "k-1")
        assert noted is not None and noted.before_checkpoint == history[1]["checkpoint_id"]
