"""layers.RateLimit on a RedisRateLimitStore, against a real redis-server."""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import math
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest

pytest.importorskip("coredis")

import coredis
from coredis.tokens import PureToken
from redis_server import RedisServer

import layers
from layers import ConfigurationError, StoreError
from layers.events import StoreFailed, StoreRecovered
from layers.redis import RedisConnection, RedisRateLimitStore
from layers.testing import capture_events

pytestmark = [pytest.mark.anyio, pytest.mark.realtime, pytest.mark.timeout(60)]

WORKER = Path(__file__).with_name("redis_ratelimit_worker.py")

# A script that keeps the server busy for ARGV[1] seconds.
BUSY = """
local start = redis.call('TIME')
local t0 = tonumber(start[1]) + tonumber(start[2]) / 1e6
while true do
  local now = redis.call('TIME')
  if tonumber(now[1]) + tonumber(now[2]) / 1e6 - t0 > tonumber(ARGV[1]) then break end
end
return 'done'
"""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends on the real clock: the tests wait on a real server."""
    return str(request.param)


async def echo(request: Any) -> Any:
    """A service that answers at once."""
    return request


def short_guard() -> layers.CircuitBreaker:
    """The default guard, with a short open period (the tests have no time)."""
    return layers.CircuitBreaker(
        name="redis_guard",
        on=StoreError,
        consecutive_failures=3,
        failure_rate_threshold=1.0,
        open_duration=0.2,
        probes=1,
    )


async def tat_of(redis: RedisConnection, store: RedisRateLimitStore, key: Any) -> Any:
    """The ``tat`` of *key* in Redis (None if absent): the first of four words."""
    value = await redis.client.get(store.redis_key(key))
    tat = None if value is None else value.split()[0]
    return None if tat == "-" else tat


# ------------------------------------------------------------------ the script


async def test_the_script_answers_as_the_memory_store(redis: RedisConnection) -> None:
    """For the same takes and peeks at the server's times, the same exact answers."""
    rng = random.Random(13)
    refused = 0
    # a key's tat, and the server's time on the script's clock
    read = redis.script(
        "local t = redis.call('TIME') "
        "local v = redis.call('GET', KEYS[1]) "
        "return {v and string.match(v, '^(%S+)') or '-', "
        "string.format('%.17g', (t[1] - 1700000000) + t[2] / 1000000)}"
    )
    for burst in (1, 3, 7):
        store = RedisRateLimitStore(redis, name=f"same-{burst}")
        memory = layers.MemoryRateLimitStore()
        interval = 0.004
        tolerance = burst * interval
        keys: list[Hashable] = ["a", 7, ("t", 2), None]
        for _ in range(40):
            key = rng.choice(keys)
            cost = rng.choice([0.5, 1, 2, burst])
            if rng.random() < 0.3:
                await anyio.sleep(rng.random() * 0.006)
            if rng.random() < 0.2:
                wait, now = await store._peek(key, cost + 1, interval, tolerance)
                assert wait == memory.peek(key, cost + 1, now, interval, tolerance)
                continue
            granted, wait, now = await store._take(key, cost, interval, tolerance)
            assert wait == memory.take(key, cost, now, interval, tolerance)
            assert granted == (0 if wait else cost)
            refused += bool(wait)
            # the state too: the same tat while it is live (then it expires)
            stored, now = await redis.run(read, [store.redis_key(key)], [])
            expected = memory._tats.get(key)  # pyright: ignore[reportPrivateUsage]
            if stored != "-":  # (it may outlive its tat by the ms PX rounds up)
                assert float(stored) == expected
            else:
                assert expected is None or expected <= float(now)
    assert refused > 10  # the sequences did meet the limits


async def test_a_key_expires_when_its_limit_is_idle_again(
    redis: RedisConnection,
) -> None:
    """Its TTL is the time until the key's tat, in ms rounded up; then it is gone."""
    store = RedisRateLimitStore(redis, name="ttl")
    key = store.redis_key("k")
    start = anyio.current_time()
    _, _, now = await store._take("k", 3, 0.05, 0.25)
    tat = float(await tat_of(redis, store, "k"))
    assert tat == now + 3 * 0.05
    ttl = await redis.client.pttl(key)
    expected = math.ceil((tat - now) * 1000)
    elapsed = math.ceil((anyio.current_time() - start) * 1000)
    assert expected - elapsed - 1 <= ttl <= expected
    await anyio.sleep(tat - now + 0.02)
    assert await redis.client.exists([key]) == 0


async def test_a_void_before_its_take_makes_the_take_take_nothing(
    redis: RedisConnection,
) -> None:
    """The marker of a cancelled call voids its take if the take runs after it."""
    store = RedisRateLimitStore(redis, name="void")
    key = store.redis_key("k")
    keys = (key, f"{key}:void", f"{key}:turns")
    script = store._script  # pyright: ignore[reportPrivateUsage]
    await redis.run(script, keys, ("void", "tok"))
    # a batch: tok (voided before it ran) takes nothing, tok3 is admitted
    reply = await redis.run(
        script, keys, ("take", "1 1 0.1 0.1 0 0 tok", "1 1 0.1 0.1 0 0 tok3")
    )
    assert reply.split()[:4] == ["0", "-1", "1", "0"]
    assert await redis.client.zcard(f"{key}:void") == 0  # the marker is used up
    await redis.run(script, keys, ("void", "tok3"))
    assert await redis.client.exists([key]) == 0
    # in the other order, the void takes the call back
    reply = await redis.run(script, keys, ("take", "1 1 0.1 0.1 0 0 tok2"))
    assert reply.split()[:2] == ["1", "0"]
    assert await redis.client.exists([key]) == 1
    await redis.run(script, keys, ("void", "tok2"))
    assert await redis.client.exists([key]) == 0


