"""The `interview` team: tailored questions one at a time, each answer scored on a rubric, then a summary."""

from __future__ import annotations

from typing import Any, Literal, NotRequired

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from typing_extensions import TypedDict

from graphs.common import Messages
from nodes.configuration import warm_defaults
from nodes.evaluator import evaluator
from nodes.fallback_scorer import fallback_scorer
from nodes.interview_flow import ask_next_question, reask
from nodes.interview_summarizer import interview_summarizer
from nodes.memory_keeper import memory_keeper
from nodes.question_generator import question_generator
from states.interview import PRIVATE_CHANNELS  # answer_keys: read by the scorer, never shown to the client

TEAM = "interview"


class InputState(TypedDict):
    """What a client sends: the next message, and on the first turn the documents."""

    messages: NotRequired[Messages]
    resume: NotRequired[str]
    job_description: NotRequired[str]
    role: NotRequired[str]


class InterviewState(InputState):
    questions: NotRequired[list[dict[str, Any]]]
    questions_by: NotRequired[str]
    current: NotRequired[int]
    evaluations: NotRequired[list[dict[str, Any]]]
    summary: NotRequired[dict[str, Any] | None]
    phase: NotRequired[Literal["setup", "asking", "done"]]
    evaluator_error: NotRequired[str | None]
    archived: NotRequired[int]
    # spoken sessions: totals and the latest items (bounded; each spoken message carries its own details)
    voice: NotRequired[dict[str, Any]]


class ScoringState(InterviewState):
    """The fallback scorer also reads the answer keys: a private channel, so no stream, output or session read
    shows what the scorer expects before the answer is scored."""

    answer_keys: NotRequired[list[dict[str, Any]]]


def route_turn(state: InterviewState) -> Literal["question_generator", "evaluator", "reask", "summarizer"]:
    """Each turn: set-up until there are questions, then the message is the answer to the current question."""
    if not state.get("questions"):
        return "question_generator"
    if state.get("phase") == "done":
        return "summarizer"
    last = state["messages"][-1] if state.get("messages") else None
    if not isinstance(last, HumanMessage) or not str(last.content).strip():
        return "reask"
    return "evaluator"


def route_after_evaluator(state: InterviewState) -> Literal["fallback_scorer", "ask_next_question", "summarizer"]:
    if state.get("evaluator_error"):
        return "fallback_scorer"
    return route_after_scoring(state)


def route_after_scoring(state: InterviewState) -> Literal["ask_next_question", "summarizer"]:
    return "ask_next_question" if state.get("current", 0) + 1 < len(state["questions"]) else "summarizer"


def build_graph(checkpointer: BaseCheckpointSaver | None = None, store: BaseStore | None = None) -> CompiledStateGraph:
    builder = StateGraph(InterviewState, input_schema=InputState)
    builder.add_node("question_generator", question_generator)
    builder.add_node("evaluator", evaluator)
    builder.add_node("fallback_scorer", fallback_scorer, input_schema=ScoringState)
    builder.add_node("ask_next_question", ask_next_question)
    builder.add_node("reask", reask)
    builder.add_node("summarizer", interview_summarizer)
    # (state, config, runtime) is a valid node signature that add_node's overloads do not spell out
    builder.add_node("memory_keeper", memory_keeper)  # type: ignore[arg-type]

    builder.add_conditional_edges(START, route_turn)
    builder.add_edge("question_generator", "memory_keeper")
    builder.add_conditional_edges("evaluator", route_after_evaluator)
    builder.add_conditional_edges("fallback_scorer", route_after_scoring)
    builder.add_edge("ask_next_question", "memory_keeper")
    builder.add_edge("reask", "memory_keeper")
    builder.add_edge("summarizer", "memory_keeper")
    builder.add_edge("memory_keeper", END)
    compiled = builder.compile(checkpointer=checkpointer, store=store, name=TEAM)
    # stream values and updates, and read state snapshots, without the private answer keys
    compiled.stream_channels = [c for c in compiled.stream_channels_list if c not in PRIVATE_CHANNELS]
    return compiled.with_config({"configurable": {"team": TEAM}, "tags": [f"team:{TEAM}"]})


# `langgraph dev` / Studio import this module: validate the bundles here, where blocking I/O is allowed
warm_defaults()
graph = build_graph()
