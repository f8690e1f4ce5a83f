"""Persistence as a user sees it: the session index, whole sessions on each backend, restarts, long sessions.

Every scenario runs on a real SQLite file under tmp_path and on the machine's PostgreSQL (the `postgres_url`
fixture), and on memory:// where a scenario makes sense there. Models are offline (deterministic), so the
numbers below do not depend on a provider.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import ValidationError

import checkpoints.session_index as session_index
from checkpoints.factory import CheckpointURLError, build_persistence
from nodes.memory_keeper import read_archive
from personas.schema import RetentionSettings
from server.engine import Engine, SessionNotFound
from tests.conftest import open_engine

REPO = Path(__file__).resolve().parents[2]
RESUME = (REPO / "examples" / "resume.md").read_text()
JOB_DESCRIPTION = (REPO / "examples" / "job_description.md").read_text()

ANSWERS = [
    "At my last job our team had to move batch jobs to Airflow on Kubernetes. I was responsible for the plan; "
    "I designed the DAG layout and I led the migration. As a result failed runs dropped by 70% in two months.",
    "I used Kafka for shipment events at Acme: 40 million a day. I weighed partition count against consumer lag "
    "and chose idempotent producers, which reduced duplicate events to almost zero.",
    "In my first two weeks I would talk to the analysts, read the incident history and set up monitoring with "
    "Prometheus, then propose a plan for the pipelines with clear priorities.",
]

# (question, something the knowledge-base answer must contain)
CHAT = [
    ("How long does shipping take?", "3 to 5 business days"),
    ("Which payment methods do you accept?", "PayPal"),
    ("How do I reset my password?", "Forgot password"),
    ("How do I return shoes?", "30 days"),
    ("When is customer service open?", "9:00 to 18:00"),
    ("How long are gift cards valid?", "two years"),
    ("Do your shoes run true to size?", "true to size"),
    ("How do I track my order?", "tracking link"),
    ("What is the meaning of life?", "don't know"),
    ("hello", "Hello"),
]

CHAT_MAX_MESSAGES = 16  # personas/teams/veneo_chat.yaml: memory.max_messages


def _url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/teamgraph.db"
    if kind == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return "memory://"


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request.param, request, tmp_path)


def user(text: str) -> dict[str, Any]:
    """A user turn as the CLI and the REST API send it."""
    return {"messages": [{"role": "user", "content": text}]}


def first_interview_turn() -> dict[str, Any]:
    return {"resume": RESUME, "job_description": JOB_DESCRIPTION, **user("Start")}


def kinds(messages: list[BaseMessage]) -> list[str]:
    return ["human" if isinstance(m, HumanMessage) else str(m.response_metadata.get("kind")) for m in messages]


def human_texts(messages: list[Any]) -> list[str]:
    return [str(m.content) for m in messages if isinstance(m, HumanMessage)]


def tenant_name(label: str) -> str:
    """Index-level tests use their own tenant ids: the Postgres schema is shared by the whole test run."""
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def checkpoint_of(engine: Engine, thread_id: str) -> Any:
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    return await engine.persistence.checkpointer.aget_tuple(config)  # type: ignore[arg-type]


# --- 1. the session index ---------------------------------------------------------------------------------


async def test_index_lists_newest_first_filters_by_team_and_pages(any_url: str) -> None:
    async with open_engine(any_url) as engine:
        index = engine.sessions
        tenant_a, tenant_b = tenant_name("acme"), tenant_name("globex")
        made = []
        for i in range(5):
            team = "interview" if i % 2 == 0 else "veneo_chat"
            made.append(index.create(str(uuid.uuid4()), tenant_a, team, f"A session {i}"))
            index.create(str(uuid.uuid4()), tenant_b, team, f"B session {i}")
        index.touch(made[1].thread_id)  # activity moves a session to the top
        expected = [made[1].thread_id] + [r.thread_id for r in reversed(made) if r is not made[1]]

        listed = index.list(tenant_a)
        assert [r.thread_id for r in listed] == expected
        stamps = [r.updated_at for r in listed]
        assert stamps == sorted(stamps, reverse=True)
        assert {r.tenant for r in listed} == {tenant_a}
        others = index.list(tenant_b)
        assert len(others) == 5
        assert {r.tenant for r in others} == {tenant_b}
        assert not {r.thread_id for r in others} & set(expected)

        interviews = index.list(tenant_a, team="interview")
        assert [r.thread_id for r in interviews] == [r.thread_id for r in listed if r.team == "interview"]
        assert len(interviews) == 3

        pages: list[list[str]] = []
        before = None
        while True:
            page = index.list(tenant_a, limit=2, before=before)
            if not page:
                break
            pages.append([r.thread_id for r in page])
            before = (page[-1].updated_at, page[-1].thread_id)
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [t for p in pages for t in p] == expected  # every session once, in order: no overlap, no gap

        chats_after_first = index.list(tenant_a, team="veneo_chat", before=(listed[0].updated_at, listed[0].thread_id))
        assert [r.thread_id for r in chats_after_first] == [r.thread_id for r in listed[1:] if r.team == "veneo_chat"]


async def test_index_pages_sessions_with_the_same_timestamp(any_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions created in the same instant still page without overlap or gap (thread id breaks the tie)."""
    async with open_engine(any_url) as engine:
        tenant = tenant_name("tie")
        monkeypatch.setattr(session_index, "now", lambda: "2030-01-01T00:00:00.000000+00:00")
        ids = [engine.sessions.create(str(uuid.uuid4()), tenant, "veneo_chat").thread_id for _ in range(5)]
        seen: list[str] = []
        before = None
        while page := engine.sessions.list(tenant, limit=2, before=before):
            seen += [r.thread_id for r in page]
            before = (page[-1].updated_at, page[-1].thread_id)
        assert sorted(seen) == sorted(ids)  # each session exactly once
        assert seen == [r.thread_id for r in engine.sessions.list(tenant)]


