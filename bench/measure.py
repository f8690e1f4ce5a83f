"""Measurement loops: bounded in time and in count, each worker on its own session (thread)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.drivers import Driver, TurnSpec, script
from bench.procs import tree_pids

_TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds the whole machine was busy (all cores; steal counts: time the VM did not get)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _own_busy_s() -> float:
    """CPU seconds used by this process and everything it started (the servers under test)."""
    total = 0
    for pid in tree_pids(os.getpid()):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


class OtherLoad:
    """How many cores processes outside the bench kept busy while a measurement ran (noise on a shared box)."""

    def __enter__(self) -> OtherLoad:
        self.t0, self.machine0, self.own0 = time.perf_counter(), _machine_busy_s(), _own_busy_s()
        self.cores = math.nan
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        other = (_machine_busy_s() - self.machine0) - (_own_busy_s() - self.own0)
        self.cores = max(0.0, other / wall) if wall > 0 else math.nan


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Cell:
    """One (team, mode, concurrency) measurement."""

    team: str
    mode: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    other_cores: float = math.nan  # CPU used by processes outside the bench meanwhile, in cores
    cpu_s: float = math.nan  # CPU seconds of the process(es) doing the work (the servers; in-process: the bench)
    lock_wait_s: float = math.nan  # seconds the cell's turns waited for their turn lock, in total
    lock_waits: int = 0  # turns those seconds are over

    @property
    def n(self) -> int:
        return len(self.latencies)

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def throughput(self) -> float:
        return self.n / self.wall_s if self.wall_s > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "team": self.team,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "n": self.n,
            "p50_ms": self.p(50) * 1000,
            "p95_ms": self.p(95) * 1000,
            "p99_ms": self.p(99) * 1000,
            "turns_per_s": self.throughput,
            "errors": self.errors[:5],
            "error_count": len(self.errors),
            "other_cores": self.other_cores,
            "cpu_ms_per_turn": self.cpu_s / self.n * 1000 if self.n else math.nan,
            "lock_wait_ms_mean": self.lock_wait_s / self.lock_waits * 1000 if self.lock_waits else math.nan,
            "lock_wait_ms_total": self.lock_wait_s * 1000,
            "lock_waits": self.lock_waits,
        }


async def run_cell(
    driver: Driver,
    variant: str,
    team: str,
    concurrency: int,
    duration_s: float,
    max_turns: int,
    mode: str,
) -> Cell:
    """`concurrency` workers, each running conversations of `team` on its own threads, one turn at a time,
    until `duration_s` has passed or `max_turns` turns have started. Thread creation is not timed."""
    cell = Cell(team, mode, concurrency)
    turns = script(team)
    started = 0
    deadline = time.perf_counter() + duration_s
    max_errors = 20

    async def worker() -> None:
        nonlocal started
        while True:
            try:
                thread = await driver.new_thread(team)
            except Exception as exc:  # recorded and reported; this worker stops
                cell.errors.append(f"new thread: {type(exc).__name__}: {str(exc)[:200]}")
                return
            for spec in turns:
                if time.perf_counter() >= deadline or started >= max_turns or len(cell.errors) >= max_errors:
                    _forget(driver, thread)
                    return
                started += 1
                t = time.perf_counter()
                try:
                    await driver.turn(variant, team, thread, spec)
                except Exception as exc:  # recorded and reported; the cell goes on
                    cell.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                    break
                cell.latencies.append(time.perf_counter() - t)
            _forget(driver, thread)

    lock0 = await driver.lock_wait()
    cpu0 = driver.cpu_s()
    with OtherLoad() as load:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cell.wall_s = time.perf_counter() - t0
    cpu1 = driver.cpu_s()
    lock1 = await driver.lock_wait()
    cell.other_cores = load.cores
    if cpu0 is not None and cpu1 is not None:
        cell.cpu_s = cpu1 - cpu0
    if lock0 is not None and lock1 is not None:
        cell.lock_wait_s, cell.lock_waits = lock1[0] - lock0[0], lock1[1] - lock0[1]
    return cell


def _forget(driver: Driver, thread: str) -> None:
    forget = getattr(driver, "forget", None)
    if forget is not None:
        forget(thread)


async def warm_up(driver: Driver, variants: tuple[str, ...], teams: tuple[str, ...], turns: int = 100) -> None:
    """A conversation (its first `turns` turns) per team and variant: imports, caches, connections are ready."""
    for team in teams:
        for variant in variants:
            thread = await driver.new_thread(team)
            for spec in script(team)[:turns]:
                await driver.turn(variant, team, thread, spec)
            _forget(driver, thread)


# ------------------------------------------------------------------------------------------ checkpoint bytes


class CheckpointBytes:
    """Bytes of a thread's rows in an AsyncSqliteSaver file: checkpoints (checkpoint + metadata blobs) and
    writes (pending-write values), read through a separate read-only connection (WAL: never blocks writers)."""

    def __init__(self, db: Path):
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)

    def of(self, thread_id: str) -> dict[str, int]:
        c = self.conn.execute(
            "select count(*), coalesce(sum(length(checkpoint) + length(metadata)), 0) from checkpoints "
            "where thread_id = ?",
            [thread_id],
        ).fetchone()
        w = self.conn.execute(
            "select count(*), coalesce(sum(length(value)), 0) from writes where thread_id = ?", [thread_id]
        ).fetchone()
        s = (0, 0)
        with contextlib.suppress(sqlite3.OperationalError):  # no store table (yet)
            s = self.conn.execute(
                "select count(*), coalesce(sum(length(value)), 0) from store where prefix = ?",
                [f"transcripts.{thread_id}"],
            ).fetchone()
        return {
            "checkpoints": c[0],
            "checkpoint_bytes": c[1],
            "writes": w[0],
            "write_bytes": w[1],
            "store_items": s[0],
            "store_bytes": s[1],
        }

    def close(self) -> None:
        self.conn.close()


@dataclass
class GrowthPoint:
    turn: int
    latency_s: float
    bytes: int  # checkpoint + write bytes this turn added
    checkpoints: int
    store_bytes: int
    messages: int


async def run_growth(
    driver: Driver, variant: str, team: str, specs: Callable[[int], TurnSpec], db: Path, turns: int
) -> list[GrowthPoint]:
    """`turns` turns on one thread; per turn: latency, checkpoint bytes written, messages left in state."""
    meter = CheckpointBytes(db)
    try:
        thread = await driver.new_thread(team)
        before = meter.of(thread)
        points = []
        for i in range(turns):
            t = time.perf_counter()
            state = await driver.turn(variant, team, thread, specs(i))
            latency = time.perf_counter() - t
            after = meter.of(thread)
            points.append(
                GrowthPoint(
                    turn=i + 1,
                    latency_s=latency,
                    bytes=(after["checkpoint_bytes"] + after["write_bytes"])
                    - (before["checkpoint_bytes"] + before["write_bytes"]),
                    checkpoints=after["checkpoints"] - before["checkpoints"],
                    store_bytes=after["store_bytes"] - before["store_bytes"],
                    messages=len((state or {}).get("messages", [])),
                )
            )
            before = after
        _forget(driver, thread)
        return points
    finally:
        meter.close()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan
