"""LangServe routes per team at /teams/{team}: auth, tenant config and one-turn-at-a-time per thread."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute
from langchain_core.runnables import ConfigurableFieldSpec, Runnable, RunnableConfig
from langchain_core.runnables.config import get_config_list
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph.state import CompiledStateGraph
from langserve.callbacks import AsyncEventAggregatorCallback
from langserve.server import EndpointName
from pydantic import BaseModel
from starlette.routing import Match

from checkpoints.prefetch import PREFETCHED, PrefetchedCheckpoint
from checkpoints.session_index import SessionRecord, now
from graphs.registry import graph_builder
from personas.loader import Bundles
from personas.resolver import TeamRunConfig
from server.auth import Caller
from server.deps import authenticate, current_caller
from server.engine import Engine, SessionNotFound, log_detached_failure, thread_key, title_hint
from server.errors import ApiError
from server.event_stream import add_stream_events_route
from server.limits import TenantTurnLimiter
from server.observability.logging import log
from server.observability.turn_observer import TurnObserver
from server.request_guard import PARSED_BODY
from server.team_input import (
    check_idempotency_key,
    check_request_shape,
    check_thread_id,
    check_turn_input,
    turn_inputs,
)
from states import interview as interview_state
from states import veneo_chat as veneo_chat_state

ALLOWED_CONFIGURABLE = ("thread_id",)
TENANT_SLOTS = "#tenant-turns"  # key among a request's turn leases; "#" is never part of a thread id
LEASE_HELD = "__turn_lock_held"  # set by the server only; "__" keys never reach trace metadata
# the session's index record as read under the request's lease (Engine.lease_turn), set by the server only
FOUND_UNDER_LEASE = "__session_found_under_lease"
IDEMPOTENCY = "__idempotency"  # the request's IdempotentRequest, set by the server only
IDEMPOTENT_ENDPOINTS = ("invoke", "stream", "stream_events")
_serde = JsonPlusSerializer()


@dataclasses.dataclass
class IdempotentRequest:
    """A turn sent with an Idempotency-Key: where its answer is kept, or the stored answer to send again."""

    tenant: str
    thread_id: str
    key: str
    before_checkpoint: str | None = None  # the session's latest checkpoint when the turn started
    replay: list[Any] | None = None  # the stored output (invoke) or chunks (stream) of the earlier request
    # the request's turn leases (its session's lock, the tenant's turn slots), which the middleware releases when
    # the response ends; a keyed stream takes them over (take_leases), to hold them until its turn has ended
    leases: dict[str, Callable[[], Awaitable[None]]] = dataclasses.field(default_factory=dict)

    def take_leases(self) -> list[Callable[[], Awaitable[None]]]:
        """The request's lease releases, from now on the caller's to call (the middleware no longer does)."""
        taken = list(self.leases.values())
        self.leases.clear()
        return taken

    async def store(self, engine: Engine, output: list[Any]) -> None:
        await asyncio.to_thread(
            engine.sessions.finish_idempotent_turn, self.tenant, self.thread_id, self.key, _serde.dumps_typed(output)
        )

    async def failed(self, engine: Engine) -> None:
        """The turn ended in an error answer. If it left the session as it was, a retry with the key runs it;
        if the session changed (its state was stored before the error), the key stays without an answer, so a
        retry is refused as in doubt rather than run twice."""
        if await _latest_checkpoint(engine, self.thread_id) == self.before_checkpoint:
            await asyncio.to_thread(engine.sessions.forget_idempotent_turn, self.tenant, self.thread_id, self.key)


CLIENT_ID = "__client_thread_id"  # the id the client sent; configurable.thread_id becomes the internal key
# stream_log and the /c/{config_hash}/ variants stay off: fewer ways in to check
ENDPOINTS: list[EndpointName] = [
    "invoke",
    "batch",
    "stream",
    "stream_events",
    "input_schema",
    "output_schema",
    "config_schema",
]


@dataclasses.dataclass
class _Listener:
    """Between a keyed stream and its detached turn (TeamRunnable._detached): whether the stream still listens,
    and the turn's error while the stream is still to raise it."""

    listening: bool = True
    error: Exception | None = None


