"""Tests of Hedge: delays, winners, failures, cancellation, budget, deadline."""

from __future__ import annotations

import contextvars
import importlib.util
import pathlib
from typing import Any

import anyio
import pytest

import layers
from layers.testing import capture_events

pytestmark = pytest.mark.anyio


class Copies:
    """An inner service: copy *n* takes ``plan[n - 1]`` = (seconds, answer or error)."""

    def __init__(self, *plan: tuple[float, object]) -> None:
        self.plan = list(plan)
        self.started: list[float] = []
        self.running = 0
        self.cancelled = 0
        self.finished = 0

    async def __call__(self, request: Any) -> Any:
        number = len(self.started)
        self.started.append(anyio.current_time())
        seconds, answer = self.plan[min(number, len(self.plan) - 1)]
        self.running += 1
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        self.finished += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_hedge_fires_after_the_delay_and_wins() -> None:
    """A slow first copy: the hedge goes out at the delay and its answer is used."""
    inner = Copies((10.0, "first"), (1.0, "hedge"))
    hedge = layers.Hedge(delay=0.5)
    svc = hedge.layer(inner)
    with capture_events() as seen:
        assert await svc("r") == "hedge"
    assert inner.started == [0.0, 0.5]
    assert anyio.current_time() == 1.5
    assert inner.cancelled == 1
    assert inner.running == 0
    assert [(type(e).__name__, e.fields()) for e in seen] == [
        ("HedgeSent", {"layer": "hedge", "attempt": 2, "after": 0.5}),
        ("HedgeWon", {"layer": "hedge", "attempt": 2, "copies": 2}),
    ]
    stats = hedge.statistics()
    assert (stats.calls, stats.hedges, stats.hedge_wins) == (1, 1, 1)


async def test_first_copy_before_the_delay_sends_no_hedge() -> None:
    """An answer before the delay: one copy, no event, the timer gone."""
    inner = Copies((0.2, "first"))
    hedge = layers.Hedge(delay=0.5)
    with capture_events() as seen:
        assert await hedge.layer(inner)("r") == "first"
    assert inner.started == [0.0]
    assert anyio.current_time() == 0.2
    assert seen == []
    assert hedge.statistics().hedges == 0


async def test_first_copy_wins_after_a_hedge_was_sent() -> None:
    """The original answers first after all: attempt 1 wins, the hedge is cancelled."""
    inner = Copies((1.0, "first"), (5.0, "hedge"))
    hedge = layers.Hedge(delay=0.5)
    with capture_events(layers.events.HedgeWon) as seen:
        assert await hedge.layer(inner)("r") == "first"
    assert seen[0].attempt == 1
    assert inner.cancelled == 1
    assert hedge.statistics().hedge_wins == 0


async def test_up_to_max_hedges_copies() -> None:
    """max_hedges=2 sends a copy at each delay, and no more."""
    inner = Copies((10.0, "a"), (10.0, "b"), (0.1, "c"), (0.1, "d"))
    svc = layers.Hedge(delay=1.0, max_hedges=2).layer(inner)
    assert await svc("r") == "c"
    assert inner.started == [0.0, 1.0, 2.0]
    assert inner.cancelled == 2


async def test_percentile_delay_after_min_samples() -> None:
    """No hedge until a window holds min_samples; then its percentile."""
    latencies = [0.01 * i for i in range(1, 21)]  # 0.01 .. 0.20
    plan = [(s, "ok") for s in latencies]
    inner = Copies(*plan, (5.0, "slow"), (0.01, "hedge"))
    hedge = layers.Hedge(quantile=0.9, min_samples=20, period=10.0)
    svc = hedge.layer(inner)
    for _ in range(20):  # the first window fills; no hedging meanwhile
        assert await svc("r") == "ok"
    assert hedge.statistics().delay is None
    await anyio.sleep(10.0 - anyio.current_time())  # the window closes
    start = anyio.current_time()
    assert await svc("r") == "hedge"
    assert hedge.statistics().delay == pytest.approx(0.18)  # 18th of 20 sorted
    assert inner.started[-1] - start == pytest.approx(0.18)


