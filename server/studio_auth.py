"""LangGraph custom auth for `langgraph dev` / Studio: the same tenant API keys, and threads owned by tenants.

Loaded by the LangGraph server from langgraph.json (`"auth": {"path": "./server/studio_auth.py:auth"}`).
A thread records its owner tenant in metadata; reads, searches, updates and runs are filtered by it, so one
tenant never sees another's threads. The graphs read the tenant from `langgraph_auth_user`.
"""

from __future__ import annotations

import uuid
from typing import Any

from langgraph_sdk import Auth

from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles_cached
from server.auth import KeyRing, presented_key

auth = Auth()

# loaded when the LangGraph server imports this module, not inside a request
_BUNDLES = load_bundles_cached(str(DEFAULT_BUNDLE_DIR))
_KEYRING = KeyRing(_BUNDLES)
# the LangGraph server names each graph's built-in assistant uuid5(namespace, graph id); runs name either form
_GRAPH_ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
_TEAM_OF_ASSISTANT = {
    **{team: team for team in _BUNDLES.teams},
    **{str(uuid.uuid5(_GRAPH_ASSISTANT_NAMESPACE, team)): team for team in _BUNDLES.teams},
}


@auth.authenticate
async def authenticate(headers: dict[bytes, bytes]) -> dict[str, Any]:
    """The tenant behind `Authorization: Bearer <key>` or `X-API-Key`."""
    decoded = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers.items()}
    caller = _KEYRING.identify(presented_key(decoded))
    if caller is None:
        raise Auth.exceptions.HTTPException(
            status_code=401, detail="send a tenant API key as 'Authorization: Bearer <key>' or 'X-API-Key'"
        )
    return {"identity": caller.tenant, "key_id": caller.key_id, "role": caller.role, "is_authenticated": True}


def _owned(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> dict[str, str]:
    """Stamp the owner on anything created, and filter every read, search and change by it."""
    metadata = value.get("metadata")
    if ctx.action in ("create", "create_run") or isinstance(metadata, dict):
        value.setdefault("metadata", {})
        if isinstance(value["metadata"], dict):
            value["metadata"]["owner"] = ctx.user.identity
    return {"owner": ctx.user.identity}


@auth.on.threads
async def threads(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> dict[str, str]:
    if ctx.action == "create_run":
        # the graph refuses a team its tenant lacks anyway; this answers 403 before a run is queued
        team = _TEAM_OF_ASSISTANT.get(str(value.get("assistant_id")))
        tenant = _BUNDLES.tenants[ctx.user.identity]
        if team is not None and team not in tenant.enabled_teams:
            raise Auth.exceptions.HTTPException(
                status_code=403, detail=f"team {team!r} is not enabled for tenant {tenant.id!r}"
            )
    return _owned(ctx, value)


@auth.on.crons
async def crons(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> dict[str, str]:
    return _owned(ctx, value)


@auth.on.assistants
async def assistants(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> dict[str, str] | None:
    # the graphs' built-in assistants are shared; assistants a tenant creates are its own
    if ctx.action in ("read", "search"):
        return None
    return _owned(ctx, value)


@auth.on.store
async def store(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> None:
    # transcript archives are written by the graphs themselves; no tenant reads the store over the API
    raise Auth.exceptions.HTTPException(status_code=403, detail="the store is not available over the API")
