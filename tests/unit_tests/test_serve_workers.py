"""`teamgraph serve`'s default worker count: one per core on PostgreSQL, one on SQLite and memory://."""

from __future__ import annotations

import os

import pytest

from server.settings import MAX_DEFAULT_WORKERS, Settings, default_workers


@pytest.mark.parametrize("url", ["sqlite:///./data/teamgraph.db", "memory://"])
def test_sqlite_and_memory_default_to_one_worker(url: str) -> None:
    assert default_workers(url) == 1


@pytest.mark.parametrize("url", ["postgresql://u@db:5432/tg", "postgres://u@db/tg?options=-csearch_path%3Dx"])
def test_postgres_defaults_to_one_worker_per_core_it_may_use(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert default_workers(url) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_workers(url) == MAX_DEFAULT_WORKERS


def test_teamgraph_workers_unset_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEAMGRAPH_WORKERS", raising=False)
    assert Settings(_env_file=None).workers is None  # type: ignore[call-arg]
    monkeypatch.setenv("TEAMGRAPH_WORKERS", "3")
    assert Settings(_env_file=None).workers == 3  # type: ignore[call-arg]
