"""The safety reviewer's classifier layer: a small linear model over word and character n-grams, pure Python.

Trained in the repo by `python -m evals.train_classifier` on public red-team and benign text (evals/README.md);
the weights ship as nodes/models/guardrail_classifier.json.gz and load once per process. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MODEL_PATH = Path(__file__).resolve().parent / "models" / "guardrail_classifier.json.gz"
BENIGN = "ok"
# long jailbreaks announce themselves early: reading the opening keeps every message within a few milliseconds
MAX_WORDS = 220
MAX_CHARS = 700
_TOKEN = re.compile(r"(?:[^\W_]|')+")  # letters and digits of any script (Cyrillic, Arabic, CJK, ...)


_UNSPLIT = str.maketrans({"ı": "i", "ł": "l", "đ": "d", "ø": "o"})


def fold(text: str) -> str:
    """Lower case without accents ("Révèle" -> "revele", Turkish "İ"/"ı" -> "i"): one spelling per word."""
    # letters NFKD does not split into a base and an accent: Turkish dotless i, Polish l, Vietnamese d, Nordic o
    lowered = text.lower().translate(_UNSPLIT)
    if lowered.isascii():
        return lowered
    return "".join(c for c in unicodedata.normalize("NFKD", lowered) if not unicodedata.combining(c))


# a customer's past tense that folding would turn into an imperative: Spanish "Ignoré"/"olvidé" (I ignored, I forgot),
# French "ignoré"/"oublié" (ignored, forgotten); read as the English past tense before folding
PAST_TENSE = re.compile(r"\b(ignor|olvid|oubli)(?:é|ó|ée|és|ées)(?!\w)", re.I)


def _past_in_english(match: re.Match[str]) -> str:
    return "ignored" if match.group(1).lower() == "ignor" else "forgot"


def features(text: str) -> list[str]:
    """Binary features: word unigrams and bigrams, and character 4-grams inside words (with boundary marks).

    Words are runs of letters and digits of any script, case- and accent-folded (`fold`), past tenses that fold into
    an imperative read as English past tenses (`PAST_TENSE`).
    """
    lowered = fold(PAST_TENSE.sub(_past_in_english, text))
    tokens = _TOKEN.findall(lowered)[:MAX_WORDS]
    feats = {"w:" + t for t in tokens}
    feats.update("b:" + a + "_" + b for a, b in itertools.pairwise(tokens))
    for token in _TOKEN.findall(lowered[:MAX_CHARS]):
        padded = f" {token} "
        feats.update("c:" + padded[i : i + 4] for i in range(len(padded) - 3))
    return sorted(feats)


@dataclass(frozen=True)
class ClassifierVerdict:
    category: str  # ok | jailbreak | system_prompt_extraction | harmful | hate
    attack_score: float  # probability that the message is any kind of attack
    scores: dict[str, float]


class GuardrailClassifier:
    """Multinomial logistic regression; weights keyed by feature name, one weight per class."""

    def __init__(self, classes: list[str], bias: list[float], weights: dict[str, list[float]]):
        self.classes = classes
        self.bias = bias
        self.weights = weights

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> GuardrailClassifier:
        data = json.loads(gzip.decompress(path.read_bytes()))
        return cls(data["classes"], data["bias"], data["weights"])

    def predict(self, text: str) -> ClassifierVerdict:
        feats = features(text)
        scale = 1.0 / math.sqrt(len(feats)) if feats else 0.0
        logits = list(self.bias)
        for feat in feats:
            w = self.weights.get(feat)
            if w is not None:
                for k, value in enumerate(w):
                    logits[k] += value * scale
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        total = sum(exps)
        scores = {c: e / total for c, e in zip(self.classes, exps, strict=True)}
        attack = 1.0 - scores.get(BENIGN, 0.0)
        category = max((c for c in self.classes if c != BENIGN), key=lambda c: scores[c])
        return ClassifierVerdict(category, round(attack, 4), {c: round(s, 4) for c, s in scores.items()})


@lru_cache(maxsize=1)
def default_classifier() -> GuardrailClassifier:
    return GuardrailClassifier.load()
