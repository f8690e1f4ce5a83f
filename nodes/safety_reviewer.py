"""safety_reviewer: screens each user message, then approves, rewrites or blocks each reply, in layers.

Layers, cheapest first; a block stops the layers after it:
rules (nodes/safety_rules.py, always) -> classifier (nodes/safety_classifier.py, n-grams, offline, under a ms) ->
embedding (nodes/safety_embedding.py, a head over local sentence vectors, offline, user messages only) ->
moderation (the provider's moderation endpoint, when a key or base URL is configured) -> LLM review (drafts only,
when configured). Every layer that ran leaves its verdict, score and time in the decision record.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field

from nodes.configuration import Configuration
from nodes.model_calls import ask_structured, describe_failure, persona_messages
from nodes.primary_responder import last_user_message
from nodes.safety_classifier import ClassifierVerdict, default_classifier
from nodes.safety_embedding import default_head
from nodes.safety_rules import (
    RuleDecision,
    check_user_message,
    harm_cues,
    names_extraction_target,
    redact_pii,
    review_draft,
)
from personas.schema import SafetySettings

if TYPE_CHECKING:
    from graphs.veneo_chat import ReviewState

NODE = "safety_reviewer"
Stage = Literal["input", "reply"]

# the classifier's classes, as decision categories
_CLASSIFIER_CATEGORY = {
    "jailbreak": "prompt_injection",
    "system_prompt_extraction": "system_prompt_extraction",
    "harmful": "harmful",
    "hate": "hate",
}
# the moderation endpoint's categories, as decision categories (with the harm kind)
_MODERATION_CATEGORY = {
    "self-harm": ("harmful", "self_harm"),
    "violence": ("harmful", "violence"),
    "illicit": ("harmful", "crime"),
    "hate": ("hate", None),
    "harassment": ("hate", "harassment"),
    "sexual": ("harmful", "sexual"),
}


class ReviewOutput(BaseModel):
    action: Literal["approve", "rewrite", "block"]
    category: Literal[
        "ok",
        "prompt_injection",
        "system_prompt_extraction",
        "disallowed_topic",
        "pii",
        "harmful",
        "hate",
        "other",
    ]
    reason: str = Field(min_length=1)
    rewritten_reply: str | None = Field(None, description="The safe reply when action is rewrite.")


@dataclass
class LayerVerdict:
    """What one layer said about one text: verdict pass | block | rewrite | error, with its score and time."""

    layer: str
    stage: Stage
    verdict: str
    category: str = "ok"
    score: float | None = None
    ms: float = 0.0
    detail: str | None = None
    # the classifier's attack score as a second opinion for the embedding layer: its extraction share left out when
    # the short-extraction veto set its extraction reading aside (recorded only then, next to the full score)
    evidence: float | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layer": self.layer,
            "stage": self.stage,
            "verdict": self.verdict,
            "category": self.category,
            "score": self.score,
            "ms": round(self.ms, 3),
        }
        if self.detail:
            out["detail"] = self.detail
        if self.evidence is not None and self.evidence != self.score:
            out["evidence"] = self.evidence
        return out


@dataclass
class Screening:
    """The combined outcome of the layers on one text: the blocking decision (if any) and every layer's verdict."""

    decision: RuleDecision | None
    layers: list[LayerVerdict]

    @property
    def blocked(self) -> bool:
        return self.decision is not None and self.decision.action == "block"


# a short message a model layer calls extraction must name what it would extract (the prompt, the configuration,
# "your" instructions, in any of the rule layer's languages): trained on few examples, both models confuse short
# how-to questions ("show me the instructions for washing ...") with extraction
EXTRACTION_VETO_WORDS = 25


