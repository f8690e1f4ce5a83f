"""Train the guardrail's embedding head on the `train` split; choose its threshold on `val`; write the shipped weights.

The head is a multinomial logistic regression (numpy, full-batch gradient descent with a fixed number of steps,
so the same set gives the same file) over the 384-dimensional all-MiniLM-L6-v2 vectors of nodes/embedder.py, with
the classes of the n-gram classifier. Only rows with split == "train" are fitted. The block threshold is chosen on
`val` together with the n-gram classifier's (`joint_thresholds`): the most val attacks blocked by the reviewer's
offline layers with at most 2% of the benign val messages blocked. Every row of the set is embedded (one cache file
in evals/.cache; ~10 minutes of CPU here), but `test`, `dev` and `heldout` rows are neither fitted nor looked at,
except by `--loso`, which prints leave-one-source-out rates on val + test.

    python -m evals.train_embedding_head            # writes nodes/models/guardrail_embedding_head.json.gz
    python -m evals.train_embedding_head --loso     # also: leave-one-source-out block rates (printed only)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from evals.train_classifier import CLASSES, SET
from nodes.embedder import embed
from nodes.safety_embedding import HEAD_PATH, EmbeddingHead

CACHE = Path(__file__).resolve().parent / ".cache"
STEPS = 2000
LEARNING_RATE = 2.0
L2 = 1e-5
MAX_VAL_FALSE_BLOCKS = 0.02


def load_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines()]


def vectors(texts: list[str]) -> np.ndarray:
    """The embeddings of `texts`, cached in evals/.cache under a hash of all of them.

    Embedded in chunks of 256 (longest texts first), each chunk saved as it is done: an interrupted run resumes.
    """
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"guardrail_vectors_{key}.npy"
    if path.exists():
        return np.load(path)
    CACHE.mkdir(exist_ok=True)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    chunks = [order[i : i + 256] for i in range(0, len(order), 256)]
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for c, idx in enumerate(chunks):
        part = CACHE / f"part_{key}_{c}.npy"
        if not part.exists():
            np.save(part, embed([texts[i] for i in idx]))
        out[idx] = np.load(part)
    np.save(path, out)
    for c in range(len(chunks)):
        (CACHE / f"part_{key}_{c}.npy").unlink()
    return out


def labels(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([CLASSES.index("ok" if r["label"] == "benign" else r["category"]) for r in rows])


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced softmax regression: each class weighs as much in total (a rare class is not drowned)."""
    k = len(CLASSES)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    sample_w = (len(y) / (k * np.maximum(counts, 1)))[y]
    sample_w /= sample_w.sum()
    onehot = np.eye(k)[y]
    w = np.zeros((x.shape[1], k))
    b = np.zeros(k)
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)
    x64 = x.astype(np.float64)
    for step in range(1, STEPS + 1):  # Adam, full batch
        logits = x64 @ w + b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) * sample_w[:, None]
        grad_w = x64.T @ g + L2 * w
        grad_b = g.sum(0)
        for param, grad, m, v in ((w, grad_w, m_w, v_w), (b, grad_b, m_b, v_b)):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            param -= LEARNING_RATE * 0.01 * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return w, b


def choose_threshold(attack_scores: np.ndarray, is_attack: np.ndarray) -> float:
    benign = attack_scores[~is_attack]
    for t in np.round(np.arange(0.50, 1.0, 0.01), 2):
        if benign.size == 0 or (benign >= t).mean() <= MAX_VAL_FALSE_BLOCKS:
            return float(t)
    return 0.99


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loso", action="store_true", help="leave-one-source-out rates on the evaluation splits")
    args = parser.parse_args()
    rows = load_rows()
    x = vectors([r["text"] for r in rows])
    y = labels(rows)
    split = np.array([r["split"] for r in rows])
    train, val = split == "train", split == "val"
    w, b = fit(x[train], y[train])
    head = EmbeddingHead(CLASSES, w.astype(np.float32), b.astype(np.float32))
    scores = head.attack_scores(x)
    threshold = choose_threshold(scores[val], y[val] != 0)
    val_texts = [r["text"] for r, v in zip(rows, val, strict=True) if v]
    clf_t, emb_t, summary = joint_thresholds(val_texts, scores[val], y[val] != 0)
    payload = {
        "classes": CLASSES,
        "bias": [round(float(v), 5) for v in b],
        "weights": [[round(float(v), 5) for v in row] for row in w],
        "val_threshold_alone": threshold,
        "val_thresholds_with_rules_and_classifier": {"classifier": clf_t, "embedding": emb_t},
        "trained_on": int(train.sum()),
    }
    HEAD_PATH.write_bytes(gzip.compress(json.dumps(payload, separators=(",", ":")).encode(), mtime=0))
    att, ben = val & (y != 0), val & (y == 0)
    print(
        f"val, the layer alone at {threshold:.2f}: attacks {(scores[att] >= threshold).mean():.3f}, "
        f"benign {(scores[ben] >= threshold).mean():.3f}"
    )
    print(f"threshold on val, alone: {threshold}; with the rules and the classifier: {summary}; wrote {HEAD_PATH}")
    if args.loso:
        leave_one_source_out(rows, x, y, split)


