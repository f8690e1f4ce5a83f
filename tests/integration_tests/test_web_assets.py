"""How the web app and the API docs are served: CSP on every page, revalidated assets, no CDN, no secrets."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    db = tmp_path_factory.mktemp("web") / "tg.db"
    settings = Settings(checkpoint_url=f"sqlite:///{db}", model_base_url="http://127.0.0.1:9/v1")
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_page_has_a_strict_csp_and_no_inline_code(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["connect-src"] == "'self' http://127.0.0.1:9"  # the realtime voice endpoint, from the settings
    assert "<script>" not in r.text and "style=" not in r.text and "<style" not in r.text
    assert "tg-" not in r.text  # no key in the page
    assert client.get("/app/index.html").status_code == 404  # the page is only served with its CSP


def test_assets_are_revalidated_by_etag(client: TestClient) -> None:
    r = client.get("/app/main.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.headers["cache-control"] == "no-cache"
    again = client.get("/app/main.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    for js in (Path(__file__).parents[2] / "server" / "web" / "static").glob("*.js"):
        assert ".innerHTML =" not in js.read_text() or js.name == "markdown.js"  # only sanitised HTML is parsed


def test_docs_pages_load_only_local_assets_and_hash_their_start_script(client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        r = client.get(path)
        assert r.status_code == 200
        assert "cdn.jsdelivr.net" not in r.text and "fonts.googleapis.com" not in r.text
        for src in re.findall(r'(?:src|href)="(/app/[^"]+)"', r.text):
            assert client.get(src).status_code == 200, src
    r = client.get("/docs")
    inline = re.search(r"<script>(.*?)</script>", r.text, re.DOTALL)
    assert inline is not None
    digest = base64.b64encode(hashlib.sha256(inline.group(1).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in r.headers["content-security-policy"]


def test_voice_voices_says_whether_a_provider_is_configured(client: TestClient, tmp_path: Path) -> None:
    """The page shows voice controls only when `available` is true (a provider key or base URL is set)."""
    headers = {"Authorization": "Bearer tg-veneo-key"}
    assert client.get("/voice/voices", headers=headers).json()["available"] is True
    with TestClient(create_app(Settings(checkpoint_url=f"sqlite:///{tmp_path / 'tg.db'}"))) as offline:
        assert offline.get("/voice/voices", headers=headers).json()["available"] is False