def extraction_vetoed(category: str, text: str) -> bool:
    return (
        category == "system_prompt_extraction"
        and len(text.split()) <= EXTRACTION_VETO_WORDS
        and not names_extraction_target(text)
    )


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def classifier_verdict(text: str, settings: SafetySettings, stage: Stage) -> tuple[LayerVerdict, RuleDecision | None]:
    """The classifier layer: block from `block_threshold`, or from `cue_threshold` when a weak harm cue is present."""
    start = time.perf_counter()
    result = default_classifier().predict(text)
    conf = settings.classifier
    cues = harm_cues(text) if result.attack_score >= conf.cue_threshold else []
    block = result.attack_score >= conf.block_threshold or (result.attack_score >= conf.cue_threshold and cues)
    evidence = result.attack_score
    if extraction_vetoed(result.category, text):
        block = False
        evidence = round(max(0.0, result.attack_score - result.scores.get("system_prompt_extraction", 0.0)), 4)
    if stage == "reply":
        # a reply is judged on what it says (harm, hate), not on whether it reads like a prompt
        block = block and result.category in ("harmful", "hate")
    category = _CLASSIFIER_CATEGORY.get(result.category, "other")
    verdict = LayerVerdict(
        "classifier",
        stage,
        "block" if block else "pass",
        category if block else "ok",
        result.attack_score,
        _ms(start),
        f"most likely {result.category}" + (f"; cues: {', '.join(cues[:4])}" if cues else ""),
        evidence,
    )
    if not block:
        return verdict, None
    reason = f"the classifier scores this {result.attack_score:.2f} as {result.category}"
    return verdict, RuleDecision("block", category, reason, settings.refusal_message, result.category)


def embedding_verdict(
    text: str, settings: SafetySettings, classifier_score: float | None = None, classifier_vetoed: bool = False
) -> tuple[LayerVerdict, RuleDecision | None]:
    """The embedding layer (input only): block from `embedding.block_threshold`; an error when the model is missing.

    A block scoring below `embedding.confirm_below` needs a second opinion: it stands only when the n-gram
    classifier's attack score (`classifier_score`, None when that layer did not run; without its extraction share
    when the short-extraction veto set that reading aside, `LayerVerdict.evidence`, and `classifier_vetoed` says so in
    the detail) reaches
    `embedding.classifier_agreement`. The head alone misreads some short chat lines ("is hal safe") and some
    writing requests as attacks that the classifier, which reads the words, scores near zero.
    """
    conf = settings.embedding
    start = time.perf_counter()
    try:
        result: ClassifierVerdict = default_head().predict(text)
    except Exception as exc:  # e.g. the model package is not installed: the other layers' decision stands
        return LayerVerdict("embedding", "input", "error", "ok", None, _ms(start), describe_failure(exc)), None
    block = result.attack_score >= conf.block_threshold and not extraction_vetoed(result.category, text)
    detail = f"most likely {result.category}"
    if block and result.attack_score < conf.confirm_below and classifier_score is not None:
        agreed = classifier_score >= conf.classifier_agreement
        block = agreed
        detail += (
            f"; below {conf.confirm_below}, "
            + ("confirmed" if agreed else "not confirmed")
            + " by the classifier"
            + (" without its extraction share" if classifier_vetoed else "")
            + f" ({classifier_score:.2f} {'>=' if agreed else '<'} {conf.classifier_agreement})"
        )
    category = _CLASSIFIER_CATEGORY.get(result.category, "other")
    verdict = LayerVerdict(
        "embedding",
        "input",
        "block" if block else "pass",
        category if block else "ok",
        result.attack_score,
        _ms(start),
        detail,
    )
    if not block:
        return verdict, None
    reason = f"the embedding classifier scores this {result.attack_score:.2f} as {result.category}"
    return verdict, RuleDecision("block", category, reason, settings.refusal_message, result.category)


def screen_offline(text: str, settings: SafetySettings, stage: Stage = "input") -> Screening:
    """Rules, then the classifier and the embedding layer (when enabled): the layers that need no network."""
    start = time.perf_counter()
    decision = check_user_message(text, settings) if stage == "input" else None
    rules = LayerVerdict(
        "rules",
        stage,
        "block" if decision else "pass",
        decision.category if decision else "ok",
        1.0 if decision else 0.0,
        _ms(start),
        decision.reason if decision else None,
    )
    layers = [rules]
    classifier_score: float | None = None
    classifier_vetoed = False
    if decision is None and settings.classifier.enabled and (stage == "input" or settings.classifier.check_drafts):
        verdict, decision = classifier_verdict(text, settings, stage)
        layers.append(verdict)
        classifier_score = verdict.evidence
        classifier_vetoed = verdict.evidence != verdict.score
    if decision is None and settings.embedding.enabled and stage == "input" and text.strip():
        verdict, decision = embedding_verdict(text, settings, classifier_score, classifier_vetoed)
        layers.append(verdict)
    return Screening(decision, layers)


