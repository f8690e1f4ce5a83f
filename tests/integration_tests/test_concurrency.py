"""The locks that keep data whole under concurrency, each tested where it is the only thing that holds:

- the Postgres turn lock: two server processes (replicas) on one Postgres never run two turns of a session at once;
- the Postgres audit lock: concurrent appends from several processes and threads all land, and the chain verifies;
- the in-process turn lock: concurrent turns on a `memory://` store (no cross-process lock there) stay serialized;
- the tenant check when a new session is claimed: two tenants racing for one new id, one owns it, the other gets 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from langchain_core.messages import HumanMessage

from checkpoints.audit import PostgresAuditLog, SqliteAuditLog
from checkpoints.factory import build_persistence
from tests.conftest import fresh_postgres_schema, open_engine
from tests.integration_tests.live_server import DEMO_KEY, REPO, VENEO_KEY, LiveServer, auth
from tests.integration_tests.test_turn_serialization import (
    STAGGER_S,
    WORKER_DELAY_S,
    SlowResponderFake,
    assert_serialized,
    body,
    distinct,
    transcript,
)

# --------------------------------------------------------------------------- two replicas on one Postgres


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_schema("tg_conc") as url:
        yield url


async def test_two_replicas_on_one_postgres_run_one_turn_of_a_session_at_a_time(
    tmp_path: Path, postgres_url: str
) -> None:
    async with build_persistence(postgres_url):  # the schema first: two replicas creating it at once may race
        pass
    with SlowResponderFake(delay=WORKER_DELAY_S) as fake:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake.base_url, "TEAMGRAPH_CHECKPOINT_URL": postgres_url}
        a, b = LiveServer(tmp_path / "a", env=env), LiveServer(tmp_path / "b", env=env)
        with contextlib.ExitStack() as running:
            running.callback(a.stop)
            running.callback(b.stop)
            with ThreadPoolExecutor(2) as pool:  # start both at once: half the wait
                for started in [pool.submit(a.start), pool.submit(b.start)]:
                    started.result()
            thread_id = f"replicas-{uuid.uuid4()}"
            texts = [distinct(i) for i in range(8)]
            async with (
                httpx.AsyncClient(base_url=a.url, headers=auth(VENEO_KEY), timeout=60) as left,
                httpx.AsyncClient(base_url=b.url, headers=auth(VENEO_KEY), timeout=60) as right,
            ):

                async def invoke(i: int, text: str) -> httpx.Response:
                    await asyncio.sleep(i * STAGGER_S)  # overlapping: each turn takes WORKER_DELAY_S or more
                    return await (left if i % 2 else right).post("/teams/veneo_chat/invoke", json=body(thread_id, text))

                responses = await asyncio.gather(*(invoke(i, t) for i, t in enumerate(texts)))
                replies = {}
                for text, r in zip(texts, responses, strict=True):
                    assert r.status_code == 200, r.text
                    assert r.json()["output"]["messages"][-2]["content"] == text
                    replies[text] = r.json()["output"]["messages"][-1]["id"]
                messages = await transcript(left, thread_id)
    assert_serialized(messages, replies)
    for user, reply in zip(messages[0::2], messages[1::2], strict=True):
        assert reply["content"] == f"Reply to: {user['content']}"


# --------------------------------------------------------------------------- audit appends from several processes

APPENDER = """
import sys, threading
from checkpoints.audit import AuditEvent, PostgresAuditLog, SqliteAuditLog
url, name, threads, each = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
log = PostgresAuditLog(url) if url.startswith("postgresql") else SqliteAuditLog(url)
errors = []
start = threading.Barrier(threads)
def run(t):
    start.wait()
    for i in range(each):
        try:
            log.append([AuditEvent("race", f"{name}-{t}", "message", "s", {"n": i})])
        except Exception as exc:
            errors.append(repr(exc))
workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
[w.start() for w in workers]
[w.join() for w in workers]
print(len(errors), errors[:1])
sys.exit(1 if errors else 0)
"""


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_a_hundred_concurrent_audit_appends_from_several_processes_all_land_in_one_chain(
    tmp_path: Path, backend: str
) -> None:
    processes, threads, each = 4, 5, 5  # 100 appends, 20 at a time
    with fresh_postgres_schema("tg_conc_audit") if backend == "postgres" else _nothing() as pg_url:
        target = pg_url if backend == "postgres" else str(tmp_path / "audit.db")
        log = PostgresAuditLog(target) if backend == "postgres" else SqliteAuditLog(target)  # the tables first
        try:
            appenders = [
                subprocess.Popen(
                    [sys.executable, "-c", APPENDER, target, f"p{p}", str(threads), str(each)],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for p in range(processes)
            ]
            outputs = [a.communicate(timeout=120)[0] for a in appenders]
            assert [a.returncode for a in appenders] == [0] * processes, outputs
            entries = log.query("race", limit=1000)
            assert [e.seq for e in entries] == list(range(1, 101))
            assert sorted((e.actor, e.payload["n"]) for e in entries) == sorted(
                (f"p{p}-{t}", i) for p in range(processes) for t in range(threads) for i in range(each)
            )
            result = log.verify("race")
            assert result.ok and result.checked == 100, result
        finally:
            log.close()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --------------------------------------------------------------------------- the in-process turn lock


async def test_concurrent_turns_on_a_memory_store_run_one_at_a_time() -> None:
    """memory:// has no cross-process lock: the asyncio lock alone keeps the turns of a session apart."""
    async with open_engine("memory://") as engine:
        session = await engine.create_session("veneo", "veneo_chat")
        texts = [distinct(i) for i in range(8)]
        states = await asyncio.gather(*(engine.run_turn(session, {"messages": [HumanMessage(text)]}) for text in texts))
        messages = await engine.transcript(session)
    assert [m.type for m in messages] == ["human", "ai"] * len(texts)
    assert sorted(str(m.content) for m in messages[0::2]) == sorted(texts)  # none lost, none twice
    # each turn saw every earlier one: the reviewer's turn counter goes 1, 2, 3...
    turns = [m.response_metadata["review"]["turn"] for m in messages[1::2]]
    assert turns == list(range(1, len(texts) + 1))
    assert sorted(len(s["messages"]) for s in states) == [2 * (i + 1) for i in range(len(texts))]


# --------------------------------------------------------------------------- two tenants claim one new id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("claim")) as live:
        yield live


async def test_two_tenants_racing_for_one_new_id_each_get_their_own_session(server: LiveServer) -> None:
    """Session ids are per tenant: two tenants that start `contested-…` at the same moment get two sessions, each
    holding only its own turn (a claim that ignored the tenant would hand one of them the other's session)."""
    demo_text, veneo_text = "Demo's first message", "Veneo's first message"
    async with (
        httpx.AsyncClient(base_url=server.url, headers=auth(DEMO_KEY), timeout=60) as demo,
        httpx.AsyncClient(base_url=server.url, headers=auth(VENEO_KEY), timeout=60) as veneo,
    ):
        for _ in range(10):  # each round a new id, both tenants at once
            thread_id = f"contested-{uuid.uuid4()}"
            r_demo, r_veneo = await asyncio.gather(
                demo.post("/teams/interview/invoke", json=body(thread_id, demo_text)),
                veneo.post("/teams/interview/invoke", json=body(thread_id, veneo_text)),
            )
            assert (r_demo.status_code, r_veneo.status_code) == (200, 200), (r_demo.text, r_veneo.text)
            assert veneo_text not in r_demo.text and demo_text not in r_veneo.text
            for client, own, other in ((demo, demo_text, veneo_text), (veneo, veneo_text, demo_text)):
                mine = await transcript(client, thread_id)
                assert [m["content"] for m in mine if m["role"] == "user"] == [own]
                assert other not in str(mine)
                listed = [s for s in (await client.get("/sessions", params={"limit": 200})).json()["items"]
                          if s["id"] == thread_id]  # fmt: skip
                assert len(listed) == 1
