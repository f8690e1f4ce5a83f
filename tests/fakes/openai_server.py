"""A scriptable, OpenAI-compatible HTTP server for tests.

``FakeOpenAIServer`` runs a small Starlette app under uvicorn in a background
thread, bound to ``127.0.0.1`` on a free port, so that ``ChatOpenAI`` (and the
``openai`` SDK underneath it) is exercised over real HTTP without any network.

Replies are scripted with small behaviour dataclasses, consumed one per
``/v1/chat/completions`` request in FIFO order::

    with FakeOpenAIServer() as server:
        server.enqueue(Reply("hello"), Error(429, retry_after=0.01))
        llm = ChatOpenAI(base_url=server.base_url, api_key="test-key", model="gpt-test")
        llm.invoke("hi")  # -> "hello"
        server.requests[-1]["model"]  # -> "gpt-test"

Voice endpoints: ``/v1/audio/speech`` answers with audio derived from the request and
``/v1/realtime/client_secrets`` with an ephemeral secret; ``enqueue_voice(Error(429), ...)``
scripts them, and ``voice_requests`` records what they received (path, body, authorization).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeAlias

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.local_server import LocalASGIServer

__all__ = [
    "Audio",
    "Behaviour",
    "ClientSecret",
    "Error",
    "FakeOpenAIServer",
    "Reply",
    "Slow",
    "Structured",
    "ToolCall",
    "fake_openai_server",
]

DEFAULT_MODEL = "gpt-fake"
_HOST = "127.0.0.1"
_ARGUMENT_CHUNK_SIZE = 8
_POLL_INTERVAL = 0.02


# --------------------------------------------------------------------------- #
# Behaviours
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Reply:
    """Plain assistant text (``finish_reason="stop"``)."""

    content: str


@dataclass(frozen=True)
class Structured:
    """Structured output for ``with_structured_output``.

    * request has ``response_format`` (``json_schema``/``json_object``):
      ``content = json.dumps(data)``;
    * else request has ``tools``: a single call to the tool named by
      ``tool_choice`` (or the first tool) with ``arguments = json.dumps(data)``;
    * else ``content = json.dumps(data)``.
    """

    data: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """A single call to the tool ``name`` (``finish_reason="tool_calls"``)."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Error:
    """An HTTP error with OpenAI's error body ``{"error": {...}}``.

    ``type``/``code`` default to what the real API sends for ``status``.
    ``retry_after`` (seconds) becomes a ``Retry-After`` header.
    """

    status: int
    message: str = "Fake OpenAI server error"
    retry_after: float | None = None
    type: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class Slow:
    """Wait ``seconds`` (without blocking the server loop), then do ``then``.

    The wait is abandoned early if the client disconnects (e.g. it timed
    out) or the server is stopping.
    """

    seconds: float
    then: Behaviour


@dataclass(frozen=True)
class Audio:
    """``/v1/audio/speech``: these bytes as the audio (default: bytes derived from the request)."""

    data: bytes
    content_type: str = "audio/mpeg"


@dataclass(frozen=True)
class ClientSecret:
    """``/v1/realtime/client_secrets``: this ephemeral value, expiring ``expires_in`` seconds from now."""

    value: str = "ek_fake_secret"
    expires_in: int = 600


Behaviour: TypeAlias = Reply | Structured | ToolCall | Error | Slow
VoiceBehaviour: TypeAlias = Audio | ClientSecret | Error | Slow


# --------------------------------------------------------------------------- #
# Response building
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _FunctionCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class _Completion:
    content: str | None
    tool_calls: tuple[_FunctionCall, ...] = ()

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


_ERROR_DEFAULTS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_denied", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _rough_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def _split_words(text: str) -> list[str]:
    """Split into word-sized pieces that join back to exactly ``text``."""
    return re.findall(r"\S+\s*|\s+", text)


