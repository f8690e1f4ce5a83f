"""docs/performance.md from a run's results: goals met / missed, tables, method, machine and versions."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench import startup

REPO = Path(__file__).resolve().parents[1]
NOTES = REPO / "bench" / "notes.md"
STORAGE = REPO / "bench" / "results" / "storage.md"
PACKAGES = (
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-sqlite",
    "langchain-core",
    "langserve",
    "fastapi",
    "starlette",
    "sse-starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "aiosqlite",
    "pydantic",
    "langgraph-api",
    "langgraph-runtime-inmem",
    "langgraph-cli",
    "langgraph-sdk",
    "httpx",
    "orjson",
)
GOAL_OVERHEAD = 1.25
GOAL_THROUGHPUT = 3.0
GOAL_TTFT_MS = 5.0
GOAL_GROWTH = 1.5
GOAL_RSS_MB = 200.0
GOAL_LISTING_MS = 20.0
GOAL_PG_VS_SQLITE = 1.2  # Postgres /invoke p50 at concurrency 1 over SQLite's
GOAL_REPLICA_CPU = 1.10  # CPU per turn with 2 replicas over 1 replica (scale-out judged by work per turn)
PG_MODES = ("in-process ainvoke, Postgres", "teamgraph /invoke, Postgres", "teamgraph /invoke, Postgres, 2 replicas")
KEY_TURNS = (1, 50, 100, 200)


# ------------------------------------------------------------------------------------------------ environment


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").exists() else []:
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "-"
    commit = _run("git", "rev-parse", "--short", "HEAD")
    dirty = bool(_run("git", "status", "--porcelain", "--untracked-files=no"))
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 2**20, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": versions,
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


# ---------------------------------------------------------------------------------------------------- helpers


def ms(v: float | None, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) and not math.isnan(a) else math.nan


def fx(v: float, digits: int = 2) -> str:
    return "–" if math.isnan(v) else f"{v:.{digits}f}x"


def mb(b: float) -> str:
    return f"{b / 1e6:.0f} MB"


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def cell(results: dict[str, Any], team: str, mode: str, c: int) -> dict[str, Any]:
    for d in results["cells"]:
        if d["team"] == team and d["mode"] == mode and d["concurrency"] == c:
            return d
    return {"p50_ms": math.nan, "p95_ms": math.nan, "p99_ms": math.nan, "turns_per_s": math.nan, "n": 0}


def growth_at(reps: list[list[dict[str, Any]]], turn: int, key: str) -> float:
    values = [rep[turn - 1][key] for rep in reps if len(rep) >= turn]
    return statistics.median(values) if values else math.nan


def growth_window(reps: list[list[dict[str, Any]]], turn: int, key: str, width: int = 10) -> float:
    values = [p[key] for rep in reps for p in rep[max(0, turn - width) : turn]]
    return statistics.mean(values) if values else math.nan


def span(values: list[float]) -> str:
    """`a–b` at one decimal, or one number when both round the same."""
    low, high = ms(min(values), 1), ms(max(values), 1)
    return low if low == high else f"{low}–{high}"


def met(ok: bool | None) -> str:
    return "**met**" if ok else ("**missed**" if ok is not None else "n/a")


# ------------------------------------------------------------------------------------------------------ goals


def goals(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(goal, measured, why, met) for each goal of the issue."""
    out: list[tuple[str, str, str, bool | None]] = []
    teams = ("veneo_chat", "interview")
    c_max = max(r["profile"]["concurrency"])

    # 1. server overhead at concurrency 1
    parts, ok, overheads, graph_ms = [], True, [], []
    for team in teams:
        tg = cell(r, team, "teamgraph /invoke", 1)["p50_ms"]
        ip = cell(r, team, "in-process ainvoke", 1)["p50_ms"]
        x = ratio(tg, ip)
        ok = ok and x <= GOAL_OVERHEAD
        overheads.append(tg - ip)
        graph_ms.append(ip)
        parts.append(f"{team}: {ms(tg, 2)} / {ms(ip, 2)} ms = {fx(x)} (+{ms(tg - ip, 2)} ms)")
    budget = ", ".join(
        f"{team} {ms((GOAL_OVERHEAD - 1) * cell(r, team, 'in-process ainvoke', 1)['p50_ms'], 2)} ms" for team in teams
    )
    out.append(
        (
            f"p50 of a turn through `/invoke` ≤ {GOAL_OVERHEAD}x in-process `ainvoke` (concurrency 1)",
            "; ".join(parts),
            (
                f"a fixed cost of {span(overheads)} ms per request on top of a graph "
                f"that itself takes {span(graph_ms)} ms here, while the goal leaves "
                f"{budget} for all of it: HTTP both ways "
                "(client, uvicorn, Starlette/FastAPI and our middleware), LangServe's config/input parsing and its "
                "JSON encoding of the whole team state, authentication and the config modifier, the session's turn "
                "lock, claim and touch (SQLite in worker threads), and the TurnObserver (LangChain callbacks for "
                "every step, a log line per node, metrics, the turn's audit entries); see section 6 and *What "
                "limits the missed goals*"
            )
            if not ok
            else "the server's fixed cost per turn is small next to the graph's own",
            ok,
        )
    )

    # 2. throughput at the highest concurrency vs langgraph dev
    parts, ok, errors = [], True, 0
    for team in teams:
        tg = cell(r, team, "teamgraph /invoke", c_max)["turns_per_s"]
        dev = cell(r, team, "langgraph dev runs.wait", c_max)["turns_per_s"]
        tgs = cell(r, team, "teamgraph /stream", c_max)["turns_per_s"]
        devs = cell(r, team, "langgraph dev runs.stream", c_max)["turns_per_s"]
        errors += sum(cell(r, team, m, c_max).get("error_count", 0) for m in ("teamgraph /invoke", "teamgraph /stream"))
        x, xs = ratio(tg, dev), ratio(tgs, devs)
        ok = ok and x >= GOAL_THROUGHPUT and xs >= GOAL_THROUGHPUT
        parts.append(
            f"{team}: /invoke {tg:.0f} vs runs.wait {dev:.0f} turns/s = {fx(x, 1)}, /stream vs runs.stream {fx(xs, 1)}"
        )
    inproc = []
    for team in teams:
        ip = cell(r, team, "in-process ainvoke", c_max)["turns_per_s"]
        dev = cell(r, team, "langgraph dev runs.wait", c_max)["turns_per_s"]
        inproc.append(f"{team} {fx(ratio(ip, dev), 1)}")
    why2 = (
        "one uvicorn worker, CPU-bound on one core (the graph plus the per-request cost of goal 1); for scale, "
        f"in-process LangGraph alone does {', '.join(inproc)} the turns/s of `langgraph dev` here"
        if not ok
        else "Teamgraph runs the turn inside the request on one uvicorn worker; `langgraph dev` queues each run "
        "for a background worker and streams it back through its pub/sub"
    )
    two = []
    for team in teams:
        tg2 = cell(r, team, "teamgraph /invoke, 2 workers", c_max)
        if tg2["n"]:
            dev = cell(r, team, "langgraph dev runs.wait", c_max)["turns_per_s"]
            two.append(f"{team} {tg2['turns_per_s']:.0f} turns/s = {fx(ratio(tg2['turns_per_s'], dev), 1)}")
    if two:
        why2 += f"; with `--workers 2` (not the default) /invoke does {', '.join(two)} of `runs.wait`"
    pg_default = []
    for team in teams:
        two = cell(r, team, "teamgraph /invoke, Postgres, 2 replicas", c_max)
        if two["n"]:
            dev = cell(r, team, "langgraph dev runs.wait", c_max)["turns_per_s"]
            pg_default.append(f"{team} {two['turns_per_s']:.0f} turns/s = {fx(ratio(two['turns_per_s'], dev), 1)}")
    if pg_default:
        why2 += (
            "; on PostgreSQL with one worker per core (`--workers 2` here), i.e. two processes on one database like "
            f"the *2 replicas* row: {', '.join(pg_default)} of `runs.wait`"
        )
    if errors:
        why2 += f"; {errors} Teamgraph turn(s) failed in these cells (marked *(N errors)* in section 1)"
    out.append(
        (
            f"turns/s at concurrency {c_max} ≥ {GOAL_THROUGHPUT}x `langgraph dev` on the same graphs",
            "; ".join(parts),
            why2,
            ok,
        )
    )

    # Postgres: the replicas' path
    if r.get("postgres"):
        parts, ok, extra, cpu = [], True, [], []
        for team in teams:
            pg = cell(r, team, "teamgraph /invoke, Postgres", 1)
            sq = cell(r, team, "teamgraph /invoke", 1)
            ipg = cell(r, team, "in-process ainvoke, Postgres", 1)["p50_ms"]
            isq = cell(r, team, "in-process ainvoke", 1)["p50_ms"]
            x = ratio(pg["p50_ms"], sq["p50_ms"])
            ok = ok and x <= GOAL_PG_VS_SQLITE
            parts.append(f"{team}: {ms(pg['p50_ms'], 2)} / {ms(sq['p50_ms'], 2)} ms = {fx(x)}")
            extra.append(f"{team} {fx(ratio(ipg, isq))}")
            pg_cpu, sq_cpu = ms(pg.get("cpu_ms_per_turn"), 1), ms(sq.get("cpu_ms_per_turn"), 1)
            cpu.append(f"{team} {pg_cpu} vs {sq_cpu} ms server CPU per turn")
        out.append(
            (
                f"Postgres `/invoke` p50 ≤ {GOAL_PG_VS_SQLITE}x SQLite's (concurrency 1, same run)",
                "; ".join(parts),
                (
                    "the graph on the Postgres checkpointer is already "
                    f"{', '.join(extra)} the SQLite one in process (no server). Per turn Postgres waits for one "
                    "WAL flush (the closing audit write, whose flush also puts the turn's input entry and checkpoint, "
                    "committed without waiting, on disk; a disk sync, about 4 ms when measured here) and makes "
                    "about 7.5 round trips (`python -m bench.pgtrace`, bench/notes.md), where SQLite in WAL mode with "
                    "synchronous=NORMAL syncs only when it copies the WAL back into the file; and psycopg costs "
                    "more CPU per statement "
                    f"than SQLite's in-process calls ({'; '.join(cpu)}). See *What limits the missed goals*"
                )
                if not ok
                else "the turn lock is two round trips on a long-lived connection; a turn makes about 7.5 round trips "
                "and waits for one WAL flush, its closing audit write, which also covers its input entry and "
                "checkpoint (`python -m bench.pgtrace`)",
                ok,
            )
        )
        parts, ok, waits = [], True, []
        for team in teams:
            one = cell(r, team, "teamgraph /invoke, Postgres", c_max)
            two = cell(r, team, "teamgraph /invoke, Postgres, 2 replicas", c_max)
            x = ratio(two.get("cpu_ms_per_turn", math.nan), one.get("cpu_ms_per_turn", math.nan))
            ok = ok and x <= GOAL_REPLICA_CPU
            parts.append(
                f"{team}: {ms(two.get('cpu_ms_per_turn'), 2)} vs {ms(one.get('cpu_ms_per_turn'), 2)} ms CPU/turn = "
                f"{fx(x)}; {two['turns_per_s']:.0f} vs {one['turns_per_s']:.0f} turns/s"
            )
            waits.append(
                f"{team} {ms(two.get('lock_wait_ms_mean'), 2)} ms (1 replica {ms(one.get('lock_wait_ms_mean'), 2)})"
            )
        out.append(
            (
                f"2 Postgres replicas: server CPU per turn ≤ {GOAL_REPLICA_CPU:.2f}x one replica's, no lock shared "
                f"across sessions (concurrency {c_max})",
                "; ".join(parts),
                "each session has its own turn lock (an advisory lock keyed by the session), so replicas only wait "
                f"for each other on the same session; mean turn-lock wait per turn at c={c_max}: "
                f"{', '.join(waits)}. Throughput is bounded by the machine's cores (the two replicas, the bench "
                "client and Postgres share them), which is why the goal is CPU per turn",
                ok,
            )
        )

    # 3. time to first token
    t = r["ttft"]
    tg, ip, dev = t["teamgraph"]["p50_ms"], t["in-process"]["p50_ms"], t["langgraph dev"]["p50_ms"]
    ok3 = (tg - ip) <= GOAL_TTFT_MS
    out.append(
        (
            f"first token p50 through `/stream_events` within {GOAL_TTFT_MS:.0f} ms of in-process `astream`",
            f"{ms(tg, 2)} ms vs {ms(ip, 2)} ms in-process (+{ms(tg - ip, 2)} ms); `langgraph dev` messages stream "
            f"{ms(dev, 1)} ms",
            "the request's fixed cost (goal 1) comes before the first token, and the TurnObserver's callbacks "
            "(~730 calls before it); encoding the events before it is no longer the cost (our `stream_events` "
            "route dumps each message once and frames orjson's bytes: ~0.3 ms at turn 10, LangServe's encoding "
            "1.0 ms; bench/notes.md); asking for chat-model events only "
            f"(`include_types`) gives {ms(t.get('teamgraph (chat_model events only)', {}).get('p50_ms'), 2)} ms"
            if not ok3
            else "the request's fixed cost (goal 1) comes before the first token; after it each event is sent as "
            "the graph emits it",
            ok3,
        )
    )

    # 4. growth with history (Teamgraph server, turn 200 vs turn 1)
    g = r.get("growth", {})
    parts, ok_t, ok_b = [], True, True
    last = r["profile"]["growth_turns"]
    for team in teams:
        reps = g.get(team, {}).get("teamgraph /invoke", [])
        if not reps:
            continue
        t1, tn = growth_at(reps, 1, "latency_s"), growth_at(reps, last, "latency_s")
        b1, bn = growth_at(reps, 1, "bytes"), growth_at(reps, last, "bytes")
        b10 = growth_at(reps, 10, "bytes")
        xt, xb = ratio(tn, t1), ratio(bn, b1)
        ok_t = ok_t and xt <= GOAL_GROWTH
        ok_b = ok_b and xb <= GOAL_GROWTH
        parts.append(
            f"{team}: time {fx(xt)} ({ms(t1 * 1000)} → {ms(tn * 1000)} ms), bytes {fx(xb)} "
            f"({b1 / 1000:.1f} → {bn / 1000:.1f} kB; {fx(ratio(bn, b10))} of turn 10)"
        )
    # the bytes goal moved (issue 13) to storage per session over 1,000 turns with retention (section 7): turn
    # 200's checkpoint against turn 1's is reported, and judged there, not here
    ok4 = ok_t
    why = []
    if not ok_t:
        why.append(
            "time: the turns where the memory keeper trims (with the shipped budgets every 5th chat turn and every "
            "9th interview turn) write the moved messages to the store and, in the chat, fold them into the "
            "summary with a model call; other turns stay flat (see the 10-turn means and the curve)"
        )
    why.append(
        "bytes (reported; their goal is now storage per session over 1,000 turns with retention, section 7): a "
        "turn writes one checkpoint holding the whole state; turn 1's state is almost empty, while from the "
        "memory budget on (chat: 16 messages, reached at turn 8) every checkpoint carries the bounded window of "
        "messages plus the rolling summary, flat from there to the last turn (see the ratio to turn 10)"
        if not ok_b
        else "bytes stay within the same ratio (their goal is storage per session, section 7)"
    )
    out.append(
        (
            f"turn {last} costs ≤ {GOAL_GROWTH}x turn 1 in time (Teamgraph `/invoke`; checkpoint bytes reported)",
            "; ".join(parts),
            "; ".join(why),
            ok4,
        )
    )

    # 5. memory
    m = r.get("memory", {})
    rss = m.get("rss_idle", math.nan)
    ok5 = rss / 1e6 < GOAL_RSS_MB
    out.append(
        (
            f"server RSS idle < {GOAL_RSS_MB:.0f} MB",
            f"{mb(rss)} idle; {mb(m.get('rss_after_sessions', math.nan))} after "
            f"{m.get('sessions', 0)} sessions × 1 turn",
            "freshly started `create_app` under uvicorn, both teams' graphs and bundles loaded",
            ok5,
        )
    )

    # 6. session listing
    lst = (m.get("listing") or {}).get("variants", {}).get("GET /sessions", {})
    p50 = lst.get("p50_ms", math.nan)
    ok6 = p50 < GOAL_LISTING_MS
    out.append(
        (
            f"`GET /sessions` p50 < {GOAL_LISTING_MS:.0f} ms with 10,000 sessions in the index",
            f"{ms(p50, 2)} ms (p95 {ms(lst.get('p95_ms'), 2)} ms) with "
            f"{(m.get('listing') or {}).get('sessions_in_index', 0):,} sessions of the tenant",
            "an indexed (tenant, updated_at, thread_id) range scan of 51 rows",
            ok6,
        )
    )

    # 8. start-up of the `teamgraph` executable (bench/startup.py)
    out.extend(startup.goals(r.get("startup")))
    return out


