"""The FastAPI app: LangServe routes per team, REST for frontends, tenant auth, one error shape."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from checkpoints.retention import run_retention_passes
from graphs.registry import GRAPH_MODULES
from personas.factory import AgentFactory
from personas.loader import load_bundles
from server.auth import KeyRing
from server.engine import Engine
from server.errors import install_error_handlers
from server.limits import TenantTurnLimiter
from server.observability.http import ObservabilityMiddleware
from server.observability.logging import configure_logging
from server.observability.metrics import Metrics
from server.observability.tracing import configure_tracing
from server.openapi import install_openapi
from server.request_guard import RequestGuard
from server.routers import audit, health, sessions, teams, users, voice
from server.routers import metrics as metrics_router
from server.settings import Settings, get_settings, unknown_variables
from server.team_routes import add_team_routes
from server.variables import RESERVED_VARIABLES
from server.web import install_web

log = logging.getLogger(__name__)

DESCRIPTION = """Agent teams as LangGraph graphs, per tenant.

Authenticate every call with `Authorization: Bearer <key>` (or `X-API-Key`). Run a team at
`/teams/{team}/invoke|stream|stream_events|batch` with `config.configurable.thread_id` naming the session;
read and manage sessions under `/sessions`. Errors are `{"error": {"code", "message", "field"?}}`.
"""


def create_app(settings: Settings | None = None, agent_factory: AgentFactory | None = None) -> FastAPI:
    """Build the app; the persona bundles are validated here, so a bad bundle refuses to start."""
    settings = settings or get_settings()
    bundles = load_bundles(
        settings.personas_dir, known_graphs=set(GRAPH_MODULES), reserved_variables=RESERVED_VARIABLES
    )

    keyring = KeyRing(bundles, settings=settings)  # its `.env`, not the class default's
    provider_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    configure_logging(settings.log_level, settings.log_format, secrets=(provider_key, *keyring.env_keys))
    configure_tracing()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Engine.open(settings, agent_factory, bundles, metrics) as engine:
            app.state.engine = engine
            retention = (
                asyncio.create_task(run_retention_passes(engine, settings.retention_interval_s))
                if settings.retention_interval_s > 0
                else None
            )
            try:
                yield
            finally:
                if retention is not None:
                    retention.cancel()

    # our middleware makes the request span; FastAPI's own tracing would start a second trace beside it
    app = FastAPI(
        title="Teamgraph",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry={"tracing": False},
        docs_url=None,
        redoc_url=None,  # served by install_web from vendored assets: they work offline
    )
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.metrics = metrics
    app.state.turn_limiter = TenantTurnLimiter(metrics)
    install_error_handlers(app)
    # added first, so it runs inside the observability middleware: refused bodies are logged and counted too
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    if settings.cors_origins:  # outermost, so a preflight is answered before auth or routing
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
            expose_headers=["Retry-After", "X-Request-ID", "X-Voice", "X-Voice-Cache"],
            max_age=600,
        )
    app.include_router(health.router)
    app.include_router(metrics_router.router)
    app.include_router(audit.router)
    app.include_router(teams.router)
    app.include_router(sessions.router)
    app.include_router(voice.router)
    app.include_router(users.router)
    add_team_routes(app, bundles, playground=settings.playground)
    install_openapi(app, bundles)
    install_web(app, settings, bundles)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory server.app:app_from_env`), used by `teamgraph serve`.

    `teamgraph` refuses a TEAMGRAPH_ variable nothing reads (a misspelled setting would be ignored, its default
    used); started by uvicorn itself the server gets no such check, so each is a warning line here (not a refusal:
    other hosts may import this)."""
    settings = get_settings()
    app = create_app(settings)
    for line in unknown_variables(settings):  # after create_app: in the log format it configured
        log.warning("%s (ignored; `teamgraph serve` refuses to start with it)", line)
    return app