async def test_a_turn_is_pending_until_its_call_comes_or_gives_it_up(
    redis: RedisConnection,
) -> None:
    """The script's turns: given to a refused call that can wait, then dropped.

    A turn is dropped when its call comes for it (its token as ``waited``),
    when it is given back (``unturn``), or when its take is voided (a call
    cut short while its take was in flight); ``wake`` is then the end of the
    last turn left, or ``-``.
    """
    store = RedisRateLimitStore(redis, name="turns")
    key = store.redis_key(None)
    keys = (key, f"{key}:void", f"{key}:turns")
    script = store._script  # pyright: ignore[reportPrivateUsage]

    async def take(word: str) -> list[str]:
        return str(await redis.run(script, keys, ("take", word))).split()

    async def pending() -> list[str]:
        return [str(token) for token in await redis.client.zrange(keys[2], 0, -1)]

    async def wake() -> str:
        return str(await redis.client.get(key)).split()[1]

    assert (await take("1 1 1 1 0 0 first"))[:2] == ["1", "0"]  # tat: 1 s on
    # refused, each can wait: the first of a command gets the turn only
    reply = await redis.run(script, keys, ("take", "1 1 1 1 30 0 a", "1 1 1 1 30 0 b"))
    assert str(reply).split()[0::2][:2] == ["0", "0"]
    assert await pending() == ["a"]
    assert (await take("1 1 1 1 30 0 c"))[0] == "0"  # a turn after a's
    assert await pending() == ["a", "c"]
    assert float(await wake()) == await redis.client.zscore(keys[2], "c")
    # a comes for its turn (too early: refused again, and given a new one,
    # after as many turns as are pending: here, as late as c's)
    assert (await take("1 1 1 1 30 a a2"))[0] == "0"
    assert sorted(await pending()) == ["a2", "c"]
    ends = [await redis.client.zscore(keys[2], token) for token in ("a2", "c")]
    assert float(await wake()) == max(ends)
    # c gives its turn up: the turns end with a2's
    assert str(await redis.run(script, keys, ("unturn", "c"))).split()[0] == "1"
    assert await pending() == ["a2"]
    assert float(await wake()) == await redis.client.zscore(keys[2], "a2")
    # a2's take cut short: its void drops the turn; none is left
    reply = str(await redis.run(script, keys, ("void", "a2"))).split()
    assert reply[0] == "0"  # nothing to take back: it was refused
    assert await redis.client.zcard(keys[1]) == 0  # and it ran: no void marker
    assert await pending() == []
    assert await wake() == "-"
    assert str(await redis.run(script, keys, ("unturn", "a2"))).split()[0] == "0"


# ------------------------------------------------------------------- the layer


async def test_reject_mode_gives_the_exact_retry_after(redis: RedisConnection) -> None:
    """RateLimited.retry_after is the wait: admitted after it, refused before it."""
    store = RedisRateLimitStore(redis, name="reject")
    limit = layers.RateLimit(5, burst=2, mode="reject", store=store, name="api")
    service = limit.layer(echo)
    start = anyio.current_time()
    assert await service(1) == 1
    assert await service(2) == 2
    with pytest.raises(layers.RateLimited) as caught:
        await service(3)
    retry_after = caught.value.retry_after
    assert retry_after is not None
    assert 0.2 - (anyio.current_time() - start) <= retry_after <= 0.2
    assert caught.value.layer == "api"
    assert caught.value.reason == "limited"
    asked = anyio.current_time()
    await anyio.sleep(retry_after - 0.1)
    with pytest.raises(layers.RateLimited) as again:
        await service(4)
    # what is left of the first wait (give or take a reply's latency)
    left = retry_after - (anyio.current_time() - asked)
    assert again.value.retry_after is not None
    assert left - 0.02 <= again.value.retry_after <= left + 0.1
    await anyio.sleep(again.value.retry_after)
    assert await service(5) == 5
    assert limit.statistics().rejected == 2
    assert store.round_trips == 5


async def test_wait_mode_spaces_the_calls_in_arrival_order(
    redis: RedisConnection,
) -> None:
    """Calls that do not fit wait their turn, T apart, FIFO; 2 round trips each."""
    await redis.client.ping()  # connected: the commands leave in order
    store = RedisRateLimitStore(redis, name="wait")
    limit = layers.RateLimit(20, burst=2, store=store)
    log: list[tuple[int, float]] = []

    async def record(request: int) -> None:
        log.append((request, anyio.current_time()))

    service = limit.layer(record)
    start = anyio.current_time()
    async with anyio.create_task_group() as group:
        for i in range(8):
            group.start_soon(service, i)
            await anyio.sleep(0.01)  # arrive in order
    # (the two admitted at once may run in either order: trio shuffles)
    assert sorted(i for i, _ in log[:2]) == [0, 1]
    # 2 was told its turn; 3 to 7 arrived behind it and queued here
    assert [i for i, _ in log[2:]] == list(range(2, 8))
    expected = [0.0, 0.01, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30]
    for (_, at), due in zip(log, expected, strict=True):
        assert due - 0.005 <= at - start <= due + 0.04
    stats = limit.statistics()
    assert (stats.waited, stats.waiting, stats.rejected) == (6, 0, 0)
    assert store.round_trips <= 2 * 8


async def test_waiters_cancelled_together_hold_back_no_newcomer(
    redis: RedisConnection,
) -> None:
    """A burst of waiters cancelled together holds no newcomer back.

    In memory a cancelled waiter delays nobody. On Redis a waiter told to
    wait holds a turn that newcomers do not overtake: a command gives a
    turn to its first call told to wait only (the others queue behind it
    in the process), and a call that gives up gives its turn back. Before,
    each of the 50 got a turn and kept it, and a newcomer on the idle limit
    then waited for all 50 (4.85 s).
    """
    store = RedisRateLimitStore(redis, name="ghosts")
    limit = layers.RateLimit(10, burst=1, max_wait=30, store=store)
    service = limit.layer(echo)
    await service(0)
    with anyio.move_on_after(0.05):  # 50 callers wait, then are cancelled
        async with anyio.create_task_group() as group:
            for i in range(50):
                group.start_soon(service, i)
    # every turn given back (by the calls that held one, as they left)
    assert not await redis.client.zrange(f"{store.redis_key(None)}:turns", 0, -1)
    await anyio.sleep(0.2)  # the limit is idle again
    start = anyio.current_time()
    await service(99)
    assert anyio.current_time() - start < 0.1  # as in memory: at once
    stats = limit.statistics()
    assert (stats.waiting, stats.rejected) == (0, 0)


