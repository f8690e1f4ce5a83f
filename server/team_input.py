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
# end-user ids (erasure) may be emails too; they travel in a URL path, so no "/", space or control characters
USER_ID_PATTERN = r"^[A-Za-z0-9_.@+:-]{1,200}$"
USER_ID_RULE = "1 to 200 characters from A-Z a-z 0-9 _ . @ + : -"
_THREAD_ID = re.compile(THREAD_ID_PATTERN)
HUMAN = {"human", "user"}  # LangChain's type and the chat-style role of a user's message
# keys LangChain's own serialisation of a HumanMessage carries (RemoteRunnable sends them), and their types
MESSAGE_KEYS: dict[str, tuple[type, ...]] = {
    "type": (str,),
    "role": (str,),
    "content": (str,),
    "id": (str, type(None)),
    "name": (str, type(None)),
    "additional_kwargs": (dict,),
    "response_metadata": (dict,),
    "example": (bool,),
}
_TYPE_NAMES = {str: "a string", type(None): "null", dict: "an object", bool: "true or false"}


IDEMPOTENCY_KEY_RULE = "1 to 200 visible ASCII characters (a UUID is a good key)"


def check_idempotency_key(key: str) -> str:
    """An Idempotency-Key header's value when it has the documented form, else 422 naming the header."""
    if not 1 <= len(key) <= 200 or not all("!" <= ch <= "~" for ch in key):
        raise _invalid("Idempotency-Key", IDEMPOTENCY_KEY_RULE)
    return key


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "validation_error", f"{field}: {message}", field)


def check_thread_id(thread_id: Any, field: str = "config.configurable.thread_id") -> str:
    """The client's thread id when it has the documented form, else 422."""
    if not isinstance(thread_id, str) or not _THREAD_ID.match(thread_id):
        raise _invalid(field, f"a thread id is {THREAD_ID_RULE}")
    return thread_id


CONFIG_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "configurable": ((dict,), "an object with thread_id"),
    "metadata": ((dict,), "an object"),
    "tags": ((list,), "a list of strings"),
    "callbacks": ((list, type(None)), "null or an empty list"),
}


def check_request_shape(body: Any, endpoint: str) -> None:
    """The parts of a run request LangServe reads before our checks: `config` (an object; a list of them on
    /batch) and `kwargs` (an object). LangServe fails on other types with a server error."""
    if not isinstance(body, dict):
        raise _invalid("body", "a JSON object with " + ("'inputs'" if endpoint == "batch" else "'input'"))
    config = body.get("config", {})
    if not (isinstance(config, dict) or (endpoint == "batch" and isinstance(config, list))):
        raise _invalid("config", "an object such as {\"configurable\": {\"thread_id\": \"...\"}}"
                       + (", or a list of them, one per input" if endpoint == "batch" else ""))  # fmt: skip
    if isinstance(config, list) and not all(isinstance(c, dict) for c in config):
        raise _invalid("config", "a list of config objects, one per input")
    inputs = body.get("inputs")
    if isinstance(config, list) and isinstance(inputs, list) and len(config) != len(inputs):
        raise _invalid("config", f"a list of {len(inputs)} config objects, one per input; it has {len(config)}")
    for i, item in enumerate(config if isinstance(config, list) else [config]):
        at = f"config[{i}]" if isinstance(config, list) else "config"
        for key, (kinds, wanted) in CONFIG_TYPES.items():
            if key in item and not isinstance(item[key], kinds):
                raise _invalid(f"{at}.{key}", wanted)
        if item.get("callbacks"):
            raise _invalid(f"{at}.callbacks", "callbacks cannot be sent over HTTP; leave it out")
        if any(not isinstance(tag, str) for tag in item.get("tags") or []):
            raise _invalid(f"{at}.tags", "a list of strings")
    if not isinstance(body.get("kwargs", {}), dict):
        raise _invalid("kwargs", "an object (LangServe ignores it)")


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
            if key in message and not (isinstance(message[key], str) and message[key] in HUMAN):
                raise _invalid(f"{field}.{key}", f"{message[key]!r}: clients send the user's messages only "
                                                 "(type 'human' or role 'user'); system prompts and AI messages "
                                                 "come from the team")  # fmt: skip
        if "role" not in message and "type" not in message:
            raise _invalid(f"{field}.type", "missing: send type 'human' (or role 'user')")
        unknown = sorted(set(message) - set(MESSAGE_KEYS))
        if unknown:
            raise _invalid(
                f"{field}.{unknown[0]}", f"not a key of a user message; use {', '.join(sorted(MESSAGE_KEYS))}"
            )
        if not isinstance(message.get("content"), str):
            raise _invalid(f"{field}.content", "the message text, a string")
        for key, value in message.items():
            if not isinstance(value, MESSAGE_KEYS[key]):
                raise _invalid(f"{field}.{key}", " or ".join(_TYPE_NAMES[t] for t in MESSAGE_KEYS[key]))
        content = message["content"]
    else:
        raise _invalid(field, 'a message object {"type": "human", "content": "..."}')
    if len(content) > limits.max_message_chars:
        limit = limits.max_message_chars
        raise _invalid(f"{field}.content", f"{len(content)} characters; this team takes at most {limit} per "
                                           "message (limits.max_message_chars)")  # fmt: skip
    return len(content)
