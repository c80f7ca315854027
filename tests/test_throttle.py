"""Tests of AdaptiveThrottle: client-side adaptive throttling (Google SRE)."""

from __future__ import annotations

import contextlib
import math
import random
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import layers
from layers.events import AdaptiveThrottleRejected
from layers.testing import capture_events

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from sim_throttle import describe, simulate

pytestmark = pytest.mark.anyio


class Busy(Exception):
    """The downstream refused the call: no capacity."""


class NotFound(Exception):
    """The downstream answered: no such thing (an accept, for the SRE book)."""


async def drive(svc: layers.Service[int, Any], count: int, gap: float = 0.0) -> int:
    """Call *svc* *count* times, *gap* seconds apart; return the Throttled count."""
    throttled = 0
    for i in range(count):
        try:
            await svc(i)
        except layers.Throttled:
            throttled += 1
        except Exception:
            pass
        if gap:
            await anyio.sleep(gap)
    return throttled


async def test_all_accepted_never_refuses() -> None:
    """A downstream that accepts everything is never throttled."""

    async def ok(request: int) -> int:
        return request

    throttle = layers.AdaptiveThrottle(min_requests=0, seed=1)
    assert await drive(throttle.layer(ok), 2000, gap=0.1) == 0
    stats = throttle.statistics()
    assert stats.rejected == 0
    assert stats.reject_probability == 0.0
    assert stats.requests == stats.accepts > 0


async def test_errors_not_matched_by_on_count_as_accepted() -> None:
    """With on=Busy, a NotFound is an accept: the downstream answered."""

    async def missing(request: int) -> int:
        raise NotFound

    throttle = layers.AdaptiveThrottle(on=Busy, min_requests=0, seed=1)
    assert await drive(throttle.layer(missing), 500) == 0
    stats = throttle.statistics()
    assert (stats.requests, stats.accepts) == (500, 500)


async def test_on_predicate_and_on_result_classify() -> None:
    """A predicate on the error and a predicate on the response count refusals."""

    async def answer(request: int) -> int:
        if request % 2:
            raise Busy
        return 503

    by_predicate = layers.AdaptiveThrottle(
        on=lambda error: isinstance(error, Busy), min_requests=1000
    )
    await drive(by_predicate.layer(answer), 10)
    assert (by_predicate.statistics().requests, by_predicate.statistics().accepts) == (
        10,
        5,
    )
    by_result = layers.AdaptiveThrottle(
        on=Busy, on_result=lambda status: status == 503, min_requests=1000
    )
    await drive(by_result.layer(answer), 10)
    assert (by_result.statistics().requests, by_result.statistics().accepts) == (
        10,
        0,
    )


async def test_refusal_never_calls_the_inner_service() -> None:
    """A Throttled call does not reach the downstream; it carries its reason."""
    calls = 0

    async def busy(request: int) -> int:
        nonlocal calls
        calls += 1
        raise Busy

    throttle = layers.AdaptiveThrottle(min_requests=0, seed=3, name="api")
    svc = throttle.layer(busy)
    with capture_events(AdaptiveThrottleRejected) as seen:
        throttled = await drive(svc, 300)
    assert throttled > 250
    assert calls + throttled == 300
    assert len(seen) == throttled == throttle.statistics().rejected
    assert all(0 < event.reject_probability < 1 for event in seen)
    errors: list[Exception] = []
    for i in range(100):
        try:
            await svc(i)
        except layers.Throttled as error:
            errors.append(error)
    error = errors[0]
    assert isinstance(error, layers.Rejected)
    assert (error.reason, error.layer, error.retry_after) == ("throttled", "api", None)
    assert "adaptive throttle 'api'" in str(error)


async def test_the_sre_bound_holds_while_the_downstream_refuses_most() -> None:
    """Calls that reach a downstream with a capacity stay near K x its accepts."""
    figures = await simulate(
        offered=40, capacity=8, window=20, overload=4, after=2, seed=5
    )
    assert figures.accepted > 400
    # the bound: K x accepts plus about one call per window
    assert 1.8 <= figures.ratio <= 2.2, describe(figures)
    assert figures.reached < 0.6 * figures.offered


