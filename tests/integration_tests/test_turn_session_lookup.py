"""A turn over the API looks its session up in the index once: the config modifier's lookup (before it takes the
turn lease) is handed to the turn, unless a deletion may have run between that lookup and the lease."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from checkpoints.session_index import SqliteSessionIndex
from server.app import create_app
from server.settings import Settings

VENEO = {"X-API-Key": "tg-veneo-key"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path / 'teamgraph.db'}"))  # type: ignore[call-arg]
    with TestClient(app) as c:
        yield c


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Session ids looked up in the index (`find`), in order."""
    found: list[str] = []
    original = SqliteSessionIndex.find

    def counted(self: Any, tenant: str, session_id: str) -> Any:
        found.append(session_id)
        return original(self, tenant, session_id)

    monkeypatch.setattr(SqliteSessionIndex, "find", counted)
    return found


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


@pytest.mark.parametrize("endpoint", ["invoke", "stream"])
def test_a_turn_looks_its_session_up_once(client: TestClient, lookups: list[str], endpoint: str) -> None:
    thread = client.post("/sessions", headers=VENEO, json={"team": "veneo_chat"}).json()["id"]
    _turn(client, "invoke", thread, "Do you ship abroad?")
    lookups.clear()

    _turn(client, endpoint, thread, "And how long does it take?")

    assert lookups == [thread]  # the modifier's; the turn used it (it looked again before)
    transcript = client.get(f"/sessions/{thread}", headers=VENEO).json()["transcript"]
    assert [m["content"] for m in transcript if m["role"] == "user"] == [
        "Do you ship abroad?",
        "And how long does it take?",
    ]


def test_a_session_deleted_between_the_lookup_and_the_lease_is_started_again(client: TestClient) -> None:
    """As before the lookup was shared: a turn whose session was deleted after the modifier found it and before
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
