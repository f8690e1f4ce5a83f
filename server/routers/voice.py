"""/voice (catalog, previews) and a session's voice routes: realtime bootstrap and spoken transcripts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from server.deps import CurrentCaller, EngineDep
from server.errors import ApiError
from server.limits import TenantTurnLimiter
from server.routers.sessions import INTERNAL_STATE_KEYS, SessionId, TranscriptMessage, transcript_view
from server.voice import VoiceError, VoiceService
from server.voice.transcripts import TranscriptPost, VoiceTurn

router = APIRouter(tags=["voice"])


def get_voice(request: Request) -> VoiceService:
    """The app's voice service, built on first use from the engine's bundles and the settings."""
    service: VoiceService | None = getattr(request.app.state, "voice", None)
    if service is None:
        engine = request.app.state.engine
        service = request.app.state.voice = VoiceService(engine.bundles, request.app.state.settings, engine.resolver)
    return service


VoiceDep = Annotated[VoiceService, Depends(get_voice)]


@contextlib.contextmanager
def _voice_errors() -> Iterator[None]:
    try:
        yield
    except VoiceError as exc:
        raise ApiError(exc.status, exc.code, exc.message, exc.field, exc.headers) from None


class VoiceOut(BaseModel):
    id: str
    name: str
    description: str
    default: bool


class VoiceList(BaseModel):
    team: str
    default_voice: str
    available: bool = Field(
        description="Whether a voice provider is configured: without one, previews and realtime answer 503."
    )
    voices: list[VoiceOut]


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    voice: str = Field(min_length=1, max_length=64, description="A voice id from GET /voice/voices.")
    text: str | None = Field(None, max_length=4096, description="What to say; default: the team's sample sentence.")
    team: str | None = Field(None, description="Whose preview model and voices; default: the tenant's default team.")
    format: Literal["mp3", "wav", "opus", "aac", "flac"] = "mp3"


class RealtimeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    voice: str | None = Field(None, max_length=64, description="A voice id; default: the team's default voice.")


class RealtimeOut(BaseModel):
    client_secret: str = Field(description="Ephemeral: give it to the browser to open the realtime connection.")
    expires_at: datetime
    voice: str
    session: dict[str, Any] = Field(description="The realtime session config the secret carries.")
    webrtc_url: str = Field(description="POST the browser's SDP offer here with the client secret as bearer.")
    transcripts_url: str


class ItemResult(BaseModel):
    id: str
    role: Literal["user", "assistant"]
    status: Literal["applied", "duplicate", "skipped"]
    reason: str | None = None
    replies: list[TranscriptMessage] = Field(default_factory=list, description="What the team answered (user items).")
    evaluation: dict[str, Any] | None = Field(None, description="interview: the answer's evaluation.")
    review: dict[str, Any] | None = Field(None, description="chat: the safety reviewer's decision.")


class VoiceSummary(BaseModel):
    totals: dict[str, Any]
    recent: list[VoiceTurn]


class TranscriptResult(BaseModel):
    items: list[ItemResult] = Field(description="One per posted item, in the order posted.")
    speak: str | None = Field(None, description="What the realtime voice should say next (response.create).")
    session_update: dict[str, Any] = Field(description="Send as a realtime session.update: fresh instructions.")
    voice: VoiceSummary
    state: dict[str, Any]


class VoiceTranscript(BaseModel):
    items: list[VoiceTurn]
    totals: dict[str, Any]


@router.get("/voice/voices", response_model=VoiceList)
def list_voices(
    caller: CurrentCaller,
    voice: VoiceDep,
    team: Annotated[str | None, Query(description="Team id; default: the tenant's default team.")] = None,
) -> dict[str, Any]:
    """The voices the caller's tenant may use for a team (static catalog data: works offline)."""
    return voice.voices(caller.tenant, team)


@router.post(
    "/voice/preview",
    response_class=Response,
    responses={200: {"content": {"audio/mpeg": {}}, "description": "The audio; X-Voice-Cache says hit or miss."}},
)
async def preview_voice(body: PreviewIn, caller: CurrentCaller, voice: VoiceDep) -> Response:
    """A short sample of a voice, synthesized by the provider's speech endpoint (cached after the first time)."""
    with _voice_errors():
        preview = await voice.preview(caller.tenant, body.voice, body.text, body.team, body.format)
    return Response(
        preview.audio,
        media_type=preview.media_type,
        headers={
            "X-Voice": preview.voice,
            "X-Voice-Cache": "hit" if preview.cached else "miss",
            "Cache-Control": "private, max-age=86400",
        },
    )


@router.post("/sessions/{session_id}/realtime", response_model=RealtimeOut, tags=["sessions"])
async def realtime_session(
    session_id: SessionId, caller: CurrentCaller, engine: EngineDep, voice: VoiceDep, body: RealtimeIn | None = None
) -> dict[str, Any]:
    """Start a realtime (speech-to-speech) conversation for the session: an ephemeral client secret for the
    browser, the session config it carries, and where to connect. The server's provider key never leaves it."""
    record = await engine.aget_session(caller.tenant, session_id)
    with _voice_errors():
        return await voice.realtime(engine, record, body.voice if body else None, caller.key_id)


@router.post("/sessions/{session_id}/transcripts", response_model=TranscriptResult, tags=["sessions"])
async def post_transcripts(
    session_id: SessionId,
    body: TranscriptPost,
    caller: CurrentCaller,
    engine: EngineDep,
    voice: VoiceDep,
    request: Request,
) -> dict[str, Any]:
    """Spoken items into the session: each user item runs as a turn (scored or reviewed like a typed message),
    assistant items are recorded as spoken replies. Re-posting an item adds nothing; items apply in order.
    User items count in the tenant's turn limits like typed turns (429 with Retry-After)."""
    record = await engine.aget_session(caller.tenant, session_id)
    turns = sum(1 for item in body.items if item.role == "user" and item.text.strip())
    release = lambda: None  # noqa: E731 - nothing taken: assistant or blank items only
    if turns:
        limiter: TenantTurnLimiter = request.app.state.turn_limiter
        release = limiter.admit(caller.tenant, engine.bundles.tenants[caller.tenant].limits, turns, field="items")
    try:
        with _voice_errors():
            result = await voice.post_transcripts(engine, record, body.items, caller.key_id)
    finally:
        release()
    for item in result["items"]:
        if "replies" in item:
            item["replies"] = transcript_view(item["replies"])
    voice_state = result["voice"]
    return {
        **result,
        "voice": {"totals": voice_state.totals.view(), "recent": voice_state.recent},
        "state": {k: v for k, v in result["state"].items() if k not in INTERNAL_STATE_KEYS},
    }


@router.get("/sessions/{session_id}/transcripts", response_model=VoiceTranscript, tags=["sessions"])
async def get_transcripts(
    session_id: SessionId, caller: CurrentCaller, engine: EngineDep, voice: VoiceDep
) -> dict[str, Any]:
    """The session's voice transcript: every spoken item (archived ones included) with speaking time, pace and
    filler words, and totals."""
    record = await engine.aget_session(caller.tenant, session_id)
    return await voice.transcript(engine, record)
