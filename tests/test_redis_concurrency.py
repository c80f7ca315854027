"""A ConcurrencyLimit shared through Redis: leases, waiting, failures, processes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("coredis")

from redis_server import RedisServer, Worker, free_port, spawn_worker, stop_workers

import layers
from layers import ConfigurationError, Overloaded, StoreUnavailable
from layers.events import StoreFailed, StoreRecovered
from layers.redis import RedisConcurrencyStore, RedisConnection
from layers.testing import capture_events

pytestmark = [pytest.mark.anyio, pytest.mark.realtime, pytest.mark.timeout(60)]

WORKER = Path(__file__).with_name("redis_concurrency_worker.py")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends on the real clock: the tests wait on a real server."""
    return str(request.param)


class Gauge:
    """An inner service that holds its call *hold* seconds and counts calls inside."""

    def __init__(self, hold: float = 0.02) -> None:
        self.hold = hold
        self.inside = 0
        self.peak = 0
        self.calls: list[Any] = []

    async def __call__(self, request: Any) -> Any:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        self.calls.append(request)
        try:
            await anyio.sleep(self.hold)
        finally:
            self.inside -= 1
        return request


def leases(redis: RedisConnection, name: str) -> str:
    """The key of the sorted set of a limit's leases."""
    return redis.key("concurrency", name, "leases")


async def held(redis: RedisConnection, name: str) -> int:
    """The permits held in Redis (ZCARD of the leases)."""
    return int(await redis.client.zcard(leases(redis, name)))


LIVE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""


async def live(redis: RedisConnection, name: str) -> int:
    """The leases of a limit that have not expired (on the server's clock)."""
    return int(await redis.run(redis.script(LIVE), [leases(redis, name)], []))


async def until(predicate: Any, within: float = 5.0) -> None:
    """Wait (polling, in the test only) until *predicate()* is true."""
    with anyio.fail_after(within):
        while not await predicate():  # noqa: ASYNC110 (a test polls Redis)
            await anyio.sleep(0.01)


async def evalsha_calls(redis: RedisConnection) -> int:
    """The EVALSHA commands the server ran since the last CONFIG RESETSTAT."""
    info: Any = await redis.client.info("commandstats")
    return int(info.get("cmdstat_evalsha", {}).get("calls", 0))


async def spawn(**options: Any) -> Worker:
    """Start a worker process with its own event loop."""
    return await spawn_worker(WORKER, options)


@pytest.fixture
async def workers() -> AsyncIterator[list[Worker]]:
    """Worker processes that the test starts; killed at the end if still running."""
    started: list[Worker] = []
    yield started
    await stop_workers(started)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes of *key*: its hash tag, or the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@pytest.mark.parametrize("name", ["}db", "{db}", "orders db"])
async def test_the_keys_of_a_limit_share_one_hash_tag_whatever_its_name(
    redis: RedisConnection, name: str
) -> None:
    """The leases and the waiting flag land in one cluster slot (one script).

    A name with braces must not end the hash tag early: ``}db`` would make
    it empty, and Redis Cluster would hash each whole key to its own slot.
    """
    store = RedisConcurrencyStore(redis, name=name, lease_ttl=2.0)
    limit = layers.ConcurrencyLimit(1, max_wait=0.05, store=store)
    inside = anyio.Event()
    done = anyio.Event()

    async def hold(_: int) -> None:
        inside.set()
        await done.wait()

    service = limit.layer(hold)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(service, 1)
            await inside.wait()
            with pytest.raises(Overloaded):  # refused after max_wait: it waited
                await service(2)
            keys = sorted(await redis.client.keys("layers:concurrency:*"))
            done.set()
    assert [key.rsplit(":", 1)[1] for key in keys] == ["leases", "waiting"]
    tags = {hash_tag(key) for key in keys}
    assert len(tags) == 1, keys
    assert tags != set(keys)


# -------------------------------------------------------------- the limit


