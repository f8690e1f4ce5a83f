"""Small, deterministic text analysis shared by the offline question generator and fallback scorer."""

from __future__ import annotations

import re

WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+#.\-]*[A-Za-z0-9+#]|[A-Za-z]")

STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers him his how i if in into is it its itself just me more most my myself
    no nor not now of off on once only or other our ours out over own same she should so some such than
    that the their them then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself tell describe give
    example time walk through please ok okay yes
    """.split()
)


def words(text: str) -> list[str]:
    return [w.lower().strip(".-") for w in WORD_RE.findall(text or "")]


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if len(w) > 2 and w not in STOPWORDS]


# A modest vocabulary of skills the offline generator recognises in resumes and job descriptions.
SKILLS = """
    python java javascript typescript go golang rust c++ c# ruby php kotlin swift scala sql postgresql
    mysql mongodb redis kafka rabbitmq spark hadoop airflow dbt snowflake bigquery aws azure gcp docker
    kubernetes terraform ansible linux bash git ci/cd jenkins graphql rest grpc microservices react
    angular vue node.js django flask fastapi spring .net pandas numpy pytorch tensorflow scikit-learn
    machine-learning llm nlp statistics excel tableau power-bi figma agile scrum kanban jira testing tdd
    security observability prometheus grafana elasticsearch networking distributed-systems data-modeling
    etl api-design leadership mentoring stakeholder-management communication negotiation budgeting
    hiring roadmap product-management customer-success sales marketing seo analytics accessibility ux
    """.split()

_SKILL_PATTERNS = [
    (skill, re.compile(r"(?<![A-Za-z0-9])" + re.escape(skill).replace(r"\-", r"[\s\-]") + r"(?![A-Za-z0-9])", re.I))
    for skill in SKILLS
]


# vocabulary words that a job ad also uses as plain verbs ("we are hiring nurses", "sales of our products")
_NOT_A_SKILL_BEFORE = {"hiring": re.compile(r"\b(?:is|are|'re|now|currently)\s+$", re.I)}


def find_skills(text: str) -> list[str]:
    """Skills from the vocabulary, in order of first appearance."""
    found = []
    for skill, pattern in _SKILL_PATTERNS:
        for m in pattern.finditer(text or ""):
            guard = _NOT_A_SKILL_BEFORE.get(skill)
            if guard and guard.search(text[: m.start()][-12:]):
                continue
            found.append((m.start(), m.group(0)))
            break
    seen: set[str] = set()
    ordered = []
    for _, name in sorted(found):
        if name.lower() not in seen:
            seen.add(name.lower())
            ordered.append(name)
    return ordered


_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022\u25cf]|\d+[.)])\s+(.+)$")
_NOT_A_TASK = (
    "experience",
    "knowledge",
    "familiarity",
    "strong",
    "excellent",
    "ability",
    "bachelor",
    "master",
    "degree",
    "years",
    "proficien",
    "understanding",
    "nice to have",
    "plus",
    "fluent",
)


def responsibilities(text: str) -> list[str]:
    """Bullet lines that read as tasks ('Design and run ...'), lower-cased first word, no trailing period."""
    out = []
    for line in (text or "").splitlines():
        m = _BULLET_RE.match(line)
        if not m:
            continue
        item = m.group(1).strip().rstrip(".;")
        if len(item.split()) < 3 or item.lower().startswith(_NOT_A_TASK):
            continue
        out.append(item[0].lower() + item[1:])
    return out


# ------------------------------------------------------------------------------- meaning, not word overlap

_NUMBER_WORDS = frozenset(
    """
    two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty sixty seventy
    eighty ninety hundred thousand million billion half third quarter twice double doubled tripled halved dozen
    """.split()
)
_NUMBER_RE = re.compile(r"(?<![A-Za-z0-9.,])[$€£]?\d[\d,.]*(?:\s*(?:%|x\b|k\b|ms\b))?")


def numbers(text: str) -> list[str]:
    """Numbers written as digits ("250 ms", "30%") or as words ("two of four", "a third", "doubled")."""
    found = [m.group(0).strip() for m in _NUMBER_RE.finditer(text or "")]
    found += [w for w in words(text) if w in _NUMBER_WORDS]
    return found


def stem(word: str) -> str:
    """A crude, fast stem: enough to match "latency"/"latencies", "deliver"/"delivered"/"delivery"."""
    word = word.lower()
    for suffix in ("ations", "ation", "ities", "ity", "ings", "ing", "ies", "ied", "ers", "er", "ed", "es", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)][:7]
    return word[:7]


# Groups of words that mean the same thing in interview answers: a small, hand-made concept lexicon, so that
# "made checkout faster" meets "latency" and "cancellations dropped" meets "churn" without sharing a word.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "speed": (
        "latency",
        "fast",
        "faster",
        "slow",
        "slower",
        "speed",
        "performance",
        "p95",
        "p99",
        "ms",
        "seconds",
        "quick",
        "quicker",
        "throughput",
        "response",
        "profile",
        "profiled",
        "bottleneck",
        "cache",
        "optimi",
    ),
    "database": (
        "database",
        "sql",
        "postgres",
        "postgresql",
        "mysql",
        "query",
        "queries",
        "index",
        "indexes",
        "replica",
        "replicas",
        "schema",
        "table",
        "tables",
        "dbt",
        "partition",
    ),
    "reliability": (
        "reliab",
        "incident",
        "incidents",
        "outage",
        "downtime",
        "uptime",
        "pages",
        "paged",
        "alert",
        "alerts",
        "error",
        "errors",
        "failure",
        "failures",
        "rollback",
        "rolled",
        "probe",
        "probes",
        "budget",
        "sla",
        "slo",
        "on-call",
        "postmortem",
        "review",
    ),
    "infrastructure": (
        "kubernetes",
        "k8s",
        "pods",
        "pod",
        "docker",
        "container",
        "containers",
        "helm",
        "cluster",
        "autoscal",
        "deploy",
        "deployment",
        "cloud",
        "aws",
        "gcp",
        "azure",
        "instances",
        "spot",
    ),
    "people": (
        "mentor",
        "mentored",
        "mentoring",
        "coach",
        "coached",
        "coaching",
        "junior",
        "juniors",
        "paired",
        "pairing",
        "trained",
        "teach",
        "onboard",
        "hire",
        "hires",
        "grow",
        "feedback",
        "habits",
    ),
    "conflict": ("conflict", "argued", "disagree", "disagreed", "dispute", "tension", "fair", "complaints"),
    "customers": (
        "customer",
        "customers",
        "user",
        "users",
        "client",
        "clients",
        "csat",
        "satisfaction",
        "tickets",
        "ticket",
        "support",
        "agents",
        "reps",
        "travellers",
        "interviews",
        "discovery",
    ),
    "churn": ("churn", "cancel", "cancelled", "cancellations", "retention", "retained", "renewal", "cohort"),
    "analysis": (
        "analys",
        "analyse",
        "analyze",
        "analysis",
        "data",
        "dashboard",
        "dashboards",
        "chart",
        "metric",
        "metrics",
        "tableau",
        "cohort",
        "insight",
        "amplitude",
        "measure",
        "measured",
        "kpi",
        "tracked",
    ),
    "planning": (
        "roadmap",
        "priorit",
        "plan",
        "planned",
        "strategy",
        "quarter",
        "scope",
        "workshop",
        "agreed",
        "align",
        "aligned",
        "decision",
        "decide",
        "decided",
        "trade-off",
        "okr",
    ),
    "cost": ("cost", "costs", "bill", "budget", "spend", "spending", "saved", "savings", "cheaper", "expensive"),
    "growth": (
        "grew",
        "grow",
        "growth",
        "increase",
        "increased",
        "rose",
        "gained",
        "actives",
        "wau",
        "dau",
        "adoption",
        "launched",
        "launch",
        "shipped",
    ),
    "process": ("process", "macros", "workflow", "rota", "checklist", "automat", "template", "templates", "triage"),
}
_CONCEPT_OF: dict[str, str] = {}
for _concept, _members in CONCEPTS.items():
    for _member in _members:
        _CONCEPT_OF.setdefault(stem(_member), _concept)

# Leisure and private-life words: an answer made of these is a story, not evidence for a work question.
OFF_TOPIC = frozenset(
    stem(w)
    for w in """
    hiking hike hiked trip holiday vacation mountains mountain football soccer tennis golf match marathon
    kilometres kilometers miles km running race cooking cooked dinner guests recipe market birthday wedding
    party beach travelled camping kitchen garden dog cat weekend movie film music concert band guitar pizza
    restaurant wine beer climbed summit friends family vacation
    """.split()
)


def concepts(text: str) -> set[str]:
    """The concepts a text touches (see CONCEPTS)."""
    out = set()
    for word in words(text):
        concept = _CONCEPT_OF.get(stem(word))
        if concept:
            out.add(concept)
    return out


def meaning_terms(text: str) -> set[str]:
    """Stems of the content words plus the concepts: a bag that matches by meaning, not exact wording."""
    return {stem(w) for w in content_words(text)} | {"#" + c for c in concepts(text)}


def relevance(answer: str, reference: str) -> float:
    """How much of the answer's meaning is about the reference (question, skill, job), 0..1."""
    ref = meaning_terms(reference)
    ans = meaning_terms(answer)
    if not ans or not ref:
        return 0.0
    shared = ans & ref
    concept_hits = sum(1 for t in shared if t.startswith("#"))
    return min(1.0, (len(shared) + concept_hits) / max(4.0, min(len(ref), len(ans)) * 0.6))
