"""Measure the offline guardrail on the tuning splits only: `python -m evals.tune_guardrail [--split val] [--show]`.

The numbers to choose thresholds and rules by (evals/README.md, "What was looked at"). It refuses the evaluation
splits (test, dev, heldout): those are measured by `make eval` (evals/harness.py) once the choices are made.
`--show` lists the misses and false blocks of the split, with each layer's score.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from evals.harness import SETS, TRIGGER_WORDS, _rate, _resolver, _short
from nodes.safety_reviewer import screen_offline

TUNING_SPLITS = ("train", "val")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", choices=TUNING_SPLITS, default="val")
    parser.add_argument("--show", action="store_true", help="list misses and false blocks")
    args = parser.parse_args()
    settings = _resolver().resolve("veneo", "veneo_chat").persona("safety_reviewer").safety
    rows = [json.loads(line) for line in (SETS / "guardrail.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["split"] == args.split]
    by: dict[str, list[bool]] = defaultdict(list)
    shown: list[str] = []
    for row in rows:
        screening = screen_offline(row["text"], settings, "input")
        blocked, attack = screening.blocked, row["label"] == "attack"
        by["attack" if attack else "benign"].append(blocked)
        by[("attack: " + row["category"]) if attack else ("benign: " + row["source"])].append(blocked)
        if attack:
            by["source: " + row["source"]].append(blocked)
        elif TRIGGER_WORDS.search(row["text"]):
            by["benign with trigger words"].append(blocked)
        if args.show and blocked != attack:
            scores = " ".join(f"{v.layer}={v.score}" for v in screening.layers)
            what = screening.decision.category if screening.decision else row["category"]
            shown.append(f"{'MISS' if attack else 'FALSE'} [{row['source']}] {what} {scores}: {_short(row['text'])}")
    for key in sorted(by):
        print(f"{key:45s} {_rate(sum(by[key]), len(by[key]))}")
    print("\n".join(shown))


if __name__ == "__main__":
    main()
