"""`_settled` and `_write_outcome` wait for work that must finish whatever cancels the request: without spinning."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from server.engine import _settled, _write_outcome


def counting_waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    wait = asyncio.wait

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await wait(*args, **kwargs)

    monkeypatch.setattr(asyncio, "wait", counted)
    return calls


async def test_settled_under_a_cancelled_anyio_scope_waits_without_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: under an anyio CancelScope (a Starlette request whose client went away) anyio re-delivers
    the cancellation at every await, and `_settled`'s loop caught it and waited again: about 15,000 asyncio.wait
    calls in 0.3 s. Now the wait is shielded from anyio's scopes: a handful of wakeups, the work finishes, and the
    cancellation still reaches the caller once it is done."""
    calls = counting_waits(monkeypatch)
    work = asyncio.ensure_future(asyncio.sleep(0.3, result="done"))
    with anyio.move_on_after(0.02) as scope:
        await _settled(work)
    assert scope.cancelled_caught  # the request was cancelled: it does not go on as if not
    assert work.done() and work.result() == "done"  # and the work ran to its end
    assert len(calls) <= 3, len(calls)


async def test_write_outcome_under_a_cancelled_anyio_scope_waits_without_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = counting_waits(monkeypatch)
    write = asyncio.ensure_future(asyncio.sleep(0.3))
    with anyio.move_on_after(0.02):
        assert await _write_outcome(write) is None
        await anyio.sleep(1)  # the scope's cancellation is still pending for the caller's next await
        pytest.fail("the cancellation was lost")
    assert write.done()
    assert len(calls) <= 3, len(calls)


async def test_settled_still_outlasts_native_cancellations() -> None:
    work = asyncio.ensure_future(asyncio.sleep(0.2, result="done"))
    waiting = asyncio.ensure_future(_settled(work))
    for _ in range(3):
        await asyncio.sleep(0.02)
        waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert work.done() and work.result() == "done"
