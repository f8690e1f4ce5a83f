"""memory_keeper: keeps checkpointed state bounded by moving older messages to the transcript archive.

LangGraph re-serializes a channel's whole value when it changes (SQLite stores the whole checkpoint), so an
ever-growing `messages` list makes every turn cost more than the last. Once state holds more than
`memory.max_messages` messages, the oldest are written to the LangGraph store under the thread's transcript
namespace, folded into the rolling summary (chat), and removed from state; a turn's cost stays flat and the
full transcript is the archive followed by the messages still in state (`whole_transcript`, which stays correct
even when a turn died between writing the archive and its checkpoint).
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AnyMessage, BaseMessage, RemoveMessage, message_to_dict, messages_from_dict
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore, PutOp

from nodes.chat_summary import fold_into_summary
from nodes.configuration import Configuration

TRANSCRIPT_NAMESPACE = "transcripts"


def transcript_namespace(thread_id: str) -> tuple[str, ...]:
    return (TRANSCRIPT_NAMESPACE, thread_id)


async def memory_keeper(state: dict[str, Any], config: RunnableConfig, runtime: Runtime) -> dict[str, Any]:
    """Trim state to `keep_messages` once it holds more than `max_messages`; no store, no trimming (nothing is lost)."""
    conf = Configuration.from_runnable_config(config)
    memory = conf.params.memory
    store = runtime.store
    messages: list[AnyMessage] = state.get("messages", [])
    if store is None or conf.thread_id is None or len(messages) <= memory.max_messages:
        return {}
    overflow = messages[: len(messages) - memory.keep_messages]
    start = state.get("archived", 0)
    namespace = transcript_namespace(conf.thread_id)
    # one batch, one store transaction: a trim costs one write however many messages it moves; keys follow the
    # archive position, so re-running a turn rewrites the same entries
    await store.abatch(
        [
            PutOp(namespace, f"{start + offset:09d}", {"message": message_to_dict(message)}, index=False)
            for offset, message in enumerate(overflow)
        ]
    )
    update: dict[str, Any] = {
        "archived": start + len(overflow),
        "messages": [RemoveMessage(id=m.id) for m in overflow if m.id],
    }
    if memory.rolling_summary:
        update["rolling_summary"] = await fold_into_summary(state.get("rolling_summary", ""), overflow, conf, config)
    return update


async def read_archive(store: BaseStore, thread_id: str) -> list[BaseMessage]:
    """Archived messages of a thread, oldest first."""
    return (await read_archive_window(store, thread_id))[1]


async def read_archive_window(store: BaseStore, thread_id: str) -> tuple[int, list[BaseMessage]]:
    """Archived messages of a thread, oldest first, and the archive position of the first (retention may have
    removed the oldest entries)."""
    items = []
    offset = 0
    while True:
        page = await store.asearch(transcript_namespace(thread_id), limit=500, offset=offset)
        items.extend(page)
        if len(page) < 500:
            break
        offset += 500
    items.sort(key=lambda item: item.key)
    first = int(items[0].key) if items else 0
    return first, messages_from_dict([item.value["message"] for item in items])


async def trim_archive(store: BaseStore, thread_id: str, archived: int, keep: int) -> int:
    """Remove archived messages older than the newest `keep` of the `archived` committed ones (retention);
    returns how many were removed. Keys are archive positions, so position < archived - keep goes."""
    cutoff = archived - keep
    if cutoff <= 0:
        return 0
    namespace = transcript_namespace(thread_id)
    # trims remove whole runs from the front, so the entry just below the cutoff is there only when some are
    # due: one key read on most turns instead of reading the archive
    if await store.aget(namespace, f"{cutoff - 1:09d}") is None:
        return 0
    first, _ = await read_archive_window(store, thread_id)
    if first >= cutoff:
        return 0
    await store.abatch([PutOp(namespace, f"{position:09d}", None) for position in range(first, cutoff)])
    return cutoff - first


def whole_transcript(archive: list[BaseMessage], state: dict[str, Any], first: int = 0) -> list[BaseMessage]:
    """The archive followed by the messages in state, counting only what the committed state has archived.

    memory_keeper writes the archive before its turn's checkpoint: a process that dies in between leaves entries
    past the state's `archived` count whose messages are still in state. Those entries are not part of the
    session yet (the next trim rewrites the same keys), so they are skipped here, and any archived message whose
    id is still in state is skipped too: the transcript never shows a message twice, whenever it is read.
    `first`: the archive position of `archive[0]` (retention removes the oldest entries)."""
    current: list[BaseMessage] = state.get("messages", [])
    in_state = {m.id for m in current if m.id}
    committed = archive[: max(0, state.get("archived", 0) - first)]
    return [*(m for m in committed if not (m.id and m.id in in_state)), *current]


async def delete_archive(store: BaseStore, thread_id: str) -> int:
    """Remove a thread's archived transcript; returns how many entries were removed."""
    return await delete_namespace(store, transcript_namespace(thread_id))


async def delete_namespace(store: BaseStore, namespace: tuple[str, ...]) -> int:
    """Remove every entry under a store namespace; returns how many were removed."""
    removed = 0
    while True:
        page = await store.asearch(namespace, limit=500)
        if not page:
            return removed
        await store.abatch([PutOp(item.namespace, item.key, None) for item in page])  # value None: delete
        removed += len(page)
