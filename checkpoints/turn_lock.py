"""One turn at a time per thread: an asyncio lock in this process, and a database-level lock across processes.

A second request on a busy thread waits its turn (up to a deadline, then TurnBusy -> 409 with Retry-After),
so overlapping requests never interleave or drop a message, whether they land on one worker or several.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import structlog

from checkpoints.storage import (
    DEFAULT_STATEMENT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    pg_connect_kwargs,
    statement_timeout_sql,
    went_away,
)

log = structlog.get_logger("teamgraph.storage")


class TurnBusy(Exception):
    """The thread stayed busy for longer than the caller was willing to wait."""

    status = 409
    code = "thread_busy"

    def __init__(self, thread_id: str, waited_s: float):
        super().__init__(f"session {thread_id!r} is still running another turn (waited {waited_s:.0f} s)")
        self.thread_id = thread_id
        self.retry_after_s = 2


class ReadUnderLock:
    """One query run right after a Postgres turn lock is taken, on the lock's connection and in the same round trip
    (a pipeline: the query runs after the lock statement has finished, so it sees every commit made before the
    lock was taken). Never prepared on the server: a newer replica's ALTER TABLE (a rolling upgrade) would make a
    prepared `select *` fail with "cached plan must not change result type" for as long as the connection lives;
    unprepared it is still sent with the lock (Parse, Bind, Execute together). The lock and unlock statements,
    which read no table, are prepared on first use. `rows` (dicts) is None until the lock is held with the query's
    answer; it stays None where the lock is not a Postgres lock, or when a query failed (the caller then asks the
    usual way). `binary`: the rows in Postgres's binary format, as a caller that reads them that way elsewhere
    asks for them."""

    def __init__(self, sql: str, params: Sequence[Any], binary: bool = False):
        self.sql, self.params, self.binary = sql, params, binary
        self.rows: list[dict[str, Any]] | None = None


# The Postgres turn lock of a session is two session-level advisory locks, taken together or not at all:
# - the thread key: the first 8 bytes of sha256(thread id), as every release so far has taken it (alone), and
# - the schema key: a hash of the connection's current schema and the thread id, so that deployments in two schemas
#   of one database do not wait on each other's sessions.
# Taking both keeps this release and an older one (thread key only) apart during a rolling upgrade; a later
# release, once no replica older than this one runs, can take the schema key alone (docs/architecture.md, "Turn
# lock keys"). The schema key is computed by the server, for the schema as it is when the lock is taken.
_SCHEMA_KEY = "hashtextextended('teamgraph-turn:' || coalesce(current_schema(), '') || ':' || %(thread)s::text, 0)"
# the schema key is tried only with the thread key held, and the thread key given back when it is not got: a CASE
# evaluates its branches in order (unlike AND/OR), and a try-lock never waits, so two keys cannot deadlock. The
# answer is the schema key taken (NULL: neither key held): the unlock gives back that value, not the key of the
# schema as it is at the end of the turn (a schema dropped and recreated meanwhile, current_schema() NULL, would
# otherwise leave the key taken held on the long-lived lock connection)
LOCK_SQL = (
    "select case when pg_try_advisory_lock(%(key)s::bigint) then"
    f" case when pg_try_advisory_lock({_SCHEMA_KEY}) then {_SCHEMA_KEY}"
    " when pg_advisory_unlock(%(key)s::bigint) then null else null end"
    " else null end"
)
UNLOCK_SQL = "select pg_advisory_unlock(%(schema_key)s::bigint), pg_advisory_unlock(%(key)s::bigint)"
# only when the lock statement's answer never arrived (it may have taken the keys): the schema key computed again
UNLOCK_UNKNOWN_SQL = f"select pg_advisory_unlock({_SCHEMA_KEY}), pg_advisory_unlock(%(key)s::bigint)"


class TurnKey:
    """A session's turn lock keys (see LOCK_SQL): `thread_key` also picks the process's lock connection;
    `schema_key` is the schema key the lock statement took (None while not held)."""

    __slots__ = ("schema_key", "thread_id", "thread_key")

    def __init__(self, thread_id: str):
        self.thread_id = thread_id
        self.thread_key = int.from_bytes(hashlib.sha256(thread_id.encode()).digest()[:8], "big", signed=True)
        self.schema_key: int | None = None

    def params(self) -> dict[str, Any]:
        return {"key": self.thread_key, "thread": self.thread_id}

    def took(self, row: Any) -> bool:
        """Read the lock statement's answer: whether both keys are now held (and which schema key)."""
        self.schema_key = row[0] if row else None
        return self.schema_key is not None

    def unlock_params(self) -> dict[str, Any]:
        return {"key": self.thread_key, "schema_key": self.schema_key}


