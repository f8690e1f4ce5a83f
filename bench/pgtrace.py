"""What a turn asks of PostgreSQL: round trips, statements and commits that wait for a WAL flush, per component.

    python -m bench.pgtrace                         # veneo_chat, 100 /invoke turns on a scratch database
    python -m bench.pgtrace --team interview --turns 40 --show 1   # and one turn's exchanges, in order
    python -m bench.pgtrace --rev main              # that revision's server instead of the working tree's

The whole app (`create_app` with the bench model) runs in one process on a scratch database
(`bench.postgres.scratch_database`), driven over ASGI as `bench.calls` does, with libpq's protocol trace
(`PQtrace`) on every connection psycopg opens. The trace is the ground truth of what went over each socket: a
*round trip* is what the client sends before it waits for an answer (a Sync or a simple Query answered by
ReadyForQuery, or a Flush whose results it reads before sending more); a *durable commit* is a transaction that
wrote (INSERT, UPDATE, DELETE; `pg_advisory_lock` writes nothing) and committed with `synchronous_commit` on, so
the server waited for a WAL flush (`fdatasync`) before answering; an *async commit* wrote with it off. Each
connection is named by the component that owns it (checkpointer and store pool, session index, audit log, turn
locks). The time shown is the client's wall time from a round trip's first message to its ReadyForQuery (on a
loaded machine it includes waiting for the CPU). Prints only; nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_STAMPED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\t[FB]\t")
_WRITE_TAG = re.compile(r'CommandComplete\t "(INSERT \d+ [1-9]\d*|UPDATE [1-9]\d*|DELETE [1-9]\d*)"')


@dataclass
class RoundTrip:
    owner: str
    started: float
    ended: float
    statements: list[str] = field(default_factory=list)
    wrote: bool = False
    status: str = "I"  # ReadyForQuery's transaction status after it: I idle, T in a transaction, E failed
    sync_commit_off: bool = False

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1000


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def parse_trace(path: Path, owner: str) -> list[RoundTrip]:
    """One connection's libpq trace -> its round trips, each marked when it ended a transaction that wrote."""
    trips: list[RoundTrip] = []
    current: RoundTrip | None = None
    wrote_in_tx = False
    sync_off_in_tx = False
    prepared: dict[str, str] = {}
    answered = 0.0  # when the backend last answered within the current round trip
    records: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if _STAMPED.match(line) or not records:
            records.append(line)
        else:  # a query's text went on over several lines
            records[-1] += " " + line
    for line in records:
        parts = line.split("\t", 3)
        if len(parts) < 4:
            continue
        stamp, direction, _length, message = parts
        try:
            at = _stamp(stamp)
        except ValueError:
            continue
        if direction == "F":
            if current is not None and answered:
                # the client sends again after reading an answer it asked for with Flush (a pipeline fetching
                # results mid-transaction): that was a round trip of its own
                current.ended = answered
                current.status = "T"
                trips.append(current)
                current = None
            answered = 0.0
            if current is None:
                current = RoundTrip(owner, at, at)
            quoted = message.split('"')
            text = None
            if message.startswith("Parse"):  # Parse "name" "sql": named ones are prepared, run later by Bind
                text = re.sub(r"\s+", " ", quoted[3]).strip() or "(empty query: the pool's check)"
                if quoted[1]:
                    prepared[quoted[1]] = text
                    text = None
            elif message.startswith("Bind"):  # Bind "portal" "statement"
                text = prepared.get(quoted[3])
            elif message.startswith("Query"):
                text = re.sub(r"\s+", " ", quoted[1]).strip()
            if text is not None:
                current.statements.append(text[:90])
                if "synchronous_commit" in text and "off" in text:
                    sync_off_in_tx = True
        else:
            if current is None:
                continue
            if _WRITE_TAG.search(line):
                wrote_in_tx = True
            answered = at
            if message.startswith("ReadyForQuery"):
                answered = 0.0
                current.ended = at
                current.status = message.split()[-1]
                if current.status == "I":
                    current.wrote = wrote_in_tx
                    current.sync_commit_off = sync_off_in_tx
                    wrote_in_tx = sync_off_in_tx = False
                trips.append(current)
                current = None
    return trips


async def _run(team: str, turns: int, url: str, trace_dir: Path) -> tuple[float, float, dict[str, str]]:
    import httpx
    import psycopg

    from bench.bundle import make_bench_bundles
    from bench.drivers import KEYS, TENANT, TeamgraphHTTP, script
    from bench.fake_model import BenchFactory
    from server.app import create_app
    from server.settings import Settings

    traced: dict[str, Any] = {}  # trace file name -> connection
    original_init = psycopg.BaseConnection.__init__

    def traced_init(self: Any, pgconn: Any) -> None:
        original_init(self, pgconn)
        name = f"conn{len(traced):03d}"
        fd = os.open(trace_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        pgconn.trace(fd)  # libpq writes every protocol message, with a timestamp, to this file
        traced[name] = self

    psycopg.BaseConnection.__init__ = traced_init  # type: ignore[method-assign]
    workdir = Path(tempfile.mkdtemp(prefix="teamgraph-pgtrace-"))
    try:
        bundles = make_bench_bundles(workdir / "personas")
        settings = Settings(_env_file=None, checkpoint_url=url, personas_dir=bundles)  # type: ignore[call-arg]
        app = create_app(settings, agent_factory=BenchFactory())
        headers = {"Authorization": f"Bearer {KEYS[TENANT[team]]}"}
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client,
        ):
            engine = app.state.engine
            persistence = engine.persistence

            async def drive(n: int) -> None:
                done = 0
                while done < n:
                    created = await client.post("/sessions", json={"team": team}, headers=headers)
                    thread = created.json()["id"]
                    for spec in script(team)[: n - done]:
                        body = TeamgraphHTTP._body(thread, spec)
                        r = await client.post(f"/teams/{team}/invoke", json=body, headers=headers)
                        if r.status_code != 200:
                            raise RuntimeError(f"/invoke {r.status_code}: {r.text[:300]}")
                        done += 1

            await drive(20)  # warm: connections opened, caches filled
            await asyncio.sleep(0.2)
            started = time.time()
            await drive(turns)
            ended = time.time()
            await asyncio.sleep(0.2)  # every pooled connection back in its pool
            named: dict[int, str] = {}
            for label, pool in (("checkpointer+store pool", persistence.checkpointer.conn),
                                ("session index", getattr(persistence.sessions, "pool", None)),
                                ("audit log", getattr(persistence.audit, "pool", None))):  # fmt: skip
                named.update({id(conn): label for conn in getattr(pool, "_pool", ())})
            named.update({id(lock._conn): "turn locks" for lock in engine.turn_locks._pg if lock._conn is not None})
            owners = {name: named.get(id(conn), "other") for name, conn in traced.items()}
            for conn in traced.values():
                if not conn.closed:
                    conn.pgconn.untrace()
        return started, ended, owners
    finally:
        psycopg.BaseConnection.__init__ = original_init  # type: ignore[method-assign]
        shutil.rmtree(workdir, ignore_errors=True)


