"""Data integrity through the HTTP API: every answered turn stored exactly once, deletes whole or not at all.

Each test drives the real app (`create_app`) on a SQLite file with offline models, and checks what a client
would: the transcript of `GET /sessions/{id}` and the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.messages import HumanMessage

from checkpoints.audit import AuditWriteError
from nodes.memory_keeper import read_archive
from server.app import create_app
from server.engine import thread_key
from server.settings import Settings
from tests.conftest import fresh_postgres_schema, open_engine

VENEO = {"X-API-Key": "tg-veneo-key"}
QUESTIONS = ["How long does shipping take?", "Can I return shoes?", "Do gift cards expire?"]


@contextlib.contextmanager
def make_client(url: str, **settings: Any) -> Iterator[TestClient]:
    app = create_app(Settings(_env_file=None, checkpoint_url=url, **settings))  # type: ignore[call-arg]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(f"sqlite:///{tmp_path}/tg.db") as c:
        yield c


def human(text: str) -> dict[str, Any]:
    return {"messages": [{"type": "human", "content": text}]}


def transcript(client: TestClient, thread_id: str) -> list[tuple[str, str]]:
    r = client.get(f"/sessions/{thread_id}", headers=VENEO)
    assert r.status_code == 200, r.text
    return [(m["role"], m["content"]) for m in r.json()["transcript"]]


# --- batch ------------------------------------------------------------------------------------------------


def test_a_batch_on_one_session_runs_its_inputs_one_after_another_in_order(client: TestClient) -> None:
    """One shared config names one session: all three turns are answered and all three are kept, in order."""
    r = client.post(
        "/teams/veneo_chat/batch",
        headers=VENEO,
        json={"inputs": [human(q) for q in QUESTIONS], "config": {"configurable": {"thread_id": "batch-one"}}},
    )
    assert r.status_code == 200, r.text
    outputs = r.json()["output"]
    replies = [out["messages"][-1]["content"] for out in outputs]
    # each output is the session after its own turn: the second one already holds the first exchange
    assert [len(out["messages"]) for out in outputs] == [2, 4, 6]
    assert transcript(client, "batch-one") == [
        pair for q, reply in zip(QUESTIONS, replies, strict=True) for pair in (("user", q), ("assistant", reply))
    ]
    # and each turn is on the audit record: its message and its reply
    audit = client.app.state.engine.audit  # type: ignore[attr-defined]
    entries = audit.query("veneo", session="batch-one", limit=100)
    assert [e.payload["content"] for e in entries if e.event_type == "message"] == QUESTIONS
    assert [e.payload["content"] for e in entries if e.event_type == "response"] == replies


def test_a_batch_with_one_config_per_input_on_one_session_also_runs_in_order(client: TestClient) -> None:
    config = {"configurable": {"thread_id": "batch-list"}}
    r = client.post(
        "/teams/veneo_chat/batch",
        headers=VENEO,
        json={"inputs": [human(q) for q in QUESTIONS[:2]], "config": [config, config]},
    )
    assert r.status_code == 200, r.text
    assert [role_text[1] for role_text in transcript(client, "batch-list")][::2] == QUESTIONS[:2]


# --- a crash between archiving and the checkpoint ---------------------------------------------------------


class CheckpointWriteLost(RuntimeError):
    """Stands for the process dying after memory_keeper archived its overflow, before the checkpoint was written."""


@pytest.mark.parametrize("durability", ["exit", "sync"])
async def test_a_turn_that_dies_after_archiving_leaves_the_transcript_without_duplicates(
    tmp_path: Path, durability: str
) -> None:
    async with open_engine(f"sqlite:///{tmp_path}/tg.db", durability=durability) as engine:
        session = await engine.create_session("veneo", "veneo_chat")
        questions = [f"[{i}] {QUESTIONS[i % len(QUESTIONS)]}" for i in range(12)]
        for q in questions[:8]:  # 16 messages: at the team's limit, not over it
            await engine.run_turn(session, {"messages": [HumanMessage(q)]})
        committed = [(m.type, m.content) for m in await engine.transcript(session)]
        assert len(committed) == 16

        checkpointer = engine.persistence.checkpointer
        real_aput = checkpointer.aput

        async def lose_the_last_write(config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
            if metadata.get("source") == "loop" and checkpoint["channel_values"].get("archived"):
                raise CheckpointWriteLost()
            return await real_aput(config, checkpoint, metadata, new_versions)

        checkpointer.aput = lose_the_last_write  # type: ignore[method-assign]
        with pytest.raises(CheckpointWriteLost):
            await engine.run_turn(session, {"messages": [HumanMessage(questions[8])]})
        checkpointer.aput = real_aput  # type: ignore[method-assign]
        # the 9th turn archived 10 messages that its lost checkpoint would have dropped from state
        assert len(await read_archive(engine.persistence.store, session.thread_id)) == 10

        # the transcript is what the last committed checkpoint says (with durability=sync that includes the
        # steps of the 9th turn before memory_keeper): every message once, the 8 whole turns first
        after_crash = await engine.transcript(session)
        assert len({m.id for m in after_crash}) == len(after_crash)
        assert [(m.type, m.content) for m in after_crash][:16] == committed
        kept_ninth = [m.content for m in after_crash if m.type == "human"][8:] == [questions[8]]

        # and the next turns carry on from there: every message once, in order
        for q in questions[9:]:
            await engine.run_turn(session, {"messages": [HumanMessage(q)]})
        messages = await engine.transcript(session)
        assert [m.content for m in messages if m.type == "human"] == [
            *questions[:8],
            *questions[8:9] * kept_ninth,
            *questions[9:],
        ]
        assert len({m.id for m in messages}) == len(messages)


# --- delete: whole or gone --------------------------------------------------------------------------------


class DiskGone(OSError):
    """Stands for the database failing (or the process dying) halfway through a delete."""


def chat_turn(client: TestClient, thread_id: str, text: str) -> Any:
    r = client.post(
        "/teams/veneo_chat/invoke",
        headers=VENEO,
        json={"input": human(text), "config": {"configurable": {"thread_id": thread_id}}},
    )
    return r


def audit_types(client: TestClient, thread_id: str) -> list[str]:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    return [e.event_type for e in engine.audit.query("veneo", session=thread_id, limit=500)]


async def _interrupted_archive_delete(store: Any, thread_id: str) -> int:
    raise DiskGone("the store went away")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tg.db"
    else:
        with fresh_postgres_schema("tg_integrity") as url:
            yield url


@pytest.mark.parametrize("finish", ["repeated DELETE", "restart"])
def test_a_delete_that_fails_halfway_leaves_the_session_gone_and_is_finished_later(
    db_url: str, monkeypatch: pytest.MonkeyPatch, finish: str
) -> None:
    url = db_url
    with make_client(url) as client:
        for i in range(12):  # 24 messages: 10 of them archived, the rest in state
            assert chat_turn(client, "doomed", f"[{i}] {QUESTIONS[i % 3]}").status_code == 200
        assert len(transcript(client, "doomed")) == 24
        with monkeypatch.context() as patch:
            patch.setattr("server.engine.delete_archive", _interrupted_archive_delete)
            r = client.delete("/sessions/doomed", headers=VENEO)
        assert r.status_code == 500, r.text

        # the checkpoints are gone and the archive is not, but no client can see half a session
        r = client.get("/sessions/doomed", headers=VENEO)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "session_not_found")
        assert "doomed" not in [s["id"] for s in client.get("/sessions", headers=VENEO).json()["items"]]
        # nor add to it: a turn on the id is refused until the deletion has finished, and nothing is stored
        r = chat_turn(client, "doomed", "Still there?")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "session_deleting"
        assert "DELETE /sessions/doomed" in r.json()["error"]["message"]
        # the audit trail says what happened: a delete started, and did not finish
        assert audit_types(client, "doomed")[-2:] == ["safety_decision", "session_delete_started"]

        if finish == "repeated DELETE":
            assert client.delete("/sessions/doomed", headers=VENEO).status_code == 204
    with make_client(url) as client:  # a restart finishes what is still pending
        engine = client.app.state.engine  # type: ignore[attr-defined]
        assert client.portal.call(read_archive, engine.persistence.store, "doomed") == []  # type: ignore[union-attr]
        config = {"configurable": {"thread_id": "doomed", "checkpoint_ns": ""}}
        assert client.portal.call(engine.persistence.checkpointer.aget_tuple, config) is None  # type: ignore[union-attr]
        assert audit_types(client, "doomed")[-2:] == ["session_delete_started", "session_deleted"]
        # gone for good: a further DELETE is 404, and the id starts a new, empty session
        r = client.delete("/sessions/doomed", headers=VENEO)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "session_not_found")
        assert chat_turn(client, "doomed", "Hello again").status_code == 200
        fresh = transcript(client, "doomed")
        assert len(fresh) == 2 and fresh[0] == ("user", "Hello again")


def test_another_tenants_same_id_is_its_own_session_while_a_deletion_is_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session ids are per tenant: a deletion pending in one tenant neither blocks nor shows in another."""
    demo = {"Authorization": "Bearer tg-demo-key"}
    with make_client(f"sqlite:///{tmp_path}/tg.db") as client:
        assert chat_turn(client, "pending-id", "How long does shipping take?").status_code == 200
        with monkeypatch.context() as patch:
            patch.setattr("server.engine.delete_archive", _interrupted_archive_delete)
            assert client.delete("/sessions/pending-id", headers=VENEO).status_code == 500
        # the owner's id stays taken until its deletion finishes
        r = chat_turn(client, "pending-id", "Hello again")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "session_deleting")
        # another tenant's `pending-id` is a session of its own, and its DELETE cannot finish veneo's deletion
        r = client.post(
            "/teams/interview/invoke",
            headers=demo,
            json={"input": human("Start"), "config": {"configurable": {"thread_id": "pending-id"}}},
        )
        assert r.status_code == 200
        assert client.delete("/sessions/pending-id", headers=demo).status_code == 204
        r = chat_turn(client, "pending-id", "Hello again")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "session_deleting")
        assert client.delete("/sessions/pending-id", headers=VENEO).status_code == 204
        assert chat_turn(client, "pending-id", "A new start").status_code == 200


