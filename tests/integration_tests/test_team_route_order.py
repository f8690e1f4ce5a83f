"""Turn routes are tried first by the router (fewer route matches per turn), and that changes nothing a client
sees: every request reaches the route it reached before, and the OpenAPI document is the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.routing import Match

import server.team_routes
from server.app import create_app
from server.settings import Settings

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _app(tmp_path: Path, name: str) -> FastAPI:
    return create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path / name}.db", playground=True))  # type: ignore[call-arg]


def _answers(app: FastAPI, path: str, method: str) -> Any:
    """What the router picks for a request, as Starlette does: the first full match, else the first partial one
    (a 405), named by its path, methods and endpoint."""
    scope = {"type": "http", "path": path, "root_path": "", "method": method, "headers": [], "app": app}
    partial = None
    for route in app.router.routes:
        match, child = route.matches(dict(scope))
        if match is Match.FULL:
            return ("full", _name(route, child))
        if match is Match.PARTIAL and partial is None:
            partial = ("partial", _name(route, child))
    return partial


def _name(route: Any, child: dict[str, Any]) -> Any:
    endpoint = child.get("endpoint") or getattr(route, "endpoint", None)
    name = getattr(endpoint, "__qualname__", type(endpoint).__qualname__)
    return (getattr(route, "path", None), tuple(sorted(getattr(route, "methods", None) or ())), name)


def test_turn_routes_come_first_and_every_request_reaches_the_same_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(tmp_path, "after")
    with monkeypatch.context() as m:
        m.setattr(server.team_routes, "serve_team_routes_first", lambda app, prefixes: [])
        before = _app(tmp_path, "before")

    first = [getattr(r, "path", "") for r in app.router.routes[:12]]
    # ours (invoke, stream_events: server/team_routes.py, server/event_stream.py), then LangServe's
    endpoints = ("invoke", "stream_events", "invoke", "batch", "stream", "stream_events")
    assert first == [f"/teams/{team}/{e}" for team in ("interview", "veneo_chat") for e in endpoints]
    assert getattr(before.router.routes[0], "path", "") == "/openapi.json"  # registered first

    paths = {getattr(r, "path", "") for r in before.router.routes} | {
        "/sessions", "/teams", "/teams/veneo_chat", "/teams/veneo_chat/playground/index.html", "/teams/nope/invoke",
        "/app/", "/", "/healthz", "/metrics", "/audit",
    }  # fmt: skip
    for path in sorted(p for p in paths if "{" not in p):
        for method in METHODS:
            assert _answers(app, path, method) == _answers(before, path, method), (method, path)

    assert json.dumps(app.openapi()) == json.dumps(before.openapi())  # same document, same order
