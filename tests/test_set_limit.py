"""Limits changed at run time: RateLimit.set_limit and ConcurrencyLimit.set_limit."""

from __future__ import annotations

import gc
import math
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import layers
from layers.testing import capture_events

pytestmark = pytest.mark.anyio


def now() -> float:
    """The event loop's (virtual) clock."""
    return anyio.current_time()


async def settle() -> None:
    """Let every task that is ready run (the clock stands still meanwhile)."""
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


def recorder(log: list[tuple[Any, float]]) -> layers.Service[Any, Any]:
    """A service that logs (request, time of the call) and echoes."""

    async def service(request: Any) -> Any:
        log.append((request, now()))
        return request

    return service


async def call(
    svc: layers.Service[Any, Any], request: Any, outcomes: dict[Any, Any]
) -> None:
    """Call *svc*, keeping what it returned or the error it raised."""
    try:
        outcomes[request] = await svc(request)
    except layers.Rejected as error:
        outcomes[request] = error


def times(log: list[tuple[Any, float]]) -> dict[Any, float]:
    """The time of each call in *log*, by request."""
    return dict(log)


# ----------------------------------------------------------------- RateLimit


async def test_raising_the_rate_spaces_the_waiters_by_the_new_interval() -> None:
    """1/s raised to 10/s: the booked call keeps its time, the rest come 0.1 s apart."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1)
    svc = limit.layer(recorder(log))
    async with anyio.create_task_group() as group:
        for request in "ABCD":
            group.start_soon(svc, request)
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.5)
        assert limit.statistics().waiting == 3
        limit.set_limit(rate=10)
    assert times(log) == pytest.approx({"A": 0.0, "B": 1.0, "C": 1.1, "D": 1.2})
    assert limit.statistics().waiting == 0


async def test_lowering_the_rate_spaces_the_waiters_by_the_new_interval() -> None:
    """10/s lowered to 1/s: the booked call keeps its time, the rest come 1 s apart."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(10)
    svc = limit.layer(recorder(log))
    async with anyio.create_task_group() as group:
        for request in "ABC":
            group.start_soon(svc, request)
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.05)
        limit.set_limit(rate=1)
    assert times(log) == pytest.approx({"A": 0.0, "B": 0.1, "C": 1.1})


async def test_a_waiter_asleep_on_the_old_parameters_wakes_at_once() -> None:
    """A burst raised while the head sleeps: it is admitted at the change, not later."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1, burst=2)
    svc = limit.layer(recorder(log))
    async with anyio.create_task_group() as group:
        for request in "ABC":
            group.start_soon(svc, request)
            await anyio.lowlevel.checkpoint()
        # tat = 2 after A and B; C waits until 1 (lead 2 s, burst allows 1 s)
        await anyio.sleep(0.25)
        limit.set_limit(burst=3)  # the lead allowed is 2 s now: C fits
    assert times(log) == pytest.approx({"A": 0.0, "B": 0.0, "C": 0.25})


async def test_raising_the_rate_with_a_burst_keeps_the_booked_time() -> None:
    """The booked time is kept: after a raise the lead allowed is burst x the new T.

    1/s with burst 2: A and B book until 2 s and C waits until 1 s (a lead of
    1 s is allowed). Raised to 10/s the lead allowed is 0.2 s, so C goes at
    1.9 s (never later than the booked 2 s), then D at 2.0 s.
    """
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1, burst=2)
    svc = limit.layer(recorder(log))
    async with anyio.create_task_group() as group:
        for request in "ABCD":
            group.start_soon(svc, request)
            await anyio.lowlevel.checkpoint()
        limit.set_limit(rate=10)
    assert times(log) == pytest.approx({"A": 0.0, "B": 0.0, "C": 1.9, "D": 2.0})


async def test_lowering_the_rate_counts_the_booked_time_at_the_new_price() -> None:
    """10/s with burst 5 used up, lowered to 1/s: the 0.5 s booked is half a call.

    The lead allowed becomes 5 s: four more calls go at once, then one per
    second (at most burst + d / T over any stretch d from the change).
    """
    limit = layers.RateLimit(10, burst=5, mode="reject")
    svc = limit.layer(recorder([]))
    for i in range(5):
        await svc(i)
    limit.set_limit(rate=1)
    for i in range(4):
        await svc(i)
    with pytest.raises(layers.RateLimited) as caught:
        await svc("late")
    assert caught.value.retry_after == pytest.approx(0.5)
    assert limit.interval == 1.0
    assert limit.tolerance == 5.0


async def test_lowering_the_burst_holds_calls_until_the_lead_fits() -> None:
    """A burst of 3 used up at 1/s, lowered to 1: the next call waits the whole lead."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1, burst=3)
    svc = limit.layer(recorder(log))
    for request in "ABC":
        await svc(request)
    limit.set_limit(burst=1)
    await svc("D")
    await svc("E")
    assert times(log) == pytest.approx(
        {"A": 0.0, "B": 0.0, "C": 0.0, "D": 3.0, "E": 4.0}
    )