# ----------------------------------------------------------------------------------------------------- render


def render(r: dict[str, Any]) -> str:
    env = r.get("environment") or environment()
    prof = r["profile"]
    name = prof["name"]
    command = "make bench-full" if name == "full" else "make bench"
    when = r.get("started", dt.datetime.now(dt.UTC).isoformat())[:16].replace("T", " ") + " UTC"
    g = goals(r)
    s: list[str] = []
    s.append("# Performance\n")
    s.append(
        f"Generated by `{command}` (`python -m bench --{name}`) on {when}, commit {env['commit']}, "
        f"in {r.get('runtime_s', 0) / 60:.1f} min. Do not edit by hand: the command rewrites this file "
        f"(raw numbers: `bench/results/{name}.json`)."
        + (
            ""
            if name == "full"
            else " **This is a short run** (few samples per cell); `make bench-full` is the reference."
        )
        + "\n"
    )
    s.append(
        "Teamgraph's server against in-process LangGraph and `langgraph dev`, on the same two team graphs, the same "
        "deterministic zero-latency model and a real SQLite checkpointer file each, all in one run.\n"
    )
    s.append(
        "```bash\nmake bench        # short run, under 5 minutes\nmake bench-full   # full run (the reference)\n```\n"
    )

    loads = [d.get("other_cores", math.nan) for d in r.get("cells", [])]
    loads = [x for x in loads if not math.isnan(x)]
    if loads:
        s.append(
            f"Noise: while the cells ran, processes outside the bench kept {statistics.mean(loads):.2f} cores busy on "
            f"average (max {max(loads):.2f}) of the machine's {env['cores']} (column *other load*).\n"
        )
    s.append("## Goals\n")
    s.append(
        table(
            ["goal", "measured", "", "why"],
            [[goal, measured, met(ok), why] for goal, measured, why, ok in g],
            "llll",
        )
        + "\n"
    )
    missed = [goal for goal, _, _, ok in g if ok is False]
    if missed:
        s.append("Missed goals are profiled in [What limits the missed goals](#what-limits-the-missed-goals).\n")

    # 1. latency & throughput
    s.append("## 1. Per-turn latency and throughput\n")
    s.append(
        f"Each cell: `c` workers, each on its own sessions (threads), one turn at a time, for {prof['cell_s']:.0f} s "
        f"(or {prof['cell_max_turns']} turns); latencies in ms; turns/s = completed turns / wall time of the cell. "
        "Cells run interleaved (for each team and concurrency, every mode in turn) so machine drift hits all modes "
        "alike. *other load*: cores kept busy meanwhile by processes outside the bench (the machine is shared; "
        "VM steal counts), from /proc/stat minus the bench's own process tree. *teamgraph /invoke, 2 workers*: "
        "`teamgraph serve --workers 2` (`TEAMGRAPH_WORKERS=2`), two uvicorn processes on one SQLite file; shown "
        "for what the machine's second core buys, not used for the goals (on SQLite the default is one worker). "
        "*Postgres* rows: a scratch database on the machine's PostgreSQL (created and dropped by the bench): "
        "in-process `ainvoke` on the Postgres checkpointer, one `teamgraph serve` on it, and *2 replicas*, two "
        "`teamgraph serve` processes on different ports sharing that database, each new session going to the next "
        "replica (session affinity, as a load balancer would). *CPU ms/turn*: CPU seconds (user + system, "
        "/proc/<pid>/stat) the server processes used during the cell, per completed turn (in-process rows: the "
        "bench process itself, which runs the graph); Postgres's own backends are not in it. *lock wait*: mean "
        "time a turn waited for its session's turn lock (the server's `teamgraph_turn_queue_wait_seconds`, "
        "taking the lock included; single-worker servers only).\n"
    )
    for team in ("veneo_chat", "interview"):
        rows = []
        for c in prof["concurrency"]:
            for mode in (
                "in-process ainvoke",
                "teamgraph /invoke",
                "teamgraph /invoke, 2 workers",
                "langgraph dev runs.wait",
                "in-process astream",
                "teamgraph /stream",
                "langgraph dev runs.stream",
                *PG_MODES,
            ):
                d = cell(r, team, mode, c)
                if not d["n"] and ("2 workers" in mode or mode in PG_MODES):
                    continue  # runs before this mode existed, or no Postgres
                err = f" ({d.get('error_count')} errors)" if d.get("error_count") else ""
                rows.append(
                    [
                        mode + err,
                        str(c),
                        str(d["n"]),
                        ms(d["p50_ms"], 2),
                        ms(d["p95_ms"], 2),
                        ms(d["p99_ms"], 2),
                        ms(d["turns_per_s"], 1),
                        ms(d.get("cpu_ms_per_turn", math.nan), 2),
                        ms(d.get("lock_wait_ms_mean", math.nan), 2),
                        ms(d.get("other_cores", math.nan), 2),
                    ]
                )
        s.append(f"### {team}\n")
        s.append(
            table(
                ["mode", "c", "turns", "p50", "p95", "p99", "turns/s", "CPU ms/turn", "lock wait", "other load"], rows
            )
            + "\n"
        )

    s.append("### Ratios\n")
    s.append(
        "Server ÷ in-process is the p50 latency ratio (1.00x = no overhead). Teamgraph ÷ `langgraph dev` is the "
        "throughput ratio (higher is better for Teamgraph) and, in brackets, the p50 latency ratio of dev over "
        "Teamgraph.\n"
    )
    rows = []
    for team in ("veneo_chat", "interview"):
        for c in prof["concurrency"]:
            inv = cell(r, team, "teamgraph /invoke", c)
            stm = cell(r, team, "teamgraph /stream", c)
            ai = cell(r, team, "in-process ainvoke", c)
            ast = cell(r, team, "in-process astream", c)
            wait = cell(r, team, "langgraph dev runs.wait", c)
            dstm = cell(r, team, "langgraph dev runs.stream", c)
            rows.append(
                [
                    team,
                    str(c),
                    fx(ratio(inv["p50_ms"], ai["p50_ms"])),
                    fx(ratio(stm["p50_ms"], ast["p50_ms"])),
                    f"{fx(ratio(inv['turns_per_s'], wait['turns_per_s']), 1)} "
                    f"({fx(ratio(wait['p50_ms'], inv['p50_ms']), 0)})",
                    f"{fx(ratio(stm['turns_per_s'], dstm['turns_per_s']), 1)} "
                    f"({fx(ratio(dstm['p50_ms'], stm['p50_ms']), 0)})",
                ]
            )
    s.append(
        table(
            ["team", "c", "/invoke ÷ ainvoke", "/stream ÷ astream", "/invoke ÷ runs.wait", "/stream ÷ runs.stream"],
            rows,
        )
        + "\n"
    )
    if r.get("postgres"):
        s.append("### Postgres\n")
        s.append(
            "Postgres ÷ SQLite: p50 latency ratios at the same concurrency, the server (`/invoke`) and in-process "
            "`ainvoke` (what the checkpointer alone costs). 2 replicas ÷ 1: turns/s and server CPU per turn (work "
            "per turn: ≈ 1.00x means the second replica adds no per-turn cost, whatever the cores allow).\n"
        )
        rows = []
        for team in ("veneo_chat", "interview"):
            for c in prof["concurrency"]:
                one = cell(r, team, "teamgraph /invoke, Postgres", c)
                two = cell(r, team, "teamgraph /invoke, Postgres, 2 replicas", c)
                rows.append(
                    [
                        team,
                        str(c),
                        fx(ratio(one["p50_ms"], cell(r, team, "teamgraph /invoke", c)["p50_ms"])),
                        fx(
                            ratio(
                                cell(r, team, "in-process ainvoke, Postgres", c)["p50_ms"],
                                cell(r, team, "in-process ainvoke", c)["p50_ms"],
                            )
                        ),
                        fx(ratio(one["p50_ms"], cell(r, team, "in-process ainvoke, Postgres", c)["p50_ms"])),
                        fx(ratio(two["turns_per_s"], one["turns_per_s"])),
                        fx(ratio(two.get("cpu_ms_per_turn", math.nan), one.get("cpu_ms_per_turn", math.nan))),
                        ms(two.get("lock_wait_ms_mean", math.nan), 2),
                    ]
                )
        s.append(
            table(
                [
                    "team",
                    "c",
                    "/invoke Postgres ÷ SQLite",
                    "ainvoke Postgres ÷ SQLite",
                    "/invoke ÷ ainvoke (Postgres)",
                    "2 replicas ÷ 1: turns/s",
                    "2 replicas ÷ 1: CPU/turn",
                    "2 replicas: lock wait ms",
                ],
                rows,
            )
            + "\n"
        )

    # 2. TTFT
    t = r["ttft"]
    s.append("## 2. Time to first token\n")
    s.append(
        "veneo_chat at concurrency 1, time from sending the turn to the first token of the primary responder "
        "(the reply's first words); samples are turns of 10-turn conversations. In-process: "
        '`graph.astream(stream_mode="messages")`; Teamgraph: LangServe `/stream_events` (what a frontend uses for '
        'tokens); `langgraph dev`: `runs.stream(stream_mode="messages-tuple")`. The bench\'s bundles allow draft '
        "streaming (`safety.stream_drafts: true` in a copy of personas/), since with the shipped setting the server "
        "deliberately sends no token before review (see Method). *teamgraph (chat_model events only)*: the same "
        'endpoint with `include_types: ["chat_model"]` in the request, as a client that only wants tokens can '
        "ask; the goal is judged on the unfiltered stream, what `RemoteRunnable.astream_events` requests.\n"
    )
    rows = []
    for mode in t:
        d = t[mode]
        rows.append(
            [mode, str(d["n"]), ms(d["p50_ms"], 2), ms(d["p95_ms"], 2), ms(d["p99_ms"], 2), ms(d["turn_p50_ms"], 2)]
        )
    s.append(table(["mode", "samples", "first token p50", "p95", "p99", "whole turn p50"], rows) + "\n")

    # 3. growth
    s.append("## 3. Growth with history\n")
    last = prof["growth_turns"]
    s.append(
        f"One thread, {last} turns in a row, {prof['growth_reps']} thread(s) per team and mode (medians across "
        "them). *bytes* = checkpoint + metadata blobs (`checkpoints` table) and pending-write values (`writes` "
        "table) that the turn added for the thread, read from the SQLite file; *archive* = bytes the memory keeper "
        "moved to the store that turn; *messages* = messages left in state after the turn. Chat turns cycle through "
        "10 questions; the interview is set up, answers its 3 questions, then every further turn asks for the "
        'summary again. Turns run with `durability="exit"` (`TEAMGRAPH_DURABILITY`, the default): one checkpoint '
        "when the turn ends. *bytes if durability=async*: the same turns in-process with LangGraph's default "
        '`ainvoke(durability="async")`, a checkpoint after every step, for comparison, and the time those turns '
        "took (mean of the 10 turns to that one).\n"
    )
    s.append(
        "What keeps it bounded: every turn ends in `memory_keeper`. Once state holds more than "
        "`memory.max_messages` messages (chat 16, interview 24) it moves the oldest to the LangGraph store "
        "(transcript archive), keeps `memory.keep_messages` (8), and folds what it moved into `rolling_summary` "
        "(chat: one model call, whose text is bounded); `review_decisions` is capped at `keep_messages` too. So "
        "state, and with it each checkpoint, stops growing once the budget is first reached and then saw-tooths "
        "between 8 and 16 (chat) messages.\n"
    )
    g_all = r.get("growth", {})
    for team in ("veneo_chat", "interview"):
        modes = g_all.get(team, {})
        if not modes:
            continue
        s.append(f"### {team}\n")
        rows = []
        for turn in KEY_TURNS:
            if turn > last:
                continue
            row = [str(turn)]
            for mode in ("in-process ainvoke", "teamgraph /invoke"):
                reps = modes.get(mode, [])
                row += [
                    ms(growth_at(reps, turn, "latency_s") * 1000, 2),
                    ms(growth_window(reps, turn, "latency_s") * 1000, 2) if turn >= 10 else "–",
                ]
            reps = modes.get("teamgraph /invoke", [])
            async_reps = modes.get("in-process ainvoke, durability=async", [])
            row += [
                f"{growth_at(reps, turn, 'bytes') / 1000:.1f} kB",
                str(int(growth_at(reps, turn, "checkpoints"))),
                f"{growth_at(async_reps, turn, 'bytes') / 1000:.1f} kB" if async_reps else "–",
                ms(growth_window(async_reps, turn, "latency_s") * 1000, 2) if async_reps and turn >= 10 else "–",
                f"{growth_at(reps, turn, 'store_bytes') / 1000:.1f} kB",
                str(int(growth_at(reps, turn, "messages"))),
            ]
            rows.append(row)
        s.append(
            table(
                [
                    "turn",
                    "in-process ms",
                    "(mean of 10 turns to here)",
                    "/invoke ms",
                    "(mean of 10 turns to here)",
                    "bytes",
                    "checkpoints",
                    "bytes if durability=async",
                    "(in-process ms, mean of 10)",
                    "archive",
                    "messages",
                ],
                rows,
            )
            + "\n"
        )
        # the curve: every 10th turn
        reps = modes.get("teamgraph /invoke", [])
        ireps = modes.get("in-process ainvoke", [])
        curve = []
        for turn in [1, 2, 3, 5, *range(10, last + 1, 10)]:
            if turn > last:
                continue
            curve.append(
                [
                    str(turn),
                    ms(growth_at(ireps, turn, "latency_s") * 1000, 2),
                    ms(growth_at(reps, turn, "latency_s") * 1000, 2),
                    f"{growth_at(reps, turn, 'bytes') / 1000:.1f}",
                    str(int(growth_at(reps, turn, "messages"))),
                    _bar(growth_at(reps, turn, "bytes"), max(p["bytes"] for rep in reps for p in rep) if reps else 1),
                ]
            )
        s.append("<details><summary>the curve (every 10th turn)</summary>\n")
        s.append(
            table(["turn", "in-process ms", "/invoke ms", "kB written", "messages", "bytes"], curve, "rrrrrl") + "\n"
        )
        s.append("</details>\n")

    # 4 + 5 memory and listing
    m = r.get("memory", {})
    srv = r.get("servers", {})
    s.append("## 4. Memory\n")
    s.append(
        "Resident set size from `/proc/<pid>/status` (VmRSS; for `langgraph dev` its whole process tree). The "
        "Teamgraph figures come from a freshly started server (own SQLite file): idle 2 s after it answered "
        f"`/healthz`, then after {m.get('sessions', 0)} sessions were created (`POST /sessions`) and each ran one "
        "turn (`/invoke`, alternating teams, 8 at a time).\n"
    )
    rows = [
        ["Teamgraph, idle", mb(m.get("rss_idle", math.nan))],
        [f"Teamgraph, after {m.get('sessions', 0)} sessions × 1 turn", mb(m.get("rss_after_sessions", math.nan))],
        [
            "Teamgraph, after the whole latency run (main server)",
            mb(srv.get("teamgraph", {}).get("rss_after_run", math.nan)),
        ],
        ["`langgraph dev`, idle", mb(srv.get("langgraph dev", {}).get("rss_idle", math.nan))],
        [
            "`langgraph dev`, after the whole latency run",
            mb(srv.get("langgraph dev", {}).get("rss_after_run", math.nan)),
        ],
    ]
    s.append(table(["process", "RSS"], rows) + "\n")
    s.append("## 5. Session listing\n")
    lst = m.get("listing") or {}
    s.append(
        f"`GET /sessions` as the tenant `veneo` with {lst.get('sessions_in_index', 0):,} of its sessions in the index "
        "(rows added to the server's own `sessions` table beside the ones created above), one request at a time, "
        f"{prof['listing_requests']} requests per variant after 5 warm-up requests; ms.\n"
    )
    rows = []
    for name, d in (lst.get("variants") or {}).items():
        rows.append([f"`{name}`", str(d["items"]), ms(d["p50_ms"], 2), ms(d["p95_ms"], 2), ms(d["p99_ms"], 2)])
    s.append(table(["request", "items", "p50", "p95", "p99"], rows) + "\n")

    # ablation
    ab = r.get("ablation") or []
    if ab and "overhead_ms" in (ab[0].get("c1") or {}):
        c_max = max(prof["concurrency"])
        s.append("## 6. What each piece of the server costs (ablation)\n")
        s.append(
            "Experiments, not configurations: one Teamgraph server per row, each with the named pieces switched off "
            "by monkeypatching inside that server process (`bench/ablation.py`; product code untouched), all "
            f"running at once. In {prof.get('ablation_rounds', 1)} round(s), every row gets a veneo_chat `/invoke` "
            f"cell at concurrency 1 and at {c_max} ({prof.get('ablation_s', 0):.0f} s each), each right after an "
            "in-process `ainvoke` cell of the same length, so *overhead* (server p50 − in-process p50, median over "
            "rounds) is taken on the same seconds of a shared machine. *observer* = the TurnObserver callback "
            "handler on the run (with it its spans, node/turn logs, metrics and the turn's audit entries); "
            "*audit* = audit appends only; *spans* = the OpenTelemetry SDK tracer (a no-op tracer instead; with no "
            "exporter configured the product already creates only the HTTP request span); "
            "*touch* = the session index's per-turn update; *logs* = structlog info lines (uvicorn's access log is "
            f"off in every server, as `teamgraph serve` runs it). *errors* at c={c_max}: turns that failed with "
            "500/503 after a stalled SQLite write (see below).\n"
        )
        base = ab[0]
        b_over = base["c1"]["overhead_ms"]
        b_tps = base[f"c{c_max}"]["teamgraph_turns_per_s"]
        rows = []
        for row in ab:
            one, many = row["c1"], row[f"c{c_max}"]
            rows.append(
                [
                    ", ".join(row["off"]) or "nothing (as shipped)",
                    ms(one["teamgraph_p50_ms"], 2),
                    ms(one["overhead_ms"], 2),
                    fx(one["ratio"]),
                    "–" if row is base else f"{b_over - one['overhead_ms']:+.2f}",
                    ms(many["teamgraph_turns_per_s"], 1),
                    fx(ratio(many["teamgraph_turns_per_s"], many["in_process_turns_per_s"])),
                    "–" if row is base else f"{many['teamgraph_turns_per_s'] - b_tps:+.1f}",
                    str(many["errors"]),
                ]
            )
        s.append(
            table(
                [
                    "switched off",
                    "c=1 p50 ms",
                    "overhead ms",
                    "÷ in-process",
                    "overhead saved ms",
                    f"c={c_max} turns/s",
                    "÷ in-process",
                    "turns/s gained",
                    "errors",
                ],
                rows,
            )
            + "\n"
        )

    # notes (hand-written profiles of the misses)
    s.append("## What limits the missed goals\n")
    if NOTES.exists():
        s.append(NOTES.read_text().strip() + "\n")
    else:
        s.append("No notes.\n")

    # storage per session: measured apart, by `python -m bench.storage` (bench/storage.py)
    if STORAGE.exists():
        s.append(STORAGE.read_text().strip() + "\n")

    # start-up of the `teamgraph` executable: measured by this run (bench/startup.py)
    s.extend(startup.render(r.get("startup")))

    s.append("## Method\n")
    s.append(METHOD.strip() + "\n")

    s.append("## Machine and versions\n")
    s.append(
        f"{env['cores']} cores ({env['cpu'] or 'unknown CPU'}), {env['memory_gib']} GiB memory, {env['os']}, "
        f"Python {env['python']}, bench event loop {r.get('event_loop', '?')}; commit {env['commit']}. "
        "Server start-up: "
        f"Teamgraph {srv.get('teamgraph', {}).get('startup_s', math.nan):.1f} s, `langgraph dev` "
        f"{srv.get('langgraph dev', {}).get('startup_s', math.nan):.1f} s.\n"
    )
    s.append(table(["package", "version"], [[k, v] for k, v in env["packages"].items()], "ll") + "\n")
    return "\n".join(s)


