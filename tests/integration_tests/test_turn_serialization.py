"""One turn at a time per thread, over real HTTP against `teamgraph serve` (subprocess, SQLite file).

Overlapping requests on one thread must wait their turn: none lost, none interleaved (the transcript is strictly
user, its reply, user, its reply...). A thread that stays busy longer than TEAMGRAPH_TURN_WAIT_S answers 409
thread_busy with Retry-After and leaves no trace; different threads never wait for each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from checkpoints.factory import build_persistence
from tests.fakes.openai_server import Behaviour, FakeOpenAIServer, Reply, Slow, Structured
from tests.integration_tests.live_server import VENEO_KEY, LiveServer, auth

N = 8
QUESTIONS = [
    "How long does shipping take?",
    "Can I return shoes?",
    "How do I track my order?",
    "Which payment methods do you accept?",
    "Do your sizes run small?",
    "How do I reset my password?",
    "When is customer service open?",
    "Do gift cards expire?",
]
SLOW_S = 1.5  # the slow responder's reply time
TURN_WAIT_S = 0.3  # how long the slow server lets a second turn wait


def body(thread_id: str, text: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": thread_id}},
    }


def distinct(i: int) -> str:
    return f"[{i}] {QUESTIONS[i % len(QUESTIONS)]}"


def client_for(server: LiveServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url,
        headers=auth(VENEO_KEY),
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(max_connections=2 * N, max_keepalive_connections=2 * N),
    )


def sse_events(text: str) -> list[tuple[str, Any]]:
    """(event, data) pairs of a LangServe SSE body."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].strip())
        if name:
            events.append((name, json.loads("\n".join(data)) if data else None))
    return events


async def transcript(client: httpx.AsyncClient, thread_id: str) -> list[dict[str, Any]]:
    try:
        response = await client.get(f"/sessions/{thread_id}")
    except httpx.RemoteProtocolError:
        # a pooled connection idle past the server's keep-alive (TEAMGRAPH_KEEP_ALIVE_S) can be closed
        # by the server just as the GET goes out; an idempotent GET is sent again, as any HTTP client would
        response = await client.get(f"/sessions/{thread_id}")
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["transcript"]
    return messages


def assert_serialized(messages: list[dict[str, Any]], replies: dict[str, str], first_turn: int = 1) -> None:
    """Strictly user, its own reply, user, its own reply...: every message sent is there once, none interleaved.

    `replies` maps each user text to the id of the reply its own request received.
    """
    roles = [m["role"] for m in messages]
    assert roles == ["user", "assistant"] * len(replies), roles
    users, answers = messages[0::2], messages[1::2]
    assert sorted(m["content"] for m in users) == sorted(replies)  # none lost, none twice
    for user, reply in zip(users, answers, strict=True):
        assert reply["id"] == replies[user["content"]], f"{user['content']!r} is followed by another turn's reply"
    # each turn saw every earlier turn: the reviewer's turn counter goes up by one each time
    turns = [m["metadata"]["review"]["turn"] for m in answers]
    assert turns == list(range(first_turn, first_turn + len(replies))), turns


async def invoke_all(
    client: httpx.AsyncClient, thread_id: str, texts: list[str], stagger_s: float = 0.0
) -> dict[str, str]:
    """POST every text to /invoke at once (or `stagger_s` apart, still overlapping); the reply id of each."""

    async def invoke(i: int, text: str) -> httpx.Response:
        await asyncio.sleep(i * stagger_s)
        return await client.post("/teams/veneo_chat/invoke", json=body(thread_id, text))

    responses = await asyncio.gather(*(invoke(i, t) for i, t in enumerate(texts)))
    replies = {}
    for text, response in zip(texts, responses, strict=True):
        assert response.status_code == 200, (text, response.status_code, response.text[:500])
        messages = response.json()["output"]["messages"]
        # the state a request gets back ends with its own turn: its message, then its reply
        assert messages[-2]["type"] == "human" and messages[-2]["content"] == text
        assert messages[-1]["type"] == "ai"
        replies[text] = messages[-1]["id"]
    return replies


# --------------------------------------------------------------------------- one worker, offline


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("turns")) as live:
        yield live


async def test_concurrent_invokes_on_one_thread_run_one_after_another(server: LiveServer) -> None:
    thread_id = f"serial-invoke-{uuid.uuid4()}"
    texts = [distinct(i) for i in range(N)]
    async with client_for(server) as client:
        replies = await invoke_all(client, thread_id, texts)
        messages = await transcript(client, thread_id)

    assert len(messages) == 2 * N
    assert_serialized(messages, replies)