async def test_touch_titles_a_session_from_its_first_message_only(any_url: str) -> None:
    async with open_engine(any_url) as engine:
        index = engine.sessions
        tenant = tenant_name("titles")
        record = index.create(str(uuid.uuid4()), tenant, "veneo_chat")
        assert record.title == ""

        index.touch(record.thread_id, "")  # a turn without text leaves the title empty
        assert index.get(record.thread_id).title == ""  # type: ignore[union-attr]

        index.touch(record.thread_id, "\n  How long does shipping take?  \nAnd to Norway?")
        first = index.get(record.thread_id)
        assert first is not None
        assert first.title == "How long does shipping take?"
        assert first.updated_at > record.updated_at

        index.touch(record.thread_id, "Which payment methods do you accept?")
        later = index.get(record.thread_id)
        assert later is not None
        assert later.title == "How long does shipping take?"
        assert later.updated_at > first.updated_at

        long_line = "Tell me everything about shipping " + "and returns " * 10
        other = index.create(str(uuid.uuid4()), tenant, "veneo_chat")
        index.touch(other.thread_id, long_line)
        title = index.get(other.thread_id).title  # type: ignore[union-attr]
        assert len(title) <= session_index.TITLE_LENGTH
        assert title.startswith("Tell me everything about shipping")


async def test_rename_and_delete(any_url: str) -> None:
    async with open_engine(any_url) as engine:
        index = engine.sessions
        tenant = tenant_name("rename")
        keep = index.create(str(uuid.uuid4()), tenant, "interview", "Keep me")
        record = index.create(str(uuid.uuid4()), tenant, "interview", "Old title")

        renamed = index.rename(record.thread_id, "Mock interview for Acme")
        assert renamed is not None
        assert renamed.title == "Mock interview for Acme"
        assert index.get(record.thread_id).title == "Mock interview for Acme"  # type: ignore[union-attr]
        assert [r.title for r in index.list(tenant)] == ["Mock interview for Acme", "Keep me"]
        assert index.rename(str(uuid.uuid4()), "nobody's") is None

        assert index.delete(record.thread_id) is True
        assert index.delete(record.thread_id) is False
        assert index.get(record.thread_id) is None
        assert [r.thread_id for r in index.list(tenant)] == [keep.thread_id]


