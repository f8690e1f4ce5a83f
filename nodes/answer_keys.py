"""Answer keys: what a good answer to each interview question contains, built server-side from the resume and the job.

The question generator stores one key per question in the interview's private `answer_keys` channel (never shown
to the client: not streamed, not in the invoke output, not in GET /sessions or an export); the fallback scorer
reads the current question's key as its `reference` and the example answer starts from it. A key is built the
same way for offline and model-written questions, and for sessions stored before keys existed (states/migrations).

A key holds the resume line the question is about (an offline question names the achievement verbatim; for any
other question, the resume line closest to it), the job's task and skill it connects to, and `reference`: those
points as one text, which the scorer compares with the answer by meaning and by the terms beyond the question's.
"""

from __future__ import annotations

import re
from typing import Any

from nodes.text_features import find_skills, numbers, relevance, responsibilities

# a resume line or job task counts as what a question is about from this relevance (nodes.text_features.relevance)
MIN_RELEVANCE = 0.2


def resume_lines(resume: str) -> list[str]:
    """The resume's sentences, bullets and clauses with at least four words (name lines and headers are shorter)."""
    parts = re.split(r"[\n;]|(?<=[a-z0-9%)])\.\s+|:\s+", resume or "")
    out = []
    for part in parts:
        part = part.strip(" -*\u2022\t.")
        if len(part.split()) >= 4 and part not in out:
            out.append(part)
    return out


def _best(text: str, options: list[str], floor: float = MIN_RELEVANCE) -> str | None:
    scored = [(relevance(o, text) + 0.05 * min(2, len(numbers(o))), -i, o) for i, o in enumerate(options)]
    scored = [s for s in scored if s[0] >= floor]
    return max(scored)[2] if scored else None


def answer_key(question: dict[str, Any], resume: str, job_description: str) -> dict[str, Any]:
    """The key of one question: {question, reference, resume_line, task, skill}; empty strings where nothing fits."""
    from nodes.question_generator import resume_achievements

    text = str(question.get("text") or "")
    skill = str(question.get("skill") or "")
    asked = f"{text} {skill}"
    # an offline question names the achievement it asks about word for word
    named = [a.text for a in resume_achievements(resume) if a.text.lower() in text.lower()]
    line = max(named, key=len) if named else _best(asked, resume_lines(resume))
    tasks = responsibilities(job_description)
    # a task the question names, else (a question not about a named achievement) the one closest to what it asks
    # about; a looser match pairs unrelated work
    said = [t for t in tasks if t.lower() in text.lower()]
    if said:
        task = max(said, key=len)
    elif named:  # the generator paired this achievement with no task of the job: none is guessed here either
        task = ""
    else:
        task = _best(f"{asked} {line or ''}", tasks, 2 * MIN_RELEVANCE) or ""
    skills = [s for s in find_skills(f"{asked} {line or ''}") if s.lower() in (job_description or "").lower()]
    key_skill = skills[0] if skills else (skill if skill and len(skill.split()) <= 3 else "")
    points = [p for p in (line, task, key_skill) if p]
    reference = "; ".join(points)
    return {"question": text, "reference": reference, "resume_line": line or "", "task": task, "skill": key_skill}


def answer_keys(questions: list[dict[str, Any]], resume: str, job_description: str) -> list[dict[str, Any]]:
    """One key per question, in order."""
    return [answer_key(q, resume, job_description) for q in questions]


def key_for(state: Any, index: int) -> dict[str, Any]:
    """The stored key of question `index`; built now from the documents when the session has none for it (stored
    before keys existed, or keys of another question list)."""
    question = state["questions"][index]
    keys = state.get("answer_keys") or []
    key = keys[index] if index < len(keys) else None
    if isinstance(key, dict) and key.get("question") == question.get("text"):
        return key
    return answer_key(question, state.get("resume") or "", state.get("job_description") or "")
