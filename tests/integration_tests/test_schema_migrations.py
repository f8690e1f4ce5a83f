"""Table schema versions: the v1 fixture databases upgrade through the numbered steps to the schema a fresh
database gets, on SQLite and Postgres; replicas starting together both succeed; a newer schema is refused."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from checkpoints.audit import PostgresAuditLog, SqliteAuditLog
from checkpoints.schema_migrations import COMPONENTS, VERSIONS_TABLE, SchemaTooNew, latest
from checkpoints.session_index import PostgresSessionIndex, SqliteSessionIndex
from tests.conftest import fresh_postgres_schema
from tests.integration_tests.test_v1_fixtures import FIXTURES, MANIFEST, restore_postgres_fixture

OURS_SQLITE = {"sessions", "session_deletions", "idempotency_keys", "teamgraph_ready", "audit_events",
               "audit_anchors", "audit_keys", VERSIONS_TABLE}  # fmt: skip
OURS_PG = {"teamgraph_sessions", "teamgraph_session_deletions", "teamgraph_idempotency_keys", "teamgraph_ready",
           "audit_events", "audit_anchors", "audit_keys", VERSIONS_TABLE}  # fmt: skip


def sqlite_schema(path: Path) -> dict[str, Any]:
    """Our tables' columns (name, type, not null, default, pk) and indexes (name, unique, columns)."""
    conn = sqlite3.connect(path)
    out: dict[str, Any] = {}
    tables = [r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")]
    for table in sorted(set(tables) & OURS_SQLITE):
        columns = [(c[1], c[2].lower(), c[3], c[4], c[5]) for c in conn.execute(f"pragma table_info({table})")]
        indexes = sorted(
            (ix[1], ix[2], tuple(c[2] for c in conn.execute(f"pragma index_info('{ix[1]}')")))
            for ix in conn.execute(f"pragma index_list({table})")
        )
        out[table] = {"columns": columns, "indexes": indexes}
    conn.close()
    return out


def sqlite_versions(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute(f"select component, version from {VERSIONS_TABLE}").fetchall())
    finally:
        conn.close()


def open_sqlite(path: Path) -> None:
    SqliteSessionIndex(path).close()
    SqliteAuditLog(path).close()


def test_v1_sqlite_file_upgrades_to_the_fresh_schema(tmp_path: Path) -> None:
    old = tmp_path / "v1.db"
    shutil.copy(FIXTURES / "teamgraph.db", old)
    before = sqlite_schema(old)
    assert "client_id" not in [c[0] for c in before["sessions"]["columns"]]  # the fixture really is version 1
    assert "session_deletions" not in before and VERSIONS_TABLE not in before

    open_sqlite(old)
    fresh = tmp_path / "fresh.db"
    open_sqlite(fresh)

    assert sqlite_schema(old) == sqlite_schema(fresh)
    assert sqlite_versions(old) == sqlite_versions(fresh) == {c: latest(c) for c in COMPONENTS}
    index = SqliteSessionIndex(old)
    for item in MANIFEST["sqlite"]:  # old rows answer to the id their tenant always used
        record = index.find(item["tenant"], item["thread_id"])
        assert record is not None and record.thread_id == item["thread_id"] and record.title == item["title"]
    index.close()
    audit = SqliteAuditLog(old)
    assert all(audit.verify(t).ok for t in audit.tenants()) and audit.tenants()
    audit.close()

    open_sqlite(old)  # a second start finds everything current and changes nothing
    assert sqlite_schema(old) == sqlite_schema(fresh)


def test_sqlite_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    open_sqlite(path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"update {VERSIONS_TABLE} set version = version + 1 where component = 'session_index'")
    with pytest.raises(SchemaTooNew, match=rf"session_index .* version {latest('session_index') + 1}.* up to"):
        SqliteSessionIndex(path)


STARTER = """
import sys, time
from checkpoints.audit import PostgresAuditLog, SqliteAuditLog
from checkpoints.session_index import PostgresSessionIndex, SqliteSessionIndex
url = sys.argv[1]
while time.time() < float(sys.argv[2]):  # start together
    time.sleep(0.001)
if url.startswith("sqlite:///"):
    SqliteSessionIndex(url[10:]).close(); SqliteAuditLog(url[10:]).close()
else:
    PostgresSessionIndex(url).close(); PostgresAuditLog(url).close()
print("ok")
"""


def start_together(url: str, count: int = 2) -> None:
    import time

    at = str(time.time() + 3)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, url, at], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "ok", err


