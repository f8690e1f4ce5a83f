"""evaluator: scores the current answer on the team's rubric with the persona's model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field

from nodes.configuration import Configuration
from nodes.evaluation_format import evaluation_message, latest_answer, with_delivery
from nodes.model_calls import ask_structured, describe_failure, persona_messages

if TYPE_CHECKING:
    from graphs.interview import InterviewState

NODE = "evaluator"


class CriterionScore(BaseModel):
    criterion: str
    score: int = Field(ge=1, le=5)


class EvaluationOutput(BaseModel):
    scores: list[CriterionScore]
    overall: float = Field(ge=1, le=5)
    strengths: list[str] = Field(min_length=1)
    improvements: list[str] = Field(min_length=1)
    example_answer: str = Field(min_length=20)


async def evaluator(state: InterviewState, config: RunnableConfig) -> dict[str, Any]:
    """Score with the model; on any failure (error, timeout, invalid output) record why for the fallback scorer."""
    conf = Configuration.from_runnable_config(config)
    model = conf.model(NODE)
    if model is None:
        return {"evaluator_error": "offline: no model configured"}
    persona = conf.persona(NODE)
    index = state.get("current", 0)
    question = state["questions"][index]
    answer = latest_answer(state)
    rubric = list(conf.params.rubric)
    prompt = persona_messages(
        persona,
        role=state.get("role", "the role"),
        rubric="\n".join(f"- {c.name}: {c.description}" for c in rubric),
        question=question["text"],
        question_type=question["type"],
        difficulty=question["difficulty"],
        job_description=(state.get("job_description") or "(none given)")[:2000],
        answer=answer,
    )
    try:
        result = await ask_structured(model, EvaluationOutput, prompt, persona, config)
        scores = {s.criterion: s.score for s in result.scores}
        missing = [c.name for c in rubric if c.name not in scores]
        if missing:
            raise ValueError(f"invalid output: no score for {', '.join(missing)}")
    except Exception as exc:  # every failure is scored by the fallback scorer instead
        return {"evaluator_error": describe_failure(exc)}
    evaluation = {
        "question_index": index,
        "question": question["text"],
        "answer": answer,
        "scores": {c.name: scores[c.name] for c in rubric},
        "overall": round(result.overall, 1),
        "strengths": result.strengths,
        "improvements": result.improvements,
        "example_answer": result.example_answer,
        "scored_by": conf.model_label(NODE),
        "fallback_reason": None,
    }
    evaluation = with_delivery(evaluation, state)
    return {
        "evaluations": [*state.get("evaluations", []), evaluation],
        "evaluator_error": None,
        "messages": [evaluation_message(evaluation, NODE)],
    }