async def test_at_most_n_calls_in_flight_across_tasks(redis: RedisConnection) -> None:
    """40 tasks on a limit of 4: exactly 4 inside at the peak, no permit left after."""
    store = RedisConcurrencyStore(redis, name="db", lease_ttl=2.0)
    limit = layers.ConcurrencyLimit(4, store=store)
    gauge = Gauge()
    service = limit.layer(gauge)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for i in range(40):
                group.start_soon(service, i)
    assert gauge.peak == 4
    assert sorted(gauge.calls) == list(range(40))
    assert await held(redis, "db") == 0
    assert limit.statistics() == layers.ConcurrencyLimitStatistics(
        in_flight=0, waiting=0, rejected=0, max_in_flight=4, store_fallbacks=0
    )


async def test_at_most_n_calls_in_flight_across_worker_processes(
    redis: RedisConnection, redis_url: str, workers: list[Worker], anyio_backend: str
) -> None:
    """3 processes (asyncio, trio) x 6 tasks on a limit of 5: exactly 5 at the peak."""
    other = "trio" if anyio_backend == "asyncio" else "asyncio"
    for backend in (anyio_backend, other, anyio_backend):
        workers.append(
            await spawn(
                url=redis_url,
                backend=backend,
                name="fleet",
                limit=5,
                mode="load",
                tasks=6,
                calls=5,
                hold=0.03,
                timeout=2.0,
            )
        )
    lines = [await worker.line() for worker in workers]
    assert lines == ["done 30"] * 3
    assert int(await redis.client.get("fleet:peak") or 0) == 5
    assert int(await redis.client.get("fleet:gauge") or 0) == 0
    assert await held(redis, "fleet") == 0


async def test_waiters_of_a_process_are_served_first_come_first_served(
    redis: RedisConnection,
) -> None:
    """With one permit, the waiters of one process get it in their order of arrival."""
    limit = layers.ConcurrencyLimit(
        1, store=RedisConcurrencyStore(redis, name="fifo", lease_ttl=2.0)
    )
    gauge = Gauge(hold=0.01)
    service = limit.layer(gauge)
    release = anyio.Event()

    async def holder(_: None) -> None:
        await release.wait()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(limit.layer(holder), None)
            await until(lambda: _in_flight(limit, 1))
            for i in range(8):
                group.start_soon(service, i)
                await until(lambda i=i: _waiting_at_least(limit, i + 1))
            release.set()
    assert gauge.calls == list(range(8))
    assert await held(redis, "fifo") == 0


async def _waiting_at_least(limit: layers.ConcurrencyLimit, count: int) -> bool:
    return limit.statistics().waiting >= count


async def test_a_connection_that_was_not_entered_is_a_clear_runtime_error(
    redis_url: str,
) -> None:
    """The store renews in the connection's task group: not entered, it says how."""
    import coredis

    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        connection = RedisConnection(client)
        limit = layers.ConcurrencyLimit(
            2, store=RedisConcurrencyStore(connection, name="db")
        )
        service = limit.layer(Gauge())
        with pytest.raises(RuntimeError, match=r"async with RedisConnection\(client\)"):
            await service(None)
        async with connection:  # entered: the same store works
            assert await service("ok") == "ok"
        assert await held(connection, "db") == 0


# -------------------------------------------------------- cancellation


async def test_cancelled_while_waiting_holds_nothing(redis: RedisConnection) -> None:
    """A waiter cancelled leaves the queue; nothing of it stays in Redis."""
    limit = layers.ConcurrencyLimit(
        1, store=RedisConcurrencyStore(redis, name="db", lease_ttl=2.0)
    )
    gauge = Gauge(hold=0.3)
    service = limit.layer(gauge)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(service, "holder")
            await until(lambda: _in_flight(limit, 1))
            with anyio.move_on_after(0.1) as scope:
                await service("cancelled")
            assert scope.cancelled_caught
            assert limit.statistics().waiting == 0
            assert await held(redis, "db") == 1
            assert await service("next") == "next"  # waits for the holder
    assert gauge.calls == ["holder", "next"]
    assert await held(redis, "db") == 0


async def _in_flight(limit: layers.ConcurrencyLimit, count: int) -> bool:
    return limit.statistics().in_flight == count


async def test_cancelled_while_holding_releases_the_permit_at_once(
    redis: RedisConnection,
) -> None:
    """Cancelling a call that holds a permit gives it back before it returns."""
    limit = layers.ConcurrencyLimit(
        2, store=RedisConcurrencyStore(redis, name="db", lease_ttl=5.0)
    )
    service = limit.layer(Gauge(hold=10))
    with anyio.move_on_after(0.2) as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(service, 1)
            group.start_soon(service, 2)
    assert scope.cancelled_caught
    assert await held(redis, "db") == 0  # at once: not after lease_ttl
    assert limit.statistics().in_flight == 0