async def test_percentile_uses_the_fixed_delay_until_min_samples() -> None:
    """With delay= and quantile= both given, delay serves until the window is full."""
    inner = Copies((5.0, "slow"), (0.1, "hedge"))
    hedge = layers.Hedge(quantile=0.95, delay=0.3)
    assert await hedge.layer(inner)("r") == "hedge"
    assert inner.started == [0.0, 0.3]


async def test_a_window_without_enough_samples_stops_hedging() -> None:
    """A closed window under min_samples gives no percentile (nor a stale one)."""
    hedge = layers.Hedge(quantile=0.5, min_samples=3, period=1.0)
    svc = hedge.layer(Copies((0.1, "ok")))
    for _ in range(3):
        await svc("r")
    await anyio.sleep(1.0)
    await svc("r")
    assert hedge.statistics().delay == pytest.approx(0.1)
    await anyio.sleep(1.0)
    await svc("r")  # the window that closed held 1 sample
    assert hedge.statistics().delay is None


async def test_a_success_wins_over_an_earlier_failure() -> None:
    """A copy that fails sends the next at once; a later success wins."""
    inner = Copies((0.2, ConnectionError("a")), (0.3, "b"))
    hedge = layers.Hedge(delay=5.0)
    assert await hedge.layer(inner)("r") == "b"
    assert inner.started == [0.0, 0.2]  # sent at the failure, not at the delay
    assert anyio.current_time() == pytest.approx(0.5)


async def test_a_failure_waits_for_the_copies_still_running() -> None:
    """The first failure does not end the call while a hedge runs."""
    inner = Copies((1.0, ConnectionError("a")), (2.0, "b"))
    svc = layers.Hedge(delay=0.5).layer(inner)
    assert await svc("r") == "b"
    assert anyio.current_time() == 2.5


async def test_all_copies_fail_raises_the_last_failure() -> None:
    """Every copy failed: the last failure, itself, once nothing runs."""
    last = ConnectionError("b")
    inner = Copies((1.0, ConnectionError("a")), (2.0, last))
    svc = layers.Hedge(delay=0.5).layer(inner)
    with pytest.raises(ConnectionError) as caught:
        await svc("r")
    assert caught.value is last
    assert anyio.current_time() == 2.5
    assert inner.running == 0


async def test_a_failure_with_nothing_left_to_send_ends_the_call() -> None:
    """No hedge left and nothing running: the call ends, it does not wait the delay."""
    inner = Copies((0.1, ConnectionError("a")))
    svc = layers.Hedge(delay=5.0, budget=None).layer(inner)
    with pytest.raises(ConnectionError):
        await svc("r")
    assert len(inner.started) == 2
    assert anyio.current_time() == pytest.approx(0.2)


async def test_losers_are_cancelled_and_awaited_before_return() -> None:
    """Nothing the layer started runs after the call returns."""
    after: list[str] = []

    async def inner(request: int) -> str:
        try:
            await anyio.sleep(10.0 if request == 0 else 0.1)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)  # slow cleanup, awaited by the layer
            after.append("cleaned")
        return "ok"

    seen = 0

    async def numbered(request: str) -> str:
        nonlocal seen
        seen += 1
        return await inner(seen - 1)

    svc = layers.Hedge(delay=0.5, max_hedges=2).layer(numbered)
    assert await svc("r") == "ok"
    count = len(after)
    assert count == 2  # the winner's and the cancelled first copy's cleanup
    await anyio.sleep(100)
    assert len(after) == count


async def test_caller_cancelled_cancels_every_copy() -> None:
    """A caller that leaves cancels every copy and the timer; nothing is left."""
    inner = Copies((10.0, "a"), (10.0, "b"))
    svc = layers.Hedge(delay=1.0, max_hedges=3).layer(inner)
    with anyio.move_on_after(2.5):
        await svc("r")
    assert len(inner.started) == 3
    assert inner.running == 0
    assert inner.cancelled == 3
    await anyio.sleep(100)
    assert len(inner.started) == 3  # no timer left to send more


@pytest.mark.parametrize("at", [0.0, 0.3, 1.0, 1.2, 2.0, 2.05, 3.0])
async def test_caller_cancelled_at_any_point_leaves_nothing(at: float) -> None:
    """Cancelled before, at or between the sends and the failures: nothing runs on."""
    inner = Copies((1.2, ConnectionError("a")), (10.0, "b"), (10.0, "c"))
    svc = layers.Hedge(delay=1.0, max_hedges=2).layer(inner)
    with anyio.move_on_after(at) as scope:
        await svc("r")
    assert scope.cancelled_caught
    assert inner.running == 0
    sent = len(inner.started)
    await anyio.sleep(100)
    assert len(inner.started) == sent  # nothing sends later