# --- Idempotency-Key --------------------------------------------------------------------------------------


@pytest.fixture
def any_db(db_url: str) -> Iterator[TestClient]:
    with make_client(db_url) as c:
        yield c


def keyed(client: TestClient, endpoint: str, thread_id: str, text: str, key: str) -> Any:
    return client.post(
        f"/teams/veneo_chat/{endpoint}",
        headers={**VENEO, "Idempotency-Key": key},
        json={"input": human(text), "config": {"configurable": {"thread_id": thread_id}}},
    )


def test_a_retried_turn_with_the_same_key_is_answered_from_the_store_not_run_again(any_db: TestClient) -> None:
    client = any_db
    first = keyed(client, "invoke", "idem", "How long does shipping take?", "turn-1")
    assert first.status_code == 200, first.text
    again = keyed(client, "invoke", "idem", "How long does shipping take?", "turn-1")
    assert again.status_code == 200, again.text
    assert again.json()["output"] == first.json()["output"]
    reply = first.json()["output"]["messages"][-1]["content"]
    assert transcript(client, "idem") == [("user", "How long does shipping take?"), ("assistant", reply)]
    assert audit_types(client, "idem").count("message") == 1

    # a new key is a new turn, even with the same text
    assert keyed(client, "invoke", "idem", "How long does shipping take?", "turn-2").status_code == 200
    assert len(transcript(client, "idem")) == 4

    # the same key with another body is refused before anything runs
    r = keyed(client, "invoke", "idem", "Can I return shoes?", "turn-1")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("idempotency_key_reused", "Idempotency-Key")
    assert "'turn-1'" in error["message"] and "new key" in error["message"]
    assert len(transcript(client, "idem")) == 4

    # keys belong to a session: the same key on another session is a turn of its own
    assert keyed(client, "invoke", "idem-other", "How long does shipping take?", "turn-1").status_code == 200
    assert len(transcript(client, "idem-other")) == 2


