"""Erasure as a data-protection officer checks it: every session of one end user is gone, that user's content is
gone from the audit log, the chain still verifies, and the erasure itself is on record without the content;
on a real SQLite file and the machine's PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from checkpoints.audit import REDACTED, verify_chain
from nodes.memory_keeper import read_archive
from server.app import create_app
from server.settings import Settings
from tests.conftest import fresh_postgres_schema, open_engine

SECRET = "My name is Jane Roe and my order 7781 went to Elm Street 5"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/teamgraph.db"
    else:
        with fresh_postgres_schema("tg_erasure") as pg_url:
            yield pg_url


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_erasing_a_user_removes_their_sessions_and_audit_content(url: str) -> None:
    async with open_engine(url) as engine:
        jane = [await engine.create_session("veneo", "veneo_chat", user_id="user-jane") for _ in range(2)]
        for session in jane:
            for _ in range(10):  # long enough that the transcript archive holds some of it
                await engine.run_turn(session, user(SECRET))
        other = await engine.create_session("veneo", "veneo_chat", user_id="user-max")
        await engine.run_turn(other, user("Where is order 1?"))
        untagged = await engine.create_session("veneo", "veneo_chat")
        await engine.run_turn(untagged, user("Hello"))
        assert SECRET in json.dumps([e.payload for e in engine.audit.query("veneo", limit=1000)])

        counts = await engine.erase_user("veneo", "user-jane", actor="dpo")

        assert counts["sessions"] == 2 and counts["audit_entries_redacted"] > 0
        for session in jane:
            assert await engine.find_session("veneo", session.id) is None
            assert await read_archive(engine.persistence.store, session.thread_id) == []
            assert [c async for c in engine.persistence.checkpointer.alist(
                {"configurable": {"thread_id": session.thread_id}})] == []  # fmt: skip
        assert await engine.find_session("veneo", other.id) is not None
        assert await engine.find_session("veneo", untagged.id) is not None

        entries = engine.audit.query("veneo", limit=1000)
        dumped = json.dumps([e.payload for e in entries])
        assert "Jane Roe" not in dumped and "user-jane" not in dumped
        for e in entries:
            if e.session in {s.id for s in jane}:
                assert set(e.payload) == {REDACTED}
        assert any(e.session == other.id and e.payload.get("content") == "Where is order 1?" for e in entries)
        erasure = [e for e in entries if e.event_type == "user_erased"][-1]
        assert erasure.actor == "dpo" and erasure.payload["sessions"] == 2
        assert len(erasure.payload["redacted"]) == counts["audit_entries_redacted"]
        assert engine.audit.verify("veneo").ok

        # a redacted entry is still held to its fields: editing one breaks the chain
        redacted = next(i for i, e in enumerate(entries) if set(e.payload) == {REDACTED})
        forged = [*entries]
        forged[redacted] = replace(entries[redacted], actor="someone-else")
        assert not verify_chain("veneo", iter(forged), None).ok
        # and a payload cannot be passed off as redacted without an erasure entry listing it
        plain = next(i for i, e in enumerate(entries) if e.session == other.id)
        forged = [*entries]
        forged[plain] = replace(entries[plain], payload={REDACTED: {"by": erasure.seq}})
        result = verify_chain("veneo", iter(forged), None)
        assert not result.ok and result.broken_seq == entries[plain].seq

        again = await engine.erase_user("veneo", "user-jane")  # nothing left; recorded all the same
        assert again == {"sessions": 0, "audit_entries_redacted": 0}
        assert engine.audit.verify("veneo").ok


def test_delete_users_takes_an_admin_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    admin_key = f"tg-demo-admin-{uuid.uuid4().hex}"
    monkeypatch.setenv("TEAMGRAPH_DEMO_ADMIN_KEY", admin_key)
    app = create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path}/tg.db"))  # type: ignore[call-arg]
    user_key = {"Authorization": "Bearer tg-demo-key"}
    with TestClient(app) as client:
        created = client.post("/sessions", json={"title": "Mock", "user_id": "cand-42"}, headers=user_key)
        assert created.status_code == 201, created.text
        session_id = created.json()["id"]
        refused = client.delete("/users/cand-42", headers=user_key)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_required"
        assert client.get(f"/sessions/{session_id}", headers=user_key).status_code == 200

        erased = client.delete("/users/cand-42", headers={"Authorization": f"Bearer {admin_key}"})
        assert erased.status_code == 200, erased.text
        # session_created, team_selected, session_delete_started, session_deleted
        assert erased.json() == {"user_id": "cand-42", "sessions": 1, "audit_entries_redacted": 4}
        assert client.get(f"/sessions/{session_id}", headers=user_key).status_code == 404
        for refused in ("", "jane doe/1"):  # user ids travel in a URL path: a documented charset
            bad = client.post("/sessions", json={"user_id": refused}, headers=user_key)
            assert bad.status_code == 422 and bad.json()["error"]["field"].endswith("user_id")
        email = client.post("/sessions", json={"user_id": "jane.doe+cv@example.com"}, headers=user_key)
        assert email.status_code == 201


def test_a_session_a_team_route_started_can_be_tagged_and_is_then_erased(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that never called POST /sessions (its first turn went to /teams/.../invoke with its own thread id)
    tags the session with PATCH; DELETE /users/{id} then finds it."""
    admin = {"Authorization": f"Bearer tg-demo-admin-{uuid.uuid4().hex}"}
    monkeypatch.setenv("TEAMGRAPH_DEMO_ADMIN_KEY", admin["Authorization"].removeprefix("Bearer "))
    key = {"Authorization": "Bearer tg-demo-key"}
    app = create_app(Settings(_env_file=None, checkpoint_url=url))  # type: ignore[call-arg]
    with TestClient(app) as client:
        turn = {"input": {"messages": [{"type": "human", "content": SECRET}]},
                "config": {"configurable": {"thread_id": "chat-7"}}}  # fmt: skip
        assert client.post("/teams/interview/invoke", json=turn, headers=key).status_code == 200
        started = client.get("/sessions/chat-7", headers=key)
        assert started.status_code == 200 and started.json()["user_id"] is None, started.text

        for bad in ({"user_id": ""}, {"user_id": "jane doe/1"}):  # refused naming the field; nothing changes
            r = client.patch("/sessions/chat-7", json=bad, headers=key)
            assert r.status_code == 422 and r.json()["error"]["field"].endswith("user_id"), r.text
        tagged = client.patch("/sessions/chat-7", json={"user_id": "cand-7"}, headers=key)
        assert tagged.status_code == 200, tagged.text
        assert tagged.json()["user_id"] == "cand-7" and tagged.json()["id"] == "chat-7"
        again = client.patch("/sessions/chat-7", json={"user_id": "cand-7", "title": "Chat"}, headers=key)
        assert again.status_code == 200 and again.json()["title"] == "Chat"  # the same id again: kept

        other = client.patch("/sessions/chat-7", json={"user_id": "cand-8", "title": "Taken"}, headers=key)
        assert other.status_code == 409, other.text
        error = other.json()["error"]
        assert (error["code"], error["field"]) == ("user_id_conflict", "user_id")
        assert error["message"] == "user_id: the session is tagged with another end user already"
        detail = client.get("/sessions/chat-7", headers=key).json()
        assert (detail["user_id"], detail["title"]) == ("cand-7", "Chat")  # the refused PATCH changed nothing

        audit = client.get("/audit?session=chat-7&event_type=session_user_tagged", headers=admin).json()["items"]
        assert [e["payload"] for e in audit] != [] and "cand-7" not in json.dumps(audit)  # the id's hash only

        erased = client.delete("/users/cand-7", headers=admin)
        assert erased.status_code == 200 and erased.json()["sessions"] == 1, erased.text
        assert client.get("/sessions/chat-7", headers=key).status_code == 404