async def test_a_cancelled_waiter_gives_its_turn_back(redis: RedisConnection) -> None:
    """The head of a queue cancelled while it waits leaves no turn behind.

    As in memory, where a cancelled waiter delays nobody: the next call is
    admitted when capacity returns, not a turn later. A turn given back
    before others (another process's) leaves the pending turns; when the
    last one goes, the turns end with the last one left.
    """
    for name in ("cancelled-head", "cancelled-head-memory"):
        store = RedisRateLimitStore(redis, name=name) if "memory" not in name else None
        limit = layers.RateLimit(5, burst=1, max_wait=30, store=store)
        service = limit.layer(echo)
        await service(0)  # the next slot is 0.2 s on
        start = anyio.current_time()
        with anyio.move_on_after(0.03):
            await service(1)  # told its turn, to 0.4 s; cancelled meanwhile
        await anyio.sleep(0.25)  # capacity came back at 0.2 s
        begin = anyio.current_time()
        await service(2)
        assert anyio.current_time() - begin < 0.1, name  # not at 0.4 s
        assert anyio.current_time() - start < 0.4, name
    # Two processes' turns, given back in the order they were given: the
    # first leaves the second's turn pending; then none is.
    first = RedisRateLimitStore(redis, name="two-turns")
    second = RedisRateLimitStore(redis, name="two-turns")
    key = first.redis_key(None)
    turns = f"{key}:turns"
    assert (await first._take(None, 1, 0.1, 0.1))[0] == 1
    told = anyio.Event()
    release = [anyio.Event(), anyio.Event()]
    done = [anyio.Event(), anyio.Event()]
    ends: list[float] = []

    async def wait_then_forfeit(index: int, store: RedisRateLimitStore) -> None:
        # (a turn is held by the task of the call it was given to)
        granted, wait, now = await store._take(None, 1, 0.1, 0.1, patience=30)
        assert granted == 0
        ends.append(now + wait + 0.1)
        told.set()
        await release[index].wait()
        await store.forfeit(None)
        done[index].set()

    async with anyio.create_task_group() as group:
        group.start_soon(wait_then_forfeit, 0, first)
        await told.wait()
        told = anyio.Event()
        group.start_soon(wait_then_forfeit, 1, second)
        await told.wait()
        assert len(await redis.client.zrange(turns, 0, -1)) == 2
        release[0].set()
        await done[0].wait()
        words = str(await redis.client.get(key)).split()
        assert float(words[1]) == ends[1]  # the second's turn is still last
        # the turns pending: the tokens of their calls, scored by their ends
        pending = await redis.client.zrange(turns, 0, -1, withscores=True)
        assert [score for _, score in pending] == [float(words[1])]
        release[1].set()
    words = str(await redis.client.get(key)).split()
    assert words[1] == "-"  # no turn pending: a newcomer waits for capacity only
    assert not await redis.client.zrange(turns, 0, -1)
    assert first.round_trips == 3
    assert second.round_trips == 2


@pytest.mark.parametrize("processes", [1, 3])
async def test_a_storm_of_cancelled_waiters_does_not_starve_the_limit(
    redis: RedisConnection, processes: int
) -> None:
    """Callers that give up while they wait: the limit still admits its rate.

    Each call is cancelled after a random 0 to 40 ms (no deadline the layer
    knows of), in one process or in several (here, stores of their own on
    one event loop). Were a turn kept by a call that gave up, or handed
    out after every turn ever given, the turns would run ahead of time and
    newcomers would wait behind them: before turns were given back, 8 calls
    of 305 got through such a storm, and 6 in a fleet of 4 processes when
    only the last turn could go back.
    """
    name = f"storm-{processes}"
    admitted = 0
    seconds = 1.5
    end = anyio.current_time() + seconds

    async def count(request: int) -> None:
        # Only within the window: a loaded loop may deliver the window's
        # cancellation late, and the calls admitted meanwhile by the
        # server's clock are beyond the window's allowance.
        nonlocal admitted
        if anyio.current_time() < end:
            admitted += 1

    services = [
        layers.RateLimit(
            50, burst=2, max_wait=10, store=RedisRateLimitStore(redis, name=name)
        ).layer(count)
        for _ in range(processes)
    ]
    rng = random.Random(7)

    async def caller(service: Callable[[int], Awaitable[None]]) -> None:
        while True:
            with anyio.move_on_after(rng.random() * 0.04):
                await service(0)
            await anyio.lowlevel.checkpoint()

    with anyio.CancelScope(deadline=end):
        async with anyio.create_task_group() as group:
            for index in range(24):
                group.start_soon(caller, services[index % processes])
    allowed = 50 * seconds + 2
    # (starved: 1 of 77 without turns given back, 15 to 24 without the sooner
    # turns with three stores; 47 to 75 on a loaded machine)
    assert 0.4 * allowed <= admitted <= allowed + 1


async def test_a_wait_that_cannot_fit_is_refused_at_once(
    redis: RedisConnection,
) -> None:
    """max_wait and the caller's deadline refuse at once, as in memory."""
    store = RedisRateLimitStore(redis, name="fit")
    limit = layers.RateLimit(10, burst=1, max_wait=0.05, store=store)
    service = limit.layer(echo)
    await service(0)
    start = anyio.current_time()
    with pytest.raises(layers.RateLimited) as caught:
        await service(1)
    assert anyio.current_time() - start < 0.05
    assert caught.value.reason == "max_wait"
    assert caught.value.retry_after is not None
    assert 0.05 < caught.value.retry_after <= 0.1

    deadline = (
        layers.ServiceBuilder()
        .timeout(0.05)
        .layer(
            layers.RateLimit(10, burst=1, store=RedisRateLimitStore(redis, name="dl"))
        )
    )
    bounded = deadline.service(echo)
    await bounded(0)
    with pytest.raises(layers.RateLimited) as caught:
        await bounded(1)
    assert caught.value.reason == "deadline"

    # A newcomer behind a queue: its wait is estimated without a round trip.
    queued = layers.RateLimit(
        10, burst=1, max_wait=0.25, store=RedisRateLimitStore(redis, name="queue")
    )
    service = queued.layer(echo)
    await service(0)
    outcomes: dict[int, str] = {}

    async def call(i: int) -> None:
        try:
            await service(i)
            outcomes[i] = "admitted"
        except layers.RateLimited as error:
            outcomes[i] = f"{error.reason} {anyio.current_time() - start:.2f}"

    start = anyio.current_time()
    async with anyio.create_task_group() as group:
        for i in (1, 2, 3):
            group.start_soon(call, i)
            await anyio.sleep(0.01)
    # 1 waits ~0.1 s, 2 ~0.2 s; 3 would wait ~0.3 s: refused on arrival
    assert outcomes.pop(1) == outcomes.pop(2) == "admitted"
    reason, at = outcomes[3].split()
    assert reason == "max_wait"
    assert float(at) < 0.07


