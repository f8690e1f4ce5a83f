"""How an evaluation is shown to the candidate, shared by the evaluator and the fallback scorer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, HumanMessage

if TYPE_CHECKING:
    from graphs.interview import InterviewState


def latest_answer(state: InterviewState) -> str:
    """The candidate's latest message: the answer to the current question."""
    for message in reversed(state.get("messages", [])):
        if isinstance(message, HumanMessage):
            return str(message.content).strip()
    return ""


def evaluation_message(evaluation: dict[str, Any], node: str) -> AIMessage:
    scores = ", ".join(f"{k} {v}/5" for k, v in evaluation["scores"].items())
    lines = [
        f"Score: {evaluation['overall']}/5 ({scores}) - scored by {evaluation['scored_by']}"
        + (f" ({evaluation['fallback_reason']})" if evaluation.get("fallback_reason") else ""),
        "Strengths: " + " ".join(evaluation["strengths"]),
        "To improve: " + " ".join(evaluation["improvements"]),
        "Example answer: " + evaluation["example_answer"],
    ]
    return AIMessage(
        "\n".join(lines),
        name=node,
        response_metadata={
            "kind": "evaluation",
            "question_index": evaluation["question_index"],
            "produced_by": evaluation["scored_by"],
        },
    )
