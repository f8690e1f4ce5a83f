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
import sqlite3
import string
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
import structlog.testing

from server.engine import Engine, thread_key
from server.team_routes import CLIENT_ID, IDEMPOTENCY, IdempotentRequest, TeamRunnable
from tests.conftest import fresh_postgres_schema, open_engine
from tests.fakes.openai_server import Behaviour, FakeOpenAIServer, Reply, Slow, Structured
from tests.integration_tests.live_server import VENEO_KEY, LiveServer, auth

# the responder's reply time: the cut comes while it waits (right as the responder is asked: a second turn's 409
# thread_busy comes 0.3 s after that, with a load average of 6 on 2 cores)
RESPONDER_S = 1.25
SETTLE_S = 30.0  # how long a detached turn may take to end, on a loaded machine
POLL_S = 0.05
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


class CutServer(LiveServer):
    """The live server, with what it runs on: its backend, durability and database URL."""

    def __init__(self, workdir: Path, backend: str, durability: str, env: dict[str, str]) -> None:
        super().__init__(workdir, env=env)
        self.backend, self.durability = backend, durability
        self.checkpoint_url = self.env["TEAMGRAPH_CHECKPOINT_URL"]


# durability "sync" stores the turn's first steps before the cut: the key of a cut turn would then be in doubt
ALL = [("sqlite", "exit"), ("postgres", "exit"), ("sqlite", "sync"), ("postgres", "sync")]
# where a test's point does not depend on the pair: one of each backend and each durability (a server each)
TWO = [("sqlite", "exit"), ("postgres", "sync")]


def pair_id(pair: tuple[str, str]) -> str:
    return "-".join(pair)


on_two = pytest.mark.parametrize("server", TWO, indirect=True, ids=pair_id)


@pytest.fixture(scope="module", params=ALL, ids=pair_id)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fake: SlowResponder
) -> Iterator[CutServer]:
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
        yield stack.enter_context(CutServer(workdir, backend, durability, env))


def tag() -> str:
    """A random name for a session and its texts: letters only (the PII rule would redact a run of digits)."""
    return "".join(random.choices(string.ascii_lowercase, k=10))


def body(thread_id: str, text: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": thread_id}},
    }


def sse_events(text: str, event: str) -> list[Any]:
    """The events named `event` (data, error) of a LangServe SSE body, their data parsed."""
    found = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = block.split("\n")
        if f"event: {event}" in lines:
            found.append(json.loads("\n".join(ln[len("data:") :].strip() for ln in lines if ln.startswith("data:"))))
    return found


def data_events(text: str) -> list[Any]:
    return sse_events(text, "data")


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
    deadline = time.monotonic() + SETTLE_S
    while True:
        response = await client.post(
            "/teams/veneo_chat/stream", json=body(thread_id, text), headers={"Idempotency-Key": key}
        )
        if response.status_code != 409 or response.json()["error"]["code"] != "thread_busy":
            return response
        assert time.monotonic() < deadline, "the session stayed busy"
        await asyncio.sleep(POLL_S)


async def transcript(client: httpx.AsyncClient, thread_id: str) -> list[tuple[str, str]]:
    response = await client.get(f"/sessions/{thread_id}")
    assert response.status_code == 200, response.text
    return [(m["role"], m["content"]) for m in response.json()["transcript"]]


async def wait_for_turn(client: httpx.AsyncClient, thread_id: str, turn: list[tuple[str, str]]) -> None:
    deadline = time.monotonic() + SETTLE_S
    while (stored := await transcript(client, thread_id)) != turn and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
    assert stored == turn


def client_for(server: CutServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=auth(VENEO_KEY), timeout=httpx.Timeout(60.0))


async def test_a_keyed_stream_cut_mid_turn_finishes_and_its_retry_gets_the_stored_chunks(
    server: CutServer, fake: SlowResponder
) -> None:
    thread_id, key = f"cut-{tag()}", f"k-{uuid.uuid4()}"
    text = f"How long does shipping take? ({thread_id})"
    async with client_for(server) as client:
        first = await cut_after_first_data(client, thread_id, text, key)  # the responder is still waiting
        # nobody is listening, and the turn is stored all the same
        turn = [("user", text), ("assistant", f"Reply to: {text}")]
        await wait_for_turn(client, thread_id, turn)
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
    server: CutServer, fake: SlowResponder
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


