"""A worker process for tests/test_redis_concurrency.py: one shared ConcurrencyLimit.

Run as ``python redis_concurrency_worker.py '<json options>'``. Each worker
has its own event loop (``backend``: asyncio or trio) and its own
connection, and shares the limit ``name`` on ``url`` with the other workers.
The inner call counts itself in Redis (``INCR`` of ``<name>:gauge``, the
highest value kept in ``<name>:peak``), so the test reads the most calls in
flight across the fleet. Modes:

* ``load``: ``tasks`` tasks make ``calls`` calls each, each holding its
  permit ``hold`` seconds; prints ``done <calls admitted>``.
* ``hold``: ``tasks`` calls take a permit each and keep it; prints
  ``held`` once they all have one (the test then kills the process).
* ``release``: one call holds a permit ``hold`` seconds; prints ``held``,
  then ``released <time.time()>`` once the call has returned.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anyio

import layers
from layers.redis import RedisConcurrencyStore, RedisConnection

GAUGE = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], n)
end
return n
"""


async def main(options: dict[str, Any]) -> None:
    """Run the worker's mode (see the module docs)."""
    name = options["name"]
    # Cold processes on a busy test machine: more than the default timeout.
    timeout = options.get("timeout", 0.5)
    async with RedisConnection.from_url(options["url"], timeout=timeout) as redis:
        store = RedisConcurrencyStore(
            redis, name=name, lease_ttl=options.get("lease_ttl", 10.0)
        )
        limit = layers.ConcurrencyLimit(options["limit"], store=store)
        gauge = redis.client.register_script(GAUGE)
        hold = float(options.get("hold", 0.0))
        mode = options["mode"]
        taken = 0
        everyone = anyio.Event()
        first = anyio.Event()

        async def inner(_: None) -> None:
            nonlocal taken
            await gauge(keys=[f"{name}:gauge", f"{name}:peak"])
            try:
                taken += 1
                first.set()
                if mode == "hold":
                    if taken == options["tasks"]:
                        everyone.set()
                    await anyio.sleep_forever()
                await anyio.sleep(hold)
            finally:
                with anyio.CancelScope(shield=True):
                    await redis.client.decr(f"{name}:gauge")

        service = limit.layer(inner)

        if mode == "release":
            async with anyio.create_task_group() as group:
                group.start_soon(service, None)
                await first.wait()
                print("held", flush=True)
            print(f"released {time.time()!r}", flush=True)
            return

        async def worker() -> None:
            for _ in range(options.get("calls", 1)):
                await service(None)

        async with anyio.create_task_group() as group:
            for _ in range(options["tasks"]):
                group.start_soon(worker)
            if mode == "hold":
                await everyone.wait()
                print("held", flush=True)
        print(f"done {taken}", flush=True)


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    anyio.run(main, settings, backend=settings["backend"])
