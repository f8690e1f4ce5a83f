"""State pieces every team shares: the `messages` channel every chat client can drive."""

from __future__ import annotations

from typing import Annotated, Any

from langchain_core.messages import AnyMessage, BaseMessage, convert_to_messages
from langgraph.graph.message import add_messages
from pydantic import BeforeValidator


def _coerce_message(value: Any) -> Any:
    """Accept what chat clients send ({"role", "content"} dicts, strings, LangChain dicts); anything else is a
    validation error (422 naming messages.N) rather than a server error."""
    if isinstance(value, BaseMessage):
        return value
    try:
        return convert_to_messages([value])[0]
    except (TypeError, ValueError, NotImplementedError, KeyError) as exc:
        raise ValueError(f"not a message: {str(exc).splitlines()[0][:200]}") from None


# the reducer must stay last: LangGraph takes the last callable in the metadata as the channel's reducer
Messages = Annotated[list[Annotated[AnyMessage, BeforeValidator(_coerce_message)]], add_messages]
