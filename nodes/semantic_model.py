"""The fallback scorer's offline semantic model: LSA word vectors from WordNet, text similarity by meaning.

Trained in the repo by `python -m evals.train_semantic` (evals/README.md); the table ships as
nodes/models/semantic_vectors.json.gz (30k words x 64 int8 numbers) and loads once per process with the standard
library only. A text's vector is the idf-weighted mean of its words' vectors, so "made checkout faster" and
"cut latency" land near each other without sharing a word. Nothing is downloaded.
"""

from __future__ import annotations

import array
import base64
import gzip
import json
import math
import re
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Protocol

CACHE_SIZE = 4096  # sentence vectors kept by EmbeddingSimilarity (384 floats each)
MODEL_PATH = Path(__file__).resolve().parent / "models" / "semantic_vectors.json.gz"
_WORD = re.compile(r"[a-z][a-z0-9]+")
# irregular past forms common in answers; WordNet's base forms are what the table knows
_IRREGULAR = {
    "fell": "fall", "grew": "grow", "led": "lead", "rose": "rise", "built": "build", "ran": "run", "made": "make",
    "took": "take", "gave": "give", "went": "go", "wrote": "write", "chose": "choose", "found": "find",
    "brought": "bring", "taught": "teach", "thought": "think", "kept": "keep", "spent": "spend", "sent": "send",
    "held": "hold", "met": "meet", "won": "win", "began": "begin", "drove": "drive", "told": "tell", "paid": "pay",
    "sold": "sell", "shrank": "shrink", "broke": "break", "got": "get", "left": "leave", "lost": "lose",
    "understood": "understand", "caught": "catch", "bought": "buy", "fought": "fight", "sought": "seek",
    "saw": "see", "did": "do", "data": "data", "children": "child", "people": "people", "men": "man",
}  # fmt: skip
# (suffix, replacement) tried in order, as WordNet's own morphy does for nouns, verbs and adjectives
_SUFFIXES = (
    ("ies", "y"), ("ses", "s"), ("xes", "x"), ("ches", "ch"), ("shes", "sh"), ("es", "e"), ("es", ""), ("s", ""),
    ("ied", "y"), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", ""), ("ier", "y"), ("iest", "y"), ("er", ""),
    ("est", ""), ("er", "e"), ("ly", ""), ("ily", "y"),
)  # fmt: skip
_STOP = frozenset(
    """a an the of to in on for by with from as at or and is are be been being it its that this which who whom
    whose what when where how than then there their they them he she his her we our you your i me my not no
    into out up down over under such some any all each other more most was were had has have do does did so
    but if would could should will can about also just very really""".split()
)


