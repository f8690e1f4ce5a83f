"""Table schema versions: the numbered, ordered migration steps of the session index and the audit log.

Each component (`session_index`, `audit`) has a version in `teamgraph_schema_versions`; at start its constructor
calls `upgrade_sqlite` or `upgrade_postgres`, which applies the steps above the stored version in order, in one
transaction, one process at a time (SQLite: `begin immediate`, the database's write lock; Postgres: a
transaction-level advisory lock), so replicas starting together never race and nobody runs SQL by hand.

Steps 1 to 5 of `session_index` and step 1 of `audit` are what the code created ad hoc before versions existed;
they are idempotent ("if not exists", a column check), so a database from any earlier release (the version-1
fixtures lack the table, the client ids and the side tables) lands on exactly the schema a fresh one gets.

Because every step is idempotent, `repair=True` runs them all again whatever the stored version says: that is how
checkpoints/self_repair.py brings back tables dropped under the running server.

To change a table: append a Step with the next version of its component to STEPS (never edit or reorder a
released step), with its SQLite and Postgres forms, and a test in tests/integration_tests/test_schema_migrations.py.
Make it idempotent like the others ("if not exists", a column check): a repair runs it again on tables that have
it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

VERSIONS_TABLE = "teamgraph_schema_versions"
COMPONENTS = ("session_index", "audit")


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer Teamgraph than this one: running would risk corrupting it."""

    def __init__(self, component: str, stored: int, known: int):
        super().__init__(
            f"the {component} tables in this database are at schema version {stored}, and this Teamgraph knows "
            f"versions up to {known}: run the newer Teamgraph release that migrated it (or restore a backup)"
        )
        self.component, self.stored, self.known = component, stored, known


@dataclass(frozen=True)
class Step:
    """One migration step: `component` goes from `version - 1` to `version`."""

    component: str
    version: int
    what: str
    sqlite: Callable[[sqlite3.Connection], None]
    postgres: Callable[[Any], None]  # a psycopg connection inside the migration transaction


def _sql(*statements: str) -> Callable[[Any], None]:
    def run(conn: Any) -> None:
        for statement in statements:
            conn.execute(statement)

    return run


def _sqlite_client_ids(conn: sqlite3.Connection) -> None:
    if "client_id" not in {row[1] for row in conn.execute("pragma table_info(sessions)")}:
        conn.execute("alter table sessions add column client_id text")
    # rows from before client ids answer to the id their tenant always used: their thread id
    conn.execute("update sessions set client_id = thread_id where client_id is null")
    conn.execute("create unique index if not exists sessions_tenant_client on sessions (tenant, client_id)")


def _sqlite_user_ids(conn: sqlite3.Connection) -> None:
    if "user_id" not in {row[1] for row in conn.execute("pragma table_info(sessions)")}:
        conn.execute("alter table sessions add column user_id text")
    conn.execute("create index if not exists sessions_tenant_user on sessions (tenant, user_id)")


def _sqlite_create_keys(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("pragma table_info(sessions)")}
    for column in ("idempotency_key", "idempotency_fingerprint"):
        if column not in columns:
            conn.execute(f"alter table sessions add column {column} text")
    # NULLs are distinct in a unique index: sessions created without a key never conflict
    conn.execute(
        "create unique index if not exists sessions_tenant_idempotency_key on sessions (tenant, idempotency_key)"
    )


