"""The API surface one tenant sees: team flags on every team route, listing filters that answer like creation,
and client-chosen session ids that are the tenant's own (another tenant's use of an id is invisible)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.engine import Engine
from server.settings import Settings
from tests.conftest import fresh_postgres_schema

DEMO = {"Authorization": "Bearer tg-demo-key"}  # tenant demo: interview only
VENEO = {"Authorization": "Bearer tg-veneo-key"}  # tenant veneo: veneo_chat + interview


@contextlib.contextmanager
def serve(url: str) -> Iterator[TestClient]:
    app = create_app(Settings(_env_file=None, checkpoint_url=url, log_format="json"))  # type: ignore[call-arg]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with serve(f"sqlite:///{tmp_path_factory.mktemp('surface')}/tg.db") as c:
        yield c


def error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return dict(r.json()["error"])


@pytest.mark.parametrize("route", ["input_schema", "output_schema", "config_schema"])
def test_schema_routes_of_a_team_the_tenant_lacks_are_403(client: TestClient, route: str) -> None:
    refused = error(client.get(f"/teams/veneo_chat/{route}", headers=DEMO), 403, "team_not_enabled")
    assert refused["field"] == "team" and "veneo_chat" in refused["message"]
    assert client.get(f"/teams/interview/{route}", headers=DEMO).status_code == 200  # its own team: as before
    assert client.get(f"/teams/veneo_chat/{route}", headers=VENEO).status_code == 200


@pytest.mark.parametrize(("team", "status", "code"), [("veneo_chat", 403, "team_not_enabled"),
                                                      ("no_such_team", 404, "team_not_found")])  # fmt: skip
def test_listing_sessions_of_a_team_answers_like_creating_one(
    client: TestClient, team: str, status: int, code: str
) -> None:
    created = error(client.post("/sessions", headers=DEMO, json={"team": team}), status, code)
    listed = error(client.get("/sessions", headers=DEMO, params={"team": team}), status, code)
    assert listed == created


def test_listing_sessions_of_an_enabled_team_still_works(client: TestClient) -> None:
    sid = client.post("/sessions", headers=DEMO, json={"team": "interview"}).json()["id"]
    items = client.get("/sessions", headers=DEMO, params={"team": "interview"}).json()["items"]
    assert sid in [s["id"] for s in items]


# --- session ids are per tenant -------------------------------------------------------------------------------


def chat(client: TestClient, headers: dict[str, str], team: str, thread_id: str, text: str) -> Any:
    return client.post(
        f"/teams/{team}/invoke",
        headers=headers,
        json={"input": {"messages": [{"type": "human", "content": text}]},
              "config": {"configurable": {"thread_id": thread_id}}},
    )  # fmt: skip


def user_lines(client: TestClient, headers: dict[str, str], session_id: str) -> list[str]:
    r = client.get(f"/sessions/{session_id}", headers=headers)
    assert r.status_code == 200, r.text
    return [m["content"] for m in r.json()["transcript"] if m["role"] == "user"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_tenants_can_both_use_one_session_id(tmp_path: Path, backend: str) -> None:
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path}/tg.db" if backend == "sqlite"
               else stack.enter_context(fresh_postgres_schema("tg_ids")))  # fmt: skip
        client = stack.enter_context(serve(url))
        assert chat(client, DEMO, "interview", "interview-42", "Resume: Kafka and Go").status_code == 200
        assert chat(client, VENEO, "interview", "interview-42", "Resume: Rust and COBOL").status_code == 200
        assert chat(client, VENEO, "interview", "interview-42", "My answer for veneo").status_code == 200
        assert user_lines(client, DEMO, "interview-42") == ["Resume: Kafka and Go"]
        assert user_lines(client, VENEO, "interview-42") == ["Resume: Rust and COBOL", "My answer for veneo"]
        for headers in (DEMO, VENEO):
            assert [s["id"] for s in client.get("/sessions", headers=headers).json()["items"]] == ["interview-42"]
        # deleting one tenant's session leaves the other's alone
        assert client.delete("/sessions/interview-42", headers=VENEO).status_code == 204
        assert client.get("/sessions/interview-42", headers=VENEO).status_code == 404
        assert user_lines(client, DEMO, "interview-42") == ["Resume: Kafka and Go"]


def test_two_first_turns_racing_on_one_new_id_make_one_session(tmp_path: Path) -> None:
    import concurrent.futures

    with serve(f"sqlite:///{tmp_path}/tg.db") as client:
        texts = [f"Message {i}" for i in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda t: chat(client, VENEO, "veneo_chat", "race-1", t).status_code, texts))
        assert codes == [200] * 4
        assert sorted(user_lines(client, VENEO, "race-1")) == texts  # one session, every turn in it
        assert [s["id"] for s in client.get("/sessions", headers=VENEO).json()["items"]] == ["race-1"]


def _drop_client_ids(db: Path) -> None:
    """Turn the file back into the session index of before client ids (no client_id column)."""
    with sqlite3.connect(db) as conn:
        conn.execute("drop index sessions_tenant_client")
        conn.execute("alter table sessions drop column client_id")
        conn.execute("drop table teamgraph_schema_versions")  # that release had no schema versions either


def test_sessions_stored_before_ids_were_scoped_stay_readable(tmp_path: Path) -> None:
    db = tmp_path / "tg.db"

    async def legacy_session() -> None:
        # stored the old way: the client's id is the checkpointer's thread key
        async with Engine.open(Settings(_env_file=None, checkpoint_url=f"sqlite:///{db}")) as engine:  # type: ignore[call-arg]
            session = engine.sessions.create("legacy-7", "veneo", "veneo_chat")
            await engine.run_turn(session, {"messages": [{"role": "user", "content": "Stored long ago"}]})

    asyncio.run(legacy_session())
    _drop_client_ids(db)
    for _ in range(2):  # the schema change runs at start, and again harmlessly
        with serve(f"sqlite:///{db}") as client:
            assert user_lines(client, VENEO, "legacy-7")[0] == "Stored long ago"
            assert client.get("/sessions/legacy-7", headers=DEMO).status_code == 404
    with serve(f"sqlite:///{db}") as client:
        assert chat(client, VENEO, "veneo_chat", "legacy-7", "And today").status_code == 200
        assert user_lines(client, VENEO, "legacy-7") == ["Stored long ago", "And today"]
        # another tenant naming the same id gets a session of its own
        assert chat(client, DEMO, "interview", "legacy-7", "Resume: Go").status_code == 200
        assert user_lines(client, DEMO, "legacy-7") == ["Resume: Go"]
        assert user_lines(client, VENEO, "legacy-7") == ["Stored long ago", "And today"]


def test_postgres_sessions_stored_before_ids_were_scoped_stay_readable() -> None:
    import psycopg

    with fresh_postgres_schema("tg_ids") as url:
        with serve(url) as client:  # creates the tables, then a session the old way (key = client id)
            engine = client.app.state.engine  # type: ignore[attr-defined]
            session = engine.sessions.create("legacy-pg", "veneo", "veneo_chat")
            client.portal.call(engine.run_turn, session, {"messages": [{"role": "user", "content": "Old"}]})  # type: ignore[union-attr]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("drop index teamgraph_sessions_tenant_client")
            conn.execute("alter table teamgraph_sessions drop column client_id")
            conn.execute("drop table teamgraph_schema_versions")  # that release had no schema versions either
        for _ in range(2):
            with serve(url) as client:
                assert user_lines(client, VENEO, "legacy-pg") == ["Old"]
                assert client.get("/sessions/legacy-pg", headers=DEMO).status_code == 404
