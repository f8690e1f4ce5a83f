"""Pydantic models for the persona bundles (agents, teams, tenants); the JSON Schema comes from here."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Provider = Literal["auto", "openai", "offline"]
StructuredOutputMethod = Literal["json_schema", "function_calling", "json_mode"]
Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")]


class StrictModel(BaseModel):
    """Base for bundle models: unknown keys are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(StrictModel):
    """Which chat model a persona uses and how it is called."""

    provider: Provider = Field(
        "auto",
        description="openai (any OpenAI-compatible server), offline (deterministic path), "
        "or auto: openai when an API key or base URL is configured, else offline.",
    )
    name: str = Field("gpt-4o-mini", min_length=1)
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(800, ge=1, le=32768)
    timeout_s: float = Field(30.0, gt=0, le=600)
    max_retries: int = Field(1, ge=0, le=10)
    base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1 for Ollama."
    )
    structured_output: StructuredOutputMethod = Field(
        "json_schema",
        description="How structured answers are requested; function_calling suits servers without JSON-schema support.",
    )


class DisallowedTopic(StrictModel):
    """A topic the safety reviewer refuses, recognised by keywords in context.

    A keyword counts where the message asks about the thing: not in a tool or idiom ("glue gun", "the bomb"), a
    question about history, a story, film or game request without a how-to, or a document over 60 words
    (nodes/safety_rules._names_topic); the harm rules and the model layers still read those.
    """

    name: Identifier
    keywords: list[str] = Field(min_length=1)
    refusal: str | None = None


class ClassifierLayerSettings(StrictModel):
    """The safety reviewer's local classifier (offline, a few ms per message; see docs/quality.md)."""

    enabled: bool = True
    block_threshold: float = Field(
        0.85, ge=0.0, le=1.0, description="Block when the attack probability reaches this, whatever the rules say."
    )
    cue_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Block from this probability when the message also carries a weak harm cue (e.g. a drug name).",
    )
    check_drafts: bool = Field(
        False,
        description="Also classify draft replies. Off by default: the shipped model learned from user messages, "
        "and reads a polite reply ('How can I help you today?') as a request.",
    )


class EmbeddingLayerSettings(StrictModel):
    """The safety reviewer's embedding layer: a linear head over local sentence vectors (nodes/safety_embedding.py).

    Runs after the rules and the n-gram classifier, on user messages only. The model loads on the first message a
    process screens (about 0.3 s, 120 MB of memory); a tenant that does not want that cost sets enabled: false.
    """

    enabled: bool = True
    block_threshold: float = Field(
        0.96, ge=0.0, le=1.0, description="Block when the head's attack probability reaches this (chosen on val)."
    )
    confirm_below: float = Field(
        0.0,
        ge=0.0,
        le=1.01,
        description="A block by this layer with a score below this stands only when the n-gram classifier agrees "
        "(its attack score reaches classifier_agreement); 0: the layer always blocks alone. With the classifier "
        "off, the layer blocks alone.",
    )
    classifier_agreement: float = Field(
        0.3, ge=0.0, le=1.0, description="The classifier's attack score that confirms a block below confirm_below."
    )


class ModerationLayerSettings(StrictModel):
    """The provider's moderation endpoint (openai SDK), used when a key or base URL is configured."""

    enabled: bool = True
    model: str = Field("omni-moderation-latest", min_length=1)
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Block when any category score reaches this (or the endpoint flags it)."
    )
    timeout_s: float = Field(5.0, gt=0, le=60)


