"""The OpenAPI document a client generator can trust: auth schemes, every error status with the one error
model, required fields and examples, and real descriptions on the LangServe routes (which FastAPI cannot infer)."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from personas.loader import Bundles
from personas.resolver import fill_tenant_name
from server.team_input import HUMAN, THREAD_ID_PATTERN, THREAD_ID_RULE
from server.voice.service import MEDIA_TYPES

OPEN_PATHS = {"/healthz", "/readyz"}  # no key needed
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
STATUS_TEXT = {
    400: "Bad request: a configurable key clients may not set, or a missing thread_id.",
    401: "No API key, or an unknown one (`WWW-Authenticate: Bearer`).",
    403: "The tenant may not do this (a team it has not enabled, an admin-only route).",
    404: "No such session (another tenant's session is reported the same way), team or route.",
    409: "Conflict: the session is busy (`Retry-After`), belongs to another team, or has started.",
    413: "The request body, or the upload, is over the server's limit.",
    415: "An upload of a type the server does not read.",
    422: "A field is invalid; `error.field` names it.",
    429: "The tenant's turn limits (turns in flight, turns per minute); see `Retry-After`.",
    502: "The voice provider answered with an error.",
    503: (
        "A store or provider is unavailable, or documents fill the parsing queue (or the calling tenant's share of "
        "it); retry after `Retry-After` if given."
    ),
    504: "The voice provider did not answer in time.",
}
RETRY_AFTER = {409, 429, 503}
RUN_ENDPOINTS = ("invoke", "batch", "stream", "stream_events")
SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event: `event` is data, metadata, error or end; `data` is JSON text.",
    "properties": {
        "event": {"type": "string", "enum": ["data", "metadata", "error", "end"]},
        "data": {"type": "string"},
    },
}
REQUEST_EXAMPLES: dict[tuple[str, str], Any] = {
    ("/sessions", "post"): {"team": "veneo_chat", "title": "Shipping questions"},
    ("/sessions/{session_id}", "patch"): {"title": "Returns and shipping"},
    ("/voice/preview", "post"): {"voice": "marin", "team": "veneo_chat"},
}


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. validation_error, session_not_found.")
    message: str = Field(description="What is wrong and how to fix it; names the field when there is one.")
    field: str | None = Field(None, description="The request field at fault, e.g. input.messages[0].type.")


class ErrorFieldProblem(BaseModel):
    field: str
    message: str | None = None


class ErrorResponse(BaseModel):
    """Every error the API answers has this shape."""

    error: ErrorDetail
    details: list[ErrorFieldProblem] | None = Field(None, description="Every problem FastAPI found, for 422s.")


def _statuses(path: str, method: str, has_body: bool) -> set[int]:
    """The error statuses one operation can answer."""
    if path == "/readyz":
        return {503}
    if path in OPEN_PATHS:
        return set()
    found = {401, 422}
    if has_body:
        found |= {413}
    if path.startswith("/teams/") and path.rsplit("/", 1)[-1] in RUN_ENDPOINTS:
        return found | {400, 403, 404, 409, 429, 503}
    if path.startswith("/teams/"):
        return found | {403, 404}
    if path.startswith("/sessions"):
        found |= {403, 404, 503}
        if "{session_id}" in path and method != "get":
            found |= {409}
        if path.endswith("/documents"):
            found |= {400, 415}  # 400: a body that is not multipart form data
        if path.endswith(("/realtime", "/transcripts")):
            found |= {409, 429, 502, 504}
        return found
    if path.startswith("/voice"):
        return found | {403, 404, 429, 502, 503, 504}
    if path == "/audit":
        return found | {403, 503}
    if path.startswith("/users"):  # admin keys only; erasure deletes sessions (one may be busy with a turn)
        return found | {403, 409, 503}
    return found


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": STATUS_TEXT.get(status, "Error."),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    if status in RETRY_AFTER:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
        }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _input_schema(team: str, bundles: Bundles, base: dict[str, Any]) -> dict[str, Any]:
    """The team's input as clients may send it: human messages only, no unknown keys, the team's limits."""
    limits = bundles.teams[team].limits
    text = {"type": "string", "maxLength": limits.max_message_chars}
    human = {"type": "string", "enum": sorted(HUMAN)}
    message = {
        "oneOf": [
            {
                "type": "object",
                "title": "HumanMessage",
                "properties": {"type": human, "content": text, "id": {"type": ["string", "null"]},
                               "name": {"type": ["string", "null"]}},
                "required": ["type", "content"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "title": "ChatMessage",
                "properties": {"role": human, "content": text, "name": {"type": ["string", "null"]}},
                "required": ["role", "content"],
                "additionalProperties": False,
            },
            {**text, "title": "Text", "description": "A bare string is the user's message."},
        ]
    }  # fmt: skip
    properties: dict[str, Any] = {
        "messages": {
            "type": "array",
            "items": message,
            "minItems": 1,
            "maxItems": limits.max_messages,
            "description": "The user's next message(s): human messages only; system prompts and AI messages come "
            "from the team.",
        }
    }
    for key in base.get("properties", {}):
        if key != "messages":
            properties[key] = {"type": "string", "maxLength": limits.max_turn_chars}
    return {
        "type": "object",
        "title": f"{team}_input",
        "description": base.get("description", ""),
        "properties": properties,
        "required": ["messages"],
        "additionalProperties": False,
        "example": {"messages": [{"type": "human", "content": "How long does shipping take?"}]},
    }


def _team_docs(schema: dict[str, Any], bundles: Bundles) -> None:
    comps = schema["components"]["schemas"]
    for team, bundle in bundles.teams.items():
        prefix = f"teams_{team}"
        graph_input = comps.get(f"graphs__{bundle.graph}__InputState", {})
        comps[f"{team}_input"] = _input_schema(team, bundles, graph_input)
        configurable = comps.get(f"{prefix}Configurable")
        if configurable is not None:
            configurable["properties"]["thread_id"].update(
                {"pattern": THREAD_ID_PATTERN, "maxLength": 128, "description": f"The session ({THREAD_ID_RULE}); "
                 "an id you have not used before starts a new session.", "example": "veneo-chat-42"}
            )  # fmt: skip
            configurable["required"] = ["thread_id"]
            configurable["additionalProperties"] = False
        config = comps.get(f"{team}_config")
        if config is not None:
            config["required"] = ["configurable"]
            config["properties"]["callbacks"] = {
                "anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}],
                "description": "Callbacks cannot travel over HTTP; leave it out.",
            }
            config["description"] = "Only configurable.thread_id is yours to set; the rest comes from the bundles."
        for kind in ("InvokeRequest", "StreamRequest", "StreamEventsRequest", "BatchRequest"):
            request = comps.get(f"{prefix}{kind}")
            if request is None:
                continue
            request["required"] = ["inputs" if kind == "BatchRequest" else "input", "config"]
            if kind == "BatchRequest":
                request["properties"]["inputs"]["minItems"] = 1
                request["example"] = {
                    "inputs": [{"messages": [{"type": "human", "content": "How do returns work?"}]}],
                    "config": [{"configurable": {"thread_id": f"{team}-batch-1"}}],
                }
            else:
                request["example"] = {
                    "input": {"messages": [{"type": "human", "content": "How long does shipping take?"}]},
                    "config": {"configurable": {"thread_id": f"{team}-42"}},
                }
        output = comps.get(f"{team}_output")
        if output is not None:  # LangServe answers every state key, null when the state does not have it yet
            output["properties"] = {k: {"anyOf": [v, {"type": "null"}]} for k, v in output["properties"].items()}
        # one document for every tenant: the team's texts are filled per tenant (GET /teams), not here
        _describe_team_paths(schema, team, fill_tenant_name(bundle.description, "the tenant"))


def _describe_team_paths(schema: dict[str, Any], team: str, about: str) -> None:
    base = f"/teams/{team}"
    docs = {
        "invoke": ("Run one turn", "Runs one turn of the session named by `config.configurable.thread_id` and "
                   "answers with the team's state (messages and the team's fields)."),
        "batch": ("Run several turns", "Runs one turn per input; each input needs its own thread_id "
                  "(a config per input)."),
        "stream": ("Run one turn, streaming its state updates", "Server-sent events: `data` (state chunks), "
                   "`metadata` (run id), `error`, `end`. Reviewed text only."),
        "stream_events": ("Run one turn, streaming its events", "Server-sent events of LangChain's astream_events "
                          "(v2): model tokens and node events; drafts before safety review are left out."),
        "input_schema": ("The team's input schema", "JSON Schema of what a turn's input may hold."),
        "output_schema": ("The team's output schema", "JSON Schema of the team's state as a turn returns it."),
        "config_schema": ("The team's config schema", "JSON Schema of the config a client may send "
                          "(configurable.thread_id only)."),
    }  # fmt: skip
    for endpoint, (summary, description) in docs.items():
        item = schema["paths"].get(f"{base}/{endpoint}")
        if not item:
            continue
        for op in item.values():
            op["summary"] = f"{team}: {summary}"
            op["description"] = f"{description}\n\nTeam `{team}`: {about}".strip()
            op["parameters"] = [p for p in op.get("parameters", []) if p.get("name") != "config_hash"]
            if not op["parameters"]:
                del op["parameters"]
            ok = op.get("responses", {}).get("200")
            if ok is not None and endpoint.startswith("stream"):
                ok["content"] = {"text/event-stream": {"schema": SSE_EVENT}}
            elif ok is not None and endpoint.endswith("_schema"):
                ok["content"] = {"application/json": {"schema": {"type": "object"}}}


def build_openapi(app: FastAPI, bundles: Bundles) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema = copy.deepcopy(schema)
    comps = schema.setdefault("components", {})
    comps["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "A tenant key: `Authorization: Bearer <key>`."},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same key."},
    }
    schemas = comps.setdefault("schemas", {})
    schemas.update(ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").pop("$defs", {}))
    schemas["ErrorResponse"] = {
        k: v for k, v in ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").items()
        if k != "$defs"
    }  # fmt: skip
    schemas["ErrorResponse"]["example"] = {
        "error": {"code": "validation_error", "message": "input.messages[0].type: 'ai': clients send the user's "
                  "messages only", "field": "input.messages[0].type"}
    }  # fmt: skip
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _team_docs(schema, bundles)
    for path, item in schema["paths"].items():
        for method, op in item.items():
            example = REQUEST_EXAMPLES.get((path, method))
            if example is not None and "application/json" in op.get("requestBody", {}).get("content", {}):
                op["requestBody"]["content"]["application/json"]["example"] = example
            op["security"] = [] if path in OPEN_PATHS else SECURITY
            responses = op.setdefault("responses", {})
            for status in sorted(_statuses(path, method, "requestBody" in op)):
                responses[str(status)] = _error_response(status)
    preview = schema["paths"].get("/voice/preview", {}).get("post")
    if preview is not None:  # the audio format the voice settings choose
        preview["responses"]["200"]["content"] = {media: {} for media in sorted(set(MEDIA_TYPES.values()))}
    ready = schema["paths"].get("/readyz", {}).get("get")
    if ready is not None:  # not ready answers the readiness body itself, with the check that failed
        ready["responses"]["503"] = {"description": "A store does not answer; `checks` says which.",
                                     "content": copy.deepcopy(ready["responses"]["200"]["content"])}  # fmt: skip
    return schema


def install_openapi(app: FastAPI, bundles: Bundles) -> None:
    """Replace FastAPI's generated document with the completed one (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, bundles)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
