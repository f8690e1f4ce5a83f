"""CORS: a browser page on an allowed origin may call the API; any other origin gets no CORS headers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

ALLOWED = "https://app.example.com"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


def client_for(tmp_path: Path, **settings: object) -> Iterator[TestClient]:
    app = create_app(Settings(checkpoint_url=f"sqlite:///{tmp_path / 'tg.db'}", **settings))  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def cors_client(tmp_path: Path) -> Iterator[TestClient]:
    yield from client_for(tmp_path, cors_origins=[ALLOWED])


def test_preflight_from_an_allowed_origin_gets_the_cors_headers(cors_client: TestClient) -> None:
    r = cors_client.options("/sessions", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in r.headers["access-control-allow-methods"]
    assert {"authorization", "content-type"} <= {
        h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")
    }

    # the real request then carries the origin, and the client may read Retry-After and the request id
    r = cors_client.get("/teams", headers={"Origin": ALLOWED, "Authorization": "Bearer tg-veneo-key"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()


def test_preflight_from_another_origin_gets_no_cors_headers(cors_client: TestClient) -> None:
    r = cors_client.options("/sessions", headers={"Origin": "https://evil.example", **PREFLIGHT})
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers
    r = cors_client.get("/teams", headers={"Origin": "https://evil.example", "Authorization": "Bearer tg-veneo-key"})
    assert "access-control-allow-origin" not in r.headers


def test_no_origin_is_allowed_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().cors_origins == []
    monkeypatch.setenv("TEAMGRAPH_CORS_ORIGINS", f"{ALLOWED}, http://localhost:5173/")
    assert Settings().cors_origins == [ALLOWED, "http://localhost:5173"]
    monkeypatch.delenv("TEAMGRAPH_CORS_ORIGINS")
    for client in client_for(tmp_path):
        r = client.options("/sessions", headers={"Origin": ALLOWED, **PREFLIGHT})
        assert "access-control-allow-origin" not in r.headers