async def test_cancelled_while_the_acquire_script_runs_leaves_no_permit(
    redis: RedisConnection, redis_url: str
) -> None:
    """Cancelled while Redis runs its acquire script: the permit it took is released."""
    ttl = 3.0
    limit = layers.ConcurrencyLimit(
        1, store=RedisConcurrencyStore(redis, name="db", lease_ttl=ttl)
    )
    service = limit.layer(Gauge())
    busy = redis.script(
        "local s = redis.call('TIME') local t0 = s[1] + s[2] / 1e6 "
        "while true do local n = redis.call('TIME') "
        "if n[1] + n[2] / 1e6 - t0 > 0.15 then break end end return 1"
    )
    async with RedisConnection.from_url(redis_url, timeout=1.0) as other:
        start = anyio.current_time()
        async with anyio.create_task_group() as group:
            # Redis runs one script at a time: ours waits behind this one.
            group.start_soon(other.run, busy, ["busy"], [])
            await anyio.sleep(0.03)
            with anyio.move_on_after(0.05) as scope:
                await service(None)
            assert scope.cancelled_caught
    # Released at once, or at the next renewal (lease_ttl / 3), never left
    # to expire.
    await until(lambda: _held_is(redis, "db", 0), within=5)
    assert anyio.current_time() - start < ttl * 0.6
    assert await service("after") == "after"


async def _live_is(redis: RedisConnection, name: str, count: int) -> bool:
    return await live(redis, name) == count


async def _held_is(redis: RedisConnection, name: str, count: int) -> bool:
    return await held(redis, name) == count


async def test_the_callers_deadline_ends_the_wait_and_holds_nothing(
    redis: RedisConnection,
) -> None:
    """A Timeout outside the limit cancels the wait, as in memory."""
    limit = layers.ConcurrencyLimit(
        1, store=RedisConcurrencyStore(redis, name="db", lease_ttl=2.0)
    )
    gauge = Gauge(hold=0.5)
    inner = limit.layer(gauge)
    outer = layers.ServiceBuilder().timeout(0.1).service(inner)
    async with anyio.create_task_group() as group:
        group.start_soon(inner, "holder")
        await until(lambda: _in_flight(limit, 1))
        start = anyio.current_time()
        with pytest.raises(layers.Elapsed):
            await outer("late")
        assert anyio.current_time() - start < 0.4
        assert limit.statistics().waiting == 0
    assert gauge.calls == ["holder"]
    assert await held(redis, "db") == 0


async def test_max_waiting_and_max_wait_refuse_with_overloaded(
    redis: RedisConnection, redis_url: str
) -> None:
    """max_waiting (load_shed) bounds this process's queue, max_wait a wait."""
    async with RedisConnection.from_url(redis_url) as other:
        # Another "process" holds the only permit.
        holder = layers.ConcurrencyLimit(
            1, store=RedisConcurrencyStore(other, name="db", lease_ttl=2.0)
        )
        shedding = layers.ServiceBuilder().load_shed(
            1, store=RedisConcurrencyStore(redis, name="db", lease_ttl=2.0)
        )
        (shed,) = shedding.layers
        assert isinstance(shed, layers.ConcurrencyLimit)
        patient = layers.ConcurrencyLimit(
            1,
            max_wait=0.2,
            store=RedisConcurrencyStore(redis, name="db", lease_ttl=2.0),
        )
        gauge = Gauge(hold=1.0)
        async with anyio.create_task_group() as group:
            group.start_soon(holder.layer(gauge), "holder")
            await until(lambda: _held_is(redis, "db", 1))
            with pytest.raises(Overloaded) as full:
                await shedding.service(gauge)("shed")
            assert full.value.reason == "queue_full"
            start = anyio.current_time()
            with pytest.raises(Overloaded) as waited:
                await patient.layer(gauge)("patient")
            assert waited.value.reason == "max_wait"
            assert 0.18 < anyio.current_time() - start < 0.6
            group.cancel_scope.cancel()
        assert gauge.calls == ["holder"]
        assert shed.statistics().rejected == 1
        assert patient.statistics().rejected == 1
        assert patient.statistics().waiting == 0
    assert await held(redis, "db") == 0


