"""What the bench's `langgraph dev` serves: the same two graphs with the bench model, on SQLite files.

The bench's langgraph.json (written to a temp dir, absolute paths) names `interview` and `veneo_chat` below,
`checkpointer` (langgraph.json "checkpointer": custom AsyncSqliteSaver) and `store` (custom AsyncSqliteStore),
both opened exactly as the product opens them (`checkpoints.factory.build_persistence`) on the file named by
TEAMGRAPH_BENCH_DEV_DB, and the product's auth (`server/studio_auth.py`). The graphs are the modules' own
`graph` objects with `bundle_dir` (the bench bundles) added to their config.

The bench model reaches the nodes through `nodes.configuration`'s fallback factory, the one graphs use when no
server put an `agent_factory` in their config (that is the `langgraph dev` path): it is set to `BenchFactory()`
after the graph modules were imported. An `agent_factory` in the graph's own config would not work here: the
LangGraph server copies the configurable into checkpoint metadata, which must be JSON.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # langgraph dev imports this file by path; `bench` is not an installed package
    sys.path.insert(0, str(REPO))

from langgraph.checkpoint.base import BaseCheckpointSaver  # noqa: E402
from langgraph.store.base import BaseStore  # noqa: E402

import nodes.configuration  # noqa: E402
from bench.fake_model import BenchFactory  # noqa: E402
from checkpoints.factory import build_persistence  # noqa: E402
from graphs.interview import graph as _interview  # noqa: E402
from graphs.veneo_chat import graph as _veneo_chat  # noqa: E402

# after the graph modules ran warm_defaults(), which set the fallback factory from the environment
nodes.configuration._default_factory = BenchFactory()

_BUNDLES = os.environ.get("TEAMGRAPH_BENCH_BUNDLE_DIR")
if _BUNDLES:
    # read the bench bundles now, at import: the graphs' first run would otherwise read the files on the event
    # loop, and langgraph dev (blockbuster) fails that run with BlockingError (the shipped bundles are read by
    # the graph modules' warm_defaults() at import the same way)
    from personas.loader import load_bundles_cached

    load_bundles_cached(_BUNDLES)
_CONFIG = {"configurable": {"bundle_dir": _BUNDLES}} if _BUNDLES else {}
interview = _interview.with_config(_CONFIG)
veneo_chat = _veneo_chat.with_config(_CONFIG)


def _url() -> str:
    return "sqlite:///" + os.environ["TEAMGRAPH_BENCH_DEV_DB"]


@contextlib.asynccontextmanager
async def checkpointer() -> AsyncIterator[BaseCheckpointSaver]:
    async with build_persistence(_url()) as persistence:
        yield persistence.checkpointer


@contextlib.asynccontextmanager
async def store() -> AsyncIterator[BaseStore]:
    async with build_persistence(_url()) as persistence:
        yield persistence.store
