"""Self-repair: a database that loses its tables while `teamgraph serve` runs is set up again without a restart.

Real processes and real databases: a live server on a scratch PostgreSQL database of its own (`tg_harden3_*`,
dropped and created again under it; the shared `test` database is never touched), on a scratch schema, and on a
SQLite file whose tables are dropped or which is deleted. The request that meets the missing tables answers 503
`storage_unavailable`; after it (or after /readyz, or within a second for a deleted SQLite file) new sessions and
turns work and /readyz is 200 again. Time bounds are hang guards, not speed checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import POSTGRES_URL, fresh_postgres_schema
from tests.integration_tests.live_server import LiveServer, chat_turn

VENEO = {"Authorization": "Bearer tg-veneo-key"}
DEMO_ADMIN_KEY = f"tg-demo-admin-{uuid.uuid4().hex}"
ENV = {"TEAMGRAPH_LOG_FORMAT": "json", "TEAMGRAPH_DEMO_ADMIN_KEY": DEMO_ADMIN_KEY}


def until(check: Any, within_s: float = 20.0) -> Any:
    """Call `check` until it returns something truthy (its last answer otherwise)."""
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def ready(server: LiveServer) -> bool:
    try:
        return httpx.get(server.url + "/readyz", timeout=10).status_code == 200
    except httpx.TransportError:  # a worker that exits to be replaced may drop the connection
        return False


def repair_lines(server: LiveServer) -> list[dict[str, Any]]:
    lines = []
    for raw in server.stdout.splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if line.get("event") == "storage_repaired":
                lines.append(line)
    return lines


def works_again(server: LiveServer, old_id: str) -> None:
    """After the repair: /readyz 200, a new session and a second turn on it work, the lost session is a 404."""
    assert until(lambda: ready(server)), httpx.get(server.url + "/readyz", timeout=10).text
    new_id = f"after-{uuid.uuid4().hex[:8]}"
    assert chat_turn(server, new_id, "Hello again").status_code == 200
    r = chat_turn(server, new_id, "And once more")
    assert r.status_code == 200, r.text
    session = httpx.get(f"{server.url}/sessions/{new_id}", headers=VENEO, timeout=10)
    assert session.status_code == 200, session.text
    said = [m["content"] for m in session.json()["transcript"] if m["role"] == "user"]
    assert said == ["Hello again", "And once more"]
    assert httpx.get(f"{server.url}/sessions/{old_id}", headers=VENEO, timeout=10).status_code == 404
    created = httpx.post(server.url + "/sessions", headers=VENEO, json={"title": "fresh"}, timeout=10)
    assert created.status_code == 201, created.text


def audit_restarted(server: LiveServer) -> list[dict[str, Any]]:
    admin = {"Authorization": f"Bearer {DEMO_ADMIN_KEY}"}
    r = httpx.get(server.url + "/audit", headers=admin, params={"event_type": "audit_restarted"}, timeout=10)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


# --- PostgreSQL -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_database() -> Iterator[tuple[str, str]]:
    """A database of this test's own (`tg_harden3_<hex>`) in the machine's PostgreSQL: (its URL, its name)."""
    import psycopg

    name = f"tg_harden3_{uuid.uuid4().hex[:10]}"
    base = POSTGRES_URL.split("?")[0]
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"create database {name}")
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}", name
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"drop database if exists {name} with (force)")


def test_a_postgres_database_dropped_and_created_again_is_set_up_again_without_a_restart(tmp_path: Path) -> None:
    import psycopg

    with (
        scratch_database() as (url, name),
        LiveServer(tmp_path, env={**ENV, "TEAMGRAPH_CHECKPOINT_URL": url}) as server,
    ):
        old_id = f"before-{uuid.uuid4().hex[:8]}"
        assert chat_turn(server, old_id, "Hello").status_code == 200
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"drop database {name} with (force)")  # ends the server's connections too
            admin.execute(f"create database {name}")
        r = chat_turn(server, old_id, "Still there?")
        assert r.status_code == 503, r.text  # the request that met the empty database: a clear 503, not a 500
        assert r.json()["error"]["code"] == "storage_unavailable"
        works_again(server, old_id)
        lines = repair_lines(server)
        assert lines and lines[0]["level"] == "warning", server.stdout[-3000:]
        assert lines[0]["backend"] == "postgres" and lines[0]["audit_chain_restarted"] is True
        assert "relation" in lines[0]["cause"] and "does not exist" in lines[0]["cause"]
        # the new chain opens by saying why it starts over, and verifies
        restarted = audit_restarted(server)
        assert len(restarted) == 1 and restarted[0]["seq"] == 1, restarted
        assert server.process is not None and server.process.poll() is None  # never restarted


@pytest.mark.parametrize("which", ["schema", "data_tables_only"])
def test_a_postgres_schema_dropped_and_created_again_is_repaired_by_readyz(tmp_path: Path, which: str) -> None:
    """No turn needs to meet the empty schema first: the load balancer's /readyz probe repairs it.
    `data_tables_only`: the tables of migration versions stay and say the dropped tables exist."""
    import psycopg

    with fresh_postgres_schema("tg_harden3") as url:
        schema = url.rsplit("search_path%3D", 1)[1]
        env = {**ENV, "TEAMGRAPH_CHECKPOINT_URL": url}
        with LiveServer(tmp_path, env=env) as server:
            old_id = f"before-{uuid.uuid4().hex[:8]}"
            assert chat_turn(server, old_id, "Hello").status_code == 200
            with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
                if which == "schema":
                    admin.execute(f"drop schema {schema} cascade")
                    admin.execute(f"create schema {schema}")
                else:
                    for table in ("teamgraph_sessions", "checkpoints", "checkpoint_writes", "store", "audit_events"):
                        admin.execute(f"drop table {schema}.{table}")
            r = httpx.get(server.url + "/readyz", timeout=10)
            assert r.status_code == 200, r.text  # the probe found the tables missing, recreated them, asked again
            assert len(repair_lines(server)) == 1, server.stdout[-3000:]
            works_again(server, old_id)
            assert len(repair_lines(server)) == 1  # one repair, not one per request


# --- SQLite -----------------------------------------------------------------------------------------------------


def sqlite_tables(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("select name from sqlite_master where type = 'table'")}


VERSION_TABLES = {"teamgraph_schema_versions", "store_migrations"}  # SQLite's (its checkpointer keeps none)


@pytest.mark.parametrize("which", ["every_table", "data_tables_only"])
def test_sqlite_tables_dropped_under_the_server_are_created_again(tmp_path: Path, which: str) -> None:
    """`data_tables_only`: the tables of migration versions stay and say the dropped tables exist."""
    with LiveServer(tmp_path, env=ENV) as server:
        old_id = f"before-{uuid.uuid4().hex[:8]}"
        assert chat_turn(server, old_id, "Hello").status_code == 200
        tables = sqlite_tables(server.db)
        assert {"sessions", "checkpoints", "store", "audit_events"} | VERSION_TABLES <= tables
        kept = {"sqlite_sequence"} | (VERSION_TABLES if which == "data_tables_only" else set())
        with contextlib.closing(sqlite3.connect(server.db, isolation_level=None)) as conn:
            for table in tables - kept:
                conn.execute(f"drop table if exists {table}")
        r = httpx.get(f"{server.url}/sessions", headers=VENEO, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
        works_again(server, old_id)
        lines = repair_lines(server)
        assert len(lines) == 1 and lines[0]["backend"] == "sqlite" and lines[0]["audit_chain_restarted"] is True
        assert lines[0]["checkpoints_recreated"] is True and lines[0]["session_index_recreated"] is True
        assert "no such table" in lines[0]["cause"]
        assert {"sessions", "checkpoints", "store", "audit_events"} <= sqlite_tables(server.db)
        assert len(audit_restarted(server)) == 1


@pytest.mark.parametrize("delete", ["file", "file_and_wal"])
def test_a_deleted_sqlite_file_is_recreated_and_new_turns_land_in_it(tmp_path: Path, delete: str) -> None:
    """Deleting the file raises no error (the server's connections keep the unlinked file open, and turns would
    be stored in it and lost at the next restart): the server notices, recreates the file, and says so."""
    with LiveServer(tmp_path, env=ENV) as server:
        old_id = f"before-{uuid.uuid4().hex[:8]}"
        assert chat_turn(server, old_id, "Hello").status_code == 200
        server.db.unlink()
        if delete == "file_and_wal":
            for suffix in ("-wal", "-shm"):
                Path(f"{server.db}{suffix}").unlink(missing_ok=True)
        assert until(lambda: server.db.exists(), within_s=10), "the database file was not recreated"
        works_again(server, old_id)
        lines = repair_lines(server)
        assert len(lines) == 1 and lines[0]["database_file_recreated"] is True, server.stdout[-3000:]
        # what the server now stores is in the file on disk, not in the deleted one
        with contextlib.closing(sqlite3.connect(server.db)) as conn:
            stored = {row[0] for row in conn.execute("select client_id from sessions where tenant = 'veneo'")}
        assert any(s.startswith("after-") for s in stored) and old_id not in stored, stored
        with contextlib.closing(sqlite3.connect(server.db)) as conn:
            assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"


# the watcher that checks the file every second is slowed to a crawl: what is left is the request path's own check
NO_WATCHER = {**ENV, "TEAMGRAPH_STORAGE_WATCH_S": "600"}


def turns_until_stored(server: LiveServer, within_s: float = 60.0) -> list[str]:
    """Send turns on new sessions until three in a row are acknowledged; the ids answered 200. A worker that finds
    its file gone answers 503 or drops the connection (neither is an acknowledgement)."""
    acknowledged: list[str] = []
    in_a_row = 0
    deadline = time.monotonic() + within_s
    while in_a_row < 3 and time.monotonic() < deadline:
        thread_id = f"after-{uuid.uuid4().hex[:8]}"
        try:
            status = chat_turn(server, thread_id, "Hello again").status_code
        except httpx.TransportError:
            status = 0
        if status == 200:
            acknowledged.append(thread_id)
            in_a_row += 1
        else:
            assert status in (0, 503), status
            in_a_row = 0
            time.sleep(0.2)
    assert in_a_row == 3, server.stdout[-3000:]
    return acknowledged


def stored_sessions(server: LiveServer) -> set[str]:
    with contextlib.closing(sqlite3.connect(server.db)) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        return {row[0] for row in conn.execute("select client_id from sessions where tenant = 'veneo'")}


def test_a_request_right_after_the_file_is_deleted_lands_in_a_new_file(tmp_path: Path) -> None:
    """No waiting for the watcher: the first request after the deletion reopens on a new file, and its turn is
    stored there."""
    with LiveServer(tmp_path, env=NO_WATCHER) as server:
        assert chat_turn(server, "before-1", "Hello").status_code == 200
        server.db.unlink()
        acknowledged = turns_until_stored(server, within_s=30)
        assert len(acknowledged) == 3  # not one refused: the single worker reopens in place
        assert set(acknowledged) <= stored_sessions(server)
        works_again(server, "before-1")


def holding_the_deleted_file(server: LiveServer) -> list[int]:
    """Processes of the server (its process group) that still have the deleted database file open."""
    return holding(server, f"{server.db} (deleted)")


def holding(server: LiveServer, deleted: str) -> list[int]:
    """Processes of the server (its process group) that have `deleted` (a path as /proc shows it) open."""
    assert server.process is not None
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getpgid(int(proc.name)) != server.process.pid:
                continue
            if any(os.readlink(fd) == deleted for fd in (proc / "fd").iterdir()):
                holders.append(int(proc.name))
    return holders


def ready_burst(server: LiveServer, n: int = 6) -> bool:
    """/readyz from `n` connections at once: with requests in parallel, every worker accepts some (one after the
    other, the kernel may hand every connection to the same worker)."""
    with ThreadPoolExecutor(n) as pool:
        return all(pool.map(lambda _: ready(server), range(n)))


def test_with_several_workers_a_deleted_sqlite_file_restarts_the_workers_on_a_new_file(tmp_path: Path) -> None:
    """A worker cannot know when its siblings let go of the deleted file, so none recreates it in place: each
    exits (saying why) and uvicorn starts a fresh one, which opens a new file. Until it has, a worker still on the
    deleted file acknowledges nothing: every turn answered 200 is in the new file (this raced before)."""
    with LiveServer(tmp_path, env=NO_WATCHER, workers=2, startup_timeout=60) as server:
        old_id = f"before-{uuid.uuid4().hex[:8]}"
        assert chat_turn(server, old_id, "Hello").status_code == 200
        assert holding_the_deleted_file(server) == []
        # the server answers once one worker is up; the other may still be starting (CI: only one held the file)
        assert until(lambda: len(holding(server, str(server.db))) == 2, within_s=60), server.stdout[-3000:]
        server.db.unlink()
        assert len(holding_the_deleted_file(server)) == 2  # both workers had it open
        acknowledged = turns_until_stored(server)
        # both workers have met the deleted file (by a request: the watcher sleeps) and been replaced; no process
        # of the server holds the deleted file any more
        replaced = lambda: ready_burst(server) and not holding_the_deleted_file(server)  # noqa: E731
        assert until(replaced, within_s=60), (holding_the_deleted_file(server), server.stdout[-3000:])
        acknowledged += turns_until_stored(server)
        stored = stored_sessions(server)
        assert set(acknowledged) <= stored and old_id not in stored, (acknowledged, stored)
        for thread_id in acknowledged:
            r = httpx.get(f"{server.url}/sessions/{thread_id}", headers=VENEO, timeout=10)
            assert r.status_code == 200, r.text
        # each worker that left because of the file said why, and uvicorn replaced it (a worker uvicorn's health
        # check killed as unresponsive on a loaded machine is replaced without such a line)
        exits = [json.loads(line)["pid"] for line in server.stdout.splitlines() if "storage_file_deleted" in line]
        assert 1 <= len(exits) <= 2, server.stdout[-3000:]
        for pid in exits:  # uvicorn's supervisor checks its workers every half second, one after the other,
            # pinging each live one with a 5 s limit (a replacement still importing may take it all): not at once
            said = f"Child process [{pid}] died"
            assert until(lambda: said in server.stdout, within_s=30), server.stdout[-3000:]  # noqa: B023
        assert server.process is not None and server.process.poll() is None  # the server itself never stopped


async def test_a_turn_that_ran_while_its_file_was_deleted_is_not_acknowledged(tmp_path: Path) -> None:
    """The check before a turn is acknowledged: a deletion during the turn makes it a 503, not a 200 for a turn
    stored in the deleted file; the next request's check moves to a new file and the turn after it stands."""
    from checkpoints.factory import build_persistence
    from checkpoints.storage import StorageUnavailable

    db = tmp_path / "tg.db"
    async with build_persistence(f"sqlite:///{db}") as persistence:
        repair = persistence.repair
        assert repair is not None
        repair.after_turn()  # the file is the one held: nothing to say
        db.unlink()
        with pytest.raises(StorageUnavailable, match="not stored, send it again"):
            repair.after_turn()
        await repair.before_request()
        assert db.exists()
        repair.after_turn()


