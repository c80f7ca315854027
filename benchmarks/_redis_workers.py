"""The worker processes of bench_redis.py: one limit shared through Redis.

``python _redis_workers.py '<spec as JSON>'``. A worker connects, warms up
(its scripts loaded, its connections open), prints ``ready``, then reads
``go <start>`` from its standard input (``start``: a ``time.time()``
instant, the same for the whole fleet), calls through its limit from
``start`` for ``seconds`` with ``tasks`` concurrent tasks, and prints one
line ``result <JSON>``. Every worker starts its own event loop.

This module imports only the standard library at the top, so that the
peers can run it from a venv of their own (``limits`` pins ``coredis < 6``,
which ``layers.redis`` cannot share a venv with). Each kind imports what it
needs:

* ``layers-rate``: ``RateLimit`` (wait mode) with a ``RedisRateLimitStore``
  (``lease``: lease mode), on ``backend`` (asyncio or trio);
* ``layers-concurrency``: ``ConcurrencyLimit`` with a
  ``RedisConcurrencyStore``; each call holds its permit ``hold`` seconds and
  reports when it entered and left (``time.monotonic()``, one clock for
  every process of the machine);
* ``layers-hog``: takes every permit of a ``ConcurrencyLimit`` and keeps
  them (bench_redis.py kills it with SIGKILL);
* ``limits-moving`` / ``limits-fixed``: ``limits``' async moving-window and
  fixed-window strategies on its async Redis storage (coredis); a refused
  call sleeps until the reset time the storage reports, then tries again;
* ``pyrate-log`` / ``pyrate-gcra``: pyrate-limiter's ``RedisBucket`` (a
  sliding log in a sorted set) and its ``StateBucket(GCRA)`` with a
  ``RedisStateStore``, on redis-py's asyncio client, blocking acquire (the
  limiter waits and retries itself);
* ``floor-coredis`` / ``floor-redispy``: no limit, one EVALSHA of a
  trivial script per call on coredis's or redis-py's asyncio client: what
  one round trip costs each client.

A result holds ``admitted`` (calls admitted within the run) and, with
``record``, ``stamps`` (their ``time.time()``, read as the inner call
starts) or ``intervals`` (concurrency).
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any


def _ready() -> float:
    """Say ready, wait for the fleet's start instant; return it."""
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        raise SystemExit(f"expected 'go <start>', got {line!r}")
    return float(line[1])


def _result(result: dict[str, Any]) -> None:
    print("result " + json.dumps(result), flush=True)


