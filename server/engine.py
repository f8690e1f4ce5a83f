"""The engine: bundles + persistence + compiled teams; creates sessions, runs turns, reads transcripts.

The CLI and the HTTP server both go through it, so run configs are built in exactly one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import anyio
import anyio.lowlevel
import structlog
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability

from checkpoints.audit import AuditEvent, Statement, apply_content_policy, erase_sessions, legacy_user_ref
from checkpoints.factory import CHECKPOINT_SYNC_DEFERRED, Persistence, build_persistence, probe_directory
from checkpoints.prefetch import PrefetchedCheckpoint, reuse_prefetched
from checkpoints.retention import compact_sqlite, prune_checkpoints
from checkpoints.session_index import PostgresSessionIndex, SessionRecord, new_record, now, record_of
from checkpoints.storage import StorageUnavailable, may_have_committed
from checkpoints.turn_lock import ReadUnderLock, TurnLocks
from graphs.registry import GRAPH_MODULES, graph_builder
from nodes.memory_keeper import delete_archive, read_archive_window, trim_archive, whole_transcript
from personas.factory import AgentFactory
from personas.loader import Bundles, load_bundles
from personas.resolver import AgentTeamResolver, TeamResolutionError, TeamRunConfig
from server.observability.logging import log
from server.observability.metrics import Metrics
from server.observability.turn_observer import TurnContext, TurnObserver
from server.settings import Settings
from server.variables import RESERVED_VARIABLES
from server.voice.records import forget_session as forget_voice_items
from states.migrations import (
    METADATA_KEY,
    SessionSchemaTooNew,
    current_version,
    public_channels,
    stored_version,
    upgrade,
)

T = TypeVar("T")
# how long shutdown waits for turns that run on without their client (a cut keyed /stream) before cancelling them
DETACHED_GRACE_S = 30.0
# and then for the cancelled ones to end (a turn stuck in a call that ignores cancellation is left behind, logged)
DETACHED_CANCEL_WAIT_S = 5.0


def log_detached_failure(error: BaseException, **fields: Any) -> None:
    """A turn that ran on without its client ended in an error that no client received: said here, with its
    traceback (the turn's Idempotency-Key was settled as for any failed keyed turn)."""
    log.warning("detached_turn_failed", **fields, exc_info=error)


class SessionNotFound(LookupError):
    """No such session for this tenant (another tenant's session is reported the same way)."""

    status = 404
    code = "session_not_found"

    def __init__(self, thread_id: str):
        super().__init__(f"no session {thread_id!r}")
        self.thread_id = thread_id


class SessionDeleting(Exception):
    """A turn on a session whose deletion started and has not finished (a crash interrupted it)."""

    status = 409
    code = "session_deleting"

    def __init__(self, thread_id: str):
        super().__init__(
            f"session {thread_id!r} is being deleted; repeat DELETE /sessions/{thread_id} to finish it, "
            "then the id can start a new session"
        )
        self.thread_id = thread_id


class CreateKeyReused(ValueError):
    """A POST /sessions whose Idempotency-Key created a session from a different request (nothing is created)."""

    def __init__(self, key: str, session_id: str):
        super().__init__(f"Idempotency-Key {key!r} created session {session_id!r} from a different request")
        self.key, self.session_id = key, session_id


class UserTagConflict(ValueError):
    """Tagging a session with an end user when it is tagged with another one already (nothing changes)."""

    def __init__(self, session_id: str):
        super().__init__(f"session {session_id!r} is tagged with another end user already")
        self.session_id = session_id


class CheckpointNotFound(LookupError):
    """A history cursor that names no checkpoint of this session."""


class DocumentRejected(ValueError):
    """A document that cannot go into this session (wrong team, or the interview already started)."""

    def __init__(self, message: str, field: str, status: int = 422):
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True)
class TurnEvent:
    """What a turn produces, in order: `token`s while a model streams, then each finished `message`."""

    kind: str  # "token" | "message"
    node: str
    text: str
    message: AIMessage | None = None


