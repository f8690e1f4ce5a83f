"""`teamgraph serve` refusing to start, as an operator meets it: one line naming the setting and the cause,
a non-zero exit, within seconds (a real subprocess each time; nothing here listens beyond 127.0.0.1)."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles
from server.auth import development_keys
from tests.integration_tests.live_server import TEAMGRAPH, LiveServer, auth, free_port

HANG_GUARD_S = 30.0  # generous: the point is that it ends, with one line, not how fast


def serve(workdir: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TEAMGRAPH_", "OPENAI_"))}
    environ.update(env)
    started = time.monotonic()
    result = subprocess.run(
        [str(TEAMGRAPH), "serve", *args],
        cwd=workdir,
        env=environ,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S + 30,
    )
    return result, time.monotonic() - started


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line the refusal printed (stderr); no traceback anywhere."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        ("postgresql://postgres@127.0.0.1:{closed}/test", "Connection refused"),
        ("postgresql://postgres@127.0.0.1:5432/teamgraph_no_such_db", 'database "teamgraph_no_such_db" does not exist'),
        ("mysql://root@127.0.0.1/tg", "unsupported scheme mysql://"),
        ("sqlite://", "give a file"),
    ],
)
def test_a_wrong_checkpoint_url_is_one_line_naming_the_setting_and_the_cause(
    tmp_path: Path, url: str, cause: str
) -> None:
    url = url.format(closed=closed_port())
    result, took = serve(tmp_path, "--port", str(free_port()), TEAMGRAPH_CHECKPOINT_URL=url)
    line = refusal(result)
    assert line.startswith("TEAMGRAPH_CHECKPOINT_URL="), line
    assert cause in line, line
    assert took < HANG_GUARD_S


@pytest.mark.parametrize(
    ("url", "shown", "cause"),
    [
        ("postgresql://postgres:hunter2secret@127.0.0.1:{closed}/test", "postgres:***@127.0.0.1", "Connection refused"),
        # libpq also takes the password as a query parameter (and sslpassword for a client key)
        ("postgresql://postgres@127.0.0.1:{closed}/test?password=hunter2secret", "/test?password=***", "refused"),
        (
            "postgresql://postgres@127.0.0.1:{closed}/test?sslmode=disable&sslpassword=hunter2secret",
            "sslmode=disable&sslpassword=***",
            "Connection refused",
        ),
        # libpq reads a password up to the @, a # in it included (urllib took it for a fragment: no password)
        ("postgresql://postgres:hunter2#secret@127.0.0.1:{closed}/test", "postgres:***@127.0.0.1", "refused"),
        # an upper-case scheme: libpq read it as a keyword string and its error (a traceback) quoted it all
        ("POSTGRESQL://postgres:hunter2secret@127.0.0.1:{closed}/test", "=postgresql://postgres:***@", "refused"),
        ("host=127.0.0.1 password=hunter2secret", "host=127.0.0.1 password=***", "unsupported scheme"),
    ],
)
def test_a_password_in_the_checkpoint_url_is_not_printed(tmp_path: Path, url: str, shown: str, cause: str) -> None:
    url = url.format(closed=closed_port())
    result, _ = serve(tmp_path, "--port", str(free_port()), TEAMGRAPH_CHECKPOINT_URL=url)
    line = refusal(result)
    assert "hunter2" not in result.stdout + result.stderr
    assert shown in line and cause in line, line


def test_an_unwritable_data_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the data directory should be")
    result, _ = serve(tmp_path, "--port", str(free_port()), TEAMGRAPH_DATA_DIR=str(tmp_path / "not-a-dir" / "data"))
    line = refusal(result)
    assert line.startswith("TEAMGRAPH_CHECKPOINT_URL=sqlite:///"), line
    assert "not-a-dir" in line and "Not a directory" in line, line


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"TEAMGRAPH_TURN_LOCK_KEEPALIVE_COUNT": "abc"}, "TEAMGRAPH_TURN_LOCK_KEEPALIVE_COUNT='abc': Input should be"),
        ({"TEAMGRAPH_PORT": "-5"}, "TEAMGRAPH_PORT='-5': Input should be greater than or equal to 0"),
        (
            {"TEAMGRAPH_TURN_LOCK_KEEPALIVE_IDLE_S": "40", "TEAMGRAPH_TURN_LOCK_TCP_USER_TIMEOUT_S": "30"},
            "TEAMGRAPH_TURN_LOCK_KEEPALIVE_IDLE_S (40) must be below TEAMGRAPH_TURN_LOCK_TCP_USER_TIMEOUT_S (30)",
        ),
    ],
)
def test_an_invalid_setting_is_one_line_naming_the_environment_variable(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    """A setting pydantic refuses printed a 60-line traceback naming the Python field (turn_lock_keepalive_count),
    not the variable the operator set."""
    result, _ = serve(tmp_path, **env)
    assert result.returncode == 2
    assert refusal(result).startswith(line), result.stderr


def test_an_invalid_setting_in_dot_env_is_named_the_same_way(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TEAMGRAPH_WORKERS=many\n")
    result, _ = serve(tmp_path)
    assert refusal(result).startswith("TEAMGRAPH_WORKERS='many': Input should be a valid integer"), result.stderr


def test_a_checkpoint_file_that_is_no_sqlite_database_is_one_line(tmp_path: Path) -> None:
    """A file that is not a SQLite database (a wrong path, a damaged file) failed in the app's start-up with a
    traceback ("Application startup failed. Exiting.", 14 s after the start on a busy machine)."""
    (tmp_path / "notes.db").write_text("these are notes, not a database\n" * 200)
    result, took = serve(
        tmp_path, "--port", str(free_port()), TEAMGRAPH_CHECKPOINT_URL=f"sqlite:///{tmp_path}/notes.db"
    )
    line = refusal(result)
    assert line.startswith("TEAMGRAPH_CHECKPOINT_URL=sqlite:///"), line
    assert "notes.db" in line and "not a database" in line, line
    assert took < HANG_GUARD_S


def test_a_busy_port_is_one_line_naming_the_port_and_how_to_choose_another(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result, _ = serve(tmp_path, "--host", "127.0.0.1", "--port", str(port),
                          TEAMGRAPH_CHECKPOINT_URL=f"sqlite:///{tmp_path}/tg.db")  # fmt: skip
    line = refusal(result)
    assert f"port {port}" in line and "already in use" in line and "--port" in line, line


def test_development_keys_keep_serve_off_non_loopback_addresses(tmp_path: Path) -> None:
    result, _ = serve(tmp_path, "--host", "0.0.0.0", "--port", str(free_port()),
                      TEAMGRAPH_CHECKPOINT_URL=f"sqlite:///{tmp_path}/tg.db")  # fmt: skip
    line = refusal(result)
    assert "refusing to listen on 0.0.0.0" in line, line
    assert "demo/demo-user" in line and "veneo/veneo-dev" in line, line
    assert "TEAMGRAPH_ALLOW_DEV_KEYS=true" in line, line


def test_a_development_key_is_known_by_its_hash_even_without_its_flag(tmp_path: Path) -> None:
    bundle = tmp_path / "personas"
    shutil.copytree(DEFAULT_BUNDLE_DIR, bundle)
    for tenant in (bundle / "tenants").glob("*.yaml"):
        tenant.write_text(tenant.read_text().replace("dev: true", "dev: false"))
    assert sorted(development_keys(load_bundles(bundle), environ={})) == ["demo/demo-user", "veneo/veneo-dev"]


def test_a_key_the_operator_adds_is_no_development_key_unless_it_is_a_published_one(bundles: Any) -> None:
    private = {"TEAMGRAPH_VENEO_API_KEY": "a-private-key", "TEAMGRAPH_DEMO_ADMIN_KEY": "another"}
    assert sorted(development_keys(bundles, environ=private)) == ["demo/demo-user", "veneo/veneo-dev"]
    published = {"TEAMGRAPH_VENEO_API_KEY": "tg-demo-key"}  # a README key reused through a variable
    assert "veneo/veneo-app" in development_keys(bundles, environ=published)


def test_serve_refuses_a_bad_bundle_with_file_line_and_field(tmp_path: Path) -> None:
    bundle = tmp_path / "personas"
    shutil.copytree(DEFAULT_BUNDLE_DIR, bundle)
    tenant = bundle / "tenants" / "veneo.yaml"
    tenant.write_text(tenant.read_text().replace("default_team: veneo_chat", "default_team: no_such_team"))
    result, _ = serve(tmp_path, "--port", str(free_port()), TEAMGRAPH_PERSONAS_DIR=str(bundle),
                      TEAMGRAPH_CHECKPOINT_URL=f"sqlite:///{tmp_path}/tg.db")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "veneo.yaml:" in result.stderr and "default_team" in result.stderr, result.stderr
    assert not (tmp_path / "tg.db").exists()  # refused before touching the database


@pytest.mark.parametrize("where", ["beside", "under"])
def test_serve_prints_bundle_problems_as_personas_validate_does(tmp_path: Path, where: str) -> None:
    """Found in review: serve named a bad bundle file relative to the bundle directory's parent
    (personas/tenants/veneo.yaml) whatever the working directory, a path that did not open from it; it now prints
    the problems as `personas validate` does, each file as it opens from the working directory."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    bundle = (tmp_path / "elsewhere" if where == "beside" else workdir / "conf") / "personas"
    shutil.copytree(DEFAULT_BUNDLE_DIR, bundle)
    tenant = bundle / "tenants" / "veneo.yaml"
    tenant.write_text(tenant.read_text().replace("default_team: veneo_chat", "default_team: no_such_team"))
    line = next(i for i, text in enumerate(tenant.read_text().splitlines(), 1) if "no_such_team" in text)
    env = {"TEAMGRAPH_PERSONAS_DIR": str(bundle), "TEAMGRAPH_CHECKPOINT_URL": f"sqlite:///{tmp_path}/tg.db"}

    result, _ = serve(workdir, "--port", str(free_port()), **env)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TEAMGRAPH_", "OPENAI_"))}
    validated = subprocess.run(
        [str(TEAMGRAPH), "personas", "validate"], cwd=workdir, env={**environ, **env}, capture_output=True, text=True
    )

    shown = str(tenant) if where == "beside" else "conf/personas/tenants/veneo.yaml"
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[0].startswith(f"{shown}:{line}: default_team: "), result.stderr
    assert (workdir / result.stderr.split(":")[0]).is_file()  # it opens from the working directory
    assert validated.returncode == 1
    assert result.stderr == validated.stderr  # the same lines