async def test_a_waiter_that_no_longer_fits_max_wait_is_refused_at_once() -> None:
    """Lowered while C waits: C's new wait exceeds max_wait, so it leaves now."""
    log: list[tuple[Any, float]] = []
    outcomes: dict[Any, Any] = {}
    limit = layers.RateLimit(10, max_wait=0.5)
    svc = limit.layer(recorder(log))
    with capture_events(layers.events.RateLimitRejected) as rejected:
        async with anyio.create_task_group() as group:
            for request in "ABC":
                group.start_soon(call, svc, request, outcomes)
                await anyio.lowlevel.checkpoint()
            await anyio.sleep(0.05)
            limit.set_limit(rate=1)
            await settle()
            assert isinstance(outcomes.get("C"), layers.RateLimited)
            assert now() == pytest.approx(0.05)
    error = outcomes["C"]
    assert isinstance(error, layers.RateLimited)
    # B books until 1.1 at the new price: C would go at 1.1, 1.05 s from now
    assert error.retry_after == pytest.approx(1.05)
    assert error.reason == "max_wait"
    assert [e.reason for e in rejected] == ["max_wait"]
    assert times(log) == pytest.approx({"A": 0.0, "B": 0.1})


async def test_a_waiter_refused_by_set_limit_lets_the_ones_behind_move_up() -> None:
    """The refused waiter's cost no longer counts for the waiters behind it."""
    log: list[tuple[Any, float]] = []
    outcomes: dict[Any, Any] = {}
    costs = {"A": 1, "B": 1, "C": 2, "D": 1}
    limit = layers.RateLimit(
        10, burst=2, max_wait=1.0, cost=lambda request: costs[request]
    )
    svc = limit.layer(recorder(log))
    async with anyio.create_task_group() as group:
        for request in "AB":
            await svc(request)
        for request in "CD":
            group.start_soon(call, svc, request, outcomes)
            await anyio.lowlevel.checkpoint()
        limit.set_limit(burst=1)  # C (cost 2) can never be admitted now
        await settle()
        assert isinstance(outcomes.get("C"), layers.RateLimited)
    error = outcomes["C"]
    assert isinstance(error, layers.RateLimited)
    assert (error.reason, error.retry_after) == ("cost", None)
    # D goes when the lead of 0.2 s booked by A and B has run out
    assert times(log) == pytest.approx({"A": 0.0, "B": 0.0, "D": 0.2})


async def test_a_head_whose_cost_exceeds_the_new_burst_is_refused() -> None:
    """The first waiter, asleep, wakes and leaves: its cost can never fit now."""
    log: list[tuple[Any, float]] = []
    outcomes: dict[Any, Any] = {}
    costs = {"A": 3, "B": 3, "C": 1}
    limit = layers.RateLimit(1, burst=3, cost=lambda request: costs[request])
    svc = limit.layer(recorder(log))
    await svc("A")
    async with anyio.create_task_group() as group:
        for request in "BC":
            group.start_soon(call, svc, request, outcomes)
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(1)
        limit.set_limit(burst=2)
    error = outcomes["B"]
    assert isinstance(error, layers.RateLimited)
    assert error.reason == "cost"
    # C: tat 3, lead allowed (2 - 1) x 1 s: at 2 s
    assert times(log) == pytest.approx({"A": 0.0, "C": 2.0})


