"""Prometheus metrics (names prefixed teamgraph_), bounded label sets, multiprocess-safe under --workers."""

from __future__ import annotations

import os
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _LabelsOnce:
    """`labels(...)` answers a label set seen before from a dict: prometheus_client's own `labels` checks, converts
    and locks on every call (a dozen Python calls), and a turn asks for some fifteen children. The child is the one
    prometheus_client made and keeps (none is ever removed here), so what is counted and exported is the same."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}
        super().__init__(*args, **kwargs)

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        if labelkwargs:
            return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]
        try:
            child = self._children.get(labelvalues)
        except TypeError:  # an unhashable value: prometheus_client converts it with str(), as before
            return super().labels(*labelvalues)  # type: ignore[misc]
        if child is None:
            child = self._children[labelvalues] = super().labels(*labelvalues)  # type: ignore[misc]
        return child


class Counter(_LabelsOnce, prometheus_client.Counter):
    pass


class Histogram(_LabelsOnce, prometheus_client.Histogram):
    pass


class Gauge(_LabelsOnce, prometheus_client.Gauge):
    pass


class Metrics:
    """Every metric the server exports. Labels are tenant, team, node, persona ids and fixed vocabularies only:
    no thread ids, no free text."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("teamgraph_http_requests", "HTTP requests by route template, method and status",
                                     ["route", "method", "status"], registry=r)  # fmt: skip
        self.http_latency = Histogram("teamgraph_http_request_duration_seconds", "HTTP request latency",
                                      ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.turns = Counter("teamgraph_turns", "Turns run, by tenant, team and outcome", ["tenant", "team", "outcome"],
                             registry=r)  # fmt: skip
        self.turn_latency = Histogram("teamgraph_turn_duration_seconds", "Turn latency", ["tenant", "team"],
                                      buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.node_latency = Histogram("teamgraph_node_duration_seconds", "Node latency", ["team", "node"],
                                      buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.model_calls = Counter("teamgraph_model_calls", "Model calls by persona and outcome (ok, error, timeout)",
                                   ["persona", "outcome"], registry=r)  # fmt: skip
        self.fallback_scorings = Counter("teamgraph_fallback_scorings", "Answers scored by the fallback scorer",
                                         ["tenant", "team", "reason"], registry=r)  # fmt: skip
        self.safety_decisions = Counter("teamgraph_safety_decisions", "Safety reviewer decisions",
                                        ["tenant", "action", "category"], registry=r)  # fmt: skip
        self.team_resolutions = Counter("teamgraph_team_resolutions",
                                        "Team routing: requested team, resolved team or the refusal",
                                        ["tenant", "requested", "resolved"], registry=r)  # fmt: skip
        self.queue_wait = Histogram("teamgraph_turn_queue_wait_seconds", "Time a turn waited for its session",
                                    ["team"], buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
                                    registry=r)  # fmt: skip
        self.turn_locks_lost = Counter("teamgraph_turn_locks_lost", "Turns whose Postgres turn lock was lost while "
                                       "they ran (its lock connection dropped)", ["team"], registry=r)  # fmt: skip
        self.sessions_created = Counter("teamgraph_sessions_created", "Sessions created", ["tenant", "team"],
                                        registry=r)  # fmt: skip
        self.sessions_deleted = Counter("teamgraph_sessions_deleted", "Sessions deleted", ["tenant", "team"],
                                        registry=r)  # fmt: skip
        self.turns_in_flight = Gauge("teamgraph_tenant_turns_in_flight", "HTTP turns running per tenant (limit: "
                                     "limits.max_turns_in_flight)", ["tenant"], multiprocess_mode="livesum",
                                     registry=r)  # fmt: skip
        self.turns_refused = Counter("teamgraph_tenant_turns_refused", "Turns refused with 429 by the tenant's "
                                     "limits (reason: in_flight, rate)", ["tenant", "reason"], registry=r)  # fmt: skip

    def exposition(self) -> bytes:
        """The text format; with PROMETHEUS_MULTIPROC_DIR set, summed over every worker process."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
