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


# a comfortable interview pace, in words per minute; filler words from this many on get a tip
PACE_WPM = (110, 170)
FILLERS_TIP_FROM = 3


def answer_delivery(state: InterviewState) -> dict[str, Any] | None:
    """How the latest answer was spoken (duration, pace, filler words), as the voice service measured it and
    attached to the message; None for a typed answer."""
    for message in reversed(state.get("messages", [])):
        if isinstance(message, HumanMessage):
            voice = message.additional_kwargs.get("voice")
            if not isinstance(voice, dict):
                return None
            return {k: voice.get(k) for k in ("duration_s", "words", "wpm", "fillers", "filler_words")}
    return None


def delivery_feedback(delivery: dict[str, Any]) -> tuple[str, list[str]]:
    """One line on pace and filler words, and tips for what to change (none when it went well)."""
    parts, tips = [], []
    wpm, fillers = delivery.get("wpm"), int(delivery.get("fillers") or 0)
    if wpm:
        low, high = PACE_WPM
        pace = "a comfortable pace" if low <= wpm <= high else ("on the slow side" if wpm < low else "fast")
        parts.append(f"{round(wpm)} words per minute ({pace})")
        if wpm > high:
            tips.append(f"Slow down a little: aim for {low}-{high} words per minute and pause between points.")
        elif wpm < low:
            tips.append(f"Keep a steadier pace (about {low}-{high} words per minute); plan your points first.")
    counts = delivery.get("filler_words") or {}
    which = ", ".join(f"{w} x{n}" for w, n in counts.items()) if counts else ""
    parts.append(f"{fillers} filler word{'s' if fillers != 1 else ''}" + (f" ({which})" if which else ""))
    if fillers >= FILLERS_TIP_FROM:
        tips.append("Replace filler words (um, uh, you know) with a short silent pause.")
    return "Delivery: " + ", ".join(parts) + ".", tips


def with_delivery(evaluation: dict[str, Any], state: InterviewState) -> dict[str, Any]:
    """A spoken answer's evaluation also reports pace and filler words (scores stay those of the words)."""
    delivery = answer_delivery(state)
    if delivery is None:
        return evaluation
    line, tips = delivery_feedback(delivery)
    return {
        **evaluation,
        "delivery": {**delivery, "feedback": line},
        "improvements": [*evaluation["improvements"], *tips],
    }


def evaluation_message(evaluation: dict[str, Any], node: str) -> AIMessage:
    scores = ", ".join(f"{k} {v}/5" for k, v in evaluation["scores"].items())
    lines = [
        f"Score: {evaluation['overall']}/5 ({scores}) - scored by {evaluation['scored_by']}"
        + (f" ({evaluation['fallback_reason']})" if evaluation.get("fallback_reason") else ""),
        "Strengths: " + " ".join(evaluation["strengths"]),
        "To improve: " + " ".join(evaluation["improvements"]),
        "Example answer: " + evaluation["example_answer"],
    ]
    if evaluation.get("delivery"):
        lines.insert(3, evaluation["delivery"]["feedback"])
    return AIMessage(
        "\n".join(lines),
        name=node,
        response_metadata={
            "kind": "evaluation",
            "question_index": evaluation["question_index"],
            "produced_by": evaluation["scored_by"],
        },
    )