async def test_every_key_gets_the_new_parameters() -> None:
    """A per-key limit: the waiters of every key move to the new interval."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1, key=lambda request: request[0])
    svc = limit.layer(recorder(log))
    async with anyio.create_task_group() as group:
        for request in ["a1", "b1", "a2", "b2", "a3", "b3"]:
            group.start_soon(svc, request)
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.5)
        limit.set_limit(rate=4)
    assert times(log) == pytest.approx(
        {"a1": 0.0, "b1": 0.0, "a2": 1.0, "b2": 1.0, "a3": 1.25, "b3": 1.25}
    )


async def test_fifo_order_is_kept_across_a_change() -> None:
    """Twenty waiters, the rate raised twice: served in arrival order."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1)
    svc = limit.layer(recorder(log))
    async with anyio.create_task_group() as group:
        for request in range(20):
            group.start_soon(svc, request)
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(2.5)
        limit.set_limit(rate=10)
        await anyio.sleep(0.65)
        limit.set_limit(rate=100)
    assert [request for request, _ in log] == list(range(20))
    at = times(log)
    assert at[2] == pytest.approx(2.0)
    assert at[3] == pytest.approx(3.0)  # booked at 1/s before the change
    assert at[4] == pytest.approx(3.1)
    # raised to 100/s at 3.15, when 4 had booked until 3.2
    assert at[5] == pytest.approx(3.2)
    assert at[6] == pytest.approx(3.21)
    assert at[19] == pytest.approx(3.34)


@pytest.mark.parametrize("kind", ["cell", "keyed", "cost"])
async def test_services_built_before_the_change_follow_it(kind: str) -> None:
    """Each form of the success path reads the new interval (reject mode)."""
    options: dict[str, Any] = {}
    if kind == "keyed":
        options["key"] = lambda request: "k"  # pyright: ignore[reportUnknownLambdaType]
    elif kind == "cost":
        options["cost"] = lambda request: 1  # pyright: ignore[reportUnknownLambdaType]
    limit = layers.RateLimit(1, mode="reject", **options)
    svc = limit.layer(recorder([]))
    other = limit.layer(recorder([]))
    await svc(1)
    limit.set_limit(rate=4)
    with pytest.raises(layers.RateLimited) as caught:
        await other(2)
    # booked until 1 s at the old price
    assert caught.value.retry_after == pytest.approx(1.0)
    await anyio.sleep(1.0)
    await other(2)
    await anyio.sleep(0.25)
    await svc(3)  # 0.25 s later: the new interval
    with pytest.raises(layers.RateLimited) as caught:
        await svc(4)
    assert caught.value.retry_after == pytest.approx(0.25)


async def test_cancelled_head_during_the_change_takes_nothing() -> None:
    """The head cancelled as set_limit wakes it: the next waiter takes its turn."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1)
    svc = limit.layer(recorder(log))
    await svc("A")
    async with anyio.create_task_group() as group:
        scope = anyio.CancelScope()
        group.start_soon(_in_scope, scope, svc, "B")
        await anyio.lowlevel.checkpoint()
        group.start_soon(svc, "C")
        await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.5)
        limit.set_limit(rate=10)
        scope.cancel()
    assert times(log) == pytest.approx({"A": 0.0, "C": 1.0})
    await svc("D")
    assert times(log)["D"] == pytest.approx(1.1)
    assert limit.statistics().waiting == 0


async def test_cancelled_waiter_after_the_change_takes_nothing() -> None:
    """A waiter cancelled after a change leaves; the one behind goes in its place."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1)
    svc = limit.layer(recorder(log))
    await svc("A")
    async with anyio.create_task_group() as group:
        group.start_soon(svc, "B")
        await anyio.lowlevel.checkpoint()
        scope = anyio.CancelScope()
        group.start_soon(_in_scope, scope, svc, "C")
        await anyio.lowlevel.checkpoint()
        group.start_soon(svc, "D")
        await anyio.lowlevel.checkpoint()
        limit.set_limit(rate=2)
        await anyio.sleep(0.5)
        scope.cancel()
    assert times(log) == pytest.approx({"A": 0.0, "B": 1.0, "D": 1.5})