async def test_per_key_limits_and_their_redis_keys(redis: RedisConnection) -> None:
    """Each key has its own limit, under a stable Redis key with a hash tag."""

    class Tier(enum.StrEnum):
        GOLD = "gold"

    store = RedisRateLimitStore(redis, name="tenants")
    limit = layers.RateLimit(
        1, 60.0, mode="reject", key=lambda request: request, store=store
    )
    service = limit.layer(echo)
    for key in ("acme", 42, b"raw", ("acme", 1), Tier.GOLD):
        await service(key)
        with pytest.raises(layers.RateLimited):
            await service(key)
    assert sorted(await redis.client.keys("layers:rate:*")) == [
        "layers:rate:{tenants:b:raw}",
        "layers:rate:{tenants:i:42}",
        "layers:rate:{tenants:s:acme}",
        "layers:rate:{tenants:s:gold}",
        "layers:rate:{tenants:t:(s:acme,i:1)}",
    ]
    # equal keys in a dict are one key in Redis
    with pytest.raises(layers.RateLimited):
        await service(42.0)
    assert store.redis_key(True) == store.redis_key(1) == store.redis_key(1.0)
    assert store.redis_key(None) == "layers:rate:{tenants}"
    assert store.redis_key("a b{c}") == "layers:rate:{tenants:s:a%20b%7Bc%7D}"
    assert store.redis_key(0.5) == "layers:rate:{tenants:f:0.5}"
    assert store.redis_key(2**70) == "layers:rate:{tenants:x:400000000000000000}"
    long = store.redis_key("x" * 1000)
    assert long.startswith("layers:rate:{tenants:h:")
    assert len(long) < 80
    assert RedisRateLimitStore(redis, name="a b").redis_key(None) == (
        "layers:rate:{a%20b}"
    )
    sent = store.round_trips
    for bad in (object(), uuid.uuid4(), ("ok", object())):
        with pytest.raises(layers.CallbackError, match="key") as caught:
            await service(bad)
        assert caught.value.parameter == "key"
    assert store.round_trips == sent  # refused before anything was sent


async def test_weighted_calls(redis: RedisConnection) -> None:
    """A cost counts as in memory: weighted, free, beyond the burst, invalid."""
    store = RedisRateLimitStore(redis, name="cost")
    limit = layers.RateLimit(
        10, burst=4, mode="reject", cost=lambda request: request, store=store
    )
    service = limit.layer(echo)
    await service(3)
    await service(0.5)
    with pytest.raises(layers.RateLimited) as caught:
        await service(1)
    assert caught.value.retry_after is not None
    assert 0.04 < caught.value.retry_after <= 0.05
    sent = store.round_trips
    assert await service(0) == 0  # free: no round trip
    with pytest.raises(layers.RateLimited) as beyond:
        await service(5)
    assert (beyond.value.retry_after, beyond.value.reason) == (None, "cost")
    with pytest.raises(layers.CallbackError):
        await service(-1)
    assert store.round_trips == sent


async def test_a_call_cancelled_while_it_waits_takes_nothing(
    redis: RedisConnection,
) -> None:
    """Cancelled in the queue: its place is released, Redis keeps its tat."""
    store = RedisRateLimitStore(redis, name="cancel")
    limit = layers.RateLimit(10, burst=1, store=store)
    log: list[tuple[int, float]] = []

    async def record(request: int) -> None:
        log.append((request, anyio.current_time()))

    service = limit.layer(record)
    second = anyio.CancelScope()

    async def cancellable(request: int) -> None:
        with second:
            await service(request)

    await service(0)
    before = await tat_of(redis, store, None)
    start = anyio.current_time()
    async with anyio.create_task_group() as group:
        group.start_soon(service, 1)  # the head: told to wait ~0.1 s
        await anyio.sleep(0.01)
        group.start_soon(cancellable, 2)
        await anyio.sleep(0.01)
        group.start_soon(service, 3)
        await anyio.sleep(0.01)
        assert limit.statistics().waiting == 3
        second.cancel()
        await anyio.sleep(0.01)
        assert limit.statistics().waiting == 2
        assert await tat_of(redis, store, None) == before
    # 3 moved up: served ~0.1 s after 1, not 0.2 s
    assert [i for i, _ in log] == [0, 1, 3]
    assert log[2][1] - start < 0.25

    # cancelled as the head, sleeping: nothing taken, no queue left
    before = await tat_of(redis, store, None)
    with anyio.move_on_after(0.03) as scope:
        await service(4)
    assert scope.cancelled_caught
    assert limit.statistics().waiting == 0
    assert not limit._state.queues  # pyright: ignore[reportPrivateUsage]
    assert await tat_of(redis, store, None) == before


