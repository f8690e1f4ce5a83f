"""Small interview steps around the scoring: ask the next question, re-ask after a blank answer, closing remarks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig

from nodes.question_generator import question_message

if TYPE_CHECKING:
    from graphs.interview import InterviewState


async def ask_next_question(state: InterviewState, config: RunnableConfig) -> dict[str, Any]:
    """Move to the next question after an answer was scored."""
    index = state.get("current", 0) + 1
    return {"current": index, "messages": [question_message(state["questions"], index)]}


async def reask(state: InterviewState, config: RunnableConfig) -> dict[str, Any]:
    """A blank answer is not scored: ask the same question again."""
    index = state.get("current", 0)
    q = state["questions"][index]
    return {
        "messages": [
            AIMessage(
                f"I didn't get an answer there. Take your time - question {index + 1} again: {q['text']}",
                name="reask",
                response_metadata={"kind": "question", "question_index": index},
            )
        ]
    }
