"""Provider calls for voice, mocked with respx: the composed realtime payloads (both teams and a tenant override),
the speech request and its cache, and how provider failures reach the client.

The `openai` SDK's default transport is httpx2, which respx (httpx only) does not see; the voice provider hands
the SDK an `httpx.AsyncClient` (which the SDK accepts as `http_client`), so the very client production uses is
the one respx intercepts here. FastAPI's TestClient runs on httpx2 and is not intercepted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import yaml
from fastapi.testclient import TestClient

from personas.loader import DEFAULT_BUNDLE_DIR
from server.app import create_app
from server.settings import Settings
from tests.fakes.models import FakeAgentFactory

PROVIDER = "http://provider.test/v1"
SERVER_KEY = "sk-test-server-key-never-leaves"
DEMO = {"Authorization": "Bearer tg-demo-key"}
VENEO = {"X-API-Key": "tg-veneo-key"}
RESUME = (Path(__file__).resolve().parents[2] / "examples" / "resume.md").read_text()
SECRET = {
    "value": "ek_test_123",
    "expires_at": 1_900_000_000,
    "session": {"type": "realtime", "id": "sess_1", "object": "realtime.session"},
}


def make_client(tmp_path: Path, personas_dir: Path | None = None) -> TestClient:
    extra: dict[str, Any] = {"personas_dir": personas_dir} if personas_dir else {}
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        checkpoint_url=f"sqlite:///{tmp_path}/tg.db",
        TEAMGRAPH_OPENAI_API_KEY=SERVER_KEY,
        TEAMGRAPH_MODEL_BASE_URL=PROVIDER,
        **extra,
    )
    # chat models stay offline (fake factory); voice uses the configured provider
    return TestClient(create_app(settings, agent_factory=FakeAgentFactory()), raise_server_exceptions=False)


@pytest.fixture
def provider() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=PROVIDER, assert_all_called=False, assert_all_mocked=True) as router:
        yield router


@pytest.fixture
def client(tmp_path: Path, provider: respx.MockRouter) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        yield c


def started_interview(client: TestClient, headers: dict[str, str]) -> str:
    """An interview session with its questions generated (offline), by a spoken 'ready' turn."""
    sid = client.post("/sessions", headers=headers, json={"team": "interview"}).json()["id"]
    client.post(
        f"/sessions/{sid}/documents",
        headers=headers,
        data={"kind": "resume"},
        files={"file": ("cv.md", RESUME.encode(), "text/markdown")},
    )
    item = {
        "id": "item_ready",
        "role": "user",
        "text": "I'm ready.",
        "started_at": "2025-03-01T09:00:00Z",
        "ended_at": "2025-03-01T09:00:02Z",
    }
    r = client.post(f"/sessions/{sid}/transcripts", headers=headers, json={"items": [item]})
    assert r.status_code == 200, r.text
    return sid


def sent_json(route: respx.Route) -> dict[str, Any]:
    return json.loads(route.calls.last.request.content)


# ---- realtime: the composed payloads ----------------------------------------------------------------------------


def test_interview_realtime_payload(client: TestClient, provider: respx.MockRouter) -> None:
    route = provider.post("/realtime/client_secrets").mock(return_value=httpx.Response(200, json=SECRET))
    sid = started_interview(client, DEMO)
    question = client.get(f"/sessions/{sid}", headers=DEMO).json()["state"]["questions"][0]["text"]

    r = client.post(f"/sessions/{sid}/realtime", headers=DEMO, json={"voice": "sage"})
    assert r.status_code == 200, r.text
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {SERVER_KEY}"  # the server's key goes to the provider only
    sent = sent_json(route)
    assert sent["expires_after"] == {"anchor": "created_at", "seconds": 600}
    session = sent["session"]
    assert session["type"] == "realtime" and session["model"] == "gpt-realtime-2.1-mini"
    assert session["output_modalities"] == ["audio"] and session["max_output_tokens"] == 1200
    assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "sage", "speed": 1.0}
    audio_in = session["audio"]["input"]
    assert audio_in["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio_in["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert audio_in["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "low",
        "create_response": False,
        "interrupt_response": True,
    }
    assert audio_in["noise_reduction"] == {"type": "near_field"}
    # the interviewer persona's template, filled with the session's state
    assert "You are the interviewer in a spoken mock interview." in session["instructions"]
    assert f"Current question (1 of 3, behavioral, medium): {question}" in session["instructions"]
    assert "feedback appears on the candidate's screen" in session["instructions"]

    body = r.json()
    assert body["client_secret"] == "ek_test_123"
    assert body["expires_at"].startswith("2030-03-17T17:46:40")
    assert body["voice"] == "sage"
    assert body["session"] == session  # what the secret carries, so the browser knows it
    assert body["webrtc_url"] == f"{PROVIDER}/realtime/calls"
    assert body["transcripts_url"] == f"/sessions/{sid}/transcripts"
    assert SERVER_KEY not in r.text


def test_chat_realtime_payload_defaults_to_the_tenants_voice(client: TestClient, provider: respx.MockRouter) -> None:
    route = provider.post("/realtime/client_secrets").mock(return_value=httpx.Response(200, json=SECRET))
    sid = client.post("/sessions", headers=VENEO, json={}).json()["id"]
    r = client.post(f"/sessions/{sid}/realtime", headers=VENEO)  # no body: the default voice
    assert r.status_code == 200, r.text
    session = sent_json(route)["session"]
    assert session["audio"]["output"]["voice"] == "coral"  # veneo's override of its chat team
    assert session["max_output_tokens"] == 600  # the responder persona's max_tokens
    assert session["audio"]["input"]["turn_detection"]["create_response"] is False
    instructions = session["instructions"]
    assert instructions.startswith("You are Veneo's friendly assistant.")
    assert "Do not help with these topics: weapons, self harm, medical advice." in instructions
    assert "Only speak the replies the app gives you" in instructions


def test_tenant_override_shapes_the_realtime_payload(tmp_path: Path, provider: respx.MockRouter) -> None:
    root = tmp_path / "personas"
    for kind in ("agents", "teams", "tenants", "knowledge"):
        shutil.copytree(DEFAULT_BUNDLE_DIR / kind, root / kind)
    catalog = yaml.safe_load((DEFAULT_BUNDLE_DIR / "voice_catalog.yaml").read_text())
    catalog["voices"].append({"id": "house", "name": "House", "provider_voice": "voice_1234"})
    (root / "voice_catalog.yaml").write_text(yaml.safe_dump(catalog))
    demo = yaml.safe_load((root / "tenants" / "demo.yaml").read_text())
    demo["voice"] = {"allowed_voices": ["house", "verse", "sage"]}
    demo["overrides"]["agents"] = {
        "question_generator": {
            "voice": {"instructions": "Act as a strict {role} panel. {interview_status} Question text: {question}"}
        }
    }
    demo["overrides"]["teams"]["interview"]["voice"] = {
        "realtime_model": "gpt-realtime",
        "default_voice": "house",
        "speed": 1.1,
        "secret_ttl_s": 120,
        "transcription": {"model": "whisper-1", "language": "en", "prompt": "Kafka, Airflow"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 800, "create_response": True},
        "noise_reduction": "far_field",
        "max_output_tokens": 300,
    }
    (root / "tenants" / "demo.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    route = provider.post("/realtime/client_secrets").mock(return_value=httpx.Response(200, json=SECRET))

    with make_client(tmp_path, root) as client:
        voices = client.get("/voice/voices", headers=DEMO).json()
        assert [(v["id"], v["default"]) for v in voices["voices"]] == [
            ("sage", False),
            ("verse", False),
            ("house", True),
        ]
        sid = started_interview(client, DEMO)
        question = client.get(f"/sessions/{sid}", headers=DEMO).json()["state"]["questions"][0]["text"]
        r = client.post(f"/sessions/{sid}/realtime", headers=DEMO)
        assert r.status_code == 200, r.text
    sent = sent_json(route)
    assert sent["expires_after"]["seconds"] == 120
    session = sent["session"]
    assert session["model"] == "gpt-realtime"
    assert session["max_output_tokens"] == 300
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "voice_1234",
        "speed": 1.1,
    }
    audio_in = session["audio"]["input"]
    assert audio_in["transcription"] == {"model": "whisper-1", "language": "en", "prompt": "Kafka, Airflow"}
    assert audio_in["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 800,
        "create_response": True,
        "interrupt_response": True,
    }
    assert audio_in["noise_reduction"] == {"type": "far_field"}
    assert session["instructions"].startswith("Act as a strict not stated")  # no role in the resume-only session
    assert f"Question text: {question}" in session["instructions"]
    assert r.json()["voice"] == "house"


def test_a_voice_the_tenant_may_not_use_is_refused_before_any_call(
    client: TestClient, provider: respx.MockRouter
) -> None:
    route = provider.post("/realtime/client_secrets").mock(return_value=httpx.Response(200, json=SECRET))
    sid = client.post("/sessions", headers=VENEO, json={}).json()["id"]
    r = client.post(f"/sessions/{sid}/realtime", headers=VENEO, json={"voice": "ash"})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "voice"
    assert route.call_count == 0


# ---- previews and their cache -----------------------------------------------------------------------------------


def test_preview_calls_the_speech_endpoint_once_then_serves_the_cache(
    tmp_path: Path, client: TestClient, provider: respx.MockRouter
) -> None:
    route = provider.post("/audio/speech").mock(
        return_value=httpx.Response(200, content=b"ID3-sage-audio", headers={"content-type": "audio/mpeg"})
    )
    first = client.post("/voice/preview", headers=DEMO, json={"voice": "sage"})
    assert first.status_code == 200, first.text
    assert first.content == b"ID3-sage-audio"
    assert first.headers["content-type"] == "audio/mpeg"
    assert (first.headers["x-voice"], first.headers["x-voice-cache"]) == ("sage", "miss")
    assert sent_json(route) == {
        "input": "Hi, I'm Sage, and I'll be your interviewer today. Take your time with each answer.",
        "model": "gpt-4o-mini-tts",
        "voice": "sage",
        "speed": 1.0,
        "response_format": "mp3",
    }
    assert route.calls.last.request.headers["authorization"] == f"Bearer {SERVER_KEY}"

    second = client.post("/voice/preview", headers=DEMO, json={"voice": "sage"})
    assert second.status_code == 200
    assert (second.content, second.headers["x-voice-cache"]) == (b"ID3-sage-audio", "hit")
    assert route.call_count == 1  # no HTTP call for the repeat
    assert len(list((tmp_path / "voice-cache").glob("*.mp3"))) == 1  # under the data directory

    client.post("/voice/preview", headers=DEMO, json={"voice": "sage", "text": "Something else."})
    assert route.call_count == 2
    assert sent_json(route)["input"] == "Something else."
    client.post("/voice/preview", headers=DEMO, json={"voice": "sage", "format": "wav"})
    assert (route.call_count, sent_json(route)["response_format"]) == (3, "wav")
    # another tenant's identical preview is its own (tenants share nothing, not even a cache timing)
    veneo = client.post("/voice/preview", headers=VENEO, json={"voice": "sage", "team": "interview"})
    assert veneo.headers["x-voice-cache"] == "miss" and route.call_count == 4


def test_the_cache_outlives_the_process(tmp_path: Path, provider: respx.MockRouter) -> None:
    route = provider.post("/audio/speech").mock(return_value=httpx.Response(200, content=b"ID3-audio"))
    with make_client(tmp_path) as client:
        assert client.post("/voice/preview", headers=DEMO, json={"voice": "echo"}).status_code == 200
    with make_client(tmp_path) as client:
        again = client.post("/voice/preview", headers=DEMO, json={"voice": "echo"})
        assert again.headers["x-voice-cache"] == "hit"
    assert route.call_count == 1


# ---- provider failures ------------------------------------------------------------------------------------------

FAST_RETRY = {"retry-after-ms": "5"}  # the SDK retries once (max_retries: 1) after this many milliseconds


def provider_error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"message": f"Incorrect API key provided: {SERVER_KEY[:8]}...eave", "type": "x", "code": code}}
    return httpx.Response(status, json=body, headers=headers or {})


FAILURES = [
    # (what the provider does, status, code, Retry-After, provider calls)
    (provider_error(401, "invalid_api_key"), 502, "voice_provider_auth", None, 1),
    (provider_error(429, "rate_limit_exceeded", {"retry-after": "7", **FAST_RETRY}), 503, "voice_rate_limited", "7", 2),
    (provider_error(500, "server_error", FAST_RETRY), 502, "voice_provider_error", "5", 2),
    (provider_error(503, "overloaded", {"retry-after": "11", **FAST_RETRY}), 502, "voice_provider_error", "11", 2),
    (provider_error(404, "model_not_found"), 502, "voice_provider_rejected", None, 1),
    (httpx.ReadTimeout("read timed out"), 504, "voice_provider_timeout", "5", 2),
    (httpx.ConnectError("connection refused"), 502, "voice_provider_unreachable", "5", 2),
]


@pytest.mark.parametrize(
    ("behaviour", "status", "code", "retry_after", "calls"),
    FAILURES,
    ids=["401", "429", "500", "503", "404", "timeout", "unreachable"],
)
def test_preview_failures_are_clear_and_cache_nothing(
    tmp_path: Path,
    client: TestClient,
    provider: respx.MockRouter,
    behaviour: Any,
    status: int,
    code: str,
    retry_after: str | None,
    calls: int,
) -> None:
    route = provider.post("/audio/speech")
    if isinstance(behaviour, Exception):
        route.mock(side_effect=behaviour)
    else:
        route.mock(return_value=behaviour)
    r = client.post("/voice/preview", headers=DEMO, json={"voice": "alloy"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert r.headers.get("retry-after") == retry_after
    assert SERVER_KEY[:8] not in r.text  # the provider's message (which quotes the key) is never forwarded
    assert route.call_count == calls
    assert not list((tmp_path / "voice-cache").glob("*.mp3"))  # nothing stored
    if code == "voice_provider_rejected":
        assert "(model_not_found)" in error["message"]

    # the next preview succeeds normally once the provider recovers
    route.mock(return_value=httpx.Response(200, content=b"ID3"), side_effect=None)
    assert client.post("/voice/preview", headers=DEMO, json={"voice": "alloy"}).headers["x-voice-cache"] == "miss"


@pytest.mark.parametrize(
    ("behaviour", "status", "code", "retry_after", "calls"),
    FAILURES,
    ids=["401", "429", "500", "503", "404", "timeout", "unreachable"],
)
def test_realtime_failures_are_clear_and_change_nothing(
    client: TestClient,
    provider: respx.MockRouter,
    behaviour: Any,
    status: int,
    code: str,
    retry_after: str | None,
    calls: int,
) -> None:
    route = provider.post("/realtime/client_secrets")
    if isinstance(behaviour, Exception):
        route.mock(side_effect=behaviour)
    else:
        route.mock(return_value=behaviour)
    sid = client.post("/sessions", headers=VENEO, json={}).json()["id"]
    before = client.get(f"/sessions/{sid}/history", headers=VENEO).json()
    r = client.post(f"/sessions/{sid}/realtime", headers=VENEO)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.headers.get("retry-after") == retry_after
    assert SERVER_KEY[:8] not in r.text
    assert route.call_count == calls
    assert client.get(f"/sessions/{sid}/history", headers=VENEO).json() == before
