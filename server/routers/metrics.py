"""/metrics: Prometheus text format, for the operator's scraper only (it names every tenant)."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.auth import presented_key
from server.errors import ApiError
from server.settings import Settings

router = APIRouter(tags=["health"])


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """With TEAMGRAPH_METRICS_TOKEN set, only a scraper sending it as a bearer token; without it, only callers on
    this machine. Tenant keys never open it: the series carry every tenant's id."""
    settings: Settings = request.app.state.settings
    if settings.metrics_token is not None:
        given = presented_key(request.headers) or ""
        if not hmac.compare_digest(given.encode(), settings.metrics_token.get_secret_value().encode()):
            raise ApiError(401, "unauthorized", "send the metrics token (TEAMGRAPH_METRICS_TOKEN) as "
                           "'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    elif not _loopback(request.client.host if request.client else None):
        raise ApiError(403, "forbidden", "/metrics answers only on this machine; set TEAMGRAPH_METRICS_TOKEN to "
                       "scrape it from elsewhere")  # fmt: skip
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
