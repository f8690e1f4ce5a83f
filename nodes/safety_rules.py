"""The safety reviewer's rule layer: prompt injection, disallowed topics, PII. Pure functions, always run."""

from __future__ import annotations

import re
from dataclasses import dataclass

from personas.schema import SafetySettings

_INJECTION = re.compile(
    r"ignore (?:all |any |your |my |these |those )?(?:the )?"
    r"(?:previous|prior|above|earlier) (?:instructions|prompts?|rules)"
    r"|disregard (?:all |any |your )?(?:previous |prior )?(?:instructions|rules|guidelines)"
    r"|(?:reveal|show|print|repeat|tell me) (?:me )?(?:your|the) (?:system )?(?:prompt|instructions)"
    r"|you are now (?:in )?(?:developer|dan|jailbreak)|developer mode|\bjailbreak\b|(?-i:\bDAN\b)"
    r"|pretend (?:that )?you have no (?:rules|restrictions)",
    re.I,
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"(?<![\w])(?<!\d[\s.-])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{3,4}[\s.-]?\d{3,4}(?:[\s.-]?\d{2,4})?(?![\w])(?![\s.-]\d)"
)
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


@dataclass(frozen=True)
class RuleDecision:
    action: str  # approve | rewrite | block
    category: str  # ok | prompt_injection | disallowed_topic | pii
    reason: str
    text: str | None = None  # the rewritten or refusal text


def _luhn_ok(number: str) -> bool:
    digits = [int(d) for d in number if d.isdigit()]
    checksum = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        checksum += d
    return 13 <= len(digits) <= 19 and checksum % 10 == 0


def check_user_message(message: str, settings: SafetySettings) -> RuleDecision | None:
    """A refusal decision when the user's message must not be answered, else None."""
    if settings.check_prompt_injection and _INJECTION.search(message):
        return RuleDecision(
            "block",
            "prompt_injection",
            "the message tries to override the assistant's instructions",
            settings.refusal_message,
        )
    lowered = message.lower()
    for topic in settings.disallowed_topics:
        for keyword in topic.keywords:
            if re.search(r"(?<!\w)" + re.escape(keyword.lower()) + r"(?:s|es)?(?!\w)", lowered):
                return RuleDecision(
                    "block",
                    "disallowed_topic",
                    f"topic {topic.name!r} is not allowed (matched {keyword!r})",
                    (topic.refusal or settings.refusal_message).strip(),
                )
    return None


def redact_pii(text: str, settings: SafetySettings) -> tuple[str, list[str]]:
    """Text with emails, card numbers and phone numbers replaced; also the kinds that were found."""
    found: list[str] = []
    allowed = {a.lower() for a in settings.pii_allow}
    if "email" in settings.pii_kinds:

        def email(m: re.Match[str]) -> str:
            if m.group(0).lower() in allowed:
                return m.group(0)
            found.append("email")
            return "[email removed]"

        text = _EMAIL.sub(email, text)
    if "card" in settings.pii_kinds:

        def card(m: re.Match[str]) -> str:
            if _luhn_ok(m.group(0)):
                found.append("card")
                return "[card number removed]"
            return m.group(0)

        text = _CARD.sub(card, text)
    if "phone" in settings.pii_kinds:

        def phone(m: re.Match[str]) -> str:
            if sum(c.isdigit() for c in m.group(0)) >= 7:
                found.append("phone")
                return "[phone removed]"
            return m.group(0)

        text = _PHONE.sub(phone, text)
    return text, sorted(set(found))


def review_draft(user_message: str, draft: str, settings: SafetySettings) -> RuleDecision:
    """Rule decision for a draft reply: block the request, redact PII in the reply, or approve."""
    refusal = check_user_message(user_message, settings)
    if refusal:
        return refusal
    if settings.redact_pii:
        redacted, kinds = redact_pii(draft, settings)
        if kinds:
            return RuleDecision("rewrite", "pii", f"redacted {', '.join(kinds)} from the reply", redacted)
    return RuleDecision("approve", "ok", "no rule matched", draft)
