"""Hedging against a heavy tail, on virtual time: "The Tail at Scale" in small.

Run::

    python benchmarks/sim_hedge.py [--calls N] [--seed S] [--backend asyncio|trio]

A model downstream answers in 10 ms +- 20 % (uniform), and 1 % of calls
(chosen at random, exactly 1 % of the original requests; a hedged copy is
slow with probability 1 %) take 20x as long. A client calls it
sequentially, ``--calls`` times, once plain and once through
``Hedge(quantile=0.95)`` (one hedge, the default budget). Printed: the
client's p50, p99 and p99.9 latency each way, how many times p99 fell, and
the extra calls hedging sent. The p-th percentile is the latency that the
slowest ``1 - p`` of calls reach (the ``ceil((1 - p) x n)``-th slowest).

The issue's goal: hedging at the p95 delay cuts p99 by at least 5x with at
most 6 % extra calls. tests/test_hedge.py runs :func:`simulate` and checks it.

:func:`simulate` also records the run over time: each call's latency and
when it ended, and per interval of virtual time (:class:`Interval`, 5 s by
default) the p50 and p99 of the calls that ended in it, the downstream
calls they made and the hedge's delay; ``sim_overload.py --scenario
hedge`` draws them (docs/explanation/img/sim_hedge.png).

Virtual time: trio's ``MockClock(autojump_threshold=0)`` or looptime's
asyncio loop, so 5,000 calls of ~10 ms take about a second of real time.
"""

from __future__ import annotations

import argparse
import math
import random
from typing import final

import anyio
import attrs

import layers

FAST = 0.010
"""The downstream's usual latency, seconds."""
SPREAD = 0.2
"""The usual latency varies by +- this fraction (uniform)."""
SLOW_FACTOR = 20
SLOW_SHARE = 0.01


@final
@attrs.frozen(kw_only=True)
class Interval:
    """The calls of a :func:`simulate` run that ended in one interval of time.

    Attributes:
        start: The interval's start, seconds from the run's start.
        calls: Client calls that ended in it.
        downstream_calls: The downstream calls those calls made (the
            original requests and their hedges).
        p50: Their median latency, seconds (nan without calls).
        p99: Their p99 latency, seconds (nan without calls).
        delay: The hedge's delay in force at the interval's end, seconds
            (``None`` without hedging, or before the hedge had enough
            samples).
    """

    start: float
    calls: int
    downstream_calls: int
    p50: float
    p99: float
    delay: float | None

    @property
    def extra_calls(self) -> float:
        """Downstream calls beyond one per client call, as a share of the calls."""
        return self.downstream_calls / self.calls - 1 if self.calls else 0.0


@attrs.frozen
class Result:
    """What one run measured.

    Attributes:
        calls: Client calls.
        downstream_calls: Downstream calls (the originals and their hedges).
        p50: The client's median latency, seconds.
        p99: The client's p99 latency, seconds.
        p999: The client's p99.9 latency, seconds.
        latencies: Each call's latency, seconds, in the order they were made.
        ended: When each call ended, seconds from the run's start.
        intervals: The run over time (:class:`Interval`).
        interval: The intervals' length, seconds.
    """

    calls: int
    downstream_calls: int
    p50: float
    p99: float
    p999: float
    latencies: tuple[float, ...] = attrs.field(default=(), repr=False)
    ended: tuple[float, ...] = attrs.field(default=(), repr=False)
    intervals: tuple[Interval, ...] = attrs.field(default=(), repr=False)
    interval: float = 5.0

    @property
    def extra_calls(self) -> float:
        """Downstream calls beyond one per client call, as a share of the calls."""
        return self.downstream_calls / self.calls - 1


def percentile(latencies: list[float], p: float) -> float:
    """The latency that the slowest ``1 - p`` of *latencies* reach (nan if none)."""
    if not latencies:
        return math.nan
    ordered = sorted(latencies)
    rank = math.ceil((1 - p) * len(ordered) - 1e-9)  # from the slow end
    return ordered[len(ordered) - max(rank, 1)]


