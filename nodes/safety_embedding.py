"""The safety reviewer's embedding layer: a linear head over all-MiniLM-L6-v2 sentence vectors (nodes/embedder.py).

The n-gram classifier (nodes/safety_classifier.py) reads words; this layer reads meaning, so it generalises better
to phrasings it never saw. The head (multinomial logistic regression, 5 classes x 384 weights) is trained by
`python -m evals.train_embedding_head` on the `train` split only and ships as
nodes/models/guardrail_embedding_head.json.gz; the vectors come from the locally installed model package, loaded on
the first message a process screens (about 0.3 s and 120 MB), never downloaded.
"""

from __future__ import annotations

import gzip
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nodes.safety_classifier import BENIGN, ClassifierVerdict

if TYPE_CHECKING:  # numpy is imported on first use: a server that never screens a message does not load it
    import numpy as np

HEAD_PATH = Path(__file__).resolve().parent / "models" / "guardrail_embedding_head.json.gz"


@dataclass(frozen=True)
class EmbeddingHead:
    classes: list[str]
    weights: np.ndarray  # (384, classes)
    bias: np.ndarray  # (classes,)

    @classmethod
    def load(cls, path: Path = HEAD_PATH) -> EmbeddingHead:
        import numpy as np

        data = json.loads(gzip.decompress(path.read_bytes()))
        return cls(data["classes"], np.asarray(data["weights"], np.float32), np.asarray(data["bias"], np.float32))

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        import numpy as np

        logits = vectors @ self.weights + self.bias
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def attack_scores(self, vectors: np.ndarray) -> np.ndarray:
        return 1.0 - self.probabilities(vectors)[:, self.classes.index(BENIGN)]

    def verdict(self, vector: np.ndarray) -> ClassifierVerdict:
        p = self.probabilities(vector[None, :])[0]
        scores = {c: float(p[i]) for i, c in enumerate(self.classes)}
        attack = 1.0 - scores[BENIGN]
        category = max((c for c in self.classes if c != BENIGN), key=lambda c: scores[c])
        return ClassifierVerdict(category, round(attack, 4), {c: round(s, 4) for c, s in scores.items()})

    def predict(self, text: str) -> ClassifierVerdict:
        from nodes.embedder import embed

        return self.verdict(embed([text])[0])


_lock = threading.Lock()
_head: EmbeddingHead | None = None


def default_head() -> EmbeddingHead:
    global _head
    if _head is None:
        with _lock:
            if _head is None:
                _head = EmbeddingHead.load()
    return _head
