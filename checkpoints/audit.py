"""The audit log: an append-only, per-tenant hash-chained `audit_events` table beside the session index.

Each entry's hash covers its fields and the previous entry's hash, so editing, deleting or reordering any
row breaks the chain at that row, and `verify` names it. Pruning old entries keeps an anchor (the last
pruned entry's position and hash) so the remaining chain still verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from checkpoints.schema_migrations import postgres_version, sqlite_version, upgrade_postgres, upgrade_sqlite
from checkpoints.storage import (
    DEFAULT_STATEMENT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    is_statement_bug,
    pg_connect_kwargs,
    sync_pool_options,
)

EVENT_TYPES = (
    "session_created", "message", "response", "safety_decision", "evaluation", "team_selected",
    "document_uploaded", "session_renamed", "session_delete_started", "session_deleted",
    "session_expired", "sessions_pruned", "session_exported", "session_imported", "user_erased", "audit_restarted",
    "voice_session_started", "session_user_tagged",
)  # fmt: skip
GENESIS = "0" * 64
ContentPolicy = Literal["full", "hash", "none"]


class AuditWriteError(RuntimeError):
    """An audit record could not be written; the action it records must fail too."""


def _pg_errors() -> tuple[type[BaseException], ...]:
    """What a Postgres audit write catches: psycopg's errors (a lost connection, a pool timeout or closed pool, a
    statement the database refused), and no others: a bug of the code stays a bug (500). `_write_failed` then
    tells a statement that is itself wrong from the rest."""
    import psycopg  # imported by then: only PostgresAuditLog asks

    return (psycopg.Error,)


def _write_failed(exc: BaseException) -> AuditWriteError:
    """The AuditWriteError (503) for a database error met by an audit write, or `exc` itself raised again when it
    says the statement is wrong (a syntax error, a wrong column type: `is_statement_bug`), which no retry can
    mend: a 500 with its stack in the log. Both backends, one rule (docs/api.md, "Errors")."""
    if is_statement_bug(exc):
        raise exc
    return AuditWriteError(f"audit log write failed: {exc}")


# A statement on another table of the audit log's database (the session index's), in that database's parameter
# style, that an audited change consists of: see `AuditLog.append_if`
Statement = tuple[str, Sequence[Any]]


@dataclass(frozen=True)
class AuditEvent:
    """What happened, before it is placed in the chain."""

    tenant: str
    actor: str  # the key id, never the key
    event_type: str
    session: str | None = None
    payload: dict[str, Any] | None = None


@dataclass(frozen=True)
class AuditEntry:
    tenant: str
    seq: int  # position in the tenant's chain, from 1
    at: str
    actor: str
    session: str | None
    event_type: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerifyResult:
    tenant: str
    checked: int
    ok: bool
    broken_seq: int | None = None
    reason: str = ""


def apply_content_policy(payload: dict[str, Any], policy: ContentPolicy) -> dict[str, Any]:
    """Message text (`content`) stored in full, as its sha256, or not at all, as the tenant's policy says."""
    if "content" not in payload or policy == "full":
        return payload
    out = {k: v for k, v in payload.items() if k != "content"}
    if policy == "hash":
        out["content_sha256"] = hashlib.sha256(str(payload["content"]).encode()).hexdigest()
    return out


def entry_hash(
    tenant: str,
    seq: int,
    at: str,
    actor: str,
    session: str | None,
    event_type: str,
    payload: dict[str, Any],
    prev_hash: str,
) -> str:
    body = json.dumps(
        {"tenant": tenant, "seq": seq, "at": at, "actor": actor, "session": session, "event_type": event_type,
         "payload": payload, "prev_hash": prev_hash},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
    )  # fmt: skip
    return hashlib.sha256(body.encode()).hexdigest()


REDACTED = "_redacted"  # the payload key of an entry whose content an erasure removed


def _redacted_by(erasure: AuditEntry) -> dict[str, Any]:
    """The payload an erasure leaves in each entry it redacts: which entry redacted it."""
    return {REDACTED: {"by": erasure.seq}}


