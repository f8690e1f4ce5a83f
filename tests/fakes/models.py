"""Fake chat models (langchain-core's GenericFakeChatModel) and an AgentFactory that hands them out."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult

from personas.factory import AgentFactory
from personas.schema import AgentPersona


def replies(*texts: str | dict[str, Any]) -> GenericFakeChatModel:
    """A fake model answering with these texts in turn (dicts are sent as JSON), then repeating the last."""
    contents = [json.dumps(t) if isinstance(t, dict) else t for t in texts]
    stream = itertools.chain(contents, itertools.repeat(contents[-1]))
    return GenericFakeChatModel(messages=(AIMessage(c) for c in stream))


class FailingChatModel(GenericFakeChatModel):
    """Raises `error` on every call, like a provider that is down."""

    error: Exception = RuntimeError("provider unavailable")

    def __init__(self, error: Exception | None = None, **kwargs: Any):
        super().__init__(messages=iter(()), **kwargs)
        if error is not None:
            self.error = error

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        raise self.error

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        raise self.error

    def _stream(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    async def _astream(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error
        yield  # pragma: no cover


class SlowChatModel(GenericFakeChatModel):
    """Answers only after `seconds`, like a provider that hangs."""

    seconds: float = 5.0

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        await asyncio.sleep(self.seconds)
        return await super()._agenerate(*args, **kwargs)


class FakeAgentFactory(AgentFactory):
    """Hands out the given fake model for a persona id; personas without one take the offline path."""

    def __init__(self, models: dict[str, BaseChatModel] | None = None):
        super().__init__()
        self.models = dict(models or {})

    def provider_for(self, persona: AgentPersona) -> Any:
        return "openai" if persona.id in self.models else "offline"

    def chat_model(self, persona: AgentPersona) -> BaseChatModel | None:
        return self.models.get(persona.id)

    def model_label(self, persona: AgentPersona) -> str:
        return f"fake:{persona.model.name}" if persona.id in self.models else "offline"
