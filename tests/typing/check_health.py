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


async def main() -> None:
    """What an editor sees for the health API."""
    checks = HealthChecks(cache_ttl=1.0)
    checks.add("database", database, timeout=1.0)
    checks.add("replica", replica, critical=False)
    checks.add_circuit_breaker(layers.CircuitBreaker(name="api"))
    checks.add_limit(layers.ConcurrencyLimit(4), max_waiting=2)
    checks.add_limit(layers.RateLimit(10))

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