async def test_many_concurrent_calls() -> None:
    """200 callers at once through one Hedge: every answer right, nothing left over."""
    running = 0

    async def inner(request: int) -> int:
        nonlocal running
        running += 1
        try:
            await anyio.sleep(5.0 if request % 2 else 0.1)
        finally:
            running -= 1
        return request

    seen: dict[int, int] = {}

    async def numbered(request: int) -> int:
        seen[request] = seen.get(request, 0) + 1
        # a hedge of an odd request is fast
        return await inner(request if seen[request] == 1 else 0) or request

    hedge = layers.Hedge(delay=0.5, budget=None)
    svc = hedge.layer(numbered)
    answers: dict[int, int] = {}

    async def call(n: int) -> None:
        answers[n] = await svc(n)

    async with anyio.create_task_group() as group:
        for n in range(200):
            group.start_soon(call, n)
    assert answers == {n: n for n in range(200)}
    assert running == 0
    stats = hedge.statistics()
    assert (stats.calls, stats.hedges, stats.hedge_wins) == (200, 100, 100)
    assert anyio.current_time() == pytest.approx(0.6)


async def test_an_empty_budget_sends_no_hedge() -> None:
    """Hedges withdraw from the retry budget; empty, none is sent (an event)."""
    budget = layers.RetryBudget(min_per_second=0, ratio=0.5)
    hedge = layers.Hedge(delay=0.5, budget=budget)
    svc = hedge.layer(Copies((1.0, "slow")))
    with capture_events(layers.events.HedgeRefused) as seen:
        for _ in range(4):
            assert await svc("r") == "slow"
    # 4 deposits at 0.5: the 2nd call's hedge is the first the budget covers
    stats = hedge.statistics()
    assert (stats.hedges, stats.budget_refusals) == (2, 2)
    assert [e.reason for e in seen] == ["budget", "budget"]
    assert budget.statistics().retries == 2


async def test_no_hedge_past_the_deadline() -> None:
    """A hedge due at or after the deadline is not sent."""
    inner = Copies((10.0, "a"))
    hedge = layers.Hedge(delay=1.0)
    svc = layers.ServiceBuilder().timeout(1.0).layer(hedge).service(inner)
    with (
        capture_events(layers.events.HedgeRefused) as seen,
        pytest.raises(layers.Elapsed),
    ):
        await svc("r")
    assert len(inner.started) == 1
    assert hedge.statistics().deadline_refusals == 1
    assert [e.reason for e in seen] == ["deadline"]


async def test_hedge_before_the_deadline_is_sent() -> None:
    """A deadline further off than the delay allows the hedge."""
    inner = Copies((10.0, "a"), (0.1, "b"))
    svc = layers.ServiceBuilder().timeout(2.0).hedge(delay=1.0).service(inner)
    assert await svc("r") == "b"


async def test_unsafe_requests_are_not_hedged() -> None:
    """safe(request) false: the request is passed through, once."""
    inner = Copies((2.0, "a"), (0.1, "b"))
    svc = layers.Hedge(delay=0.5, safe=lambda r: r == "GET").layer(inner)
    assert await svc("POST") == "a"
    assert inner.started == [0.0]
    assert await svc("GET") == "b"


async def test_parallel_mode_sends_every_copy_at_once() -> None:
    """delay=0: every copy at once; the fastest success wins."""
    inner = Copies((3.0, "a"), (2.0, "b"), (1.0, "c"))
    hedge = layers.Hedge(delay=0, max_hedges=2)
    with capture_events(layers.events.HedgeWon) as seen:
        assert await hedge.layer(inner)("r") == "c"
    assert inner.started == [0.0, 0.0, 0.0]
    assert anyio.current_time() == 1.0
    assert seen[0].attempt in {2, 3}  # trio starts the hedges in any order
    assert seen[0].copies == 3
    assert hedge.statistics().hedge_wins == 1
    assert inner.cancelled == 2


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID")


