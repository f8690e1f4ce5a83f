"""A keyed `/stream` whose client goes away mid-turn, against a real `teamgraph serve` (SQLite file and Postgres).

The turn runs on to its end without the client: its state, its Idempotency-Key answer (the chunks) and the
session's lease. The client's retry with the same key gets the stored chunks (200), the model is asked once, the
session holds the turn once, and another turn on the session waits for the detached one (409 `thread_busy` past
TEAMGRAPH_TURN_WAIT_S) instead of running beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import string
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog.testing

from tests.conftest import fresh_postgres_schema, open_engine
from tests.fakes.openai_server import Behaviour, FakeOpenAIServer, Reply, Slow, Structured
from tests.integration_tests.live_server import VENEO_KEY, LiveServer, auth

RESPONDER_S = 2.0  # the responder's reply time: the cut comes while it waits
TURN_WAIT_S = 0.3  # how long a second turn waits for the session before 409 thread_busy


class SlowResponder(FakeOpenAIServer):
    """The responder answers after RESPONDER_S echoing the user's message; the reviewer approves at once.
    Chosen by the request's shape, so concurrent turns get the right behaviour; `asked` counts responder calls."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def _next_behaviour(self, body: dict[str, Any]) -> Behaviour:
        super()._next_behaviour(body)
        if body.get("tools") or body.get("response_format"):
            return Structured({"action": "approve", "category": "ok", "reason": "fine"})
        question = str(body["messages"][-1]["content"])
        self.asked.append(question)
        return Slow(RESPONDER_S, Reply(f"Reply to: {question}"))


@pytest.fixture(scope="module")
def fake() -> Iterator[SlowResponder]:
    with SlowResponder() as server:
        yield server


# durability "sync" stores the turn's first steps before the cut: the key of a cut turn would then be in doubt
@pytest.fixture(
    scope="module",
    params=[("sqlite", "exit"), ("postgres", "exit"), ("sqlite", "sync"), ("postgres", "sync")],
    ids=lambda p: "-".join(p),
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fake: SlowResponder
) -> Iterator[LiveServer]:
    backend, durability = request.param
    workdir: Path = tmp_path_factory.mktemp(f"cut-{backend}-{durability}")
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake.base_url,
        "TEAMGRAPH_TURN_WAIT_S": str(TURN_WAIT_S),
        "TEAMGRAPH_DURABILITY": durability,
    }
    with contextlib.ExitStack() as stack:
        if backend == "postgres":
            env["TEAMGRAPH_CHECKPOINT_URL"] = stack.enter_context(fresh_postgres_schema("tg_cut"))
        yield stack.enter_context(LiveServer(workdir, env=env))


def tag() -> str:
    """A random name for a session and its texts: letters only (the PII rule would redact a run of digits)."""
    return "".join(random.choices(string.ascii_lowercase, k=10))


def body(thread_id: str, text: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": thread_id}},
    }


def data_events(text: str) -> list[Any]:
    """The `data` events of a LangServe SSE body, parsed."""
    found = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = block.split("\n")
        if "event: data" in lines:
            found.append(json.loads("\n".join(ln[len("data:") :].strip() for ln in lines if ln.startswith("data:"))))
    return found


async def cut_after_first_data(client: httpx.AsyncClient, thread_id: str, text: str, key: str) -> Any:
    """Open a keyed /stream, read up to its first `data` event, then close the connection; that event."""
    async with client.stream(
        "POST", "/teams/veneo_chat/stream", json=body(thread_id, text), headers={"Idempotency-Key": key}
    ) as response:
        assert response.status_code == 200, await response.aread()
        seen = ""
        async for piece in response.aiter_text():
            seen += piece.replace("\r\n", "\n")
            events = data_events(seen.rsplit("\n\n", 1)[0]) if "\n\n" in seen else []  # whole events only
            if events:
                return events[0]
    raise AssertionError(f"the stream ended without a data event: {seen!r}")


async def keyed_stream(client: httpx.AsyncClient, thread_id: str, text: str, key: str) -> httpx.Response:
    """The keyed /stream sent again, as a client following Retry-After does while the session is busy."""
    deadline = time.monotonic() + 30
    while True:
        response = await client.post(
            "/teams/veneo_chat/stream", json=body(thread_id, text), headers={"Idempotency-Key": key}
        )
        if response.status_code != 409 or response.json()["error"]["code"] != "thread_busy":
            return response
        assert time.monotonic() < deadline, "the session stayed busy"
        await asyncio.sleep(0.2)


async def transcript(client: httpx.AsyncClient, thread_id: str) -> list[tuple[str, str]]:
    response = await client.get(f"/sessions/{thread_id}")
    assert response.status_code == 200, response.text
    return [(m["role"], m["content"]) for m in response.json()["transcript"]]


def client_for(server: LiveServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=auth(VENEO_KEY), timeout=httpx.Timeout(60.0))


