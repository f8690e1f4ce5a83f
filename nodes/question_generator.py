"""question_generator: tailored questions from the resume and job description (model, else templates)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field

from nodes.answer_keys import answer_keys
from nodes.configuration import Configuration
from nodes.model_calls import ask_structured, describe_failure, persona_messages
from nodes.text_features import content_words, find_skills, relevance, responsibilities

if TYPE_CHECKING:
    from graphs.interview import InterviewState

NODE = "question_generator"
QuestionType = Literal["behavioral", "technical", "situational"]


class Question(BaseModel):
    text: str = Field(min_length=10, description="The question as asked to the candidate.")
    type: QuestionType
    difficulty: Literal["easy", "medium", "hard"]
    skill: str = Field(description="The skill or responsibility this question probes.")


class QuestionSet(BaseModel):
    questions: list[Question] = Field(min_length=1)


def first_user_text(state: InterviewState) -> str:
    for message in state.get("messages", []):
        if isinstance(message, HumanMessage) and str(message.content).strip():
            return str(message.content).strip()
    return ""


def infer_role(state: InterviewState) -> str:
    """The role given with the first turn, else the job description's first short line."""
    if state.get("role"):
        return state["role"].strip()
    for line in (state.get("job_description") or "").splitlines():
        line = line.strip(" #*\t")
        if 0 < len(line) <= 80:
            return line
    return UNKNOWN_ROLE


UNKNOWN_ROLE = "the role"  # stored as the session's role when neither the caller nor the job description names one


def role_known(role: str) -> bool:
    return bool(role.strip()) and role.strip() != UNKNOWN_ROLE


def _as_role(role: str) -> str:
    """The words ' as <role>' for a question, or nothing when no role is known ("join us as the role" read badly)."""
    return f" as {role.strip()}" if role_known(role) else ""


_TEMPLATES: dict[str, list[tuple[str, str, str]]] = {
    # (template using {topic} and {as_role} (" as <role>", or nothing), difficulty, what {topic} is: "task" or "skill")
    "behavioral": [
        (
            "Tell me about a time you had to {topic}. "
            "What was the situation, what did you do, and what was the result?",
            "medium",
            "task",
        ),
        (
            "Describe a project where {topic} was central to your work. What was your role and what did you achieve?",
            "medium",
            "skill",
        ),
        (
            "Tell me about a time something went wrong while you were working with {topic}. How did you handle it?",
            "hard",
            "skill",
        ),
    ],
    "technical": [
        (
            "How have you used {topic} in a real project, and what trade-offs did you weigh along the way?",
            "medium",
            "skill",
        ),
        (
            "Walk me through how you would diagnose a performance problem in a system that relies on {topic}.",
            "hard",
            "skill",
        ),
        ("What would you check first when reviewing someone else's work in {topic}, and why?", "easy", "skill"),
    ],
    "technical_task": [
        (
            "Walk me through how you would {topic} here: the steps, the tools or methods you would use, "
            "and what you would check first.",
            "medium",
            "task",
        ),
        (
            "What can go wrong when you {topic}, and how would you notice it early?",
            "hard",
            "task",
        ),
        ("What does doing '{topic}' well look like to you, and how would you measure it?", "easy", "task"),
    ],
    "situational": [
        (
            "Imagine you join us{as_role} and are asked to {topic}. How would you approach your first two weeks?",
            "medium",
            "task",
        ),
        (
            "Suppose a deadline is at risk because of a problem with {topic}. "
            "What would you do, and who would you involve?",
            "medium",
            "skill",
        ),
        ("If a stakeholder disagreed with your approach to {topic}, how would you resolve it?", "hard", "skill"),
    ],
}


