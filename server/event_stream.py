"""POST /teams/{team}/stream_events: LangServe's stream_events, the same bytes for less work per event.

LangServe's handler serializes each event with `orjson.dumps(event, default=model_dump)`, decodes the bytes to a
str, and hands sse-starlette a dict that it turns into `event: data\\r\\ndata: ...\\r\\n\\r\\n` through a StringIO,
a regular-expression split of the whole JSON text on line breaks and an encode back to bytes. Two costs grow
with the team state, and both come before the first token (the graph's and each node's start event carry the
whole state): every message of the state is dumped again in every event (about 80 `model_dump` calls for ~11
distinct messages before a chat turn's first token, ~155 in the whole turn), and the line-break split scans
every byte of every event in Python's regex engine (about 1 ms per 100 kB; ~95 kB precede the first token of a
chat turn ten turns in).

This route sends exactly what LangServe's would, event for event (a test compares the bytes):

- the JSON is orjson's, with LangServe's default for pydantic models; a message with an id seen earlier in the
  same request is written from the JSON it gave then, as long as it is unchanged: the same object whose field
  values and extra fields, as orjson writes them, are the same bytes as when it was dumped. So a replaced field
  (LangGraph's `add_messages` gives an id-less message its id by assigning `message.id`) and an edit made in
  place inside a nested value (content lists, `additional_kwargs`, `response_metadata`, tool calls, an extra
  field's dict) both re-encode it. The trade-off: that check is one orjson call over the message's fields per
  message per event (a check by identity of the field values was cheaper but missed in-place edits); it gives
  back 11-15% of the encoding time saved over LangServe's (bench/notes.md, "First token", safety check).
  Messages without an id (the prompt list of `on_chat_model_start`, built once per model call) are not kept;
- the SSE frame is built from the bytes: `event: data\\r\\ndata: <json>\\r\\n\\r\\n` is sse-starlette's encoding of
  one line of data, and orjson never writes a line break into JSON (it escapes them inside strings);
- everything else is LangServe's: its request parsing and validation (`APIHandler._get_config_and_input`, the
  per-request config modifier, `StreamEventsParameters`), the internal metadata keys it strips (`__*`), the
  `end` and `error` events, and sse-starlette's `EventSourceResponse` (headers, pings, disconnects).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from langchain_core.messages import BaseMessage, BaseMessageChunk
from pydantic import BaseModel

from server.errors import stream_error

FRAME_START = b"event: data\r\ndata: "
FRAME_END = b"\r\n\r\n"


def _dump(obj: Any) -> Any:
    """LangServe's `default` for orjson (`langserve.serialization.default`): pydantic models by `model_dump()`;
    anything else orjson cannot encode fails the event, as there."""
    if isinstance(obj, BaseModel):
        return obj.model_dump()
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def _fields_json(obj: BaseMessage) -> bytes | None:
    """orjson's bytes for the message's field values (and extra fields) as they are now, or None when orjson
    cannot write them (the message is then dumped again, and fails as LangServe's encoding fails). Equal bytes
    mean an equal dump: `model_dump` hands orjson these values as they are, pydantic models inside them dumped by
    `model_dump()`, which is what `_dump` does here."""
    try:
        return orjson.dumps((obj.__dict__, obj.__pydantic_extra__), default=_dump)
    except TypeError:
        return None


class EventEncoder:
    """One request's event encoder: LangServe's JSON for each event, each message of the state dumped once while
    it is unchanged."""

    def __init__(self) -> None:
        # id(message) -> (the message, the JSON of its fields then, its JSON); the message is held, so its id is
        # not reused by another object while the request lasts
        self._memo: dict[int, tuple[BaseMessage, bytes | None, orjson.Fragment]] = {}

    def _default(self, obj: Any) -> Any:
        # chunks of a model's stream appear once each, and so do messages without an id (a model call's prompt);
        # complete messages with an id reappear in every later state
        if isinstance(obj, BaseMessage) and not isinstance(obj, BaseMessageChunk) and obj.id is not None:
            now = _fields_json(obj)
            seen = self._memo.get(id(obj))
            # the same object whose fields, nested containers included, write the same bytes as then
            if seen is not None and seen[0] is obj and now is not None and seen[1] == now:
                return seen[2]
            fragment = orjson.Fragment(orjson.dumps(obj.model_dump(), default=_dump))
            self._memo[id(obj)] = (obj, now, fragment)
            return fragment
        return _dump(obj)

    def frame(self, event: dict[str, Any]) -> bytes:
        """The SSE bytes LangServe sends for `event`: its `__*` metadata keys stripped, JSON, one data line."""
        # as LangServe's handler does it (in place; an event without metadata fails there too)
        event["metadata"] = {k: v for k, v in event["metadata"].items() if not k.startswith("__")}
        return FRAME_START + orjson.dumps(event, default=self._default) + FRAME_END


def add_stream_events_route(
    app: FastAPI,
    runnable: Any,
    path: str,
    handler: Any,
    checks: list[Callable[[Request], Awaitable[Any]]],
) -> bool:
    """Register POST {path}/stream_events in front of LangServe's (which stays in the OpenAPI document).
    `handler` is the team's LangServe `APIHandler`; a handler with feedback tokens or another serializer gets
    LangServe's route (returns False). A stream name allow list is refused when the app is built
    (server.team_routes.check_route_options)."""
    from langserve.api_handler import _with_validation_error_translation
    from langserve.serialization import WellKnownLCSerializer
    from langserve.validation import StreamEventsParameters
    from sse_starlette import EventSourceResponse

    if handler._token_feedback_enabled or type(handler._serializer) is not WellKnownLCSerializer:
        return False
    version = handler._astream_events_version

    async def stream_events(request: Request) -> EventSourceResponse:
        for check in checks:
            await check(request)
        config, input_ = await handler._get_config_and_input(request, "", endpoint="stream_events")
        try:  # as LangServe's handler reads them
            body = await request.json()
            with _with_validation_error_translation():
                parameters = StreamEventsParameters(**body)
        except json.JSONDecodeError as exc:
            raise RequestValidationError(errors=["Invalid JSON body"]) from exc

        async def frames() -> AsyncIterator[bytes | dict[str, Any]]:
            encoder = EventEncoder()
            try:
                async for event in runnable.astream_events(
                    input_,
                    config=config,
                    include_names=parameters.include_names,
                    include_types=parameters.include_types,
                    include_tags=parameters.include_tags,
                    exclude_names=parameters.exclude_names,
                    exclude_types=parameters.exclude_types,
                    exclude_tags=parameters.exclude_tags,
                    version=version,
                ):
                    yield encoder.frame(event)
                yield {"event": "end"}
            except Exception as exc:
                # LangServe's error event; a known fault (the database down, say) with its own status, code and
                # message, as the JSON error shape has them; no detail of any other error reaches the client
                yield {"event": "error", "data": json.dumps(await stream_error(request, exc))}
                raise
            except BaseException:
                yield {"event": "error", "data": json.dumps({"status_code": 500, "message": "Internal Server Error"})}
                raise

        return EventSourceResponse(frames())

    app.post(f"{path}/stream_events", include_in_schema=False)(stream_events)
    return True
