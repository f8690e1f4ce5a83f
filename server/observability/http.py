"""ASGI middleware: a request id and a trace span per HTTP request, one log line and metrics per request,
and the release of any session lock the request took (also when a streamed response ends)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from server.observability.logging import log
from server.observability.metrics import Metrics
from server.observability.tracing import tracer
from server.request_guard import request_headers

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}  # anything else is labelled "other"
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def request_id_from(headers: dict[str, str]) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    given = headers.get("x-request-id", "")
    return given if _SANE_REQUEST_ID.match(given) else uuid.uuid4().hex


class ObservabilityMiddleware:
    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = request_headers(scope)
        request_id = request_id_from(headers)
        method = scope["method"]
        span = tracer().start_span(f"HTTP {method}", context=propagate.extract(headers), kind=SpanKind.SERVER,
                                   attributes={"http.request.method": method})  # fmt: skip
        token = otel_context.attach(trace.set_span_in_context(span))
        trace_id = format(span.get_span_context().trace_id, "032x")
        structlog.contextvars.bind_contextvars(request_id=request_id, trace_id=trace_id)
        state = scope.setdefault("state", {})
        state["turn_leases"] = {}
        status = 500
        started = time.perf_counter()

        response_started = False

        async def send_with_ids(message: dict[str, Any]) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode()),
                                      (b"x-trace-id", trace_id.encode())]  # fmt: skip
            await send(message)

        try:
            try:
                await self.app(scope, receive, send_with_ids)
            except Exception:
                if response_started:
                    raise
                # type, message and stack (see logging.add_exception), with the request and tenant it hit
                log.exception("unhandled_error", method=method, path=scope.get("path"), tenant=state.get("tenant"))
                # answered here, so even an unexpected failure carries the ids and the one error shape
                await send_with_ids({"type": "http.response.start", "status": 500,
                                     "headers": [(b"content-type", b"application/json")]})  # fmt: skip
                await send(
                    {
                        "type": "http.response.body",
                        "body": b'{"error":{"code":"internal_error","message":"internal server error"}}',
                    }
                )
        finally:
            for release in list(state["turn_leases"].values()):
                await release()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            duration = time.perf_counter() - started
            label_method = method if method in _METHODS else "other"
            self.metrics.http_requests.labels(route, label_method, str(status)).inc()
            self.metrics.http_latency.labels(route, label_method).observe(duration)
            span.update_name(f"HTTP {method} {route}")
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            log.info("http_request", method=method, route=route, status=status, tenant=state.get("tenant"),
                     duration_ms=round(duration * 1000, 2))  # fmt: skip
            otel_context.detach(token)
            structlog.contextvars.clear_contextvars()