STEPS: tuple[Step, ...] = (
    # --- session_index ---
    Step(
        "session_index", 1, "sessions table and its recent-activity index",
        sqlite=_sql(
            "create table if not exists sessions (thread_id text primary key, tenant text not null,"
            " team text not null, title text, created_at text not null, updated_at text not null)",
            # the name sqlite-utils gave it in version 1, so old and new files have one index, not two
            "create index if not exists idx_sessions_tenant_updated_at_thread_id"
            " on sessions (tenant, updated_at, thread_id)",
        ),
        postgres=_sql(
            "create table if not exists teamgraph_sessions (thread_id text primary key, tenant text not null,"
            " team text not null, title text not null default '', created_at text not null,"
            " updated_at text not null)",
            "create index if not exists teamgraph_sessions_tenant_updated"
            " on teamgraph_sessions (tenant, updated_at desc, thread_id desc)",
        ),
    ),
    Step(
        "session_index", 2, "client ids per tenant: client_id (old rows keep their thread id), unique per tenant",
        sqlite=_sqlite_client_ids,
        postgres=_sql(
            "alter table teamgraph_sessions add column if not exists client_id text",
            "update teamgraph_sessions set client_id = thread_id where client_id is null",
            "create unique index if not exists teamgraph_sessions_tenant_client"
            " on teamgraph_sessions (tenant, client_id)",
        ),
    ),
    Step(
        "session_index", 3, "pending deletions (a deletion a crash interrupted is finished at the next start)",
        sqlite=_sql(
            "create table if not exists session_deletions (thread_id text primary key, tenant text not null,"
            " team text not null, started_at text not null, client_id text not null)"
        ),
        postgres=_sql(
            "create table if not exists teamgraph_session_deletions (thread_id text primary key,"
            " tenant text not null, team text not null, started_at text not null, client_id text not null)"
        ),
    ),
    Step(
        "session_index", 4, "idempotency keys of turns",
        sqlite=_sql(
            "create table if not exists idempotency_keys (tenant text not null, thread_id text not null,"
            " key text not null, fingerprint text not null, before_checkpoint text, result_type text,"
            " result blob, created_at text not null, primary key (tenant, thread_id, key))"
        ),
        postgres=_sql(
            "create table if not exists teamgraph_idempotency_keys (tenant text not null, thread_id text not null,"
            " key text not null, fingerprint text not null, before_checkpoint text, result_type text,"
            " result bytea, created_at text not null, primary key (tenant, thread_id, key))"
        ),
    ),
    Step(
        "session_index", 5, "the row /readyz rewrites (proves the database takes writes, not only reads)",
        sqlite=_sql("create table if not exists teamgraph_ready (id integer primary key, at text not null)"),
        postgres=_sql("create table if not exists teamgraph_ready (id int primary key, at text not null)"),
    ),
    Step(
        "session_index", 6, "end-user ids per session (erasure of everything a tenant holds about one user)",
        sqlite=_sqlite_user_ids,
        postgres=_sql(
            "alter table teamgraph_sessions add column if not exists user_id text",
            "create index if not exists teamgraph_sessions_tenant_user on teamgraph_sessions (tenant, user_id)",
        ),
    ),
    Step(
        "session_index", 7,
        "the Idempotency-Key a session was created with (POST /sessions) and its request's fingerprint, unique per"
        " tenant, kept in the session's row (written in its creating transaction, gone with it)",
        sqlite=_sqlite_create_keys,
        postgres=_sql(
            "alter table teamgraph_sessions add column if not exists idempotency_key text",
            "alter table teamgraph_sessions add column if not exists idempotency_fingerprint text",
            "create unique index if not exists teamgraph_sessions_tenant_idempotency_key"
            " on teamgraph_sessions (tenant, idempotency_key)",
        ),
    ),
    # --- audit ---
    Step(
        "audit", 1, "audit_events (per-tenant hash chain), its session index, audit_anchors (pruned chain heads)",
        sqlite=_sql(
            "create table if not exists audit_events (tenant text not null, seq integer not null, at text not null,"
            " actor text not null, session text, event_type text not null, payload text not null,"
            " prev_hash text not null, hash text not null, primary key (tenant, seq))",
            "create index if not exists audit_events_session on audit_events (tenant, session)",
            "create table if not exists audit_anchors (tenant text primary key, seq integer not null,"
            " hash text not null)",
        ),
        postgres=_sql(
            "create table if not exists audit_events (tenant text not null, seq bigint not null, at text not null,"
            " actor text not null, session text, event_type text not null, payload jsonb not null,"
            " prev_hash text not null, hash text not null, primary key (tenant, seq))",
            "create index if not exists audit_events_session on audit_events (tenant, session)",
            "create table if not exists audit_anchors (tenant text primary key, seq bigint not null,"
            " hash text not null)",
        ),
    ),
    Step(
        "audit", 2, "audit_keys: the secret that keys the log's user references (HMAC-SHA256 of tenant and user id)",
        # the key itself is put there by the audit log when it opens (random, `on conflict do nothing`: the first
        # process wins and every replica reads the same), and put back by a repair that recreated the table
        sqlite=_sql("create table if not exists audit_keys (name text primary key, key text not null)"),
        postgres=_sql("create table if not exists audit_keys (name text primary key, key text not null)"),
    ),
    # --- next steps go here: the next version of a component, appended, never inserted ---
)  # fmt: skip