def test_a_retried_stream_with_the_same_key_sends_the_same_chunks_again(any_db: TestClient) -> None:
    client = any_db
    first = keyed(client, "stream", "idem-stream", "Do gift cards expire?", "s-1")
    assert first.status_code == 200, first.text
    assert "event: data" in first.text
    again = keyed(client, "stream", "idem-stream", "Do gift cards expire?", "s-1")
    assert again.status_code == 200
    # the same data events (run ids in metadata events differ; the turn's chunks do not)
    assert [ln for ln in again.text.splitlines() if ln.startswith("data:") and "run_id" not in ln] == [
        ln for ln in first.text.splitlines() if ln.startswith("data:") and "run_id" not in ln
    ]
    assert len(transcript(client, "idem-stream")) == 2
    # the key was used on /stream: the same body on /invoke is a different request
    r = keyed(client, "invoke", "idem-stream", "Do gift cards expire?", "s-1")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "idempotency_key_reused")


def sse(text: str, event: str) -> list[Any]:
    """The events named `event` (data, error, end) of an SSE body, their data parsed (None when there is none)."""
    found = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = block.split("\n")
        if f"event: {event}" in lines:
            data = "\n".join(ln[len("data:") :].strip() for ln in lines if ln.startswith("data:"))
            found.append(json.loads(data) if data else None)
    return found