class Engine:
    def __init__(
        self, bundles: Bundles, persistence: Persistence, agent_factory: AgentFactory, metrics: Metrics | None = None
    ):
        self.bundles = bundles
        self.persistence = persistence
        # a turn's version check reads the session's latest checkpoint; the turn's run takes that read (see
        # upgrade_session) instead of reading it again
        reuse_prefetched(persistence.checkpointer)
        self.sessions = persistence.sessions
        self.audit = persistence.audit
        self.agent_factory = agent_factory
        self.metrics = metrics or Metrics()
        self.resolver = AgentTeamResolver(bundles)
        self._graphs: dict[str, CompiledStateGraph] = {}
        self._input_schemas: dict[str, dict[str, Any]] = {}
        self.turn_locks = TurnLocks(persistence.url)
        self.turn_locks.on_wait = lambda team, waited: self.metrics.queue_wait.labels(team or "unknown").observe(waited)
        self.turn_locks.on_lost = lambda team: self.metrics.turn_locks_lost.labels(team or "unknown").inc()
        self._trace_clients: dict[tuple[bool, bool], Any] = {}
        self.durability: Durability = "exit"  # see Settings.durability; every turn runs with it
        # turns that run on without their client (a keyed /stream, TeamRunnable.astream): held here so they are
        # not garbage-collected, and so that shutdown waits for them (finish_detached); each with the fields that
        # name it in log lines (thread_id, team, tenant)
        self._detached: dict[asyncio.Task[Any], dict[str, Any]] = {}
        if persistence.repair is not None:
            persistence.repair.on_audit_restarted = self._audit_restarted

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        settings: Settings,
        agent_factory: AgentFactory | None = None,
        bundles: Bundles | None = None,
        metrics: Metrics | None = None,
    ) -> AsyncIterator[Engine]:
        """Validate the bundles first (a bad bundle stops start-up), then open the database."""
        bundles = bundles or load_bundles(
            settings.personas_dir, known_graphs=set(GRAPH_MODULES), reserved_variables=RESERVED_VARIABLES
        )
        factory = agent_factory or AgentFactory(
            api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
            base_url=settings.model_base_url,
        )
        async with build_persistence(
            settings.checkpoint_url,
            settings.db_timeout_s,
            settings.db_statement_timeout_s,
            recreate_deleted_file=settings.workers <= 1,
        ) as persistence:
            engine = cls(bundles, persistence, factory, metrics)
            engine.turn_locks.wait_s = settings.turn_wait_s
            engine.turn_locks.connect_timeout_s = settings.db_timeout_s
            engine.turn_locks.statement_timeout_s = settings.db_statement_timeout_s
            engine.turn_locks.keepalive_idle_s = settings.turn_lock_keepalive_idle_s
            engine.turn_locks.keepalive_interval_s = settings.turn_lock_keepalive_interval_s
            engine.turn_locks.keepalive_count = settings.turn_lock_keepalive_count
            engine.turn_locks.tcp_user_timeout_s = settings.turn_lock_tcp_user_timeout_s
            engine.durability = settings.durability
            try:
                await engine.finish_pending_deletions()
                yield engine
            finally:
                await engine.finish_detached(DETACHED_GRACE_S)
                await engine.turn_locks.aclose()

    def run_detached(self, work: Coroutine[Any, Any, T], **fields: Any) -> asyncio.Task[T]:
        """Run `work` in a task of its own, which the request that started it does not cancel when its client
        goes away; shutdown waits for it (`finish_detached`). Nobody awaits the task: `work` raises only an error
        that nobody received (a client still listening is told by other means), and that error is logged here,
        `detached_turn_failed` with `fields` (which name the turn: thread_id, team, tenant)."""
        task = asyncio.create_task(work)
        self._detached[task] = fields
        task.add_done_callback(self._detached_done)
        return task

    def _detached_done(self, task: asyncio.Task[Any]) -> None:
        fields = self._detached.pop(task, {})
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log_detached_failure(error, **fields)

    async def finish_detached(self, grace_s: float, cancel_wait_s: float = DETACHED_CANCEL_WAIT_S) -> None:
        """At shutdown, before the database closes: let detached turns end, for up to `grace_s` seconds; any
        still running then is cancelled (as a process that stops mid-turn: its Idempotency-Key stays without an
        answer) and logged. The cancelled ones get `cancel_wait_s` seconds to end; one still running after that
        (stuck in a call that does not heed cancellation) is left behind, logged `detached_turns_left`, and
        shutdown goes on."""
        if not self._detached:
            return
        _, running = await asyncio.wait(set(self._detached), timeout=grace_s)
        if not running:
            return
        log.warning("detached_turns_cancelled", count=len(running), grace_s=grace_s)
        for task in running:
            task.cancel()
        _, left = await asyncio.wait(running, timeout=cancel_wait_s)
        if left:
            log.error(
                "detached_turns_left",
                count=len(left),
                wait_s=cancel_wait_s,
                turns=[self._detached.get(task, {}) for task in left],
            )

    def unreviewed_nodes(self, run: TeamRunConfig) -> set[str]:
        """Nodes whose inner events carry text the safety reviewer has not passed yet (hidden from streams)."""
        reviewer = run.agents.get("safety_reviewer")
        if reviewer is None or reviewer.safety.stream_drafts:
            return set()
        # the summarizer too: its text gets the reviewer's PII redaction only once it is complete
        return {"primary_responder", "safety_reviewer", "summarizer"}

    def trace_scope(self, tenant: str) -> contextlib.AbstractContextManager[Any]:
        """Where a tenant's bundle hides inputs or outputs from LangSmith, runs use a client that drops them."""
        tracing = self.bundles.tenants[tenant].tracing
        if not (tracing.hide_inputs or tracing.hide_outputs):
            return contextlib.nullcontext()
        from langsmith import Client
        from langsmith.run_helpers import tracing_context

        key = (tracing.hide_inputs, tracing.hide_outputs)
        client = self._trace_clients.get(key)
        if client is None:
            client = self._trace_clients[key] = Client(
                hide_inputs=tracing.hide_inputs, hide_outputs=tracing.hide_outputs
            )
        return tracing_context(client=client)

    def resolve(self, tenant: str, requested: str | None, session: SessionRecord | None = None) -> TeamRunConfig:
        """AgentTeamResolver, with every decision (and refusal) counted per tenant."""
        # a client-sent name is a label only when it is a real team: label values stay bounded
        asked = (requested if requested in self.bundles.teams else "(unknown)") if requested else "(default)"
        try:
            run = self.resolver.resolve(tenant, requested, session.to_dict() if session else None)
        except TeamResolutionError as exc:
            self.metrics.team_resolutions.labels(tenant, asked, f"refused:{exc.code}").inc()
            raise
        self.metrics.team_resolutions.labels(tenant, asked, run.team.id).inc()
        return run

    def record(self, tenant: str, actor: str, event_type: str, session: str | None, payload: dict[str, Any]) -> None:
        """One audit entry, with message text kept as the tenant's policy says; raises AuditWriteError."""
        self.audit.append([self.audit_event(tenant, actor, event_type, session, payload)])

    def audit_event(
        self, tenant: str, actor: str, event_type: str, session: str | None, payload: dict[str, Any]
    ) -> AuditEvent:
        """An audit entry to write, with message text kept as the tenant's policy says."""
        # a tenant since removed from the bundles (its stored sessions deleted or exported): no message text kept
        policy = self.bundles.tenants[tenant].audit.content if tenant in self.bundles.tenants else "none"
        return AuditEvent(tenant, actor, event_type, session, apply_content_policy(payload, policy))

    def observer(self, session: SessionRecord, run: TeamRunConfig, actor: str) -> TurnObserver:
        """The callback handler that logs, measures, traces and audits one turn."""
        context = TurnContext(
            tenant=session.tenant,
            team=session.team,
            thread_id=session.id,  # the id the tenant knows: logs, spans and audit name it
            actor=actor,
            personas={node: p.id for node, p in run.agents.items()},
            models={node: self.agent_factory.model_label(p) for node, p in run.agents.items()},
            audit_policy=self.bundles.tenants[session.tenant].audit.content,
            request_id=structlog.contextvars.get_contextvars().get("request_id"),
        )
        return TurnObserver(context, self.metrics, self.audit)

    def graph_id(self, team: str) -> str:
        """The graph module (graphs/<id>.py) a team runs: its state versions are the graph's."""
        return self.bundles.teams[team].graph if team in self.bundles.teams else team

    def graph(self, team: str) -> CompiledStateGraph:
        """The team's graph compiled with this engine's checkpointer and store (once per team)."""
        if team not in self._graphs:
            builder = graph_builder(self.bundles.teams[team].graph)
            graph = builder(self.persistence.checkpointer, self.persistence.store)
            # the graph's own `team:<graph>` tag is for a graph served alone (langgraph dev); a turn here is
            # tagged with its session's team by run_config, so the engine's copy drops it: one team tag per run
            # (both ended up in every event's and every LangSmith run's tags), and the session's team, not the
            # graph's module, when a bundle's team runs a graph under another name
            config = graph.config or {}
            tags = [t for t in config.get("tags") or [] if not str(t).startswith("team:")]
            self._graphs[team] = graph.copy({"config": {**config, "tags": tags}})
        return self._graphs[team]

    def input_jsonschema(self, team: str) -> dict[str, Any]:
        """The team graph's input JSON schema, built once per team (pydantic builds it anew on every call: about
        60,000 Python calls, which `GET /teams` paid per team and per request). Callers must not modify it."""
        if team not in self._input_schemas:
            self._input_schemas[team] = self.graph(team).get_input_jsonschema()
        return self._input_schemas[team]

    def run_config(
        self, session: SessionRecord, run: TeamRunConfig | None = None, actor: str = "cli", observe: bool = False
    ) -> RunnableConfig:
        """The one place a run config is built: tenant-controlled values come from the bundles only.
        `observe`: a turn, so attach the observer (logs, metrics, spans, audit)."""
        run = run or self.resolver.resolve(session.tenant, session.team, session.to_dict())
        personas = {node: p.id for node, p in run.agents.items()}
        config: RunnableConfig = {
            "configurable": {
                "thread_id": session.thread_id,
                "tenant": session.tenant,
                "team": session.team,
                "team_run_config": run,
                "agent_factory": self.agent_factory,
            },
            "metadata": {
                "tenant": session.tenant,
                "team": session.team,
                "thread_id": session.id,  # traces name the session as its tenant does
                "personas": personas,
                "models": {node: self.agent_factory.model_label(p) for node, p in run.agents.items()},
                "key_id": actor,
                # every checkpoint records the state version its values have (states/migrations.py)
                METADATA_KEY: current_version(self.graph_id(session.team)),
            },
            "tags": [f"team:{session.team}", f"tenant:{session.tenant}"],
            "run_name": f"team.{session.team}",
        }
        if observe:
            config["callbacks"] = [self.observer(session, run, actor)]
            # the observer ends every turn with a durable commit (its closing audit write), so the turn's
            # checkpoints need not wait for the disk on their own (Postgres; checkpoints/factory.py)
            config["configurable"][CHECKPOINT_SYNC_DEFERRED] = True
        return config

    async def create_session(
        self,
        tenant: str,
        team: str | None = None,
        title: str = "",
        actor: str = "cli",
        user_id: str | None = None,
        idempotency: tuple[str, str] | None = None,
    ) -> SessionRecord:
        """`user_id`: the tenant's id for the end user the session is about (`erase_user` finds it by that).
        `idempotency`: the request's Idempotency-Key and a fingerprint of what it asks for (`create_once`)."""
        run = self.resolve(tenant, team)
        # SQLite writes run in a worker thread: on the event loop they could wait on a lock that only the
        # loop can release (the async store commits there), stalling every request
        if idempotency is not None:
            return await asyncio.to_thread(
                self.create_once, idempotency, tenant, run.team.id, team, actor, user_id=user_id, title=title
            )
        record = await asyncio.to_thread(
            self._create, str(uuid.uuid4()), tenant, run.team.id, team, actor, user_id=user_id, title=title
        )
        if record is None:  # a fresh uuid4 taken: never in practice, and nothing was written
            raise RuntimeError("a new session id collided with a stored one")
        return record

    def create_once(
        self, idempotency: tuple[str, str], tenant: str, team: str, requested: str | None, actor: str, **fields: Any
    ) -> SessionRecord:
        """A session created at most once per tenant and Idempotency-Key: the key and the request's fingerprint are
        stored in the new session's row, in its creating transaction, so a create whose answer was lost after the
        commit (a 503, a reset connection) and is sent again finds its session instead of making a second one.
        The same key with a different request: CreateKeyReused, nothing is created. Of several requests with one
        key at once, one inserts the row (the key is unique per tenant) and the others find it."""
        key, fingerprint = idempotency
        for _attempt in range(2):
            found = self.sessions.created_with_key(tenant, key)
            if found is not None:
                break
            created = self._create(
                str(uuid.uuid4()), tenant, team, requested, actor,
                idempotency_key=key, idempotency_fingerprint=fingerprint, **fields,
            )  # fmt: skip
            if created is not None:
                return created
            found = self.sessions.created_with_key(tenant, key)  # another request with the key inserted first
            if found is not None:
                break
            # nothing was written: that session was deleted between the insert and this read (its key is free
            # again), or a fresh uuid4 was taken; the create is tried once more
        else:
            raise StorageUnavailable("a new session could not be stored; send the request again")
        if found.idempotency_fingerprint != fingerprint:
            raise CreateKeyReused(key, found.id)
        return found

    async def create_filled_session(
        self,
        tenant: str,
        team: str | None,
        title: str,
        fill: Callable[[SessionRecord], Awaitable[AuditEvent]],
        actor: str = "cli",
    ) -> SessionRecord:
        """A new session whose data is written before it exists (an import): `fill` writes the thread's checkpoints
        and store items under the record the session will have and returns the audit entry that says what it did;
        then the index row, `session_created`, `team_selected` and that entry are one transaction. The checkpoints
        and the audit log are two stores, so this is as close to all-or-nothing as they allow: until that
        transaction the data belongs to no session (no client can reach it), and when `fill` or the transaction
        fails the data is removed again; only a crash before that removal can leave unreachable data behind."""
        run = self.resolve(tenant, team)
        draft = new_record(str(uuid.uuid4()), tenant, run.team.id, title)
        creating: asyncio.Future[SessionRecord | None] | None = None
        try:
            entry = await fill(draft)
            # shielded: a cancelled caller (Ctrl-C) does not stop the transaction's worker thread, so the cleanup
            # below waits for it and looks at what it did instead of racing it
            creating = asyncio.ensure_future(
                asyncio.to_thread(self._create, draft.thread_id, tenant, run.team.id, team, actor, [entry], title=title)
            )
            record = await asyncio.shield(creating)
        except BaseException as exc:
            # the look and the cleanup run to their end whatever cancellation reaches the caller meanwhile
            try:
                stored = await _settled(
                    asyncio.ensure_future(self._session_after_failed_create(draft.thread_id, creating))
                )
            except StorageUnavailable:
                if isinstance(exc, asyncio.CancelledError):
                    raise exc from None
                raise
            if stored is not None and not isinstance(exc, asyncio.CancelledError):
                # the transaction committed and only its answer was lost (a connection cut after COMMIT was
                # sent): the session and its data stand, as the audit log says
                log.warning("session_import_committed_despite_error", thread_id=draft.thread_id,
                            error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                return stored
            raise
        if record is None:  # a fresh uuid4 taken: never in practice; that thread's data is another session's
            raise RuntimeError("a new session id collided with a stored one")
        return record

    async def _session_after_failed_create(
        self, thread_id: str, creating: asyncio.Future[SessionRecord | None] | None
    ) -> SessionRecord | None:
        """After `fill` or the creating transaction failed: the session if the transaction committed after all
        (its data stays), else None and the thread's data is removed. The upload's rule (`attach_document`): the
        session index is looked at only when the transaction may have committed (`may_have_committed`: its
        connection failed during the exchange, or the caller was cancelled); a transaction that never reached the
        database (no pooled connection, a closed pool) or that the database refused did not commit, and its data
        is removed without a look that would wait on the same faulty database. When the look fails too, neither
        can be claimed: the data is left (unreachable without an index row; removing a committed session's data
        would be worse), logged, and StorageUnavailable raised (503) saying so."""
        if creating is None:  # `fill` failed: no session was created
            await self._remove_unfinished(thread_id)
            return None
        failure = await _write_outcome(creating)
        if failure is None:  # it finished after all (the caller was cancelled meanwhile)
            # None: the id was taken, nothing written; the thread's data is not ours to remove
            return creating.result()
        if isinstance(failure, asyncio.CancelledError) or may_have_committed(failure):
            try:
                stored = await asyncio.to_thread(self.sessions.get, thread_id)
            except Exception as look_exc:
                log.warning("unfinished_session_data_left", thread_id=thread_id,
                            error=f"{type(failure).__name__}: {failure}",
                            look_error=f"{type(look_exc).__name__}: {look_exc}")  # fmt: skip
                raise StorageUnavailable(
                    f"the new session {thread_id} may or may not have been stored (its transaction failed with "
                    f"{type(failure).__name__} and the session index cannot be read); look for it before trying again"
                ) from failure
            if stored is not None:
                return stored
        await self._remove_unfinished(thread_id)
        return None

    async def _remove_unfinished(self, thread_id: str) -> None:
        """The data of a session that was not created; a failure is logged (the data stays, unreachable)."""
        try:
            await self._remove_thread_data(thread_id)
        except Exception as exc:
            log.warning("unfinished_session_data_left", thread_id=thread_id,
                        error=f"{type(exc).__name__}: {exc}")  # fmt: skip

    async def _remove_thread_data(self, thread_id: str) -> None:
        """A thread's checkpoints, archived transcript and voice items (each step idempotent)."""
        await self.persistence.checkpointer.adelete_thread(thread_id)
        await delete_archive(self.persistence.store, thread_id)
        await forget_voice_items(self.persistence.store, thread_id)

    async def erase_user(self, tenant: str, user_id: str, actor: str = "cli") -> dict[str, int]:
        """Erase everything the tenant holds about one end user: every session tagged with `user_id` is deleted
        (checkpoints, transcript archive, voice records, index row), then the audit entries of those sessions and
        of the user's sessions deleted before (an erasure interrupted after its deletions, a DELETE, retention:
        their `session_delete_started` names the user by a keyed hash, `user_ref`) are redacted, keeping the chain
        verifiable (`checkpoints.audit.erase_sessions`); a `user_erased` entry records the erasure with counts and
        the user's `user_ref` only."""
        # a deletion interrupted before (by a fault: an erasure answered 503, a DELETE) is finished first: its
        # pending row does not say whose session it was, so every such deletion of the tenant is finished
        for deletion in await asyncio.to_thread(self.sessions.pending_deletions):
            if deletion.tenant == tenant:
                await self.finish_deletion(tenant, deletion.client_id, actor=actor)
        sessions = await asyncio.to_thread(self.sessions.of_user, tenant, user_id)
        for session in sessions:
            await self.delete_session(session, actor=actor)
        redacted = await asyncio.to_thread(
            erase_sessions, self.audit, tenant, [s.id for s in sessions], actor,
            self.audit.user_ref(tenant, user_id), legacy_user_ref(tenant, user_id),
        )  # fmt: skip
        return {"sessions": len(sessions), "audit_entries_redacted": redacted}

    def _create(
        self,
        thread_id: str,
        tenant: str,
        team: str,
        requested: str | None,
        actor: str,
        also: Sequence[AuditEvent] = (),
        **fields: Any,
    ) -> SessionRecord | None:
        """Put a new session on record: its index row and its `session_created` and `team_selected` entries are one
        transaction (`AuditLog.append_if`), so a session exists exactly when its creation is on record, whatever
        fails or crashes in between. None when the id (or the tenant's client id) is taken: nothing was written."""
        change, record = self.sessions.create_change(thread_id, tenant, team, **fields)
        events = [
            AuditEvent(tenant, actor, "session_created", record.id, {"team": team, "title": record.title}),
            AuditEvent(tenant, actor, "team_selected", record.id, {"requested": requested, "team": team}),
            *also,
        ]
        if self.audit.append_if(change, events) is None:
            return None
        self.metrics.sessions_created.labels(tenant, team).inc()
        return record

    def claim_session(
        self, client_id: str, tenant: str, team: str, actor: str = "cli", thread_id: str | None = None
    ) -> SessionRecord:
        """The caller's session named `client_id` for a turn: created when new (under `thread_id`, default
        thread_key(tenant, client_id)). Client ids are per tenant: another tenant's session of the same name is
        neither found nor disturbed."""
        record = self.sessions.find(tenant, client_id)
        if record is None:
            if self.sessions.pending_deletion(tenant, client_id) is not None:
                raise SessionDeleting(client_id)  # an interrupted delete: the id is not free until it has finished
            key = thread_id or thread_key(tenant, client_id)
            created = self._create(key, tenant, team, team, actor, client_id=client_id)
            if created is not None:
                return created
            record = self.sessions.find(tenant, client_id)  # another request created it first: use that one
            if record is None:
                if self.sessions.pending_deletion(tenant, client_id) is not None:
                    # a DELETE began after the check above: the insert saw its pending row and wrote nothing
                    raise SessionDeleting(client_id)
                raise SessionNotFound(client_id)  # the thread id is taken by another client id (or the row went)
        if record.tenant != tenant:  # find filters by tenant; kept as a second line of defence
            raise SessionNotFound(client_id)
        return record

    async def aclaim_session(
        self, client_id: str, tenant: str, team: str, actor: str = "cli", thread_id: str | None = None
    ) -> SessionRecord:
        """`claim_session` for request handlers. A session that exists (every turn after the first) is one index
        read, on the event loop for SQLite as `_read_index` does; only a new session (a write, and an audit append)
        takes the worker-thread hop."""
        if not self.sessions.network:  # Postgres: one hop does the read and, for a new session, the write
            record = self.sessions.find(tenant, client_id)
            if record is not None and record.tenant == tenant:
                return record
        return await asyncio.to_thread(self.claim_session, client_id, tenant, team, actor, thread_id)

    async def lease_turn(
        self, session: SessionRecord, team: str, prefetched: PrefetchedCheckpoint | None = None
    ) -> tuple[Callable[[], Awaitable[None]], SessionRecord | None]:
        """Take the session's turn lock for a request (its release is returned) and the session's index record as
        it is under the lock, or None: no such row, or not read. On Postgres the row, and the session's latest
        checkpoint for the version check (`upgrade_session`, into `prefetched`), are read on the lock's
        connection in the lock's own round trip (ReadUnderLock): the turn's claim (`aclaim_session`, a round trip
        and a worker-thread hop) and the version check's read (a round trip) are then answered without asking.
        Elsewhere nothing is read here."""
        reads: list[ReadUnderLock] = []
        saver = self.persistence.checkpointer
        if isinstance(self.sessions, PostgresSessionIndex):
            reads.append(ReadUnderLock(PostgresSessionIndex.FIND_SQL, [session.tenant, session.id]))
            if prefetched is not None and hasattr(saver, "latest_query"):
                sql, params = saver.latest_query(session.thread_id)
                reads.append(ReadUnderLock(sql, params, binary=True))
        release = await self.turn_locks.acquire(session.thread_id, team, reads)
        try:
            rows = reads[0].rows if reads else None
            found = record_of(rows[0]) if rows else None
            if len(reads) > 1 and prefetched is not None and reads[1].rows is not None:
                usable, latest = await saver.latest_from_row(reads[1].rows[0] if reads[1].rows else None)  # type: ignore[attr-defined]
                if usable:
                    prefetched.read_under_lease(session.thread_id, latest)
        except BaseException:
            await release()
            raise
        return release, found if found is not None and found.tenant == session.tenant else None

    async def touch(self, thread_id: str, title_hint_text: str = "") -> None:
        """Mark the session active (and title it from its first message), off the event loop."""
        await asyncio.to_thread(self.sessions.touch, thread_id, title_hint_text)

    async def arecord(
        self, tenant: str, actor: str, event_type: str, session: str | None, payload: dict[str, Any]
    ) -> None:
        await asyncio.to_thread(self.record, tenant, actor, event_type, session, payload)

    async def check_storage(self) -> None:
        """Before a request uses storage: never on a SQLite file deleted under the server (see
        checkpoints/self_repair.py); one stat, nothing for Postgres."""
        if self.persistence.repair is not None:
            await self.persistence.repair.before_request()

    def check_turn_stored(self) -> None:
        """Before a turn is acknowledged: StorageUnavailable when its SQLite file was deleted while it ran."""
        if self.persistence.repair is not None:
            self.persistence.repair.after_turn()

    async def repair_storage(self, exc: BaseException) -> bool:
        """After a storage fault: recreate tables the database lost while the server ran (see
        checkpoints/self_repair.py); True when it repaired. A failed repair is logged; the next fault retries."""
        if self.persistence.repair is None:
            return False
        try:
            return await self.persistence.repair.after_fault(exc)
        except Exception as repair_exc:
            log.warning("storage_repair_failed", error_type=type(repair_exc).__name__, error=str(repair_exc).strip())
            return False

    async def _audit_restarted(self, cause: str) -> None:
        # the audit tables were recreated empty: each tenant's new chain opens by saying why it starts over
        for tenant in self.bundles.tenants:
            why = {"reason": "the audit tables were missing and were recreated empty", "cause": cause}
            await self.arecord(tenant, "teamgraph", "audit_restarted", None, why)

    def change_session(
        self, session: SessionRecord, actor: str = "cli", *, title: str | None = None, user_id: str | None = None
    ) -> SessionRecord:
        """Rename a session and/or tag it with its end user (one a team route started, say), so that `erase_user`
        finds it; all or nothing. The index changes and their audit entries (`session_renamed`,
        `session_user_tagged` with the id's keyed hash only) are one transaction: an entry exists exactly when its
        change stood, and a change that fails (a storage fault, a refused audit write) leaves the session as it
        was. A session is tagged once: UserTagConflict when it has another id (nothing changes); the same id
        again is no change. Returns the record after."""
        while True:
            changes: list[Statement] = []
            events: list[AuditEvent] = []
            if user_id is not None and session.user_id != user_id:
                if session.user_id is not None:
                    raise UserTagConflict(session.id)
                changes += self.sessions.tag_user_change(session.thread_id, user_id)
                events.append(self.audit_event(session.tenant, actor, "session_user_tagged", session.id,
                                               {"user_ref": self.audit.user_ref(session.tenant, user_id)}))  # fmt: skip
            after = session
            if user_id is not None and session.user_id != user_id:
                after = replace(after, user_id=user_id)
            if title is not None:
                after = replace(after, title=title, updated_at=now())
                changes += self.sessions.rename_change(session.thread_id, title, at=after.updated_at)
                events.append(self.audit_event(session.tenant, actor, "session_renamed", session.id, {"title": title}))
            if not changes:
                return session
            if self.audit.append_if(changes, events) is not None:
                # committed: the answer is the record with the values written, not a read after the commit (a
                # read that failed would turn a change that stood into an error)
                return after
            current = self.sessions.get(session.thread_id)
            if current is None:  # deleted meanwhile
                raise SessionNotFound(session.id)
            session = current  # another request tagged it first: decide again on what is stored now

    def rename_session(self, session: SessionRecord, title: str, actor: str = "cli") -> SessionRecord:
        return self.change_session(session, actor, title=title)

    def get_session(self, tenant: str, session_id: str) -> SessionRecord:
        """The tenant's session by the id the tenant uses for it."""
        record = self.sessions.find(tenant, session_id)
        if record is None or record.tenant != tenant:
            raise SessionNotFound(session_id)
        return record

    async def _read_index(self, read: Callable[..., T], *args: Any) -> T:
        """A session-index read for request handlers: a Postgres read is a network round trip, so it runs in a
        worker thread (on the event loop it would hold up every request while it waits); a SQLite read on the
        index's own connection is quicker than the hop and stays on the loop."""
        if self.sessions.network:
            return await asyncio.to_thread(read, *args)
        return read(*args)

    async def find_session(self, tenant: str, session_id: str) -> SessionRecord | None:
        """The tenant's session named `session_id`, or None."""
        return await self._read_index(self.sessions.find, tenant, session_id)

    async def aget_session(self, tenant: str, session_id: str) -> SessionRecord:
        """`get_session` for request handlers."""
        return await self._read_index(self.get_session, tenant, session_id)

    async def alist_sessions(
        self, tenant: str, team: str | None = None, limit: int = 50, before: tuple[str, str] | None = None
    ) -> list[SessionRecord]:
        """The tenant's sessions, newest activity first, for request handlers."""
        return await self._read_index(self.sessions.list, tenant, team, limit, before)

    async def run_turn(self, session: SessionRecord, turn_input: dict[str, Any]) -> dict[str, Any]:
        """Run one turn to completion and return the team's state."""
        result: dict[str, Any] = {}
        async for _ in self.stream_turn(session, turn_input, final_state=result):
            pass
        return result

    async def stream_turn(
        self, session: SessionRecord, turn_input: dict[str, Any], *, final_state: dict[str, Any] | None = None
    ) -> AsyncIterator[TurnEvent]:
        """Run one turn, yielding model tokens (where the persona allows streaming) and each new reply."""
        run = self.resolve(session.tenant, session.team, session)
        config = self.run_config(session, run, observe=True)
        streamed_nodes = {"summarizer", "primary_responder"} - self.unreviewed_nodes(run)
        graph = self.graph(session.team)
        async with self.turn_locks.hold(session.thread_id, session.team):
            await self.upgrade_session(session)
            with self.trace_scope(session.tenant):
                async for mode, payload in graph.astream(
                    turn_input, config, stream_mode=["messages", "updates"], durability=self.durability
                ):
                    if mode == "messages":
                        chunk, meta = cast(tuple[Any, dict[str, Any]], payload)
                        node = meta.get("langgraph_node", "")
                        if isinstance(chunk, AIMessageChunk) and node in streamed_nodes and chunk.content:
                            yield TurnEvent("token", node, str(chunk.content))
                    elif mode == "updates":
                        for node, update in cast(dict[str, Any], payload).items():
                            for message in (update or {}).get("messages", []) if isinstance(update, dict) else []:
                                if isinstance(message, AIMessage) and not isinstance(message, RemoveMessage):
                                    yield TurnEvent("message", node, str(message.content), message)
            await self.touch(session.thread_id, title_hint(turn_input))
            state = (await graph.aget_state(config)).values if final_state is not None else None
            try:
                await self.compact_session(session, state)
            except Exception as exc:  # the turn is stored; retention catches up after the next turn or pass
                structlog.get_logger("teamgraph.engine").warning(
                    "retention_after_turn_failed", session=session.id, error=f"{type(exc).__name__}: {exc}"
                )
            if final_state is not None and state is not None:
                final_state.update(state)

    async def compact_session(self, session: SessionRecord, state: dict[str, Any] | None = None) -> int:
        """Apply the tenant's retention to one session (the caller holds its turn lock): drop checkpoints past
        `keep_checkpoints` and archived messages past `archive_messages`. Returns checkpoints removed."""
        retention = self.bundles.tenants[session.tenant].retention
        removed = await prune_checkpoints(self.persistence.checkpointer, session.thread_id, retention.keep_checkpoints)
        if retention.archive_messages is not None:
            if state is None:
                state = dict((await self.graph(session.team).aget_state(self.run_config(session))).values)
            archived = int(state.get("archived", 0) or 0)
            await trim_archive(self.persistence.store, session.thread_id, archived, retention.archive_messages)
        return removed

    async def prune_sessions(
        self, dry_run: bool = False, actor: str = "retention", at: datetime | None = None
    ) -> dict[str, dict[str, Any]]:
        """Apply every tenant's retention once: delete sessions idle longer than `idle_days` (like a DELETE:
        checkpoints, transcript archive, voice records, index row; audited `session_expired` and the usual
        delete events), trim the other sessions to their limits, and audit a `sessions_pruned` summary per
        tenant. `dry_run`: only count what would be expired. Returns counts per tenant."""
        at = at or datetime.now(UTC)
        report: dict[str, dict[str, Any]] = {}
        for tenant_id, tenant in self.bundles.tenants.items():
            retention = tenant.retention
            expired: list[SessionRecord] = []
            if retention.idle_days is not None:
                cutoff = (at - timedelta(days=retention.idle_days)).isoformat(timespec="microseconds")
                expired = await asyncio.to_thread(self.sessions.idle, tenant_id, cutoff, 100000)
            counts: dict[str, Any] = {"expired": len(expired), "expired_ids": [s.id for s in expired]}
            if not dry_run:
                checkpoints_removed = 0
                for session in expired:
                    why = self.audit_event(tenant_id, actor, "session_expired", session.id,
                                           {"team": session.team, "last_active": session.updated_at,
                                            "idle_days": retention.idle_days})  # fmt: skip
                    await self.delete_session(session, actor=actor, because=why)
                gone = {s.thread_id for s in expired}
                before: tuple[str, str] | None = None
                while page := await asyncio.to_thread(self.sessions.list, tenant_id, None, 200, before):
                    for session in page:
                        if session.thread_id not in gone:
                            async with self.turn_locks.hold(session.thread_id, session.team):
                                checkpoints_removed += await self.compact_session(session)
                    before = (page[-1].updated_at, page[-1].thread_id)
                counts["checkpoints_removed"] = checkpoints_removed
                if expired or checkpoints_removed:
                    await self.arecord(tenant_id, actor, "sessions_pruned", None,
                                       {"expired": len(expired), "checkpoints_removed": checkpoints_removed,
                                        "idle_days": retention.idle_days,
                                        "keep_checkpoints": retention.keep_checkpoints})  # fmt: skip
            report[tenant_id] = counts
        await compact_sqlite(self.persistence.checkpointer)
        return report

    async def readiness(self, timeout_s: float = 0.8) -> dict[str, str]:
        """Each store answers a trivial read and takes a write (the session index, the checkpointer, the audit
        log, and for SQLite the data directory itself), all at once and each within `timeout_s`, so a database
        that hangs makes /readyz answer 503 quickly instead of hanging with it. Synchronous checks run in
        worker threads (an audit ping waits for the audit log's lock)."""

        async def check(probe: Callable[[], Any]) -> str:
            try:
                result = probe()
                if asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, timeout_s)
                return "ok"
            except TimeoutError:
                return f"error: no answer within {timeout_s:.1f} s"
            except Exception as exc:
                faults.append(exc)
                return f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"

        def threaded(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
            return lambda: asyncio.to_thread(fn, *args)

        probes: dict[str, Callable[[], Any]] = {
            "session_index": threaded(self.sessions.list, "__readyz__", None, 1),
            "session_index_write": threaded(self.sessions.probe_write),
            "checkpointer": lambda: self.persistence.checkpointer.aget_tuple(
                {"configurable": {"thread_id": "__readyz__"}}
            ),
            "audit_store": threaded(self.audit.ping),
        }
        if self.persistence.data_dir is not None:
            probes["data_dir_write"] = threaded(probe_directory, self.persistence.data_dir)
        faults: list[Exception] = []
        results = await asyncio.gather(*(check(p) for p in probes.values()))
        repair = self.persistence.repair
        repaired = repair is not None and await repair.check_file()
        for fault in [] if repaired else faults:
            if repaired := await self.repair_storage(fault):
                break
        if repaired:  # the tables are back: ask again
            faults.clear()
            results = await asyncio.gather(*(check(p) for p in probes.values()))
        return dict(zip(probes, results, strict=True))

    def read_without_graph(self, session: SessionRecord) -> str | None:
        """Why the session is read from its stored values, without its team's graph (None: it is read with it):
        its team or tenant was removed from the bundles, or the team is no longer enabled for the tenant. Such a
        session is shown and exported, not continued."""
        if session.team not in self.bundles.teams:
            return f"team {session.team!r} is not in the bundles"
        tenant = self.bundles.tenants.get(session.tenant)
        if tenant is None:
            return f"tenant {session.tenant!r} is not in the bundles"
        if session.team not in tenant.enabled_teams:
            return f"team {session.team!r} is not enabled for tenant {session.tenant!r}"
        return None

    async def state(self, session: SessionRecord) -> dict[str, Any]:
        """The session's state in the current version (an older one upgraded in memory: a read never waits for
        the session's turn lock; the upgrade is stored at its next turn or by `teamgraph migrate`)."""
        return (await self.versioned_state(session))[0]

    async def versioned_state(self, session: SessionRecord) -> tuple[dict[str, Any], int]:
        """(state in the current version, the version it is stored with); SessionSchemaTooNew for a session a
        newer Teamgraph wrote."""
        graph_id = self.graph_id(session.team)
        if self.read_without_graph(session) is None:
            snapshot = await self.graph(session.team).aget_state(self.run_config(session))
            values, metadata = dict(snapshot.values), snapshot.metadata
        else:  # the stored values as they are (no graph): the channels a read with the graph would hold
            saved = await self.persistence.checkpointer.aget_tuple(
                {"configurable": {"thread_id": session.thread_id, "checkpoint_ns": ""}}
            )
            public = public_channels(graph_id)  # not LangGraph's own, nor a turn's private draft or screen
            values = {k: v for k, v in (saved.checkpoint["channel_values"] if saved else {}).items() if k in public}
            metadata = saved.metadata if saved else None
            if graph_id not in GRAPH_MODULES:  # nor a graph of that name: its versions are unknown here
                return values, stored_version(metadata)
        if not values:  # nothing stored yet: it will be written in the current version
            return values, current_version(graph_id)
        version = stored_version(metadata)
        if version > current_version(graph_id):
            raise SessionSchemaTooNew(session.id, graph_id, version, current_version(graph_id))
        values.update(upgrade(graph_id, values, version))
        return values, version

    async def upgrade_session(
        self, session: SessionRecord, dry_run: bool = False, prefetched: PrefetchedCheckpoint | None = None
    ) -> tuple[int, int] | None:
        """Store an older session's state in the current version as a new checkpoint (the caller holds the
        session's turn lock). Returns (from, to) when it was (dry_run: would be) upgraded, None when current;
        SessionSchemaTooNew for a session a newer Teamgraph wrote, which is left untouched. `prefetched`: for a
        turn about to run, keeps the latest checkpoint read here when the session is current, so the turn's run
        (with it in its config under PREFETCHED) does not read it again."""
        graph_id = self.graph_id(session.team)
        target = current_version(graph_id)
        # every turn asks this: a session stored in the current version (or none stored yet) is told by the
        # latest checkpoint's metadata alone, without building the state snapshot (its channels, its next tasks)
        read, latest = prefetched.take_read_under_lease(session.thread_id) if prefetched else (False, None)
        if not read:
            latest = await self.persistence.checkpointer.aget_tuple(
                {"configurable": {"thread_id": session.thread_id, "checkpoint_ns": ""}}
            )
        if latest is None or stored_version(latest.metadata) == target:
            if prefetched is not None:
                prefetched.keep(session.thread_id, latest)
            return None
        graph = self.graph(session.team)
        config = self.run_config(session)
        snapshot = await graph.aget_state(config)
        if not snapshot.values:
            return None
        version = stored_version(snapshot.metadata)
        if version > target:
            raise SessionSchemaTooNew(session.id, graph_id, version, target)
        if version == target or snapshot.next:  # a turn in progress: it is upgraded before the next one
            return None
        if not dry_run:
            changes = upgrade(graph_id, dict(snapshot.values), version)
            # written as the end of a turn, so the next message starts a normal turn; the run config's metadata
            # stamps the checkpoint with the current version (also when no channel changed)
            await graph.aupdate_state(config, changes, as_node="memory_keeper")
        return version, target

    async def transcript(self, session: SessionRecord) -> list[BaseMessage]:
        """Every message of the session, once: the archive of trimmed messages, then those still in state."""
        first, archived = await read_archive_window(self.persistence.store, session.thread_id)
        return whole_transcript(archived, await self.state(session), first)

    async def history(self, session: SessionRecord, limit: int = 20, before: str | None = None) -> list[dict[str, Any]]:
        """The session's checkpoints, newest first (`before`: a checkpoint id from the previous page)."""
        config = self.run_config(session)
        before_config: RunnableConfig | None = None
        if before:
            before_config = {
                "configurable": {"thread_id": session.thread_id, "checkpoint_ns": "", "checkpoint_id": before}
            }
            if await self.persistence.checkpointer.aget_tuple(before_config) is None:
                raise CheckpointNotFound(before)
        items = []
        async for snap in self.graph(session.team).aget_state_history(config, limit=limit, before=before_config):
            meta = snap.metadata or {}
            items.append(
                {
                    "checkpoint_id": snap.config["configurable"]["checkpoint_id"],
                    "created_at": snap.created_at,
                    "step": meta.get("step"),
                    "source": meta.get("source"),
                    "next": list(snap.next),
                    "messages": len(snap.values.get("messages", [])),
                }
            )
        return items

    async def attach_document(
        self, session: SessionRecord, kind: str, text: str, actor: str = "cli", filename: str | None = None
    ) -> None:
        """Put a resume or job description into the session's state, before its first turn.

        The document is in the session exactly when its `document_uploaded` entry is on record: the state is
        written, then the entry, under the session's lock; when the entry cannot be written the document is taken
        out again (the state gets its previous value back, as a further checkpoint) before the error reaches the
        caller, unless the entry is on record after all (its COMMIT went through and only the answer was lost):
        then the upload stands and succeeds. That is looked for only when the write may have committed
        (`may_have_committed`: its connection failed during the exchange, or the caller was cancelled); a write
        that never reached the database (no pooled connection) or that was refused is undone without a look.
        When that cannot be told (the look fails too) the document is left and logged: removing a document whose
        entry is on record would be worse. The checkpoints and the audit log are separate writes, so only a fault
        that also fails the undo (or a crash between the two) can leave the document without its entry; that is
        logged."""
        graph = self.graph(session.team)
        if kind not in self.input_jsonschema(session.team).get("properties", {}):
            raise DocumentRejected(f"team {session.team!r} takes no {kind.replace('_', ' ')} documents", "kind")
        config = self.run_config(session)
        async with self.turn_locks.hold(session.thread_id, session.team):
            await self.upgrade_session(session)
            state = (await graph.aget_state(config)).values
            if state.get("questions"):
                raise DocumentRejected(
                    "the interview has started: questions were generated from the earlier documents; "
                    "create a new session to use a different document",
                    "kind",
                    status=409,
                )
            # written as the end of a turn, so the next message starts a normal turn with the document in state
            await graph.aupdate_state(config, {kind: text}, as_node="memory_keeper")
            # `upload_id`: this upload's own entry, told from any other by a look after a failed write
            upload_id = uuid.uuid4().hex
            uploaded = {"kind": kind, "filename": filename, "characters": len(text), "content": text,
                        "upload_id": upload_id}  # fmt: skip
            # shielded: a cancelled caller does not stop the write's worker thread; its outcome is waited for
            recording = asyncio.ensure_future(
                self.arecord(session.tenant, actor, "document_uploaded", session.id, uploaded)
            )
            try:
                await asyncio.shield(recording)
            except BaseException as exc:
                # cancelled while the write ran: its own outcome, once its worker has finished (a further
                # cancellation waits for it too; the CancelledError is raised below all the same)
                failure = await _write_outcome(recording) if isinstance(exc, asyncio.CancelledError) else exc
                # looked for only when the write may have committed (its connection failed during the exchange);
                # a write that never reached the database (no pooled connection, a closed pool), that the log
                # refused or that the database answered with an error is not on record: undone at once, without
                # a look that would wait on the same faulty pool

                async def settle(error: BaseException) -> bool | None:
                    on_record: bool | None = failure is None
                    if failure is not None and (
                        isinstance(failure, asyncio.CancelledError) or may_have_committed(failure)
                    ):
                        on_record = await self._document_on_record(session, kind, upload_id, error)
                    if on_record is False:
                        try:
                            await graph.aupdate_state(config, {kind: state.get(kind)}, as_node="memory_keeper")
                        except Exception as undo_exc:
                            log.warning("document_not_taken_out", thread_id=session.thread_id, kind=kind,
                                        error=f"{type(undo_exc).__name__}: {undo_exc}")  # fmt: skip
                    return on_record

                # the look and the undo run to their end whatever cancellation reaches this request meanwhile (a
                # look cut short would leave the document without its entry)
                on_record = await _settled(asyncio.ensure_future(settle(exc)))
                if on_record and not isinstance(exc, asyncio.CancelledError):
                    log.warning("document_upload_committed_despite_error", thread_id=session.thread_id, kind=kind,
                                error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                else:
                    raise
        try:  # the upload stood and is on record: marking the session active is not worth failing it for
            await self.touch(session.thread_id, title_hint({kind: text}))
        except Exception as exc:
            log.warning("session_touch_failed", thread_id=session.thread_id, error=f"{type(exc).__name__}: {exc}")

    async def _document_on_record(
        self, session: SessionRecord, kind: str, upload_id: str, exc: BaseException
    ) -> bool | None:
        """After the `document_uploaded` write of an upload failed and its worker finished: whether its entry is
        on record after all (a COMMIT that went through with its answer lost), as the import path looks for its
        session (`_session_after_failed_create`): the session's `document_uploaded` entry that carries this
        upload's `upload_id`. Found by that id alone, never by time: the entry's `at` comes from whichever clock
        wrote it, and a clock that is behind this one (another replica's, or this one stepped back) would hide it.
        None when the look fails too (logged; the caller leaves the document)."""
        try:  # compared in SQL: the entries carry whole documents, and a session may have many
            return await asyncio.to_thread(
                self.audit.has_entry, session.tenant, session.id, "document_uploaded", "upload_id", upload_id
            )
        except Exception as look_exc:
            log.warning("document_left_unverified", thread_id=session.thread_id, kind=kind,
                        error=f"{type(exc).__name__}: {exc}",
                        look_error=f"{type(look_exc).__name__}: {look_exc}")  # fmt: skip
            return None

    async def delete_session(
        self, session: SessionRecord, actor: str = "cli", because: AuditEvent | None = None
    ) -> None:
        """Remove the session's checkpoints, archived transcript and index row; its audit trail stays.

        Two steps, each audited in the transaction that makes it: the index row becomes a pending deletion (the
        session is gone for readers and turns from here on) with `session_delete_started` (and `because`, an
        entry saying why: retention's `session_expired`), then the data goes, and the pending row goes with
        `session_deleted`. An audit log that cannot take the first refuses the delete, and nothing changes; a
        crash or failure after it leaves the pending deletion, which the next start or a repeated DELETE
        finishes. So a session is always whole or gone, `session_deleted` means it is gone, and each entry is
        written once, however many requests delete the session at the same time."""
        started: dict[str, Any] = {"team": session.team}
        if session.user_id is not None:  # an erasure finds the session's entries by it once the session is gone
            started["user_ref"] = self.audit.user_ref(session.tenant, session.user_id)
        events = [self.audit_event(session.tenant, actor, "session_delete_started", session.id, started)]
        if because is not None:
            events.insert(0, because)
        async with self.turn_locks.hold(session.thread_id, session.team):
            change = self.sessions.begin_delete_change(session.thread_id)
            moved = await asyncio.to_thread(self.audit.append_if, change, events)
            pending = await asyncio.to_thread(self.sessions.pending_deletion, session.tenant, session.id)
            if moved is None and pending is None:
                return  # another request deleted it while this one waited for the session's lock
            await self._finish_delete(session.thread_id, session.tenant, session.team, session.id, actor)

    async def finish_deletion(self, tenant: str, session_id: str, actor: str = "cli") -> bool:
        """Finish the tenant's interrupted deletion of the session it calls `session_id`; False when there is none."""
        pending = await asyncio.to_thread(self.sessions.pending_deletion, tenant, session_id)
        if pending is None:
            return False
        async with self.turn_locks.hold(pending.thread_id, pending.team):
            if await asyncio.to_thread(self.sessions.pending_deletion, tenant, session_id) is not None:
                await self._finish_delete(pending.thread_id, tenant, pending.team, pending.client_id, actor)
        return True

    async def finish_pending_deletions(self) -> int:
        """At start: finish every deletion a crash interrupted; returns how many."""
        log = structlog.get_logger("teamgraph.engine")
        finished = 0
        for deletion in await asyncio.to_thread(self.sessions.pending_deletions):
            try:
                await self.finish_deletion(deletion.tenant, deletion.client_id, actor="startup")
                finished += 1
            except Exception as exc:  # stays pending (gone for clients); a repeated DELETE or the next start retries
                log.warning("interrupted_deletion_not_finished", thread_id=deletion.thread_id,
                            error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        if finished:
            log.info("interrupted_deletions_finished", count=finished)
        return finished

    async def _finish_delete(self, thread_id: str, tenant: str, team: str, session_id: str, actor: str) -> None:
        """Remove what a pending deletion left (each step is idempotent), then drop the pending row with its
        `session_deleted` entry (one transaction: a deletion another request finished first is not audited again)."""
        await self._remove_thread_data(thread_id)
        await asyncio.to_thread(self.sessions.forget_idempotent_turns, thread_id)
        deleted = self.audit_event(tenant, actor, "session_deleted", session_id, {"team": team})
        change = self.sessions.finish_delete_change(thread_id)
        finished = await asyncio.to_thread(self.audit.append_if, change, [deleted])
        self.turn_locks.forget(thread_id)
        if finished is not None:
            self.metrics.sessions_deleted.labels(tenant, team).inc()


# thread keys of client-named sessions: a function of (tenant, client id), so two tenants' `interview-42` are two
# threads, and two first requests racing on one new id compute the same key (and wait on one turn lock)
_THREAD_NAMESPACE = uuid.UUID("2f0c4b7e-6a1d-5b9e-8c3f-7d4a1e6b9c20")


def thread_key(tenant: str, client_id: str) -> str:
    """The checkpointer's thread key for a session a client names `client_id` (sessions created before client
    ids were scoped keep the key they were stored under)."""
    return str(uuid.uuid5(_THREAD_NAMESPACE, f"{tenant}\n{client_id}"))


def title_hint(turn_input: dict[str, Any]) -> str:
    """The first user text of a turn (the session title when it has none yet), without emails, phones or cards."""
    from nodes.safety_rules import redact_pii
    from personas.schema import SafetySettings

    # the title is listed in clear wherever sessions are shown: never let it carry the PII a user typed
    return redact_pii(_title_text(turn_input), SafetySettings())[0]


_MARKDOWN_LEAD = re.compile(r"^(?:#{1,6}\s+|>\s*|[-*+]\s+|\d+[.)]\s+)+")


def _plain_first_line(document: str) -> str:
    """A document's first line as a person reads it: "# Jane Doe" or "**Senior Engineer**" without the Markdown."""
    line = next((ln.strip() for ln in document.splitlines() if ln.strip()), "")
    return _MARKDOWN_LEAD.sub("", line).strip("*_ ").strip() or line


def _title_text(turn_input: dict[str, Any]) -> str:
    if turn_input.get("role"):
        return f"Interview: {turn_input['role']}"
    for kind in ("job_description", "resume"):
        if turn_input.get(kind):
            return f"Interview: {_plain_first_line(turn_input[kind])}"
    for message in turn_input.get("messages", []):
        content = message.content if isinstance(message, HumanMessage) else (message or {}).get("content", "")
        if isinstance(message, dict) and message.get("role") not in (None, "user", "human"):
            continue
        if str(content).strip():
            return str(content)
    return ""


async def _finished(task: asyncio.Future[Any]) -> bool:
    """Wait until `task` is done, whatever cancellation reaches the waiting task meanwhile (`task` itself is never
    cancelled by it); True when a native cancellation (`Task.cancel()`) came. Under anyio (a Starlette request) a
    cancelled scope re-delivers its cancellation at every await, so a loop that catches it would spin (thousands
    of wakeups while a look runs); the wait is shielded from anyio's scopes, and anyio's cancellation stays
    pending for the caller's next await. A native cancellation is delivered once, caught, and the wait goes on."""
    cancelled = False
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait([task])  # never cancels `task`
            except asyncio.CancelledError:
                cancelled = True
    return cancelled


async def _settled(task: asyncio.Future[T]) -> T:
    """`task`'s result (or its error) once it has finished; a cancellation of the waiting request meanwhile does
    not stop it, and is raised once `task` is done (the request was cancelled: it does not go on as if not)."""
    if await _finished(task):
        if not task.cancelled():
            task.exception()  # retrieved (its error goes with the cancelled request), not "never retrieved"
        raise asyncio.CancelledError
    await anyio.lowlevel.checkpoint_if_cancelled()  # an anyio scope cancelled while `task` ran
    return task.result()


async def _write_outcome(write: asyncio.Future[Any]) -> BaseException | None:
    """A shielded write's own outcome once it is done: None when it succeeded, else its error. A cancellation of
    the waiting task meanwhile does not stop the wait (the caller was cancelled already and raises that). When
    `write` itself was cancelled (only something holding it can: the event loop's shutdown cancelling every
    task, say), its worker thread may still be running and may yet commit: the answer is then a CancelledError,
    which callers treat as "may have committed" and look; what the thread commits after that look is not seen
    (a loop shutting down only)."""
    await _finished(write)
    return asyncio.CancelledError() if write.cancelled() else write.exception()