@contextlib.contextmanager
def another_database(url: str, tmp_path: Path) -> Iterator[str]:
    if url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/another.db"
    else:
        with fresh_postgres_schema("tg_erasure_b") as pg_url:
            yield pg_url


async def test_the_log_names_a_user_by_a_keyed_hash_nobody_can_test_a_guess_against(url: str, tmp_path: Path) -> None:
    """Found in review: the audit log named an end user as sha256("<tenant>\\n<user_id>"), and the erasure record
    kept it: anyone reading the log or an export could hash candidate email addresses and find whose sessions
    they were. Now the reference is HMAC-SHA256 under a random key the database keeps: the same user is named
    alike by every process on that database (an erasure finds them), and differently on another database."""
    from checkpoints.audit import legacy_user_ref
    from checkpoints.factory import open_audit_log

    async with open_engine(url) as engine:
        session = await engine.create_session("veneo", "veneo_chat")
        await engine.run_turn(session, user("Hello"))
        session = engine.change_session(session, user_id="jane@example.com")  # tagged later, as a team route's
        tagged = [e.payload for e in engine.audit.query("veneo", limit=100) if e.event_type == "session_user_tagged"]
        await engine.delete_session(session)
        started = [e.payload for e in engine.audit.query("veneo", limit=100)
                   if e.event_type == "session_delete_started"]  # fmt: skip
        await engine.erase_user("veneo", "jane@example.com")
        erased = [e.payload for e in engine.audit.query("veneo", limit=100) if e.event_type == "user_erased"]
        ref = engine.audit.user_ref("veneo", "jane@example.com")

    guess = legacy_user_ref("veneo", "jane@example.com")
    assert tagged == [{"user_ref": ref}] and started[0]["user_ref"] == ref and erased[0]["user_ref"] == ref
    everything = json.dumps([tagged, started, erased])
    assert guess not in everything and "jane@example.com" not in everything and "user_sha256" not in everything
    replica = open_audit_log(url)  # another process on the same database names her alike
    try:
        assert replica.user_ref("veneo", "jane@example.com") == ref
        assert replica.user_ref("demo", "jane@example.com") != ref  # and per tenant
    finally:
        replica.close()
    with another_database(url, tmp_path) as other_url:
        other = open_audit_log(other_url)
        try:
            assert other.user_ref("veneo", "jane@example.com") != ref
        finally:
            other.close()


