"""A tenant's knowledge file, indexed in SQLite FTS5 (via sqlite-utils) for the offline responder."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import sqlite_utils

from nodes.text_features import STOPWORDS, words


def topic_words(question: str, names: Collection[str] = ()) -> list[str]:
    """The question's content words, leaving out where it names the tenant: each of `names` (the tenant's name, its
    id) as a whole phrase, "Veneo's" included. Every section may name the tenant, so the name says nothing about
    which one answers; but only the whole phrase goes: "How do returns work?" still asks about returns when the
    tenant is called "Returns Plus"."""
    phrases = {tuple(words(n)) for n in names} | {tuple(words(re.sub(r"[-_]", " ", n))) for n in names}
    longest_first = sorted((p for p in phrases if p), key=len, reverse=True)
    tokens = words(question)
    kept, i = [], 0
    while i < len(tokens):
        found = next((p for p in longest_first if tuple(tokens[i : i + len(p)]) == p), None)
        if found:
            i += len(found)
        else:
            kept.append(tokens[i])
            i += 1
    return [w for w in kept if len(w) > 2 and w not in STOPWORDS]  # as content_words


@dataclass(frozen=True)
class KnowledgeHit:
    title: str
    body: str
    rank: float


def parse_sections(text: str) -> list[tuple[str, str]]:
    """Markdown `## Heading` sections as (title, body); text before the first heading is skipped."""
    sections = []
    for chunk in re.split(r"^##\s+", text, flags=re.M)[1:]:
        title, _, body = chunk.partition("\n")
        body = " ".join(body.split())
        if title.strip() and body:
            sections.append((title.strip(), body))
    return sections


class KnowledgeBase:
    """Ranks sections against a question with FTS5's bm25; no match means the answer is not known."""

    def __init__(self, sections: list[tuple[str, str]]):
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        self._db = sqlite_utils.Database(conn)
        self._lock = threading.Lock()
        table = self._db["knowledge"]
        table.insert_all([{"title": t, "body": b} for t, b in sections], pk="id")  # type: ignore[union-attr]
        table.enable_fts(["title", "body"], tokenize="porter")  # type: ignore[union-attr]

    @classmethod
    def from_file(cls, path: str | Path) -> KnowledgeBase:
        return _load(str(Path(path).resolve()), Path(path).stat().st_mtime_ns)

    def search(self, question: str, limit: int = 2, names: Collection[str] = ()) -> list[KnowledgeHit]:
        """The best sections for the question's topic words (`topic_words`: its content words outside the tenant's
        own name, `names`)."""
        terms = sorted(set(topic_words(question, names)))
        if not terms:
            return []
        query = " OR ".join('"' + t.replace('"', "") + '"' for t in terms)
        with self._lock:
            rows = list(self._db["knowledge"].search(query, limit=limit, columns=["title", "body"], include_rank=True))  # type: ignore[union-attr]
        return [KnowledgeHit(r["title"], r["body"], r["rank"]) for r in rows]


@lru_cache(maxsize=16)
def _load(path: str, mtime_ns: int) -> KnowledgeBase:
    # keyed by modification time, so an edited knowledge file is re-indexed on the next turn
    return KnowledgeBase(parse_sections(Path(path).read_text(encoding="utf-8")))