async def _in_scope(
    scope: anyio.CancelScope, svc: layers.Service[Any, Any], request: Any
) -> None:
    with scope:
        await svc(request)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"rate": 0},
            "RateLimit.set_limit(rate=0): rate must be a finite number > 0, got 0",
        ),
        ({"rate": math.nan}, "RateLimit.set_limit(rate=nan): rate must be"),
        ({"rate": True}, "RateLimit.set_limit(rate=True): rate must be"),
        (
            {"period": -1.0},
            "RateLimit.set_limit(period=-1.0): period must be a finite number > 0",
        ),
        (
            {"burst": 0},
            "RateLimit.set_limit(burst=0): burst must be an int >= 1, got 0",
        ),
        ({"burst": 2.5}, "RateLimit.set_limit(burst=2.5): burst must be an int"),
        (
            {"rate": 1e-300, "period": 1e300},
            "RateLimit.set_limit(rate=1e-300, period=1e+300): period / rate must be",
        ),
    ],
)
def test_bad_values_are_refused_and_change_nothing(
    kwargs: dict[str, Any], message: str
) -> None:
    """A bad value raises ConfigurationError naming set_limit, parameter, value."""
    limit = layers.RateLimit(5, period=2.0, burst=3)
    with pytest.raises(layers.ConfigurationError) as caught:
        limit.set_limit(**kwargs)
    assert str(caught.value).startswith(message)
    assert (limit.rate, limit.period, limit.burst) == (5, 2.0, 3)
    assert limit.interval == 0.4


async def test_events_statistics_and_observe_show_the_change() -> None:
    """One LimitChanged per parameter changed; statistics and observe follow."""
    limit = layers.RateLimit(10, burst=2, name="api")
    with capture_events(layers.events.LimitChanged) as changed:
        limit.set_limit(rate=20, burst=4)
        limit.set_limit(rate=20)  # no change: no event
        limit.set_limit(period=2.0)
    assert [(e.layer, e.kind, e.parameter, e.old, e.new) for e in changed] == [
        ("api", "rate_limit", "rate", 10, 20),
        ("api", "rate_limit", "burst", 2, 4),
        ("api", "rate_limit", "period", 1.0, 2.0),
    ]
    assert changed[0].event == "limit_changed"
    assert changed[0].level == "info"
    stats = limit.statistics()
    assert (stats.rate, stats.period, stats.burst) == (20, 2.0, 4)
    figures = limit.observe().figures
    assert (figures["rate"], figures["period"], figures["burst"]) == (20, 2.0, 4)
    assert limit.interval == 0.1
    assert "rate=20" in repr(limit)


def test_tuners_do_not_keep_services_alive() -> None:
    """Each service built registers a tuner, held only as long as the service lives."""
    limit = layers.RateLimit(10)
    concurrency = layers.ConcurrencyLimit(2)

    async def echo(request: Any) -> Any:
        return request

    services = [limit.layer(echo) for _ in range(100)]
    services += [concurrency.layer(echo) for _ in range(100)]
    assert len(limit._state.tuners) == 100  # pyright: ignore[reportPrivateUsage]
    del services
    gc.collect()
    assert not limit._state.tuners  # pyright: ignore[reportPrivateUsage]
    assert not concurrency._state.tuners  # pyright: ignore[reportPrivateUsage]


# ---------------------------------------------------------- ConcurrencyLimit


