"""The Postgres turn path: the turn lock (one session's turns exclude each other across processes, on a few
connections per process) and the session touch that ends every turn.

Two `TurnLocks` on one URL stand for two replicas (each holds its own lock connection, as two processes do).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from checkpoints.turn_lock import LOCK_CONNECTIONS, TurnBusy, TurnLocks
from tests.conftest import fresh_postgres_schema


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_postgres_schema("tg_lock") as u:
        yield u


def lock_holders(url: str, thread_id: str) -> list[int]:
    """Backend pids holding the turn lock of `thread_id` (its thread key: see `key_holders`)."""
    return key_holders(url, int.from_bytes(hashlib.sha256(thread_id.encode()).digest()[:8], "big", signed=True))


async def test_a_session_held_by_one_replica_waits_in_the_other_and_other_sessions_do_not(url: str) -> None:
    a, b = TurnLocks(url, wait_s=0.4), TurnLocks(url, wait_s=0.4)
    try:
        async with a.hold("s1"):
            assert len(lock_holders(url, "s1")) == 1
            with pytest.raises(TurnBusy):
                async with b.hold("s1"):
                    pytest.fail("two replicas ran one session's turns at once")
            async with b.hold("s2"):  # another session is not held up
                pass
        async with b.hold("s1"):  # released: the other replica takes it at once
            assert len(lock_holders(url, "s1")) == 1
        assert lock_holders(url, "s1") == []
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_read_under_the_lock_sees_the_database_as_the_lock_holder_does_and_a_failed_one_keeps_no_lock(
    url: str,
) -> None:
    """A query sent with the lock (ReadUnderLock) is answered only by the attempt that took the lock, so it sees
    what the previous holder committed; one that fails leaves the session locked exactly once (released after
    the turn), and its rows None, for the caller to ask the usual way."""
    from checkpoints.turn_lock import ReadUnderLock

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("create table notes (thread text, note text)")
    a, b = TurnLocks(url, wait_s=5), TurnLocks(url, wait_s=5)
    try:
        release = await a.acquire("t1")

        async def write_then_release() -> None:
            await asyncio.sleep(0.3)
            with psycopg.connect(url, autocommit=True) as writer:
                writer.execute("insert into notes values ('t1', 'from the holder')")
            await release()

        read = ReadUnderLock("select note from notes where thread = %s", ["t1"])
        writing = asyncio.ensure_future(write_then_release())
        async with b.hold("t1", reads=[read]):
            assert read.rows == [{"note": "from the holder"}]
        await writing

        failing = ReadUnderLock("select * from no_such_table where thread = %s", ["t1"])
        async with b.hold("t1", reads=[failing]):
            assert failing.rows is None
            assert len(lock_holders(url, "t1")) == 1
            a.wait_s = 0.3
            with pytest.raises(TurnBusy):
                async with a.hold("t1"):
                    pass
        assert lock_holders(url, "t1") == []  # held once, released once

        # answered, but with a value the client cannot decode (the error comes when its rows are fetched, after
        # the lock was taken): the lock is held once during the turn and not kept after it (it was, by the lock
        # connection, so other replicas answered 409 for the session)
        undecodable = ReadUnderLock("select 'infinity'::date as d", [])
        async with b.hold("t1", reads=[undecodable]):
            assert undecodable.rows is None
            assert len(lock_holders(url, "t1")) == 1
        assert lock_holders(url, "t1") == []
    finally:
        await a.aclose()
        await b.aclose()


async def test_many_turns_at_once_each_get_their_own_reads_on_the_shared_lock_connections(url: str) -> None:
    """Concurrent turns share LOCK_CONNECTIONS connections: a lock with its reads (one pipeline) and other turns'
    locks and unlocks on the same connection do not mix (a statement sent during another turn's pipeline joined
    it: at 32 concurrent turns every request failed)."""
    from checkpoints.turn_lock import ReadUnderLock

    locks = TurnLocks(url, wait_s=10)

    async def turn(n: int) -> str | None:
        read = ReadUnderLock("select %s::text as thread, pg_sleep(0.005) is null as slept", [f"t{n}"])
        async with locks.hold(f"t{n % 48}", reads=[read] if n % 3 else []):
            await asyncio.sleep(0.001)
        return read.rows[0]["thread"] if read.rows else None

    try:
        got = await asyncio.gather(*(turn(n) for n in range(96)))
        assert got == [f"t{n}" if n % 3 else None for n in range(96)]
        assert [lock_holders(url, f"t{n}") for n in range(48)] == [[]] * 48
    finally:
        await locks.aclose()


async def test_turns_of_one_process_share_a_few_lock_connections(url: str) -> None:
    """No connect per turn: the locks of many turns are taken by the process's few lock backends, and every turn
    of one session by the same one."""
    locks = TurnLocks(url)
    try:
        pids, again = set(), set()
        for i in range(3 * LOCK_CONNECTIONS):
            async with locks.hold(f"turn-{i}"):
                pids.update(lock_holders(url, f"turn-{i}"))
            async with locks.hold(f"turn-{i}"):
                again.update(lock_holders(url, f"turn-{i}"))
        async with locks.hold("x"), locks.hold("y"):  # concurrent turns of two sessions too
            pids.update(lock_holders(url, "x") + lock_holders(url, "y"))
        assert 1 <= len(pids) <= LOCK_CONNECTIONS, pids
        assert again <= pids
    finally:
        await locks.aclose()


async def test_a_dropped_lock_connection_frees_its_locks_and_the_next_turn_reconnects(url: str) -> None:
    a, b = TurnLocks(url, wait_s=0.4), TurnLocks(url, wait_s=0.4)
    try:
        async with a.hold("s"):
            [pid] = lock_holders(url, "s")
            with psycopg.connect(url, autocommit=True) as admin:  # an outage of that connection
                admin.execute("select pg_terminate_backend(%s)", [pid])
            await asyncio.sleep(0.2)
            async with b.hold("s"):  # Postgres let go of the lock with the connection
                pass
        async with a.hold("s"):  # a new connection for the next turn, no error
            [new_pid] = lock_holders(url, "s")
            assert new_pid != pid
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_lock_connection_dropped_mid_turn_is_reported_before_the_answer_and_at_unlock(url: str) -> None:
    """Found in review: when the lock connection drops mid-turn, Postgres releases the advisory lock while the turn
    goes on (another replica may run a turn of the session at the same time), and nothing said so. Now the check
    before the turn's answer (`check_held`, no round trip while the socket is quiet) and the unlock notice it:
    logged `turn_lock_lost` and counted (`on_lost`), once per turn."""
    import structlog

    locks = TurnLocks(url, wait_s=0.4)
    lost: list[str] = []
    locks.on_lost = lost.append
    try:
        with structlog.testing.capture_logs() as logged:
            async with locks.hold("s", "veneo_chat"):
                assert await locks.check_held("s", "veneo_chat") is True  # held: nothing to say
                [pid] = lock_holders(url, "s")
                _terminate(url, [pid])
                assert await locks.check_held("s", "veneo_chat") is False  # before the answer
                assert lock_holders(url, "s") == []  # what it reports: the database let go of the lock
            assert lost == ["veneo_chat"]  # reported once, not again at unlock
            async with locks.hold("s", "veneo_chat"):  # dropped without a check before the answer: at unlock
                [pid] = lock_holders(url, "s")
                _terminate(url, [pid])
            assert lost == ["veneo_chat", "veneo_chat"]
            async with locks.hold("s", "veneo_chat"):  # a turn whose connection stays: nothing reported
                assert await locks.check_held("s", "veneo_chat") is True
        assert lost == ["veneo_chat", "veneo_chat"]
        reports = [e for e in logged if e["event"] == "turn_lock_lost"]
        assert [(e["thread_id"], e["team"], e["noticed"]) for e in reports] == [
            ("s", "veneo_chat", "before the turn's answer"),
            ("s", "veneo_chat", "at unlock"),
        ]
    finally:
        await locks.aclose()


async def test_a_check_of_the_held_lock_that_fails_leaves_the_turn_as_it_is(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: `check_held` said the turn's answer is unchanged, but an error of the check other than a
    lost connection (here fileno() of a socket closed at shutdown: ValueError) propagated and failed a stored
    turn with a 5xx. Now any error of the check is logged `turn_lock_check_failed` and the lock counts as held."""
    import structlog

    import checkpoints.turn_lock

    def closed_socket(conn: Any) -> bool:
        raise ValueError("I/O operation on closed file")

    locks = TurnLocks(url, wait_s=0.4)
    try:
        with structlog.testing.capture_logs() as logged:
            async with locks.hold("s", "veneo_chat"):
                with monkeypatch.context() as patched:
                    patched.setattr(checkpoints.turn_lock, "went_away", closed_socket)
                    assert await locks.check_held("s", "veneo_chat") is True
        failed = [e for e in logged if e["event"] == "turn_lock_check_failed"]
        assert [(e["thread_id"], e["team"], e["error"]) for e in failed] == [
            ("s", "veneo_chat", "ValueError: I/O operation on closed file")
        ]
        assert not [e for e in logged if e["event"] == "turn_lock_lost"]
    finally:
        await locks.aclose()


