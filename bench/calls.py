"""Python function calls per turn: a count, not a time, so a loaded machine does not move it.

    python -m bench.calls                       # the working tree: in-process ainvoke and the server's /invoke
    python -m bench.calls --rev main --team interview   # that revision too (from a git worktree), side by side
    python -m bench.calls --mode stream --ablate observer  # astream and /stream; with the observer switched off

Each turn of the bench conversations (`bench.drivers.script`) runs once as in-process `graph.ainvoke` (the
report's in-process rows) and once as `POST /teams/{team}/invoke` through the whole app (`create_app` with the
bench model, every middleware, LangServe, auth, sessions, audit, observer) driven in the same process by an httpx
client on the ASGI interface: no sockets and no uvicorn, so it measures the app's own Python work per request
(plus the httpx client's, about the same in every revision). cProfile counts every function call, C functions
and coroutine resumptions included, on the event loop's thread only (what worker threads do, audit and session
writes in `asyncio.to_thread`, aiosqlite's queries, is not counted); the difference between the two rows is the
server's fixed cost in calls on the loop.
CPU ms per turn (process time, without the profiler) is printed beside it, but it moves with the machine's load;
the count does not (to within a fraction of a percent). Each new conversation's session is created inside the
count in both modes (`Engine.create_session`, `POST /sessions`): one per 10 chat turns, one per 4 interview turns.
Prints only; nothing is written.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


async def _count(run_turns: Callable[[int], Awaitable[None]], turns: int) -> dict[str, float]:
    await run_turns(30)  # warm: imports, caches, connections
    t = time.process_time()
    await run_turns(turns)
    cpu = (time.process_time() - t) / turns
    profile = cProfile.Profile()
    profile.enable()
    await run_turns(turns)
    profile.disable()
    return {"calls": pstats.Stats(profile).total_calls / turns, "cpu_ms": cpu * 1000}  # type: ignore[attr-defined]


async def measure(team: str, turns: int, mode: str = "invoke") -> dict[str, dict[str, float]]:
    import httpx

    from bench.bundle import make_bench_bundles
    from bench.drivers import KEYS, TENANT, InProcess, TeamgraphHTTP, script
    from bench.fake_model import BenchFactory
    from server.app import create_app
    from server.engine import Engine
    from server.settings import Settings

    workdir = Path(tempfile.mkdtemp(prefix="teamgraph-calls-"))
    try:
        bundles = make_bench_bundles(workdir / "personas")

        def settings(name: str) -> Any:
            return Settings(_env_file=None, checkpoint_url=f"sqlite:///{workdir}/{name}.db", personas_dir=bundles)  # type: ignore[call-arg]

        out: dict[str, dict[str, float]] = {}
        async with Engine.open(settings("inproc"), agent_factory=BenchFactory()) as engine:
            driver = InProcess(engine)

            async def inprocess(n: int) -> None:
                done = 0
                while done < n:
                    thread = await driver.new_thread(team)
                    for spec in script(team)[: n - done]:
                        await driver.turn("a" + mode, team, thread, spec)
                        done += 1

            out[f"in-process a{mode}"] = await _count(inprocess, turns)

        app = create_app(settings("server"), agent_factory=BenchFactory())
        headers = {"Authorization": f"Bearer {KEYS[TENANT[team]]}"}
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
        ):

            async def server(n: int) -> None:
                done = 0
                while done < n:
                    created = await client.post("/sessions", json={"team": team}, headers=headers)
                    thread = created.json()["id"]
                    for spec in script(team)[: n - done]:
                        r = await client.post(
                            f"/teams/{team}/{mode}", json=TeamgraphHTTP._body(thread, spec), headers=headers
                        )
                        if r.status_code != 200 or (mode == "stream" and "event: end" not in r.text):
                            raise RuntimeError(f"/{mode} {r.status_code}: {r.text[:300]}")
                        done += 1

            out[f"server /{mode} (ASGI)"] = await _count(server, turns)
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _in_subprocess(
    tree: Path, team: str, turns: int, ablate: str = "", mode: str = "invoke"
) -> dict[str, dict[str, float]]:
    """`measure` in a fresh process on `tree`'s code: its product, and its bench model and drivers (as
    `bench.compare` runs a revision's server). This file is loaded by path, so a revision without it works too."""
    code = (
        "import asyncio, importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('teamgraph_bench_calls', {str(Path(__file__).resolve())!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        f"pieces = {sorted(p for p in ablate.split(',') if p)!r}\n"
        "if pieces:\n"
        "    from bench.ablation import apply\n"
        "    if sorted(apply(set(pieces))) != pieces: raise SystemExit(f'cannot switch off all of {pieces}')\n"
        f"result = asyncio.run(module.measure({team!r}, {turns}, {mode!r}))\n"
        "sys.stdout.flush()\n"
        "print(json.dumps(result))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"counting on {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, dict[str, float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calls", description=__doc__.splitlines()[0])
    parser.add_argument("--team", default="veneo_chat", choices=["veneo_chat", "interview"])
    parser.add_argument("--turns", type=int, default=200, help="turns counted per mode")
    parser.add_argument(
        "--mode", default="invoke", choices=["invoke", "stream"], help="ainvoke and /invoke, or astream and /stream"
    )
    parser.add_argument("--rev", help="also count this git revision (from a temporary git worktree)")
    parser.add_argument(
        "--ablate",
        default="",
        help="switch these pieces off in the counting process, comma-separated (bench.ablation: observer, audit, "
        "spans, touch, logs): what they cost is the difference to a run without this",
    )
    args = parser.parse_args(argv)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    if args.rev:
        workdir = Path(tempfile.mkdtemp(prefix="teamgraph-calls-rev-"))
        tree = workdir / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), args.rev], check=True)
        try:
            rows[args.rev] = _in_subprocess(tree, args.team, args.turns, args.ablate, args.mode)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
            shutil.rmtree(workdir, ignore_errors=True)
    rows["working tree"] = _in_subprocess(REPO, args.team, args.turns, args.ablate, args.mode)
    for label, result in rows.items():
        base = result[f"in-process a{args.mode}"]["calls"]
        for mode, m in result.items():
            extra = f"  {m['calls'] - base:+8.0f} over in-process" if not mode.startswith("in-process") else ""
            print(
                f"{args.team:<10} {label:<14} {mode:<22} {m['calls']:8.0f} calls/turn{extra}"
                f"  (CPU {m['cpu_ms']:.2f} ms/turn)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
