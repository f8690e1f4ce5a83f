"""Self-repair: a database whose tables vanish under the running server gets them back, without a restart.

An operator may drop and recreate the Postgres database (or its schema), drop tables, or delete the SQLite
file while Teamgraph runs. Every later query then fails with "relation does not exist" / "no such table" (or,
for a deleted SQLite file, silently writes to the unlinked file, which is lost at the next restart). Instead of
answering 503 until someone restarts the server:

- a storage error that says a table is missing (`missing_table`) makes `StorageRepair.after_fault` re-run the
  whole schema setup once, one repair at a time (none for REPAIR_COOLDOWN_S once two repairs for the same
  missing object (`fault_key`: its name) recreated nothing, so a column no step adds, a typo in new code, does
  not re-run every step on every request; another missing object, a table dropped meanwhile, is repaired at
  once): the
  numbered steps of checkpoints/schema_migrations.py (all of them, each idempotent) and the LangGraph
  checkpointer's and store's `setup()`. The request that hit it still answers 503 storage_unavailable (its work
  may be half done); the next one works. A missing column comes back only if a later schema step adds it (a
  column of a table's first step is not re-added to a table that exists).
- /readyz runs the same repair when one of its probes fails that way, and a SQLite file that was deleted or
  replaced is noticed within a second by a watcher task (and by /readyz): its connections are reopened on a
  new, empty file at the same path.
- the watcher alone leaves a window of up to a second in which a request would read or write the deleted file
  (a turn answered 200 there is lost). So every request that uses storage first compares the file at the path
  with the one it holds (`before_request`: one stat), and a turn compares again before it is acknowledged
  (`after_turn`): a turn that ran while the file was deleted answers 503, not 200. With several workers on the
  file, a worker that finds its file gone answers 503 storage_unavailable and exits right after (its supervisor
  starts a fresh one on the new file): no worker serves from a deleted file while a sibling serves the new one.

Each repair logs one `storage_repaired` warning line naming what was recreated (an info `storage_checked` line
when nothing was missing any more: a sibling worker or another replica repaired it first). When the audit tables
had to be recreated, every tenant's audit chain restarts from its genesis: the first entry of the new chain is an
`audit_restarted` event saying so, and the log line says `audit_chain_restarted=true`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from checkpoints.storage import StorageUnavailable, missing_object

log = structlog.get_logger("teamgraph.storage")


def watch_interval(raw: str | None) -> float:
    """TEAMGRAPH_STORAGE_WATCH_S (tests set it high). `teamgraph` refuses a value outside 0.1..3600 at start with
    one line (server/settings.py); here, read at import, an unusable value falls back to 1 s and a too small or
    too large one is held to those bounds, so no import fails and no idle process spins on a 0 s interval."""
    try:
        value = float(raw) if raw is not None else 1.0
    except ValueError:
        return 1.0
    return min(max(value, 0.1), 3600.0) if math.isfinite(value) else 1.0


WATCH_INTERVAL_S = watch_interval(os.environ.get("TEAMGRAPH_STORAGE_WATCH_S"))
# after two repairs for the same missing object (`fault_key`), each within this long of the one before, that
# found nothing missing (a column no schema step adds: a typo in new code; one such repair alone may be a sibling
# worker or replica that repaired first), that object meets no repair for this long: each would re-run every step
# (on PostgreSQL `add column if not exists` takes an ACCESS EXCLUSIVE lock) for every request that meets it.
# Another missing object is repaired at once.
REPAIR_COOLDOWN_S = 30.0
EXIT_FOR_RESTART = 75  # EX_TEMPFAIL: a worker that exits for its supervisor to start a fresh one


def missing_table(exc: BaseException | None) -> bool:
    """True when `exc` (or what caused it) says a table, a column or the schema the server uses does not exist
    (`checkpoints.storage.missing_object`)."""
    seen = 0
    while exc is not None and seen < 6:
        if missing_object(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


_QUOTED = re.compile(r'"([^"]+)"')  # PostgreSQL: relation "x" / column "x" (of relation "t") / schema "s"
_SQLITE_NAMED = re.compile(r"(?:no such (?:table|column):|has no column named)\s+(\S+)", re.IGNORECASE)


def fault_key(exc: BaseException) -> str:
    """The missing object a storage error names, the same for every statement that meets it: the error itself or
    what caused it (an audited write wraps it), and the name in its message whatever the statement's shape
    (SQLite: "no such column: x" for a read, "table t has no column named x" for an insert; PostgreSQL: the
    first quoted name). Its first line when no name is found."""
    cause: BaseException | None = exc
    for _ in range(6):
        if cause is None or missing_object(cause):
            break
        cause = cause.__cause__ or cause.__context__
    found = cause if cause is not None else exc
    text = str(found)
    named = _QUOTED.search(text) or _SQLITE_NAMED.search(text)
    if named is None:
        return _first_line(found)
    name = named.group(1).strip("'\"`")
    return name.removeprefix("main.").lower()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


@dataclass
class Recreated:
    """What one repair found missing and recreated."""

    session_index: bool = False
    audit: bool = False
    file: bool = False  # a deleted SQLite file was recreated empty
    checkpoints: bool = False  # LangGraph's checkpoint or store tables
    audit_keys: bool = False  # the key of the log's user references: put back with the key the process holds

    def any(self) -> bool:
        return self.session_index or self.audit or self.file or self.checkpoints or self.audit_keys


@dataclass
class StorageRepair:
    """Re-runs the schema setup of one database, once at a time.

    `setup` recreates whatever is missing and says what it recreated; `file_replaced` (SQLite only) tells whether
    the file on disk is no longer the one the connections hold, and `reopen` moves every connection to the file
    now at the path (created empty when there is none)."""

    backend: str  # "sqlite" | "postgres"
    setup: Callable[[], Awaitable[Recreated]]
    file_replaced: Callable[[], bool] = lambda: False
    reopen: Callable[[], Awaitable[None]] | None = None
    # one of several workers on the file: it exits (and is restarted) instead of reopening in place
    restarts_worker: bool = False
    # tenants whose audit chain gets an `audit_restarted` entry when the audit tables were recreated
    on_audit_restarted: Callable[[str], Awaitable[None]] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _last_done: float = 0.0
    # per missing object (`fault_key`): repairs that recreated nothing, each within REPAIR_COOLDOWN_S of the one
    # before, and when the last of them finished; emptied by a repair that recreated something
    _noops: dict[str, tuple[int, float]] = field(default_factory=dict)

    async def after_fault(self, exc: BaseException) -> bool:
        """Repair when `exc` says a table is missing (or the SQLite file was deleted); True when it repaired. A
        missing object whose fault two repairs in a row met without recreating anything is not repaired again
        for REPAIR_COOLDOWN_S (logged `storage_repair_skipped`); another fault is, and a deleted SQLite file
        always is."""
        if self.file_replaced():
            return await self.repair(_first_line(exc))
        if not missing_table(exc):
            return False
        fault = fault_key(exc)
        count, last = self._noops.get(fault, (0, 0.0))
        if count >= 2 and time.monotonic() - last < REPAIR_COOLDOWN_S:
            log.info("storage_repair_skipped", backend=self.backend, cause=_first_line(exc), missing=fault,
                     message="repairs just found nothing missing; the next is tried after the cooldown")  # fmt: skip
            return False
        return await self.repair(_first_line(exc), fault)

    async def check_file(self) -> bool:
        """For SQLite: reopen on a new file when the one in use was deleted or replaced; True when it did."""
        if self.reopen is not None and self.file_replaced():
            return await self.repair("the database file was deleted or replaced while the server ran")
        return False

    async def before_request(self) -> None:
        """SQLite: a request never reads or writes a deleted file. In place (one worker) the file is reopened
        first; a worker among several answers 503 (StorageUnavailable) and exits once the answer is out."""
        if self.reopen is None or not self.file_replaced():
            return
        if self.restarts_worker:
            asyncio.get_running_loop().call_later(0.2, exit_now)
            raise StorageUnavailable(FILE_DELETED)
        await self.repair("the database file was deleted or replaced while the server ran")

    def after_turn(self) -> None:
        """SQLite: a turn that ran while its file was deleted was stored there and is lost: not a 200."""
        if self.reopen is not None and self.file_replaced():
            raise StorageUnavailable(FILE_DELETED + "; the turn was not stored, send it again")

    async def repair(self, cause: str, fault: str | None = None) -> bool:
        noticed = time.monotonic()
        async with self._lock:
            if self._last_done > noticed:
                return True  # another request repaired it while this one waited for the lock
            recreated = Recreated()
            if self.reopen is not None and self.file_replaced():
                await self.reopen()
                recreated.file = True
            found = await self.setup()
            recreated.session_index = found.session_index or recreated.file
            recreated.audit = found.audit or recreated.file
            recreated.checkpoints = found.checkpoints or recreated.file
            recreated.audit_keys = found.audit_keys or recreated.file
            self._last_done = time.monotonic()
            # two repairs for one missing object that recreated nothing: it meets no repair for a while
            if recreated.any():
                self._noops.clear()
            elif fault is not None:
                count, last = self._noops.get(fault, (0, 0.0))
                self._noops[fault] = (count + 1 if self._last_done - last < REPAIR_COOLDOWN_S else 1, self._last_done)
            if not recreated.any():  # another process (a sibling worker, a replica) recreated them first
                log.info("storage_checked", backend=self.backend, cause=cause, message="every table was there")
                return True
            lost = "; sessions stored before are gone unless restored from a backup" if recreated.session_index else ""
            if recreated.audit:
                lost += "; every tenant's audit chain starts again from its genesis"
            if recreated.audit_keys:
                lost += "; the audit log's user key was put back as this process held it"
            log.warning(
                "storage_repaired",
                backend=self.backend,
                cause=cause,
                database_file_recreated=recreated.file,
                session_index_recreated=recreated.session_index,
                audit_chain_restarted=recreated.audit,
                checkpoints_recreated=recreated.checkpoints,
                audit_key_table_recreated=recreated.audit_keys,
                message="the database lost tables while the server ran; the missing ones were recreated empty" + lost,
            )
            if recreated.audit and self.on_audit_restarted is not None:
                await self.on_audit_restarted(cause)
            return True

    async def watch(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        """Check the SQLite file every `interval_s` (a deleted file raises no error: writes would vanish)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check_file()
            except Exception as exc:  # the next check (or /readyz) tries again
                log.warning("storage_repair_failed", backend=self.backend, error=_first_line(exc))


FILE_DELETED = "the database file was deleted while the server ran; a new one is being opened"


async def exit_for_restart() -> None:
    """The `reopen` of one worker among several on a SQLite file that was deleted: a worker cannot tell when its
    siblings have let go of the old file (one that closes its connections after a new file exists would delete
    the new file's -wal by name), so each worker exits at once without closing anything, and uvicorn's
    supervisor starts a fresh one, which opens a new file at the path (removing the old -wal/-shm first)."""
    exit_now()


def exit_now() -> None:
    log.error(
        "storage_file_deleted",
        message="the database file was deleted while the server ran: this worker exits and a new one starts on a "
        "new, empty file",
        pid=os.getpid(),
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_FOR_RESTART)


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def remove_stale_wal(path: Path) -> None:
    """A -wal/-shm beside a missing database belongs to the deleted one: replayed into a new file it would
    corrupt it, so it goes before the new file is opened."""
    if file_identity(path) is None:
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
