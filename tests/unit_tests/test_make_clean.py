"""`make clean` removes the virtualenv and the tools' caches and keeps ./data (every session and the audit log); it
ran `rm -rf data`, which no doc mentioned. `make clean-data` deletes ./data and says what it deletes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


def make(cwd: Path, target: str) -> str:
    done = subprocess.run(
        ["make", "-f", str(MAKEFILE), target], cwd=cwd, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_clean_keeps_the_sessions_and_clean_data_deletes_them(tmp_path: Path) -> None:
    for directory in (".venv/bin", ".pytest_cache", ".mypy_cache", ".ruff_cache", "data/voice"):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "data" / "teamgraph.db").write_bytes(b"sessions")

    make(tmp_path, "clean")
    assert not any((tmp_path / d).exists() for d in (".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache"))
    assert (tmp_path / "data" / "teamgraph.db").read_bytes() == b"sessions"

    said = make(tmp_path, "clean-data")
    assert "every stored session" in said and "audit log" in said
    assert not (tmp_path / "data").exists()
