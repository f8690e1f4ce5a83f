"""Faults an operator meets: the database goes away and comes back. Each answers fast and clearly (503
`storage_unavailable` with Retry-After, /readyz 503), and the server recovers by itself.

The outage is a TCP proxy in front of the machine's PostgreSQL that the test stops and restarts; the shared
PostgreSQL server itself is never stopped. Time bounds here are generous hang guards, not speed checks.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.conftest import fresh_postgres_schema
from tests.integration_tests.live_server import LiveServer, chat_turn
from tests.integration_tests.tcp_proxy import TcpProxy

VENEO = {"Authorization": "Bearer tg-veneo-key"}
HANG_GUARD_S = 10.0  # a request that cannot reach the database must still end well before psycopg's 30 s


@contextlib.contextmanager
def proxied_postgres() -> Iterator[tuple[str, TcpProxy]]:
    """A fresh schema in the machine's Postgres, reached through a proxy the test can stop."""
    with fresh_postgres_schema("tg_fault") as url:
        target = urlparse(url)
        with TcpProxy(target.port or 5432, target.hostname or "127.0.0.1") as proxy:
            yield url.replace(f":{target.port or 5432}/", f":{proxy.port}/", 1), proxy


@contextlib.contextmanager
def serve(url: str) -> Iterator[TestClient]:
    app = create_app(Settings(_env_file=None, checkpoint_url=url, log_format="json"))  # type: ignore[call-arg]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def chat(client: TestClient, thread_id: str, text: str) -> httpx.Response:
    return client.post(
        "/teams/veneo_chat/invoke",
        headers=VENEO,
        json={"input": {"messages": [{"type": "human", "content": text}]},
              "config": {"configurable": {"thread_id": thread_id}}},
    )  # fmt: skip


def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_storage_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "storage_unavailable", r.text
    assert "try again" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) > 0


def wait_ready(client: TestClient, within_s: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + within_s
    while True:
        r = client.get("/readyz")
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_postgres_going_away_answers_503_fast_and_the_server_recovers_when_it_is_back() -> None:
    with proxied_postgres() as (url, proxy), serve(url) as client:
        sid = f"outage-{uuid.uuid4().hex[:8]}"
        assert chat(client, sid, "How long does shipping take?").status_code == 200
        assert client.get("/readyz").status_code == 200

        proxy.stop()
        r, took = timed(lambda: chat(client, sid, "And returns?"))
        assert_storage_unavailable(r)
        assert took < HANG_GUARD_S, took
        r, took = timed(lambda: client.get("/readyz"))
        assert r.status_code == 503, r.text
        assert r.json()["status"] == "unavailable"
        assert any(v != "ok" for v in r.json()["checks"].values()), r.json()
        assert took < HANG_GUARD_S, took
        r, took = timed(lambda: client.post("/sessions", headers=VENEO, json={}))
        assert_storage_unavailable(r)
        assert took < HANG_GUARD_S, took
        r, took = timed(lambda: client.get(f"/sessions/{sid}", headers=VENEO))
        assert_storage_unavailable(r)
        assert took < HANG_GUARD_S, took

        proxy.start()  # the database is back: no restart of the server
        assert wait_ready(client).status_code == 200
        assert chat(client, sid, "Thanks, and returns?").status_code == 200
        transcript = client.get(f"/sessions/{sid}", headers=VENEO).json()["transcript"]
        said = [m["content"] for m in transcript if m["role"] == "user"]
        assert said == ["How long does shipping take?", "Thanks, and returns?"]  # the failed turn left nothing
        assert client.post("/sessions", headers=VENEO, json={}).status_code == 201


def test_a_stream_on_an_unreachable_database_is_a_503_before_any_event() -> None:
    with proxied_postgres() as (url, proxy), serve(url) as client:
        sid = f"stream-{uuid.uuid4().hex[:8]}"
        assert chat(client, sid, "Hello").status_code == 200
        proxy.stop()
        body = {"input": {"messages": [{"type": "human", "content": "Still there?"}]},
                "config": {"configurable": {"thread_id": sid}}}  # fmt: skip
        r, took = timed(lambda: client.post("/teams/veneo_chat/stream", headers=VENEO, json=body))
        assert_storage_unavailable(r)
        assert took < HANG_GUARD_S, took


def test_readyz_answers_503_while_the_database_is_away() -> None:
    with proxied_postgres() as (url, proxy), serve(url) as client:
        assert client.get("/readyz").status_code == 200
        proxy.stop()
        for _ in range(3):  # every probe answers, none waits for the pool
            r, took = timed(lambda: client.get("/readyz"))
            assert r.status_code == 503, r.text
            assert took < 5.0, took
        proxy.start()
        assert wait_ready(client).status_code == 200


def test_a_dropped_and_recreated_schema_answers_503_not_500_and_then_works_again() -> None:
    """The tables are gone (an operator dropped and recreated the schema): the turn that meets it answers a clear
    503, and the server recreates the tables (checkpoints/self_repair.py; more in test_self_repair.py)."""
    import psycopg

    with proxied_postgres() as (url, _proxy), serve(url) as client:
        sid = f"drop-{uuid.uuid4().hex[:8]}"
        assert chat(client, sid, "Hello").status_code == 200
        schema = url.rsplit("search_path%3D", 1)[1]
        with psycopg.connect(url.split("?")[0].replace(f":{_proxy.port}/", ":5432/"), autocommit=True) as admin:
            admin.execute(f"drop schema {schema} cascade")
            admin.execute(f"create schema {schema}")
        body = {"input": {"messages": [{"type": "human", "content": "Still there?"}]},
                "config": {"configurable": {"thread_id": sid}}}  # fmt: skip
        # a stream meets the missing tables before its first event: a 503 like an invoke, and the repair
        assert_storage_unavailable(client.post("/teams/veneo_chat/stream", headers=VENEO, json=body))
        assert chat(client, f"{sid}-new", "Hello again").status_code == 200  # that 503 repaired it
        assert client.get(f"/sessions/{sid}", headers=VENEO).status_code == 404  # its data went with the schema
        assert client.get("/readyz").status_code == 200


# --- a full disk, a read-only data directory (a real `teamgraph serve` on SQLite) -----------------------------
#
# Tests run as root here, and root ignores file modes, so chmod cannot make a directory unwritable. What works:
# a full disk is a small tmpfs mounted on the data directory inside a private mount namespace of the server's
# own (`unshare --mount`, gone with the process; the test reaches it through /proc/<pid>/root); a read-only
# directory is `chattr +i` on the database files and the directory (the kernel then refuses writes, also on
# files already open). Both need root (CAP_SYS_ADMIN, CAP_LINUX_IMMUTABLE); elsewhere the tests say so and skip.


def _run(*args: str) -> bool:
    return subprocess.run(args, capture_output=True).returncode == 0


def assert_write_refused(r: httpx.Response) -> None:
    """A write that cannot be stored: 503 with the error shape and Retry-After (the audit log shares the file,
    so which of the two stores noticed first decides the code)."""
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] in ("storage_unavailable", "audit_unavailable"), r.text
    assert int(r.headers["retry-after"]) > 0


