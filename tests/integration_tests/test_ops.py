"""What an operator relies on and a tenant must not reach: the log line of a 500, masked secrets, the logging
settings, uvicorn's own lines, /metrics behind a token, OTLP export from the OTEL_* variables, the voice cache.

In-process apps log to (captured) stdout; the settings that shape a process (log level and format, OTEL_*) are
checked on a real `teamgraph serve`, and spans on a real OTLP/HTTP receiver on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration_tests.live_server import LiveServer, auth

VENEO = {"Authorization": "Bearer tg-veneo-key"}
PROVIDER_KEY = "prov-key-3f9a7c1e5b"  # deliberately not "sk-...": masked because it is the configured key
TENANT_ENV_KEY = "veneo-app-key-6d2e8b4a"


@contextlib.contextmanager
def serve(tmp_path: Path, client_host: str = "testclient", **settings: Any) -> Iterator[TestClient]:
    app = create_app(
        Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path}/tg.db", log_format="json", **settings)  # type: ignore[call-arg]
    )
    with TestClient(app, raise_server_exceptions=False, client=(client_host, 50000)) as client:
        yield client


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def explode_on_list(client: TestClient, message: str) -> None:
    """Make GET /sessions fail with an unexpected error (a bug, not a database fault)."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(message)

    client.app.state.engine.alist_sessions = broken  # type: ignore[attr-defined]


# --- the log line of a 500 ----------------------------------------------------------------------------------


def test_a_500_is_diagnosable_from_its_log_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serve(tmp_path) as client:
        explode_on_list(client, "the index exploded")
        capsys.readouterr()
        r = client.get("/sessions", headers={**VENEO, "X-Request-ID": "req-500-check"})
        assert r.status_code == 500
        assert r.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    (line,) = [ln for ln in json_lines(capsys.readouterr().out) if ln["event"] == "unhandled_error"]
    assert line["level"] == "error"
    assert line["error_type"] == "RuntimeError"
    assert line["error"] == "the index exploded"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "in broken" in line["exception"] and "RuntimeError: the index exploded" in line["exception"]
    assert line["request_id"] == "req-500-check" == r.headers["x-request-id"]
    assert line["tenant"] == "veneo"
    assert line["path"] == "/sessions"
    assert "exc_info" not in line


def test_secrets_in_a_log_line_are_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEAMGRAPH_VENEO_API_KEY", TENANT_ENV_KEY)
    with serve(tmp_path, openai_api_key=PROVIDER_KEY) as client:
        assert client.get("/teams", headers={"X-API-Key": TENANT_ENV_KEY}).status_code == 200  # the key works
        explode_on_list(client, f"provider said no to {PROVIDER_KEY}; tenant key {TENANT_ENV_KEY}")
        capsys.readouterr()
        assert client.get("/sessions", headers=VENEO).status_code == 500
        # and a library's own log line (standard logging) through the same scrubber
        logging.getLogger("psycopg.pool").warning("retrying with key %s", TENANT_ENV_KEY)
    out = capsys.readouterr().out
    assert PROVIDER_KEY not in out and TENANT_ENV_KEY not in out, out
    lines = json_lines(out)
    (error,) = [ln for ln in lines if ln["event"] == "unhandled_error"]
    assert error["error"] == "provider said no to [redacted]; tenant key [redacted]"
    assert "provider said no to [redacted]" in error["exception"]
    (library,) = [ln for ln in lines if ln.get("logger") == "psycopg.pool"]
    assert library["event"] == "retrying with key [redacted]" and library["level"] == "warning"


# --- /metrics -------------------------------------------------------------------------------------------------


def test_metrics_are_not_for_tenants(tmp_path: Path) -> None:
    with serve(tmp_path) as client:  # a caller from another machine, no metrics token configured
        r = client.get("/metrics", headers=VENEO)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
        assert "TEAMGRAPH_METRICS_TOKEN" in r.json()["error"]["message"]
        assert "veneo" not in r.text and "demo" not in r.text


