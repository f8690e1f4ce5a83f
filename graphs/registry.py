"""The registry of team graphs: every module under graphs/ with a `build_graph` is a graph a team bundle can name.

Importing it imports no graph and no LangGraph: `teamgraph personas validate` checks team bundles against
GRAPH_MODULES and must start in well under a second.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.graph.state import CompiledStateGraph
    from langgraph.store.base import BaseStore

    GraphBuilder = Callable[[BaseCheckpointSaver | None, BaseStore | None], CompiledStateGraph]

_NOT_GRAPHS = {"registry", "common"}


def graph_ids() -> set[str]:
    """Names of the graph modules under graphs/ (found without importing them)."""
    here = str(Path(__file__).resolve().parent)
    return {m.name for m in pkgutil.iter_modules([here]) if not m.ispkg and m.name not in _NOT_GRAPHS}


GRAPH_MODULES = {graph_id: f"graphs.{graph_id}" for graph_id in sorted(graph_ids())}


def graph_builder(graph_id: str) -> GraphBuilder:
    """The `build_graph(checkpointer, store)` of graph module `graph_id`."""
    if graph_id not in GRAPH_MODULES:
        raise KeyError(f"unknown graph {graph_id!r}; graphs/ has: {', '.join(GRAPH_MODULES)}")
    module = importlib.import_module(GRAPH_MODULES[graph_id])
    builder: GraphBuilder | None = getattr(module, "build_graph", None)
    if builder is None:
        raise KeyError(f"graphs/{graph_id}.py defines no build_graph(checkpointer, store)")
    return builder
