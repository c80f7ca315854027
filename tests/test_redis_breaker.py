"""A CircuitBreaker shared through Redis: notices, probes, processes, failures."""

from __future__ import annotations

import json
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("coredis")

from redis_server import RedisServer, Worker, spawn_worker, stop_workers

import layers
from layers import CircuitState, ConfigurationError
from layers.events import StoreFailed, StoreRecovered
from layers.redis import RedisBreakerStore, RedisConnection
from layers.testing import capture_events

pytestmark = [pytest.mark.anyio, pytest.mark.realtime, pytest.mark.timeout(60)]

WORKER = Path(__file__).with_name("redis_breaker_worker.py")

# A trip on the first failure; the open period long enough not to end by itself.
TRIP_AT_ONCE: dict[str, Any] = {
    "window_size": 100,
    "min_calls": 100,
    "consecutive_failures": 1,
    "open_duration": 60.0,
}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends on the real clock: the tests wait on a real server."""
    return str(request.param)


class Boom(Exception):
    """The failure the test services raise."""


async def service(request: str) -> str:
    """'fail' raises Boom; anything else is answered."""
    if request == "fail":
        raise Boom(request)
    return request


async def call(svc: layers.Service[str, str], request: str) -> str:
    """Call *svc*; the response, 'rejected', or the exception's class name."""
    try:
        return await svc(request)
    except layers.CircuitOpen:
        return "rejected"
    except Exception as error:
        return type(error).__name__


async def until(predicate: Any, within: float = 5.0) -> None:
    """Wait (polling, in the test only) until *predicate()* is true."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 (a test polls)
            await anyio.sleep(0.005)


def breaker(redis: RedisConnection, name: str = "b", **options: Any) -> Any:
    """A breaker (on Boom) and its service, sharing *name*."""
    store = RedisBreakerStore(
        redis, name=name, sync_interval=options.pop("sync_interval", 0.2)
    )
    b = layers.CircuitBreaker(on=Boom, store=store, **{**TRIP_AT_ONCE, **options})
    return b, b.layer(service)


async def spawn(**options: Any) -> Worker:
    """Start a worker process with its own event loop."""
    return await spawn_worker(WORKER, options)


@pytest.fixture
async def workers() -> AsyncIterator[list[Worker]]:
    """Worker processes that the test starts; killed at the end if still running."""
    started: list[Worker] = []
    yield started
    await stop_workers(started)


def backends(first: str, count: int) -> list[str]:
    """*count* backends, alternating, starting with *first*."""
    other = "trio" if first == "asyncio" else "asyncio"
    return [(first, other)[i % 2] for i in range(count)]


# ------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("name", ""),
        ("name", 3),
        ("sync_interval", 0),
        ("sync_interval", float("inf")),
        ("probe_lease", -1),
        ("probe_lease", "60"),
        ("idle_ttl", 0),
        ("idle_ttl", 1.5),  # less than 2 x sync_interval (1 s)
        ("idle_ttl", float("inf")),
        ("idle_ttl", "1d"),
    ],
)
async def test_bad_options_name_the_parameter(
    redis: RedisConnection, option: str, value: object
) -> None:
    """Each bad option raises ConfigurationError naming it."""
    options: dict[str, Any] = {"name": "b", option: value}
    with pytest.raises(ConfigurationError, match=option):
        RedisBreakerStore(redis, **options)
    with pytest.raises(ConfigurationError, match="redis"):
        RedisBreakerStore("redis://", name="b")  # type: ignore[arg-type]


async def test_a_connection_not_entered_is_a_clear_runtime_error(
    redis_url: str,
) -> None:
    """The background work runs in the connection's task group: not entered, says so."""
    async with RedisConnection.from_url(redis_url) as redis:
        store = RedisBreakerStore(redis, name="b")
    svc = layers.CircuitBreaker(store=store).layer(service)
    with pytest.raises(RuntimeError, match="not entered"):
        await svc("ok")


# --------------------------------------------------------------- the fleet


