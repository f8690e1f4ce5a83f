"""Shared fixtures: the repo's persona bundles, run configs, engines on real SQLite files and Postgres, fakes."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from personas.factory import AgentFactory
from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles
from personas.resolver import AgentTeamResolver
from server.engine import Engine
from server.settings import Settings
from tests.fakes.models import FakeAgentFactory
from tests.fakes.openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("TEAMGRAPH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see a developer's provider key or TEAMGRAPH_ settings: offline unless a test says otherwise."""
    for name in list(os.environ):
        if name.startswith("TEAMGRAPH_") or name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LANGSMITH_TRACING"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def bundles() -> Any:
    return load_bundles(DEFAULT_BUNDLE_DIR)


@pytest.fixture(scope="session")
def resolver(bundles: Any) -> AgentTeamResolver:
    return AgentTeamResolver(bundles)


def run_config(
    resolver: AgentTeamResolver,
    tenant: str,
    team: str,
    factory: AgentFactory | None = None,
    thread_id: str | None = None,
) -> dict[str, Any]:
    """A run config as the engine builds it, for calling nodes and graphs directly."""
    return {
        "configurable": {
            "thread_id": thread_id or str(uuid.uuid4()),
            "tenant": tenant,
            "team": team,
            "team_run_config": resolver.resolve(tenant, team),
            "agent_factory": factory or FakeAgentFactory(),
        }
    }


def make_settings(tmp_path: Path, url: str | None = None) -> Settings:
    return Settings(_env_file=None, checkpoint_url=url or f"sqlite:///{tmp_path}/teamgraph.db")  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def open_engine(
    url: str, factory: AgentFactory | None = None, tmp_path: Path | None = None, **overrides: Any
) -> AsyncIterator[Engine]:
    settings = Settings(_env_file=None, checkpoint_url=url, **overrides)  # type: ignore[call-arg]
    async with Engine.open(settings, agent_factory=factory or FakeAgentFactory()) as engine:
        yield engine


@contextlib.contextmanager
def fresh_postgres_schema(prefix: str = "tg_test") -> Iterator[str]:
    """A URL onto a new schema in the machine's Postgres, dropped afterwards; fails (never skips) without Postgres."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {POSTGRES_URL} (set TEAMGRAPH_TEST_POSTGRES_URL): {exc}")
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin.execute(f"create schema {schema}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"drop schema {schema} cascade")
        admin.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One fresh schema for the whole test run."""
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture(scope="session")
def openai_server() -> Iterator[FakeOpenAIServer]:
    """The local OpenAI-compatible server on 127.0.0.1 (reset before each test that uses `fake_openai`)."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def fake_openai(openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    openai_server.reset()
    return openai_server
