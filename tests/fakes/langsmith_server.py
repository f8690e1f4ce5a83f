"""A LangSmith stand-in on 127.0.0.1 that records every run the tracer posts (JSON batch ingestion)."""

from __future__ import annotations

import gzip
import json
import threading
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.local_server import LocalASGIServer


class FakeLangSmith(LocalASGIServer):
    """`LANGSMITH_ENDPOINT` for tests: `runs` merges posts and patches by run id; `raw` keeps every body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, dict[str, Any]] = {}
        self.raw: list[str] = []
        app = Starlette(
            routes=[
                Route("/info", self._info, methods=["GET"]),
                Route("/runs/batch", self._batch, methods=["POST"]),
                Route("/runs", self._post_run, methods=["POST"]),
                Route("/runs/{run_id}", self._patch_run, methods=["PATCH"]),
                Route("/{path:path}", self._other, methods=["GET", "POST", "PATCH", "PUT"]),
            ]
        )
        super().__init__(app, name="fake-langsmith")

    @property
    def runs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._runs.values()]

    async def _body(self, request: Request) -> bytes:
        data = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            data = gzip.decompress(data)
        with self._lock:
            self.raw.append(data.decode("utf-8", "replace"))
        return data

    def _merge(self, run: dict[str, Any]) -> None:
        with self._lock:
            self._runs.setdefault(str(run.get("id")), {}).update({k: v for k, v in run.items() if v is not None})

    async def _info(self, request: Request) -> JSONResponse:
        # JSON batch ingestion (no multipart, no compression), so the recorded bodies are plain JSON
        config = {
            "use_multipart_endpoint": False,
            "size_limit": 100,
            "size_limit_bytes": None,
            "scale_up_nthreads_limit": 1,
            "scale_up_qsize_trigger": 1000,
            "scale_down_nempty_trigger": 4,
        }
        return JSONResponse({"version": "0.0.0-test", "instance_flags": {}, "batch_ingest_config": config})

    async def _batch(self, request: Request) -> JSONResponse:
        body = json.loads(await self._body(request))
        for run in [*body.get("post", []), *body.get("patch", [])]:
            self._merge(run)
        return JSONResponse({})

    async def _post_run(self, request: Request) -> JSONResponse:
        self._merge(json.loads(await self._body(request)))
        return JSONResponse({})

    async def _patch_run(self, request: Request) -> JSONResponse:
        self._merge({**json.loads(await self._body(request)), "id": request.path_params["run_id"]})
        return JSONResponse({})

    async def _other(self, request: Request) -> JSONResponse:
        await self._body(request)
        return JSONResponse({})