def fields_digest(e: AuditEntry) -> str:
    """sha256 of everything in an entry but its payload: what an erasure entry records of each entry it redacts,
    so a redacted entry is still checked field by field and through its hash link."""
    body = json.dumps({"tenant": e.tenant, "seq": e.seq, "at": e.at, "actor": e.actor, "session": e.session,
                       "event_type": e.event_type, "prev_hash": e.prev_hash, "hash": e.hash},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # fmt: skip
    return hashlib.sha256(body.encode()).hexdigest()


def verify_chain(tenant: str, entries: Iterator[AuditEntry], anchor: tuple[int, str] | None) -> VerifyResult:
    """Walk a tenant's entries in seq order; the first entry that does not follow from its predecessor is broken.

    A redacted entry (an erasure replaced its payload) cannot be rehashed: it verifies when a `user_erased`
    entry of the chain lists its seq with the digest of its other fields (`fields_digest`), and its stored
    hash still links to its neighbours; the erasure entry itself is hashed like any other."""
    entries = list(entries)  # type: ignore[assignment]
    erased: dict[int, str] = {}
    for e in entries:
        if e.event_type == "user_erased":
            erased.update({int(r["seq"]): r["fields_sha256"] for r in e.payload.get("redacted", [])})
    expected_seq, prev = (anchor[0] + 1, anchor[1]) if anchor else (1, GENESIS)
    checked = 0
    for e in entries:
        if e.seq != expected_seq:
            what = "missing" if e.seq > expected_seq else "out of order"
            return VerifyResult(
                tenant,
                checked,
                False,
                expected_seq if e.seq > expected_seq else e.seq,
                f"entry {expected_seq} is {what} (found {e.seq})",
            )
        if e.prev_hash != prev:
            return VerifyResult(tenant, checked, False, e.seq, "prev_hash does not match the previous entry")
        if set(e.payload) == {REDACTED}:
            if erased.get(e.seq) != fields_digest(e):
                return VerifyResult(tenant, checked, False, e.seq, "redacted without a matching erasure entry")
            prev, expected_seq, checked = e.hash, expected_seq + 1, checked + 1
            continue
        recomputed = entry_hash(e.tenant, e.seq, e.at, e.actor, e.session, e.event_type, e.payload, e.prev_hash)
        if recomputed != e.hash:
            return VerifyResult(tenant, checked, False, e.seq, "content does not match its hash (edited)")
        prev, expected_seq, checked = e.hash, expected_seq + 1, checked + 1
    return VerifyResult(tenant, checked, True)


class AuditLog(Protocol):
    def append(self, events: list[AuditEvent]) -> list[AuditEntry]: ...
    # the change and its entries in one transaction, so the entries exist exactly when the change stood: each
    # statement must change a row, else nothing is written and the answer is None (another request got there first)
    def append_if(self, changes: Sequence[Statement], events: list[AuditEvent]) -> list[AuditEntry] | None: ...
    # an erasure's `user_erased` entry and the redaction of the entries it lists (`seqs`), in one transaction
    def append_redacting(self, event: AuditEvent, seqs: Sequence[int]) -> AuditEntry: ...
    def deferring_sync(self) -> contextlib.AbstractContextManager[None]: ...
    def make_durable(self) -> None: ...
    def query(
        self,
        tenant: str,
        *,
        session: str | None = None,
        event_type: str | None = None,
        since: str | None = None,
        until: str | None = None,
        after_seq: int = 0,
        limit: int = 100,
    ) -> list[AuditEntry]: ...
    # whether the session has an entry of this type whose payload's `key` is `value` (compared in SQL: no payload
    # is read back, however large)
    def has_entry(self, tenant: str, session: str, event_type: str, key: str, value: str) -> bool: ...
    def verify(self, tenant: str) -> VerifyResult: ...
    def tenants(self) -> list[str]: ...
    def prune(self, older_than: datetime, tenant: str | None = None) -> int: ...
    def prunable(self, older_than: datetime, tenant: str | None = None) -> dict[str, int]: ...
    def anchor(self, tenant: str) -> int | None: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...
    def user_ref(self, tenant: str, user_id: str) -> str: ...


def as_utc(moment: datetime) -> str:
    """The stored form of a moment: UTC ISO text, so comparisons mean the same instant whatever the offset."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _row_entry(row: Any) -> AuditEntry:
    payload = row["payload"]
    return AuditEntry(
        tenant=row["tenant"],
        seq=row["seq"],
        at=row["at"],
        actor=row["actor"],
        session=row["session"],
        event_type=row["event_type"],
        payload=json.loads(payload) if isinstance(payload, str) else payload,
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def _chain(events: list[AuditEvent], heads: dict[str, tuple[int, str]]) -> list[AuditEntry]:
    """Place events after each tenant's current head, in the order given."""
    out = []
    for ev in events:
        if ev.event_type not in EVENT_TYPES:
            raise AuditWriteError(f"unknown audit event type {ev.event_type!r}")
        seq, prev = heads.get(ev.tenant, (0, GENESIS))
        at, payload = _now(), ev.payload or {}
        digest = entry_hash(ev.tenant, seq + 1, at, ev.actor, ev.session, ev.event_type, payload, prev)
        out.append(AuditEntry(ev.tenant, seq + 1, at, ev.actor, ev.session, ev.event_type, payload, prev, digest))
        heads[ev.tenant] = (seq + 1, digest)
    return out


_QUERY_FILTERS = (("session", "session = {p}"), ("event_type", "event_type = {p}"), ("since", "at >= {p}"),
                  ("until", "at < {p}"))  # fmt: skip


USER_KEY_NAME = "user_ref"
KEYS_VERSION = 2  # the audit schema step that adds audit_keys
log = structlog.get_logger("teamgraph.storage")


def _adopt_user_key(held: str | None, stored: str, made: bool, names_users: Callable[[], bool]) -> str:
    """The key a process uses: the one `audit_keys` holds. Logged (never the key) when the process held another
    (the row was lost and another process made a new one) or when it just made a new key for a log that already
    names users by an earlier one: their deleted sessions are found from then on only through sessions stored."""
    if held is not None and held != stored:
        log.warning("audit_user_key_changed", reason="audit_keys held another key than this process's")
    elif made and held is None and _names_users(names_users):
        log.warning("audit_user_key_created", reason="a new key for an audit log that already names users")
    return stored


def _names_users(names_users: Callable[[], bool]) -> bool:
    try:
        return names_users()
    except Exception as exc:  # (a slow scan of a large log, say): the key stands; only the warning is not given
        log.info("audit_user_key_check_skipped", error_type=type(exc).__name__)
        return False


def keyed_user_ref(key: str, tenant: str, user_id: str) -> str:
    """How the log names an end user (`user_ref`): HMAC-SHA256 of tenant and id under the database's own key
    (`audit_keys`), so that nobody who reads the log, an export or an erasure record can test a guessed id
    against it (a plain hash of an email address is found by hashing candidates)."""
    return hmac.new(bytes.fromhex(key), f"{tenant}\n{user_id}".encode(), hashlib.sha256).hexdigest()


def legacy_user_ref(tenant: str, user_id: str) -> str:
    """How entries written before `user_ref` named a user (`user_sha256`, unkeyed): only matched, never written."""
    return hashlib.sha256(f"{tenant}\n{user_id}".encode()).hexdigest()


def _payload_key(key: str) -> str:
    """A top-level payload key for `has_entry`: an identifier, so SQLite's JSON path needs no quoting."""
    if not key.isidentifier():
        raise ValueError(f"not a payload key: {key!r}")
    return key


@dataclass(frozen=True)
class AuditRepaired:
    """What a repair of the log's tables found gone (and recreated)."""

    events: bool  # audit_events: every tenant's chain starts again from its genesis
    keys: bool  # audit_keys: put back with the key this process holds (the log's user references stay valid)


class SqliteAuditLog:
    """The audit log in the SQLite database file (or in memory), written under SQLite's write lock."""

    def __init__(self, path: Path | str | None, shared: tuple[sqlite3.Connection, threading.Lock] | None = None):
        """`shared`: the in-memory session index's connection and lock (memory://), so that an audited change of
        the index (`append_if`) is one transaction there too; a file database has a connection of its own."""
        self._path = path
        self._lock = shared[1] if shared else threading.Lock()
        self.conn = shared[0] if shared else self._connect()
        self.conn.row_factory = sqlite3.Row  # (sqlite-utils, on a shared connection, reads rows by index too)
        first_key = sqlite_version(self.conn, "audit") < KEYS_VERSION  # a key made now is the log's first
        upgrade_sqlite(self.conn, "audit")  # its tables by numbered steps (checkpoints/schema_migrations.py)
        self._user_key: str | None = None
        with self._lock:
            self._take_user_key(first_key)

    def _take_user_key(self, first_key: bool = False) -> None:
        """Read the key of the log's user references (the caller holds `_lock`); when `audit_keys` has none (a
        fresh database, or the row was lost), put in this process's key or a new random one first, in a write
        transaction of its own (the first writer wins). A start that finds it reads only. The table itself comes
        back first if it is missing (dropped while no process ran). `first_key`: the tables were older than the
        key's step at this start, so no entry can name a user by a key, and the log is not searched for one."""
        if not self.conn.execute("select 1 from sqlite_master where type = 'table' and name = 'audit_keys'").fetchone():
            upgrade_sqlite(self.conn, "audit", repair=True)
        select = "select key from audit_keys where name = ?"
        row = self.conn.execute(select, (USER_KEY_NAME,)).fetchone()
        made = row is None
        if made:
            self.conn.execute("begin immediate")  # explicit: memory:// shares a connection that is not autocommit
            try:
                self.conn.execute("insert into audit_keys (name, key) values (?, ?) on conflict do nothing",
                                  (USER_KEY_NAME, self._user_key or secrets.token_hex(32)))  # fmt: skip
                self.conn.execute("commit")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("rollback")
                raise
            row = self.conn.execute(select, (USER_KEY_NAME,)).fetchone()

        def names_users() -> bool:
            named = "select 1 from audit_events where payload like '%\"user\\_ref\"%' escape '\\' limit 1"
            return self.conn.execute(named).fetchone() is not None

        self._user_key = _adopt_user_key(self._user_key, str(row[0]), made and not first_key, names_users)

    def user_ref(self, tenant: str, user_id: str) -> str:
        assert self._user_key is not None
        return keyed_user_ref(self._user_key, tenant, user_id)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self._path) if self._path else ":memory:", check_same_thread=False,
                               timeout=10.0, isolation_level=None)  # fmt: skip
        conn.row_factory = sqlite3.Row
        if self._path:
            conn.execute("PRAGMA synchronous = NORMAL")  # the file is in WAL mode (see SqliteSessionIndex)
        return conn

    def repair_schema(self) -> AuditRepaired:
        """Recreate missing tables (checkpoints/self_repair.py): which of them were gone."""
        with self._lock:

            def gone(table: str) -> bool:
                found = "select 1 from sqlite_master where type = 'table' and name = ?"
                return self.conn.execute(found, (table,)).fetchone() is None

            repaired = AuditRepaired(events=gone("audit_events"), keys=gone("audit_keys"))
            upgrade_sqlite(self.conn, "audit", repair=True)
            self._take_user_key()  # a recreated audit_keys gets this process's key back, not a new one
        return repaired

    def close_for_reopen(self) -> None:
        """First half of a reopen on a new file (self-repair of a deleted file): the caller holds `locks()`."""
        self.conn.close()

    def open_again(self) -> None:
        self.conn = self._connect()
        upgrade_sqlite(self.conn, "audit")
        self._take_user_key()  # the caller holds `locks()`

    def locks(self) -> tuple[threading.Lock, ...]:
        return (self._lock,)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction: `begin immediate` (one writer at a time, across processes too), committed when
        the block ends (unless it ended the transaction itself), rolled back on any error."""
        with self._lock:
            self.conn.execute("begin immediate")
            try:
                yield
                if self.conn.in_transaction:
                    self.conn.execute("commit")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("rollback")
                raise

    def _heads(self, tenants: set[str]) -> dict[str, tuple[int, str]]:
        heads = {}
        for tenant in tenants:
            row = self.conn.execute("select seq, hash from audit_events where tenant = ? order by seq desc limit 1",
                                    [tenant]).fetchone()  # fmt: skip
            if row is None:
                row = self.conn.execute("select seq, hash from audit_anchors where tenant = ?", [tenant]).fetchone()
            if row is not None:
                heads[tenant] = (row["seq"], row["hash"])
        return heads

    def deferring_sync(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to defer: the file is in WAL mode with synchronous=NORMAL, no commit waits for the disk."""
        return contextlib.nullcontext()

    def make_durable(self) -> None:
        """Nothing to wait for (see deferring_sync)."""

    def append(self, events: list[AuditEvent]) -> list[AuditEntry]:
        if not events:
            return []
        entries = self.append_if((), events)
        assert entries is not None  # no change to refuse it
        return entries

    def append_if(self, changes: Sequence[Statement], events: list[AuditEvent]) -> list[AuditEntry] | None:
        try:
            with self._writing():
                for sql, args in changes:
                    if self.conn.execute(sql, args).rowcount < 1:
                        self.conn.execute("rollback")
                        return None
                entries = self._insert(events)
        except sqlite3.Error as exc:
            raise _write_failed(exc) from exc
        return entries

    def _insert(self, events: list[AuditEvent]) -> list[AuditEntry]:
        """Chain and insert `events` (the caller holds the write transaction)."""
        entries = _chain(events, self._heads({e.tenant for e in events}))
        self.conn.executemany(
            "insert into audit_events values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(e.tenant, e.seq, e.at, e.actor, e.session, e.event_type,
              json.dumps(e.payload, ensure_ascii=False, default=str), e.prev_hash, e.hash)
             for e in entries],
        )  # fmt: skip
        return entries

    def append_redacting(self, event: AuditEvent, seqs: Sequence[int]) -> AuditEntry:
        try:
            with self._writing():
                [entry] = self._insert([event])
                redacted = json.dumps(_redacted_by(entry))
                self.conn.executemany(
                    "update audit_events set payload = ? where tenant = ? and seq = ?",
                    [(redacted, event.tenant, seq) for seq in seqs],
                )
        except sqlite3.Error as exc:
            raise _write_failed(exc) from exc
        return entry

    def query(self, tenant: str, *, session: str | None = None, event_type: str | None = None,
              since: str | None = None, until: str | None = None, after_seq: int = 0,
              limit: int = 100) -> list[AuditEntry]:  # fmt: skip
        sql, args = "select * from audit_events where tenant = ? and seq > ?", [tenant, after_seq]
        values = {"session": session, "event_type": event_type, "since": since, "until": until}
        for name, clause in _QUERY_FILTERS:
            if values[name] is not None:
                sql += " and " + clause.format(p="?")
                args.append(values[name])
        with self._lock:
            rows = self.conn.execute(sql + " order by seq limit ?", [*args, limit]).fetchall()
        return [_row_entry(r) for r in rows]

    def has_entry(self, tenant: str, session: str, event_type: str, key: str, value: str) -> bool:
        with self._lock:
            row = self.conn.execute(
                "select 1 from audit_events where tenant = ? and session = ? and event_type = ?"
                " and json_extract(payload, ?) = ? limit 1",
                [tenant, session, event_type, "$." + _payload_key(key), value],
            ).fetchone()
        return row is not None

    def verify(self, tenant: str) -> VerifyResult:
        with self._lock:
            anchor = self.conn.execute("select seq, hash from audit_anchors where tenant = ?", [tenant]).fetchone()
            rows = self.conn.execute("select * from audit_events where tenant = ? order by seq", [tenant]).fetchall()
        return verify_chain(tenant, (_row_entry(r) for r in rows), (anchor["seq"], anchor["hash"]) if anchor else None)

    def tenants(self) -> list[str]:
        """Every tenant with a chain: entries, or only the anchor of a chain pruned to its end."""
        with self._lock:
            return [r[0] for r in self.conn.execute(
                "select tenant from audit_events union select tenant from audit_anchors order by 1"
            )]  # fmt: skip

    def anchor(self, tenant: str) -> int | None:
        """The seq of the tenant's last pruned entry (None: never pruned)."""
        with self._lock:
            row = self.conn.execute("select seq from audit_anchors where tenant = ?", [tenant]).fetchone()
        return int(row[0]) if row else None

    def prunable(self, older_than: datetime, tenant: str | None = None) -> dict[str, int]:
        """Per tenant, how many entries `prune(older_than, tenant)` would delete now."""
        cutoff, out = as_utc(older_than), {}
        with self._lock:
            for (t,) in self.conn.execute("select distinct tenant from audit_events order by 1").fetchall():
                if tenant is None or t == tenant:
                    out[t] = self.conn.execute(
                        "select count(*) from audit_events where tenant = ? and seq <= (select max(seq) from"
                        " audit_events where tenant = ? and at < ?)", [t, t, cutoff],
                    ).fetchone()[0]  # fmt: skip
        return out

    def prune(self, older_than: datetime, tenant: str | None = None) -> int:
        """Delete each tenant's entries up to its last one older than `older_than` (only `tenant`'s when given);
        an anchor keeps the last deleted entry's seq and hash, so what remains verifies."""
        cutoff = as_utc(older_than)
        removed = 0
        with self._writing():
            for (t,) in self.conn.execute("select distinct tenant from audit_events").fetchall():
                if tenant is not None and t != tenant:
                    continue
                last = self.conn.execute(
                    "select seq, hash from audit_events where tenant = ? and at < ? order by seq desc limit 1",
                    [t, cutoff],
                ).fetchone()
                if last is None:
                    continue
                removed += self.conn.execute("delete from audit_events where tenant = ? and seq <= ?",
                                             [t, last["seq"]]).rowcount  # fmt: skip
                self.conn.execute("insert or replace into audit_anchors values (?, ?, ?)",
                                  [t, last["seq"], last["hash"]])  # fmt: skip
        return removed

    def ping(self) -> None:
        with self._lock:
            self.conn.execute("select 1 from audit_events limit 1").fetchall()
            # a missing table fails the probe (and /readyz repairs it); a key another process put there since is
            # adopted, so that replicas never name one user two ways for long
            row = self.conn.execute("select key from audit_keys where name = ?", (USER_KEY_NAME,)).fetchone()
            if row is None or row[0] != self._user_key:
                self._take_user_key()

    def close(self) -> None:
        self.conn.close()


