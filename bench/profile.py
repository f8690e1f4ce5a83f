"""Profile one load against Teamgraph's server, or in-process LangGraph, and print where the time goes.

    .venv/bin/pip install pyinstrument     # a profiling tool for your own runs; not a dependency of the bench
    python -m bench.profile server --team veneo_chat --mode invoke --concurrency 1 --seconds 20
    python -m bench.profile inprocess --team veneo_chat --concurrency 1 --seconds 20

`server` runs Teamgraph's app (`bench.asgi_profiled:app`: `bench.asgi:app` with pyinstrument sampling the event
loop's thread every 0.5 ms) under uvicorn, drives the load from this process, stops the server and prints the
profile; `inprocess` samples this process running `graph.ainvoke`. Time is wall time of the loop thread:
blocking calls made on it (SQLite commits, file locks) count, time the loop sits idle waiting shows as
`select`/`run_forever` self time. Reports land in bench/results/profiles/ (`.txt`, and `.pyisession` for
`pyinstrument --load`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bundle import make_bench_bundles
from bench.drivers import TeamgraphHTTP, script
from bench.measure import run_cell, warm_up
from bench.procs import REPO, TeamgraphServer, stop_all

OUT = REPO / "bench" / "results" / "profiles"


def _name(frame: Any) -> str:
    path = frame.file_path_short or frame.file_path or "?"
    for marker in ("site-packages/", str(REPO) + "/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{frame.function}"


def inclusive_times(session: Any) -> tuple[float, collections.Counter[str]]:
    """Time under each function (counted once per stack), over the whole session."""
    totals: collections.Counter[str] = collections.Counter()
    root = session.root_frame()
    if root is None:
        return 0.0, totals
    stack: list[tuple[Any, frozenset[str]]] = [(root, frozenset())]
    while stack:
        frame, above = stack.pop()
        name = _name(frame)
        if name not in above:
            totals[name] += frame.time
        for child in frame.children:
            stack.append((child, above | {name}))
    return root.time, totals


def pyinstrument_report(session: Any, top: int = 60) -> str:
    from pyinstrument.renderers import ConsoleRenderer

    total, inclusive = inclusive_times(session)
    lines = [f"{session.duration:.1f} s profiled, {session.sample_count} samples", "", "inclusive:"]
    for name, t in inclusive.most_common(top):
        lines.append(f"  {100 * t / total:5.1f}%  {t:8.3f} s  {name}")
    flat = ConsoleRenderer(flat=True, unicode=False, color=False, show_all=True, time="percent_of_total")
    lines += ["", "self (flat):", flat.render(session)[:6000]]
    return "\n".join(lines)


async def _server_load(url: str, team: str, mode: str, concurrency: int, seconds: float) -> str:
    driver = TeamgraphHTTP(url)
    try:
        if mode == "stream_events":
            end, n, t0 = time.perf_counter() + seconds, 0, time.perf_counter()
            while time.perf_counter() < end:
                thread = await driver.new_thread(team)
                for spec in script(team):
                    await driver.first_token(team, thread, spec)
                    n += 1
            return f"{n} turns in {time.perf_counter() - t0:.1f} s"
        await warm_up(driver, (mode,), (team,))
        cell = await run_cell(driver, mode, team, concurrency, seconds, 10**6, mode)
        return (
            f"{cell.n} turns, p50 {cell.p(50) * 1000:.2f} ms, {cell.throughput:.1f} turns/s, errors {cell.errors[:2]}"
        )
    finally:
        await driver.aclose()


def profile_server(args: argparse.Namespace) -> Path:
    out = OUT / f"server-{args.team}-{args.mode}-c{args.concurrency}"
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="teamgraph-profile-"))
    try:
        bundles = make_bench_bundles(workdir / "personas")
        server = TeamgraphServer(
            workdir / "tg",
            workdir / "tg.db",
            bundles,
            app="bench.asgi_profiled:app",
            env={"TEAMGRAPH_BENCH_PROFILE_OUT": str(out)},
        )
        with server:
            print("load:", asyncio.run(_server_load(server.url, args.team, args.mode, args.concurrency, args.seconds)))
        return out.with_suffix(".txt")  # written by the server at exit
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _inproc_load(team: str, concurrency: int, seconds: float) -> str:
    from bench.drivers import InProcess
    from bench.fake_model import BenchFactory
    from server.engine import Engine
    from server.settings import Settings

    workdir = Path(tempfile.mkdtemp(prefix="teamgraph-profile-"))
    try:
        bundles = make_bench_bundles(workdir / "personas")
        url = f"sqlite:///{workdir}/inproc.db"
        settings = Settings(_env_file=None, checkpoint_url=url, personas_dir=bundles)  # type: ignore[call-arg]
        async with Engine.open(settings, agent_factory=BenchFactory()) as engine:
            driver = InProcess(engine)
            await warm_up(driver, ("ainvoke",), (team,))
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
            cell = await run_cell(driver, "ainvoke", team, concurrency, seconds, 10**6, "ainvoke")
            _PROFILE["session"] = profiler.stop()
            return f"{cell.n} turns, p50 {cell.p(50) * 1000:.2f} ms, {cell.throughput:.1f} turns/s"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_PROFILE: dict[str, Any] = {}


def profile_inprocess(args: argparse.Namespace) -> Path:
    import uvloop

    out = OUT / f"inprocess-{args.team}-c{args.concurrency}"
    out.parent.mkdir(parents=True, exist_ok=True)
    print("load:", uvloop.run(_inproc_load(args.team, args.concurrency, args.seconds)))
    session = _PROFILE["session"]
    session.save(str(out.with_suffix(".pyisession")))
    out.with_suffix(".txt").write_text(pyinstrument_report(session))
    return out.with_suffix(".txt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("target", choices=["server", "inprocess"])
    parser.add_argument("--team", default="veneo_chat", choices=["veneo_chat", "interview"])
    parser.add_argument("--mode", default="invoke", choices=["invoke", "stream", "stream_events"])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    try:
        out = profile_server(args) if args.target == "server" else profile_inprocess(args)
    finally:
        stop_all()
    print(f"profile: {out}\n")
    print(out.read_text()[:12000] if out.exists() else "(no profile written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