def steps_of(component: str) -> list[Step]:
    """The component's steps in version order (checked: versions run 1, 2, 3... without gaps)."""
    steps = sorted((s for s in STEPS if s.component == component), key=lambda s: s.version)
    if [s.version for s in steps] != list(range(1, len(steps) + 1)):
        raise AssertionError(f"schema steps of {component} are not numbered 1..n: {[s.version for s in steps]}")
    return steps


def latest(component: str) -> int:
    """The version this code brings `component` to."""
    return len(steps_of(component))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _check(component: str, stored: int) -> list[Step]:
    steps = steps_of(component)
    if stored > len(steps):
        raise SchemaTooNew(component, stored, len(steps))
    return steps[stored:]


def sqlite_version(conn: sqlite3.Connection, component: str) -> int:
    """The component's stored version; 0 for a database from before versions (or an empty one)."""
    if conn.execute("select 1 from sqlite_master where type = 'table' and name = ?", [VERSIONS_TABLE]).fetchone():
        row = conn.execute(f"select version from {VERSIONS_TABLE} where component = ?", [component]).fetchone()
        return int(row[0]) if row else 0
    return 0


def _pending(component: str, stored: int, repair: bool) -> list[Step]:
    # repair: every step again (each is idempotent), for tables dropped under a version row that says they exist
    pending = _check(component, stored)
    return steps_of(component) if repair else pending


def upgrade_sqlite(conn: sqlite3.Connection, component: str, repair: bool = False) -> int:
    """Bring `component`'s tables to the latest version in one write transaction; returns the version.

    A start that finds them current takes no write lock (workers start while others write). `repair` re-runs
    every step (see checkpoints/self_repair.py: tables dropped while the server runs)."""
    if not _pending(component, sqlite_version(conn, component), repair):
        return latest(component)
    conn.execute("begin immediate")  # SQLite's write lock: one process migrates, the others wait, then see it done
    try:
        conn.execute(
            f"create table if not exists {VERSIONS_TABLE} (component text primary key, version integer not null,"
            " updated_at text not null)"
        )
        for step in _pending(component, sqlite_version(conn, component), repair):
            step.sqlite(conn)
            conn.execute(
                f"insert or replace into {VERSIONS_TABLE} (component, version, updated_at) values (?, ?, ?)",
                [component, step.version, _now()],
            )
        conn.execute("commit")
    except BaseException:
        conn.execute("rollback")
        raise
    return latest(component)


def postgres_version(conn: Any, component: str) -> int:
    row = conn.execute("select to_regclass(%s) is not null as present", [VERSIONS_TABLE]).fetchone()
    if not _field(row, "present", 0):
        return 0
    row = conn.execute(f"select version from {VERSIONS_TABLE} where component = %s", [component]).fetchone()
    return int(_field(row, "version", 0)) if row else 0


def _field(row: Any, name: str, index: int) -> Any:
    return row[name] if isinstance(row, dict) else row[index]


def upgrade_postgres(conn: Any, component: str, repair: bool = False) -> int:
    """Bring `component`'s tables to the latest version; returns the version.

    One transaction under an advisory lock scoped to the schema (tests and deployments share one database with
    several schemas), so two replicas never apply a step twice or see half a step. `repair` re-runs every step
    (see checkpoints/self_repair.py)."""
    with conn.transaction():
        if not _pending(component, postgres_version(conn, component), repair):
            return latest(component)
        conn.execute("select pg_advisory_xact_lock(hashtext('teamgraph-schema:' || current_schema()))")
        conn.execute(
            f"create table if not exists {VERSIONS_TABLE} (component text primary key, version int not null,"
            " updated_at text not null)"
        )
        for step in _pending(component, postgres_version(conn, component), repair):
            step.postgres(conn)
            conn.execute(
                f"insert into {VERSIONS_TABLE} (component, version, updated_at) values (%s, %s, %s)"
                " on conflict (component) do update set version = excluded.version, updated_at = excluded.updated_at",
                [component, step.version, _now()],
            )
    return latest(component)