class Held:
    """An inner service whose calls run until the test lets them go."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.finished: list[Any] = []
        self.gates: dict[Any, anyio.Event] = {}

    async def __call__(self, request: Any) -> Any:
        gate = self.gates[request] = anyio.Event()
        self.started.append(request)
        await gate.wait()
        self.finished.append(request)
        return request

    def let_go(self, request: Any) -> None:
        """End the call of *request*."""
        self.gates[request].set()


async def test_raising_max_in_flight_admits_that_many_waiters_at_once() -> None:
    """Limit 1 raised to 3 with four waiting: the first two start at once, in order."""
    held = Held()
    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(held)
    async with anyio.create_task_group() as group:
        for request in range(5):
            group.start_soon(svc, request)
            await settle()
        assert held.started == [0]
        limit.set_limit(3)
        await settle()
        # the first two waiters got the permits (trio may run them in
        # either order)
        assert held.started[0] == 0
        assert sorted(held.started[1:]) == [1, 2]
        assert limit.statistics().in_flight == 3
        assert limit.statistics().waiting == 2
        held.let_go(1)
        await settle()
        assert held.started[3] == 3
        for request in (0, 2, 3, 4):
            held.let_go(request)
            await settle()
    assert held.finished == [1, 0, 2, 3, 4]
    assert limit.statistics().in_flight == 0


async def test_lowering_max_in_flight_cuts_off_no_call_in_flight() -> None:
    """Limit 3 lowered to 1: the three calls end; a waiter starts when none is left."""
    held = Held()
    limit = layers.ConcurrencyLimit(3)
    svc = limit.layer(held)
    async with anyio.create_task_group() as group:
        for request in range(3):
            group.start_soon(svc, request)
            await settle()
        limit.set_limit(1)
        group.start_soon(svc, "new")
        await settle()
        group.start_soon(svc, "newer")
        await settle()
        assert held.started == [0, 1, 2]
        assert limit.statistics().waiting == 2
        held.let_go(0)
        await settle()
        held.let_go(1)
        await settle()
        assert held.started == [0, 1, 2]  # two in flight, then one: not below 1
        held.let_go(2)
        await settle()
        assert held.started == [0, 1, 2, "new"]
        assert limit.statistics().in_flight == 1
        held.let_go("new")
        await settle()
        assert held.started[-1] == "newer"
        held.let_go("newer")
    assert held.finished == [0, 1, 2, "new", "newer"]


async def test_load_shedding_after_lowering_refuses_until_below_the_limit() -> None:
    """max_waiting=0, 2 in flight, lowered to 1: refused until both have ended."""
    held = Held()
    limit = layers.ConcurrencyLimit(2, max_waiting=0)
    svc = limit.layer(held)
    async with anyio.create_task_group() as group:
        for request in range(2):
            group.start_soon(svc, request)
            await settle()
        limit.set_limit(1)
        with pytest.raises(layers.Overloaded):
            await svc("shed")
        held.let_go(0)
        await settle()
        with pytest.raises(layers.Overloaded):
            await svc("shed again")
        held.let_go(1)
        await settle()
        group.start_soon(svc, "admitted")
        await settle()
        assert held.started == [0, 1, "admitted"]
        held.let_go("admitted")
    assert limit.statistics().rejected == 2


async def test_max_wait_still_applies_after_a_change() -> None:
    """A waiter of a lowered limit is refused after max_wait, as before."""
    held = Held()
    limit = layers.ConcurrencyLimit(2, max_wait=1.0)
    svc = limit.layer(held)
    async with anyio.create_task_group() as group:
        for request in range(2):
            group.start_soon(svc, request)
            await settle()
        limit.set_limit(1)
        held.let_go(0)
        start = now()
        with pytest.raises(layers.Overloaded) as caught:
            await svc("late")
        assert caught.value.reason == "max_wait"
        assert now() - start == pytest.approx(1.0)
        held.let_go(1)


async def test_a_waiter_cancelled_as_the_raise_admits_it_passes_its_permit_on() -> None:
    """Cancelled in the step the raise hands it a permit: the next waiter gets it."""
    held = Held()
    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(held)
    async with anyio.create_task_group() as group:
        group.start_soon(svc, 0)
        await settle()
        scope = anyio.CancelScope()
        group.start_soon(_in_scope, scope, svc, "cancelled")
        await settle()
        group.start_soon(svc, "next")
        await settle()
        limit.set_limit(2)
        scope.cancel()
        await settle()
        # On trio the waiter leaves at once; on asyncio a task woken before
        # its scope is cancelled resumes, and is cancelled at its next await
        # (inside the inner call): either way the permit reaches "next".
        assert held.started[-1] == "next"
        assert "cancelled" not in held.finished
        assert limit.statistics().in_flight == 2
        assert limit.statistics().waiting == 0
        held.let_go(0)
        held.let_go("next")
    assert limit.statistics().in_flight == 0


async def test_a_waiter_cancelled_after_a_lowering_holds_nothing() -> None:
    """Cancelled while it waits below a lowered limit: nothing is taken or given."""
    held = Held()
    limit = layers.ConcurrencyLimit(2)
    svc = limit.layer(held)
    async with anyio.create_task_group() as group:
        for request in range(2):
            group.start_soon(svc, request)
            await settle()
        limit.set_limit(1)
        scope = anyio.CancelScope()
        group.start_soon(_in_scope, scope, svc, "cancelled")
        await settle()
        group.start_soon(svc, "next")
        await settle()
        held.let_go(0)
        await settle()
        scope.cancel()
        await settle()
        assert limit.statistics().in_flight == 1
        held.let_go(1)
        await settle()
        assert held.started == [0, 1, "next"]
        held.let_go("next")
    assert limit.statistics().in_flight == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            0,
            "ConcurrencyLimit.set_limit(max_in_flight=0): max_in_flight must be an "
            "int >= 1, got 0",
        ),
        (True, "ConcurrencyLimit.set_limit(max_in_flight=True): max_in_flight"),
        (2.0, "ConcurrencyLimit.set_limit(max_in_flight=2.0): max_in_flight"),
    ],
)
def test_bad_max_in_flight_is_refused(value: Any, message: str) -> None:
    """A bad value raises ConfigurationError naming set_limit, parameter, value."""
    limit = layers.ConcurrencyLimit(3)
    with pytest.raises(layers.ConfigurationError) as caught:
        limit.set_limit(value)
    assert str(caught.value).startswith(message)
    assert limit.max_in_flight == 3


async def test_concurrency_events_statistics_and_observe_show_the_change() -> None:
    """LimitChanged per change (none for the same value); statistics, observe follow."""
    limit = layers.ConcurrencyLimit(3, name="db")
    with capture_events(layers.events.LimitChanged) as changed:
        limit.set_limit(5)
        limit.set_limit(5)
        limit.set_limit(2)
    assert [(e.layer, e.kind, e.parameter, e.old, e.new) for e in changed] == [
        ("db", "concurrency_limit", "max_in_flight", 3, 5),
        ("db", "concurrency_limit", "max_in_flight", 5, 2),
    ]
    assert limit.statistics().max_in_flight == 2
    assert limit.observe().figures["max_in_flight"] == 2


# ------------------------------------------------------------ OpenTelemetry


def test_otel_gauges_show_the_limit_in_force() -> None:
    """The observed limits' gauges read the new values; the event is counted."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from layers.otel import OtelMetrics

    reader = InMemoryMetricReader()
    metrics = OtelMetrics(MeterProvider(metric_readers=[reader]))
    rate = layers.RateLimit(10, burst=2, name="api")
    concurrency = layers.ConcurrencyLimit(4, name="db")
    metrics.observe(rate, concurrency)
    metrics.install()
    try:
        rate.set_limit(25, burst=5)
        concurrency.set_limit(2)
    finally:
        metrics.uninstall()
    points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    points.setdefault(metric.name, []).append(
                        (dict(point.attributes or {}), getattr(point, "value", None))
                    )
    assert [v for _, v in points["layers.rate_limit.rate"]] == [25]
    assert [v for _, v in points["layers.rate_limit.burst"]] == [5]
    assert [v for _, v in points["layers.concurrency_limit.max_in_flight"]] == [2]
    counted = {
        (a["layers.layer.kind"], a["layers.event.name"]): v
        for a, v in points["layers.events"]
    }
    assert counted == {
        ("rate_limit", "limit_changed"): 2,
        ("concurrency_limit", "limit_changed"): 1,
    }
