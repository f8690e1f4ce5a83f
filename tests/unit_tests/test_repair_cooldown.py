"""The self-repair cooldown (checkpoints/self_repair.py): a missing object that two repairs in a row met without
recreating anything (a column no schema step adds: a typo in new code) is not repaired on every request, while
any other missing object is repaired at once. `setup` here is a stand-in that counts the repairs (the real one
runs every schema step; tests/integration_tests/test_session_integrity.py drives it on both databases)."""

from __future__ import annotations

import asyncio
import sqlite3

import psycopg.errors

from checkpoints.audit import AuditWriteError
from checkpoints.self_repair import Recreated, StorageRepair, fault_key


def wrapped(cause: BaseException) -> AuditWriteError:
    """What an audited write raises: the database's error as its cause."""
    try:
        raise AuditWriteError(f"audit log write failed: {cause}") from cause
    except AuditWriteError as exc:
        return exc


def repairs_for(faults: list[BaseException], recreate_at: frozenset[int] = frozenset()) -> list[bool]:
    """For each fault in turn: whether it got a repair (`setup` ran)."""
    ran: list[int] = []

    async def setup() -> Recreated:
        ran.append(1)
        return Recreated(session_index=len(ran) - 1 in recreate_at)

    async def go() -> list[bool]:
        repair = StorageRepair(backend="sqlite", setup=setup)
        out = []
        for fault in faults:
            before = len(ran)
            await repair.after_fault(fault)
            out.append(len(ran) > before)
        return out

    return asyncio.run(go())


def test_the_same_missing_column_is_one_fault_whatever_statement_met_it() -> None:
    assert {
        fault_key(sqlite3.OperationalError("no such column: titel")),
        fault_key(wrapped(sqlite3.OperationalError("table sessions has no column named titel"))),
        fault_key(psycopg.errors.UndefinedColumn('column "titel" does not exist\nLINE 1: select titel ...')),
        fault_key(wrapped(psycopg.errors.UndefinedColumn('column "titel" of relation "sessions" does not exist'))),
    } == {"titel"}
    assert fault_key(sqlite3.OperationalError("no such table: main.sessions")) == "sessions"
    assert fault_key(psycopg.errors.UndefinedTable('relation "sessions" does not exist')) == "sessions"


def test_a_fault_met_by_reads_and_writes_in_turn_still_cools_down() -> None:
    """Found in review: the fault was keyed by the outermost error's first line, so a read ("no such column: x")
    and an audited write (AuditWriteError, "has no column named x") in turn reset the count: every request ran
    every schema step."""
    read = sqlite3.OperationalError("no such column: titel")
    write = wrapped(sqlite3.OperationalError("table sessions has no column named titel"))
    assert repairs_for([read, write, read, write, read]) == [True, True, False, False, False]


def test_another_missing_object_is_repaired_at_once_and_cools_down_on_its_own() -> None:
    """Found in review: one shared cooldown slot: after a fault had cooled down, another fault's single no-op
    repair (a sibling repaired first) put that other fault in the first one's cooldown."""
    typo = sqlite3.OperationalError("no such column: titel")
    dropped = sqlite3.OperationalError("no such table: session_deletions")
    assert repairs_for([typo, typo, typo, dropped, dropped, dropped, typo]) == [
        True, True, False,  # the typo cools down after two repairs that found nothing
        True, True, False,  # the other fault gets its own two
        False,  # and the typo is still cooling down
    ]  # fmt: skip


def test_a_repair_that_recreated_something_ends_every_cooldown() -> None:
    typo = sqlite3.OperationalError("no such column: titel")
    dropped = sqlite3.OperationalError("no such table: sessions")
    # repairs 0 and 1 find nothing; repair 2 (the dropped table) recreates it: the typo is repaired again after
    assert repairs_for([typo, typo, typo, dropped, typo], recreate_at=frozenset({2})) == [
        True, True, False, True, True
    ]  # fmt: skip
