"""safety_reviewer: approve, rewrite or block each reply; rule layer always, LLM review after it when configured."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field

from nodes.configuration import Configuration
from nodes.model_calls import ask_structured, describe_failure, persona_messages
from nodes.primary_responder import last_user_message
from nodes.safety_rules import RuleDecision, review_draft

if TYPE_CHECKING:
    from graphs.veneo_chat import ReviewState

NODE = "safety_reviewer"


class ReviewOutput(BaseModel):
    action: Literal["approve", "rewrite", "block"]
    category: Literal["ok", "prompt_injection", "disallowed_topic", "pii", "harmful", "other"]
    reason: str = Field(min_length=1)
    rewritten_reply: str | None = Field(None, description="The safe reply when action is rewrite.")


async def safety_reviewer(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
    """Decide on the draft and emit the reply the user sees, recording {action, category, reason}."""
    conf = Configuration.from_runnable_config(config)
    persona = conf.persona(NODE)
    settings = persona.safety
    user_message = last_user_message(state)
    draft = state.get("draft") or {"text": "", "produced_by": "none"}
    rules = review_draft(user_message, draft["text"], settings)
    decision: dict[str, Any] = {
        "action": rules.action,
        "category": rules.category,
        "reason": rules.reason,
        "reviewed_by": "rules",
    }
    text = rules.text or ""
    model = conf.model(NODE) if settings.llm_review else None
    if rules.action != "block" and model is not None:
        try:
            prompt = persona_messages(
                persona,
                user_message=user_message,
                draft=text,
                disallowed_topics=", ".join(t.name for t in settings.disallowed_topics) or "(none)",
            )
            review = await ask_structured(model, ReviewOutput, prompt, persona, config)
            label = conf.model_label(NODE)
            if review.action == "block":
                decision = {
                    "action": "block",
                    "category": review.category,
                    "reason": review.reason,
                    "reviewed_by": label,
                }
                text = settings.refusal_message
            elif review.action == "rewrite" and review.rewritten_reply:
                # the rule layer's redaction still applies to whatever the model rewrote
                redacted = review_draft(user_message, review.rewritten_reply, settings)
                text = redacted.text or review.rewritten_reply
                decision = {
                    "action": "rewrite",
                    "category": review.category,
                    "reason": review.reason,
                    "reviewed_by": label,
                }
            else:
                decision["reviewed_by"] = f"rules+{label}"
        except Exception as exc:  # the rule decision stands; say that the LLM review did not happen
            decision["reviewed_by"] = f"rules (llm review failed: {describe_failure(exc)})"
    decision["turn"] = len(state.get("review_decisions", [])) + state.get("decisions_archived", 0) + 1
    meta = {
        "kind": "reply",
        "produced_by": draft["produced_by"] if decision["action"] != "block" else "safety_reviewer",
        "review_action": decision["action"],
        "review_category": decision["category"],
        # the whole decision travels with the reply, so the archived transcript keeps every decision
        "review": decision,
    }
    if draft.get("knowledge_section") and decision["action"] != "block":
        meta["knowledge_section"] = draft["knowledge_section"]
    # state keeps as many recent decisions as the memory budget keeps messages; older ones live in the transcript
    decisions = [*state.get("review_decisions", []), decision]
    overflow = max(0, len(decisions) - conf.params.memory.keep_messages)
    return {
        "messages": [AIMessage(text, name="assistant", response_metadata=meta)],
        "review_decisions": decisions[overflow:],
        "decisions_archived": state.get("decisions_archived", 0) + overflow,
        "draft": None,
    }


def input_refusal(user_message: str, conf: Configuration) -> RuleDecision | None:
    """Used by routing: a message the rules refuse is answered without drafting a reply first."""
    from nodes.safety_rules import check_user_message

    return check_user_message(user_message, conf.persona(NODE).safety)
