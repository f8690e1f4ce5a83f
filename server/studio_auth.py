"""LangGraph custom auth for `langgraph dev` / Studio: the same tenant API keys, and threads owned by tenants.

Loaded by the LangGraph server from langgraph.json (`"auth": {"path": "./server/studio_auth.py:auth"}`).
A thread records its owner tenant in metadata; reads, searches, updates and runs are filtered by it, so one
tenant never sees another's threads. The graphs read the tenant from `langgraph_auth_user`.

Thread ids are global in the LangGraph server (one table for every tenant), so a create with a chosen id would
answer 409 for an id another tenant uses and 200 for a free one: a tenant could confirm and squat another's ids.
So the server chooses thread ids here (as `teamgraph serve` scopes client ids per tenant): a new thread, or a run
that creates its thread, must carry the id the server just made for it (a UUIDv7 of the last few seconds:
clients send none). Any other id gets one 422, whether or not anyone uses it. A tenant's own name for a session
goes in the thread's metadata (`{"session": "interview-42"}`), which every search filters by owner, so two
tenants can both use the same name.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from langgraph_sdk import Auth

from personas.loader import DEFAULT_BUNDLE_DIR, Bundles, load_bundles_cached
from server.auth import KeyRing, presented_key
from server.variables import RESERVED_VARIABLES

auth = Auth()


def studio_bundles(root: str = str(DEFAULT_BUNDLE_DIR)) -> Bundles:
    """The bundles Studio's logins are checked against, under the server's rules: a tenant key read from a
    setting's variable (`env: TEAMGRAPH_OPENAI_API_KEY`) is refused here as by `teamgraph serve`; it let the
    provider key log in as that tenant."""
    return load_bundles_cached(root, frozenset(RESERVED_VARIABLES))


# loaded when the LangGraph server imports this module, not inside a request
_BUNDLES = studio_bundles()
_KEYRING = KeyRing(_BUNDLES)
# the LangGraph server names each graph's built-in assistant uuid5(namespace, graph id); runs name either form
_GRAPH_ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
_TEAM_OF_ASSISTANT = {
    **{team: team for team in _BUNDLES.teams},
    **{str(uuid.uuid5(_GRAPH_ASSISTANT_NAMESPACE, team)): team for team in _BUNDLES.teams},
}


# how old the timestamp of a new thread's UUIDv7 may be: the server makes it just before it calls this handler
FRESH_ID_S = 5.0
_FUTURE_SKEW_S = 1.0


def fresh_thread_id(thread_id: Any) -> bool:
    """True for a UUIDv7 whose timestamp is of the last few seconds: an id the server just made (nobody else can
    have learned it and used it yet)."""
    try:
        value = uuid.UUID(str(thread_id))
    except ValueError:
        return False
    if value.version != 7:
        return False
    age_s = time.time() - (value.int >> 80) / 1000  # the first 48 bits: milliseconds since the epoch
    return -_FUTURE_SKEW_S <= age_s <= FRESH_ID_S


def _refuse_chosen_id(thread_id: Any) -> None:
    # the same answer for an id in use (by anyone) and a free one: nothing to learn, nothing to squat
    raise Auth.exceptions.HTTPException(
        status_code=422,
        detail=(
            "thread_id: new threads get their id from the server (send none); "
            'keep your own name for a session in the thread\'s metadata, e.g. {"session": "interview-42"}'
        ),
    )


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
    creates_thread = ctx.action == "create" or (
        ctx.action == "create_run" and value.get("if_not_exists") == "create" and value.get("thread_id") is not None
    )
    if creates_thread and not fresh_thread_id(value.get("thread_id")):
        _refuse_chosen_id(value.get("thread_id"))
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