async def test_a_call_cancelled_while_its_command_is_in_flight_takes_nothing(
    redis_url: str, redis_server: RedisServer
) -> None:
    """The command ran (or runs later): a second one takes it back."""
    async with RedisConnection.from_url(redis_url, timeout=2.0) as redis:
        store = RedisRateLimitStore(redis, name="flight")
        limit = layers.RateLimit(10, burst=2, mode="reject", store=store)
        service = limit.layer(echo)
        await redis.client.ping()  # connected before the server is busy
        async with anyio.create_task_group() as group:
            # the server is busy for 0.3 s: our command waits in its queue
            group.start_soon(
                anyio.to_thread.run_sync, redis_server.command, "EVAL", BUSY, "0", "0.3"
            )
            await anyio.sleep(0.05)
            with anyio.move_on_after(0.05) as scope:
                await service(1)
            assert scope.cancelled_caught
        assert await redis.client.exists([store.redis_key(None)]) == 0
        assert store.round_trips == 2  # the take and its void
        # the whole burst is there
        await service(2)
        await service(3)
        with pytest.raises(layers.RateLimited):
            await service(4)

        # The head of a local queue (lease mode: only the head asks), cut
        # short: its place goes to the next call, which gets the permits.
        leased = RedisRateLimitStore(redis, name="flight-lease", lease=2)
        limit = layers.RateLimit(10, burst=2, store=leased)
        service = limit.layer(echo)
        head = anyio.CancelScope()
        admitted: list[float] = []

        async def first() -> None:
            with head:
                await service(1)

        async def second() -> None:
            await service(2)
            admitted.append(anyio.current_time())

        async with anyio.create_task_group() as group:
            group.start_soon(
                anyio.to_thread.run_sync, redis_server.command, "EVAL", BUSY, "0", "0.3"
            )
            await anyio.sleep(0.05)
            group.start_soon(first)  # its take waits in the server's queue
            await anyio.sleep(0.02)
            group.start_soon(second)  # queued behind it here
            await anyio.sleep(0.02)
            assert limit.statistics().waiting == 2
            head.cancel()
            busy_until = anyio.current_time() + 0.3
        # 2 took the whole lease as soon as the server answered: 1 took none
        assert admitted[0] < busy_until
        assert limit.statistics().waiting == 0
        assert leased.round_trips == 3  # 1's take and void, 2's take


# -------------------------------------------------------------------- batches


async def test_concurrent_takes_share_round_trips_and_answer_as_memory(
    redis: RedisConnection,
) -> None:
    """Takes queued behind a command share the next one: the same exact answers.

    Every take is decided in arrival order at its batch's instant on the
    server's clock, so replaying them in that order against the in-memory
    store at those instants gives the same waits.
    """
    rng = random.Random(7)
    store = RedisRateLimitStore(redis, name="batch-same")
    interval, tolerance = 0.002, 5 * 0.002
    order: list[tuple[Hashable, float]] = []
    answers: dict[int, tuple[float, float, float]] = {}

    started: list[int] = []  # the order of the takes (that of their tokens)

    async def take(index: int, key: Hashable, cost: float) -> None:
        started.append(index)
        answers[index] = await store._take(key, cost, interval, tolerance)

    for _ in range(6):
        async with anyio.create_task_group() as group:
            for _ in range(rng.randrange(20, 60)):
                key: Hashable = rng.choice(["a", None])
                cost = rng.choice([0.5, 1, 2])
                group.start_soon(take, len(order), key, cost)
                order.append((key, cost))
        await anyio.sleep(rng.random() * 0.01)
    assert store.round_trips < len(order) / 3
    assert not store._lanes  # pyright: ignore[reportPrivateUsage]
    refused = 0
    for key in ("a", None):
        # per key: one server instant per batch, batches in arrival order
        mine = [i for i in started if order[i][0] == key]
        assert sorted(mine, key=lambda i: (answers[i][2], mine.index(i))) == mine
        memory = layers.MemoryRateLimitStore()
        for index in mine:
            cost = order[index][1]
            granted, wait, now = answers[index]
            assert wait == memory.take(key, cost, now, interval, tolerance)
            assert granted == (0 if wait else cost)
            refused += bool(wait)
    assert refused > 20


async def test_many_tasks_on_one_limit_get_exactly_the_burst(
    redis: RedisConnection,
) -> None:
    """200 calls at once in reject mode: the burst is admitted, in a few round trips."""
    store = RedisRateLimitStore(redis, name="batch-burst")
    limit = layers.RateLimit(1, 60.0, burst=20, mode="reject", store=store)
    service = limit.layer(echo)
    outcomes: list[str] = []

    async def call(i: int) -> None:
        try:
            await service(i)
            outcomes.append("admitted")
        except layers.RateLimited:
            outcomes.append("limited")

    async with anyio.create_task_group() as group:
        for i in range(200):
            group.start_soon(call, i)
    assert outcomes.count("admitted") == 20
    assert outcomes.count("limited") == 180
    # one alone, then batches of at most BATCH (64)
    assert 4 <= store.round_trips <= 10


async def _busy(server: RedisServer, seconds: float) -> None:
    """Keep *server* busy for *seconds*: commands sent meanwhile wait in its queue."""
    await anyio.to_thread.run_sync(server.command, "EVAL", BUSY, "0", str(seconds))


