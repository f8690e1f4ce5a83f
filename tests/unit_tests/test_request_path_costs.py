"""What a request does once instead of on every call: identify its caller, bind the log's logger, get the tracer.
Each keeps what it found only as long as it is still right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from fastapi.testclient import TestClient
from opentelemetry import trace

from server.app import create_app
from server.auth import KeyRing
from server.observability.logging import log
from server.observability.tracing import tracer
from server.settings import Settings

VENEO = {"X-API-Key": "tg-veneo-key"}


def test_a_team_request_identifies_its_caller_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    identified: list[str | None] = []
    original = KeyRing.identify

    def counted(self: KeyRing, presented: str | None) -> Any:
        identified.append(presented)
        return original(self, presented)

    monkeypatch.setattr(KeyRing, "identify", counted)
    app = create_app(Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path / 'teamgraph.db'}"))  # type: ignore[call-arg]
    with TestClient(app) as client:
        body = {
            "input": {"messages": [{"role": "user", "content": "hi"}]},
            "config": {"configurable": {"thread_id": "s1"}},
        }
        for endpoint in ("invoke", "stream"):
            identified.clear()
            r = client.post(f"/teams/veneo_chat/{endpoint}", headers=VENEO, json=body)
            assert r.status_code == 200, r.text
            assert identified == ["tg-veneo-key"]  # the two route dependencies and the config modifier asked
        identified.clear()
        r = client.post("/teams/veneo_chat/invoke", headers={"X-API-Key": "wrong"}, json=body)
        assert r.status_code == 401 and identified == ["wrong"]


def test_log_follows_each_new_logging_configuration() -> None:
    saved = structlog.get_config()
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []

    def keep(into: list[dict[str, Any]]) -> Any:
        def processor(logger: Any, method: str, event: dict[str, Any]) -> Any:
            into.append(event)
            raise structlog.DropEvent

        return processor

    try:
        structlog.configure(processors=[keep(first)], wrapper_class=structlog.make_filtering_bound_logger(20))
        log.info("one")
        log.debug("hidden")  # below the configured level
        structlog.configure(processors=[keep(second)], wrapper_class=structlog.make_filtering_bound_logger(10))
        log.debug("two")
        with structlog.testing.capture_logs() as captured:  # edits the configured processors in place
            log.info("three", n=3)
        log.info("four")
    finally:
        structlog.configure(**saved)
    assert [e["event"] for e in first] == ["one"]
    assert [e["event"] for e in second] == ["two", "four"]
    assert captured == [{"event": "three", "n": 3, "log_level": "info"}]


def test_the_tracer_is_made_once_per_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracer() is tracer()
    provider = trace.NoOpTracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(trace, "get_tracer", lambda name, *a, **k: provider.get_tracer(name))
    assert isinstance(tracer(), trace.NoOpTracer)  # another provider: its own tracer


def test_the_scrubber_checks_each_line_in_full_when_it_remembers_clean_keys_and_values() -> None:
    from server.observability.logging import make_scrubber

    scrub = make_scrubber(("tenant-secret-1",), debug_content=False)
    debug_scrub = make_scrubber((), debug_content=True)
    line = {"event": "node", "tenant": "veneo", "n": 3, "ok": True, "none": None, "ratio": 0.5}
    for _ in range(3):  # the first line teaches it the clean keys and values; later lines are answered the same
        assert scrub("x", "info", dict(line)) == line
        # a secret, a secret-looking value, content and a secret key: masked or dropped on every line, also
        # under keys and beside values it has seen clean before
        sent = {"event": "node", "tenant": "tenant-secret-1", "note": "key sk-abcdefghijkl", "content": "hi",
                "Authorization": "veneo", "items": ["veneo", "sk-abcdefghijkl"]}  # fmt: skip
        masked = {"event": "node", "tenant": "[redacted]", "note": "key [redacted]", "Authorization": "[redacted]",
                  "items": ["veneo", "[redacted]"]}  # fmt: skip
        assert scrub("x", "info", sent) == masked
        # content stays on DEBUG lines only, when asked for, however often its key was dropped before
        assert debug_scrub("x", "info", {"content": "hi"}) == {}
        assert debug_scrub("x", "debug", {"content": "hi"}) == {"content": "hi"}
    long = "x" * 500  # long values are not remembered, but checked as before
    assert scrub("x", "info", {"v": long}) == {"v": long}
    assert scrub("x", "info", {"v": long + " sk-abcdefghijkl"}) == {"v": long + " [redacted]"}


def test_a_metric_child_is_looked_up_once_and_counts_as_prometheus_clients_own() -> None:
    from server.observability.metrics import Metrics

    metrics = Metrics()
    first = metrics.turns.labels("veneo", "veneo_chat", "ok")
    assert metrics.turns.labels("veneo", "veneo_chat", "ok") is first
    first.inc()
    metrics.turns.labels("veneo", "veneo_chat", "ok").inc()
    metrics.turns.labels(tenant="veneo", team="veneo_chat", outcome="ok").inc()  # keywords: prometheus_client's path
    metrics.turns.labels("veneo", ["x"], "ok").inc()  # an unhashable value is converted with str(), as before
    text = metrics.exposition().decode()
    assert 'teamgraph_turns_total{outcome="ok",team="veneo_chat",tenant="veneo"} 3.0' in text
    assert 'teamgraph_turns_total{outcome="ok",team="[\'x\']",tenant="veneo"} 1.0' in text
    with pytest.raises(ValueError):
        metrics.turns.labels("veneo", "veneo_chat")  # a wrong label count is still refused
