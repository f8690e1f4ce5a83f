"""A whole session as one versioned JSON document (`teamgraph.session/1`), as Markdown for people, and back.

The document (docs/api.md, "Session export format") holds everything a session stores: its index entry, the
whole transcript (archived messages and those in state, each a LangChain message dict), the team's state
(scores, summaries, review decisions, questions...), the documents' text and the voice items applied. Import
creates a new session in the target tenant with the same content; nothing in the document is trusted beyond
its shape (the team must be enabled for the tenant; text goes in as data).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict
from langgraph.store.base import PutOp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from checkpoints.audit import AuditEvent
from checkpoints.session_index import MAX_TITLE_CHARS, SessionRecord, printable_title
from nodes.memory_keeper import read_archive_window, transcript_namespace
from server.request_guard import BodyRejected, check_json_text
from server.voice import records as voice_records
from states.migrations import TEAMS

if TYPE_CHECKING:
    from server.engine import Engine

FORMAT = "teamgraph.session/1"
DOCUMENT_KINDS = ("resume", "job_description")
# bookkeeping the importer recomputes (archive positions) or that a finished turn never leaves behind
_NOT_EXPORTED = {"messages", "archived", "draft", "answer_keys"}  # answer_keys: the scorer's, never shown


class ImportRejected(ValueError):
    """A document that cannot be imported; `field` names the part at fault."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class ExportedSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    tenant: str
    team: str
    title: str = Field("", max_length=MAX_TITLE_CHARS)
    created_at: str
    updated_at: str


class ExportedMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant", "system", "tool"]
    name: str | None = None
    content: str
    message: dict[str, Any] = Field(description="The LangChain message dict (type, data): what import restores.")


class VoiceItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    record: dict[str, Any]


