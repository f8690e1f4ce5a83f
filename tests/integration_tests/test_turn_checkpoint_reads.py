"""A turn over the API reads its session's latest checkpoint from the database once: the version check's read
(under the turn lease) is the one the graph's run starts from. Whatever the turn writes or asks for besides is
read as before."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from checkpoints.prefetch import PREFETCHED, PrefetchedCheckpoint, reuse_prefetched
from server.app import create_app
from server.settings import Settings
from tests.conftest import fresh_postgres_schema

VENEO = {"X-API-Key": "tg-veneo-key"}


@pytest.fixture
def latest_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Thread ids of the latest-checkpoint reads that reach the SQLite database."""
    reads: list[str] = []
    original = AsyncSqliteSaver.aget_tuple

    async def counted(self: Any, config: Any) -> Any:
        if not config["configurable"].get("checkpoint_id"):
            reads.append(config["configurable"]["thread_id"])
        return await original(self, config)

    monkeypatch.setattr(AsyncSqliteSaver, "aget_tuple", counted)
    return reads


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path / 'teamgraph.db'}"))  # type: ignore[call-arg]
    with TestClient(app) as c:
        yield c


@pytest.fixture(params=["sqlite", "postgres"])
def any_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app on SQLite and on Postgres (a fresh schema): on Postgres the session's index row is read under the
    turn lock, in the lock's round trip (Engine.lease_turn)."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'teamgraph.db'}"
        else:
            url = stack.enter_context(fresh_postgres_schema("tg_reads"))
        app = create_app(Settings(_env_file=None, checkpoint_url=url))  # type: ignore[call-arg]
        yield stack.enter_context(TestClient(app))


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
def test_a_turn_reads_the_latest_checkpoint_once(client: TestClient, latest_reads: list[str], endpoint: str) -> None:
    thread = client.post("/sessions", headers=VENEO, json={"team": "veneo_chat"}).json()["id"]
    _turn(client, "invoke", thread, "Do you ship abroad?")
    latest_reads.clear()

    _turn(client, endpoint, thread, "And how long does it take?")

    assert len(latest_reads) == 1  # the version check's; the graph's run started from it (it read twice before)
    transcript = client.get(f"/sessions/{thread}", headers=VENEO).json()["transcript"]
    assert [m["content"] for m in transcript if m["role"] == "user"] == [
        "Do you ship abroad?",
        "And how long does it take?",
    ]  # the second turn continued the stored conversation


def test_batch_inputs_on_one_session_each_start_from_the_turn_before(client: TestClient) -> None:
    thread = client.post("/sessions", headers=VENEO, json={"team": "veneo_chat"}).json()["id"]
    _turn(client, "invoke", thread, "first")
    config = {"configurable": {"thread_id": thread}}
    r = client.post(
        "/teams/veneo_chat/batch",
        headers=VENEO,
        json={
            "inputs": [{"messages": [{"role": "user", "content": "second"}]},
                       {"messages": [{"role": "user", "content": "third"}]}],
            "config": [config, config],
        },
    )  # fmt: skip
    assert r.status_code == 200, r.text
    humans = [[m["content"] for m in out["messages"] if m["type"] == "human"] for out in r.json()["output"]]
    assert humans == [["first", "second"], ["first", "second", "third"]]


class _Saver(AsyncSqliteSaver):
    """Counts the reads that reach the database."""

    def __init__(self) -> None:
        self.reads = 0

    async def aget_tuple(self, config: Any) -> Any:
        self.reads += 1
        return ("stored", config["configurable"]["thread_id"])

    async def aput(self, config: Any, *args: Any, **kwargs: Any) -> Any:
        return config

    async def aput_writes(self, config: Any, *args: Any, **kwargs: Any) -> None:
        return None


def _config(thread: str, held: PrefetchedCheckpoint, **extra: Any) -> Any:
    return {"configurable": {"thread_id": thread, PREFETCHED: held, **extra}}


async def test_a_prefetched_checkpoint_answers_one_latest_read_of_its_thread() -> None:
    saver = reuse_prefetched(_Saver())
    assert isinstance(saver, _Saver) and type(saver).__name__ == "_Saver"  # its own class to code that asks
    held = PrefetchedCheckpoint()
    held.keep("t1", "kept")  # type: ignore[arg-type]

    assert await saver.aget_tuple(_config("t2", held)) == ("stored", "t2")  # another thread
    assert await saver.aget_tuple(_config("t1", held, checkpoint_id="c1")) == ("stored", "t1")  # a given one
    assert await saver.aget_tuple(_config("t1", held, checkpoint_ns="sub")) == ("stored", "t1")  # a subgraph's
    assert await saver.aget_tuple({"configurable": {"thread_id": "t1"}}) == ("stored", "t1")  # no prefetch
    assert saver.reads == 4
    assert await saver.aget_tuple(_config("t1", held)) == "kept"
    assert await saver.aget_tuple(_config("t1", held)) == ("stored", "t1")  # once only
    assert saver.reads == 5