# ------------------------------------------------------------- leases


async def test_a_long_call_keeps_its_permit_by_renewal(
    redis: RedisConnection, redis_url: str
) -> None:
    """A call more than twice as long as lease_ttl keeps its permit all along."""
    limit = layers.ConcurrencyLimit(
        1, store=RedisConcurrencyStore(redis, name="db", lease_ttl=1.0)
    )
    async with RedisConnection.from_url(redis_url) as other:
        rival = layers.ConcurrencyLimit(
            1,
            max_waiting=0,
            store=RedisConcurrencyStore(other, name="db", lease_ttl=1.0),
        ).layer(Gauge())
        async with anyio.create_task_group() as group:
            group.start_soon(limit.layer(Gauge(hold=2.2)), "long")
            await until(lambda: _held_is(redis, "db", 1))
            for _ in range(4):  # for 2 s: never a permit for the rival
                await anyio.sleep(0.45)
                with pytest.raises(Overloaded):
                    await rival("rival")
                assert await held(redis, "db") == 1
    assert await held(redis, "db") == 0


async def test_a_killed_worker_gives_its_permits_back_within_lease_ttl(
    redis: RedisConnection, redis_url: str, workers: list[Worker]
) -> None:
    """A killed process that held every permit: they are back within lease_ttl."""
    ttl = 1.0
    worker = await spawn(
        url=redis_url,
        backend="trio",
        name="db",
        limit=2,
        mode="hold",
        tasks=2,
        lease_ttl=ttl,
    )
    workers.append(worker)
    assert await worker.line() == "held"
    limit = layers.ConcurrencyLimit(
        2, store=RedisConcurrencyStore(redis, name="db", lease_ttl=ttl)
    )
    gauge = Gauge(hold=0.0)
    service = limit.layer(gauge)
    # Two waiters here, behind the worker's two permits.
    async with anyio.create_task_group() as group:
        group.start_soon(service, "a")
        group.start_soon(service, "b")
        await anyio.sleep(0.2)
        assert gauge.calls == []
        worker.process.kill()
        killed = anyio.current_time()
        await worker.process.wait()
        with anyio.fail_after(ttl * 3):
            while len(gauge.calls) < 2:  # noqa: ASYNC110 (a test polls)
                await anyio.sleep(0.01)
        waited = anyio.current_time() - killed
    assert waited <= ttl + 0.3  # the leases expire, the waiters' timers find it
    # The worker's other lease (taken a little later) expires too (an
    # expired lease stays in the sorted set until a script drops it).
    await until(lambda: _live_is(redis, "db", 0), within=ttl)


async def test_a_waiter_wakes_when_another_process_releases_without_polling(
    redis: RedisConnection, redis_url: str, workers: list[Worker]
) -> None:
    """A release in a worker process wakes the waiter here at once, in few commands."""
    worker = await spawn(
        url=redis_url, backend="asyncio", name="db", limit=1, mode="release", hold=0.5
    )
    workers.append(worker)
    assert await worker.line() == "held"
    limit = layers.ConcurrencyLimit(
        1, store=RedisConcurrencyStore(redis, name="db", lease_ttl=10.0)
    )
    await redis.client.config_resetstat()
    admitted: list[float] = []

    async def inner(_: None) -> None:
        admitted.append(time.time())

    await limit.layer(inner)(None)
    released = float((await worker.line()).split()[1])
    # The waiter heard of the release (no lease expired: lease_ttl is 10 s).
    assert admitted[0] - released < 0.25
    # Commands in the second: the worker's release and this process's
    # acquires (refused, granted) and release; polling would be hundreds.
    assert await evalsha_calls(redis) <= 6


# -------------------------------------------------------- Redis fails


