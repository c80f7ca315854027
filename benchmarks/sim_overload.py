"""Overload on virtual time: what each stack does when the offered load passes capacity.

Run::

    python benchmarks/sim_overload.py [--backend asyncio|trio]
                                      [--scenario overload|throttle|hedge|
                                                  coalesce|all]
                                      [--stacks NAME[,NAME...]]
                                      [--capacity C] [--servers N]
                                      [--timeout S] [--scale F] [--seed N]
                                      [--out DIR] [--no-plots]

(``--help`` describes each option.) Everything runs on virtual time
(:func:`layers.testing.virtual_time_backend`: trio's ``MockClock`` with
autojump, or looptime's asyncio loop), with the real layers, real anyio
tasks and a model downstream, so two minutes of simulated traffic take a
few seconds of real time.

**The model downstream** has ``--servers`` workers (c) and a capacity of
``--capacity`` calls per second (C); a call's service time is
``s0 = c / C`` (+- 20 %, uniform), and a seeded 0.5 % of calls take 5x as
long (the heavy tail). Calls beyond c wait in the downstream's FIFO queue:
latency is the queue's wait plus the service time, so it rises with the
calls in flight (an M/D/c-like queue). The downstream does **not** know
when a client gives up: a call whose client timed out still waits its turn
and takes a worker (as a request already sent over HTTP does). That is
what makes overload collapse rather than merely saturate.

**The clients** are open-loop: arrivals are a Poisson process at the
offered rate, each one a task that calls the stack, whose innermost layer
is the client's ``Timeout(--timeout)`` (so the layers above it see a
timeout as an error, :class:`~layers.Elapsed`, which an adaptive limit
counts as a drop; the stacks' limits shed load rather than queue, so
nothing waits outside that timeout). The offered rate holds at 0.5 C for
10 s, ramps to 3 C over 30 s, holds 3 C for 30 s, ramps back to 0.5 C over
30 s and holds it for 30 s (``--scale`` multiplies these durations).

Measured per 1-second bucket: offered load, goodput (calls that succeeded
within the client's timeout, per second, by the second they ended),
p50/p99 latency of those calls, timeouts, local refusals
(:class:`~layers.Overloaded` and other :class:`~layers.Rejected`) and, for
a limiting stack, its limit (``statistics().max_in_flight``) with the
calls inside the downstream (its backlog).

Scenarios (each writes ``sim_<scenario>.png`` in ``--out``; each goal is
printed with PASS/FAIL; the script exits with status 1 when one fails):

* **overload**: the stacks of ``--stacks`` (see :data:`STACKS`): ``none``
  (no limit), ``static`` (a load-shedding ``ConcurrencyLimit`` at the
  downstream's knee, 2c), ``static-2x`` (one set 2x above the most calls
  that still finish within the timeout, ``c + C x (timeout - s0)``), and
  ``gradient2`` (``AdaptiveConcurrencyLimit(max_waiting=0)``: its default,
  ``Windowed(Gradient2())``, Netflix's defaults) and ``aimd``
  (``AIMD(timeout=2 s0)``, a latency target, fed every call).
  Goals: no limit collapses (goodput at 3 C below half of C, p99 at the
  timeout), ``static-2x`` does not recover (goodput in the last phase
  below 90 % of the offered 0.5 C), the adaptive limit holds goodput >= 90
  % of C at 3 C with p99 <= 3x the unloaded p99. The unloaded p99 is
  measured apart (:func:`unloaded_p99`: no limit, 0.5 C held for 60 s),
  as the ramp's first 10 s hold too few calls for a steady p99.
* **throttle**: client-side adaptive throttling, from
  ``benchmarks/sim_throttle.py`` when :class:`layers.AdaptiveThrottle` is
  there (skipped otherwise): a downstream that accepts a quarter of the
  offered calls for three windows, then heals, and the same with a total
  outage; the figure shows each second's calls (accepted, refused by the
  downstream, refused locally) against the SRE bound, and the reject
  probability, across the overload and the heal.
* **hedge**: hedging at the p95 delay, from ``benchmarks/sim_hedge.py``
  when :class:`layers.Hedge` is there (skipped otherwise); the figure
  shows each call's latency, the p99 per 5 s, plain and hedged, and the
  extra calls per 5 s.
* **coalesce**: 1,000 concurrent identical requests through
  :class:`~layers.Coalesce` make 1 downstream call (beside the 1,000
  without it).

Adding a stack to the overload scenario is one entry in :data:`STACKS`: a
name and a function of the :class:`Model` that returns the layers (outer
first) and the object whose ``statistics()`` has the limit.
tests/test_sim_overload.py runs :func:`run_overload` and
:func:`run_coalesce` small, on both backends.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

import layers
from layers.testing import virtual_time_backend

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "docs" / "explanation" / "img"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ------------------------------------------------------------------ the model


@attrs.frozen(kw_only=True)
class Model:
    """The downstream's and the clients' parameters."""

    capacity: float = 100.0  # C, calls/s
    servers: int = 10  # c
    timeout: float = 1.0  # the client's timeout, s
    tail_share: float = 0.005  # the share of calls in the heavy tail
    tail_factor: float = 5.0  # how much slower they are
    spread: float = 0.2  # service time +- this share
    scale: float = 1.0  # multiplies the phases' durations
    seed: int = 1
    steady: float | None = None  # hold this share of C for 60 s instead of the ramp

    @property
    def service_time(self) -> float:
        """s0: the mean service time of a call, c / C."""
        return self.servers / self.capacity

    @property
    def max_useful(self) -> int:
        """The most calls in flight that still finish within the timeout."""
        return self.servers + int(self.capacity * (self.timeout - self.service_time))

    def phases(self) -> list[tuple[float, float, float]]:
        """(duration, rate at start, rate at end) of each phase, in C."""
        s = self.scale
        if self.steady is not None:
            return [(60 * s, self.steady, self.steady)]
        return [
            (10 * s, 0.5, 0.5),
            (30 * s, 0.5, 3.0),
            (30 * s, 3.0, 3.0),
            (30 * s, 3.0, 0.5),
            (30 * s, 0.5, 0.5),
        ]

    def offered(self, t: float) -> float:
        """The offered rate at time *t*, calls/s."""
        for duration, start, end in self.phases():
            if t < duration:
                return self.capacity * (start + (end - start) * t / duration)
            t -= duration
        return self.capacity * self.phases()[-1][2]

    @property
    def duration(self) -> float:
        return sum(p[0] for p in self.phases())

    def window(self, phase: int) -> tuple[float, float]:
        """The last two thirds of *phase* (its start is still settling)."""
        start = sum(p[0] for p in self.phases()[:phase])
        length = self.phases()[phase][0]
        return start + length / 3, start + length


@attrs.define(eq=False)
class _Job:
    service: float
    done: anyio.Event = attrs.field(factory=anyio.Event)


@attrs.define(eq=False)
class Downstream:
    """c workers and a FIFO queue; it finishes calls whose client left."""

    model: Model
    calls: int = 0
    backlog: int = 0  # calls accepted and not finished (queued + in service)
    _send: Any = None
    _receive: Any = None

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[_Job](math.inf)
        async with anyio.create_task_group() as group:
            for _ in range(self.model.servers):
                group.start_soon(self._worker)
            task_status.started()

    async def _worker(self) -> None:
        async for job in self._receive:
            await anyio.sleep(job.service)
            self.backlog -= 1
            job.done.set()

    async def __call__(self, service: float) -> float:
        self.calls += 1
        self.backlog += 1
        job = _Job(service)
        self._send.send_nowait(job)
        await job.done.wait()
        return service


# ------------------------------------------------------------------ stacks

StackFactory = Callable[[Model], tuple[list[Any], Any]]


def _none(model: Model) -> tuple[list[Any], Any]:
    return [], None


def _static(model: Model) -> tuple[list[Any], Any]:
    limit = layers.ConcurrencyLimit(2 * model.servers, max_waiting=0)
    return [limit], limit


def _static_2x(model: Model) -> tuple[list[Any], Any]:
    limit = layers.ConcurrencyLimit(2 * model.max_useful, max_waiting=0)
    return [limit], limit


STACKS: dict[str, StackFactory] = {
    "none": _none,
    "static": _static,
    "static-2x": _static_2x,
}
"""The overload scenario's stacks: name -> (model -> (layers outer first, limit)).

