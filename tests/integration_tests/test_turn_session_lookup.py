"""A turn whose session is deleted between the config modifier's lookup and the turn's lease: the turn looks the
session up again under the lease (a lookup handed on from the modifier ran a turn on a session being deleted, so
that saving was taken back) and starts it anew."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

VENEO = {"X-API-Key": "tg-veneo-key"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path / 'teamgraph.db'}"))  # type: ignore[call-arg]
    with TestClient(app) as c:
        yield c


def _turn(client: TestClient, endpoint: str, thread: str, text: str) -> Any:
    r = client.post(
        f"/teams/veneo_chat/{endpoint}",
        headers=VENEO,
        json={
            "input": {"messages": [{"role": "user", "content": text}]},
            "config": {"configurable": {"thread_id": thread}},
        },
    )
    assert r.status_code == 200, r.text
    return r


def test_a_session_deleted_between_the_lookup_and_the_lease_is_started_again(client: TestClient) -> None:
    """A turn whose session was deleted after the modifier found it and before
    it took the session's lease starts the session anew under its id (it does not write to a session that no
    longer exists in the index)."""
    engine = client.app.state.engine  # type: ignore[attr-defined]
    thread = "racing-session"
    _turn(client, "invoke", thread, "first")
    session = engine.get_session("veneo", thread)
    acquire = engine.turn_locks.acquire

    async def delete_then_acquire(thread_id: str, team: str = "") -> Any:
        engine.turn_locks.acquire = acquire  # once
        await engine.delete_session(session, actor="test")
        return await acquire(thread_id, team)

    engine.turn_locks.acquire = delete_then_acquire
    _turn(client, "invoke", thread, "second")

    r = client.get(f"/sessions/{thread}", headers=VENEO)
    assert r.status_code == 200, r.text
    assert [m["content"] for m in r.json()["transcript"] if m["role"] == "user"] == ["second"]


def test_a_turn_waiting_on_a_session_whose_deletion_failed_halfway_is_refused(client: TestClient) -> None:
    """The deletion marked the session pending and then could not remove its checkpoints (a statement timeout, a
    dropped connection): a turn that found the session before the deletion must not run on it (with the lookup
    handed on from the modifier it answered 200 and its data was erased by the repeated DELETE)."""
    engine = client.app.state.engine  # type: ignore[attr-defined]
    thread = "half-deleted"
    _turn(client, "invoke", thread, "first")
    session = engine.get_session("veneo", thread)
    acquire = engine.turn_locks.acquire
    checkpointer = engine.persistence.checkpointer
    remove = checkpointer.adelete_thread

    async def timed_out(*args: Any, **kwargs: Any) -> None:
        raise TimeoutError("canceling statement due to statement timeout")

    async def failed_delete_then_acquire(thread_id: str, team: str = "") -> Any:
        engine.turn_locks.acquire = acquire  # once
        checkpointer.adelete_thread = timed_out
        try:
            with contextlib.suppress(TimeoutError):
                await engine.delete_session(session, actor="test")
        finally:
            checkpointer.adelete_thread = remove
        return await acquire(thread_id, team)

    engine.turn_locks.acquire = failed_delete_then_acquire
    r = client.post(
        "/teams/veneo_chat/invoke",
        headers=VENEO,
        json={
            "input": {"messages": [{"role": "user", "content": "second"}]},
            "config": {"configurable": {"thread_id": thread}},
        },
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_deleting", r.text
    assert client.delete(f"/sessions/{thread}", headers=VENEO).status_code == 204  # the repeated DELETE finishes it
    assert client.get(f"/sessions/{thread}", headers=VENEO).status_code == 404