async def test_a_call_cancelled_in_the_batch_queue_takes_nothing(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Queued behind a command in flight and cancelled: never sent, nothing taken."""
    async with RedisConnection.from_url(redis_url, timeout=2.0) as redis:
        store = RedisRateLimitStore(redis, name="batch-queued")
        limit = layers.RateLimit(1, 60.0, burst=3, mode="reject", store=store)
        service = limit.layer(echo)
        await redis.client.ping()
        cancelled = anyio.CancelScope()
        admitted: list[int] = []

        async def call(i: int) -> None:
            await service(i)
            admitted.append(i)

        async def cancellable() -> None:
            with cancelled:
                await call(2)

        async with anyio.create_task_group() as group:
            group.start_soon(_busy, redis_server, 0.5)
            await anyio.sleep(0.05)
            group.start_soon(call, 1)  # sent: waits in the server's queue
            await anyio.sleep(0.05)
            group.start_soon(cancellable)  # queued here
            group.start_soon(call, 3)  # queued here
            await anyio.sleep(0.05)
            queued = store._lanes[store.redis_key(None)]  # pyright: ignore[reportPrivateUsage]
            assert len(queued) == 2
            cancelled.cancel()
        assert sorted(admitted) == [1, 3]
        assert store.round_trips == 2  # 1 alone, then 3 (2 was never sent)
        assert not store._lanes  # pyright: ignore[reportPrivateUsage]
        # two of the three permits were taken: one is left
        await service(4)
        with pytest.raises(layers.RateLimited):
            await service(5)


async def test_cancelled_while_its_batch_is_in_flight(
    redis_url: str, redis_server: RedisServer
) -> None:
    """A member cut short is taken back; the leader's cut waits for the others' replies.

    1 is sent alone and cancelled (taken back); 2 then sends the batch
    [2, 3, 4] while the server is busy; 4 is cancelled (taken back: it is
    the batch's last take), 2 (its leader) is cancelled too: 3 still gets
    its answer, and 2's cancellation arrives after the reply.
    """
    async with RedisConnection.from_url(redis_url, timeout=2.0) as redis:
        store = RedisRateLimitStore(redis, name="batch-flight")
        limit = layers.RateLimit(1, 60.0, burst=5, mode="reject", store=store)
        service = limit.layer(echo)
        await redis.client.ping()
        scopes = {i: anyio.CancelScope() for i in (1, 2, 4)}
        admitted: list[int] = []
        cut: dict[int, float] = {}

        async def call(i: int) -> None:
            scope = scopes.get(i, anyio.CancelScope())
            with scope:
                await service(i)
                admitted.append(i)
            if scope.cancelled_caught:
                cut[i] = anyio.current_time()

        async with anyio.create_task_group() as group:
            group.start_soon(_busy, redis_server, 0.6)
            await anyio.sleep(0.05)
            group.start_soon(call, 1)
            await anyio.sleep(0.05)
            for i in (2, 3, 4):
                group.start_soon(call, i)
                await anyio.sleep(0.01)
            scopes[1].cancel()  # 2 sends [2, 3, 4] at once
            await anyio.sleep(0.05)
            assert store.round_trips == 3  # 1, its void, the batch
            scopes[4].cancel()
            scopes[2].cancel()
            asked = anyio.current_time()
        assert admitted == [3]
        # 2's cancellation waited for its batch's reply (the server busy)
        assert cut[2] >= asked + 0.15
        assert store.round_trips == 5  # and the voids of 4 and 2
        assert not store._lanes  # pyright: ignore[reportPrivateUsage]
        # 1 and 4 were taken back; 2 was not (3 was admitted after it):
        # 2 of the 5 permits are gone
        for i in range(3):
            await service(10 + i)
        with pytest.raises(layers.RateLimited):
            await service(13)


async def test_redis_frozen_under_a_batch_fails_every_member(
    own_redis_server: RedisServer,
) -> None:
    """Every member gets the policy's answer within the timeout; nothing hangs."""
    async with RedisConnection.from_url(own_redis_server.url, timeout=0.2) as redis:
        store = RedisRateLimitStore(redis, name="batch-frozen")
        limit = layers.RateLimit(1000, burst=50, store=store, name="api")
        service = limit.layer(echo)
        await service(0)
        outcomes: list[str] = []

        async def call(i: int) -> None:
            with anyio.fail_after(4.0):  # nothing hangs
                try:
                    await service(i)
                    outcomes.append("admitted")
                except layers.StoreUnavailable:
                    outcomes.append("refused")

        own_redis_server.pause()
        try:
            start = anyio.current_time()
            async with anyio.create_task_group() as group:
                for i in range(10):
                    group.start_soon(call, i)
            took = anyio.current_time() - start
        finally:
            own_redis_server.resume()
        assert outcomes == ["refused"] * 10
        assert store.round_trips == 1 + 2  # the warm-up, one alone, one batch
        assert 0.35 <= took < 4.0  # two timeouts in a row (0.4 s)
        assert limit.statistics().store_fallbacks == 10
        assert not store._lanes  # pyright: ignore[reportPrivateUsage]
        assert await service(1) == 1  # and it answers again


async def test_lease_mode_takes_permits_by_the_batch(redis: RedisConnection) -> None:
    """lease=n: one round trip takes up to n permits, spent locally."""
    store = RedisRateLimitStore(redis, name="lease", lease=5)
    limit = layers.RateLimit(100, burst=5, mode="reject", store=store)
    service = limit.layer(echo)
    for i in range(5):
        await service(i)
    assert store.round_trips == 1
    with pytest.raises(layers.RateLimited):
        await service(5)
    assert store.round_trips == 2

    waiting = RedisRateLimitStore(redis, name="lease-wait", lease=5)
    limit = layers.RateLimit(100, burst=5, store=waiting)
    service = limit.layer(echo)
    start = anyio.current_time()
    async with anyio.create_task_group() as group:
        for i in range(20):
            group.start_soon(service, i)
    # 20 permits: 5 at once, then 15 more at 100/s, in whole leases
    assert 0.14 <= anyio.current_time() - start < 0.4
    assert waiting.round_trips <= 2 * 4

    # A whole lease that max_wait cannot cover: the call waits for its own
    # permit instead (and takes what fits), rather than being refused.
    short = RedisRateLimitStore(redis, name="lease-short", lease=4)
    limit = layers.RateLimit(10, burst=4, max_wait=0.15, store=short)
    service = limit.layer(echo)
    for i in range(4):
        await service(i)  # one lease of 4
    start = anyio.current_time()
    await service(4)  # a lease of 4 in 0.4 s; its own permit in 0.1 s
    assert 0.09 <= anyio.current_time() - start < 0.15
    assert short.round_trips == 3


async def _queue_behind_a_held_head(
    redis: RedisConnection,
    limit: layers.RateLimit,
    group: anyio.abc.TaskGroup,
    head: Callable[[], Awaitable[object]],
    waiters: Sequence[Callable[[], Awaitable[object]]],
) -> None:
    """Start *head*, then *waiters* one by one, each queued behind the last.

    Redis holds the head's command (it may write) for 0.1 s, while the
    others queue behind it, in the order they are given.
    """
    await redis.client.client_pause(100, PureToken.WRITE)
    group.start_soon(head)
    for number, waiter in enumerate(waiters, start=1):
        while limit.statistics().waiting < number:
            await anyio.lowlevel.checkpoint()
        group.start_soon(waiter)


async def test_a_lease_pays_the_calls_that_waited_for_it(
    redis: RedisConnection,
) -> None:
    """The head's lease admits the waiters behind it at once, in order.

    When the head's call returns, the waiters its lease covers have left
    the queue already (paid); one cancelled before it could run gives its
    permit back, so the next call spends it without a round trip.
    """
    store = RedisRateLimitStore(redis, name="lease-pay", lease=4)
    limit = layers.RateLimit(1000, burst=4, store=store)
    admitted: list[str] = []

    async def inner(request: str) -> str:
        admitted.append(request)
        return request

    service = limit.layer(inner)
    cancelled = anyio.CancelScope()
    after_head: list[int] = []

    async def head() -> None:
        await service("a")
        after_head.append(limit.statistics().waiting)
        cancelled.cancel()  # "c" was paid, but has not run yet

    def waiter(name: str, scope: anyio.CancelScope | None = None) -> Any:
        async def wait() -> None:
            with scope or anyio.CancelScope():
                await service(name)

        return wait

    async with anyio.create_task_group() as group:
        waiters = [waiter("b"), waiter("c", cancelled), waiter("d")]
        await _queue_behind_a_held_head(redis, limit, group, head, waiters)
    assert after_head == [0]  # every waiter left the queue with the lease
    # paid in their order, run in the scheduler's (trio's is random)
    assert admitted[0] == "a"
    assert sorted(admitted[1:]) == ["b", "d"]
    assert store.round_trips == 1
    assert await service("e") == "e"  # "c"'s permit, given back
    assert store.round_trips == 1
    assert limit.statistics().waiting == 0


async def test_a_lease_pays_its_waiters_in_order_and_none_overtakes(
    redis: RedisConnection,
) -> None:
    """Paying stops at the first waiter the permits left do not cover.

    The head takes a lease of 4 and spends 1; "b" (cost 4) does not fit in
    the 3 left, so it becomes the next head, and "c" (cost 1) behind it is
    not paid though it would fit: a lease never lets a call overtake one
    that waited before it.
    """
    store = RedisRateLimitStore(redis, name="lease-order", lease=4)
    limit = layers.RateLimit(1000, burst=4, store=store, cost=lambda r: r[1])
    admitted: list[str] = []

    async def inner(request: tuple[str, int]) -> str:
        admitted.append(request[0])
        return request[0]

    service = limit.layer(inner)
    after_head: list[int] = []

    async def head() -> None:
        await service(("a", 1))
        after_head.append(limit.statistics().waiting)

    async with anyio.create_task_group() as group:
        waiters = [functools.partial(service, r) for r in (("b", 4), ("c", 1))]
        await _queue_behind_a_held_head(redis, limit, group, head, waiters)
    assert after_head == [2]  # "b" heads the queue, "c" waits behind it
    assert admitted == ["a", "b", "c"]  # "b" before "c", with later leases
    assert store.round_trips >= 2


# ---------------------------------------------------------- several processes


def _stop(worker: subprocess.Popen[str]) -> None:
    """Kill *worker* if it still runs (a failed test must not leave it behind)."""
    if worker.poll() is None:
        worker.kill()
        worker.wait()


def _excess(stamps: list[float], rate: float) -> float:
    """The most calls in any window [t_i, t_j] beyond (t_j - t_i) x rate."""
    worst = -math.inf
    lowest = math.inf
    for index, at in enumerate(sorted(stamps)):
        # (j - i + 1) - (t_j - t_i) x rate = a_j - a_i + 1, a_k = k - t_k x rate
        level = index - at * rate
        lowest = min(lowest, level)
        worst = max(worst, level - lowest + 1)
    return worst


@pytest.mark.parametrize("lease", [None, 10])
def test_several_processes_share_one_limit(redis_url: str, lease: int | None) -> None:
    """4 worker processes (2 asyncio, 2 trio) in wait mode: one limit for all.

    Exact: the server's times of the admitted calls never exceed
    ``d x rate + burst`` in any window, the aggregate is not far below, and
    an admitted call costs about 2 round trips. Lease mode: at most
    ``processes x (lease - 1)`` calls beyond that, and a fraction of a
    round trip per call.
    """
    rate, burst, tasks = (200.0, 5, 10) if lease is None else (1000.0, 20, 10)
    duration = 1.5
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(WORKER),
                        redis_url,
                        "fleet",
                        backend,
                        str(rate),
                        str(burst),
                        str(lease or 0),
                        str(tasks),
                        str(duration),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            for backend in ("asyncio", "trio", "asyncio", "trio")
        ]
        for worker in workers:
            stack.callback(_stop, worker)
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        start = time.time() + 0.1
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(f"{start}\n")
            worker.stdin.flush()
        reports = []
        for worker in workers:
            assert worker.stdout is not None
            reports.append(json.loads(worker.stdout.readline()))
            assert worker.wait(timeout=30) == 0
    stamps = sorted(at for report in reports for at in report["stamps"])
    assert all(report["stamps"] for report in reports)  # every process got calls
    admitted = len(stamps)
    round_trips = sum(report["round_trips"] for report in reports)
    if lease is None:
        # the server's clock: exact (a float rounding of the sum aside)
        server = sorted(at for report in reports for at in report["granted"])
        assert len(server) == admitted
        assert _excess(server, rate) <= burst + 0.01
        assert round_trips / admitted <= 3
    else:
        # the workers' clocks: a reply's latency may bunch stamps by a few ms
        assert _excess(stamps, rate) <= burst + 4 * (lease - 1) + 0.005 * rate
        assert round_trips / admitted <= 0.5
    # and not far below while every task called (about 97 % on a quiet
    # machine; 60 % leaves room for a loaded one, whose processes wake late)
    busy = [at for at in stamps if start + 0.1 <= at <= start + duration]
    assert len(busy) >= 0.6 * (duration - 0.1) * rate


# ---------------------------------------------------------- when Redis fails


async def test_redis_killed_and_restarted_mid_run(
    own_redis_server: RedisServer,
) -> None:
    """No call hangs, the local limit applies, and the limit is exact again after."""
    async with RedisConnection.from_url(
        own_redis_server.url, timeout=0.2, guard=short_guard()
    ) as redis:
        store = RedisRateLimitStore(redis, name="outage", fail="local", processes=2)
        limit = layers.RateLimit(100, burst=5, store=store, name="api")
        stamps: list[float] = []

        async def record(_: None) -> None:
            stamps.append(anyio.current_time())

        service = limit.layer(record)
        phase = {"end": anyio.current_time() + 0.3}

        async def caller() -> None:
            while anyio.current_time() < phase["end"]:
                with anyio.fail_after(1.0):  # no call hangs
                    await service(None)

        async def run(seconds: float) -> tuple[float, float]:
            start = anyio.current_time()
            phase["end"] = start + seconds
            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(caller)
            return start, anyio.current_time()

        with capture_events(StoreFailed, StoreRecovered) as events:
            await run(0.3)
            own_redis_server.stop()
            down = await run(0.6)
            await anyio.to_thread.run_sync(own_redis_server.start)
            back = await run(1.0)
        assert [type(event) for event in events] == [StoreFailed, StoreRecovered]
        failed, recovered = events
        assert isinstance(failed, StoreFailed)
        assert (failed.layer, failed.store, failed.policy) == ("api", "outage", "local")
        assert isinstance(recovered, StoreRecovered)
        fallbacks = limit.statistics().store_fallbacks
        assert fallbacks > 0
        assert recovered.fallbacks == fallbacks
        # while Redis was down: the local limit, 50/s with a burst of 5
        during = [at for at in stamps if down[0] <= at <= down[1]]
        assert _excess(during, 50) <= 5 + 1
        assert len(during) >= 0.8 * 50 * (down[1] - down[0])
        # once it answers again (its guard lets a probe through within 0.2 s):
        # the shared limit, exact (this process's clock: +1 for latency)
        after = [at for at in stamps if back[0] + 0.5 < at]
        assert len(after) >= 0.8 * 100 * (back[1] - back[0] - 0.5)
        assert _excess(after, 100) <= 5 + 1
        assert limit.statistics().waiting == 0


async def test_a_frozen_redis_costs_a_few_timeouts_then_none(
    own_redis_server: RedisServer,
) -> None:
    """The connection's guard opens: later calls stop paying the timeout."""
    async with RedisConnection.from_url(own_redis_server.url, timeout=0.1) as redis:
        store = RedisRateLimitStore(redis, name="frozen", fail="open")
        limit = layers.RateLimit(1000, burst=10, store=store)
        service = limit.layer(echo)
        await service(0)
        own_redis_server.pause()
        try:
            start = anyio.current_time()
            for i in range(3):
                await service(i)  # each times out, then is admitted (open)
            assert anyio.current_time() - start >= 0.3
            start = anyio.current_time()
            for i in range(20):
                await service(i)
            assert anyio.current_time() - start < 0.1
        finally:
            own_redis_server.resume()
        assert limit.statistics().store_fallbacks == 23


@pytest.mark.parametrize("policy", ["closed", "open", "local"])
async def test_each_failure_policy(own_redis_server: RedisServer, policy: str) -> None:
    """Fail closed refuses, open admits, local limits at rate / processes."""
    async with RedisConnection.from_url(own_redis_server.url) as redis:
        store = RedisRateLimitStore(
            redis,
            name="policy",
            fail=policy,  # type: ignore[arg-type]
            processes=2 if policy == "local" else None,
        )
        limit = layers.RateLimit(10, burst=1, mode="reject", store=store, name="api")
        service = limit.layer(echo)
        await service(0)
        own_redis_server.stop()
        with capture_events(StoreFailed) as events:
            if policy == "closed":
                for i in range(3):
                    with pytest.raises(layers.StoreUnavailable) as caught:
                        await service(i)
                    assert caught.value.reason == "store_unavailable"
                    assert caught.value.layer == "api"
                    assert isinstance(caught.value.__cause__, StoreError)
            elif policy == "open":
                for i in range(3):
                    assert await service(i) == i
            else:
                assert await service(1) == 1
                with pytest.raises(layers.RateLimited) as limited:
                    await service(2)
                assert limited.value.retry_after is not None
                assert 0.15 < limited.value.retry_after <= 0.2  # 10/s over 2
                await anyio.sleep(limited.value.retry_after)
                assert await service(3) == 3
        assert len(events) == 1
        assert (events[0].policy, events[0].store) == (policy, "policy")
        assert limit.statistics().store_fallbacks == 3
        assert limit.observe().figures["store_fallbacks"] == 3


# ----------------------------------------------------------------- bad options


def test_bad_options_name_the_parameter() -> None:
    """Each bad option raises ConfigurationError naming it."""
    client: Any = coredis.Redis()
    redis = RedisConnection(client)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"name": ""}, "name"),
        ({"name": 3}, "name"),
        ({"fail": "maybe"}, "fail"),
        ({"fail": "local"}, "processes"),
        ({"processes": 0}, "processes"),
        ({"processes": True}, "processes"),
        ({"lease": 0}, "lease"),
        ({"lease": 2.5}, "lease"),
    ]
    for options, parameter in bad:
        with pytest.raises(ConfigurationError, match=parameter):
            RedisRateLimitStore(redis, **{"name": "n", **options})
    with pytest.raises(ConfigurationError, match="redis"):
        RedisRateLimitStore(client, name="n")
    with pytest.raises(ConfigurationError, match="lease"):
        layers.RateLimit(
            10, burst=4, store=RedisRateLimitStore(redis, name="n", lease=5)
        )
    layers.RateLimit(10, burst=5, store=RedisRateLimitStore(redis, name="n", lease=5))
    with pytest.raises(ConfigurationError, match="max_keys"):
        layers.RateLimit(
            10, key=str, max_keys=5, store=RedisRateLimitStore(redis, name="n")
        )

    class NotARateStore:  # a store of another kind (a concurrency store, say)
        async def acquire(self) -> None: ...

        async def release(self) -> None: ...

    with pytest.raises(ConfigurationError, match="store"):
        layers.RateLimit(10, store=NotARateStore())  # type: ignore[arg-type]

    class AsyncWithoutPolicy:  # an async take() alone is not a shared store
        async def take(self) -> None: ...

        def peek(self) -> None: ...

    with pytest.raises(ConfigurationError, match="store"):
        layers.RateLimit(10, store=AsyncWithoutPolicy())  # type: ignore[arg-type]
    store = RedisRateLimitStore(redis, name="n", fail="local", processes=4, lease=2)
    assert repr(store) == (
        "RedisRateLimitStore(name='n', fail='local', processes=4, lease=2, "
        "prefix='layers')"
    )
