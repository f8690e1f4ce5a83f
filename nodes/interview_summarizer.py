"""summarizer (interview): averages per criterion, strongest and weakest, next steps; the model adds a narrative."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig

from nodes.configuration import Configuration
from nodes.model_calls import ask_text, describe_failure, persona_messages

if TYPE_CHECKING:
    from graphs.interview import InterviewState

NODE = "summarizer"


def summarize_evaluations(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of the summary, computed the same way whatever scored the answers."""
    if not evaluations:
        return {"averages": {}, "overall": None, "strongest": None, "weakest": None, "next_steps": [], "answered": 0}
    criteria = list(evaluations[0]["scores"])
    averages = {c: round(sum(e["scores"][c] for e in evaluations) / len(evaluations), 2) for c in criteria}
    overall = round(sum(e["overall"] for e in evaluations) / len(evaluations), 2)
    ranked = sorted(criteria, key=lambda c: (averages[c], c))
    improvements = Counter(i for e in evaluations for i in e["improvements"])
    return {
        "averages": averages,
        "overall": overall,
        "strongest": ranked[-1],
        "weakest": ranked[0],
        "next_steps": [text for text, _ in improvements.most_common(3)],
        "answered": len(evaluations),
        "fallback_scored": sum(1 for e in evaluations if e["scored_by"] == "fallback"),
    }


def _plain_narrative(stats: dict[str, Any]) -> str:
    steps = " ".join(f"{i + 1}. {s}" for i, s in enumerate(stats["next_steps"]))
    return (
        f"You answered {stats['answered']} questions with an overall average of {stats['overall']}/5. "
        f"Your strongest area was {stats['strongest']} ({stats['averages'][stats['strongest']]}/5) and the one to "
        f"work on is {stats['weakest']} ({stats['averages'][stats['weakest']]}/5). Next steps: {steps}"
    )


async def interview_summarizer(state: InterviewState, config: RunnableConfig) -> dict[str, Any]:
    """Summarise the interview once all questions are answered (repeated on request afterwards)."""
    summary = state.get("summary")
    if summary:
        return {
            "messages": [
                AIMessage(
                    "The interview is complete. " + summary["narrative"],
                    name=NODE,
                    response_metadata={"kind": "summary", "produced_by": summary["written_by"]},
                )
            ]
        }
    conf = Configuration.from_runnable_config(config)
    stats = summarize_evaluations(state.get("evaluations", []))
    narrative, written_by = _plain_narrative(stats), "template"
    model = conf.model(NODE)
    if model is not None:
        persona = conf.persona(NODE)
        try:
            prompt = persona_messages(
                persona,
                role=state.get("role", "the role"),
                averages=stats["averages"],
                overall=stats["overall"],
                strongest=stats["strongest"],
                weakest=stats["weakest"],
                improvements="; ".join(stats["next_steps"]),
            )
            narrative = str((await ask_text(model, prompt, persona, config)).content).strip()
            written_by = conf.model_label(NODE)
        except Exception as exc:  # the numbers stand on their own; the narrative falls back to a template
            written_by = f"template ({describe_failure(exc)})"
    summary = {**stats, "narrative": narrative, "written_by": written_by}
    return {
        "summary": summary,
        "phase": "done",
        "messages": [
            AIMessage(
                "Interview complete. " + narrative,
                name=NODE,
                response_metadata={"kind": "summary", "produced_by": written_by},
            )
        ],
    }
