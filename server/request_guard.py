"""Every request body is checked before a route sees it: a size limit (413), UTF-8 and JSON that a route can use
(422 naming the field), parsed in a worker thread so a large body never holds up other tenants' requests."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from server.errors import error_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_JSON_DEPTH = 64  # far beyond any request this API takes; deep nesting only ever costs stack and time
MULTIPART_OVERHEAD = 64 * 1024  # room for the form's other parts and boundaries around an upload
OFF_LOOP_BYTES = 32 * 1024  # bodies above this are parsed in a worker thread; smaller ones cost less than the hop
BODY_METHODS = {"POST", "PUT", "PATCH"}  # the only methods whose body a route reads; others are size-bounded only
PARSED_BODY = "json_body"  # key in the request state: the parsed JSON, for handlers that want it without re-parsing
FORM_PATH = re.compile(r"/sessions/[^/]+/documents/?$")  # the one route taking a form (a root_path may lead it)
HEADERS = "decoded_headers"  # key in the request state: the headers as {lower-case name: value}, decoded once


class BodyRejected(Exception):
    """A request body the server will not pass on: the status, code, message and field of the answer."""

    def __init__(self, status: int, code: str, message: str, field: str = "body"):
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field


def parse_json_body(raw: bytes) -> Any:
    """The body as JSON, refused (BodyRejected, 422) when it is not UTF-8, not JSON, nested deeper than
    MAX_JSON_DEPTH, or holds a NUL character or a lone surrogate in any string: no store takes those
    (PostgreSQL text refuses NUL, UTF-8 encoders refuse surrogates), so they would fail after a turn ran."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyRejected(
            422, "validation_error", f"body: not valid UTF-8 (byte {exc.start}); send UTF-8 JSON"
        ) from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise BodyRejected(422, "validation_error", f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise BodyRejected(422, "validation_error", f"body: not valid JSON ({exc.msg} at line {exc.lineno} column "
                                                    f"{exc.colno})") from None  # fmt: skip
    except ValueError:  # an integer past Python's limit on digits (sys.get_int_max_str_digits(), 4300)
        raise BodyRejected(
            422, "validation_error", f"body: a number with more than {sys.get_int_max_str_digits()} digits"
        ) from None
    check_json_text(value)
    return value


def check_json_text(value: Any) -> None:
    """Walk the parsed body without recursion: depth, and every string and key (BodyRejected naming its path)."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            field = path or "body"  # the message names the field too: an import prints it after the file's name
            raise BodyRejected(
                422, "validation_error", f"{field}: JSON nested deeper than {MAX_JSON_DEPTH} levels", field
            )
        if isinstance(node, str):
            _check_text(node, path or "body")
        elif isinstance(node, dict):
            for key, item in node.items():
                child = f"{path}.{key}" if path else str(key)
                _check_text(key, child)
                stack.append((item, child, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node))


def _check_text(text: str, field: str) -> None:
    if "\x00" in text:
        raise BodyRejected(422, "validation_error", f"{field}: contains a NUL character (\\u0000); remove it", field)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BodyRejected(
                422, "validation_error", f"{field}: contains a lone surrogate (e.g. \\ud800); send valid Unicode", field
            ) from None


class RequestGuard:
    """ASGI middleware: bounded bodies (Content-Length and the bytes actually streamed), and JSON checked once,
    off the event loop when large; the route then reads the same bytes."""

    def __init__(self, app: Any, max_body_bytes: int, max_upload_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_form_bytes = max_upload_bytes + MULTIPART_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = request_headers(scope)
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        # only the upload route takes a form; every other route's body is checked as JSON whatever its content type
        # says (LangServe reads a team route's body as JSON regardless: a form type must not skip the checks)
        form = content_type in ("multipart/form-data", "application/x-www-form-urlencoded") and bool(
            FORM_PATH.search(scope.get("path", ""))
        )
        limit = self.max_form_bytes if form else self.max_body_bytes
        try:
            _check_query(scope.get("query_string", b""))
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _too_large(limit, form)
            body = await _read_body(receive, limit, form)
            if body and not form and scope["method"] in BODY_METHODS:
                parsed = await asyncio.to_thread(parse_json_body, body) if len(body) > OFF_LOOP_BYTES else (
                    parse_json_body(body))  # fmt: skip
                scope.setdefault("state", {})[PARSED_BODY] = parsed
        except BodyRejected as exc:
            await _answer(send, exc)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, for streaming responses

        await self.app(scope, replay, send)


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers as {lower-case name: value}: decoded by the first middleware that asks and kept in
    the request state for the others (the observability middleware, outermost, decodes them for every request)."""
    state = scope.setdefault("state", {})
    headers: dict[str, str] | None = state.get(HEADERS)
    if headers is None:
        headers = state[HEADERS] = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
    return headers


def _check_query(raw: bytes) -> None:
    """A NUL in a query parameter (`?team=a%00b`) would reach the database like one in a body: refused too."""
    if b"%00" not in raw and b"\x00" not in raw:
        return
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if "\x00" in key or "\x00" in value:
            field = key.replace("\x00", "") or "query"
            raise BodyRejected(422, "validation_error", f"{field}: contains a NUL character (%00); remove it", field)


def _too_large(limit: int, form: bool) -> BodyRejected:
    setting = "TEAMGRAPH_MAX_UPLOAD_BYTES" if form else "TEAMGRAPH_MAX_BODY_BYTES"
    return BodyRejected(413, "payload_too_large", f"body: larger than the {limit} byte limit ({setting})")


async def _read_body(receive: Receive, limit: int, form: bool) -> bytes:
    """The whole body, counting what actually arrives: a chunked body has no Content-Length to trust."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, form)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _answer(send: Send, exc: BodyRejected) -> None:
    body = json.dumps(error_body(exc.code, str(exc), exc.field), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if exc.status == 413:
        headers.append((b"connection", b"close"))  # the rest of the body is not read
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