async def moderate(
    client: Any, text: str, settings: SafetySettings, stage: Stage
) -> tuple[LayerVerdict, RuleDecision | None]:
    """The moderation layer: the provider's endpoint; flagged, or any category score at the threshold, blocks."""
    conf = settings.moderation
    start = time.perf_counter()
    try:
        response = await asyncio.wait_for(client.moderations.create(model=conf.model, input=text), conf.timeout_s)
        result = response.results[0]
        scores = {k: float(v or 0.0) for k, v in result.category_scores.model_dump(by_alias=True).items()}
    except Exception as exc:  # the offline layers' decision stands; the record says the endpoint failed
        return LayerVerdict("moderation", stage, "error", "ok", None, _ms(start), describe_failure(exc)), None
    top = max(scores, key=lambda k: scores[k]) if scores else "none"
    top_score = scores.get(top, 0.0)
    block = bool(result.flagged) or top_score >= conf.threshold
    category, kind = next(
        (v for k, v in _MODERATION_CATEGORY.items() if top.startswith(k)), ("harmful", top.replace("/", "_"))
    )
    verdict = LayerVerdict(
        "moderation",
        stage,
        "block" if block else "pass",
        category if block else "ok",
        round(top_score, 4),
        _ms(start),
        top,
    )
    if not block:
        return verdict, None
    reason = f"the moderation endpoint flags {top} ({top_score:.2f})"
    return verdict, RuleDecision("block", category, reason, settings.refusal_message, kind)


def _reviewed_by(layers: list[LayerVerdict]) -> str:
    names: list[str] = []
    failed: list[str] = []
    for layer in layers:
        if layer.verdict == "error":
            name = layer.layer if layer.layer in ("rules", "classifier", "embedding", "moderation") else "llm review"
            failed.append(f"{name} failed: {layer.detail}")
        elif layer.layer not in names:
            names.append(layer.layer)
    return "+".join(names) + (f" ({'; '.join(failed)})" if failed else "")


def _decision(decision: RuleDecision | None, layers: list[LayerVerdict]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "action": decision.action if decision else "approve",
        "category": decision.category if decision else "ok",
        "reason": decision.reason if decision else "no layer objected",
        "reviewed_by": _reviewed_by(layers),
        "layers": [layer.record() for layer in layers],
    }
    if decision and decision.subcategory:
        out["subcategory"] = decision.subcategory
    return out


