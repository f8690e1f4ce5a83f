"""Data integrity through the HTTP API: every answered turn stored exactly once, deletes whole or not at all.

Each test drives the real app (`create_app`) on a SQLite file with offline models, and checks what a client
would: the transcript of `GET /sessions/{id}` and the audit trail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.messages import HumanMessage

from nodes.memory_keeper import read_archive
from server.app import create_app
from server.settings import Settings
from tests.conftest import open_engine

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