class PostgresAuditLog:
    """The audit log in Postgres; appends for a tenant are serialized by a transaction-level advisory lock."""

    def __init__(
        self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S, statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S
    ):
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self._deferred = threading.local()
        # tenant -> the head of its chain (seq, hash) as this process last wrote it: the next append of the
        # tenant tries one round trip that inserts only if that is still the head (see _append_after)
        self._heads: dict[str, tuple[int, str]] = {}
        self._heads_lock = threading.Lock()
        self.pool: Any = ConnectionPool(
            url,
            min_size=1,
            max_size=4,
            open=True,
            # no server-side prepared statements: a prepared `select *` fails once a newer replica adds a column
            kwargs={"prepare_threshold": None, "row_factory": dict_row, **pg_connect_kwargs(timeout_s)},
            **sync_pool_options(timeout_s, statement_timeout_s),
        )
        try:
            with self.pool.connection() as conn:
                first_key = postgres_version(conn, "audit") < KEYS_VERSION  # a key made now is the log's first
            with self.pool.connection() as conn:
                upgrade_postgres(conn, "audit")  # its tables by numbered steps (checkpoints/schema_migrations.py)
            self._user_key: str | None = None
            self._take_user_key(first_key)
        except BaseException:
            self.pool.close()
            raise

    def _take_user_key(self, first_key: bool = False) -> None:
        """Read the key of the log's user references; when `audit_keys` has none (a fresh database, or the row
        was lost), put in this process's key or a new random one first (replicas starting together: the first
        insert wins, every replica reads that one; the read's transaction ends first, so that under a
        repeatable-read default the insert of the second does not fail to serialize). A start that finds it
        reads only (a read-only role can open the log). The table itself comes back first if it is missing
        (dropped while no process ran). `first_key`: as for SQLite."""
        select = "select key from audit_keys where name = %s"
        with self.pool.connection() as conn:
            if conn.execute("select to_regclass('audit_keys') is null as missing").fetchone()["missing"]:
                upgrade_postgres(conn, "audit", repair=True)
            row = conn.execute(select, (USER_KEY_NAME,)).fetchone()
            conn.commit()
            made = row is None
            if made:
                conn.execute("insert into audit_keys (name, key) values (%s, %s) on conflict do nothing",
                             (USER_KEY_NAME, self._user_key or secrets.token_hex(32)))  # fmt: skip
                conn.commit()
                row = conn.execute(select, (USER_KEY_NAME,)).fetchone()

            def names_users() -> bool:  # only when a key was lost: bounded, it only decides a log line
                try:
                    conn.execute("set local statement_timeout = '2s'")
                    named = "select 1 from audit_events where payload ? 'user_ref' limit 1"
                    return conn.execute(named).fetchone() is not None
                except Exception:
                    conn.rollback()
                    raise

            self._user_key = _adopt_user_key(self._user_key, str(row["key"]), made and not first_key, names_users)
            conn.commit()

    def user_ref(self, tenant: str, user_id: str) -> str:
        assert self._user_key is not None
        return keyed_user_ref(self._user_key, tenant, user_id)

    def repair_schema(self) -> AuditRepaired:
        """Recreate missing tables (checkpoints/self_repair.py): which of them were gone."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "select to_regclass('audit_events') is null as events, to_regclass('audit_keys') is null as keys"
            ).fetchone()
            upgrade_postgres(conn, "audit", repair=True)
        self._take_user_key()  # a recreated audit_keys gets this process's key back, not a new one
        return AuditRepaired(events=bool(row and row["events"]), keys=bool(row and row["keys"]))

    @contextlib.contextmanager
    def deferring_sync(self) -> Iterator[None]:
        """Appends in this block (in this thread) commit without waiting for the WAL flush, for a caller that
        makes a durable commit on this database before it acknowledges anything (a turn: its checkpoint and its
        closing entries). Postgres flushes the WAL in order, so that later commit's flush puts these entries
        on disk too; until then a crash of the database could lose them, and only them and what came after
        (the chain stays verifiable: what is lost is its tail)."""
        self._deferred.on = True
        try:
            yield
        finally:
            self._deferred.on = False

    def make_durable(self) -> None:
        """Wait until everything committed on this database so far is on disk: a commit that writes a WAL record
        (a transactional logical message, which changes no table and is ignored without logical decoding) and
        so waits for the WAL flush up to it. For a turn that wrote no closing entry (see deferring_sync)."""
        try:
            with self.pool.connection() as conn:
                conn.execute("select pg_logical_emit_message(true, 'teamgraph', 'durable')")
        except _pg_errors() as exc:
            raise _write_failed(exc) from exc

    def append(self, events: list[AuditEvent]) -> list[AuditEntry]:
        if not events:
            return []
        try:
            tenants = {e.tenant for e in events}
            head = self._heads.get(next(iter(tenants))) if len(tenants) == 1 else None
            entries = None
            for _ in range(2):  # after the head this process knows, then (once) after the one that attempt saw
                if head is None:
                    break
                entries, head = self._append_after(head, events)
                if entries is not None:
                    break
            if entries is None:
                if len(tenants) == 1:  # what this process knew is not the head (if it knew one): forget it
                    with self._heads_lock:  # (after a recreate the chain starts again at a lower seq)
                        self._heads.pop(next(iter(tenants)), None)
                entries = self._append_locked(events)
        except AuditWriteError:
            raise
        except _pg_errors() as exc:
            raise _write_failed(exc) from exc
        self._remember(entries)
        return entries

    def _remember(self, entries: list[AuditEntry]) -> None:
        with self._heads_lock:
            for e in entries:
                if e.seq > self._heads.get(e.tenant, (0, ""))[0]:
                    self._heads[e.tenant] = (e.seq, e.hash)

    def _append_after(
        self, head: tuple[int, str], events: list[AuditEvent]
    ) -> tuple[list[AuditEntry] | None, tuple[int, str] | None]:
        """Append one tenant's events after `head`, the chain's head as this process last saw it, in one round
        trip: the tenant's lock, then an insert that writes the entries only if `head` is still the newest entry
        of the chain (read after the lock, as `_append_locked` reads it), and the commit: (the entries, None).
        When it is not (another process appended since, or entries were pruned or the tables recreated) nothing
        was written: (None, the newest entry the attempt found, None if none), for one more try after that
        head, or the long way. The rows are the ones `_append_locked` would write."""
        from psycopg.types.json import Jsonb

        tenant = events[0].tenant
        entries = _chain(events, {tenant: head})
        row = "(%s::text, %s::bigint, %s::text, %s::text, %s::text, %s::text, %s::jsonb, %s::text, %s::text)"
        args: list[Any] = []
        for e in entries:
            args += [e.tenant, e.seq, e.at, e.actor, e.session, e.event_type, Jsonb(e.payload), e.prev_hash, e.hash]
        with self.pool.connection() as conn, _implicit_transaction(conn):
            if getattr(self._deferred, "on", False):
                conn.execute("select set_config('synchronous_commit', 'off', true)")  # see deferring_sync
            conn.execute("select pg_advisory_xact_lock(hashtext(%s))", [f"teamgraph-audit:{tenant}"])
            inserted = conn.execute(
                f"insert into audit_events select * from (values {', '.join([row] * len(entries))}) as v"
                " where exists (select 1 from (select seq, hash from audit_events where tenant = %s"
                " order by seq desc limit 1) as newest where newest.seq = %s and newest.hash = %s)",
                [*args, tenant, head[0], head[1]],
            )
            newest = conn.execute(
                "select seq, hash from audit_events where tenant = %s order by seq desc limit 1", [tenant]
            )
        if inserted.rowcount == len(entries):
            return entries, None
        row = newest.fetchone()
        return None, (row["seq"], row["hash"]) if row is not None else None

    def _append_locked(self, events: list[AuditEvent]) -> list[AuditEntry]:

        with self.pool.connection() as conn, _implicit_transaction(conn):
            # pipelined: the locks and the heads in one round trip, the inserts and the commit in another. Each
            # statement still runs after the one before it has finished, so a head is read after its tenant's
            # lock is held (and, in read committed, sees every append committed before); the locks last until
            # the commit at the pipeline's Sync
            if getattr(self._deferred, "on", False):
                conn.execute("select set_config('synchronous_commit', 'off', true)")  # see deferring_sync
            pending = []
            for tenant in sorted({e.tenant for e in events}):
                conn.execute("select pg_advisory_xact_lock(hashtext(%s))", [f"teamgraph-audit:{tenant}"])
                last = conn.execute(
                    "select seq, hash from audit_events where tenant = %s order by seq desc limit 1", [tenant]
                )
                anchor = conn.execute("select seq, hash from audit_anchors where tenant = %s", [tenant])
                pending.append((tenant, last, anchor))
            heads = {}
            for tenant, last, anchor in pending:
                row = last.fetchone() or anchor.fetchone()
                if row is not None:
                    heads[tenant] = (row["seq"], row["hash"])
            entries = _chain(events, heads)
            _insert_rows(conn, entries)
        return entries

    def append_if(self, changes: Sequence[Statement], events: list[AuditEvent]) -> list[AuditEntry] | None:
        import psycopg

        entries = None
        try:
            with self.pool.connection() as conn, conn.transaction():
                # the changes first: their row locks make a concurrent change of the same rows wait for this
                # transaction, and then find (read committed re-reads the row) that it has nothing to change
                for sql, args in changes:
                    if conn.execute(sql, args).rowcount < 1:
                        raise psycopg.Rollback()
                entries = self._insert(conn, events)
        except _pg_errors() as exc:
            raise _write_failed(exc) from exc
        if entries is not None:  # committed: the next append starts after them (else: rolled back, no change)
            self._remember(entries)
        return entries

    def _insert(self, conn: Any, events: list[AuditEvent]) -> list[AuditEntry]:
        """Chain and insert `events` inside the caller's transaction (under each tenant's chain lock)."""

        heads = {}
        for tenant in sorted({e.tenant for e in events}):
            conn.execute("select pg_advisory_xact_lock(hashtext(%s))", [f"teamgraph-audit:{tenant}"])
            row = (
                conn.execute(
                    "select seq, hash from audit_events where tenant = %s order by seq desc limit 1", [tenant]
                ).fetchone()
                or conn.execute("select seq, hash from audit_anchors where tenant = %s", [tenant]).fetchone()
            )
            if row is not None:
                heads[tenant] = (row["seq"], row["hash"])
        entries = _chain(events, heads)
        _insert_rows(conn, entries)
        return entries

    def append_redacting(self, event: AuditEvent, seqs: Sequence[int]) -> AuditEntry:
        from psycopg.types.json import Jsonb

        try:
            with self.pool.connection() as conn, conn.transaction():
                [entry] = self._insert(conn, [event])
                with conn.cursor() as cur:
                    cur.executemany(
                        "update audit_events set payload = %s where tenant = %s and seq = %s",
                        [(Jsonb(_redacted_by(entry)), event.tenant, seq) for seq in seqs],
                    )
        except _pg_errors() as exc:
            raise _write_failed(exc) from exc
        self._remember([entry])  # committed: the next append starts after it
        return entry

    def query(self, tenant: str, *, session: str | None = None, event_type: str | None = None,
              since: str | None = None, until: str | None = None, after_seq: int = 0,
              limit: int = 100) -> list[AuditEntry]:  # fmt: skip
        sql, args = "select * from audit_events where tenant = %s and seq > %s", [tenant, after_seq]
        values = {"session": session, "event_type": event_type, "since": since, "until": until}
        for name, clause in _QUERY_FILTERS:
            if values[name] is not None:
                sql += " and " + clause.format(p="%s")
                args.append(values[name])
        with self.pool.connection() as conn:
            rows = conn.execute(sql + " order by seq limit %s", [*args, limit]).fetchall()
        return [_row_entry(r) for r in rows]

    def has_entry(self, tenant: str, session: str, event_type: str, key: str, value: str) -> bool:
        with self.pool.connection() as conn:
            row = conn.execute(
                "select 1 from audit_events where tenant = %s and session = %s and event_type = %s"
                " and payload ->> %s = %s limit 1",
                [tenant, session, event_type, _payload_key(key), value],
            ).fetchone()
        return row is not None

    def verify(self, tenant: str) -> VerifyResult:
        with self.pool.connection() as conn:
            anchor = conn.execute("select seq, hash from audit_anchors where tenant = %s", [tenant]).fetchone()
            rows = conn.execute("select * from audit_events where tenant = %s order by seq", [tenant]).fetchall()
        return verify_chain(tenant, (_row_entry(r) for r in rows), (anchor["seq"], anchor["hash"]) if anchor else None)

    def tenants(self) -> list[str]:
        """Every tenant with a chain: entries, or only the anchor of a chain pruned to its end."""
        with self.pool.connection() as conn:
            return [r["tenant"] for r in conn.execute(
                "select tenant from audit_events union select tenant from audit_anchors order by 1"
            )]  # fmt: skip

    def anchor(self, tenant: str) -> int | None:
        """The seq of the tenant's last pruned entry (None: never pruned)."""
        with self.pool.connection() as conn:
            row = conn.execute("select seq from audit_anchors where tenant = %s", [tenant]).fetchone()
        return int(row["seq"]) if row else None

    def prunable(self, older_than: datetime, tenant: str | None = None) -> dict[str, int]:
        """Per tenant, how many entries `prune(older_than, tenant)` would delete now."""
        cutoff, out = as_utc(older_than), {}
        with self.pool.connection() as conn:
            for row in conn.execute("select distinct tenant from audit_events order by 1").fetchall():
                t = row["tenant"]
                if tenant is None or t == tenant:
                    counted = conn.execute(
                        "select count(*) as n from audit_events where tenant = %s and seq <= (select max(seq) from"
                        " audit_events where tenant = %s and at < %s)", [t, t, cutoff],
                    ).fetchone()  # fmt: skip
                    out[t] = int(counted["n"]) if counted else 0
        return out

    def prune(self, older_than: datetime, tenant: str | None = None) -> int:
        """As SqliteAuditLog.prune."""
        cutoff = as_utc(older_than)
        removed = 0
        only = tenant
        with self.pool.connection() as conn, conn.transaction():
            for row in conn.execute("select distinct tenant from audit_events").fetchall():
                tenant = row["tenant"]
                if only is not None and tenant != only:
                    continue
                conn.execute("select pg_advisory_xact_lock(hashtext(%s))", [f"teamgraph-audit:{tenant}"])
                last = conn.execute(
                    "select seq, hash from audit_events where tenant = %s and at < %s order by seq desc limit 1",
                    [tenant, cutoff],
                ).fetchone()
                if last is None:
                    continue
                removed += conn.execute("delete from audit_events where tenant = %s and seq <= %s",
                                        [tenant, last["seq"]]).rowcount  # fmt: skip
                conn.execute(
                    "insert into audit_anchors values (%s, %s, %s) on conflict (tenant) do update"
                    " set seq = excluded.seq, hash = excluded.hash",
                    [tenant, last["seq"], last["hash"]],
                )
        return removed

    def ping(self) -> None:
        with self.pool.connection() as conn:
            conn.execute("select 1 from audit_events limit 1").fetchall()
            # as for SQLite: a missing table fails the probe; another process's key is adopted
            row = conn.execute("select key from audit_keys where name = %s", (USER_KEY_NAME,)).fetchone()
        if row is None or row["key"] != self._user_key:
            self._take_user_key()

    def close(self) -> None:
        self.pool.close()


