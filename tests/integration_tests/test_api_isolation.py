"""Tenant isolation over HTTP: tenant B (veneo) probing tenant A's (demo) sessions finds nothing, changes nothing.

Session ids are per tenant, so another tenant's session must be indistinguishable from one that does not
exist: every REST route that takes a session id answers 404 session_not_found with the same body it gives for
an unknown id; a team route, where an unused id starts a session, starts B's own session under that id, exactly
as for an id nobody uses. None of A's content (title, documents, answers, questions) ever appears in B's
responses, and A's sessions never change.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from server.app import create_app
from server.settings import Settings

TENANT_A = {"Authorization": "Bearer tg-demo-key"}  # demo: interview only
TENANT_B = {"X-API-Key": "tg-veneo-key"}  # veneo: veneo_chat + interview
TENANT_B_BEARER = {"Authorization": "Bearer tg-veneo-key"}

A_TITLE = "Quillon Vantrebeck - confidential practice"
A_RESUME = "Quillon Vantrebeck, staff engineer.\nSkills: Kafka, Terraform and Kubernetes at Zephyrmark Logistics."
A_ANSWER = "At Zephyrmark I cut Kafka consumer lag by 93% with idempotent producers and careful partitioning."


@dataclass
class World:
    client: TestClient
    a_started: str  # A's interview: resume uploaded, questions asked, one answer scored
    a_fresh: str  # A's interview with only a title: nothing run yet, accepts documents
    a_secrets: list[str]  # A's content that must never reach B


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path}/tg.db")  # type: ignore[call-arg]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        started = post_ok(client, "/sessions", TENANT_A, {"title": A_TITLE}, status=201)["id"]
        r = client.post(
            f"/sessions/{started}/documents",
            headers=TENANT_A,
            files={"file": ("quillon.txt", A_RESUME.encode(), "text/plain")},
            data={"kind": "resume"},
        )
        assert r.status_code == 200, r.text
        first = invoke_ok(client, "interview", TENANT_A, started, "ready")
        invoke_ok(client, "interview", TENANT_A, started, A_ANSWER)
        fresh = post_ok(client, "/sessions", TENANT_A, {"title": "Zephyrmark second round"}, status=201)["id"]
        questions = [q["text"] for q in first["questions"]]
        yield World(client, started, fresh, [A_TITLE, "Quillon", "Vantrebeck", "Zephyrmark", *questions])


def post_ok(client: TestClient, path: str, headers: dict[str, str], body: Any, status: int = 200) -> dict[str, Any]:
    r = client.post(path, headers=headers, json=body)
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


def invoke_ok(client: TestClient, team: str, headers: dict[str, str], thread_id: str, text: str) -> dict[str, Any]:
    body = {"input": human(text), "config": {"configurable": {"thread_id": thread_id}}}
    output: dict[str, Any] = post_ok(client, f"/teams/{team}/invoke", headers, body)["output"]
    return output


def human(text: str) -> dict[str, Any]:
    return {"messages": [{"type": "human", "content": text}]}


def run_body(thread_id: str) -> dict[str, Any]:
    return {"input": human("Tell me everything in this session"), "config": {"configurable": {"thread_id": thread_id}}}


def snapshot(client: TestClient, session_id: str) -> dict[str, Any]:
    """What A sees of a session: detail (transcript, state, title, timestamps) and its full history."""
    detail = client.get(f"/sessions/{session_id}", headers=TENANT_A)
    assert detail.status_code == 200, detail.text
    history = client.get(f"/sessions/{session_id}/history", headers=TENANT_A, params={"limit": 200})
    assert history.status_code == 200, history.text
    return {"detail": detail.json(), "history": history.json()}


Probe = Callable[[TestClient, str, dict[str, str]], Response]

PROBES: dict[str, Probe] = {
    "GET /sessions/{id}": lambda c, sid, h: c.get(f"/sessions/{sid}", headers=h),
    "PATCH /sessions/{id}": lambda c, sid, h: c.patch(f"/sessions/{sid}", headers=h, json={"title": "taken over"}),
    "DELETE /sessions/{id}": lambda c, sid, h: c.delete(f"/sessions/{sid}", headers=h),
    "GET /sessions/{id}/history": lambda c, sid, h: c.get(f"/sessions/{sid}/history", headers=h),
    "POST /sessions/{id}/documents": lambda c, sid, h: c.post(
        f"/sessions/{sid}/documents",
        headers=h,
        files={"file": ("evil.txt", b"Mallory: COBOL and Fortran", "text/plain")},
        data={"kind": "resume"},
    ),
    "POST /teams/interview/invoke": lambda c, sid, h: c.post("/teams/interview/invoke", headers=h, json=run_body(sid)),
    "POST /teams/interview/stream": lambda c, sid, h: c.post("/teams/interview/stream", headers=h, json=run_body(sid)),
    "POST /teams/interview/stream_events": lambda c, sid, h: c.post(
        "/teams/interview/stream_events", headers=h, json=run_body(sid)
    ),
    "POST /teams/interview/batch": lambda c, sid, h: c.post(
        "/teams/interview/batch",
        headers=h,
        json={"inputs": [human("hi")], "config": {"configurable": {"thread_id": sid}}},
    ),
    "POST /teams/interview/batch (config list)": lambda c, sid, h: c.post(
        "/teams/interview/batch",
        headers=h,
        json={"inputs": [human("hi"), human("yo")], "config": [{"configurable": {"thread_id": sid}}] * 2},
    ),
    # B's own team: must still be 404, a 409 session_team_mismatch would confirm the id exists
    "POST /teams/veneo_chat/invoke": lambda c, sid, h: c.post(
        "/teams/veneo_chat/invoke", headers=h, json=run_body(sid)
    ),
    "POST /teams/veneo_chat/stream": lambda c, sid, h: c.post(
        "/teams/veneo_chat/stream", headers=h, json=run_body(sid)
    ),
}


def assert_not_found(r: Response, session_id: str) -> dict[str, Any]:
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["error"]["code"] == "session_not_found", body
    assert body["error"]["message"] == f"no session {session_id!r}", body
    return body


@pytest.mark.parametrize("probe", list(PROBES))
@pytest.mark.parametrize("b_headers", [TENANT_B, TENANT_B_BEARER], ids=["x-api-key", "bearer"])
def test_tenant_b_probing_a_session_of_tenant_a_gets_404_and_changes_nothing(
    world: World, probe: str, b_headers: dict[str, str]
) -> None:
    client = world.client
    before = {sid: snapshot(client, sid) for sid in (world.a_started, world.a_fresh)}
    a_list_before = client.get("/sessions", headers=TENANT_A).json()
    unknown_body = None
    if probe.startswith(("GET /sessions", "PATCH", "DELETE", "POST /sessions")):
        # (on /teams an unused id starts a new session by design, so only REST can be compared)
        unknown = f"never-created-{uuid.uuid4()}"
        unknown_body = json.dumps(assert_not_found(PROBES[probe](client, unknown, b_headers), unknown))
        unknown_body = unknown_body.replace(unknown, "ID")

    team_route = probe.startswith("POST /teams/")
    if team_route:  # what an id nobody uses gives: a new session of B's own
        unknown = f"never-created-{uuid.uuid4()}"
        unknown_status = PROBES[probe](client, unknown, b_headers).status_code
    for sid in (world.a_started, world.a_fresh):
        r = PROBES[probe](client, sid, b_headers)
        if team_route:
            assert r.status_code == unknown_status, r.text  # indistinguishable from an id nobody uses
        else:
            body = assert_not_found(r, sid)
            if unknown_body is not None:  # indistinguishable from an id that never existed
                assert json.dumps(body).replace(sid, "ID") == unknown_body
        for secret in world.a_secrets:
            assert secret not in r.text

    # A's sessions are exactly as they were, and still A's
    for sid in (world.a_started, world.a_fresh):
        assert snapshot(client, sid) == before[sid]
    assert client.get("/sessions", headers=TENANT_A).json() == a_list_before
    b_sessions = client.get("/sessions", headers=TENANT_B).json()["items"]
    if not team_route or unknown_status != 200:  # B gained no session from the probes (no copy of A's thread)
        assert {s["id"] for s in b_sessions} & {world.a_started, world.a_fresh} == set()
    else:  # B's turns ran on sessions of its own, which hold nothing of A's
        assert {world.a_started, world.a_fresh} <= {s["id"] for s in b_sessions}
        for sid in (world.a_started, world.a_fresh):
            mine = client.get(f"/sessions/{sid}", headers=b_headers)
            assert mine.status_code == 200, mine.text
            for secret in world.a_secrets:
                assert secret not in mine.text


def test_a_batch_naming_an_id_another_tenant_uses_runs_on_the_callers_own_sessions(world: World) -> None:
    """Ids are per tenant: B's batch on A's id runs on a new session of B's, and A's session does not change."""
    client = world.client
    before = snapshot(client, world.a_started)
    own = f"b-own-{uuid.uuid4()}"
    r = client.post(
        "/teams/interview/batch",
        headers=TENANT_B,
        json={
            "inputs": [human("Resume: Go and Rust"), human("hi")],
            "config": [{"configurable": {"thread_id": own}}, {"configurable": {"thread_id": world.a_started}}],
        },
    )
    assert r.status_code == 200, r.text
    assert {s["id"] for s in client.get("/sessions", headers=TENANT_B).json()["items"]} == {own, world.a_started}
    assert snapshot(client, world.a_started) == before
    for secret in world.a_secrets:
        assert secret not in r.text


def test_tenant_b_never_lists_tenant_a_sessions(world: World) -> None:
    client = world.client
    b_chat = post_ok(client, "/sessions", TENANT_B, {}, status=201)["id"]
    b_interview = post_ok(client, "/sessions", TENANT_B, {"team": "interview"}, status=201)["id"]
    invoke_ok(client, "veneo_chat", TENANT_B, b_chat, "How long does shipping take?")
    a_ids = {world.a_started, world.a_fresh}

    a_list = client.get("/sessions", headers=TENANT_A).json()
    assert {s["id"] for s in a_list["items"]} == a_ids

    for params in ({}, {"team": "interview"}, {"team": "veneo_chat"}, {"limit": 200}):
        r = client.get("/sessions", headers=TENANT_B, params=params)
        assert r.status_code == 200, r.text
        ids = {s["id"] for s in r.json()["items"]}
        assert not ids & a_ids
        assert ids <= {b_chat, b_interview}
        for secret in world.a_secrets:
            assert secret not in r.text
    assert {s["id"] for s in client.get("/sessions", headers=TENANT_B).json()["items"]} == {b_chat, b_interview}

    # paging one at a time never reaches A's sessions either
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        r = client.get("/sessions", headers=TENANT_B, params={"limit": 1, **({"cursor": cursor} if cursor else {})})
        seen += [s["id"] for s in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [b_chat, b_interview]

    # nor does a cursor B builds from A's session (same shape as the API's own cursors)
    a_record = next(s for s in a_list["items"] if s["id"] == world.a_started)
    forged = base64.urlsafe_b64encode(json.dumps(["9999-12-31T00:00:00+00:00", world.a_started]).encode()).decode()
    r = client.get("/sessions", headers=TENANT_B, params={"cursor": forged})
    assert r.status_code == 200, r.text
    assert not {s["id"] for s in r.json()["items"]} & a_ids
    assert a_record["title"] not in r.text

    # A still sees both of its own sessions, and nothing of B's
    assert {s["id"] for s in client.get("/sessions", headers=TENANT_A).json()["items"]} == a_ids


def test_a_key_cannot_reach_a_team_its_tenant_lacks(world: World) -> None:
    client = world.client
    thread_id = f"demo-wants-chat-{uuid.uuid4()}"
    for endpoint in ("invoke", "stream", "stream_events"):
        r = client.post(f"/teams/veneo_chat/{endpoint}", headers=TENANT_A, json=run_body(thread_id))
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert (error["code"], error["field"]) == ("team_not_enabled", "team")
        assert "veneo_chat" in error["message"]
    r = client.post(
        "/teams/veneo_chat/batch",
        headers=TENANT_A,
        json={"inputs": [human("hi")], "config": {"configurable": {"thread_id": thread_id}}},
    )
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "team_not_enabled"

    # nor through a session: creating one with that team is refused, and nothing was created on the way
    r = client.post("/sessions", headers=TENANT_A, json={"team": "veneo_chat"})
    assert r.status_code == 403, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == ("team_not_enabled", "team")
    assert {s["id"] for s in client.get("/sessions", headers=TENANT_A).json()["items"]} == {
        world.a_started,
        world.a_fresh,
    }
    r = client.get("/sessions", headers=TENANT_A, params={"team": "veneo_chat"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "team_not_enabled"  # as creating one is

    # B's own chat thread, sent by A to the chat team: refused for the team, not revealed as a session
    b_chat = post_ok(client, "/sessions", TENANT_B, {}, status=201)["id"]
    invoke_ok(client, "veneo_chat", TENANT_B, b_chat, "Which payment methods do you accept?")
    r = client.post("/teams/veneo_chat/invoke", headers=TENANT_A, json=run_body(b_chat))
    assert r.status_code == 403, r.text
    assert "PayPal" not in r.text
    # and sent by A to A's own team it names a new session of A's own (ids are per tenant), B's is untouched
    r = client.post("/teams/interview/invoke", headers=TENANT_A, json=run_body(b_chat))
    assert r.status_code == 200, r.text
    assert "PayPal" not in r.text
    b_view = client.get(f"/sessions/{b_chat}", headers=TENANT_B).json()
    assert (b_view["team"], len(b_view["transcript"])) == ("veneo_chat", 2)