async def cut_events_after_first_data(client: httpx.AsyncClient, thread_id: str, text: str, key: str) -> None:
    """Open a keyed /stream_events (as the web page sends its turns), read its first `data` event, then close."""
    async with client.stream(
        "POST", "/teams/veneo_chat/stream_events", json=body(thread_id, text), headers={"Idempotency-Key": key}
    ) as response:
        assert response.status_code == 200, await response.aread()
        seen = ""
        async for piece in response.aiter_text():
            seen += piece.replace("\r\n", "\n")
            if "\n\n" in seen and data_events(seen.rsplit("\n\n", 1)[0]):
                return
    raise AssertionError(f"the stream ended without a data event: {seen!r}")


@on_two
async def test_a_keyed_stream_events_cut_mid_turn_finishes_and_its_retry_is_told_it_was_stored(
    server: CutServer, fake: SlowResponder
) -> None:
    """The web page's case: its stream is cut (or it gave up waiting) while the turn runs. The turn runs on to its
    end, a resend with the key while it runs waits for the session (409 thread_busy past TEAMGRAPH_TURN_WAIT_S),
    and once it is stored the resend is told so (one `turn_already_stored` event, then `end`); it ran once.
    (Unkeyed, the cut cancelled the turn, and a resend ran it a second time.)"""
    thread_id, key = f"cut-events-{tag()}", f"k-{uuid.uuid4()}"
    text = f"Where is my parcel? ({thread_id})"
    async with client_for(server) as client:
        await cut_events_after_first_data(client, thread_id, text, key)  # the responder is still waiting
        busy = await client.post(
            "/teams/veneo_chat/stream_events", json=body(thread_id, text), headers={"Idempotency-Key": key}
        )
        assert (busy.status_code, busy.json()["error"]["code"]) == (409, "thread_busy"), busy.text
        turn = [("user", text), ("assistant", f"Reply to: {text}")]
        await wait_for_turn(client, thread_id, turn)
        deadline = time.monotonic() + SETTLE_S
        while True:
            retry = await client.post(
                "/teams/veneo_chat/stream_events", json=body(thread_id, text), headers={"Idempotency-Key": key}
            )
            if retry.status_code != 409 or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_S)
        assert retry.status_code == 200, retry.text
        assert [(e["event"], e["name"]) for e in data_events(retry.text)] == [
            ("on_custom_event", "turn_already_stored")
        ]
        assert retry.text.replace("\r\n", "\n").endswith("event: end\n\n"), retry.text
        assert await transcript(client, thread_id) == turn
        assert fake.asked.count(text) == 1


@on_two
async def test_a_keyed_invoke_cut_mid_turn_finishes_and_its_retry_gets_the_stored_output(
    server: CutServer, fake: SlowResponder
) -> None:
    """A regression guard (it passes without the detached stream turns too): /invoke needs no task of its own, as a
    client that goes away does not cancel a plain (not streamed) response's handler under uvicorn, so the turn and
    its key's answer are stored as if the client had stayed. Should a change of uvicorn, Starlette or LangServe
    start cancelling it, this fails."""
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


@contextlib.contextmanager
def checkpoints_refused(server: CutServer, thread_id: str) -> Iterator[None]:
    """A trigger in the server's own database that refuses every new checkpoint of one session (a real storage
    error, under the turn's feet): the turn fails when it next stores its state."""
    key = thread_key("veneo", thread_id)  # the checkpoints' thread key (client ids are per tenant)
    name = f"refuse_{tag()}"
    if server.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(server.db, timeout=30, isolation_level=None)) as db:
            db.execute(
                f"CREATE TRIGGER {name} BEFORE INSERT ON checkpoints WHEN NEW.thread_id = '{key}' "
                "BEGIN SELECT RAISE(ABORT, 'checkpoint refused by the test'); END"
            )
            try:
                yield
            finally:
                db.execute(f"DROP TRIGGER {name}")
        return
    import psycopg

    with psycopg.connect(server.checkpoint_url, autocommit=True) as db:
        db.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'checkpoint refused by the test'; END $$"
        )
        db.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON checkpoints FOR EACH ROW "
            f"WHEN (NEW.thread_id = '{key}') EXECUTE FUNCTION {name}()"
        )
        try:
            yield
        finally:
            db.execute(f"DROP TRIGGER {name} ON checkpoints")
            db.execute(f"DROP FUNCTION {name}()")