async def test_the_store_publishes_every_change_in_the_script(
    redis: RedisConnection,
) -> None:
    """A trip and a reset reach a subscriber as views, in order."""
    b, svc = breaker(redis)
    store = RedisBreakerStore(redis, name="b")
    seen: list[layers.BreakerView] = []
    async with store.subscribe() as notices:
        assert await call(svc, "ok") == "ok"
        assert await call(svc, "fail") == "Boom"
        with anyio.fail_after(5):
            async for view in notices:
                seen.append(view)
                if view.state is CircuitState.OPEN:
                    break
        b.reset()
        with anyio.fail_after(5):
            async for view in notices:
                seen.append(view)
                break
    assert [(v.state, v.generation, v.reason) for v in seen] == [
        (CircuitState.OPEN, 1, "consecutive_failures"),
        (CircuitState.CLOSED, 2, "reset"),
    ]
    assert seen[0].open_for is not None
    assert 59 < seen[0].open_for <= 60
    assert await redis.client.hget(store.key, "state") == "closed"


async def test_a_trip_reaches_another_connection_by_notice(
    redis: RedisConnection, redis_url: str
) -> None:
    """Two 'processes' (two connections): a trip in one, the other rejects at once."""
    async with RedisConnection.from_url(redis_url) as other:
        a, svc_a = breaker(redis, sync_interval=30.0)
        b, svc_b = breaker(other, sync_interval=30.0)
        assert await call(svc_a, "ok") == "ok"
        assert await call(svc_b, "ok") == "ok"
        await anyio.sleep(0.05)  # subscribed
        assert await call(svc_a, "fail") == "Boom"
        await until(lambda: b.state is CircuitState.OPEN, within=1.0)
        assert await call(svc_b, "ok") == "rejected"
        a.force_closed()  # manual states are fleet-wide
        await until(lambda: b.state is CircuitState.DISABLED, within=1.0)
        assert await call(svc_b, "fail") == "Boom"


async def test_a_probe_outcome_of_an_older_generation_does_not_count(
    redis: RedisConnection,
) -> None:
    """A probe reported after its half-open period ended, and an old batch: dropped."""
    store = RedisBreakerStore(redis, name="b", probe_lease=60)
    b = layers.CircuitBreaker(
        on=Boom, store=store, **{**TRIP_AT_ONCE, "open_duration": 0.05, "probes": 1}
    )
    rules = b._core.fleet.rules  # type: ignore[union-attr]  # pyright: ignore[reportPrivateUsage, reportOptionalMemberAccess]
    old = layers.BreakerBatch(
        generation=0,
        calls=1,
        failures=1,
        slow=0,
        leading_failures=1,
        trailing_failures=1,
        longest_run=1,
    )
    opened = await store.report(rules, old)
    assert (opened.state, opened.generation) == (CircuitState.OPEN, 1)
    await anyio.sleep(0.06)
    probe = await store.take_probe(rules, "p1")
    assert probe.probe
    assert probe.state is CircuitState.HALF_OPEN
    reset = await store.set_state(rules, CircuitState.CLOSED)  # generation 3
    late = await store.report_probe(rules, "p1", "failure", False)
    assert (late.state, late.generation, late.probes_recorded) == (
        CircuitState.CLOSED,
        reset.generation,
        0,
    )
    again = await store.report(rules, old)  # the batch of generation 0
    assert (again.state, again.calls) == (CircuitState.CLOSED, 0)


async def test_a_trip_propagates_to_every_worker_process_within_100_ms(
    redis: RedisConnection, redis_url: str, workers: list[Worker], anyio_backend: str
) -> None:
    """4 processes (asyncio, trio) watch; 10 trips here: each reaches all of them.

    The delay is from just before the failing call here to the first
    rejection there (each worker calls every millisecond).
    """
    for backend in backends(anyio_backend, 4):
        workers.append(
            await spawn(
                url=redis_url,
                backend=backend,
                name="b",
                mode="watch",
                breaker=TRIP_AT_ONCE,
                store={"sync_interval": 30.0},
            )
        )
    for worker in workers:
        assert await worker.line() == "ready"
    b, svc = breaker(redis, sync_interval=30.0)
    assert await call(svc, "ok") == "ok"
    await anyio.sleep(0.1)  # subscriptions up
    delays: list[float] = []
    import time

    for _ in range(10):
        start = time.time()
        assert await call(svc, "fail") == "Boom"
        for worker in workers:
            word, at = (await worker.line(within=5)).split()
            assert word == "open"
            delays.append(float(at) - start)
        b.reset()
        for worker in workers:
            assert (await worker.line(within=5)).split()[0] == "closed"
        await anyio.sleep(0.01)
    delays.sort()
    p50 = statistics.median(delays)
    p99 = delays[min(len(delays) - 1, round(0.99 * len(delays)))]
    print(
        f"propagation over {len(delays)} samples: p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms"
    )
    assert p99 < 1.0  # the goal is 0.1 s; 10x for a busy test machine


