"""`teamgraph --help` and `teamgraph personas validate` stay light: they import neither the server nor LangGraph;
and the server starts without the OpenAI SDK, which only voice and moderation calls need (nor psycopg on SQLite).

Each case runs in a fresh interpreter (this one has imported everything already) and reports which packages it
loaded; the assertion is on what was imported, not on how long it took.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# what the server needs and a command that only parses arguments or reads YAML does not
HEAVY = (
    "langgraph",
    "langchain_core",
    "langchain_openai",
    "langserve",
    "langsmith",
    "fastapi",
    "starlette",
    "uvicorn",
    "openai",
    "httpx",
    "sqlite_utils",
    "psycopg",
    "prometheus_client",
    "opentelemetry",
    "structlog",
    "numpy",
    "server.engine",
    "server.app",
    "server.settings",
    "checkpoints.factory",
    "graphs.interview",
    "graphs.veneo_chat",
    "nodes",
)

PROBE = """
import json, sys
args = json.loads(sys.argv[1])
import server.cli
result = None
if args is not None:
    from typer.testing import CliRunner
    outcome = CliRunner().invoke(server.cli.app, args)
    result = {"exit_code": outcome.exit_code, "output": outcome.output, "exception": repr(outcome.exception)}
print(json.dumps({"modules": sorted(sys.modules), "result": result}))
"""


def run_in_fresh_interpreter(args: list[str] | None) -> tuple[set[str], dict | None]:
    """Import server.cli (and run `teamgraph *args` with typer's CliRunner) in a new interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    return set(report["modules"]), report["result"]


def heavy_imports(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_importing_the_cli_imports_only_typer_and_the_standard_library() -> None:
    modules, _ = run_in_fresh_interpreter(None)

    assert heavy_imports(modules) == []
    assert "pydantic" not in modules  # not even the bundle schema: --help needs none of it
    assert "server.cli" in modules


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["serve", "--help"],
        ["migrate", "--help"],
        ["sessions", "list", "--help"],
        ["audit", "export", "--help"],
        ["voice", "preview", "--help"],
        ["personas", "validate", "--help"],
    ],
    ids=lambda args: " ".join(args),
)
def test_help_imports_nothing_of_the_server(args: list[str]) -> None:
    modules, result = run_in_fresh_interpreter(args)

    assert result is not None
    assert result["exit_code"] == 0, result
    assert "Usage:" in result["output"]
    assert heavy_imports(modules) == []


def test_personas_validate_reads_the_bundles_with_pydantic_and_yaml_only(tmp_path: Path) -> None:
    bundle = tmp_path / "personas"
    for kind in ("agents", "teams", "tenants", "knowledge"):
        shutil.copytree(REPO / "personas" / kind, bundle / kind)

    modules, result = run_in_fresh_interpreter(["personas", "validate", str(bundle)])

    assert result is not None
    assert result["exit_code"] == 0, result
    assert result["output"].startswith("ok: 7 agents, 2 teams, 2 tenants")
    assert {"pydantic", "yaml", "personas.schema", "graphs.registry"} <= modules  # it did validate
    assert heavy_imports(modules) == []


def test_personas_validate_of_a_broken_bundle_reports_it_with_the_same_light_imports(tmp_path: Path) -> None:
    bundle = tmp_path / "personas"
    for kind in ("agents", "teams", "tenants", "knowledge"):
        shutil.copytree(REPO / "personas" / kind, bundle / kind)
    team = bundle / "teams" / "interview.yaml"
    team.write_text(team.read_text(encoding="utf-8").replace("graph: interview", "graph: no_such_graph"))

    modules, result = run_in_fresh_interpreter(["personas", "validate", str(bundle)])

    assert result is not None
    assert result["exit_code"] == 1, result
    assert "no_such_graph" in result["output"]
    assert heavy_imports(modules) == []


SERVER_PROBE = """
import asyncio, json, sys
from server.app import create_app
from server.settings import Settings

app = create_app(Settings(_env_file=None, checkpoint_url=sys.argv[1]))

async def start_and_stop():
    async with app.router.lifespan_context(app):
        pass

asyncio.run(start_and_stop())
print(json.dumps(sorted(sys.modules)))
"""


def test_the_server_starts_offline_on_sqlite_without_the_openai_sdk_or_psycopg(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SERVER_PROBE, f"sqlite:///{tmp_path}/tg.db"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("TEAMGRAPH_", "OPENAI_"))},
    )
    assert proc.returncode == 0, proc.stderr
    modules = set(json.loads(proc.stdout.splitlines()[-1]))

    assert {"fastapi", "langgraph", "server.engine", "server.voice.provider"} <= modules  # it did start
    assert sorted(m for m in modules if m == "openai" or m.startswith(("openai.", "langchain_openai"))) == []
    # nor the PostgreSQL driver on SQLite
    assert sorted(m for m in modules if m == "psycopg" or m.startswith(("psycopg.", "psycopg_pool"))) == []