_PAST_TASK_TEMPLATE = (
    "Walk me through the time you {topic}. What was the situation, what did you do, and what was the result?"
)
_ACTION_VERBS = (
    "built rebuilt designed led launched moved cut reduced grew increased improved introduced wrote managed ran "
    "added created migrated shipped owned found mentored automated scaled delivered implemented developed set "
    "started organised organized trained negotiated analysed analyzed redesigned replaced raised saved lowered"
).split()
_EMPLOYER_LINE = re.compile(r"[,@]\s*([A-Z][\w&.'-]*(?: [A-Z][\w&.'-]*){0,2})\s*\(\d{4}")
_EMPLOYER_AT = re.compile(r"\bat ([A-Z][\w&.'-]*(?: [A-Z][\w&.'-]*){0,2})")
_DIFFICULTIES = {"behavioral": ("medium", "hard", "medium"), "technical": ("medium", "hard", "easy"),
                 "situational": ("medium", "hard", "hard")}  # fmt: skip


@dataclass(frozen=True)
class Achievement:
    """One thing the candidate did, as the resume says it ("cut p95 latency from 900 ms to 250 ms"), and where."""

    text: str
    employer: str | None


def resume_achievements(resume: str) -> list[Achievement]:
    """Bullets and clauses of the resume that start with an action verb, with the employer they belong to."""
    out: list[Achievement] = []
    employer: str | None = None
    for line in (resume or "").splitlines():
        header = _EMPLOYER_LINE.search(line) or _EMPLOYER_AT.search(line)
        if header:
            employer = header.group(1).strip()
        for clause in re.split(r"[;:]|(?<=[a-z0-9%)])\.\s+|^\s*[-*\u2022]\s*", line):
            clause = clause.strip(" .-*\t")
            first = clause.split(" ", 1)[0].lower() if clause else ""
            if first in _ACTION_VERBS and len(clause.split()) >= 3:
                out.append(Achievement(clause[0].lower() + clause[1:], employer))
    return out


def _similar(a: str, b: str) -> float:
    wa, wb = set(content_words(a)), set(content_words(b))
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


def _best_match(text: str, options: list[str], used: set[str], floor: float = 0.15) -> str | None:
    """The option closest in meaning to `text` (at least `floor`), preferring ones not asked about yet."""
    scored = [(o in used, -relevance(o, text), options.index(o), o) for o in options]
    scored = [x for x in scored if -x[1] >= floor]
    return min(scored)[3] if scored else None


def _resume_question(
    qtype: str,
    difficulty: str,
    achievement: Achievement,
    role: str,
    jd_tasks: list[str],
    skills: list[str],
    used_tasks: set[str],
    used_skills: set[str],
    job_description: str = "",
) -> tuple[dict[str, Any], str | None, str | None]:
    """One question of this type about this achievement; also the job task and skill it used."""
    where = f"At {achievement.employer}" if achievement.employer else "On your resume"
    task = _best_match(achievement.text, jd_tasks, used_tasks)
    skill = next((s for s in skills if s.lower() in achievement.text.lower() and s not in used_skills), None)
    unused = [s for s in skills if s not in used_skills]
    # a skill already asked about is not asked again: two questions on one skill read as the same question
    skill = skill or _best_match(achievement.text, unused, set()) or (unused[0] if unused else None)
    if qtype == "technical" and not skill:
        follow = f" How would the same choices hold up if you had to {task} here?" if task else ""
        text = (
            f"{where} you {achievement.text}. Which technical choices did you make there, which alternatives did "
            f"you reject, and why?{follow}"
        )
        return {"text": text, "type": qtype, "difficulty": difficulty, "skill": achievement.text}, task, None
    if qtype == "behavioral":
        follow = f" What from it would carry over to {task} here?" if task else ""
        text = (
            f"{where} you {achievement.text}. Walk me through it: what was the situation, what did you do "
            f"yourself, and how did you measure the result?{follow}"
        )
        return {"text": text, "type": qtype, "difficulty": difficulty, "skill": achievement.text}, task, None
    if qtype == "technical" and skill:
        # only a task that names the skill: matching by the achievement paired skills with unrelated tasks
        skill_task = next((t for t in jd_tasks if skill.lower() in t.lower()), None)
        need = f" to {skill_task}" if skill_task else ""
        ask = (
            "What trade-offs would you weigh, and what would you check first?"
            if difficulty != "easy"
            else "Which parts would you check first in a review, and why?"
        )
        if skill.lower() in achievement.text.lower():
            relies = f" This role relies on {skill}{need}." if skill.lower() in job_description.lower() else ""
            text = (
                f"You used {skill} when you {achievement.text}.{relies} "
                f"How did you design that work, and how would it hold up here? {ask}"
            )
        else:
            lead = (
                f"This role asks you to {skill_task}."
                if skill_task and skill.lower() in skill_task.lower()
                else f"This role relies on {skill}{need}."
                if skill.lower() in job_description.lower()
                else f"Your resume lists {skill}."
            )
            text = f"{lead} How would you go about it, drawing on the time you {achievement.text}? {ask}"
        return {"text": text, "type": qtype, "difficulty": difficulty, "skill": skill}, None, skill
    asked = f" and are asked to {task}" if task else ""
    joining = f"join{_as_role(role)}" if role_known(role) else "start a new job"
    text = (
        f"Imagine you {joining}{asked}. How would you approach your first weeks, "
        f"and what from the time you {achievement.text} would you reuse, or do differently?"
    )
    return {"text": text, "type": qtype, "difficulty": difficulty, "skill": task or achievement.text}, task, None


