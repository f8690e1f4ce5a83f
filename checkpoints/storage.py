"""Database faults as callers see them: bounded Postgres timeouts, and which errors mean "storage unavailable".

Every Postgres connection Teamgraph opens (checkpointer and store pool, session index, audit log, turn locks)
uses the same bounds, so an unreachable database answers within seconds instead of after psycopg's 30 s pool
wait; the HTTP layer turns these faults into 503 `storage_unavailable` with Retry-After.
"""

from __future__ import annotations

import math
import select
import sqlite3
from typing import Any

DEFAULT_TIMEOUT_S = 3.0  # connect, and wait for a pooled connection
DEFAULT_STATEMENT_TIMEOUT_S = 15.0  # one statement (a lock wait included)

# SQLite errors that say the file cannot be written or read right now (disk full, read-only, gone, busy):
# a fault of the machine, not of the request
_SQLITE_FAULTS = (
    "database or disk is full",
    "readonly database",
    "disk i/o error",
    "unable to open database file",
    "database is locked",
    "no such table",  # the database was dropped or replaced under the server
)


class StorageUnavailable(RuntimeError):
    """The database cannot be reached or written; the request may succeed later (503 with Retry-After)."""

    status = 503
    code = "storage_unavailable"
    retry_after_s = 5


def pg_connect_kwargs(timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """libpq's connect_timeout: whole seconds, at least 2 (libpq treats smaller values as 2)."""
    return {"connect_timeout": max(2, math.ceil(timeout_s))}


def statement_timeout_sql(statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S) -> str:
    # set per connection rather than through the URL's `options`: a URL may carry its own (e.g. search_path)
    return f"set statement_timeout = {int(statement_timeout_s * 1000)}"


def is_storage_fault(exc: BaseException) -> bool:
    """True for errors meaning the database is down, unreachable, full or read-only (not a bad request)."""
    if isinstance(exc, StorageUnavailable):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return any(fault in str(exc).lower() for fault in _SQLITE_FAULTS)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    # OperationalError covers a refused or lost connection, a pool wait that timed out (PoolTimeout), a
    # statement cancelled by statement_timeout (QueryCanceled) and an administrator shutdown; UndefinedTable a
    # database dropped and recreated under the server
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.UndefinedTable))


def sync_pool_options(timeout_s: float, statement_timeout_s: float) -> dict[str, Any]:
    """ConnectionPool arguments every synchronous Postgres pool shares: bounded waits, a statement timeout,
    and a check that replaces connections the database dropped (so service resumes when it is back)."""

    def configure(conn: Any) -> None:
        conn.execute(statement_timeout_sql(statement_timeout_s))
        if not conn.autocommit:
            conn.commit()  # the pool refuses a connection left inside a transaction

    return {"timeout": timeout_s, "configure": configure, "check": check_pooled}


def went_away(conn: Any) -> bool:
    """Whether a connection that sat idle in its pool may have lost its server; False means it is fine to use.

    A backend that stops (database restart or shutdown, `pg_terminate_backend`, a proxy or network cut that
    closes the socket) sends its FATAL error and closes the socket, so the socket turns readable while the
    connection is idle; a healthy idle connection has nothing to read. A poll of the socket tells that without a
    round trip to the database (psycopg_pool's own check sends an empty query on every checkout: about 0.2 ms of
    CPU, several times a turn)."""
    if conn.closed or conn.broken:
        return True
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def check_pooled(conn: Any) -> None:
    """A synchronous pool's `check`: a connection whose socket says something happened gets psycopg_pool's
    round-trip check (which raises for a dead one, so the pool replaces it); a quiet one is used as it is."""
    from psycopg_pool import ConnectionPool

    if went_away(conn):
        ConnectionPool.check_connection(conn)


async def acheck_pooled(conn: Any) -> None:
    """`check_pooled` for an asyncio pool."""
    from psycopg_pool import AsyncConnectionPool

    if went_away(conn):
        await AsyncConnectionPool.check_connection(conn)
