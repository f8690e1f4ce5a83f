"""Shared fixtures: the repo's persona bundles, run configs, engines on real SQLite files and Postgres, fakes."""

from __future__ import annotations

import contextlib
import fcntl
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


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (addopts): one worker more than the cores this process may use. Much of the suite waits on real
    servers, databases and processes (a run used about 60% of two cores with a worker per core); on the 2-core
    machine CI uses, the whole suite took 8:33 and 8:35 with 3 workers against 9:15 and 9:22 with 2 (same code,
    quiet machine). PYTEST_XDIST_AUTO_NUM_WORKERS still decides when set, as in xdist's own hook."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").isdigit():
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    return len(os.sched_getaffinity(0)) + 1


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "serial: runs while no other test of the run does (tests that measure time against a wall clock; "
        "`make test` runs the rest on several xdist workers at once)",
    )


# The longest work units first, so that no worker is left alone with one of them at the end of the run: xdist
# hands out work in collection order (--no-loadscope-reorder), one unit (a module, or a test of a SPREAD module) at
# a time to the worker that has 2 tests or fewer left. Roughly longest first as measured by `--durations=0` on a
# quiet 2-core machine: the modules that run whole (keyed stream cuts 100 s, four servers; fuzz 45 s; session
# integrity, turn serialization, the browser, langgraph dev, observability 20-35 s each), then the SPREAD modules
# with the longest single tests (a self-repair test 7-19 s, the Postgres outage test 15 s), then the others over
# 13 s. The rest keep their order after these: many short modules, which even out the end of the run.
SLOW_FIRST = (
    "tests/integration_tests/test_keyed_stream_cut.py",
    "tests/integration_tests/test_api_fuzz.py",
    "tests/integration_tests/test_session_integrity.py",
    "tests/integration_tests/test_turn_serialization.py",
    "tests/browser/",
    "tests/integration_tests/test_langgraph_dev.py",
    "tests/integration_tests/test_observability.py",
    "tests/integration_tests/test_self_repair.py",
    "tests/integration_tests/test_faults.py",
    "tests/integration_tests/test_ops.py",
    "tests/integration_tests/test_persistence.py",
    "tests/integration_tests/test_crash.py",
    "tests/integration_tests/test_cli.py",
    "tests/integration_tests/test_concurrency.py",
    "tests/integration_tests/test_server_e2e.py",
    "tests/unit_tests/test_voice_provider.py",
    "tests/integration_tests/test_integrity.py",
)
# With `--dist loadfile` a module's tests run on one worker, so a module-scoped server starts once. These modules
# share no module- or class-scoped fixture and have long tests: each of their tests is a unit of its own, and
# they spread over the workers. (A module listed here that gains such a fixture only starts it once per worker.)
SPREAD = frozenset(
    {
        "tests/integration_tests/test_cli.py",
        "tests/integration_tests/test_export.py",
        "tests/integration_tests/test_crash.py",
        "tests/integration_tests/test_faults.py",
        "tests/integration_tests/test_audit.py",
        "tests/integration_tests/test_serve_startup.py",
        "tests/integration_tests/test_self_repair.py",
        "tests/integration_tests/test_retention.py",
        "tests/integration_tests/test_persistence.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first (a stable sort: modules stay whole and in order)."""

    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)), len(SLOW_FIRST))

    items.sort(key=rank)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, except that the tests of the SPREAD modules are handed out one by one."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LoadFileSpreading(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if module in SPREAD else module

    return LoadFileSpreading(config, log)


# tryfirst: outside pytest-timeout's timer, which must not count the wait
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    """Under xdist every test holds a shared lock on one file of the run from its setup (module fixtures that
    start servers included) to its teardown; a `serial` test takes it exclusively, so it starts once the other
    workers' current tests end and none starts before it is done. Everyone passes a second lock (the turnstile)
    first, so the shared locks of the others cannot starve a waiting serial test. Without xdist (`-n 0`) there
    is nothing to wait for."""
    if not hasattr(item.config, "workerinput"):
        return (yield)
    # xdist gives each worker the base temp folder <the controller's>/<worker id>: the parent is this run's own
    run_dir = Path(item.config.option.basetemp).parent
    serial = item.get_closest_marker("serial") is not None
    with open(run_dir / "serial.lock", "a") as lock, open(run_dir / "serial.turnstile", "a") as turnstile:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            return (yield)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    # ChatOpenAI keeps one httpx client per (base_url, timeout) for the whole process, and this server's base_url
    # is the same for every test: a client whose pooled connections belong to an event loop that an earlier test
    # closed (TestClient's, asyncio.run's) would fail this test's first call, so each test starts without one.
    from langchain_openai.chat_models import _client_utils

    _client_utils._cached_async_httpx_client.cache_clear()
    _client_utils._cached_sync_httpx_client.cache_clear()
    openai_server.reset()
    return openai_server