class SafetySettings(StrictModel):
    """What the safety reviewer checks and how it answers."""

    check_prompt_injection: bool = Field(True, description="Jailbreaks, persona and instruction overrides.")
    check_system_prompt_extraction: bool = True
    check_harmful_requests: bool = Field(
        True, description="Requests for help with violence, weapons, drugs, crime, cyber-attacks or self-harm."
    )
    check_hate: bool = Field(True, description="Hateful messages and requests for hate or harassment.")
    redact_user_pii: bool = Field(
        True, description="Redact PII in the user's own message before it is stored, titled or summarised."
    )
    classifier: ClassifierLayerSettings = ClassifierLayerSettings()
    embedding: EmbeddingLayerSettings = EmbeddingLayerSettings()
    moderation: ModerationLayerSettings = ModerationLayerSettings()
    redact_pii: bool = True
    pii_kinds: list[Literal["email", "phone", "card"]] = ["email", "phone", "card"]
    pii_allow: list[str] = Field(
        default_factory=list, description="Contact details that may appear, e.g. a support address."
    )
    disallowed_topics: list[DisallowedTopic] = []
    refusal_message: str = "Sorry, I can't help with that request."
    llm_review: bool = Field(True, description="Run an LLM review after the rule layer when a model is configured.")
    stream_drafts: bool = Field(
        False, description="Show the responder's draft tokens before review (off: users only see reviewed text)."
    )


class TurnDetectionSettings(StrictModel):
    """How a realtime session decides that the speaker has finished (the provider's turn detection)."""

    type: Literal["semantic_vad", "server_vad", "none"] = Field(
        "semantic_vad", description="semantic_vad, server_vad (silence-based), or none: the app ends each turn."
    )
    eagerness: Literal["low", "medium", "high", "auto"] = Field(
        "auto", description="semantic_vad: low waits longest for a speaker who pauses to think."
    )
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="server_vad: activation threshold.")
    prefix_padding_ms: int = Field(300, ge=0, le=5000, description="server_vad: audio kept before speech.")
    silence_duration_ms: int = Field(500, ge=100, le=10000, description="server_vad: silence that ends a turn.")
    create_response: bool = Field(
        True, description="The realtime model answers on its own when a turn ends (off: the app asks it to speak)."
    )
    interrupt_response: bool = Field(True, description="Speech from the user interrupts the model's reply.")


class TranscriptionSettings(StrictModel):
    """Transcription of the user's speech in a realtime session."""

    model: str = Field("gpt-4o-mini-transcribe", min_length=1)
    language: str | None = Field(None, pattern=r"^[a-z]{2}$", description="ISO-639-1 code, e.g. en.")
    prompt: str | None = Field(None, max_length=1000, description="Vocabulary hints for the transcription model.")


class VoiceSettings(StrictModel):
    """Voice parameters: realtime sessions and voice previews. Set in an agent persona, a team or a tenant;
    later levels win field by field, and each level's allowed_voices can only narrow the choice."""

    realtime_model: str = Field("gpt-realtime-2.1-mini", min_length=1)
    default_voice: Identifier = Field("marin", description="A voice id from personas/voice_catalog.yaml.")
    allowed_voices: list[Identifier] = Field(
        default_factory=list, description="Voice ids this level allows (empty: no restriction at this level)."
    )
    speed: float = Field(1.0, ge=0.25, le=1.5, description="Speaking speed, 1.0 = normal.")
    instructions: str = Field(
        "", description="Realtime instructions template; placeholders depend on the team (see docs/voice.md)."
    )
    turn_detection: TurnDetectionSettings = TurnDetectionSettings()
    transcription: TranscriptionSettings = TranscriptionSettings()
    noise_reduction: Literal["near_field", "far_field", "off"] = "near_field"
    max_output_tokens: int | None = Field(
        None, ge=1, le=4096, description="Per spoken reply; default: the speaking persona's max_tokens (<= 4096)."
    )
    secret_ttl_s: int = Field(600, ge=10, le=7200, description="Lifetime of an ephemeral realtime client secret.")
    preview_model: str = Field("gpt-4o-mini-tts", min_length=1, description="Speech model for voice previews.")
    preview_text: str = Field(
        "Hi, I'm {voice_name}. This is how I will sound during your session.",
        min_length=1,
        max_length=1000,
        description="Default preview sentence; {voice_name} is the voice's name.",
    )

    @field_validator("allowed_voices")
    @classmethod
    def _unique_voices(cls, voices: list[str]) -> list[str]:
        if len(set(voices)) != len(voices):
            raise ValueError("voice listed twice")
        return voices

    @model_validator(mode="after")
    def _default_allowed(self) -> VoiceSettings:
        explicit = "default_voice" in self.model_fields_set
        if explicit and self.allowed_voices and self.default_voice not in self.allowed_voices:
            raise ValueError(f"default_voice {self.default_voice!r} is not in allowed_voices")
        return self