def report(trace_dir: Path, started: float, ended: float, owners: dict[str, str], turns: int, show: int) -> None:
    trips = [
        t
        for name, owner in owners.items()
        if (trace_dir / name).exists()
        for t in parse_trace(trace_dir / name, owner)
        if started <= t.started <= ended
    ]
    by_owner: dict[str, list[RoundTrip]] = collections.defaultdict(list)
    for t in trips:
        by_owner[t.owner].append(t)
    print(f"per /invoke turn ({turns} turns; sessions created outside the turns are included, one per conversation)")
    print(f"{'component':<26} {'round trips':>11} {'statements':>10} {'durable commits':>15} {'async commits':>13}"
          f" {'ms (durable commit)':>19} {'ms (other trip)':>15} {'ms waited':>9}")  # fmt: skip
    total: collections.Counter[str] = collections.Counter()
    for owner, items in sorted(by_owner.items()):
        durable = [t for t in items if t.wrote and not t.sync_commit_off]
        lazy = [t for t in items if t.wrote and t.sync_commit_off]
        other = [t for t in items if not t.wrote]
        row = {"trips": len(items), "statements": sum(len(t.statements) for t in items), "durable": len(durable),
               "async": len(lazy), "ms": sum(t.ms for t in items)}  # fmt: skip
        total.update(row)
        med = lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan")  # noqa: E731
        print(f"{owner:<26} {row['trips'] / turns:11.2f} {row['statements'] / turns:10.2f} "
              f"{row['durable'] / turns:15.2f} {row['async'] / turns:13.2f} "
              f"{med([t.ms for t in durable]):19.2f} {med([t.ms for t in other]):15.2f} "
              f"{row['ms'] / turns:9.2f}")  # fmt: skip
    print(f"{'total':<26} {total['trips'] / turns:11.2f} {total['statements'] / turns:10.2f} "
          f"{total['durable'] / turns:15.2f} {total['async'] / turns:13.2f} {'':>19} {'':>15} "
          f"{total['ms'] / turns:9.2f}")  # fmt: skip
    if show:
        print("\nround trips in order, from the middle of the run (a turn starts at its session lookup):")
        ordered = sorted(trips, key=lambda t: t.started)
        middle = len(ordered) // 2
        per_turn = max(1, len(ordered) // turns)
        for t in ordered[middle : middle + per_turn * show]:
            kind = "DURABLE COMMIT" if t.wrote and not t.sync_commit_off else ("async commit" if t.wrote else "")
            print(f"  {t.owner:<24} {t.ms:7.2f} ms {kind:<14} {' | '.join(t.statements) or '(Sync only)'}"[:230])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgtrace", description=__doc__.splitlines()[0])
    parser.add_argument("--team", default="veneo_chat", choices=["veneo_chat", "interview"])
    parser.add_argument("--turns", type=int, default=100, help="turns traced (after 20 warm-up turns)")
    parser.add_argument("--show", type=int, default=0, help="also list the round trips of about this many turns")
    parser.add_argument("--rev", help="trace this git revision's server instead (from a temporary git worktree)")
    parser.add_argument("--child", nargs=2, metavar=("URL", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        # in a process of its own: libpq's trace files are stdio streams, flushed when the process exits
        started, ended, owners = asyncio.run(_run(args.team, args.turns, args.child[0], Path(args.child[1])))
        (Path(args.child[1]) / "window.json").write_text(json.dumps([started, ended, owners]))
        return 0
    from bench.postgres import base_url, scratch_database

    trace_dir = Path(tempfile.mkdtemp(prefix="teamgraph-pgtrace-files-"))
    tree = REPO
    try:
        if args.rev:  # its product and bench helpers; this file loaded by path (a revision without it works too)
            tree = trace_dir / "tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), args.rev],
                           check=True)  # fmt: skip
        with scratch_database("tg_pgtrace") as url:
            if url is None:
                raise SystemExit(f"cannot reach {base_url()}")
            subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--team", args.team, "--turns", str(args.turns),
                 "--child", url, str(trace_dir)],
                cwd=tree, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(tree)},
            )  # fmt: skip
        started, ended, owners = json.loads((trace_dir / "window.json").read_text())
        report(trace_dir, started, ended, owners, args.turns, args.show)
    finally:
        if args.rev:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        if not os.environ.get("PGTRACE_KEEP"):
            shutil.rmtree(trace_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