class TeamRunnable(Runnable[dict[str, Any], dict[str, Any]]):
    """The team's compiled graph as LangServe sees it: a turn holds its thread's lock; schemas are the graph's."""

    def __init__(self, app: FastAPI, team: str, schema_graph: CompiledStateGraph):
        self.app = app
        self.team = team
        self.schema_graph = schema_graph  # schemas only; runs use the engine's graph with its checkpointer
        self.name = f"team.{team}"

    @property
    def engine(self) -> Engine:
        engine: Engine = self.app.state.engine
        return engine

    @property
    def graph(self) -> CompiledStateGraph:
        return self.engine.graph(self.team)

    @property
    def InputType(self) -> Any:
        return self.schema_graph.InputType

    @property
    def OutputType(self) -> Any:
        return self.schema_graph.OutputType

    # LangServe asks for the input schema on every request (to validate the input); the graph builds it from its
    # channels, whatever the config (it only merges the config first), so it is built once per team
    @functools.cached_property
    def _input_schema(self) -> type[BaseModel]:
        return self.schema_graph.get_input_schema()

    @functools.cached_property
    def _output_schema(self) -> type[BaseModel]:
        return self.schema_graph.get_output_schema()

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self._input_schema

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self._output_schema

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return [
            ConfigurableFieldSpec(
                id="thread_id",
                annotation=str,
                name="Thread id",
                description="The session to continue; an id you have not used before starts a new session.",
            )
        ]

    @contextlib.asynccontextmanager
    async def _turn(self, config: RunnableConfig | None, thread_id: str) -> AsyncIterator[None]:
        """Hold the session's turn lock (unless the request already took it) and record a new session."""
        configurable = (config or {}).get("configurable") or {}
        lease_held = bool(configurable.get(LEASE_HELD))
        held = contextlib.nullcontext() if lease_held else self.engine.turn_locks.hold(thread_id, self.team)
        async with held:
            actor = str(((config or {}).get("metadata") or {}).get("key_id", "api"))
            client_id = str(configurable.get(CLIENT_ID) or thread_id)
            found = configurable.get(FOUND_UNDER_LEASE) if lease_held else None
            if isinstance(found, SessionRecord) and found.id == client_id and found.tenant == _tenant(config):
                session = found  # read under this lease, after the lock was taken: what the claim would find
            else:
                session = await self.engine.aclaim_session(client_id, _tenant(config), self.team, actor, thread_id)
            if not lease_held:
                # an older session's state is stored in the current version. Under a request's lease the config
                # modifier did this when it took the lease (a state read per turn: not twice)
                await self.engine.upgrade_session(session)
            yield
            self.engine.check_turn_stored()  # a turn stored in a deleted SQLite file is not acknowledged
            # a Postgres lock lost while the turn ran (its connection dropped) is logged and counted before the
            # answer; the turn stands (docs/architecture.md, "Turn lock keys")
            await self.engine.turn_locks.check_held(thread_id, self.team)

    def _touch_with_closing_audit(
        self, config: RunnableConfig | None, thread_id: str, input: Any
    ) -> TurnObserver | None:
        """The turn's observer, told to mark the session active in the worker thread of its closing audit write
        (after it, when the turn succeeded) instead of a thread hop of its own after the run."""
        callbacks = (config or {}).get("callbacks")
        found = [c for c in callbacks if isinstance(c, TurnObserver)] if isinstance(callbacks, list) else []
        observer = found[0] if found else None
        if observer is not None:
            observer.after_turn = functools.partial(self.engine.sessions.touch, thread_id, title_hint(input))
        return observer

    async def _touched(self, observer: TurnObserver | None, thread_id: str, input: Any) -> None:
        """After a turn and its Idempotency-Key answer: the session is marked active (by the observer's closing
        write, or here when it had none), and a failure to do so fails the request as before."""
        if observer is not None and observer.after_turn_ran:
            if observer.after_turn_error is not None:
                raise observer.after_turn_error
            return
        await self.engine.touch(thread_id, title_hint(input))

    def invoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError("teams run asynchronously; use ainvoke")

    async def ainvoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        config = _without_event_aggregator(config)
        thread_id = _thread_id(config)
        idempotent = _idempotent(config)
        if idempotent is not None and idempotent.replay is not None:
            return idempotent.replay[0]  # the same request was answered before: its answer, not a second turn
        observer = self._touch_with_closing_audit(config, thread_id, input)
        async with self._turn(config, thread_id):
            try:
                with self.engine.trace_scope(_tenant(config)):
                    # in a task of its own (same context, cancelled with the request): each time the run waits
                    # on the database (some 20 times a turn), its resumption then wakes the graph's frames only,
                    # not the request's whole stack of middleware, routing and LangServe frames above this one
                    result = await asyncio.ensure_future(
                        self.graph.ainvoke(input, config, durability=self.engine.durability, **kwargs)
                    )
            except Exception:
                if idempotent is not None:
                    await idempotent.failed(self.engine)
                raise
            if idempotent is not None:
                await idempotent.store(self.engine, [result])
            await self._touched(observer, thread_id, input)
            return result

    async def abatch(
        self,
        inputs: list[dict[str, Any]],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Inputs on different sessions run at once; inputs on one session run one after another, in order
        (the request holds one turn lease per session, so nothing else keeps them apart)."""
        # one shared config carries one turn observer, and an observer follows one turn: each input gets its own
        configs: list[RunnableConfig] = [
            {**each, "callbacks": _fresh_observers(each.get("callbacks"))}
            for each in get_config_list(config, len(inputs))
        ]
        by_session: dict[str, list[int]] = {}
        for i, each in enumerate(configs):
            by_session.setdefault(_thread_id(each), []).append(i)
        outputs: list[Any] = [None] * len(inputs)

        async def run_in_order(indexes: list[int]) -> None:
            for i in indexes:
                try:
                    outputs[i] = await self.ainvoke(inputs[i], configs[i], **kwargs)
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    outputs[i] = exc

        await asyncio.gather(*(run_in_order(indexes) for indexes in by_session.values()))
        return outputs

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        raise NotImplementedError("teams run asynchronously; use astream")

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        config = _without_event_aggregator(config)
        thread_id = _thread_id(config)
        idempotent = _idempotent(config)
        if idempotent is not None and idempotent.replay is not None:
            for chunk in idempotent.replay:
                yield chunk
            return
        turn = self._streamed_turn(input, config, thread_id, idempotent, **kwargs)
        async with contextlib.aclosing(self._client_stream(turn, config, thread_id, idempotent)) as stream:
            async for chunk in stream:
                yield chunk

    async def _client_stream(
        self,
        turn: AsyncGenerator[Any, None],
        config: RunnableConfig | None,
        thread_id: str,
        idempotent: IdempotentRequest | None,
    ) -> AsyncGenerator[Any, None]:
        """What a client of /stream or /stream_events reads of `turn`: without a key, the turn itself, cancelled
        when the client goes away (as any unkeyed stream); with a key, the turn detached, running to its end
        without its client (docs/api.md, "Retrying a turn safely")."""
        if idempotent is None:
            async with contextlib.aclosing(turn):
                async for item in turn:
                    yield item
            return
        configurable = (config or {}).get("configurable") or {}
        detached = self._detached(
            turn,
            idempotent.take_leases(),
            # what names the turn in log lines: the session id the tenant knows, not its internal key
            thread_id=str(configurable.get(CLIENT_ID) or thread_id),
            team=self.team,
            tenant=_tenant(config),
        )
        # closed (not only cancelled) with this stream: it stops listening at once, not when it is collected
        async with contextlib.aclosing(detached):
            async for item in detached:
                yield item

    async def _streamed_turn(
        self, input: Any, config: RunnableConfig | None, thread_id: str, idempotent: IdempotentRequest | None,
        **kwargs: Any,
    ) -> AsyncGenerator[Any, None]:  # fmt: skip
        """The turn's chunks as the graph streams them; with a key, its chunks are kept as the key's answer."""
        chunks: list[Any] = []
        observer = self._touch_with_closing_audit(config, thread_id, input)
        async with self._turn(config, thread_id):
            try:
                with self.engine.trace_scope(_tenant(config)):
                    async for chunk in self.graph.astream(input, config, durability=self.engine.durability, **kwargs):
                        chunks.append(chunk)
                        yield chunk
            except Exception:
                if idempotent is not None:
                    await idempotent.failed(self.engine)
                raise
            if idempotent is not None:
                await idempotent.store(self.engine, chunks)
            await self._touched(observer, thread_id, input)

    async def _detached(
        self, turn: AsyncGenerator[Any, None], releases: list[Callable[[], Awaitable[None]]], **fields: Any
    ) -> AsyncGenerator[Any, None]:
        """The chunks of a keyed turn that runs in a task of its own (Engine.run_detached). A client that goes
        away (the response cancelled, or this generator closed) stops only the sending: the turn runs to its end,
        its answer is stored under the key for the client's retry, and only then are the request's turn leases
        released, so no other turn starts on the session while it runs. The turn's error is raised to the stream
        while it listens, else logged (`detached_turn_failed` with `fields`): never both, never neither."""
        queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
        listener = _Listener()

        async def run() -> None:
            try:
                async with contextlib.aclosing(turn):
                    async for chunk in turn:
                        queue.put_nowait((False, chunk))
            except Exception as exc:
                if not listener.listening:
                    raise  # nobody to answer: the engine logs it (the key was settled by `failed`)
                listener.error = exc  # the stream's to raise, or to log should it go away before it gets there
            finally:
                try:
                    for release in releases:
                        try:
                            await release()
                        except Exception as exc:  # the next lease is released all the same
                            log.warning(
                                "turn_lease_release_failed", **fields, error_type=type(exc).__name__, error=str(exc)
                            )
                finally:
                    queue.put_nowait((True, None))  # the stream, if it still listens, never waits in vain

        task = self.engine.run_detached(run(), **fields)
        told = False
        try:
            while True:
                done, chunk = await queue.get()
                if done:
                    break
                yield chunk
            told = True
        finally:
            listener.listening = False
            if not told and listener.error is not None:
                # the turn failed while the stream listened, and the stream went away before it got the error
                log_detached_failure(listener.error, **fields)
        await asyncio.shield(task)  # ended by now: a turn cancelled at shutdown ends the stream as before
        if listener.error is not None:
            raise listener.error  # to the stream, as an unkeyed turn's error

    async def astream_events(  # type: ignore[override]
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        thread_id = _thread_id(config)
        idempotent = _idempotent(config)
        configurable = (config or {}).get("configurable") or {}
        client_id = str(configurable.get(CLIENT_ID) or thread_id)
        if idempotent is not None and idempotent.replay is not None:
            # the turn sent with this key was stored before: not its events again (each carries the whole state),
            # one event that says so; the client reads the session (docs/api.md, "Retrying a turn safely")
            yield turn_already_stored(client_id, idempotent.key)
            return
        turn = self._events_turn(input, config, thread_id, idempotent, **kwargs)
        async with contextlib.aclosing(self._client_stream(turn, config, thread_id, idempotent)) as stream:
            async for event in stream:
                yield event

    async def _events_turn(
        self, input: Any, config: RunnableConfig | None, thread_id: str, idempotent: IdempotentRequest | None,
        **kwargs: Any,
    ) -> AsyncGenerator[Any, None]:  # fmt: skip
        """The turn's stream events, reviewed nodes' drafts left out; with a key, its answer is kept as stored
        (an empty list: a retry is told the turn was stored, not sent its events again)."""
        hidden = self.engine.unreviewed_nodes(_run(config))
        observer = self._touch_with_closing_audit(config, thread_id, input)
        async with self._turn(config, thread_id):
            try:
                with self.engine.trace_scope(_tenant(config)):
                    async for event in self.graph.astream_events(
                        input, config, durability=self.engine.durability, **kwargs
                    ):
                        node = (event.get("metadata") or {}).get("langgraph_node")
                        if node in hidden and event.get("name") != node:
                            continue  # draft tokens, the reviewer's prompt: not for clients before review
                        yield _without_private(event)
            except Exception:
                if idempotent is not None:
                    await idempotent.failed(self.engine)
                raise
            if idempotent is not None:
                await idempotent.store(self.engine, [])
            await self._touched(observer, thread_id, input)


TURN_ALREADY_STORED = "turn_already_stored"


def turn_already_stored(session_id: str, key: str) -> dict[str, Any]:
    """The one event a keyed /stream_events retry gets when the key's turn was stored: a LangChain custom event."""
    return {
        "event": "on_custom_event",
        "name": TURN_ALREADY_STORED,
        "run_id": "",
        "tags": [],
        "metadata": {},
        "parent_ids": [],
        "data": {"thread_id": session_id, "idempotency_key": key},
    }


def _thread_id(config: RunnableConfig | None) -> str:
    thread_id = ((config or {}).get("configurable") or {}).get("thread_id")
    if not thread_id:  # the modifier guarantees one; this guards direct use
        raise ApiError(
            400, "thread_id_required", "config.configurable.thread_id is required", "config.configurable.thread_id"
        )
    return str(thread_id)


def _without_event_aggregator(config: RunnableConfig | None) -> RunnableConfig | None:
    """The config without LangServe's AsyncEventAggregatorCallback. LangServe adds one to every invoke, batch and
    stream run and reads what it collected only for routes added with `include_callback_events` (ours are not:
    the events would expose the team's internals). Left in, it is a run-wide callback handler that LangChain
    awaits in a task of its own for every event of every runnable inside the graph."""
    callbacks = (config or {}).get("callbacks")
    if not isinstance(callbacks, list) or not any(isinstance(c, AsyncEventAggregatorCallback) for c in callbacks):
        return config
    kept = [c for c in callbacks if not isinstance(c, AsyncEventAggregatorCallback)]
    return {**(config or {}), "callbacks": kept}


def _fresh_observers(callbacks: Any) -> Any:
    """The callbacks with each TurnObserver replaced by an unused copy (same turn context, no recorded runs)."""
    if not isinstance(callbacks, list):
        return callbacks
    return [
        dataclasses.replace(
            c,
            runs={},
            pending_audit=[],
            root=None,
            turn_outcome="ok",
            after_turn=None,
            after_turn_ran=False,
            after_turn_error=None,
        )
        if isinstance(c, TurnObserver)
        else c
        for c in callbacks
    ]


def _idempotent(config: RunnableConfig | None) -> IdempotentRequest | None:
    found: IdempotentRequest | None = ((config or {}).get("configurable") or {}).get(IDEMPOTENCY)
    return found


def _idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key header, checked; None when there is none."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    endpoint = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    if endpoint not in IDEMPOTENT_ENDPOINTS:
        raise ApiError(
            422,
            "validation_error",
            f"Idempotency-Key: not supported on /{endpoint}; send keyed turns to /invoke, /stream or /stream_events",
            "Idempotency-Key",
        )
    return check_idempotency_key(key)


async def _keyed_turn(
    engine: Engine, request: Request, body: Any, session: SessionRecord, key: str
) -> IdempotentRequest:
    """Decide what a keyed turn does, holding the session's turn lease: send the stored answer again, refuse a
    key reused for a different request, or run the turn and keep its answer under the key. Keys are kept under
    the session's internal thread key; messages name the session as its tenant does."""
    tenant, thread_id = session.tenant, session.thread_id
    endpoint = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    sent = body if isinstance(body, dict) else {}
    fingerprint = hashlib.sha256(
        json.dumps([endpoint, sent.get("input"), sent.get("config")], sort_keys=True, default=str).encode()
    ).hexdigest()
    earlier = await asyncio.to_thread(engine.sessions.idempotent_turn, tenant, thread_id, key)
    if earlier is not None and earlier.fingerprint != fingerprint:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"Idempotency-Key: {key!r} was already used on session {session.id!r} for a different request "
            f"(another body or endpoint); use a new key for a new turn",
            "Idempotency-Key",
        )
    latest_id = await _latest_checkpoint(engine, thread_id)
    keyed = IdempotentRequest(tenant, thread_id, key, before_checkpoint=latest_id)
    if earlier is not None:
        if earlier.result is not None and earlier.result_type is not None:
            keyed.replay = _serde.loads_typed((earlier.result_type, earlier.result))
            return keyed
        # no answer stored, and no request holds the lease: the turn ended in an error that changed the session,
        # or the process running it died. If the session moved on since that turn started, it may be stored
        if earlier.before_checkpoint != latest_id:
            raise ApiError(
                409,
                "idempotent_turn_outcome_unknown",
                f"Idempotency-Key: the turn sent with {key!r} ended without an answer (an error, or the server "
                f"stopped) and the session has changed since it started, so it may be stored; read "
                f"GET /sessions/{session.id} before sending it again with a new key",
                "Idempotency-Key",
            )
    await asyncio.to_thread(engine.sessions.start_idempotent_turn, tenant, thread_id, key, fingerprint, latest_id)
    return keyed