def test_the_data_dir_setting_decides_where_the_embedded_database_lives(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "work", env={"TEAMGRAPH_DATA_DIR": str(tmp_path / "state")})
    server.env.pop("TEAMGRAPH_CHECKPOINT_URL")
    with server:
        r = httpx.post(server.url + "/sessions", headers=auth("tg-veneo-key"), json={}, timeout=30)
        assert r.status_code == 201, r.text
    assert (tmp_path / "state" / "teamgraph.db").is_file()
    assert not (tmp_path / "work" / "data").exists()


def test_a_restart_on_a_kept_port_another_server_took_fails_instead_of_using_it(tmp_path: Path) -> None:
    """LiveServer.start(keep_port=True) restarts on the port of the previous start; under `-n auto` another
    worker's server can take it in between. The other server's /healthz answered 200 and start() returned, the
    test then talking to a server that was not its own; now start() waits for its own process to listen, which
    exits on the busy port, and says so."""
    live = LiveServer(tmp_path)
    live.start()
    live.stop()

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", live.port), Healthy) as other:
        threading.Thread(target=other.serve_forever, daemon=True).start()
        assert httpx.get(live.url + "/healthz").status_code == 200  # another server answers at the kept port
        try:
            with pytest.raises(RuntimeError, match="teamgraph serve exited with") as raised:
                live.start(keep_port=True)
        finally:
            live.stop()
            other.shutdown()
    assert f"port {live.port}" in str(raised.value) and "already in use" in str(raised.value)


