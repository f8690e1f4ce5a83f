"""One JSON error shape for every route: {"error": {"code", "message", "field"?}}."""

from __future__ import annotations

import sqlite3
from typing import Any
from urllib.parse import urlparse

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from checkpoints.audit import AuditWriteError
from checkpoints.storage import StorageUnavailable, is_storage_fault
from checkpoints.turn_lock import TurnBusy
from personas.resolver import TeamResolutionError
from server.engine import SessionDeleting, SessionNotFound
from states.migrations import SessionSchemaTooNew

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(HTTPException):
    """An error a client can act on: the status, a stable code, a message, and the field at fault."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ):
        detail: dict[str, Any] = {"code": code, "message": message}
        if field:
            detail["field"] = field
        super().__init__(status_code=status, detail=detail, headers=headers)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return {"error": body}


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # an error about the whole body (a list, null or text where an object was due) names the body
    return ".".join(parts) or ("body" if list(loc[:1]) == ["body"] else "")


def _may_use_postgres(app: FastAPI) -> bool:
    """Whether the app's storage is PostgreSQL (or its settings are unknown): only then can psycopg errors occur."""
    settings = getattr(app.state, "settings", None)
    return settings is None or urlparse(settings.checkpoint_url).scheme in ("postgres", "postgresql")


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at the request's path: /sessions has GET and POST in two routes, and Starlette's
    405 named only the first one's. Asked of the routes as the router asks them (FastAPI nests included routers)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


def _unknown_team(request: Request) -> str | None:
    """The team a router 404 under /teams/{team}/... names when no team of that name has routes, else None."""
    parts = request.url.path.split("/")
    if len(parts) < 3 or parts[1] != "teams" or not parts[2]:
        return None
    prefix = f"/teams/{parts[2]}/"
    if any(getattr(route, "path", "").startswith(prefix) for route in request.app.router.routes):
        return None  # the team exists: its path is wrong (an endpoint it does not have), a plain not_found
    return parts[2]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and the router's 404/405
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if isinstance(detail, dict) and "code" in detail:
            body = {"error": detail}
        elif exc.status_code == 404 and (team := _unknown_team(request)) is not None:
            body = error_body("team_not_found", f"unknown team {team!r}", "team")  # as POST /sessions answers
        else:
            body = error_body(_CODES.get(exc.status_code, "error"), str(detail))
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow lists the first matching route's methods only
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = first.get("loc", ()) if isinstance(first, dict) else ()
        message = first.get("msg", str(first)) if isinstance(first, dict) else str(first)
        field = _field(loc)
        if request.url.path.startswith("/teams/") and field.startswith("configurable"):
            field = f"config.{field}"  # LangServe validates the body's `config` without naming it
        return JSONResponse(
            error_body("validation_error", f"{field}: {message}" if field else message, field or None)
            | {
                "details": [
                    {"field": _field(e.get("loc", ())), "message": e.get("msg")} for e in errors if isinstance(e, dict)
                ]
            },
            status_code=422,
        )

    @app.exception_handler(ValidationError)
    async def model_error(request: Request, exc: ValidationError) -> JSONResponse:
        # pydantic errors outside FastAPI's own validation (LangServe validates batch inputs unguarded): still
        # the client's input, so a 422 naming the field, never a 500
        return await validation_error(request, RequestValidationError(exc.errors()))

    @app.exception_handler(TeamResolutionError)
    async def team_error(request: Request, exc: TeamResolutionError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc), "team"), status_code=exc.status)

    @app.exception_handler(SessionNotFound)
    async def session_missing(request: Request, exc: SessionNotFound) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc)), status_code=404)

    @app.exception_handler(SessionSchemaTooNew)
    async def session_too_new(request: Request, exc: SessionSchemaTooNew) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc)), status_code=409)

    @app.exception_handler(SessionDeleting)
    async def session_deleting(request: Request, exc: SessionDeleting) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc), "config.configurable.thread_id"), status_code=409)

    @app.exception_handler(AuditWriteError)
    async def audit_down(request: Request, exc: AuditWriteError) -> JSONResponse:
        await _repair(request, exc)  # the audit tables were dropped under the server: recreated for the next one
        # never silently: the action is refused (or reported failed) when its audit record cannot be written. One
        # rule for the code: a database fault (down, unreachable, full, read-only, tables gone) is the database's,
        # 503 storage_unavailable, whichever table of the write met it (an audited change and its entries are one
        # transaction); audit_unavailable is the audit log refusing the write for another reason
        if exc.__cause__ is not None and is_storage_fault(exc.__cause__):
            return storage_unavailable_response(exc.__cause__)
        return JSONResponse(error_body("audit_unavailable", "the audit log cannot be written; try again later"),
                            status_code=503, headers={"Retry-After": "5"})  # fmt: skip

    async def storage_down(request: Request, exc: Exception) -> JSONResponse:
        if not is_storage_fault(exc):
            raise exc  # a bug (a wrong statement included), not a fault of the machine: the 500 path logs its stack
        # tables or columns gone under the server (database dropped and recreated, SQLite file deleted): this
        # request answers 503, the repair makes the next one work (checkpoints/self_repair.py)
        await _repair(request, exc)
        return storage_unavailable_response(exc)

    # every database error comes here; checkpoints/storage.py sorts them by one rule for both backends: faults of
    # the machine and missing tables are 503s, a statement that is wrong (syntax, a column's type) a 500
    faults: list[type[Exception]] = [StorageUnavailable, sqlite3.Error]
    if _may_use_postgres(app):
        import psycopg  # only here: importing it is a tenth of a second of every SQLite server's start-up

        faults.append(psycopg.Error)
    for fault in faults:
        app.add_exception_handler(fault, storage_down)

    @app.exception_handler(TurnBusy)
    async def busy(request: Request, exc: TurnBusy) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, str(exc)), status_code=409, headers={"Retry-After": str(exc.retry_after_s)}
        )