def test_only_the_checkpoint_tables_dropped_are_named_in_the_repair_line(tmp_path: Path) -> None:
    """The line says what was recreated: LangGraph's checkpoint tables, not the session index or the audit chain
    (before, such a repair logged every field false)."""
    with LiveServer(tmp_path, env=ENV) as server:
        assert chat_turn(server, "before-1", "Hello").status_code == 200
        with contextlib.closing(sqlite3.connect(server.db, isolation_level=None)) as conn:
            for table in ("checkpoints", "writes"):
                conn.execute(f"drop table {table}")
        r = chat_turn(server, "before-1", "Still there?")
        assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
        assert until(lambda: ready(server))
        assert chat_turn(server, "after-1", "Hello again").status_code == 200
        lines = repair_lines(server)
        assert len(lines) == 1, server.stdout[-3000:]
        named = {k: lines[0][k] for k in ("checkpoints_recreated", "session_index_recreated", "audit_chain_restarted")}
        assert named == {
            "checkpoints_recreated": True,
            "session_index_recreated": False,
            "audit_chain_restarted": False,
        }
        assert audit_restarted(server) == []


async def test_a_repair_that_finds_every_table_there_is_not_logged_as_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sibling worker or replica recreated the tables first: this process recreates nothing and says so at info
    level, not as a `storage_repaired` warning (which used to be logged with every field false). The module's
    logger is captured at every level, whatever log level an earlier test configured."""
    import logging

    import structlog
    from structlog.testing import LogCapture

    from checkpoints import self_repair
    from tests.conftest import open_engine

    capture = LogCapture()
    logger = structlog.wrap_logger(
        None, processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    monkeypatch.setattr(self_repair, "log", logger)
    async with open_engine(f"sqlite:///{tmp_path}/teamgraph.db") as engine:
        assert await engine.persistence.repair.repair("no such table: checkpoints") is True
    events = [(e["event"], e["log_level"]) for e in capture.entries if e["event"].startswith("storage_")]
    assert events == [("storage_checked", "info")]
