"""VoiceService: the one voice service every team uses (catalog, previews, realtime bootstrap, transcripts)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage

from checkpoints.session_index import SessionRecord
from nodes.model_calls import render
from personas.loader import Bundles
from personas.resolver import AgentTeamResolver, TeamRunConfig
from personas.voice import CatalogVoice, EffectiveVoice, effective_voice, load_catalog
from server.settings import Settings
from server.voice.cache import PreviewCache, cache_dir, preview_key
from server.voice.errors import VoiceError
from server.voice.provider import AudioFormat, provider_config, require_provider
from server.voice.realtime import compose_realtime_session, session_update
from server.voice.transcripts import TranscriptItem, apply_transcript, voice_transcript

if TYPE_CHECKING:
    from server.engine import Engine

MEDIA_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
}


@dataclass(frozen=True)
class Preview:
    audio: bytes
    media_type: str
    voice: str
    cached: bool


class VoiceService:
    """Answers from the bundles and the voice catalog; calls the provider only for previews (cached) and
    realtime client secrets; spoken transcripts run through the engine like typed turns."""

    def __init__(self, bundles: Bundles, settings: Settings, resolver: AgentTeamResolver | None = None):
        self.bundles = bundles
        self.settings = settings
        self.resolver = resolver or AgentTeamResolver(bundles)
        self.catalog = load_catalog(bundles.root)
        self.cache = PreviewCache(cache_dir(settings), int(settings.voice_cache_max_mb * 1024 * 1024))
        self._voices: dict[tuple[str, str], EffectiveVoice] = {}

    # ---- settings and catalog ---------------------------------------------------------------------------------

    def team_voice(self, tenant: str, team: str | None = None) -> tuple[TeamRunConfig, EffectiveVoice]:
        """The tenant's team (403/404 as for any route) and its effective voice settings."""
        run = self.resolver.resolve(tenant, team)
        key = (tenant, run.team.id)
        if key not in self._voices:
            self._voices[key] = effective_voice(self.bundles, self.catalog, run)
        return run, self._voices[key]

    def voices(self, tenant: str, team: str | None = None) -> dict[str, Any]:
        """The voices the tenant may use for the team, in catalog order, the default one flagged."""
        run, voice = self.team_voice(tenant, team)
        entries = [self.catalog.get(v) for v in voice.allowed]
        return {
            "team": run.team.id,
            "default_voice": voice.default_voice,
            "available": self.provider_ready(voice),
            "voices": [
                {"id": v.id, "name": v.name, "description": v.description, "default": v.id == voice.default_voice}
                for v in entries
                if v is not None
            ],
        }

    def choose(self, voice: EffectiveVoice, voice_id: str | None, field: str = "voice") -> CatalogVoice:
        """The catalog entry for a voice the tenant may use with this team (the default when none is given)."""
        chosen = voice_id or voice.default_voice
        entry = self.catalog.get(chosen)
        if entry is None:
            raise VoiceError(
                422,
                "validation_error",
                f"{field}: unknown voice {chosen!r}; voices for team {voice.team!r}: {', '.join(voice.allowed)}",
                field,
            )
        if chosen not in voice.allowed:
            raise VoiceError(
                422,
                "validation_error",
                f"{field}: voice {chosen!r} is not available for team "
                f"{voice.team!r}; available: {', '.join(voice.allowed)}",
                field,
            )
        return entry

    def provider_ready(self, voice: EffectiveVoice) -> bool:
        return provider_config(self.settings, voice.persona) is not None

    # ---- previews ---------------------------------------------------------------------------------------------

    async def preview(
        self,
        tenant: str,
        voice_id: str,
        text: str | None = None,
        team: str | None = None,
        audio_format: AudioFormat = "mp3",
    ) -> Preview:
        """Audio of `text` (else the team's preview sentence) in the voice; a repeated preview comes from the
        cache and makes no provider call. 422 for a voice or text the caller may not use, 503 without a provider."""
        _, voice = self.team_voice(tenant, team)
        entry = self.choose(voice, voice_id)
        if text is None:
            text = render(voice.settings.preview_text, voice_name=entry.name)
        text = text.strip()
        if not text:
            raise VoiceError(422, "validation_error", "text: give some text to speak, or leave it out", "text")
        limit = self.settings.voice_preview_max_chars
        if len(text) > limit:
            raise VoiceError(
                422, "validation_error", f"text: {len(text)} characters; a preview speaks at most {limit}", "text"
            )
        provider = require_provider(self.settings, voice.persona)
        s = voice.settings
        key = preview_key(tenant, provider.config.endpoint, s.preview_model, entry.wire_id, s.speed, audio_format, text)
        cached = self.cache.get(key, audio_format)
        if cached is not None:
            return Preview(cached, MEDIA_TYPES[audio_format], entry.id, True)
        audio = await provider.speech(
            model=s.preview_model, voice=entry.wire_id, text=text, speed=s.speed, audio_format=audio_format
        )
        self.cache.put(key, audio_format, audio)  # only a successful call is kept
        return Preview(audio, MEDIA_TYPES[audio_format], entry.id, False)

    # ---- realtime ---------------------------------------------------------------------------------------------

    async def realtime(
        self, engine: Engine, session: SessionRecord, voice_id: str | None = None, actor: str = "api"
    ) -> dict[str, Any]:
        """An ephemeral client secret for the session's realtime conversation, with its expiry and the session
        config it carries. The server's key stays here; nothing about the session is stored, and the audit log
        says who was given a secret for which session (`voice_session_started`; never the secret itself)."""
        run, voice = self.team_voice(session.tenant, session.team)
        entry = self.choose(voice, voice_id)
        provider = require_provider(self.settings, voice.persona)
        state = await engine.state(session)
        config = compose_realtime_session(voice, run, state, entry)
        secret = await provider.client_secret(config, voice.settings.secret_ttl_s)
        expires_at = datetime.fromtimestamp(secret.expires_at, UTC)
        granted = {"voice": entry.id, "model": voice.settings.realtime_model, "expires_at": expires_at.isoformat()}
        await engine.arecord(session.tenant, actor, "voice_session_started", session.id, granted)
        return {
            "client_secret": secret.value,
            "expires_at": expires_at,
            "voice": entry.id,
            "session": config,
            "webrtc_url": f"{provider.config.endpoint}/realtime/calls",
            "transcripts_url": f"/sessions/{session.id}/transcripts",
        }

    # ---- transcripts ------------------------------------------------------------------------------------------

    async def post_transcripts(
        self, engine: Engine, session: SessionRecord, items: list[TranscriptItem], actor: str
    ) -> dict[str, Any]:
        """Apply spoken items (user items as turns, assistant items as spoken replies), idempotently and in
        order; returns what each item did, the replies to speak next and the refreshed realtime instructions."""
        run, voice = self.team_voice(session.tenant, session.team)
        spoken_by = f"realtime:{voice.settings.realtime_model}"
        outcome = await apply_transcript(engine, session, run, items, actor, spoken_by)
        state = outcome["state"]
        speak: list[str] = []
        for result in outcome["items"]:
            replies: list[AIMessage] = result.pop("replies", None) or []
            if replies:
                result["replies"] = replies
                speak.extend(_spoken_text(m, state, result.get("evaluation")) for m in replies)
        return {
            "items": outcome["items"],
            "speak": " ".join(t for t in speak if t).strip() or None,
            "session_update": session_update(voice, run, state),
            "voice": outcome["voice"],
            "state": state,
        }

    async def transcript(self, engine: Engine, session: SessionRecord) -> dict[str, Any]:
        turns, totals = await voice_transcript(engine, session)
        return {"items": turns, "totals": totals.view()}


def _spoken_text(message: AIMessage, state: dict[str, Any], evaluation: dict[str, Any] | None) -> str:
    """What the realtime voice should say for a reply: the next question plainly, a one-line score (the
    details are on screen), everything else as written."""
    meta = message.response_metadata or {}
    kind = meta.get("kind")
    if kind == "evaluation":
        score = evaluation.get("overall") if evaluation else None
        return f"Thank you. That answer scored {score} out of 5; the details are on your screen." if score else ""
    if kind == "question" and message.name != "reask":
        questions = state.get("questions") or []
        index = meta.get("question_index")
        if isinstance(index, int) and index < len(questions):
            return f"Question {index + 1} of {len(questions)}: {questions[index]['text']}"
    return str(message.content)
