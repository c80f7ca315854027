"""RateLimit and ConcurrencyLimit under load: contention, accuracy, scale.

Run::

    python benchmarks/bench_limits.py [--backend asyncio|uvloop|trio|all]
                                      [--part contention|accuracy|coarse|
                                              cancel|scale|all]
                                      [--rounds N]

Five parts, each on real time (these are measurements of the event loop
under load, so they cannot run on a virtual clock):

* **contention**: 1,000 tasks each make 20 calls through a limit of 10
  concurrent calls; the inner call yields once (``checkpoint()``). Timed:
  no limit, ``anyio.Semaphore(10)``, ``ConcurrencyLimit(10)``, round-robin
  for ``--rounds`` rounds; the figure is the median wall time, also as a
  ratio to the unlimited run. Goal: ``ConcurrencyLimit`` takes at most the
  time ``anyio.Semaphore`` takes.
* **accuracy**: ``RateLimit(2000, 1.0, burst=20)`` in wait mode, 200
  concurrent callers calling in a loop for 2 s of real time. The admission
  times (the loop's clock, read in the inner service) are counted. Goals:
  the calls admitted within the 2 s are within 1 % of what the schedule
  allows (2 s x 2,000 + 20 = 4,020), and no 10 ms window (closed, at any
  offset) holds more than ``burst + rate x 10 ms + 1 = 41`` admissions.
* **coarse**: the same setting with ``burst=1`` at 2,000/s and 20,000/s,
  beside ``burst = 1 + rate x 2 ms`` and ``rate x 10 ms``: the admitted
  rate as a share of the configured one. The event loops sleep in whole
  milliseconds (epoll's timeout; uvloop's clock), and ``burst=1`` leaves no
  tolerance for a late wake-up, so such a limit admits less than its rate.
  Goal: never more than the schedule allows (``d x rate + burst``, +1 %).
  The shares are reported (see the README for what they mean).
* **cancel**: ``CANCELLED`` calls wait in a ``ConcurrencyLimit(1)`` (and in
  a ``RateLimit`` of 1 per hour), then all are cancelled, newest first or
  oldest first; the loop time from the first cancellation until every
  call has left. Goal: newest-first takes at most 1.5x oldest-first (a
  queue that searched for each cancelled waiter took 5x and more).
* **scale**: the success-path cost of each layer and of the primitives
  people use instead, as a ratio to a bare ``await f(x)``, with the method
  of bench_core.py (tight loops of 10,000 calls, round-robin, medians).
  Goal, on asyncio and trio: each layer at most 4x. (uvloop's clock is
  read through ``get_running_loop()``, a system call on Python 3.11.)

The script exits with status 1 when a goal fails.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import statistics
import sys
import time
from typing import Any

import anyio
import anyio.lowlevel
from _method import BACKENDS, Case, interleave, run

import layers


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ------------------------------------------------------------------ contention

TASKS = 1_000
CALLS = 20
LIMIT = 10


async def inner(x: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return x


async def drive(case: Case) -> float:
    """TASKS tasks x CALLS calls of *case*; return the wall time in seconds."""

    async def worker(i: int) -> None:
        for j in range(CALLS):
            await case(j)

    gc.collect()
    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for i in range(TASKS):
            group.start_soon(worker, i)
    return time.perf_counter() - start


def contention_cases() -> dict[str, Case]:
    semaphore = anyio.Semaphore(LIMIT)

    async def with_semaphore(x: Any) -> Any:
        async with semaphore:
            return await inner(x)

    limit = layers.ConcurrencyLimit(LIMIT)
    limited = limit.layer(inner)
    return {
        "no limit": inner,
        f"anyio.Semaphore({LIMIT})": with_semaphore,
        f"ConcurrencyLimit({LIMIT})": limited,
    }


async def contention(rounds: int) -> bool:
    cases = contention_cases()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(rounds + 1):
        for name, case in cases.items():
            elapsed = await drive(case)
            if round_:  # the first round warms up
                samples[name].append(elapsed)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    base = medians["no limit"]
    print(f"contention: {TASKS} tasks x {CALLS} calls, limit {LIMIT}, {rounds} rounds")
    for name, value in medians.items():
        print(f"  {name:<24} {value * 1e3:8.1f} ms  {value / base:5.2f}x")
    ours = medians[f"ConcurrencyLimit({LIMIT})"]
    theirs = medians[f"anyio.Semaphore({LIMIT})"]
    ok = ours <= theirs
    print(
        f"  goal ConcurrencyLimit <= anyio.Semaphore: {ours / base:.2f}x vs "
        f"{theirs / base:.2f}x  {verdict(ok)}"
    )
    return ok


# ------------------------------------------------------------------ accuracy

RATE = 2_000
BURST = 20
CALLERS = 200
DURATION = 2.0
WINDOW = 0.010


async def accuracy() -> bool:
    admitted: list[float] = []
    clock = anyio.current_time

    async def record(x: Any) -> Any:
        admitted.append(clock())
        return x

    svc = layers.RateLimit(RATE, 1.0, burst=BURST).layer(record)

    async def caller() -> None:
        while True:
            await svc(None)

    start = clock()
    with anyio.move_on_after(DURATION):
        async with anyio.create_task_group() as group:
            for _ in range(CALLERS):
                group.start_soon(caller)
    end = start + DURATION
    times = [t for t in admitted if t <= end]
    allowed = DURATION * RATE + BURST
    error = (len(times) - allowed) / allowed
    worst = 0
    for i, t in enumerate(times):
        worst = max(worst, bisect.bisect_right(times, t + WINDOW, lo=i) - i)
    limit = BURST + int(RATE * WINDOW) + 1
    first = bisect.bisect_right(times, start + WINDOW)
    ok_count = abs(error) <= 0.01
    ok_window = worst <= limit
    print(
        f"accuracy: RateLimit({RATE}/s, burst={BURST}), {CALLERS} callers, "
        f"{DURATION:g} s"
    )
    print(
        f"  admitted {len(times)} of {allowed:.0f} allowed ({error:+.2%}); "
        f"goal within 1 %  {verdict(ok_count)}"
    )
    print(
        f"  busiest 10 ms window: {worst} (first 10 ms: {first}); goal <= {limit}  "
        f"{verdict(ok_window)}"
    )
    return ok_count and ok_window


# ------------------------------------------------------------------ coarse

COARSE_RATES = (2_000, 20_000)
COARSE_DURATION = 2.0


async def admitted_share(rate: int, burst: int) -> tuple[int, float, float]:
    """CALLERS callers for COARSE_DURATION s: (admitted, allowed, real seconds)."""
    admitted = 0

    async def record(x: Any) -> Any:
        nonlocal admitted
        admitted += 1
        return x

    svc = layers.RateLimit(rate, 1.0, burst=burst).layer(record)

    async def caller() -> None:
        while True:
            await svc(None)

    gc.collect()
    start = time.perf_counter()
    with anyio.move_on_after(COARSE_DURATION):
        async with anyio.create_task_group() as group:
            for _ in range(CALLERS):
                group.start_soon(caller)
    real = time.perf_counter() - start
    return admitted, real * rate + burst, real


async def coarse() -> bool:
    print(
        f"coarse: RateLimit(rate, burst) in wait mode, {CALLERS} callers, "
        f"{COARSE_DURATION:g} s each"
    )
    ok = True
    for rate in COARSE_RATES:
        for burst in (1, 1 + rate * 2 // 1000, rate * 10 // 1000):
            admitted, allowed, real = await admitted_share(rate, burst)
            share = admitted / (real * rate)
            fits = admitted <= allowed * 1.01
            ok = ok and fits
            print(
                f"  {rate:>6}/s burst={burst:<4} admitted {admitted:>6} in "
                f"{real:.2f} s: {share:6.1%} of the rate  "
                f"(goal <= schedule {verdict(fits)})"
            )
    return ok


# ------------------------------------------------------------------ cancel

CANCELLED = 24_000


async def cancel_time(make: Any, newest_first: bool) -> float:
    """Seconds from the first cancel until CANCELLED waiters have all left."""
    limited, waiting, hold = make()
    scopes = [anyio.CancelScope() for _ in range(CANCELLED)]

    async def waiter(scope: anyio.CancelScope) -> None:
        with scope:
            await limited(None)

    release = anyio.Event()
    async with anyio.create_task_group() as outer:
        outer.start_soon(hold, release)
        await anyio.sleep(0.01)
        async with anyio.create_task_group() as group:
            for scope in scopes:
                group.start_soon(waiter, scope)
            while waiting() < CANCELLED:  # noqa: ASYNC110 (polling is the point)
                await anyio.sleep(0.001)
            gc.collect()
            start = time.perf_counter()
            for scope in reversed(scopes) if newest_first else scopes:
                scope.cancel()
        elapsed = time.perf_counter() - start
        assert waiting() == 0
        release.set()
    return elapsed


def concurrency_case() -> tuple[Any, Any, Any]:
    limit = layers.ConcurrencyLimit(1)

    async def blocked(release: anyio.Event) -> None:
        await release.wait()

    svc = limit.layer(blocked)

    async def hold(release: anyio.Event) -> None:
        await svc(release)

    async def call(_: Any) -> None:
        await svc(anyio.Event())

    return call, lambda: limit.statistics().waiting, hold


def rate_case() -> tuple[Any, Any, Any]:
    limit = layers.RateLimit(1, 3600.0)
    svc = limit.layer(f)

    async def hold(release: anyio.Event) -> None:
        await svc(None)  # takes the hour's only call

    return svc, lambda: limit.statistics().waiting, hold


async def cancel(rounds: int) -> bool:
    print(f"cancel: {CANCELLED} waiters cancelled at once, {rounds} rounds")
    ok = True
    for name, make in (
        ("ConcurrencyLimit(1)", concurrency_case),
        ("RateLimit(1, 3600.0)", rate_case),
    ):
        samples: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            for newest_first in (True, False):
                samples[newest_first].append(await cancel_time(make, newest_first))
        newest = statistics.median(samples[True])
        oldest = statistics.median(samples[False])
        ratio = newest / oldest
        fits = ratio <= 1.5
        ok = ok and fits
        print(
            f"  {name:<22} newest first {newest * 1e3:7.1f} ms, oldest first "
            f"{oldest * 1e3:7.1f} ms: {ratio:.2f}x  goal <= 1.5x {verdict(fits)}"
        )
    return ok


# ------------------------------------------------------------------ scale


async def f(x: Any) -> Any:
    return x


def scale_cases(backend: str) -> dict[str, Case]:
    capacity = anyio.CapacityLimiter(10)
    anyio_semaphore = anyio.Semaphore(10)

    async def with_capacity_limiter(x: Any) -> Any:
        async with capacity:
            return await f(x)

    async def with_anyio_semaphore(x: Any) -> Any:
        async with anyio_semaphore:
            return await f(x)

    cases: dict[str, Case] = {
        "bare await f(x)": f,
        # a huge burst: uvloop's clock stands still while the loop runs
        "RateLimit(never limited)": layers.RateLimit(1e12, burst=10**9).layer(f),
        "ConcurrencyLimit(10)": layers.ConcurrencyLimit(10).layer(f),
        "RateLimit(key=..., never limited)": layers.RateLimit(
            1e12, burst=10**9, key=lambda x: x & 7
        ).layer(f),
    }
    if backend == "trio":
        import trio

        trio_semaphore = trio.Semaphore(10)

        async def with_trio_semaphore(x: Any) -> Any:
            async with trio_semaphore:
                return await f(x)

        cases["trio.Semaphore(10)"] = with_trio_semaphore
    else:
        import asyncio

        asyncio_semaphore = asyncio.Semaphore(10)

        async def with_asyncio_semaphore(x: Any) -> Any:
            async with asyncio_semaphore:
                return await f(x)

        cases["asyncio.Semaphore(10)"] = with_asyncio_semaphore
    cases["anyio.Semaphore(10)"] = with_anyio_semaphore
    cases["anyio.CapacityLimiter(10)"] = with_capacity_limiter
    return cases


async def scale(backend: str, rounds: int) -> bool:
    cases = scale_cases(backend)
    calls = 10_000
    samples = await interleave(cases, rounds, calls, warmup=3)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    bare = medians["bare await f(x)"]
    print(f"scale: success path, {rounds} rounds x {calls} calls")
    for name, value in medians.items():
        print(f"  {name:<34} {value:7.0f} ns  {value / bare:6.1f}x")
    ok = True
    for name in ("RateLimit(never limited)", "ConcurrencyLimit(10)"):
        ratio = medians[name] / bare
        if backend == "uvloop":  # the goal is for asyncio and trio
            print(f"  {name}: {ratio:.2f}x (uvloop: not a goal)")
            continue
        ok = ok and ratio <= 4.0
        print(f"  goal {name} <= 4x: {ratio:.2f}x  {verdict(ratio <= 4.0)}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument(
        "--part",
        choices=("contention", "accuracy", "coarse", "cancel", "scale", "all"),
        default="all",
    )
    parser.add_argument("--rounds", type=int, default=7, help="recorded rounds")
    args = parser.parse_args(argv)
    layers.set_logging(False)  # the waits would be logged, and cost time
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    parts = (
        ("contention", "accuracy", "coarse", "cancel", "scale")
        if args.part == "all"
        else (args.part,)
    )
    print(f"python {sys.version.split()[0]} ({sys.executable})")
    passed = True
    for backend in backends:
        print(f"\n== backend: {backend} ==")
        for part in parts:
            if part == "contention":
                ok = run(backend, lambda: contention(args.rounds))
            elif part == "accuracy":
                ok = run(backend, accuracy)
            elif part == "coarse":
                ok = run(backend, coarse)
            elif part == "cancel":
                ok = run(backend, lambda: cancel(max(1, args.rounds // 2)))
            else:
                ok = run(backend, lambda b=backend: scale(b, max(args.rounds, 20)))
            passed = passed and ok
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