class TeamVoiceSettings(VoiceSettings):
    """A team's voice block: also names the node whose persona speaks for the team."""

    speaker: Identifier | None = Field(
        None, description="Node whose persona speaks (its voice block, model timeout and base_url apply)."
    )


class AgentPersona(StrictModel):
    """One agent: its role, model, prompts, safety settings and tools."""

    id: Identifier
    role: str = Field(min_length=1)
    description: str = ""
    model: ModelSettings = ModelSettings()
    prompts: dict[str, str] = Field(
        default_factory=dict, description="Prompt templates by name (system, ...), str.format placeholders."
    )
    safety: SafetySettings = SafetySettings()
    tools: list[str] = []
    voice: VoiceSettings = VoiceSettings()


class RubricCriterion(StrictModel):
    """One criterion the evaluator scores from 1 to 5."""

    name: Identifier
    description: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0, le=10)


class MemorySettings(StrictModel):
    """How much conversation a team keeps in its checkpointed state (and shows the model)."""

    max_messages: int = Field(
        20, ge=4, le=2000, description="Budget: once state holds more messages, older ones are trimmed."
    )
    keep_messages: int = Field(
        8, ge=2, le=2000, description="Messages kept after a trim; the rest move to the archive."
    )
    rolling_summary: bool = Field(True, description="Fold trimmed messages into a rolling summary the model sees.")

    @model_validator(mode="after")
    def _keep_below_budget(self) -> MemorySettings:
        if self.keep_messages >= self.max_messages:
            raise ValueError("keep_messages must be smaller than max_messages")
        return self


class TeamParams(StrictModel):
    """Team parameters: interview size and rubric, chat memory."""

    num_questions: int = Field(5, ge=1, le=30)
    question_mix: list[Literal["behavioral", "technical", "situational"]] = ["behavioral", "technical", "situational"]
    rubric: list[RubricCriterion] = []
    memory: MemorySettings = MemorySettings()


class InputLimits(StrictModel):
    """How much text one turn may bring (checked before the turn runs: 422 naming the field beyond a limit)."""

    max_message_chars: int = Field(20_000, ge=1, le=1_000_000, description="Characters in one message.")
    max_messages: int = Field(20, ge=1, le=1000, description="Messages in one turn's input.")
    max_turn_chars: int = Field(
        200_000,
        ge=1,
        le=10_000_000,
        description="Characters of all text in one turn's input: messages, resume, job description, role.",
    )

    @model_validator(mode="after")
    def _message_within_turn(self) -> InputLimits:
        if self.max_message_chars > self.max_turn_chars:
            raise ValueError("max_message_chars must not exceed max_turn_chars")
        return self


class TeamBundle(StrictModel):
    """A team: which persona plays each node, and its parameters."""

    id: Identifier
    description: str = ""
    hint: str = Field(
        "",
        max_length=300,
        description="What the web page's empty chat suggests asking (GET /teams hint); empty: 'Ask anything about "
        "<tenant name>…'. A tenant sets it under overrides.teams.<team>.hint, e.g. with its knowledge's topics.",
    )
    graph: Identifier = Field(description="Graph module under graphs/ that implements this team.")
    nodes: dict[Identifier, Identifier] = Field(description="node name -> agent persona id")
    params: TeamParams = TeamParams()
    voice: TeamVoiceSettings = TeamVoiceSettings()
    limits: InputLimits = InputLimits()


