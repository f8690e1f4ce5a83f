"""Provider calls for voice, through the `openai` SDK with the models' key, base URL, timeout and retries.

The SDK's default transport is httpx2; the client here is built on an `httpx.AsyncClient`, which the SDK
accepts as `http_client` as well. Provider errors become VoiceErrors (502 / 503 / 504 with a retry hint);
the server's key never appears in a message, a log line or a response. The SDK is imported on the first call: the
server imports this module at start-up, and most deployments never make a voice call.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import httpx

from personas.schema import AgentPersona
from server.settings import Settings
from server.voice.errors import VoiceError, voice_unavailable

if TYPE_CHECKING:
    import openai

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_RETRY_AFTER_S = 5
AudioFormat = Literal["mp3", "wav", "opus", "aac", "flac"]


@dataclass(frozen=True)
class ProviderConfig:
    """Where and how voice calls go: the same values a persona's chat model gets (AgentFactory)."""

    base_url: str | None
    timeout_s: float
    max_retries: int
    api_key: str = field(repr=False)

    @property
    def endpoint(self) -> str:
        return (self.base_url or DEFAULT_BASE_URL).rstrip("/")


def provider_config(settings: Settings, persona: AgentPersona) -> ProviderConfig | None:
    """The speaking persona's provider, resolved as AgentFactory does; None when voice has no provider
    (an offline persona, or `auto` with neither a key nor a base URL configured)."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    base_url = persona.model.base_url or settings.model_base_url or None
    provider = persona.model.provider
    if provider == "offline" or not (key or base_url):
        return None
    # local OpenAI-compatible servers accept any key; the SDK refuses an empty one
    return ProviderConfig(base_url, persona.model.timeout_s, persona.model.max_retries, key or "not-needed")


def _retry_after(response: httpx.Response | Any) -> int:
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else DEFAULT_RETRY_AFTER_S
    except ValueError:
        seconds = DEFAULT_RETRY_AFTER_S
    return max(1, min(300, math.ceil(seconds)))


def _provider_code(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    code = error.get("code") or error.get("type") if isinstance(error, dict) else None
    return f" ({code})" if isinstance(code, str) and code.isidentifier() else ""


def map_provider_error(exc: Exception, what: str) -> VoiceError:
    """An SDK error as the client should see it; the provider's own message is never forwarded (a 401's
    message can quote part of the key)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return VoiceError(
            504,
            "voice_provider_timeout",
            f"the voice provider did not answer the {what} in time; try again",
            retry_after_s=DEFAULT_RETRY_AFTER_S,
        )
    if isinstance(exc, openai.APIConnectionError):
        return VoiceError(
            502,
            "voice_provider_unreachable",
            f"the voice provider could not be reached for the {what}; try again shortly",
            retry_after_s=DEFAULT_RETRY_AFTER_S,
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return VoiceError(
            502,
            "voice_provider_auth",
            f"the voice provider refused the server's credentials "
            f"({exc.status_code}) for the {what}; the server's OPENAI_API_KEY needs fixing",
        )
    if isinstance(exc, openai.RateLimitError):
        return VoiceError(
            503,
            "voice_rate_limited",
            f"the voice provider is rate limiting the {what}; retry after the time in Retry-After",
            retry_after_s=_retry_after(exc.response),
        )
    if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        return VoiceError(
            502,
            "voice_provider_error",
            f"the voice provider failed the {what} ({exc.status_code}); try again",
            retry_after_s=_retry_after(exc.response),
        )
    if isinstance(exc, openai.APIStatusError):
        return VoiceError(
            502,
            "voice_provider_rejected",
            f"the voice provider rejected the {what} "
            f"({exc.status_code}{_provider_code(exc)}); check the team's voice settings",
        )
    return VoiceError(502, "voice_provider_error", f"unexpected answer from the voice provider for the {what}")


@dataclass(frozen=True)
class ClientSecret:
    value: str
    expires_at: int  # seconds since the epoch


class VoiceProvider:
    """The two calls voice makes: speech (previews) and realtime client secrets."""

    def __init__(self, config: ProviderConfig):
        self.config = config

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[openai.AsyncOpenAI]:
        import openai

        async with httpx.AsyncClient(timeout=self.config.timeout_s, follow_redirects=True) as http:
            yield openai.AsyncOpenAI(
                api_key=self.config.api_key,
                base_url=self.config.base_url,
                timeout=self.config.timeout_s,
                max_retries=self.config.max_retries,
                # the SDK takes an httpx (not only httpx2) client; its annotation names httpx2 only
                http_client=cast(Any, http),
            )

    async def speech(self, *, model: str, voice: str, text: str, speed: float, audio_format: AudioFormat) -> bytes:
        import openai

        try:
            async with self._client() as client:
                response = await client.audio.speech.create(
                    model=model, voice=voice, input=text, speed=speed, response_format=audio_format
                )
                return bytes(response.content)
        except openai.OpenAIError as exc:
            raise map_provider_error(exc, "voice preview") from None

    async def client_secret(self, session: dict[str, Any], ttl_s: int) -> ClientSecret:
        import openai

        try:
            async with self._client() as client:
                created = await client.realtime.client_secrets.create(
                    expires_after={"anchor": "created_at", "seconds": ttl_s},
                    session=session,  # type: ignore[arg-type]
                )
                return ClientSecret(created.value, int(created.expires_at))
        except openai.OpenAIError as exc:
            raise map_provider_error(exc, "realtime session") from None


def require_provider(settings: Settings, persona: AgentPersona) -> VoiceProvider:
    config = provider_config(settings, persona)
    if config is None:
        if persona.model.provider == "offline":
            raise voice_unavailable(
                f"the persona {persona.id!r} that speaks for this team is set to offline; "
                "give it provider: auto or openai to use voice"
            )
        raise voice_unavailable()
    return VoiceProvider(config)