async def test_a_hedge_runs_in_the_callers_context() -> None:
    """The timer sends the hedges, but each copy sees its caller's context."""
    seen: list[tuple[str, str, float]] = []

    async def inner(request: str) -> str:
        copy = "hedge" if any(r == request for r, _, _ in seen) else "original"
        seen.append((request, REQUEST_ID.get("unset"), anyio.current_time()))
        await anyio.sleep(10.0 if copy == "original" else 0.1)
        return copy

    svc = layers.Hedge(delay=0.5).layer(inner)
    answers: dict[str, str] = {}

    async def call(request: str) -> None:
        REQUEST_ID.set(f"ctx-{request}")
        answers[request] = await svc(request)

    async with anyio.create_task_group() as group:
        group.start_soon(call, "a")
        await anyio.sleep(0.2)
        group.start_soon(call, "b")  # its hedge goes out from the same timer
    assert answers == {"a": "hedge", "b": "hedge"}
    assert seen == [
        ("a", "ctx-a", 0.0),
        ("b", "ctx-b", 0.2),
        ("a", "ctx-a", 0.5),
        ("b", "ctx-b", pytest.approx(0.7)),
    ]


async def test_a_delay_that_shrinks_is_kept_by_the_timer() -> None:
    """A window rotation that shortens the delay: a new call's hedge is not late.

    The first call waits on the fallback delay (5 s); the window then gives
    0.1 s, and the second call's hedge goes out 0.1 s after it starts, before
    the first call's, which still goes out at 5 s.
    """
    sent: list[tuple[str, float]] = []

    async def inner(request: str) -> str:
        sent.append((request, anyio.current_time()))
        if len([r for r, _ in sent if r == request]) == 1 and request != "quick":
            await anyio.sleep(10.0)  # every original is slow but the quick ones
            return "original"
        await anyio.sleep(0.1)
        return "hedge" if request != "quick" else "quick"

    hedge = layers.Hedge(quantile=0.5, delay=5.0, min_samples=3, period=1.0)
    svc = hedge.layer(inner)
    answers: dict[str, str] = {}

    async def call(request: str) -> None:
        answers[request] = await svc(request)

    async with anyio.create_task_group() as group:
        group.start_soon(call, "A")  # its hedge is due at 5.0
        for _ in range(3):  # 0.1 s each: the window's median
            await svc("quick")
        await anyio.sleep(1.0 - anyio.current_time())  # the window closes
        group.start_soon(call, "B")  # due at 1.1
    assert answers == {"A": "hedge", "B": "hedge"}
    hedges = [(r, t) for r, t in sent if r != "quick"]
    assert hedges == [
        ("A", 0.0),
        ("B", 1.0),
        ("B", pytest.approx(1.1)),
        ("A", 5.0),
    ]


