"""The `veneo_chat` team's state, version 2: the conversation, a rolling summary, the safety review decisions.

Version 2 (from 1): every review decision carries `layers`, the verdict of each safety layer that judged the turn
(see states/migrations.py for how a version-1 decision gets them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

VERSION = 2

Category = Literal[
    "ok", "prompt_injection", "system_prompt_extraction", "disallowed_topic", "pii", "harmful", "hate", "other"
]


class LayerRecord(BaseModel):
    """What one safety layer said about the user's message (`input`) or the reply (`reply`)."""

    model_config = ConfigDict(extra="allow")

    layer: str  # rules | classifier | embedding | moderation | llm
    stage: Literal["input", "reply"]
    verdict: str  # pass | block | rewrite | error
    category: str = "ok"
    score: float | None = None
    ms: float | None = None  # None: not measured (a decision migrated from version 1)
    detail: str | None = None


class ReviewDecision(BaseModel):
    """The reviewer's decision on one turn."""

    model_config = ConfigDict(extra="allow")  # pii_redacted and future additions

    action: Literal["approve", "rewrite", "block"]
    category: Category
    reason: str
    reviewed_by: str
    layers: list[LayerRecord]
    subcategory: str | None = None
    turn: int | None = None


PRIVATE_CHANNELS = frozenset({"draft", "input_review"})  # one turn's: no stream, output or export shows them


class ChatSession(BaseModel):
    """Every channel of a chat session; `draft` and `input_review` are private to one turn (never shown)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    messages: list[Any] = []
    rolling_summary: str | None = None
    review_decisions: list[ReviewDecision] = []
    decisions_archived: int | None = None
    archived: int | None = None
    voice: dict[str, Any] | None = None
    draft: dict[str, Any] | None = None
    input_review: dict[str, Any] | None = None
