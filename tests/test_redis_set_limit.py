"""set_limit of RateLimit and ConcurrencyLimit on Redis stores (a real redis-server)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

pytest.importorskip("coredis")

import layers
from layers import ConfigurationError
from layers.redis import RedisConcurrencyStore, RedisConnection, RedisRateLimitStore

pytestmark = [pytest.mark.anyio, pytest.mark.realtime, pytest.mark.timeout(60)]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends on the real clock: the tests wait on a real server."""
    return str(request.param)


async def echo(request: Any) -> Any:
    """A service that answers at once."""
    return request


async def tat_of(redis: RedisConnection, store: RedisRateLimitStore, key: Any) -> float:
    """The ``tat`` of *key* in Redis, on the script's clock (0 if absent)."""
    value = await redis.client.get(store.redis_key(key))
    tat = None if value is None else value.split()[0]
    return 0.0 if tat in (None, "-", b"-") else float(tat)


# ----------------------------------------------------------------- RateLimit


async def test_raising_the_rate_moves_this_process_s_waiters(
    redis: RedisConnection,
) -> None:
    """1/s raised to 20/s: the booked call goes at 1 s, the others T' = 0.05 s apart."""
    await redis.client.ping()
    store = RedisRateLimitStore(redis, name="raise")
    limit = layers.RateLimit(1, store=store)
    log: list[tuple[int, float]] = []

    async def record(request: int) -> None:
        log.append((request, anyio.current_time()))

    service = limit.layer(record)
    start = anyio.current_time()
    async with anyio.create_task_group() as group:
        for i in range(4):
            group.start_soon(service, i)
            await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        limit.set_limit(rate=20)
    # (the order of the requests may differ: commands leave on a pool)
    at = sorted(t - start for _, t in log)
    assert at[0] < 0.1
    assert 0.95 <= at[1] <= 1.5  # the time booked at 1/s is kept
    # The store gave the second a turn at the old price, to 2 s: the third
    # may wait for its end; the fourth comes 0.05 s after it (without the
    # change: at 3 s).
    assert at[2] <= 2.3
    assert 0.045 <= at[3] - at[2] <= 0.5


async def test_a_head_asleep_on_the_old_parameters_asks_again_at_once(
    redis: RedisConnection,
) -> None:
    """A burst raised while the head sleeps: admitted at the change, not at 1 s."""
    await redis.client.ping()
    store = RedisRateLimitStore(redis, name="wake")
    limit = layers.RateLimit(1, burst=2, store=store)
    service = limit.layer(echo)
    await service(1)
    await service(2)  # tat: 2 s ahead; a third call waits 1 s
    start = anyio.current_time()
    async with anyio.create_task_group() as group:
        group.start_soon(service, 3)
        await anyio.sleep(0.2)
        limit.set_limit(burst=3)
    assert 0.19 <= anyio.current_time() - start < 0.8


async def test_each_process_prices_its_own_calls(redis: RedisConnection) -> None:
    """Two limits on one store (two processes): only the changed one's calls change.

    The store keeps one ``tat``; each call sends its own interval, so a call
    of the changed process books 0.1 s and one of the other still books 1 s.
    """
    changed = layers.RateLimit(
        1, mode="reject", store=RedisRateLimitStore(redis, name="fleet")
    )
    other = layers.RateLimit(
        1, mode="reject", store=RedisRateLimitStore(redis, name="fleet")
    )
    changed.set_limit(rate=10)
    fast, slow = changed.layer(echo), other.layer(echo)
    await fast(1)
    with pytest.raises(layers.RateLimited) as caught:
        await slow(2)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after <= 0.1  # the 0.1 s the fast call booked
    await anyio.sleep(caught.value.retry_after)
    await slow(3)
    with pytest.raises(layers.RateLimited) as caught:
        await fast(4)
    assert caught.value.retry_after is not None
    assert 0.8 <= caught.value.retry_after <= 1.0  # the 1 s the slow call booked


