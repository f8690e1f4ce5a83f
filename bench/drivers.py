"""One turn of a team, the same work in every mode: in-process LangGraph, Teamgraph's server, `langgraph dev`.

A *conversation* is a fixed script, so every mode does identical work per turn whatever its speed:

- veneo_chat (tenant veneo): 10 questions on one thread; turn 9 goes past the memory budget (16 messages),
  so each conversation also runs the memory keeper's trim and rolling-summary call once;
- interview (tenant demo, 3 questions): turn 1 sends resume + job description (questions generated), turns 2-4
  answer (each scored by the evaluator; the last also writes the summary).

A new conversation gets a new thread, created outside the timed turn in every mode (POST /sessions,
`threads.create`, `Engine.create_session`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from langchain_core.messages import AIMessageChunk, HumanMessage

REPO = Path(__file__).resolve().parents[1]
KEYS = {"veneo": "tg-veneo-key", "demo": "tg-demo-key"}
TENANT = {"veneo_chat": "veneo", "interview": "demo"}
TEAMS = ("veneo_chat", "interview")

CHAT_SCRIPT = [
    "How long does shipping take?",
    "How do returns work?",
    "What payment methods do you accept?",
    "How can I track my order?",
    "Which size should I pick for running shoes?",
    "How do I reset my password?",
    "When is customer service open?",
    "Do gift cards expire?",
    "Can I change my delivery address after ordering?",
    "Thanks, and what about express shipping?",
]
INTERVIEW_ANSWERS = [
    "At Acme I led the move of our pipelines to Kafka on AWS; as a result lag dropped from 10 minutes to 20 s.",
    "I run Kafka consumer groups and watch lag in Grafana; I once cut rebalances by 80% with static membership.",
    "First I would measure which Airflow tasks fail and why, then fix retries and right-size the workers.",
]
STREAMED_NODE = "primary_responder"  # whose tokens a chat frontend renders (time to first token)


@dataclass(frozen=True)
class TurnSpec:
    text: str
    resume: str | None = None
    job_description: str | None = None


def script(team: str) -> list[TurnSpec]:
    if team == "veneo_chat":
        return [TurnSpec(q) for q in CHAT_SCRIPT]
    first = TurnSpec(
        "Start",
        resume=(REPO / "examples" / "resume.md").read_text(),
        job_description=(REPO / "examples" / "job_description.md").read_text(),
    )
    return [first, *(TurnSpec(a) for a in INTERVIEW_ANSWERS)]


def _extras(spec: TurnSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.resume is not None:
        out["resume"] = spec.resume
    if spec.job_description is not None:
        out["job_description"] = spec.job_description
    return out


@dataclass
class Stream:
    """What a streamed turn reports: time to the first model token (None: no token) and to the end."""

    first_token_s: float | None
    total_s: float


class Driver:
    """A way of running turns. `variant` is one of the driver's VARIANTS (invoke-like or stream-like)."""

    name = "driver"
    VARIANTS: tuple[str, ...] = ()

    async def new_thread(self, team: str) -> str:
        raise NotImplementedError

    async def turn(self, variant: str, team: str, thread: str, spec: TurnSpec) -> dict[str, Any] | None:
        """Run one turn to completion; returns the final state where the variant yields it."""
        raise NotImplementedError

    async def first_token(self, team: str, thread: str, spec: TurnSpec) -> Stream:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    def cpu_s(self) -> float | None:
        """CPU seconds the process(es) doing the work used so far (None: not measured)."""
        return None

    async def lock_wait(self) -> tuple[float, int] | None:
        """(seconds, turns) the server's turns waited for their session's turn lock so far (None: not measured)."""
        return None


# ------------------------------------------------------------------------------------------------ in-process


