"""Per-tenant turn limits (turns in flight, turns per minute) from the tenant bundle: 429 with Retry-After."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from personas.schema import TenantLimits
from server.errors import ApiError
from server.observability.metrics import Metrics


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    in_flight: int = 0


@dataclass
class TenantTurnLimiter:
    """In-process counters per tenant (each server process enforces the bundle's numbers on its own): a token
    bucket of `turns_per_minute` and a count of turns running. One event loop, so no locking is needed."""

    metrics: Metrics
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def admit(self, tenant: str, limits: TenantLimits, turns: int = 1, field: str = "inputs") -> Callable[[], None]:
        """Take `turns` slots for the tenant, or raise 429; the returned callable gives them back (once). `field`
        names the request field that holds the turns (a batch's `inputs`, a transcript's `items`)."""
        most = min(limits.max_turns_in_flight, limits.turns_per_minute)
        if turns > most:  # could never be admitted: a retry would not help
            raise ApiError(422, "validation_error", f"{field}: {turns} turns in one request; tenant {tenant!r} may "
                           f"run at most {most} at once (its limits); split the request", field)  # fmt: skip
        now = self.clock()
        rate = limits.turns_per_minute / 60.0
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(tokens=float(limits.turns_per_minute), stamp=now)
        bucket.tokens = min(float(limits.turns_per_minute), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.in_flight + turns > limits.max_turns_in_flight:
            self.metrics.turns_refused.labels(tenant, "in_flight").inc()
            raise ApiError(
                429,
                "rate_limited",
                f"tenant {tenant!r} already runs {bucket.in_flight} turn(s), its limit is "
                f"{limits.max_turns_in_flight} at once (limits.max_turns_in_flight); retry when one has finished",
                headers={"Retry-After": "1"},
            )
        if bucket.tokens < turns:
            self.metrics.turns_refused.labels(tenant, "rate").inc()
            wait = math.ceil((turns - bucket.tokens) / rate)
            raise ApiError(
                429,
                "rate_limited",
                f"tenant {tenant!r} may start {limits.turns_per_minute} turns per minute (limits.turns_per_minute); "
                f"retry in {wait} s",
                headers={"Retry-After": str(max(1, wait))},
            )
        bucket.tokens -= turns
        bucket.in_flight += turns
        self.metrics.turns_in_flight.labels(tenant).inc(turns)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                bucket.in_flight -= turns
                self.metrics.turns_in_flight.labels(tenant).dec(turns)

        return release