# TCP keepalive of the lock connections (libpq's keepalives_idle, keepalives_interval, keepalives_count, and
# tcp_user_timeout), so that a silent network partition (no FIN, no RST) ends the connection in this process too,
# where the check before a turn's answer sees it (docs/architecture.md, "A lost lock"), instead of at the unlock
# after minutes of TCP retransmission. An idle connection is probed after KEEPALIVE_IDLE_S, then every
# KEEPALIVE_INTERVAL_S; TCP_USER_TIMEOUT_S bounds both unanswered probes and unacknowledged data (Linux lets it
# decide when probes give up), so a partition is noticed within about that long.
KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_S = 25.0
TCP_KEEPALIVE_MAX_S = 32767  # Linux's cap on TCP_KEEPIDLE and TCP_KEEPINTVL


class TurnLocks:
    def __init__(
        self,
        checkpoint_url: str,
        wait_s: float = 60.0,
        connect_timeout_s: float = DEFAULT_TIMEOUT_S,
        statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
    ):
        self.wait_s = wait_s
        self.connect_timeout_s = connect_timeout_s  # an unreachable database fails the turn fast (503), not at 60 s
        self.statement_timeout_s = statement_timeout_s
        # the lock connections' TCP keepalive (see KEEPALIVE_IDLE_S); Settings.turn_lock_keepalive_* set them
        self.keepalive_idle_s = KEEPALIVE_IDLE_S
        self.keepalive_interval_s = KEEPALIVE_INTERVAL_S
        self.keepalive_count = KEEPALIVE_COUNT
        self.tcp_user_timeout_s = TCP_USER_TIMEOUT_S
        self.on_wait: Callable[[str, float], None] | None = None  # (team, seconds waited), for metrics
        self.on_lost: Callable[[str], None] | None = None  # (team): a held Postgres lock was lost, for metrics
        # thread id -> the Postgres lock held for it here: its lock connection's owner, the connection, and whether
        # its loss was reported already
        self._held: dict[str, tuple[PostgresLockConnection, Any, list[bool]]] = {}
        self._local: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, int] = {}
        scheme = urlparse(checkpoint_url).scheme
        self.pg_url = checkpoint_url if scheme in ("postgres", "postgresql") else None
        # a few lock connections, each session always on the same one (its key picks it): lock round trips of
        # concurrent turns do not queue behind each other on one socket when the event loop is busy
        self._pg = [PostgresLockConnection(self) for _ in range(LOCK_CONNECTIONS)]
        self._lock_dir: Path | None = None
        if scheme == "sqlite":
            from checkpoints.factory import sqlite_path

            self._lock_dir = Path(str(sqlite_path(checkpoint_url)) + ".turn-locks")
            self._lock_dir.mkdir(parents=True, exist_ok=True)

    def connect_kwargs(self) -> dict[str, Any]:
        """libpq parameters of a lock connection: the connect timeout and TCP keepalive (whole seconds; libpq's
        tcp_user_timeout is in milliseconds)."""
        return {
            **pg_connect_kwargs(self.connect_timeout_s),
            "keepalives": 1,
            "keepalives_idle": self.keepalive_idle_s,
            "keepalives_interval": self.keepalive_interval_s,
            "keepalives_count": self.keepalive_count,
            "tcp_user_timeout": int(self.tcp_user_timeout_s * 1000),
        }

    def server_keepalive_sql(self, server_version: int) -> str:
        """Keepalive for the server's end of a lock connection (PostgreSQL's tcp_keepalives_* and tcp_user_timeout,
        settable per connection; ignored on a Unix-domain socket), with a margin: twice this end's idle time and
        user timeout, so that a backend whose client is cut off goes, and releases its locks for other processes,
        well after the holder has noticed the loss (its check before the answer fails the turn), never at the same
        moment. `tcp_user_timeout` exists from PostgreSQL 12 (`server_version` 120000) on; an older server gets
        keepalive alone, which with its count bounds the backend's end too (logged)."""
        idle = min(2 * int(self.keepalive_idle_s), TCP_KEEPALIVE_MAX_S)
        sql = (
            f"; set tcp_keepalives_idle = {idle}"
            f"; set tcp_keepalives_interval = {int(self.keepalive_interval_s)}"
            f"; set tcp_keepalives_count = {int(self.keepalive_count)}"
        )
        if server_version >= 120000:
            return sql + f"; set tcp_user_timeout = {int(2 * self.tcp_user_timeout_s * 1000)}"
        log.warning("turn_lock_server_tcp_user_timeout_unsupported", server_version=server_version)
        return sql

    async def acquire(
        self, thread_id: str, team: str = "", reads: Sequence[ReadUnderLock] = ()
    ) -> Callable[[], Awaitable[None]]:
        """Take the thread's lock now and return its release, for a turn whose end another party observes
        (an HTTP response that streams after its headers went out). `reads`: see `hold`."""
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self.hold(thread_id, team, reads))
        return stack.aclose

    @contextlib.asynccontextmanager
    async def hold(self, thread_id: str, team: str = "", reads: Sequence[ReadUnderLock] = ()) -> AsyncIterator[None]:
        """Wait for the thread to be free (in this process and in others), run the turn, release. `reads`, on
        Postgres: queries answered under the lock in the lock's own round trip (their `rows`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.wait_s
        lock = self._local.setdefault(thread_id, asyncio.Lock())
        self._waiters[thread_id] = self._waiters.get(thread_id, 0) + 1
        try:
            try:
                await asyncio.wait_for(lock.acquire(), timeout=self.wait_s)
            except TimeoutError:
                raise TurnBusy(thread_id, self.wait_s) from None
            try:
                async with self._across_processes(thread_id, deadline - loop.time(), reads, team):
                    if self.on_wait is not None:
                        self.on_wait(team, loop.time() - started)
                    yield
            finally:
                lock.release()
        finally:
            self._waiters[thread_id] -= 1
            if not self._waiters[thread_id]:
                # forget idle threads so the map does not grow with every session ever served
                self._waiters.pop(thread_id, None)
                self._local.pop(thread_id, None)

    def forget(self, thread_id: str) -> None:
        """Drop a deleted session's lock file."""
        if self._lock_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._lock_dir / self._lock_name(thread_id)).unlink()

    @staticmethod
    def _lock_name(thread_id: str) -> str:
        return hashlib.sha256(thread_id.encode()).hexdigest()[:32] + ".lock"

    async def check_held(self, thread_id: str, team: str = "") -> bool:
        """Before a turn's answer: whether the thread's Postgres lock is still held. False when its lock connection
        dropped while the turn ran (the database then released the lock, and another process may have run a turn
        of the session meanwhile): logged `turn_lock_lost` and counted (`on_lost`), once per hold. No round trip
        unless the connection's socket says something happened (see `PostgresLockConnection.lost`). True where
        the lock is not a Postgres lock or is not held here, and when the check itself fails (any error, e.g.
        fileno() of a connection closed at shutdown: logged `turn_lock_check_failed`, the turn's answer is
        unchanged; the unlock still reports a lost lock)."""
        held = self._held.get(thread_id)
        if held is None:
            return True
        locks, conn, reported = held
        if reported[0]:
            return False
        try:
            gone = await locks.lost(conn)
        except Exception as exc:  # the check itself failed (a socket closed at shutdown): the answer is unchanged
            log.warning("turn_lock_check_failed", thread_id=thread_id, team=team,
                        error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            return True
        if gone:
            self._report_lost(thread_id, team, reported, "before the turn's answer")
            return False
        return True

    def _report_lost(self, thread_id: str, team: str, reported: list[bool], noticed: str) -> None:
        reported[0] = True
        log.error(
            "turn_lock_lost",
            thread_id=thread_id,
            team=team,
            noticed=noticed,
            message="the connection holding this turn's lock dropped while the turn ran: the database released the "
            "lock, so a turn of the same session may have run in another process at the same time",
        )
        if self.on_lost is not None:
            self.on_lost(team)

    @contextlib.asynccontextmanager
    async def _across_processes(
        self, thread_id: str, remaining_s: float, reads: Sequence[ReadUnderLock] = (), team: str = ""
    ) -> AsyncIterator[None]:
        if self.pg_url is not None:
            async with self._postgres(thread_id, remaining_s, reads, team):
                yield
        elif self._lock_dir is not None:
            async with self._file(thread_id, remaining_s):
                yield
        else:  # memory:// lives in one process
            yield

    @contextlib.asynccontextmanager
    async def _file(self, thread_id: str, remaining_s: float) -> AsyncIterator[None]:
        assert self._lock_dir is not None
        fd = os.open(self._lock_dir / self._lock_name(thread_id), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            waited = 0.0
            while True:  # non-blocking tries keep the event loop free; the OS frees the lock if a process dies
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if waited >= remaining_s:
                        raise TurnBusy(thread_id, self.wait_s) from None
                    await asyncio.sleep(0.02)
                    waited += 0.02
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextlib.asynccontextmanager
    async def _postgres(
        self, thread_id: str, remaining_s: float, reads: Sequence[ReadUnderLock] = (), team: str = ""
    ) -> AsyncIterator[None]:
        key = TurnKey(thread_id)
        locks = self._pg[key.thread_key % len(self._pg)]
        conn = await locks.locked(key, remaining_s, reads)
        if conn is None:
            raise TurnBusy(thread_id, self.wait_s)
        reported = [False]
        self._held[thread_id] = (locks, conn, reported)
        try:
            yield
        finally:
            self._held.pop(thread_id, None)
            if not await locks.unlock(conn, key) and not reported[0]:
                self._report_lost(thread_id, team, reported, "at unlock")

    async def aclose(self) -> None:
        """Close the lock connections (the engine's shutdown); a later turn would open new ones."""
        for locks in self._pg:
            await locks.close()


LOCK_CONNECTIONS = 4  # per process, opened on first use


class PostgresLockConnection:
    """Turn locks of one process: session-level advisory locks, held on one long-lived connection (one of
    LOCK_CONNECTIONS; a session's key always picks the same one).

    Long-lived connections instead of one per turn: a turn's lock costs two round trips (lock, unlock)
    rather than a connect, a lock and a disconnect (about 6 ms, and a stream of short-lived backends under load).
    Postgres frees every lock of the connection if the process dies or the connection drops, as before. The
    asyncio lock in `TurnLocks.hold` already keeps two turns of one session in this process apart, so each key is
    held at most once here; and since advisory locks count re-entries, a late unlock can never free a lock that a
    later turn of the same session took (it only drops the count back to that turn's own hold). Statements on the
    connection are serialised by psycopg; each is one short non-blocking call (`pg_try_advisory_lock` never
    waits in the server), so none queues behind another for long.

    A connection the database dropped (restart, outage) is noticed by the next lock attempt, which reconnects once
    and tries again, so service resumes by itself when the database is back; when it cannot reconnect the turn
    fails with the connect error (503 storage_unavailable)."""

    def __init__(self, owner: TurnLocks):
        self._owner = owner
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None
        # one exchange at a time on the connection: psycopg serialises single statements, but a pipeline (a lock
        # with its reads) spans several, and another turn's statement sent meanwhile would join it
        self._sending: asyncio.Lock | None = None
        self._failed: tuple[float, str] | None = None  # (when, why) the last connect failed

    async def _connection(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a connection belongs to the event loop that opened it
            self._conn, self._loop, self._connecting, self._sending = None, loop, asyncio.Lock(), asyncio.Lock()
        assert self._connecting is not None
        asked = loop.time()
        async with self._connecting:
            if self._conn is None or self._conn.closed or self._conn.broken:
                import psycopg

                if self._failed is not None and self._failed[0] >= asked:
                    # the connect this turn queued behind has just failed: fail too, rather than each waiting turn
                    # spending its own connect timeout in turn (an unreachable database answers 503 fast)
                    raise psycopg.OperationalError(self._failed[1])
                owner = self._owner
                try:
                    conn = await psycopg.AsyncConnection.connect(
                        owner.pg_url or "", autocommit=True, **owner.connect_kwargs()
                    )
                except psycopg.Error as exc:
                    self._failed = (loop.time(), str(exc))
                    raise
                try:
                    # reads under the lock must each see what was committed before they started (READ COMMITTED),
                    # whatever the server's or the role's default_transaction_isolation says: a pipeline's
                    # implicit transaction at REPEATABLE READ takes its snapshot at the lock statement, before
                    # the lock is granted, and could miss the previous holder's last commit
                    # and the server's end of the connection gets keepalive too, with a margin: a partition ends
                    # the backend, and so releases its locks for other processes, after this end has given up on it
                    await conn.execute(
                        statement_timeout_sql(owner.statement_timeout_s)
                        + "; set default_transaction_isolation = 'read committed'"
                        + owner.server_keepalive_sql(conn.info.server_version)
                    )
                except BaseException:
                    await conn.close()
                    raise
                self._conn = conn
            return self._conn

    async def _try(self, conn: Any, key: TurnKey, reads: Sequence[ReadUnderLock] = (), first: bool = True) -> bool:
        assert self._sending is not None
        async with self._sending:
            if first or not reads:
                return await self._try_sending(conn, key, reads)
            # a later attempt of a waiting turn: the lock alone (its reads, sent with the first attempt, were
            # answered for nothing), and the reads only once it is held, in one more round trip
            got = await self._try_sending(conn, key)
            if got:
                await self._read_sending(conn, reads)
            return got

    async def _read_sending(self, conn: Any, reads: Sequence[ReadUnderLock]) -> None:
        """Answer `reads` on `conn`, which holds the lock: each statement starts after the lock statement has
        finished, so it sees every commit made before the lock was taken. A read that fails leaves every `rows`
        None (the caller asks the usual way); the lock stays held."""
        import psycopg

        try:
            async with conn.pipeline():
                answers = [await _send(conn, read) for read in reads]
            for read, answer in zip(reads, answers, strict=True):
                read.rows = await answer.fetchall()
        except Exception as exc:
            for read in reads:
                read.rows = None
            if isinstance(exc, psycopg.Error) and (conn.closed or conn.broken):
                raise

    async def _try_sending(self, conn: Any, key: TurnKey, reads: Sequence[ReadUnderLock] = ()) -> bool:
        if not reads:
            row = await (await conn.execute(LOCK_SQL, key.params(), prepare=True)).fetchone()
            return key.took(row)
        import psycopg

        locked = conn.cursor()
        try:
            # one round trip, one implicit transaction (committed at the pipeline's Sync); a session-level
            # advisory lock does not follow a transaction, so the lock stays held after the commit
            async with conn.pipeline():
                await locked.execute(LOCK_SQL, key.params(), prepare=True)
                answers = [await _send(conn, read) for read in reads]
        except psycopg.Error:
            if conn.closed or conn.broken:
                raise
            # a query failed (its table missing, a timeout): give back the lock if the lock statement took it,
            # then lock as if without the queries; the caller asks the usual way and meets the failure there.
            # The lock statement's answer arrived before the failure; without one (the lock statement itself
            # failed) it is given back all the same, as a lock kept by mistake would hold the session forever
            try:
                took = key.took(await locked.fetchone())
            except psycopg.Error:
                took = None
            if took:
                await conn.execute(UNLOCK_SQL, key.unlock_params(), prepare=True)
            elif took is None:
                await conn.execute(UNLOCK_UNKNOWN_SQL, key.params())
            key.schema_key = None
            return await self._try_sending(conn, key)
        got = False
        try:
            got = key.took(await locked.fetchone())
            if got:  # rows are decoded as they are fetched: a value the client cannot decode fails here
                for read, answer in zip(reads, answers, strict=True):
                    read.rows = await answer.fetchall()
            return got
        except Exception:
            for read in reads:
                read.rows = None
            if conn.closed or conn.broken:
                raise
            if got:  # the lock was taken with reads that cannot be used: give it back, lock without them
                await conn.execute(UNLOCK_SQL, key.unlock_params(), prepare=True)
                key.schema_key = None
            return await self._try_sending(conn, key)

    async def _try_shielded(
        self, conn: Any, key: TurnKey, reads: Sequence[ReadUnderLock] = (), first: bool = True
    ) -> bool:
        """One lock attempt that a cancelled caller (a client gone) cannot cut in half: the statement finishes,
        and a lock it took is given back."""
        attempt = asyncio.ensure_future(self._try(conn, key, reads, first))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:

            def give_back(done: asyncio.Future[bool]) -> None:
                if not done.cancelled() and done.exception() is None and done.result():
                    _background(self.unlock(conn, key))

            attempt.add_done_callback(give_back)
            raise

    async def locked(self, key: TurnKey, remaining_s: float, reads: Sequence[ReadUnderLock] = ()) -> Any:
        """Take the lock `key`, polling while another process holds it, for up to `remaining_s`: the connection
        holding it, or None when the time ran out. `reads` are answered under the lock: sent with the first
        attempt (in its round trip, which is all an uncontended turn needs), and, when that attempt found the lock
        taken, not with the polls that follow (a waiting turn would read them every 50 ms) but after the poll that
        took the lock, in one more round trip."""
        import psycopg

        waited = 0.0
        conn = await self._connection()
        first = True
        while True:
            try:
                got = await self._try_shielded(conn, key, reads, first)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                if not (conn.closed or conn.broken):
                    raise
                conn = await self._connection()  # dropped (an outage or a restart): a new connection, once
                got = await self._try_shielded(conn, key, reads, first)
            first = False
            if got:
                return conn
            if waited >= remaining_s:
                return None
            await asyncio.sleep(0.05)
            waited += 0.05

    async def unlock(self, conn: Any, key: TurnKey) -> bool:
        """Give the lock back; False when it had been lost already: its connection is gone (and its locks with
        it), or the unlock found a key not held."""
        import psycopg

        if conn.closed or conn.broken:
            return False  # the connection is gone and its locks with it
        release = asyncio.ensure_future(self._unlock_sending(conn, key))
        release.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen, also when no one waits
        try:
            return await asyncio.shield(release)  # a cancelled turn still gives its lock back
        except (psycopg.OperationalError, psycopg.InterfaceError):
            return False

    async def _unlock_sending(self, conn: Any, key: TurnKey) -> bool:
        assert self._sending is not None
        async with self._sending:
            if key.schema_key is None:
                return True
            row = await (await conn.execute(UNLOCK_SQL, key.unlock_params(), prepare=True)).fetchone()
            key.schema_key = None
            return bool(row and row[0] and row[1])

    async def lost(self, conn: Any) -> bool:
        """Whether `conn`, which holds a turn's lock, has lost it (closed or dropped). The socket is polled with
        no exchange in flight on the connection, so a readable socket is no statement's answer: the server sent
        its FATAL error and closed it (a restart, `pg_terminate_backend`, a cut connection). Only then does one
        round trip tell for sure; a quiet socket costs none."""
        import psycopg

        if conn.closed or conn.broken:
            return True
        assert self._sending is not None
        async with self._sending:
            if not went_away(conn):
                return False
            try:
                await conn.execute("select 1")
            except (psycopg.OperationalError, psycopg.InterfaceError):
                return True
            return bool(conn.closed or conn.broken)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._loop is asyncio.get_running_loop():
            await conn.close()


async def _send(conn: Any, read: ReadUnderLock) -> Any:
    """`read` sent on `conn` (in its pipeline): its cursor, for its rows. Never prepared (see ReadUnderLock)."""
    from psycopg.rows import dict_row

    return await conn.cursor(row_factory=dict_row).execute(read.sql, read.params, binary=read.binary, prepare=False)


_PENDING: set[asyncio.Future[Any]] = set()


def _background(coro: Any) -> None:
    """Run `coro` to its end without a waiter (kept referenced so it is not collected half-way)."""
    task = asyncio.ensure_future(coro)
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)
