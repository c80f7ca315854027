"""The adaptive throttle's figure: its bound while the downstream refuses, its recovery.

Run::

    python benchmarks/sim_throttle.py [--offered N] [--capacity N] [--window S]

On virtual time (trio's ``MockClock``: seconds of real time), one client
sends *offered* calls per second, evenly spaced, through an
:class:`~layers.AdaptiveThrottle` to a model downstream that answers at once
and accepts at most *capacity* calls in each second, refusing the rest. After
*overload* windows it heals (accepts everything). Two figures:

* while it refuses most of the offered load, the calls that reach it over
  those it accepts (measured after the first window, once the window is
  full): the SRE book's bound is about ``multiplier`` (2);
* the time from the heal until the layer refuses nothing
  (``reject_probability == 0``), in windows.

The same run with ``--capacity 0`` is a total outage: the recovery takes a
few windows (see the layer's docs). tests/test_throttle.py runs
:func:`simulate` on a small scale, on both backends.

:func:`simulate` also records each second of the run (:class:`Second`:
calls offered, reaching the downstream, accepted by it, refused locally,
and the layer's reject probability), which ``sim_overload.py --scenario
throttle`` draws (docs/explanation/img/sim_throttle.png).
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import final

import anyio
import attrs

import layers


class Refused(Exception):
    """The model downstream has no capacity left this second."""


@final
@attrs.define(kw_only=True)
class Second:
    """One second of a :func:`simulate` run, by the time each call was made.

    Attributes:
        time: The second's start, in whole seconds from the run's start.
        offered: Calls made in this second.
        reached: Of those, calls that reached the downstream.
        accepted: Of those, calls that the downstream accepted.
        throttled: Calls refused locally (:class:`~layers.Throttled`):
            ``offered - reached``.
        reject_probability: The layer's reject probability at the second's
            first call.
    """

    time: int
    offered: int = 0
    reached: int = 0
    accepted: int = 0
    throttled: int = 0
    reject_probability: float = 0.0


@final
@attrs.frozen(kw_only=True)
class Figures:
    """What :func:`simulate` measured.

    Attributes:
        offered: Calls offered during the measured overload (after the first
            window).
        reached: Of those, calls that reached the downstream.
        accepted: Of those, calls that the downstream accepted.
        ratio: ``reached / accepted``.
        recovery: Seconds from the heal until the throttle refused nothing,
            or ``None`` if it still refused at the end.
        window: The throttle's window, in seconds.
        multiplier: The throttle's ``K``.
        heal: When the downstream healed, seconds from the run's start.
        seconds: The whole run, second by second (:class:`Second`).
    """

    offered: int
    reached: int
    accepted: int
    ratio: float
    recovery: float | None
    window: float
    multiplier: float
    heal: float
    seconds: tuple[Second, ...]


async def simulate(
    *,
    offered: float = 100.0,
    capacity: float = 25.0,
    window: float = 120.0,
    overload: float = 3.0,
    after: float = 3.0,
    multiplier: float = 2.0,
    seed: int = 0,
) -> Figures:
    """Run the model on the running loop's clock (make it virtual); see the module.

    *overload* and *after* are in windows: how long the downstream refuses,
    and how long the run goes on after it heals.
    """
    throttle = layers.AdaptiveThrottle(
        window=window, multiplier=multiplier, on=Refused, seed=seed
    )
    start = anyio.current_time()
    heal_at = start + overload * window
    measure_from = start + window
    second = -1
    used = 0
    reached = accepted = offered_calls = 0
    seconds: list[Second] = []

    async def downstream(request: float) -> None:
        nonlocal second, used, reached, accepted
        measured = request >= measure_from and request < heal_at
        if measured:
            reached += 1
        seconds[-1].reached += 1
        if request < heal_at:
            this = math.floor(request - start)
            if this != second:
                second, used = this, 0
            if used >= capacity:
                raise Refused
            used += 1
        if measured:
            accepted += 1
        seconds[-1].accepted += 1

    service = throttle.layer(downstream)
    gap = 1.0 / offered
    end = heal_at + after * window
    recovered: float | None = None
    now = start
    while now < end:
        while len(seconds) <= now - start:  # a new second (none skipped)
            probability = throttle.statistics().reject_probability
            seconds.append(Second(time=len(seconds), reject_probability=probability))
        seconds[-1].offered += 1
        if now >= measure_from and now < heal_at:
            offered_calls += 1
        try:
            await service(now)
        except layers.Throttled:
            seconds[-1].throttled += 1
        except Refused:
            pass
        if (
            now >= heal_at
            and recovered is None
            and throttle.statistics().reject_probability == 0.0
        ):
            recovered = now - heal_at
        await anyio.sleep(gap)
        now = anyio.current_time()
    return Figures(
        offered=offered_calls,
        reached=reached,
        accepted=accepted,
        ratio=reached / accepted if accepted else math.inf,
        recovery=recovered,
        window=window,
        multiplier=multiplier,
        heal=heal_at - start,
        seconds=tuple(seconds),
    )


def describe(figures: Figures, multiplier: float = 2.0) -> str:
    """The figures as the lines the script prints."""
    recovery = (
        "still refusing at the end"
        if figures.recovery is None
        else f"{figures.recovery:.1f} s ({figures.recovery / figures.window:.2f} "
        "windows)"
    )
    return (
        f"  offered {figures.offered}, reached {figures.reached}, accepted "
        f"{figures.accepted}: reached / accepted = {figures.ratio:.3f} "
        f"(the SRE bound: about {multiplier:g})\n"
        f"  full traffic after the heal: {recovery}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offered", type=float, default=100.0, help="calls/s")
    parser.add_argument("--capacity", type=float, default=25.0, help="accepts/s")
    parser.add_argument("--window", type=float, default=120.0, help="seconds")
    parser.add_argument("--multiplier", type=float, default=2.0)
    parser.add_argument("--overload", type=float, default=3.0, help="windows")
    parser.add_argument("--after", type=float, default=6.0, help="windows")
    args = parser.parse_args()

    import trio
    import trio.testing

    logging.getLogger("layers").setLevel(logging.ERROR)  # one event per refusal

    async def run() -> Figures:
        return await simulate(
            offered=args.offered,
            capacity=args.capacity,
            window=args.window,
            multiplier=args.multiplier,
            overload=args.overload,
            after=args.after,
        )

    figures = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    print(
        f"AdaptiveThrottle(window={args.window:g}, multiplier={args.multiplier:g}): "
        f"{args.offered:g} calls/s offered, the downstream accepts "
        f"{args.capacity:g}/s for {args.overload:g} windows, then everything"
    )
    print(describe(figures, args.multiplier))


if __name__ == "__main__":
    main()
