"""Experiments, not configurations: `bench.asgi:app` with one piece of the product switched off, to measure
what each piece costs per turn. Used by the bench's ablation phase only.

    TEAMGRAPH_BENCH_ABLATE=observer,audit uvicorn --factory bench.ablation:app

Pieces (monkeypatched in the bench's server process only; the product code is untouched):

- `observer`: no TurnObserver on the run config. The observer is a LangChain callback handler attached to the
  whole graph run, so LangChain's callback manager dispatches every chain start/end of every internal runnable
  to it; with it go its OTel spans, node/turn log lines, metrics and the turn's audit entries.
- `audit`: audit appends do nothing (the observer still runs).
- `spans`: OpenTelemetry's no-op tracer instead of the SDK tracer (with no exporter configured, only the request
  span is created anyway).
- `touch`: the session index's per-turn `touch` (UPDATE + commit, in a worker thread) does nothing.
- `logs`: structlog below WARNING (uvicorn's access log is off in every bench server, as in `teamgraph serve`).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI

PIECES = ("observer", "audit", "spans", "touch", "logs")


def apply(pieces: set[str]) -> list[str]:
    """Switch the pieces off; returns those that could be (the product may have moved on)."""
    applied = []
    if "observer" in pieces:
        from server.engine import Engine

        original = Engine.run_config

        def run_config(self: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["observe"] = False
            return original(self, *args, **kwargs)

        Engine.run_config = run_config  # type: ignore[method-assign]
        applied.append("observer")
    if "audit" in pieces:
        from checkpoints import audit

        for cls in (getattr(audit, "SqliteAuditLog", None), getattr(audit, "PostgresAuditLog", None)):
            if cls is not None:
                cls.append = lambda self, events: []  # type: ignore[method-assign]
        applied.append("audit")
    if "spans" in pieces:
        from opentelemetry import trace

        noop = trace.NoOpTracer()
        import server.observability.tracing as tracing

        tracing.tracer = lambda: noop  # type: ignore[assignment]
        for name in ("server.observability.http", "server.observability.turn_observer"):
            module = __import__(name, fromlist=["tracer"])
            if hasattr(module, "tracer"):
                module.tracer = lambda: noop
        applied.append("spans")
    if "touch" in pieces:
        from checkpoints import session_index

        for cls in (getattr(session_index, "SqliteSessionIndex", None),):
            if cls is not None:
                cls.touch = lambda self, thread_id, title_if_empty="": None  # type: ignore[method-assign]
        applied.append("touch")
    if "logs" in pieces:
        os.environ["TEAMGRAPH_LOG_LEVEL"] = "WARNING"
        applied.append("logs")
    return applied


def app() -> FastAPI:
    pieces = {p.strip() for p in os.environ.get("TEAMGRAPH_BENCH_ABLATE", "").split(",") if p.strip()}
    unknown = pieces - set(PIECES)
    if unknown:
        raise SystemExit(f"unknown ablation piece(s): {', '.join(sorted(unknown))}; known: {', '.join(PIECES)}")
    applied = apply(pieces)
    print(f"bench ablation: switched off {', '.join(applied) or 'nothing'}", flush=True)
    from bench.asgi import app as bench_app

    return bench_app()
