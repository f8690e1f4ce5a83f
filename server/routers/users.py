"""/users: erasure of everything a tenant holds about one of its end users, for its admin keys only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel

from server.deps import CurrentCaller, EngineDep
from server.errors import ApiError
from server.team_input import USER_ID_PATTERN, USER_ID_RULE

router = APIRouter(prefix="/users", tags=["users"])


class Erasure(BaseModel):
    user_id: str
    sessions: int
    audit_entries_redacted: int


@router.delete("/{user_id}", response_model=Erasure)
async def erase_user(
    user_id: Annotated[str, Path(pattern=USER_ID_PATTERN, description=f"Your id for the end user ({USER_ID_RULE}).")],
    caller: CurrentCaller,
    engine: EngineDep,
) -> Erasure:
    """Delete every session tagged with `user_id` (POST /sessions `user_id`) and redact their audit entries; the
    audit chain still verifies, and a `user_erased` entry records the erasure without its content."""
    if caller.role != "admin":
        raise ApiError(403, "admin_required", "erasing a user's data takes a tenant admin key")
    counts = await engine.erase_user(caller.tenant, user_id, actor=caller.key_id)
    return Erasure(user_id=user_id, **counts)
