"""Voice over real HTTP against the local OpenAI-compatible server (speech and realtime client-secret endpoints):
the same SDK client production uses, no mocking of the transport."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient

from personas.factory import AgentFactory
from server.app import create_app
from server.settings import Settings
from tests.fakes.models import FakeAgentFactory
from tests.fakes.openai_server import Error, FakeOpenAIServer, Structured

KEY = "sk-test-fake-server"
DEMO = {"Authorization": "Bearer tg-demo-key"}
RESUME = (Path(__file__).resolve().parents[2] / "examples" / "resume.md").read_text()
QUESTIONS = {
    "questions": [
        {
            "text": "Tell me about the Airflow migration you led.",
            "type": "behavioral",
            "difficulty": "medium",
            "skill": "Airflow",
        },
        {
            "text": "How would you size Kafka partitions for 40 million events a day?",
            "type": "technical",
            "difficulty": "hard",
            "skill": "Kafka",
        },
        {
            "text": "What would you do in your first two weeks here?",
            "type": "situational",
            "difficulty": "easy",
            "skill": "onboarding",
        },
    ]
}
EVALUATION = {
    "scores": [
        {"criterion": c, "score": 4} for c in ("relevance", "structure", "specificity", "impact", "communication")
    ],
    "overall": 4.0,
    "strengths": ["Concrete numbers"],
    "improvements": ["Say what you learned"],
    "example_answer": "Situation: our batch jobs failed nightly. Result: failures fell by 70% in two months.",
}
ANSWER = "Um, at Acme I led the Airflow migration, uh, and failed runs dropped by 70% in two months."


@contextlib.contextmanager
def make_client(tmp_path: Path, fake: FakeOpenAIServer, factory: AgentFactory | None) -> Iterator[TestClient]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        checkpoint_url=f"sqlite:///{tmp_path}/tg.db",
        TEAMGRAPH_OPENAI_API_KEY=KEY,
        TEAMGRAPH_MODEL_BASE_URL=fake.base_url,
    )
    with TestClient(create_app(settings, agent_factory=factory), raise_server_exceptions=False) as client:
        yield client


def test_preview_and_realtime_over_http(tmp_path: Path, fake_openai: FakeOpenAIServer) -> None:
    with make_client(tmp_path, fake_openai, FakeAgentFactory()) as client:
        first = client.post("/voice/preview", headers=DEMO, json={"voice": "sage", "text": "Hello there."})
        assert first.status_code == 200, first.text
        assert first.content == b'ID3FAKE|["gpt-4o-mini-tts", "sage", "Hello there."]'
        assert first.headers["content-type"] == "audio/mpeg"
        (speech,) = fake_openai.voice_requests
        assert speech["path"] == "/v1/audio/speech"
        assert speech["authorization"] == f"Bearer {KEY}"
        assert speech["body"] == {
            "input": "Hello there.",
            "model": "gpt-4o-mini-tts",
            "voice": "sage",
            "speed": 1.0,
            "response_format": "mp3",
        }
        again = client.post("/voice/preview", headers=DEMO, json={"voice": "sage", "text": "Hello there."})
        assert again.headers["x-voice-cache"] == "hit" and again.content == first.content
        assert len(fake_openai.voice_requests) == 1  # served from the cache

        sid = client.post("/sessions", headers=DEMO, json={"team": "interview"}).json()["id"]
        r = client.post(f"/sessions/{sid}/realtime", headers=DEMO, json={"voice": "verse"})
        assert r.status_code == 200, r.text
        body = r.json()
        secret = fake_openai.voice_requests[-1]
        assert secret["path"] == "/v1/realtime/client_secrets"
        assert secret["authorization"] == f"Bearer {KEY}"
        assert secret["body"]["session"] == body["session"]
        assert body["session"]["audio"]["output"]["voice"] == "verse"
        assert body["client_secret"].startswith("ek_") and KEY not in r.text
        assert datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC)
        assert body["webrtc_url"] == f"{fake_openai.base_url}/realtime/calls"
        # who was given a secret for which session is audited, the secret itself is not
        audit = client.app.state.engine.audit  # type: ignore[attr-defined]
        (started,) = audit.query("demo", session=sid, event_type="voice_session_started")
        assert started.actor != "api" and started.payload == {
            "voice": "verse",
            "model": body["session"]["model"],
            "expires_at": body["expires_at"].replace("Z", "+00:00"),
        }
        assert body["client_secret"] not in json.dumps(started.payload)

        # a rate-limited provider: the SDK retries once, then the client gets 503 with a retry hint
        fake_openai.enqueue_voice(Error(429, retry_after=0.01), Error(429, retry_after=0.01))
        limited = client.post(f"/sessions/{sid}/realtime", headers=DEMO)
        assert limited.status_code == 503, limited.text
        assert limited.json()["error"]["code"] == "voice_rate_limited"
        assert limited.headers["retry-after"] == "1"


def test_a_spoken_answer_is_scored_by_the_model_over_http(tmp_path: Path, fake_openai: FakeOpenAIServer) -> None:
    fake_openai.enqueue(Structured(QUESTIONS), Structured(EVALUATION))
    with make_client(tmp_path, fake_openai, None) as client:  # the real AgentFactory: models on the fake server
        sid = client.post("/sessions", headers=DEMO, json={"team": "interview"}).json()["id"]
        client.post(
            f"/sessions/{sid}/documents",
            headers=DEMO,
            data={"kind": "resume"},
            files={"file": ("cv.md", RESUME.encode(), "text/markdown")},
        )
        items = [
            {
                "id": "ready",
                "role": "user",
                "text": "Ready when you are.",
                "started_at": "2025-03-01T09:00:00Z",
                "ended_at": "2025-03-01T09:00:02Z",
            },
            {
                "id": "answer",
                "role": "user",
                "text": ANSWER,
                "started_at": "2025-03-01T09:00:10Z",
                "ended_at": "2025-03-01T09:00:18Z",
            },
        ]
        r = client.post(f"/sessions/{sid}/transcripts", headers=DEMO, json={"items": items})
        assert r.status_code == 200, r.text
        evaluation = r.json()["items"][1]["evaluation"]
    assert evaluation["scored_by"] == "gpt-4o-mini" and evaluation["overall"] == 4.0
    assert evaluation["delivery"]["wpm"] == 135.0 and evaluation["delivery"]["fillers"] == 2
    assert "Slow down" not in " ".join(evaluation["improvements"])
    evaluator_request = fake_openai.requests[1]
    assert ANSWER in str(evaluator_request["messages"])  # the transcript is the answer the model scored
