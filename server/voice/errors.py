"""What can go wrong with a voice request, as an HTTP status, a stable code, a message and a retry hint."""

from __future__ import annotations


class VoiceError(Exception):
    """A voice request that cannot be served; routers turn it into the one JSON error shape."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after_s: int | None = None
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else None


NO_PROVIDER = (
    "voice needs a speech provider: set OPENAI_API_KEY (or TEAMGRAPH_OPENAI_API_KEY) for OpenAI, or "
    "OPENAI_BASE_URL (or TEAMGRAPH_MODEL_BASE_URL) for an OpenAI-compatible server; the server reads them "
    "when it starts"
)


def voice_unavailable(reason: str = NO_PROVIDER) -> VoiceError:
    return VoiceError(503, "voice_unavailable", reason)
