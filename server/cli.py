"""The `teamgraph` command line: interview and chat in the terminal, sessions, persona bundles.

Importing this module imports typer and the standard library only: each command imports what it needs when it
runs, so `teamgraph --help` and `teamgraph personas validate` do not pay for the server, LangGraph or the OpenAI
SDK (tests/unit_tests/test_cli_imports.py keeps it so).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import csv
import errno
import ipaddress
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from personas import DEFAULT_BUNDLE_DIR

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from contextlib import AbstractAsyncContextManager

    from personas.loader import BundleError, Bundles
    from server.engine import Engine
    from server.settings import Settings

app = typer.Typer(help="Teamgraph: several LLM agent teams side by side.", no_args_is_help=True)
sessions_app = typer.Typer(help="Stored sessions (threads).", no_args_is_help=True)
personas_app = typer.Typer(help="Persona bundles: validate them, print their JSON Schema.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
app.add_typer(personas_app, name="personas")
audit_app = typer.Typer(help="The audit log: verify its hash chains, export, prune.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
users_app = typer.Typer(help="End users: erase everything a tenant holds about one.", no_args_is_help=True)
app.add_typer(users_app, name="users")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SessionOpt = Annotated[str | None, typer.Option("--session", help="Continue a stored session (its id).")]
TenantOpt = Annotated[str, typer.Option("--tenant", help="Tenant id (from personas/tenants/).")]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def read_document(path: Path) -> str:
    """Text of a resume or job description file (txt or md)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail(f"{path}: file not found") from None
    except IsADirectoryError:
        raise fail(f"{path}: is a directory; give a .txt or .md file") from None
    except OSError as exc:
        raise fail(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise fail(f"{path}: not a UTF-8 text file (use .txt or .md)") from None


def _ask(prompt: str) -> str | None:
    """One line from the user; None at end of input."""
    try:
        return input(prompt)
    except EOFError:
        return None


async def _print_turn(engine: Engine, session: Any, turn_input: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    streaming_node = None
    async for event in engine.stream_turn(session, turn_input, final_state=state):
        if event.kind == "token":
            if streaming_node is None:
                typer.echo("")
            streaming_node = event.node
            typer.echo(event.text, nl=False)
        elif event.node == streaming_node:
            typer.echo("\n")  # already shown token by token
            streaming_node = None
        else:
            typer.echo(f"\n{event.text}")
    return state


def _settings() -> Settings:
    """TEAMGRAPH_* settings (importing them imports pydantic-settings: only commands that need them call this)."""
    from pydantic import ValidationError

    from server.settings import Settings, settings_errors, unknown_variables

    try:
        settings = Settings()
    except ValidationError as exc:
        raise fail("\n".join(settings_errors(exc)), 2) from None  # a setting from the environment or .env
    unknown = unknown_variables(settings)
    if unknown:  # a misspelled setting would be ignored: its default used instead, silently
        raise fail("\n".join(unknown), 2)
    return settings


def _open_engine(
    existing: bool = False, settings: Settings | None = None, tenant: str | None = None
) -> AbstractAsyncContextManager[Engine]:
    """The engine over the current settings; imports the server, LangGraph and the teams' graphs. A SQLite file
    that is there but is no SQLite database is one line (every command). `existing`: for commands that read what
    is stored, a SQLite file that is not there is refused too (see _existing_database). `tenant`: one of the
    bundles', checked before the database is opened (opening it creates a SQLite file that is not there)."""
    from server.engine import Engine

    settings = settings or _settings()
    bundles = None
    if tenant is not None:
        bundles = _load_bundles(settings.personas_dir)
        check_tenant(bundles, tenant)
    if existing:
        _existing_database(settings)
    else:
        _missing_database(settings)
    return Engine.open(settings, bundles=bundles)


def _missing_database(settings: Settings) -> Path | None:
    """The SQLite file of the settings when it is not there (None: it is, or the database is not SQLite); a file
    that is there but is not a SQLite database is refused, one line, exit status 1 (it was a DatabaseError
    traceback)."""
    from urllib.parse import urlparse

    from checkpoints.factory import check_sqlite_file, sqlite_path
    from checkpoints.storage import StorageUnavailable, display_url

    if urlparse(settings.checkpoint_url).scheme != "sqlite":
        return None
    path = sqlite_path(settings.checkpoint_url)
    if not path.is_file():
        return path
    try:
        check_sqlite_file(path)
    except StorageUnavailable as exc:
        variable = settings.database_variable
        value = display_url(settings.checkpoint_url) if variable.endswith("CHECKPOINT_URL") else settings.data_dir
        raise fail(f"{variable}={value}: {exc}") from None
    return None


def _existing_database(settings: Settings) -> None:
    """A command that reads what is stored about a session, a tenant or a user refuses a SQLite file that is not
    there, exit status 1: opening it would create the file (and its directory), and the command would report an
    empty database as if it were the one asked for. A file that is not a SQLite database is one line too."""
    path = _missing_database(settings)
    if path is not None:
        raise fail(f"no database at {path} ({settings.database_variable}): nothing to read, and none is created")


def _nothing_stored(settings: Settings) -> bool:
    """For a command over everything stored (`sessions list`, `sessions prune`, `audit verify`): on a fresh install
    (no SQLite file yet) it says so and succeeds, exit status 0, without creating the file."""
    path = _missing_database(settings)
    if path is None:
        return False
    typer.echo(
        f"no sessions stored yet at {path} (set TEAMGRAPH_DATA_DIR or TEAMGRAPH_CHECKPOINT_URL if they are elsewhere)",
        err=True,
    )
    return True


def check_tenant(bundles: Any, tenant: str, team: str | None = None, logged: Any = ()) -> None:
    """An unknown tenant (or team) is refused by name before a command reads or writes anything: a typo must not
    list nothing, verify nothing or start an audit chain, all with exit status 0. `logged`: tenants the audit
    log holds entries of (a tenant since removed from the bundles still has a log to verify, export, erase in)."""
    if tenant not in bundles.tenants and tenant not in logged:
        raise fail(f"unknown tenant {tenant!r}")
    if team is not None and team not in bundles.teams:
        enabled = bundles.tenants[tenant].enabled_teams if tenant in bundles.tenants else []
        raise fail(f"unknown team {team!r}; teams for tenant {tenant!r}: {', '.join(enabled)}")


async def _stored_tenants(engine: Engine) -> set[str]:
    """Tenants the session index or the audit log holds (one since removed from the bundles too), read only."""
    index, logged = await asyncio.gather(
        asyncio.to_thread(engine.sessions.tenants), asyncio.to_thread(engine.audit.tenants)
    )
    return {*index, *logged}


async def _check_stored_tenant(engine: Engine, tenant: str, team: str | None = None) -> None:
    """check_tenant for commands on stored sessions: a tenant (or team) since removed from the bundles still has
    sessions to list, show, export and delete."""
    if team is not None and team not in engine.bundles.teams:
        stored: list[Any] = await asyncio.to_thread(engine.sessions.list, tenant, team, 1)
        team = None if stored else team  # sessions of a removed team are listed
    tenants = set() if tenant in engine.bundles.tenants else await _stored_tenants(engine)
    check_tenant(engine.bundles, tenant, team, logged=tenants)


def _run(coro: Any) -> Any:
    from checkpoints.audit import AuditWriteError
    from checkpoints.storage import StorageUnavailable
    from personas.loader import BundleError
    from personas.resolver import TeamResolutionError
    from server.engine import SessionNotFound
    from states.migrations import SessionSchemaTooNew

    try:
        return asyncio.run(coro)
    except (TeamResolutionError, SessionNotFound, SessionSchemaTooNew) as exc:
        raise fail(str(exc)) from None
    except (StorageUnavailable, AuditWriteError) as exc:  # a fault of the database: one line, not a traceback
        if isinstance(exc, AuditWriteError) and exc.__cause__ is None:
            raise  # the log refused it (an unknown event type): a bug, with its stack
        raise fail(f"storage unavailable: {exc}") from None
    except BundleError as exc:
        raise _refuse_bundles(exc, 2) from None


def _too_long(engine: Engine, session: Any, text: str) -> bool:
    """A message past the team's limits.max_message_chars is refused here as the API refuses it (422), not
    stored: say so, and ask again."""
    limit = engine.resolve(session.tenant, None, session).team.limits.max_message_chars
    if len(text) <= limit:
        return False
    typer.secho(f"not sent: {len(text)} characters; this team takes at most {limit} per message "
                "(limits.max_message_chars)", err=True, fg=typer.colors.YELLOW)  # fmt: skip
    return True


def _session_of(engine: Engine, tenant: str, session_id: str, graph: str, command: str) -> Any:
    """The tenant's session, if it is one this command continues (a chat is no interview, and the reverse)."""
    session = engine.get_session(tenant, session_id)
    if session.team not in engine.bundles.teams:
        raise fail(
            f"session {session_id} is of team {session.team!r}, which is not in the bundles (TEAMGRAPH_PERSONAS_DIR): "
            f"it cannot be continued; see it with `teamgraph sessions show {session_id} --tenant {tenant}`"
        )
    if session.team not in engine.bundles.tenants[tenant].enabled_teams:
        raise fail(
            f"session {session_id} is of team {session.team!r}, which is not enabled for tenant {tenant!r}: it "
            f"cannot be continued; see it with `teamgraph sessions show {session_id} --tenant {tenant}`"
        )
    if engine.graph_id(session.team) != graph:
        other = "interview" if engine.graph_id(session.team) == "interview" else "chat"
        raise fail(
            f"session {session_id} is of team {session.team!r}, which `teamgraph {command}` does not continue: "
            f"continue it with `teamgraph {other} --tenant {tenant} --session {session_id}`"
        )
    return session


INTERVIEW_TENANT = "demo"  # `teamgraph interview`'s default tenant


def _session_options(tenant: str, session_id: str) -> str:
    """The options that find the session again: --tenant too unless it is the interview's default."""
    return f"--session {session_id}" if tenant == INTERVIEW_TENANT else f"--tenant {tenant} --session {session_id}"


async def _interview(
    resume: Path | None, jd: Path | None, role: str | None, tenant: str, session_id: str | None
) -> None:
    async with _open_engine(tenant=tenant) as engine:
        if session_id:
            session = _session_of(engine, tenant, session_id, "interview", "interview")
            state = await engine.state(session)
            if state.get("phase") == "asking":
                q = state["questions"][state["current"]]
                typer.echo(f"Continuing session {session.id}.\nQuestion {state['current'] + 1}: {q['text']}")
            elif state.get("phase") == "done":
                typer.echo(
                    f"Session {session.id} is finished: nothing to continue. See it with "
                    f"`teamgraph sessions show {session.id} --tenant {tenant}`; start another with --resume FILE."
                )
                return
        else:
            if resume is None:
                raise fail("--resume FILE is required to start an interview (or --session ID to continue one)")
            # read the documents first: a missing file must not leave an empty session behind
            first: dict[str, Any] = {
                "resume": read_document(resume),
                "messages": [{"role": "user", "content": "Start"}],
            }
            if jd:
                first["job_description"] = read_document(jd)
            if role:
                first["role"] = role
            session = await engine.create_session(tenant, "interview")
            typer.echo(f"Session {session.id} (continue later with {_session_options(tenant, session.id)})")
            state = await _print_turn(engine, session, first)
        while state.get("phase") != "done":
            answer = _ask("\nYour answer> ")
            if answer is None:
                typer.echo(f"\nPaused. Continue with: teamgraph interview {_session_options(tenant, session.id)}")
                return
            if _too_long(engine, session, answer):
                continue
            state = await _print_turn(engine, session, {"messages": [{"role": "user", "content": answer}]})


@app.command()
def interview(
    resume: Annotated[Path | None, typer.Option("--resume", help="Resume file (.txt or .md).")] = None,
    jd: Annotated[Path | None, typer.Option("--jd", help="Job description file (.txt or .md).")] = None,
    role: Annotated[str | None, typer.Option("--role", help="Role title (default: the JD's first line).")] = None,
    tenant: TenantOpt = INTERVIEW_TENANT,
    session: SessionOpt = None,
) -> None:
    """A mock interview in the terminal: questions, your typed answers, scores and feedback, a summary."""
    _run(_interview(resume, jd, role, tenant, session))


async def _chat(tenant: str, session_id: str | None) -> None:
    async with _open_engine(tenant=tenant) as engine:
        if session_id:
            session = _session_of(engine, tenant, session_id, "veneo_chat", "chat")
        else:
            session = await engine.create_session(tenant, "veneo_chat")
        typer.echo(f"Session {session.id}. Type a message; /summarize for a summary; Ctrl-D to leave.")
        while True:
            text = _ask("\nYou> ")
            if text is None:
                typer.echo(f"\nBye. Continue with: teamgraph chat --tenant {tenant} --session {session.id}")
                return
            if text.strip() and not _too_long(engine, session, text):
                await _print_turn(engine, session, {"messages": [{"role": "user", "content": text}]})


@app.command()
def chat(tenant: TenantOpt = "veneo", session: SessionOpt = None) -> None:
    """An interactive chat with the tenant's chat team (replies pass the safety reviewer)."""
    _run(_chat(tenant, session))


DEMO_KEYS = {"demo": "tg-demo-key", "veneo": "tg-veneo-key"}  # development keys shipped hashed in the bundles


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _refuse_published_keys(bundles: Any, host: str, allowed: bool) -> None:
    """The README prints the development keys: on an address others can reach they would open the server to
    anyone. Refuse, unless the operator says so explicitly."""
    from server.auth import development_keys

    dev_keys = development_keys(bundles)
    if not dev_keys or _is_loopback(host):
        return
    if allowed:
        typer.secho(f"warning: development keys ({', '.join(dev_keys)}) are enabled on {host}, reachable by others "
                    "(TEAMGRAPH_ALLOW_DEV_KEYS=true)", err=True, fg=typer.colors.YELLOW)  # fmt: skip
        return
    raise fail(
        f"refusing to listen on {host}: the development key(s) {', '.join(dev_keys)} are published in the README; "
        "remove them from the tenant bundles (personas/tenants/*.yaml, TEAMGRAPH_PERSONAS_DIR), listen on "
        "127.0.0.1, or set TEAMGRAPH_ALLOW_DEV_KEYS=true"
    )


def _check_port(host: str, port: int) -> None:
    """A port another process holds is one clear line, not uvicorn's traceback."""
    if port == 0:
        return
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise fail(f"port {port} on {host} is already in use: stop what listens there, or choose another "
                       "port with --port N (or TEAMGRAPH_PORT)") from None  # fmt: skip
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc} (--host, TEAMGRAPH_HOST)") from None


def _check_database(settings: Settings) -> None:
    """A wrong TEAMGRAPH_CHECKPOINT_URL (bad scheme, port, database, unwritable directory) is one line naming
    the setting and the cause, within a few seconds."""
    from checkpoints.factory import CheckpointURLError, check_storage
    from checkpoints.storage import StorageUnavailable, display_url

    try:
        check_storage(settings.checkpoint_url, settings.db_timeout_s)
    except (CheckpointURLError, StorageUnavailable) as exc:
        raise fail(f"TEAMGRAPH_CHECKPOINT_URL={display_url(settings.checkpoint_url)}: {exc}") from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: TEAMGRAPH_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port (default: TEAMGRAPH_PORT or 8000).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes, 1 to 64 (default: TEAMGRAPH_WORKERS, else one per CPU core on PostgreSQL, "
            "1 on SQLite).",
        ),
    ] = None,
) -> None:
    """Serve the teams over HTTP: LangServe per team at /teams/{team}, REST at /sessions, docs at /docs."""
    import uvicorn

    settings = _settings()
    bundles = _load_bundles(settings.personas_dir)
    host = host or settings.host
    port = settings.port if port is None else port
    from server.settings import serve_workers

    workers, workers_from = serve_workers(settings, workers)
    if workers > 1 and settings.checkpoint_url.strip().lower().startswith("memory://"):
        # each worker would keep its own sessions: a client's requests would meet one store, then another
        raise fail(
            f"TEAMGRAPH_CHECKPOINT_URL=memory:// keeps sessions inside one process: {workers} workers "
            f"({workers_from}) would each have their own; serve one worker, or use sqlite:/// or postgresql://",
            2,
        )
    os.environ["TEAMGRAPH_WORKERS"] = str(workers)  # each worker's settings know it has siblings (self-repair)
    _refuse_published_keys(bundles, host, settings.allow_dev_keys)
    _check_port(host, port)
    _check_database(settings)
    from checkpoints.storage import display_url

    url = f"http://{host}:{port}"
    typer.secho(f"Teamgraph on {url}  (API docs: {url}/docs)", bold=True, err=True)
    typer.echo(f"checkpoints: {display_url(settings.checkpoint_url)}", err=True)
    typer.echo(f"workers: {workers}  ({workers_from})", err=True)
    for tenant, key in DEMO_KEYS.items():
        if tenant in bundles.tenants:
            teams = ", ".join(bundles.tenants[tenant].enabled_teams)
            typer.echo(f"tenant {tenant}: key {key}  (teams: {teams})", err=True)
    typer.echo(f"try: curl -H 'Authorization: Bearer tg-demo-key' {url}/teams", err=True)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # each worker writes its metrics here and /metrics sums them (prometheus-client multiprocess mode)
        metrics_dir = tempfile.mkdtemp(prefix="teamgraph-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        atexit.register(shutil.rmtree, metrics_dir, True)
    # stdout is the JSON log stream (one line per request from our middleware): no uvicorn access lines in it,
    # and uvicorn's own lines (start, stop, errors), in the supervisor and every worker, in the same format
    from server.observability.logging import uvicorn_log_config

    uvicorn.run(
        "server.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        log_config=uvicorn_log_config(settings.log_level, settings.log_format),
        # with --workers N, uvicorn replaces a worker that does not answer its health ping in time; a worker
        # importing the graphs on a busy machine can take longer than uvicorn's 5 s default to start
        timeout_worker_healthcheck=30,
        timeout_keep_alive=settings.keep_alive_s,
        # on SIGTERM, requests still running after this are cut (uvicorn's default waits for them without end)
        timeout_graceful_shutdown=settings.shutdown_wait_s,
        access_log=False,
    )


@app.command()
def demo() -> None:
    """The offline demo: a mock interview on the example resume and job description, then the Veneo chat."""
    typer.secho("== Mock interview (tenant demo) ==", bold=True)
    _run(_interview(EXAMPLES / "resume.md", EXAMPLES / "job_description.md", None, "demo", None))
    typer.secho("\n== Veneo chat (tenant veneo) ==", bold=True)
    _run(_chat("veneo", None))


LIST_PAGE = 200


async def _sessions(
    action: str, tenant: str, team: str | None, thread_id: str | None, title: str | None, limit: int | None = None
) -> None:
    settings = _settings()
    if action == "list" and _missing_database(settings) is not None:  # a fresh install: nothing stored yet
        check_tenant(_bundles(), tenant, team)
        _nothing_stored(settings)
        return
    async with _open_engine(existing=True, settings=settings) as engine:
        await _check_stored_tenant(engine, tenant, team)
        if action == "list":  # every session, a page at a time (it stopped at 200 without a word)
            shown, before = 0, None
            while limit is None or shown < limit:
                want = LIST_PAGE if limit is None else min(LIST_PAGE, limit - shown)
                page = engine.sessions.list(tenant, team, limit=want, before=before)
                for s in page:
                    typer.echo(f"{s.id}  {s.team:<11} {s.updated_at[:19]}  {s.title}")
                shown += len(page)
                if len(page) < want:
                    return
                before = (page[-1].updated_at, page[-1].thread_id)
            if engine.sessions.list(tenant, team, limit=1, before=before):
                typer.echo(
                    f"(the newest {limit} shown; there are more: raise --limit, or leave it out for all)", err=True
                )
            return
        assert thread_id is not None
        session = engine.get_session(tenant, thread_id)
        if action == "show":
            typer.echo(f"{session.id}  team={session.team}  title={session.title!r}  created={session.created_at}")
            for m in await engine.transcript(session):
                who = "you" if m.type == "human" else (m.name or "assistant")
                typer.echo(f"\n[{who}] {m.content}")
        elif action == "rename":
            engine.rename_session(session, title or "")
            typer.echo(f"renamed {thread_id}")
        elif action == "delete":
            await engine.delete_session(session)
            typer.echo(f"deleted {thread_id}")


@sessions_app.command("list")
def sessions_list(
    tenant: TenantOpt = "demo",
    team: Annotated[str | None, typer.Option(help="Only this team's sessions.")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Show at most N (default: all); says so when there are more.")
    ] = None,
) -> None:
    """Every session of a tenant, newest first (--limit N for the newest N)."""
    _run(_sessions("list", tenant, team, None, None, limit))


@sessions_app.command("show")
def sessions_show(session_id: str, tenant: TenantOpt = "demo") -> None:
    """A session's whole transcript."""
    _run(_sessions("show", tenant, None, session_id, None))


def _title_argument(title: str) -> str:
    """TITLE checked as PATCH /sessions/{id} checks `title` (server/routers/sessions.py): a usage error otherwise."""
    from server.routers.sessions import new_title

    try:
        return new_title(title)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'TITLE'") from None


@sessions_app.command("rename")
def sessions_rename(
    session_id: str,
    title: Annotated[str, typer.Argument(callback=_title_argument, help="One line, not blank, at most 200 chars.")],
    tenant: TenantOpt = "demo",
) -> None:
    """Give a session a new title."""
    _run(_sessions("rename", tenant, None, session_id, title))


@sessions_app.command("delete")
def sessions_delete(session_id: str, tenant: TenantOpt = "demo") -> None:
    """Delete a session: its checkpoints, archived transcript and index entry."""
    _run(_sessions("delete", tenant, None, session_id, None))


def _pending_schema_sqlite(path: Path) -> list[str]:
    """What opening the SQLite file would change in its tables, read without writing (a read-only connection)."""
    import sqlite3

    from checkpoints.audit import USER_KEY_NAME
    from checkpoints.schema_migrations import COMPONENTS, SchemaTooNew, latest, sqlite_version

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        pending = []
        journal = conn.execute("pragma journal_mode").fetchone()[0]
        if journal.lower() != "wal":
            pending.append(f"journal mode {journal} -> wal")
        for component in COMPONENTS:
            stored, known = sqlite_version(conn, component), latest(component)
            if stored > known:
                raise fail(str(SchemaTooNew(component, stored, known)))
            if stored < known:
                pending.append(f"{component} tables: schema version {stored} -> {known}")
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
        missing = sorted({"checkpoints", "writes", "store"} - tables)
        if missing:
            pending.append(f"LangGraph tables created: {', '.join(missing)}")
        if (
            "audit_keys" not in tables
            or not conn.execute("select 1 from audit_keys where name = ?", [USER_KEY_NAME]).fetchone()
        ):
            pending.append("audit: the key that names end users in audit entries is created")
        return pending
    finally:
        conn.close()


def _pending_schema_postgres(url: str, timeout_s: float) -> tuple[list[str], int]:
    """What opening the Postgres schema would change in its tables, and how many sessions its index holds, read
    in a read-only session."""
    import psycopg
    from langgraph.checkpoint.postgres.base import BasePostgresSaver
    from langgraph.store.postgres.base import MIGRATIONS as STORE_MIGRATIONS

    from checkpoints.audit import USER_KEY_NAME
    from checkpoints.factory import postgres_unreachable
    from checkpoints.schema_migrations import COMPONENTS, SchemaTooNew, latest, postgres_version
    from checkpoints.storage import pg_connect_kwargs

    try:
        conn = psycopg.connect(url, autocommit=True, **pg_connect_kwargs(timeout_s))
    except psycopg.OperationalError as exc:
        raise postgres_unreachable(url, exc) from exc
    with conn:
        conn.execute("set default_transaction_read_only = on")
        pending = []
        for component in COMPONENTS:
            stored, known = postgres_version(conn, component), latest(component)
            if stored > known:
                raise fail(str(SchemaTooNew(component, stored, known)))
            if stored < known:
                pending.append(f"{component} tables: schema version {stored} -> {known}")
        for what, versions, count in (
            ("checkpoint", "checkpoint_migrations", len(BasePostgresSaver.MIGRATIONS)),
            ("store", "store_migrations", len(STORE_MIGRATIONS)),
        ):
            row = conn.execute("select to_regclass(%s) is not null", [versions]).fetchone()
            counted = conn.execute(f"select count(distinct v) from {versions}").fetchone() if row and row[0] else None
            done = counted[0] if counted else 0
            if done < count:
                pending.append(f"LangGraph {what} tables: migrations {done} -> {count}")
        row = conn.execute("select to_regclass('audit_keys') is not null").fetchone()
        if (
            not (row and row[0])
            or not conn.execute("select 1 from audit_keys where name = %s", [USER_KEY_NAME]).fetchone()
        ):
            pending.append("audit: the key that names end users in audit entries is created")
        row = conn.execute("select to_regclass('teamgraph_sessions') is not null").fetchone()
        counted = conn.execute("select count(*) from teamgraph_sessions").fetchone() if row and row[0] else None
        return pending, counted[0] if counted else 0


@contextlib.asynccontextmanager
async def _dry_run_engine(settings: Settings) -> AsyncIterator[Engine | None]:
    """An engine a dry run may open without changing the store: opening one runs the schema migrations (and
    on SQLite switches the file to WAL), so the pending ones are reported first, read only. SQLite: the engine
    opens a copy of the file in a temporary directory (the sessions are checked there, on the migrated copy).
    Postgres: when something is pending, None (its sessions are checked once a real run migrated the schema)."""
    from urllib.parse import urlparse

    from server.engine import Engine

    scheme = urlparse(settings.checkpoint_url).scheme
    if scheme == "sqlite":
        import sqlite3

        from checkpoints.factory import sqlite_path

        path = sqlite_path(settings.checkpoint_url)
        pending = _pending_schema_sqlite(path)
        for line in pending:
            typer.echo(f"would migrate: {line}")
        with tempfile.TemporaryDirectory(prefix="teamgraph-migrate-dry-run-") as tmp:
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            copy = sqlite3.connect(Path(tmp) / "teamgraph.db")
            try:
                source.backup(copy)
            finally:
                copy.close()
                source.close()
            copied = settings.model_copy(update={"checkpoint_url": f"sqlite:///{tmp}/teamgraph.db"})
            async with Engine.open(copied) as engine:
                yield engine
        return
    if scheme in ("postgres", "postgresql"):
        pending, stored = await asyncio.to_thread(
            _pending_schema_postgres, settings.checkpoint_url, settings.db_timeout_s
        )
        for line in pending:
            typer.echo(f"would migrate: {line}")
        if pending:
            typer.echo(
                f"{stored} sessions, not checked: reading them would apply the schema steps above; a real run "
                "applies them first, then upgrades the sessions"
            )
            yield None
            return
    async with Engine.open(settings) as engine:  # nothing pending (or memory://): opening it writes nothing
        yield engine


async def _migrate(dry_run: bool) -> dict[str, int] | None:
    """Every session of every tenant in the current state version, one at a time under its turn lock; None: a dry
    run that could not read the sessions without migrating the schema (it said so)."""
    from checkpoints.turn_lock import TurnBusy
    from states.migrations import SessionSchemaTooNew

    counts = {
        "checked": 0,
        "upgraded": 0,
        "current": 0,
        "too_new": 0,
        "busy": 0,
        "unknown_team": 0,
        "unknown_tenant": 0,
    }
    settings = _settings()
    if (missing := _missing_database(settings)) is not None:  # a fresh install (`migrate && serve` on a new machine)
        typer.echo(f"no database at {missing} yet: nothing to migrate", err=True)
        return None
    async with _dry_run_engine(settings) if dry_run else _open_engine(settings=settings) as engine:
        if engine is None:
            return None
        # a tenant removed from the bundles still has its sessions (the index and its audit chain name it)
        for tenant in sorted(set(engine.bundles.tenants) | await _stored_tenants(engine)):
            before: tuple[str, str] | None = None
            while page := engine.sessions.list(tenant, None, limit=100, before=before):
                before = (page[-1].updated_at, page[-1].thread_id)
                for record in page:
                    counts["checked"] += 1
                    where = f"{tenant}/{record.id} ({record.team})"
                    if tenant not in engine.bundles.tenants:
                        counts["unknown_tenant"] += 1
                        typer.echo(f"skipped {where}: tenant {tenant!r} is not in the bundles", err=True)
                        continue
                    if record.team not in engine.bundles.teams:
                        counts["unknown_team"] += 1
                        typer.echo(f"skipped {where}: team {record.team!r} is not in the bundles", err=True)
                        continue
                    try:
                        # a replica's turn on the session finishes first; the upgrade is one checkpoint
                        async with engine.turn_locks.hold(record.thread_id, record.team):
                            step = await engine.upgrade_session(record, dry_run=dry_run)
                    except SessionSchemaTooNew as exc:
                        counts["too_new"] += 1
                        typer.echo(f"skipped {where}: {exc}", err=True)
                        continue
                    except TurnBusy:
                        counts["busy"] += 1
                        typer.echo(f"skipped {where}: busy with a turn; run teamgraph migrate again", err=True)
                        continue
                    if step is None:
                        counts["current"] += 1
                    else:
                        counts["upgraded"] += 1
                        verb = "would upgrade" if dry_run else "upgraded"
                        typer.echo(f"[{counts['checked']}] {verb} {where}: version {step[0]} -> {step[1]}")
    return counts


@app.command()
def migrate(
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Report the pending schema steps and the sessions a real run would upgrade; change nothing "
            "(SQLite: sessions are checked on a temporary copy of the file).",
        ),
    ] = False,
) -> None:
    """Store every session in its team's current state version (TEAMGRAPH_CHECKPOINT_URL; SQLite or Postgres).

    Safe while servers run (each session is upgraded under its turn lock, as one new checkpoint) and resumable:
    upgraded sessions are skipped when it runs again. Exits 1 when a session could not be upgraded."""
    counts = _run(_migrate(dry_run))
    if counts is None:
        return
    verb = "would upgrade" if dry_run else "upgraded"
    typer.echo(
        f"{counts['checked']} sessions: {counts['upgraded']} {verb}, {counts['current']} already current, "
        f"{counts['too_new']} newer than this Teamgraph, {counts['busy']} busy, "
        f"{counts['unknown_team']} of teams not in the bundles, {counts['unknown_tenant']} of tenants not in the "
        "bundles"
    )
    if counts["too_new"] or counts["busy"]:
        raise typer.Exit(1)


