"""The block forms with a shared Redis store: the same limit as the service form."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest

pytest.importorskip("coredis")

import layers
from layers.redis import (
    RedisConcurrencyStore,
    RedisConnection,
    RedisRateLimitStore,
)

pytestmark = [pytest.mark.anyio, pytest.mark.realtime, pytest.mark.timeout(60)]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends on the real clock: the tests wait on a real server."""
    return str(request.param)


async def echo(request: Any) -> Any:
    """A service that answers at once."""
    return request


async def held(redis: RedisConnection, name: str) -> int:
    """The permits held in Redis (ZCARD of the limit's leases)."""
    key = redis.key("concurrency", name, "leases")
    return int(await redis.client.zcard(key))


async def test_a_rate_block_takes_from_the_shared_limit(redis: RedisConnection) -> None:
    """A block and a call of the service share one Redis limit, per key."""
    store = RedisRateLimitStore(redis, name="blocks")
    limit = layers.RateLimit(
        1, period=60, mode="reject", key=lambda r: r, store=store, name="api"
    )
    service = limit.layer(echo)
    ran: list[str] = []
    async with limit.guard(key="a"):
        ran.append("a")
    with pytest.raises(layers.RateLimited) as caught:
        await service("a")
    assert caught.value.retry_after is not None
    assert 59 < caught.value.retry_after <= 60
    assert await service("b") == "b"
    with pytest.raises(layers.RateLimited):
        async with limit.guard(key="b"):
            ran.append("never")
    assert ran == ["a"]
    assert limit.statistics().rejected == 2


async def test_a_concurrency_block_holds_a_shared_permit(
    redis: RedisConnection,
) -> None:
    """A block holds a Redis permit; cancelled inside, it gives it back."""
    store = RedisConcurrencyStore(redis, name="blocks", lease_ttl=2.0)
    limit = layers.ConcurrencyLimit(1, max_wait=0.3, store=store)
    service = limit.layer(echo)
    with anyio.fail_after(10):
        async with limit:
            assert await held(redis, "blocks") == 1
            with pytest.raises(layers.Overloaded):
                await service("x")
        assert await held(redis, "blocks") == 0
        with anyio.move_on_after(0.2):
            async with limit.guard():
                await anyio.sleep(math.inf)
        assert await held(redis, "blocks") == 0
        assert limit.statistics().in_flight == 0
        assert await service("x") == "x"
