"""How nodes call chat models: prompt rendering, structured output with a JSON fallback, deadlines."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import string
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel

from personas.schema import AgentPersona

T = TypeVar("T", bound=BaseModel)


class _SafeDict(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, **values: Any) -> str:
    """Fill a persona prompt template; unknown placeholders are left as written rather than failing a turn."""
    return string.Formatter().vformat(template, (), _SafeDict(values))


def persona_messages(persona: AgentPersona, **values: Any) -> list[BaseMessage]:
    """System + user messages from the persona's `system` and `user` templates."""
    out: list[BaseMessage] = []
    if "system" in persona.prompts:
        out.append(SystemMessage(render(persona.prompts["system"], **values)))
    if "user" in persona.prompts:
        out.append(HumanMessage(render(persona.prompts["user"], **values)))
    return out


def _extract_json(text: str) -> Any:
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if not match:
        raise ValueError("model reply holds no JSON object")
    return json.loads(match.group(0))


@functools.cache
def _json_instruction(schema: type[BaseModel]) -> str:
    return "Reply with only a JSON object that matches this JSON Schema:\n" + json.dumps(schema.model_json_schema())


# with_structured_output rebuilds the schema's JSON schema and a new runnable on every call (about 1 ms a turn):
# keep one per (model, schema, method). Models are long-lived (AgentFactory caches them); the cache holds its
# models alive, so an id is never reused while cached, and it is bounded.
_STRUCTURED: dict[tuple[int, type[BaseModel], str], tuple[BaseChatModel, Runnable[Any, Any]]] = {}
_STRUCTURED_MAX = 256


def _structured(model: BaseChatModel, schema: type[BaseModel], method: str) -> Runnable[Any, Any]:
    key = (id(model), schema, method)
    hit = _STRUCTURED.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    runnable = model.with_structured_output(schema, method=method)  # type: ignore[arg-type]
    if len(_STRUCTURED) >= _STRUCTURED_MAX:
        _STRUCTURED.clear()
    _STRUCTURED[key] = (model, runnable)
    return runnable


async def ask_structured(
    model: BaseChatModel,
    schema: type[T],
    messages: list[BaseMessage],
    persona: AgentPersona,
    config: RunnableConfig | None = None,
) -> T:
    """Ask for a `schema` instance within the persona's deadline; raises on timeout, error or invalid output.

    Uses the model's native structured output (JSON schema or tool call, as the persona says); a model
    without it (e.g. a plain local model) is asked for JSON in the prompt and the reply is validated.
    """
    try:
        runnable = _structured(model, schema, persona.model.structured_output)
    except NotImplementedError:
        instruction = SystemMessage(_json_instruction(schema))
        reply = await asyncio.wait_for(model.ainvoke([*messages, instruction], config), persona.model.timeout_s)
        return schema.model_validate(_extract_json(str(reply.content)))
    result = await asyncio.wait_for(runnable.ainvoke(messages, config), persona.model.timeout_s)
    if isinstance(result, schema):
        return result
    return schema.model_validate(result)


async def ask_text(
    model: BaseChatModel, messages: list[BaseMessage], persona: AgentPersona, config: RunnableConfig | None = None
) -> AIMessage:
    """Plain text reply within the persona's deadline (tokens stream to callers that stream)."""
    reply = await asyncio.wait_for(model.ainvoke(messages, config), persona.model.timeout_s)
    if not isinstance(reply, AIMessage) or not str(reply.content).strip():
        raise ValueError("model returned an empty reply")
    return reply


def describe_failure(exc: BaseException) -> str:
    """Short, log-safe reason for a failed model call (never the request or any key)."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    if status:
        return f"{name} (HTTP {status})"
    if "Timeout" in name:
        return "timeout"
    return name if not str(exc) else f"{name}: {str(exc).splitlines()[0][:160]}"