class SemanticModel:
    """Word vectors and idf weights; `similarity(a, b)` is the cosine of the two texts' mean vectors."""

    def __init__(self, words: list[str], idf: list[float], vectors: bytes, dims: int) -> None:
        self.dims = dims
        self._index = {w: i for i, w in enumerate(words)}
        self._idf = idf
        self._vectors = array.array("b", vectors)
        self._lemma_cache: dict[str, int | None] = {}

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> SemanticModel:
        with gzip.open(path, "rb") as fh:
            data = json.loads(fh.read())
        return cls(data["words"], data["idf"], base64.b64decode(data["vectors"]), int(data["dims"]))

    def __len__(self) -> int:
        return len(self._index)

    def word_index(self, word: str) -> int | None:
        """The table row of a word or of its base form ("latencies" -> latency, "reduced" -> reduce), else None."""
        if word in self._lemma_cache:
            return self._lemma_cache[word]
        # an irregular form first: in an answer "fell" is the verb, not WordNet's noun (a hill, a hide)
        found = self._index.get(_IRREGULAR.get(word, word))
        if found is None:
            found = self._index.get(word)
        if found is None:
            for suffix, replacement in _SUFFIXES:
                if word.endswith(suffix) and len(word) - len(suffix) >= 2:
                    base = word[: -len(suffix)] + replacement
                    found = self._index.get(base)
                    if (
                        found is None
                        and suffix in ("ed", "ing", "er", "est")
                        and len(base) > 2
                        and base[-1] == base[-2]
                    ):
                        found = self._index.get(base[:-1])  # "dropped" -> "dropp" -> "drop"
                    if found is not None:
                        break
        self._lemma_cache[word] = found
        return found

    def vector(self, text: str) -> list[float]:
        """The idf-weighted mean of the text's known words' vectors (zeros when none is known)."""
        total = [0.0] * self.dims
        vec, dims = self._vectors, self.dims
        for word in _WORD.findall((text or "").lower()):
            if word in _STOP:
                continue
            i = self.word_index(word)
            if i is None:
                continue
            weight = self._idf[i]
            row = i * dims
            for d in range(dims):
                total[d] += weight * vec[row + d]
        return total

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two texts by meaning, -1..1 (0 when either has no known word)."""
        return cosine(self.vector(a), self.vector(b))


def cosine(u: list[float], v: list[float]) -> float:
    nu = math.sqrt(sum(x * x for x in u))
    nv = math.sqrt(sum(x * x for x in v))
    if not nu or not nv:
        return 0.0
    return sum(x * y for x, y in zip(u, v, strict=True)) / (nu * nv)


@lru_cache(maxsize=1)
def default_model() -> SemanticModel:
    """The committed model, loaded once per process."""
    return SemanticModel.load()


class Similarity(Protocol):
    """What the scorer needs from a semantic model: a similarity of two texts by meaning, on the LSA scale."""

    def similarity(self, a: str, b: str) -> float: ...


class EmbeddingSimilarity:
    """`similarity(a, b)` over sentence embeddings (nodes/embedder.py: all-MiniLM-L6-v2 in numpy), vectors cached.

    An alternative to the LSA model with the same interface; the quality report measures both on the public
    graded pairs (evals/README.md). Its cosines spread differently from LSA's, hence its own ranges."""

    # MiniLM cosines mapped linearly onto the LSA model's scale, so the scorer's thresholds mean the same:
    # unrelated texts sit near 0.1 here (about 0.3 in LSA), closely related ones near 0.6 (0.7 in LSA)
    scale = (0.15, 0.6)
    lsa_scale = (0.35, 0.7)

    def __init__(self) -> None:
        from nodes import embedder  # type: ignore[attr-defined,unused-ignore]

        self._embed = embedder.embed
        # most recent texts' vectors (a session re-scores against the same question, job and resume)
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def vectors(self, texts: list[str]) -> None:
        """Embed and cache many texts at once (one batched forward pass instead of one per text)."""
        with self._lock:
            todo = sorted({k for k in map(_key, texts) if k and k not in self._cache})
        if todo:
            rows = self._embed(todo)
            with self._lock:
                for text, row in zip(todo, rows, strict=True):
                    self._cache[text] = [float(x) for x in row]
                while len(self._cache) > max(CACHE_SIZE, len(todo)):
                    self._cache.popitem(last=False)

    def vector(self, text: str) -> list[float] | None:
        """The unit-length sentence vector of `text` (cached), None for an empty text."""
        key = _key(text)
        if not key:
            return None
        self.vectors([key])
        with self._lock:
            row = self._cache.get(key)
        return row if row is not None else [float(x) for x in self._embed([key])[0]]

    def similarity(self, a: str, b: str) -> float:
        a, b = _key(a), _key(b)
        if not a or not b:
            return 0.0
        self.vectors([a, b])
        with self._lock:
            va = self._cache.get(a)
            vb = self._cache.get(b)
        if va is None or vb is None:  # evicted by another thread meanwhile: embed these two directly
            va, vb = ([float(x) for x in row] for row in self._embed([a, b]))
        raw = cosine(va, vb)
        (x0, x1), (y0, y1) = self.scale, self.lsa_scale
        return y0 + (raw - x0) * (y1 - y0) / (x1 - x0)


def _key(text: str) -> str:
    return " ".join((text or "").split())


@lru_cache(maxsize=1)
def embedding_model() -> EmbeddingSimilarity | None:
    """The sentence-embedding backend when nodes/embedder.py and its model package are installed, else None."""
    try:
        from nodes import embedder  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    return EmbeddingSimilarity() if embedder.available() else None


def scorer_model() -> Similarity:
    """What the fallback scorer uses: MiniLM sentence embeddings where installed (better on every category of the
    public graded pairs, docs/quality.md), else the LSA model."""
    return embedding_model() or default_model()