async def test_tenants_never_see_each_others_sessions(any_url: str) -> None:
    async with open_engine(any_url) as engine:
        demo = await engine.create_session("demo")
        veneo = await engine.create_session("veneo")
        assert (demo.team, veneo.team) == ("interview", "veneo_chat")  # each tenant's default team

        assert demo.thread_id in [r.thread_id for r in engine.sessions.list("demo")]
        assert all(r.tenant == "demo" for r in engine.sessions.list("demo"))
        assert demo.thread_id not in [r.thread_id for r in engine.sessions.list("veneo")]
        assert veneo.thread_id not in [r.thread_id for r in engine.sessions.list("demo")]

        assert engine.get_session("demo", demo.thread_id) == demo
        with pytest.raises(SessionNotFound):
            engine.get_session("veneo", demo.thread_id)
        with pytest.raises(SessionNotFound):
            engine.get_session("demo", veneo.thread_id)
        with pytest.raises(SessionNotFound):
            engine.get_session("demo", str(uuid.uuid4()))


# --- 2. whole sessions on each backend --------------------------------------------------------------------


async def test_interview_and_chat_then_delete(any_url: str) -> None:
    async with open_engine(any_url) as engine:
        # an offline interview for the demo tenant (3 questions)
        interview = await engine.create_session("demo")
        state = await engine.run_turn(interview, first_interview_turn())
        assert state["phase"] == "asking"
        assert state["role"] == "Senior Data Engineer"
        assert len(state["questions"]) == 3
        for answer in ANSWERS:
            state = await engine.run_turn(interview, user(answer))
        assert state["phase"] == "done"
        assert [e["answer"] for e in state["evaluations"]] == ANSWERS
        assert [e["question_index"] for e in state["evaluations"]] == [0, 1, 2]
        assert all(e["scored_by"] == "fallback" for e in state["evaluations"])
        assert state["summary"]["answered"] == 3
        assert 1 <= state["summary"]["overall"] <= 5
        transcript = await engine.transcript(interview)
        assert kinds(transcript) == ["human", "intro", "question"] + ["human", "evaluation", "question"] * 2 + [
            "human",
            "evaluation",
            "summary",
        ]
        assert human_texts(transcript) == ["Start", *ANSWERS]
        assert engine.sessions.get(interview.thread_id).title == "Interview: Senior Data Engineer"  # type: ignore[union-attr]

        # a chat for Veneo, long enough that the memory keeper archives its first turns
        chat = await engine.create_session("veneo")
        for question, expected in CHAT:
            state = await engine.run_turn(chat, user(question))
            assert expected in state["messages"][-1].content, question
        turns = [d["turn"] for d in state["review_decisions"]]  # the latest decisions, numbered by turn
        assert turns and turns == list(range(len(CHAT) - len(turns) + 1, len(CHAT) + 1))
        assert state["archived"] > 0
        assert len(state["messages"]) <= CHAT_MAX_MESSAGES
        assert "How long does shipping take?" in state["rolling_summary"]  # trimmed turns live on in the summary
        transcript = await engine.transcript(chat)
        assert human_texts(transcript) == [q for q, _ in CHAT]
        assert [type(m) for m in transcript] == [HumanMessage, AIMessage] * len(CHAT)
        assert engine.sessions.get(chat.thread_id).title == "How long does shipping take?"  # type: ignore[union-attr]
        assert await read_archive(engine.persistence.store, chat.thread_id)

        # deleting the chat removes its checkpoints, archive and index row, and nothing of the interview
        await engine.delete_session(chat)
        assert await checkpoint_of(engine, chat.thread_id) is None
        assert await read_archive(engine.persistence.store, chat.thread_id) == []
        assert engine.sessions.get(chat.thread_id) is None
        with pytest.raises(SessionNotFound):
            engine.get_session("veneo", chat.thread_id)
        assert await checkpoint_of(engine, interview.thread_id) is not None
        assert (await engine.state(engine.get_session("demo", interview.thread_id)))["phase"] == "done"

        await engine.delete_session(interview)
        assert await checkpoint_of(engine, interview.thread_id) is None
        assert engine.sessions.get(interview.thread_id) is None
        assert await engine.transcript(interview) == []