async def test_a_prefetched_nothing_is_kept_too_and_a_write_drops_it() -> None:
    saver = reuse_prefetched(_Saver())
    held = PrefetchedCheckpoint()
    held.keep("t1", None)  # a new session: nothing stored yet
    assert await saver.aget_tuple(_config("t1", held)) is None
    assert saver.reads == 0

    for write in (saver.aput, saver.aput_writes):
        held.keep("t1", None)
        await write(_config("t1", held), {}, {})  # type: ignore[operator]
        assert await saver.aget_tuple(_config("t1", held)) == ("stored", "t1")  # read after the write
    assert reuse_prefetched(saver) is saver and type(reuse_prefetched(saver)) is type(saver)  # once


# a session deleted between the config modifier's lookup and the turn's lease: the turn looks the session up
# again under the lease (a lookup handed on from the modifier ran a turn on a session being deleted)


def test_a_session_deleted_between_the_lookup_and_the_lease_is_started_again(any_client: TestClient) -> None:
    """A turn whose session was deleted after the modifier found it and before
    it took the session's lease starts the session anew under its id (it does not write to a session that no
    longer exists in the index)."""
    client = any_client
    engine = client.app.state.engine  # type: ignore[attr-defined]
    thread = "racing-session"
    _turn(client, "invoke", thread, "first")
    session = engine.get_session("veneo", thread)
    acquire = engine.turn_locks.acquire

    async def delete_then_acquire(thread_id: str, *args: Any) -> Any:
        engine.turn_locks.acquire = acquire  # once
        await engine.delete_session(session, actor="test")
        return await acquire(thread_id, *args)

    engine.turn_locks.acquire = delete_then_acquire
    _turn(client, "invoke", thread, "second")

    r = client.get(f"/sessions/{thread}", headers=VENEO)
    assert r.status_code == 200, r.text
    assert [m["content"] for m in r.json()["transcript"] if m["role"] == "user"] == ["second"]


def test_a_turn_waiting_on_a_session_whose_deletion_failed_halfway_is_refused(any_client: TestClient) -> None:
    """The deletion marked the session pending and then could not remove its checkpoints (a statement timeout, a
    dropped connection): a turn that found the session before the deletion must not run on it (with the lookup
    handed on from the modifier it answered 200 and its data was erased by the repeated DELETE)."""
    client = any_client
    engine = client.app.state.engine  # type: ignore[attr-defined]
    thread = "half-deleted"
    _turn(client, "invoke", thread, "first")
    session = engine.get_session("veneo", thread)
    acquire = engine.turn_locks.acquire
    checkpointer = engine.persistence.checkpointer
    remove = checkpointer.adelete_thread

    async def timed_out(*args: Any, **kwargs: Any) -> None:
        raise TimeoutError("canceling statement due to statement timeout")

    async def failed_delete_then_acquire(thread_id: str, *args: Any) -> Any:
        engine.turn_locks.acquire = acquire  # once
        checkpointer.adelete_thread = timed_out
        try:
            with contextlib.suppress(TimeoutError):
                await engine.delete_session(session, actor="test")
        finally:
            checkpointer.adelete_thread = remove
        return await acquire(thread_id, *args)

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


@pytest.mark.parametrize("endpoint", ["invoke", "stream"])
def test_on_postgres_the_lock_round_trip_answers_the_turns_claim_and_version_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    """The config modifier looks the session up (before the lock: its thread id names the lock); the turn's
    claim and the version check's latest-checkpoint read, which must see the database as it is under the lock,
    are answered by the lock's own round trip instead of a second index lookup (a round trip and a worker-thread
    hop) and a checkpoint read. A new session is still created by the claim; the turn continues the stored
    conversation."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    from checkpoints.session_index import PostgresSessionIndex

    latest_reads: list[str] = []
    aget_tuple = AsyncPostgresSaver.aget_tuple

    async def counted_read(self: Any, config: Any) -> Any:
        if not config["configurable"].get("checkpoint_id"):
            latest_reads.append(config["configurable"]["thread_id"])
        return await aget_tuple(self, config)

    monkeypatch.setattr(AsyncPostgresSaver, "aget_tuple", counted_read)
    lookups: list[str] = []
    find = PostgresSessionIndex.find

    def counted(self: PostgresSessionIndex, tenant: str, client_id: str) -> Any:
        lookups.append(client_id)
        return find(self, tenant, client_id)

    monkeypatch.setattr(PostgresSessionIndex, "find", counted)
    with fresh_postgres_schema("tg_reads") as url:
        app = create_app(Settings(_env_file=None, checkpoint_url=url))  # type: ignore[call-arg]
        with TestClient(app) as client:
            _turn(client, "invoke", "pg-new", "Do you ship abroad?")  # created by the turn's claim
            assert client.get("/sessions/pg-new", headers=VENEO).status_code == 200
            lookups.clear()
            latest_reads.clear()

            _turn(client, endpoint, "pg-new", "And how long does it take?")

            assert lookups == ["pg-new"]  # the modifier's (it was two: the modifier's and the claim's)
            assert latest_reads == []  # it was one: the version check's (the graph's run takes that one)
            transcript = client.get("/sessions/pg-new", headers=VENEO).json()["transcript"]
            assert [m["content"] for m in transcript if m["role"] == "user"] == [
                "Do you ship abroad?",
                "And how long does it take?",
            ]