async def test_an_erasure_finds_a_user_an_earlier_release_named_by_a_plain_hash(url: str) -> None:
    """Entries written before keyed references name the user as `user_sha256` (unkeyed): an erasure still finds
    the sessions those entries tag (deleted ones included), redacts them, and writes only the keyed reference."""
    from checkpoints.audit import AuditEvent, legacy_user_ref

    async with open_engine(url) as engine:
        old = legacy_user_ref("veneo", "user-jane")
        engine.audit.append([  # what a replica of an earlier release wrote for a session it tagged and deleted
            AuditEvent("veneo", "api", "message", "old-1", {"role": "user", "content": SECRET}),
            AuditEvent("veneo", "api", "session_user_tagged", "old-1", {"user_sha256": old}),
            AuditEvent("veneo", "api", "session_delete_started", "old-1", {"team": "veneo_chat", "user_sha256": old}),
            AuditEvent("veneo", "api", "session_deleted", "old-1", {}),
        ])  # fmt: skip
        counts = await engine.erase_user("veneo", "user-jane")
        entries = engine.audit.query("veneo", limit=100)
        assert counts["audit_entries_redacted"] == 4
        assert all(set(e.payload) == {REDACTED} for e in entries if e.session == "old-1")
        erasure = [e for e in entries if e.event_type == "user_erased"][-1]
        assert erasure.payload["user_ref"] == engine.audit.user_ref("veneo", "user-jane")
        assert old not in json.dumps([e.payload for e in entries])
        assert engine.audit.verify("veneo").ok


