"""kill -9 a real `teamgraph serve` during turns, uploads and deletes, restart it, and check every session.

After the crash every session is whole or gone, no message is stored twice, every turn that was answered 200 is
stored exactly once, every upload answered 200 is in its session, every DELETE answered 204 stuck, and a retried
keyed turn (Idempotency-Key) never runs twice. SQLite file and Postgres (a schema of its own) alike.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fresh_postgres_schema
from tests.integration_tests.live_server import DEMO_KEY, VENEO_KEY, LiveServer, auth

CHAT_SESSIONS = 3
DELETES = 4
UPLOADS = 3
LOAD_S = 0.6  # how long the load runs before the kill
QUESTIONS = ["How long does shipping take?", "Can I return shoes?", "Do gift cards expire?"]


@pytest.fixture(params=["sqlite", "postgres"])
def checkpoint_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tg.db"
    else:
        with fresh_postgres_schema("tg_crash") as url:
            yield url


@dataclass
class Ledger:
    """What each request of the load phase was answered (None: no answer, the server died)."""

    turns: dict[str, list[tuple[str, int | None]]] = field(default_factory=dict)  # session -> (text, status)
    deletes: dict[str, int | None] = field(default_factory=dict)
    uploads: dict[str, int | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def chat(client: httpx.Client, thread_id: str, text: str, keyed: bool = False) -> httpx.Response:
    """A chat turn; `keyed`: sent with an Idempotency-Key made from the text (unique per turn)."""
    return client.post(
        "/teams/veneo_chat/invoke",
        headers={**auth(VENEO_KEY), **({"Idempotency-Key": text.replace(" ", "-")} if keyed else {})},
        json={
            "input": {"messages": [{"type": "human", "content": text}]},
            "config": {"configurable": {"thread_id": thread_id}},
        },
    )


def status_of(send: Callable[..., httpx.Response], *args: Any, **kwargs: Any) -> int | None:
    """The status of `send(*args, **kwargs)`, or None when no answer came (the server died)."""
    try:
        return send(*args, **kwargs).status_code
    except httpx.HTTPError:
        return None


def resume_of(thread_id: str) -> str:
    return f"# Resume {thread_id}\nData engineer: Python, Kafka and Airflow pipelines at Acme for five years."


def seed(server: LiveServer) -> tuple[list[str], list[str], list[str]]:
    """Sessions to crash into, filled in parallel (one client per session)."""
    chats = [f"chat-{uuid.uuid4().hex[:8]}" for _ in range(CHAT_SESSIONS)]
    doomed = [f"doomed-{uuid.uuid4().hex[:8]}" for _ in range(DELETES)]

    def fill(sid: str, turns: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(turns):
                assert chat(client, sid, f"{sid} seed {i} {QUESTIONS[i % 3]}").status_code == 200

    # 16 messages in each chat: every further turn moves 10 of them to the archive
    with ThreadPoolExecutor(max_workers=CHAT_SESSIONS + DELETES) as pool:
        for done in [pool.submit(fill, sid, 8) for sid in chats] + [pool.submit(fill, sid, 2) for sid in doomed]:
            done.result()
    uploads = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(UPLOADS):
            r = client.post("/sessions", headers=auth(DEMO_KEY), json={"title": "upload"})
            assert r.status_code == 201, r.text
            uploads.append(r.json()["id"])
    return chats, doomed, uploads


def load(server: LiveServer, chats: list[str], doomed: list[str], uploads: list[str], ledger: Ledger) -> None:
    """Turns, deletes and uploads from several threads until the server dies under them."""

    def chat_worker(sid: str) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for n in range(200):  # bounded: the kill ends it long before
                text = f"{sid} turn {n}"
                status = status_of(chat, client, sid, text, keyed=True)
                with ledger.lock:
                    ledger.turns.setdefault(sid, []).append((text, status))
                if status is None:
                    return

    def delete_worker() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for sid in doomed:  # spread over the load, so the kill lands before, during or after some
                status = status_of(client.delete, f"/sessions/{sid}", headers=auth(VENEO_KEY))
                with ledger.lock:
                    ledger.deletes[sid] = status
                time.sleep(LOAD_S / DELETES)

    def upload_worker() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for sid in uploads:
                status = status_of(
                    client.post,
                    f"/sessions/{sid}/documents",
                    headers=auth(DEMO_KEY),
                    files={"file": ("cv.md", resume_of(sid).encode(), "text/markdown")},
                    data={"kind": "resume"},
                )
                with ledger.lock:
                    ledger.uploads[sid] = status
                time.sleep(LOAD_S / UPLOADS)

    workers = [threading.Thread(target=chat_worker, args=(sid,)) for sid in chats]
    workers += [threading.Thread(target=delete_worker), threading.Thread(target=upload_worker)]
    for worker in workers:
        worker.start()
    time.sleep(LOAD_S)
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)
    for worker in workers:
        worker.join(timeout=30)
    server.stop()


def transcript(client: httpx.Client, sid: str, key: str) -> list[dict[str, Any]] | None:
    r = client.get(f"/sessions/{sid}", headers=auth(key))
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["transcript"]
    return messages


def assert_whole(messages: list[dict[str, Any]]) -> None:
    """Whole turns, each message once: user, reply, user, reply..."""
    assert len({m["id"] for m in messages}) == len(messages), "a message is stored twice"
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2), messages


def test_kill_9_during_turns_uploads_and_deletes_leaves_every_session_whole_or_gone(
    tmp_path: Path, checkpoint_url: str
) -> None:
    server = LiveServer(tmp_path, env={"TEAMGRAPH_CHECKPOINT_URL": checkpoint_url})
    ledger = Ledger()
    with server:
        chats, doomed, uploads = seed(server)
        load(server, chats, doomed, uploads, ledger)
    assert any(status is None for turns in ledger.turns.values() for _, status in turns), "the kill hit no turn"

    with server, httpx.Client(base_url=server.url, timeout=10) as client:
        for sid in chats:
            messages = transcript(client, sid, VENEO_KEY)
            assert messages is not None
            assert_whole(messages)
            users = [m["content"] for m in messages if m["role"] == "user"]
            assert users[:8] == [f"{sid} seed {i} {QUESTIONS[i % 3]}" for i in range(8)]
            for text, status in ledger.turns[sid]:
                if status == 200:
                    assert users.count(text) == 1, f"answered turn {text!r} stored {users.count(text)} times"
                else:
                    assert status is None, (text, status)
                    # retried with its key: answered from the store, run now, or refused as in doubt; never twice
                    retry = chat(client, sid, text, keyed=True)
                    assert retry.status_code in (200, 409), retry.text
                    if retry.status_code == 409:
                        assert retry.json()["error"]["code"] == "idempotent_turn_outcome_unknown"
                    after = [m["content"] for m in transcript(client, sid, VENEO_KEY) or [] if m["role"] == "user"]
                    assert after.count(text) == (1 if retry.status_code == 200 else users.count(text))
            assert_whole(transcript(client, sid, VENEO_KEY) or [])

        for sid in doomed:
            messages = transcript(client, sid, VENEO_KEY)
            if ledger.deletes.get(sid) == 204:
                assert messages is None, f"{sid} was deleted (204) and is back"
            elif messages is not None:  # whole: every seeded turn, nothing missing
                assert_whole(messages)
                assert len(messages) == 4
            # a repeated DELETE succeeds, and after it the session is gone
            r = client.delete(f"/sessions/{sid}", headers=auth(VENEO_KEY))
            assert r.status_code == (204 if messages is not None else 404), r.text
            assert transcript(client, sid, VENEO_KEY) is None

        for sid in uploads:
            r = client.get(f"/sessions/{sid}", headers=auth(DEMO_KEY))
            assert r.status_code == 200, r.text
            resume = r.json()["state"].get("resume")
            if ledger.uploads.get(sid) == 200:
                assert resume == resume_of(sid)
            else:
                assert resume in (None, resume_of(sid))

        # nothing half there: every session the index lists reads whole
        for key in (VENEO_KEY, DEMO_KEY):
            listed = client.get("/sessions", headers=auth(key), params={"limit": 200}).json()["items"]
            for item in listed:
                r = client.get(f"/sessions/{item['id']}", headers=auth(key))
                assert r.status_code == 200, r.text
                assert_whole(r.json()["transcript"])
