"""The benchmark run: in-process LangGraph vs Teamgraph's server vs `langgraph dev`, side by side, in one run.

    make bench        # short run (< 5 min on 2 cores): python -m bench --short
    make bench-full   # full run:                      python -m bench --full

Writes docs/performance.md (tables, goals met / missed, machine, package versions) and the raw numbers to
bench/results/<short|full>.json. Every server it starts binds 127.0.0.1 and is stopped at the end, on error and
on Ctrl-C; every request loop is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime as dt
import functools
import json
import math
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import report, startup
from bench.bundle import make_bench_bundles
from bench.drivers import TEAMS, InProcess, LangGraphSDK, TeamgraphHTTP, TeamgraphReplicas, TurnSpec, script
from bench.fake_model import BenchFactory
from bench.measure import percentile, run_cell, run_growth, warm_up
from bench.postgres import base_url as postgres_base_url
from bench.postgres import scratch_database
from bench.procs import LangGraphDev, TeamgraphServer, stop_all

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Profile:
    name: str
    cell_s: float  # each (team, mode, concurrency) cell runs this long ...
    cell_max_turns: int  # ... or this many turns
    concurrency: tuple[int, ...]
    ttft_samples: int  # first-token samples per mode
    growth_turns: int
    growth_reps: int  # threads per (team, mode) for the growth curve
    sessions: int  # sessions created (one turn each) for the memory figure
    listed_sessions: int  # sessions in the index for GET /sessions
    listing_requests: int
    ablation_s: float  # each ablation cell runs this long
    ablation_rounds: int
    ablations: tuple[str, ...]  # pieces switched off, one server each ("" = as shipped; "+"-joined = together)


ALL_ABLATIONS = ("", "observer", "audit", "spans", "touch", "logs", "observer+audit+spans+touch+logs")
PROFILES = {
    "short": Profile("short", 2.0, 3000, (1, 8, 32), 20, 200, 2, 1000, 10_000, 100, 2.0, 1, ("", "observer")),
    "full": Profile("full", 11.0, 20_000, (1, 8, 32), 100, 200, 5, 1000, 10_000, 500, 4.0, 3, ALL_ABLATIONS),
}

# mode name -> (driver key, variant)
MODES = {
    "in-process ainvoke": ("inproc", "ainvoke"),
    "in-process astream": ("inproc", "astream"),
    "teamgraph /invoke": ("tg", "invoke"),
    "teamgraph /stream": ("tg", "stream"),
    # not part of the goals (one worker is the default, and `langgraph dev` is one process): what the second
    # core buys, `teamgraph serve --workers 2` (TEAMGRAPH_WORKERS=2) on the same SQLite file
    "teamgraph /invoke, 2 workers": ("tg2", "invoke"),
    # Postgres (a scratch database, bench/postgres.py): the in-process graph on the Postgres checkpointer, one
    # `teamgraph serve` on it, and two replicas (two servers on one database, sessions split between them)
    "in-process ainvoke, Postgres": ("inproc_pg", "ainvoke"),
    "teamgraph /invoke, Postgres": ("tg_pg", "invoke"),
    "teamgraph /invoke, Postgres, 2 replicas": ("tg_pg2", "invoke"),
    "langgraph dev runs.wait": ("dev", "wait"),
    "langgraph dev runs.stream": ("dev", "stream"),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------- phases


async def latency_phase(profile: Profile, drivers: dict[str, Any]) -> list[dict[str, Any]]:
    """Every mode at every concurrency, interleaved per (team, concurrency) so drift hits all modes alike."""
    cells = []
    for team in TEAMS:
        for c in profile.concurrency:
            for mode, (key, variant) in MODES.items():
                if key not in drivers:  # no Postgres reachable
                    continue
                cell = await run_cell(drivers[key], variant, team, c, profile.cell_s, profile.cell_max_turns, mode=mode)
                d = cell.as_dict()
                log(
                    f"{team:<10} c={c:<2} {mode:<26} n={d['n']:<5} p50={d['p50_ms']:8.2f} ms "
                    f"p95={d['p95_ms']:8.2f} p99={d['p99_ms']:8.2f} {d['turns_per_s']:7.1f} turns/s "
                    f"(other load {d['other_cores']:.2f} cores) cpu {d['cpu_ms_per_turn']:.2f} ms/turn"
                    + (f" lock wait {d['lock_wait_ms_mean']:.2f} ms" if d["lock_waits"] else "")
                    + (f"  errors={d['error_count']} {d['errors'][:1]}" if d["error_count"] else "")
                )
                cells.append(d)
    return cells


async def ttft_phase(profile: Profile, drivers: dict[str, Any]) -> dict[str, Any]:
    """Time to first token of the chat responder at concurrency 1: in-process astream(stream_mode="messages"),
    Teamgraph /stream_events, langgraph dev runs.stream(stream_mode="messages-tuple"); one conversation per
    mode per round, rounds until each mode has the samples."""
    team = "veneo_chat"
    specs = script(team)
    keys = {
        "in-process": "inproc",
        "teamgraph": "tg",
        "teamgraph (chat_model events only)": "tg",
        "langgraph dev": "dev",
    }
    samples: dict[str, dict[str, list[float]]] = {k: {"first": [], "total": []} for k in keys}
    missing: dict[str, int] = dict.fromkeys(samples, 0)
    while min(len(s["first"]) + missing[m] for m, s in samples.items()) < profile.ttft_samples:
        for mode, key in keys.items():
            driver = drivers[key]
            thread = await driver.new_thread(team)
            for spec in specs:
                if len(samples[mode]["first"]) + missing[mode] >= profile.ttft_samples:
                    break
                if mode.startswith("teamgraph ("):
                    result = await driver.first_token(team, thread, spec, filtered=True)
                else:
                    result = await driver.first_token(team, thread, spec)
                if result.first_token_s is None:
                    missing[mode] += 1
                else:
                    samples[mode]["first"].append(result.first_token_s)
                samples[mode]["total"].append(result.total_s)
            if hasattr(driver, "forget"):
                driver.forget(thread)
    out = {}
    for mode, s in samples.items():
        out[mode] = {
            "n": len(s["first"]),
            "no_token": missing[mode],
            "p50_ms": percentile(s["first"], 50) * 1000,
            "p95_ms": percentile(s["first"], 95) * 1000,
            "p99_ms": percentile(s["first"], 99) * 1000,
            "turn_p50_ms": percentile(s["total"], 50) * 1000,
        }
        log(f"first token {mode:<14} p50={out[mode]['p50_ms']:8.2f} ms p95={out[mode]['p95_ms']:8.2f} ms")
    return out


GROWTH_MODES = (
    ("in-process ainvoke", "inproc", "ainvoke"),
    ("teamgraph /invoke", "tg", "invoke"),
    # what a checkpoint after every step writes (LangGraph's default durability="async"), same graph and saver
    ("in-process ainvoke, durability=async", "inproc", "ainvoke-async"),
)


def growth_spec(team: str, i: int) -> TurnSpec:
    base = script(team)
    if team == "veneo_chat":
        return base[i % len(base)]
    if i < len(base):
        return base[i]
    return TurnSpec("How did I do overall?")  # after the interview: the summary again, every turn


async def growth_phase(
    profile: Profile, drivers: dict[str, Any], dbs: dict[str, Path]
) -> dict[str, dict[str, list[list[dict[str, Any]]]]]:
    """One thread per repetition, `growth_turns` turns: latency, checkpoint bytes written, messages in state."""
    out: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}
    for team in TEAMS:
        out[team] = {}
        for mode, key, variant in GROWTH_MODES:
            driver = drivers[key]
            reps = []
            specs = functools.partial(growth_spec, team)
            for _ in range(profile.growth_reps):
                points = await run_growth(driver, variant, team, specs, dbs[key], profile.growth_turns)
                reps.append([asdict(p) for p in points])
            out[team][mode] = reps
            first, last = reps[0][0], reps[0][-1]
            log(
                f"growth {team:<10} {mode:<20} turn 1: {first['latency_s'] * 1000:.1f} ms {first['bytes']} B; "
                f"turn {last['turn']}: {last['latency_s'] * 1000:.1f} ms {last['bytes']} B, {last['messages']} messages"
            )
    return out


async def ablation_phase(profile: Profile, workdir: Path, bundles: Path, inproc: InProcess) -> list[dict[str, Any]]:
    """What each product piece costs: one Teamgraph server per set of pieces switched off (bench/ablation.py), all
    running at once; in rounds, veneo_chat /invoke on each, every server cell right after an in-process cell of the
    same length. Per variant: the median over rounds of (server p50 - in-process p50) at concurrency 1, and turns/s
    summed over rounds at the highest concurrency."""
    team = "veneo_chat"
    c_max = max(profile.concurrency)
    servers: list[tuple[str, TeamgraphHTTP]] = []
    samples: dict[str, dict[int, list[dict[str, Any]]]] = {p: {1: [], c_max: []} for p in profile.ablations}
    with contextlib.ExitStack() as stack:
        for i, pieces in enumerate(profile.ablations):
            server = stack.enter_context(
                TeamgraphServer(
                    workdir / f"ablation-{i}",
                    workdir / f"ablation-{i}.db",
                    bundles,
                    app="bench.ablation:app",
                    env={"TEAMGRAPH_BENCH_ABLATE": pieces.replace("+", ",")},
                )
            )
            servers.append((pieces, TeamgraphHTTP(server.url)))
        try:
            for _, tg in servers:
                await warm_up(tg, ("invoke",), (team,))
            for rnd in range(profile.ablation_rounds):
                for c in (1, c_max):
                    # every other round in reverse, so no row always runs first or after the same neighbour
                    for pieces, tg in servers if rnd % 2 == 0 else servers[::-1]:
                        ip = await run_cell(inproc, "ainvoke", team, c, profile.ablation_s, 10**6, "in-process")
                        sv = await run_cell(tg, "invoke", team, c, profile.ablation_s, 10**6, "teamgraph /invoke")
                        samples[pieces][c].append({"in-process": ip.as_dict(), "teamgraph": sv.as_dict()})
                        log(
                            f"ablation round {rnd + 1} off={pieces or '-':<32} c={c:<2} /invoke p50 "
                            f"{sv.p(50) * 1000:7.2f} ms {sv.throughput:6.1f}/s"
                            + (f" ({len(sv.errors)} errors)" if sv.errors else "")
                            + f" | in-process p50 {ip.p(50) * 1000:7.2f} ms {ip.throughput:6.1f}/s"
                        )
        finally:
            for _, tg in servers:
                await tg.aclose()
    out = []
    for pieces in profile.ablations:
        row: dict[str, Any] = {"off": pieces.split("+") if pieces else []}
        for c in (1, c_max):
            pairs = samples[pieces][c]
            tg_n = sum(p["teamgraph"]["n"] for p in pairs)
            tg_wall = sum(p["teamgraph"]["n"] / p["teamgraph"]["turns_per_s"] for p in pairs if p["teamgraph"]["n"])
            ip_n = sum(p["in-process"]["n"] for p in pairs)
            ip_wall = sum(p["in-process"]["n"] / p["in-process"]["turns_per_s"] for p in pairs if p["in-process"]["n"])
            row[f"c{c}"] = {
                "rounds": len(pairs),
                "teamgraph_p50_ms": statistics.median(p["teamgraph"]["p50_ms"] for p in pairs),
                "in_process_p50_ms": statistics.median(p["in-process"]["p50_ms"] for p in pairs),
                "overhead_ms": statistics.median(p["teamgraph"]["p50_ms"] - p["in-process"]["p50_ms"] for p in pairs),
                "ratio": statistics.median(p["teamgraph"]["p50_ms"] / p["in-process"]["p50_ms"] for p in pairs),
                "teamgraph_turns_per_s": tg_n / tg_wall if tg_wall else math.nan,
                "in_process_turns_per_s": ip_n / ip_wall if ip_wall else math.nan,
                "errors": sum(p["teamgraph"]["error_count"] for p in pairs),
                "other_cores": statistics.mean(p["teamgraph"]["other_cores"] for p in pairs),
            }
        out.append(row)
    return out


async def memory_and_listing_phase(profile: Profile, workdir: Path, bundles: Path) -> dict[str, Any]:
    """A fresh server: idle RSS; RSS after `sessions` sessions each ran one turn; GET /sessions at 10,000."""
    db = workdir / "memory.db"
    out: dict[str, Any] = {}
    with TeamgraphServer(workdir / "tg-memory", db, bundles) as server:
        await asyncio.sleep(2.0)
        out["rss_idle"] = server.rss()
        out["startup_s"] = server.started_s
        log(f"teamgraph idle RSS {out['rss_idle'] / 2**20:.1f} MiB (started in {server.started_s:.1f} s)")
        tg = TeamgraphHTTP(server.url)
        try:
            counter = iter(range(profile.sessions))
            errors: list[str] = []

            async def worker() -> None:
                for i in counter:
                    team = TEAMS[i % 2]
                    try:
                        thread = await tg.new_thread(team)
                        await tg.turn("invoke", team, thread, script(team)[0])
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                        if len(errors) > 20:
                            return

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(8)))
            out["sessions"] = profile.sessions
            out["sessions_s"] = time.perf_counter() - t0
            out["session_errors"] = errors[:5]
            await asyncio.sleep(1.0)
            out["rss_after_sessions"] = server.rss()
            log(
                f"teamgraph RSS after {profile.sessions} sessions x 1 turn: {out['rss_after_sessions'] / 2**20:.1f} MiB"
                f" ({out['sessions_s']:.1f} s, {len(errors)} errors)"
            )
            out["listing"] = await listing(profile, tg, db)
        finally:
            await tg.aclose()
    return out


def fill_session_index(db: Path, tenant: str, team: str, total: int) -> int:
    """Add rows to the session index (the server's own `sessions` table) until `tenant` has `total` sessions."""
    conn = sqlite3.connect(db, timeout=30.0)
    try:
        have = conn.execute("select count(*) from sessions where tenant = ?", [tenant]).fetchone()[0]
        start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        rows = []
        for i in range(max(0, total - have)):
            stamp = (start + dt.timedelta(seconds=37 * i)).isoformat(timespec="microseconds")
            rows.append((str(uuid.uuid4()), tenant, team, f"Bench session {i}", stamp, stamp))
        with conn:
            conn.executemany(
                "insert into sessions (thread_id, tenant, team, title, created_at, updated_at) values (?,?,?,?,?,?)",
                rows,
            )
        return int(conn.execute("select count(*) from sessions where tenant = ?", [tenant]).fetchone()[0])
    finally:
        conn.close()


async def listing(profile: Profile, tg: TeamgraphHTTP, db: Path) -> dict[str, Any]:
    total = fill_session_index(db, "veneo", "veneo_chat", profile.listed_sessions)
    headers = tg.headers("veneo_chat")
    first = (await tg.client.get("/sessions", headers=headers)).json()
    cursor = first["next_cursor"]
    variants = {
        "GET /sessions": "/sessions",
        "GET /sessions?team=veneo_chat": "/sessions?team=veneo_chat",
        "GET /sessions?cursor= (page 2)": f"/sessions?cursor={cursor}",
        "GET /sessions?limit=200": "/sessions?limit=200",
    }
    out: dict[str, Any] = {"sessions_in_index": total, "variants": {}}
    for name, path in variants.items():
        for _ in range(5):  # warm
            (await tg.client.get(path, headers=headers)).raise_for_status()
        lat = []
        for _ in range(profile.listing_requests):
            t = time.perf_counter()
            r = await tg.client.get(path, headers=headers)
            lat.append(time.perf_counter() - t)
            r.raise_for_status()
        items = len(r.json()["items"])
        out["variants"][name] = {
            "n": len(lat),
            "items": items,
            "p50_ms": percentile(lat, 50) * 1000,
            "p95_ms": percentile(lat, 95) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
        }
        log(f"{name:<32} {items} items  p50={out['variants'][name]['p50_ms']:.2f} ms")
    return out


# ------------------------------------------------------------------------------------------------------ main


async def run(profile: Profile, workdir: Path) -> dict[str, Any]:
    from server.engine import Engine
    from server.settings import Settings

    results: dict[str, Any] = {"profile": asdict(profile), "started": dt.datetime.now(dt.UTC).isoformat()}
    bundles = make_bench_bundles(workdir / "personas")
    dbs = {"inproc": workdir / "in-process.db", "tg": workdir / "teamgraph.db", "dev": workdir / "langgraph-dev.db"}
    t0 = time.perf_counter()
    with (
        scratch_database() as pg_url,
        TeamgraphServer(workdir / "tg", dbs["tg"], bundles) as tg_server,
        TeamgraphServer(workdir / "tg2", workdir / "teamgraph-2w.db", bundles, uvicorn_args=["--workers", "2"]) as tg2,
        LangGraphDev(workdir / "dev", dbs["dev"], bundles) as dev_server,
        contextlib.ExitStack() as pg_stack,
    ):
        pg_servers: list[TeamgraphServer] = []
        if pg_url is None:
            log(f"no PostgreSQL at {postgres_base_url()}: the Postgres modes are skipped")
        else:
            # replica 1 serves the 1-replica mode too; replica 2 idles meanwhile
            pg_servers = [
                pg_stack.enter_context(TeamgraphServer(workdir / f"tg-pg-{i}", pg_url, bundles)) for i in (1, 2)
            ]
        results["postgres"] = pg_url is not None
        log(
            f"teamgraph on {tg_server.url} ({tg_server.started_s:.1f} s), langgraph dev on {dev_server.url} "
            f"({dev_server.started_s:.1f} s)"
        )
        await asyncio.sleep(2.0)
        results["servers"] = {
            "teamgraph": {"startup_s": tg_server.started_s, "rss_idle": tg_server.rss()},
            "langgraph dev": {"startup_s": dev_server.started_s, "rss_idle": dev_server.rss()},
        }
        settings = Settings(_env_file=None, checkpoint_url=f"sqlite:///{dbs['inproc']}", personas_dir=bundles)  # type: ignore[call-arg]
        async with Engine.open(settings, agent_factory=BenchFactory()) as engine, contextlib.AsyncExitStack() as pg:
            drivers: dict[str, Any] = {
                "inproc": InProcess(engine),
                "tg": TeamgraphHTTP(tg_server.url, tg_server),
                "tg2": TeamgraphHTTP(tg2.url, tg2),
                "dev": LangGraphSDK(dev_server.url),
            }
            if pg_url is not None:
                pg_settings = settings.model_copy(update={"checkpoint_url": pg_url})
                drivers["inproc_pg"] = InProcess(
                    await pg.enter_async_context(Engine.open(pg_settings, agent_factory=BenchFactory()))
                )
                replicas = [TeamgraphHTTP(s.url, s) for s in pg_servers]
                drivers["tg_pg"] = replicas[0]
                drivers["tg_pg2"] = TeamgraphReplicas(replicas)
                drivers["tg_pg_2nd"] = replicas[1]  # closed with the others
            try:
                log("warming up")
                await warm_up(drivers["inproc"], InProcess.VARIANTS, TEAMS)
                await warm_up(drivers["tg"], TeamgraphHTTP.VARIANTS, TEAMS)
                await warm_up(drivers["tg2"], ("invoke",), TEAMS)
                await warm_up(drivers["dev"], LangGraphSDK.VARIANTS, TEAMS, turns=2)
                for key in ("inproc_pg", "tg_pg", "tg_pg_2nd"):
                    if key in drivers:
                        await warm_up(drivers[key], ("ainvoke",) if key == "inproc_pg" else ("invoke",), TEAMS)
                log("latency and throughput")
                results["cells"] = await latency_phase(profile, drivers)
                log("time to first token")
                results["ttft"] = await ttft_phase(profile, drivers)
                log("growth with history")
                results["growth"] = await growth_phase(profile, drivers, dbs)
                results["servers"]["teamgraph"]["rss_after_run"] = tg_server.rss()
                results["servers"]["langgraph dev"]["rss_after_run"] = dev_server.rss()
            finally:
                for key in ("tg", "tg2", "dev", "tg_pg", "tg_pg_2nd"):
                    if key in drivers:
                        await drivers[key].aclose()
            tg_server.stop()
            tg2.stop()
            dev_server.stop()
            for server in pg_servers:
                server.stop()
            log("ablation: what each piece of the server costs")
            results["ablation"] = await ablation_phase(profile, workdir, bundles, drivers["inproc"])
    log("memory and session listing (fresh server)")
    results["memory"] = await memory_and_listing_phase(profile, workdir, bundles)
    log("start-up: teamgraph --help, personas validate, serve to /readyz (every other server stopped)")
    results["startup"] = startup.measure(profile.name, workdir / "startup")
    results["elapsed_s"] = time.perf_counter() - t0
    return results


def _install_signal_handlers() -> None:
    def stop(signum: int, frame: Any) -> None:
        stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    atexit.register(stop_all)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--short", dest="profile", action="store_const", const="short", help="under 5 minutes")
    group.add_argument("--full", dest="profile", action="store_const", const="full", help="the full run")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "performance.md", help="report to write")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (databases, server logs)")
    parser.add_argument("--render", type=Path, help="only re-render the report from a results JSON")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        args.out.write_text(report.render(data))
        print(f"wrote {args.out}")
        return 0
    profile = PROFILES[args.profile or "short"]
    _install_signal_handlers()
    try:
        import uvloop

        loop_name = "uvloop"
    except ImportError:  # pragma: no cover
        uvloop = None  # type: ignore[assignment]
        loop_name = "asyncio"
    workdir = Path(tempfile.mkdtemp(prefix="teamgraph-bench-"))
    log(f"{profile.name} run; work dir {workdir}")
    started = time.perf_counter()
    try:
        coro = run(profile, workdir)
        results = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130
    finally:
        stop_all()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["runtime_s"] = time.perf_counter() - started
    results["event_loop"] = loop_name
    results["environment"] = report.environment()
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / f"{profile.name}.json"
    raw.write_text(json.dumps(results, indent=1, default=str))
    args.out.write_text(report.render(results))
    log(f"done in {results['runtime_s']:.0f} s: wrote {args.out} and {raw}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
