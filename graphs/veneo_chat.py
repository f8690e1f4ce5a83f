"""The `veneo_chat` team: the responder drafts, the safety reviewer approves, rewrites or blocks."""

from __future__ import annotations

from typing import Any, Literal, NotRequired

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from typing_extensions import TypedDict

from graphs.common import Messages
from nodes.chat_summary import chat_summarizer, is_summarize_request
from nodes.configuration import warm_defaults
from nodes.memory_keeper import memory_keeper
from nodes.primary_responder import primary_responder
from nodes.safety_reviewer import input_screen, safety_reviewer
from states.veneo_chat import PRIVATE_CHANNELS

TEAM = "veneo_chat"


class InputState(TypedDict):
    """What a client sends: the next user message (`/summarize` asks for a summary)."""

    messages: NotRequired[Messages]


class ChatState(InputState):
    rolling_summary: NotRequired[str]
    review_decisions: NotRequired[list[dict[str, Any]]]
    decisions_archived: NotRequired[int]
    archived: NotRequired[int]
    # spoken sessions: totals and the latest items (bounded; each spoken message carries its own details)
    voice: NotRequired[dict[str, Any]]


class ReviewState(ChatState):
    """The reviewer also reads the draft and the input screen's decision: private channels, so no stream or output
    ever shows unreviewed text."""

    draft: NotRequired[dict[str, Any] | None]
    input_review: NotRequired[dict[str, Any] | None]


def route_message(state: ChatState) -> Literal["summarizer", "input_screen"]:
    messages = state.get("messages", [])
    if messages and is_summarize_request(messages[-1]):
        return "summarizer"
    return "input_screen"


def route_after_screen(state: ReviewState) -> Literal["safety_reviewer", "primary_responder"]:
    """A message any safety layer blocked never reaches the responder: the reviewer answers with the refusal."""
    review = state.get("input_review") or {}
    return "safety_reviewer" if review.get("action") == "block" else "primary_responder"


def build_graph(checkpointer: BaseCheckpointSaver | None = None, store: BaseStore | None = None) -> CompiledStateGraph:
    builder = StateGraph(ChatState, input_schema=InputState)
    builder.add_node("input_screen", input_screen, input_schema=ReviewState)
    builder.add_node("primary_responder", primary_responder)
    builder.add_node("safety_reviewer", safety_reviewer, input_schema=ReviewState)
    builder.add_node("summarizer", chat_summarizer)
    # (state, config, runtime) is a valid node signature that add_node's overloads do not spell out
    builder.add_node("memory_keeper", memory_keeper)  # type: ignore[arg-type]

    builder.add_conditional_edges(START, route_message)
    builder.add_conditional_edges("input_screen", route_after_screen)
    builder.add_edge("primary_responder", "safety_reviewer")
    builder.add_edge("safety_reviewer", "memory_keeper")
    builder.add_edge("summarizer", "memory_keeper")
    builder.add_edge("memory_keeper", END)
    compiled = builder.compile(checkpointer=checkpointer, store=store, name=TEAM)
    # stream values and updates without the private draft: clients only ever see reviewed text
    compiled.stream_channels = [c for c in compiled.stream_channels_list if c not in PRIVATE_CHANNELS]
    return compiled.with_config({"configurable": {"team": TEAM}, "tags": [f"team:{TEAM}"]})


# `langgraph dev` / Studio import this module: validate the bundles here, where blocking I/O is allowed
warm_defaults()
graph = build_graph()