class SessionDocument(BaseModel):
    """`teamgraph.session/1`: one exported session."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["teamgraph.session/1"]
    exported_at: str
    session: ExportedSession
    transcript: list[ExportedMessage]
    in_state: int = Field(ge=0, description="How many of the last transcript messages live in the team's state.")
    state: dict[str, Any]
    documents: dict[str, str] = {}
    voice_items: list[VoiceItem] = []
    note: str | None = Field(
        None,
        description="Present when the session was read without its team's graph (its team or tenant removed "
        "from the bundles, or the team no longer enabled for the tenant): the state as stored, its public "
        "channels only. Import ignores it.",
    )


_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def _message(m: BaseMessage) -> dict[str, Any]:
    content = m.content if isinstance(m.content, str) else json.dumps(m.content)
    return {"role": _ROLES.get(m.type, "assistant"), "name": m.name, "content": content, "message": message_to_dict(m)}


async def export_session(engine: Engine, record: SessionRecord, actor: str = "cli") -> dict[str, Any]:
    """The session as a `teamgraph.session/1` document (audited `session_exported`, without the content)."""
    store = engine.persistence.store
    state = await engine.state(record)
    first, archive = await read_archive_window(store, record.thread_id)
    in_state: list[BaseMessage] = list(state.get("messages", []))
    committed = archive[: max(0, int(state.get("archived", 0) or 0) - first)]
    in_state_ids = {m.id for m in in_state if m.id}
    transcript = [m for m in committed if not (m.id and m.id in in_state_ids)] + in_state
    voice = await store.asearch(voice_records.namespace(record.thread_id), limit=10000)
    document = {
        "format": FORMAT,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "session": {
            "id": record.id,
            "tenant": record.tenant,
            "team": record.team,
            "title": record.title,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        },
        "transcript": [_message(m) for m in transcript],
        "in_state": len(in_state),
        "state": {k: v for k, v in state.items() if k not in _NOT_EXPORTED and k not in DOCUMENT_KINDS},
        "documents": {k: state[k] for k in DOCUMENT_KINDS if state.get(k)},
        "voice_items": [{"id": item.key, "record": dict(item.value)} for item in sorted(voice, key=lambda i: i.key)],
    }
    if reason := engine.read_without_graph(record):
        document["note"] = f"read without the team's graph ({reason}): the state as stored, its public channels only"
    await engine.arecord(record.tenant, actor, "session_exported", record.id,
                         {"format": FORMAT, "messages": len(transcript)})  # fmt: skip
    return json.loads(json.dumps(document, default=str))  # plain JSON values only


def parse_document(data: Any) -> SessionDocument:
    """Validate an exported document; ImportRejected names the first field at fault."""
    if isinstance(data, dict) and data.get("format") not in (None, FORMAT):
        raise ImportRejected(f"format: {data.get('format')!r} is not supported; this version reads {FORMAT}", "format")
    try:  # text no store keeps: PostgreSQL refuses NUL, no encoder takes a lone surrogate (SQLite kept both)
        check_json_text(data)
    except BodyRejected as exc:
        raise ImportRejected(str(exc), exc.field) from None
    try:
        doc = SessionDocument.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "(document)"
        raise ImportRejected(f"{where}: {error['msg']}", where) from None
    if doc.in_state > len(doc.transcript):
        raise ImportRejected("in_state: larger than the transcript", "in_state")
    try:
        messages = messages_from_dict([m.message for m in doc.transcript])
    except (KeyError, ValueError, TypeError) as exc:
        raise ImportRejected(f"transcript: not LangChain message dicts ({exc})", "transcript") from None
    # what a session keeps: the user's messages and the team's replies. A system or tool message, or a tool call,
    # would reach the models as an instruction or a result nobody gave; no Teamgraph session holds one
    for i, message in enumerate(messages):
        if message.type not in ("human", "ai"):
            where = f"transcript[{i}].message.type"
            raise ImportRejected(f"{where}: {message.type!r}; a transcript holds 'human' and 'ai' messages", where)
        if getattr(message, "tool_calls", None) or getattr(message, "invalid_tool_calls", None):
            where = f"transcript[{i}].message.data.tool_calls"
            raise ImportRejected(f"{where}: a transcript holds no tool calls", where)
    return doc


def check_team_state(state: dict[str, Any], graph_id: str) -> None:
    """The document's `state` as the team's state model reads it (states/): a session whose state it cannot read
    would answer every read and turn with an error. ImportRejected names the field (`state.review_decisions`)."""
    team = TEAMS.get(graph_id)
    if team is None:
        return  # an unknown team: the import refuses it by name
    try:
        team.model.model_validate(state)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(["state", *(str(p) for p in error["loc"])])
        raise ImportRejected(f"{where}: {error['msg']}", where) from None


async def import_session(engine: Engine, data: Any, tenant: str, actor: str = "cli") -> SessionRecord:
    """Load a `teamgraph.session/1` document as a new session of `tenant` (audited `session_imported`)."""
    doc = parse_document(data)
    check_team_state(doc.state, engine.graph_id(doc.session.team))
    messages = messages_from_dict([m.message for m in doc.transcript])
    split = len(messages) - doc.in_state
    archive, current = messages[:split], messages[split:]
    store = engine.persistence.store

    async def fill(record: SessionRecord) -> AuditEvent:
        if archive:
            namespace = transcript_namespace(record.thread_id)
            await store.abatch([PutOp(namespace, f"{i:09d}", {"message": message_to_dict(m)}, index=False)
                                for i, m in enumerate(archive)])  # fmt: skip
        for item in doc.voice_items:
            await voice_records.mark_applied(store, record.thread_id, item.id, item.record)
        values: dict[str, Any] = {**doc.state, **doc.documents, "archived": len(archive), "messages": current}
        graph = engine.graph(record.team)
        async with engine.turn_locks.hold(record.thread_id, record.team):
            # written as the end of a turn, so the next message continues the conversation
            await graph.aupdate_state(engine.run_config(record), values, as_node="memory_keeper")
        return AuditEvent(tenant, actor, "session_imported", record.id,
                          {"format": FORMAT, "source_session": doc.session.id, "source_tenant": doc.session.tenant,
                           "messages": len(messages)})  # fmt: skip

    # the title as POST /sessions would take it, made so rather than refused: an export of a release whose derived
    # titles kept tabs or bidi controls (or an edited file) still imports; its text is not otherwise changed
    title = printable_title(doc.session.title)
    # all or nothing: the session exists (and its import is on record) only once everything is written
    return await engine.create_filled_session(tenant, doc.session.team, title, fill, actor=actor)


def to_markdown(doc: dict[str, Any]) -> str:
    """The export for people: the transcript as a conversation, then scores, summaries and documents."""
    session = doc["session"]
    lines = [f"# {session['title'] or 'Session ' + session['id']}", "",
             f"- Session: `{session['id']}` (team `{session['team']}`, tenant `{session['tenant']}`)",
             f"- Created: {session['created_at']}; last active: {session['updated_at']}",
             f"- Exported: {doc['exported_at']} ({doc['format']})"]  # fmt: skip
    if doc.get("note"):
        lines.append(f"- Note: {doc['note']}")
    lines += ["", "## Transcript", ""]
    for m in doc["transcript"]:
        who = {"user": "User", "assistant": m.get("name") or "Assistant"}.get(m["role"], m["role"].title())
        lines += [f"**{who}:** {m['content']}", ""]
    state = doc["state"]
    if state.get("rolling_summary"):
        lines += ["## Summary", "", state["rolling_summary"], ""]
    if state.get("summary"):
        lines += ["## Summary", "", "```json", json.dumps(state["summary"], indent=2), "```", ""]
    if state.get("evaluations"):
        lines += ["## Scores", ""]
        for i, evaluation in enumerate(state["evaluations"], 1):
            lines += [f"- Answer {i}: `{json.dumps(evaluation, ensure_ascii=False)}`"]
        lines.append("")
    if state.get("review_decisions"):
        lines += ["## Review decisions", ""]
        lines += [f"- `{json.dumps(d, ensure_ascii=False)}`" for d in state["review_decisions"]]
        lines.append("")
    for kind, text in doc.get("documents", {}).items():
        lines += [f"## {kind.replace('_', ' ').capitalize()}", "", text, ""]
    if doc.get("voice_items"):
        lines += ["## Voice items", ""] + [f"- `{v['id']}`" for v in doc["voice_items"]] + [""]
    return "\n".join(lines)