async def simulate(
    *, hedged: bool, calls: int = 5000, seed: int = 1, interval: float = 5.0
) -> Result:
    """Run the model on the current (virtual) clock; see the module docstring.

    *interval* is the length of each :class:`Interval`, in seconds.
    """
    rng = random.Random(seed)
    slow_calls = set(rng.sample(range(calls), round(calls * SLOW_SHARE)))
    copies = [0] * calls

    async def service(request: int) -> int:
        copies[request] += 1
        if copies[request] == 1:  # the original request
            slow = request in slow_calls
        else:
            slow = rng.random() < SLOW_SHARE
        latency = FAST * rng.uniform(1 - SPREAD, 1 + SPREAD)
        await anyio.sleep(latency * SLOW_FACTOR if slow else latency)
        return request

    svc: layers.Service[int, int] = service
    hedge = layers.Hedge(quantile=0.95) if hedged else None
    if hedge is not None:
        svc = hedge.layer(service)
    latencies: list[float] = []
    ended: list[float] = []
    delays: list[float | None] = []  # the hedge's delay at each interval's end
    began = anyio.current_time()
    for number in range(calls):
        start = anyio.current_time()
        await svc(number)
        now = anyio.current_time()
        latencies.append(now - start)
        ended.append(now - began)
        while len(delays) < (now - began) // interval:  # an interval ended
            delays.append(None if hedge is None else hedge.statistics().delay)
    delays.append(None if hedge is None else hedge.statistics().delay)
    downstream = sum(copies)
    return Result(
        calls=calls,
        downstream_calls=downstream,
        p50=percentile(latencies, 0.5),
        p99=percentile(latencies, 0.99),
        p999=percentile(latencies, 0.999),
        latencies=tuple(latencies),
        ended=tuple(ended),
        intervals=_intervals(latencies, ended, copies, delays, interval),
        interval=interval,
    )


def _intervals(
    latencies: list[float],
    ended: list[float],
    copies: list[int],
    delays: list[float | None],
    interval: float,
) -> tuple[Interval, ...]:
    """Group the calls by the interval they ended in (*copies* read at the end)."""
    groups: list[list[int]] = [[] for _ in delays]
    for number, end in enumerate(ended):
        groups[int(end // interval)].append(number)
    return tuple(
        Interval(
            start=index * interval,
            calls=len(group),
            downstream_calls=sum(copies[number] for number in group),
            p50=percentile([latencies[number] for number in group], 0.5),
            p99=percentile([latencies[number] for number in group], 0.99),
            delay=delays[index],
        )
        for index, group in enumerate(groups)
    )


def main() -> None:
    """Print the figures for both runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="trio")
    args = parser.parse_args()

    async def both() -> tuple[Result, Result]:
        plain = await simulate(hedged=False, calls=args.calls, seed=args.seed)
        hedged = await simulate(hedged=True, calls=args.calls, seed=args.seed)
        return plain, hedged

    if args.backend == "trio":
        import trio.testing

        options = {"clock": trio.testing.MockClock(autojump_threshold=0)}
    else:
        import looptime

        options = {"loop_factory": lambda: looptime.new_event_loop(start=0.0)}
    plain, hedged = anyio.run(both, backend=args.backend, backend_options=options)
    for label, result in (("plain", plain), ("hedge p95", hedged)):
        ms = [f"{p * 1000:6.1f} ms" for p in (result.p50, result.p99, result.p999)]
        print(
            f"{label:>10}: p50 {ms[0]}  p99 {ms[1]}  p99.9 {ms[2]}"
            f"  extra calls {result.extra_calls:6.2%}"
        )
    print(
        f"p99 {plain.p99 / hedged.p99:.1f}x lower with {hedged.extra_calls:.2%} extra "
        f"calls (goal: >= 5x, <= 6 %)"
    )


if __name__ == "__main__":
    main()