def _split_fixed(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _tool_call(name: str, arguments: dict[str, Any] | str, id_: str | None = None) -> _FunctionCall:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return _FunctionCall(id=id_ or _new_id("call_"), name=name, arguments=args)


def _chosen_tool_name(body: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return str(name)
    tools = body.get("tools") or []
    if not tools:
        return None
    first = tools[0]
    return str((first.get("function") or {}).get("name") or first.get("name") or "tool")


def _completion_for(behaviour: Reply | Structured | ToolCall, body: dict[str, Any]) -> _Completion:
    match behaviour:
        case Reply(content=content):
            return _Completion(content=content)
        case ToolCall(name=name, arguments=arguments, id=id_):
            return _Completion(content=None, tool_calls=(_tool_call(name, arguments, id_),))
        case Structured(data=data):
            response_format = body.get("response_format") or {}
            if response_format.get("type") in ("json_schema", "json_object"):
                return _Completion(content=json.dumps(data))
            tool_name = _chosen_tool_name(body)
            if tool_name is not None:
                return _Completion(content=None, tool_calls=(_tool_call(tool_name, data),))
            return _Completion(content=json.dumps(data))


def _usage(body: dict[str, Any], completion: _Completion) -> dict[str, int]:
    prompt = _rough_tokens(json.dumps(body.get("messages", [])))
    produced = (completion.content or "") + "".join(c.name + c.arguments for c in completion.tool_calls)
    completion_tokens = _rough_tokens(produced)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def _error_response(error: Error) -> JSONResponse:
    default_type, default_code = _ERROR_DEFAULTS.get(
        error.status,
        ("server_error" if error.status >= 500 else "invalid_request_error", None),
    )
    payload = {
        "error": {
            "message": error.message,
            "type": error.type or default_type,
            "param": None,
            "code": error.code or default_code,
        }
    }
    headers: dict[str, str] = {}
    if error.retry_after is not None:
        headers["Retry-After"] = f"{error.retry_after:g}"
    return JSONResponse(payload, status_code=error.status, headers=headers)


class _ResponseWriter:
    """Renders a ``_Completion`` as an OpenAI chat completion (full or SSE)."""

    def __init__(self, body: dict[str, Any], completion: _Completion) -> None:
        self.body = body
        self.completion = completion
        self.id = _new_id("chatcmpl-")
        self.created = int(time.time())
        self.model = str(body.get("model") or DEFAULT_MODEL)

    def full(self) -> dict[str, Any]:
        completion = self.completion
        message: dict[str, Any] = {
            "role": "assistant",
            "content": completion.content,
            "refusal": None,
            "annotations": [],
        }
        if completion.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in completion.tool_calls
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": _usage(self.body, completion),
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    def chunks(self) -> Iterator[dict[str, Any]]:
        include_usage = bool((self.body.get("stream_options") or {}).get("include_usage"))
        completion = self.completion

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            data: dict[str, Any] = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
            }
            if include_usage:
                data["usage"] = None
            return data

        if completion.tool_calls:
            yield chunk({"role": "assistant", "content": None, "refusal": None})
            for index, call in enumerate(completion.tool_calls):
                yield chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call.id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": ""},
                            }
                        ]
                    }
                )
                for piece in _split_fixed(call.arguments, _ARGUMENT_CHUNK_SIZE):
                    yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        else:
            yield chunk({"role": "assistant", "content": "", "refusal": None})
            for piece in _split_words(completion.content or ""):
                yield chunk({"content": piece})
        yield chunk({}, completion.finish_reason)
        if include_usage:
            usage_chunk = chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = _usage(self.body, completion)
            yield usage_chunk

    async def sse(self) -> AsyncIterator[str]:
        for data in self.chunks():
            yield f"data: {json.dumps(data)}\n\n"
            await asyncio.sleep(0)
        yield "data: [DONE]\n\n"


# --------------------------------------------------------------------------- #
# Server
# --------------------------------------------------------------------------- #