def test_metrics_answer_the_scrape_token_only(tmp_path: Path) -> None:
    with serve(tmp_path, metrics_token="scrape-token-123") as client:
        assert client.post("/sessions", headers=VENEO, json={}).status_code == 201
        for headers in ({}, VENEO, {"Authorization": "Bearer wrong-token"}):
            r = client.get("/metrics", headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
        r = client.get("/metrics", headers={"Authorization": "Bearer scrape-token-123"})
        assert r.status_code == 200
        assert 'teamgraph_sessions_created_total{team="veneo_chat",tenant="veneo"} 1.0' in r.text


def test_metrics_answer_a_scraper_on_this_machine_without_a_token(tmp_path: Path) -> None:
    with serve(tmp_path, client_host="127.0.0.1") as client:
        assert client.get("/metrics").status_code == 200


# --- logging settings and uvicorn's lines, on a real server ---------------------------------------------------


def request_lines(server: LiveServer) -> str:
    assert httpx.get(server.url + "/teams", headers=auth("tg-veneo-key"), timeout=10).status_code == 200
    time.sleep(0.2)  # the log line is written as the response ends
    return server.stdout


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`teamgraph serve` with every setting at its default, for the tests that only send it requests."""
    with LiveServer(tmp_path_factory.mktemp("default")) as server:
        yield server


def test_default_logs_are_json_lines_uvicorn_included(default_server: LiveServer) -> None:
    out = request_lines(default_server)
    lines = json_lines(out)  # every line on stdout is a JSON object
    assert any(ln["event"] == "http_request" and ln["route"] == "/teams" and ln["tenant"] == "veneo" for ln in lines)
    startup = [ln for ln in lines if ln.get("logger", "").startswith("uvicorn")]
    assert any("Application startup complete" in ln["event"] for ln in startup), startup
    assert all({"level", "timestamp"} <= set(ln) for ln in startup)


def test_log_level_warning_drops_request_lines(tmp_path: Path) -> None:
    with LiveServer(tmp_path, env={"TEAMGRAPH_LOG_LEVEL": "WARNING"}) as server:
        out = request_lines(server)
    assert all(ln["level"] in ("warning", "error", "critical") for ln in json_lines(out)), out


def test_log_format_console_is_not_json(tmp_path: Path) -> None:
    with LiveServer(tmp_path, env={"TEAMGRAPH_LOG_FORMAT": "console"}) as server:
        out = request_lines(server)
    (line,) = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in out.splitlines() if "http_request" in ln and "/teams" in ln]
    assert not line.lstrip().startswith("{"), line
    assert "route=/teams" in line and "status=200" in line, line


# --- OTLP export from the standard variables ------------------------------------------------------------------


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver on 127.0.0.1: decodes each export request and keeps the spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        receiver = self
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver._lock:
                    receiver.paths.append(self.path)
                    for resource_spans in request.resource_spans:
                        service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                receiver.spans.append({"name": span.name, "trace_id": span.trace_id.hex(),
                                                       "service": service.get("service.name")})  # fmt: skip
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def names(self) -> list[str]:
        with self._lock:
            return [s["name"] for s in self.spans]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_spans_are_exported_to_the_otlp_endpoint_the_otel_variables_name(tmp_path: Path) -> None:
    receiver = OtlpReceiver()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "teamgraph-under-test",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
    try:
        with LiveServer(tmp_path, env=env) as server:
            r = httpx.post(
                server.url + "/teams/veneo_chat/invoke",
                headers=auth("tg-veneo-key"),
                json={"input": {"messages": [{"type": "human", "content": "How long does shipping take?"}]},
                      "config": {"configurable": {"thread_id": "otlp-1"}}},
                timeout=30,
            )  # fmt: skip
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 20
            while "HTTP POST /teams/veneo_chat/invoke" not in receiver.names() and time.monotonic() < deadline:
                time.sleep(0.1)
        names = receiver.names()
        assert "HTTP POST /teams/veneo_chat/invoke" in names, names
        # the team and its nodes too: with an exporter configured, the turn observer builds them
        assert {"team.veneo_chat", "node.primary_responder", "node.safety_reviewer"} <= set(names), names
        assert set(receiver.paths) == {"/v1/traces"}
        assert {s["service"] for s in receiver.spans} == {"teamgraph-under-test"}
        request_span = next(s for s in receiver.spans if s["name"] == "HTTP POST /teams/veneo_chat/invoke")
        assert r.headers["x-trace-id"] == request_span["trace_id"]
    finally:
        receiver.close()


# --- the voice cache settings ---------------------------------------------------------------------------------


def test_the_voice_cache_lives_where_configured_and_evicts_beyond_its_size(
    tmp_path: Path, fake_openai: FakeOpenAIServer
) -> None:
    def audio(text: str) -> bytes:  # what the local speech endpoint answers for a text
        return f'ID3FAKE|["gpt-4o-mini-tts", "sage", "{text}"]'.encode()

    texts = ["One.", "Two.", "Three."]
    room = len(audio("Two.")) + len(audio("Three.")) + 2  # the two newest previews fit, not three
    cache = tmp_path / "previews"
    settings = {"openai_api_key": "sk-test-voice", "model_base_url": fake_openai.base_url,
                "voice_cache_dir": cache, "voice_cache_max_mb": room / (1024 * 1024)}  # fmt: skip
    demo = {"Authorization": "Bearer tg-demo-key"}
    with serve(tmp_path, **settings) as client:

        def preview(text: str) -> str:
            r = client.post("/voice/preview", headers=demo, json={"voice": "sage", "text": text})
            assert r.status_code == 200, r.text
            assert r.content == audio(text)
            return str(r.headers["x-voice-cache"])

        for text in texts:
            assert preview(text) == "miss"
            time.sleep(0.02)  # distinct modification times: eviction goes oldest first
        assert sum(p.stat().st_size for p in cache.glob("*.mp3")) <= room
        assert len(list(cache.glob("*.mp3"))) == 2
        assert preview("Three.") == "hit" and preview("Two.") == "hit"
        assert preview("One.") == "miss"  # evicted: the provider is asked again
    assert len(fake_openai.voice_requests) == 4
    assert not (tmp_path / "voice-cache").exists()  # not beside the database: where the setting says


@pytest.mark.parametrize("keep_alive", [None, "1"])
def test_an_idle_connection_is_kept_past_uvicorns_five_seconds(
    request: pytest.FixtureRequest, tmp_path: Path, keep_alive: str | None
) -> None:
    """A client (or a proxy in front) that sends its next request on a connection idle for 6 s: with uvicorn's
    default 5 s keep-alive the server had closed it, and the request was lost ("Remote end closed connection
    without response", seen from schemathesis in CI); the default is now above common proxies' 60 s, and
    TEAMGRAPH_KEEP_ALIVE_S sets it."""
    import http.client

    assert Settings.model_fields["keep_alive_s"].default > 60  # above common proxies' idle timeout
    with contextlib.ExitStack() as stack:
        if keep_alive is None:
            server: LiveServer = request.getfixturevalue("default_server")
        else:
            server = stack.enter_context(LiveServer(tmp_path, env={"TEAMGRAPH_KEEP_ALIVE_S": keep_alive}))
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.connect()
        conn.auto_open = 0  # one connection: a request never opens a new one
        try:
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() and conn.sock is not None
            time.sleep(6 if keep_alive is None else 3)  # past uvicorn's 5 s; past the 1 s set, with room for load
            if keep_alive is None:
                conn.request("GET", "/healthz")
                assert conn.getresponse().status == 200
            else:  # the server closed it after 1 s: the same request on it finds it closed
                with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                    conn.request("GET", "/healthz")
                    conn.getresponse()
        finally:
            conn.close()


def test_a_client_that_never_finishes_its_request_does_not_keep_the_server_from_stopping(tmp_path: Path) -> None:
    """Found in review: uvicorn waits for every request being answered before it stops, without end by default, so
    one client that sent half a body (or a stream nobody finishes) kept `teamgraph serve` from stopping on SIGTERM
    until the supervisor's SIGKILL. TEAMGRAPH_SHUTDOWN_WAIT_S bounds that wait."""
    import signal
    import socket

    with LiveServer(tmp_path, env={"TEAMGRAPH_SHUTDOWN_WAIT_S": "2"}) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tg-demo-key\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"team": '
            )  # 10 of the 100 bytes: the request is in flight, waiting for the rest
            time.sleep(0.5)
            started = time.monotonic()
            code = server.stop(timeout=20)
            took = time.monotonic() - started
    assert code != -signal.SIGKILL, "the server had to be killed: it waited for the unfinished request"
    assert took < 2 + 8, took  # the wait, then the usual shutdown (database closed, workers gone)
