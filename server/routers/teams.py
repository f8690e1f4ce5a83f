"""/teams: the teams the caller's tenant may use, with what each accepts."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from server.deps import CurrentCaller, EngineDep

router = APIRouter(prefix="/teams", tags=["teams"])


class TeamOut(BaseModel):
    id: str
    description: str
    default: bool
    endpoint: str
    input_schema: dict[str, Any]


@router.get("", response_model=list[TeamOut])
async def list_teams(caller: CurrentCaller, engine: EngineDep) -> list[TeamOut]:
    tenant = engine.bundles.tenants[caller.tenant]
    return [
        TeamOut(
            id=team,
            description=engine.bundles.teams[team].description,
            default=team == tenant.default_team,
            endpoint=f"/teams/{team}",
            input_schema=copy.deepcopy(engine.input_jsonschema(team)),
        )
        for team in tenant.enabled_teams
    ]