def behind_the_servers_back(url: str, statement: str) -> None:
    """Run `statement` on the database over a connection of its own (an operator, a restore, a stray script)."""
    if url.startswith("sqlite"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            conn.execute(statement)
            conn.commit()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(statement)


def drop_key_table(url: str) -> None:
    behind_the_servers_back(url, "drop table audit_keys")


async def test_a_key_table_dropped_under_the_server_comes_back_with_the_same_key(url: str) -> None:
    """The key is the only way to find a user's deleted sessions again: a table dropped under a running server is
    seen by the readiness probe, and its repair puts back the key the running processes hold, not a new one (so
    a process started after it names users alike). The repair says what it recreated (it used to log "every table
    was there")."""
    import structlog

    from checkpoints.factory import open_audit_log

    async with open_engine(url) as engine:
        ref = engine.audit.user_ref("veneo", "user-jane")
        drop_key_table(url)
        with structlog.testing.capture_logs() as logged:
            assert set((await engine.readiness(timeout_s=5)).values()) == {"ok"}
        assert engine.audit.user_ref("veneo", "user-jane") == ref
        repairs = [e for e in logged if e["event"].startswith("storage_")]
        assert [e["event"] for e in repairs] == ["storage_repaired"], repairs
        assert repairs[0]["audit_key_table_recreated"] is True
        assert repairs[0]["audit_chain_restarted"] is False and repairs[0]["session_index_recreated"] is False
    after = open_audit_log(url)  # a process that starts after the repair
    try:
        assert after.user_ref("veneo", "user-jane") == ref
    finally:
        after.close()


async def test_a_key_table_lost_while_no_process_ran_is_recreated_at_start_and_said(url: str) -> None:
    """Dropped while nothing ran, the table comes back at the next start (it does not stop the start: the upgrade
    finds the version current), with a new key, since none is left: logged, because the log already names users
    by the lost one."""
    import structlog

    from checkpoints.factory import open_audit_log

    async with open_engine(url) as engine:
        session = await engine.create_session("veneo", "veneo_chat")
        engine.change_session(session, user_id="user-jane")
        before = engine.audit.user_ref("veneo", "user-jane")
    drop_key_table(url)
    with structlog.testing.capture_logs() as logged:
        log = open_audit_log(url)
    try:
        assert log.user_ref("veneo", "user-jane") != before
        assert "audit_user_key_created" in [e["event"] for e in logged]
    finally:
        log.close()
    with structlog.testing.capture_logs() as logged:  # and the next start reads it, quietly
        again = open_audit_log(url)
    try:
        assert again.user_ref("veneo", "user-jane") == log.user_ref("veneo", "user-jane")
        assert [e for e in logged if e["event"].startswith("audit_user_key")] == []
    finally:
        again.close()


async def test_memory_storage_tags_and_erases_users() -> None:
    """memory:// shares one connection (not autocommit) between the index and the log: reading or making the
    key must not leave a transaction open there (found in review: every create then failed)."""
    async with open_engine("memory://") as engine:
        session = await engine.create_session("veneo", "veneo_chat")
        await engine.run_turn(session, user("Hello"))
        engine.change_session(session, user_id="user-jane")
        assert (await engine.erase_user("veneo", "user-jane"))["sessions"] == 1
        assert engine.audit.verify("veneo").ok


def test_a_replica_adopts_the_key_another_process_put_there(url: str) -> None:
    """Found in review: the key was read only at start, so when its row was lost while replicas ran, a replica
    started meanwhile made a new one and the running ones kept theirs: two names for one user, and an erasure on
    one missed what the others wrote. The readiness probe (`ping`) now adopts the stored key, and says so."""
    import structlog

    from checkpoints.factory import open_audit_log

    running = open_audit_log(url)
    try:
        before = running.user_ref("veneo", "user-jane")
        behind_the_servers_back(url, "delete from audit_keys")
        started = open_audit_log(url)  # a replica that starts meanwhile makes a new key
        try:
            now = started.user_ref("veneo", "user-jane")
            assert now != before
            with structlog.testing.capture_logs() as logged:
                running.ping()
            assert running.user_ref("veneo", "user-jane") == now
            assert "audit_user_key_changed" in [e["event"] for e in logged]
        finally:
            started.close()
    finally:
        running.close()


def test_the_first_start_after_the_upgrade_does_not_search_the_log_for_keyed_names(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the start that makes the first key (every upgraded deployment's) searched the whole log
    for entries naming users by a key, which none can: on a large PostgreSQL log that hit the statement timeout
    and failed the start. Only a key lost later is checked (test above: `..._recreated_at_start_and_said`)."""
    import checkpoints.audit as audit
    from checkpoints.factory import open_audit_log

    searched: list[bool] = []
    real = audit._names_users
    monkeypatch.setattr(audit, "_names_users", lambda check: searched.append(True) or real(check))
    if url.startswith("sqlite"):
        import shutil

        from tests.integration_tests.test_v1_fixtures import FIXTURES

        path = url.removeprefix("sqlite:///")
        shutil.copy(FIXTURES / "teamgraph.db", path)  # audit tables of a release before keys
    else:
        from tests.integration_tests.test_v1_fixtures import restore_postgres_fixture

        restore_postgres_fixture(url)
    log = open_audit_log(url)
    log.close()
    assert searched == []
