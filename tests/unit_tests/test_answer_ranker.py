"""The fallback scorer's learned answer ranker (nodes/answer_ranker.py) on answers it was not trained on.

The hand-written pairs below were written for this test after the ranker was trained (none is in the public
set's `tune` split); the public pairs are the first of the `test` split (questions not read while tuning)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nodes.answer_ranker as answer_ranker
import nodes.fallback_scorer as fallback_scorer
from nodes import embedder
from nodes.fallback_scorer import score_answer
from nodes.semantic_model import default_model, embedding_model
from personas.resolver import AgentTeamResolver
from personas.schema import RubricCriterion

needs_embedder = pytest.mark.skipif(not embedder.available(), reason="the MiniLM model package is not installed")
PUBLIC = Path(__file__).resolve().parents[2] / "evals" / "sets" / "scorer_public_pairs.jsonl"


@pytest.fixture
def rubric(resolver: AgentTeamResolver) -> list[RubricCriterion]:
    return list(resolver.resolve("demo", "interview").team.params.rubric)


def _question(text: str) -> dict[str, Any]:
    return {"text": text, "type": "technical", "skill": ""}


def _without_ranker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fallback_scorer, "default_ranker", lambda: None)


# a concise correct answer against a long wrong one that restates the question; the rules alone (no ranker) order
# the first two wrongly. Two of the five are still ordered wrongly with the ranker: the measured rate of this kind
# of pair is about 55-60% (docs/quality.md, concise_good), far from the target, and these show it.
CONCISE = {
    "load-balancer": (
        "What is the purpose of a load balancer?",
        "It spreads incoming requests across several servers.",
        "The purpose of a load balancer is to balance the load, which means it measures how heavy the server is in "
        "kilograms so the data center knows when the floor might break, and then it tells the staff to move the "
        "server somewhere else.",
    ),
    "recursion": (
        "What is recursion?",
        "A function that calls itself on a smaller input until a base case.",
        "Recursion is when you do something again and again, for example in a loop you recurse over the items, and "
        "recursion is the same as a for loop but slower because the computer has to recurse through the memory every "
        "time the loop runs again.",
    ),
    "binary-search": (
        "What is the time complexity of binary search?",
        "O(log n).",
        "Binary search has a time complexity that depends on the size of the array, because binary search looks at "
        "every element of the array one by one until it finds the element it searches for, so the time complexity "
        "of binary search grows with the array.",
    ),
    "compiler": (
        "What does a compiler do?",
        "Translates source code into machine code.",
        "A compiler is a program that runs your program and shows the output on the screen while the program is "
        "running, and when the program has an error the compiler stops the program and shows the error to the user "
        "so the user can fix it.",
    ),
    "foreign-key": (
        "What is a foreign key?",
        "A column that references the primary key of another table.",
        "A foreign key is a key that is foreign, which means it is a special key in the database that is used to "
        "encrypt the data of the table so that other users from foreign countries cannot read the data without the "
        "password of the key.",
    ),
}
MISSED = {"compiler", "foreign-key"}  # ordered wrongly today, kept to show the limit (strict: a fix must show)


@needs_embedder
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="beyond the ranker")) if n in MISSED else n
     for n in CONCISE],
)  # fmt: skip
def test_a_concise_correct_answer_beats_a_long_wrong_one_that_restates_the_question(
    rubric: list[RubricCriterion], name: str
) -> None:
    text, good, bad = CONCISE[name]
    assert (
        score_answer(_question(text), good, "", rubric)["overall"]
        > score_answer(_question(text), bad, "", rubric)["overall"]
    )


@needs_embedder
@pytest.mark.parametrize("name", ["load-balancer", "recursion"])
def test_the_rules_alone_got_these_concise_pairs_wrong(
    rubric: list[RubricCriterion], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what the scorer did before the ranker (and does without its weights file): the long wrong answer wins
    _without_ranker(monkeypatch)
    text, good, bad = CONCISE[name]
    assert (
        score_answer(_question(text), good, "", rubric)["overall"]
        < score_answer(_question(text), bad, "", rubric)["overall"]
    )


@needs_embedder
def test_filler_a_keyword_list_and_a_holiday_story_score_below_a_short_answer(rubric: list[RubricCriterion]) -> None:
    dns = _question("What does DNS do?")
    filler = (
        "DNS is a very important part of networking, and what DNS does is very important because DNS is used in "
        "networking. In general DNS does many things that are important for the network, and it is something every "
        "network needs to keep in mind."
    )
    good = score_answer(dns, "It translates domain names into IP addresses.", "", rubric)
    padded = score_answer(dns, filler, "", rubric)
    assert good["overall"] > padded["overall"]
    assert max(padded["scores"].values()) <= 2

    mutex = _question("What is the purpose of a mutex?")
    listed = score_answer(
        mutex, "mutex, thread, lock, purpose, critical, section, shared, resource, concurrency", "", rubric
    )
    answer = score_answer(mutex, "It lets only one thread at a time enter a critical section.", "", rubric)
    assert answer["overall"] > listed["overall"]
    assert any("list of keywords" in tip for tip in listed["improvements"])

    tcp = _question("What is the difference between TCP and UDP?")
    hike = (
        "Last summer we hiked 154 kilometres across the Alps in 9 days, climbing 3 peaks and sleeping in 6 mountain "
        "huts, which was the best trip of my life."
    )
    story = score_answer(tcp, hike, "", rubric)
    right = score_answer(
        tcp, "TCP is connection-oriented and reliable; UDP sends datagrams without guarantees.", "", rubric
    )
    assert right["overall"] > story["overall"]
    # the ranker never pulls a story of private life up: every criterion stays at the rules' 1
    assert set(story["scores"].values()) == {1}
    assert any("story" in tip for tip in story["improvements"])


@needs_embedder
def test_strengths_follow_the_scores_with_the_ranker(rubric: list[RubricCriterion]) -> None:
    result = score_answer(
        _question("What is a deadlock?"), "Two processes each wait for a lock the other holds.", "", rubric
    )
    claimed = [name for name, text in fallback_scorer._STRENGTHS.items() if text in result["strengths"]]
    assert all(result["scores"][name] >= 4 for name in claimed)
    assert len(result["improvements"]) >= sum(s <= 3 for s in result["scores"].values())


def _public(category: str, n: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in PUBLIC.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted((r for r in rows if r["split"] == "test" and r["category"] == category), key=lambda r: r["id"])[:n]


@needs_embedder
@pytest.mark.parametrize("category", ["filler", "off_topic", "keyword_stuffed"])
def test_public_test_pairs_question_only(rubric: list[RubricCriterion], category: str) -> None:
    # as in an interview without a reference answer; rates over the whole split are in docs/quality.md
    pairs = _public(category, 8)
    right = sum(
        score_answer(p["question"], p["better"], "", rubric)["overall"]
        > score_answer(p["question"], p["worse"], "", rubric)["overall"]
        for p in pairs
    )
    assert len(pairs) == 8
    assert right >= 7, f"{right}/8 {category} pairs ordered correctly"


def test_the_rankers_ship_and_load() -> None:
    ranker = answer_ranker.default_ranker()
    assert ranker is not None
    assert len(ranker.weights) == len(answer_ranker.FEATURES) + 2 + len(answer_ranker.CRITERIA) + 2 * answer_ranker.DIM
    assert ranker.scale > 0
    reference = answer_ranker.default_reference_ranker()
    assert reference is not None
    assert len(reference.weights) == answer_ranker.REFERENCE_SIZE
    assert reference.scale > 0
    # a question-only weights file is not a reference model
    with pytest.raises(ValueError, match="expected"):
        answer_ranker.AnswerRanker.load(answer_ranker.MODEL_PATH, answer_ranker.REFERENCE_SIZE)


# the concise pairs above with a reference answer, as a model-written question can carry (written for this test)
REFERENCES = {
    "load-balancer": "It distributes client requests over a pool of servers so that no single server is overloaded.",
    "recursion": "A function that solves a problem by calling itself on smaller instances until a base case.",
    "binary-search": "O(log n): each comparison halves the part of the sorted array that is left to search.",
    "compiler": "It translates a program's source code into machine code (or another lower-level language) before "
    "it runs.",
    "foreign-key": "A column (or set of columns) whose values must match the primary key of a row in another table.",
}


@needs_embedder
@pytest.mark.parametrize("name", list(CONCISE))
def test_with_a_reference_a_concise_correct_answer_beats_a_long_wrong_one(
    rubric: list[RubricCriterion], name: str
) -> None:
    text, good, bad = CONCISE[name]
    question = {**_question(text), "reference": REFERENCES[name]}
    assert score_answer(question, good, "", rubric)["overall"] > score_answer(question, bad, "", rubric)["overall"]


def test_without_the_weights_or_the_embedder_the_rules_score(
    rubric: list[RubricCriterion], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # a missing or truncated weights file: no ranker, no error
    broken = tmp_path / "answer_ranker.json.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(OSError):
        answer_ranker.AnswerRanker.load(broken)
    monkeypatch.setattr(answer_ranker, "MODEL_PATH", tmp_path / "missing.json.gz")
    answer_ranker.default_ranker.cache_clear()
    try:
        assert answer_ranker.default_ranker() is None
    finally:
        monkeypatch.undo()
        answer_ranker.default_ranker.cache_clear()
    monkeypatch.setattr(answer_ranker, "REFERENCE_MODEL_PATH", tmp_path / "missing.json.gz")
    answer_ranker.default_reference_ranker.cache_clear()
    try:
        assert answer_ranker.default_reference_ranker() is None
    finally:
        monkeypatch.undo()
        answer_ranker.default_reference_ranker.cache_clear()
    f = fallback_scorer.answer_features("What is a deadlock?", "Two processes wait on each other.", "", model=None)
    # the LSA model has no sentence vectors, so the ranker does not run with it
    assert fallback_scorer.learned_quality(f, "What is a deadlock?", "Two processes wait.", default_model()) == -1.0
    _without_ranker(monkeypatch)
    result = score_answer(_question("What is a deadlock?"), "Two processes wait on each other.", "", rubric)
    assert 1 <= result["overall"] <= 5


@needs_embedder
def test_the_ranker_gives_a_quality_between_0_and_1() -> None:
    model = embedding_model()
    assert model is not None
    f = fallback_scorer.answer_features("What is a deadlock?", "Two processes wait on each other.", "", model=model)
    q = fallback_scorer.learned_quality(f, "What is a deadlock?", "Two processes wait on each other.", model)
    assert 0 < q < 1
    # with a reference answer the reference model scores it, and it reads the reference: an answer that says what
    # the reference says gets a higher quality than one that does not
    reference = "Two or more processes each wait for a resource another one holds, so none can go on."
    qualities = []
    for answer in ("Processes wait for each other's locks forever.", "A deadlock is when the program is slow."):
        f_ref = fallback_scorer.answer_features("What is a deadlock?", answer, "", model=model, reference=reference)
        qualities.append(fallback_scorer.learned_quality(f_ref, "What is a deadlock?", answer, model, reference))
    assert 0 < qualities[1] < qualities[0] < 1
