"""nodes/embedder.py: the numpy all-MiniLM-L6-v2 gives the vectors sentence-transformers gives.

The reference vectors in fixtures/embedder_reference.json were computed with torch 2.13.0 + sentence-transformers
on the same package's weights (evals/embedder_reference.py says how), with max_seq_length 128 like this embedder.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from nodes import embedder

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "embedder_reference.json"


def _reference() -> tuple[list[str], np.ndarray]:
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data["sentences"], np.asarray(data["vectors"], dtype=np.float32)


def test_matches_sentence_transformers_reference() -> None:
    sentences, reference = _reference()
    assert any(len(s.split()) > 100 for s in sentences)  # one text is cut at 128 word pieces on both sides
    vectors = embedder.embed(sentences)
    assert vectors.shape == (len(sentences), embedder.DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() > 0.999, dict(zip(sentences, cosines.round(5).tolist(), strict=True))


def test_one_at_a_time_equals_batched() -> None:
    sentences, _ = _reference()
    batched = embedder.embed(sentences)
    single = np.vstack([embedder.embed([s]) for s in sentences])
    np.testing.assert_allclose(single, batched, atol=1e-5)


def test_meaning_not_words() -> None:
    """A paraphrase with few words in common is nearer than a text sharing words with another meaning."""
    a, b, c = embedder.embed(
        [
            "How do I kill a python process?",
            "How can I terminate a running program on Linux?",
            "How do I kill a python snake in my garden?",
        ]
    )
    assert float(a @ b) > float(a @ c) + 0.05


def test_empty_input_and_threads() -> None:
    assert embedder.embed([]).shape == (0, embedder.DIM)
    texts = [f"message number {i} about a refund" for i in range(8)]
    expected = embedder.embed(texts)
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = embedder.embed(texts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in results.values():
        np.testing.assert_allclose(out, expected, atol=1e-6)
    assert embedder.default_embedder() is embedder.default_embedder()
