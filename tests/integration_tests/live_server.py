"""A real `teamgraph serve` process on 127.0.0.1 for end-to-end tests: start, wait for /healthz, stop.

    with LiveServer(tmp_path) as server:          # offline, SQLite file tmp_path/tg.db
        httpx.get(server.url + "/healthz")

The process gets a scrubbed environment (no TEAMGRAPH_* / OPENAI_* of the developer's), its own working
directory (so no stray .env is read) and its own process group, so stopping it also stops uvicorn's
worker processes when it runs with `--workers N`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

REPO = Path(__file__).resolve().parents[2]
TEAMGRAPH = REPO / ".venv" / "bin" / "teamgraph"
DEMO_KEY = "tg-demo-key"
VENEO_KEY = "tg-veneo-key"
_SCRUBBED = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "LANGSMITH_TRACING")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_sockets(port: int) -> set[str]:
    """The inodes of the sockets listening on TCP `port` (this network namespace's /proc/net/tcp and tcp6)."""
    inodes = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()  # sl local_address rem_address st ... inode
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def group_sockets(pgid: int) -> set[str]:
    """The inodes of the sockets the processes of process group `pgid` hold open."""
    inodes = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile, or not ours to read
            # the fields after the command name, which may hold spaces and parentheses: state ppid pgrp ...
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:[") : -1])
    return inodes


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat_turn(server: LiveServer, thread_id: str, text: str, key: str = VENEO_KEY) -> httpx.Response:
    """One veneo_chat turn through `/invoke` on a live server."""
    return httpx.post(
        server.url + "/teams/veneo_chat/invoke",
        headers=auth(key),
        json={"input": {"messages": [{"type": "human", "content": text}]},
              "config": {"configurable": {"thread_id": thread_id}}},
        timeout=30,
    )  # fmt: skip


class LiveServer:
    """`teamgraph serve --host 127.0.0.1 --port N` as a subprocess on a SQLite checkpoint file."""

    def __init__(
        self,
        workdir: Path,
        db: Path | None = None,
        env: dict[str, str] | None = None,
        workers: int | None = None,
        startup_timeout: float = 30.0,
        wrapper: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.db = db or workdir / "tg.db"
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.wrapper = wrapper or []  # a command that execs the rest (e.g. to start in a mount namespace)
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("TEAMGRAPH_", "LANGCHAIN_")) and k not in _SCRUBBED
        }
        self.env["TEAMGRAPH_CHECKPOINT_URL"] = f"sqlite:///{self.db}"
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.update(env or {})
        # one worker unless a test asks for more (`workers=`, or TEAMGRAPH_WORKERS in `env`): serve's default on
        # PostgreSQL is one per core, which starts slower on a loaded machine and is not what most tests are about
        self.env.setdefault("TEAMGRAPH_WORKERS", "1")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._serial = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout(self) -> str:
        return (self.workdir / f"serve-{self._serial}.out").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.workdir / f"serve-{self._serial}.err").read_text(errors="replace")

    def start(self, keep_port: bool = False) -> Self:
        """Start serving; `keep_port`: on the port of the previous start (a restart clients see at the same URL)."""
        if self.process is not None:
            raise RuntimeError("LiveServer is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._serial += 1
        self._stdout = (self.workdir / f"serve-{self._serial}.out").open("wb")
        self._stderr = (self.workdir / f"serve-{self._serial}.err").open("wb")
        self.port = self.port if keep_port and self.port else free_port()
        args = [str(TEAMGRAPH), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.workers:
            args += ["--workers", str(self.workers)]
        self.process = subprocess.Popen(
            [*self.wrapper, *args],
            cwd=self.workdir,
            env=self.env,
            stdout=self._stdout,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: workers are stopped with it
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"teamgraph serve exited with {self.process.returncode}\n"
                    f"stdout:\n{self.stdout}\nstderr:\n{self.stderr[-4000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                # and it is this process (group) listening: on a port kept from a previous start (keep_port), another
                # test's server may have taken it meanwhile; ours then exits on the busy port, raising above
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200 and self._listening():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"teamgraph serve did not answer /healthz within {self.startup_timeout} s\n"
                    f"stdout:\n{self.stdout}\nstderr:\n{self.stderr[-4000:]}"
                )
            time.sleep(0.1)

    def _listening(self) -> bool:
        """This process (group: it may be a wrapper's, or uvicorn's supervisor with workers) listens on the port."""
        assert self.process is not None
        return bool(listening_sockets(self.port) & group_sockets(self.process.pid))

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group (graceful), SIGKILL it if it is still there after `timeout`."""
        process, self.process = self.process, None
        if process is None:
            return None
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
            # workers of `--workers N` share the group; make sure none outlives the supervisor
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        finally:
            for stream in (self._stdout, self._stderr):
                if stream is not None:
                    stream.close()
        return process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