async def test_the_run_is_recorded_second_by_second() -> None:
    """simulate()'s seconds add up to its totals and show the bound in each window."""
    figures = await simulate(
        offered=40, capacity=8, window=20, overload=4, after=2, seed=5
    )
    seconds = figures.seconds
    assert [s.time for s in seconds] == list(range(6 * 20))
    for s in seconds:
        assert s.offered == s.reached + s.throttled, s
        assert s.accepted <= s.reached, s
        assert 0.0 <= s.reject_probability <= 1.0, s
    measured = [s for s in seconds if figures.window <= s.time < figures.heal]
    assert sum(s.offered for s in measured) == figures.offered
    assert sum(s.reached for s in measured) == figures.reached
    assert sum(s.accepted for s in measured) == figures.accepted
    # each full window of the overload (after the first): the downstream's
    # 8/s used up, and reached within about K = 2 times that
    for number in range(1, 4):
        span = seconds[number * 20 : (number + 1) * 20]
        reached = sum(s.reached for s in span)
        accepted = sum(s.accepted for s in span)
        assert accepted == 8 * 20
        assert 0.85 * 2 * accepted <= reached <= 1.15 * 2 * accepted, number
        # p = (40 - 2 x 8) / 40: 0.6 of the calls refused locally
        assert all(0.55 <= s.reject_probability <= 0.65 for s in span), number
    healed = [s for s in seconds if s.time >= figures.heal]
    assert all(s.accepted == s.reached for s in healed)
    assert figures.recovery is not None
    full = [s for s in healed if s.time > figures.heal + figures.recovery]
    assert full
    assert all(s.throttled == 0 and s.reject_probability == 0.0 for s in full)


async def test_full_traffic_returns_within_one_window_after_healing() -> None:
    """Once the downstream accepts again, nothing is refused within a window."""
    figures = await simulate(
        offered=40, capacity=10, window=20, overload=3, after=2, seed=2
    )
    assert figures.recovery is not None
    assert figures.recovery <= figures.window, describe(figures)


async def test_counts_roll_out_of_the_window() -> None:
    """Without new calls the window empties after one window length."""

    async def busy(request: int) -> int:
        raise Busy

    throttle = layers.AdaptiveThrottle(window=10, min_requests=0, seed=1)
    await drive(throttle.layer(busy), 50)
    assert throttle.statistics().reject_probability > 0.9
    await anyio.sleep(10)
    stats = throttle.statistics()
    assert (stats.requests, stats.accepts, stats.reject_probability) == (0, 0, 0.0)


async def test_min_requests_is_a_floor() -> None:
    """Below min_requests in the window, nothing is refused."""

    async def busy(request: int) -> int:
        raise Busy

    throttle = layers.AdaptiveThrottle(min_requests=20, seed=1)
    assert await drive(throttle.layer(busy), 20) == 0
    assert throttle.statistics().reject_probability > 0.9


async def test_a_seed_makes_refusals_reproducible() -> None:
    """The same seed refuses the same calls; random= takes a Random."""

    async def busy(request: int) -> int:
        raise Busy

    runs = []
    for make in (
        lambda: layers.AdaptiveThrottle(min_requests=0, seed=9),
        lambda: layers.AdaptiveThrottle(min_requests=0, random=random.Random(9)),
    ):
        throttle = make()
        svc = throttle.layer(busy)
        outcomes = []
        for i in range(200):
            try:
                await svc(i)
            except Exception as error:
                outcomes.append(type(error).__name__)
        runs.append(outcomes)
    assert runs[0] == runs[1]


async def test_per_key_throttles_are_independent() -> None:
    """Through PerKey, one key's refusals do not throttle another key."""

    async def backend(request: tuple[str, int]) -> str:
        if request[0] == "down":
            raise Busy
        return "ok"

    throttles = layers.PerKey(
        lambda key: layers.AdaptiveThrottle(min_requests=0, seed=1, name=key),
        key=lambda request: request[0],
        max_keys=10,
    )
    svc = throttles.layer(backend)
    refused = {"down": 0, "up": 0}
    for i in range(200):
        for key in ("down", "up"):
            try:
                await svc((key, i))
            except layers.Throttled:
                refused[key] += 1
            except Busy:
                pass
    assert refused["down"] > 150
    assert refused["up"] == 0


async def test_rejected_from_inside_counts_as_neither() -> None:
    """A Rejected raised by a layer inside is neither a request nor an accept."""

    async def limited(request: int) -> int:
        raise layers.RateLimited("full", layer="inner", reason="limited")

    throttle = layers.AdaptiveThrottle(min_requests=0)
    await drive(throttle.layer(limited), 50)
    stats = throttle.statistics()
    assert (stats.requests, stats.accepts, stats.rejected) == (0, 0, 0)


