"""The FastAPI app: LangServe routes per team, REST for frontends, tenant auth, one error shape."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from checkpoints.retention import run_retention_passes
from graphs.registry import GRAPH_MODULES
from personas.factory import AgentFactory
from personas.loader import load_bundles
from server.auth import KeyRing
from server.engine import Engine
from server.errors import install_error_handlers
from server.observability.http import ObservabilityMiddleware
from server.observability.logging import configure_logging
from server.observability.metrics import Metrics
from server.observability.tracing import configure_tracing
from server.routers import audit, health, sessions, teams, users, voice
from server.routers import metrics as metrics_router
from server.settings import Settings, get_settings
from server.team_routes import add_team_routes

DESCRIPTION = """Agent teams as LangGraph graphs, per tenant.

Authenticate every call with `Authorization: Bearer <key>` (or `X-API-Key`). Run a team at
`/teams/{team}/invoke|stream|stream_events|batch` with `config.configurable.thread_id` naming the session;
read and manage sessions under `/sessions`. Errors are `{"error": {"code", "message", "field"?}}`.
"""


def create_app(settings: Settings | None = None, agent_factory: AgentFactory | None = None) -> FastAPI:
    """Build the app; the persona bundles are validated here, so a bad bundle refuses to start."""
    settings = settings or get_settings()
    bundles = load_bundles(settings.personas_dir, known_graphs=set(GRAPH_MODULES))

    keyring = KeyRing(bundles)
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
        title="Teamgraph", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, telemetry={"tracing": False}
    )
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    app.include_router(health.router)
    app.include_router(metrics_router.router)
    app.include_router(audit.router)
    app.include_router(teams.router)
    app.include_router(sessions.router)
    app.include_router(voice.router)
    app.include_router(users.router)
    add_team_routes(app, bundles, playground=settings.playground)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory server.app:app_from_env`), used by `teamgraph serve`."""
    return create_app()
