"""/sessions: create, list, read (transcript + team state), rename, delete, history, documents."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import unicodedata
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Header, Path, Query, Request, Response, UploadFile
from langchain_core.messages import BaseMessage
from pydantic import BaseModel, Field, field_validator

from checkpoints.session_index import MAX_TITLE_CHARS, SessionRecord, unprintable_in_title
from server.deps import CurrentCaller, EngineDep, SettingsDep
from server.documents import (
    PLAIN_TEXT,
    DocumentReadersBusy,
    DocumentReadersUnavailable,
    DocumentTooLarge,
    UnreadableDocument,
    UnsupportedDocument,
    document_kind,
    extract_text,
    parse_in_background,
    read_document,
)
from server.engine import CheckpointNotFound, CreateKeyReused, DocumentRejected, SessionNotFound, UserTagConflict
from server.errors import ApiError
from server.session_export import export_session, to_markdown
from server.team_input import (
    IDEMPOTENCY_KEY_RULE,
    THREAD_ID_PATTERN,
    THREAD_ID_RULE,
    USER_ID_PATTERN,
    USER_ID_RULE,
    check_idempotency_key,
)
from states.migrations import TEAMS

router = APIRouter(prefix="/sessions", tags=["sessions"])

SessionId = Annotated[
    str, Path(pattern=THREAD_ID_PATTERN, description=f"The session's id ({THREAD_ID_RULE}).", examples=["interview-42"])
]
MAX_FILENAME_CHARS = 255

# answer_keys: what the scorer expects of each answer (private to it; a session read upgraded from version 1 has them)
INTERNAL_STATE_KEYS = {"messages", "draft", "evaluator_error", "archived", "decisions_archived", "answer_keys"}


def one_line_title(title: str | None) -> str | None:
    """A title as it is stored: one line of text without surrounding blanks. A line break, tab, line separator or
    other control character, a bidi override or isolate, a zero-width space or byte order mark is refused: titles
    are listed one per line, and the audit log records them as sent."""
    if title is None:
        return None
    bad = next((c for c in title if unprintable_in_title(c)), None)
    if bad is not None:
        name = unicodedata.name(bad, "a control character").lower()
        raise ValueError(
            f"one line of text without control, line-separator or disguising invisible characters; it holds "
            f"U+{ord(bad):04X} ({name}): remove it"
        )
    return title.strip()


def new_title(title: str) -> str:
    """A title given to an existing session (PATCH, `teamgraph sessions rename`): one line (`one_line_title`), not
    blank, at most 200 characters; ValueError says what is wrong."""
    if len(title) > MAX_TITLE_CHARS:
        raise ValueError(f"at most {MAX_TITLE_CHARS} characters; it has {len(title)}")
    checked = one_line_title(title)
    if not checked:
        raise ValueError("blank; give a title with a visible character")
    return checked


class SessionCreate(BaseModel):
    team: str | None = Field(None, description="Team id; the tenant's default team when omitted.")
    title: str = Field("", max_length=MAX_TITLE_CHARS, description="Optional; else taken from the first message.")
    user_id: str | None = Field(
        None, pattern=USER_ID_PATTERN,
        description=f"Your id for the end user this session is about ({USER_ID_RULE}); DELETE /users/{{user_id}} "
        "erases it.",
    )  # fmt: skip

    @field_validator("title")
    @classmethod
    def _one_line(cls, title: str) -> str:
        return one_line_title(title) or ""


def create_fingerprint(body: BaseModel) -> str:
    """What "the same body" of a POST /sessions means: the request as validated (the title without its surrounding
    blanks), fields at their defaults left out, so a field a later release adds (with a default) does not change
    the fingerprint of a body sent again across an upgrade."""
    sent = json.dumps(body.model_dump(mode="json", exclude_defaults=True), sort_keys=True)
    return hashlib.sha256(sent.encode()).hexdigest()


class SessionPatch(BaseModel):
    title: str | None = Field(
        None, min_length=1, max_length=MAX_TITLE_CHARS,
        description="A new title: one line, not blank (surrounding blanks are dropped).",
    )  # fmt: skip
    user_id: str | None = Field(
        None, pattern=USER_ID_PATTERN,
        description=f"Tag the session with the end user it is about ({USER_ID_RULE}), e.g. one a team route "
        "started; once: a session tagged with another id is a 409. DELETE /users/{user_id} erases it.",
    )  # fmt: skip

    @field_validator("title")
    @classmethod
    def _one_line(cls, title: str | None) -> str | None:
        return None if title is None else new_title(title)


class SessionOut(BaseModel):
    id: str
    team: str
    title: str
    user_id: str | None = Field(None, description="The end user the session is tagged with, if any.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: SessionRecord) -> SessionOut:
        return cls(
            id=record.id,
            team=record.team,
            title=record.title,
            user_id=record.user_id,
            created_at=datetime.fromisoformat(record.created_at),
            updated_at=datetime.fromisoformat(record.updated_at),
        )


class SessionList(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next (older) page.")


class TranscriptMessage(BaseModel):
    id: str | None
    role: Literal["user", "assistant", "system", "tool"]
    name: str | None = None
    content: str
    metadata: dict[str, Any] = {}


class SessionDetail(SessionOut):
    schema_version: int = Field(
        description="The team state version the session is stored with (its `state` is shown in the current one)."
    )
    transcript: list[TranscriptMessage]
    state: dict[str, Any] = Field(
        description="The team's state (questions, evaluations, summary, review decisions...), as its model in "
        "states/<team>.py defines it."
    )


class Checkpoint(BaseModel):
    checkpoint_id: str
    created_at: datetime | None
    step: int | None
    source: str | None
    next: list[str]
    messages: int


class History(BaseModel):
    items: list[Checkpoint]
    next_before: str | None = None


class DocumentOut(BaseModel):
    kind: Literal["resume", "job_description"]
    filename: str | None
    characters: int


def safe_filename(filename: str | None) -> str | None:
    """The upload's base name only: no directories (either slash), no control characters, at most 255 characters;
    it is stored and shown back, so a client cannot plant a path or terminal escapes in it."""
    if not filename:
        return None
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    if base in ("", ".", ".."):
        return None
    stem, dot, suffix = base.rpartition(".")
    if len(base) > MAX_FILENAME_CHARS:  # keep the extension: it decides how the file is read
        base = (
            f"{stem[: MAX_FILENAME_CHARS - len(suffix) - 1]}.{suffix}"
            if dot and len(suffix) < 16
            else base[:MAX_FILENAME_CHARS]
        )
    return base


def _encode_cursor(record: SessionRecord) -> str:
    return base64.urlsafe_b64encode(json.dumps([record.updated_at, record.thread_id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        # RecursionError: client text, so it may nest deeper than json.loads recurses ("[" * 1000 is 2,668 characters)
        decoded = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not (isinstance(decoded, list) and len(decoded) == 2 and all(isinstance(v, str) for v in decoded)):
            raise ValueError("not the [updated_at, thread_id] pair _encode_cursor writes")
        updated_at, thread_id = decoded
        # decoded after the request guard looked at the query: a NUL or a lone surrogate would reach the database
        if "\x00" in updated_at + thread_id:
            raise ValueError("NUL")
        (updated_at + thread_id).encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
        return updated_at, thread_id
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise ApiError(422, "validation_error", "cursor: not a cursor returned by this API", "cursor") from None


_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_METADATA_KEYS = (
    "kind",
    "produced_by",
    "question_index",
    "review_action",
    "review_category",
    "review",
    "knowledge_section",
)


def transcript_view(messages: list[BaseMessage]) -> list[TranscriptMessage]:
    return [
        TranscriptMessage(
            id=m.id,
            role=_ROLES.get(m.type, "assistant"),  # type: ignore[arg-type]
            name=m.name,
            content=m.content if isinstance(m.content, str) else json.dumps(m.content),
            metadata={k: v for k, v in (m.response_metadata or {}).items() if k in _METADATA_KEYS},
        )
        for m in messages
    ]


@router.post("", status_code=201, response_model=SessionOut)
async def create_session(
    body: SessionCreate,
    caller: CurrentCaller,
    engine: EngineDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description=f"Optional, {IDEMPOTENCY_KEY_RULE}, a new one per session to create: sent again with the "
            "same body, the session it created is answered again instead of a second one being created; with "
            "another body, a 422.",
        ),
    ] = None,
) -> SessionOut:
    """Start a session with one of the caller's teams (403 if the team is not enabled for the tenant)."""
    idempotency = None
    if idempotency_key is not None:
        idempotency = (check_idempotency_key(idempotency_key), create_fingerprint(body))
    try:
        record = await engine.create_session(
            caller.tenant, body.team, body.title, actor=caller.key_id, user_id=body.user_id, idempotency=idempotency
        )
    except CreateKeyReused as exc:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"Idempotency-Key: {exc.key!r} already created session {exc.session_id!r} from a different request "
            "(another team, title or user_id); use a new key for a new session",
            "Idempotency-Key",
        ) from None
    return SessionOut.of(record)