async def test_the_fleet_sends_exactly_probes_probes(
    redis: RedisConnection, redis_url: str, workers: list[Worker], anyio_backend: str
) -> None:
    """3 processes x 4 tasks trip the fleet, then ask for probes: exactly 2 get one."""
    options = {**TRIP_AT_ONCE, "open_duration": 0.3, "probes": 2}
    for backend in backends(anyio_backend, 3):
        workers.append(
            await spawn(
                url=redis_url,
                backend=backend,
                name="p",
                mode="probe",
                tasks=4,
                hold=30.0,
                breaker=options,
                store={"sync_interval": 0.2},
            )
        )
    for worker in workers:
        assert await worker.line() == "ready"
    key = redis.key("breaker", "p")

    async def state() -> str:
        return str(await redis.client.hget(key, "state"))

    with anyio.fail_after(20):
        while await state() != "half_open":  # noqa: ASYNC110 (polls Redis)
            await anyio.sleep(0.01)
    await anyio.sleep(1.0)  # every process has asked meanwhile
    assert await state() == "half_open"
    assert int(await redis.client.get("p:half_open") or 0) == 2
    assert await redis.client.hget(key, "trips") == "1"  # late failures: dropped
    assert len(json.loads(str(await redis.client.hget(key, "probes")))) == 2


async def test_a_late_batch_of_an_old_generation_does_not_count(
    redis: RedisConnection, redis_url: str, workers: list[Worker], anyio_backend: str
) -> None:
    """A deaf process sends failures collected before a reset: they do not count."""
    worker = await spawn(
        url=redis_url,
        backend=anyio_backend,
        name="late",
        mode="late",
        deaf=True,
        tasks=3,
        hold=0.5,
        after=0.5,
        breaker=TRIP_AT_ONCE,
        store={"sync_interval": 30.0},
    )
    workers.append(worker)
    assert await worker.line() == "started"
    b, _ = breaker(redis, "late")
    b.reset()  # generation 1, while the worker's calls of generation 0 run
    store = RedisBreakerStore(redis, name="late")
    rules = b._core.fleet.rules  # pyright: ignore[reportPrivateUsage, reportOptionalMemberAccess]
    with anyio.fail_after(5):
        while (await store.read(rules)).generation != 1:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    assert await worker.line() == "done"  # its failures were sent (and dropped)
    view = await store.read(rules)
    assert (view.state, view.generation, view.calls) == (CircuitState.CLOSED, 1, 0)


async def test_a_process_that_missed_the_notice_converges_by_rereading(
    redis: RedisConnection, redis_url: str, workers: list[Worker], anyio_backend: str
) -> None:
    """A deaf worker learns of the trip at its next re-read (sync_interval 0.3 s)."""
    worker = await spawn(
        url=redis_url,
        backend=anyio_backend,
        name="deaf",
        mode="watch",
        deaf=True,
        breaker=TRIP_AT_ONCE,
        store={"sync_interval": 0.3},
    )
    workers.append(worker)
    assert await worker.line() == "ready"
    import time

    _, svc = breaker(redis, "deaf")
    start = time.time()
    assert await call(svc, "fail") == "Boom"
    word, at = (await worker.line(within=10)).split()
    assert word == "open"
    assert float(at) - start < 3.0  # 0.3 s and a round trip; 10x


# ----------------------------------------------------------- Redis fails


