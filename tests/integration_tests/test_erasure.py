"""Erasure as a data-protection officer checks it: every session of one end user is gone, that user's content is
gone from the audit log, the chain still verifies, and the erasure itself is on record without the content;
on a real SQLite file and the machine's PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from checkpoints.audit import REDACTED, verify_chain
from nodes.memory_keeper import read_archive
from server.app import create_app
from server.settings import Settings
from tests.conftest import fresh_postgres_schema, open_engine

SECRET = "My name is Jane Roe and my order 7781 went to Elm Street 5"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/teamgraph.db"
    else:
        with fresh_postgres_schema("tg_erasure") as pg_url:
            yield pg_url


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_erasing_a_user_removes_their_sessions_and_audit_content(url: str) -> None:
    async with open_engine(url) as engine:
        jane = [await engine.create_session("veneo", "veneo_chat", user_id="user-jane") for _ in range(2)]
        for session in jane:
            for _ in range(10):  # long enough that the transcript archive holds some of it
                await engine.run_turn(session, user(SECRET))
        other = await engine.create_session("veneo", "veneo_chat", user_id="user-max")
        await engine.run_turn(other, user("Where is order 1?"))
        untagged = await engine.create_session("veneo", "veneo_chat")
        await engine.run_turn(untagged, user("Hello"))
        assert SECRET in json.dumps([e.payload for e in engine.audit.query("veneo", limit=1000)])

        counts = await engine.erase_user("veneo", "user-jane", actor="dpo")

        assert counts["sessions"] == 2 and counts["audit_entries_redacted"] > 0
        for session in jane:
            assert await engine.find_session("veneo", session.id) is None
            assert await read_archive(engine.persistence.store, session.thread_id) == []
            assert [c async for c in engine.persistence.checkpointer.alist(
                {"configurable": {"thread_id": session.thread_id}})] == []  # fmt: skip
        assert await engine.find_session("veneo", other.id) is not None
        assert await engine.find_session("veneo", untagged.id) is not None

        entries = engine.audit.query("veneo", limit=1000)
        dumped = json.dumps([e.payload for e in entries])
        assert "Jane Roe" not in dumped and "user-jane" not in dumped
        for e in entries:
            if e.session in {s.id for s in jane}:
                assert set(e.payload) == {REDACTED}
        assert any(e.session == other.id and e.payload.get("content") == "Where is order 1?" for e in entries)
        erasure = [e for e in entries if e.event_type == "user_erased"][-1]
        assert erasure.actor == "dpo" and erasure.payload["sessions"] == 2
        assert len(erasure.payload["redacted"]) == counts["audit_entries_redacted"]
        assert engine.audit.verify("veneo").ok

        # a redacted entry is still held to its fields: editing one breaks the chain
        redacted = next(i for i, e in enumerate(entries) if set(e.payload) == {REDACTED})
        forged = [*entries]
        forged[redacted] = replace(entries[redacted], actor="someone-else")
        assert not verify_chain("veneo", iter(forged), None).ok
        # and a payload cannot be passed off as redacted without an erasure entry listing it
        plain = next(i for i, e in enumerate(entries) if e.session == other.id)
        forged = [*entries]
        forged[plain] = replace(entries[plain], payload={REDACTED: {"by": erasure.seq}})
        result = verify_chain("veneo", iter(forged), None)
        assert not result.ok and result.broken_seq == entries[plain].seq

        again = await engine.erase_user("veneo", "user-jane")  # nothing left; recorded all the same
        assert again == {"sessions": 0, "audit_entries_redacted": 0}
        assert engine.audit.verify("veneo").ok


def test_delete_users_takes_an_admin_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    admin_key = f"tg-demo-admin-{uuid.uuid4().hex}"
    monkeypatch.setenv("TEAMGRAPH_DEMO_ADMIN_KEY", admin_key)
    app = create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path}/tg.db"))  # type: ignore[call-arg]
    user_key = {"Authorization": "Bearer tg-demo-key"}
    with TestClient(app) as client:
        created = client.post("/sessions", json={"title": "Mock", "user_id": "cand-42"}, headers=user_key)
        assert created.status_code == 201, created.text
        session_id = created.json()["id"]
        refused = client.delete("/users/cand-42", headers=user_key)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_required"
        assert client.get(f"/sessions/{session_id}", headers=user_key).status_code == 200

        erased = client.delete("/users/cand-42", headers={"Authorization": f"Bearer {admin_key}"})
        assert erased.status_code == 200, erased.text
        # session_created, team_selected, session_delete_started, session_deleted
        assert erased.json() == {"user_id": "cand-42", "sessions": 1, "audit_entries_redacted": 4}
        assert client.get(f"/sessions/{session_id}", headers=user_key).status_code == 404
        for refused in ("", "jane doe/1"):  # user ids travel in a URL path: a documented charset
            bad = client.post("/sessions", json={"user_id": refused}, headers=user_key)
            assert bad.status_code == 422 and bad.json()["error"]["field"].endswith("user_id")
        email = client.post("/sessions", json={"user_id": "jane.doe+cv@example.com"}, headers=user_key)
        assert email.status_code == 201


def test_a_session_a_team_route_started_can_be_tagged_and_is_then_erased(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that never called POST /sessions (its first turn went to /teams/.../invoke with its own thread id)
    tags the session with PATCH; DELETE /users/{id} then finds it."""
    admin = {"Authorization": f"Bearer tg-demo-admin-{uuid.uuid4().hex}"}
    monkeypatch.setenv("TEAMGRAPH_DEMO_ADMIN_KEY", admin["Authorization"].removeprefix("Bearer "))
    key = {"Authorization": "Bearer tg-demo-key"}
    app = create_app(Settings(_env_file=None, checkpoint_url=url))  # type: ignore[call-arg]
    with TestClient(app) as client:
        turn = {"input": {"messages": [{"type": "human", "content": SECRET}]},
                "config": {"configurable": {"thread_id": "chat-7"}}}  # fmt: skip
        assert client.post("/teams/interview/invoke", json=turn, headers=key).status_code == 200
        started = client.get("/sessions/chat-7", headers=key)
        assert started.status_code == 200 and started.json()["user_id"] is None, started.text

        for bad in ({"user_id": ""}, {"user_id": "jane doe/1"}):  # refused naming the field; nothing changes
            r = client.patch("/sessions/chat-7", json=bad, headers=key)
            assert r.status_code == 422 and r.json()["error"]["field"].endswith("user_id"), r.text
        tagged = client.patch("/sessions/chat-7", json={"user_id": "cand-7"}, headers=key)
        assert tagged.status_code == 200, tagged.text
        assert tagged.json()["user_id"] == "cand-7" and tagged.json()["id"] == "chat-7"
        again = client.patch("/sessions/chat-7", json={"user_id": "cand-7", "title": "Chat"}, headers=key)
        assert again.status_code == 200 and again.json()["title"] == "Chat"  # the same id again: kept

        other = client.patch("/sessions/chat-7", json={"user_id": "cand-8", "title": "Taken"}, headers=key)
        assert other.status_code == 409, other.text
        error = other.json()["error"]
        assert (error["code"], error["field"]) == ("user_id_conflict", "user_id")
        assert error["message"] == "user_id: the session is tagged with another end user already"
        detail = client.get("/sessions/chat-7", headers=key).json()
        assert (detail["user_id"], detail["title"]) == ("cand-7", "Chat")  # the refused PATCH changed nothing

        audit = client.get("/audit?session=chat-7&event_type=session_user_tagged", headers=admin).json()["items"]
        assert [e["payload"] for e in audit] != [] and "cand-7" not in json.dumps(audit)  # the id's hash only

        erased = client.delete("/users/cand-7", headers=admin)
        assert erased.status_code == 200 and erased.json()["sessions"] == 1, erased.text
        assert client.get("/sessions/chat-7", headers=key).status_code == 404
