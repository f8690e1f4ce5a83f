"""LangSmith traces from a real server: tenant, team and thread metadata, node names, no secrets, hidden I/O."""

from __future__ import annotations

import shutil
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.fakes.langsmith_server import FakeLangSmith
from tests.fakes.openai_server import FakeOpenAIServer, Reply, Structured
from tests.integration_tests.live_server import DEMO_KEY, REPO, VENEO_KEY, LiveServer, auth

PROVIDER_KEY = "sk-test-provider-SECRET-0d6f"
LANGSMITH_KEY = "lsv2_pt_test-SECRET-7a1c"
SECRETS = (PROVIDER_KEY, LANGSMITH_KEY, DEMO_KEY, VENEO_KEY)
RESUME = "Jane Q. Example, data engineer: Kafka pipelines at Acme, 40% lower latency."


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for traces")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory):
    """One traced server for the module: each test sets the provider's reply and reads the runs of its own thread
    (and checks every body the fake LangSmith received, its own and the other test's)."""
    tmp_path = tmp_path_factory.mktemp("traced")
    bundle = tmp_path / "personas"
    shutil.copytree(REPO / "personas", bundle, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    with (bundle / "tenants" / "demo.yaml").open("a") as f:  # this tenant may not send content to LangSmith
        f.write("tracing:\n  hide_inputs: true\n  hide_outputs: true\n")
    with FakeLangSmith() as langsmith, FakeOpenAIServer() as provider:
        env = {
            "LANGSMITH_TRACING": "true",
            "LANGSMITH_ENDPOINT": langsmith.url,
            "LANGSMITH_API_KEY": LANGSMITH_KEY,
            "LANGSMITH_PROJECT": "teamgraph-tests",
            "OPENAI_API_KEY": PROVIDER_KEY,
            "OPENAI_BASE_URL": provider.base_url,
            "TEAMGRAPH_PERSONAS_DIR": str(bundle),
        }
        with LiveServer(tmp_path, env=env) as server:
            yield server, langsmith, provider


def test_runs_carry_tenant_team_thread_and_no_secrets(traced) -> None:
    server, langsmith, provider = traced
    provider.set_default(Reply("Standard shipping takes 3 to 5 business days."))
    thread = str(uuid.uuid4())
    response = httpx.post(
        f"{server.url}/teams/veneo_chat/invoke",
        json={
            "input": {"messages": [{"type": "human", "content": "How long does shipping take?"}]},
            "config": {"configurable": {"thread_id": thread}},
        },
        headers=auth(VENEO_KEY),
        timeout=30,
    )
    assert response.status_code == 200, response.text

    def names() -> set[str]:
        return {
            r.get("name")
            for r in langsmith.runs
            if (r.get("extra") or {}).get("metadata", {}).get("thread_id") == thread and r.get("end_time")
        }

    wait_for(lambda: {"/teams/veneo_chat", "primary_responder", "safety_reviewer", "memory_keeper"} <= names())
    runs = [r for r in langsmith.runs if (r.get("extra") or {}).get("metadata", {}).get("thread_id") == thread]
    root = next(r for r in runs if r["name"] == "/teams/veneo_chat")
    meta = root["extra"]["metadata"]
    assert meta["tenant"] == "veneo" and meta["team"] == "veneo_chat" and meta["key_id"] == "veneo-dev"
    assert meta["personas"]["safety_reviewer"] == "safety_reviewer"
    assert meta["models"]["primary_responder"] == "gpt-4o-mini"
    assert {"team:veneo_chat", "tenant:veneo"} <= set(root["tags"])
    llm_runs = [r for r in runs if r.get("run_type") == "llm"]
    assert llm_runs and all(r["extra"]["metadata"]["tenant"] == "veneo" for r in llm_runs)
    assert "shipping" in str(root["inputs"]).lower()  # this tenant's content is traced
    for body in langsmith.raw:
        for secret in SECRETS:
            assert secret not in body


def test_tenant_setting_hides_inputs_and_outputs(traced) -> None:
    server, langsmith, provider = traced
    provider.set_default(
        Structured(
            {
                "questions": [
                    {
                        "text": "Tell me about a Kafka pipeline you improved.",
                        "type": "behavioral",
                        "difficulty": "medium",
                        "skill": "Kafka",
                    }
                ]
            }
        )
    )
    thread = str(uuid.uuid4())
    response = httpx.post(
        f"{server.url}/teams/interview/invoke",
        json={
            "input": {"resume": RESUME, "messages": [{"type": "human", "content": "Start"}]},
            "config": {"configurable": {"thread_id": thread}},
        },
        headers=auth(DEMO_KEY),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert "Kafka pipeline" in response.text  # the client still gets everything

    def finished() -> list[dict[str, Any]]:
        return [
            r
            for r in langsmith.runs
            if (r.get("extra") or {}).get("metadata", {}).get("thread_id") == thread and r.get("end_time")
        ]

    wait_for(lambda: {"/teams/interview", "question_generator"} <= {r["name"] for r in finished()})
    for run in finished():
        assert run["extra"]["metadata"]["tenant"] == "demo"
        assert not run.get("inputs") and not run.get("outputs"), run["name"]
    assert not any("Jane Q. Example" in body for body in langsmith.raw)
