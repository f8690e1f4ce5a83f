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


def find_skills(text: str) -> list[str]:
    """Skills from the vocabulary, in order of first appearance."""
    found = []
    for _skill, pattern in _SKILL_PATTERNS:
        m = pattern.search(text or "")
        if m:
            found.append((m.start(), m.group(0)))
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