async def test_the_timer_keeps_only_the_calls_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls answered before the delay: the heap stays small, the timer task ends."""
    import layers._hedge as hedge_module

    timers: list[Any] = []
    make = hedge_module._Timer  # pyright: ignore[reportPrivateUsage]

    def record(*args: Any) -> Any:
        timers.append(make(*args))
        return timers[-1]

    monkeypatch.setattr(hedge_module, "_Timer", record)
    inner = Copies((0.001, "ok"))
    svc = layers.Hedge(delay=10.0).layer(inner)
    for _ in range(1000):
        assert await svc("r") == "ok"
    (timer,) = timers  # one timer for every call on this loop
    assert timer.live == 0
    assert len(timer.heap) <= 2 * 0 + 64 + 1  # compacted as it grew
    assert timer.task is not None  # asleep until the oldest entry is due
    await anyio.sleep(10.0)
    assert timer.task is None  # nothing left: the task ended
    assert timer.heap == []
    assert len(inner.started) == 1000  # and no hedge was sent


async def test_the_timer_sends_a_hedge_while_the_call_waits_on_its_copies() -> None:
    """The first copy failed (the caller's part is done): a due hedge still goes.

    The call is then in its task group's exit, waiting for the copy that the
    failure sent; the timer's hedge joins that group and wins.
    """
    inner = Copies((0.5, ConnectionError("a")), (3.0, "b"), (0.1, "c"))
    hedge = layers.Hedge(delay=1.0, max_hedges=2, budget=None)
    assert await hedge.layer(inner)("r") == "c"
    assert inner.started == [0.0, 0.5, 1.0]
    assert anyio.current_time() == pytest.approx(1.1)
    assert inner.running == 0
    assert inner.cancelled == 1  # "b", the loser


async def test_builder_shares_one_layer() -> None:
    """.hedge() makes one layer: the services of one builder share its state."""
    builder = layers.ServiceBuilder().hedge(delay=0.5)
    a = builder.service(Copies((1.0, "a"), (0.1, "h")))
    b = builder.service(Copies((1.0, "b"), (0.1, "h")))
    await a("r")
    await b("r")
    (hedge,) = [
        layer for layer in layers.layers_of(a) if isinstance(layer, layers.Hedge)
    ]
    assert hedge.statistics().hedges == 2
    assert hedge.observe().figures["hedge_wins"] == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "Hedge(delay=None, quantile=None): give delay"),
        ({"delay": -1}, "Hedge(delay=-1): delay must be"),
        ({"delay": float("nan")}, "Hedge(delay=nan)"),
        ({"quantile": 1.0}, "Hedge(quantile=1.0): quantile must be"),
        ({"quantile": 0}, "Hedge(quantile=0)"),
        ({"delay": 1, "max_hedges": 0}, "Hedge(max_hedges=0): max_hedges must be"),
        ({"delay": 1, "min_samples": 0}, "Hedge(min_samples=0)"),
        ({"delay": 1, "period": 0}, "Hedge(period=0): period must be"),
        ({"delay": 1, "safe": "GET"}, "Hedge(safe='GET'): safe must be"),
        ({"delay": 1, "budget": 5}, "Hedge(budget=5): budget must be a RetryBudget"),
        ({"delay": 1, "name": ""}, "Hedge(name=''): name must be"),
    ],
)
def test_bad_configuration_is_named(options: dict[str, Any], message: str) -> None:
    """Bad input: ConfigurationError naming the layer, the parameter and the value."""
    with pytest.raises(layers.ConfigurationError) as caught:
        layers.Hedge(**options)
    assert str(caught.value).startswith(message)


def _sim_hedge() -> Any:
    path = pathlib.Path(__file__).parent.parent / "benchmarks" / "sim_hedge.py"
    spec = importlib.util.spec_from_file_location("sim_hedge", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_tail_at_scale_goal() -> None:
    """The issue's goal: 1 % 20x slower; hedging at p95: p99 / 5, <= 6 % extra."""
    simulate = _sim_hedge().simulate
    plain = await simulate(hedged=False, calls=3000)
    hedged = await simulate(hedged=True, calls=3000)
    assert plain.p99 / hedged.p99 >= 5
    assert hedged.extra_calls <= 0.06


async def test_the_run_is_recorded_over_time() -> None:
    """simulate()'s intervals add up to its totals; hedged, no interval's p99 slow."""
    sim = _sim_hedge()
    plain = await sim.simulate(hedged=False, calls=2000, interval=2.0)
    hedged = await sim.simulate(hedged=True, calls=2000, interval=2.0)
    for result in (plain, hedged):
        assert len(result.latencies) == len(result.ended) == 2000
        assert list(result.ended) == sorted(result.ended)
        intervals = result.intervals
        assert [i.start for i in intervals] == [2.0 * n for n in range(len(intervals))]
        assert intervals[-1].start <= result.ended[-1] < intervals[-1].start + 2.0
        assert sum(i.calls for i in intervals) == 2000
        assert sum(i.downstream_calls for i in intervals) == result.downstream_calls
        for i in intervals:
            assert i.calls > 0
            assert 0.8 * sim.FAST <= i.p50 <= 1.2 * sim.FAST
    assert all(i.extra_calls == 0 and i.delay is None for i in plain.intervals)
    # 1 % slow (20 x 10 ms): some interval of the plain run has a slow p99;
    # hedged, every interval's p99 is about the delay plus a fast call
    assert max(i.p99 for i in plain.intervals) >= 10 * sim.FAST
    assert max(i.p99 for i in hedged.intervals) <= 3 * sim.FAST
    assert all(0 < i.extra_calls <= 0.12 for i in hedged.intervals)
    delays = [i.delay for i in hedged.intervals]
    assert all(d is not None and sim.FAST <= d <= 1.3 * sim.FAST for d in delays)
