"""The audit trail through the real app: what a session's life writes, who may read it, what a tenant's content
policy keeps, that `verify` catches tampering, that a failed audit write fails the action, and the
`teamgraph audit` commands.

Apps run on real SQLite files under tmp_path and on a real Postgres (a fresh schema per test, so tampering never
touches another test's chain); models are offline.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from checkpoints.audit import GENESIS, AuditEvent, AuditLog, AuditWriteError, entry_hash
from checkpoints.factory import open_audit_log
from personas.loader import DEFAULT_BUNDLE_DIR
from server.app import create_app
from server.cli import app as cli_app
from server.settings import Settings
from tests.conftest import fresh_postgres_schema

REPO = Path(__file__).resolve().parents[2]
TEAMGRAPH = REPO / ".venv" / "bin" / "teamgraph"

DEMO = {"Authorization": "Bearer tg-demo-key"}  # demo's user key (interview)
VENEO = {"X-API-Key": "tg-veneo-key"}  # veneo's user key (veneo_chat, interview)
DEMO_ADMIN_KEY = f"tg-demo-admin-{uuid.uuid4().hex}"
VENEO_ADMIN_KEY = f"tg-veneo-admin-{uuid.uuid4().hex}"
DEMO_ADMIN = {"Authorization": f"Bearer {DEMO_ADMIN_KEY}"}
VENEO_ADMIN = {"Authorization": f"Bearer {VENEO_ADMIN_KEY}"}

TITLE = "Mock interview for Acme"
RESUME = "# Jane Doe\nData engineer: Python, Kafka and Airflow pipelines at Acme for five years."
ANSWER = "At Acme I moved our batch jobs to Airflow and cut failed runs by 70 percent within a quarter."
LIFE_EVENTS = [
    "session_created", "team_selected", "document_uploaded",
    "message", "response", "response",  # "Start"; intro, question 1
    "message", "response", "evaluation", "response",  # the answer; its evaluation, scored; question 2
    "session_renamed", "session_delete_started", "session_deleted",  # a delete is audited as it starts and ends
]  # fmt: skip
FIELDS = ["tenant", "seq", "at", "actor", "session", "event_type", "payload", "prev_hash", "hash"]


# --- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema per test, so tampering in one test never touches another test's chain."""
    with fresh_postgres_schema("tg_audit") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/tg.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(autouse=True)
def _admin_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tenants' admin keys come from the environment, read when the app is created."""
    monkeypatch.setenv("TEAMGRAPH_DEMO_ADMIN_KEY", DEMO_ADMIN_KEY)
    monkeypatch.setenv("TEAMGRAPH_VENEO_ADMIN_KEY", VENEO_ADMIN_KEY)