async def test_redis_killed_and_restarted_mid_run(
    own_redis_server: RedisServer,
) -> None:
    """No call hangs, nothing leaks, and the limit is exact again after a restart."""
    async with RedisConnection.from_url(own_redis_server.url) as redis:
        limit = layers.ConcurrencyLimit(
            3,
            store=RedisConcurrencyStore(redis, name="db", lease_ttl=1.0),
        )
        gauge = Gauge(hold=0.02)
        service = limit.layer(gauge)
        outcomes: dict[str, int] = {"ok": 0, "refused": 0}
        stop = anyio.Event()

        async def caller() -> None:
            while not stop.is_set():
                with anyio.fail_after(3):  # no call hangs
                    try:
                        await service(None)
                        outcomes["ok"] += 1
                    except StoreUnavailable:
                        outcomes["refused"] += 1
                        await anyio.sleep(0.01)

        with capture_events(StoreFailed, StoreRecovered) as events:
            async with anyio.create_task_group() as group:
                for _ in range(12):
                    group.start_soon(caller)
                await anyio.sleep(0.3)
                assert gauge.peak == 3
                own_redis_server.stop()
                await anyio.sleep(0.3)
                assert outcomes["refused"] > 0
                own_redis_server.start()
                # The guard lets a probe through; a call gets through Redis.
                await until(lambda: _answers(limit), within=10)
                gauge.peak = gauge.inside
                await anyio.sleep(0.5)
                assert gauge.peak == 3  # exact again
                stop.set()
        assert [type(event) for event in events] == [StoreFailed, StoreRecovered]
        assert limit.statistics().in_flight == 0
        assert limit.statistics().store_fallbacks == outcomes["refused"]
        assert await held(redis, "db") == 0


async def test_a_running_call_takes_its_permit_again_after_a_redis_restart(
    own_redis_server: RedisServer,
) -> None:
    """Redis restarts empty under a running call: the renewal takes its permit again."""
    async with RedisConnection.from_url(own_redis_server.url) as redis:
        limit = layers.ConcurrencyLimit(
            1, store=RedisConcurrencyStore(redis, name="db", lease_ttl=1.0)
        )
        key = leases(redis, "db")
        release = anyio.Event()

        async def inner(_: None) -> None:
            await release.wait()

        async def count() -> int:
            return int(own_redis_server.command("ZCARD", key)[1:])

        async with anyio.create_task_group() as group:
            group.start_soon(limit.layer(inner), None)
            await until(lambda: _equals(count, 1))
            own_redis_server.stop()
            own_redis_server.start()
            assert await count() == 0
            await until(lambda: _equals(count, 1), within=3)  # lease_ttl / 3 later
            release.set()
        assert await count() == 0


async def _equals(read: Any, value: int) -> bool:
    return await read() == value


async def _answers(limit: layers.ConcurrencyLimit) -> bool:
    # The store answered since it failed: the outage is over.
    return bool(limit._shared and limit._shared.health.failing_since is None)  # pyright: ignore[reportPrivateUsage]


@pytest.fixture
async def dead_redis() -> AsyncIterator[RedisConnection]:
    """A connection to a port where no Redis listens: every command fails."""
    async with RedisConnection.from_url(f"redis://127.0.0.1:{free_port()}/0") as redis:
        yield redis


async def test_fail_closed_refuses_with_store_unavailable(
    dead_redis: RedisConnection,
) -> None:
    """fail="closed": StoreUnavailable, the inner service not called, one event."""
    limit = layers.ConcurrencyLimit(
        2, store=RedisConcurrencyStore(dead_redis, name="db"), name="db_limit"
    )
    gauge = Gauge()
    service = limit.layer(gauge)
    with capture_events(StoreFailed) as events:
        for _ in range(5):
            with pytest.raises(StoreUnavailable) as caught:
                await service(None)
            assert caught.value.reason == "store_unavailable"
    assert gauge.calls == []
    assert [(e.layer, e.policy) for e in events] == [("db_limit", "closed")]
    assert limit.statistics().store_fallbacks == 5
    assert limit.observe().figures == {"max_in_flight": 2, "store_fallbacks": 5}


async def test_fail_open_admits_every_call(dead_redis: RedisConnection) -> None:
    """fail="open": the calls go in, uncounted by the limit, counted in statistics."""
    limit = layers.ConcurrencyLimit(
        2, store=RedisConcurrencyStore(dead_redis, name="db", fail="open")
    )
    gauge = Gauge(hold=0.1)
    service = limit.layer(gauge)
    async with anyio.create_task_group() as group:
        for i in range(5):
            group.start_soon(service, i)
    assert gauge.peak == 5
    assert limit.statistics().store_fallbacks == 5
    assert limit.statistics().in_flight == 0


