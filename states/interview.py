"""The `interview` team's state, version 2: documents, tailored questions, one evaluation per answer, a summary.

Version 2 (from 1): `answer_keys`, one per question, what a good answer contains (nodes/answer_keys.py), built from
the resume and the job; private to the scorer (never shown to the client). A version-1 session gets them built
from its questions and documents (states/migrations.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

VERSION = 2


class Question(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str
    type: str | None = None
    difficulty: str | None = None
    skill: str | None = None


class Evaluation(BaseModel):
    """One scored answer; `scored_by` is the model label, or `fallback` with its `fallback_reason`."""

    model_config = ConfigDict(extra="allow")  # delivery notes of spoken answers and the like

    question_index: int
    question: str
    answer: str
    scores: dict[str, int | float]
    overall: int | float
    strengths: list[str] = []
    improvements: list[str] = []
    example_answer: str | None = None
    scored_by: str
    fallback_reason: str | None = None


PRIVATE_CHANNELS = frozenset({"answer_keys"})  # the scorer's: no stream, output or export shows them


class InterviewSession(BaseModel):
    """Every channel of an interview session (all optional: a new session has none yet)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    messages: list[Any] = []
    resume: str | None = None
    job_description: str | None = None
    role: str | None = None
    questions: list[Question] = []
    questions_by: str | None = None
    current: int | None = None
    evaluations: list[Evaluation] = []
    summary: dict[str, Any] | None = None
    phase: Literal["setup", "asking", "done"] | None = None
    evaluator_error: str | None = None
    archived: int | None = None
    voice: dict[str, Any] | None = None
    answer_keys: list[dict[str, Any]] = []  # private: read by the scorer only
