"""The registry of team graphs: graph id (as named in a team bundle) -> builder."""

from __future__ import annotations

from collections.abc import Callable

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore

GraphBuilder = Callable[[BaseCheckpointSaver | None, BaseStore | None], CompiledStateGraph]

GRAPH_MODULES = {
    "interview": "graphs.interview",
    "veneo_chat": "graphs.veneo_chat",
}


def graph_builder(graph_id: str) -> GraphBuilder:
    """The `build_graph` of a registered graph module (imported on first use)."""
    import importlib

    try:
        module = importlib.import_module(GRAPH_MODULES[graph_id])
    except KeyError:
        raise KeyError(f"unknown graph {graph_id!r}; registered: {', '.join(sorted(GRAPH_MODULES))}") from None
    builder: GraphBuilder = module.build_graph
    return builder