def test_a_retried_stream_events_with_the_same_key_is_told_the_turn_was_stored(any_db: TestClient) -> None:
    """A keyed /stream_events runs once: the retry gets one event saying the turn was stored (not its events: each
    carries the whole state), then `end`; the client reads the session."""
    client = any_db
    first = keyed(client, "stream_events", "idem-events", "Do gift cards expire?", "e-1")
    assert first.status_code == 200, first.text
    assert len(sse(first.text, "data")) > 5 and sse(first.text, "end") == [None]
    assert [m[0] for m in transcript(client, "idem-events")] == ["user", "assistant"]
    for _ in range(2):
        again = keyed(client, "stream_events", "idem-events", "Do gift cards expire?", "e-1")
        assert again.status_code == 200, again.text
        assert again.headers["content-type"].startswith("text/event-stream")
        assert sse(again.text, "data") == [
            {
                "event": "on_custom_event",
                "name": "turn_already_stored",
                "run_id": "",
                "tags": [],
                "metadata": {},
                "parent_ids": [],
                "data": {"thread_id": "idem-events", "idempotency_key": "e-1"},
            }
        ]
        assert sse(again.text, "end") == [None]
        assert len(transcript(client, "idem-events")) == 2  # the turn ran once
    # the same key with another text, or on another endpoint, is another request: refused, nothing runs
    r = keyed(client, "stream_events", "idem-events", "Can I return shoes?", "e-1")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "idempotency_key_reused")
    r = keyed(client, "stream", "idem-events", "Do gift cards expire?", "e-1")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "idempotency_key_reused")
    assert len(transcript(client, "idem-events")) == 2


