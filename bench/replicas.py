"""One Postgres replica against two, on the working tree, in the same minutes: work per turn and lock wait.

    python -m bench.replicas                              # veneo_chat /invoke, concurrency 1 and 32
    python -m bench.replicas --team interview --concurrency 32 --seconds 10 --rounds 3

Two Teamgraph servers (`bench.procs.TeamgraphServer`) on one scratch database (`bench.postgres`); the *1 replica*
cells drive the first alone, the *2 replicas* cells both, each new session going to the next replica
(`bench.drivers.TeamgraphReplicas`, as the full bench's *2 replicas* rows), cells interleaved. Prints p50,
turns/s, the servers' CPU per turn (the scale-out goal: two replicas within 10% of one) and the mean turn-lock
wait (a lock shared across sessions would show here). Prints only; nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.bundle import make_bench_bundles
from bench.drivers import Driver, TeamgraphHTTP, TeamgraphReplicas
from bench.measure import run_cell, warm_up
from bench.postgres import base_url, scratch_database
from bench.procs import TeamgraphServer, stop_all


async def _compare(servers: list[TeamgraphServer], team: str, concurrencies: list[int], seconds: float,
                   rounds: int) -> None:  # fmt: skip
    first = TeamgraphHTTP(servers[0].url, servers[0])
    second = TeamgraphHTTP(servers[1].url, servers[1])
    drivers: dict[str, Driver] = {"1 replica": first, "2 replicas": TeamgraphReplicas([first, second])}
    try:
        for driver in drivers.values():
            await warm_up(driver, ("invoke",), (team,))
        for c in concurrencies:
            seen: dict[str, dict[str, list[float]]] = {
                k: {"p50": [], "tps": [], "cpu": [], "wait": []} for k in drivers
            }
            errors = dict.fromkeys(drivers, 0)
            for _ in range(rounds):
                for label, driver in drivers.items():
                    cell = await run_cell(driver, "invoke", team, c, seconds, 10**6, "invoke")
                    d = cell.as_dict()
                    seen[label]["p50"].append(cell.p(50) * 1000)
                    seen[label]["tps"].append(cell.throughput)
                    if not math.isnan(d["cpu_ms_per_turn"]):
                        seen[label]["cpu"].append(d["cpu_ms_per_turn"])
                    if not math.isnan(d["lock_wait_ms_mean"]):
                        seen[label]["wait"].append(d["lock_wait_ms_mean"])
                    errors[label] += len(cell.errors)
            for label, values in seen.items():
                med = {k: statistics.median(v) if v else math.nan for k, v in values.items()}
                print(f"{team:<10} c={c:<2} {label:<10} /invoke p50 {med['p50']:8.2f} ms  {med['tps']:6.1f} turns/s  "
                      f"server CPU {med['cpu']:6.2f} ms/turn  lock wait {med['wait']:6.2f} ms  errors {errors[label]}",
                      flush=True)  # fmt: skip
    finally:
        await first.aclose()
        await second.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.splitlines()[0])
    parser.add_argument("--team", default="veneo_chat", choices=["veneo_chat", "interview"])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each cell")
    parser.add_argument("--rounds", type=int, default=3, help="cells per mode and concurrency (medians)")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated concurrencies (default 1,32)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="teamgraph-replicas-"))
    try:
        bundles = make_bench_bundles(workdir / "personas")
        with scratch_database() as url:
            if url is None:
                raise SystemExit(f"cannot reach {base_url()}")
            servers = [TeamgraphServer(workdir / f"replica{i}", url, bundles).start() for i in (1, 2)]
            try:
                concurrencies = [int(c) for c in args.concurrency.split(",")]
                asyncio.run(_compare(servers, args.team, concurrencies, args.seconds, args.rounds))
            finally:
                for server in servers:
                    server.stop()
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