class InProcess(Driver):
    """The team graphs compiled by the engine with its AsyncSqliteSaver + store: `graph.ainvoke` / `astream`."""

    name = "in-process"
    # the engine's durability (Settings.durability), as the server runs turns; also "ainvoke-async": LangGraph's
    # default, a checkpoint after every step, for the growth experiment
    VARIANTS = ("ainvoke", "astream")

    def __init__(self, engine: Any):
        self.engine = engine
        self.configs: dict[str, Any] = {}

    async def new_thread(self, team: str) -> str:
        session = await self.engine.create_session(TENANT[team], team)
        self.configs[session.thread_id] = self.engine.run_config(session)
        return str(session.thread_id)

    def forget(self, thread: str) -> None:
        self.configs.pop(thread, None)

    def cpu_s(self) -> float | None:
        return time.process_time()  # this process: the graph runs here (only its cells are read)

    @staticmethod
    def _input(spec: TurnSpec) -> dict[str, Any]:
        return {"messages": [HumanMessage(spec.text)], **_extras(spec)}

    async def turn(self, variant: str, team: str, thread: str, spec: TurnSpec) -> dict[str, Any] | None:
        graph = self.engine.graph(team)
        config = self.configs[thread]
        durability = self.engine.durability
        if variant == "ainvoke":
            return dict(await graph.ainvoke(self._input(spec), config, durability=durability))
        if variant == "ainvoke-async":  # a checkpoint after every step (LangGraph's default durability)
            return dict(await graph.ainvoke(self._input(spec), config, durability="async"))
        last = None
        # the graph's default stream mode
        async for chunk in graph.astream(self._input(spec), config, durability=durability):
            last = chunk
        return dict(last) if isinstance(last, dict) else None

    async def first_token(self, team: str, thread: str, spec: TurnSpec) -> Stream:
        graph = self.engine.graph(team)
        t0 = time.perf_counter()
        first = None
        async for chunk, meta in graph.astream(
            self._input(spec), self.configs[thread], stream_mode="messages", durability=self.engine.durability
        ):
            if (
                first is None
                and isinstance(chunk, AIMessageChunk)
                and chunk.content
                and meta.get("langgraph_node") == STREAMED_NODE
            ):
                first = time.perf_counter() - t0
        return Stream(first, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------- Teamgraph server


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream response."""
    event, data = "message", []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:
        yield event, "\n".join(data)


class TeamgraphHTTP(Driver):
    """Teamgraph's server over HTTP: LangServe `/teams/{team}/invoke`, `/stream`, `/stream_events`, with the
    tenant's API key (auth and per-tenant config on), sessions created with POST /sessions."""

    name = "teamgraph"
    VARIANTS = ("invoke", "stream")

    def __init__(self, url: str, server: Any = None):
        self.url = url
        self.server = server  # the ServerProcess behind `url`, for its CPU time
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        self.client = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120.0), limits=limits)

    def cpu_s(self) -> float | None:
        return self.server.cpu_s() if self.server is not None else None

    async def lock_wait(self) -> tuple[float, int] | None:
        """From /metrics (loopback needs no token): teamgraph_turn_queue_wait_seconds, all teams. With several
        workers behind one port this is one worker's view, so only single-worker servers report it."""
        if self.server is None or "--workers" in getattr(self.server, "uvicorn_args", []):
            return None
        r = await self.client.get("/metrics")
        if r.status_code != 200:
            return None
        total, count = 0.0, 0
        for line in r.text.splitlines():
            if line.startswith("teamgraph_turn_queue_wait_seconds_sum{"):
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith("teamgraph_turn_queue_wait_seconds_count{"):
                count += int(float(line.rsplit(" ", 1)[1]))
        return total, count

    @staticmethod
    def headers(team: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEYS[TENANT[team]]}"}

    async def new_thread(self, team: str) -> str:
        for attempt in range(3):  # a kept-alive connection the server just closed: try a fresh one
            try:
                r = await self.client.post("/sessions", json={"team": team}, headers=self.headers(team))
                break
            except (httpx.ReadError, httpx.RemoteProtocolError):
                if attempt == 2:
                    raise
        r.raise_for_status()
        return str(r.json()["id"])

    @staticmethod
    def _body(thread: str, spec: TurnSpec) -> dict[str, Any]:
        return {
            "input": {"messages": [{"type": "human", "content": spec.text}], **_extras(spec)},
            "config": {"configurable": {"thread_id": thread}},
        }

    async def turn(self, variant: str, team: str, thread: str, spec: TurnSpec) -> dict[str, Any] | None:
        if variant == "invoke":
            r = await self.client.post(
                f"/teams/{team}/invoke", json=self._body(thread, spec), headers=self.headers(team)
            )
            if r.status_code != 200:
                raise RuntimeError(f"/invoke {r.status_code}: {r.text[:300]}")
            return dict(r.json()["output"])
        last = None
        async with self.client.stream(
            "POST", f"/teams/{team}/stream", json=self._body(thread, spec), headers=self.headers(team)
        ) as r:
            if r.status_code != 200:
                raise RuntimeError(f"/stream {r.status_code}: {(await r.aread())[:300]!r}")
            async for event, data in sse_events(r):
                if event == "data":
                    last = data
                elif event == "error":
                    raise RuntimeError(f"/stream error: {data[:300]}")
        return json.loads(last) if last else None

    async def first_token(self, team: str, thread: str, spec: TurnSpec, filtered: bool = False) -> Stream:
        """`filtered`: ask LangServe for chat-model events only (`include_types`), as a token-only client can."""
        t0 = time.perf_counter()
        first = None
        body = self._body(thread, spec)
        if filtered:
            body["include_types"] = ["chat_model"]
        async with self.client.stream(
            "POST", f"/teams/{team}/stream_events", json=body, headers=self.headers(team)
        ) as r:
            if r.status_code != 200:
                raise RuntimeError(f"/stream_events {r.status_code}: {(await r.aread())[:300]!r}")
            async for event, data in sse_events(r):
                if event == "error":
                    raise RuntimeError(f"/stream_events error: {data[:300]}")
                if first is None and event == "data" and '"on_chat_model_stream"' in data:
                    payload = json.loads(data)
                    chunk = (payload.get("data") or {}).get("chunk") or {}
                    node = (payload.get("metadata") or {}).get("langgraph_node")
                    if chunk.get("content") and node == STREAMED_NODE:
                        first = time.perf_counter() - t0
        return Stream(first, time.perf_counter() - t0)

    async def aclose(self) -> None:
        await self.client.aclose()


