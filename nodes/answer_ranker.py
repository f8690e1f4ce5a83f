"""answer_ranker: two small learned answer-quality scores for the fallback scorer (question only; with a reference).

Both are linear models trained by `python -m evals.train_answer_ranker` on the `tune` pairs of the public graded
answers only (evals/README.md), as pairwise logistic regressions: the better answer of a pair should score higher.

- The question-only ranker (nodes/models/answer_ranker.json.gz, about 800 numbers) reads the scorer's own features
  and heuristic criterion values (nodes/fallback_scorer.py) and the MiniLM sentence vectors of the answer and of the
  answer times the question (element-wise).
- The reference ranker (nodes/models/answer_ranker_reference.json.gz, 27 numbers), for a question that carries a
  reference answer, reads the same features and criterion values and four numbers that compare the answer with the
  reference: MiniLM cosine to it and to the question, their difference, and the share of the reference's terms
  covered. No sentence-vector weights: chosen by leave-question-out cross-validation on tune, it orders as many
  pairs as the models with them and has nothing topic-specific to memorise.

The score is mapped to 0..1 (`quality`). Without the sentence embedder (nodes/embedder.py) or a weights file the
scorer keeps its hand-written rules (`quality` is -1).
"""

from __future__ import annotations

import gzip
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

MODEL_PATH = Path(__file__).resolve().parent / "models" / "answer_ranker.json.gz"
REFERENCE_MODEL_PATH = Path(__file__).resolve().parent / "models" / "answer_ranker_reference.json.gz"
# the scorer's features the models read (answer_features keys), then log(1 + words), then "25 words or fewer"
FEATURES = (
    "semantic", "relevance", "echo", "repetition", "off_topic", "listing", "numbers", "vague", "specific_terms",
    "words_per_sentence", "novel", "star", "first_person", "result_verbs", "short_segments", "function_words",
)  # fmt: skip
CRITERIA = ("relevance", "structure", "specificity", "impact", "communication")
DIM = 384
# what the reference ranker adds to the features: cosine to the reference, to the question, their difference, cover
REFERENCE_INPUTS = 4
QUESTION_SIZE = len(FEATURES) + 2 + len(CRITERIA) + 2 * DIM
REFERENCE_SIZE = len(FEATURES) + 2 + len(CRITERIA) + REFERENCE_INPUTS


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(u * v for u, v in zip(a, b, strict=True))  # both are unit length (nodes/embedder.py)


def _shared(f: dict[str, float], heuristic: dict[str, float]) -> list[float]:
    x = [float(f[k]) for k in FEATURES]
    x += [math.log1p(f["words"]), 1.0 if f["words"] <= 25 else 0.0]
    return x + [float(heuristic[c]) for c in CRITERIA]


def inputs(f: dict[str, float], heuristic: dict[str, float], answer_vec: Any, question_vec: Any) -> list[float]:
    """The question-only model's input: features, heuristic criterion values, answer vector, answer x question."""
    a = [float(v) for v in answer_vec]
    q = [float(v) for v in question_vec]
    return _shared(f, heuristic) + a + [u * v for u, v in zip(a, q, strict=True)]


def reference_inputs(
    f: dict[str, float], heuristic: dict[str, float], answer_vec: Any, question_vec: Any, reference_vec: Any
) -> list[float]:
    """The reference model's input: features, heuristic criterion values, and how the answer compares with the
    reference (MiniLM cosine to it, to the question, their difference, share of its terms covered)."""
    a = [float(v) for v in answer_vec]
    to_reference = _cosine(a, [float(v) for v in reference_vec])
    to_question = _cosine(a, [float(v) for v in question_vec])
    return [*_shared(f, heuristic), to_reference, to_question, to_reference - to_question, float(f["ref_cover"])]


class AnswerRanker:
    def __init__(self, weights: list[float], center: float, scale: float) -> None:
        self.weights = weights
        self.center = center
        self.scale = scale

    @classmethod
    def load(cls, path: Path | None = None, expected: int = QUESTION_SIZE) -> AnswerRanker:
        path = path or MODEL_PATH
        data = json.loads(gzip.decompress(path.read_bytes()))
        if len(data["weights"]) != expected:
            raise ValueError(f"{path}: {len(data['weights'])} weights, expected {expected}")
        return cls(data["weights"], data["center"], data["scale"])

    def raw(self, x: list[float]) -> float:
        return sum(w * v for w, v in zip(self.weights, x, strict=True))

    def quality(self, x: list[float]) -> float:
        """0..1: 0.5 at the median answer of the training pairs."""
        z = (self.raw(x) - self.center) / self.scale
        return 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))


@lru_cache(maxsize=1)
def default_ranker() -> AnswerRanker | None:
    """The shipped model, or None when its file is missing or unreadable (the scorer then uses its rules only)."""
    try:
        return AnswerRanker.load()
    except (OSError, ValueError, KeyError):
        return None


@lru_cache(maxsize=1)
def default_reference_ranker() -> AnswerRanker | None:
    """The shipped reference model, or None when its file is missing or unreadable (the rules decide then)."""
    try:
        return AnswerRanker.load(REFERENCE_MODEL_PATH, REFERENCE_SIZE)
    except (OSError, ValueError, KeyError):
        return None
