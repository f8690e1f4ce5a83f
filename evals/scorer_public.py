"""The fallback scorer on public graded answers (evals/sets/scorer_public_pairs.jsonl), per source, split, category.

Each pair is scored twice: as in an interview, where the scorer sees only the question, and with the question's
reference answer (what a good answer contains, as a model-written question can carry). With the sentence
embedder installed (nodes/embedder.py), both are also measured with it in place of the LSA model.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from nodes.fallback_scorer import score_answer
from nodes.semantic_model import Similarity, default_model, embedding_model
from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles_cached
from personas.resolver import AgentTeamResolver

SETS = Path(__file__).resolve().parent / "sets"
SPLITS = ("tune", "test", "heldout")
CATEGORIES = ("easy", "filler", "off_topic", "keyword_stuffed", "concise_good")


def _rate(hit: int, total: int) -> str:
    return f"{hit}/{total} ({100 * hit / total:.1f}%)" if total else "-"


def _short(text: str, n: int = 110) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


def load_pairs() -> list[dict[str, Any]]:
    path = SETS / "scorer_public_pairs.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def judge(
    pair: dict[str, Any], rubric: list[Any], with_reference: bool, model: Similarity | None
) -> tuple[bool, float, float]:
    question = dict(pair["question"])
    if with_reference:
        question["reference"] = pair["reference"]
    better = score_answer(question, pair["better"], "", rubric, "", model=model)["overall"]
    worse = score_answer(question, pair["worse"], "", rubric, "", model=model)["overall"]
    return better > worse, better, worse


def public_scorer_section() -> str:
    rubric = list(
        AgentTeamResolver(load_bundles_cached(str(DEFAULT_BUNDLE_DIR))).resolve("demo", "interview").team.params.rubric
    )
    pairs = load_pairs()
    models: dict[str, Similarity] = {"LSA": default_model()}
    embedder = embedding_model()
    if embedder is not None:
        embedder.vectors([t for p in pairs for t in (p["better"], p["worse"], p["question"]["text"], p["reference"])])
        models["MiniLM"] = embedder
    default = "MiniLM" if "MiniLM" in models else "LSA"  # what the scorer uses here (scorer_model)
    results: dict[tuple[str, str, str, str, str], list[bool]] = defaultdict(list)
    misses: dict[str, list[str]] = defaultdict(list)
    timings: dict[str, float] = {}
    for name, model in models.items():
        start = time.perf_counter()
        for pair in pairs:
            for mode in ("question", "reference"):
                ok, better, worse = judge(pair, rubric, mode == "reference", model)
                key = (name, mode, pair["source"], pair["split"], pair["category"])
                results[key].append(ok)
                # only tune texts are listed: test and held-out texts stay unread (their counts are in the tables)
                if not ok and name == default and mode == "reference" and pair["split"] == "tune":
                    misses[pair["category"]].append(
                        f"{pair['source']} {pair['split']} ({better} vs {worse}, grades {pair['grades'][0]} vs "
                        f"{pair['grades'][1]}): Q: {_short(pair['question']['text'], 70)} — better: "
                        f"{_short(pair['better'], 90)} — worse: {_short(pair['worse'], 90)}"
                    )
        timings[name] = (time.perf_counter() - start) * 1000 / (4 * len(pairs))
    names = list(models)
    header = " | ".join(f"{n}, question only | {n}, with reference" for n in names)
    out = [
        "## Fallback scorer on public graded answers",
        "",
        f"{len(pairs)} pairs built from two public short-answer grading sets (evals/sets/scorer_public_pairs.jsonl; "
        "sources, licences and the transformations behind each category in evals/README.md). `mohler_unt` "
        "assignments 1-8 are `tune` (read while changing the scorer), assignments 9-12 are `test` (other questions, "
        "not read while tuning); `scientsbank` is `heldout` (another source and domain, never read). A pair is "
        "right when the better answer's overall score is higher (a tie is wrong). *Question only*: the scorer sees "
        "the question alone; *with reference* adds the question's reference answer (a model answer). In an "
        "interview the scorer sees neither: it gets an answer key built from the resume and the job "
        "(nodes/answer_keys.py), which these sets have no resume or job for, so for a knowledge question "
        "*question only* is what an interview gets (the answer key is measured in the section above). "
        "Target: ≥ 95% in every category. With MiniLM, both columns use an answer ranker "
        "(nodes/answer_ranker.py: a question-only model, and a reference model for *with reference*), trained on "
        "the `tune` pairs: their `tune` rows are in-sample (the leave-question-out tune rates are in "
        "evals/README.md).",
        "",
        f"| source | split | category | {header} |",
        "| --- | --- | --- | " + " | ".join("---" for _ in range(2 * len(names))) + " |",
    ]
    keys = sorted(
        {(s, sp, c) for (_, _, s, sp, c) in results},
        key=lambda k: (k[0], SPLITS.index(k[1]), CATEGORIES.index(k[2])),
    )
    for source, split, category in keys:
        cells = []
        for n in names:
            for mode in ("question", "reference"):
                v = results[(n, mode, source, split, category)]
                cells.append(_rate(sum(v), len(v)))
        out.append(f"| {source} | {split} | {category} | " + " | ".join(cells) + " |")
    out += [
        "",
        "### By category, the splits not tuned on (`test` and `heldout`)",
        "",
        "The answer rankers were trained on the `tune` pairs, so `tune` rows are left out here: with them in, the "
        "MiniLM rates would read as in-sample fits.",
        "",
        f"| category | {header} |",
    ]
    out.append("| --- | " + " | ".join("---" for _ in range(2 * len(names))) + " |")
    for category in CATEGORIES:
        cells = []
        for n in names:
            for mode in ("question", "reference"):
                v = [
                    b
                    for (m, md, _, split, c), vals in results.items()
                    if m == n and md == mode and c == category and split != "tune"
                    for b in vals
                ]
                cells.append(_rate(sum(v), len(v)))
        out.append(f"| {category} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Mean time per scored answer: "
        + ", ".join(f"{n} {ms:.1f} ms" for n, ms in timings.items())
        + (" (MiniLM vectors were computed in one batch beforehand, not counted)." if len(names) > 1 else "."),
    ]
    if len(names) == 1:
        out.append(
            "The sentence embedder (nodes/embedder.py) is not installed here, so only the LSA model is measured."
        )
    out += [
        "",
        f"The scorer uses {default} here (nodes.semantic_model.scorer_model: MiniLM where its package is installed).",
        "",
        f"### Remaining misses ({default}, with reference; `tune` only), up to 4 per category",
        "",
    ]
    for category in CATEGORIES:
        texts = misses.get(category, [])
        out.append(f"- **{category}** ({len(texts)} missed)")
        out += [f"  - {t}" for t in texts[:4]]
    return "\n".join(out)