def test_an_http_turn_whose_lock_connection_drops_answers_and_is_counted_as_lost(url: str) -> None:
    """Through the app: the lock connection of a running turn is terminated just before the turn's answer (where
    TeamRunnable checks that a turn was stored); the turn stands (200), and `turn_lock_lost` and
    `teamgraph_turn_locks_lost_total{team}` say what happened."""
    import structlog
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    app = create_app(Settings(_env_file=None, checkpoint_url=url, metrics_token="scrape"))  # type: ignore[call-arg]
    demo = {"Authorization": "Bearer tg-demo-key"}
    with TestClient(app) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        sid = client.post("/sessions", headers=demo, json={}).json()["id"]
        stored = engine.check_turn_stored
        terminated: list[int] = []

        def drop_the_lock_connection() -> None:
            stored()
            if not terminated:
                terminated.extend(lock_holders(url, engine.sessions.find("demo", sid).thread_id))
                _terminate(url, terminated)

        engine.check_turn_stored = drop_the_lock_connection
        body = {"input": {"messages": [{"type": "human", "content": "Jane Roe, Kafka engineer"}]},
                "config": {"configurable": {"thread_id": sid}}}  # fmt: skip
        with structlog.testing.capture_logs() as logged:
            r = client.post("/teams/interview/invoke", headers=demo, json=body)
        assert r.status_code == 200, r.text
        assert len(terminated) == 1
        assert [(e["team"], e["noticed"]) for e in logged if e["event"] == "turn_lock_lost"] == [
            ("interview", "before the turn's answer")
        ]
        scraped = client.get("/metrics", headers={"Authorization": "Bearer scrape"}).text
        assert 'teamgraph_turn_locks_lost_total{team="interview"} 1.0' in scraped


async def test_a_turn_cancelled_while_holding_or_waiting_gives_the_lock_back(url: str) -> None:
    a, b = TurnLocks(url, wait_s=5.0), TurnLocks(url, wait_s=5.0)
    entered = asyncio.Event()

    async def turn(locks: TurnLocks) -> None:
        async with locks.hold("s"):
            entered.set()
            await asyncio.sleep(60)

    try:
        holding = asyncio.create_task(turn(a))
        await entered.wait()
        entered.clear()
        waiting = asyncio.create_task(turn(b))  # polls while `a` holds the session
        await asyncio.sleep(0.3)
        waiting.cancel()
        holding.cancel()  # the client went away mid-turn
        for task in (holding, waiting):
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.1)
        assert lock_holders(url, "s") == []
        async with b.hold("s"):
            pass
    finally:
        await a.aclose()
        await b.aclose()


