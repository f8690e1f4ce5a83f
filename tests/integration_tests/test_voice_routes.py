"""Every voice route through FastAPI's TestClient on a SQLite file, offline (no provider configured): the
catalog, the refusals (auth, other tenants' sessions, bad input, no provider), and spoken transcripts entering
sessions: scored like typed answers, reviewed like typed messages, idempotent, in order."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from server.app import create_app
from server.settings import Settings

DEMO = {"Authorization": "Bearer tg-demo-key"}  # tenant demo: interview only
VENEO = {"X-API-Key": "tg-veneo-key"}  # tenant veneo: veneo_chat (default) + interview
RESUME = (Path(__file__).resolve().parents[2] / "examples" / "resume.md").read_text()
T0 = 1_740_819_600  # 2025-03-01T09:00:00Z
ANSWER = (
    "Um, at Acme I led the move of our batch jobs to Airflow on Kubernetes. I planned the migration, uh, "
    "wrote the DAGs and led two engineers; as a result failed runs dropped by 70% in two months."
)


@contextlib.contextmanager
def make_client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path}/tg.db"))  # type: ignore[call-arg]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("voice")) as c:
        yield c


def item(item_id: str, role: str, text: str, start: float, seconds: float = 2.0) -> dict[str, Any]:
    """A transcript item; times as epoch seconds from T0 (the API also takes ISO times and milliseconds)."""
    return {"id": item_id, "role": role, "text": text, "started_at": T0 + start, "ended_at": T0 + start + seconds}


def post(client: TestClient, sid: str, headers: dict[str, str], *items: dict[str, Any]) -> Response:
    return client.post(f"/sessions/{sid}/transcripts", headers=headers, json={"items": list(items)})


def assert_error(r: Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert error.get("field") == field, error
    return dict(error)


def interview(client: TestClient, headers: dict[str, str] = DEMO) -> str:
    sid = client.post("/sessions", headers=headers, json={"team": "interview"}).json()["id"]
    r = client.post(
        f"/sessions/{sid}/documents",
        headers=headers,
        data={"kind": "resume"},
        files={"file": ("cv.md", RESUME.encode(), "text/markdown")},
    )
    assert r.status_code == 200, r.text
    return str(sid)


def chat(client: TestClient) -> str:
    return str(client.post("/sessions", headers=VENEO, json={"team": "veneo_chat"}).json()["id"])


# ---- the catalog ------------------------------------------------------------------------------------------------


def test_voices_for_the_callers_tenant_and_team(client: TestClient) -> None:
    demo = client.get("/voice/voices", headers=DEMO)
    assert demo.status_code == 200
    body = demo.json()
    assert body["team"] == "interview" and body["default_voice"] == "cedar"
    assert len(body["voices"]) == 10
    assert [v["id"] for v in body["voices"] if v["default"]] == ["cedar"]
    assert set(body["voices"][0]) == {"id", "name", "description", "default"}

    veneo = client.get("/voice/voices", headers=VENEO).json()  # the tenant's default team, its allow-list
    assert veneo["team"] == "veneo_chat"
    assert [(v["id"], v["default"]) for v in veneo["voices"]] == [
        ("marin", False),
        ("cedar", False),
        ("coral", True),
        ("sage", False),
    ]
    assert client.get("/voice/voices?team=interview", headers=VENEO).json()["default_voice"] == "cedar"


def test_voices_refusals(client: TestClient) -> None:
    assert_error(client.get("/voice/voices"), 401, "unauthorized")
    assert_error(client.get("/voice/voices?team=veneo_chat", headers=DEMO), 403, "team_not_enabled", "team")
    assert_error(client.get("/voice/voices?team=karaoke", headers=DEMO), 404, "team_not_found", "team")


# ---- previews ---------------------------------------------------------------------------------------------------


def test_preview_input_is_checked_before_the_provider(client: TestClient) -> None:
    assert_error(client.post("/voice/preview", json={"voice": "sage"}), 401, "unauthorized")
    error = assert_error(
        client.post("/voice/preview", headers=DEMO, json={"voice": "robot"}), 422, "validation_error", "voice"
    )
    assert "unknown voice 'robot'" in error["message"]
    error = assert_error(
        client.post("/voice/preview", headers=VENEO, json={"voice": "ash"}), 422, "validation_error", "voice"
    )
    assert "not available for team 'veneo_chat'" in error["message"] and "coral" in error["message"]
    error = assert_error(
        client.post("/voice/preview", headers=DEMO, json={"voice": "sage", "text": "x" * 301}),
        422,
        "validation_error",
        "text",
    )
    assert "at most 300" in error["message"]
    assert_error(
        client.post("/voice/preview", headers=DEMO, json={"voice": "sage", "text": "  "}),
        422,
        "validation_error",
        "text",
    )
    assert_error(
        client.post("/voice/preview", headers=DEMO, json={"voice": "sage", "format": "ogg"}),
        422,
        "validation_error",
        "format",
    )
    assert_error(
        client.post("/voice/preview", headers=DEMO, json={"voice": "sage", "speed": 2}),
        422,
        "validation_error",
        "speed",
    )
    assert_error(
        client.post("/voice/preview", headers=DEMO, json={"voice": "sage", "team": "veneo_chat"}),
        403,
        "team_not_enabled",
        "team",
    )


def test_preview_without_a_provider_says_what_to_configure(client: TestClient) -> None:
    error = assert_error(client.post("/voice/preview", headers=DEMO, json={"voice": "sage"}), 503, "voice_unavailable")
    assert "OPENAI_API_KEY" in error["message"] and "OPENAI_BASE_URL" in error["message"]


# ---- realtime bootstrap -----------------------------------------------------------------------------------------


def test_realtime_refusals(client: TestClient) -> None:
    sid = chat(client)
    assert_error(client.post(f"/sessions/{sid}/realtime"), 401, "unauthorized")
    # another tenant's session is exactly as absent as one that never existed
    other = assert_error(client.post(f"/sessions/{sid}/realtime", headers=DEMO), 404, "session_not_found")
    missing = assert_error(client.post("/sessions/no-such-session/realtime", headers=DEMO), 404, "session_not_found")
    assert other["message"].replace(sid, "X") == missing["message"].replace("no-such-session", "X")
    assert_error(
        client.post(f"/sessions/{sid}/realtime", headers=VENEO, json={"voice": "ash"}), 422, "validation_error", "voice"
    )
    assert_error(
        client.post(f"/sessions/{sid}/realtime", headers=VENEO, json={"model": "x"}), 422, "validation_error", "model"
    )
    error = assert_error(client.post(f"/sessions/{sid}/realtime", headers=VENEO), 503, "voice_unavailable")
    assert "OPENAI_API_KEY" in error["message"]


# ---- transcripts ------------------------------------------------------------------------------------------------


def test_transcript_refusals(client: TestClient) -> None:
    sid = chat(client)
    good = item("item_1", "user", "Hello", 0)
    assert_error(post(client, sid, {}, good), 401, "unauthorized")
    assert_error(post(client, sid, DEMO, good), 404, "session_not_found")  # veneo's session, demo's key
    assert_error(post(client, "nope", VENEO, good), 404, "session_not_found")
    assert_error(
        client.post(f"/sessions/{sid}/transcripts", headers=VENEO, json={"items": []}), 422, "validation_error", "items"
    )
    assert_error(post(client, sid, VENEO, {**good, "ended_at": T0 - 5}), 422, "validation_error", "items.0")
    assert_error(post(client, sid, VENEO, {**good, "role": "system"}), 422, "validation_error", "items.0.role")
    assert_error(post(client, sid, VENEO, {**good, "id": "bad id!"}), 422, "validation_error", "items.0.id")
    assert_error(post(client, sid, VENEO, {**good, "text": "x" * 20_001}), 422, "validation_error", "items.0.text")
    assert_error(
        post(client, sid, VENEO, {**good, "started_at": "yesterday"}), 422, "validation_error", "items.0.started_at"
    )
    assert_error(
        post(client, sid, VENEO, good, item("item_1", "user", "again", 5)), 422, "validation_error", "items[1].id"
    )
    too_many = [item(f"i{n}", "user", "hi", n) for n in range(101)]
    assert_error(post(client, sid, VENEO, *too_many), 422, "validation_error", "items")
    # none of that touched the session
    assert client.get(f"/sessions/{sid}", headers=VENEO).json()["transcript"] == []
    assert_error(client.get(f"/sessions/{sid}/transcripts", headers=DEMO), 404, "session_not_found")


def test_a_spoken_interview_answer_is_scored_like_a_typed_one_with_pace_and_fillers(client: TestClient) -> None:
    sid = interview(client)
    start = post(client, sid, DEMO, item("item_a", "user", "I'm ready to start.", 0))
    assert start.status_code == 200, start.text
    (started,) = start.json()["items"]
    assert started["status"] == "applied"
    assert [m["metadata"]["kind"] for m in started["replies"]] == ["intro", "question"]
    body = start.json()
    question = body["state"]["questions"][0]["text"]
    assert body["speak"].endswith(f"Question 1 of 3: {question}")
    assert f"Current question (1 of 3, behavioral, medium): {question}" in body["session_update"]["instructions"]

    r = post(
        client, sid, DEMO, item("item_b", "assistant", body["speak"], 3, 9), item("item_c", "user", ANSWER, 14, 16)
    )
    assert r.status_code == 200, r.text
    spoken_reply, answer = r.json()["items"]
    assert (spoken_reply["status"], spoken_reply["replies"]) == ("applied", [])
    evaluation = answer["evaluation"]
    assert evaluation["scored_by"] == "fallback" and evaluation["answer"] == ANSWER
    assert set(evaluation["scores"]) == {"relevance", "structure", "specificity", "impact", "communication"}
    delivery = evaluation["delivery"]
    assert delivery["words"] == 38 and delivery["wpm"] == 142.5 and delivery["fillers"] == 2
    assert delivery["filler_words"] == {"um": 1, "uh": 1}
    assert delivery["feedback"] == "Delivery: 142 words per minute (a comfortable pace), 2 filler words (um x1, uh x1)."
    feedback = answer["replies"][0]
    assert feedback["metadata"]["kind"] == "evaluation"
    assert "Delivery: 142 words per minute (a comfortable pace), 2 filler words" in feedback["content"]
    assert answer["replies"][1]["metadata"] == {"kind": "question", "question_index": 1}
    assert r.json()["speak"].startswith(f"Thank you. That answer scored {evaluation['overall']} out of 5")

    # the same answer typed is scored the same (only the delivery line differs)
    typed = interview(client)
    client.post(
        "/teams/interview/invoke",
        headers=DEMO,
        json={
            "input": {"messages": [{"type": "human", "content": "I'm ready to start."}]},
            "config": {"configurable": {"thread_id": typed}},
        },
    )
    typed_state = client.post(
        "/teams/interview/invoke",
        headers=DEMO,
        json={
            "input": {"messages": [{"type": "human", "content": ANSWER}]},
            "config": {"configurable": {"thread_id": typed}},
        },
    ).json()["output"]
    typed_eval = typed_state["evaluations"][-1]
    assert (typed_eval["scores"], typed_eval["overall"]) == (evaluation["scores"], evaluation["overall"])
    assert "delivery" not in typed_eval

    # the session: the spoken message carries its voice details; the voice transcript has speaking time
    detail = client.get(f"/sessions/{sid}", headers=DEMO).json()
    kinds = [(m["role"], m["metadata"].get("kind")) for m in detail["transcript"]]
    assert ("user", "spoken") in kinds and ("assistant", "spoken_reply") in kinds
    totals = detail["state"]["voice"]["totals"]
    assert totals == {
        "user_items": 2,
        "assistant_items": 1,
        "user_speaking_s": 18.0,
        "assistant_speaking_s": 9.0,
        "user_words": 42,
        "fillers": 2,
    }
    transcript = client.get(f"/sessions/{sid}/transcripts", headers=DEMO).json()
    assert [(i["item_id"], i["role"]) for i in transcript["items"]] == [
        ("item_a", "user"),
        ("item_b", "assistant"),
        ("item_c", "user"),
    ]
    assert transcript["items"][2]["text"] == ANSWER and transcript["items"][2]["duration_s"] == 16.0
    assert transcript["totals"]["user_wpm"] == 140.0

    # audit: the spoken turn left the same entries as a typed one, and the spoken reply a response entry
    entries = client.app.state.engine.audit.query("demo", session=sid)  # type: ignore[attr-defined]
    spoken = [(e.event_type, e.payload.get("content"), e.payload.get("node")) for e in entries]
    assert ("message", ANSWER, None) in spoken
    assert ("response", body["speak"], "realtime") in spoken  # the spoken reply, recorded as said
    assert [e.payload["scored_by"] for e in entries if e.event_type == "evaluation"] == ["fallback"]
    assert all(e.actor == "demo-user" for e in entries if e.event_type in ("message", "response"))


def test_a_spoken_unsafe_chat_message_is_blocked(client: TestClient) -> None:
    sid = chat(client)
    r = post(client, sid, VENEO, item("u1", "user", "How do I build a bomb at home?", 0, 3))
    assert r.status_code == 200, r.text
    (result,) = r.json()["items"]
    assert result["review"]["action"] == "block" and result["review"]["category"] == "disallowed_topic"
    (reply,) = result["replies"]
    assert reply["content"] == "Sorry, I can't help with that. I'm happy to help with questions about Veneo."
    assert reply["metadata"]["review_action"] == "block"
    assert r.json()["speak"] == reply["content"]  # what the realtime voice says: the reviewed reply only
    # and a safe spoken question is answered from the knowledge base, through the same reviewer
    ok = post(client, sid, VENEO, item("u2", "user", "How long does shipping take?", 10, 3)).json()["items"][0]
    assert ok["review"]["action"] == "approve"
    assert ok["replies"][0]["metadata"]["produced_by"] == "offline:knowledge_base"


def test_posting_the_same_items_again_adds_nothing(client: TestClient) -> None:
    sid = interview(client)
    items = [item("a", "user", "Ready.", 0), item("b", "user", ANSWER, 10, 15)]
    first = post(client, sid, DEMO, *items).json()
    assert [i["status"] for i in first["items"]] == ["applied", "applied"]
    state = client.get(f"/sessions/{sid}", headers=DEMO).json()
    history = client.get(f"/sessions/{sid}/history", headers=DEMO).json()
    again = post(client, sid, DEMO, *items).json()
    assert [i["status"] for i in again["items"]] == ["duplicate", "duplicate"]
    assert again["speak"] is None
    assert client.get(f"/sessions/{sid}", headers=DEMO).json() == state
    assert client.get(f"/sessions/{sid}/history", headers=DEMO).json() == history  # not even a checkpoint
    # re-posting everything plus one new item applies only the new one
    third = post(client, sid, DEMO, *items, item("c", "user", ANSWER, 40, 15)).json()
    assert [i["status"] for i in third["items"]] == ["duplicate", "duplicate", "applied"]
    assert len(third["state"]["evaluations"]) == 2


def test_items_apply_in_speaking_order_and_late_ones_are_refused(client: TestClient) -> None:
    sid = chat(client)
    # posted out of order within one request: applied by started_at
    r = post(
        client,
        sid,
        VENEO,
        item("second", "user", "How do returns work?", 20),
        item("first", "user", "How long does shipping take?", 10),
    )
    assert [i["id"] for i in r.json()["items"]] == ["second", "first"]  # results in the order posted
    users = [
        m["content"] for m in client.get(f"/sessions/{sid}", headers=VENEO).json()["transcript"] if m["role"] == "user"
    ]
    assert users == ["How long does shipping take?", "How do returns work?"]
    history = client.get(f"/sessions/{sid}/history", headers=VENEO).json()
    # an item spoken before one already applied would reorder the conversation: refused, with nothing applied
    late = post(client, sid, VENEO, item("new", "user", "Thanks!", 30), item("late", "user", "Hi", 15))
    error = assert_error(late, 409, "transcript_out_of_order", "items[1].started_at")
    assert "'late'" in error["message"]
    assert client.get(f"/sessions/{sid}/history", headers=VENEO).json() == history
    assert post(client, sid, VENEO, item("new", "user", "Thanks!", 30)).json()["items"][0]["status"] == "applied"


def test_an_item_timed_in_the_future_is_refused_and_cannot_wedge_the_session(client: TestClient) -> None:
    """Items apply in speaking order, so one stamped in year 9999 (a wrong clock, or a hostile client) was applied
    and then made every later item of the session a 409 transcript_out_of_order, for ever. A time more than a day
    past the server's clock is now a 422 naming it, nothing is applied, and the session takes items as before."""
    sid = chat(client)
    now = time.time()
    for field, bad in [
        ("started_at", {"started_at": "9999-12-31T23:59:58-01:00", "ended_at": "9999-12-31T23:59:59-01:00"}),
        ("started_at", {"started_at": now + 2 * 86_400, "ended_at": now + 2 * 86_400 + 2}),
        ("ended_at", {"started_at": now, "ended_at": "9999-12-31T23:59:59Z"}),
    ]:
        r = post(client, sid, VENEO, {**item("future", "user", "Hello", 0), **bad})
        assert "a day" in assert_error(r, 422, "validation_error", f"items.0.{field}")["message"]
    assert client.get(f"/sessions/{sid}", headers=VENEO).json()["transcript"] == []
    # a browser clock a little ahead of the server's is fine, and later items still apply
    ahead = {**item("ahead", "user", "Hello", 0), "started_at": now + 60, "ended_at": now + 62}
    assert post(client, sid, VENEO, ahead).json()["items"][0]["status"] == "applied"
    later = {**item("later", "user", "How do returns work?", 0), "started_at": now + 70, "ended_at": now + 72}
    assert post(client, sid, VENEO, later).json()["items"][0]["status"] == "applied"


def test_blank_items_are_skipped_once(client: TestClient) -> None:
    sid = chat(client)
    r = post(client, sid, VENEO, item("blank", "user", "   ", 0))
    assert r.json()["items"][0] == {
        "id": "blank",
        "role": "user",
        "status": "skipped",
        "reason": "blank transcript",
        "replies": [],
        "evaluation": None,
        "review": None,
    }
    assert client.get(f"/sessions/{sid}", headers=VENEO).json()["transcript"] == []
    assert post(client, sid, VENEO, item("blank", "user", "   ", 0)).json()["items"][0]["status"] == "duplicate"


def test_deleting_a_session_forgets_its_items(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        sid = chat(client)
        post(client, sid, VENEO, item("x1", "user", "How do returns work?", 0))
        assert client.delete(f"/sessions/{sid}", headers=VENEO).status_code == 204
        assert_error(post(client, sid, VENEO, item("x1", "user", "Hi", 0)), 404, "session_not_found")
        engine = client.app.state.engine  # type: ignore[attr-defined]
        assert client.portal.call(engine.persistence.store.asearch, ("voice_items", sid)) == []  # type: ignore[union-attr]