# --- 3. restart: a new process continues the session ------------------------------------------------------


def continue_in_new_process(url: str, tenant: str, thread_id: str, *messages: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration_tests.restart_helper", url, tenant, thread_id, *messages],
        cwd=REPO,
        env=dict(os.environ),  # already cleared of provider keys and TEAMGRAPH_ settings by conftest
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["pid"] != os.getpid()
    return result


async def test_interview_continues_after_restart(durable_url: str) -> None:
    async with open_engine(durable_url) as engine:
        session = await engine.create_session("demo")
        await engine.run_turn(session, first_interview_turn())
        state = await engine.run_turn(session, user(ANSWERS[0]))
        questions, first_evaluation = state["questions"], state["evaluations"][0]
    # the first process's engine is closed; a new process picks the session up from the database

    out = continue_in_new_process(durable_url, "demo", session.thread_id, *ANSWERS[1:])

    before = out["before"]
    assert before["phase"] == "asking"
    assert before["questions"] == questions
    assert before["current"] == 1
    assert before["evaluations"] == [json.loads(json.dumps(first_evaluation))]
    assert before["messages"][-1]["content"].startswith("Question 2 of 3")
    after = out["after"]
    assert after["phase"] == "done"
    assert [e["answer"] for e in after["evaluations"]] == ANSWERS
    assert after["summary"]["answered"] == 3
    assert after["summary"]["narrative"]
    assert out["replies"][-1].startswith("Interview complete.")
    assert [m["content"] for m in out["transcript"] if m["type"] == "human"] == ["Start", *ANSWERS]

    async with open_engine(durable_url) as engine:  # and the work of the new process is there afterwards
        assert (await engine.state(engine.get_session("demo", session.thread_id)))["phase"] == "done"


async def test_chat_continues_after_restart(durable_url: str) -> None:
    async with open_engine(durable_url) as engine:
        session = await engine.create_session("veneo")
        for question, _ in CHAT:
            state = await engine.run_turn(session, user(question))
        assert state["archived"] > 0  # the first question is no longer in state, only in the archive and summary

    out = continue_in_new_process(durable_url, "veneo", session.thread_id, "How do I return shoes?", "/summarize")

    first_process = out["transcript"][: 2 * len(CHAT)]
    assert [m["content"] for m in first_process if m["type"] == "human"] == [q for q, _ in CHAT]
    kept = out["before"]["messages"]
    assert 0 < len(kept) < len(first_process)
    assert kept == first_process[-len(kept) :]  # the new process starts from exactly where the first one stopped
    assert "How long does shipping take?" in out["before"]["rolling_summary"]
    assert "30 days" in out["replies"][0]
    summary = out["replies"][1]
    assert summary.startswith("Summary of our conversation so far:")
    assert "How long does shipping take?" in summary  # asked in the first process
    assert "How do I return shoes?" in summary
    assert [m["content"] for m in out["transcript"] if m["type"] == "human"] == [
        *(q for q, _ in CHAT),
        "How do I return shoes?",
        "/summarize",
    ]


# --- 4. a long session stays cheap ------------------------------------------------------------------------


@contextlib.contextmanager
def thread_bytes(url: str) -> Iterator[Callable[[str], int]]:
    """A function giving the checkpoint bytes stored for a thread (checkpoints + pending writes)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        sql = (
            "select (select coalesce(sum(length(checkpoint) + length(metadata)), 0)"
            "        from checkpoints where thread_id = :t)"
            " + (select coalesce(sum(length(value)), 0) from writes where thread_id = :t)"
        )
        try:
            yield lambda thread_id: int(conn.execute(sql, {"t": thread_id}).fetchone()[0])
        finally:
            conn.close()
    else:
        sql = (
            "select (select coalesce(sum(pg_column_size(checkpoint) + pg_column_size(metadata)), 0)"
            "        from checkpoints where thread_id = %(t)s)"
            " + (select coalesce(sum(octet_length(blob)), 0) from checkpoint_blobs where thread_id = %(t)s)"
            " + (select coalesce(sum(octet_length(blob)), 0) from checkpoint_writes where thread_id = %(t)s)"
        )
        with psycopg.connect(url, autocommit=True) as pg:
            yield lambda thread_id: int(pg.execute(sql, {"t": thread_id}).fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize("durability", ["exit", "async"])
async def test_durability_sets_how_many_checkpoints_a_turn_writes(durable_url: str, durability: str) -> None:
    """exit (the default): one checkpoint per turn, at its end; async: one after every step. Either way the
    session's state after each turn is the same, and a restarted engine continues it."""
    async with open_engine(durable_url, durability=durability) as engine:
        session = await engine.create_session("veneo")
        for question, _ in CHAT[:3]:
            await engine.run_turn(session, user(question))
        history = await engine.history(session, limit=100)
    async with open_engine(durable_url, durability=durability) as engine:
        state = await engine.run_turn(session, user(CHAT[3][0]))
    assert human_texts(state["messages"]) == [q for q, _ in CHAT[:4]]
    assert history[0]["next"] == []  # the newest checkpoint ends the last turn
    if durability == "exit":
        assert len(history) == 3
    else:
        assert len(history) > 3 * 3  # input, then each node of the turn


async def test_long_chat_costs_the_same_per_turn(durable_url: str) -> None:
    """200 turns on one thread: bytes written per turn stay flat and the transcript keeps all 400 messages
    (with retention keeping everything; test_retention.py covers what the default retention removes)."""
    turns = 200
    async with open_engine(durable_url) as engine:
        veneo = engine.bundles.tenants["veneo"]
        keep_all = RetentionSettings(keep_checkpoints=100000, archive_messages=None)
        engine.bundles.tenants["veneo"] = veneo.model_copy(update={"retention": keep_all})
        session = await engine.create_session("veneo")
        per_turn: list[int] = []
        questions = []
        with thread_bytes(durable_url) as stored_bytes:
            written = stored_bytes(session.thread_id)
            for i in range(turns):
                question = f"{CHAT[i % len(CHAT)][0]} (turn {i + 1})"
                questions.append(question)
                await engine.run_turn(session, user(question))
                total = stored_bytes(session.thread_id)
                per_turn.append(total - written)
                written = total

        state = await engine.state(session)
        assert len(state["messages"]) <= CHAT_MAX_MESSAGES
        transcript = await engine.transcript(session)
        assert len(transcript) == 2 * turns
        assert human_texts(transcript) == questions
        assert [type(m) for m in transcript] == [HumanMessage, AIMessage] * turns

    # The memory keeper trims every 5th turn (16 -> 8 messages), so single turns differ; compare averages over
    # 10 turns, each window holding two trimming turns: turns 6-15 against turns 191-200.
    early = sum(per_turn[5:15]) / 10
    late = sum(per_turn[turns - 10 :]) / 10
    print(f"bytes written per turn: turns 6-15 avg {early:.0f}, turns 191-200 avg {late:.0f}, x{late / early:.2f}")
    assert late <= 1.5 * early, (
        f"turn ~200 writes {late:.0f} bytes per turn, turn ~10 {early:.0f} (x{late / early:.2f})"
    )


# --- 5. bad checkpoint URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["mysql://x", "redis://localhost:6379/0", "teamgraph.db"])
async def test_unsupported_checkpoint_url_names_the_supported_forms(url: str) -> None:
    with pytest.raises(CheckpointURLError) as error:
        async with build_persistence(url):
            pass
    message = str(error.value)
    assert url in message
    for form in ("sqlite:///", "postgresql://", "memory://"):
        assert form in message


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://", "sqlite://teamgraph.db"])
async def test_sqlite_url_without_a_path_is_rejected(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # whatever a wrong parse would create lands here
    # Settings refuses it first (one line at start, naming the setting), and the factory on its own too
    with pytest.raises(ValidationError) as refused:
        async with open_engine(url):
            pass
    assert "checkpoint_url" in str(refused.value) and "sqlite:///" in str(refused.value)
    with pytest.raises(CheckpointURLError) as error:
        async with build_persistence(url):
            pass
    assert "sqlite:///" in str(error.value)
    assert list(tmp_path.iterdir()) == []