def generate_resume_questions(
    resume: str, job_description: str, role: str, count: int, mix: list[str]
) -> list[dict[str, Any]] | None:
    """Questions that connect the candidate's own results to the job's tasks; None when the resume names no results.

    Slot i has the team's type mix[i % len(mix)]; each slot tries the candidate's achievements in turn and takes
    the first question that is not a near-duplicate of an earlier one, else a template question of that type.
    """
    achievements = resume_achievements(resume)
    if not achievements:
        return None
    jd_tasks = responsibilities(job_description)
    jd_skills = find_skills(job_description)
    shared = [s for s in jd_skills if s.lower() in {r.lower() for r in find_skills(resume)}]
    skills = shared + [s for s in jd_skills if s not in shared] or find_skills(resume)
    templates = generate_template_questions(resume, job_description, role, count + len(mix) * 3, mix)
    questions: list[dict[str, Any]] = []
    used_tasks: set[str] = set()
    used_skills: set[str] = set()
    used_achievements: list[Achievement] = []
    for i in range(count):
        qtype = mix[i % len(mix)]
        difficulty = _DIFFICULTIES[qtype][(i // len(mix)) % 3]
        chosen = None
        # achievements not asked about yet first: two questions about one achievement read as one question
        rotation = [achievements[(i + k) % len(achievements)] for k in range(len(achievements))]
        rotation = [a for a in rotation if a not in used_achievements]
        for achievement in rotation:
            question, task, skill = _resume_question(
                qtype, difficulty, achievement, role, jd_tasks, skills, used_tasks, used_skills, job_description
            )
            if all(_similar(question["text"], q["text"]) < 0.5 for q in questions):
                chosen = question
                used_achievements.append(achievement)
                used_tasks |= {task} if task else set()
                used_skills |= {skill} if skill else set()
                break
        if chosen is None:
            # a template question, on a skill or task no earlier question was about where there is one
            asked = {q["skill"].lower() for q in questions} | {s.lower() for s in used_skills | used_tasks}
            fitting = [
                t
                for t in templates
                if t["type"] == qtype and all(_similar(t["text"], q["text"]) < 0.5 for q in questions)
            ]
            chosen = next((t for t in fitting if t["skill"].lower() not in asked), None) or next(iter(fitting), None)
        if chosen is not None:
            questions.append(chosen)
    return questions


def generate_template_questions(
    resume: str, job_description: str, role: str, count: int, mix: list[str]
) -> list[dict[str, Any]]:
    """Deterministic questions: skills found in both documents first, then the JD's tasks, filled into templates."""
    jd_skills, resume_skills = find_skills(job_description), find_skills(resume)
    in_resume = {s.lower() for s in resume_skills}
    skills = [s for s in jd_skills if s.lower() in in_resume] + [s for s in jd_skills if s.lower() not in in_resume]
    skills += [s for s in resume_skills if s.lower() not in {k.lower() for k in skills}]
    jd_tasks = responsibilities(job_description)
    # resume bullets are past tense ("built ..."), JD bullets imperative ("design ..."): they need other wording
    tasks, past_tense = (jd_tasks, False) if jd_tasks else (responsibilities(resume), True)
    used_skills = used_tasks = 0
    questions = []
    no_skills = not skills
    for i in range(count):
        qtype = mix[i % len(mix)]
        variants = _TEMPLATES[qtype]
        if no_skills and qtype == "technical" and tasks and not past_tense:
            # no skill from the vocabulary in either document: ask about the job's own tasks instead
            variants = _TEMPLATES["technical_task"]
        elif not skills:
            skills = [_role_topic(role, job_description)]
        template, difficulty, kind = variants[(i // len(mix)) % len(variants)]
        if kind == "task" and tasks and past_tense:
            if qtype == "behavioral":
                template = _PAST_TASK_TEMPLATE
            else:
                template, difficulty, kind = variants[1]
        if kind == "task" and tasks:
            topic = tasks[used_tasks % len(tasks)]
            used_tasks += 1
        else:
            if kind == "task":
                template, difficulty, kind = variants[1]
            topic = skills[used_skills % len(skills)]
            used_skills += 1
        questions.append(
            {
                "text": template.format(topic=topic, as_role=_as_role(role)),
                "type": qtype,
                "difficulty": difficulty,
                "skill": topic,
            }
        )
    return questions


def _role_topic(role: str, job_description: str) -> str:
    """What to ask about when neither document names a skill: the work of the role itself."""
    role = role.strip()
    return f"the core work of the {role} role" if role_known(role) else "the core work of this role"


def offline_questions(resume: str, job_description: str, role: str, count: int, mix: list[str]) -> list[dict[str, Any]]:
    """The offline path: questions from the candidate's own results where the resume names some, else templates."""
    return generate_resume_questions(resume, job_description, role, count, mix) or generate_template_questions(
        resume, job_description, role, count, mix
    )


def question_message(questions: list[dict[str, Any]], index: int) -> AIMessage:
    q = questions[index]
    return AIMessage(
        f"Question {index + 1} of {len(questions)} ({q['type']}, {q['difficulty']}): {q['text']}",
        name=NODE,
        response_metadata={"kind": "question", "question_index": index},
    )


async def question_generator(state: InterviewState, config: RunnableConfig) -> dict[str, Any]:
    """Generate the questions and ask the first; asks for a resume when the first turn carries none."""
    conf = Configuration.from_runnable_config(config)
    resume = (state.get("resume") or "").strip() or first_user_text(state)
    if not resume:
        return {
            "messages": [
                AIMessage("Please send your resume (and the job description, if you have one) to start.", name=NODE)
            ],
            "phase": "setup",
        }
    job_description = (state.get("job_description") or "").strip()
    role = infer_role(state)
    params = conf.params
    model = conf.model(NODE)
    persona = conf.persona(NODE)
    questions: list[dict[str, Any]] | None = None
    produced_by = "template"
    note = None
    if model is not None:
        try:
            prompt = persona_messages(
                persona,
                role=role,
                num_questions=params.num_questions,
                question_mix=", ".join(params.question_mix),
                resume=resume,
                job_description=job_description or "(none given)",
            )
            result = await ask_structured(model, QuestionSet, prompt, persona, config)
            questions = [q.model_dump() for q in result.questions[: params.num_questions]]
            produced_by = conf.model_label(NODE)
        except Exception as exc:  # any model failure falls back to the deterministic generator
            note = f"model unavailable ({describe_failure(exc)}); questions from templates"
    if questions is None:
        questions = offline_questions(resume, job_description, role, params.num_questions, list(params.question_mix))
    practise = role if role_known(role) else "your interview"
    intro = AIMessage(
        f"Let's practise for {practise}. I'll ask {len(questions)} questions one at a time; answer each as you "
        "would in the interview." + (f" ({note})" if note else ""),
        name=NODE,
        response_metadata={"kind": "intro", "produced_by": produced_by},
    )
    return {
        "resume": resume,
        "job_description": job_description,
        "role": role,
        "questions": questions,
        # what a good answer to each contains, from these documents (private: read by the scorer only)
        "answer_keys": answer_keys(questions, resume, job_description),
        "questions_by": produced_by,
        "current": 0,
        "evaluations": [],
        "phase": "asking",
        "messages": [intro, question_message(questions, 0)],
    }