def test_two_processes_upgrading_one_v1_sqlite_file_both_start(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    shutil.copy(FIXTURES / "teamgraph.db", path)
    start_together(f"sqlite:///{path}")
    assert sqlite_versions(path) == {c: latest(c) for c in COMPONENTS}
    fresh = tmp_path / "fresh.db"
    open_sqlite(fresh)
    assert sqlite_schema(path) == sqlite_schema(fresh)


def test_a_worker_starting_while_another_writes_a_v1_sqlite_file_waits_for_it(tmp_path: Path) -> None:
    """Found by a fresh-clone CI run (test above, under load): while another process holds a write transaction on
    a file still in rollback mode (a version-1 file another worker is upgrading), SQLite refuses the switch to WAL
    at once with "database is locked", without its busy handler, and the worker failed to start. It now waits."""
    import threading
    import time

    path = tmp_path / "v1.db"
    shutil.copy(FIXTURES / "teamgraph.db", path)
    writing, done = threading.Event(), threading.Event()

    def other_worker() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("begin immediate")  # the upgrade's write transaction
        writing.set()
        time.sleep(1.5)
        conn.execute("commit")
        conn.close()
        done.set()

    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        assert writing.wait(10)
        SqliteSessionIndex(path).close()
        assert done.is_set()  # it waited for the other's commit
    finally:
        thread.join()
    assert sqlite_versions(path)["session_index"] == latest("session_index")


def pg_schema(url: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(url) as conn:
        schema = conn.execute("select current_schema()").fetchone()[0]  # type: ignore[index]
        columns = conn.execute(
            "select table_name, column_name, data_type, is_nullable, column_default from information_schema.columns"
            " where table_schema = %s order by table_name, ordinal_position",
            [schema],
        ).fetchall()
        indexes = conn.execute(
            "select tablename, indexname, indexdef from pg_indexes where schemaname = %s order by 1, 2", [schema]
        ).fetchall()
    return {
        "columns": [c for c in columns if c[0] in OURS_PG],
        "indexes": [(t, n, d.replace(f"{schema}.", "")) for t, n, d in indexes if t in OURS_PG],
    }


def pg_versions(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as conn:
        return dict(conn.execute(f"select component, version from {VERSIONS_TABLE}").fetchall())  # type: ignore[arg-type]


def open_pg(url: str) -> None:
    PostgresSessionIndex(url).close()
    PostgresAuditLog(url).close()


@pytest.mark.postgres
def test_v1_postgres_dump_upgrades_to_the_fresh_schema() -> None:
    with fresh_postgres_schema("tg_mig_old") as old, fresh_postgres_schema("tg_mig_new") as fresh:
        restore_postgres_fixture(old)
        assert "client_id" not in [c[1] for c in pg_schema(old)["columns"] if c[0] == "teamgraph_sessions"]
        open_pg(old)
        open_pg(fresh)
        assert pg_schema(old) == pg_schema(fresh)
        assert pg_versions(old) == pg_versions(fresh) == {c: latest(c) for c in COMPONENTS}
        index = PostgresSessionIndex(old)
        try:
            for item in MANIFEST["postgres"]:
                record = index.find(item["tenant"], item["thread_id"])
                assert record is not None and record.thread_id == item["thread_id"]
        finally:
            index.close()


@pytest.mark.postgres
def test_two_replicas_upgrading_one_v1_postgres_schema_both_start() -> None:
    with fresh_postgres_schema("tg_mig_race") as url, fresh_postgres_schema("tg_mig_ref") as fresh:
        restore_postgres_fixture(url)
        start_together(url, count=3)
        open_pg(fresh)
        assert pg_versions(url) == {c: latest(c) for c in COMPONENTS}
        assert pg_schema(url) == pg_schema(fresh)


@pytest.mark.postgres
def test_postgres_schema_newer_than_the_code_is_refused() -> None:
    import psycopg

    with fresh_postgres_schema("tg_mig_new") as url:
        open_pg(url)
        with psycopg.connect(url) as conn:
            conn.execute(f"update {VERSIONS_TABLE} set version = version + 1 where component = 'audit'")
        with pytest.raises(SchemaTooNew, match="audit tables"):
            PostgresAuditLog(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_step_7_adds_create_keys_to_a_version_6_index_keeping_its_rows(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session index at version 6 (the release before POST /sessions took an Idempotency-Key) gets the two
    columns and the per-tenant unique index; its rows stay and have no key, keyless sessions never conflict, a
    key is unique per tenant only, and a repair runs the step again without harm."""
    import checkpoints.schema_migrations as migrations

    def open_index(url: str) -> Any:
        return SqliteSessionIndex(url[10:]) if kind == "sqlite" else PostgresSessionIndex(url)

    def run(index: Any, statements: list[Any]) -> int:
        """Rows the create's insert (its first statement) wrote; the statements after it (PostgreSQL's re-check of a
        pending deletion) run too."""
        if kind == "sqlite":
            with index.db.conn:
                counts = [index.db.conn.execute(sql, args).rowcount for sql, args in statements]
                return counts[0]
        with index.pool.connection() as conn:
            counts = [conn.execute(sql, args).rowcount for sql, args in statements]
            return counts[0]

    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path}/t.db"
            if kind == "sqlite"
            else stack.enter_context(fresh_postgres_schema("tg_mig_step7"))
        )
        with monkeypatch.context() as older:
            older.setattr(migrations, "STEPS", tuple(s for s in migrations.STEPS if s.component != "session_index"
                                                      or s.version < 7))  # fmt: skip
            index = open_index(url)
            index.create("old-1", "demo", "interview", "Old", client_id="old-1")
            index.close()
        index = open_index(url)
        try:
            old = index.get("old-1")
            assert old is not None and old.title == "Old"
            assert (old.idempotency_key, old.idempotency_fingerprint) == (None, None)
            changes, _ = index.create_change("new-1", "demo", "interview", client_id="new-1")
            assert run(index, changes) == 1  # keyless: no conflict with the old row
            keyed = {"idempotency_key": "k", "idempotency_fingerprint": "f"}
            changes, _ = index.create_change("new-2", "demo", "interview", client_id="new-2", **keyed)
            assert run(index, changes) == 1
            changes, _ = index.create_change("new-3", "demo", "interview", client_id="new-3", **keyed)
            assert run(index, changes) == 0  # the tenant's key is taken
            changes, _ = index.create_change("new-4", "veneo", "interview", client_id="new-4", **keyed)
            assert run(index, changes) == 1  # another tenant's is not
            assert index.created_with_key("demo", "k").thread_id == "new-2"  # type: ignore[union-attr]
            index.repair_schema()  # every step again, 7 included
            assert index.created_with_key("veneo", "k").thread_id == "new-4"  # type: ignore[union-attr]
        finally:
            index.close()
        if kind == "sqlite":
            assert sqlite_versions(tmp_path / "t.db")["session_index"] == latest("session_index") == 7
        else:
            assert pg_versions(url)["session_index"] == latest("session_index") == 7
