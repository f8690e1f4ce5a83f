"""The fake OpenAI server behaves like the real API as far as ChatOpenAI can tell."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.fakes import (
    Error,
    FakeOpenAIServer,
    Reply,
    Slow,
    Structured,
    ToolCall,
    fake_openai_server,
)


class Verdict(BaseModel):
    """A reviewer's verdict."""

    approved: bool
    reason: str
    score: int


VERDICT: dict[str, Any] = {"approved": True, "reason": "looks good", "score": 7}


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeOpenAIServer]:
    yield from fake_openai_server()


@pytest.fixture
def server(openai_server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    openai_server.reset()
    yield openai_server
    openai_server.reset()


def make_llm(server: FakeOpenAIServer, **kwargs: Any) -> ChatOpenAI:
    params: dict[str, Any] = {
        "base_url": server.base_url,
        "api_key": "test-key",
        "model": "gpt-test",
        "max_retries": 0,
        "timeout": 5.0,
    }
    params.update(kwargs)
    return ChatOpenAI(**params)


def test_lifecycle_binds_localhost_and_stops_cleanly() -> None:
    fake = FakeOpenAIServer()
    with fake:
        assert fake.running
        assert fake.base_url == f"http://127.0.0.1:{fake.port}/v1"
        with urllib.request.urlopen(f"{fake.base_url}/models", timeout=5) as resp:
            models = json.load(resp)
        assert models["object"] == "list"
        assert len(models["data"]) == 1
    assert not fake.running
    fake.stop()  # idempotent


def test_invoke_returns_content_and_records_request(server: FakeOpenAIServer) -> None:
    server.enqueue(Reply("Hello from the fake."))
    llm = make_llm(server, temperature=0.2, max_tokens=64)

    message = llm.invoke("Say hello")

    assert message.content == "Hello from the fake."
    assert message.response_metadata["model_name"] == "gpt-test"
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] > 0

    (body,) = server.requests
    assert body["model"] == "gpt-test"
    assert body["temperature"] == 0.2
    # langchain-openai 1.x renames max_tokens -> max_completion_tokens.
    assert body["max_completion_tokens"] == 64
    assert "max_tokens" not in body
    assert body["stream"] is False
    assert body["messages"] == [{"role": "user", "content": "Say hello"}]


def test_queue_is_fifo_then_default(server: FakeOpenAIServer) -> None:
    server.enqueue(Reply("first"), Reply("second"))
    llm = make_llm(server)

    assert [llm.invoke("x").content for _ in range(3)] == ["first", "second", "ok"]
    server.set_default(Reply("fallback"))
    assert llm.invoke("x").content == "fallback"
    assert server.pending == 0
    assert len(server.requests) == 4
    server.clear()
    assert server.requests == []


def test_stream_yields_word_chunks_and_usage(server: FakeOpenAIServer) -> None:
    content = "The quick  brown fox\njumps over the lazy dog."
    server.enqueue(Reply(content))
    llm = make_llm(server)

    chunks = list(llm.stream("go", stream_usage=True))

    assert len([c for c in chunks if c.content]) >= 5
    assert "".join(str(c.content) for c in chunks) == content
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert isinstance(merged, AIMessageChunk)
    assert merged.response_metadata["finish_reason"] == "stop"
    assert merged.usage_metadata is not None
    assert merged.usage_metadata["total_tokens"] > 0
    body = server.last_request
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.asyncio
async def test_astream_and_ainvoke(server: FakeOpenAIServer) -> None:
    server.enqueue(Reply("async reply here"), Reply("plain"))
    llm = make_llm(server)

    pieces = [str(chunk.content) async for chunk in llm.astream("go")]
    assert "".join(pieces) == "async reply here"
    assert (await llm.ainvoke("again")).content == "plain"


