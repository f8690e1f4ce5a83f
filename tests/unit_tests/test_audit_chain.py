"""The audit log's hash chain on its own: hashing, chaining per tenant, verify, content policy and prune.

`SqliteAuditLog` runs on real SQLite files under tmp_path (and in memory where the file does not matter). Rows
with chosen timestamps are written the way the log writes them: each hash recomputed over its fields.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from checkpoints.audit import (
    GENESIS,
    AuditEntry,
    AuditEvent,
    AuditWriteError,
    SqliteAuditLog,
    apply_content_policy,
    entry_hash,
    verify_chain,
)

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def event(tenant: str = "acme", event_type: str = "message", session: str | None = "s1", **payload: Any) -> AuditEvent:
    return AuditEvent(tenant, "key-1", event_type, session, payload or {"role": "user", "content": "hi"})


def chain(tenant: str, count: int, start: datetime = T0, step: timedelta = timedelta(hours=1)) -> list[AuditEntry]:
    """`count` linked entries, one per `step` from `start`, hashed exactly as the log hashes them."""
    entries, prev = [], GENESIS
    for i in range(count):
        seq, at = i + 1, (start + i * step).isoformat(timespec="microseconds")
        payload = {"role": "user", "content": f"message {seq}"}
        digest = entry_hash(tenant, seq, at, "key-1", "s1", "message", payload, prev)
        entries.append(AuditEntry(tenant, seq, at, "key-1", "s1", "message", payload, prev, digest))
        prev = digest
    return entries


def store(path: Path, entries: list[AuditEntry]) -> SqliteAuditLog:
    log = SqliteAuditLog(path)
    log.conn.executemany(
        "insert into audit_events values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(e.tenant, e.seq, e.at, e.actor, e.session, e.event_type, json.dumps(e.payload), e.prev_hash, e.hash)
         for e in entries],
    )  # fmt: skip
    return log


def seqs(log: SqliteAuditLog, tenant: str) -> list[int]:
    return [e.seq for e in log.query(tenant, limit=1000)]


# --- hashing and verify_chain ---------------------------------------------------------------------------------


def test_the_hash_is_sha256_over_every_field_in_a_stable_form() -> None:
    args = ("acme", 3, "2026-01-01T10:00:00.000000+00:00", "key-1", "s1", "message", {"b": 1, "a": "é"}, GENESIS)
    body = json.dumps(
        {"tenant": "acme", "seq": 3, "at": args[2], "actor": "key-1", "session": "s1", "event_type": "message",
         "payload": {"a": "é", "b": 1}, "prev_hash": GENESIS},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )  # fmt: skip
    assert entry_hash(*args) == hashlib.sha256(body.encode()).hexdigest()
    assert entry_hash(*args) == entry_hash(*args[:6], {"a": "é", "b": 1}, GENESIS)  # key order does not matter


@pytest.mark.parametrize("field", ["tenant", "seq", "at", "actor", "session", "event_type", "payload", "prev_hash"])
def test_changing_any_field_changes_the_hash(field: str) -> None:
    base: dict[str, Any] = {"tenant": "acme", "seq": 1, "at": "2026-01-01T10:00:00+00:00", "actor": "key-1",
                            "session": "s1", "event_type": "message", "payload": {"content": "hi"},
                            "prev_hash": GENESIS}  # fmt: skip
    changed = {**base, field: {"tenant": "other", "seq": 2, "at": "2026-01-01T10:00:01+00:00", "actor": "key-2",
                               "session": None, "event_type": "response", "payload": {"content": "hi!"},
                               "prev_hash": "f" * 64}[field]}  # fmt: skip
    assert entry_hash(**base) != entry_hash(**changed)


def test_an_intact_chain_verifies() -> None:
    result = verify_chain("acme", iter(chain("acme", 5)), None)
    assert (result.ok, result.checked, result.broken_seq) == (True, 5, None)
    assert verify_chain("acme", iter([]), None).ok


def test_an_edited_entry_is_named() -> None:
    entries = chain("acme", 5)
    entries[2] = replace(entries[2], payload={"role": "user", "content": "something else"})
    result = verify_chain("acme", iter(entries), None)
    assert (result.ok, result.broken_seq, result.checked) == (False, 3, 2)
    assert "edited" in result.reason


def test_an_edited_and_rehashed_entry_breaks_the_link_to_the_next() -> None:
    entries = chain("acme", 5)
    e = entries[2]
    payload = {"role": "user", "content": "something else"}
    entries[2] = replace(e, payload=payload, hash=entry_hash(e.tenant, e.seq, e.at, e.actor, e.session, e.event_type,
                                                             payload, e.prev_hash))  # fmt: skip
    result = verify_chain("acme", iter(entries), None)
    assert (result.ok, result.broken_seq) == (False, 4)
    assert "prev_hash" in result.reason


@pytest.mark.parametrize("index", [0, 2, 3])
def test_a_deleted_entry_is_named(index: int) -> None:
    entries = chain("acme", 5)
    del entries[index]
    result = verify_chain("acme", iter(entries), None)
    assert (result.ok, result.broken_seq) == (False, index + 1)
    assert "missing" in result.reason


def test_reordered_entries_are_named() -> None:
    entries = chain("acme", 5)
    entries[1], entries[2] = entries[2], entries[1]
    result = verify_chain("acme", iter(entries), None)
    assert (result.ok, result.broken_seq) == (False, 2)


def test_entries_renumbered_after_a_deletion_are_caught() -> None:
    entries = chain("acme", 5)
    del entries[1]
    renumbered = [replace(e, seq=i + 1) for i, e in enumerate(entries)]
    result = verify_chain("acme", iter(renumbered), None)
    assert (result.ok, result.broken_seq) == (False, 2)


def test_a_chain_after_an_anchor_starts_from_it() -> None:
    entries = chain("acme", 6)
    anchor = (entries[2].seq, entries[2].hash)
    assert verify_chain("acme", iter(entries[3:]), anchor).ok
    assert not verify_chain("acme", iter(entries[4:]), anchor).ok  # the first entry after the anchor is gone
    assert not verify_chain("acme", iter(entries[3:]), (3, "0" * 64)).ok  # an anchor that is not the real one


# --- the SQLite log ---------------------------------------------------------------------------------------


def test_appends_chain_per_tenant(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "audit.db")
    written = log.append([event("acme"), event("globex"), event("acme", "response")])
    written += log.append([event("globex", "session_deleted", team="x")])
    assert [(e.tenant, e.seq) for e in written] == [("acme", 1), ("globex", 1), ("acme", 2), ("globex", 2)]
    assert written[0].prev_hash == GENESIS and written[1].prev_hash == GENESIS
    assert written[2].prev_hash == written[0].hash and written[3].prev_hash == written[1].hash
    assert [e.to_dict() for e in log.query("acme")] == [written[0].to_dict(), written[2].to_dict()]
    assert log.tenants() == ["acme", "globex"]
    assert log.verify("acme").ok and log.verify("globex").ok
    assert datetime.fromisoformat(written[0].at).tzinfo is not None


def test_two_writers_on_one_file_extend_one_chain(tmp_path: Path) -> None:
    """Two processes' logs on the same file (here: two connections) read the head from the database."""
    first, second = SqliteAuditLog(tmp_path / "audit.db"), SqliteAuditLog(tmp_path / "audit.db")
    for i in range(6):
        (first if i % 2 else second).append([event()])
    assert seqs(first, "acme") == [1, 2, 3, 4, 5, 6]
    assert first.verify("acme").ok and second.verify("acme").checked == 6


