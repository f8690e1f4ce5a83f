"""AgentFactory: the one place that turns a persona into a configured chat model (or the offline path)."""

from __future__ import annotations

import os
import threading
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from pydantic import SecretStr

from personas.schema import AgentPersona, ModelSettings

ResolvedProvider = Literal["openai", "offline"]


class AgentFactory:
    """Builds chat models for personas; instances are cached per distinct model setting."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None):
        self._api_key = api_key or None
        self._base_url = base_url or None
        self._models: dict[ModelSettings, BaseChatModel] = {}
        self._moderation: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> AgentFactory:
        """For graphs loaded without a server (e.g. `langgraph dev`): the OpenAI SDK's own variables."""
        return cls(api_key=os.environ.get("OPENAI_API_KEY"), base_url=os.environ.get("OPENAI_BASE_URL"))

    def provider_for(self, persona: AgentPersona) -> ResolvedProvider:
        """openai when asked for, or on auto when a key or base URL is configured; else offline."""
        provider = persona.model.provider
        if provider == "auto":
            return "openai" if (self._api_key or self._base_url or persona.model.base_url) else "offline"
        return provider

    def chat_model(self, persona: AgentPersona) -> BaseChatModel | None:
        """The persona's chat model, or None on the offline path (nodes then take their deterministic path)."""
        if self.provider_for(persona) == "offline":
            return None
        settings = persona.model
        with self._lock:
            model = self._models.get(settings)
            if model is None:
                model = self._build_openai(settings)
                self._models[settings] = model
            return model

    def moderation_client(self, persona: AgentPersona) -> Any | None:
        """An `openai.AsyncOpenAI` for the provider's moderation endpoint, or None offline (same rule as models)."""
        base_url = persona.model.base_url or self._base_url
        if self.provider_for(persona) == "offline" or not (self._api_key or base_url):
            return None  # a moderation call needs a key (or a local endpoint) as well as the provider
        key = base_url or ""
        with self._lock:
            client = self._moderation.get(key)
            if client is None:
                from openai import AsyncOpenAI

                api_key = self._api_key or ("not-needed" if base_url else None)
                # retries are the safety reviewer's business: one bounded attempt, then the offline layers stand
                client = AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)
                self._moderation[key] = client
            return client

    def model_label(self, persona: AgentPersona) -> str:
        """What produced an answer, as shown to users: the model name, or 'offline'."""
        return persona.model.name if self.provider_for(persona) == "openai" else "offline"

    def _build_openai(self, settings: ModelSettings) -> BaseChatModel:
        from langchain_openai import ChatOpenAI

        base_url = settings.base_url or self._base_url
        # Local OpenAI-compatible servers (Ollama, vLLM) accept any key; the SDK refuses an empty one.
        api_key = self._api_key or ("not-needed" if base_url else None)
        return ChatOpenAI(
            model=settings.name,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
            base_url=base_url,
            api_key=SecretStr(api_key) if api_key else None,
            stream_usage=True,
        )
