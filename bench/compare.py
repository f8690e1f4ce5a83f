"""A/B two versions of Teamgraph's server on this machine, in the same minutes.

    python -m bench.compare 10b3a37                      # that commit against the working tree
    python -m bench.compare 10b3a37 --team interview --seconds 10 --rounds 3
    python -m bench.compare main --mode stream --concurrency 1 --inprocess   # with an in-process astream cell
    python -m bench.compare main --mode first-token --inprocess   # time to the chat's first token (/stream_events)
    python -m bench.compare 10b3a37 --postgres           # both on Postgres (a scratch database each)
    python -m bench.compare HEAD --backends sqlite,postgres   # one code on SQLite and on Postgres, same minutes

On a shared machine two runs of the full bench hours apart differ by more than most changes do; this runs both
servers at once (the other revision from a `git worktree`, on the same Python environment and the same bench
bundles) and interleaves their `/invoke` (or `/stream`) cells at concurrency 1 and 32, so drift hits both alike.
`--inprocess` adds a cell of the same graphs run in this process (`ainvoke` / `astream` on the engine's own
SQLite checkpointer, as the report's in-process rows) before each server cell, and prints each server's p50 over
it: the ratio the report's fixed-cost goal is about, on the same seconds. `--mode first-token` times the chat
responder's first token instead, as the report's first-token row does (`/stream_events` against in-process
`astream(stream_mode="messages")`, concurrency 1, a conversation per server in turn), and prints p50 and p95
and, with `--inprocess`, the p50 over in-process in ms (the goal is within 5 ms). Each server row also gives the server
process's CPU time per turn (from /proc), which other load on the machine disturbs less than latency. It prints a
table and writes nothing else; the revision's worktree is removed at the end. Use it to check a change, and quote
it with the revision and the date: it is not the reference report (`make bench-full`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.bundle import make_bench_bundles
from bench.drivers import Driver, InProcess, TeamgraphHTTP, script
from bench.measure import percentile, run_cell, warm_up
from bench.postgres import base_url as postgres_base_url
from bench.postgres import scratch_database
from bench.procs import REPO, TeamgraphServer, stop_all

INPROCESS_VARIANT = {"invoke": "ainvoke", "stream": "astream"}


async def _compare(
    servers: dict[str, TeamgraphServer],
    team: str,
    seconds: float,
    rounds: int,
    mode: str = "invoke",
    concurrencies: tuple[int, ...] = (1, 32),
    inprocess_db: Path | None = None,
    bundles: Path | None = None,
) -> None:
    drivers: dict[str, Driver] = {label: TeamgraphHTTP(server.url, server) for label, server in servers.items()}
    first_token = mode == "first-token"
    if first_token:
        mode = "stream"  # warm-up and the in-process variant: astream
    variants = {label: mode for label in drivers}
    async with contextlib.AsyncExitStack() as stack:
        for driver in drivers.values():
            stack.push_async_callback(driver.aclose)
        if inprocess_db is not None:
            from bench.fake_model import BenchFactory
            from server.engine import Engine
            from server.settings import Settings

            settings = Settings(_env_file=None, checkpoint_url=f"sqlite:///{inprocess_db}", personas_dir=bundles)  # type: ignore[call-arg]
            engine = await stack.enter_async_context(Engine.open(settings, agent_factory=BenchFactory()))
            drivers = {"in-process": InProcess(engine), **drivers}
            variants["in-process"] = INPROCESS_VARIANT[mode]
        for label, driver in drivers.items():
            await warm_up(driver, (variants[label],), (team,))
        if first_token:
            await _first_tokens(drivers, team, seconds, rounds)
            return
        for c in concurrencies:
            p50: dict[str, list[float]] = {label: [] for label in drivers}
            cpu: dict[str, list[float]] = {label: [] for label in drivers}
            tps: dict[str, list[float]] = {label: [] for label in drivers}
            ratio: dict[str, list[float]] = {label: [] for label in drivers}
            wait: dict[str, list[float]] = {label: [] for label in drivers}
            errors = dict.fromkeys(drivers, 0)
            for round_ in range(rounds):
                # the in-process cell first (the ratios are to it); the two servers swap places every round: with
                # a fixed order the second server measured a higher p50 than the first on one and the same code
                pair = [item for item in drivers.items() if item[0] != "in-process"]
                inprocess = [item for item in drivers.items() if item[0] == "in-process"]
                for label, driver in inprocess + (pair[::-1] if round_ % 2 else pair):
                    cell = await run_cell(driver, variants[label], team, c, seconds, 10**6, variants[label])
                    d = cell.as_dict()
                    p50[label].append(cell.p(50) * 1000)
                    tps[label].append(cell.throughput)
                    if not math.isnan(d["cpu_ms_per_turn"]):
                        cpu[label].append(d["cpu_ms_per_turn"])
                    if not math.isnan(d["lock_wait_ms_mean"]):
                        wait[label].append(d["lock_wait_ms_mean"])
                    errors[label] += len(cell.errors)
                    if "in-process" in p50 and label != "in-process":
                        ratio[label].append(p50[label][-1] / p50["in-process"][-1])
            for label in drivers:
                endpoint = variants[label] if label == "in-process" else f"/{mode}"
                over = f"  {statistics.median(ratio[label]):5.2f}x in-process" if ratio[label] else ""
                over += f"  server CPU {statistics.median(cpu[label]):5.2f} ms/turn" if cpu[label] else ""
                over += f"  lock wait {statistics.median(wait[label]):5.2f} ms" if wait[label] else ""
                print(
                    f"{team:<10} c={c:<2} {label:<24} {endpoint:<8} p50 {statistics.median(p50[label]):8.2f} ms  "
                    f"{statistics.median(tps[label]):7.1f} turns/s  errors {errors[label]}{over}",
                    flush=True,
                )


async def _first_tokens(drivers: dict[str, Driver], team: str, seconds: float, rounds: int) -> None:
    """Time to the chat responder's first token, each driver `seconds` of whole conversations per round (the
    in-process one first, the two servers swapping places every round)."""
    samples: dict[str, list[float]] = {label: [] for label in drivers}
    over: dict[str, list[float]] = {label: [] for label in drivers}
    missing = dict.fromkeys(drivers, 0)
    for round_ in range(rounds):
        pair = [item for item in drivers.items() if item[0] != "in-process"]
        order = [item for item in drivers.items() if item[0] == "in-process"] + (pair[::-1] if round_ % 2 else pair)
        cell: dict[str, list[float]] = {}
        for label, driver in order:
            cell[label] = []
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                thread = await driver.new_thread(team)
                for spec in script(team):
                    result = await driver.first_token(team, thread, spec)
                    if result.first_token_s is None:
                        missing[label] += 1
                    else:
                        cell[label].append(result.first_token_s * 1000)
                forget = getattr(driver, "forget", None)
                if forget is not None:
                    forget(thread)
            samples[label] += cell[label]
        if "in-process" in cell:
            for label in cell:
                over[label].append(statistics.median(cell[label]) - statistics.median(cell["in-process"]))
    for label, values in samples.items():
        endpoint = "astream" if label == "in-process" else "/stream_events"
        extra = (
            f"  {statistics.median(over[label]):+6.2f} ms over in-process"
            if label != "in-process" and over[label]
            else ""
        )
        print(
            f"{team:<10} c=1  {label:<24} {endpoint:<14} first token p50 {statistics.median(values):7.2f} ms  "
            f"p95 {percentile(values, 95):7.2f} ms  n={len(values)} (no token: {missing[label]}){extra}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="git revision to compare against the working tree")
    parser.add_argument("--team", default="veneo_chat", choices=["veneo_chat", "interview"])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each cell")
    parser.add_argument("--rounds", type=int, default=2, help="cells per server and concurrency (medians)")
    parser.add_argument(
        "--mode",
        default="invoke",
        choices=["invoke", "stream", "first-token"],
        help="the endpoint timed; first-token: /stream_events up to the chat's first token",
    )
    parser.add_argument("--concurrency", default="1,32", help="comma-separated concurrencies (default 1,32)")
    parser.add_argument(
        "--inprocess", action="store_true", help="add an in-process cell before each server cell; print ratios"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="both servers on Postgres (TEAMGRAPH_BENCH_POSTGRES_URL; scratch dbs)"
    )
    parser.add_argument(
        "--backends",
        help="the revision's and the working tree's databases, e.g. sqlite,postgres (default: both sqlite, or both"
        " postgres with --postgres)",
    )
    args = parser.parse_args(argv)
    backends = (args.backends or ("postgres,postgres" if args.postgres else "sqlite,sqlite")).split(",")
    if len(backends) != 2 or not set(backends) <= {"sqlite", "postgres"}:
        parser.error("--backends: two of sqlite, postgres, comma-separated")

    workdir = Path(tempfile.mkdtemp(prefix="teamgraph-compare-"))
    other = workdir / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(other), args.rev], check=True)
    try:
        if not (other / "bench" / "asgi.py").exists():
            raise SystemExit(f"{args.rev} has no bench/asgi.py (the bench server app); pick a later revision")
        bundles = make_bench_bundles(workdir / "personas")
        with contextlib.ExitStack() as dbs:
            dbfiles: list[Path | str] = [workdir / "a.db", workdir / "b.db"]
            for i, backend in enumerate(backends):
                if backend == "postgres":
                    scratch = dbs.enter_context(scratch_database())
                    if scratch is None:
                        raise SystemExit(f"postgres: cannot reach {postgres_base_url()}")
                    dbfiles[i] = scratch
            a, b = dbfiles
            label_a, label_b = args.rev, "working tree"
            if backends[0] != backends[1]:
                label_a, label_b = f"{args.rev} ({backends[0]})", f"working tree ({backends[1]})"
            servers = {
                label_a: TeamgraphServer(workdir / "a", a, bundles, env={"PYTHONPATH": str(other)}).start(),
                label_b: TeamgraphServer(workdir / "b", b, bundles).start(),
            }
            try:
                concurrencies = tuple(int(c) for c in args.concurrency.split(","))
                inprocess_db = workdir / "inproc.db" if args.inprocess else None
                asyncio.run(
                    _compare(
                        servers, args.team, args.seconds, args.rounds, args.mode, concurrencies, inprocess_db, bundles
                    )
                )
            finally:
                for server in servers.values():
                    server.stop()
    finally:
        stop_all()
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