class Tally:
    """What the inner service saw: admissions within [start, end)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.record: bool = spec.get("record", True)
        self.start = 0.0
        self.end = 0.0
        self.admitted = 0
        self.stamps: list[float] = []

    def window(self, start: float, seconds: float) -> None:
        self.start = start
        self.end = start + seconds
        self.cpu = time.process_time()

    def admit(self) -> None:
        now = time.time()
        if self.start <= now < self.end:
            self.admitted += 1
            if self.record:
                self.stamps.append(now)

    def result(self, **extra: Any) -> dict[str, Any]:
        return {
            "admitted": self.admitted,
            "stamps": self.stamps,
            "cpu": time.process_time() - self.cpu,  # this process's, in the run
            **extra,
        }


# --------------------------------------------------------------------- layers


async def _layers_rate(spec: dict[str, Any]) -> None:
    import anyio

    import layers
    from layers.redis import RedisConnection, RedisRateLimitStore

    tally = Tally(spec)
    lease = spec.get("lease")
    server_stamps: list[float] = []

    async def inner(x: Any) -> Any:
        tally.admit()
        return x

    class Stamping(RedisRateLimitStore):  # type: ignore[misc]
        """The store, noting the server's time of each permit it was granted.

        The script's own ``TIME``, as it decided the take: the limit's
        schedule, free of the workers' scheduling (a lease's permits are
        all stamped when the lease was taken).
        """

        async def take(self, key: Any, cost: float, *args: Any, **kw: Any) -> Any:
            granted, wait, now = await self._take(
                key,
                cost,
                *args,
                kw.get("up_to"),
                kw.get("waited", False),
                kw.get("patience", 0.0),
            )
            if granted and not wait and tally.record:
                server_stamps.extend([now + 1_700_000_000] * int(granted))
            return granted, wait

    async with RedisConnection.from_url(spec["url"]) as redis:

        def limit(name: str) -> layers.RateLimit:
            store = Stamping(redis, name=name, lease=lease)
            return layers.RateLimit(spec["rate"], burst=spec["burst"], store=store)

        quota = limit(spec["name"])
        warm = limit(spec["name"] + "-warm").layer(inner)
        for _ in range(3):
            await warm(0)
        limited = quota.layer(inner)

        start = _ready()
        tally.window(start, spec["seconds"])
        await anyio.sleep(max(0.0, start - time.time()))

        refused = 0

        async def caller() -> None:
            nonlocal refused
            while True:
                try:
                    await limited(None)
                except layers.StoreUnavailable:
                    # A command timed out (the connection's 0.25 s), or the
                    # guard is open: counted, and reported by bench_redis.py.
                    refused += 1
                    await anyio.sleep(0.001)

        with anyio.move_on_after(max(0.0, tally.end - time.time())):
            async with anyio.create_task_group() as group:
                for _ in range(spec["tasks"]):
                    group.start_soon(caller)
        stats = quota.statistics()
        _result(
            tally.result(
                waited=stats.waited,
                fallbacks=getattr(stats, "store_fallbacks", 0),
                refused=refused,
                # the permits granted within the run's window, by Redis's clock
                server_stamps=[t for t in server_stamps if start <= t < tally.end],
            )
        )


async def _layers_concurrency(spec: dict[str, Any]) -> None:
    import anyio

    import layers
    from layers.redis import RedisConcurrencyStore, RedisConnection

    intervals: list[tuple[float, float]] = []
    hold: float = spec["hold"]
    window = [0.0, 0.0]

    async def inner(x: Any) -> Any:
        entered = time.monotonic()
        try:
            await anyio.sleep(hold)
        finally:
            left = time.monotonic()
            if window[0] <= entered < window[1]:
                intervals.append((entered, left))
        return x

    async with RedisConnection.from_url(spec["url"]) as redis:

        def limit(name: str) -> layers.ConcurrencyLimit:
            store = RedisConcurrencyStore(
                redis, name=name, lease_ttl=spec.get("lease_ttl", 10.0)
            )
            return layers.ConcurrencyLimit(spec["limit"], store=store)

        warm = limit(spec["name"] + "-warm").layer(inner)
        for _ in range(2):
            await warm(0)
        intervals.clear()
        limited = limit(spec["name"]).layer(inner)

        start = _ready()
        seconds: float = spec["seconds"]
        # Intervals are on the monotonic clock (shared by every process).
        window[0] = time.monotonic() + (start - time.time())
        window[1] = window[0] + seconds
        await anyio.sleep(max(0.0, start - time.time()))

        async def caller() -> None:
            while True:
                await limited(None)

        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as group:
                for _ in range(spec["tasks"]):
                    group.start_soon(caller)
        _result({"admitted": len(intervals), "intervals": intervals})


async def _layers_hog(spec: dict[str, Any]) -> None:
    import anyio

    import layers
    from layers.redis import RedisConcurrencyStore, RedisConnection

    async with RedisConnection.from_url(spec["url"]) as redis:
        store = RedisConcurrencyStore(
            redis, name=spec["name"], lease_ttl=spec["lease_ttl"]
        )
        limit = layers.ConcurrencyLimit(spec["limit"], store=store)
        held = 0
        all_held = anyio.Event()

        async def inner(x: Any) -> Any:
            nonlocal held
            held += 1
            if held == spec["limit"]:
                all_held.set()
            await anyio.sleep_forever()
            return x

        limited = limit.layer(inner)
        async with anyio.create_task_group() as group:
            for _ in range(spec["limit"]):
                group.start_soon(limited, None)
            await all_held.wait()
            print("held", flush=True)
            # Killed with SIGKILL from here on: nothing is given back.


# ---------------------------------------------------------------------- peers


async def _asyncio_run(
    spec: dict[str, Any], call: Callable[[], Awaitable[None]], tally: Tally
) -> None:
    """Warm up, then *tasks* tasks calling *call* in a loop for the run."""
    import asyncio

    start = _ready()
    tally.window(start, spec["seconds"])
    await asyncio.sleep(max(0.0, start - time.time()))

    async def caller() -> None:
        while True:
            await call()

    tasks = [asyncio.create_task(caller()) for _ in range(spec["tasks"])]
    await asyncio.sleep(max(0.0, tally.end - time.time()))
    # Report and leave without cancelling the callers: cancelled in the
    # middle of a command, a peer's client sometimes waited for ever (seen
    # with pyrate-limiter on redis-py), and the count is taken already.
    _result(tally.result())
    os._exit(0 if tasks else 1)  # (the list keeps the tasks alive until here)


async def _limits(spec: dict[str, Any]) -> None:
    import asyncio

    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import (
        FixedWindowRateLimiter,
        MovingWindowRateLimiter,
    )

    tally = Tally(spec)
    storage = RedisStorage("async+" + spec["url"])
    strategy = {
        "limits-moving": MovingWindowRateLimiter,
        "limits-fixed": FixedWindowRateLimiter,
    }[spec["kind"]]
    limiter = strategy(storage)
    item = RateLimitItemPerSecond(int(spec["rate"]))
    warm = RateLimitItemPerSecond(1000)
    for _ in range(3):
        await limiter.hit(warm, spec["name"] + "-warm")
        await limiter.get_window_stats(warm, spec["name"] + "-warm")

    async def call() -> None:
        # No waiting mode: a refused call sleeps until the window's reset.
        while not await limiter.hit(item, spec["name"]):
            stats = await limiter.get_window_stats(item, spec["name"])
            await asyncio.sleep(max(0.001, stats.reset_time - time.time()))
        tally.admit()

    await _asyncio_run(spec, call, tally)


async def _pyrate(spec: dict[str, Any]) -> None:
    from pyrate_limiter import (
        GCRA,
        Duration,
        Limiter,
        Rate,
        RedisBucket,
        RedisStateStore,
        StateBucket,
    )
    from redis.asyncio import Redis

    tally = Tally(spec)
    client = Redis.from_url(spec["url"])
    rate = int(spec["rate"])

    async def bucket(name: str) -> Any:
        if spec["kind"] == "pyrate-log":
            return await RedisBucket.init(
                [Rate(rate, Duration.SECOND)], client, "pyrate:" + name
            )
        return StateBucket(
            [Rate(rate, Duration.SECOND, burst=int(spec["burst"]))],
            GCRA(),
            RedisStateStore(client, "pyrate:" + name),
        )

    warm = Limiter(await bucket(spec["name"] + "-warm"))
    for _ in range(3):
        await warm.try_acquire_async("bench")
    limiter = Limiter(await bucket(spec["name"]))

    async def call() -> None:
        while not await limiter.try_acquire_async("bench", blocking=True):
            pass
        tally.admit()

    await _asyncio_run(spec, call, tally)


async def _floor(spec: dict[str, Any]) -> None:
    """No limit: one EVALSHA of ``return 1`` per call, the floor of a client."""
    tally = Tally(spec)
    if spec["kind"] == "floor-coredis":
        import coredis
        from coredis.retry import NoRetryPolicy

        client: Any = coredis.Redis.from_url(
            spec["url"], decode_responses=True, retry_policy=NoRetryPolicy()
        )
        async with client:
            script = client.register_script("return 1")

            async def call() -> None:
                await script(keys=["floor"], args=[], client=client)
                tally.admit()

            await call()
            await _asyncio_run(spec, call, tally)
        return
    from redis.asyncio import Redis

    client = Redis.from_url(spec["url"])
    script = client.register_script("return 1")

    async def call_redispy() -> None:
        await script(keys=["floor"], args=[])
        tally.admit()

    await call_redispy()
    await _asyncio_run(spec, call_redispy, tally)


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    # A worker that hangs prints where, and exits (bench_redis.py reports it).
    faulthandler.dump_traceback_later(spec.get("seconds", 0) + 60, exit=True)
    kind: str = spec["kind"]
    if kind.startswith("layers-"):
        import anyio

        runner = {
            "layers-rate": _layers_rate,
            "layers-concurrency": _layers_concurrency,
            "layers-hog": _layers_hog,
        }[kind]
        anyio.run(runner, spec, backend=spec.get("backend", "asyncio"))
        return
    import asyncio

    runner = {"limits": _limits, "pyrate": _pyrate, "floor": _floor}[kind.split("-")[0]]
    asyncio.run(runner(spec))


if __name__ == "__main__":
    main()
