"""What a client may send to a team route, checked before anything runs or is stored: the thread id's form, the
input's keys, human messages only, and the team bundle's size limits (422 naming the field)."""

from __future__ import annotations

import re
from typing import Any

from personas.schema import InputLimits
from server.errors import ApiError

# no ".": a session's archive lives in the LangGraph store under the thread id, and store labels cannot hold one
THREAD_ID_PATTERN = r"^[A-Za-z0-9_:-]{1,128}$"
THREAD_ID_RULE = "1 to 128 characters from A-Z a-z 0-9 _ : -"
_THREAD_ID = re.compile(THREAD_ID_PATTERN)
HUMAN = {"human", "user"}  # LangChain's type and the chat-style role of a user's message
# keys LangChain's own serialisation of a HumanMessage carries (RemoteRunnable sends them)
MESSAGE_KEYS = {"type", "role", "content", "id", "name", "additional_kwargs", "response_metadata", "example"}


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "validation_error", f"{field}: {message}", field)


def check_thread_id(thread_id: Any, field: str = "config.configurable.thread_id") -> str:
    """The client's thread id when it has the documented form, else 422."""
    if not isinstance(thread_id, str) or not _THREAD_ID.match(thread_id):
        raise _invalid(field, f"a thread id is {THREAD_ID_RULE}")
    return thread_id


def turn_inputs(body: Any, endpoint: str) -> list[tuple[str, Any]]:
    """(field, input) for each turn the request asks for: one, or one per batch input."""
    if not isinstance(body, dict):
        raise _invalid("body", "a JSON object with " + ("'inputs'" if endpoint == "batch" else "'input'"))
    if endpoint != "batch":
        return [("input", body.get("input"))]
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _invalid("inputs", "a non-empty list of inputs, one per turn")
    return [(f"inputs[{i}]", item) for i, item in enumerate(inputs)]


def check_turn_input(turn: Any, field: str, allowed_keys: set[str], limits: InputLimits) -> None:
    """One turn's input: known keys only, a non-empty list of human messages, strings within the limits."""
    if not isinstance(turn, dict):
        raise _invalid(field, 'an object such as {"messages": [{"type": "human", "content": "..."}]}')
    unknown = sorted(set(turn) - allowed_keys)
    if unknown:
        raise _invalid(f"{field}.{unknown[0]}", f"unknown input key; this team takes {', '.join(sorted(allowed_keys))}")
    for key, value in turn.items():
        if key != "messages" and not isinstance(value, str):
            raise _invalid(f"{field}.{key}", "a string")
    messages = turn.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid(f"{field}.messages", "a non-empty list of messages: the user's next message")
    if len(messages) > limits.max_messages:
        raise _invalid(f"{field}.messages", f"{len(messages)} messages; this team takes at most {limits.max_messages} "
                                            "per turn (limits.max_messages)")  # fmt: skip
    total = 0
    for i, message in enumerate(messages):
        total += _check_message(message, f"{field}.messages[{i}]", limits)
    total += sum(len(value) for key, value in turn.items() if key != "messages")
    if total > limits.max_turn_chars:
        raise _invalid(field, f"{total} characters of text; this team takes at most {limits.max_turn_chars} per turn "
                              "(limits.max_turn_chars)")  # fmt: skip


def _check_message(message: Any, field: str, limits: InputLimits) -> int:
    """A message a client may send: a human one (system prompts and AI messages come from the team). Returns its
    length in characters."""
    if isinstance(message, str):
        content = message  # LangChain reads a bare string as the user's message
    elif isinstance(message, dict):
        for key in ("role", "type"):  # LangChain takes role first when both are there: both must say human
            if key in message and message[key] not in HUMAN:
                raise _invalid(f"{field}.{key}", f"{message[key]!r}: clients send the user's messages only "
                                                 "(type 'human' or role 'user'); system prompts and AI messages "
                                                 "come from the team")  # fmt: skip
        if "role" not in message and "type" not in message:
            raise _invalid(f"{field}.type", "missing: send type 'human' (or role 'user')")
        unknown = sorted(set(message) - MESSAGE_KEYS)
        if unknown:
            raise _invalid(
                f"{field}.{unknown[0]}", f"not a key of a user message; use {', '.join(sorted(MESSAGE_KEYS))}"
            )
        if not isinstance(message.get("content"), str):
            raise _invalid(f"{field}.content", "the message text, a string")
        content = message["content"]
    else:
        raise _invalid(field, 'a message object {"type": "human", "content": "..."}')
    if len(content) > limits.max_message_chars:
        limit = limits.max_message_chars
        raise _invalid(f"{field}.content", f"{len(content)} characters; this team takes at most {limit} per "
                                           "message (limits.max_message_chars)")  # fmt: skip
    return len(content)