def wait_ready_live(server: LiveServer, within_s: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + within_s
    while True:
        r = httpx.get(server.url + "/readyz", timeout=10)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def _cannot_run(reason: str) -> None:
    """A developer's machine without root skips this fault test; CI runs as root, so there it must run: fail."""
    if os.environ.get("CI"):
        pytest.fail(f"this fault test must run in CI: {reason}")
    pytest.skip(reason)


def test_a_full_disk_answers_503_readyz_says_so_and_service_resumes_when_space_is_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if not _run("unshare", "--mount", "--propagation", "private", "true"):
        _cannot_run("needs root (a private mount namespace for a small tmpfs)")
    mount = 'mount -t tmpfs -o size=16m tmpfs "$1" && shift && exec "$@"'
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh", str(data)]
    with LiveServer(tmp_path / "work", db=data / "tg.db", wrapper=wrapper) as server:
        assert server.process is not None
        inside = Path(f"/proc/{server.process.pid}/root") / str(data).lstrip("/")
        assert (inside / "tg.db").is_file() and not (data / "tg.db").exists()  # on the server's tmpfs only
        assert chat_turn(server, "disk-1", "How long does shipping take?").status_code == 200

        filler = inside / "filler"
        with filler.open("wb") as out, contextlib.suppress(OSError):  # take every free byte
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        assert_write_refused(httpx.post(server.url + "/sessions", headers=VENEO, json={}, timeout=30))
        assert_write_refused(chat_turn(server, "disk-1", "Do you ship abroad?"))
        ready = httpx.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["data_dir_write"].startswith("error"), ready.json()

        filler.unlink()  # space again: no restart
        assert wait_ready_live(server).status_code == 200
        assert httpx.post(server.url + "/sessions", headers=VENEO, json={}, timeout=30).status_code == 201
        assert chat_turn(server, "disk-1", "And returns?").status_code == 200
        transcript = httpx.get(server.url + "/sessions/disk-1", headers=VENEO, timeout=30).json()["transcript"]
        said = [m["content"] for m in transcript if m["role"] == "user"]
        assert said == ["How long does shipping take?", "And returns?"]  # the refused turn left nothing


def test_a_read_only_data_directory_answers_503_and_readyz_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with LiveServer(tmp_path / "work", db=data / "tg.db") as server:
        assert chat_turn(server, "ro-1", "How long does shipping take?").status_code == 200
        # not the -shm file: SQLite maps it into memory, and a write to a mapped immutable file is a SIGBUS
        frozen = [data, *(p for p in data.iterdir() if p.is_file() and not p.name.endswith("-shm"))]
        if not _run("chattr", "+i", *map(str, frozen)):
            _cannot_run("needs root on a file system with immutable files (chattr +i)")
        try:
            assert_write_refused(httpx.post(server.url + "/sessions", headers=VENEO, json={}, timeout=30))
            assert_write_refused(chat_turn(server, "ro-1", "Do you ship abroad?"))
            ready = httpx.get(server.url + "/readyz", timeout=10)
            assert ready.status_code == 503, ready.text
            checks = ready.json()["checks"]
            assert checks["data_dir_write"].startswith("error") and checks["session_index"] == "ok", checks
        finally:
            _run("chattr", "-i", *map(str, frozen))
        assert wait_ready_live(server).status_code == 200
        assert chat_turn(server, "ro-1", "And returns?").status_code == 200