def _bar(value: float, top: float, width: int = 30) -> str:
    if math.isnan(value) or top <= 0:
        return ""
    return "`" + "█" * max(1, round(value / top * width)) + "`"


METHOD = """
- **The model** (`bench/fake_model.py`): a langchain-core `BaseChatModel` subclass with zero latency that answers
  every prompt with the same 53-token text, streamed token by token when the caller streams, and every structured
  call with valid JSON. It has no tool calling, so the nodes' `ask_structured` falls back to asking for JSON in the
  prompt; the model reads the schema's title and answers a valid `ReviewOutput` (approve), `QuestionSet` or
  `EvaluationOutput` (every rubric criterion named in the prompt scored). `BenchFactory` (an `AgentFactory`)
  hands it to every persona, so every node takes its LLM path: a chat turn is the responder's streamed answer plus
  the safety reviewer's rule layer *and* its LLM review; an interview turn generates questions or scores an
  answer with the model, and the last answer also gets the model's summary narrative.
- **The work**: fixed conversations, identical in every mode. veneo_chat (tenant `veneo`): 10 questions per
  thread, so each conversation also crosses the memory budget once (trim + rolling summary call at turn 9).
  interview (tenant `demo`, 3 questions): resume + job description, then 3 answers. A new conversation starts a
  new thread, outside the timed turn in every mode.
- **In-process**: the graphs compiled by `server.engine.Engine` with its `AsyncSqliteSaver` + `AsyncSqliteStore`
  (one SQLite file, WAL), the run config built by `Engine.run_config`, `graph.ainvoke` / `graph.astream` in the
  bench process. Nothing of the server (no turn lock, no session index, no observer, no audit) is timed: this is
  LangGraph itself.
- **Teamgraph's server**: `create_app(Settings(...), agent_factory=BenchFactory())` (`bench/asgi.py`) under real
  uvicorn in a subprocess on 127.0.0.1, one worker, uvicorn's defaults as `teamgraph serve` uses them; the
  tenant's API key on every request, so auth, the configurable allow-list, per-tenant run config, session
  ownership, the turn lock and the session index all run. Client: one `httpx.AsyncClient` in the bench process;
  `/invoke` and `/stream` (the graph's own stream mode, `updates`); sessions created with `POST /sessions`.
- **`langgraph dev`**: `langgraph dev --no-browser --no-reload` on 127.0.0.1 from a temp dir with a
  langgraph.json (absolute paths) naming `bench/dev_graphs.py`: the same graph objects, the product's auth
  (`server/studio_auth.py`, the same tenant keys), and as custom checkpointer and store the same
  `AsyncSqliteSaver` / `AsyncSqliteStore` opened by `checkpoints.factory.build_persistence` on its own SQLite
  file. The bench model reaches the nodes through `nodes.configuration`'s fallback factory (the path graphs take
  under `langgraph dev`). Driven by the LangGraph SDK: `runs.wait`, `runs.stream(stream_mode="updates")`,
  threads created with `threads.create`. Its defaults otherwise (in-memory run queue, 10 jobs per worker).
- **Concurrency**: `c` client workers, each on its own threads (sessions), each waiting for its turn's answer
  before sending the next; all three modes use the same loop in the same client process (uvloop), on a 2-core
  machine shared by client and server.
- **First token and streaming drafts**: for tenants whose safety reviewer does not allow draft streaming (the
  shipped default) the server leaves the responder's draft tokens out of `/stream_events` on purpose: clients see
  reviewed text only, so there is no token before the review. The bench runs every mode on a copy of the
  bundles where `safety_reviewer.safety.stream_drafts` is `true` (`bench/bundle.py`; nothing else differs), the
  setting of a tenant whose frontend renders tokens as they come.
- **Percentiles**: nearest rank over all turns of a cell. Latency is measured in the client, from sending the
  turn to having its whole answer (for streams: the end of the stream).
"""
