"""/audit: the tenant's audit trail, for its admin keys only."""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from checkpoints.audit import EVENT_TYPES, AuditEntry, as_utc
from server.deps import CurrentCaller, EngineDep
from server.errors import ApiError

router = APIRouter(prefix="/audit", tags=["audit"])
MAX_SEQ = 2**63 - 1  # the largest sequence number either store holds (a 64-bit integer); beyond it SQLite overflows


class AuditPage(BaseModel):
    # entries exactly as stored and hashed: a client can recompute each `hash` from the other fields
    # (`checkpoints.audit.entry_hash`) and check that each `prev_hash` is the previous entry's `hash`
    items: list[AuditEntry]
    next_cursor: int | None = None


@router.get("", response_model=AuditPage)
async def read_audit(
    caller: CurrentCaller,
    engine: EngineDep,
    session: Annotated[str | None, Query(description="Only this session's entries.")] = None,
    event_type: Annotated[str | None, Query(description=", ".join(EVENT_TYPES))] = None,
    since: Annotated[datetime | None, Query(description="ISO time, inclusive.")] = None,
    until: Annotated[datetime | None, Query(description="ISO time, exclusive.")] = None,
    cursor: Annotated[int, Query(ge=0, le=MAX_SEQ, description="next_cursor of the previous page.")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """Entries of the caller's tenant, oldest first; always scoped to that tenant."""
    if caller.role != "admin":
        raise ApiError(403, "admin_required", "the audit log is readable with a tenant admin key only")
    if event_type is not None and event_type not in EVENT_TYPES:
        raise ApiError(422, "validation_error", f"event_type: one of {', '.join(EVENT_TYPES)}", "event_type")
    # a worker thread: the SQLite audit log shares a lock with appends that may wait on SQLite's write lock
    query = functools.partial(
        engine.audit.query, caller.tenant, session=session, event_type=event_type,
        since=_stored_moment(since, "since"), until=_stored_moment(until, "until"),
        after_seq=cursor, limit=limit + 1,
    )  # fmt: skip
    entries = await asyncio.to_thread(query)
    page = entries[:limit]
    return AuditPage(
        items=page,
        next_cursor=page[-1].seq if len(entries) > limit else None,
    )


def _stored_moment(moment: datetime | None, field: str) -> str | None:
    """The filter as the log stores times (UTC); a time its offset moves out of years 1-9999 is the client's 422."""
    if moment is None:
        return None
    try:
        return as_utc(moment)
    except OverflowError:
        raise ApiError(
            422, "validation_error", f"{field}: out of range once moved to UTC; give a time in the years 1 to 9999",
            field,
        ) from None  # fmt: skip
