"""/teams: the teams the caller's tenant may use, with what each accepts."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from server.deps import CurrentCaller, EngineDep

router = APIRouter(prefix="/teams", tags=["teams"])


class TeamOut(BaseModel):
    id: str
    description: str
    default: bool
    endpoint: str
    input_schema: dict[str, Any]
    hint: str = Field(
        "", description="What the chat page suggests asking when a chat is empty (the team's `hint`); empty: its own."
    )
    tenant_name: str = Field(
        description="The caller's tenant's display name (its bundle's `name`, else its id), e.g. for a chat's labels."
    )


@router.get("", response_model=list[TeamOut])
async def list_teams(caller: CurrentCaller, engine: EngineDep) -> list[TeamOut]:
    tenant = engine.bundles.tenants[caller.tenant]
    runs = {team: engine.resolver.resolve(caller.tenant, team) for team in tenant.enabled_teams}
    return [
        TeamOut(
            id=team,
            description=runs[team].team.description,  # the tenant's: overrides applied, {tenant_name} filled
            default=team == tenant.default_team,
            endpoint=f"/teams/{team}",
            input_schema=copy.deepcopy(engine.input_jsonschema(team)),
            hint=runs[team].team.hint,
            tenant_name=runs[team].tenant_name,
        )
        for team in tenant.enabled_teams
    ]
