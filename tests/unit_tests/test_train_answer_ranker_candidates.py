"""The seventh scorer pass's candidate inputs in evals/train_answer_ranker.py (`--encoder`, `--cross-encoder`): which
vectors and logits the rankers read, in training and end to end in the scorer during `--cv`.

The other encoder and the cross-encoder are fakes here (the real ones need onnxruntime, a training-time install,
evals/onnx_encoders.py); MiniLM and the scorer are the real ones."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import nodes.fallback_scorer as fallback_scorer
from evals import train_answer_ranker as trainer
from nodes import embedder
from nodes.answer_ranker import DIM, FEATURES, QUESTION_SIZE, REFERENCE_SIZE, AnswerRanker
from nodes.fallback_scorer import answer_features, ranker_inputs, score_answer
from nodes.semantic_model import EmbeddingSimilarity, embedding_model
from personas.resolver import AgentTeamResolver

pytestmark = pytest.mark.skipif(not embedder.available(), reason="the MiniLM model package is not installed")

QUESTION = "What is a stack?"
REFERENCE = "A last-in first-out list of items."
ANSWER = "A list where the last item pushed is the first one popped."


def fake_vector(text: str) -> np.ndarray:
    seed = int(hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:8], 16)
    v = np.random.default_rng(seed).normal(size=DIM)
    return v / np.linalg.norm(v)


class FakeEncoder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, name: str, texts: list[str]) -> np.ndarray:
        self.calls.append((name, texts))
        return np.array([fake_vector(t) for t in texts])


def fake_cross(queries: list[str], passages: list[str]) -> np.ndarray:
    return np.array([len(q) + len(p) / 1000 for q, p in zip(queries, passages, strict=True)])


def _minilm() -> EmbeddingSimilarity:
    model = embedding_model()
    assert model is not None
    return model


def _inputs(extras: trainer.Extras, reference: str = "") -> list[float]:
    return trainer.answer_inputs(QUESTION, ANSWER, _minilm(), reference, extras)


def test_the_default_candidate_reads_what_the_scorer_reads() -> None:
    model = _minilm()
    for reference in ("", REFERENCE):
        f = answer_features(QUESTION, ANSWER, "", "", "", model, reference)
        assert _inputs(trainer.Extras(), reference) == ranker_inputs(f, QUESTION, ANSWER, model, reference)


def test_another_encoder_replaces_every_minilm_number_the_rankers_read() -> None:
    encoder = FakeEncoder()
    shipped = _inputs(trainer.Extras())
    x = _inputs(trainer.Extras("bge_small", embed=encoder))
    a, q = fake_vector(ANSWER), fake_vector(QUESTION)
    assert len(x) == QUESTION_SIZE and {name for name, _ in encoder.calls} == {"bge_small"}
    assert np.allclose(x[-2 * DIM : -DIM], a) and np.allclose(x[-DIM:], a * q)
    semantic = FEATURES.index("semantic")
    assert x[semantic] == pytest.approx(float(a @ q)) and x[semantic] != pytest.approx(shipped[semantic])
    # the rules' features and criterion values are MiniLM's still
    assert x[semantic + 1 : trainer.SHARED] == shipped[semantic + 1 : trainer.SHARED]

    r = _inputs(trainer.Extras("bge_small", embed=encoder), REFERENCE)
    to_reference, to_question = float(a @ fake_vector(REFERENCE)), float(a @ q)
    assert len(r) == REFERENCE_SIZE
    assert r[-4:-1] == pytest.approx([to_reference, to_question, to_reference - to_question])


def test_the_cross_encoder_logits_go_before_the_vectors() -> None:
    shipped = _inputs(trainer.Extras())
    x = _inputs(trainer.Extras(cross=True, cross_score=fake_cross))
    assert len(x) == QUESTION_SIZE + 1
    assert x[trainer.SHARED] == pytest.approx(fake_cross([QUESTION], [ANSWER])[0])
    assert x[: trainer.SHARED] + x[trainer.SHARED + 1 :] == shipped  # the vectors stay last (scaling finds them)

    r = _inputs(trainer.Extras(cross=True, cross_score=fake_cross), REFERENCE)
    assert len(r) == REFERENCE_SIZE + 2
    expected = fake_cross([REFERENCE, QUESTION], [ANSWER, ANSWER])
    assert r[trainer.SHARED : trainer.SHARED + 2] == pytest.approx(expected.tolist())


def test_end_to_end_the_scorer_reads_the_candidate_inputs_then_its_own_again(resolver: AgentTeamResolver) -> None:
    rubric = list(resolver.resolve("demo", "interview").team.params.rubric)
    encoder = FakeEncoder()
    extras = trainer.Extras("bge_small", cross=True, embed=encoder, cross_score=fake_cross)
    x = _inputs(extras)
    weights = [0.0] * len(x)
    weights[trainer.SHARED] = 1.0  # the ranker reads only the cross-encoder's logit
    question = {"text": QUESTION, "type": "technical", "skill": ""}
    before = score_answer(question, ANSWER, "", rubric, "", model=_minilm())["overall"]
    seen: list[float] = []

    class Recording(AnswerRanker):
        def quality(self, x: list[float]) -> float:
            seen.append(x[trainer.SHARED])
            return super().quality(x)

    with trainer.in_scorer(extras, {False: Recording(weights, 0.0, 1.0)}):
        score_answer(question, ANSWER, "", rubric, "", model=_minilm())
    assert seen == [pytest.approx(fake_cross([QUESTION], [ANSWER])[0])]
    assert fallback_scorer.ranker_inputs is ranker_inputs
    assert score_answer(question, ANSWER, "", rubric, "", model=_minilm())["overall"] == before


def test_candidate_flags_never_write_the_shipped_files() -> None:
    for flags in (["--encoder", "bge_small"], ["--cross-encoder"]):
        with pytest.raises(SystemExit):
            trainer.parse_args(flags)
        assert trainer.parse_args([*flags, "--cv"]).cv
    args = trainer.parse_args(["--cv", "--encoder", "bge_small", "--cross-encoder"])
    assert (args.encoder, args.cross_encoder) == ("bge_small", True)
