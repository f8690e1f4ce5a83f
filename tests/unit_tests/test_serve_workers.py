"""`teamgraph serve`'s worker count: --workers, then TEAMGRAPH_WORKERS, then one per core on PostgreSQL and one on
SQLite and memory:// (server.settings.default_workers says why)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import server.settings as settings_module
from server.settings import MAX_DEFAULT_WORKERS, Settings, default_workers, serve_workers

PG = "postgresql://u@db:5432/tg"


@pytest.fixture(autouse=True)
def _no_workers_in_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TEAMGRAPH_WORKERS", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(settings_module, "CGROUP_CPU_MAX", str(tmp_path / "no-cgroup"))


@pytest.mark.parametrize("url", ["sqlite:///./data/teamgraph.db", "memory://"])
def test_sqlite_and_memory_default_to_one_worker(url: str) -> None:
    assert default_workers(url) == 1
    count, why = serve_workers(Settings(_env_file=None, checkpoint_url=url))  # type: ignore[call-arg]
    assert count == 1 and "default" in why


@pytest.mark.parametrize("url", [PG, "postgres://u@db/tg?options=-csearch_path%3Dx"])
def test_postgres_defaults_to_one_worker_per_core_it_may_use(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_workers(url) == 3
    count, why = serve_workers(Settings(_env_file=None, checkpoint_url=url))  # type: ignore[call-arg]
    assert count == 3 and "one per CPU core" in why
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_workers(url) == MAX_DEFAULT_WORKERS


def test_the_flag_then_the_environment_then_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None, checkpoint_url=PG)  # type: ignore[call-arg]
    assert serve_workers(settings, 5) == (5, "--workers")
    monkeypatch.setenv("TEAMGRAPH_WORKERS", "1")  # one worker on Postgres, asked for explicitly
    assert serve_workers(Settings(_env_file=None, checkpoint_url=PG)) == (1, "TEAMGRAPH_WORKERS")  # type: ignore[call-arg]
    assert serve_workers(Settings(_env_file=None, checkpoint_url=PG), 2) == (2, "--workers")  # type: ignore[call-arg]


def test_a_dotenv_setting_counts_as_set(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"TEAMGRAPH_WORKERS=1\nTEAMGRAPH_CHECKPOINT_URL={PG}\n")
    assert serve_workers(Settings()) == (1, "TEAMGRAPH_WORKERS")


@pytest.mark.parametrize(
    ("cpu_max", "workers"), [("100000 100000", 1), ("250000 100000", 2), ("max 100000", 3), ("garbage", 3)]
)
def test_a_cgroup_cpu_quota_caps_the_postgres_default(
    cpu_max: str, workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container limited to fewer CPUs than its machine shows (three cores here) runs as many workers as whole
    CPUs its quota gives it, not one per core of the node."""
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    monkeypatch.setattr(settings_module, "CGROUP_CPU_MAX", str(tmp_path / "cpu.max"))
    assert default_workers(PG) == workers
