"""An ASGI app served by uvicorn in a background thread on 127.0.0.1 (free port), for test doubles."""

from __future__ import annotations

import atexit
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn

HOST = "127.0.0.1"


class LocalASGIServer:
    """Start with `start()` or as a context manager; `stop()` shuts uvicorn down and joins its thread."""

    def __init__(
        self, app: Any, *, name: str = "local-server", startup_timeout: float = 10.0, lifespan: str = "off"
    ) -> None:
        self.app = app
        self.lifespan = lifespan  # "on" for an app that opens its resources at startup (Teamgraph's own)
        self.name = name
        self._startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    def start(self) -> Self:
        """Start serving in a background thread; returns once connectable."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        config = uvicorn.Config(
            self.app,
            host=HOST,
            port=0,
            loop="asyncio",
            lifespan=self.lifespan,  # type: ignore[arg-type]
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=self.name, daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} failed to start")
            time.sleep(0.005)
        self._port = int(server.servers[0].sockets[0].getsockname()[1])
        with socket.create_connection((HOST, self._port), timeout=self._startup_timeout):
            pass
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Shut uvicorn down (`should_exit`) and join its thread. Idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        atexit.unregister(self.stop)
        server.should_exit = True
        thread.join(timeout=5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._server = self._thread = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        """True once `stop()` asked uvicorn to exit (long handlers should give up then)."""
        return self._server is not None and self._server.should_exit

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"
