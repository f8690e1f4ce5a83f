"""`bench.asgi:app` with pyinstrument sampling the server's main thread (the event loop) for its whole life.

Used by `python -m bench.profile` only (pyinstrument is a profiling tool, not a dependency of the bench). The
profile is written when the app shuts down (uvicorn re-raises SIGTERM after shutdown, so atexit never runs) to
TEAMGRAPH_BENCH_PROFILE_OUT: `<out>.txt` (inclusive and flat self time per function) and `<out>.pyisession`
(open with `pyinstrument --load <file>`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from bench.asgi import app as bench_app


def app() -> FastAPI:
    from pyinstrument import Profiler

    out = Path(os.environ["TEAMGRAPH_BENCH_PROFILE_OUT"])
    profiler = Profiler(interval=0.0005, async_mode="disabled")
    fastapi_app = bench_app()
    inner = fastapi_app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with inner(a) as state:
            profiler.start()
            try:
                yield state
            finally:
                from bench.profile import pyinstrument_report

                session = profiler.stop()
                session.save(str(out.with_suffix(".pyisession")))
                out.with_suffix(".txt").write_text(pyinstrument_report(session))

    fastapi_app.router.lifespan_context = lifespan
    return fastapi_app
