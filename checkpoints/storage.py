"""Database faults as callers see them: bounded Postgres timeouts, and which errors mean "storage unavailable".

Every Postgres connection Teamgraph opens (checkpointer and store pool, session index, audit log, turn locks)
uses the same bounds, so an unreachable database answers within seconds instead of after psycopg's 30 s pool
wait; the HTTP layer turns these faults into 503 `storage_unavailable` with Retry-After.
"""

from __future__ import annotations

import math
import re
import select
import sqlite3
import sys
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
    "is locked",  # "database is locked" (another writer), "database table is locked"
)
# SQLite errors that say a table or column the server uses is not there (the database was dropped or replaced under
# the server, a table recreated without a column): what checkpoints/self_repair.py recreates
_SQLITE_MISSING = ("no such table", "no such column", "has no column named")
# SQLite's DatabaseError for a damaged file ("database disk image is malformed", "file is not a database")
_SQLITE_DAMAGED = ("malformed", "not a database")
# PostgreSQL InternalErrors that end the connection (25P03, 25P04 on PostgreSQL 17): faults like a lost connection
_PG_ENDED = ("IdleInTransactionSessionTimeout", "TransactionTimeout")


# a query parameter or keyword whose value is a secret: libpq's password and sslpassword, and the usual names for
# tokens and keys in other URLs (a path such as sslkey= is hidden too, which costs nothing)
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key", re.IGNORECASE)
_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
# a libpq keyword connection string's `name=value`: a quoted value may hold spaces and \' escapes, an unquoted one
# backslash escapes (`x\ y` is "x y")
_KEYWORD_PAIR = re.compile(r"""([A-Za-z_][A-Za-z0-9_]*)(\s*=\s*)('(?:[^'\\]|\\.)*'|(?:\\.|\S)*)""")


def display_url(url: str) -> str:
    """A database URL (or libpq keyword string, `host=h password=x`) for messages and logs: the password and
    every secret-looking query parameter or keyword (password, sslpassword, token, ...) shown as ***, the rest as
    typed. The password is everything between the user's `:` and the last `@` (a `?`, `#` or `/` in it
    included, which urllib would take for the query or path)."""
    scheme = _URL.match(url)
    if scheme is None:  # a keyword connection string, or no URL
        return _KEYWORD_PAIR.sub(lambda m: f"{m[1]}{m[2]}***" if _SECRET_NAME.search(m[1]) and m[3] else m[0], url)
    head, rest = url[: scheme.end()], url[scheme.end() :]
    # the last @ anywhere: one in the query (rare) hides a little too much, where one before the path only would
    # show a password holding a / (which libpq then reads as host:port, and the error names the URL)
    at = rest.rfind("@")
    if at >= 0:  # user[:password]@
        user, colon, _ = rest[:at].partition(":")
        head, rest = f"{head}{user}{':***' if colon else ''}@", rest[at + 1 :]
    body, question, query = rest.partition("?")
    query = "&".join(
        f"{name}=***" if sep and value and _SECRET_NAME.search(name) else f"{name}{sep}{value}"
        for name, sep, value in (pair.partition("=") for pair in query.split("&"))
    )
    return f"{head}{body}{question}{query}"


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


def missing_object(exc: BaseException) -> bool:
    """True when `exc` says a table, a column or the schema the server uses does not exist: a database dropped
    and recreated, a table dropped or recreated without a column, a schema dropped. A storage fault (503) that
    self-repair (checkpoints/self_repair.py) recovers from, although PostgreSQL reports it as a ProgrammingError:
    tables, and columns a later schema step adds; a column no step re-adds (a typo in new code) stays a 503."""
    if isinstance(exc, sqlite3.OperationalError):
        return any(missing in str(exc).lower() for missing in _SQLITE_MISSING)
    errors = _psycopg_errors()
    return errors is not None and isinstance(exc, (errors.UndefinedTable, errors.UndefinedColumn,
                                                   errors.InvalidSchemaName))  # fmt: skip


