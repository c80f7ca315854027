"""One quota and one concurrency limit shared by 4 processes, through Redis.

A partner API allows 200 calls per second and 5 calls in flight, whatever
number of processes the application runs. Here 4 worker processes (each
with its own event loop, as uvicorn or gunicorn workers would be) call it
as fast as they can for a few seconds through the same stack, outermost
first:

1. ``RateLimit(200, burst=10)`` with a ``RedisRateLimitStore``: one GCRA
   schedule in Redis for the whole fleet, updated by one atomic script on
   the server's clock; a call that must wait sleeps its turn (wait mode);
2. ``ConcurrencyLimit(5)`` with a ``RedisConcurrencyStore``: at most 5
   permits for the fleet, each a lease that the holder renews, so the
   permits of a process that dies come back by themselves.

The fake partner API counts its calls in flight in Redis (INCR on the way
in, DECR on the way out), as the partner would see them. Each process
prints its calls, its rate and the most calls it had in flight; the
aggregate says whether the fleet kept to the quota (at most
``200 x seconds + 10`` calls) and to the limit (never more than 5 in
flight). The script exits with status 1 if it did not.

Run it (needs the ``redis`` extra, ``pip install -e '.[redis,trio]'``)::

    python examples/shared_quota.py                     # asyncio
    python examples/shared_quota.py --backend trio      # every worker on trio
    python examples/shared_quota.py --redis-url redis://127.0.0.1:6379/0

Without ``--redis-url`` it starts a ``redis-server`` of its own (Debian:
``apt-get install redis-server``) on a free port in a temporary directory,
and stops it at the end. A run takes about 4 s (3 s of calls).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Generator
from contextlib import contextmanager, nullcontext
from typing import Any

import anyio
from coredis.exceptions import RedisError

import layers
from layers.redis import RedisConcurrencyStore, RedisConnection, RedisRateLimitStore

RATE = 200  # calls per second, for the whole fleet
BURST = 10
MAX_IN_FLIGHT = 5  # for the whole fleet
CALL_TIME = 0.005  # seconds the partner takes to answer
TASKS = 10  # concurrent callers per process


class PartnerApi:
    """The partner: 5 ms a call; counts the fleet's calls in flight in Redis."""

    def __init__(self, redis: RedisConnection, run: str) -> None:
        self.client = redis.client
        self.key = f"example:partner_in_flight:{run}"
        self.start = self.end = 0.0
        self.calls = 0  # calls that came in between start and end
        self.in_flight = 0  # this process's, now
        self.most_here = 0  # this process's high-water mark
        self.most_fleet = 0  # the fleet's, as the partner counted it

    async def __call__(self, request: int) -> str:
        fleet = await self.client.incr(self.key)
        self.in_flight += 1
        try:
            if self.start <= time.time() < self.end:
                self.calls += 1
            self.most_here = max(self.most_here, self.in_flight)
            self.most_fleet = max(self.most_fleet, fleet)
            await anyio.sleep(CALL_TIME)
            return f"200 #{request}"
        finally:
            self.in_flight -= 1
            with anyio.CancelScope(shield=True):
                await self.client.decr(self.key)


async def worker(url: str, run: str, seconds: float) -> dict[str, Any]:
    """One process of the fleet: call the partner for *seconds*; what it saw."""
    async with RedisConnection.from_url(url) as redis:
        quota = layers.RateLimit(
            RATE,
            burst=BURST,
            store=RedisRateLimitStore(redis, name="partner_api"),
            name="partner_quota",
        )
        pool = layers.ConcurrencyLimit(
            MAX_IN_FLIGHT,
            store=RedisConcurrencyStore(redis, name="partner_pool"),
            name="partner_pool",
        )
        partner = PartnerApi(redis, run)
        client = layers.ServiceBuilder().layer(quota).layer(pool).service(partner)

        # One call to load the scripts and open a connection before the start
        # (outside the counted window). Then the fleet starts at the same
        # instant, given by the parent.
        await client(-1)
        print("ready", flush=True)
        partner.start = float(sys.stdin.readline())
        partner.end = partner.start + seconds
        await anyio.sleep(max(0.0, partner.start - time.time()))

        refused = 0

        async def caller(task: int) -> None:
            nonlocal refused
            request = task
            while True:
                try:
                    await client(request)
                except layers.StoreUnavailable:
                    # Redis did not answer in time (the connection's timeout)
                    # and the limits fail closed: the call was refused.
                    refused += 1
                    await anyio.sleep(0.01)
                request += TASKS

        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as group:
                for task in range(TASKS):
                    group.start_soon(caller, task)
        await redis.client.expire(partner.key, 60)  # the counter is back at 0
        return {
            "calls": partner.calls,
            "most_here": partner.most_here,
            "most_fleet": partner.most_fleet,
            "refused": refused,
        }


