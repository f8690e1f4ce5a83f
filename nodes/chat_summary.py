"""summarizer (chat): the rolling summary of trimmed turns, and a summary of the conversation on request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig

from nodes.configuration import Configuration
from nodes.model_calls import ask_text, describe_failure, persona_messages
from nodes.safety_rules import redact_pii

if TYPE_CHECKING:
    from graphs.veneo_chat import ChatState

NODE = "summarizer"
SUMMARIZE_COMMAND = "/summarize"
SUMMARY_LINES = 12  # the offline rolling summary stays this short, so state stays bounded


def is_summarize_request(message: BaseMessage | None) -> bool:
    return isinstance(message, HumanMessage) and str(message.content).strip().lower() == SUMMARIZE_COMMAND


def _transcript(messages: Sequence[BaseMessage]) -> str:
    lines = []
    for m in messages:
        if is_summarize_request(m):
            continue
        who = "User" if isinstance(m, HumanMessage) else "Assistant"
        lines.append(f"{who}: {' '.join(str(m.content).split())}")
    return "\n".join(lines)


def extractive_summary(previous: str, messages: Sequence[BaseMessage]) -> str:
    """Offline summary: one line per question the user asked and what answered it."""
    lines = [line for line in previous.splitlines() if line.strip()]
    pending: str | None = None
    for m in messages:
        if is_summarize_request(m):
            continue
        if isinstance(m, HumanMessage):
            text = " ".join(str(m.content).split())
            pending = text if len(text) <= 80 else text[:77] + "..."
        elif isinstance(m, AIMessage) and pending is not None:
            meta = m.response_metadata or {}
            if meta.get("review_action") == "block":
                outcome = "declined"
            elif meta.get("knowledge_section"):
                outcome = f"answered from '{meta['knowledge_section']}'"
            elif meta.get("produced_by") == "offline:not_found":
                outcome = "not in the knowledge base"
            else:
                outcome = "answered"
            lines.append(f"- Asked: {pending} ({outcome})")
            pending = None
    if pending is not None:
        lines.append(f"- Asked: {pending} (no reply yet)")
    return "\n".join(lines[-SUMMARY_LINES:])


async def fold_into_summary(
    previous: str, messages: Sequence[BaseMessage], conf: Configuration, config: RunnableConfig
) -> str:
    """The rolling summary extended with `messages` (model when configured, extractive otherwise)."""
    model = conf.model(NODE)
    if model is not None:
        persona = conf.persona(NODE)
        try:
            prompt = persona_messages(persona, summary=previous or "(none)", transcript=_transcript(messages))
            return str((await ask_text(model, prompt, persona, config)).content).strip()
        except Exception:  # the extractive summary keeps the memory rule working without the model
            pass
    return extractive_summary(previous, messages)


async def chat_summarizer(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
    """Answer a /summarize request with a summary of the whole conversation so far."""
    conf = Configuration.from_runnable_config(config)
    messages = [m for m in state.get("messages", []) if not is_summarize_request(m)]
    previous = state.get("rolling_summary", "")
    model = conf.model(NODE)
    produced_by = "offline:extractive"
    text = ""
    if model is not None:
        persona = conf.persona(NODE)
        try:
            prompt = persona_messages(persona, summary=previous or "(none)", transcript=_transcript(messages))
            text = str((await ask_text(model, prompt, persona, config)).content).strip()
            produced_by = conf.model_label(NODE)
        except Exception as exc:
            produced_by = f"offline:extractive ({describe_failure(exc)})"
    if not text:
        text = extractive_summary(previous, messages) or "We haven't talked about anything yet."
    if "safety_reviewer" in conf.run.agents:
        # a summary bypasses the reviewer's draft path, so its PII rule is applied here
        text, _ = redact_pii(text, conf.persona("safety_reviewer").safety)
    return {
        "messages": [
            AIMessage(
                "Summary of our conversation so far:\n" + text,
                name=NODE,
                response_metadata={"kind": "summary", "produced_by": produced_by},
            )
        ]
    }
