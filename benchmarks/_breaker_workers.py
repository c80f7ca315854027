"""The worker processes of bench_redis.py's breaker part: one shared breaker.

``python _breaker_workers.py '<spec as JSON>'``, with the protocol of
``_redis_workers.py`` (warm up, print ``ready``, read ``go <start>``, run
from ``start`` for ``seconds``, print ``result <JSON>``). Every worker
starts its own event loop (``backend``) and makes a ``CircuitBreaker``
with the spec's ``options`` and, with ``store`` true, a
``RedisBreakerStore`` named ``name``. With ``runs`` (a list of specs'
overrides), it does one run after another, each on a connection of its
own, the k-th starting at ``start + k x (seconds + GAP)``; the result
holds one entry per run in ``runs``. Two kinds:

* ``breaker-load``: calls the breaker at ``rate`` calls per second (``rate
  / 100`` calls every 10 ms) for the run; every ``fail_every``-th call
  (if given) raises ``ConnectionError``, a failure. The result holds the
  calls made, the CPU time of the process in the run, and the store's
  steps (one script, one round trip each) by name, counted in the run.
  With ``server_stats``, the worker also reads the server's ``INFO
  commandstats`` as the run starts and as it ends (one ``INFO`` each);
  every worker goes on calling for a moment after the run, uncounted, so
  that no other worker's leaving is in those figures.
* ``breaker-observer``: calls the breaker every ``interval`` seconds; the
  inner service raises ``KeyError``, which the breaker ignores (not an
  outcome), so the observer does not move the fleet's window. The result
  holds the ``time.time()`` of every call rejected right after an
  admitted one: when this process started rejecting.
"""

from __future__ import annotations

import collections
import faulthandler
import json
import sys
import time
from typing import Any

from _redis_workers import _ready, _result

GAP = 1.5  # seconds between two runs of a worker (a new connection, a join)
LINGER = 0.3  # seconds a load worker goes on calling after a run, uncounted


def _breaker(spec: dict[str, Any], store: Any) -> Any:
    import layers

    options = dict(spec.get("options", {}))
    if spec["kind"] == "breaker-observer":
        options["ignore"] = KeyError
    return layers.CircuitBreaker(**options, store=store)


async def _server_stats(redis: Any) -> dict[str, int]:
    info = await redis.client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in info.items()
        if isinstance(value, dict) and "calls" in value
    }


async def _worker(spec: dict[str, Any]) -> None:
    import anyio

    from layers.events import StoreFailed
    from layers.redis import RedisBreakerStore, RedisConnection
    from layers.testing import capture_events

    steps: collections.Counter[str] = collections.Counter()

    class CountingStore(RedisBreakerStore):
        """Counts its steps (each one EVALSHA) for the cross-check."""

        async def _step(self, step: str, *args: Any, **kwargs: Any) -> Any:
            steps[step] += 1
            return await super()._step(step, *args, **kwargs)

    runs: list[dict[str, Any]] = spec.get("runs") or [{}]
    seconds: float = spec["seconds"]
    start: float | None = None
    results: list[dict[str, Any]] = []
    for index, overrides in enumerate(runs):
        run = {**spec, **overrides}
        # A connection per run: the breaker's background work ends with it.
        async with RedisConnection.from_url(spec["url"]) as redis:
            store = CountingStore(redis, name=run["name"]) if run["store"] else None
            breaker = _breaker(run, store)
            service = breaker.layer(_inner(run))
            # Join the fleet (the first call reads the state and subscribes).
            await _call(service, None)
            await anyio.sleep(0.2)
            if start is None:
                start = _ready()
            begin = start + index * (seconds + GAP)
            end = begin + seconds
            await anyio.sleep(max(0.0, begin - time.time()))
            with capture_events(StoreFailed) as outages:
                before = dict(steps)
                cpu = time.process_time()
                stats = await _server_stats(redis) if run.get("server_stats") else None
                if run["kind"] == "breaker-load":
                    extra = await _load(run, service, end)
                else:
                    extra = await _observe(run, service, end)
                result: dict[str, Any] = {
                    "cpu": time.process_time() - cpu,
                    "steps": {k: v - before.get(k, 0) for k, v in steps.items()},
                    **extra,
                }
                if stats is not None:
                    after = await _server_stats(redis)
                    result["server"] = {
                        k: v - stats.get(k, 0)
                        for k, v in after.items()
                        if v > stats.get(k, 0)
                    }
                if run["kind"] == "breaker-load":
                    # Go on calling (uncounted) while one worker reads the
                    # server's figures, so that no process leaving
                    # (UNSUBSCRIBE) or joining the next run is in them.
                    await _load(run, service, end + LINGER)
            result["fallbacks"] = breaker.statistics().store_fallbacks
            result["outages"] = len(outages)
            fleet = breaker._core.fleet  # (private: why it fell back, for the report)
            if fleet is not None and fleet.last_error is not None:
                error = fleet.last_error
                result["last_error"] = f"{error} ({type(error.__cause__).__name__})"
            results.append(result)
    _result({"runs": results})


def _inner(spec: dict[str, Any]) -> Any:
    fail_every: int | None = spec.get("fail_every")
    count = 0

    if spec["kind"] == "breaker-observer":

        async def ignored(x: Any) -> Any:
            raise KeyError(x)

        return ignored

    async def inner(x: Any) -> Any:
        nonlocal count
        count += 1
        if fail_every and count % fail_every == 0:
            raise ConnectionError("a failure")
        return x

    return inner


async def _call(service: Any, x: Any) -> str:
    """``"admitted"`` or ``"rejected"``."""
    import layers

    try:
        await service(x)
    except (ConnectionError, KeyError):
        return "admitted"
    except layers.CircuitOpen:
        return "rejected"
    return "admitted"


async def _load(spec: dict[str, Any], service: Any, end: float) -> dict[str, Any]:
    import anyio

    import layers

    tick = 0.01
    per_tick = max(1, round(spec["rate"] * tick))
    calls = rejected = 0
    due = time.time()
    while time.time() < end:
        for i in range(per_tick):
            try:
                await service(i)
            except ConnectionError:
                pass
            except layers.CircuitOpen:
                rejected += 1
        calls += per_tick
        due += tick
        await anyio.sleep(max(0.0, due - time.time()))
    return {"calls": calls, "rejected": rejected}


async def _observe(spec: dict[str, Any], service: Any, end: float) -> dict[str, Any]:
    import anyio

    interval: float = spec["interval"]
    stamps: list[float] = []
    rejecting = False
    calls = 0
    while time.time() < end:
        verdict = await _call(service, None)
        calls += 1
        if verdict == "rejected":
            if not rejecting:
                stamps.append(time.time())
            rejecting = True
        else:
            rejecting = False
        await anyio.sleep(interval)
    return {"calls": calls, "stamps": stamps}


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    runs = len(spec.get("runs") or [{}])
    faulthandler.dump_traceback_later((spec["seconds"] + GAP) * runs + 60, exit=True)
    import anyio

    anyio.run(_worker, spec, backend=spec.get("backend", "asyncio"))


if __name__ == "__main__":
    main()
