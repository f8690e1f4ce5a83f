"""Python function calls per turn: a count, not a time, so a loaded machine does not move it.

    python -m bench.calls                       # the working tree: in-process ainvoke and the server's /invoke
    python -m bench.calls --rev main --team interview   # that revision too (from a git worktree), side by side
    python -m bench.calls --mode stream --ablate observer  # astream and /stream; with the observer switched off
    python -m bench.calls --mode first-token --rev main   # calls, events and bytes before the first chat token

Each turn of the bench conversations (`bench.drivers.script`) runs once as in-process `graph.ainvoke` (the
report's in-process rows) and once as `POST /teams/{team}/invoke` through the whole app (`create_app` with the
bench model, every middleware, LangServe, auth, sessions, audit, observer) driven in the same process by an httpx
client on the ASGI interface: no sockets and no uvicorn, so it measures the app's own Python work per request
(plus the httpx client's, about the same in every revision). cProfile counts every function call, C functions
and coroutine resumptions included, on the event loop's thread only (what worker threads do, audit and session
writes in `asyncio.to_thread`, aiosqlite's queries, is not counted); the difference between the two rows is the
server's fixed cost in calls on the loop.
`--mode first-token` counts only up to the chat responder's first token, as the report's first-token row times
it: in-process `astream(stream_mode="messages")` against `POST /teams/{team}/stream_events` (the ASGI app called
directly, so the count stops at the `send` of the body chunk that holds the token; no buffering client in
between), the same with `include_types: ["chat_model"]`, and in-process `astream_events` (LangChain's event
machinery without the server: the part of the gap the server does not add). The server rows also give the SSE
events and bytes sent before and with the first token.
CPU ms per turn (process time, without the profiler) is printed beside it, but it moves with the machine's load;
the count does not (to within a fraction of a percent). Each new conversation's session is created inside the
count in both modes (`Engine.create_session`, `POST /sessions`): one per 10 chat turns, one per 4 interview turns.
Prints only; nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.drivers import TurnSpec

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


class _Mark:
    """Where a first-token count starts and stops: the process time spent in between, or a profiler switched on
    and off around it, summed over turns."""

    def __init__(self, learn: bool = False) -> None:
        self.learn = learn  # the warm-up pass: notes which script turns give no token
        self.profile: cProfile.Profile | None = None
        self.cpu = 0.0
        self._t = 0.0
        self.on = False

    def start(self) -> None:
        self.on = True
        if self.profile is not None:
            self.profile.enable()
        else:
            self._t = time.process_time()

    def stop(self) -> None:
        if not self.on:
            return
        self.on = False
        if self.profile is not None:
            self.profile.disable()
        else:
            self.cpu += time.process_time() - self._t

    def begin(self, index: int, silent: set[int]) -> bool:
        """Before script turn `index`: start, unless it is one that gives no token (learned while warming up)."""
        on = self.learn or index not in silent
        if on:
            self.start()
        return on

    def end(self, index: int, silent: set[int], on: bool) -> bool:
        """After the turn: whether it was counted up to a token."""
        if not on:
            return False
        if self.on:  # still running at the end: the turn gave no token
            self.stop()
            if not self.learn:
                raise RuntimeError(f"script turn {index} gave a token while warming up, and none now")
            silent.add(index)
            return False
        return True


async def _count_first(run_turns: Callable[[int, _Mark], Awaitable[dict[str, float]]], turns: int) -> dict[str, float]:
    """`_count` for the stretch of each turn between `mark.start()` and `mark.stop()`; `run_turns` returns sums
    over the turns it marked and how many it marked (`marked`: the script's turns that give the chat a token)."""
    await run_turns(30, _Mark(learn=True))
    timed = _Mark()
    timed_extra = await run_turns(turns, timed)
    counted = _Mark()
    counted.profile = cProfile.Profile()
    extra = await run_turns(turns, counted)
    calls = pstats.Stats(counted.profile).total_calls  # type: ignore[attr-defined]
    marked = extra.pop("marked")
    return {
        "calls": calls / marked,
        "cpu_ms": timed.cpu / timed_extra["marked"] * 1000,
        **{k: v / marked for k, v in extra.items()},
    }


def _is_first_token(chunk: bytes) -> bool:
    """Whether an SSE chunk of /stream_events is a token of the chat responder (as bench.drivers checks it)."""
    return (
        b'"event":"on_chat_model_stream"' in chunk
        and b'"langgraph_node":"primary_responder"' in chunk
        and b'"content":""' not in chunk
    )


async def post_streaming(
    app: Any, path: str, body: dict[str, Any], headers: dict[str, str], on_chunk: Callable[[bytes], None]
) -> int:
    """POST `body` to the ASGI `app` and hand each response body chunk to `on_chunk` as the app sends it (httpx's
    ASGI transport collects the whole body first). Returns the status; the client disconnects after the end."""
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("bench", 80),
    }
    sent_body = False
    done = asyncio.Event()
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            if message.get("body"):
                on_chunk(message["body"])
            if not message.get("more_body", False):
                done.set()

    await app(scope, receive, send)
    return status


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
        if mode == "first-token":
            return await _measure_first_token(team, turns, settings)
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


