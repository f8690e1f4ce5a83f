"""The Python snippets of README.md and docs/api.md run as pasted, each in its own interpreter against a real server
of its kind (`teamgraph serve`, `langgraph dev`) or, for the library one, in a fresh working directory.

Only the server's address is changed (the docs say 127.0.0.1:8000 and :2024; the tests' servers take free ports).
Three README snippets used `async for` / `await` / `async with` at top level, a SyntaxError as pasted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration_tests.live_server import LiveServer
from tests.integration_tests.test_langgraph_dev import dev_server  # noqa: F401 (the fixture)

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/api.md")
# what tells each snippet apart: a test below runs the one that holds it
MARKERS = {
    "README.md": ("RemoteRunnable", "langgraph_sdk", "Engine.open"),
    "docs/api.md": ("RemoteRunnable",),
}


def python_snippets(doc: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (REPO / doc).read_text(), re.S | re.M)


def snippet(doc: str, marker: str) -> str:
    (found,) = [code for code in python_snippets(doc) if marker in code]
    return found


def run(code: str, cwd: Path) -> str:
    """The snippet in a fresh interpreter (this virtualenv's), without the developer's Teamgraph or OpenAI settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEAMGRAPH_", "OPENAI_", "LANGSMITH_"))}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"the snippet failed:\n{code}\nstderr:\n{done.stderr[-4000:]}"
    return done.stdout


def at(code: str, docs_url: str, url: str) -> str:
    assert docs_url in code, code  # the docs' address is what gets replaced
    return code.replace(docs_url, url)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("snippets")) as live:
        yield live


def test_every_python_snippet_of_the_docs_is_run_here() -> None:
    for doc, markers in MARKERS.items():
        snippets = python_snippets(doc)
        assert len(snippets) == len(markers), f"{doc}: a new Python snippet needs a test here"
        for code in snippets:
            assert sum(marker in code for marker in markers) == 1, code
            compile(code, doc, "exec")  # top-level await is a SyntaxError: it would not run as pasted


def test_readme_langserve_client(server: LiveServer) -> None:
    out = run(at(snippet("README.md", "RemoteRunnable"), "http://127.0.0.1:8000", server.url), REPO)
    assert out.startswith("You can return any unworn item within 30 days")  # the offline responder, Veneo's FAQ
    lines = out.splitlines()  # then the streamed turn's events, the reviewer's among them
    assert "on_chain_end safety_reviewer" in lines and lines[-1] == "on_chain_end /teams/veneo_chat", lines


def test_api_md_interview_client(server: LiveServer) -> None:
    # run from the repo root: the snippet reads examples/resume.md
    out = run(at(snippet("docs/api.md", "RemoteRunnable"), "http://127.0.0.1:8000", server.url), REPO)
    question, evaluation = out.splitlines()
    assert question.startswith("Question 1 of 3"), out  # the demo tenant's three questions, from the resume
    assert "'scored_by': 'fallback'" in evaluation and "'overall': " in evaluation, out


def test_readme_langgraph_sdk_client(dev_server: str) -> None:  # noqa: F811 (the imported fixture)
    out = run(at(snippet("README.md", "langgraph_sdk"), "http://127.0.0.1:2024", dev_server), REPO)
    assert "30 days" in out


def test_readme_engine_in_process(tmp_path: Path) -> None:
    out = run(snippet("README.md", "Engine.open"), tmp_path)  # Settings(): ./data under the working directory
    assert "30 days" in out and "approve" in out
    assert (tmp_path / "data" / "teamgraph.db").exists()
