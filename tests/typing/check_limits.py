"""Type checks: the limit layers keep the request and response types."""

from __future__ import annotations

from typing import assert_type

import layers
from layers import Service, ServiceBuilder


async def fetch(request: int) -> str:
    """A service from int to str."""
    return str(request)


def tenant(request: int) -> str:
    """A key function."""
    return f"tenant-{request % 3}"


def weight(request: int) -> float:
    """A cost function."""
    return 1.0 + request % 2


def parse(body: str) -> int:
    """Maps a request."""
    return int(body)


assert_type(ServiceBuilder().rate_limit(10).service(fetch), Service[int, str])
assert_type(
    ServiceBuilder()
    .rate_limit(100, 60.0, burst=10, mode="reject", key=tenant, cost=weight)
    .service(fetch),
    Service[int, str],
)
assert_type(
    ServiceBuilder()
    .rate_limit(5, max_wait=2.0, key=tenant, max_keys=1000)
    .service(fetch),
    Service[int, str],
)
assert_type(
    ServiceBuilder()
    .concurrency_limit(10, max_waiting=100, max_wait=1.0)
    .service(fetch),
    Service[int, str],
)
assert_type(ServiceBuilder().load_shed(4).service(fetch), Service[int, str])
assert_type(
    ServiceBuilder().timeout(1).rate_limit(10).concurrency_limit(2).service(fetch),
    Service[int, str],
)
assert_type(layers.RateLimit(10).layer(fetch), Service[int, str])
assert_type(layers.ConcurrencyLimit(3).layer(fetch), Service[int, str])
assert_type(
    ServiceBuilder().layer(layers.RateLimit(10)).service(fetch), Service[int, str]
)
assert_type(
    ServiceBuilder().layer(layers.ConcurrencyLimit(1)).service(fetch),
    Service[int, str],
)
assert_type(
    ServiceBuilder().map_request(parse).rate_limit(10).service(fetch),
    Service[str, str],
)
assert_type(layers.RateLimit(10).statistics(), layers.RateLimitStatistics)
assert_type(layers.ConcurrencyLimit(1).statistics(), layers.ConcurrencyLimitStatistics)
store: layers.RateLimitStore = layers.MemoryRateLimitStore(100)
assert_type(layers.RateLimit(10, store=store).layer(fetch), Service[int, str])