def test_a_stream_events_turn_that_fails_on_a_known_fault_says_which_and_its_retry_never_runs_it_twice(
    client: TestClient,
) -> None:
    """The `event: error` of a turn cut by the database or the audit log carries the fault's status, code and
    message as the JSON error shape does (it said 500 Internal Server Error, so a client could not tell an outage
    from a bug); a keyed turn that failed after its state was stored is in doubt on retry, never run twice."""
    engine = client.app.state.engine  # type: ignore[attr-defined]
    real_append = engine.audit.append
    assert chat_turn(client, "faults", "How long does shipping take?").status_code == 200

    def refuse(cause: Exception | None) -> Any:
        def append(events: list[Any]) -> Any:
            if any(e.event_type == "response" for e in events):  # the turn's end, after its state was stored
                raise AuditWriteError("audit log write failed") from cause
            return real_append(events)

        return append

    for cause, error, text in [
        (None, {"status_code": 503, "code": "audit_unavailable"}, "Can I return shoes?"),
        (sqlite3.OperationalError("disk I/O error"), {"status_code": 503, "code": "storage_unavailable"}, "Hi"),
    ]:
        engine.audit.append = refuse(cause)
        try:
            r = keyed(client, "stream_events", "faults", text, f"k-{len(text)}")
        finally:
            engine.audit.append = real_append
        assert r.status_code == 200, r.text
        [sent] = sse(r.text, "error")
        assert {k: sent[k] for k in ("status_code", "code")} == error, sent
        assert "try again later" in sent["message"]
        stored = len(transcript(client, "faults"))
        again = keyed(client, "stream_events", "faults", text, f"k-{len(text)}")
        assert (again.status_code, again.json()["error"]["code"]) == (409, "idempotent_turn_outcome_unknown")
        assert len(transcript(client, "faults")) == stored

    # any other error stays LangServe's, with no detail
    def broken(events: list[Any]) -> Any:
        raise ValueError("a bug, with a secret detail")

    engine.audit.append = broken
    try:
        r = keyed(client, "stream_events", "faults", "Do gift cards expire?", "k-bug")
    finally:
        engine.audit.append = real_append
    assert sse(r.text, "error") == [{"status_code": 500, "message": "Internal Server Error"}]