async def _prune(dry_run: bool) -> dict[str, dict[str, Any]]:
    from checkpoints.retention import retention_leader

    settings = _settings()
    if _nothing_stored(settings):  # a fresh install: nothing to prune
        return {}
    async with _open_engine(settings=settings) as engine, retention_leader(engine.persistence.url) as leader:
        if not leader:
            raise fail("another process is applying retention right now; try again when it has finished")
        return await engine.prune_sessions(dry_run=dry_run, actor="cli")


@sessions_app.command("prune")
def sessions_prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be removed.")] = False,
) -> None:
    """Apply every tenant's retention now: delete idle sessions, trim checkpoints and archives (audited)."""
    report = _run(_prune(dry_run))
    for tenant, counts in report.items():
        verb = "would expire" if dry_run else "expired"
        line = f"{tenant}: {verb} {counts['expired']} idle session(s)"
        if not dry_run:
            line += f", removed {counts['checkpoints_removed']} superseded checkpoint(s)"
        typer.echo(line)
        for session_id in counts["expired_ids"]:
            typer.echo(f"  {session_id}")


async def _export(tenant: str, session_id: str, markdown: bool) -> str:
    from server.session_export import export_session, to_markdown

    async with _open_engine(existing=True) as engine:
        await _check_stored_tenant(engine, tenant)
        document = await export_session(engine, engine.get_session(tenant, session_id))
    return to_markdown(document) if markdown else json.dumps(document, indent=2, ensure_ascii=False)


