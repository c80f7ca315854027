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

Virtual time: trio's ``MockClock(autojump_threshold=0)`` or looptime's
asyncio loop, so 5,000 calls of ~10 ms take about a second of real time.
"""

from __future__ import annotations

import argparse
import math
import random

import anyio
import attrs

import layers

FAST = 0.010
"""The downstream's usual latency, seconds."""
SPREAD = 0.2
"""The usual latency varies by +- this fraction (uniform)."""
SLOW_FACTOR = 20
SLOW_SHARE = 0.01


@attrs.frozen
class Result:
    """What one run measured."""

    calls: int
    downstream_calls: int
    p50: float
    p99: float
    p999: float

    @property
    def extra_calls(self) -> float:
        """Downstream calls beyond one per client call, as a share of the calls."""
        return self.downstream_calls / self.calls - 1


def percentile(latencies: list[float], p: float) -> float:
    """The latency that the slowest ``1 - p`` of *latencies* reach."""
    ordered = sorted(latencies)
    rank = math.ceil((1 - p) * len(ordered) - 1e-9)  # from the slow end
    return ordered[len(ordered) - max(rank, 1)]


async def simulate(*, hedged: bool, calls: int = 5000, seed: int = 1) -> Result:
    """Run the model on the current (virtual) clock; see the module docstring."""
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
    if hedged:
        svc = layers.Hedge(quantile=0.95).layer(service)
    latencies: list[float] = []
    for number in range(calls):
        start = anyio.current_time()
        await svc(number)
        latencies.append(anyio.current_time() - start)
    downstream = sum(copies)
    return Result(
        calls=calls,
        downstream_calls=downstream,
        p50=percentile(latencies, 0.5),
        p99=percentile(latencies, 0.99),
        p999=percentile(latencies, 0.999),
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