def test_touch_commits_without_waiting_for_the_disk_and_leaves_the_pooled_connection_as_it_was(url: str) -> None:
    from checkpoints.session_index import PostgresSessionIndex

    index = PostgresSessionIndex(url)
    try:
        index.create("t1", "veneo", "veneo_chat")
        before = index.get("t1")
        assert before is not None and before.title == ""
        index.touch("t1", "How long does shipping take?\nsecond line")
        after = index.get("t1")
        assert after is not None
        assert after.title == "How long does shipping take?" and after.updated_at > before.updated_at
        for _ in range(index.pool.max_size):  # every pooled connection: the setting was local to touch's commit
            with index.pool.connection() as conn:
                assert conn.execute("show synchronous_commit").fetchone() == {"synchronous_commit": "on"}
    finally:
        index.close()


async def test_turns_queued_behind_a_failing_connect_fail_with_it_instead_of_each_connecting_again(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is unreachable: turns waiting for the same lock connection get the first attempt's error, so
    none waits for several connect timeouts in a row."""
    attempts = 0

    async def unreachable(*args: object, **kwargs: object) -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.2)  # as a connect timeout would, shorter
        raise psycopg.OperationalError("connection timeout expired")

    locks = TurnLocks(url)
    # sessions whose keys pick the same lock connection
    same = [s for s in (f"s{i}" for i in range(64)) if _slot(s) == _slot("s0")][:5]
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", unreachable)

    async def turn(session: str) -> None:
        async with locks.hold(session):
            pytest.fail("a turn ran without its lock")

    results = await asyncio.gather(*(turn(s) for s in same), return_exceptions=True)
    assert all(isinstance(r, psycopg.OperationalError) for r in results), results
    assert attempts == 1
    monkeypatch.undo()
    async with locks.hold(same[0]):  # the database is back: the next turn connects
        assert len(lock_holders(url, same[0])) == 1
    await locks.aclose()


def _slot(thread_id: str) -> int:
    return int.from_bytes(hashlib.sha256(thread_id.encode()).digest()[:8], "big", signed=True) % LOCK_CONNECTIONS


def _terminate(url: str, pids: list[int]) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        for pid in pids:
            admin.execute("select pg_terminate_backend(%s, 5000)", [pid])


def test_a_pooled_connection_is_checked_by_its_socket_and_a_terminated_one_is_replaced(url: str) -> None:
    """The pools' check costs no round trip on a healthy connection (its socket has nothing to read), and still
    catches one whose backend went away while it sat in the pool: the next use gets a new connection."""
    from checkpoints.session_index import PostgresSessionIndex
    from checkpoints.storage import went_away

    index = PostgresSessionIndex(url)
    try:
        index.create("t1", "veneo", "veneo_chat")
        with index.pool.connection() as conn:
            pid = conn.info.backend_pid
            assert not went_away(conn)
        _terminate(url, [pid])
        with index.pool.connection() as conn:
            assert conn.info.backend_pid != pid  # the dead one was noticed and replaced before use
        record = index.get("t1")
        assert record is not None and record.team == "veneo_chat"
    finally:
        index.close()


def test_went_away_notices_a_terminated_backend_without_asking_it(url: str) -> None:
    from checkpoints.storage import went_away

    with psycopg.connect(url, autocommit=True) as conn:
        assert not went_away(conn)
        _terminate(url, [conn.info.backend_pid])
        assert went_away(conn)  # its FATAL message and the closed socket are there to read
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")


async def test_the_checkpointer_pool_replaces_connections_whose_backends_were_terminated(url: str) -> None:
    from checkpoints.factory import build_persistence

    config = {"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}
    async with build_persistence(url) as persistence:
        pool = persistence.checkpointer.conn
        async with pool.connection() as conn:  # type: ignore[union-attr]
            pids = [conn.info.backend_pid]
        _terminate(url, pids)
        assert await persistence.checkpointer.aget_tuple(config) is None  # answered on a new connection
        async with pool.connection() as conn:  # type: ignore[union-attr]
            assert conn.info.backend_pid not in pids


def test_a_turns_input_entry_commits_without_waiting_for_the_disk_only_inside_deferring_sync(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The turn's input entry commits with synchronous_commit off (its checkpoint and closing entries flush the WAL
    past it); any other append waits for the flush as before, the setting never outlives its transaction, and
    the chain is whole either way."""
    import threading

    from checkpoints.audit import AuditEvent, PostgresAuditLog

    sent: list[tuple[str, str]] = []
    real_execute = psycopg.Connection.execute

    def spy(self: psycopg.Connection[object], query: object, *args: object, **kwargs: object) -> object:
        sent.append((threading.current_thread().name, str(query)))
        return real_execute(self, query, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(psycopg.Connection, "execute", spy)
    log = PostgresAuditLog(url)
    deferred = "select set_config('synchronous_commit', 'off', true)"
    try:
        with log.deferring_sync():
            log.append([AuditEvent("veneo", "k1", "message", "t1", {"role": "user", "content": "hi"})])
            assert sent.count((threading.current_thread().name, deferred)) == 1
            other = threading.Thread(  # another thread (another turn's closing write) is not deferred
                target=log.append, args=([AuditEvent("veneo", "k1", "response", "t2", {"content": "yes"})],)
            )
            other.start()
            other.join()
        log.append([AuditEvent("veneo", "k1", "response", "t1", {"content": "hello"})])
        assert [q for _, q in sent].count(deferred) == 1
        assert log.verify("veneo").ok and log.verify("veneo").checked == 3
        for _ in range(log.pool.max_size):  # every pooled connection is back to the server's setting
            with log.pool.connection() as conn:
                assert real_execute(conn, "show synchronous_commit").fetchone() == {"synchronous_commit": "on"}
    finally:
        log.close()


async def test_a_turns_commits_skip_the_disk_wait_until_its_closing_write_which_waits_for_all_of_them(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One WAL flush per turn, and it comes last: the input entry and the checkpoint commit without waiting for
    the disk, then the closing entries commit durably, and Postgres's in-order WAL flush covers the earlier
    two before the turn is acknowledged. Writes outside a turn still wait, and no setting outlives its commit."""
    from tests.conftest import open_engine

    order: list[tuple[str, bool]] = []  # (what, committed without waiting for the disk)
    async with open_engine(url) as engine:
        audit, saver = engine.persistence.audit, engine.persistence.checkpointer
        real_append, real_aput, real_durable = audit.append, saver.aput, audit.make_durable
        real_append_if = audit.append_if

        def append(events: list[object]) -> object:
            result = real_append(events)  # type: ignore[arg-type]
            order.append(("audit " + ",".join(e.event_type for e in events), audit._deferred.__dict__.get("on", False)))  # type: ignore[attr-defined]
            return result

        async def aput(config: dict[str, object], *args: object) -> object:
            sent: list[str] = []
            real_execute = psycopg.AsyncCursor.execute

            async def spy(self: object, query: object, *a: object, **k: object) -> object:
                sent.append(str(query))
                return await real_execute(self, query, *a, **k)  # type: ignore[arg-type]

            monkeypatch.setattr(psycopg.AsyncCursor, "execute", spy)
            try:
                result = await real_aput(config, *args)  # type: ignore[arg-type]
            finally:
                monkeypatch.setattr(psycopg.AsyncCursor, "execute", real_execute)
            order.append(("checkpoint", any("'synchronous_commit', 'off'" in q for q in sent)))
            return result

        def append_if(changes: list[object], events: list[object]) -> object:  # a session's creation, say
            result = real_append_if(changes, events)  # type: ignore[arg-type]
            order.append(("audit " + ",".join(e.event_type for e in events), audit._deferred.__dict__.get("on", False)))  # type: ignore[attr-defined]
            return result

        def make_durable() -> None:
            real_durable()
            order.append(("make_durable", False))

        monkeypatch.setattr(audit, "append", append)
        monkeypatch.setattr(audit, "append_if", append_if)
        monkeypatch.setattr(saver, "aput", aput)
        monkeypatch.setattr(audit, "make_durable", make_durable)
        session = await engine.create_session("veneo", "veneo_chat")
        assert order == [("audit session_created,team_selected", False)]  # not a turn: waits for the disk
        order.clear()
        state = await engine.run_turn(session, {"messages": [{"role": "user", "content": "How do returns work?"}]})
        assert state["messages"][-1].type == "ai"
        assert order[0] == ("audit message", True)
        assert order[1] == ("checkpoint", True)
        assert order[-1][0].startswith("audit response") and order[-1][1] is False  # the last commit waits
        assert [what for what, _ in order].count("checkpoint") == 1 and ("make_durable", False) not in order
        assert engine.audit.verify("veneo").ok
        # a checkpoint written outside a turn (a state update) waits for the disk, as before
        order.clear()
        await engine.graph("veneo_chat").aupdate_state(engine.run_config(session), {"rolling_summary": "x"})
        assert order == [("checkpoint", False)]
        async with saver.conn.connection() as conn:  # type: ignore[union-attr]
            row = await (await conn.execute("show synchronous_commit")).fetchone()
            assert row == {"synchronous_commit": "on"}


async def test_a_turn_that_wrote_no_closing_entry_still_ends_with_a_durable_commit(url: str) -> None:
    """The observer's end of a turn with nothing to append waits for the WAL flush itself (make_durable), so the
    turn's deferred commits are on disk before it is acknowledged."""
    from uuid import uuid4

    from checkpoints.audit import PostgresAuditLog
    from server.observability.metrics import Metrics
    from server.observability.turn_observer import TurnContext, TurnObserver

    log = PostgresAuditLog(url)
    calls: list[str] = []
    real = log.make_durable
    log.make_durable = lambda: (calls.append("make_durable"), real())[1]  # type: ignore[method-assign]
    try:
        ctx = TurnContext("veneo", "veneo_chat", "t1", "k1", {}, {})
        observer = TurnObserver(ctx, Metrics(), log)
        root = uuid4()
        await observer.on_chain_start(None, {"messages": [{"role": "user", "content": "hi"}]}, run_id=root)
        assert calls == []
        await observer.on_chain_end({}, run_id=root)  # no node produced anything
        assert calls == ["make_durable"]
        assert [e.event_type for e in log.query("veneo")] == ["message"]
    finally:
        log.close()


def round_trips(log: object, call: Callable[[], object], tmp_path: Path) -> int:
    """How many round trips `call` made on the audit log's pooled connections (libpq's protocol trace, read by
    bench.pgtrace: what went over the sockets). Calls run one at a time, so the pool lends its idle ones."""
    from bench.pgtrace import parse_trace

    traced = []
    for n, conn in enumerate(list(log.pool._pool)):  # type: ignore[attr-defined]
        path = tmp_path / f"trace-{uuid.uuid4().hex}-{n}"
        conn.pgconn.trace(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        traced.append((conn, path))
    try:
        call()
    finally:
        for conn, _ in traced:
            conn.pgconn.untrace()  # flushes the trace
    return sum(len(parse_trace(path, "audit log")) for _, path in traced)


def test_an_append_after_this_processes_own_last_one_is_one_round_trip_and_replicas_keep_one_chain(
    url: str, tmp_path: Path
) -> None:
    """A process that wrote a tenant's newest entry appends the next in one round trip (lock, conditional insert,
    commit); when another process appended in between the insert writes nothing and the append tries once more
    after the head that attempt saw; when the entries were pruned it goes the long way (the anchor). Either way
    the tenant has one whole chain, also with two processes appending to it at once."""
    from checkpoints.audit import AuditEvent, PostgresAuditLog

    a, b = PostgresAuditLog(url), PostgresAuditLog(url)  # two replicas
    said = iter(range(1000))

    def event() -> list[AuditEvent]:
        return [AuditEvent("veneo", "k1", "message", "t1", {"role": "user", "content": f"m{next(said)}"})]

    try:
        assert round_trips(a, lambda: a.append(event()), tmp_path) == 2  # no head known yet: read it first
        assert round_trips(a, lambda: a.append(event()), tmp_path) == 1
        assert round_trips(a, lambda: a.append(event() + event()), tmp_path) == 1
        b.append(event())  # the head moved under a's feet
        assert round_trips(a, lambda: a.append(event()), tmp_path) == 2  # wrote nothing; then after what it saw
        assert round_trips(a, lambda: a.append(event()), tmp_path) == 1
        entries = a.query("veneo", limit=1000)
        assert [e.seq for e in entries] == list(range(1, 8))
        assert [e.payload["content"] for e in entries] == [f"m{i}" for i in range(7)]
        assert a.verify("veneo").ok and a.verify("veneo").checked == 7

        assert a.prune(datetime.now(UTC) + timedelta(days=1)) == 7  # the chain lives on in its anchor
        a.append(event())
        assert [e.seq for e in a.query("veneo")] == [8]
        assert a.verify("veneo").ok

        def appends(log: PostgresAuditLog) -> None:
            for _ in range(15):
                log.append(event())

        workers = [threading.Thread(target=appends, args=(log,)) for log in (a, a, b, b)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        result = b.verify("veneo")
        assert result.ok and result.checked == 61, result

        # the tables are lost and recreated (self-repair): the chain starts again at a lower seq; one append goes
        # the long way, the next is one round trip again (the head this process knew was kept, the higher seq
        # winning, so every append missed it and took two)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("drop table audit_events")
            admin.execute("drop table audit_anchors")
        assert a.repair_schema().events and not b.repair_schema().events
        assert round_trips(a, lambda: a.append(event()), tmp_path) >= 2
        assert round_trips(a, lambda: a.append(event()), tmp_path) == 1
        assert a.verify("veneo").ok and a.verify("veneo").checked == 2
    finally:
        a.close()
        b.close()


async def test_the_turn_saver_reads_and_writes_what_langgraphs_saver_does_without_a_worker_thread(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointer serializes on the event loop (checkpoints.factory._turn_saver_class): a turn's write,
    its pending writes and its read hand nothing to a worker thread, and what it stores and reads back is what
    LangGraph's own AsyncPostgresSaver stores and reads, each reading the other's rows."""
    from langchain_core.messages import AIMessage, HumanMessage
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    from checkpoints.factory import _turn_saver_class

    hops: list[str] = []
    real_to_thread = asyncio.to_thread

    async def to_thread(func: object, *args: object, **kwargs: object) -> object:
        hops.append(getattr(func, "__name__", repr(func)))
        return await real_to_thread(func, *args, **kwargs)  # type: ignore[arg-type]

    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(url, min_size=1, max_size=2, kwargs=kwargs, open=False) as pool:
        ours, theirs = _turn_saver_class()(pool), AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await theirs.setup()

        async def write(saver: AsyncPostgresSaver, thread: str) -> None:
            checkpoint = empty_checkpoint()
            values = {"messages": [HumanMessage("hi", id="1"), AIMessage("hello", id="2")], "phase": "chat",
                      "count": 3, "summary": None, "scores": {"a": [1.5, 2]}}  # fmt: skip
            checkpoint["channel_values"] = values
            checkpoint["channel_versions"] = {k: saver.get_next_version(None, None) for k in values}
            config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            saved = await saver.aput(config, checkpoint, {"source": "loop", "step": 1}, checkpoint["channel_versions"])  # type: ignore[arg-type]
            await saver.aput_writes(saved, [("messages", [AIMessage("next", id="3")]), ("phase", "done")], "task-1")

        monkeypatch.setattr(asyncio, "to_thread", to_thread)
        await write(ours, "ours")
        assert await ours.aget_tuple({"configurable": {"thread_id": "ours"}}) is not None
        assert hops == []  # nothing went to a worker thread
        await write(theirs, "theirs")
        assert hops  # the library's own saver does hop (else this test would prove nothing)
        for thread in ("ours", "theirs"):
            config = {"configurable": {"thread_id": thread}}
            mine, lib = await ours.aget_tuple(config), await theirs.aget_tuple(config)  # type: ignore[arg-type]
            assert mine is not None and lib is not None
            assert mine.checkpoint == lib.checkpoint and mine.checkpoint["channel_values"]["phase"] == "chat"
            assert mine.checkpoint["channel_values"]["messages"][1].content == "hello"
            assert mine.pending_writes == lib.pending_writes and len(mine.pending_writes or []) == 2
            assert mine.metadata == lib.metadata and mine.config == lib.config
            assert mine.parent_config == lib.parent_config
            # the latest checkpoint read elsewhere (the turn lock's round trip) decodes to what aget_tuple returns
            sql, params = ours.latest_query(thread)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as other:
                row = await (await other.cursor(row_factory=dict_row).execute(sql, params, binary=True)).fetchone()
            assert await ours.latest_from_row(row) == (True, mine)
        assert await ours.latest_from_row(None) == (True, None)  # a thread with nothing stored yet


async def test_processes_starting_together_on_an_empty_database_all_start(url: str) -> None:
    """Two workers (or replicas) starting at once on an empty database: LangGraph's setup() of the checkpointer
    and the store (create table if not exists, then numbered migrations) raced and one process failed to start
    (UniqueViolation on pg_type). It runs one process at a time now, as our own migrations do."""
    from checkpoints.factory import build_persistence

    async def start() -> str:
        async with build_persistence(url) as persistence:
            return type(persistence.checkpointer).__name__

    for _ in range(3):  # each round on a schema emptied again
        assert await asyncio.gather(*(start() for _ in range(4))) == ["TurnPostgresSaver"] * 4
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("drop table if exists checkpoints, checkpoint_blobs, checkpoint_writes,"
                          " checkpoint_migrations, store, store_migrations cascade")  # fmt: skip


async def test_a_setup_lock_held_too_long_is_a_clear_503_not_a_hang(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds LangGraph's setup lock (its `create index concurrently` waiting on a long transaction):
    this one gives up after SETUP_LOCK_WAIT_S with StorageUnavailable (503 in a request, a start that says why)
    instead of polling forever."""
    from checkpoints import factory
    from checkpoints.storage import StorageUnavailable

    monkeypatch.setattr(factory, "SETUP_LOCK_WAIT_S", 0.3)
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(hashtext('teamgraph-langgraph-setup:' || current_schema()))")
        with pytest.raises(StorageUnavailable, match="checkpointer setup"):
            async with factory._one_setup_at_a_time(url, 5.0):
                pass
    async with factory._one_setup_at_a_time(url, 5.0):  # released: the next one takes it at once
        pass


@contextlib.contextmanager
def traced_lock_connection(locks: TurnLocks, thread_id: str, tmp_path: Path) -> Iterator[list[object]]:
    """The round trips (bench.pgtrace's RoundTrip, read from libpq's protocol trace) made on the lock connection
    that `thread_id`'s turns use while the block runs (the list is filled when it ends). The connection must be
    open already (a turn of the session taken before)."""
    from bench.pgtrace import parse_trace

    conn = locks._pg[_slot(thread_id)]._conn
    path = tmp_path / f"lock-trace-{uuid.uuid4().hex}"
    conn.pgconn.trace(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    trips: list[object] = []
    try:
        yield trips
    finally:
        conn.pgconn.untrace()
        trips.extend(parse_trace(path, "turn locks"))


async def test_a_waiting_turn_polls_the_lock_alone_and_reads_once_it_holds_it(url: str, tmp_path: Path) -> None:
    """Reads sent with the lock are sent with the first attempt and, when that attempt found the session busy,
    once more after the poll that took the lock: not with every 50 ms poll (a turn waiting 0.6 s read the
    session's checkpoint a dozen times). What they answer still includes the previous holder's last commit."""
    from checkpoints.turn_lock import ReadUnderLock

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("create table notes (thread text, note text)")
    a, b = TurnLocks(url, wait_s=5), TurnLocks(url, wait_s=5)
    try:
        async with b.hold("t1"):  # b's lock connection for t1 is open
            pass
        release = await a.acquire("t1")

        async def write_then_release() -> None:
            await asyncio.sleep(0.6)
            with psycopg.connect(url, autocommit=True) as writer:
                writer.execute("insert into notes values ('t1', 'from the holder')")
            await release()

        reads = [ReadUnderLock("select note from notes where thread = %s", ["t1"]), ReadUnderLock("select 2 as n", [])]
        writing = asyncio.ensure_future(write_then_release())
        with traced_lock_connection(b, "t1", tmp_path) as trips:
            async with b.hold("t1", reads=reads):
                assert reads[0].rows == [{"note": "from the holder"}] and reads[1].rows == [{"n": 2}]
        await writing
        # (the lock and unlock statements were prepared by the first turn, so only the reads show their text)
        statements = [s for t in trips for s in t.statements]  # type: ignore[attr-defined]
        assert len(trips) >= 8, statements  # it did wait: a round trip per poll
        assert statements.count("select note from notes where thread = $1") == 2, statements
        assert statements.count("select 2 as n") == 2, statements
        # with the first poll, then after the poll that took the lock, in a round trip of their own
        assert [t.statements for t in trips[-2:]] == [  # type: ignore[attr-defined]
            ["select note from notes where thread = $1", "select 2 as n"],
            [],  # the unlock
        ]

        # uncontended: the lock and its reads are still one round trip
        with traced_lock_connection(b, "t1", tmp_path) as trips:
            async with b.hold("t1", reads=reads):
                assert reads[0].rows == [{"note": "from the holder"}]
        assert len(trips) == 2  # the lock with its reads, the unlock
    finally:
        await a.aclose()
        await b.aclose()


async def test_reads_under_the_lock_survive_an_alter_table_by_another_connection(url: str) -> None:
    """A newer replica adds a column during a rolling upgrade: the lock connection's reads (the session index's
    `select *`) keep being answered, with the new column. They were prepared by psycopg after five runs, and a
    prepared `select *` fails with "cached plan must not change result type" until the connection is replaced:
    every turn fell back to asking the usual way, and Postgres logged an error per turn."""
    from checkpoints.turn_lock import ReadUnderLock

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("create table notes (thread text, note text)")
        admin.execute("insert into notes values ('t1', 'hello')")
    locks = TurnLocks(url)
    try:
        for _ in range(8):
            read = ReadUnderLock("select * from notes where thread = %s", ["t1"])
            async with locks.hold("t1", reads=[read]):
                assert read.rows == [{"thread": "t1", "note": "hello"}]
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("alter table notes add column added_by_a_newer_replica int")
        for _ in range(3):
            read = ReadUnderLock("select * from notes where thread = %s", ["t1"])
            async with locks.hold("t1", reads=[read]):
                assert read.rows == [{"thread": "t1", "note": "hello", "added_by_a_newer_replica": None}]
        assert lock_holders(url, "t1") == []
    finally:
        await locks.aclose()


def test_session_index_and_audit_reads_survive_an_alter_table_by_a_newer_replica(url: str) -> None:
    """Found by a multi-replica review: after a newer replica added a column (a rolling upgrade, which
    docs/architecture.md says a replica of this release survives), every session read and turn of a replica that
    had repeated its reads answered 500 "cached plan must not change result type": psycopg prepares a statement
    run five times on a connection, and the session index's and the audit log's pools kept that default (the lock
    connections had been fixed alone, test above)."""
    from checkpoints.audit import AuditEvent, PostgresAuditLog
    from checkpoints.session_index import PostgresSessionIndex

    index, audit = PostgresSessionIndex(url), PostgresAuditLog(url)
    try:
        index.create("t1", "demo", "veneo_chat", client_id="s1")
        audit.append([AuditEvent("demo", "k", "session_created", "s1")])
        for _ in range(8):  # past psycopg's prepare threshold, on the pools' connections
            assert index.get("t1") is not None and index.find("demo", "s1") is not None
            assert index.list("demo") and audit.query("demo") and audit.verify("demo").ok
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("alter table teamgraph_sessions add column added_by_a_newer_replica int")
            admin.execute("alter table audit_events add column added_by_a_newer_replica int")
        for _ in range(3):
            assert index.get("t1") is not None and index.find("demo", "s1") is not None
            assert index.list("demo")
            assert audit.query("demo")
            assert audit.verify("demo").ok
    finally:
        index.close()
        audit.close()


async def test_a_failing_read_with_a_lock_attempt_that_found_the_session_busy_unlocks_nothing(url: str) -> None:
    """The session is held by another replica and the read sent with the lock fails: the attempt gives back only
    a lock it took. It sent `pg_advisory_unlock` for a lock it did not get (one more round trip, and a Postgres
    WARNING "you don't own a lock" to the client and in the server log, on every poll)."""
    from checkpoints.turn_lock import ReadUnderLock

    a, b = TurnLocks(url, wait_s=5), TurnLocks(url, wait_s=0.3)
    try:
        async with b.hold("t1"):  # b's lock connection for t1 is open
            pass
        conn = b._pg[_slot("t1")]._conn
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(f"{diag.severity}: {diag.message_primary}"))
        async with a.hold("t1"):
            [holder] = lock_holders(url, "t1")
            failing = ReadUnderLock("select * from no_such_table where thread = %s", ["t1"])
            with pytest.raises(TurnBusy):
                async with b.hold("t1", reads=[failing]):
                    pytest.fail("two replicas ran one session's turns at once")
            assert lock_holders(url, "t1") == [holder]
        assert notices == []  # each unlock of a lock not held says so
        # a failing read with an attempt that did take the lock still gives it back, and the turn runs locked once
        async with b.hold("t1", reads=[failing]):
            assert failing.rows is None and len(lock_holders(url, "t1")) == 1
        assert lock_holders(url, "t1") == [] and notices == []
    finally:
        await a.aclose()
        await b.aclose()


async def test_reads_under_the_lock_run_read_committed_whatever_the_connections_default(url: str) -> None:
    """A database, role or URL whose default_transaction_isolation is REPEATABLE READ: the lock and its reads,
    one implicit transaction, would take their snapshot at the lock statement, before the lock is granted, and
    could miss the previous holder's last commit. The lock connection sets READ COMMITTED itself."""
    from checkpoints.turn_lock import ReadUnderLock

    repeatable = url + "%20-cdefault_transaction_isolation%3Drepeatable%5C%20read"
    with psycopg.connect(repeatable, autocommit=True) as plain:  # the URL does what it says
        assert plain.execute("show transaction_isolation").fetchone() == ("repeatable read",)
    a, b = TurnLocks(repeatable, wait_s=5), TurnLocks(repeatable, wait_s=5)
    try:
        read = ReadUnderLock("select current_setting('transaction_isolation') as isolation", [])
        async with b.hold("t1", reads=[read]):  # uncontended: with the lock, in its round trip
            assert read.rows == [{"isolation": "read committed"}]
        release = await a.acquire("t1")
        asyncio.get_running_loop().call_later(0.2, lambda: asyncio.ensure_future(release()))
        async with b.hold("t1", reads=[read]):  # after waiting: once the lock is held
            assert read.rows == [{"isolation": "read committed"}]
    finally:
        await a.aclose()
        await b.aclose()


def test_an_append_after_a_conditional_or_redacting_one_is_still_one_round_trip(url: str, tmp_path: Path) -> None:
    """append_if and append_redacting move the chain's head: the process remembers it, so its next append is the
    one-round-trip kind. It kept the head from before them, and the next append wrote nothing, then tried again."""
    from checkpoints.audit import AuditEvent, PostgresAuditLog, erase_sessions

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("create table titles (thread text, title text)")
        admin.execute("insert into titles values ('t1', 'old')")
    log = PostgresAuditLog(url)
    said = iter(range(1000))

    def event() -> list[AuditEvent]:
        return [AuditEvent("veneo", "k1", "message", "t1", {"role": "user", "content": f"m{next(said)}"})]

    try:
        log.append(event())
        assert round_trips(log, lambda: log.append(event()), tmp_path) == 1
        renamed = log.append_if([("update titles set title = %s where thread = %s", ["new", "t1"])], event())
        assert renamed is not None
        assert round_trips(log, lambda: log.append(event()), tmp_path) == 1
        assert log.append_if([("update titles set title = %s where thread = %s", ["x", "nobody"])], event()) is None
        assert round_trips(log, lambda: log.append(event()), tmp_path) == 1  # a rolled back one moved nothing
        assert erase_sessions(log, "veneo", ["t1"], "k1", "0" * 64) == 5  # through append_redacting
        assert round_trips(log, lambda: log.append(event()), tmp_path) == 1
        entries = log.query("veneo", limit=100)
        assert [e.seq for e in entries] == list(range(1, 8))
        assert log.verify("veneo").ok and log.verify("veneo").checked == 7
    finally:
        log.close()


def schema_key(url: str, thread_id: str) -> int:
    """The session's per-schema turn lock key, as every release that takes it must compute it (a rolling upgrade
    mixes releases): pinned here on purpose, not imported."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "select hashtextextended('teamgraph-turn:' || current_schema() || ':' || %s, 0)", [thread_id]
        ).fetchone()
    assert row is not None
    return int(row[0])


def key_holders(url: str, key: int) -> list[int]:
    """Backend pids holding the bigint advisory lock `key` in this database."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "select pid from pg_locks where locktype = 'advisory' and granted and objsubid = 1"
            " and classid::bigint = %s and objid::bigint = %s and database = (select oid from pg_database"
            " where datname = current_database())",
            [unsigned >> 32, unsigned & 0xFFFFFFFF],
        ).fetchall()
    return [r[0] for r in rows]


async def test_a_turn_takes_the_thread_key_and_the_schema_key_and_excludes_older_and_newer_releases(
    url: str,
) -> None:
    """This release takes both keys of a session or neither: a replica of an older release (the thread key alone)
    and one of a later release (the schema key alone) are each kept apart from it during a rolling upgrade, and
    a try that gets one key gives it back. The schema key differs between schemas, so once every replica takes
    it alone, deployments in two schemas of one database stop waiting on each other's thread ids."""
    thread_key = int.from_bytes(hashlib.sha256(b"t1").digest()[:8], "big", signed=True)
    ours = schema_key(url, "t1")
    assert ours != thread_key
    locks = TurnLocks(url, wait_s=0.3)
    try:
        async with locks.hold("t1"):
            [pid] = key_holders(url, thread_key)
            assert key_holders(url, ours) == [pid]  # both, on one lock connection
            with psycopg.connect(url, autocommit=True) as other:
                for older_or_newer in (thread_key, ours):  # what the older and the later release try
                    assert other.execute("select pg_try_advisory_lock(%s)", [older_or_newer]).fetchone() == (False,)
        assert key_holders(url, thread_key) == [] and key_holders(url, ours) == []

        for held_by_the_other in (thread_key, ours):  # an older replica's turn, then a later replica's turn
            with psycopg.connect(url, autocommit=True) as other:
                other.execute("select pg_advisory_lock(%s)", [held_by_the_other])
                with pytest.raises(TurnBusy):
                    async with locks.hold("t1"):
                        pytest.fail("two releases ran one session's turns at once")
                assert key_holders(url, thread_key) + key_holders(url, ours) == [other.info.backend_pid]
            async with locks.hold("t1"):  # the other released it (its connection closed): taken at once
                pass

        with fresh_postgres_schema("tg_lock_other") as other_schema:
            assert schema_key(other_schema, "t1") != ours
            # a later release in the other schema takes its own key while this schema's turn runs
            async with locks.hold("t1"):
                with psycopg.connect(other_schema, autocommit=True) as later:
                    key = schema_key(other_schema, "t1")
                    assert later.execute("select pg_try_advisory_lock(%s)", [key]).fetchone() == (True,)
    finally:
        await locks.aclose()


async def test_a_turn_gives_back_the_schema_key_it_took_even_when_its_schema_was_dropped_and_recreated(
    url: str,
) -> None:
    """Found in review: the unlock computed the schema key again from current_schema() at the end of the turn; with
    the schema dropped meanwhile (a self-repair incident) that is NULL, another key, so the key taken stayed held
    on the long-lived lock connection and every other worker got TurnBusy for the session from then on. The unlock
    gives back the value the lock statement took."""
    schema = url.rsplit("%3D", 1)[1]
    ours = schema_key(url, "t1")
    first, second = TurnLocks(url, wait_s=0.3), TurnLocks(url, wait_s=0.3)
    try:
        release = await first.acquire("t1")
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"drop schema {schema} cascade")
            try:
                await release()  # the turn ends while its schema is gone
            finally:
                admin.execute(f"create schema {schema}")
        assert key_holders(url, ours) == []
        async with second.hold("t1"):  # another worker's turn of the session: not TurnBusy
            pass
    finally:
        await first.aclose()
        await second.aclose()


async def test_the_lock_connections_carry_tcp_keepalive_from_the_settings(url: str) -> None:
    """Found in review: a lock connection set no TCP keepalive and no tcp_user_timeout, so a silent network
    partition (no FIN, no RST) left its socket quiet: the check before a turn's answer said held, and the loss was
    seen at the unlock at the earliest, after minutes of retransmission. Now every lock connection carries libpq's
    keepalive parameters from the settings, and its socket has them (read back from the kernel)."""
    import socket

    from tests.conftest import open_engine

    async with open_engine(
        url,
        turn_lock_keepalive_idle_s=7,
        turn_lock_keepalive_interval_s=3,
        turn_lock_keepalive_count=4,
        turn_lock_tcp_user_timeout_s=19,
    ) as engine:
        locks = engine.turn_locks
        async with locks.hold("keepalive"):
            conn = locks._held["keepalive"][1]
            params = conn.info.get_parameters()
            assert {k: params.get(k) for k in ("keepalives", "keepalives_idle", "keepalives_interval",
                                               "keepalives_count", "tcp_user_timeout")} == {
                "keepalives": "1", "keepalives_idle": "7", "keepalives_interval": "3", "keepalives_count": "4",
                "tcp_user_timeout": "19000",
            }  # fmt: skip
            sock = socket.socket(fileno=os.dup(conn.fileno()))  # the same TCP socket, read from the kernel
            try:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 19000
            finally:
                sock.close()
            # and the server's end of the connection (its backend) has them too, with a margin (twice the idle
            # time and the user timeout): the backend, and its locks, go after the holder has noticed, not with it
            cur = await conn.execute(
                "select current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'),"
                " current_setting('tcp_keepalives_count'), current_setting('tcp_user_timeout')"
            )
            assert await cur.fetchone() == ("14", "3", "4", "38000")
    locks = TurnLocks(url)  # without settings: the defaults
    try:
        async with locks.hold("defaults"):
            params = locks._held["defaults"][1].info.get_parameters()
            assert (params.get("keepalives_idle"), params.get("tcp_user_timeout")) == ("10", "25000")
    finally:
        await locks.aclose()