async def _repair(request: Request, exc: BaseException) -> None:
    engine = getattr(request.app.state, "engine", None)
    if engine is not None:
        await engine.repair_storage(exc)


def storage_unavailable_response(exc: BaseException) -> JSONResponse:
    """503 storage_unavailable: the database is down, unreachable, full or read-only; the client may retry."""
    from server.observability.logging import log

    # the cause goes to the operator's log; the client learns nothing about the database behind the service
    log.warning("storage_unavailable", error_type=type(exc).__name__, error=str(exc).strip())
    return JSONResponse(
        error_body(StorageUnavailable.code, "the session store cannot be reached or written now; try again later"),
        status_code=503,
        headers={"Retry-After": str(StorageUnavailable.retry_after_s)},
    )


async def stream_error(request: Request, exc: BaseException) -> dict[str, Any]:
    """The data of the `event: error` that ends a stream cut by `exc` (LangServe's {"status_code", "message"}, with
    the error shape's `code`): a known fault answers as the same fault answers a JSON request (a database fault
    503 storage_unavailable, the audit log 503 audit_unavailable, an ApiError its own status, code and message), so
    a client can tell an outage it may retry from a bug; anything else stays LangServe's generic 500, no detail."""
    if isinstance(exc, AuditWriteError) and exc.__cause__ is not None and is_storage_fault(exc.__cause__):
        exc = exc.__cause__
    if isinstance(exc, AuditWriteError):
        await _repair(request, exc)
        return {
            "status_code": 503,
            "code": "audit_unavailable",
            "message": "the audit log cannot be written; try again later",
        }
    if is_storage_fault(exc):
        await _repair(request, exc)
        from server.observability.logging import log

        log.warning("storage_unavailable", error_type=type(exc).__name__, error=str(exc).strip())
        return {
            "status_code": 503,
            "code": StorageUnavailable.code,
            "message": "the session store cannot be reached or written now; try again later",
        }
    if isinstance(exc, StarletteHTTPException) and isinstance(exc.detail, dict) and "code" in exc.detail:
        return {"status_code": exc.status_code, "code": exc.detail["code"], "message": str(exc.detail.get("message"))}
    if isinstance(exc, TurnBusy):
        return {"status_code": 409, "code": exc.code, "message": str(exc)}
    return {"status_code": 500, "message": "Internal Server Error"}  # LangServe's, byte for byte