def is_storage_fault(exc: BaseException) -> bool:
    """True for errors meaning the database is down, unreachable, full, read-only or lost the tables the server
    uses: 503 storage_unavailable, retryable. The one rule of both backends (docs/api.md, "Errors"):

    - connection and operational faults: PostgreSQL's OperationalError (a refused or lost connection, a pool wait
      that timed out or a closed pool, a statement cancelled by statement_timeout, a deadlock, an administrator
      shutdown, a full disk) and InterfaceError, a read-only transaction (a standby), the server's
      idle-in-transaction and transaction timeouts (InternalErrors that end the connection); SQLite's disk full,
      read-only, I/O error, file gone, locked, a damaged file ("database disk image is malformed"), and a
      connection closed under the request;
    - missing objects (`missing_object`): 503 too, and self-repair recreates them for the next request;
    - anything else the database refuses (a syntax error, a wrong column type, a value out of range, a wrong
      number of parameters) is a bug of the code, not a fault of the machine: `is_statement_bug`, a 500."""
    if isinstance(exc, StorageUnavailable) or missing_object(exc):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return any(fault in str(exc).lower() for fault in _SQLITE_FAULTS)
    if isinstance(exc, sqlite3.ProgrammingError):
        return "closed database" in str(exc).lower()  # the connection was closed (shutdown, a reopen) under it
    if type(exc) is sqlite3.DatabaseError:  # the file is damaged or not a database: a fault of the machine
        return any(damaged in str(exc).lower() for damaged in _SQLITE_DAMAGED)
    errors = _psycopg_errors()
    if errors is None:  # pragma: no cover - psycopg is a dependency
        return False
    import psycopg

    # an InternalError that ends the connection: the server's idle-in-transaction or transaction timeout
    ended = tuple(getattr(errors, name) for name in _PG_ENDED if hasattr(errors, name))
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, errors.ReadOnlySqlTransaction, *ended))


def may_have_committed(exc: BaseException) -> bool:
    """Whether a write that failed with `exc` (or an AuditWriteError raised from it) may have committed all the
    same: its connection failed during the exchange, so the COMMIT may have reached the database and only the
    answer been lost (PostgreSQL's OperationalError, SQLite's disk I/O error). False when the write never reached
    the database (psycopg_pool's PoolTimeout, PoolClosed, TooManyRequests: no connection was handed out), the
    code refused it before sending anything (an AuditWriteError with no database cause) or the database answered
    it with an error that rolled it back (a statement bug, a constraint, a trigger's abort)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, sqlite3.OperationalError):
        return "disk i/o error" in str(cause).lower()
    if _psycopg_errors() is None:
        return False
    import psycopg

    pool = sys.modules.get("psycopg_pool")  # not imported: no pool handed out a connection, none refused one
    if pool is not None and isinstance(cause, (pool.PoolTimeout, pool.PoolClosed, pool.TooManyRequests)):
        return False
    return isinstance(cause, psycopg.OperationalError)


def is_statement_bug(exc: BaseException) -> bool:
    """True for a database error that says the statement itself is wrong (PostgreSQL's ProgrammingError,
    DataError or IntegrityError, SQLite's OperationalError, ProgrammingError, DataError, InterfaceError or
    IntegrityError: a row that breaks NOT NULL, CHECK or a trigger's abort) and is no storage fault: retrying
    cannot help, so it is answered 500 and logged with its stack, never 503. A taken id is no error (the writes
    that may meet one skip it: `on conflict do nothing`).

    PostgreSQL's trigger refusal is one too: PL/pgSQL's `raise exception` (SQLSTATE P0001) and the rest of class
    P0 (an `assert` that failed, P0004) are the database's own code refusing the statement, the same refusal every
    time it is sent, like SQLite's `raise(abort)`; psycopg reports them as ProgrammingErrors (RaiseException,
    AssertFailure). A trigger that means a fault of the machine says so with that fault's SQLSTATE."""
    if is_storage_fault(exc):
        return False
    if isinstance(exc, (sqlite3.OperationalError, sqlite3.ProgrammingError, sqlite3.DataError,
                        sqlite3.InterfaceError, sqlite3.IntegrityError)):  # fmt: skip
        return True
    if _psycopg_errors() is None:  # pragma: no cover - psycopg is a dependency
        return False
    import psycopg

    return isinstance(exc, (psycopg.ProgrammingError, psycopg.DataError, psycopg.IntegrityError))


def _psycopg_errors() -> Any:
    """psycopg.errors when psycopg is imported (only a Postgres server imports it: a tenth of a second of every
    SQLite server's start-up otherwise), else None: no psycopg error can have been raised."""
    psycopg = sys.modules.get("psycopg")
    return None if psycopg is None else psycopg.errors


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
