"""The interview's answer keys (what the scorer expects of each answer) are stored with the session and used by the
fallback scorer, and no client route shows them: invoke output, streams, stream events, session reads, exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from langgraph.checkpoint.sqlite import SqliteSaver

from tests.integration_tests.test_api_routes import (
    ANSWERS,
    DEMO,
    RESUME,
    configured,
    human,
    invoke,
    make_client,
    new_session,
    session_detail,
)


def stored_channels(client: TestClient, db: Path, session_id: str) -> dict[str, Any]:
    """The latest checkpoint's channel values as stored (every channel, private ones too)."""
    thread_id = client.app.state.engine.get_session("demo", session_id).thread_id  # type: ignore[attr-defined]
    with SqliteSaver.from_conn_string(str(db)) as saver:
        found = saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
    assert found is not None
    return dict(found.checkpoint["channel_values"])


def test_answer_keys_are_stored_used_and_never_shown(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        sid = new_session(client, DEMO)["id"]
        output = invoke(client, "interview", DEMO, sid, RESUME)
        assert output["questions"] and "answer_keys" not in output

        keys = stored_channels(client, tmp_path / "tg.db", sid)["answer_keys"]
        assert [k["question"] for k in keys] == [q["text"] for q in output["questions"]]
        assert all(k["reference"] for k in keys)
        # the first question asks about one of the resume's achievements: its key names that line
        assert keys[0]["resume_line"] and keys[0]["resume_line"].lower() in RESUME.lower()

        secrets = ['"answer_keys"']
        r = client.post(
            "/teams/interview/stream_events",
            headers=DEMO,
            json={"input": human(ANSWERS[0]), "config": configured(sid), "version": "v2"},
        )
        assert r.status_code == 200, r.text
        assert "on_chain_end" in r.text and "fallback_scorer" in r.text  # the scorer ran inside this stream
        assert '"answer_keys"' not in r.text
        r = client.post(
            "/teams/interview/stream", headers=DEMO, json={"input": human(ANSWERS[1]), "config": configured(sid)}
        )
        assert r.status_code == 200, r.text
        assert '"answer_keys"' not in r.text

        detail = session_detail(client, DEMO, sid)
        shown = json.dumps(detail)
        assert "answer_keys" not in detail["state"] and '"answer_keys"' not in shown
        # the example answer of a scored question is built from its key (shown once the answer is scored)
        first = detail["state"]["evaluations"][0]
        assert keys[0]["resume_line"].lower() in first["example_answer"].lower()

        r = client.get(f"/sessions/{sid}/export", headers=DEMO)
        assert r.status_code == 200, r.text
        assert secrets[0] not in r.text
        assert "answer_keys" not in r.json()["state"]