async def test_cancellation_counts_as_neither_and_leaves_nothing() -> None:
    """A call cancelled in the inner service is not counted; nothing is left."""
    started = anyio.Event()

    async def slow(request: int) -> int:
        started.set()
        await anyio.sleep(100)
        return request

    throttle = layers.AdaptiveThrottle(min_requests=0)
    svc = throttle.layer(slow)
    with anyio.move_on_after(1) as scope:
        await svc(1)
    assert scope.cancelled_caught
    async with anyio.create_task_group() as group:
        group.start_soon(svc, 2)
        await started.wait()
        group.cancel_scope.cancel()
    stats = throttle.statistics()
    assert (stats.requests, stats.accepts, stats.rejected) == (0, 0, 0)


async def test_builder_method_and_shared_state() -> None:
    """.adaptive_throttle() makes one layer: two services share its window."""

    async def busy(request: int) -> int:
        raise Busy

    builder = layers.ServiceBuilder().adaptive_throttle(min_requests=0, seed=1)
    first, second = builder.service(busy), builder.service(busy)
    await drive(first, 100)
    assert await drive(second, 100) > 80
    (throttle,) = list(layers.layers_of(first))
    assert isinstance(throttle, layers.AdaptiveThrottle)
    observed = throttle.observe()
    assert observed.rejected == throttle.statistics().rejected > 0
    assert set(observed.figures) == {"requests", "accepts", "reject_probability"}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"window": 0}, "window="),
        ({"window": float("inf")}, "window="),
        ({"multiplier": 0.5}, "multiplier=0.5"),
        ({"multiplier": "2"}, "multiplier="),
        ({"min_requests": -1}, "min_requests=-1"),
        ({"window_buckets": 0}, "window_buckets=0"),
        ({"on": KeyboardInterrupt}, "on="),
        ({"on_result": 3}, "on_result=3"),
        ({"seed": "x"}, "seed="),
        ({"random": 4}, "random=4"),
        ({"seed": 1, "random": random.Random()}, "seed=1"),
        ({"name": ""}, "name="),
    ],
)
def test_bad_configuration_is_named(options: dict[str, Any], named: str) -> None:
    """Each bad option raises ConfigurationError naming the layer and option."""
    with pytest.raises(layers.ConfigurationError) as caught:
        layers.AdaptiveThrottle(**options)
    message = str(caught.value)
    assert message.startswith("AdaptiveThrottle("), message
    assert named in message, message


async def test_many_concurrent_callers() -> None:
    """Concurrent calls are each counted once, when they end."""
    done = 0

    async def slow(request: int) -> int:
        nonlocal done
        await anyio.sleep(1)
        done += 1
        if request % 4:
            raise Busy
        return request

    throttle = layers.AdaptiveThrottle(min_requests=0, seed=4)
    svc = throttle.layer(slow)

    async def call(i: int) -> None:
        with contextlib.suppress(Busy, layers.Throttled):
            await svc(i)

    async with anyio.create_task_group() as group:
        for i in range(200):
            group.start_soon(call, i)
    stats = throttle.statistics()
    # none had ended when each started: none was refused
    assert (done, stats.requests, stats.accepts, stats.rejected) == (200, 200, 50, 0)
    assert stats.reject_probability == pytest.approx((200 - 2 * 50) / 201)


async def test_accepts_leave_the_window_on_time() -> None:
    """Accepts counted on the success path land in their own bucket and leave."""

    async def ok(request: int) -> int:
        return request

    throttle = layers.AdaptiveThrottle(window=10, window_buckets=10)
    await drive(throttle.layer(ok), 30, gap=1.0)
    stats = throttle.statistics()
    # one call a second: the window holds the last 9 or 10 of them
    assert 9 <= stats.requests == stats.accepts <= 10


async def test_recovery_from_a_total_outage_takes_several_windows() -> None:
    """As the SRE formula does: refusals after the heal count, so recovery is slow."""
    figures = await simulate(
        offered=20, capacity=0, window=10, overload=3, after=10, seed=3
    )
    assert figures.accepted == 0
    assert figures.recovery is not None
    assert 2 * figures.window < figures.recovery < 8 * figures.window, describe(figures)
    # the seconds: next to nothing reaches it during the outage, then the
    # calls that reach it grow window by window until full traffic
    before = [s for s in figures.seconds if s.time < figures.heal]
    assert sum(s.accepted for s in before) == 0
    # min_requests (20), then about one a window: p = requests / (requests + 1)
    assert sum(s.reached for s in before) <= 20 + 2 * 3
    windows = [
        sum(s.reached for s in figures.seconds[start : start + 10])
        for start in range(30, 30 + math.ceil(figures.recovery / 10) * 10, 10)
    ]
    assert windows == sorted(windows), windows
    assert windows[-1] > 10 * max(windows[0], 1), windows
