"""The graphs under a real `langgraph dev`, driven by the LangGraph SDK, with the tenant auth of langgraph.json."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client, get_sync_client

from server.studio_auth import FRESH_ID_S

REPO = Path(__file__).resolve().parents[2]
LANGGRAPH = Path(sys.executable).parent / "langgraph"
DEMO, VENEO = "tg-demo-key", "tg-veneo-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`langgraph dev` on a free port, run from a temp dir so its state stays out of the repo."""
    workdir = tmp_path_factory.mktemp("langgraph_dev")
    config = json.loads((REPO / "langgraph.json").read_text())
    # langgraph dev resolves these paths against its working directory, so make them absolute
    config["graphs"] = {k: str(REPO / v) for k, v in config["graphs"].items()}
    config["auth"]["path"] = str(REPO / config["auth"]["path"])
    config["dependencies"] = [str(REPO)]
    (workdir / "langgraph.json").write_text(json.dumps(config))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TEAMGRAPH_", "LANGSMITH_"))}
    log = (workdir / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(LANGGRAPH),
            "dev",
            "--config",
            str(workdir / "langgraph.json"),
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"langgraph dev exited: {(workdir / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"langgraph dev did not start: {(workdir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def client(url: str, key: str):
    return get_client(url=url, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module", autouse=True)
def taken_thread(dev_server: str) -> tuple[str, float]:
    """A demo thread named "interview-42" in its metadata, created before this module's first test: (its id, when).
    The probe test needs an id older than the server's fresh-id window; the other tests age it meanwhile."""
    demo = get_sync_client(url=dev_server, headers={"Authorization": f"Bearer {DEMO}"})
    created = demo.threads.create(metadata={"session": "interview-42"})
    return created["thread_id"], time.monotonic()


async def test_full_interview_through_the_sdk(dev_server: str) -> None:
    demo = client(dev_server, DEMO)
    thread = await demo.threads.create()
    assert thread["metadata"]["owner"] == "demo"
    first = {
        "resume": (REPO / "examples/resume.md").read_text(),
        "job_description": (REPO / "examples/job_description.md").read_text(),
        "messages": [{"role": "user", "content": "Start"}],
    }
    state = await demo.runs.wait(thread["thread_id"], "interview", input=first)
    assert len(state["questions"]) == 3 and state["phase"] == "asking"  # the demo tenant's override: 3 questions
    answers = [
        "At Acme I led the move of our pipelines to Kafka on AWS; as a result lag dropped from 10 minutes to 20 s.",
        "I run Kafka consumer groups and watch lag in Grafana; I once cut rebalances by 80% with static membership.",
        "First I would measure which Airflow tasks fail and why, then fix retries and right-size the workers.",
    ]
    for answer in answers:
        state = await demo.runs.wait(
            thread["thread_id"], "interview", input={"messages": [{"role": "user", "content": answer}]}
        )
    assert state["phase"] == "done"
    assert [e["scored_by"] for e in state["evaluations"]] == ["fallback"] * 3
    assert state["summary"]["answered"] == 3
    assert state["messages"][-1]["content"].startswith("Interview complete.")


async def test_chat_streams_and_keeps_state_bounded(dev_server: str) -> None:
    veneo = client(dev_server, VENEO)
    thread = await veneo.threads.create()
    replies = []
    for i in range(12):
        question = ["How long does shipping take?", "How do returns work?", "What payment methods do you accept?"][
            i % 3
        ]
        async for part in veneo.runs.stream(
            thread["thread_id"],
            "veneo_chat",
            stream_mode="values",
            input={"messages": [{"role": "user", "content": question}]},
        ):
            if part.event == "values":
                final = part.data
        replies.append(final["messages"][-1])
    assert "3 to 5 business days" in replies[0]["content"]
    assert replies[1]["response_metadata"]["knowledge_section"] == "Returns and refunds"
    # the platform's store takes the archive: state stays within the team's memory budget
    assert len(final["messages"]) <= 16 and final["archived"] > 0
    assert final["rolling_summary"]


async def test_tenants_cannot_reach_each_others_threads(dev_server: str) -> None:
    demo, veneo = client(dev_server, DEMO), client(dev_server, VENEO)
    thread = await demo.threads.create()
    await demo.runs.wait(
        thread["thread_id"],
        "interview",
        input={"resume": "Jane, Python and SQL developer.", "messages": [{"role": "user", "content": "Hi"}]},
    )
    tid = thread["thread_id"]

    for attempt in (
        veneo.threads.get(tid),
        veneo.threads.get_state(tid),
        veneo.runs.wait(tid, "interview", input={"messages": [{"role": "user", "content": "x"}]}),
    ):
        with pytest.raises(httpx.HTTPStatusError) as err:
            await attempt
        assert err.value.response.status_code == 404
    assert tid not in [t["thread_id"] for t in await veneo.threads.search(limit=100)]
    assert tid in [t["thread_id"] for t in await demo.threads.search(limit=100)]
    # the owner's thread is untouched by the probes
    state = await demo.threads.get_state(tid)
    assert [m["type"] for m in state["values"]["messages"]] == ["human", "ai", "ai"]


async def test_keys_and_team_flags_apply(dev_server: str) -> None:
    with pytest.raises(httpx.HTTPStatusError) as err:
        await client(dev_server, "not-a-key").threads.create()
    assert err.value.response.status_code == 401
    demo = client(dev_server, DEMO)
    thread = await demo.threads.create()
    with pytest.raises(httpx.HTTPStatusError) as err:
        await demo.runs.wait(thread["thread_id"], "veneo_chat", input={"messages": [{"role": "user", "content": "hi"}]})
    assert err.value.response.status_code == 403


async def _status(call: Any) -> tuple[int, str]:
    """(status, error text) of an SDK call; (200, "") when it succeeds."""
    try:
        await call
    except httpx.HTTPStatusError as err:
        return err.response.status_code, err.response.text
    return 200, ""


async def test_a_tenant_cannot_probe_or_squat_another_tenants_thread_id(
    dev_server: str, taken_thread: tuple[str, float]
) -> None:
    """Thread ids are global in the LangGraph server: a create with a chosen id answered 409 for a taken id and
    200 for a free one, so a tenant could confirm (and squat) another's ids. A chosen id now gets one answer
    whether or not anyone uses it; per-tenant names go in metadata, which every search filters by owner."""
    demo, veneo = client(dev_server, DEMO), client(dev_server, VENEO)
    taken, created_at = taken_thread
    never_used = str(uuid.uuid4())
    # an id another tenant could learn is older than the few seconds in which the server accepts its own new id
    await asyncio.sleep(max(0.0, created_at + FRESH_ID_S + 0.5 - time.monotonic()))
    turn = {"messages": [{"role": "user", "content": "hi"}]}
    probes = {
        "create": lambda tid: veneo.threads.create(thread_id=tid),
        "create_or_reuse": lambda tid: veneo.threads.create(thread_id=tid, if_exists="do_nothing"),
        "run_creating_the_thread": lambda tid: veneo.runs.wait(tid, "veneo_chat", input=turn, if_not_exists="create"),
    }
    for name, probe in probes.items():
        on_taken, on_free = await _status(probe(taken)), await _status(probe(never_used))
        assert on_taken[0] == on_free[0] == 422, (name, on_taken, on_free)
        assert on_taken[1].replace(taken, "ID") == on_free[1].replace(never_used, "ID"), name
        assert "thread_id" in on_taken[1]
    # the owner's thread is untouched and still its own
    assert (await demo.threads.get(taken))["metadata"]["owner"] == "demo"
    # both tenants name a session "interview-42" (in metadata); each finds only its own
    mine = await veneo.threads.create(metadata={"session": "interview-42"})
    for tenant, owned in ((veneo, mine["thread_id"]), (demo, taken)):
        found = await tenant.threads.search(metadata={"session": "interview-42"}, limit=100)
        assert [t["thread_id"] for t in found] == [owned]
    # a new thread (an id the server chose) and a run on it work as before
    fresh = await veneo.threads.create()
    state = await veneo.runs.wait(fresh["thread_id"], "veneo_chat", input=turn)
    assert state["messages"][-1]["type"] == "ai"