def test_streamed_tool_call(server: FakeOpenAIServer) -> None:
    args = {"city": "Paris", "unit": "celsius", "days": 3}
    server.enqueue(ToolCall("get_weather", args, id="call_123"))

    def get_weather(city: str, unit: str, days: int) -> str:
        """Weather forecast for a city."""
        return "sunny"

    llm = make_llm(server).bind_tools([get_weather])
    merged: AIMessageChunk | None = None
    for chunk in llm.stream("weather?"):
        assert isinstance(chunk, AIMessageChunk)
        merged = chunk if merged is None else merged + chunk

    assert merged is not None
    assert merged.tool_calls == [{"name": "get_weather", "args": args, "id": "call_123", "type": "tool_call"}]
    assert merged.response_metadata["finish_reason"] == "tool_calls"
    assert server.last_request["tools"][0]["function"]["name"] == "get_weather"


def test_structured_output_json_schema(server: FakeOpenAIServer) -> None:
    server.enqueue(Structured(VERDICT))
    llm = make_llm(server).with_structured_output(Verdict, method="json_schema")

    result = llm.invoke("review this")

    assert result == Verdict.model_validate(VERDICT)
    response_format = server.last_request["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Verdict"
    assert "tools" not in server.last_request


def test_structured_output_function_calling(server: FakeOpenAIServer) -> None:
    server.enqueue(Structured(VERDICT))
    llm = make_llm(server).with_structured_output(Verdict, method="function_calling")

    result = llm.invoke("review this")

    assert result == Verdict.model_validate(VERDICT)
    body = server.last_request
    assert body["tool_choice"] == {"type": "function", "function": {"name": "Verdict"}}
    assert "response_format" not in body


def test_structured_output_json_mode(server: FakeOpenAIServer) -> None:
    server.enqueue(Structured(VERDICT))
    llm = make_llm(server).with_structured_output(Verdict, method="json_mode")

    assert llm.invoke("review this as JSON") == Verdict.model_validate(VERDICT)
    assert server.last_request["response_format"] == {"type": "json_object"}


def test_server_error_raises_internal_server_error(server: FakeOpenAIServer) -> None:
    server.enqueue(Error(500, "boom"))

    with pytest.raises(openai.InternalServerError) as exc_info:
        make_llm(server).invoke("x")

    assert exc_info.value.status_code == 500
    assert exc_info.value.body == {
        "message": "boom",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_rate_limit_raises_rate_limit_error(server: FakeOpenAIServer) -> None:
    server.enqueue(Error(429, "slow down", retry_after=2))

    with pytest.raises(openai.RateLimitError) as exc_info:
        make_llm(server).invoke("x")

    assert exc_info.value.response.headers["retry-after"] == "2"
    assert exc_info.value.code == "rate_limit_exceeded"
    assert "slow down" in str(exc_info.value)


def test_streaming_request_error_raises_before_stream(server: FakeOpenAIServer) -> None:
    server.enqueue(Error(503, "overloaded"))

    with pytest.raises(openai.InternalServerError):
        list(make_llm(server).stream("x"))


@pytest.mark.serial  # a bound of 0.4 s on two requests
def test_sdk_retry_honours_retry_after(server: FakeOpenAIServer) -> None:
    # Without Retry-After the SDK would back off ~0.5s; 0.05s proves it is honoured.
    server.enqueue(Error(429, retry_after=0.05), Reply("second time lucky"))
    llm = make_llm(server, max_retries=1)

    started = time.monotonic()
    assert llm.invoke("x").content == "second time lucky"
    assert time.monotonic() - started < 0.4
    assert len(server.requests) == 2


def test_slow_reply_within_timeout_succeeds(server: FakeOpenAIServer) -> None:
    server.enqueue(Slow(0.1, Reply("eventually")))

    assert make_llm(server, timeout=5.0).invoke("x").content == "eventually"


def test_slow_reply_beyond_timeout_raises_timeout(server: FakeOpenAIServer) -> None:
    server.enqueue(Slow(30, Reply("too late")), Reply("next"))
    llm = make_llm(server, timeout=0.3)

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        llm.invoke("x")
    assert time.monotonic() - started < 5

    # The abandoned request does not wedge the server.
    assert make_llm(server).invoke("y").content == "next"
