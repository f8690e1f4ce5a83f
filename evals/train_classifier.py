"""Train the guardrail classifier on the `train` split of evals/sets/guardrail.jsonl; writes the shipped weights.

`python -m evals.train_classifier` is deterministic (fixed seed, sorted features): the same set gives the same
file. Only rows with split == "train" are read; test, dev and held-out rows never reach training.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from collections import Counter
from pathlib import Path

from nodes.safety_classifier import BENIGN, MODEL_PATH, features

SET = Path(__file__).resolve().parent / "sets" / "guardrail.jsonl"
CLASSES = [BENIGN, "jailbreak", "system_prompt_extraction", "harmful", "hate"]
EPOCHS = 12
LEARNING_RATE = 0.6
L2 = 1e-5
MIN_DF = 2
KEEP_ABOVE = 0.01  # weights smaller than this change no decision: dropped to keep the file small
# train rows of these sources are not fitted (by this model or the embedding head), only measured on val: fitted,
# aicu-scanner's extraction payloads (configuration dumps as JSON, YAML, tables, lists) taught both models that a
# request about a reply's format is extraction ("Could you format your reply as a list, please?" blocked, "Describe
# your restrictions with emoji" let through; ninth pass, evals/README.md)
NOT_FITTED_SOURCES = ("aicu:extraction",)


def load_training_rows() -> list[tuple[str, int]]:
    rows = []
    for line in SET.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["split"] != "train" or row["source"] in NOT_FITTED_SOURCES:
            continue
        category = BENIGN if row["label"] == "benign" else row["category"]
        rows.append((row["text"], CLASSES.index(category)))
    return rows


def train(rows: list[tuple[str, int]]) -> dict[str, object]:
    docs = [(features(text), label) for text, label in rows]
    df = Counter(f for feats, _ in docs for f in feats)
    vocab = {f for f, n in df.items() if n >= MIN_DF}
    docs = [([f for f in feats if f in vocab], label) for feats, label in docs]
    counts = Counter(label for _, label in docs)
    # balance the classes: a rare class (extraction) weighs as much in total as a common one
    class_weight = {k: max(1.0, len(docs) / (len(CLASSES) * n)) for k, n in counts.items()}
    k_classes = len(CLASSES)
    weights: dict[str, list[float]] = {}
    bias = [0.0] * k_classes
    rng = random.Random(11)
    order = list(range(len(docs)))
    for epoch in range(EPOCHS):
        rng.shuffle(order)
        lr = LEARNING_RATE / (1 + epoch)
        for i in order:
            feats, label = docs[i]
            scale = 1.0 / math.sqrt(len(feats)) if feats else 0.0
            logits = list(bias)
            rows_w = [weights.setdefault(f, [0.0] * k_classes) for f in feats]
            for w in rows_w:
                for k in range(k_classes):
                    logits[k] += w[k] * scale
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            total = sum(exps)
            grad = [(e / total - (1.0 if k == label else 0.0)) * class_weight[label] for k, e in enumerate(exps)]
            for k in range(k_classes):
                bias[k] -= lr * grad[k] * 0.1
            for w in rows_w:
                for k in range(k_classes):
                    w[k] -= lr * (grad[k] * scale + L2 * w[k])
    kept = {f: [round(v, 3) for v in w] for f, w in sorted(weights.items()) if max(abs(v) for v in w) >= KEEP_ABOVE}
    return {"classes": CLASSES, "bias": [round(b, 4) for b in bias], "weights": kept}


def main() -> None:
    rows = load_training_rows()
    model = train(rows)
    MODEL_PATH.parent.mkdir(exist_ok=True)
    payload = json.dumps(model, sort_keys=True, separators=(",", ":")).encode()
    MODEL_PATH.write_bytes(gzip.compress(payload, mtime=0))
    print(f"trained on {len(rows)} messages; {len(model['weights'])} features; wrote {MODEL_PATH}")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