async def log_line(server: CutServer, event: str, thread_id: str) -> dict[str, Any]:
    """The server's JSON log line `event` about the session `thread_id`, once it is written."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        for line in server.stdout.splitlines():
            if f'"{event}"' in line and thread_id in line:
                found: dict[str, Any] = json.loads(line)
                if found.get("event") == event:
                    return found
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"no {event} line for {thread_id}:\n{server.stdout[-4000:]}")


async def turns_in_flight(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    lines = [ln for ln in text.splitlines() if ln.startswith('teamgraph_tenant_turns_in_flight{tenant="veneo"}')]
    assert len(lines) == 1, text
    return float(lines[0].rsplit(" ", 1)[1])


@on_two
async def test_a_cut_keyed_stream_whose_turn_then_fails_is_logged_releases_the_session_and_settles_its_key(
    server: CutServer, fake: SlowResponder
) -> None:
    """Nobody listens when the turn fails: the failure is logged (naming the session, its team and tenant, with
    the traceback), the lease is released, and the key follows the rule for a failed keyed turn. With durability
    exit nothing was stored, so the retry runs the turn; with sync its first steps were, so the retry is refused
    as in doubt (409 idempotent_turn_outcome_unknown)."""
    thread_id, key = f"fail-{tag()}", f"k-{uuid.uuid4()}"
    text = f"Do you ship abroad? ({thread_id})"
    async with client_for(server) as client:
        await cut_after_first_data(client, thread_id, text, key)  # the responder is still waiting
        with checkpoints_refused(server, thread_id):
            failed = await log_line(server, "detached_turn_failed", thread_id)
        assert (failed["thread_id"], failed["team"], failed["tenant"]) == (thread_id, "veneo_chat", "veneo")
        assert failed["level"] == "warning" and failed["request_id"] and failed["error"], failed
        assert "checkpoint refused by the test" in failed["exception"], failed  # the traceback, with the cause
        assert await turns_in_flight(client) == 0  # the tenant's slot was given back
        retry = await keyed_stream(client, thread_id, text, key)  # the session's lock too (else: thread_busy)
        if server.durability == "exit":
            assert retry.status_code == 200, retry.text
            assert await transcript(client, thread_id) == [("user", text), ("assistant", f"Reply to: {text}")]
            assert fake.asked.count(text) == 2
        else:
            assert retry.status_code == 409, retry.text
            assert retry.json()["error"]["code"] == "idempotent_turn_outcome_unknown"
            assert fake.asked.count(text) == 1
        assert await turns_in_flight(client) == 0


def error_events(text: str) -> list[Any]:
    return sse_events(text, "error")


async def whole_stream(client: httpx.AsyncClient, thread_id: str, headers: dict[str, str]) -> str:
    """A /stream's body as the client receives it, to its end. (After LangServe's `error` event the server closes
    the connection without the chunked body's last chunk, keyed or not: what came until then is the body.)"""
    seen = ""
    with contextlib.suppress(httpx.RemoteProtocolError):
        async with client.stream(
            "POST",
            "/teams/veneo_chat/stream",
            json=body(thread_id, f"Is there a store in Oslo? ({thread_id})"),
            headers=headers,
        ) as response:
            assert response.status_code == 200, await response.aread()
            async for piece in response.aiter_text():
                seen += piece
    return seen


