"""`teamgraph` commands: a database fault is one line; a refusal by the audit log itself (a bug) keeps its stack."""

from __future__ import annotations

import sqlite3

import pytest
import typer

from checkpoints.audit import AuditWriteError
from server.cli import _run


async def refused_by_the_log() -> None:
    raise AuditWriteError("unknown audit event type 'sesion_created'")  # no database cause: a bug


async def a_database_fault() -> None:
    cause = sqlite3.OperationalError("disk I/O error")
    raise AuditWriteError(f"audit log write failed: {cause}") from cause


def test_a_fault_of_the_database_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit):
        _run(a_database_fault())
    assert "storage unavailable: audit log write failed: disk I/O error" in capsys.readouterr().err


def test_a_write_the_log_itself_refused_is_not_called_a_storage_fault() -> None:
    """Found in review: the CLI's one line for storage faults also caught this (exit 1, 'storage unavailable'),
    hiding a bug behind an operator's message."""
    with pytest.raises(AuditWriteError, match="unknown audit event type"):
        _run(refused_by_the_log())
