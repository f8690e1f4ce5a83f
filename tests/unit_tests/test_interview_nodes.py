"""Interview team nodes called directly: question generator, evaluator, fallback scorer, summarizer."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from nodes.evaluator import evaluator
from nodes.fallback_scorer import fallback_scorer
from nodes.interview_summarizer import interview_summarizer
from nodes.question_generator import question_generator
from personas.resolver import AgentTeamResolver
from tests.conftest import REPO, run_config
from tests.fakes.models import FailingChatModel, FakeAgentFactory, SlowChatModel, replies

RESUME = (REPO / "examples" / "resume.md").read_text(encoding="utf-8")
JOB_DESCRIPTION = (REPO / "examples" / "job_description.md").read_text(encoding="utf-8")
MODEL_LABEL = "fake:gpt-4o-mini"  # what FakeAgentFactory reports for the bundled personas' model
RUBRIC = ["relevance", "structure", "specificity", "impact", "communication"]

QUESTION = {
    "text": "Tell me about a time you had to design and operate streaming pipelines on Kafka and AWS. "
    "What was the situation, what did you do, and what was the result?",
    "type": "behavioral",
    "difficulty": "medium",
    "skill": "design and operate streaming pipelines on Kafka and AWS",
}
STRONG_ANSWER = (
    "In my last role at Acme Logistics our team had to replace a nightly batch import with streaming pipelines. "
    "My task was to design the Kafka topology on AWS and own the rollout. I designed the partitioning scheme, "
    "I built the consumers in Python, and I set up Prometheus alerts for consumer lag. As a result we processed "
    "40 million events a day, reduced end-to-end latency from 6 hours to 2 minutes, and cut failed runs by 70% "
    "within 3 months."
)
VAGUE_ANSWER = "I did some streaming stuff, it went fine."


def model_evaluation(**overrides: Any) -> dict[str, Any]:
    """A well-formed evaluator reply (as the model would send it)."""
    reply: dict[str, Any] = {
        "scores": [
            {"criterion": "relevance", "score": 4},
            {"criterion": "structure", "score": 5},
            {"criterion": "specificity", "score": 3},
            {"criterion": "impact", "score": 2},
            {"criterion": "communication", "score": 4},
        ],
        "overall": 3.44,
        "strengths": ["Clear STAR structure."],
        "improvements": ["Quantify the outcome of the migration."],
        "example_answer": "At Acme I led the move to Kafka; latency fell from hours to minutes within a quarter.",
    }
    reply.update(overrides)
    return reply


def with_timeout(config: dict[str, Any], node: str, seconds: float) -> dict[str, Any]:
    """The same run config with a shorter model deadline for the persona that plays `node`."""
    run = config["configurable"]["team_run_config"]
    persona = run.agents[node]
    quick = persona.model_copy(update={"model": persona.model.model_copy(update={"timeout_s": seconds})})
    config["configurable"]["team_run_config"] = run.model_copy(update={"agents": {**run.agents, node: quick}})
    return config


def answering_state(answer: str, evaluations: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """State in the middle of an interview: question 1 was asked and the candidate just answered."""
    return {
        "messages": [
            HumanMessage("Here are my documents."),
            AIMessage("Question 1 of 3 (behavioral, medium): " + QUESTION["text"]),
            HumanMessage(answer),
        ],
        "resume": RESUME,
        "job_description": JOB_DESCRIPTION,
        "role": "Senior Data Engineer",
        "questions": [QUESTION, {**QUESTION, "text": "How have you used Kafka in a real project?"}],
        "current": 0,
        "evaluations": evaluations or [],
        "phase": "asking",
        **extra,
    }


def documents_state() -> dict[str, Any]:
    return {"messages": [HumanMessage("Let's start.")], "resume": RESUME, "job_description": JOB_DESCRIPTION}


# --------------------------------------------------------------------------------------------- question_generator


async def test_question_generator_uses_the_model_questions(resolver: AgentTeamResolver) -> None:
    from_model = {
        "questions": [
            {
                "text": "How did you size Kafka partitions at Acme?",
                "type": "technical",
                "difficulty": "hard",
                "skill": "Kafka",
            },
            {
                "text": "Tell me about mentoring the four engineers you led.",
                "type": "behavioral",
                "difficulty": "medium",
                "skill": "mentoring",
            },
            {
                "text": "What would you do if an Airflow DAG kept failing at night?",
                "type": "situational",
                "difficulty": "medium",
                "skill": "Airflow",
            },
        ]
    }
    factory = FakeAgentFactory({"question_generator": replies(from_model)})
    out = await question_generator(documents_state(), run_config(resolver, "demo", "interview", factory))

    assert out["questions"] == from_model["questions"]
    assert out["questions_by"] == MODEL_LABEL
    assert out["phase"] == "asking"
    assert out["current"] == 0
    intro, first = out["messages"]
    assert intro.response_metadata["produced_by"] == MODEL_LABEL
    assert "model unavailable" not in intro.content
    assert first.content == "Question 1 of 3 (technical, hard): How did you size Kafka partitions at Acme?"


async def test_question_generator_keeps_only_the_team_number_of_model_questions(resolver: AgentTeamResolver) -> None:
    many = {
        "questions": [
            {
                "text": f"Model question number {i} about Kafka?",
                "type": "technical",
                "difficulty": "easy",
                "skill": "Kafka",
            }
            for i in range(1, 7)
        ]
    }
    factory = FakeAgentFactory({"question_generator": replies(many)})
    out = await question_generator(documents_state(), run_config(resolver, "demo", "interview", factory))

    assert [q["text"] for q in out["questions"]] == [f"Model question number {i} about Kafka?" for i in (1, 2, 3)]
    assert "I'll ask 3 questions" in out["messages"][0].content


async def test_question_generator_falls_back_to_templates_when_the_model_fails(resolver: AgentTeamResolver) -> None:
    failing = FakeAgentFactory({"question_generator": FailingChatModel()})
    out = await question_generator(documents_state(), run_config(resolver, "demo", "interview", failing))
    offline = await question_generator(documents_state(), run_config(resolver, "demo", "interview"))

    assert out["questions_by"] == "template"
    assert out["questions"] == offline["questions"]
    intro = out["messages"][0]
    assert "model unavailable" in intro.content
    assert "RuntimeError" in intro.content
    assert intro.response_metadata["produced_by"] == "template"
    assert out["messages"][1].content.startswith("Question 1 of 3")


async def test_question_generator_falls_back_when_the_model_reply_is_not_json(resolver: AgentTeamResolver) -> None:
    factory = FakeAgentFactory({"question_generator": replies("Sure! 1. Tell me about yourself.")})
    out = await question_generator(documents_state(), run_config(resolver, "demo", "interview", factory))

    assert out["questions_by"] == "template"
    assert "model unavailable" in out["messages"][0].content
    assert len(out["questions"]) == 3


async def test_offline_questions_are_deterministic_and_tailored(resolver: AgentTeamResolver) -> None:
    params = resolver.resolve("demo", "interview").team.params
    first = await question_generator(documents_state(), run_config(resolver, "demo", "interview"))
    second = await question_generator(documents_state(), run_config(resolver, "demo", "interview"))

    questions = first["questions"]
    assert questions == second["questions"]
    assert first["messages"][1].content == second["messages"][1].content
    assert first["questions_by"] == "template"
    assert "model unavailable" not in first["messages"][0].content
    assert len(questions) == params.num_questions == 3
    mix = list(params.question_mix)
    assert [q["type"] for q in questions] == [mix[i % len(mix)] for i in range(len(questions))]
    assert all(q["difficulty"] in ("easy", "medium", "hard") for q in questions)
    # tailored: every question probes something taken from the documents, Kafka among them
    assert any("Kafka" in q["text"] for q in questions)
    documents = (RESUME + JOB_DESCRIPTION).lower()
    for q in questions:
        assert q["skill"].lower() in documents
        assert q["skill"] in q["text"]
    assert first["role"] == "Senior Data Engineer"
    assert "Senior Data Engineer" in first["messages"][0].content


async def test_offline_questions_differ_for_different_documents(resolver: AgentTeamResolver) -> None:
    resume = "Frontend developer. Built React and TypeScript apps; improved accessibility scores to 98."
    job = "Frontend Engineer\n\nResponsibilities:\n- Build accessible user interfaces in React\n- Own the design system"
    out = await question_generator(
        {"messages": [HumanMessage("hi")], "resume": resume, "job_description": job},
        run_config(resolver, "demo", "interview"),
    )
    text = " ".join(q["text"] for q in out["questions"])

    assert "React" in text
    assert "Kafka" not in text
    assert out["role"] == "Frontend Engineer"


@pytest.mark.parametrize("messages", [[], [HumanMessage("   ")]], ids=["no-message", "blank-message"])
async def test_no_resume_asks_for_one_and_stays_in_setup(resolver: AgentTeamResolver, messages: list[Any]) -> None:
    out = await question_generator({"messages": messages}, run_config(resolver, "demo", "interview"))

    assert out["phase"] == "setup"
    assert "questions" not in out
    (reply,) = out["messages"]
    assert "resume" in reply.content.lower()


async def test_resume_is_taken_from_the_first_message(resolver: AgentTeamResolver) -> None:
    out = await question_generator({"messages": [HumanMessage(RESUME)]}, run_config(resolver, "demo", "interview"))

    assert out["resume"] == RESUME.strip()
    assert out["phase"] == "asking"
    assert out["job_description"] == ""
    assert len(out["questions"]) == 3
    assert any("Kafka" in q["text"] for q in out["questions"])


async def test_resume_sent_after_being_asked_for_starts_the_interview(resolver: AgentTeamResolver) -> None:
    """A blank first turn gets 'please send your resume'; the resume sent next must then be used."""
    state = {
        "messages": [
            HumanMessage(""),
            AIMessage("Please send your resume (and the job description, if you have one) to start."),
            HumanMessage(RESUME),
        ],
        "phase": "setup",
    }
    out = await question_generator(state, run_config(resolver, "demo", "interview"))

    assert out["phase"] == "asking"
    assert out.get("resume") == RESUME.strip()
    assert len(out.get("questions", [])) == 3


# --------------------------------------------------------------------------------------------------- evaluator


async def test_evaluator_scores_with_the_model(resolver: AgentTeamResolver) -> None:
    factory = FakeAgentFactory({"evaluator": replies(model_evaluation())})
    out = await evaluator(answering_state(STRONG_ANSWER), run_config(resolver, "demo", "interview", factory))

    assert out["evaluator_error"] is None
    (evaluation,) = out["evaluations"]
    assert evaluation["scored_by"] == MODEL_LABEL
    assert evaluation["fallback_reason"] is None
    assert evaluation["scores"] == {"relevance": 4, "structure": 5, "specificity": 3, "impact": 2, "communication": 4}
    assert evaluation["overall"] == 3.4
    assert evaluation["answer"] == STRONG_ANSWER
    assert evaluation["question"] == QUESTION["text"]
    assert evaluation["improvements"] == ["Quantify the outcome of the migration."]
    (message,) = out["messages"]
    assert message.content.startswith("Score: 3.4/5 (relevance 4/5, structure 5/5")
    assert f"scored by {MODEL_LABEL}" in message.content
    assert message.response_metadata["produced_by"] == MODEL_LABEL


async def test_evaluator_appends_to_earlier_evaluations(resolver: AgentTeamResolver) -> None:
    earlier = {"question_index": 0, "scores": dict.fromkeys(RUBRIC, 3), "overall": 3.0, "scored_by": "fallback"}
    state = answering_state(STRONG_ANSWER, evaluations=[earlier], current=1)
    factory = FakeAgentFactory({"evaluator": replies(model_evaluation())})
    out = await evaluator(state, run_config(resolver, "demo", "interview", factory))

    assert [e["scored_by"] for e in out["evaluations"]] == ["fallback", MODEL_LABEL]
    assert out["evaluations"][1]["question_index"] == 1
    assert out["evaluations"][1]["question"] == "How have you used Kafka in a real project?"


def _slow_model() -> SlowChatModel:
    return SlowChatModel(seconds=3.0, messages=iter([AIMessage(json.dumps(model_evaluation()))]))


@pytest.mark.parametrize(
    ("model", "reason_part"),
    [
        (lambda: FailingChatModel(), "RuntimeError"),
        (_slow_model, "timeout"),
        (lambda: replies("That answer deserves a solid four out of five."), "no JSON"),
        (
            lambda: replies(model_evaluation(scores=[{"criterion": c, "score": 3} for c in RUBRIC if c != "impact"])),
            "impact",
        ),
        (
            lambda: replies(
                model_evaluation(scores=[{"criterion": c, "score": 7 if c == "structure" else 3} for c in RUBRIC])
            ),
            "ValidationError",
        ),
    ],
    ids=["provider-error", "timeout", "not-json", "missing-criterion", "score-out-of-range"],
)
@pytest.mark.serial  # a bound of 2 s on a 0.2 s deadline
async def test_evaluator_failures_leave_scoring_to_the_fallback(
    resolver: AgentTeamResolver, model: Any, reason_part: str
) -> None:
    factory = FakeAgentFactory({"evaluator": model()})
    config = with_timeout(run_config(resolver, "demo", "interview", factory), "evaluator", 0.2)
    started = time.monotonic()
    out = await evaluator(answering_state(STRONG_ANSWER), config)

    assert time.monotonic() - started < 2.0  # the persona's deadline is honoured
    assert out["evaluator_error"]
    assert reason_part in out["evaluator_error"]
    assert "evaluations" not in out
    assert "messages" not in out


async def test_evaluator_offline_defers_to_the_fallback(resolver: AgentTeamResolver) -> None:
    out = await evaluator(answering_state(STRONG_ANSWER), run_config(resolver, "demo", "interview"))

    assert out == {"evaluator_error": "offline: no model configured"}


# --------------------------------------------------------------------------------------------- fallback_scorer


async def test_fallback_scorer_scores_every_criterion_and_says_why(resolver: AgentTeamResolver) -> None:
    config = run_config(resolver, "demo", "interview")
    state = answering_state(STRONG_ANSWER, evaluator_error="timeout")
    out = await fallback_scorer(state, config)
    again = await fallback_scorer(state, config)

    assert out == again  # deterministic
    assert out["evaluator_error"] is None
    (evaluation,) = out["evaluations"]
    assert evaluation["scored_by"] == "fallback"
    assert evaluation["fallback_reason"] == "timeout"
    assert list(evaluation["scores"]) == RUBRIC
    assert all(1 <= s <= 5 for s in evaluation["scores"].values())
    assert 1 <= evaluation["overall"] <= 5
    assert evaluation["strengths"] and evaluation["improvements"]
    assert len(evaluation["example_answer"]) > 50
    (message,) = out["messages"]
    assert "scored by fallback (timeout)" in message.content
    assert message.response_metadata == {"kind": "evaluation", "question_index": 0, "produced_by": "fallback"}


async def test_fallback_scorer_overall_is_the_rubric_weighted_mean(resolver: AgentTeamResolver) -> None:
    rubric = resolver.resolve("demo", "interview").team.params.rubric
    out = await fallback_scorer(answering_state(VAGUE_ANSWER), run_config(resolver, "demo", "interview"))
    evaluation = out["evaluations"][0]

    # the overall is the weighted mean of the unrounded criterion values (so near answers still differ); each shown
    # score is one of those values rounded, so the overall stays within half a point of the shown scores' mean
    expected = sum(evaluation["scores"][c.name] * c.weight for c in rubric) / sum(c.weight for c in rubric)
    assert abs(evaluation["overall"] - expected) <= 0.55
    assert evaluation["fallback_reason"] == "no model configured"


async def test_fallback_scorer_ranks_a_strong_star_answer_above_a_vague_one(resolver: AgentTeamResolver) -> None:
    config = run_config(resolver, "demo", "interview")
    strong = (await fallback_scorer(answering_state(STRONG_ANSWER), config))["evaluations"][0]
    vague = (await fallback_scorer(answering_state(VAGUE_ANSWER), config))["evaluations"][0]

    assert strong["overall"] > vague["overall"]
    assert strong["scores"]["impact"] > vague["scores"]["impact"]
    assert strong["scores"]["structure"] > vague["scores"]["structure"]
    assert strong["scores"]["specificity"] > vague["scores"]["specificity"]
    assert strong["overall"] >= 3.5
    assert vague["overall"] <= 2.0
    # the vague answer is told to use STAR and quantify; the strong one is praised for results
    assert any("STAR" in tip for tip in vague["improvements"])
    assert any("measurable results" in s for s in strong["strengths"])


# ------------------------------------------------------------------------------------------ interview summarizer


def _evaluation(scores: list[int], overall: float, improvements: list[str], scored_by: str) -> dict[str, Any]:
    return {
        "scores": dict(zip(RUBRIC, scores, strict=True)),
        "overall": overall,
        "improvements": improvements,
        "strengths": ["ok"],
        "scored_by": scored_by,
    }


EVALUATIONS = [
    _evaluation([5, 1, 3, 4, 3], 3.2, ["Use the STAR structure.", "Quantify the outcome."], "fallback"),
    _evaluation([4, 2, 3, 3, 4], 3.3, ["Use the STAR structure."], MODEL_LABEL),
]


def _finished_state() -> dict[str, Any]:
    return {"messages": [HumanMessage("last answer")], "role": "Senior Data Engineer", "evaluations": EVALUATIONS}


async def test_summary_numbers_come_from_the_evaluations(resolver: AgentTeamResolver) -> None:
    out = await interview_summarizer(_finished_state(), run_config(resolver, "demo", "interview"))
    summary = out["summary"]

    assert out["phase"] == "done"
    assert summary["averages"] == {
        "relevance": 4.5,
        "structure": 1.5,
        "specificity": 3.0,
        "impact": 3.5,
        "communication": 3.5,
    }
    assert summary["overall"] == 3.25
    assert summary["strongest"] == "relevance"
    assert summary["weakest"] == "structure"
    assert summary["answered"] == 2
    assert summary["fallback_scored"] == 1
    assert summary["next_steps"][0] == "Use the STAR structure."
    # offline: the template narrative states the same numbers
    assert summary["written_by"] == "template"
    message = out["messages"][0]
    assert message.content.startswith("Interview complete. ")
    assert "overall average of 3.25/5" in message.content
    assert "strongest area was relevance (4.5/5)" in message.content
    assert "work on is structure (1.5/5)" in message.content


async def test_summary_narrative_from_the_model(resolver: AgentTeamResolver) -> None:
    narrative = "You explained your Kafka work well; practise structuring answers with STAR."
    factory = FakeAgentFactory({"interview_summarizer": replies(narrative)})
    out = await interview_summarizer(_finished_state(), run_config(resolver, "demo", "interview", factory))

    assert out["phase"] == "done"
    assert out["summary"]["narrative"] == narrative
    assert out["summary"]["written_by"] == MODEL_LABEL
    assert out["summary"]["strongest"] == "relevance"  # the numbers do not depend on the model
    assert out["messages"][0].content == "Interview complete. " + narrative
    assert out["messages"][0].response_metadata["produced_by"] == MODEL_LABEL


async def test_summary_narrative_falls_back_to_the_template(resolver: AgentTeamResolver) -> None:
    factory = FakeAgentFactory({"interview_summarizer": FailingChatModel()})
    out = await interview_summarizer(_finished_state(), run_config(resolver, "demo", "interview", factory))

    assert out["phase"] == "done"
    assert out["summary"]["written_by"].startswith("template (RuntimeError")
    assert "overall average of 3.25/5" in out["summary"]["narrative"]
    assert out["summary"]["weakest"] == "structure"


async def test_summary_is_repeated_not_recomputed_after_the_interview(resolver: AgentTeamResolver) -> None:
    config = run_config(resolver, "demo", "interview")
    done = await interview_summarizer(_finished_state(), config)
    state = {**_finished_state(), "summary": done["summary"], "phase": "done"}
    again = await interview_summarizer(state, config)

    assert "summary" not in again
    assert again["messages"][0].content == "The interview is complete. " + done["summary"]["narrative"]