@on_two
async def test_a_keyed_stream_whose_turn_fails_while_its_client_listens_ends_in_langserves_error_event(
    server: CutServer, fake: SlowResponder
) -> None:
    """A regression guard: the error reaches the listening client as an unkeyed stream's does (LangServe's
    `event: error`, after the same data events), and is not logged as a failure nobody received."""
    keyed_id, unkeyed_id = f"err-k-{tag()}", f"err-u-{tag()}"
    async with client_for(server) as client:
        with checkpoints_refused(server, keyed_id), checkpoints_refused(server, unkeyed_id):
            keyed, unkeyed = await asyncio.gather(
                whole_stream(client, keyed_id, {"Idempotency-Key": f"k-{uuid.uuid4()}"}),
                whole_stream(client, unkeyed_id, {}),
            )
    assert error_events(unkeyed) == [{"status_code": 500, "message": "Internal Server Error"}], unkeyed
    assert error_events(keyed) == error_events(unkeyed), keyed
    assert len(data_events(keyed)) == len(data_events(unkeyed)), (keyed, unkeyed)
    await asyncio.sleep(0.5)  # (a log line would be written as the turn's task ends, right after the answer)
    assert keyed_id not in "".join(ln for ln in server.stdout.splitlines() if "detached_turn_failed" in ln)


