"""One circuit breaker for 4 processes, through Redis.

A payments API goes down for a second. Four worker processes (each with
its own event loop, as uvicorn or gunicorn workers would be) call it every
20 ms through the same ``CircuitBreaker`` with a ``RedisBreakerStore``:

* the breaker trips after 10 failures in a row **across the fleet** (each
  process sends its outcomes in batches, at once when a trip is near), in
  one script on Redis that publishes the new state;
* every process hears of it and rejects its calls locally, without calling
  the API, until the open period ends;
* then the fleet sends exactly ``probes=2`` trial calls, whichever
  processes make them; while the API is still down they fail and the
  breaker opens again (for longer), and once it is back they close the
  breaker for everyone.

Each process prints what it saw; the last lines say how many calls the
API got while it was down (4 processes with a breaker each would have
sent it at least 4 x 10 = 40 to trip) and whether the fleet behaved. The
script exits with status 1 if it did not.

Run it (needs the ``redis`` extra, ``pip install -e '.[redis,trio]'``)::

    python examples/fleet_breaker.py                     # asyncio
    python examples/fleet_breaker.py --backend trio      # every worker on trio
    python examples/fleet_breaker.py --redis-url redis://127.0.0.1:6379/0

Without ``--redis-url`` it starts a ``redis-server`` of its own (as
``shared_quota.py`` does), and stops it at the end. A run takes about 4 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
import uuid
from contextlib import nullcontext
from typing import Any

import anyio
from shared_quota import redis_server

import layers
from layers.redis import RedisBreakerStore, RedisConnection

PROCESSES = 4
IN_A_ROW = 10  # failures in a row that trip the breaker, across the fleet
PROBES = 2
PACE = 0.02  # seconds between two calls of a process
DOWN = (0.5, 1.5)  # seconds after the start when the API is down
SECONDS = 3.0


class PaymentsApi:
    """Down between DOWN[0] and DOWN[1]; counts the calls it got meanwhile in Redis."""

    def __init__(self, redis: RedisConnection, run: str) -> None:
        self.client = redis.client
        self.key = f"example:payments_calls_while_down:{run}"
        self.start = float("inf")  # set when the fleet starts

    async def __call__(self, request: int) -> str:
        elapsed = time.time() - self.start
        if DOWN[0] <= elapsed < DOWN[1]:
            await self.client.incr(self.key)
            await self.client.expire(self.key, 60)
            raise ConnectionError("payments API down")
        return f"paid #{request}"


async def worker(url: str, run: str) -> dict[str, Any]:
    """One process of the fleet: call the API every PACE s; what it saw."""
    async with RedisConnection.from_url(url) as redis:
        breaker = layers.CircuitBreaker(
            name="payments",
            consecutive_failures=IN_A_ROW,
            open_duration=0.5,
            open_duration_growth=2,  # 0.5 s, then 1 s
            probes=PROBES,
            store=RedisBreakerStore(redis, name=f"payments-{run}"),
        )
        api = PaymentsApi(redis, run)
        client = breaker.layer(api)
        # Open a connection (no timeout on this first one), then one call
        # joins the fleet (reads its state, subscribes to its notices)
        # before the start. Then the fleet starts at the same instant,
        # given by the parent.
        await redis.client.ping()
        await client(0)
        print("ready", flush=True)
        start = api.start = float(sys.stdin.readline())
        seen: list[str] = []  # the states this process went through
        counts = {"ok": 0, "failed": 0, "rejected": 0}
        await anyio.sleep(max(0.0, start - time.time()))
        request = 0
        while time.time() < start + SECONDS:
            request += 1
            try:
                await client(request)
                counts["ok"] += 1
            except ConnectionError:
                counts["failed"] += 1
            except layers.CircuitOpen:
                counts["rejected"] += 1
            state = breaker.state.value
            if not seen or seen[-1] != state:
                seen.append(state)
            await anyio.sleep(PACE)
        return {
            **counts,
            "states": seen,
            "final": breaker.state.value,
            "local": breaker.statistics().store_fallbacks,
        }


def run_fleet(url: str, backend: str) -> bool:
    """Start the workers together, print what each saw; whether the fleet behaved."""
    run = uuid.uuid4().hex[:8]  # a fresh breaker and counter for each run
    command = [sys.executable, __file__, "--worker", "--redis-url", url]
    command += ["--backend", backend, "--run", run]
    workers = [
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(PROCESSES)
    ]
    results: list[dict[str, Any]] = []
    try:
        for process in workers:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                print(f"a worker did not start (exit code {process.wait()})")
                return False
        start = time.time() + 0.2
        for process in workers:
            assert process.stdin is not None
            process.stdin.write(f"{start!r}\n")
            process.stdin.close()
        for process in workers:
            assert process.stdout is not None
            output = process.stdout.read()
            process.wait(timeout=SECONDS + 30)
            if process.returncode != 0:
                print(f"a worker failed (exit code {process.returncode})")
                return False
            results.append(json.loads(output.splitlines()[-1]))
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
    for index, result in enumerate(results, 1):
        print(
            f"  process {index}: {result['ok']} ok, {result['failed']} failed, "
            f"{result['rejected']} rejected; states: {' -> '.join(result['states'])}"
            + (
                f"; {result['local']} calls decided locally (Redis did not answer)"
                if result["local"]
                else ""
            )
        )
    down_calls = anyio.run(count_down_calls, url, run)
    print(
        f"  calls the API got while down: {down_calls} (one breaker per process: "
        f"at least {PROCESSES} x {IN_A_ROW} = {PROCESSES * IN_A_ROW} to trip them all)"
    )
    everyone_tripped = all(r["rejected"] > 0 and "open" in r["states"] for r in results)
    everyone_closed = all(r["final"] == "closed" for r in results)
    ok = everyone_tripped and everyone_closed and down_calls < PROCESSES * IN_A_ROW
    if ok:
        print("  OK: one trip stopped every process, and the probes closed it for all")
    else:
        print("  NOT AS EXPECTED: see the states above")
    return ok


async def count_down_calls(url: str, run: str) -> int:
    async with RedisConnection.from_url(url) as redis:
        value = await redis.client.get(f"example:payments_calls_while_down:{run}")
        return int(value or 0)


def cli() -> int:
    parser = argparse.ArgumentParser(description="One breaker for many processes.")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--redis-url", help="a Redis to use (default: start one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    layers.set_logging(False)  # keep the output to what this script prints

    if args.worker:
        result = anyio.run(worker, args.redis_url, args.run, backend=args.backend)
        print(json.dumps(result), flush=True)
        return 0

    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        print("trio is not installed: pip install -e '.[trio]'")
        return 1
    server = redis_server() if args.redis_url is None else nullcontext(args.redis_url)
    with server as url:
        print(f"== {args.backend} ==")
        ok = run_fleet(url, args.backend)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(cli())
