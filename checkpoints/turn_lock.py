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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlparse

from checkpoints.storage import DEFAULT_TIMEOUT_S, pg_connect_kwargs


class TurnBusy(Exception):
    """The thread stayed busy for longer than the caller was willing to wait."""

    status = 409
    code = "thread_busy"

    def __init__(self, thread_id: str, waited_s: float):
        super().__init__(f"session {thread_id!r} is still running another turn (waited {waited_s:.0f} s)")
        self.thread_id = thread_id
        self.retry_after_s = 2


class TurnLocks:
    def __init__(self, checkpoint_url: str, wait_s: float = 60.0, connect_timeout_s: float = DEFAULT_TIMEOUT_S):
        self.wait_s = wait_s
        self.connect_timeout_s = connect_timeout_s  # an unreachable database fails the turn fast (503), not at 60 s
        self.on_wait: Callable[[str, float], None] | None = None  # (team, seconds waited), for metrics
        self._local: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, int] = {}
        scheme = urlparse(checkpoint_url).scheme
        self._pg_url = checkpoint_url if scheme in ("postgres", "postgresql") else None
        self._lock_dir: Path | None = None
        if scheme == "sqlite":
            from checkpoints.factory import sqlite_path

            self._lock_dir = Path(str(sqlite_path(checkpoint_url)) + ".turn-locks")
            self._lock_dir.mkdir(parents=True, exist_ok=True)

    async def acquire(self, thread_id: str, team: str = "") -> Callable[[], Awaitable[None]]:
        """Take the thread's lock now and return its release, for a turn whose end another party observes
        (an HTTP response that streams after its headers went out)."""
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self.hold(thread_id, team))
        return stack.aclose

    @contextlib.asynccontextmanager
    async def hold(self, thread_id: str, team: str = "") -> AsyncIterator[None]:
        """Wait for the thread to be free (in this process and in others), run the turn, release."""
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
                async with self._across_processes(thread_id, deadline - loop.time()):
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

    @contextlib.asynccontextmanager
    async def _across_processes(self, thread_id: str, remaining_s: float) -> AsyncIterator[None]:
        if self._pg_url is not None:
            async with self._postgres(thread_id, remaining_s):
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
    async def _postgres(self, thread_id: str, remaining_s: float) -> AsyncIterator[None]:
        import psycopg

        key = int.from_bytes(hashlib.sha256(thread_id.encode()).digest()[:8], "big", signed=True)
        # a session-level advisory lock on its own connection: released by Postgres if this process dies
        connect = psycopg.AsyncConnection.connect(
            self._pg_url or "", autocommit=True, **pg_connect_kwargs(self.connect_timeout_s)
        )
        async with await connect as conn:
            waited = 0.0
            while True:
                row = await (await conn.execute("select pg_try_advisory_lock(%s)", [key])).fetchone()
                if row and row[0]:
                    break
                if waited >= remaining_s:
                    raise TurnBusy(thread_id, self.wait_s)
                await asyncio.sleep(0.05)
                waited += 0.05
            try:
                yield
            finally:
                await conn.execute("select pg_advisory_unlock(%s)", [key])