async def _measure_first_token(team: str, turns: int, settings: Callable[[str], Any]) -> dict[str, dict[str, float]]:
    from langchain_core.messages import AIMessageChunk

    from bench.drivers import KEYS, STREAMED_NODE, TENANT, InProcess, TeamgraphHTTP, script
    from bench.fake_model import BenchFactory
    from server.app import create_app
    from server.engine import Engine

    specs = script(team)
    out: dict[str, dict[str, float]] = {}
    async with Engine.open(settings("inproc"), agent_factory=BenchFactory()) as engine:
        driver = InProcess(engine)
        graph = engine.graph(team)

        async def inprocess_turn(events: bool, thread: str, spec: TurnSpec, mark: _Mark) -> None:
            turn_input, config = driver._input(spec), driver.configs[thread]
            if events:
                async for event in graph.astream_events(turn_input, config, durability=engine.durability):
                    chunk = (event.get("data") or {}).get("chunk")
                    if (
                        event["event"] == "on_chat_model_stream"
                        and getattr(chunk, "content", None)
                        and event["metadata"].get("langgraph_node") == STREAMED_NODE
                    ):
                        mark.stop()
            else:
                async for chunk, meta in graph.astream(
                    turn_input, config, stream_mode="messages", durability=engine.durability
                ):
                    if isinstance(chunk, AIMessageChunk) and chunk.content and meta["langgraph_node"] == STREAMED_NODE:
                        mark.stop()

        def inprocess(events: bool) -> Callable[[int, _Mark], Awaitable[dict[str, float]]]:
            silent: set[int] = set()

            async def run(n: int, mark: _Mark) -> dict[str, float]:
                totals = {"marked": 0.0}
                while n > 0:
                    thread = await driver.new_thread(team)
                    for i, spec in enumerate(specs[:n]):
                        on = mark.begin(i, silent)
                        await inprocess_turn(events, thread, spec, mark)
                        totals["marked"] += mark.end(i, silent, on)
                    n -= len(specs[:n])
                    driver.forget(thread)
                return totals

            return run

        out["in-process astream"] = await _count_first(inprocess(False), turns)
        out["in-process astream_events"] = await _count_first(inprocess(True), turns)

    app = create_app(settings("server"), agent_factory=BenchFactory())
    headers = {"Authorization": f"Bearer {KEYS[TENANT[team]]}"}
    async with app.router.lifespan_context(app):

        def server(filtered: bool) -> Callable[[int, _Mark], Awaitable[dict[str, float]]]:
            silent: set[int] = set()

            async def run(n: int, mark: _Mark) -> dict[str, float]:
                totals = {"marked": 0.0, "events_before": 0.0, "bytes_before": 0.0}
                while n > 0:
                    created: list[bytes] = []
                    await post_streaming(app, "/sessions", {"team": team}, headers, created.append)
                    thread = json.loads(b"".join(created))["id"]
                    for i, spec in enumerate(specs[:n]):
                        body = TeamgraphHTTP._body(thread, spec)
                        if filtered:
                            body["include_types"] = ["chat_model"]
                        seen: list[bytes] = []

                        def on_chunk(chunk: bytes, seen: list[bytes] = seen) -> None:
                            if mark.on:
                                seen.append(chunk)
                                if _is_first_token(chunk):
                                    mark.stop()

                        on = mark.begin(i, silent)
                        status = await post_streaming(app, f"/teams/{team}/stream_events", body, headers, on_chunk)
                        if status != 200:
                            raise RuntimeError(f"/stream_events {status}: {b''.join(seen)[:300]!r}")
                        if mark.end(i, silent, on):
                            totals["marked"] += 1
                            totals["events_before"] += sum(c.count(b"event: data") for c in seen)
                            totals["bytes_before"] += sum(len(c) for c in seen)
                    n -= len(specs[:n])
                return totals

            return run

        out["server /stream_events"] = await _count_first(server(False), turns)
        out["server /stream_events chat_model"] = await _count_first(server(True), turns)
    return out


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
        "--mode",
        default="invoke",
        choices=["invoke", "stream", "first-token"],
        help="ainvoke and /invoke, astream and /stream, or up to the chat's first token: astream(messages) and "
        "/stream_events",
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
        base = result["in-process astream" if args.mode == "first-token" else f"in-process a{args.mode}"]["calls"]
        for mode, m in result.items():
            extra = f"  {m['calls'] - base:+8.0f} over in-process" if m["calls"] != base else ""
            if "bytes_before" in m:
                extra += f"  {m['events_before']:.1f} events / {m['bytes_before']:,.0f} bytes sent up to the token"
            print(
                f"{args.team:<10} {label:<14} {mode:<32} {m['calls']:8.0f} calls/turn{extra}"
                f"  (CPU {m['cpu_ms']:.2f} ms/turn)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