async def test_redis_killed_and_restarted_mid_run(
    own_redis_server: RedisServer,
) -> None:
    """Local fallback (StoreFailed) while Redis is down, then both rejoin the fleet."""
    url = own_redis_server.url
    async with (
        RedisConnection.from_url(url) as one,
        RedisConnection.from_url(url) as two,
    ):
        a, svc_a = breaker(one, min_calls=2, window_size=2, consecutive_failures=None)
        b, svc_b = breaker(two, min_calls=2, window_size=2, consecutive_failures=None)
        with capture_events(StoreFailed, StoreRecovered) as events:
            assert await call(svc_a, "ok") == "ok"
            assert await call(svc_b, "ok") == "ok"
            own_redis_server.stop()
            with anyio.fail_after(3):  # no call waits on the dead Redis
                assert await call(svc_a, "fail") == "Boom"  # sent at once: fails
                # b finds out at its next re-read (sync_interval)
                await until(lambda: len(events) == 2)
                assert [type(e) for e in events] == [StoreFailed, StoreFailed]
                # Each process decides locally now: a's breaker trips on its own.
                assert [await call(svc_a, "fail") for _ in range(3)] == [
                    "Boom",
                    "Boom",
                    "rejected",
                ]
                assert await call(svc_b, "ok") == "ok"
            assert a.statistics().store_fallbacks == 3
            assert b.statistics().store_fallbacks == 1
            assert a.state is CircuitState.OPEN
            assert b.state is CircuitState.CLOSED
            own_redis_server.start()  # empty: the fleet's state is made again
            await until(
                lambda: sum(isinstance(e, StoreRecovered) for e in events) == 2,
                within=15,
            )
            await until(lambda: a.state is CircuitState.CLOSED)  # the fleet's
            assert await call(svc_a, "ok") == "ok"
            # One fleet again: b's failures trip a.
            assert [await call(svc_b, "fail") for _ in range(2)] == ["Boom", "Boom"]
            await until(lambda: a.state is CircuitState.OPEN, within=2)
        kinds = [type(e) for e in events]
        assert kinds.count(StoreFailed) == 2
        assert kinds.count(StoreRecovered) == 2


async def test_every_step_and_the_subscription_fail_with_store_error() -> None:
    """Where no Redis listens: each step and subscribe() raise StoreError, quickly."""
    from redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    async with RedisConnection.from_url(url) as redis:
        store = RedisBreakerStore(redis, name="b")
        b = layers.CircuitBreaker(store=store)
        rules = b._core.fleet.rules  # type: ignore[union-attr]  # pyright: ignore[reportPrivateUsage, reportOptionalMemberAccess]
        with anyio.fail_after(5):
            for step in (
                store.read(rules),
                store.take_probe(rules, "p"),
                store.report_probe(rules, "p", "success", False),
                store.set_state(rules, CircuitState.FORCED_OPEN),
            ):
                with pytest.raises(layers.StoreError):
                    await step
            with pytest.raises(layers.StoreError, match="subscription"):
                async with store.subscribe():
                    pass


async def test_a_probe_cancelled_in_flight_gives_its_slot_back(
    redis: RedisConnection,
) -> None:
    """The one probe's call is cancelled: its slot is free in Redis, and reused."""
    b, _ = breaker(redis, open_duration=0.05, probes=1)

    async def inner(request: str) -> str:
        if request == "hang":
            await anyio.sleep_forever()
        return await service(request)

    svc = b.layer(inner)
    key = redis.key("breaker", "b")
    assert await call(svc, "fail") == "Boom"
    await anyio.sleep(0.1)  # the open period is over
    with anyio.move_on_after(0.3):
        await svc("hang")  # holds the fleet's only probe
    assert await redis.client.hget(key, "state") == "half_open"
    with anyio.fail_after(5):
        while await redis.client.hget(key, "probes") != "[]":  # noqa: ASYNC110
            await anyio.sleep(0.01)
    assert await call(svc, "ok") == "ok"  # the slot again: the probe closes it
    await until(lambda: b.state is CircuitState.CLOSED)
    assert await redis.client.hget(key, "state") == "closed"


async def test_a_dropped_subscription_is_made_again(
    redis: RedisConnection, redis_url: str, redis_server: RedisServer
) -> None:
    """The server drops the pub/sub connections: each process subscribes again."""
    async with RedisConnection.from_url(redis_url) as other:
        _, svc_a = breaker(redis, sync_interval=0.3)
        b, svc_b = breaker(other, sync_interval=0.3)
        assert await call(svc_a, "ok") == "ok"
        assert await call(svc_b, "ok") == "ok"
        channel = RedisBreakerStore(redis, name="b").channel

        async def subscribers() -> int:
            counts: Any = await redis.client.pubsub_numsub(channel)
            return int(counts[channel])

        with anyio.fail_after(5):
            while await subscribers() != 2:  # noqa: ASYNC110 (polls Redis)
                await anyio.sleep(0.01)
        assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub").startswith(b":")
        assert await subscribers() == 0
        with anyio.fail_after(5):  # after sync_interval, and a re-read
            while await subscribers() != 2:  # noqa: ASYNC110 (polls Redis)
                await anyio.sleep(0.01)
        assert await call(svc_a, "fail") == "Boom"
        await until(lambda: b.state is CircuitState.OPEN, within=1.0)


