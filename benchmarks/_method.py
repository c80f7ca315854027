"""The method the benchmark scripts share (see benchmarks/README.md, "Method").

Each case is timed as a tight loop of awaits inside one coroutine, with
``time.perf_counter_ns()`` around the loop and the garbage collector off;
the cases run round-robin, one loop each per round, so that drift hits them
all alike. The scripts report medians over the rounds.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import anyio
import anyio.lowlevel

BACKENDS = ("asyncio", "uvloop", "trio")

Case = Callable[[Any], Awaitable[Any]]


def run(backend: str, main: Callable[[], Awaitable[Any]]) -> Any:
    """``anyio.run(main)`` on *backend* (``"uvloop"``: asyncio with uvloop)."""
    if backend == "uvloop":
        return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    return anyio.run(main, backend=backend)


def versions(dists: Iterable[str]) -> str:
    """``"name version"`` of each distribution, or that it is not installed."""
    from importlib import metadata

    found = []
    for dist in dists:
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} (not installed)")
    return ", ".join(found)


async def timed_loop(case: Case, calls: int) -> int:
    """Await ``case(i)`` *calls* times; return the elapsed nanoseconds."""
    clock = time.perf_counter_ns
    start = clock()
    for i in range(calls):
        await case(i)
    return clock() - start


async def time_case(case: Case, calls: int) -> int:
    """:func:`timed_loop`, the collector off, after one turn of the event loop.

    The timing loop never yields, and asyncio's timer heap and trio's
    deadline heap only drop the entries of finished calls (cancelled timer
    handles, exited cancel scopes) when the loop runs; otherwise they would
    pile up over the rounds.
    """
    await anyio.lowlevel.checkpoint()
    gc.collect()
    gc.disable()
    try:
        return await timed_loop(case, calls)
    finally:
        gc.enable()


async def interleave(
    cases: dict[str, Case],
    rounds: int,
    calls: int,
    warmup: int,
    around: Callable[[str], AbstractContextManager[object]] | None = None,
) -> dict[str, list[float]]:
    """Ns per call of each case in each recorded round, timed round-robin.

    Each loop runs inside ``around(name)``, if given: the setting a case
    needs. (A context manager, not a wrapper coroutine: the timing loop
    stays at the same depth of the stack for every script and case.)
    """
    samples: dict[str, list[float]] = {name: [] for name in cases}
    # move everything alive now out of the collector's sight, so that the
    # gc.collect() before each timing loop is cheap
    gc.collect()
    gc.freeze()
    try:
        for round_ in range(warmup + rounds):
            for name, case in cases.items():
                with nullcontext() if around is None else around(name):
                    elapsed = await time_case(case, calls)
                if round_ >= warmup:
                    samples[name].append(elapsed / calls)
    finally:
        gc.unfreeze()
    return samples