class FakeOpenAIServer:
    """OpenAI-compatible chat completions server on ``127.0.0.1``.

    Use as a context manager or call ``start()``/``stop()``. Pass ``base_url``
    to ``ChatOpenAI(base_url=...)``. Scripted behaviours are consumed one per
    chat completion request; when none are queued the default (initially
    ``Reply("ok")``) is used.
    """

    def __init__(self, *, startup_timeout: float = 10.0) -> None:
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._queue: deque[Behaviour] = deque()
        self._default: Behaviour = Reply("ok")
        self._voice_requests: list[dict[str, Any]] = []
        self._voice_queue: deque[VoiceBehaviour] = deque()
        self._moderation_requests: list[dict[str, Any]] = []
        self._moderation_rules: dict[str, dict[str, float]] = {}
        self._moderation_errors: deque[Error] = deque()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/models", self._list_models, methods=["GET"]),
                Route("/v1/audio/speech", self._speech, methods=["POST"]),
                Route("/v1/realtime/client_secrets", self._client_secrets, methods=["POST"]),
                Route("/v1/moderations", self._moderations, methods=["POST"]),
            ]
        )
        self._local = LocalASGIServer(self.app, name="fake-openai-server", startup_timeout=startup_timeout)

    def start(self) -> Self:
        """Start serving in a background thread; returns once connectable."""
        self._local.start()
        return self

    def stop(self) -> None:
        """Shut the server down and join its thread. Idempotent."""
        self._local.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._local.running

    @property
    def port(self) -> int:
        return self._local.port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` -- pass to ``ChatOpenAI(base_url=...)``."""
        return f"http://{_HOST}:{self.port}/v1"

    # -- scripting ----------------------------------------------------------

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Queue behaviours, consumed one per chat completion request (FIFO)."""
        with self._lock:
            self._queue.extend(behaviours)

    def set_default(self, behaviour: Behaviour) -> None:
        """Behaviour used when the queue is empty."""
        with self._lock:
            self._default = behaviour

    @property
    def pending(self) -> int:
        """Number of queued behaviours not consumed yet."""
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """JSON bodies received on ``/v1/chat/completions``, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> dict[str, Any]:
        with self._lock:
            if not self._requests:
                raise LookupError("no chat completion request received yet")
            return self._requests[-1]

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    def reset(self) -> None:
        """Forget requests, drop queued behaviours and restore ``Reply("ok")``."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()
            self._default = Reply("ok")
            self._voice_requests.clear()
            self._voice_queue.clear()
            self._moderation_requests.clear()
            self._moderation_rules.clear()
            self._moderation_errors.clear()

    # -- voice endpoints ------------------------------------------------------

    def enqueue_voice(self, *behaviours: VoiceBehaviour) -> None:
        """Queue behaviours for the speech and realtime client-secret endpoints (one per request, FIFO);
        with none queued, speech answers with audio derived from the request and client_secrets with a secret."""
        with self._lock:
            self._voice_queue.extend(behaviours)

    @property
    def voice_requests(self) -> list[dict[str, Any]]:
        """``{"path", "body", "authorization"}`` of each speech / client-secret request, oldest first."""
        with self._lock:
            return list(self._voice_requests)

    # -- moderation endpoint --------------------------------------------------

    def flag_moderation(self, substring: str, **scores: float) -> None:
        """``/v1/moderations`` scores inputs containing ``substring`` (case-insensitive) with these category
        scores, e.g. ``flag_moderation("water supply", violence=0.93)``; ``flagged`` is any score >= 0.5.
        Category names use underscores for the API's ``/`` and ``-`` (``self_harm`` -> ``self-harm``)."""
        with self._lock:
            self._moderation_rules[substring.lower()] = scores

    def fail_moderation(self, *errors: Error) -> None:
        """The next moderation requests fail with these errors (one per request)."""
        with self._lock:
            self._moderation_errors.extend(errors)

    @property
    def moderation_requests(self) -> list[dict[str, Any]]:
        """JSON bodies received on ``/v1/moderations``, oldest first (a copy)."""
        with self._lock:
            return list(self._moderation_requests)

    async def _moderations(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self._moderation_requests.append(body)
            error = self._moderation_errors.popleft() if self._moderation_errors else None
            rules = dict(self._moderation_rules)
        if error is not None:
            return _error_response(error)
        inputs = body.get("input")
        texts = inputs if isinstance(inputs, list) else [inputs]
        names = [
            "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
            "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
            "violence/graphic",
        ]  # fmt: skip
        results = []
        for text in texts:
            scores = dict.fromkeys(names, 0.0001)
            for needle, given in rules.items():
                if needle in str(text).lower():
                    for key, value in given.items():
                        scores[key.replace("self_harm", "self-harm").replace("__", "/")] = value
            results.append(
                {
                    "flagged": any(v >= 0.5 for v in scores.values()),
                    "categories": {k: v >= 0.5 for k, v in scores.items()},
                    "category_scores": scores,
                    "category_applied_input_types": {k: ["text"] for k in scores},
                }
            )
        return JSONResponse(
            {"id": _new_id("modr"), "model": body.get("model", "omni-moderation-latest"), "results": results}
        )

    # -- handlers -----------------------------------------------------------

    def _next_behaviour(self, body: dict[str, Any]) -> Behaviour:
        with self._lock:
            self._requests.append(body)
            return self._queue.popleft() if self._queue else self._default

    async def _chat_completions(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error_response(Error(400, "We could not parse the JSON body of your request."))
        if not isinstance(body, dict):
            return _error_response(Error(400, "Request body must be a JSON object."))
        return await self._respond(request, body, self._next_behaviour(body))

    async def _respond(self, request: Request, body: dict[str, Any], behaviour: Behaviour) -> Response:
        match behaviour:
            case Slow(seconds=seconds, then=then):
                if not await self._wait(request, seconds):
                    if await request.is_disconnected():
                        return Response(status_code=499)  # client went away
                    return _error_response(Error(503, "Fake OpenAI server stopping"))
                return await self._respond(request, body, then)
            case Error():
                return _error_response(behaviour)
            case Reply() | Structured() | ToolCall():
                writer = _ResponseWriter(body, _completion_for(behaviour, body))
                if body.get("stream"):
                    return StreamingResponse(
                        writer.sse(),
                        media_type="text/event-stream",
                        headers={"Cache-Control": "no-cache"},
                    )
                return JSONResponse(writer.full())
        raise TypeError(f"unknown behaviour: {behaviour!r}")

    async def _wait(self, request: Request, seconds: float) -> bool:
        """Sleep ``seconds``; False if the client disconnected or we are stopping."""
        deadline = asyncio.get_running_loop().time() + seconds
        while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.sleep(min(_POLL_INTERVAL, remaining))
            if self._local.stopping or await request.is_disconnected():
                return False
        return True

    async def _voice_request(self, request: Request) -> tuple[dict[str, Any] | None, VoiceBehaviour | None]:
        try:
            body = await request.json()
        except ValueError:
            return None, None
        with self._lock:
            self._voice_requests.append(
                {"path": request.url.path, "body": body, "authorization": request.headers.get("authorization")}
            )
            return body, self._voice_queue.popleft() if self._voice_queue else None

    async def _voice_respond(self, request: Request, behaviour: VoiceBehaviour, default: Response) -> Response:
        match behaviour:
            case Slow(seconds=seconds, then=then):
                if not await self._wait(request, seconds):
                    return Response(status_code=499)
                return await self._voice_respond(request, then, default)  # type: ignore[arg-type]
            case Error():
                return _error_response(behaviour)
            case Audio(data=data, content_type=content_type):
                return Response(data, media_type=content_type)
            case ClientSecret(value=value, expires_in=expires_in):
                body = json.loads(bytes(default.body))
                body.update(value=value, expires_at=int(time.time()) + expires_in)
                return JSONResponse(body)
        return default

    async def _speech(self, request: Request) -> Response:
        body, behaviour = await self._voice_request(request)
        if not isinstance(body, dict) or not body.get("input") or not body.get("voice") or not body.get("model"):
            return _error_response(Error(400, "input, voice and model are required"))
        fake = b"ID3FAKE|" + json.dumps([body["model"], body["voice"], body["input"]]).encode()
        default = Response(fake, media_type="audio/mpeg")
        return await self._voice_respond(request, behaviour, default) if behaviour else default

    async def _client_secrets(self, request: Request) -> Response:
        body, behaviour = await self._voice_request(request)
        session = body.get("session") if isinstance(body, dict) else None
        if not isinstance(session, dict) or session.get("type") != "realtime":
            return _error_response(Error(400, "session.type must be realtime"))
        ttl = int(((body or {}).get("expires_after") or {}).get("seconds") or 600)
        created = {
            "value": f"ek_{uuid.uuid4().hex}",
            "expires_at": int(time.time()) + ttl,
            "session": {**session, "id": _new_id("sess_"), "object": "realtime.session"},
        }
        default = JSONResponse(created)
        return await self._voice_respond(request, behaviour, default) if behaviour else default

    async def _list_models(self, request: Request) -> Response:
        model = {
            "id": DEFAULT_MODEL,
            "object": "model",
            "created": 0,
            "owned_by": "teamgraph-tests",
        }
        return JSONResponse({"object": "list", "data": [model]})


def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    """Generator for pytest fixtures: ``yield from fake_openai_server()``."""
    with FakeOpenAIServer() as server:
        yield server
