"""The servers the bench drives, as subprocesses on 127.0.0.1: Teamgraph under uvicorn, and `langgraph dev`.

Each runs in its own process group with a scrubbed environment (no provider keys, no tracing, no analytics)
and its own working directory; `stop()` sends SIGTERM to the group, then SIGKILL, and is also called on any
error or Ctrl-C (the bench uses them as context managers and stops them from signal handlers too).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from server.settings import Settings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
_SCRUBBED_PREFIXES = ("TEAMGRAPH_", "OPENAI_", "LANGSMITH_", "LANGCHAIN_", "LANGGRAPH_")

_RUNNING: set[ServerProcess] = set()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO),
            "LANGSMITH_TRACING": "false",
            "LANGCHAIN_TRACING_V2": "false",
            "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        }
    )
    env.update(extra)
    return env


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (langgraph dev may run helpers beside the server)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/<pid>/stat (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class ServerProcess:
    """A server subprocess that answers `health_path` with 200 once ready."""

    name = "server"
    health_path = "/healthz"

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, startup_timeout: float = 90.0):
        self.workdir = workdir
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.started_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def rss(self) -> int:
        """RSS of the server process and any children it started."""
        total = 0
        for pid in tree_pids(self.pid):
            with contextlib.suppress(OSError, RuntimeError):
                total += rss_bytes(pid)
        return total

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process and its children used so far."""
        return sum(cpu_seconds(pid) for pid in tree_pids(self.pid))

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._log = self.log_path.open("wb")
        t0 = time.perf_counter()
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            env=clean_env(self.extra_env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.started_s = time.perf_counter() - t0
        return self

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self._tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.health_path, timeout=2.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {self.startup_timeout} s:\n{self._tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        _RUNNING.discard(self)
        if process is None:
            return
        try:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # nothing of the group outlives the server
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class TeamgraphServer(ServerProcess):
    """Teamgraph's app (`bench.asgi:app` = `create_app` + the bench model) under uvicorn, as `teamgraph serve`
    runs it: one worker, uvicorn's defaults (uvloop and httptools when installed) but its keep-alive, no access
    log (the middleware logs each request)."""

    name = "teamgraph"

    def __init__(
        self,
        workdir: Path,
        db: Path | str,
        bundles: Path,
        app: str = "bench.asgi:app",
        env: dict[str, str] | None = None,
        uvicorn_args: list[str] | None = None,
    ):
        url = db if isinstance(db, str) else f"sqlite:///{db}"  # a str is a database URL (Postgres)
        base = {"TEAMGRAPH_CHECKPOINT_URL": url, "TEAMGRAPH_PERSONAS_DIR": str(bundles)}
        super().__init__(workdir, env={**base, **(env or {})})
        self.db = db
        self.app = app
        self.uvicorn_args = list(uvicorn_args or [])

    def command(self) -> list[str]:
        return [
            str(BIN / "python"),
            "-m",
            "uvicorn",
            self.app,
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "info",
            "--no-access-log",  # as `teamgraph serve`: our middleware already logs one line per request
            "--timeout-keep-alive",  # as `teamgraph serve` (TEAMGRAPH_KEEP_ALIVE_S), not uvicorn's 5 s
            str(Settings.model_fields["keep_alive_s"].default),
            *self.uvicorn_args,
        ]


class LangGraphDev(ServerProcess):
    """`langgraph dev --no-browser --no-reload` on the bench graphs, checkpointer, store and the product's auth."""

    name = "langgraph-dev"
    health_path = "/ok"

    def __init__(self, workdir: Path, db: Path, bundles: Path):
        super().__init__(workdir, env={"TEAMGRAPH_BENCH_DEV_DB": str(db), "TEAMGRAPH_BENCH_BUNDLE_DIR": str(bundles)})
        self.db = db

    def write_config(self) -> Path:
        module = REPO / "bench" / "dev_graphs.py"
        repo_config = json.loads((REPO / "langgraph.json").read_text())
        config = {
            "dependencies": [str(REPO)],
            "graphs": {"interview": f"{module}:interview", "veneo_chat": f"{module}:veneo_chat"},
            # the product's own auth, as its langgraph.json names it (absolute: dev resolves against its cwd)
            "auth": {"path": str(REPO / repo_config["auth"]["path"])},
            "checkpointer": {"path": f"{module}:checkpointer"},
            "store": {"path": f"{module}:store"},
        }
        path = self.workdir / "langgraph.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def command(self) -> list[str]:
        config = self.write_config()
        return [
            str(BIN / "langgraph"),
            "dev",
            "--config",
            str(config),
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]


def stop_all() -> None:
    """Stop every server still running (signal handlers and atexit call this)."""
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout=5.0)
