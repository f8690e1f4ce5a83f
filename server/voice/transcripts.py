"""Spoken transcripts into sessions: a user item runs as a turn of the session's graph, an assistant item is
recorded as a spoken reply, and the session keeps a typed voice transcript with speaking time.

Idempotency and order: a request holds the session's turn lock for all its items, so "already applied?" and
the apply are one step, and two requests on a session never interleave. An item counts as applied once its id
is in the session's item records (`records.py`, in the session database) or on a message in state (which also
covers a crash between a turn's checkpoint and its record). Items are applied in the order they were spoken
(`started_at`); an item that starts before an item already applied is refused (409), never applied out of
order, and nothing of that request is applied.

State stays bounded: each spoken message carries its own voice details (`additional_kwargs["voice"]`, archived
with the transcript by the memory keeper); the `voice` channel holds only totals and the latest few items.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from checkpoints.session_index import SessionRecord
from server.voice import records
from server.voice.errors import VoiceError

if TYPE_CHECKING:
    from personas.resolver import TeamRunConfig
    from server.engine import Engine

MAX_ITEMS_PER_REQUEST = 100
MAX_ITEM_CHARS = 20_000
MIN_SECONDS_FOR_PACE = 2.0
MAX_CLOCK_AHEAD = timedelta(days=1)  # how far past the server's clock an item's times may be
SPOKEN_NODE = "realtime"  # the name on recorded spoken replies (the realtime model said them)

_WORD = re.compile(r"\w+(?:['’]\w+)*")
# vocal fillers, as transcription models write them: um, umm, uh, uhm, er, erm, ah, hmm, mm, mhm
_VOCAL_FILLER = re.compile(r"^(?:u+m+|u+h+m*|e+r+m*|a+h+|h+m+|m+h?m+)$")
# discourse fillers, counted only where the transcript sets them off with a comma ("it was, like, hard")
_PHRASE_FILLER = re.compile(r"(?:^|[,.;!?]\s*)(you know|i mean|like|basically|literally)\s*,", re.I)


def speech_metrics(text: str, seconds: float) -> dict[str, Any]:
    """Words, pace (words per minute, when the item lasted long enough to tell) and filler words of a
    transcript item."""
    tokens = _WORD.findall(text)
    fillers: Counter[str] = Counter()
    for token in tokens:
        if _VOCAL_FILLER.match(token.lower()):
            fillers[token.lower()] += 1
    for match in _PHRASE_FILLER.finditer(text):
        fillers[match.group(1).lower()] += 1
    wpm = round(len(tokens) / (seconds / 60), 1) if seconds >= MIN_SECONDS_FOR_PACE and tokens else None
    return {
        "words": len(tokens),
        "wpm": wpm,
        "fillers": sum(fillers.values()),
        "filler_words": dict(fillers.most_common()),
    }


class TranscriptItem(BaseModel):
    """One realtime transcript item as a frontend collects it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$", description="The realtime item id.")
    role: Literal["user", "assistant"]
    text: str = Field(max_length=MAX_ITEM_CHARS, description="The transcript; blank items are skipped.")
    started_at: datetime = Field(description="When speech started: ISO time, or epoch seconds / milliseconds.")
    ended_at: datetime = Field(description="When speech ended (not before started_at).")

    @field_validator("started_at", "ended_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        # items apply in speaking order: one stamped far ahead (a wrong clock) would make every later item of the
        # session out of order, for ever. A browser's clock a little ahead of the server's is fine
        if value > datetime.now(UTC) + MAX_CLOCK_AHEAD:
            raise ValueError("more than a day after the server's clock; send the time speech happened")
        return value

    @model_validator(mode="after")
    def _in_order(self) -> TranscriptItem:
        if self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        return self

    @property
    def seconds(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()


class TranscriptPost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[TranscriptItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class VoiceTurn(BaseModel):
    """One spoken item of the session's voice transcript."""

    item_id: str
    role: Literal["user", "assistant"]
    message_id: str | None = None
    started_at: datetime
    ended_at: datetime
    duration_s: float
    words: int = 0
    wpm: float | None = None
    fillers: int = 0
    filler_words: dict[str, int] = {}
    text: str | None = None  # in the full transcript; state keeps only the message id


class VoiceTotals(BaseModel):
    """Speaking time and delivery over the whole session."""

    user_items: int = 0
    assistant_items: int = 0
    user_speaking_s: float = 0.0
    assistant_speaking_s: float = 0.0
    user_words: int = 0
    fillers: int = 0

    @property
    def user_wpm(self) -> float | None:
        return round(self.user_words / (self.user_speaking_s / 60), 1) if self.user_speaking_s >= 1 else None

    def view(self) -> dict[str, Any]:
        return {**self.model_dump(), "user_wpm": self.user_wpm}


class VoiceState(BaseModel):
    """The `voice` channel of a team's state: totals, the latest items (bounded) and the last start time."""

    totals: VoiceTotals = VoiceTotals()
    recent: list[VoiceTurn] = []
    last_started_at: datetime | None = None

    @classmethod
    def of(cls, state: dict[str, Any]) -> VoiceState:
        return cls.model_validate(state.get("voice") or {})

    def add(self, turn: VoiceTurn, keep: int) -> VoiceState:
        totals = self.totals.model_copy()
        if turn.role == "user":
            totals.user_items += 1
            totals.user_speaking_s = round(totals.user_speaking_s + turn.duration_s, 3)
            totals.user_words += turn.words
            totals.fillers += turn.fillers
        else:
            totals.assistant_items += 1
            totals.assistant_speaking_s = round(totals.assistant_speaking_s + turn.duration_s, 3)
        last = max(self.last_started_at, turn.started_at) if self.last_started_at else turn.started_at
        recent = [*self.recent, turn.model_copy(update={"text": None})][-keep:]
        return VoiceState(totals=totals, recent=recent, last_started_at=last)


def voice_meta(message: BaseMessage) -> dict[str, Any] | None:
    meta = message.additional_kwargs.get("voice") if isinstance(message, BaseMessage) else None
    return meta if isinstance(meta, dict) and meta.get("item_id") else None


def _turn_of(item: TranscriptItem, metrics: dict[str, Any]) -> VoiceTurn:
    return VoiceTurn(
        item_id=item.id,
        role=item.role,
        started_at=item.started_at,
        ended_at=item.ended_at,
        duration_s=round(item.seconds, 3),
        **metrics,
    )


def _message_meta(turn: VoiceTurn) -> dict[str, Any]:
    """What a spoken message carries (JSON-safe), archived with it."""
    return turn.model_dump(mode="json", exclude={"text", "message_id", "role"})


async def _run_turn(
    engine: Engine, session: SessionRecord, run: TeamRunConfig, turn_input: dict[str, Any], actor: str
) -> dict[str, Any]:
    """One turn of the session's graph with the turn lock already held (it is not reentrant): the same run
    config, observer (logs, metrics, spans, audit) and trace scope as every turn. Returns the replies and the
    evaluation or review decision the turn produced."""
    from server.engine import title_hint

    config = engine.run_config(session, run, actor=actor, observe=True)
    graph = engine.graph(session.team)
    replies: list[AIMessage] = []
    evaluation = review = None
    with engine.trace_scope(session.tenant):
        async for chunk in graph.astream(turn_input, config, stream_mode="updates"):
            for update in (chunk or {}).values():
                if not isinstance(update, dict):
                    continue
                for message in update.get("messages") or []:
                    if isinstance(message, AIMessage) and not isinstance(message, RemoveMessage):
                        replies.append(message)
                if update.get("evaluations"):
                    evaluation = update["evaluations"][-1]
                if update.get("review_decisions"):
                    review = update["review_decisions"][-1]
    await engine.touch(session.thread_id, title_hint(turn_input))
    return {"replies": replies, "evaluation": evaluation, "review": review}


def _applied_in_state(state: dict[str, Any], voice: VoiceState) -> set[str]:
    ids = {t.item_id for t in voice.recent}
    for message in state.get("messages", []):
        meta = voice_meta(message)
        if meta:
            ids.add(str(meta["item_id"]))
    return ids


async def apply_transcript(
    engine: Engine,
    session: SessionRecord,
    run: TeamRunConfig,
    items: list[TranscriptItem],
    actor: str,
    spoken_by: str,
) -> dict[str, Any]:
    """Apply the items not applied yet, in speaking order, under the session's turn lock.

    Returns per item its status (`applied`, `duplicate` or `skipped`: blank text) and, for applied user items,
    the turn's replies; plus the new state. `spoken_by` labels recorded assistant items (the realtime model).
    """
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in seen:
            raise VoiceError(
                422, "validation_error", f"items[{i}].id: {item.id!r} is also items[{seen[item.id]}]", f"items[{i}].id"
            )
        seen[item.id] = i
    order = sorted(range(len(items)), key=lambda i: (items[i].started_at, i))
    graph = engine.graph(session.team)
    config = engine.run_config(session, run)
    store = engine.persistence.store
    keep = run.team.params.memory.keep_messages
    results: list[dict[str, Any] | None] = [None] * len(items)
    async with engine.turn_locks.hold(session.thread_id, session.team):
        await engine.upgrade_session(session)  # an older session's state is stored in the current version first
        state = dict((await graph.aget_state(config)).values)
        voice = VoiceState.of(state)
        in_state = _applied_in_state(state, voice)
        pending = []
        for i in order:
            item = items[i]
            if item.id in in_state or await records.applied(store, session.thread_id, item.id) is not None:
                results[i] = {"id": item.id, "role": item.role, "status": "duplicate"}
            else:
                pending.append(i)
        for i in pending:  # refuse the whole request before anything is applied
            if voice.last_started_at and items[i].started_at < voice.last_started_at:
                raise VoiceError(
                    409,
                    "transcript_out_of_order",
                    f"items[{i}] ({items[i].id!r}) started at {items[i].started_at.isoformat()}, before the latest "
                    f"applied item ({voice.last_started_at.isoformat()}); spoken items are applied in order: post "
                    "every item not yet acknowledged, oldest first",
                    f"items[{i}].started_at",
                )
        for i in pending:
            item = items[i]
            text = item.text.strip()
            result: dict[str, Any] = {"id": item.id, "role": item.role, "status": "applied"}
            message: BaseMessage
            if not text:
                result["status"] = "skipped"
                result["reason"] = "blank transcript"
            else:
                turn = _turn_of(
                    item,
                    speech_metrics(text, item.seconds) if item.role == "user" else {"words": len(_WORD.findall(text))},
                )
                if item.role == "user":
                    message = HumanMessage(
                        text,
                        id=str(uuid.uuid4()),
                        additional_kwargs={"voice": _message_meta(turn)},
                        response_metadata={"kind": "spoken"},
                    )
                    outcome = await _run_turn(engine, session, run, {"messages": [message]}, actor)
                    result.update(outcome)
                else:
                    message = AIMessage(
                        text,
                        id=str(uuid.uuid4()),
                        name=SPOKEN_NODE,
                        additional_kwargs={"voice": _message_meta(turn)},
                        response_metadata={"kind": "spoken_reply", "produced_by": spoken_by},
                    )
                    # the audit record first: an action whose record cannot be written does not happen
                    engine.record(
                        session.tenant,
                        actor,
                        "response",
                        session.id,
                        {
                            "node": SPOKEN_NODE,
                            "content": text,
                            "kind": "spoken_reply",
                            "produced_by": spoken_by,
                            "voice_item": item.id,
                        },
                    )
                    await graph.aupdate_state(config, {"messages": [message]}, as_node="memory_keeper")
                    await engine.touch(session.thread_id)
                voice = voice.add(turn.model_copy(update={"message_id": message.id}), keep)
                await graph.aupdate_state(config, {"voice": voice.model_dump(mode="json")}, as_node="memory_keeper")
            await records.mark_applied(
                store,
                session.thread_id,
                item.id,
                {"role": item.role, "status": result["status"], "started_at": item.started_at.isoformat()},
            )
            results[i] = result
        state = dict((await graph.aget_state(config)).values)
    return {"items": results, "state": state, "voice": VoiceState.of(state)}


async def voice_transcript(engine: Engine, session: SessionRecord) -> tuple[list[VoiceTurn], VoiceTotals]:
    """Every spoken item of the session (archived ones included), in order, with the session's totals."""
    turns = []
    for message in await engine.transcript(session):
        meta = voice_meta(message)
        if meta is None:
            continue
        role: Literal["user", "assistant"] = "user" if isinstance(message, HumanMessage) else "assistant"
        turns.append(
            VoiceTurn.model_validate({**meta, "role": role, "message_id": message.id, "text": str(message.content)})
        )
    state = await engine.state(session)
    return turns, VoiceState.of(state).totals