# ------------------------------------------------------------- idle expiry


def rules_of(b: layers.CircuitBreaker) -> layers.BreakerRules:
    """The rules a shared breaker sends with every step."""
    fleet = b._core.fleet  # pyright: ignore[reportPrivateUsage]
    assert fleet is not None
    return fleet.rules


async def test_an_idle_record_expires_and_reads_as_a_fresh_closed_breaker(
    redis_url: str,
) -> None:
    """Kept while a process re-reads it, gone idle_ttl after the last left, then new."""
    options: dict[str, Any] = {
        "on": Boom,
        "window_size": 10,
        "min_calls": 10,
        "consecutive_failures": None,
    }

    def shared(
        redis: RedisConnection,
    ) -> tuple[layers.CircuitBreaker, RedisBreakerStore]:
        store = RedisBreakerStore(redis, name="idle", sync_interval=0.2, idle_ttl=0.6)
        return layers.CircuitBreaker(store=store, **options), store

    async with RedisConnection.from_url(redis_url) as redis:
        b, store = shared(redis)
        svc = b.layer(service)
        assert [await call(svc, r) for r in ("ok", "fail", "fail")] == [
            "ok",
            "Boom",
            "Boom",
        ]
        key = store.key
        before = await store.read(rules_of(b))
        with anyio.fail_after(5):
            while before.calls < 3:  # the batch is sent within a bucket
                await anyio.sleep(0.05)
                before = await store.read(rules_of(b))
        assert 0 < await redis.client.pttl(key) <= 600
        await anyio.sleep(1.5)  # idle, but the process re-reads every 0.2 s
        assert await redis.client.exists([key]) == 1
        assert 0 < await redis.client.pttl(key) <= 600
    # the last process is gone: the record leaves Redis within idle_ttl
    async with RedisConnection.from_url(redis_url) as redis:
        with anyio.fail_after(5):
            while await redis.client.exists([key]):  # noqa: ASYNC110 (polls Redis)
                await anyio.sleep(0.05)
        b, store = shared(redis)
        view = await store.read(rules_of(b))
        assert (view.state, view.generation, view.calls, view.failures) == (
            CircuitState.CLOSED,
            0,
            0,
            0,
        )
        assert view.epoch != before.epoch
        assert await call(b.layer(service), "ok") == "ok"
        assert b.state is CircuitState.CLOSED


async def test_the_record_outlives_an_open_period_and_a_manual_state(
    redis: RedisConnection,
) -> None:
    """The TTL never cuts an open period or a time window short; manual states stay."""
    store = RedisBreakerStore(redis, name="ttl", sync_interval=0.2, idle_ttl=0.5)
    b = layers.CircuitBreaker(on=Boom, store=store, **TRIP_AT_ONCE)
    svc = b.layer(service)
    key = store.key
    assert await call(svc, "ok") == "ok"
    assert 0 < await redis.client.pttl(key) <= 500
    assert await call(svc, "fail") == "Boom"  # trips: open for 60 s
    await until(lambda: b.state is CircuitState.OPEN)
    assert 59_000 < await redis.client.pttl(key) <= 60_000
    b.force_open()
    with anyio.fail_after(5):
        while await redis.client.pttl(key) != -1:  # noqa: ASYNC110 (polls Redis)
            await anyio.sleep(0.01)
    await anyio.sleep(0.8)  # longer than idle_ttl: a manual state holds
    assert await redis.client.hget(key, "state") == "forced_open"
    b.reset()
    with anyio.fail_after(5):
        while await redis.client.pttl(key) == -1:  # noqa: ASYNC110 (polls Redis)
            await anyio.sleep(0.01)
    assert 0 < await redis.client.pttl(key) <= 500
    timed = RedisBreakerStore(redis, name="timed", sync_interval=0.2, idle_ttl=0.5)
    window = layers.CircuitBreaker(
        store=timed, window_type="time", window_size=30
    ).layer(service)
    assert await call(window, "ok") == "ok"
    assert 29_000 < await redis.client.pttl(timed.key) <= 30_000
