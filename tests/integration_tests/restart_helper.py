"""Continue an existing session in a fresh Python process (used by test_persistence.py's restart tests).

    python -m tests.integration_tests.restart_helper CHECKPOINT_URL TENANT THREAD_ID MESSAGE [MESSAGE ...]

Opens the engine on CHECKPOINT_URL (offline models), looks the session up as TENANT, records the state it
finds, sends each MESSAGE as the next user turn, and prints one JSON document on stdout: the state before,
the reply of each turn, the state after and the full transcript.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from langchain_core.messages import BaseMessage

from server.engine import Engine
from server.settings import Settings
from tests.fakes.models import FakeAgentFactory


def _message(m: BaseMessage) -> dict[str, Any]:
    return {"type": m.type, "content": str(m.content), "kind": (m.response_metadata or {}).get("kind")}


def _state(values: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in values.items() if k != "messages"}
    out["messages"] = [_message(m) for m in values.get("messages", [])]
    return out


async def main(url: str, tenant: str, thread_id: str, messages: list[str]) -> dict[str, Any]:
    settings = Settings(_env_file=None, checkpoint_url=url)  # type: ignore[call-arg]
    async with Engine.open(settings, agent_factory=FakeAgentFactory()) as engine:
        session = engine.get_session(tenant, thread_id)
        before = _state(await engine.state(session))
        replies = []
        for text in messages:
            state = await engine.run_turn(session, {"messages": [{"role": "user", "content": text}]})
            replies.append(str(state["messages"][-1].content))
        after = _state(await engine.state(session))
        transcript = [_message(m) for m in await engine.transcript(session)]
    return {"pid": os.getpid(), "before": before, "replies": replies, "after": after, "transcript": transcript}


if __name__ == "__main__":
    url, tenant, thread_id, *texts = sys.argv[1:]
    print(json.dumps(asyncio.run(main(url, tenant, thread_id, texts)), default=str))