@sessions_app.command("export")
def sessions_export(
    session_id: str,
    tenant: TenantOpt = "demo",
    markdown: Annotated[bool, typer.Option("--markdown", help="Markdown for people instead of JSON.")] = False,
) -> None:
    """Print the whole session as a teamgraph.session/1 JSON document (or Markdown)."""
    typer.echo(_run(_export(tenant, session_id, markdown)))


async def _import(path: Path, tenant: str) -> str:
    from server.session_export import ImportRejected, import_session

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise fail(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    except RecursionError:
        raise fail(f"{path}: not JSON this reads (nested too deep)") from None
    except ValueError as exc:  # a number past Python's limit on digits
        raise fail(f"{path}: not JSON this reads ({exc})") from None

    from checkpoints.audit import AuditWriteError
    from checkpoints.storage import StorageUnavailable

    async with _open_engine(tenant=tenant) as engine:
        try:
            record = await import_session(engine, data, tenant)
        except ImportRejected as exc:
            raise fail(f"{path}: {exc}") from None
        except (StorageUnavailable, AuditWriteError) as exc:
            # the import's own rule (docs/api.md): removed again unless it may have been stored; one line either way
            raise fail(
                f"{path}: the import failed on a storage fault ({exc}); see `teamgraph sessions list --tenant "
                f"{tenant}` before importing it again"
            ) from None
    return record.id


@sessions_app.command("import")
def sessions_import(file: Path, tenant: TenantOpt = "demo") -> None:
    """Load an exported session (teamgraph.session/1) as a new session of the tenant."""
    typer.echo(f"imported as session {_run(_import(file, tenant))}")


async def _erase(tenant: str, user_id: str) -> dict[str, int]:
    async with _open_engine(existing=True) as engine:
        check_tenant(engine.bundles, tenant, logged=await asyncio.to_thread(engine.audit.tenants))
        return await engine.erase_user(tenant, user_id)


@users_app.command("erase")
def users_erase(
    user_id: str,
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant id (required: an end user's id is the tenant's).")],
) -> None:
    """Erase an end user of one tenant (--tenant is required): delete every session tagged with the id, redact
    their audit entries (audited)."""
    counts = _run(_erase(tenant, user_id))
    typer.echo(
        f"erased {user_id}: {counts['sessions']} session(s), {counts['audit_entries_redacted']} audit entries redacted"
    )


def _personas_dir_setting() -> Path:
    """TEAMGRAPH_PERSONAS_DIR as the settings read it (the environment, any case, then .env), without importing
    them (pydantic-settings): `personas validate` stays light (tests/unit_tests/test_personas.py compares)."""
    name = "TEAMGRAPH_PERSONAS_DIR"
    value = next((v for k, v in os.environ.items() if k.upper() == name), None)
    if value is None and Path(".env").is_file():
        from dotenv import dotenv_values

        value = next((v for k, v in dotenv_values(".env").items() if k.upper() == name and v is not None), None)
    return DEFAULT_BUNDLE_DIR if value is None else Path(value)


def _from_cwd(path: Path) -> str:
    """A path to print: relative to the working directory when under it, else absolute (either opens from here)."""
    full = path.resolve()
    return str(full.relative_to(Path.cwd().resolve())) if full.is_relative_to(Path.cwd().resolve()) else str(full)


def _refuse_bundles(exc: BundleError, code: int, path: Path | None = None) -> typer.Exit:
    """Every problem of the bundles as file:line: field: reason, the file as it opens from the working directory
    (the loader names it relative to the bundle directory's parent), then how many: `personas validate` (exit
    status 1) and every command that loads the bundles, `serve` among them (exit status 2), print the same."""
    from dataclasses import replace

    parent = exc.root.parent if exc.root is not None else None
    for problem in exc.problems:
        shown = replace(problem, file=_from_cwd(parent / problem.file)) if parent is not None else problem
        typer.echo(str(shown), err=True)
    return fail(f"{len(exc.problems)} problem(s) in {path if path is not None else exc.root}", code)


def _load_bundles(path: Path, code: int = 2) -> Bundles:
    """The persona bundles at `path`, validated as the server validates them; their problems refused as above."""
    from graphs.registry import GRAPH_MODULES
    from personas.loader import BundleError, load_bundles
    from server.variables import RESERVED_VARIABLES

    try:
        return load_bundles(path, known_graphs=set(GRAPH_MODULES), reserved_variables=RESERVED_VARIABLES)
    except BundleError as exc:
        raise _refuse_bundles(exc, code, path) from None


@personas_app.command("validate")
def personas_validate(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Bundle directory (holding agents/, teams/, tenants/); default: TEAMGRAPH_PERSONAS_DIR, as "
            "`teamgraph serve` reads it, else the shipped personas/.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check every bundle file; print each problem as file:line: field: reason and exit 1 if any."""
    path = _personas_dir_setting() if path is None else path
    bundles = _load_bundles(path, code=1)
    typer.echo(
        f"ok: {len(bundles.agents)} agents, {len(bundles.teams)} teams, {len(bundles.tenants)} tenants in {path}"
    )


@personas_app.command("schema")
def personas_schema() -> None:
    """Print the JSON Schema of agent, team and tenant bundles."""
    from personas.schema import json_schema

    json.dump(json_schema(), sys.stdout, indent=2)
    typer.echo("")


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str, option: str) -> datetime:
    """'90d', '12h', '2w' (an age) or an ISO time -> the moment it names."""
    m = _DURATION.match(text.strip())
    if m:
        return datetime.now(UTC) - timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"{option}: {text!r} is neither an age like 90d / 12h nor an ISO time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _audit_log() -> Any:
    """The audit log of TEAMGRAPH_CHECKPOINT_URL; a database that cannot be reached is one line within
    TEAMGRAPH_DB_TIMEOUT_S (it was a PoolTimeout traceback: the log's pool waits without naming the cause)."""
    from checkpoints.factory import CheckpointURLError, open_audit_log

    settings = _settings()
    _existing_database(settings)  # before _check_database, which creates the file's directory
    _check_database(settings)
    try:
        return open_audit_log(settings.checkpoint_url)
    except CheckpointURLError as exc:
        raise fail(str(exc)) from None


def check_output(path: Path, option: str) -> None:
    """An output file this can write, checked before any work (a voice preview is a paid provider call)."""
    if path.is_dir():
        raise fail(f"{option} {path}: is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise fail(f"{option} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise fail(f"{option} {path}: not writable")


def _bundles() -> Any:
    """The persona bundles of the current settings (TEAMGRAPH_PERSONAS_DIR); a broken bundle is exit status 2."""
    return _load_bundles(_settings().personas_dir)


def _check_audit_tenant(log: Any, tenant: str | None) -> None:
    """A tenant of the bundles, or one the log holds entries of (since removed from the bundles)."""
    if tenant is not None:
        bundles = _bundles()
        if tenant not in bundles.tenants:
            check_tenant(bundles, tenant, logged=log.tenants())


@audit_app.command("verify")
def audit_verify(tenant: Annotated[str | None, typer.Option(help="Only this tenant (default: all).")] = None) -> None:
    """Recompute every tenant's hash chain; exit 1 naming the first broken entry."""
    settings = _settings()
    if _missing_database(settings) is not None:  # a fresh install: no entries yet
        if tenant is not None:
            check_tenant(_bundles(), tenant)
        _nothing_stored(settings)
        return
    log = _audit_log()
    _check_audit_tenant(log, tenant)
    broken = False
    tenants = [tenant] if tenant else log.tenants()
    if not tenants:
        typer.echo("no audit entries in this database: nothing to verify")
    for t in tenants:
        result = log.verify(t)
        if result.ok:
            anchor = log.anchor(t)
            pruned = f" (entries up to {anchor} were pruned)" if anchor else ""
            if result.checked:
                typer.echo(f"ok: tenant {t}: {result.checked} entries verified{pruned}")
            else:  # said so: an empty chain verifies, and must not look like a checked one
                typer.echo(f"ok: tenant {t}: no entries to verify{pruned or ' (none written yet)'}")
        else:
            broken = True
            typer.secho(f"BROKEN: tenant {t}: entry {result.broken_seq}: {result.reason}", err=True,
                        fg=typer.colors.RED)  # fmt: skip
    log.close()
    if broken:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    tenant: Annotated[str, typer.Option(help="Tenant to export.")],
    since: Annotated[str | None, typer.Option(help="Age (90d) or ISO time.")] = None,
    session: Annotated[str | None, typer.Option(help="Only this session.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File (default: stdout).")] = None,
) -> None:
    """Entries of a tenant, oldest first, as JSON lines or CSV."""
    from checkpoints.audit import as_utc

    if fmt not in ("jsonl", "csv"):
        raise fail(f"--format: {fmt!r} is not jsonl or csv")
    if output is not None:
        check_output(output, "--output")
    log = _audit_log()
    _check_audit_tenant(log, tenant)
    since_iso = as_utc(parse_age(since, "--since")) if since else None
    out = output.open("w", newline="") if output else sys.stdout
    fields = ["tenant", "seq", "at", "actor", "session", "event_type", "payload", "prev_hash", "hash"]
    writer = csv.DictWriter(out, fieldnames=fields) if fmt == "csv" else None
    if writer:
        writer.writeheader()
    cursor = 0
    while True:
        page = log.query(tenant, session=session, since=since_iso, after_seq=cursor, limit=500)
        for entry in page:
            row = entry.to_dict()
            if writer:
                writer.writerow({**row, "payload": json.dumps(row["payload"], ensure_ascii=False)})
            else:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        if len(page) < 500:
            break
        cursor = page[-1].seq
    if output:
        out.close()
    log.close()


@audit_app.command("prune")
def audit_prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Age like 90d, or an ISO time in the past.")],
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (default: every tenant).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count, per tenant, what would be deleted.")] = False,
) -> None:
    """Delete entries older than the given age (every tenant's, or --tenant's); the chain keeps an anchor, so what
    remains still verifies. A zero age or a time that is not in the past is refused, as it would delete everything,
    but with --dry-run, which counts that."""
    cutoff = parse_age(older_than, "--older-than")
    zero_age = bool(re.fullmatch(r"0+[smhdw]", older_than.strip()))
    if (zero_age or cutoff >= datetime.now(UTC)) and not dry_run:  # a dry run only counts: it may ask
        whose = f"tenant {tenant}'s" if tenant else "every tenant's"
        raise fail(
            f"--older-than {older_than}: not in the past, so it would delete {whose} whole audit log; give an age "
            "like 90d or an earlier ISO time (--dry-run counts what it would delete)"
        )
    log = _audit_log()
    _check_audit_tenant(log, tenant)
    counts = log.prunable(cutoff, tenant)
    verb = "would prune" if dry_run else "pruned"
    total = 0
    for t, count in counts.items():
        removed = count if dry_run or not count else log.prune(cutoff, t)
        total += removed
        typer.echo(f"{t}: {verb} {removed} entries")
    typer.echo(f"{verb} {total} entries older than {older_than}")
    log.close()


