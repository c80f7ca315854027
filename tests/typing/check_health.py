"""Type checks: the health registry, its report and the ASGI app."""

from __future__ import annotations

from typing import Any, assert_type

import layers
from layers import CheckResult, HealthApp, HealthChecks, HealthReport, HealthStatus


async def database() -> None:
    """A check that passes."""


async def replica() -> HealthStatus:
    """A check that reports its own status."""
    return HealthStatus.DEGRADED


class Cache:
    """A user's own observable layer (no base class: the protocol is structural)."""

    name = "cache"
    kind = "cache"

    def observe(self) -> layers.Observation:
        """Its figures."""
        return layers.Observation(in_flight=0, figures={"size": 12})


async def main() -> None:
    """What an editor sees for the health API."""
    checks = HealthChecks(cache_ttl=1.0)
    checks.add("database", database, timeout=1.0)
    checks.add("replica", replica, critical=False)
    checks.add_layer(layers.CircuitBreaker(name="api"))
    checks.add_layer(layers.ConcurrencyLimit(4), max_waiting=2)
    checks.add_layer(layers.RateLimit(10))
    checks.add_layer(layers.Drain(), critical=True)
    checks.add_layer(layers.RetryBudget())
    checks.add_layer(layers.PerKey(lambda key: layers.Identity(), key=str))
    checks.add_layer(Cache())
    assert_type(Cache().observe(), layers.Observation)

    @checks.check("cache")
    async def cache() -> None:
        pass

    assert_type(cache, layers.health.HealthCheck)
    report = await checks.run()
    assert_type(report, HealthReport)
    assert_type(report.status, HealthStatus)
    assert_type(report["database"], CheckResult)
    assert_type(report["database"].error, str | None)
    assert_type(report.to_dict(), dict[str, Any])
    app = HealthApp(checks, expose_errors=True)
    await app({"type": "lifespan"}, receive, send)


async def receive() -> dict[str, Any]:
    """An ASGI receive callable."""
    return {"type": "lifespan.shutdown"}


async def send(message: Any) -> None:
    """An ASGI send callable."""