def test_an_unknown_event_type_writes_nothing(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "audit.db")
    with pytest.raises(AuditWriteError):
        log.append([event(), event(event_type="coffee_break")])
    assert seqs(log, "acme") == []


def test_a_write_to_an_unusable_store_raises_audit_write_error(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "audit.db")
    log.append([event()])
    log.conn.execute("drop table audit_events")
    with pytest.raises(AuditWriteError):
        log.append([event()])
    with pytest.raises(sqlite3.Error):
        log.ping()
    log.close()
    with pytest.raises(AuditWriteError):
        log.append([event()])


@pytest.mark.parametrize(
    ("tamper", "broken"),
    [
        ('update audit_events set payload = \'{"content": "forged"}\' where seq = 3', 3),
        ("update audit_events set actor = 'someone-else' where seq = 2", 2),
        ("update audit_events set at = '2020-01-01T00:00:00.000000+00:00' where seq = 4", 4),
        ("delete from audit_events where seq = 3", 3),
        (
            "update audit_events set seq = -1 where seq = 2; update audit_events set seq = 2 where seq = 3;"
            " update audit_events set seq = 3 where seq = -1",
            2,
        ),
    ],
    ids=["edited payload", "edited actor", "edited time", "deleted", "reordered"],
)
def test_verify_on_a_file_names_the_tampered_row(tmp_path: Path, tamper: str, broken: int) -> None:
    log = SqliteAuditLog(tmp_path / "audit.db")
    log.append([event() for _ in range(5)])
    assert log.verify("acme").ok
    raw = sqlite3.connect(tmp_path / "audit.db")
    raw.executescript(tamper)
    raw.commit()
    raw.close()
    result = log.verify("acme")
    assert (result.ok, result.broken_seq) == (False, broken), result