The client's ``Timeout`` goes inside the layers given; a stack that queues
calls must bound the wait itself (``max_wait``)."""

# The adaptive concurrency limits (issue 16), shedding beyond the limit.
# gradient2 is the layer's default, Windowed(Gradient2()) with Netflix's
# defaults throughout (initial and min limit 20, max 200; a sample per 1 s
# window of at least 10 calls). AIMD (Netflix's defaults, fed every call)
# backs off on a drop or a call slower than its timeout (5 s by default,
# beyond any call here): it is given a latency target, twice the model's
# unloaded service time.
if hasattr(layers, "AdaptiveConcurrencyLimit"):  # pragma: no branch

    def _gradient2(model: Model) -> tuple[list[Any], Any]:
        limit = layers.AdaptiveConcurrencyLimit(max_waiting=0)
        return [limit], limit

    def _aimd(model: Model) -> tuple[list[Any], Any]:
        aimd = layers.AIMD(timeout=2.0 * model.service_time)
        limit = layers.AdaptiveConcurrencyLimit(aimd, max_waiting=0)
        return [limit], limit

    STACKS["gradient2"] = _gradient2
    STACKS["aimd"] = _aimd


# ------------------------------------------------------------------ measuring


@attrs.define
class Bucket:
    offered: int = 0
    ok: int = 0
    timeouts: int = 0
    refused: int = 0
    errors: int = 0
    latencies: list[float] = attrs.field(factory=list)
    limit: float = math.nan
    backlog: int = 0


def percentile(values: Sequence[float], p: float) -> float:
    """The value that the slowest ``1 - p`` of *values* reach (nan if empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = math.ceil((1 - p) * len(ordered) - 1e-9)
    return ordered[len(ordered) - max(rank, 1)]


@attrs.frozen
class Run:
    """One stack's run of the overload scenario."""

    stack: str
    model: Model
    buckets: list[Bucket]
    downstream_calls: int

    def _span(self, start: float, end: float) -> list[Bucket]:
        return self.buckets[int(start) : int(end)]

    def goodput(self, start: float, end: float) -> float:
        span = self._span(start, end)
        return sum(b.ok for b in span) / max(len(span), 1)

    def offered(self, start: float, end: float) -> float:
        span = self._span(start, end)
        return sum(b.offered for b in span) / max(len(span), 1)

    def latencies(self, start: float, end: float) -> list[float]:
        """The latencies of the successes that ended in [start, end)."""
        return [x for b in self._span(max(start, 0), end) for x in b.latencies]

    def p99(self, start: float, end: float) -> float:
        """The p99 of the successes in the span; inf when none succeeded."""
        found = self.latencies(start, end)
        return percentile(found, 0.99) if found else math.inf

    def refused(self, start: float, end: float) -> int:
        return sum(b.refused for b in self._span(start, end))

    def timeouts(self, start: float, end: float) -> int:
        return sum(b.timeouts for b in self._span(start, end))


async def unloaded_p99(model: Model) -> float:
    """The unloaded p99: no limit, 0.5 C held for 60 s, its last 40 s.

    The goals' yardstick. The ramp's first phase alone (the last 7 s of
    10 s at 0.5 C, some 330 calls at C = 100/s) is too short for a p99 of a
    service time with a 0.5 % tail: a seed that puts 4 tail calls in it
    makes its p99 the tail's 5 s0, 4x that of a seed that puts none.
    """
    steady = attrs.evolve(model, steady=0.5)
    run = await run_overload(steady, "none")
    return run.p99(*steady.window(0))


async def run_overload(model: Model, stack: str) -> Run:
    """Drive *stack* with the ramp on the running (virtual) clock."""
    layers_, limit = STACKS[stack](model)
    downstream = Downstream(model)
    service: Any = downstream
    # The client's timeout, innermost: the layers see it as an error (Elapsed,
    # a TimeoutError), as an adaptive limit needs to count it as a drop.
    for layer in reversed([*layers_, layers.Timeout(model.timeout)]):
        service = layer.layer(service)
    buckets = [Bucket() for _ in range(math.ceil(model.duration) + 1)]
    arrivals = random.Random(model.seed)
    work = random.Random(model.seed + 1)
    s0 = model.service_time

    async with anyio.create_task_group() as outer:
        await outer.start(downstream.serve)
        start = anyio.current_time()

        def now() -> float:
            return anyio.current_time() - start

        async def call(service_time: float) -> None:
            began = anyio.current_time()
            try:
                await service(service_time)
            except TimeoutError:  # layers.Elapsed
                buckets[int(now())].timeouts += 1
                return
            except layers.Rejected:
                buckets[int(now())].refused += 1
                return
            except Exception:
                buckets[int(now())].errors += 1
                return
            bucket = buckets[int(now())]
            bucket.ok += 1
            bucket.latencies.append(anyio.current_time() - began)

        async def sample() -> None:
            for second in range(len(buckets)):
                await anyio.sleep_until(start + second + 0.5)
                if limit is not None:
                    buckets[second].limit = limit.statistics().max_in_flight
                buckets[second].backlog = downstream.backlog

        async with anyio.create_task_group() as clients:
            clients.start_soon(sample)
            while (t := now()) < model.duration:
                buckets[int(t)].offered += 1
                service_time = s0 * work.uniform(1 - model.spread, 1 + model.spread)
                if work.random() < model.tail_share:
                    service_time *= model.tail_factor
                clients.start_soon(call, service_time)
                await anyio.sleep(arrivals.expovariate(model.offered(t)))
        outer.cancel_scope.cancel()  # the downstream's workers
    return Run(stack, model, buckets[: int(model.duration)], downstream.calls)


# ------------------------------------------------------------------ coalescing


@attrs.frozen
class CoalesceResult:
    callers: int
    downstream_plain: int
    downstream_coalesced: int
    latency_plain: float
    latency_coalesced: float


async def _burst(model: Model, callers: int, *, coalesce: bool) -> tuple[int, float]:
    """(downstream calls, time until the last caller had its answer)."""
    async with anyio.create_task_group() as outer:
        downstream = Downstream(model)
        await outer.start(downstream.serve)
        service: Any = downstream
        if coalesce:
            service = layers.Coalesce().layer(downstream)
        slowest = 0.0
        start = anyio.current_time()

        async def one() -> None:
            nonlocal slowest
            await service(model.service_time)
            slowest = max(slowest, anyio.current_time() - start)

        async with anyio.create_task_group() as group:
            for _ in range(callers):
                group.start_soon(one)
        outer.cancel_scope.cancel()
    return downstream.calls, slowest


async def run_coalesce(model: Model, callers: int = 1000) -> CoalesceResult:
    """*callers* concurrent identical requests, without and with Coalesce."""
    plain, plain_latency = await _burst(model, callers, coalesce=False)
    merged, merged_latency = await _burst(model, callers, coalesce=True)
    return CoalesceResult(callers, plain, merged, plain_latency, merged_latency)


# ------------------------------------------------------------------ plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_overload(runs: list[Run], path: Path) -> None:
    """Goodput, p50/p99 and the limit over time, a line per stack."""
    plt = _pyplot()
    model = runs[0].model
    fig, (top, mid, bottom) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    seconds = list(range(len(runs[0].buckets)))
    top.plot(
        seconds,
        [model.offered(t + 0.5) for t in seconds],
        color="grey",
        linestyle=":",
        label="offered",
    )
    top.axhline(model.capacity, color="black", linewidth=0.8, label="capacity C")
    for number, run in enumerate(runs):
        width = 1.2 + 1.2 * (len(runs) - 1 - number)  # the first ones drawn wider
        (line,) = top.plot(
            seconds, [b.ok for b in run.buckets], label=run.stack, linewidth=width
        )
        color = line.get_color()
        mid.plot(
            seconds,
            [percentile(run.latencies(t - 4, t + 1), 0.99) for t in seconds],
            color=color,
            linewidth=width,
            label=f"{run.stack} p99",
        )
        mid.plot(
            seconds,
            [percentile(run.latencies(t - 4, t + 1), 0.5) for t in seconds],
            color=color,
            linestyle="--",
            linewidth=0.8,
            label=f"{run.stack} p50",
        )
        if not all(math.isnan(b.limit) for b in run.buckets):
            bottom.plot(
                seconds,
                [b.limit for b in run.buckets],
                color=color,
                linewidth=width,
                label=f"{run.stack} limit",
            )
        bottom.plot(
            seconds,
            [b.backlog for b in run.buckets],
            color=color,
            linestyle="--",
            linewidth=0.8,
            label=f"{run.stack} downstream backlog",
        )
    top.set_ylabel("goodput (calls/s)")
    top.set_title(
        f"Offered load 0.5 C -> 3 C -> 0.5 C; C = {model.capacity:g}/s, "
        f"{model.servers} servers, client timeout {model.timeout:g} s"
    )
    mid.set_ylabel("latency of successes (s)\nover the last 5 s")
    mid.set_yscale("log")
    mid.axhline(model.timeout, color="black", linewidth=0.8)
    bottom.set_ylabel("calls")
    bottom.set_yscale("symlog", linthresh=10)
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("time (s, virtual)")
    for axes in (top, mid, bottom):
        axes.legend(fontsize="x-small", loc="upper right")
        axes.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_bars(
    title: str,
    labels: list[str],
    values: list[float],
    ylabel: str,
    path: Path,
    *,
    log: bool = False,
) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(figsize=(6, 3.5))
    bars = axes.bar(labels, values, color=["tab:red", "tab:green"][: len(labels)])
    axes.bar_label(bars, fmt="%g")
    axes.set_ylabel(ylabel)
    if log:
        axes.set_yscale("log")
    axes.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _means(values: Sequence[float], span: int) -> list[float]:
    """The means of *values* over consecutive runs of *span* (the last may be short)."""
    return [
        sum(values[i : i + span]) / len(values[i : i + span])
        for i in range(0, len(values), span)
    ]


def plot_throttle(runs: list[tuple[str, Any]], path: Path, *, span: int = 5) -> None:
    """AdaptiveThrottle over time: a pair of panels per ``sim_throttle`` run.

    *runs* are (title, ``sim_throttle.Figures``). The upper panel splits the
    offered calls (per second, averaged over *span* seconds) into those the
    downstream accepted, those it refused and those the layer refused
    locally, with the SRE bound ``K x accepted`` while the downstream
    refuses; a run where it accepts nothing before the heal (a total
    outage) is drawn on a log scale. The lower panel is the layer's reject
    probability. Dashed verticals mark the windows, a red one the heal, a
    green one the return to full traffic.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(
        2 * len(runs),
        1,
        figsize=(9, 4.4 * len(runs)),
        gridspec_kw={"height_ratios": [3, 1] * len(runs)},
    )
    for number, (title, figures) in enumerate(runs):
        calls, probability = axes[2 * number], axes[2 * number + 1]
        probability.sharex(calls)
        seconds = figures.seconds
        time = [s.time for s in seconds]
        edges = [*time[::span], time[-1] + 1]
        offered = _means([s.offered for s in seconds], span)
        reached = _means([s.reached for s in seconds], span)
        accepted = _means([s.accepted for s in seconds], span)
        outage = not any(s.accepted for s in seconds if s.time < figures.heal)
        bands = [
            (0.0, accepted, "tab:green", "accepted by the downstream"),
            (accepted, reached, "tab:blue", "refused by the downstream"),
            (reached, offered, "tab:orange", "refused locally (Throttled)"),
        ]
        for low, high, color, label in bands:
            calls.stairs(high, edges, baseline=low, fill=True, color=color, alpha=0.6)
            calls.plot([], [], color=color, linewidth=6, alpha=0.6, label=label)
        calls.stairs(reached, edges, color="tab:blue", linewidth=1.0)
        if not outage:  # the bound holds while the downstream refuses
            refusing = sum(1 for t in edges if t < figures.heal)
            calls.stairs(
                [figures.multiplier * x for x in accepted[:refusing]],
                edges[: refusing + 1],
                color="black",
                linestyle="--",
                linewidth=1.2,
                label=f"SRE bound: K x accepted (K = {figures.multiplier:g})",
            )
        probability.plot(time, [s.reject_probability for s in seconds], color="tab:red")
        for panel in (calls, probability):
            edge = figures.window
            while edge < time[-1]:
                if edge != figures.heal:
                    panel.axvline(edge, color="grey", linestyle="--", linewidth=0.6)
                edge += figures.window
            panel.axvline(figures.heal, color="tab:red", linewidth=1.4)
            if figures.recovery is not None:
                panel.axvline(
                    figures.heal + figures.recovery,
                    color="tab:green",
                    linestyle="-.",
                    linewidth=1.4,
                )
            panel.grid(alpha=0.3)
            panel.set_xlim(0, time[-1] + 1)
        top = max(offered)
        if outage:
            calls.set_yscale("log")
            calls.set_ylim(0.05, 40 * top)
            calls.set_ylabel(f"calls/s, log\n(means over {span} s)")
        else:
            calls.set_ylim(0, 1.6 * top)
            calls.set_ylabel(f"calls/s\n(means over {span} s)")
        calls.annotate(
            " heal",
            (figures.heal, 0.02),
            xycoords=("data", "axes fraction"),
            color="tab:red",
            fontsize="small",
            fontweight="bold",
        )
        if figures.recovery is not None:
            calls.annotate(
                f" full traffic,\n heal + {figures.recovery:.0f} s",
                (figures.heal + figures.recovery, 0.02),
                xycoords=("data", "axes fraction"),
                color="tab:green",
                fontsize="small",
                fontweight="bold",
            )
        calls.set_title(title, fontsize="medium")
        calls.legend(fontsize="x-small", loc="upper left", ncol=2)
        calls.tick_params(labelbottom=False)
        probability.set_ylabel("reject\nprobability")
        probability.set_ylim(-0.05, 1.05)
        probability.set_xlabel(
            f"time (s, virtual); dashed lines: the {figures.window:g} s windows"
        )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_hedge(plain: Any, hedged: Any, title: str, path: Path) -> None:
    """Hedge over time: each call's latency and p99 per interval; the extra calls.

    *plain* and *hedged* are ``sim_hedge.Result``, *title* says what ran.
    The upper panel has every call's latency (a dot at the time it ended),
    the p99 of each interval (steps), the p99 of the whole run (dashed) and
    the hedge's delay; the lower one the extra calls hedging sent, per
    interval and overall.
    """
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for result, label, color in (
        (plain, "plain", "tab:red"),
        (hedged, "Hedge(quantile=0.95)", "tab:green"),
    ):
        top.scatter(
            result.ended,
            [x * 1000 for x in result.latencies],
            s=5,
            color=color,
            alpha=0.35,
            linewidths=0,
        )
        intervals = result.intervals
        top.stairs(
            [i.p99 * 1000 for i in intervals],
            [*(i.start for i in intervals), result.ended[-1]],
            baseline=None,
            color=color,
            linewidth=1.8,
            label=f"{label}: p99 per {result.interval:g} s",
        )
        top.axhline(
            result.p99 * 1000,
            color=color,
            linestyle="--",
            linewidth=1.0,
            label=f"{label}: p99 of the run, {result.p99 * 1000:.1f} ms",
        )
    delays = [i for i in hedged.intervals if i.delay is not None]
    top.stairs(
        [i.delay * 1000 for i in delays],
        [*(i.start for i in delays), hedged.ended[-1]],
        baseline=None,
        color="black",
        linestyle=":",
        linewidth=1.4,
        label="hedge delay (p95 of recent latencies)",
    )
    top.set_yscale("log")
    top.set_ylim(5, 3000)  # room for the legend above the slowest calls
    top.set_ylabel("client latency (ms, log)")
    top.set_title(
        f"{title}\n(dots: each call's latency, at the time it ended)",
        fontsize="medium",
    )
    intervals = hedged.intervals
    bottom.stairs(
        [i.extra_calls * 100 for i in intervals],
        [*(i.start for i in intervals), hedged.ended[-1]],
        baseline=None,
        color="tab:green",
        linewidth=1.8,
        label=f"extra calls per {hedged.interval:g} s",
    )
    bottom.axhline(
        hedged.extra_calls * 100,
        color="tab:green",
        linestyle="--",
        linewidth=1.0,
        label=f"of the run: {hedged.extra_calls:.2%}",
    )
    bottom.axhline(6, color="black", linewidth=0.8, label="goal: at most 6 %")
    bottom.set_ylim(0, 10)
    bottom.set_ylabel("extra calls\n(% of calls)")
    bottom.set_xlabel("time (s, virtual)")
    top.legend(fontsize="x-small", loc="upper right", ncol=2)
    bottom.legend(fontsize="x-small", loc="upper right", ncol=3)
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------ goals


def _seconds(value: float) -> str:
    return "unbounded (no call succeeded)" if math.isinf(value) else f"{value:.2f} s"


def overload_goals(runs: dict[str, Run], unloaded: float) -> list[tuple[str, bool]]:
    """(goal line, passed) for each stack of the overload scenario.

    *unloaded* is the unloaded p99 (:func:`unloaded_p99`), the yardstick of
    the p99 at 3 C.
    """
    goals: list[tuple[str, bool]] = []
    any_run = next(iter(runs.values()))
    model = any_run.model
    peak = model.window(2)
    after = model.window(4)
    c = model.capacity
    base = unloaded
    print(
        f"{'unloaded':>10}: p99 {_seconds(base)} (no limit, 0.5 C held for "
        f"{60 * model.scale:g} s, its last two thirds)"
    )
    for name, run in runs.items():
        good = run.goodput(*peak)
        p99 = run.p99(*peak)
        tail = run.goodput(*after)
        offered_after = run.offered(*after)
        print(
            f"{name:>10}: at 3 C goodput {good:6.1f}/s ({good / c:4.0%} of C), "
            f"p99 {_seconds(p99)}"
            f"{'' if math.isinf(p99) else f' ({p99 / base:.1f}x unloaded)'}, "
            f"refused {run.refused(*peak)}, timeouts {run.timeouts(*peak)}; "
            f"back at 0.5 C goodput {tail:5.1f}/s of {offered_after:5.1f} offered; "
            f"{run.downstream_calls} downstream calls"
        )
        if name == "none":
            ok = good < 0.5 * c and p99 >= 0.9 * model.timeout
            goals.append(
                (
                    f"no limit collapses at 3 C: goodput {good / c:.0%} "
                    f"of C (goal < 50 %), p99 {_seconds(p99)} (goal: the "
                    f"{model.timeout:g} s timeout or none succeeds)",
                    ok,
                )
            )
        elif name == "static-2x":
            ok = tail < 0.9 * offered_after
            goals.append(
                (
                    f"a static limit 2x too high does not recover: goodput "
                    f"back at 0.5 C {tail / offered_after:.0%} of offered "
                    f"(goal < 90 %)",
                    ok,
                )
            )
        else:
            ok = good >= 0.9 * c and p99 <= 3 * base
            goals.append(
                (
                    f"{name}: goodput at 3 C {good / c:.0%} of C (goal >= "
                    f"90 %), p99 {p99 / base:.1f}x unloaded (goal <= 3x)",
                    ok,
                )
            )
    return goals


# ------------------------------------------------------------------ main


def _run(backend: str, fn: Callable[[], Any]) -> Any:
    name, options = virtual_time_backend(backend)
    return anyio.run(fn, backend=name, backend_options=options)


def scenario_overload(args: argparse.Namespace, model: Model) -> list[tuple[str, bool]]:
    names = [name for name in args.stacks.split(",") if name]
    for name in names:
        if name not in STACKS:
            sys.exit(f"--stacks: unknown stack {name!r}; known: {', '.join(STACKS)}")
    runs: dict[str, Run] = {}
    for name in names:

        async def one(name: str = name) -> Run:
            return await run_overload(model, name)

        runs[name] = _run(args.backend, one)

    async def baseline() -> float:
        return await unloaded_p99(model)

    unloaded: float = _run(args.backend, baseline)
    if not args.no_plots:
        plot_overload(list(runs.values()), args.out / "sim_overload.png")
    return overload_goals(runs, unloaded)


def scenario_coalesce(args: argparse.Namespace, model: Model) -> list[tuple[str, bool]]:
    async def one() -> CoalesceResult:
        return await run_coalesce(model)

    result: CoalesceResult = _run(args.backend, one)
    print(
        f"  coalesce: {result.callers} concurrent identical calls made "
        f"{result.downstream_plain} downstream calls without Coalesce (the last "
        f"answered after {result.latency_plain:.2f} s), "
        f"{result.downstream_coalesced} with it "
        f"(all answered after {result.latency_coalesced:.2f} s)"
    )
    if not args.no_plots:
        plot_bars(
            f"{result.callers} concurrent identical requests",
            ["no Coalesce", "Coalesce"],
            [result.downstream_plain, result.downstream_coalesced],
            "downstream calls",
            args.out / "sim_coalesce.png",
            log=True,
        )
    ok = result.downstream_coalesced == 1
    return [
        (
            f"coalescing: {result.callers} concurrent identical requests make "
            f"{result.downstream_coalesced} downstream call(s) (goal: 1)",
            ok,
        )
    ]


def _sibling(module: str, layer: str) -> Any:
    """benchmarks/<module>.py when it and layers.<layer> exist, else None."""
    if getattr(layers, layer, None) is None:
        return None
    sys.path.insert(0, str(HERE))
    try:
        return __import__(module)
    except ImportError:
        return None


OUTAGE_AFTER = 7.0
"""The throttle scenario's total outage runs this many windows after the heal."""


def scenario_throttle(args: argparse.Namespace, model: Model) -> list[tuple[str, bool]]:
    sim = _sibling("sim_throttle", "AdaptiveThrottle")
    if sim is None:
        print("  throttle: SKIP (layers.AdaptiveThrottle or sim_throttle.py missing)")
        return []
    offered, capacity = 100.0, 25.0

    async def partial_run() -> Any:
        return await sim.simulate(offered=offered, capacity=capacity)

    async def outage_run() -> Any:  # long enough after the heal to recover
        return await sim.simulate(offered=offered, capacity=0, after=OUTAGE_AFTER)

    figures = _run(args.backend, partial_run)
    print("  " + sim.describe(figures))
    recovery = figures.recovery
    healed = math.inf if recovery is None else recovery
    outage = _run(args.backend, outage_run)
    outage_recovery = (
        "still refusing at the end"
        if outage.recovery is None
        else f"{outage.recovery:.1f} s ({outage.recovery / outage.window:.2f} windows)"
    )
    print(
        f"  total outage (capacity 0): after the first window {outage.reached} of "
        f"{outage.offered} calls reached the downstream; full traffic after the "
        f"heal: {outage_recovery}"
    )
    if not args.no_plots:
        layer = (
            f"AdaptiveThrottle(window={figures.window:g}, "
            f"multiplier={figures.multiplier:g})"
        )
        plot_throttle(
            [
                (
                    f"{layer}: {offered:g} calls/s offered; the downstream accepts "
                    f"{capacity:g}/s until it heals at {figures.heal:g} s",
                    figures,
                ),
                (
                    "The same, total outage: the downstream accepts nothing until "
                    f"it heals at {outage.heal:g} s (log scale)",
                    outage,
                ),
            ],
            args.out / "sim_throttle.png",
        )
    return [
        (
            f"throttling: calls reaching the downstream {figures.ratio:.2f}x those "
            f"accepted (goal: about K = 2, <= 2.5)",
            figures.ratio <= 2.5,
        ),
        (
            f"throttling: full traffic {_seconds(healed)} after the heal "
            f"(goal: within one window, {figures.window:g} s)",
            recovery is not None and recovery <= figures.window,
        ),
    ]


def scenario_hedge(args: argparse.Namespace, model: Model) -> list[tuple[str, bool]]:
    sim = _sibling("sim_hedge", "Hedge")
    if sim is None:
        print("  hedge: SKIP (layers.Hedge or sim_hedge.py missing)")
        return []

    async def both() -> tuple[Any, Any]:
        return (await sim.simulate(hedged=False), await sim.simulate(hedged=True))

    plain, hedged = _run(args.backend, both)
    cut = plain.p99 / hedged.p99
    print(
        f"     hedge: p99 {plain.p99 * 1000:.1f} ms plain, {hedged.p99 * 1000:.1f} ms "
        f"hedged at p95, {hedged.extra_calls:.2%} extra calls"
    )
    if not args.no_plots:
        title = (
            f"{plain.calls:,} sequential calls; the downstream answers in "
            f"{sim.FAST * 1000:g} ms +- {sim.SPREAD:.0%}, {sim.SLOW_SHARE:.0%} of "
            f"calls {sim.SLOW_FACTOR:g}x slower"
        )
        plot_hedge(plain, hedged, title, args.out / "sim_hedge.png")
    return [
        (
            f"hedging: p99 {cut:.1f}x lower (goal >= 5x) with "
            f"{hedged.extra_calls:.2%} extra calls (goal <= 6 %)",
            cut >= 5 and hedged.extra_calls <= 0.06,
        )
    ]


SCENARIOS = {
    "overload": scenario_overload,
    "throttle": scenario_throttle,
    "hedge": scenario_hedge,
    "coalesce": scenario_coalesce,
}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Overload scenarios on virtual time, with figures (PNG) and "
        "PASS/FAIL goals; see the module docstring.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="trio",
        help="the event loop, on virtual time",
    )
    parser.add_argument(
        "--scenario",
        choices=(*SCENARIOS, "all"),
        default="all",
        help="which scenario to run",
    )
    parser.add_argument(
        "--stacks",
        default=",".join(STACKS),
        help="comma-separated stacks for the overload scenario, among: "
        + ", ".join(STACKS),
    )
    parser.add_argument(
        "--capacity",
        type=float,
        default=100.0,
        help="the downstream's capacity C, calls/s",
    )
    parser.add_argument(
        "--servers",
        type=int,
        default=10,
        help="the downstream's workers c (service time c / C)",
    )
    parser.add_argument(
        "--timeout", type=float, default=1.0, help="the client's timeout, s"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiplies the durations of the load's phases (10, 30, 30, 30, 30 s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="the random seed")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="where the PNG figures go",
    )
    parser.add_argument(
        "--no-plots",
        action="store_true",
        help="print the figures only (no matplotlib needed)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    model = Model(
        capacity=args.capacity,
        servers=args.servers,
        timeout=args.timeout,
        scale=args.scale,
        seed=args.seed,
    )
    if not args.no_plots:
        args.out.mkdir(parents=True, exist_ok=True)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    goals: list[tuple[str, bool]] = []
    for name in names:
        print(f"== {name}")
        goals += SCENARIOS[name](args, model)
    print("== goals")
    for line, ok in goals:
        print(f"{verdict(ok)}  {line}")
    return 0 if all(ok for _, ok in goals) else 1


if __name__ == "__main__":
    logging.getLogger("layers").setLevel(logging.ERROR)  # one event per refusal
    sys.exit(main())
