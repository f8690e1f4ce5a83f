"""primary_responder: drafts the reply with the persona's prompt and bounded memory (offline: the knowledge file)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig

from nodes.chat_summary import is_summarize_request
from nodes.configuration import Configuration
from nodes.knowledge import KnowledgeBase, KnowledgeHit, topic_words
from nodes.model_calls import ask_text, describe_failure, render
from nodes.text_features import content_words

if TYPE_CHECKING:
    from graphs.veneo_chat import ChatState

NODE = "primary_responder"
_GREETING = re.compile(r"^\s*(hi|hello|hey|good (morning|afternoon|evening)|thanks?|thank you)\b[\s!.,]*$", re.I)
DEFAULT_NOT_FOUND = "I don't know the answer to that from what I have available."


def last_user_message(state: ChatState) -> str:
    for message in reversed(state.get("messages", [])):
        if isinstance(message, HumanMessage) and not is_summarize_request(message):
            return str(message.content).strip()
    return ""


def tenant_names(conf: Configuration) -> tuple[str, ...]:
    """The tenant's name and id: a question naming the tenant ("Does Acme sell rockets?") is not answered by a
    section just because it names the tenant too (`topic_words`)."""
    return (conf.run.tenant_name, conf.tenant)


async def _knowledge(conf: Configuration, question: str) -> list[KnowledgeHit]:
    path = conf.run.knowledge_path
    if not path:
        return []
    # SQLite and file I/O are blocking: keep them off the event loop that serves other sessions
    return await asyncio.to_thread(lambda: KnowledgeBase.from_file(path).search(question, names=tenant_names(conf)))


def _stem(word: str) -> str:
    return word[:5]


def covers_question(question: str, hit: KnowledgeHit, names: Collection[str] = ()) -> bool:
    """Whether a section answers enough of the question: one shared word in a long message is not a match.

    Short questions need one shared content word; longer messages (pasted prompts, stories) need a fifth of
    theirs, so an off-topic message gets "I don't know" rather than an unrelated section.
    """
    asked = {_stem(w) for w in content_words(question)}
    terms = {_stem(w) for w in topic_words(question, names)}  # what search used: the name is no match, but is asked
    if not terms:
        return False
    section = {_stem(w) for w in content_words(f"{hit.title} {hit.body}")}
    shared = len(terms & section)
    return shared >= 1 if len(asked) <= 6 else shared >= max(2, round(0.2 * len(asked)))


def offline_draft(
    question: str, hits: list[KnowledgeHit], not_found: str, tenant_name: str, names: Collection[str] = ()
) -> dict[str, Any]:
    """Answer from the best knowledge section (naming whose knowledge base), or say plainly that it is not known."""
    if _GREETING.match(question):
        return {"text": "Hello! How can I help you today?", "produced_by": "offline:greeting"}
    if not hits or not covers_question(question, hits[0], names):
        return {"text": not_found.strip(), "produced_by": "offline:not_found"}
    best = hits[0]
    return {
        "text": f"{best.body}\n\n(Answered from {tenant_name}'s knowledge base: {best.title}.)",
        "produced_by": "offline:knowledge_base",
        "knowledge_section": best.title,
    }


async def primary_responder(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
    """Draft a reply; the safety reviewer decides what the user sees."""
    conf = Configuration.from_runnable_config(config)
    persona = conf.persona(NODE)
    question = last_user_message(state)
    hits = await _knowledge(conf, question)
    model = conf.model(NODE)
    note = None
    if model is not None:
        knowledge = "\n".join(f"[{h.title}] {h.body}" for h in hits) or "(nothing relevant found)"
        system = SystemMessage(
            render(
                persona.prompts.get("system", ""),
                summary=state.get("rolling_summary") or "(none)",
                knowledge=knowledge,
            )
        )
        history = [m for m in state.get("messages", []) if not is_summarize_request(m)]
        try:
            reply = await ask_text(model, [system, *history], persona, config)
            return {"draft": {"text": str(reply.content).strip(), "produced_by": conf.model_label(NODE)}}
        except Exception as exc:  # the knowledge base still answers when the model is down
            note = f"model unavailable: {describe_failure(exc)}"
    tenant_name = conf.run.tenant_name or conf.tenant
    not_found = persona.prompts.get("not_found", DEFAULT_NOT_FOUND)
    draft = offline_draft(question, hits, not_found, tenant_name, tenant_names(conf))
    if note:
        draft["note"] = note
    return {"draft": draft}