def _insert_rows(conn: Any, entries: list[AuditEntry]) -> None:
    """Insert chained entries on a Postgres connection (inside the caller's transaction)."""
    from psycopg.types.json import Jsonb

    with conn.cursor() as cur:
        cur.executemany(
            "insert into audit_events values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(e.tenant, e.seq, e.at, e.actor, e.session, e.event_type, Jsonb(e.payload), e.prev_hash, e.hash)
             for e in entries],
        )  # fmt: skip


@contextlib.contextmanager
def _implicit_transaction(conn: Any) -> Iterator[None]:
    """A pipeline on an autocommit connection: everything sent until its Sync is one implicit transaction,
    committed there (or rolled back by the first error), without the separate BEGIN, COMMIT and closing Sync round
    trips that `conn.transaction()` costs in pipeline mode. The connection goes back to non-autocommit after."""
    conn.autocommit = True
    try:
        with conn.pipeline():
            yield
    finally:
        if not (conn.closed or conn.broken):
            conn.autocommit = False


def erase_sessions(
    log: AuditLog, tenant: str, sessions: list[str], actor: str, user_ref: str, legacy_ref: str | None = None
) -> int:
    """Redact the payloads of every entry of the user's sessions, keeping the chain verifiable: a `user_erased`
    entry lists each redacted seq with the digest of its other fields (no content, the user only as `user_ref`, a
    keyed hash), and in the same transaction the payloads become `{"_redacted": {"by": <that entry's seq>}}`: the
    erasure is on record exactly when it happened. Returns how many entries were redacted.

    A session id can be used again once its session is deleted, so entries are matched by the *life* of an id,
    not the id alone: a life is the id's entries up to and including its `session_deleted`. A life is the user's
    when one of its `session_user_tagged` or `session_delete_started` entries names `user_ref` (or `legacy_ref`,
    as `user_sha256`: entries of releases before keyed references) (so sessions of the user deleted before, by a
    DELETE, retention or an erasure interrupted after its deletions, are found too), or when it is the latest life
    of an id in `sessions` (the user's sessions this erasure just deleted). Another user's later session under
    the same id is never touched."""
    latest = set(sessions)

    def names_user(life: list[AuditEntry]) -> bool:
        return any(
            e.event_type in ("session_user_tagged", "session_delete_started")
            and (
                e.payload.get("user_ref") == user_ref
                or (legacy_ref is not None and e.payload.get("user_sha256") == legacy_ref)
            )
            for e in life
        )

    mine: list[list[AuditEntry]] = []
    open_lives: dict[str, list[AuditEntry]] = {}
    latest_closed: dict[str, list[AuditEntry]] = {}  # the last ended life of an id in `sessions`, not naming the user
    after = 0
    while page := log.query(tenant, after_seq=after, limit=1000):
        for entry in page:
            if not entry.session:
                continue
            open_lives.setdefault(entry.session, []).append(entry)
            if entry.event_type == "session_deleted":  # the life ends; only the user's are kept in memory
                life = open_lives.pop(entry.session)
                latest_closed.pop(entry.session, None)
                if names_user(life):
                    mine.append(life)
                elif entry.session in latest:
                    latest_closed[entry.session] = life
        after = page[-1].seq
    ended = {life[0].session for life in mine}
    for sid, life in open_lives.items():  # a session not deleted (yet): the user's when tagged so, or when it is
        if names_user(life) or (sid in latest and sid not in ended):  # the one `sessions` means
            mine.append(life)
    mine += [life for sid, life in latest_closed.items() if sid not in open_lives]
    targets = sorted((e for life in mine for e in life if set(e.payload) != {REDACTED}), key=lambda e: e.seq)
    wanted = {e.session for life in mine for e in life}
    redacted = [{"seq": e.seq, "fields_sha256": fields_digest(e)} for e in targets]
    record = {"user_ref": user_ref, "sessions": len(wanted), "redacted": redacted}
    log.append_redacting(AuditEvent(tenant, actor, "user_erased", None, record), [e.seq for e in targets])
    return len(targets)