async def test_a_keyed_stream_cut_mid_turn_finishes_and_its_retry_gets_the_stored_chunks(
    server: LiveServer, fake: SlowResponder
) -> None:
    thread_id, key = f"cut-{tag()}", f"k-{uuid.uuid4()}"
    text = f"How long does shipping take? ({thread_id})"
    async with client_for(server) as client:
        first = await cut_after_first_data(client, thread_id, text, key)  # the responder is still waiting
        # nobody is listening, and the turn is stored all the same
        turn = [("user", text), ("assistant", f"Reply to: {text}")]
        deadline = time.monotonic() + 10 * RESPONDER_S
        while (stored := await transcript(client, thread_id)) != turn and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert stored == turn
        retry = await keyed_stream(client, thread_id, text, key)
        assert retry.status_code == 200, retry.text
        chunks = data_events(retry.text)
        assert chunks[0] == first  # the same turn's chunks, from its first on
        replies = [c["safety_reviewer"]["messages"][-1]["content"] for c in chunks if "safety_reviewer" in c]
        assert replies == [f"Reply to: {text}"], chunks
        assert await transcript(client, thread_id) == turn
        # the retry was answered from the store: the model was asked once, by the turn the cut left running
        assert fake.asked.count(text) == 1
        # and once more: the same chunks again
        again = await keyed_stream(client, thread_id, text, key)
        assert data_events(again.text) == chunks


async def test_another_turn_waits_for_a_cut_keyed_stream_that_still_runs(
    server: LiveServer, fake: SlowResponder
) -> None:
    thread_id, key = f"busy-{tag()}", f"k-{uuid.uuid4()}"
    text, other = f"Can I return shoes? ({thread_id})", f"Do gift cards expire? ({thread_id})"
    async with client_for(server) as client:
        await cut_after_first_data(client, thread_id, text, key)
        busy = await client.post("/teams/veneo_chat/invoke", json=body(thread_id, other))
        assert busy.status_code == 409, busy.text
        assert busy.json()["error"]["code"] == "thread_busy"
        retry = await keyed_stream(client, thread_id, text, key)
        assert retry.status_code == 200, retry.text
        assert await transcript(client, thread_id) == [("user", text), ("assistant", f"Reply to: {text}")]
        assert fake.asked.count(other) == 0 and fake.asked.count(text) == 1


async def wait_for_turn(client: httpx.AsyncClient, thread_id: str, turn: list[tuple[str, str]]) -> None:
    deadline = time.monotonic() + 10 * RESPONDER_S
    while (stored := await transcript(client, thread_id)) != turn and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert stored == turn


async def test_a_keyed_invoke_cut_mid_turn_finishes_and_its_retry_gets_the_stored_output(
    server: LiveServer, fake: SlowResponder
) -> None:
    """/invoke needs no task of its own: a client that goes away does not cancel a plain (not streamed) response's
    handler under uvicorn, so the turn and its key's answer are stored as if the client had stayed."""
    thread_id, key = f"cut-invoke-{tag()}", f"k-{uuid.uuid4()}"
    text = f"How do I track my order? ({thread_id})"
    async with client_for(server) as client:
        with pytest.raises(httpx.ReadTimeout):  # httpx closes the connection
            await client.post(
                "/teams/veneo_chat/invoke",
                json=body(thread_id, text),
                headers={"Idempotency-Key": key},
                timeout=RESPONDER_S / 2,
            )
        turn = [("user", text), ("assistant", f"Reply to: {text}")]
        await wait_for_turn(client, thread_id, turn)
        retry = await client.post(
            "/teams/veneo_chat/invoke", json=body(thread_id, text), headers={"Idempotency-Key": key}
        )
        assert retry.status_code == 200, retry.text
        assert retry.json()["output"]["messages"][-1]["content"] == f"Reply to: {text}"
        assert await transcript(client, thread_id) == turn
        assert fake.asked.count(text) == 1


async def test_a_server_stopped_while_a_cut_keyed_stream_runs_finishes_it_first(
    server: LiveServer, fake: SlowResponder
) -> None:
    """SIGTERM: the server waits for the detached turn (Engine.finish_detached) before it closes the database, so
    after a restart the key's retry is answered from the store. (Last in the module: it restarts the server.)"""
    thread_id, key = f"stop-{tag()}", f"k-{uuid.uuid4()}"
    text = f"Which payment methods do you accept? ({thread_id})"
    async with client_for(server) as client:
        first = await cut_after_first_data(client, thread_id, text, key)
    assert server.stop() in (0, -signal.SIGTERM)  # a graceful stop (uvicorn re-raises the signal), not SIGKILL
    assert "detached_turns_cancelled" not in server.stdout
    server.start()
    turn = [("user", text), ("assistant", f"Reply to: {text}")]
    async with client_for(server) as client:
        assert await transcript(client, thread_id) == turn  # stored before the server stopped
        retry = await keyed_stream(client, thread_id, text, key)
        assert retry.status_code == 200, retry.text
        chunks = data_events(retry.text)
        assert chunks[0] == first
        assert await transcript(client, thread_id) == [("user", text), ("assistant", f"Reply to: {text}")]
        assert fake.asked.count(text) == 1


async def test_shutdown_cancels_a_detached_turn_that_outlasts_the_grace(tmp_path: Path) -> None:
    """A detached turn still running after the grace is cancelled (and said so) before the database closes."""
    ended: list[str] = []

    async def turn(seconds: float, name: str) -> None:
        try:
            await asyncio.sleep(seconds)
            ended.append(f"{name} done")
        except asyncio.CancelledError:
            ended.append(f"{name} cancelled")
            raise

    async with open_engine(f"sqlite:///{tmp_path}/tg.db") as engine:
        engine.run_detached(turn(0.05, "short"))
        engine.run_detached(turn(60, "long"))
        with structlog.testing.capture_logs() as logged:
            await engine.finish_detached(grace_s=0.5)
    assert sorted(ended) == ["long cancelled", "short done"]
    assert [e for e in logged if e["event"] == "detached_turns_cancelled"] == [
        {"event": "detached_turns_cancelled", "count": 1, "grace_s": 0.5, "log_level": "warning"}
    ]