voice_app = typer.Typer(help="Voices: what a tenant may use, and previews of them.", no_args_is_help=True)
app.add_typer(voice_app, name="voice")


def _voice_service() -> Any:
    from server.voice import VoiceService

    settings = _settings()
    return VoiceService(_load_bundles(settings.personas_dir), settings)


@voice_app.command("voices")
def voice_voices(
    tenant: TenantOpt = "demo",
    team: Annotated[str | None, typer.Option(help="Team id (default: the tenant's default team).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The voices a tenant may use for a team (from the catalog; works offline)."""
    from personas.resolver import TeamResolutionError

    try:
        listing = _voice_service().voices(tenant, team)
    except TeamResolutionError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(listing, indent=2))
        return
    typer.echo(f"voices for team {listing['team']} (tenant {tenant}):")
    for v in listing["voices"]:
        typer.echo(f"{'*' if v['default'] else ' '} {v['id']:<10} {v['name']:<10} {v['description']}")


@voice_app.command("preview")
def voice_preview(
    voice: Annotated[str, typer.Option("--voice", help="Voice id (see `teamgraph voice voices`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Audio file to write.")],
    text: Annotated[str | None, typer.Option("--text", help="What to say (default: the team's sample).")] = None,
    tenant: TenantOpt = "demo",
    team: Annotated[str | None, typer.Option(help="Team id (default: the tenant's default team).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="mp3, wav, opus, aac or flac.")] = "mp3",
) -> None:
    """Synthesize a voice preview with the provider's speech endpoint (cached: a repeat makes no call)."""
    from server.voice import VoiceError

    if fmt not in ("mp3", "wav", "opus", "aac", "flac"):
        raise fail(f"--format: {fmt!r} is not one of mp3, wav, opus, aac, flac")
    check_output(output, "--output")  # before the provider call, which costs money
    service = _voice_service()
    try:
        preview = _run(service.preview(tenant, voice, text, team, fmt))
    except VoiceError as exc:
        raise fail(exc.message) from None
    output.write_bytes(preview.audio)
    source = "from the cache" if preview.cached else "from the provider"
    typer.echo(f"wrote {output}: {len(preview.audio)} bytes of {preview.media_type}, voice {preview.voice}, {source}")
