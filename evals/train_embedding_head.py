"""Train the guardrail's embedding head on the `train` split; choose its threshold on `val`; write the shipped weights.

The head is a multinomial logistic regression (numpy, full-batch gradient descent with a fixed number of steps,
so the same set gives the same file) over the 384-dimensional all-MiniLM-L6-v2 vectors of nodes/embedder.py, with
the classes of the n-gram classifier. Only rows with split == "train" are fitted. The block threshold is chosen on
`val` together with the n-gram classifier's (`joint_thresholds`): the most val attacks blocked by the reviewer's
offline layers with at most 2% of the benign val messages blocked. The train and val rows are embedded (one cache
file in evals/.cache; ~10 minutes of CPU on a quiet machine); `test`, `dev` and `heldout` rows are neither embedded,
fitted nor looked at, except by `--loso`, which embeds every row and prints leave-one-source-out rates on val + test.

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

from evals.train_classifier import CLASSES, NOT_FITTED_SOURCES, SET
from nodes.embedder import embed
from nodes.safety_embedding import HEAD_PATH, EmbeddingHead
from nodes.safety_reviewer import extraction_vetoed

CACHE = Path(__file__).resolve().parent / ".cache"
STEPS = 2000
LEARNING_RATE = 2.0
L2 = 1e-5
MAX_VAL_FALSE_BLOCKS = 0.02


def load_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines()]


def vectors(texts: list[str]) -> np.ndarray:
    """The MiniLM embeddings of `texts`, cached per text in evals/.cache (`cached_vectors`)."""
    return cached_vectors(CACHE / "guardrail_vectors_by_text.npz", texts, embed)


def cached_vectors(path: Path, texts: list[str], encode: Any, dim: int = 384) -> np.ndarray:
    """The vectors `encode` gives `texts`, cached per text in the .npz file `path` (keyed by a hash of the text).

    Only texts not in the cache are encoded (in chunks of 256, longest first, the cache saved after each chunk):
    adding rows to the set encodes only the new rows, and an interrupted run resumes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    cache: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as data:
            cache = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
    keys = [hashlib.sha256(t.encode()).hexdigest()[:24] for t in texts]
    missing = sorted({k: i for i, k in enumerate(keys) if k not in cache}.values(), key=lambda i: -len(texts[i]))
    for start in range(0, len(missing), 256):
        idx = missing[start : start + 256]
        for i, vector in zip(idx, encode([texts[i] for i in idx]), strict=True):
            cache[keys[i]] = vector
        np.savez(path, keys=np.array(list(cache)), vectors=np.stack(list(cache.values())))
    return np.stack([cache[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, dim), np.float32)


# chatterbot-corpus's 5,109 short chat lines would be 60% of the benign class: at full weight the head blocked 82.8%
# of val attacks at its 1.6% benign threshold, with one line in five 90.0% (without them 90.7%, but then the head
# sees no benign message in most of the languages the new attack sources use)
CHATTERBOT_KEEP_ONE_IN = 5

# aicu-scanner's 19 toxicity probes (15 of them hate) are not fitted either (ninth pass): the hate class is small (107
# fitted rows) and class balancing gives each of its rows ~15 times the weight of an unweighted row, so probes such as
# "retaliate against an employee who filed a discrimination complaint" (the hate rows nearest "Who can I complain
# to?") turned short complaint questions into hate (0.999; without them 0.970, below `confirm_below`, and val at the
# shipped thresholds blocks more attacks and fewer benign messages: evals/README.md, ninth pass)
HEAD_NOT_FITTED_SOURCES = (*NOT_FITTED_SOURCES, "aicu:toxicity")


def fitted_rows(rows: list[dict[str, Any]]) -> np.ndarray:
    """The rows the head is fitted on: `train` less HEAD_NOT_FITTED_SOURCES, with one chatterbot-corpus line in
    CHATTERBOT_KEEP_ONE_IN."""
    keep = []
    seen = 0
    for row in rows:
        ok = row["split"] == "train" and row["source"] not in HEAD_NOT_FITTED_SOURCES
        if ok and row["source"].startswith("chatterbot_corpus:"):
            ok = seen % CHATTERBOT_KEEP_ONE_IN == 0
            seen += 1
        keep.append(ok)
    return np.array(keep)


def labels(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([CLASSES.index("ok" if r["label"] == "benign" else r["category"]) for r in rows])


def fit(x: np.ndarray, y: np.ndarray, l2: float = L2, balance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced softmax regression: each class weighs as much in total (a rare class is not drowned).

    `balance` is the power of the class weights (1: fully balanced, 0.5: square-root, 0: unweighted); `l2` the
    weight decay (evals.loso_guardrail compares settings)."""
    k = len(CLASSES)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    sample_w = ((len(y) / (k * np.maximum(counts, 1))) ** balance)[y]
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
        grad_w = x64.T @ g + l2 * w
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
    if not args.loso:  # fitting and thresholds read train and val only: the evaluation rows need no vectors
        rows = [r for r in rows if r["split"] in ("train", "val")]
    x = vectors([r["text"] for r in rows])
    y = labels(rows)
    split = np.array([r["split"] for r in rows])
    train, val = fitted_rows(rows), split == "val"
    w, b = fit(x[train], y[train])
    head = EmbeddingHead(CLASSES, w.astype(np.float32), b.astype(np.float32))
    scores = head.attack_scores(x)
    threshold = choose_threshold(scores[val], y[val] != 0)
    val_texts = [r["text"] for r, v in zip(rows, val, strict=True) if v]
    extra = [r["source"].startswith("chatterbot_corpus:") for r, v in zip(rows, val, strict=True) if v]
    # the reviewer's short-extraction veto (nodes/safety_reviewer.extraction_vetoed) applies to the head's block too
    probs = head.probabilities(x[val])
    attack_classes = [c for c in CLASSES if c != "ok"]
    categories = [attack_classes[i] for i in probs[:, [CLASSES.index(c) for c in attack_classes]].argmax(1)]
    vetoed = np.array([extraction_vetoed(c, t) for c, t in zip(categories, val_texts, strict=True)])
    chosen, summary = joint_thresholds(val_texts, np.where(vetoed, 0.0, scores[val]), y[val] != 0, extra)
    payload = {
        "classes": CLASSES,
        "bias": [round(float(v), 5) for v in b],
        "weights": [[round(float(v), 5) for v in row] for row in w],
        "val_threshold_alone": threshold,
        "val_thresholds_with_rules_and_classifier": chosen,
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


def joint_thresholds(
    texts: list[str], emb_scores: np.ndarray, is_attack: np.ndarray, extra_benign: list[bool]
) -> tuple[dict[str, float], str]:
    """The offline layers' thresholds, chosen together on `val` rows (`emb_scores`: 0 where the veto applies).

    The reviewer's order (rules, classifier, embedding; nodes/safety_reviewer.screen_offline) with the veneo tenant's
    other settings, over a grid of: the classifier's block threshold; the head's block threshold; `confirm_below`,
    under which a block by the head needs the classifier's agreement (0: never); the classifier score that agrees
    (`classifier_agreement`). The setting that blocks the most val attacks while at most 2% of the benign val messages
    are blocked wins (ties: fewer benign blocked, then no agreement needed, then the higher thresholds).
    """
    from nodes.safety_reviewer import classifier_verdict
    from nodes.safety_rules import check_user_message
    from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles_cached
    from personas.resolver import AgentTeamResolver

    run = AgentTeamResolver(load_bundles_cached(str(DEFAULT_BUNDLE_DIR))).resolve("veneo", "veneo_chat")
    safety = run.persona("safety_reviewer").safety
    rules = np.array([check_user_message(t, safety) is not None for t in texts])
    # the 2% budget is counted on the benign val rows of the other sources; chatterbot-corpus's ~1,000 short chat lines
    # must be passed too (their false blocks count) but do not widen the budget
    budget = MAX_VAL_FALSE_BLOCKS * (~is_attack & ~np.asarray(extra_benign, bool)).sum()
    best: tuple[Any, ...] | None = None
    for clf_t in (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0):
        conf = safety.classifier.model_copy(update={"block_threshold": clf_t})
        s = safety.model_copy(update={"classifier": conf})
        verdicts = [classifier_verdict(t, s, "input") for t in texts]
        clf = np.array([d is not None for _, d in verdicts])
        clf_scores = np.array([v.evidence or 0.0 for v, _ in verdicts])
        for below in (0.0, 0.97, 0.98, 0.99, 0.995, 1.01):
            for agree in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5) if below else (0.3,):
                unconfirmed = (emb_scores < below) & (clf_scores < agree)
                for emb_t in np.round(np.arange(0.5, 1.0, 0.01), 2):
                    blocked = rules | clf | ((emb_scores >= emb_t) & ~unconfirmed)
                    false_blocks = int((blocked & ~is_attack).sum())
                    if false_blocks > budget:
                        continue
                    caught = int((blocked & is_attack).sum())
                    key = (caught, -false_blocks, -below, clf_t, float(emb_t), agree)
                    if best is None or key > best:
                        best = key
    assert best is not None
    caught, neg_fb, neg_below, clf_t, emb_t, agree = best
    chosen = {"classifier": clf_t, "embedding": emb_t, "confirm_below": -neg_below, "classifier_agreement": agree}
    summary = (
        f"val: {caught}/{int(is_attack.sum())} attacks, {-neg_fb}/{int((~is_attack).sum())} benign blocked at {chosen}"
    )
    return chosen, summary


def leave_one_source_out(rows: list[dict[str, Any]], x: np.ndarray, y: np.ndarray, split: np.ndarray) -> None:
    """For each attack source family with training rows: train without it, block rate on its evaluation rows."""
    family = np.array([r["source"].split(":")[0] + ":" + r["source"].split(":")[1].split("_")[0] for r in rows])
    train = fitted_rows(rows)
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
