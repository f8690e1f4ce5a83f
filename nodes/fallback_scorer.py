"""fallback_scorer: deterministic rubric scoring for when the evaluator's model fails, times out or is offline."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig

from nodes.configuration import Configuration
from nodes.evaluation_format import evaluation_message, latest_answer, with_delivery
from nodes.text_features import content_words, words
from personas.schema import RubricCriterion

if TYPE_CHECKING:
    from graphs.interview import InterviewState

NODE = "fallback_scorer"

_STAR_CUES = {
    "situation": (
        "when i",
        "at my",
        "in my previous",
        "in my last",
        "situation",
        "context",
        "we had",
        "our team",
        "there was",
    ),
    "task": (
        "my task",
        "i was responsible",
        "responsible for",
        "the goal",
        "needed to",
        "had to",
        "my role",
        "challenge",
    ),
    "action": (
        "i built",
        "i led",
        "i decided",
        "i implemented",
        "i designed",
        "i wrote",
        "i organized",
        "i analyzed",
        "i created",
        "i proposed",
        "i introduced",
        "i set up",
        "i worked",
        "i talked",
        "i used",
        "i started",
    ),
    "result": (
        "as a result",
        "resulted",
        "reduced",
        "increased",
        "improved",
        "saved",
        "achieved",
        "led to",
        "grew",
        "cut",
        "delivered",
        "launched",
        "outcome",
    ),
}
_NUMBER_RE = re.compile(
    r"\d+(?:[.,]\d+)?\s*(?:%|percent|x\b|k\b|ms\b|hours?|days?|weeks?|users?|customers?)?|[$€£]\s?\d+"
)
_RESULT_VERBS = ("reduced", "increased", "improved", "saved", "cut", "grew", "raised", "lowered", "doubled", "halved")


def _band(value: float, thresholds: tuple[float, float, float, float]) -> int:
    """1..5 by how many thresholds value reaches."""
    return 1 + sum(value >= t for t in thresholds)


def answer_features(question: str, answer: str, job_description: str) -> dict[str, float]:
    text = answer.lower()
    answer_words = words(answer)
    n = len(answer_words)
    key_terms = set(content_words(question)) | set(content_words(job_description)[:60])
    answer_terms = set(content_words(answer))
    overlap = len(key_terms & answer_terms)
    star = sum(any(cue in text for cue in cues) for cues in _STAR_CUES.values())
    numbers = len(_NUMBER_RE.findall(answer))
    capitalised = len(re.findall(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-zA-Z0-9]+", answer))
    sentences = max(1, len(re.findall(r"[.!?]+(?:\s|$)", answer)))
    return {
        "words": n,
        "overlap": overlap,
        "star": star,
        "numbers": numbers,
        "result_verbs": sum(v in text for v in _RESULT_VERBS),
        "specific_terms": capitalised + numbers + len(answer_terms & key_terms),
        "unique_ratio": len(set(answer_words)) / n if n else 0.0,
        "words_per_sentence": n / sentences,
    }


def _criterion_score(name: str, f: dict[str, float]) -> int:
    length = _band(f["words"], (15, 40, 80, 140))
    if name == "relevance":
        return min(_band(f["overlap"], (1, 2, 4, 7)), length + 1)
    if name == "structure":
        return min(1 + int(f["star"]) + (1 if f["words"] >= 60 else 0), 5)
    if name == "specificity":
        return min(_band(f["specific_terms"], (2, 4, 7, 11)), length + 1)
    if name == "impact":
        return min(_band(f["numbers"] * 2 + f["result_verbs"], (1, 2, 4, 6)), length + 1)
    if name == "communication":
        flow = 0 if f["words_per_sentence"] > 45 or f["unique_ratio"] < 0.35 else 1
        return max(1, min(length + flow, 5) - (1 if f["words"] > 400 else 0))
    # an unknown criterion gets the mean of the others
    known = ("relevance", "structure", "specificity", "impact", "communication")
    return round(sum(_criterion_score(k, f) for k in known) / len(known))


_STRENGTHS = {
    "relevance": "You stayed on the question and tied your answer to the role.",
    "structure": "Your answer had a clear structure (situation, action, result).",
    "specificity": "You gave concrete details rather than generalities.",
    "impact": "You showed measurable results of your own work.",
    "communication": "Your answer was well paced and easy to follow.",
}
_IMPROVEMENTS = {
    "relevance": "Answer the question more directly and connect it to the job's requirements.",
    "structure": "Use the STAR structure: situation, task, the actions you took, and the result.",
    "specificity": "Name the tools, people and numbers involved instead of speaking in general terms.",
    "impact": "Quantify the outcome (time saved, % improvement, users affected) and say what you did yourself.",
    "communication": "Aim for 1-2 minutes: short sentences, one idea at a time.",
}


def score_answer(
    question: dict[str, Any], answer: str, job_description: str, rubric: list[RubricCriterion], resume: str = ""
) -> dict[str, Any]:
    """Score `answer` on every rubric criterion (1-5) from its text alone; same input, same scores."""
    f = answer_features(question["text"], answer, job_description)
    scores = {c.name: _criterion_score(c.name, f) for c in rubric}
    total_weight = sum(c.weight for c in rubric)
    overall = round(sum(scores[c.name] * c.weight for c in rubric) / total_weight, 1)
    strengths = [_STRENGTHS.get(name, f"Good {name.replace('_', ' ')}.") for name, s in scores.items() if s >= 4]
    improvements = [
        _IMPROVEMENTS.get(name, f"Work on {name.replace('_', ' ')}.") for name, s in scores.items() if s <= 2
    ]
    if not strengths:
        best = max(scores, key=lambda k: scores[k])
        strengths = [f"Your {best.replace('_', ' ')} was the strongest part of this answer."]
    if not improvements:
        worst = min(scores, key=lambda k: scores[k])
        improvements = [_IMPROVEMENTS.get(worst, f"Keep building your {worst.replace('_', ' ')}.")]
    topic = question.get("skill") or "this"
    example = (
        f"Situation: In my last role we faced exactly this ({topic}). "
        f"Task: I was responsible for the plan and its delivery. "
        f"Action: I analysed the problem, proposed two options with their trade-offs, and implemented the better one "
        f"with the team, checking progress weekly. "
        f"Result: We cut the related issues by about 30% within two months, and the approach became our standard."
    )
    return {
        "scores": scores,
        "overall": overall,
        "strengths": strengths,
        "improvements": improvements,
        "example_answer": example,
    }


async def fallback_scorer(state: InterviewState, config: RunnableConfig) -> dict[str, Any]:
    """Score the current answer deterministically; the evaluation records scored_by: fallback and why."""
    conf = Configuration.from_runnable_config(config)
    index = state.get("current", 0)
    question = state["questions"][index]
    answer = latest_answer(state)
    evaluation = {
        "question_index": index,
        "question": question["text"],
        "answer": answer,
        **score_answer(question, answer, state.get("job_description", ""), list(conf.params.rubric)),
        "scored_by": "fallback",
        "fallback_reason": state.get("evaluator_error") or "no model configured",
    }
    evaluation = with_delivery(evaluation, state)
    return {
        "evaluations": [*state.get("evaluations", []), evaluation],
        "evaluator_error": None,
        "messages": [evaluation_message(evaluation, NODE)],
    }
