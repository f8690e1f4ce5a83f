"""Test doubles for external services."""

from .openai_server import (
    Behaviour,
    Error,
    FakeOpenAIServer,
    Reply,
    Slow,
    Structured,
    ToolCall,
    fake_openai_server,
)

__all__ = [
    "Behaviour",
    "Error",
    "FakeOpenAIServer",
    "Reply",
    "Slow",
    "Structured",
    "ToolCall",
    "fake_openai_server",
]