@pytest.mark.parametrize(("args", "env", "source"), [
    (("--workers", "2"), {}, "--workers"),
    ((), {"TEAMGRAPH_WORKERS": "3"}, "TEAMGRAPH_WORKERS"),
])  # fmt: skip
def test_several_workers_on_memory_storage_are_refused(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], source: str
) -> None:
    """Found in review: `TEAMGRAPH_CHECKPOINT_URL=memory:// teamgraph serve --workers 2` started, each worker with a
    store of its own (GET /sessions alternated). The port is held, so a serve that got past the check stops there."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result, _ = serve(tmp_path, "--port", str(port), *args, TEAMGRAPH_CHECKPOINT_URL="memory://", **env)
    assert result.returncode == 2, result.stderr
    line = refusal(result)
    assert line.startswith("TEAMGRAPH_CHECKPOINT_URL=memory:// keeps sessions inside one process"), line
    assert f"({source})" in line, line


@pytest.mark.parametrize("in_dot_env", [False, True])
def test_a_misspelled_setting_is_refused_naming_the_closest_one(tmp_path: Path, in_dot_env: bool) -> None:
    """Found in review: TEAMGRAPH_CHECKPIONT_URL (environment or .env) was ignored, so each replica of a fleet
    used a SQLite file of its own. The port is held: a serve that got past the check would stop there."""
    if in_dot_env:
        (tmp_path / ".env").write_text("TEAMGRAPH_CHECKPIONT_URL=postgresql://db.internal/teamgraph\n")
        env = {}
    else:
        env = {"TEAMGRAPH_CHECKPIONT_URL": "postgresql://db.internal/teamgraph"}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        result, _ = serve(tmp_path, "--port", str(holder.getsockname()[1]), **env)
    assert result.returncode == 2, result.stderr
    line = refusal(result)
    assert line.startswith("TEAMGRAPH_CHECKPIONT_URL"), line
    assert "not a Teamgraph setting; did you mean TEAMGRAPH_CHECKPOINT_URL?" in line, line
    assert ("(in .env)" in line) == in_dot_env, line