@on_two
async def test_a_server_stopped_while_a_cut_keyed_stream_runs_finishes_it_first(
    server: CutServer, fake: SlowResponder
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


# --- in the process: a keyed stream's end, however it ends, and the turn's error ---------------------------------


@contextlib.asynccontextmanager
async def keyed_runnable(tmp_path: Path) -> AsyncIterator[tuple[Engine, TeamRunnable]]:
    async with open_engine(f"sqlite:///{tmp_path}/tg.db") as engine:
        yield engine, TeamRunnable(SimpleNamespace(state=SimpleNamespace(engine=engine)), "veneo_chat", None)  # type: ignore[arg-type]


def keyed_config(released: list[str]) -> dict[str, Any]:
    """A keyed /stream request's config as the route's modifier makes it, holding one lease."""

    async def release() -> None:
        released.append("lease")

    request = IdempotentRequest("veneo", "internal-key", "k-1", leases={"internal-key": release})
    return {"configurable": {"thread_id": "internal-key", CLIENT_ID: "s-1", "tenant": "veneo", IDEMPOTENCY: request}}


def a_turn(*steps: Callable[[], Awaitable[Any]]) -> Callable[..., Any]:
    """A stand-in for TeamRunnable._streamed_turn: a first chunk, then `steps`, then a failure."""

    async def turn(*args: Any, **kwargs: Any) -> Any:
        yield {"first": "chunk"}
        for step in steps:
            await step()
        raise RuntimeError("the turn broke")

    return turn


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def failures(logged: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The detached_turn_failed lines: whom they name, and whether they carry the turn's exception."""
    fields = ("thread_id", "team", "tenant", "log_level")
    return [
        {k: e[k] for k in fields} | {"broke": "the turn broke" in str(e["exc_info"])}
        for e in logged
        if e["event"] == "detached_turn_failed"
    ]


FAILURE = {"thread_id": "s-1", "team": "veneo_chat", "tenant": "veneo", "log_level": "warning", "broke": True}


async def test_a_turn_that_fails_while_its_stream_listens_is_logged_if_the_stream_closes_before_it_is_told(
    tmp_path: Path,
) -> None:
    """The turn fails while the stream still listens (its consumer is slow to ask for the next chunk); then the
    stream is closed. Its error never reaches a client: it is logged, once."""
    released: list[str] = []
    async with keyed_runnable(tmp_path) as (engine, runnable):
        runnable._streamed_turn = a_turn()  # type: ignore[method-assign]
        stream = cast(AsyncGenerator[Any, None], runnable.astream({}, keyed_config(released)))  # type: ignore[arg-type]
        with structlog.testing.capture_logs() as logged:
            assert await anext(stream) == {"first": "chunk"}
            await until(lambda: released == ["lease"] and not engine._detached)  # the turn has ended, failed
            await stream.aclose()
    assert failures(logged) == [FAILURE]


async def test_a_keyed_stream_closed_by_its_consumer_stops_listening_at_once(tmp_path: Path) -> None:
    """Closed, not cancelled (its consumer stops iterating), the stream no longer listens from that moment, even
    while something still holds the inner generator: a turn that fails afterwards is logged, not left for a
    stream that is gone."""
    released: list[str] = []
    go_on = asyncio.Event()
    kept: list[Any] = []
    async with keyed_runnable(tmp_path) as (engine, runnable):
        runnable._streamed_turn = a_turn(go_on.wait)  # type: ignore[method-assign]
        detached = runnable._detached

        def keep(*args: Any, **kwargs: Any) -> Any:
            kept.append(detached(*args, **kwargs))  # as a reference cycle would: its finalizer has not run yet
            return kept[-1]

        runnable._detached = keep  # type: ignore[method-assign]
        stream = cast(AsyncGenerator[Any, None], runnable.astream({}, keyed_config(released)))  # type: ignore[arg-type]
        with structlog.testing.capture_logs() as logged:
            assert await anext(stream) == {"first": "chunk"}
            await stream.aclose()
            go_on.set()  # the turn fails after the close
            await until(lambda: released == ["lease"] and not engine._detached)
            await asyncio.sleep(0)
    assert failures(logged) == [FAILURE]
    kept.clear()


async def test_a_turn_that_fails_while_its_stream_listens_is_raised_to_it_and_not_logged(tmp_path: Path) -> None:
    released: list[str] = []
    async with keyed_runnable(tmp_path) as (engine, runnable):
        runnable._streamed_turn = a_turn()  # type: ignore[method-assign]
        with structlog.testing.capture_logs() as logged:
            chunks = []
            with pytest.raises(RuntimeError, match="the turn broke"):
                async for chunk in runnable.astream({}, keyed_config(released)):  # type: ignore[arg-type]
                    chunks.append(chunk)
            await until(lambda: not engine._detached)
    assert chunks == [{"first": "chunk"}] and released == ["lease"]
    assert failures(logged) == []


async def test_shutdown_leaves_a_cancelled_turn_that_does_not_end_and_goes_on(tmp_path: Path) -> None:
    """A detached turn that ignores its cancellation does not hold shutdown up: after a bounded wait it is left
    behind, and logged with the session it ran."""
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60)

    async with open_engine(f"sqlite:///{tmp_path}/tg.db") as engine:
        task = engine.run_detached(stubborn(), thread_id="s-1", team="veneo_chat", tenant="veneo")
        with structlog.testing.capture_logs() as logged:
            started = time.monotonic()
            await asyncio.wait_for(engine.finish_detached(grace_s=0.2, cancel_wait_s=0.3), timeout=5)
            waited = time.monotonic() - started
        stop.set()
        task.cancel()
        await asyncio.wait([task])
    assert 0.5 <= waited < 2
    assert [e for e in logged if e["event"] == "detached_turns_left"] == [
        {
            "event": "detached_turns_left",
            "count": 1,
            "wait_s": 0.3,
            "turns": [{"thread_id": "s-1", "team": "veneo_chat", "tenant": "veneo"}],
            "log_level": "error",
        }
    ]


async def test_a_lease_that_fails_to_release_is_logged_naming_the_turn_and_the_next_is_released(tmp_path: Path) -> None:
    """The warning named no session, team or tenant: nothing to find the lock it may have left behind by."""
    released: list[str] = []

    async def broken() -> None:
        raise OSError("lock connection gone")

    async def release() -> None:
        released.append("slots")

    async def turn(*args: Any, **kwargs: Any) -> Any:
        yield {"first": "chunk"}

    request = IdempotentRequest("veneo", "internal-key", "k-1", leases={"lock": broken, "slots": release})
    config = {"configurable": {"thread_id": "internal-key", CLIENT_ID: "s-1", "tenant": "veneo", IDEMPOTENCY: request}}
    async with keyed_runnable(tmp_path) as (engine, runnable):
        runnable._streamed_turn = turn  # type: ignore[method-assign]
        with structlog.testing.capture_logs() as logged:
            chunks = [chunk async for chunk in runnable.astream({}, config)]  # type: ignore[arg-type]
            await until(lambda: not engine._detached)
    assert chunks == [{"first": "chunk"}] and released == ["slots"]
    warned = [e for e in logged if e["event"] == "turn_lease_release_failed"]
    assert [(e["thread_id"], e["team"], e["tenant"], e["error"]) for e in warned] == [
        ("s-1", "veneo_chat", "veneo", "lock connection gone")
    ]