class TeamgraphReplicas(Driver):
    """Several Teamgraph servers on one database (replicas behind a load balancer with session affinity): each new
    session goes to the next replica in turn, and all its turns to that replica."""

    name = "teamgraph-replicas"
    VARIANTS = TeamgraphHTTP.VARIANTS

    def __init__(self, replicas: list[TeamgraphHTTP]):
        self.replicas = replicas
        self.owner: dict[str, TeamgraphHTTP] = {}
        self._next = 0

    async def new_thread(self, team: str) -> str:
        replica = self.replicas[self._next % len(self.replicas)]
        self._next += 1
        thread = await replica.new_thread(team)
        self.owner[thread] = replica
        return thread

    def forget(self, thread: str) -> None:
        self.owner.pop(thread, None)

    async def turn(self, variant: str, team: str, thread: str, spec: TurnSpec) -> dict[str, Any] | None:
        return await self.owner[thread].turn(variant, team, thread, spec)

    def cpu_s(self) -> float | None:
        values = [r.cpu_s() for r in self.replicas]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    async def lock_wait(self) -> tuple[float, int] | None:
        values = [await r.lock_wait() for r in self.replicas]
        if any(v is None for v in values):
            return None
        return sum(v[0] for v in values if v), sum(v[1] for v in values if v)

    async def aclose(self) -> None:
        return None  # the replicas' own drivers are closed by their owner


# ------------------------------------------------------------------------------------------------ langgraph dev


class LangGraphSDK(Driver):
    """`langgraph dev` through the LangGraph SDK: `runs.wait`, `runs.stream` (updates; messages-tuple for tokens)."""

    name = "langgraph-dev"
    VARIANTS = ("wait", "stream")

    def __init__(self, url: str):
        from langgraph_sdk import get_client

        self.clients = {
            tenant: get_client(url=url, headers={"Authorization": f"Bearer {key}"}) for tenant, key in KEYS.items()
        }

    def _client(self, team: str) -> Any:
        return self.clients[TENANT[team]]

    @staticmethod
    def _input(spec: TurnSpec) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": spec.text}], **_extras(spec)}

    async def new_thread(self, team: str) -> str:
        thread = await self._client(team).threads.create()
        return str(thread["thread_id"])

    async def turn(self, variant: str, team: str, thread: str, spec: TurnSpec) -> dict[str, Any] | None:
        client = self._client(team)
        if variant == "wait":
            state = await client.runs.wait(thread, team, input=self._input(spec), raise_error=True)
            return dict(state) if isinstance(state, dict) else None
        last = None
        # "updates": what LangServe's /stream and the graph's own astream() yield for these graphs
        async for part in client.runs.stream(thread, team, input=self._input(spec), stream_mode="updates"):
            if part.event == "error":
                raise RuntimeError(f"runs.stream error: {str(part.data)[:300]}")
            if part.event == "updates":
                last = part.data
        return dict(last) if isinstance(last, dict) else None

    async def first_token(self, team: str, thread: str, spec: TurnSpec) -> Stream:
        t0 = time.perf_counter()
        first = None
        async for part in self._client(team).runs.stream(
            thread, team, input=self._input(spec), stream_mode="messages-tuple"
        ):
            if part.event == "error":
                raise RuntimeError(f"runs.stream error: {str(part.data)[:300]}")
            if first is None and part.event == "messages":
                chunk, meta = part.data
                if chunk.get("content") and (meta or {}).get("langgraph_node") == STREAMED_NODE:
                    first = time.perf_counter() - t0
        return Stream(first, time.perf_counter() - t0)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


def new_id() -> str:
    return str(uuid.uuid4())
