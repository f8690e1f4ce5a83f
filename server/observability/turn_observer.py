"""TurnObserver: one LangChain callback handler per turn, turning graph events into logs, metrics, spans and
audit entries. Nodes stay pure; this sees their inputs and outputs from the outside."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from checkpoints.audit import AuditEvent, AuditLog, ContentPolicy, apply_content_policy
from server.observability.logging import log
from server.observability.metrics import Metrics
from server.observability.tracing import exporting, tracer


@dataclass
class TurnContext:
    """Who and what a turn is about; nothing here is secret (the key id, never the key)."""

    tenant: str
    team: str
    thread_id: str
    actor: str
    personas: dict[str, str]  # node -> persona id
    models: dict[str, str]  # node -> model label
    audit_policy: ContentPolicy = "full"
    request_id: str | None = None
    resolution: str = "session"  # how the team was chosen: session, requested, default


@dataclass
class _Run:
    node: str | None
    started: float
    span: Span | None = None
    outcome: str = "ok"
    parent: UUID | None = None
    is_model: bool = False


_SEVERITY = {"ok": 0, "fallback": 1, "blocked": 2, "timeout": 3, "error": 4}  # a turn reports its worst node


def _outcome_of_error(error: BaseException) -> str:
    name = type(error).__name__
    return "timeout" if isinstance(error, (TimeoutError, asyncio.CancelledError)) or "Timeout" in name else "error"


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.content)


@dataclass(eq=False)  # callback managers keep handlers in sets: identity equality and hashing
class TurnObserver(AsyncCallbackHandler):
    ctx: TurnContext
    metrics: Metrics
    audit: AuditLog
    parent_context: Any = None  # the OTel context (HTTP request span) the turn belongs to
    runs: dict[UUID, _Run] = field(default_factory=dict)
    pending_audit: list[AuditEvent] = field(default_factory=list)
    root: UUID | None = None
    turn_outcome: str = "ok"
    # run in the worker thread of the turn's closing audit write, after it, when the turn succeeded (the server
    # marks the session active there: one thread hop instead of two); what it raised is kept for the caller
    after_turn: Callable[[], None] | None = None
    after_turn_ran: bool = False
    after_turn_error: Exception | None = None
    _trace_id: tuple[str | None] | None = field(default=None, init=False)  # the turn trace id, once known

    # an audit write that fails must fail the turn: LangChain re-raises only from handlers that ask for it
    raise_error: bool = True
    run_inline: bool = True
    # LangChain reads these per handler for every event it dispatches; plain class attributes instead of
    # BaseCallbackHandler's properties. Events of the kinds ignored here reach only its default no-op methods
    ignore_llm: ClassVar[bool] = False
    ignore_chat_model: ClassVar[bool] = False
    ignore_chain: ClassVar[bool] = False
    ignore_agent: ClassVar[bool] = True
    ignore_retriever: ClassVar[bool] = True
    ignore_retry: ClassVar[bool] = True
    ignore_custom_event: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.parent_context is None:
            self.parent_context = otel_context.get_current()

    # ---- helpers ---------------------------------------------------------------------------------------------

    def _fields(self, root_span: Span | None = None, **extra: Any) -> dict[str, Any]:
        if self._trace_id is None:  # one trace per turn: the turn's span is a child of the request's
            span = root_span or (self.runs[self.root].span if self.root in self.runs else None)
            if span is None:  # no spans of our own (nothing exports them): the request's trace, if any
                span = trace.get_current_span(self.parent_context)
            context = span.get_span_context()
            self._trace_id = (format(context.trace_id, "032x") if context.is_valid else None,)
        return {"request_id": self.ctx.request_id, "trace_id": self._trace_id[0], "tenant": self.ctx.tenant,
                "team": self.ctx.team, "thread_id": self.ctx.thread_id, **extra}  # fmt: skip

    def _span(self, name: str, parent: UUID | None, **attributes: Any) -> Span | None:
        if not exporting():
            return None
        parent_run = self._nearest_span(parent)
        context = trace.set_span_in_context(parent_run) if parent_run is not None else self.parent_context
        return tracer().start_span(name, context=context, attributes={k: v for k, v in attributes.items() if v})

    def _nearest_span(self, run_id: UUID | None) -> Span | None:
        while run_id is not None and run_id in self.runs:
            run = self.runs[run_id]
            if run.span is not None:
                return run.span
            run_id = run.parent
        return None

    def _audit(self, event_type: str, payload: dict[str, Any]) -> None:
        self.pending_audit.append(
            AuditEvent(self.ctx.tenant, self.ctx.actor, event_type, self.ctx.thread_id,
                       apply_content_policy(payload, self.ctx.audit_policy))
        )  # fmt: skip

    async def _flush_audit(self, closing: bool = False, durable: bool = True) -> None:
        events, self.pending_audit = self.pending_audit, []
        after = self.after_turn if closing else None
        if events or after is not None or durable:
            # in a worker thread: a SQLite write on the loop could wait on a lock only the loop frees
            await asyncio.to_thread(self._write_audit, events, after, durable)  # AuditWriteError fails the turn

    def _write_audit(self, events: list[AuditEvent], after: Callable[[], None] | None, durable: bool = True) -> None:
        if events:
            with contextlib.nullcontext() if durable else self.audit.deferring_sync():
                self.audit.append(events)
        elif durable:
            # the turn's end: its input entry and checkpoint committed without waiting for the disk (see
            # deferring_sync, checkpoints.factory.CHECKPOINT_SYNC_DEFERRED); with no entry to write, this waits
            self.audit.make_durable()
        if after is not None:  # only once the turn's record is complete
            self.after_turn_ran = True
            try:
                after()
            except Exception as exc:
                self.after_turn_error = exc

    # ---- chains: the turn and its nodes ----------------------------------------------------------------------

    async def on_chain_start(self, serialized: dict[str, Any] | None, inputs: dict[str, Any], *, run_id: UUID,
                             parent_run_id: UUID | None = None, tags: list[str] | None = None,
                             metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:  # fmt: skip
        name = kwargs.get("name") or ""
        node = (metadata or {}).get("langgraph_node")
        if self.root is None and parent_run_id is None:
            self.root = run_id
            span = self._span(f"team.{self.ctx.team}", None, **{
                "teamgraph.tenant": self.ctx.tenant, "teamgraph.team": self.ctx.team,
                "teamgraph.thread_id": self.ctx.thread_id, "teamgraph.resolution": self.ctx.resolution})  # fmt: skip
            self.runs[run_id] = _Run(None, time.perf_counter(), span)
            self._audit_input(inputs)
            # the user's input is on record before anything runs: an audit store that is down refuses the turn.
            # Its commit need not wait for the disk: the turn ends with a durable commit (its closing entries, or
            # make_durable), whose WAL flush covers it (checkpoints/audit.py, deferring_sync)
            await self._flush_audit(durable=False)
            return
        is_node = node is not None and name == node and parent_run_id == self.root and not node.startswith("__")
        if not is_node and not exporting():
            return  # an inner runnable: no span to parent, nothing to time or record (its end finds no run)
        span = self._span(f"node.{node}", parent_run_id, **{"teamgraph.node": node}) if is_node else None
        self.runs[run_id] = _Run(node if is_node else None, time.perf_counter(), span, parent=parent_run_id)

    def _audit_input(self, inputs: Any) -> None:
        if not isinstance(inputs, dict):
            return
        for kind in ("resume", "job_description"):
            if inputs.get(kind):
                self._audit("document_uploaded", {"kind": kind, "characters": len(str(inputs[kind])),
                                                  "via": "turn", "content": str(inputs[kind])})  # fmt: skip
        for message in inputs.get("messages") or []:
            if isinstance(message, HumanMessage) or (isinstance(message, dict) and message.get("role") == "user"):
                content = _text(message) if isinstance(message, BaseMessage) else str(message.get("content", ""))
                self._audit("message", {"role": "user", "content": content})

    async def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                           **kwargs: Any) -> None:  # fmt: skip
        run = self.runs.pop(run_id, None)
        if run is None:
            return
        if run_id == self.root:
            await self._end_turn(run, None)
            return
        if run.node is not None:
            self._end_node(run, outputs if isinstance(outputs, dict) else {}, None)

    async def on_chain_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                             **kwargs: Any) -> None:  # fmt: skip
        run = self.runs.pop(run_id, None)
        if run is None:
            return
        if run_id == self.root:
            await self._end_turn(run, error)
        elif run.node is not None:
            self._end_node(run, {}, error)

    def _end_node(self, run: _Run, update: dict[str, Any], error: BaseException | None) -> None:
        node = run.node or ""
        for open_id in [rid for rid, r in self.runs.items() if r.is_model and r.node == run.node]:
            self._end_model(open_id, TimeoutError())  # cancelled by the node's deadline: no llm_error arrives
        duration = time.perf_counter() - run.started
        outcome = _outcome_of_error(error) if error else "ok"
        if error is None:
            outcome = self._record_node_output(node, update)
        if _SEVERITY.get(outcome, 0) > _SEVERITY.get(self.turn_outcome, 0):
            self.turn_outcome = outcome
        self.metrics.node_latency.labels(self.ctx.team, node).observe(duration)
        if run.span is not None:
            run.span.set_attribute("teamgraph.outcome", outcome)
            if error is not None:
                run.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            run.span.end()
        log.info("node", **self._fields(node=node, duration_ms=round(duration * 1000, 2),
                                        model=self.ctx.models.get(node), outcome=outcome))  # fmt: skip

    def _record_node_output(self, node: str, update: dict[str, Any]) -> str:
        outcome = "ok"
        if update.get("questions_by") == "template" and self.ctx.models.get(node, "offline") != "offline":
            outcome = "fallback"  # a model was configured but failed; the template generator asked instead
        if update.get("evaluator_error"):
            outcome = "timeout" if str(update["evaluator_error"]).startswith("timeout") else "fallback"
        for message in update.get("messages") or []:
            if isinstance(message, AIMessage):
                meta = message.response_metadata or {}
                self._audit("response", {"node": node, "content": _text(message), "kind": meta.get("kind"),
                                         "produced_by": meta.get("produced_by")})  # fmt: skip
        evaluations = update.get("evaluations")
        if evaluations:
            ev = evaluations[-1]
            self._audit("evaluation", {k: ev.get(k) for k in ("question_index", "scores", "overall", "scored_by",
                                                               "fallback_reason")})  # fmt: skip
            if ev.get("scored_by") == "fallback":
                outcome = "fallback"
                reason = str(ev.get("fallback_reason") or "")
                bucket = "offline" if reason.startswith("offline") else ("timeout" if "timeout" in reason else "error")
                self.metrics.fallback_scorings.labels(self.ctx.tenant, self.ctx.team, bucket).inc()
        screened = update.get("input_review")
        if isinstance(screened, dict) and screened.get("action") == "block":
            outcome = "blocked"  # the input screen refused the message: no reply is drafted
        decisions = update.get("review_decisions")
        if decisions:
            d = decisions[-1]
            self._audit("safety_decision", {k: d.get(k) for k in ("action", "category", "reason", "reviewed_by")})
            self.metrics.safety_decisions.labels(self.ctx.tenant, d.get("action"), d.get("category")).inc()
            if d.get("action") == "block":
                outcome = "blocked"
        return outcome

    async def _end_turn(self, run: _Run, error: BaseException | None) -> None:
        duration = time.perf_counter() - run.started
        outcome = _outcome_of_error(error) if error else self.turn_outcome
        self.metrics.turns.labels(self.ctx.tenant, self.ctx.team, outcome).inc()
        self.metrics.turn_latency.labels(self.ctx.tenant, self.ctx.team).observe(duration)
        fields = self._fields(run.span, node=None, duration_ms=round(duration * 1000, 2), outcome=outcome)
        if run.span is not None:
            run.span.set_attribute("teamgraph.outcome", outcome)
            if error is not None:
                run.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            run.span.end()
        try:
            await self._flush_audit(closing=error is None)
        finally:
            log.info("turn", **fields)

    # ---- model calls -----------------------------------------------------------------------------------------

    async def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: list[list[BaseMessage]], *,
                                  run_id: UUID, parent_run_id: UUID | None = None,
                                  metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:  # fmt: skip
        node = (metadata or {}).get("langgraph_node")
        model = self.ctx.models.get(node or "", "")
        span = self._span(f"model.{model or 'chat'}", parent_run_id, **{"teamgraph.node": node,
                                                                         "gen_ai.request.model": model})  # fmt: skip
        self.runs[run_id] = _Run(node, time.perf_counter(), span, parent=parent_run_id, is_model=True)

    async def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end_model(run_id, None)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end_model(run_id, error)

    def _end_model(self, run_id: UUID, error: BaseException | None) -> None:
        run = self.runs.pop(run_id, None)
        if run is None:
            return
        outcome = _outcome_of_error(error) if error else "ok"
        persona = self.ctx.personas.get(run.node or "", "unknown")
        self.metrics.model_calls.labels(persona, outcome).inc()
        if run.span is not None:
            if error is not None:
                run.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            run.span.end()
