"""Serves the web app (`/` and its assets under `/app/`) and the API docs pages from vendored, offline assets.

Every page answers with a strict Content-Security-Policy: scripts and styles only from this server (the app
has no inline script or style), connections only to this server and the realtime voice endpoint. Assets are
revalidated with their ETag on every load (`Cache-Control: no-cache`), so a new release is picked up at once
and an unchanged file costs a 304.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from personas.loader import Bundles
from server.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"
INDEX = Path(__file__).parent / "index.html"  # outside STATIC_DIR: the page is served only with its CSP
ASSETS = "/app"
OPENAI_API = "https://api.openai.com"


class _RevalidatedFiles(StaticFiles):
    """StaticFiles (ETag, Last-Modified, 304) that asks the browser to revalidate before each use."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def realtime_origins(settings: Settings, bundles: Bundles) -> list[str]:
    """Where the browser may open the realtime voice connection: the configured OpenAI-compatible endpoints."""
    urls = [settings.model_base_url, *(a.model.base_url for a in bundles.agents.values())]
    origins = {o for o in map(_origin, urls) if o}
    return sorted(origins or {OPENAI_API})


def app_csp(connect: list[str]) -> str:
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "media-src 'self' blob:",
            f"connect-src 'self' {' '.join(connect)}".strip(),
            "font-src 'self'",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _inline_script_hashes(html: str) -> list[str]:
    """CSP hashes of the page's inline scripts (FastAPI's Swagger UI page starts Swagger UI inline)."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts]


def docs_csp(html: str) -> str:
    # Swagger UI and ReDoc set element styles at run time (ReDoc through styled-components), so the docs pages,
    # unlike the app, allow inline styles; scripts stay limited to this server and the hashed start-up script.
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' {' '.join(_inline_script_hashes(html))}".strip(),
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",
            "worker-src 'self' blob:",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def install_web(app: FastAPI, settings: Settings, bundles: Bundles) -> None:
    """Mount the app's assets, `/` and the offline `/docs` and `/redoc` (create the app with docs_url=None)."""
    page_csp = app_csp(realtime_origins(settings, bundles))
    openapi_url = app.openapi_url or "/openapi.json"
    vendor = f"{ASSETS}/vendor"

    app.mount(ASSETS, _RevalidatedFiles(directory=STATIC_DIR), name="web-assets")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        """The web app: sign in with a tenant key, then interview practice or chat, on the public API."""
        return FileResponse(
            INDEX,
            media_type="text/html",
            headers={
                "Content-Security-Policy": page_csp,
                "Cache-Control": "no-cache",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{vendor}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{vendor}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{vendor}/swagger-ui/favicon-32x32.png",
        )
        page.headers["Content-Security-Policy"] = docs_csp(bytes(page.body).decode())
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API reference",
            redoc_js_url=f"{vendor}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{vendor}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = docs_csp(bytes(page.body).decode())
        return page