async def test_concurrent_streams_on_one_thread_run_one_after_another(server: LiveServer) -> None:
    thread_id = f"serial-stream-{uuid.uuid4()}"
    texts = [distinct(i) for i in range(N)]

    async def stream(client: httpx.AsyncClient, text: str) -> str:
        response = await client.post("/teams/veneo_chat/stream", json=body(thread_id, text))
        assert response.status_code == 200, (text, response.status_code, response.text[:500])
        events = sse_events(response.text)
        assert [name for name, _ in events if name not in ("data", "metadata")] == ["end"], events
        updates = [data for name, data in events if name == "data"]
        reviewed = [u["safety_reviewer"] for u in updates if "safety_reviewer" in u]
        assert len(reviewed) == 1, updates
        reply = reviewed[0]["messages"][-1]
        assert reply["type"] == "ai"
        return str(reply["id"])

    async with client_for(server) as client:
        ids = await asyncio.gather(*(stream(client, t) for t in texts))
        messages = await transcript(client, thread_id)

    assert len(messages) == 2 * N
    assert_serialized(messages, dict(zip(texts, ids, strict=True)))


# --------------------------------------------------------------------------- a slow model, a short wait


class SlowResponderFake(FakeOpenAIServer):
    """The responder answers after `delay` s echoing the user's message; the reviewer approves at once.

    Chosen by the request's shape rather than a FIFO queue, so concurrent turns get the right behaviour.
    """

    def __init__(self, delay: float = SLOW_S) -> None:
        super().__init__()
        self.delay = delay
        self.asked_from: list[tuple[int, str]] = []  # (client port, the user's message) per responder request

    async def _chat_completions(self, request: Request) -> Response:
        body = await request.json()
        if not (body.get("tools") or body.get("response_format")) and request.client is not None:
            self.asked_from.append((request.client.port, str(body["messages"][-1]["content"])))
        return await super()._chat_completions(request)

    def _next_behaviour(self, body: dict[str, Any]) -> Behaviour:
        super()._next_behaviour(body)  # records the request
        if body.get("tools") or body.get("response_format"):
            return Structured({"action": "approve", "category": "ok", "reason": "fine"})
        question = body["messages"][-1]["content"]
        return Slow(self.delay, Reply(f"Reply to: {question}"))


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with SlowResponderFake() as fake:
        env = {
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": fake.base_url,
            "TEAMGRAPH_TURN_WAIT_S": str(TURN_WAIT_S),
        }
        with LiveServer(tmp_path_factory.mktemp("slow"), env=env) as live:
            yield live


async def test_a_thread_busy_longer_than_the_wait_answers_409_and_keeps_one_turn(slow_server: LiveServer) -> None:
    thread_id = f"busy-{uuid.uuid4()}"
    texts = ["How long does shipping take?", "Can I return shoes?"]
    async with client_for(slow_server) as client:
        responses = await asyncio.gather(
            *(client.post("/teams/veneo_chat/invoke", json=body(thread_id, t)) for t in texts)
        )
        messages = await transcript(client, thread_id)

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409], [(r.status_code, r.text[:300]) for r in responses]
    ok, busy = sorted(responses, key=lambda r: r.status_code)
    assert busy.json()["error"]["code"] == "thread_busy"
    assert int(busy.headers["Retry-After"]) > 0
    winner = texts[[r.status_code for r in responses].index(200)]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", winner),
        ("assistant", f"Reply to: {winner}"),
    ]
    assert ok.json()["output"]["messages"][-1]["content"] == f"Reply to: {winner}"


async def test_a_busy_thread_answers_409_on_stream_too(slow_server: LiveServer) -> None:
    """/stream must refuse a busy thread with the same 409 thread_busy + Retry-After as /invoke."""
    thread_id = f"busy-stream-{uuid.uuid4()}"
    texts = ["How do I track my order?", "Do gift cards expire?"]
    async with client_for(slow_server) as client:
        results = await asyncio.gather(
            *(client.post("/teams/veneo_chat/stream", json=body(thread_id, t)) for t in texts),
            return_exceptions=True,
        )
        messages = await transcript(client, thread_id)

    responses = [r for r in results if isinstance(r, httpx.Response)]
    outcomes = [
        (r.status_code, r.headers.get("Retry-After"), [name for name, _ in sse_events(r.text)])
        if isinstance(r, httpx.Response)
        else repr(r)
        for r in results
    ]
    assert sorted(r.status_code for r in responses) == [200, 409], outcomes
    busy = next(r for r in responses if r.status_code == 409)
    assert busy.json()["error"]["code"] == "thread_busy"
    assert int(busy.headers["Retry-After"]) > 0
    assert [m["role"] for m in messages] == ["user", "assistant"]


