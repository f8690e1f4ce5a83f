"""The offline fallback scorer on hard pairs and its feedback; offline questions drawn from the resume and the job."""

from __future__ import annotations

from typing import Any

import pytest

import nodes.fallback_scorer as fallback_scorer
from nodes.fallback_scorer import score_answer
from nodes.question_generator import offline_questions
from nodes.semantic_model import SemanticModel, default_model
from nodes.text_features import content_words, numbers
from personas.resolver import AgentTeamResolver
from personas.schema import RubricCriterion

JOB = (
    "Senior Backend Engineer\nWe run a payments API in Python and PostgreSQL on Kubernetes.\n"
    "- Design and run reliable services\n- Improve latency and database performance\n"
    "- Mentor engineers and lead incident reviews\n"
)
RESUME = (
    "Maria Lopez. Backend engineer at Shopwise (2019-2024): rebuilt the checkout service in Python; "
    "cut p95 latency from 900 ms to 250 ms; moved Postgres reads to replicas; led 12 incident reviews."
)
OTHER_RESUME = (
    "Sam Okafor. Site reliability engineer at Northwind Bank (2017-2024): migrated 40 services to Kubernetes; "
    "reduced pages by half with SLO alerts; automated Postgres failover."
)
QUESTION = {"text": "How did you make the checkout faster?", "type": "technical", "skill": "latency"}


@pytest.fixture
def rubric(resolver: AgentTeamResolver) -> list[RubricCriterion]:
    return list(resolver.resolve("demo", "interview").team.params.rubric)


def overall(answer: str, rubric: list[RubricCriterion], question: dict[str, Any] = QUESTION) -> float:
    return score_answer(question, answer, JOB, rubric, RESUME)["overall"]


# hand-picked hard pairs (not from the evaluation sets): the better answer first
HARD_PAIRS = {
    "concise-lowercase-vs-long-filler": (
        "profiled it with py-spy, added two indexes and moved reads to a postgres replica; p95 fell to 250 ms.",
        "Making the checkout faster is about making it faster, because a faster checkout is a better checkout. "
        "To make the checkout faster I focused on making it faster and on the speed of the checkout, and I think "
        "speed is what makes a checkout fast, so making the checkout faster was about speed and being fast.",
    ),
    "numbers-as-words-vs-story-with-numbers": (
        "I found two slow queries and cached the tax tables; checkout time dropped by a third in two weeks.",
        "Last year I cycled 154 kilometres around a lake in 2 days with 3 friends and camped 1 night by the water.",
    ),
    "answer-vs-keyword-list": (
        "I moved the hot reads to a replica and added an index on order id, which cut p95 from 900 to 250 ms.",
        "Python, PostgreSQL, Kubernetes, latency, caching, indexes, replicas, performance, p95, profiling, scaling.",
    ),
    "few-shared-words-vs-generic": (
        "At Shopwise the page waited on three database round trips; I batched them and the wait fell to 250 ms.",
        "Performance is always very important to me and I always try to keep it in mind in every project, "
        "working closely with my colleagues to make sure that everything is as good as it can possibly be.",
    ),
}


@pytest.mark.parametrize("pair", list(HARD_PAIRS), ids=list(HARD_PAIRS))
def test_the_better_answer_of_a_hard_pair_scores_higher(rubric: list[RubricCriterion], pair: str) -> None:
    better, worse = HARD_PAIRS[pair]
    assert overall(better, rubric) > overall(worse, rubric)


def test_numbers_written_as_words_count() -> None:
    assert numbers("two of four regions switched; costs fell by a third") == ["two", "four", "third"]
    assert numbers("p95 fell from 900 ms to 250 ms (30%)") == ["900 ms", "250 ms", "30%"]


def test_feedback_follows_the_scores(rubric: list[RubricCriterion]) -> None:
    filler = HARD_PAIRS["concise-lowercase-vs-long-filler"][1]
    result = score_answer(QUESTION, filler, JOB, rubric, RESUME)

    low = [name for name, score in result["scores"].items() if score <= 2]
    assert low
    # no strength is claimed for a criterion scored 2 or less, and each of those gets a tip
    assert not any(name in s.lower() for s in result["strengths"] for name in low if "strongest" in s.lower())
    assert len(result["improvements"]) >= len(low)
    assert any("repeats the question" in tip for tip in result["improvements"])


