"""Property-based fuzzing of the whole HTTP API with schemathesis, against a real `teamgraph serve` on 127.0.0.1.

Positive and negative data for every operation in /openapi.json, authenticated with a development key: no
response may be a server error, and every response must match what the document declares (status, content
type, body schema). Bounded by examples per operation (about 1,500 requests, about a minute).
The models and voice provider are the local fake OpenAI server, so voice routes answer instead of 503.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration_tests.live_server import REPO, VENEO_KEY, LiveServer, auth

ST = REPO / ".venv" / "bin" / "st"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, openai_server: FakeOpenAIServer) -> Iterator[LiveServer]:
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": openai_server.base_url}
    with LiveServer(tmp_path_factory.mktemp("fuzz"), env=env) as live:
        yield live


def test_the_openapi_document_declares_auth_errors_and_required_fields(server: LiveServer) -> None:
    """What a client generator reads: the auth schemes, the error model on every error status, thread_id required."""
    doc = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert doc["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["security"] == ([] if path in ("/healthz", "/readyz") else [{"bearer": []}, {"apiKey": []}])
            for status, response in op["responses"].items():
                if int(status) >= 400 and path != "/readyz":
                    assert response["content"]["application/json"]["schema"] == error_ref, (method, path, status)
    invoke = doc["paths"]["/teams/veneo_chat/invoke"]["post"]
    assert {"400", "401", "403", "404", "409", "413", "422", "429", "503"} <= set(invoke["responses"])
    assert "config_hash" not in str(invoke.get("parameters", []))
    assert invoke["summary"].startswith("veneo_chat:") and "thread_id" in invoke["description"]
    schemas = doc["components"]["schemas"]
    assert schemas["teams_veneo_chatInvokeRequest"]["required"] == ["input", "config"]
    assert schemas["veneo_chat_config"]["required"] == ["configurable"]
    configurable = schemas["teams_veneo_chatConfigurable"]
    assert configurable["required"] == ["thread_id"] and configurable["properties"]["thread_id"]["pattern"]
    assert schemas["veneo_chat_input"]["required"] == ["messages"]
    assert schemas["veneo_chat_input"]["additionalProperties"] is False
    assert "example" in schemas["teams_veneo_chatInvokeRequest"]
    upload = doc["paths"]["/sessions/{session_id}/documents"]["post"]
    assert {"413", "415", "422"} <= set(upload["responses"])
    stream = doc["paths"]["/teams/veneo_chat/stream"]["post"]["responses"]["200"]
    assert list(stream["content"]) == ["text/event-stream"]


@pytest.mark.timeout(780)  # ~1 min alone; over 6 min beside another xdist worker on a machine busy with other runs
def test_schemathesis_finds_no_server_error_and_no_undeclared_response(server: LiveServer, tmp_path: Path) -> None:
    """`st run` over every operation, positive and negative data; the exit code is 0 only with no failure."""
    key = auth(VENEO_KEY)["Authorization"]
    result = subprocess.run(
        [str(ST), "run", f"{server.url}/openapi.json", "--header", f"Authorization:{key}", "--mode", "all",
         "--checks", CHECKS, "--max-examples", "15", "--seed", "15", "--workers", "1", "--request-timeout", "30",
         "--phases", "examples,coverage,fuzzing", "--generation-database", "none", "--no-color",
         # the key goes in the header above; schemathesis would otherwise also send requests without X-API-Key
         # (the other, alternative scheme) and call the 200 they get a failure
         "--generation-with-security-parameters", "false",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=720,
        cwd=tmp_path,
    )  # fmt: skip
    report = result.stdout[-12000:]
    assert result.returncode == 0, f"schemathesis failed:\n{report}\n{result.stderr[-3000:]}"
    selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert selected and tested, report
    assert int(tested.group(1)) == int(selected.group(2)) >= 20, report  # every operation in the document ran
    assert "Traceback" not in server.stderr, server.stderr[-3000:]