@pytest.mark.serial  # compares wall times of turns: alone, not beside other tests
async def test_different_threads_do_not_wait_for_each_other(slow_server: LiveServer) -> None:
    async with client_for(slow_server) as client:

        async def turn(thread_id: str, text: str) -> float:
            started = time.monotonic()
            response = await client.post("/teams/veneo_chat/invoke", json=body(thread_id, text))
            assert response.status_code == 200, response.text[:500]
            assert response.json()["output"]["messages"][-1]["content"] == f"Reply to: {text}"
            return time.monotonic() - started

        single = await turn(f"alone-{uuid.uuid4()}", "How long does shipping take?")
        assert single >= SLOW_S

        started = time.monotonic()
        both = await asyncio.gather(
            turn(f"left-{uuid.uuid4()}", "Can I return shoes?"),
            turn(f"right-{uuid.uuid4()}", "Do gift cards expire?"),
        )
        together = time.monotonic() - started

    assert min(both) >= SLOW_S
    # one after the other would take at least 2 x single; side by side it is about one turn
    assert together < 1.5 * single, (single, together)


# --------------------------------------------------------------------------- two worker processes

WORKER_DELAY_S = 0.2  # long enough that turns overlap across the two processes
# One worker's event loop accepts every connection already waiting, so a burst lands on one process; spaced a
# little (far less than a turn), new connections wake either worker and the turns still all overlap.
STAGGER_S = 0.05


@pytest.fixture(scope="module")
async def two_workers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[LiveServer, SlowResponderFake]]:
    workdir = tmp_path_factory.mktemp("workers")
    # Create the schema first: two workers creating it at once on a fresh file sometimes fail to start
    # ("database is locked" / "duplicate column name"), a start-up race that would hide what is tested here.
    async with build_persistence(f"sqlite:///{workdir / 'tg.db'}"):
        pass
    with SlowResponderFake(delay=WORKER_DELAY_S) as fake:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake.base_url}
        with LiveServer(workdir, env=env, workers=2) as live:
            yield live, fake


async def wait_for_workers(server: LiveServer, count: int, timeout: float = 30.0) -> None:
    """`--workers N`: /healthz may answer before every worker is up; wait for each to log its start-up."""
    deadline = time.monotonic() + timeout
    while server.stdout.count("Application startup complete") < count:
        assert time.monotonic() < deadline, server.stdout[-3000:]
        await asyncio.sleep(0.1)


def connections_to(server: LiveServer, port: int) -> dict[int, int]:
    """{local port: pid} of the server's processes' TCP connections to 127.0.0.1:`port` (their model client's
    pool)."""
    local_port_of = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[3] == "01":  # remote port, ESTABLISHED
            local_port_of[f"socket:[{fields[9]}]"] = int(fields[1].split(":")[1], 16)
    assert server.process is not None
    pids = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != server.process.pid:
                continue
            for fd in (proc / "fd").iterdir():
                if (local := local_port_of.get(os.readlink(fd))) is not None:
                    pids[local] = int(proc.name)
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return pids


async def test_two_worker_processes_still_run_one_turn_at_a_time(
    two_workers: tuple[LiveServer, SlowResponderFake],
) -> None:
    server, fake = two_workers
    await wait_for_workers(server, 2)
    # The kernel hands connections to whichever worker accepts first; on a busy machine one worker can take a
    # whole round. A round counts when turns of its one thread ran in both workers (told apart by the port each
    # worker's model client called from); every round must be serialized either way.
    pids_per_round = []
    for _ in range(5):
        thread_id = f"workers-{uuid.uuid4()}"
        texts = [f"{thread_id[-6:]} {distinct(i)}" for i in range(N)]
        async with client_for(server) as client:
            replies = await invoke_all(client, thread_id, texts, stagger_s=STAGGER_S)
            messages = await transcript(client, thread_id)
        assert_serialized(messages, replies)
        for user, reply in zip(messages[0::2], messages[1::2], strict=True):
            assert reply["content"] == f"Reply to: {user['content']}"
        pid_of = connections_to(server, fake.port)
        pids_per_round.append({pid_of.get(port) for port, text in fake.asked_from if text in texts})
        if len(pids_per_round[-1] - {None}) == 2:
            break
    assert len(pids_per_round[-1] - {None}) == 2, pids_per_round  # one thread's turns ran in both workers


async def test_two_worker_processes_serialize_an_existing_thread(
    two_workers: tuple[LiveServer, SlowResponderFake],
) -> None:
    """As above, with the session created by an earlier turn (isolates the turn lock from session creation)."""
    server, _ = two_workers
    await wait_for_workers(server, 2)
    thread_id = f"workers-existing-{uuid.uuid4()}"
    async with client_for(server) as client:
        first = await invoke_all(client, thread_id, ["Hello"])
        replies = await invoke_all(client, thread_id, [distinct(i) for i in range(N)], stagger_s=STAGGER_S)
        messages = await transcript(client, thread_id)

    assert messages[1]["id"] == first["Hello"]
    assert_serialized(messages[2:], replies, first_turn=2)
