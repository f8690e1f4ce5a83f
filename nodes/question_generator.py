"""question_generator: tailored questions from the resume and job description (model, else templates)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field

from nodes.configuration import Configuration
from nodes.model_calls import ask_structured, describe_failure, persona_messages
from nodes.text_features import find_skills, responsibilities

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
    return "the role"


_TEMPLATES: dict[str, list[tuple[str, str, str]]] = {
    # (template using {topic} and {role}, difficulty, what {topic} is: "task" or "skill")
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
    "situational": [
        (
            "Imagine you join us as {role} and are asked to {topic}. How would you approach your first two weeks?",
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
    skills = skills or ["your main area of expertise"]
    used_skills = used_tasks = 0
    questions = []
    for i in range(count):
        qtype = mix[i % len(mix)]
        variants = _TEMPLATES[qtype]
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
            {"text": template.format(topic=topic, role=role), "type": qtype, "difficulty": difficulty, "skill": topic}
        )
    return questions


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
        questions = generate_template_questions(
            resume, job_description, role, params.num_questions, list(params.question_mix)
        )
    intro = AIMessage(
        f"Let's practise for {role}. I'll ask {len(questions)} questions one at a time; answer each as you would in "
        "the interview." + (f" ({note})" if note else ""),
        name=NODE,
        response_metadata={"kind": "intro", "produced_by": produced_by},
    )
    return {
        "resume": resume,
        "job_description": job_description,
        "role": role,
        "questions": questions,
        "questions_by": produced_by,
        "current": 0,
        "evaluations": [],
        "phase": "asking",
        "messages": [intro, question_message(questions, 0)],
    }
