"""A turn reads its session's latest checkpoint once: the version check's read is handed to the graph's run."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple

PREFETCHED = "__prefetched_checkpoint"  # configurable key (server-set; "__" keys never reach trace metadata)


class PrefetchedCheckpoint:
    """The latest checkpoint of one thread (or None: nothing stored yet), read by the server under the thread's
    turn lock just before the turn. Handed out once, to the turn's first read of the thread's latest checkpoint;
    any write to the thread before that drops it."""

    def __init__(self) -> None:
        self._thread_id: str | None = None
        self._found: CheckpointTuple | None = None
        self._under_lease: tuple[str, CheckpointTuple | None] | None = None

    def read_under_lease(self, thread_id: str, found: CheckpointTuple | None) -> None:
        """The latest checkpoint as read together with the turn lock (Engine.lease_turn), for the version check."""
        self._under_lease = (thread_id, found)

    def take_read_under_lease(self, thread_id: str) -> tuple[bool, CheckpointTuple | None]:
        """(True, what was read) once, for the thread it was read for; else (False, None): read it yourself."""
        held, self._under_lease = self._under_lease, None
        return (True, held[1]) if held is not None and held[0] == thread_id else (False, None)

    def keep(self, thread_id: str, found: CheckpointTuple | None) -> None:
        self._thread_id, self._found = thread_id, found

    def take(self, config: RunnableConfig) -> tuple[bool, CheckpointTuple | None]:
        """(True, what was read) when `config` asks for the kept thread's latest checkpoint, else (False, None)."""
        configurable = config.get("configurable") or {}
        if (
            self._thread_id is None
            or configurable.get("checkpoint_id")
            or configurable.get("checkpoint_ns", "")
            or str(configurable.get("thread_id")) != self._thread_id
        ):
            return False, None
        found = self._found
        self.drop()
        return True, found

    def drop(self) -> None:
        self._thread_id, self._found = None, None


def _held(config: RunnableConfig) -> PrefetchedCheckpoint | None:
    held = (config.get("configurable") or {}).get(PREFETCHED)
    return held if isinstance(held, PrefetchedCheckpoint) else None


@functools.cache
def _reusing_class(cls: type[BaseCheckpointSaver]) -> type[BaseCheckpointSaver]:
    """`cls` with `aget_tuple` answering from the run's PrefetchedCheckpoint when it holds the checkpoint asked for
    (a database round trip and a deserialization of the whole state saved), and writes dropping it. A subclass
    of `cls` alone that adds no storage, so a saver's class can be swapped for it."""

    class ReusesPrefetched(cls):  # type: ignore[valid-type,misc]
        __slots__ = ()
        reuses_prefetched = True

        async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
            held = _held(config)
            if held is not None:
                hit, found = held.take(config)
                if hit:
                    return found
            found = await super().aget_tuple(config)
            return found

        async def aput(self, config: RunnableConfig, *args: Any, **kwargs: Any) -> RunnableConfig:
            if (held := _held(config)) is not None:
                held.drop()
            saved: RunnableConfig = await super().aput(config, *args, **kwargs)
            return saved

        async def aput_writes(self, config: RunnableConfig, *args: Any, **kwargs: Any) -> None:
            if (held := _held(config)) is not None:
                held.drop()
            await super().aput_writes(config, *args, **kwargs)

    ReusesPrefetched.__name__, ReusesPrefetched.__qualname__ = cls.__name__, cls.__qualname__
    ReusesPrefetched.__doc__ = cls.__doc__
    return ReusesPrefetched


def reuse_prefetched(saver: BaseCheckpointSaver) -> BaseCheckpointSaver:
    """Let `saver` take a run's PrefetchedCheckpoint (configurable `PREFETCHED`) for its latest-checkpoint read.
    The saver itself changes class, to a subclass of its own: code that holds it, checks its type or replaces its
    connection (a SQLite file recreated under the server) sees the same object. A run without one reads as before."""
    if not getattr(saver, "reuses_prefetched", False):
        # a saver class whose layout a subclass cannot share raises TypeError: it reads as before
        with contextlib.suppress(TypeError):
            saver.__class__ = _reusing_class(type(saver))  # type: ignore[arg-type]
    return saver
