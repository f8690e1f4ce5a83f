"""The bench server: Teamgraph's own app (`create_app`) with the bench model, run under real uvicorn.

    uvicorn --factory bench.asgi:app        # TEAMGRAPH_CHECKPOINT_URL / TEAMGRAPH_PERSONAS_DIR from the env

Everything else is the product as `teamgraph serve` runs it: tenant auth, per-tenant config, LangServe routes,
session index, turn locks, SQLite checkpointer and store.
"""

from __future__ import annotations

from fastapi import FastAPI

from bench.fake_model import BenchFactory
from server.app import create_app
from server.settings import Settings


def app() -> FastAPI:
    return create_app(Settings(_env_file=None), agent_factory=BenchFactory())  # type: ignore[call-arg]
