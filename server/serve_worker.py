"""The app factory `teamgraph serve` hands uvicorn: its worker processes import and build the app one at a time.

With several workers uvicorn starts them all at once, and each imports the server's libraries and builds the
app (about 2.5 s of CPU; docs/performance.md, start-up). On a machine whose cores are busy, N workers doing that
together are each N times slower, so the first `/healthz` answer came 2-4x later than with one worker (10 s vs
20-39 s measured on the loaded 2-core machine). Taking turns under a file lock that `teamgraph serve` creates
(TEAMGRAPH_WORKER_START_LOCK), the first worker answers as soon as one alone would, and the others follow.
The lock is held from this module's import (uvicorn imports it before calling the factory) until the app is
built; opening the database (the app's lifespan) is not inside it. uvicorn's health pings are answered by a
thread of their own meanwhile. Without the variable (one worker, or `uvicorn` run by hand) nothing waits.
"""

from __future__ import annotations

import fcntl
import os

_start_lock: int | None = None
if _path := os.environ.get("TEAMGRAPH_WORKER_START_LOCK"):
    _start_lock = os.open(_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(_start_lock, fcntl.LOCK_EX)

from fastapi import FastAPI  # noqa: E402

from server.app import create_app  # noqa: E402


def app_from_env() -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory server.serve_worker:app_from_env`): `create_app()`, then the next
    worker's turn to start."""
    global _start_lock
    try:
        return create_app()
    finally:
        if _start_lock is not None:
            fcntl.flock(_start_lock, fcntl.LOCK_UN)
            os.close(_start_lock)
            _start_lock = None
