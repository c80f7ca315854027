"""A worker process for tests/test_redis_breaker.py: one shared CircuitBreaker.

Run as ``python redis_breaker_worker.py '<json options>'``. Each worker has
its own event loop (``backend``: asyncio or trio) and its own connection,
and shares the breaker ``name`` on ``url`` (options ``breaker``, store
options ``store``) with the other workers. With ``deaf``, the worker's
store drops every notice (a process that misses the messages: only the
periodic re-read tells it). Modes:

* ``watch``: one task calls the breaker every millisecond (an inner
  service that succeeds); prints ``ready`` once it has joined the fleet,
  then ``open <time.time()>`` when its calls start being rejected and
  ``closed <time.time()>`` when they are let through again.
* ``probe``: ``tasks`` tasks call in a loop. The inner service counts each
  call in Redis by the breaker's state (``INCR <name>:<state>``); a closed
  call fails at once, a half-open one (a probe) hangs ``hold`` seconds and
  succeeds. Prints ``ready`` at start.
* ``late``: ``tasks`` calls are admitted, print ``started``, hang ``hold``
  seconds and fail; prints ``done`` ``after`` seconds later.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio

import layers
from layers.redis import RedisBreakerStore, RedisConnection


class Boom(Exception):
    """The inner service's failure."""


class DeafStore(RedisBreakerStore):
    """A store whose subscription hears nothing."""

    @contextlib.asynccontextmanager
    async def _deaf(self) -> AsyncGenerator[AsyncIterator[layers.BreakerView]]:
        async with super().subscribe() as notices:
            yield self._nothing(notices)

    async def _nothing(
        self, notices: AsyncIterator[layers.BreakerView]
    ) -> AsyncIterator[layers.BreakerView]:
        async for _ in notices:
            pass
        if False:  # an async generator that yields nothing
            yield

    def subscribe(self) -> Any:
        return self._deaf()


async def main(options: dict[str, Any]) -> None:
    """Run the worker's mode (see the module docs)."""
    name = options["name"]
    mode = options["mode"]
    async with RedisConnection.from_url(options["url"], timeout=2.0) as redis:
        kind = DeafStore if options.get("deaf") else RedisBreakerStore
        store = kind(redis, name=name, **options.get("store", {}))
        breaker = layers.CircuitBreaker(on=Boom, store=store, **options["breaker"])
        hold = float(options.get("hold", 0.0))

        if mode == "watch":

            async def ok(_: None) -> None:
                pass

            service = breaker.layer(ok)
            await service(None)
            print("ready", flush=True)
            rejecting = False
            while True:
                try:
                    await service(None)
                except layers.CircuitOpen:
                    if not rejecting:
                        rejecting = True
                        print(f"open {time.time()!r}", flush=True)
                else:
                    if rejecting:
                        rejecting = False
                        print(f"closed {time.time()!r}", flush=True)
                await anyio.sleep(0.001)

        if mode == "probe":

            async def counted(_: None) -> None:
                state = breaker.state
                await redis.client.incr(f"{name}:{state.value}")
                if state is layers.CircuitState.HALF_OPEN:
                    await anyio.sleep(hold)
                    return
                raise Boom

            service = breaker.layer(counted)

            async def caller() -> None:
                while True:
                    with contextlib.suppress(Boom, layers.CircuitOpen):
                        await service(None)
                    await anyio.sleep(0.005)

            print("ready", flush=True)
            async with anyio.create_task_group() as group:
                for _ in range(options["tasks"]):
                    group.start_soon(caller)

        if mode == "late":
            started = 0
            everyone = anyio.Event()

            async def slow_failure(_: None) -> None:
                nonlocal started
                started += 1
                if started == options["tasks"]:
                    everyone.set()
                await anyio.sleep(hold)
                raise Boom

            service = breaker.layer(slow_failure)

            async def one() -> None:
                with contextlib.suppress(Boom):
                    await service(None)

            async with anyio.create_task_group() as group:
                for _ in range(options["tasks"]):
                    group.start_soon(one)
                await everyone.wait()
                print("started", flush=True)
            await anyio.sleep(options["after"])
            print("done", flush=True)


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    anyio.run(main, settings, backend=settings["backend"])
