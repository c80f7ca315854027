"""Type checks: the circuit breaker keeps the request and response types."""

from __future__ import annotations

from typing import assert_type

import layers
from layers import CircuitBreaker, CircuitState, Service, ServiceBuilder
from layers.redis import RedisBreakerStore, RedisConnection


async def fetch(request: int) -> str:
    """A service from int to str."""
    return str(request)


breaker = CircuitBreaker(name="users-api", window_type="time", window_size=30)

assert_type(breaker.layer(fetch), Service[int, str])
assert_type(ServiceBuilder().layer(breaker).service(fetch), Service[int, str])
assert_type(
    ServiceBuilder()
    .circuit_breaker(failure_rate_threshold=0.25, slow_call_duration=2.0)
    .timeout(1)
    .service(fetch),
    Service[int, str],
)


def parse(body: bytes) -> int:
    """Maps a request."""
    return int(body)


assert_type(
    ServiceBuilder().map_request(parse).layer(breaker).service(fetch),
    Service[bytes, str],
)
assert_type(ServiceBuilder().layer(breaker).service(fetch), Service[int, str])
assert_type(breaker.state, CircuitState)
assert_type(breaker.statistics().failure_rate, float | None)
assert_type(breaker.statistics(), layers.CircuitBreakerStatistics)

# A breaker shared by a fleet: MemoryBreakerStore is a BreakerStore.
fleet_store: layers.BreakerStore = layers.MemoryBreakerStore(sync_interval=0.5)
shared = CircuitBreaker(name="users-api", store=fleet_store)
assert_type(shared.layer(fetch), Service[int, str])
assert_type(
    ServiceBuilder().circuit_breaker(store=layers.MemoryBreakerStore()).service(fetch),
    Service[int, str],
)
assert_type(shared.statistics().store_fallbacks, int)


async def joined(store: layers.MemoryBreakerStore) -> None:
    """The store is entered for the breakers' background work."""
    async with store as entered:
        assert_type(entered, layers.MemoryBreakerStore)


def on_redis(redis: RedisConnection) -> None:
    """RedisBreakerStore is a BreakerStore too."""
    store: layers.BreakerStore = RedisBreakerStore(redis, name="users-api")
    assert_type(CircuitBreaker(store=store).layer(fetch), Service[int, str])
    assert_type(
        CircuitBreaker(store=RedisBreakerStore(redis, name="u")).layer(fetch),
        Service[int, str],
    )


def come_back_after(failure: object) -> float | None:
    """A duration the failure carries, or None."""
    return None


# retry_after= on the breaker and through the builder; open_for().
hinted = CircuitBreaker(retry_after=come_back_after)
assert_type(
    ServiceBuilder().circuit_breaker(retry_after=come_back_after).service(fetch),
    Service[int, str],
)
assert_type(hinted.open_for(30), None)


async def blocks(
    breaker: CircuitBreaker, limit: layers.RateLimit, pool: layers.ConcurrencyLimit
) -> None:
    """The block forms: guard() and the layer itself in async with."""
    async with breaker as entered:
        assert_type(entered, None)
    async with breaker.guard(), pool.guard(), layers.Drain().guard():
        pass
    async with limit.guard(key="tenant", cost=2), limit, pool:
        pass
