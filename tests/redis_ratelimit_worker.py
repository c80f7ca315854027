"""A worker process for tests/test_redis_ratelimit.py: several share one limit.

Run as ``python redis_ratelimit_worker.py URL NAME BACKEND RATE BURST LEASE
TASKS DURATION``. It connects, builds ``RateLimit(RATE, burst=BURST)`` in
wait mode on a ``RedisRateLimitStore`` named NAME (LEASE ``0``: exact), prints
``ready``, reads the start time (``time.time()``) from stdin, runs TASKS tasks
that call the limited service until DURATION seconds after it, and prints
one JSON line: the wall-clock time of each admitted call, the server's time
of each take that was granted (each admitted call, in exact mode), and the
store's round trips.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Hashable

import anyio

import layers
from layers.redis import RedisConnection, RedisRateLimitStore


class RecordingStore(RedisRateLimitStore):
    """The store, recording the server's time of each granted take."""

    granted: list[float]

    async def take(
        self,
        key: Hashable,
        cost: float,
        interval: float,
        tolerance: float,
        /,
        *,
        up_to: float | None = None,
        waited: bool = False,
        patience: float = 0.0,
    ) -> tuple[float, float]:
        """Take, and note the server's time if granted."""
        granted, wait, now = await self._take(
            key, cost, interval, tolerance, up_to, waited, patience
        )
        if granted:
            self.granted.append(now)
        return granted, wait


async def main(
    url: str,
    name: str,
    rate: float,
    burst: int,
    lease: int | None,
    tasks: int,
    duration: float,
) -> None:
    """Share the limit with the other workers from the start time on."""
    async with RedisConnection.from_url(url, timeout=1.0) as redis:
        store = RecordingStore(redis, name=name, lease=lease)
        store.granted = []
        limit = layers.RateLimit(rate, burst=burst, store=store)
        stamps: list[float] = []

        async def record(_: None) -> None:
            stamps.append(time.time())

        service = limit.layer(record)
        print("ready", flush=True)
        start = float(await anyio.to_thread.run_sync(sys.stdin.readline))
        await anyio.sleep(max(0.0, start - time.time()))
        end = start + duration

        async def caller() -> None:
            while time.time() < end:
                await service(None)

        async with anyio.create_task_group() as group:
            for _ in range(tasks):
                group.start_soon(caller)
        report = {
            "stamps": stamps,
            "granted": store.granted,
            "round_trips": store.round_trips,
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    url, name, backend, rate, burst, lease, tasks, duration = sys.argv[1:]
    anyio.run(
        main,
        url,
        name,
        float(rate),
        int(burst),
        int(lease) or None,
        int(tasks),
        float(duration),
        backend=backend,
    )