@router.get("", response_model=SessionList)
async def list_sessions(
    caller: CurrentCaller,
    engine: EngineDep,
    team: Annotated[str | None, Query(description="Only this team's sessions.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor from the previous page.")] = None,
) -> SessionList:
    """The caller's sessions, most recently active first (403 / 404 for a team the caller cannot use)."""
    if team is not None:
        engine.resolver.resolve(caller.tenant, team)  # the same refusal POST /sessions gives
    before = _decode_cursor(cursor) if cursor else None
    records = await engine.alist_sessions(caller.tenant, team, limit=limit + 1, before=before)
    page = records[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(records) > limit else None
    return SessionList(items=[SessionOut.of(r) for r in page], next_cursor=next_cursor)


@router.get("/{session_id}", response_model=SessionDetail)
async def get_session(session_id: SessionId, caller: CurrentCaller, engine: EngineDep) -> SessionDetail:
    """The whole transcript (archived turns included) and the team's state."""
    record = await engine.aget_session(caller.tenant, session_id)
    state, version = await engine.versioned_state(record)
    transcript = await engine.transcript(record)
    model = TEAMS.get(engine.graph_id(record.team))
    shown = {k: v for k, v in state.items() if k not in INTERNAL_STATE_KEYS}
    if model is not None:  # the team's state model is what a session holds: it checks and shapes the answer
        shown = model.model.model_validate(shown).model_dump(mode="json", exclude_unset=True)
    return SessionDetail(
        **SessionOut.of(record).model_dump(),
        schema_version=version,
        transcript=transcript_view(transcript),
        state=shown,
    )


@router.patch("/{session_id}", response_model=SessionOut)
async def patch_session(
    session_id: SessionId, body: SessionPatch, caller: CurrentCaller, engine: EngineDep
) -> SessionOut:
    """Rename the session and/or tag it with its end user (each audited); the fields left out are kept. All or
    nothing: an answer other than 200 changed nothing, audit log included."""
    if body.title is None and body.user_id is None:
        raise ApiError(422, "validation_error", "title: give a title, a user_id, or both", "title")
    record = await engine.aget_session(caller.tenant, session_id)
    try:
        record = await asyncio.to_thread(
            engine.change_session, record, caller.key_id, title=body.title, user_id=body.user_id
        )
    except UserTagConflict:
        raise ApiError(
            409, "user_id_conflict", "user_id: the session is tagged with another end user already", "user_id"
        ) from None
    return SessionOut.of(record)


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: SessionId, caller: CurrentCaller, engine: EngineDep) -> Response:
    """Remove the session's checkpoints, archived transcript and index entry; later reads are 404. Repeating the
    DELETE of a session whose deletion was interrupted (a crash, a failed audit write) finishes it."""
    try:
        record = await engine.aget_session(caller.tenant, session_id)
    except SessionNotFound:
        if await engine.finish_deletion(caller.tenant, session_id, actor=caller.key_id):
            return Response(status_code=204)
        raise
    await engine.delete_session(record, actor=caller.key_id)
    return Response(status_code=204)