async def input_screen(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
    """Screen the user's message before any reply is drafted; redact the PII it carries before it is stored."""
    conf = Configuration.from_runnable_config(config)
    persona = conf.persona(NODE)
    settings = persona.safety
    message = last_user_message(state)
    screening = screen_offline(message, settings, "input")
    client = conf.agent_factory.moderation_client(persona) if settings.moderation.enabled else None
    if not screening.blocked and client is not None and message:
        verdict, decision = await moderate(client, message, settings, "input")
        screening = Screening(decision, [*screening.layers, verdict])
    update: dict[str, Any] = {"input_review": _decision(screening.decision, screening.layers)}
    if settings.redact_user_pii:
        redacted = _redacted_user_message(state, settings)
        if redacted is not None:
            update["messages"] = [redacted]
            update["input_review"]["pii_redacted"] = True
    return update


def _redacted_user_message(state: ReviewState, settings: SafetySettings) -> HumanMessage | None:
    """The latest user message with its emails, phones and cards replaced (same id, so it replaces the original)."""
    for message in reversed(state.get("messages", [])):
        if isinstance(message, HumanMessage):
            if not isinstance(message.content, str) or message.id is None:
                return None
            text, kinds = redact_pii(message.content, settings)
            if not kinds:
                return None
            return message.model_copy(update={"content": text})
    return None


async def safety_reviewer(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
    """Decide on the draft and emit the reply the user sees, recording {action, category, reason, layers}."""
    conf = Configuration.from_runnable_config(config)
    persona = conf.persona(NODE)
    settings = persona.safety
    user_message = last_user_message(state)
    screened = state.get("input_review") or None
    if screened is None:  # called without the input screen (e.g. directly): screen the message here
        s = screen_offline(user_message, settings, "input")
        screened = _decision(s.decision, s.layers)
    layers_so_far = list(screened.get("layers", []))
    draft = state.get("draft") or {"text": "", "produced_by": "none"}
    if screened["action"] == "block":
        decision = {k: v for k, v in screened.items() if k != "pii_redacted"}
        text = _refusal_text(user_message, screened, settings)
    else:
        decision, text = await _review_draft(conf, config, user_message, draft["text"], layers_so_far)
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
        "input_review": None,
    }


def _refusal_text(user_message: str, screened: dict[str, Any], settings: SafetySettings) -> str:
    """The rules' own refusal (a topic's, e.g. self-harm's) when they blocked; the tenant's refusal otherwise."""
    rules = check_user_message(user_message, settings)
    if rules is not None and rules.text:
        return rules.text
    if screened.get("subcategory"):
        topic = next((t for t in settings.disallowed_topics if t.name == screened["subcategory"] and t.refusal), None)
        if topic is not None and topic.refusal:
            return topic.refusal.strip()
    return settings.refusal_message


async def _review_draft(
    conf: Configuration, config: RunnableConfig, user_message: str, draft: str, layers: list[dict[str, Any]]
) -> tuple[dict[str, Any], str]:
    persona = conf.persona(NODE)
    settings = persona.safety
    start = time.perf_counter()
    rules = review_draft(user_message, draft, settings)
    verdicts = [
        LayerVerdict(
            "rules",
            "reply",
            {"approve": "pass"}.get(rules.action, rules.action),
            rules.category,
            0.0 if rules.action == "approve" else 1.0,
            _ms(start),
            rules.reason if rules.action != "approve" else None,
        )
    ]
    current: RuleDecision = rules
    text = rules.text or ""
    if rules.action != "block" and settings.classifier.enabled and settings.classifier.check_drafts and draft:
        verdict, blocked = classifier_verdict(draft, settings, "reply")
        verdicts.append(verdict)
        if blocked:
            current, text = blocked, settings.refusal_message
    client = conf.agent_factory.moderation_client(persona) if settings.moderation.enabled else None
    if current.action != "block" and client is not None and draft:
        verdict, blocked = await moderate(client, draft, settings, "reply")
        verdicts.append(verdict)
        if blocked:
            current, text = blocked, settings.refusal_message
    model = conf.model(NODE) if settings.llm_review else None
    if current.action != "block" and model is not None:
        label = conf.model_label(NODE)
        start = time.perf_counter()
        try:
            prompt = persona_messages(
                persona,
                user_message=user_message,
                draft=text,
                disallowed_topics=", ".join(t.name for t in settings.disallowed_topics) or "(none)",
            )
            review = await ask_structured(model, ReviewOutput, prompt, persona, config)
            verdict_name = {"approve": "pass"}.get(review.action, review.action)
            verdicts.append(
                LayerVerdict(label, "reply", verdict_name, review.category, None, _ms(start), review.reason)
            )
            if review.action == "block":
                current = RuleDecision("block", review.category, review.reason, settings.refusal_message)
                text = settings.refusal_message
            elif review.action == "rewrite" and review.rewritten_reply:
                # the rule layer's redaction still applies to whatever the model rewrote
                redacted = review_draft(user_message, review.rewritten_reply, settings)
                text = redacted.text or review.rewritten_reply
                current = RuleDecision("rewrite", review.category, review.reason, text)
        except Exception as exc:  # the earlier layers' decision stands; say that the LLM review did not happen
            verdicts.append(LayerVerdict(label, "reply", "error", "ok", None, _ms(start), describe_failure(exc)))
    all_layers = [*_as_verdicts(layers), *verdicts]
    decision = _decision(current if current.action != "approve" else None, all_layers)
    if current.action == "approve":
        decision["reason"] = "no layer objected"
    return decision, text


def _as_verdicts(records: list[dict[str, Any]]) -> list[LayerVerdict]:
    return [
        LayerVerdict(
            r["layer"],
            r["stage"],
            r["verdict"],
            r["category"],
            r.get("score"),
            r.get("ms", 0.0),
            r.get("detail"),
            r.get("evidence"),
        )
        for r in records
    ]
