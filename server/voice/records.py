"""Which transcript items a session has applied: one LangGraph store entry per (thread, item id).

The store lives in the session database (SQLite file, Postgres or memory), so the record survives restarts
and is shared by every worker and replica. Written only once an item has been applied; read and written under
the session's turn lock, so "already applied?" and the apply are one step.
"""

from __future__ import annotations

from typing import Any

from langgraph.store.base import BaseStore

from nodes.memory_keeper import delete_namespace

NAMESPACE = "voice_items"


def namespace(thread_id: str) -> tuple[str, ...]:
    return (NAMESPACE, thread_id)


async def applied(store: BaseStore, thread_id: str, item_id: str) -> dict[str, Any] | None:
    item = await store.aget(namespace(thread_id), item_id)
    return dict(item.value) if item is not None else None


async def mark_applied(store: BaseStore, thread_id: str, item_id: str, record: dict[str, Any]) -> None:
    await store.aput(namespace(thread_id), item_id, record, index=False)


async def forget_session(store: BaseStore, thread_id: str) -> int:
    """Remove a deleted session's item records; returns how many were removed."""
    return await delete_namespace(store, namespace(thread_id))