def test_the_example_answer_is_built_from_this_resume_for_this_question(rubric: list[RubricCriterion]) -> None:
    mine = score_answer(QUESTION, "I sped it up.", JOB, rubric, RESUME)["example_answer"]
    other = score_answer(QUESTION, "I sped it up.", JOB, rubric, OTHER_RESUME)["example_answer"]
    incidents = {"text": "Tell me about an incident review you led.", "type": "behavioral", "skill": "incidents"}
    about_incidents = score_answer(incidents, "I sped it up.", JOB, rubric, RESUME)["example_answer"]

    assert "Shopwise" in mine and "900 ms" in mine
    assert "Northwind Bank" in other and "Shopwise" not in other
    assert about_incidents != mine and "incident reviews" in about_incidents


def test_a_matching_resume_claim_raises_specificity(rubric: list[RubricCriterion]) -> None:
    answer = "I moved the reads to replicas and rebuilt the checkout service; latency went down a lot."
    with_resume = score_answer(QUESTION, answer, JOB, rubric, RESUME)
    without = score_answer(QUESTION, answer, JOB, rubric, "")

    assert with_resume["scores"]["specificity"] > without["scores"]["specificity"]


CHURN = {"text": "How did you reduce customer churn?", "type": "technical", "skill": "retention"}
# shares no content word with the question or the skill: only meaning connects them
PARAPHRASE = (
    "Subscribers were quitting after a month. I phoned twenty who left, learned the setup confused them, "
    "rewrote it, and the share still paying after ninety days went from 60 to 75 percent."
)
CAMPING = "I went camping by the lake with my cousins; we paddled canoes for three hours and grilled fish at sunset."


def test_the_semantic_model_ships_and_relates_texts_by_meaning() -> None:
    model = default_model()

    assert len(model) >= 20000 and model.dims == 64
    # inflected and irregular forms resolve to WordNet's base forms
    assert model.word_index("latencies") == model.word_index("latency") is not None
    assert model.word_index("churned") == model.word_index("churn") is not None
    assert model.word_index("fell") == model.word_index("fall") is not None
    question = f"{CHURN['text']} {CHURN['skill']}"
    assert model.similarity(PARAPHRASE, question) > model.similarity(CAMPING, question)
    assert model.similarity("", question) == 0.0


def test_the_scorer_uses_the_semantic_model(rubric: list[RubricCriterion], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    class Recording(SemanticModel):
        def similarity(self, a: str, b: str) -> float:
            calls.append((a, b))
            return super().similarity(a, b)

    real = default_model()
    recording = Recording.__new__(Recording)
    recording.__dict__.update(real.__dict__)
    monkeypatch.setattr(fallback_scorer, "default_model", lambda: recording)

    with_model = score_answer(CHURN, PARAPHRASE, JOB, rubric, "")
    without = score_answer(CHURN, PARAPHRASE, JOB, rubric, "", semantic=False)

    assert any(a == PARAPHRASE for a, _ in calls)
    # the lexicon finds no shared term; the model sees an answer about retention
    assert with_model["scores"]["relevance"] > without["scores"]["relevance"]
    assert with_model["overall"] > score_answer(CHURN, CAMPING, JOB, rubric, "")["overall"]


# ------------------------------------------------------------------------------------------ offline questions

MIX = ["behavioral", "technical", "situational"]


def test_two_resumes_get_different_questions_for_the_same_job() -> None:
    maria = offline_questions(RESUME, JOB, "Senior Backend Engineer", 5, MIX)
    sam = offline_questions(OTHER_RESUME, JOB, "Senior Backend Engineer", 5, MIX)

    assert [q["text"] for q in maria] != [q["text"] for q in sam]
    assert any("Shopwise" in q["text"] for q in maria) and not any("Shopwise" in q["text"] for q in sam)
    assert any("Northwind Bank" in q["text"] for q in sam)
    assert [q["type"] for q in maria] == [MIX[i % 3] for i in range(5)]


def test_every_question_names_the_resume_or_the_job_and_none_repeats() -> None:
    questions = offline_questions(RESUME, JOB, "Senior Backend Engineer", 5, MIX)
    documents = set(content_words(RESUME)) | set(content_words(JOB))

    for q in questions:
        assert set(content_words(q["text"])) & documents - {"time", "work", "role"}, q["text"]
    for i, a in enumerate(questions):
        for b in questions[i + 1 :]:
            wa, wb = set(content_words(a["text"])), set(content_words(b["text"]))
            assert len(wa & wb) / len(wa | wb) < 0.6, (a["text"], b["text"])
    # the candidate's own results are asked about, with the job's tasks
    assert any("900 ms to 250 ms" in q["text"] for q in questions)
    assert any("improve latency and database performance" in q["text"] for q in questions)