def bundles(tmp_path: Path, demo_content: str | None = None, veneo_admin: bool = False) -> Path:
    """A copy of the persona bundles with demo's audit content policy and/or an admin key for veneo."""
    target = tmp_path / "personas"
    shutil.copytree(DEFAULT_BUNDLE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    if demo_content is not None:
        path = target / "tenants" / "demo.yaml"
        tenant = yaml.safe_load(path.read_text())
        tenant["audit"] = {"content": demo_content}
        path.write_text(yaml.safe_dump(tenant))
    if veneo_admin:
        path = target / "tenants" / "veneo.yaml"
        tenant = yaml.safe_load(path.read_text())
        tenant["api_keys"].append({"id": "veneo-admin", "env": "TEAMGRAPH_VENEO_ADMIN_KEY", "role": "admin"})
        path.write_text(yaml.safe_dump(tenant))
    return target


@contextlib.contextmanager
def serve(url: str, personas_dir: Path | None = None) -> Iterator[TestClient]:
    extra: dict[str, Any] = {"personas_dir": personas_dir} if personas_dir else {}
    app = create_app(Settings(_env_file=None, checkpoint_url=url, log_format="json", **extra))  # type: ignore[call-arg]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, response.text
    return response


def turn(client: TestClient, team: str, headers: dict[str, str], thread_id: str, text: str,
         endpoint: str = "invoke") -> httpx.Response:  # fmt: skip
    return client.post(
        f"/teams/{team}/{endpoint}",
        headers=headers,
        json={
            "input": {"messages": [{"type": "human", "content": text}]},
            "config": {"configurable": {"thread_id": thread_id}},
        },
    )


def upload_resume(client: TestClient, sid: str, text: str = RESUME) -> None:
    ok(client.post(f"/sessions/{sid}/documents", headers=DEMO, data={"kind": "resume"},
                   files={"file": ("cv.txt", text.encode(), "text/plain")}))  # fmt: skip


def interview(client: TestClient, resume: str = RESUME, answer: str = ANSWER) -> str:
    """A session with an uploaded resume, its questions and one (fallback-scored) answer."""
    sid: str = ok(client.post("/sessions", headers=DEMO, json={"title": TITLE}), 201).json()["id"]
    upload_resume(client, sid, resume)
    ok(turn(client, "interview", DEMO, sid, "Start"))
    ok(turn(client, "interview", DEMO, sid, answer))
    return sid


def session_life(client: TestClient) -> str:
    """Create, upload, two turns, rename, delete."""
    sid = interview(client)
    ok(client.patch(f"/sessions/{sid}", headers=DEMO, json={"title": "Renamed"}))
    ok(client.delete(f"/sessions/{sid}", headers=DEMO), 204)
    return sid


def audit_items(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = ok(client.get("/audit", headers=headers, params={"limit": 500, **params})).json()[
        "items"
    ]
    return items


def verify(url: str, tenant: str = "demo") -> Any:
    log: AuditLog = open_audit_log(url)
    try:
        return log.verify(tenant)
    finally:
        log.close()


def cli_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEAMGRAPH_", "OPENAI_"))}
    env["TEAMGRAPH_CHECKPOINT_URL"] = url
    return env


def teamgraph(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `teamgraph` executable, as an operator runs it."""
    return subprocess.run([str(TEAMGRAPH), *args], cwd=cwd, env=cli_env(url), capture_output=True, text=True,
                          timeout=60)  # fmt: skip


class Raw:
    """Direct SQL on the audit table, as someone with database access (and no business there) would use it."""

    def __init__(self, url: str):
        self.url = url
        self.postgres = url.startswith("postgres")

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        if self.postgres:
            import psycopg
            from psycopg.rows import dict_row

            with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
                yield conn
        else:
            conn = sqlite3.connect(self.url[len("sqlite:///") :], isolation_level=None)
            conn.row_factory = sqlite3.Row
            try:
                yield conn
            finally:
                conn.close()

    def execute(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        with self._conn() as conn:
            cursor = conn.execute(sql if self.postgres else sql.replace("%s", "?"), params)
            return [dict(r) for r in cursor.fetchall()] if cursor.description else []

    def row(self, tenant: str, seq: int) -> dict[str, Any]:
        return self.execute("select * from audit_events where tenant = %s and seq = %s", tenant, seq)[0]

    def payloads(self, tenant: str) -> str:
        return "\n".join(str(r["payload"]) for r in self.execute("select payload from audit_events where tenant = %s",
                                                                 tenant))  # fmt: skip

    def set_payload(self, tenant: str, seq: int, payload: dict[str, Any]) -> None:
        if self.postgres:
            from psycopg.types.json import Jsonb

            self.execute("update audit_events set payload = %s where tenant = %s and seq = %s",
                         Jsonb(payload), tenant, seq)  # fmt: skip
        else:
            self.execute("update audit_events set payload = %s where tenant = %s and seq = %s",
                         json.dumps(payload, ensure_ascii=False), tenant, seq)  # fmt: skip

    def insert(self, row: dict[str, Any]) -> None:
        values = [row[f] for f in FIELDS]
        if self.postgres:
            from psycopg.types.json import Jsonb

            values[FIELDS.index("payload")] = Jsonb(self.payload_of(row))
        self.execute("insert into audit_events (tenant, seq, at, actor, session, event_type, payload, prev_hash, hash)"
                     " values (%s, %s, %s, %s, %s, %s, %s, %s, %s)", *values)  # fmt: skip

    @staticmethod
    def payload_of(row: dict[str, Any]) -> dict[str, Any]:
        payload = row["payload"]
        return json.loads(payload) if isinstance(payload, str) else dict(payload)

    def swap(self, tenant: str, a: int, b: int) -> None:
        self.execute("update audit_events set seq = -1 where tenant = %s and seq = %s", tenant, a)
        self.execute("update audit_events set seq = %s where tenant = %s and seq = %s", a, tenant, b)
        self.execute("update audit_events set seq = %s where tenant = %s and seq = -1", b, tenant)


def sse_names(r: httpx.Response) -> list[str]:
    return [line[len("event:") :].strip() for line in r.text.replace("\r\n", "\n").splitlines()
            if line.startswith("event:")]  # fmt: skip


# --- a session's life ---------------------------------------------------------------------------------------


def test_a_sessions_life_is_audited_and_its_trail_outlives_it(db_url: str) -> None:
    with serve(db_url) as client:
        sid = session_life(client)
        assert client.get(f"/sessions/{sid}", headers=DEMO).status_code == 404  # the session is gone
        trail = audit_items(client, DEMO_ADMIN, session=sid)  # its audit trail is not
        everything = audit_items(client, DEMO_ADMIN)

    assert [e["event_type"] for e in trail] == LIFE_EVENTS
    assert trail == everything  # nothing else happened in this database
    assert {e["actor"] for e in trail} == {"demo-user"}  # the key's id, never the key
    assert [e["seq"] for e in trail] == list(range(1, len(LIFE_EVENTS) + 1))
    assert trail[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(trail))
    # what the API returns is what was hashed: a client can check the chain itself
    assert {e["tenant"] for e in trail} == {"demo"}
    fields = ("tenant", "seq", "at", "actor", "session", "event_type", "payload", "prev_hash")
    assert [entry_hash(*(e[f] for f in fields)) for e in trail] == [e["hash"] for e in trail]

    payload = {e["event_type"]: e["payload"] for e in trail}  # the last of each type
    assert trail[0]["payload"] == {"team": "interview", "title": TITLE}
    assert payload["team_selected"] == {"requested": None, "team": "interview"}
    upload_id = payload["document_uploaded"].pop("upload_id")  # the upload's own nonce
    assert len(upload_id) == 32 and int(upload_id, 16) >= 0
    assert payload["document_uploaded"] == {"kind": "resume", "filename": "cv.txt", "characters": len(RESUME),
                                            "content": RESUME}  # fmt: skip
    assert [e["payload"] for e in trail if e["event_type"] == "message"] == [
        {"role": "user", "content": "Start"},
        {"role": "user", "content": ANSWER},
    ]  # the default policy keeps message text in full
    responses = [e["payload"] for e in trail if e["event_type"] == "response"]
    assert [r["node"] for r in responses] == ["question_generator", "question_generator", "fallback_scorer",
                                              "ask_next_question"]  # fmt: skip
    # each reply as the user saw it: the intro, question 1, the score of the answer, question 2
    assert responses[0]["content"].startswith("Let's practise for your interview. I'll ask 3 questions one at a time")
    assert responses[1]["content"].startswith("Question 1 of 3 (behavioral, medium): ")
    assert responses[2]["content"].startswith(f"Score: {payload['evaluation']['overall']}/5 (relevance ")
    assert responses[3]["content"].startswith("Question 2 of 3 (technical, medium): ")
    assert payload["evaluation"]["scored_by"] == "fallback" and payload["evaluation"]["question_index"] == 0
    assert payload["session_renamed"] == {"title": "Renamed"}
    assert payload["session_delete_started"] == payload["session_deleted"] == {"team": "interview"}

    result = verify(db_url)
    assert result.ok, result
    assert result.checked == len(LIFE_EVENTS)


def test_verify_names_an_edited_a_deleted_and_a_reordered_row(db_url: str, tmp_path: Path) -> None:
    with serve(db_url) as client:
        interview(client)
    raw = Raw(db_url)
    count = len(raw.execute("select seq from audit_events where tenant = %s", "demo"))
    assert count == 10
    assert verify(db_url).ok

    k = 4  # the first "message" entry
    original = raw.row("demo", k)
    assert original["event_type"] == "message"

    # edited: the content of entry k changes
    raw.set_payload("demo", k, {**raw.payload_of(original), "content": "I never said that"})
    result = verify(db_url)
    assert (result.ok, result.broken_seq) == (False, k), result
    assert "edited" in result.reason
    cli = teamgraph(db_url, tmp_path, "audit", "verify")
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert f"BROKEN: tenant demo: entry {k}" in cli.stderr
    raw.set_payload("demo", k, raw.payload_of(original))
    assert verify(db_url).ok

    # edited and re-hashed: the entry is self-consistent again, the next one no longer follows it
    forged = {**raw.payload_of(original), "content": "I never said that"}
    raw.set_payload("demo", k, forged)
    digest = entry_hash("demo", k, original["at"], original["actor"], original["session"], original["event_type"],
                        forged, original["prev_hash"])  # fmt: skip
    raw.execute("update audit_events set hash = %s where tenant = %s and seq = %s", digest, "demo", k)
    result = verify(db_url)
    assert (result.ok, result.broken_seq) == (False, k + 1), result
    raw.set_payload("demo", k, raw.payload_of(original))
    raw.execute("update audit_events set hash = %s where tenant = %s and seq = %s", original["hash"], "demo", k)
    assert verify(db_url).ok

    # deleted
    raw.execute("delete from audit_events where tenant = %s and seq = %s", "demo", k)
    result = verify(db_url)
    assert (result.ok, result.broken_seq) == (False, k), result
    assert "missing" in result.reason
    raw.insert(original)
    assert verify(db_url).ok

    # reordered: entries k and k + 1 swap places
    raw.swap("demo", k, k + 1)
    result = verify(db_url)
    assert (result.ok, result.broken_seq) == (False, k), result
    raw.swap("demo", k, k + 1)
    result = verify(db_url)
    assert result.ok and result.checked == count, result


# --- who reads /audit ---------------------------------------------------------------------------------------


def test_audit_is_readable_with_the_tenants_own_admin_key_only(tmp_path: Path) -> None:
    with serve(f"sqlite:///{tmp_path}/tg.db", bundles(tmp_path, veneo_admin=True)) as client:
        demo_sid = interview(client)
        chat = f"chat-{uuid.uuid4()}"
        ok(turn(client, "veneo_chat", VENEO, chat, "How long does shipping take?"))

        for headers in (DEMO, VENEO):  # user keys
            r = client.get("/audit", headers=headers)
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "admin_required"
            assert "items" not in r.json()
        assert client.get("/audit").status_code == 401
        assert client.get("/audit", headers={"Authorization": "Bearer not-a-key"}).status_code == 401

        veneo_view = audit_items(client, VENEO_ADMIN)
        demo_view = audit_items(client, DEMO_ADMIN)
        # another tenant's admin key: nothing of demo, even when asking for demo's session by id
        assert audit_items(client, VENEO_ADMIN, session=demo_sid) == []
        assert audit_items(client, VENEO_ADMIN, event_type="evaluation") == []
        safety = audit_items(client, VENEO_ADMIN, event_type="safety_decision")
        assert len(safety) == 1 and safety[0]["payload"]["action"] == "approve"
        bad = client.get("/audit", headers=VENEO_ADMIN, params={"event_type": "nonsense"})
        assert bad.status_code == 422, bad.text

        pages, cursor = [], 0
        while True:
            page = ok(client.get("/audit", headers=DEMO_ADMIN, params={"limit": 3, "cursor": cursor})).json()
            pages.extend(page["items"])
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]

    assert {e["session"] for e in veneo_view} == {chat}
    assert demo_sid not in json.dumps(veneo_view) and RESUME not in json.dumps(veneo_view)
    assert {e["session"] for e in demo_view} == {demo_sid}
    assert [e["seq"] for e in veneo_view] == list(range(1, len(veneo_view) + 1))  # each tenant its own chain
    assert [e["seq"] for e in demo_view] == list(range(1, len(demo_view) + 1))
    assert pages == demo_view and len(pages) == 10


def test_audit_time_filters_mean_the_same_instant_in_any_utc_offset(tmp_path: Path) -> None:
    with serve(f"sqlite:///{tmp_path}/tg.db") as client:
        interview(client)
        items = audit_items(client, DEMO_ADMIN)
        middle = datetime.fromisoformat(items[5]["at"].replace("Z", "+00:00"))
        in_utc = middle.astimezone(UTC).isoformat()
        in_berlin = middle.astimezone(timezone(timedelta(hours=2))).isoformat()
        in_new_york = middle.astimezone(timezone(timedelta(hours=-5))).isoformat()
        since = {tz: [e["seq"] for e in audit_items(client, DEMO_ADMIN, since=when)]
                 for tz, when in (("utc", in_utc), ("+02:00", in_berlin), ("-05:00", in_new_york))}  # fmt: skip
        until = {tz: [e["seq"] for e in audit_items(client, DEMO_ADMIN, until=when)]
                 for tz, when in (("utc", in_utc), ("+02:00", in_berlin), ("-05:00", in_new_york))}  # fmt: skip
    assert since["utc"] == [e["seq"] for e in items[5:]]
    assert until["utc"] == [e["seq"] for e in items[:5]]
    assert since == {tz: since["utc"] for tz in since}
    assert until == {tz: until["utc"] for tz in until}


# --- content policy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["full", "hash", "none"])
def test_the_tenants_content_policy_shapes_what_is_stored(tmp_path: Path, policy: str) -> None:
    resume_marker, answer_marker = f"resume-{uuid.uuid4().hex}", f"answer-{uuid.uuid4().hex}"
    resume = f"# Jane Doe\nResume {resume_marker}: Python, Kafka, Airflow."
    answer = f"{ANSWER} Answer {answer_marker}."
    url = f"sqlite:///{tmp_path}/tg.db"
    with serve(url, bundles(tmp_path, demo_content=policy)) as client:
        sid = interview(client, resume=resume, answer=answer)
        trail = audit_items(client, DEMO_ADMIN, session=sid)

    assert [e["event_type"] for e in trail] == LIFE_EVENTS[:-3]  # every event is recorded, whatever the policy
    document = next(e["payload"] for e in trail if e["event_type"] == "document_uploaded")
    message = [e["payload"] for e in trail if e["event_type"] == "message"][-1]
    responses = [e["payload"] for e in trail if e["event_type"] == "response"]
    assert document["kind"] == "resume" and document["characters"] == len(resume)
    assert message["role"] == "user"
    assert [r["node"] for r in responses] == ["question_generator", "question_generator", "fallback_scorer",
                                              "ask_next_question"]  # fmt: skip
    stored = Raw(url).payloads("demo")
    if policy == "full":
        assert document["content"] == resume and message["content"] == answer
        assert all(r["content"] for r in responses)
        assert resume_marker in stored and answer_marker in stored
    else:
        for p in (document, message, *responses):
            assert "content" not in p, p
        assert resume_marker not in stored and answer_marker not in stored
    if policy == "hash":
        assert document["content_sha256"] == hashlib.sha256(resume.encode()).hexdigest()
        assert message["content_sha256"] == hashlib.sha256(answer.encode()).hexdigest()
        assert all(len(r["content_sha256"]) == 64 for r in responses)
    else:
        assert not [p for p in (document, message, *responses) if "content_sha256" in p]
    assert verify(url).ok


# --- audit failures -------------------------------------------------------------------------------------------


def _break_audit(client: TestClient, url: str) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    if url.startswith("postgres"):
        engine.audit.pool.close()
    else:
        engine.audit.conn.close()


def test_a_turn_whose_audit_write_fails_is_a_loud_503(db_url: str) -> None:
    with serve(db_url) as client:
        sid = ok(client.post("/sessions", headers=DEMO, json={}), 201).json()["id"]
        ok(turn(client, "interview", DEMO, sid, RESUME))
        ready = ok(client.get("/readyz")).json()
        expected = {"session_index": "ok", "session_index_write": "ok", "checkpointer": "ok", "audit_store": "ok"}
        if db_url.startswith("sqlite"):
            expected["data_dir_write"] = "ok"  # an embedded database: its directory takes writes
        assert ready == {"status": "ok", "checks": expected}

        _break_audit(client, db_url)

        r = turn(client, "interview", DEMO, sid, ANSWER)
        assert r.status_code == 503, r.text
        # docs/api.md: a database fault is storage_unavailable wherever it is met, on both backends alike: the
        # audit log's pool closed (PostgreSQL, a psycopg OperationalError) or its connection closed (SQLite, a
        # ProgrammingError "closed database"; before, SQLite answered audit_unavailable)
        expected = {"code": "storage_unavailable",
                    "message": "the session store cannot be reached or written now; try again later"}  # fmt: skip
        assert r.json() == {"error": expected}
        assert r.headers["retry-after"] == "5"
        streamed = turn(client, "interview", DEMO, sid, ANSWER, endpoint="stream")
        names = sse_names(streamed)
        assert "error" in names and "end" not in names, names  # a stream that cannot be audited ends in an error

        ready_r = client.get("/readyz")
        assert ready_r.status_code == 503
        checks = ready_r.json()["checks"]
        assert checks["checkpointer"] == "ok" and checks["session_index"] == "ok"
        assert checks["audit_store"].startswith("error"), checks


def test_a_dropped_audit_table_is_recreated_and_its_chain_restarts_on_record(db_url: str) -> None:
    """The audit tables dropped under the server: the turn that meets it is refused (503, nothing runs
    unaudited), the tables are recreated (checkpoints/self_repair.py), and each chain starts again with an
    `audit_restarted` entry that verifies."""
    with serve(db_url) as client:
        sid = ok(client.post("/sessions", headers=DEMO, json={}), 201).json()["id"]
        ok(turn(client, "interview", DEMO, sid, RESUME))
        Raw(db_url).execute("drop table audit_events")
        r = turn(client, "interview", DEMO, sid, ANSWER)
        # tables gone are a database fault (docs/api.md): storage_unavailable, whichever table the write met
        assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
        ok(client.get("/readyz"))
        ok(turn(client, "interview", DEMO, sid, ANSWER))
        entries = audit_items(client, DEMO_ADMIN)
        assert entries[0]["event_type"] == "audit_restarted" and entries[0]["seq"] == 1, entries[:2]
        assert entries[0]["actor"] == "teamgraph"
        cause = entries[0]["payload"]["cause"]
        assert "no such table" in cause or "does not exist" in cause, cause
        assert [e["event_type"] for e in entries[1:3]] == ["message", "response"]
    assert verify(db_url).ok


def test_readyz_reports_the_checkpointer_apart_from_the_audit_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tg.db"
    with serve(url) as client:
        ok(client.get("/readyz"))
        # a checkpoints table that is there but wrong (a missing one would be recreated: self-repair)
        Raw(url).execute("drop table checkpoints")
        Raw(url).execute("create table checkpoints (unrelated integer)")
        r = client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["checkpointer"].startswith("error"), checks
    assert checks["audit_store"] == "ok" and checks["session_index"] == "ok"


def test_a_turn_whose_closing_audit_write_fails_is_reported_failed_with_its_state_moved_on(tmp_path: Path) -> None:
    """docs/observability.md: the user's message is written when a turn starts and its replies when it ends; if
    that last write fails, the turn is reported as failed (503), while its state has already moved on."""
    with serve(f"sqlite:///{tmp_path}/tg.db") as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        sid = f"chat-{uuid.uuid4()}"
        ok(turn(client, "veneo_chat", VENEO, sid, "How long does shipping take?"))
        real_append = engine.audit.append

        def append_but_not_the_replies(events: list[Any]) -> Any:
            if any(e.event_type == "response" for e in events):
                raise AuditWriteError("audit log write failed: disk full")
            return real_append(events)

        engine.audit.append = append_but_not_the_replies
        r = turn(client, "veneo_chat", VENEO, sid, "Do gift cards expire?")
        engine.audit.append = real_append
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "audit_unavailable"
        assert r.headers["retry-after"] == "5"
        # the state moved on: the turn and its reply are in the session
        transcript = ok(client.get(f"/sessions/{sid}", headers=VENEO)).json()["transcript"]
        assert [m["content"] for m in transcript if m["role"] == "user"] == [
            "How long does shipping take?",
            "Do gift cards expire?",
        ]
        assert "two years" in transcript[-1]["content"]
        # the record has the user's message (written at the start) and no reply for it
        trail = [(e.event_type, e.payload.get("content")) for e in engine.audit.query("veneo", session=sid)]
        assert trail[-1] == ("message", "Do gift cards expire?")
        assert sum(1 for t, _ in trail if t == "response") == 1  # the first turn's reply only
    assert verify(f"sqlite:///{tmp_path}/tg.db", "veneo").ok  # the refused write left no gap in the chain


@pytest.mark.parametrize("action", ["create", "rename", "delete", "new thread"])
def test_an_action_whose_audit_record_fails_does_not_happen(tmp_path: Path, action: str) -> None:
    url = f"sqlite:///{tmp_path}/tg.db"
    with serve(url) as client:
        sid = ok(client.post("/sessions", headers=DEMO, json={"title": "Before"}), 201).json()["id"]
        _break_audit(client, url)
        if action == "create":
            r = client.post("/sessions", headers=DEMO, json={"title": "After"})
        elif action == "rename":
            r = client.patch(f"/sessions/{sid}", headers=DEMO, json={"title": "After"})
        elif action == "delete":
            r = client.delete(f"/sessions/{sid}", headers=DEMO)
        else:
            r = turn(client, "interview", DEMO, "brand-new-thread", RESUME)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "storage_unavailable"  # its connection closed: a storage fault
        sessions = ok(client.get("/sessions", headers=DEMO)).json()["items"]
    # refused means not done: no unaudited session, title or deletion is left behind
    assert [(s["id"], s["title"]) for s in sessions] == [(sid, "Before")]


# --- teamgraph audit export / prune / verify -------------------------------------------------------------------


def test_prune_refuses_a_cutoff_not_in_the_past_and_offers_a_dry_run_and_one_tenant(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: `audit prune --older-than 2099-01-01` (or 0d) deleted every tenant's whole audit log, with
    no --dry-run or --tenant to see or limit it first; `audit verify` then printed nothing, exit status 0."""
    monkeypatch.setenv("TEAMGRAPH_CHECKPOINT_URL", db_url)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    open_audit_log(db_url).close()  # an empty database (a missing SQLite file is refused)
    empty = runner.invoke(cli_app, ["audit", "verify"])
    assert empty.exit_code == 0 and "no audit entries in this database" in empty.stdout, empty.output
    log = open_audit_log(db_url)
    try:
        log.append([AuditEvent("demo", "k", "session_created", f"s{i}") for i in range(3)])
        log.append([AuditEvent("veneo", "k", "session_created", f"v{i}") for i in range(2)])
    finally:
        log.close()
    fresh = runner.invoke(cli_app, ["audit", "verify", "--tenant", "demo"])
    assert fresh.exit_code == 0 and "ok: tenant demo: 3 entries verified" in fresh.stdout, fresh.output

    for older_than in ("2099-01-01", "0d", "0s", (datetime.now(UTC) + timedelta(minutes=1)).isoformat()):
        refused = runner.invoke(cli_app, ["audit", "prune", "--older-than", older_than])
        assert refused.exit_code == 1, (older_than, refused.output)
        assert f"--older-than {older_than}: not in the past" in refused.stderr, refused.stderr
        assert "--dry-run counts what it would delete" in refused.stderr, refused.stderr
        # found in review: the refusal offered --dry-run, which was refused too; a dry run deletes nothing
        counted = runner.invoke(cli_app, ["audit", "prune", "--older-than", older_than, "--dry-run"])
        assert counted.exit_code == 0, (older_than, counted.output)
        assert "demo: would prune 3 entries" in counted.stdout and "would prune 5 entries" in counted.stdout
    assert verify(db_url, "demo").checked == 3 and verify(db_url, "veneo").checked == 2  # nothing deleted

    time.sleep(0.01)
    cutoff = datetime.now(UTC).isoformat()
    dry = runner.invoke(cli_app, ["audit", "prune", "--older-than", cutoff, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "demo: would prune 3 entries" in dry.stdout and "veneo: would prune 2 entries" in dry.stdout, dry.stdout
    assert verify(db_url, "demo").checked == 3 and verify(db_url, "veneo").checked == 2
    typo = runner.invoke(cli_app, ["audit", "prune", "--older-than", cutoff, "--tenant", "nosuch"])
    assert typo.exit_code == 1 and "unknown tenant 'nosuch'" in typo.stderr, typo.output

    one = runner.invoke(cli_app, ["audit", "prune", "--older-than", cutoff, "--tenant", "demo"])
    assert one.exit_code == 0 and "demo: pruned 3 entries" in one.stdout and "veneo" not in one.stdout, one.output
    assert verify(db_url, "veneo").checked == 2
    # a chain pruned to its end still verifies, and says that it holds no entries
    gone = runner.invoke(cli_app, ["audit", "verify"])
    assert gone.exit_code == 0, gone.output
    assert "ok: tenant demo: no entries to verify (entries up to 3 were pruned)" in gone.stdout, gone.stdout
    assert "ok: tenant veneo: 2 entries verified" in gone.stdout
    log = open_audit_log(db_url)
    try:  # and goes on after its anchor
        log.append([AuditEvent("demo", "k", "session_created", "s9")])
    finally:
        log.close()
    after = runner.invoke(cli_app, ["audit", "verify", "--tenant", "demo"])
    assert "ok: tenant demo: 1 entries verified (entries up to 3 were pruned)" in after.stdout, after.output


def test_export_since_an_iso_time_or_an_age_exports_the_entries_from_then_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/tg.db"
    monkeypatch.setenv("TEAMGRAPH_CHECKPOINT_URL", url)
    runner = CliRunner()

    def export(*args: str) -> list[int]:
        result = runner.invoke(cli_app, ["audit", "export", "--tenant", "demo", *args])
        assert result.exit_code == 0, result.output
        return [json.loads(line)["seq"] for line in result.stdout.splitlines()]

    with serve(url) as client:
        interview(client)
    entries = [json.loads(line) for line in runner.invoke(cli_app, ["audit", "export", "--tenant", "demo"]).stdout
               .splitlines()]  # fmt: skip
    assert [e["seq"] for e in entries] == list(range(1, 11))
    middle = datetime.fromisoformat(entries[5]["at"])
    # an ISO time: the entries at or after it, whatever offset names the instant
    assert export("--since", middle.isoformat()) == list(range(6, 11))
    assert export("--since", middle.astimezone(timezone(timedelta(hours=-5))).isoformat()) == list(range(6, 11))
    # a time without an offset is UTC
    assert export("--since", middle.astimezone(UTC).replace(tzinfo=None).isoformat()) == list(range(6, 11))
    # an age: everything written within the last hour, nothing from the future
    assert export("--since", "1h") == list(range(1, 11))
    assert export("--since", (datetime.now(UTC) + timedelta(minutes=5)).isoformat()) == []
    # combined with --session
    assert export("--since", middle.isoformat(), "--session", entries[0]["session"]) == list(range(6, 11))
    bad = runner.invoke(cli_app, ["audit", "export", "--tenant", "demo", "--since", "last week"])
    assert bad.exit_code == 1
    assert "--since: 'last week' is neither an age like 90d / 12h nor an ISO time" in bad.output


def test_export_as_jsonl_and_csv_then_prune_and_keep_verifying(db_url: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("TEAMGRAPH_CHECKPOINT_URL", db_url)
    runner = CliRunner()
    with serve(db_url) as client:
        sid = interview(client)
        ok(turn(client, "veneo_chat", VENEO, f"chat-{uuid.uuid4()}", "How long does shipping take?"))

        exported = runner.invoke(cli_app, ["audit", "export", "--tenant", "demo", "--format", "jsonl"])
        assert exported.exit_code == 0, exported.output
        rows = [json.loads(line) for line in exported.stdout.splitlines()]
        assert [r["seq"] for r in rows] == list(range(1, 11))
        assert all(list(r) == FIELDS and r["tenant"] == "demo" for r in rows)
        for r in rows:  # every exported row carries what it takes to check it
            recomputed = entry_hash(r["tenant"], r["seq"], r["at"], r["actor"], r["session"], r["event_type"],
                                    r["payload"], r["prev_hash"])  # fmt: skip
            assert recomputed == r["hash"]
        assert [r["event_type"] for r in rows] == LIFE_EVENTS[:-3]

        csv_path = tmp_path / "audit.csv"
        exported = runner.invoke(cli_app, ["audit", "export", "--tenant", "demo", "--format", "csv", "-o",
                                           str(csv_path)])  # fmt: skip
        assert exported.exit_code == 0, exported.output
        table = list(csv.DictReader(io.StringIO(csv_path.read_text())))
        assert [list(r) for r in table] == [FIELDS] * len(rows)
        assert [(int(r["seq"]), r["hash"], json.loads(r["payload"])) for r in table] == [
            (r["seq"], r["hash"], r["payload"]) for r in rows
        ]

        only_session = runner.invoke(cli_app, ["audit", "export", "--tenant", "demo", "--session", sid])
        assert len(only_session.stdout.splitlines()) == 10
        other = runner.invoke(cli_app, ["audit", "export", "--tenant", "demo", "--session", "no-such-session"])
        assert other.exit_code == 0 and other.stdout == ""
        wrong = runner.invoke(cli_app, ["audit", "export", "--tenant", "demo", "--format", "xml"])
        assert wrong.exit_code != 0 and "jsonl or csv" in wrong.output

        # nothing is 90 days old yet
        kept = runner.invoke(cli_app, ["audit", "prune", "--older-than", "90d"])
        assert kept.exit_code == 0 and "pruned 0 entries" in kept.output, kept.output
        bad = runner.invoke(cli_app, ["audit", "prune", "--older-than", "soon"])
        assert bad.exit_code == 1 and "--older-than" in bad.output
        veneo_count = len(runner.invoke(cli_app, ["audit", "export", "--tenant", "veneo"]).stdout.splitlines())
        assert veneo_count > 0

        # everything written so far goes (a time just after the last entry, in the past: a zero age is refused);
        # an anchor keeps the chain's place
        last_at = max(datetime.fromisoformat(r["at"]) for r in rows)
        veneo_rows = [json.loads(x) for x in runner.invoke(cli_app, ["audit", "export", "--tenant", "veneo"]).stdout
                      .splitlines()]  # fmt: skip
        last_at = max([last_at, *(datetime.fromisoformat(r["at"]) for r in veneo_rows)])
        cutoff = (last_at + timedelta(microseconds=1)).isoformat()
        pruned = runner.invoke(cli_app, ["audit", "prune", "--older-than", cutoff])
        assert pruned.exit_code == 0, pruned.output
        assert f"pruned {10 + veneo_count} entries" in pruned.output
        assert runner.invoke(cli_app, ["audit", "export", "--tenant", "demo"]).stdout == ""
        assert verify(db_url).ok

        # new entries continue the chain after the anchor, and verify
        later = interview(client)
        after = [json.loads(line) for line in
                 runner.invoke(cli_app, ["audit", "export", "--tenant", "demo"]).stdout.splitlines()]  # fmt: skip
        assert {r["session"] for r in after} == {later}
        assert [r["seq"] for r in after] == list(range(11, 21))
        assert after[0]["prev_hash"] == rows[-1]["hash"]
        result = verify(db_url)
        assert result.ok and result.checked == 10, result

    checked = teamgraph(db_url, tmp_path, "audit", "verify", "--tenant", "demo")
    assert checked.returncode == 0, checked.stderr
    assert "ok: tenant demo: 10 entries verified" in checked.stdout

    # a pruned chain still catches a deleted entry, also its first remaining one
    Raw(db_url).execute("delete from audit_events where tenant = %s and seq = %s", "demo", 11)
    result = verify(db_url)
    assert (result.ok, result.broken_seq) == (False, 11), result


def test_an_entry_the_database_refuses_is_a_bug_on_every_write_path_of_both_backends(db_url: str) -> None:
    """A row that breaks a constraint (NOT NULL, CHECK, a trigger's abort: an IntegrityError) is a bug no retry
    mends: every audit write path raises the database's own error (a 500 over HTTP), never an AuditWriteError
    (`503 audit_unavailable`, retryable). Before, only `append_if` let it through: PostgreSQL's `append` (a turn's
    entries, an upload's) and `append_redacting` on both backends wrapped it."""
    import psycopg

    log = open_audit_log(db_url)
    try:
        log.append([AuditEvent("demo", "k", "session_created", "s1")])  # creates the tables and one entry
        if db_url.startswith("sqlite"):
            sq = sqlite3.connect(db_url.removeprefix("sqlite:///"))
            sq.execute(
                "create trigger refuse before insert on audit_events when new.event_type = 'document_uploaded' "
                "begin select raise(abort, 'refused by a constraint'); end"
            )
            sq.commit()
            sq.close()
            refused: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
        else:
            with psycopg.connect(db_url, autocommit=True) as conn:
                table = conn.execute(
                    "select table_name from information_schema.tables where table_schema = current_schema() "
                    "and table_name like '%audit_events'"
                ).fetchone()
                assert table is not None
                conn.execute(
                    f"alter table {table[0]} add constraint refuse check (event_type <> 'document_uploaded') not valid"
                )
            refused = (psycopg.IntegrityError,)
        with pytest.raises(refused):
            log.append([AuditEvent("demo", "k", "document_uploaded", "s1")])
        with pytest.raises(refused):
            log.append_if((), [AuditEvent("demo", "k", "document_uploaded", "s1")])
        with pytest.raises(refused):
            log.append_redacting(AuditEvent("demo", "k", "document_uploaded", "s1"), [1])
        assert [e.event_type for e in log.query("demo")] == ["session_created"]  # nothing written
    finally:
        log.close()