def joint_thresholds(texts: list[str], emb_scores: np.ndarray, is_attack: np.ndarray) -> tuple[float, float, str]:
    """The n-gram classifier's and the embedding layer's block thresholds, chosen together on `val` rows.

    The reviewer's order (rules, classifier, embedding) with the veneo tenant's other settings; a grid of classifier
    thresholds x embedding thresholds; the pair that blocks the most val attacks while at most 2% of the benign val
    messages are blocked (ties: fewer benign blocked, then the higher thresholds).
    """
    from nodes.safety_reviewer import classifier_verdict
    from nodes.safety_rules import check_user_message
    from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles_cached
    from personas.resolver import AgentTeamResolver

    run = AgentTeamResolver(load_bundles_cached(str(DEFAULT_BUNDLE_DIR))).resolve("veneo", "veneo_chat")
    safety = run.persona("safety_reviewer").safety
    rules = np.array([check_user_message(t, safety) is not None for t in texts])
    best: tuple[int, int, float, float] | None = None
    lines = []
    for clf_t in (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0):
        conf = safety.classifier.model_copy(update={"block_threshold": clf_t})
        s = safety.model_copy(update={"classifier": conf})
        clf = np.array([classifier_verdict(t, s, "input")[1] is not None for t in texts])
        for emb_t in np.round(np.arange(0.5, 1.0, 0.01), 2):
            blocked = rules | clf | (emb_scores >= emb_t)
            false_blocks = int((blocked & ~is_attack).sum())
            if false_blocks > MAX_VAL_FALSE_BLOCKS * (~is_attack).sum():
                continue
            caught = int((blocked & is_attack).sum())
            key = (caught, -false_blocks, clf_t, float(emb_t))
            if best is None or key > best:
                best = key
        lines.append(f"classifier {clf_t}: best so far {best}")
    assert best is not None
    caught, neg_fb, clf_t, emb_t = best
    summary = (
        f"val: {caught}/{int(is_attack.sum())} attacks, {-neg_fb}/{int((~is_attack).sum())} benign blocked "
        f"at classifier {clf_t}, embedding {emb_t}"
    )
    return clf_t, emb_t, summary


def leave_one_source_out(rows: list[dict[str, Any]], x: np.ndarray, y: np.ndarray, split: np.ndarray) -> None:
    """For each attack source family with training rows: train without it, block rate on its evaluation rows."""
    family = np.array([r["source"].split(":")[0] + ":" + r["source"].split(":")[1].split("_")[0] for r in rows])
    train = split == "train"
    for fam in sorted(set(family[train & (y != 0)])):
        keep = train & (family != fam)
        w, b = fit(x[keep], y[keep])
        head = EmbeddingHead(CLASSES, w.astype(np.float32), b.astype(np.float32))
        s = head.attack_scores(x)
        val = split == "val"
        t = choose_threshold(s[val & (family != fam)], y[val & (family != fam)] != 0)
        ev = np.isin(split, ("val", "test")) & (family == fam) & (y != 0)
        ben = np.isin(split, ("val", "test")) & (y == 0)
        print(
            f"without {fam}: its eval attacks blocked {(s[ev] >= t).mean():.3f} (n={ev.sum()}), "
            f"benign val+test blocked {(s[ben] >= t).mean():.3f}, threshold {t}"
        )


if __name__ == "__main__":
    main()