async def _latest_checkpoint(engine: Engine, thread_id: str) -> str | None:
    latest = await engine.persistence.checkpointer.aget_tuple(
        {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    )
    return str(latest.config["configurable"]["checkpoint_id"]) if latest else None


def _run(config: RunnableConfig | None) -> TeamRunConfig:
    run: TeamRunConfig = ((config or {}).get("configurable") or {})["team_run_config"]
    return run


# channels no client sees, as each team's state declares them: the chat's unreviewed draft and its input review,
# the interview's answer keys (what the scorer expects)
PRIVATE_KEYS = veneo_chat_state.PRIVATE_CHANNELS | interview_state.PRIVATE_CHANNELS


def _without_private(event: Any) -> Any:
    """The event with any private draft or answer keys removed from its input and output."""
    data = event.get("data")
    if not isinstance(data, dict):
        return event
    cleaned = {
        k: ({kk: vv for kk, vv in v.items() if kk not in PRIVATE_KEYS} if isinstance(v, dict) else v)
        for k, v in data.items()
    }
    return {**event, "data": cleaned}


def _tenant(config: RunnableConfig | None) -> str:
    return str(((config or {}).get("configurable") or {})["tenant"])


def _client_configurables(body: Any) -> list[dict[str, Any]]:
    """Every `configurable` the client sent in the body (one config, or one per batch input)."""
    configs = body.get("config") if isinstance(body, dict) else None
    return [
        c["configurable"]
        for c in (configs if isinstance(configs, list) else [configs])
        if isinstance(c, dict) and isinstance(c.get("configurable"), dict)
    ]


RUN_ENDPOINTS = {"invoke", "batch", "stream", "stream_events"}


async def check_run_request(request: Request) -> None:
    """Before LangServe reads a run request: its config and kwargs have the types LangServe expects (422)."""
    endpoint = request.url.path.rsplit("/", 1)[-1]
    if request.method == "POST" and endpoint in RUN_ENDPOINTS:
        state = request.scope.get("state", {})
        body = state.get(PARSED_BODY)
        if body is None:  # no body, or the guard is not installed: LangServe's own check answers
            return
        check_request_shape(body, endpoint)
        # the endpoint gets this same Request: with the body already parsed (in a worker thread when large),
        # LangServe's `await request.json()` does not parse it again on the event loop
        request._json = body


def make_config_modifier(team: str):
    input_keys: set[str] = set()

    async def modify(config: dict[str, Any], request: Request) -> dict[str, Any]:
        """Authenticate, check the allow-list, resolve the team, check the input and the tenant's turn limits,
        own the thread, and build the run config."""
        engine: Engine = request.app.state.engine
        caller: Caller = authenticate(request)
        await engine.check_storage()
        state = request.scope.setdefault("state", {})
        if PARSED_BODY in state:  # parsed (off the event loop when large) and checked by the RequestGuard
            body = state[PARSED_BODY]
        else:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                body = {}
        for configurable in _client_configurables(body):
            refused = sorted(set(configurable) - set(ALLOWED_CONFIGURABLE))
            if refused:
                raise ApiError(
                    400,
                    "config_key_not_allowed",
                    f"configurable key(s) {', '.join(refused)} cannot be set by clients; "
                    f"allowed: {', '.join(ALLOWED_CONFIGURABLE)}",
                    f"config.configurable.{refused[0]}",
                )
        idempotency_key = _idempotency_key(request)
        run = engine.resolve(caller.tenant, team)  # 403 / 404 for teams the tenant may not use
        thread_id = (config.get("configurable") or {}).get("thread_id")
        if not thread_id:
            raise ApiError(
                400,
                "thread_id_required",
                "config.configurable.thread_id is required: create a session with POST /sessions, "
                "or send a new id to start one",
                "config.configurable.thread_id",
            )
        check_thread_id(thread_id)
        leases = state.setdefault("turn_leases", {})
        if TENANT_SLOTS not in leases:  # once per request (a batch calls this once per config)
            if not input_keys:
                input_keys.update(engine.input_jsonschema(team).get("properties", {}))
            turns = turn_inputs(body, request.url.path.rsplit("/", 1)[-1])
            for field, turn in turns:
                check_turn_input(turn, field, input_keys, run.team.limits)
            limiter: TenantTurnLimiter = request.app.state.turn_limiter
            release = limiter.admit(caller.tenant, engine.bundles.tenants[caller.tenant].limits, len(turns))

            async def release_slots() -> None:
                release()

            leases[TENANT_SLOTS] = release_slots
        # the caller's own session of that name: ids are per tenant, another tenant's `thread_id` is not seen
        session = await engine.find_session(caller.tenant, str(thread_id))
        if session is None:
            # recorded only once the turn runs (TeamRunnable), so a refused request leaves no empty session
            stamp = now()
            key = thread_key(caller.tenant, str(thread_id))
            session = SessionRecord(key, caller.tenant, run.team.id, "", stamp, stamp, str(thread_id))
        elif session.tenant != caller.tenant:
            raise SessionNotFound(str(thread_id))
        elif session.team != team:
            raise ApiError(
                409,
                "session_team_mismatch",
                f"session {thread_id!r} belongs to team {session.team!r}; use /teams/{session.team}",
                "config.configurable.thread_id",
            )
        # take the session's turn lock now, before any response byte: a busy session answers 409 even on
        # /stream; the middleware releases it when the response has ended, however it ends
        prefetched = PrefetchedCheckpoint()
        found_under_lease = None
        if str(thread_id) not in leases:  # batch inputs on one session share its lease and run in order (abatch)
            leases[str(thread_id)], found_under_lease = await engine.lease_turn(session, team, prefetched)
            # an older session is stored in the current state version before the turn (and before an
            # Idempotency-Key notes the session's latest checkpoint, which the upgrade would otherwise move);
            # the latest checkpoint it reads, under the lease, is the one the turn starts from
            await engine.upgrade_session(session, prefetched=prefetched)
        server = engine.run_config(session, run, actor=caller.key_id, observe=True)
        server["configurable"][LEASE_HELD] = True
        server["configurable"][PREFETCHED] = prefetched
        server["configurable"][CLIENT_ID] = session.id
        if found_under_lease is not None:
            server["configurable"][FOUND_UNDER_LEASE] = found_under_lease
        if idempotency_key is not None:
            keyed = await _keyed_turn(engine, request, body, session, idempotency_key)
            keyed.leases = leases  # the request's own dict: what the keyed turn takes, the middleware does not release
            server["configurable"][IDEMPOTENCY] = keyed
        # server values replace whatever the client sent for these keys
        return {**config, **server}

    return modify


def team_enabled(team: str):
    async def check(request: Request) -> None:
        """Every route of a team follows the tenant's team flag, its schema routes too (403 / 404 otherwise)."""
        caller = authenticate(request)
        engine: Engine = request.app.state.engine
        engine.resolver.resolve(caller.tenant, team)  # not engine.resolve: a schema read is no routing decision

    return check


CONFIG_KEYS = ("configurable", "metadata", "tags", "callbacks")


def add_invoke_route(
    app: FastAPI, runnable: TeamRunnable, path: str, handler: Any, checks: list[Callable[[Request], Awaitable[Any]]]
) -> bool:
    """POST {path}/invoke: LangServe's invoke, answered byte for byte as LangServe answers it, for less.

    The request goes through LangServe's own parsing and validation (`APIHandler._get_config_and_input`: the same
    config merging, per-request modifier, input validation and errors), the turn runs as LangServe runs it, and
    the answer is LangServe's InvokeResponse model. What differs: the model is serialized by pydantic-core
    (`model_dump_json`) instead of `jsonable_encoder` + `json.dumps`, which walks the whole team state in Python
    (same bytes; about a quarter of the time), and no AsyncEventAggregatorCallback is attached (its events are only
    read for `include_callback_events`). Registered before LangServe's routes, so it is the route that answers;
    LangServe's documentation route for the path stays in the OpenAPI document.
    `handler`: the APIHandler built from the options LangServe's routes get (`route_options`); with feedback
    tokens or another serializer this route would answer differently, so LangServe's answers (returns False).
    Callback events are refused when the app is built (`check_route_options`).
    `checks`: the team routes' dependencies, awaited in order before anything else, as FastAPI would run them
    (without solving a dependency graph per request for three functions of the request alone)."""
    from langserve.schema import InvokeResponseMetadata
    from langserve.serialization import WellKnownLCSerializer

    if handler._token_feedback_enabled or type(handler._serializer) is not WellKnownLCSerializer:
        return False
    serializer = handler._serializer

    async def invoke(request: Request) -> Response:
        for check in checks:
            await check(request)
        config, input_ = await handler._get_config_and_input(request, "", endpoint="invoke")
        output = await runnable.ainvoke(input_, config=config)
        answer = handler.InvokeResponse(
            output=serializer.dumpd(output),
            metadata=InvokeResponseMetadata(run_id=config["run_id"], feedback_tokens=[]),
        )
        return Response(answer.model_dump_json(by_alias=True), media_type="application/json")

    app.post(f"{path}/invoke", include_in_schema=False)(invoke)
    return True


def route_options(modifier: Any) -> dict[str, Any]:
    """The options of a team's LangServe routes (`add_routes`) that configure its `APIHandler`: the one dict both
    LangServe's routes and the handler behind our invoke and stream_events routes are built from, so those routes
    see any option LangServe's get (and leave the answer to LangServe's when they cannot match it)."""
    return {
        "config_keys": CONFIG_KEYS,
        "per_req_config_modifier": modifier,
        "enable_feedback_endpoint": False,
        "enable_public_trace_link_endpoint": False,
    }


class UnsupportedRouteOption(ValueError):
    """A LangServe route option the team routes cannot serve correctly: refused when the app is built."""


# LangServe options (add_routes / APIHandler) a team route cannot honour, with why; set, the app refuses to build
# rather than serve answers that are silently wrong
UNSUPPORTED_ROUTE_OPTIONS = {
    "include_callback_events": "the turn's observer takes LangServe's event collector out of every run's callbacks "
    "(TeamRunnable._without_event_aggregator), so invoke and batch would answer with no callback events (and "
    "the events would expose the team's internals to clients)",
    "stream_log_name_allow_list": "LangServe's stream and stream_events filter by the runnable's `config` "
    "run name, and TeamRunnable has no `config`: every such request would fail",
}


def check_route_options(options: dict[str, Any]) -> None:
    """Refuse an option of UNSUPPORTED_ROUTE_OPTIONS that is set (None and False are LangServe's defaults; an
    empty allow list is set: it allows nothing)."""
    for name, why in UNSUPPORTED_ROUTE_OPTIONS.items():
        if options.get(name) not in (None, False):
            raise UnsupportedRouteOption(
                f"team routes: the LangServe option {name}={options[name]!r} is not supported: {why}; remove it "
                "from server.team_routes.route_options"
            )


def all_of(checks: list[Callable[[Request], Awaitable[Any]]]) -> Callable[[Request], Awaitable[None]]:
    """One dependency that awaits `checks` in order: what FastAPI does with one dependency each, without solving
    three dependencies per request (LangServe's routes take the team routes' dependencies as they are)."""

    async def check_all(request: Request) -> None:
        for check in checks:
            await check(request)

    return check_all


@functools.cache
def schema_graph(graph_id: str) -> CompiledStateGraph:
    """Graph `graph_id` compiled without checkpointer or store, for its schemas only: the same for every app the
    process builds (compiling it costs a tenth of a second, and the tests build many apps)."""
    return graph_builder(graph_id)(None, None)


def hash_each_model_once() -> None:
    """LangServe hashes a runnable's input and output models (the JSON dump of their JSON schema) for every
    APIHandler it builds: twice per team per app (ours and add_routes'), some 40 ms each. They are the graph's
    models, which LangGraph builds once per process: finished classes whose schema does not change. Each is hashed
    once; the cache holds a model only as long as something else does."""
    from langserve import api_handler

    original = getattr(api_handler, "_schema_json", None)
    if original is None or getattr(original, "hashed_once", False):
        return  # a LangServe without this private function (constraints.txt pins one with it): hashed as it does
    hashes: weakref.WeakKeyDictionary[type[BaseModel], str] = weakref.WeakKeyDictionary()

    def schema_json(model: type[BaseModel]) -> str:
        found = hashes.get(model)
        if found is None:
            found = hashes[model] = original(model)
        return found

    schema_json.hashed_once = True  # type: ignore[attr-defined]
    api_handler._schema_json = schema_json


def add_team_routes(app: FastAPI, bundles: Bundles, playground: bool) -> None:
    from langserve import add_routes
    from langserve.api_handler import APIHandler

    hash_each_model_once()
    for team, bundle in bundles.teams.items():
        runnable = TeamRunnable(app, team, schema_graph(bundle.graph))
        path = f"/teams/{team}"
        modifier = make_config_modifier(team)
        # schemas too: an unauthenticated caller, or a tenant without the team, learns nothing
        checks = [current_caller, team_enabled(team), check_run_request]
        dependencies = [Depends(all_of(checks))]
        options = route_options(modifier)
        check_route_options(options)
        handler = APIHandler(runnable, path=path, **options)  # configured as the one behind LangServe's routes
        add_invoke_route(app, runnable, path, handler, checks)
        add_stream_events_route(app, runnable, path, handler, checks)
        add_routes(
            app,
            runnable,
            path=path,
            dependencies=dependencies,
            enabled_endpoints=[*ENDPOINTS, *(["playground"] if playground else [])],  # type: ignore[list-item]
            **options,
        )
    serve_team_routes_first(app, [f"/teams/{team}/" for team in bundles.teams])


# whether a route matches a path does not depend on the method (it only decides FULL or PARTIAL): one probe
_PROBE_METHODS = ("POST",)


def serve_team_routes_first(app: FastAPI, prefixes: list[str]) -> list[str]:
    """Move the routes that run turns to the front of the app's routes, in their order; returns their paths.

    The router tries routes in order, so a turn request used to be compared with every route registered before it
    (the REST routers, the other teams' routes: some 60 matches, about 550 Python calls per turn). Only routes that
    cannot change what any request gets are moved: undocumented (`include_in_schema=False`, so the OpenAPI
    document, which lists routes in order, stays the same), with a literal path, and only when no route that came
    before it matches that path (with any method: so every request still reaches the route it reached, and a wrong
    method the same 405)."""
    routes = app.router.routes
    moved: list[Any] = []
    for index, route in enumerate(routes):
        path = getattr(route, "path", "")
        if not (
            isinstance(route, APIRoute)
            and not route.include_in_schema
            and any(path.startswith(prefix) for prefix in prefixes)
            and "{" not in path
        ):
            continue
        earlier = [r for r in routes[:index] if all(r is not m for m in moved)]
        scopes: list[dict[str, Any]] = [
            {"type": "http", "path": path, "root_path": "", "method": m, "headers": []} for m in _PROBE_METHODS
        ]
        if all(r.matches(dict(scope))[0] is Match.NONE for r in earlier for scope in scopes):
            moved.append(route)
    routes[:] = [*moved, *(r for r in routes if all(r is not m for m in moved))]
    changed = getattr(app.router, "_mark_routes_changed", None)  # FastAPI's cache of included routers' routes
    if callable(changed):
        changed()
    return [route.path for route in moved]
