"""Typed FastAPI dependencies: the engine, and the authenticated caller.

The dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency in a worker
thread, one thread hop (and a GIL hand-over) per dependency per request, for work that takes microseconds."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.auth import Caller, KeyRing, presented_key
from server.engine import Engine
from server.errors import ApiError
from server.settings import Settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    await engine.check_storage()
    return engine


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


_CALLER = "teamgraph.caller"  # the request's Caller, once identified (scope state)


def authenticate(request: Request) -> Caller:
    """The caller behind `Authorization: Bearer <key>` or `X-API-Key`, or 401. Identified once per request: a team
    route asks three times (its two dependencies and LangServe's config modifier)."""
    state = request.scope.setdefault("state", {})
    known: Caller | None = state.get(_CALLER)
    if known is not None:
        return known
    keyring: KeyRing = request.app.state.keyring
    key = presented_key(request.headers)
    if key is None:
        raise ApiError(
            401,
            "unauthorized",
            "send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    caller = keyring.identify(key)
    if caller is None:
        raise ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    request.state.tenant = caller.tenant  # for the request's log lines (scope state: seen by the middleware)
    state[_CALLER] = caller
    return caller


async def current_caller(request: Request) -> Caller:
    """`authenticate` as a dependency (on the event loop: a hash and a dict lookup)."""
    return authenticate(request)


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
CurrentCaller = Annotated[Caller, Depends(current_caller)]