async def test_fail_local_uses_a_local_limit_of_its_share(
    dead_redis: RedisConnection,
) -> None:
    """fail="local": a limit of max_in_flight // processes here, FIFO, bounded."""
    limit = layers.ConcurrencyLimit(
        7,
        max_waiting=3,
        store=RedisConcurrencyStore(dead_redis, name="db", fail="local", processes=3),
    )
    gauge = Gauge(hold=0.1)
    service = limit.layer(gauge)
    refused: list[str] = []

    async def call(i: int) -> None:
        try:
            await service(i)
        except Overloaded as error:
            refused.append(error.reason)

    async with anyio.create_task_group() as group:
        for i in range(6):
            group.start_soon(call, i)
            await anyio.sleep(0.01)
    assert gauge.peak == 2  # 7 // 3
    assert gauge.calls == [0, 1, 2, 3, 4]  # first come first served
    assert refused == ["queue_full"]  # 2 inside, 3 waiting: the 6th is refused
    assert limit.statistics().store_fallbacks == 6
    assert limit.statistics().in_flight == 0


async def test_a_local_permit_is_released_locally_after_redis_comes_back(
    own_redis_server: RedisServer,
) -> None:
    """A permit taken under the local policy is given back here, not to Redis."""
    own_redis_server.stop()
    async with RedisConnection.from_url(own_redis_server.url) as redis:
        limit = layers.ConcurrencyLimit(
            2,
            store=RedisConcurrencyStore(
                redis, name="db", fail="local", processes=2, lease_ttl=1.0
            ),
        )
        release = anyio.Event()

        async def inner(_: None) -> None:
            await release.wait()

        service = limit.layer(inner)
        with capture_events(StoreFailed, StoreRecovered) as events:
            async with anyio.create_task_group() as group:
                group.start_soon(service, None)
                await until(lambda: _in_flight(limit, 1))
                own_redis_server.start()
                with anyio.fail_after(10):  # a call through Redis, once it answers
                    while True:
                        try:
                            await limit.layer(Gauge(hold=0))(None)
                        except Overloaded:
                            await anyio.sleep(0.05)
                            continue
                        if await _answers(limit):
                            break
                        await anyio.sleep(0.05)
                release.set()
        assert [type(event) for event in events] == [StoreFailed, StoreRecovered]
        assert limit.statistics().in_flight == 0
        assert limit._state.in_flight == 0  # pyright: ignore[reportPrivateUsage]
        assert await held(redis, "db") == 0


# --------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"name": ""}, "name"),
        ({"name": 3}, "name"),
        ({"fail": "maybe"}, "fail"),
        ({"fail": "local"}, "processes"),
        ({"processes": 0}, "processes"),
        ({"processes": True}, "processes"),
        ({"processes": 2.0}, "processes"),
        ({"lease_ttl": 0}, "lease_ttl"),
        ({"lease_ttl": float("inf")}, "lease_ttl"),
        ({"lease_ttl": 0.45}, "lease_ttl"),  # below 2 x the timeout (0.25 s)
        ({"lease_ttl": "10"}, "lease_ttl"),
    ],
)
def test_bad_options_name_the_parameter(
    options: dict[str, Any], parameter: str
) -> None:
    """Each bad option raises ConfigurationError naming it."""
    import coredis

    client: Any = coredis.Redis()
    settings: dict[str, Any] = {"name": "db", **options}
    with pytest.raises(ConfigurationError, match=parameter):
        RedisConcurrencyStore(RedisConnection(client), **settings)


def test_a_store_that_is_not_a_connection_or_a_concurrency_store_is_refused() -> None:
    """redis= must be a RedisConnection; store= a concurrency store."""
    import coredis

    with pytest.raises(ConfigurationError, match="redis"):
        RedisConcurrencyStore(object(), name="db")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="store"):
        layers.ConcurrencyLimit(2, store=layers.MemoryRateLimitStore())  # type: ignore[arg-type]
    client: Any = coredis.Redis()
    store = RedisConcurrencyStore(RedisConnection(client), name="db", lease_ttl=1.0)
    assert layers.ConcurrencyLimit(2, store=store).store is store