@router.get("/{session_id}/history", response_model=History)
async def session_history(
    session_id: SessionId,
    caller: CurrentCaller,
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    before: Annotated[str | None, Query(description="next_before from the previous page.")] = None,
) -> History:
    """The session's checkpoints, newest first."""
    record = await engine.aget_session(caller.tenant, session_id)
    try:
        items = await engine.history(record, limit=limit + 1, before=before)
    except CheckpointNotFound:
        raise ApiError(422, "validation_error", "before: not a checkpoint of this session", "before") from None
    page = items[:limit]
    return History(
        items=[Checkpoint(**i) for i in page], next_before=page[-1]["checkpoint_id"] if len(items) > limit else None
    )


@router.post("/{session_id}/documents", response_model=DocumentOut)
async def upload_document(
    session_id: SessionId,
    request: Request,
    caller: CurrentCaller,
    engine: EngineDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="txt, md, pdf or docx")],
    kind: Annotated[Literal["resume", "job_description"], Form()],
) -> DocumentOut:
    """Read a resume or job description into the session's state (before the interview's first turn)."""
    form = await request.form()  # already parsed for the parameters: this reads FastAPI's copy
    for part in ("file", "kind"):
        if len(form.getlist(part)) > 1:
            raise ApiError(422, "validation_error", f"{part}: sent {len(form.getlist(part))} times; send one", part)
    record = await engine.aget_session(caller.tenant, session_id)
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(
            413, "payload_too_large", f"file: larger than the {settings.max_upload_bytes} byte limit", "file"
        )
    filename = safe_filename(file.filename)
    try:
        extension = document_kind(filename, file.content_type)
        if extension in PLAIN_TEXT:  # decoding is quick: never waits behind other uploads' parsing
            text = extract_text(data, extension, settings.max_upload_bytes)
        else:  # parsing a pdf or docx is CPU work: in a reader process with a time limit, off the loop, a short queue
            read = partial(read_document, seconds=settings.document_read_timeout_s)
            future = parse_in_background(read, data, extension, settings.max_upload_bytes, caller.tenant)
            text = await asyncio.wrap_future(future)
    except DocumentReadersBusy as exc:
        raise ApiError(503, "documents_busy", str(exc), headers={"Retry-After": "2"}) from None
    except DocumentReadersUnavailable as exc:
        raise ApiError(503, "documents_unavailable", str(exc), headers={"Retry-After": "5"}) from None
    except UnsupportedDocument as exc:
        raise ApiError(415, "unsupported_media_type", f"file: {exc}", "file") from None
    except DocumentTooLarge as exc:
        raise ApiError(413, "payload_too_large", f"file: {exc}", "file") from None
    except UnreadableDocument as exc:
        raise ApiError(422, "unreadable_document", f"file: {exc}", "file") from None
    try:
        await engine.attach_document(record, kind, text, actor=caller.key_id, filename=filename)
    except DocumentRejected as exc:
        raise ApiError(exc.status, "document_rejected", f"{exc.field}: {exc}", exc.field) from None
    return DocumentOut(kind=kind, filename=filename, characters=len(text))


@router.get(
    "/{session_id}/export",
    responses={200: {"content": {"application/json": {}, "text/markdown": {}},
                     "description": "A `teamgraph.session/1` document (docs/api.md), or Markdown."}},
)  # fmt: skip
async def export_session_route(
    session_id: SessionId,
    caller: CurrentCaller,
    engine: EngineDep,
    format: Annotated[Literal["json", "markdown"] | None, Query(description="json (default) or markdown")] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """The whole session as one versioned JSON document (`teamgraph import` loads it elsewhere), or as
    Markdown for people (`?format=markdown` or `Accept: text/markdown`)."""
    record = await engine.aget_session(caller.tenant, session_id)
    document = await export_session(engine, record, actor=caller.key_id)
    markdown = format == "markdown" or (format is None and "text/markdown" in (accept or ""))
    if markdown:
        return Response(to_markdown(document), media_type="text/markdown; charset=utf-8")
    return Response(json.dumps(document, ensure_ascii=False), media_type="application/json")
