"""Build evals/sets/scorer_public_pairs.jsonl: graded answer pairs from two public short-answer grading sets.

Two stages (neither is part of `make eval`; both outputs are committed):

- `python -m evals.build_scorer_sets extract --mirror DIR` reads a snapshot of the public GitHub repository
  dbbrandt/short_answer_granding_capstone_project (a git directory; commit `SOURCE_COMMIT`) and writes the graded
  answers it needs to evals/sources/: `mohler_unt.jsonl` (the UNT Computer Science short-answer set v2.0,
  Mohler, Bunescu & Mihalcea 2011: 80 questions, answers graded 0-5, the mean of two graders) and
  `scientsbank_seb.jsonl` (a SciEntsBank subset, Dzikovska et al. 2012: 4 science questions, answers labelled
  correct/incorrect). One JSON line per question: {qid, question, reference, answers: [{text, grade}]}.
- `python -m evals.build_scorer_sets` builds the pairs from those files, deterministically.

Pairs (the better answer first; evals/README.md documents each transformation):

- `easy`: two real answers to the same question whose grades are at least 2 apart (Mohler, 0-5) or correct vs
  incorrect (SciEntsBank).
- `filler`: a top-graded answer vs the question's own words padded into long, empty sentences.
- `off_topic`: a top-graded answer vs a top-graded answer to a question from another assignment, with a sentence
  of numbers added (numbers must not buy an off-topic answer a higher score).
- `keyword_stuffed`: a top-graded answer vs the reference answer's and question's keywords as a comma list.
- `concise_good`: a short top-graded answer vs a long low-graded answer to the same question.

Splits: Mohler assignments 1-8 are `tune` (read while changing the scorer); Mohler assignments 9-12 are `test`
(other questions of the same source, not read while tuning); SciEntsBank is `heldout` (another source and domain,
never read: only its field names and counts were looked at).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "sources"
OUT = HERE / "sets" / "scorer_public_pairs.jsonl"
SOURCE_REPO = "dbbrandt/short_answer_granding_capstone_project"
SOURCE_COMMIT = "c240cee64509b35009c0da789675e66f049fe2d8"
MOHLER_DIR = "data/source_data/ShortAnswerGrading_v2.0/data"
PAIRS_PER_QUESTION = 6  # easy pairs per question: keeps one question from dominating
TOP, LOW = 4.5, 2.5  # Mohler grades that count as top-graded / low-graded


# ------------------------------------------------------------------------------------------------- extract


def _git_show(mirror: Path, path: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(mirror), "show", f"{SOURCE_COMMIT}:{path}"],
        check=True,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    ).stdout


def _clean(text: str) -> str:
    text = html.unescape(re.sub(r"<br\s*/?>", " ", text, flags=re.I))
    return " ".join(text.split())


def _by_id(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        qid, _, rest = line.strip().partition(" ")
        if qid:
            out[qid] = _clean(rest)
    return out


def extract(mirror: Path) -> None:
    SOURCES.mkdir(exist_ok=True)
    files = [f.strip() for f in _git_show(mirror, f"{MOHLER_DIR}/docs/files").splitlines()]
    # lines starting with '#' are the selection/ordering questions the authors leave out; so do we
    qids = [f for f in files if f and not f.startswith("#")]
    questions = _by_id(_git_show(mirror, f"{MOHLER_DIR}/raw/questions"))
    references = _by_id(_git_show(mirror, f"{MOHLER_DIR}/raw/answers"))
    lines = []
    for qid in qids:
        answers = [_clean(a.partition(" ")[2]) for a in _git_show(mirror, f"{MOHLER_DIR}/raw/{qid}").splitlines()]
        grades = [float(g) for g in _git_show(mirror, f"{MOHLER_DIR}/scores/{qid}/ave").split()]
        if len(answers) != len(grades):
            raise SystemExit(f"mohler {qid}: {len(answers)} answers but {len(grades)} grades")
        row = {
            "qid": qid,
            "question": questions[qid],
            "reference": references[qid],
            "answers": [{"text": a, "grade": g} for a, g in zip(answers, grades, strict=True) if a],
        }
        lines.append(json.dumps(row, ensure_ascii=False))
    (SOURCES / "mohler_unt.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    seb: dict[str, dict[str, Any]] = {}
    for r in csv.DictReader(io.StringIO(_git_show(mirror, "data/seb/answers.csv"))):
        q = seb.setdefault(
            r["id"],
            {
                "qid": f"seb-{r['id']}",
                "question": _clean(r["question"]),
                "reference": _clean(r["reference_answer"]),
                "answers": [],
            },
        )
        q["answers"].append({"text": _clean(r["answer"]), "grade": float(r["correct"])})
    (SOURCES / "scientsbank_seb.jsonl").write_text(
        "\n".join(json.dumps(q, ensure_ascii=False) for q in seb.values()) + "\n", encoding="utf-8"
    )
    print(f"wrote {len(lines)} Mohler questions and {len(seb)} SciEntsBank questions to {SOURCES}")


# --------------------------------------------------------------------------------------------------- build


def _h(*parts: str) -> int:
    return int(hashlib.sha256("\x1f".join(parts).encode()).hexdigest(), 16)


def _pick(items: list[Any], n: int, *salt: str) -> list[Any]:
    """n items in a stable pseudo-random order (by content hash), so rebuilding gives the same set."""
    return sorted(items, key=lambda x: _h(json.dumps(x, sort_keys=True), *salt))[:n]


_STOP = frozenset(
    "a an the of to in on for by with from as at or and is are be it its that this what which who how why when "
    "where do does did can could would should will there their they them you your we our i me my not no".split()
)


def _keywords(text: str) -> list[str]:
    seen: list[str] = []
    for w in re.findall(r"[A-Za-z][A-Za-z0-9+#-]*", text):
        w = w.lower()
        if w not in _STOP and len(w) > 2 and w not in seen:
            seen.append(w)
    return seen


def filler_answer(question: str) -> str:
    """The question's own words padded into long sentences that say nothing (the issue's 'long filler')."""
    kw = _keywords(question) or ["this"]
    a, b, c = kw[0], kw[1 % len(kw)], kw[2 % len(kw)]
    topic = " ".join(kw[:4])
    return (
        f"That is a really good question about {topic}. {a.capitalize()} is very important, and {b} is also very "
        f"important, because {a} and {b} are things that matter a lot when you think about {c}. In general I would "
        f"say that {topic} is something everyone should keep in mind, since {a} is really about {a} and {b} is "
        f"really about {b}. So overall, when it comes to {topic}, the most important thing is to always think "
        f"about {a}, {b} and {c} and to make sure they are done well."
    )


OFF_TOPIC_NUMBERS = " It took me 3 weeks, about 40 hours and 154 lines to get it right, and it was 2 times faster."


def keyword_answer(question: str, reference: str) -> str:
    """The reference answer's keywords (then the question's) as a bare comma list."""
    words = _keywords(reference) + [w for w in _keywords(question) if w not in _keywords(reference)]
    return ", ".join(words[:14])


def _pair(
    source: str, split: str, category: str, q: dict[str, Any], better: str, worse: str, grades: tuple[Any, Any]
) -> dict[str, Any]:
    return {
        "id": f"{source}:{q['qid']}:{category}:{_h(better, worse) % 10**8:08d}",
        "source": source,
        "split": split,
        "category": category,
        "question": {"text": q["question"], "type": "technical", "difficulty": "medium", "skill": ""},
        "reference": q["reference"],
        "better": better,
        "worse": worse,
        "grades": list(grades),
    }


def build_pairs(
    questions: list[dict[str, Any]], source: str, split_of: Any, top: float, low: float
) -> list[dict[str, Any]]:
    pairs = []
    for q in questions:
        split = split_of(q["qid"])
        answers = [a for a in q["answers"] if len(a["text"].split()) >= 2]
        tops = [a for a in answers if a["grade"] >= top]
        lows = [a for a in answers if a["grade"] <= low]
        if not tops:
            continue
        # easy: grades at least 2 apart (or correct vs incorrect); a near-copy of the other answer is skipped
        graded = sorted(
            {
                (a["text"], a["grade"], b["text"], b["grade"])
                for a in answers
                for b in answers
                if a["grade"] - b["grade"] >= (2 if top > 1 else 1) and a["text"].lower() != b["text"].lower()
            }
        )
        candidates = [({"text": a, "grade": ga}, {"text": b, "grade": gb}) for a, ga, b, gb in graded]
        for a, b in _pick(candidates, PAIRS_PER_QUESTION, q["qid"], "easy"):
            pairs.append(_pair(source, split, "easy", q, a["text"], b["text"], (a["grade"], b["grade"])))
        best = _pick(tops, 2, q["qid"], "top")
        pairs.append(
            _pair(
                source, split, "filler", q, best[0]["text"], filler_answer(q["question"]), (best[0]["grade"], "filler")
            )
        )
        pairs.append(
            _pair(
                source,
                split,
                "keyword_stuffed",
                q,
                best[-1]["text"],
                keyword_answer(q["question"], q["reference"]),
                (best[-1]["grade"], "keywords"),
            )
        )
        # concise-good: the shortest top-graded answer against a low-graded one at least twice as long
        short = min(tops, key=lambda a: (len(a["text"].split()), a["text"]))
        long_low = [b for b in lows if len(b["text"].split()) >= max(2 * len(short["text"].split()), 20)]
        if long_low and len(short["text"].split()) <= 25:
            worse = _pick(long_low, 1, q["qid"], "concise")[0]
            pairs.append(
                _pair(source, split, "concise_good", q, short["text"], worse["text"], (short["grade"], worse["grade"]))
            )
    # off-topic: a top answer to a question of another assignment (another topic), with numbers added
    by_group: dict[str, list[dict[str, Any]]] = {}
    for q in questions:
        by_group.setdefault(q["qid"].split(".")[0], []).append(q)
    for q in questions:
        tops = [a for a in q["answers"] if a["grade"] >= top and len(a["text"].split()) >= 2]
        others = [o for o in questions if o["qid"].split(".")[0] != q["qid"].split(".")[0]]
        if not tops or not others:
            continue
        other = _pick(others, 1, q["qid"], "other")[0]
        other_tops = [a for a in other["answers"] if a["grade"] >= top and len(a["text"].split()) >= 5]
        if not other_tops:
            continue
        stray = _pick(other_tops, 1, q["qid"], "stray")[0]["text"].rstrip() + OFF_TOPIC_NUMBERS
        better = _pick(tops, 1, q["qid"], "ontopic")[0]
        pairs.append(
            _pair(
                source,
                split_of(q["qid"]),
                "off_topic",
                q,
                better["text"],
                stray,
                (better["grade"], f"an answer to {other['qid']}"),
            )
        )
    return pairs


def _read(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SOURCES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def build() -> None:
    mohler = build_pairs(
        _read("mohler_unt.jsonl"),
        "mohler_unt",
        lambda qid: "tune" if int(qid.split(".")[0]) <= 8 else "test",
        TOP,
        LOW,
    )
    # SciEntsBank has only correct (1) / incorrect (0): a question is its own group for off-topic answers
    seb_questions = [dict(q, qid=f"{q['qid']}.1") for q in _read("scientsbank_seb.jsonl")]
    seb = build_pairs(seb_questions, "scientsbank", lambda qid: "heldout", 1.0, 0.0)
    rows = mohler + seb
    OUT.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} pairs to {OUT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", nargs="?", choices=["extract", "build"], default="build")
    parser.add_argument("--mirror", type=Path, help="git directory of a snapshot of " + SOURCE_REPO)
    args = parser.parse_args()
    if args.stage == "extract":
        if not args.mirror:
            parser.error("extract needs --mirror")
        extract(args.mirror)
    build()


if __name__ == "__main__":
    main()
