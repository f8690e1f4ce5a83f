"""answer_ranker: a small learned answer-quality score for the fallback scorer (question only, no reference).

A linear model over (1) the scorer's own features and heuristic criterion values (nodes/fallback_scorer.py) and
(2) the MiniLM sentence vectors of the answer and of the answer times the question (element-wise), trained by
`python -m evals.train_answer_ranker` on the `tune` pairs of the public graded answers only (evals/README.md), as a
pairwise logistic regression: the better answer of a pair should score higher. Its weights ship as
nodes/models/answer_ranker.json.gz (about 800 numbers). The score is mapped to 0..1 (`quality`), which the scorer
uses as how much an answer is about what was asked. Without the sentence embedder (nodes/embedder.py) or the
weights file the scorer keeps its hand-written rules (`quality` is None).
"""

from __future__ import annotations

import gzip
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

MODEL_PATH = Path(__file__).resolve().parent / "models" / "answer_ranker.json.gz"
# the scorer's features the model reads (answer_features keys), then log(1 + words), then "25 words or fewer"
FEATURES = (
    "semantic", "relevance", "echo", "repetition", "off_topic", "listing", "numbers", "vague", "specific_terms",
    "words_per_sentence", "novel", "star", "first_person", "result_verbs",
)  # fmt: skip
CRITERIA = ("relevance", "structure", "specificity", "impact", "communication")
DIM = 384


def inputs(f: dict[str, float], heuristic: dict[str, float], answer_vec: Any, question_vec: Any) -> list[float]:
    """The model's input vector: features, heuristic criterion values, answer vector, answer x question vector."""
    x = [float(f[k]) for k in FEATURES]
    x += [math.log1p(f["words"]), 1.0 if f["words"] <= 25 else 0.0]
    x += [float(heuristic[c]) for c in CRITERIA]
    a = [float(v) for v in answer_vec]
    q = [float(v) for v in question_vec]
    return x + a + [u * v for u, v in zip(a, q, strict=True)]


class AnswerRanker:
    def __init__(self, weights: list[float], center: float, scale: float) -> None:
        self.weights = weights
        self.center = center
        self.scale = scale

    @classmethod
    def load(cls, path: Path | None = None) -> AnswerRanker:
        path = path or MODEL_PATH
        data = json.loads(gzip.decompress(path.read_bytes()))
        expected = len(FEATURES) + 2 + len(CRITERIA) + 2 * DIM
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
