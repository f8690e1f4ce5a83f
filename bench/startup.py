"""Start-up: how long `teamgraph` takes before it is useful, as an operator runs it.

- `teamgraph --help` and `teamgraph personas validate <shipped bundles>`: wall time of the process, from exec to
  exit (one untimed run first, so the page cache is warm as on any second invocation);
- `teamgraph serve` (default settings, shipped bundles, 127.0.0.1): from exec to the first `GET /readyz` 200
  (polled every 10 ms), on SQLite and on Postgres (a schema of its own in the test database, dropped after;
  skipped when Postgres does not answer): the first start on an empty database (creates the tables) and
  restarts on the database it left.

`python -m bench` runs it as its last phase (`results["startup"]`); `python -m bench.startup` runs it alone and
prints the section of docs/performance.md it renders. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.postgres import scratch_schema
from bench.procs import BIN, REPO, ServerProcess, clean_env, stop_all

GOAL_CLI_S = 1.0
RUNS = {"short": (5, 2), "full": (9, 4)}  # profile -> (runs per command, restarts per database)
POSTGRES_URL = os.environ.get("TEAMGRAPH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
COMMANDS = {
    "teamgraph --help": ["--help"],
    "teamgraph personas validate": ["personas", "validate", str(REPO / "personas")],
    "teamgraph serve --help": ["serve", "--help"],
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "runs": len(samples),
        "median_s": statistics.median(samples) if samples else math.nan,
        "min_s": min(samples, default=math.nan),
        "max_s": max(samples, default=math.nan),
        "samples_s": samples,
    }


def time_command(args: list[str], runs: int, workdir: Path) -> dict[str, Any]:
    """Wall time of `teamgraph *args` run `runs` times (after one untimed run), and the CPU time it used (user +
    system: what a loaded machine does not inflate much); each run must exit 0."""
    command = [str(BIN / "teamgraph"), *args]
    env = clean_env({})
    samples, cpu = [], []
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
        elapsed = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        if i:
            samples.append(elapsed)
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {**summary(samples), "cpu_median_s": statistics.median(cpu)}


class ServeCommand(ServerProcess):
    """`teamgraph serve` itself (not the bench app): the shipped bundles, no model key, default workers."""

    name = "teamgraph-serve"
    health_path = "/readyz"

    def __init__(self, workdir: Path, checkpoint_url: str):
        super().__init__(workdir, env={"TEAMGRAPH_CHECKPOINT_URL": checkpoint_url}, startup_timeout=120.0)

    def command(self) -> list[str]:
        return [str(BIN / "teamgraph"), "serve", "--host", "127.0.0.1", "--port", str(self.port)]

    def _wait_ready(self) -> None:
        # finer than ServerProcess's 0.2 s polling: the poll interval is the resolution of the measurement
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self._tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + self.health_path).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready within {self.startup_timeout} s:\n{self._tail()}")
                time.sleep(0.01)


def time_serve(checkpoint_url: str, restarts: int, workdir: Path) -> dict[str, Any]:
    """First start on an empty database, then `restarts` restarts on what it left: seconds to the first /readyz,
    and the CPU time of the server's processes from exec to exit (stopped right after it answered)."""
    starts, cpu = [], []
    for i in range(restarts + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with ServeCommand(workdir / f"serve-{i}", checkpoint_url) as server:
            starts.append(server.started_s)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    restart = {**summary(starts[1:]), "cpu_median_s": statistics.median(cpu[1:]) if cpu[1:] else math.nan}
    return {"first_start_s": starts[0], "first_start_cpu_s": cpu[0], "restart": restart}


def postgres_unreachable(url: str) -> str | None:
    """Why the Postgres rows cannot be measured (None when the database answers)."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"{url.split('@')[-1]} does not answer ({type(exc).__name__})"


def postgres_schema(url: str) -> contextlib.AbstractContextManager[str]:
    """A URL whose connections use a fresh schema of the test database (dropped on exit)."""
    return scratch_schema(url, "bench_startup")


def log_serve(db: str, d: dict[str, Any]) -> None:
    log(f"teamgraph serve -> /readyz, {db}: first {d['first_start_s']:.2f} s, restart {d['restart']['median_s']:.2f} s")


def measure(profile: str, workdir: Path, postgres_url: str | None = POSTGRES_URL) -> dict[str, Any]:
    runs, restarts = RUNS[profile]
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"commands": {}, "serve": {}}
    for name, args in COMMANDS.items():
        out["commands"][name] = d = time_command(args, runs, workdir)
        log(
            f"{name:<28} median {d['median_s']:.2f} s (min {d['min_s']:.2f}, max {d['max_s']:.2f}; {runs} runs), "
            f"CPU {d['cpu_median_s']:.2f} s"
        )
    out["serve"]["SQLite"] = d = time_serve(f"sqlite:///{workdir}/startup.db", restarts, workdir / "sqlite")
    log_serve("SQLite", d)
    unreachable = postgres_unreachable(postgres_url) if postgres_url else "no URL given"
    if unreachable:
        out["serve"]["PostgreSQL"] = {"skipped": unreachable}
        log(f"teamgraph serve on PostgreSQL skipped: {unreachable}")
    else:
        assert postgres_url is not None
        with postgres_schema(postgres_url) as url:
            out["serve"]["PostgreSQL"] = d = time_serve(url, restarts, workdir / "postgres")
        log_serve("PostgreSQL", d)
    return out


# ------------------------------------------------------------------------------------------- report (bench/report.py)


def _s(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.2f} s"


def _why_slow_cli(helps: dict[str, Any], validate: dict[str, Any]) -> str:
    cpu = max(helps.get("cpu_median_s", math.nan), validate.get("cpu_median_s", math.nan))
    if cpu < GOAL_CLI_S:
        return (
            f"the processes used at most {_s(cpu)} of CPU: the rest of the wall time was waiting for a core on a "
            "loaded machine (see section 8)"
        )
    return "they use more than a second of CPU: see section 8 and `python -X importtime` of the command"


def goals(startup: dict[str, Any] | None) -> list[tuple[str, str, str, bool | None]]:
    """Rows of the goals table: (goal, measured, why, met); none for a run made before this phase existed."""
    if not startup:
        return []
    cmds = startup["commands"]
    helps, validate = cmds["teamgraph --help"], cmds["teamgraph personas validate"]
    ok = max(helps["median_s"], validate["median_s"]) < GOAL_CLI_S
    rows: list[tuple[str, str, str, bool | None]] = [
        (
            f"`teamgraph --help` and `teamgraph personas validate` start in < {GOAL_CLI_S:.0f} s",
            f"`--help` {_s(helps['median_s'])}, `personas validate` {_s(validate['median_s'])} "
            f"(medians of {helps['runs']} runs; slowest {_s(max(helps['max_s'], validate['max_s']))}; CPU "
            f"{_s(helps.get('cpu_median_s', math.nan))} and {_s(validate.get('cpu_median_s', math.nan))})",
            "the CLI imports typer only; each command imports what it runs (`personas validate`: pydantic, PyYAML "
            "and the bundle schema, no LangGraph or server; tests/unit_tests/test_cli_imports.py keeps it so)"
            if ok
            else _why_slow_cli(helps, validate),
            ok,
        )
    ]
    parts = []
    for db, d in startup["serve"].items():
        if "skipped" in d:
            parts.append(f"{db}: not measured ({d['skipped']})")
        else:
            parts.append(
                f"{db}: {_s(d['restart']['median_s'])} (restart, median of {d['restart']['runs']}; CPU "
                f"{_s(d['restart'].get('cpu_median_s', math.nan))}), {_s(d['first_start_s'])} on an empty database"
            )
    rows.append(
        (
            "`teamgraph serve` start to first `/readyz` 200 (reported; no goal set)",
            "; ".join(parts),
            "most of it is importing the server's libraries (about three quarters of its CPU time in a profile: "
            "langchain-core with LangSmith, FastAPI, pydantic, LangGraph, LangServe, structlog); the rest builds the "
            "app (both teams' graphs, LangServe's routes and their JSON schemas, the bundles) and opens the database; "
            "the OpenAI SDK (voice, moderation) and psycopg (on SQLite) are imported only when used "
            "(`python -X importtime -c 'import server.app'` shows the rest)",
            None,
        )
    )
    return rows


def render(startup: dict[str, Any] | None) -> list[str]:
    """Section 8 of docs/performance.md (nothing for a run made before this phase existed)."""
    from bench.report import table

    if not startup:
        return []
    s = ["## 8. Start-up\n"]
    s.append(
        "Wall time of the `teamgraph` executable as an operator runs it, measured in a separate phase after every "
        "server of the run has stopped (`bench/startup.py`; `python -m bench.startup` runs it alone). Commands: "
        "from exec to exit, one untimed run first. *CPU*: user + system time of the process (for `serve`: of all its "
        "processes from exec until it exited, stopped right after it answered), which a loaded machine inflates much "
        "less than wall time. `teamgraph serve`: default settings, the shipped bundles, no "
        "model key, from exec until `GET /readyz` first answers 200 (polled every 10 ms): the first start on an "
        "empty database, which creates the tables, then restarts on the database it left. PostgreSQL: a schema of "
        "its own in the local test database, with `teamgraph serve`'s default worker count for PostgreSQL.\n"
    )
    rows = []
    for name, d in startup["commands"].items():
        rows.append(
            [f"`{name}`", str(d["runs"]), _s(d["median_s"]), _s(d["min_s"]), _s(d["max_s"]), _s(d["cpu_median_s"])]
        )
    for db, d in startup["serve"].items():
        if "skipped" in d:
            rows.append([f"`teamgraph serve` → `/readyz`, {db}", "0", "–", "–", f"not measured: {d['skipped']}", ""])
            continue
        r = d["restart"]
        rows.append([f"`teamgraph serve` → `/readyz`, {db}, restart", str(r["runs"]), _s(r["median_s"]),
                     _s(r["min_s"]), _s(r["max_s"]), _s(r.get("cpu_median_s", math.nan))])  # fmt: skip
        rows.append([f"`teamgraph serve` → `/readyz`, {db}, empty database", "1", _s(d["first_start_s"]), "", "",
                     _s(d.get("first_start_cpu_s", math.nan))])  # fmt: skip
    s.append(table(["what", "runs", "median", "min", "max", "CPU (median)"], rows) + "\n")
    return s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(RUNS), default="short", help="runs per measurement")
    parser.add_argument("--postgres", default=POSTGRES_URL, help="database for the Postgres rows ('' to skip)")
    parser.add_argument("--json", action="store_true", help="print the raw numbers instead of the section")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="teamgraph-bench-startup-") as tmp:
        try:
            results = measure(args.profile, Path(tmp), args.postgres or None)
        finally:
            stop_all()
    print(json.dumps(results, indent=1) if args.json else "\n".join(render(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