def run_fleet(url: str, backend: str, processes: int, seconds: float) -> bool:
    """Start the workers together, print what each saw; whether the fleet kept."""
    run = uuid.uuid4().hex[:8]  # a fresh in-flight counter for each run
    command = [sys.executable, __file__, "--worker", "--redis-url", url]
    command += ["--backend", backend, "--seconds", str(seconds), "--run", run]
    workers = [
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
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
            if process.wait(timeout=seconds + 30) != 0:
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
            f"  process {index}: {result['calls']} calls, "
            f"{result['calls'] / seconds:.1f}/s, "
            f"at most {result['most_here']} in flight here"
        )
    calls: int = sum(result["calls"] for result in results)
    allowed = RATE * seconds + BURST
    most: int = max(result["most_fleet"] for result in results)
    refused: int = sum(result["refused"] for result in results)
    print(
        f"  all {processes}: {calls} calls in {seconds:g} s = {calls / seconds:.1f}/s "
        f"(quota {RATE}/s, burst {BURST}: at most {allowed:.0f} calls)"
    )
    print(f"  in flight across the fleet: at most {most} (limit {MAX_IN_FLIGHT})")
    if refused:
        print(f"  calls refused while Redis did not answer (fail closed): {refused}")
    kept = calls <= allowed and most <= MAX_IN_FLIGHT
    if kept:
        print("  OK: the fleet kept to the quota and to the concurrency limit")
    else:
        print("  LIMIT BROKEN: the fleet went over the quota or the limit")
    return kept


@contextmanager
def redis_server() -> Generator[str]:
    """A throwaway redis-server on a free port in a temporary directory: its URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit(
            "redis-server is not on the PATH: install it (Debian: "
            "apt-get install redis-server) or give --redis-url"
        )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="shared-quota-") as directory:
        # No persistence: the quota's state is worth nothing after the run.
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        server = subprocess.Popen(
            [executable, "--port", str(port), "--dir", directory, *options],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_ping(port, server)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(timeout=20)


def wait_for_ping(
    port: int, server: subprocess.Popen[bytes], timeout: float = 20
) -> None:
    give_up = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < give_up:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"redis-server did not start on port {port}")


def positive(kind: type[int] | type[float]) -> Any:
    """An argparse type: a finite number > 0 of *kind*."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
        return value

    return parse


async def answers(url: str) -> bool:
    """Whether the Redis at *url* answers a PING within 2 s."""
    async with RedisConnection.from_url(url) as redis:
        with anyio.move_on_after(2):
            try:
                await redis.client.ping()
            except (OSError, RedisError):
                return False
            return True
    return False


def cli() -> int:
    parser = argparse.ArgumentParser(description="Share a quota across processes.")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--redis-url", help="a Redis to use (default: start one)")
    parser.add_argument("--processes", type=positive(int), default=4)
    parser.add_argument("--seconds", type=positive(float), default=3.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    layers.set_logging(False)  # keep the output to what this script prints

    if args.worker:
        result = anyio.run(
            worker, args.redis_url, args.run, args.seconds, backend=args.backend
        )
        print(json.dumps(result), flush=True)
        return 0

    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        print("trio is not installed: pip install -e '.[trio]'")
        return 1
    if args.redis_url is not None and not anyio.run(answers, args.redis_url):
        print(f"Redis at {args.redis_url} does not answer: is it running?")
        return 1
    server = redis_server() if args.redis_url is None else nullcontext(args.redis_url)
    with server as url:
        print(f"== {args.backend} ==")
        kept = run_fleet(url, args.backend, args.processes, args.seconds)
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(cli())