# --- content policy -----------------------------------------------------------------------------------------


def test_content_policy_full_hash_none() -> None:
    payload = {"role": "user", "content": "my secret plan"}
    assert apply_content_policy(payload, "full") == payload
    assert apply_content_policy(payload, "hash") == {
        "role": "user",
        "content_sha256": hashlib.sha256(b"my secret plan").hexdigest(),
    }
    assert apply_content_policy(payload, "none") == {"role": "user"}
    assert payload == {"role": "user", "content": "my secret plan"}  # the caller's dict is left alone
    no_text = {"team": "interview"}
    assert apply_content_policy(no_text, "hash") == no_text and apply_content_policy(no_text, "none") == no_text


# --- prune ----------------------------------------------------------------------------------------------------


def test_prune_removes_older_entries_and_keeps_the_rest_verifiable(tmp_path: Path) -> None:
    log = store(tmp_path / "audit.db", chain("acme", 5) + chain("globex", 2))
    removed = log.prune(T0 + timedelta(hours=2, minutes=30))  # before entry 4 of acme (13:00) and after globex
    assert removed == 3 + 2
    assert seqs(log, "acme") == [4, 5]
    assert seqs(log, "globex") == []
    assert log.verify("acme").ok and log.verify("acme").checked == 2
    assert log.verify("globex").ok

    # the chain continues after the anchor, for a tenant with entries left and one without
    acme, globex = log.append([event("acme")])[0], log.append([event("globex")])[0]
    assert (acme.seq, globex.seq) == (6, 3)
    assert globex.prev_hash == chain("globex", 2)[-1].hash
    assert log.verify("acme").ok and log.verify("globex").ok

    # pruning again moves the anchor forward
    assert log.prune(datetime.now(UTC) + timedelta(seconds=1)) == 4
    log.append([event("acme")])
    assert seqs(log, "acme") == [7]
    assert log.verify("acme").ok


def test_a_pruned_chain_still_catches_a_deleted_first_entry(tmp_path: Path) -> None:
    log = store(tmp_path / "audit.db", chain("acme", 5))
    log.prune(T0 + timedelta(hours=1, minutes=30))
    log.conn.execute("delete from audit_events where tenant = 'acme' and seq = 3")
    result = log.verify("acme")
    assert (result.ok, result.broken_seq) == (False, 3)


def test_prune_with_a_cutoff_before_everything_removes_nothing(tmp_path: Path) -> None:
    log = store(tmp_path / "audit.db", chain("acme", 3))
    assert log.prune(T0 - timedelta(days=1)) == 0
    assert seqs(log, "acme") == [1, 2, 3]
    assert log.conn.execute("select count(*) from audit_anchors").fetchone()[0] == 0


@pytest.mark.parametrize("offset_hours", [2, -5, 0])
def test_prune_reads_the_cutoff_as_an_instant_whatever_its_utc_offset(tmp_path: Path, offset_hours: int) -> None:
    """Entries at 10:00, 11:00, 12:00 UTC; the cutoff 11:30 UTC, written in another offset, removes two."""
    log = store(tmp_path / "audit.db", chain("acme", 3))
    cutoff = (T0 + timedelta(hours=1, minutes=30)).astimezone(timezone(timedelta(hours=offset_hours)))
    removed = log.prune(cutoff)
    assert (removed, seqs(log, "acme")) == (2, [3])
    assert log.verify("acme").ok