async def test_a_lease_taken_before_the_change_is_spent(
    redis: RedisConnection,
) -> None:
    """Lease mode: the permits left are spent here; the next lease books the new T."""
    store = RedisRateLimitStore(redis, name="lease", lease=5)
    limit = layers.RateLimit(100, burst=5, mode="reject", store=store)
    service = limit.layer(echo)
    await service(0)  # one round trip: a lease of 5
    before = await tat_of(redis, store, None)
    limit.set_limit(rate=1)
    for i in range(1, 5):
        await service(i)  # the 4 permits left, at no round trip
    assert store.round_trips == 1
    # The next lease, at the new price: 0.05 s booked and 5 s allowed, so
    # what fits is taken (4 permits of 1 s).
    await service(5)
    assert store.round_trips == 2
    after = await tat_of(redis, store, None)
    assert 3.9 <= after - before <= 4.1
    with pytest.raises(ConfigurationError) as caught:
        limit.set_limit(burst=4)
    assert str(caught.value).startswith("RateLimit.set_limit(burst=4, store=")
    assert "lease must be <= burst" in str(caught.value)
    assert limit.burst == 5


# ---------------------------------------------------------- ConcurrencyLimit


class Held:
    """An inner service whose calls run until the test lets them go."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.gates: dict[Any, anyio.Event] = {}

    async def __call__(self, request: Any) -> Any:
        gate = self.gates[request] = anyio.Event()
        self.started.append(request)
        await gate.wait()
        return request


async def until(predicate: Any, within: float = 5.0) -> None:
    """Wait (polling, in the test only) until *predicate()* is true."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 (a test polls)
            await anyio.sleep(0.005)


async def test_raising_max_in_flight_admits_waiters_at_once(
    redis: RedisConnection,
) -> None:
    """1 raised to 3 with three waiting: two start at once (not at a release)."""
    store = RedisConcurrencyStore(redis, name="raise", lease_ttl=5.0)
    limit = layers.ConcurrencyLimit(1, store=store)
    held = Held()
    service = limit.layer(held)
    async with anyio.create_task_group() as group:
        for i in range(4):
            group.start_soon(service, i)
            await anyio.sleep(0.02)
        await until(lambda: limit.statistics().waiting == 3)
        # (which call got the permit first depends on the connection pool)
        assert len(held.started) == 1
        start = anyio.current_time()
        limit.set_limit(3)
        await until(lambda: len(held.started) == 3)
        assert anyio.current_time() - start < 1.0  # the head's recheck: 5 s
        await anyio.sleep(0.1)
        assert len(held.started) == 3
        for request in list(held.started):
            held.gates[request].set()
        await until(lambda: len(held.started) == 4)
        held.gates[held.started[-1]].set()
    assert sorted(held.started) == [0, 1, 2, 3]
    assert (
        int(await redis.client.zcard(redis.key("concurrency", "raise", "leases"))) == 0
    )


async def test_lowering_max_in_flight_keeps_calls_in_flight(
    redis: RedisConnection,
) -> None:
    """3 lowered to 1: the calls run on; a newcomer waits until none is left."""
    store = RedisConcurrencyStore(redis, name="lower", lease_ttl=5.0)
    limit = layers.ConcurrencyLimit(3, store=store)
    shed = layers.ConcurrencyLimit(
        3, max_waiting=0, store=RedisConcurrencyStore(redis, name="lower")
    )
    held = Held()
    service = limit.layer(held)
    async with anyio.create_task_group() as group:
        for i in range(3):
            group.start_soon(service, i)
        await until(lambda: len(held.started) == 3)
        limit.set_limit(1)
        shed.set_limit(1)
        group.start_soon(service, "new")
        await until(lambda: limit.statistics().waiting == 1)
        with pytest.raises(layers.Overloaded):
            await shed.layer(echo)("shed")
        held.gates[0].set()
        held.gates[1].set()
        await anyio.sleep(0.3)
        assert "new" not in held.started  # one call still in flight: not below 1
        held.gates[2].set()
        await until(lambda: "new" in held.started)
        held.gates["new"].set()
    assert limit.statistics().in_flight == 0