def test_an_idempotency_key_where_it_is_not_supported_is_refused(client: TestClient) -> None:
    body: dict[str, Any] = {"config": {"configurable": {"thread_id": "idem-no"}}, "inputs": [human("Hi")]}
    r = client.post("/teams/veneo_chat/batch", headers={**VENEO, "Idempotency-Key": "k"}, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "Idempotency-Key"
    assert client.get("/sessions/idem-no", headers=VENEO).status_code == 404  # nothing ran, nothing was created


@pytest.mark.parametrize("key", ["", "x" * 201, "naïve", "has space"])
def test_a_malformed_idempotency_key_is_422(client: TestClient, key: str) -> None:
    r = client.post(
        "/teams/veneo_chat/invoke",
        headers=[*VENEO.items(), ("Idempotency-Key", key.encode())],  # type: ignore[list-item]
        json={"input": human("Hi"), "config": {"configurable": {"thread_id": "idem-bad"}}},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "Idempotency-Key"


def test_a_keyed_turn_cut_off_by_a_crash_runs_on_retry_only_if_it_was_not_stored(client: TestClient) -> None:
    """A process that dies mid-turn leaves its key without an answer; what the retry does depends on the session."""
    engine = client.app.state.engine  # type: ignore[attr-defined]
    key = thread_key("veneo", "cut")  # the session's internal thread key (client ids are per tenant)
    assert chat_turn(client, "cut", "How long does shipping take?").status_code == 200
    latest = client.portal.call(  # type: ignore[union-attr]
        engine.persistence.checkpointer.aget_tuple, {"configurable": {"thread_id": key, "checkpoint_ns": ""}}
    )
    before = latest.config["configurable"]["checkpoint_id"]
    body = {"input": human("Can I return shoes?"), "config": {"configurable": {"thread_id": "cut"}}}

    def fingerprint_of(sent: dict[str, Any]) -> str:
        # what the server records for the request; taken from a first keyed request, then left unanswered
        r = client.post("/teams/veneo_chat/invoke", headers={**VENEO, "Idempotency-Key": "probe"}, json=sent)
        assert r.status_code == 200
        turn = engine.sessions.idempotent_turn("veneo", key, "probe")
        return str(turn.fingerprint)

    fingerprint = fingerprint_of(body)  # (this turn is stored: the transcript now holds 2 turns)
    assert len(transcript(client, "cut")) == 4

    # (a) the crashed turn started before the session's latest checkpoint: it may be stored, so no rerun
    engine.sessions.start_idempotent_turn("veneo", key, "k-doubt", fingerprint, before)
    r = client.post("/teams/veneo_chat/invoke", headers={**VENEO, "Idempotency-Key": "k-doubt"}, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "idempotent_turn_outcome_unknown")
    assert "GET /sessions/cut" in r.json()["error"]["message"]
    assert len(transcript(client, "cut")) == 4

    # (b) the session has not moved since the crashed turn started: it was not stored, so the retry runs it once
    latest = client.portal.call(  # type: ignore[union-attr]
        engine.persistence.checkpointer.aget_tuple, {"configurable": {"thread_id": key, "checkpoint_ns": ""}}
    )
    now_id = latest.config["configurable"]["checkpoint_id"]
    engine.sessions.start_idempotent_turn("veneo", key, "k-lost", fingerprint, now_id)
    r = client.post("/teams/veneo_chat/invoke", headers={**VENEO, "Idempotency-Key": "k-lost"}, json=body)
    assert r.status_code == 200, r.text
    assert len(transcript(client, "cut")) == 6
    again = client.post("/teams/veneo_chat/invoke", headers={**VENEO, "Idempotency-Key": "k-lost"}, json=body)
    assert again.json()["output"] == r.json()["output"]
    assert len(transcript(client, "cut")) == 6


def test_a_keyed_turn_that_fails_runs_again_on_retry_only_if_it_left_the_session_unchanged(client: TestClient) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    real_append = engine.audit.append
    assert chat_turn(client, "failing", "How long does shipping take?").status_code == 200

    def refuse(event_type: str) -> Any:
        def append(events: list[Any]) -> Any:
            if any(e.event_type == event_type for e in events):
                raise AuditWriteError("audit log write failed: disk full")
            return real_append(events)

        return append

    # refused at its start (the user's message cannot be audited): nothing stored, so the retry runs it
    engine.audit.append = refuse("message")
    r = keyed(client, "invoke", "failing", "Can I return shoes?", "k-start")
    engine.audit.append = real_append
    assert (r.status_code, r.json()["error"]["code"]) == (503, "audit_unavailable")
    assert len(transcript(client, "failing")) == 2
    assert keyed(client, "invoke", "failing", "Can I return shoes?", "k-start").status_code == 200
    assert len(transcript(client, "failing")) == 4

    # failed at its end (the replies cannot be audited) after its state was stored: a retry must not run it again
    engine.audit.append = refuse("response")
    r = keyed(client, "invoke", "failing", "Do gift cards expire?", "k-end")
    engine.audit.append = real_append
    assert (r.status_code, r.json()["error"]["code"]) == (503, "audit_unavailable")
    assert len(transcript(client, "failing")) == 6
    r = keyed(client, "invoke", "failing", "Do gift cards expire?", "k-end")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "idempotent_turn_outcome_unknown")
    assert len(transcript(client, "failing")) == 6


async def test_two_deletes_of_one_session_at_once_delete_it_once(tmp_path: Path) -> None:
    async with open_engine(f"sqlite:///{tmp_path}/tg.db") as engine:
        session = await engine.create_session("veneo", "veneo_chat")
        await engine.run_turn(session, {"messages": [HumanMessage("How long does shipping take?")]})
        await asyncio.gather(engine.delete_session(session, "a"), engine.delete_session(session, "b"))
        assert engine.sessions.get(session.thread_id) is None
        assert engine.sessions.pending_deletion("veneo", session.id) is None
        events = [e.event_type for e in engine.audit.query("veneo", session=session.id, limit=100)]
    # the deletion happened once, and is on record once: the request that found it done changed nothing
    assert events[-2:] == ["session_delete_started", "session_deleted"]
    assert events.count("session_delete_started") == 1