class ApiKey(StrictModel):
    """A tenant API key: stored as a sha256 hash, or read from a named environment variable."""

    id: Identifier
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    role: Literal["user", "admin"] = "user"
    dev: bool = Field(
        False,
        description="A development key whose value is published (README): `teamgraph serve` refuses a "
        "non-loopback address while it is enabled, unless TEAMGRAPH_ALLOW_DEV_KEYS=true.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        if (self.sha256 is None) == (self.env is None):
            raise ValueError("give exactly one of sha256 (hex digest of the key) or env (variable holding the key)")
        return self

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()


class TenantOverrides(StrictModel):
    """Per-tenant changes to persona and team parameters, deep-merged then re-validated."""

    agents: dict[Identifier, dict[str, Any]] = {}
    teams: dict[Identifier, dict[str, Any]] = {}


class TracingSettings(StrictModel):
    """What LangSmith traces may carry for a tenant."""

    hide_inputs: bool = Field(False, description="Send no run inputs (messages, documents) to LangSmith.")
    hide_outputs: bool = Field(False, description="Send no run outputs to LangSmith.")


class AuditSettings(StrictModel):
    """What the audit log keeps of message text for a tenant."""

    content: Literal["full", "hash", "none"] = Field(
        "full", description="full: the text; hash: its sha256 only; none: not stored (the event still is)."
    )


class TenantLimits(StrictModel):
    """How many turns one tenant may run, per server process: beyond them 429 with Retry-After, so one busy
    tenant cannot starve the others."""

    max_turns_in_flight: int = Field(
        64, ge=1, le=100_000, description="Turns running at once (a batch counts each input)."
    )
    turns_per_minute: int = Field(6000, ge=1, le=10_000_000, description="Turns started per minute (a token bucket).")


class RetentionSettings(StrictModel):
    """How long a tenant's sessions live and how much of each one is stored (see docs/architecture.md)."""

    idle_days: float | None = Field(
        None, gt=0, le=36500,
        description="Sessions idle (no turn, no change) this many days are deleted; null: kept until deleted.",
    )  # fmt: skip
    keep_checkpoints: int = Field(
        20, ge=1, le=100000,
        description="Checkpoints a session keeps (GET /sessions/{id}/history, time travel); older ones are "
        "removed after each turn. The latest is always kept: a session resumes from it.",
    )  # fmt: skip
    archive_messages: int | None = Field(
        60, ge=0, le=10_000_000,
        description="Archived transcript messages a session keeps beyond those in state (oldest go first; the "
        "rolling summary keeps their gist); null: keep the whole transcript (storage then grows with it).",
    )  # fmt: skip


class TenantBundle(StrictModel):
    """A tenant: enabled teams (feature flags), default team, overrides, keys, knowledge file."""

    id: Identifier
    name: str = Field(
        "",
        max_length=80,
        pattern=r"^[^{}]*$",
        description="Display name shown to the tenant's users (the chat's replies and refusals, the web page, "
        "GET /teams tenant_name); fills {tenant_name} in persona, team and voice texts. Empty: the id.",
    )
    enabled_teams: list[Identifier] = Field(min_length=1)
    default_team: Identifier
    overrides: TenantOverrides = TenantOverrides()
    api_keys: list[ApiKey] = []
    knowledge: str | None = Field(None, description="Knowledge file, relative to the bundle directory.")
    tracing: TracingSettings = TracingSettings()
    audit: AuditSettings = AuditSettings()
    voice: VoiceSettings = VoiceSettings()
    limits: TenantLimits = TenantLimits()
    retention: RetentionSettings = RetentionSettings()

    @field_validator("enabled_teams")
    @classmethod
    def _unique(cls, teams: list[str]) -> list[str]:
        if len(set(teams)) != len(teams):
            raise ValueError("team listed twice")
        return teams

    @field_validator("default_team")
    @classmethod
    def _default_enabled(cls, team: str, info: ValidationInfo) -> str:
        # a field validator (enabled_teams is validated first), so the problem points at default_team's line
        enabled = info.data.get("enabled_teams")
        if enabled is not None and team not in enabled:
            raise ValueError(f"default_team {team!r} is not in enabled_teams")
        return team


KIND_MODELS: dict[str, type[StrictModel]] = {
    "agents": AgentPersona,
    "teams": TeamBundle,
    "tenants": TenantBundle,
}


def json_schema() -> dict[str, Any]:
    """JSON Schema of every bundle kind, keyed by the directory that holds that kind."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Teamgraph persona bundles",
        "kinds": {kind: model.model_json_schema() for kind, model in KIND_MODELS.items()},
    }
