"""Tests of the RateLimit layer: GCRA schedule, modes, keys, bounds, cancellation."""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import re
from collections.abc import Callable, Hashable
from fractions import Fraction
from typing import Any

import anyio
import anyio.lowlevel
import hypothesis
import pytest
from helpers import CANCEL_ORDERS, cancelled_waiters
from hypothesis import strategies as st

import layers
from layers import _backend
from layers.testing import capture_events

pytestmark = pytest.mark.anyio


def now() -> float:
    """The event loop's (virtual) clock."""
    return anyio.current_time()


async def echo(request: Any) -> Any:
    """A service that answers at once, without a checkpoint."""
    return request


def recorder(log: list[tuple[Any, float]]) -> layers.Service[Any, Any]:
    """A service that logs (request, time of the call) and echoes."""

    async def service(request: Any) -> Any:
        log.append((request, now()))
        return request

    return service


def gcra(
    tat: float, at: float, cost: float, interval: float, tolerance: float
) -> tuple[bool, float, float]:
    """The reference GCRA: (admitted, new tat, retry_after)."""
    base = max(tat, at)
    backlog = base - at
    slack = tolerance - cost * interval
    if backlog <= slack:
        return True, base + cost * interval, 0.0
    return False, tat, backlog - slack


# ------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, "RateLimit(rate=0): rate must be a finite number > 0, got 0"),
        ({"rate": -5}, "rate must be a finite number > 0, got -5"),
        ({"rate": math.nan}, "rate must be a finite number > 0, got nan"),
        ({"rate": math.inf}, "rate must be a finite number > 0, got inf"),
        ({"rate": True}, "rate must be a finite number > 0, got True"),
        ({"rate": "10"}, "rate must be a finite number > 0, got '10'"),
        ({"rate": 1, "period": 0}, "RateLimit(period=0): period must be a finite"),
        ({"rate": 1, "period": -1.0}, "period must be a finite number > 0, got -1.0"),
        ({"rate": 1, "burst": 0}, "RateLimit(burst=0): burst must be an int >= 1"),
        ({"rate": 1, "burst": -2}, "burst must be an int >= 1, got -2"),
        ({"rate": 1, "burst": 2.5}, "burst must be an int >= 1, got 2.5"),
        ({"rate": 1, "mode": "block"}, "mode must be 'wait' or 'reject', got 'block'"),
        ({"rate": 1, "max_wait": 0}, "max_wait must be None or a finite number"),
        ({"rate": 1, "max_wait": -1}, "max_wait must be None or a finite number"),
        (
            {"rate": 1, "mode": "reject", "max_wait": 1.0},
            "max_wait applies to mode='wait' only",
        ),
        ({"rate": 1, "key": "tenant"}, "key must be None or callable, got 'tenant'"),
        ({"rate": 1, "cost": 3}, "cost must be None or callable, got 3"),
        ({"rate": 1, "max_keys": 0}, "max_keys must be an int >= 1, got 0"),
        ({"rate": 1, "store": object()}, "store must be None or a RateLimitStore"),
        (
            {"rate": 1, "store": layers.MemoryRateLimitStore(), "max_keys": 5},
            "max_keys sizes the default in-memory store",
        ),
        ({"rate": 1, "name": ""}, "name must be a non-empty string, got ''"),
        ({"rate": 1e308, "period": 1e-308}, "period / rate must be a finite number"),
    ],
)
def test_bad_configuration_fails_at_construction(
    kwargs: dict[str, Any], message: str
) -> None:
    """Each invalid value raises ConfigurationError naming parameter and value."""
    with pytest.raises(layers.ConfigurationError) as info:
        layers.RateLimit(**kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: layers.RateLimit(1, max_keys=5), id="RateLimit"),
        pytest.param(
            lambda: layers.RateLimit(1, max_keys=5, cost=lambda r: 1), id="with-cost"
        ),
        pytest.param(
            lambda: layers.ServiceBuilder().rate_limit(1, max_keys=5), id="rate_limit"
        ),
    ],
)
def test_max_keys_without_key_is_refused(make: Callable[[], Any]) -> None:
    """max_keys sizes the table of keys: without key= it means nothing: refused."""
    with pytest.raises(layers.ConfigurationError) as info:
        make()
    message = str(info.value)
    assert message.startswith("RateLimit(max_keys=5, key=None)")
    assert "max_keys" in message
    assert "key" in message


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda r: [r], id="list"),
        pytest.param(lambda r: {"tenant": r}, id="dict"),
        pytest.param(lambda r: (r, [r]), id="tuple-of-list"),
    ],
)
@pytest.mark.parametrize("cost", [None, lambda r: 1], ids=["cost-1", "cost-fn"])
async def test_unhashable_key_names_the_layer_and_the_key_parameter(
    key: Callable[[Any], Any], cost: Callable[[Any], float] | None
) -> None:
    """An unhashable key: CallbackError naming the layer, `key` and the type."""
    called: list[Any] = []

    async def inner(request: Any) -> Any:
        called.append(request)
        return request

    limit = layers.RateLimit(10, key=key, cost=cost, name="per-tenant")
    svc = limit.layer(inner)
    with pytest.raises(layers.CallbackError) as info:
        await svc("secret-tenant")
    assert (info.value.layer, info.value.parameter) == ("per-tenant", "key")
    message = str(info.value)
    assert "'per-tenant'" in message
    assert "key" in message
    assert type(key("x")).__name__ in message
    assert "secret-tenant" not in message  # the value may hold a payload
    assert called == []


def test_bad_store_size_fails() -> None:
    """MemoryRateLimitStore(max_keys=0) is refused with a clear message."""
    with pytest.raises(layers.ConfigurationError, match=r"max_keys must be an int"):
        layers.MemoryRateLimitStore(0)


def test_builder_validates_too() -> None:
    """The builder method builds the layer, so it validates the same way."""
    with pytest.raises(layers.ConfigurationError, match="burst must be an int >= 1"):
        layers.ServiceBuilder().rate_limit(10, burst=0)


def test_interval_and_tolerance() -> None:
    """The interval is period / rate and the tolerance is burst x interval."""
    limit = layers.RateLimit(4, 2.0, burst=3)
    assert limit.interval == 0.5
    assert limit.tolerance == 1.5


# ------------------------------------------------------------ basics


async def test_default_burst_admits_one_then_spaces_calls() -> None:
    """burst=1: one call at once, the next one T later (reject mode shows it)."""
    svc = layers.RateLimit(10, mode="reject").layer(echo)
    assert await svc(1) == 1
    with pytest.raises(layers.RateLimited) as info:
        await svc(2)
    assert info.value.retry_after == pytest.approx(0.1)
    assert info.value.layer == "rate_limit"
    await anyio.sleep(0.1)
    assert await svc(3) == 3


async def test_burst_admits_that_many_at_once() -> None:
    """burst=5 admits 5 calls at the same instant, refuses the 6th for exactly T."""
    svc = layers.RateLimit(2, burst=5, mode="reject").layer(echo)
    for i in range(5):
        assert await svc(i) == i
    with pytest.raises(layers.RateLimited) as info:
        await svc(5)
    assert info.value.retry_after == 0.5


async def test_retry_after_is_exact() -> None:
    """A call made retry_after later is admitted; one made just before is not."""
    svc = layers.RateLimit(3, 1.0, burst=2, mode="reject").layer(echo)
    await svc(0)
    await svc(1)
    with pytest.raises(layers.RateLimited) as info:
        await svc(2)
    retry_after = info.value.retry_after
    assert retry_after is not None
    assert retry_after == pytest.approx(1 / 3)
    await anyio.sleep(retry_after - 1e-3)
    with pytest.raises(layers.RateLimited) as again:
        await svc(3)
    assert again.value.retry_after == pytest.approx(1e-3, abs=1e-6)
    await anyio.sleep(again.value.retry_after or 0)
    assert await svc(4) == 4


async def test_success_path_adds_no_checkpoint() -> None:
    """An admitted call does not yield: it completes inside a cancelled scope."""
    svc = layers.RateLimit(100, burst=2).layer(echo)
    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await svc(1) == 1
        assert await svc(2) == 2
    assert not scope.cancelled_caught  # no checkpoint raised the cancellation
    keyed = layers.RateLimit(100, key=lambda r: r).layer(echo)
    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await keyed("a") == "a"
    assert not scope.cancelled_caught


async def test_inner_errors_pass_through_unchanged() -> None:
    """The inner service's exception reaches the caller as it was raised."""

    async def broken(request: int) -> int:
        raise KeyError(request)

    svc = layers.RateLimit(10).layer(broken)
    with pytest.raises(KeyError):
        await svc(1)


# ------------------------------------------------------------ the schedule


async def arrive(
    svc: layers.Service[Any, Any],
    request: Any,
    arrived: list[Any],
    scope: anyio.CancelScope | None = None,
) -> None:
    """Call svc(request), logging the arrival (nothing yields in between)."""
    with scope or anyio.CancelScope():
        arrived.append(request)
        await svc(request)


async def test_ten_thousand_waiting_calls_follow_the_schedule() -> None:
    """10,000 calls at 100/s are admitted at k x 10 ms (within 1 us), in order."""
    log: list[tuple[Any, float]] = []
    arrived: list[int] = []
    limit = layers.RateLimit(100)
    svc = limit.layer(recorder(log))
    start = now()
    async with anyio.create_task_group() as group:
        for i in range(10_000):
            group.start_soon(arrive, svc, i, arrived)
    assert [request for request, _ in log] == arrived
    assert len(arrived) == 10_000
    worst = max(abs((at - start) - k * 0.01) for k, (_, at) in enumerate(log))
    assert worst < 1e-6
    assert now() - start == pytest.approx(99.99, abs=1e-6)
    assert limit.statistics().waited == 9_999
    assert limit.statistics().waiting == 0


async def test_waiting_calls_after_a_burst_follow_the_schedule() -> None:
    """burst=5: five calls at t=0, then one every T; never more than the burst."""
    log: list[tuple[Any, float]] = []
    arrived: list[int] = []
    svc = layers.RateLimit(4, burst=5).layer(recorder(log))
    start = now()
    async with anyio.create_task_group() as group:
        for i in range(20):
            group.start_soon(arrive, svc, i, arrived)
    assert [request for request, _ in log] == arrived
    times = [at - start for _, at in log]
    expected = [max(0.0, (k - 4) * 0.25) for k in range(20)]
    assert times == pytest.approx(expected, abs=1e-6)


async def test_schedule_resumes_from_idle_without_a_double_burst() -> None:
    """After an idle spell the burst refills once, never twice (no window edge)."""
    svc = layers.RateLimit(10, burst=3, mode="reject").layer(echo)
    for _ in range(3):
        await svc(0)
    await anyio.sleep(10)  # long idle: the bucket is full again, not more
    admitted = 0
    for _ in range(10):
        try:
            await svc(0)
            admitted += 1
        except layers.RateLimited:
            pass
    assert admitted == 3


@hypothesis.settings(
    max_examples=40,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
    rate=st.sampled_from([1, 3, 7, 10, 100, 2000]),
    period=st.sampled_from([1.0, 0.5, 2.0, 60.0]),
    burst=st.integers(1, 6),
    arrivals=st.lists(
        st.tuples(st.integers(0, 400_000), st.integers(0, 6)), min_size=1, max_size=60
    ),
    weighted=st.booleans(),
)
# A free call after a burst whose backlog rounds one ulp above the tolerance.
@hypothesis.example(
    rate=3, period=0.5, burst=2, arrivals=[(134423, 2), (0, 0)], weighted=True
)
async def test_property_decisions_and_retry_after_equal_gcra(
    rate: int,
    period: float,
    burst: int,
    arrivals: list[tuple[int, int]],
    weighted: bool,
) -> None:
    """For any arrival sequence, decisions and retry_after equal the GCRA formula."""
    limit = layers.RateLimit(
        rate,
        period,
        burst=burst,
        mode="reject",
        cost=(lambda request: request) if weighted else None,
    )
    svc = limit.layer(echo)
    interval, tolerance = period / rate, burst * (period / rate)
    tat = -math.inf
    for delay_us, cost in arrivals:
        await anyio.sleep(delay_us / 1e6)
        if not weighted:
            cost = 1
        if cost > burst:
            with pytest.raises(layers.RateLimited) as too_big:
                await svc(cost)
            assert too_big.value.retry_after is None
            continue
        if cost == 0:  # free: it takes nothing, so it is always admitted
            assert await svc(cost) == cost
            continue
        at = _backend.base_time()  # the layer's own time base: no offset to round
        admitted, tat, retry_after = gcra(tat, at, cost, interval, tolerance)
        if admitted:
            assert await svc(cost) == cost
        else:
            with pytest.raises(layers.RateLimited) as info:
                await svc(cost)
            assert info.value.retry_after == retry_after


# ------------------------------------------------------------ weighted calls


async def test_weighted_costs_take_cost_times_the_interval() -> None:
    """A call of cost 3 uses 3 T: the next call of cost 1 waits that long."""
    log: list[tuple[Any, float]] = []
    svc = layers.RateLimit(10, burst=3, cost=lambda r: r[1]).layer(recorder(log))
    await svc(("a", 3))  # fills the whole burst
    await svc(("b", 1))
    await svc(("c", 2))
    times = {name: at for (name, _), at in log}
    assert times["a"] == 0
    assert times["b"] == pytest.approx(0.1, abs=1e-6)
    assert times["c"] == pytest.approx(0.3, abs=1e-6)


async def test_cost_beyond_the_burst_is_refused_without_retry_after() -> None:
    """A cost above burst can never fit: RateLimited at once, retry_after None."""
    called: list[int] = []

    async def inner(request: int) -> int:
        called.append(request)
        return request

    limit = layers.RateLimit(10, burst=2, cost=lambda r: r)
    svc = limit.layer(inner)
    with (
        capture_events(layers.events.RateLimitRejected) as events,
        pytest.raises(layers.RateLimited, match="exceeds the burst") as info,
    ):
        await svc(3)
    assert info.value.retry_after is None
    assert called == []
    assert now() == 0
    assert [e.reason for e in events] == ["cost"]
    assert await svc(2) == 2  # the refused call took nothing


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf])
async def test_bad_cost_raises_callback_error(bad: float) -> None:
    """A cost function returning a negative or non-finite number: CallbackError."""
    svc = layers.RateLimit(10, cost=lambda r: bad).layer(echo)
    with pytest.raises(
        layers.CallbackError, match="cost function must return a finite"
    ) as info:
        await svc(1)
    assert info.value.parameter == "cost"
    assert info.value.layer == "rate_limit"


@pytest.mark.parametrize("bad", ["3", None, True, False, [1], 1j])
@pytest.mark.parametrize("keyed", [False, True], ids=["no-key", "key"])
async def test_cost_that_is_not_a_number_raises_callback_error(
    bad: Any, keyed: bool
) -> None:
    """A cost function returning a non-number or a bool: CallbackError naming it."""
    called: list[int] = []

    async def inner(request: int) -> int:
        called.append(request)
        return request

    limit = layers.RateLimit(
        10, cost=lambda r: bad, key=(lambda r: r) if keyed else None
    )
    svc = limit.layer(inner)
    expected = (
        "RateLimit 'rate_limit': the cost function must return a finite number"
        f" >= 0, got {bad!r}"
    )
    with pytest.raises(layers.CallbackError, match=re.escape(expected)):
        await svc(1)
    assert called == []
    assert limit.statistics().keys == (0 if keyed else None)


async def test_cost_may_be_any_real_number() -> None:
    """Fractions and subclasses of int and float cost what they are worth."""

    class Weight(float):
        """A float subclass, such as numpy.float64."""

    limit = layers.RateLimit(10, burst=2, mode="reject", cost=lambda r: r)
    svc = limit.layer(echo)
    assert await svc(Fraction(3, 2)) == Fraction(3, 2)
    assert await svc(Weight(0.5)) == 0.5  # the burst of 2 is used up
    with pytest.raises(layers.RateLimited) as info:
        await svc(Fraction(1, 2))
    assert info.value.retry_after == pytest.approx(0.05)
    with pytest.raises(layers.RateLimited, match="exceeds the burst") as beyond:
        await svc(10**400)  # an int too large for a float is still beyond it
    assert beyond.value.retry_after is None


async def test_zero_cost_is_free() -> None:
    """Calls of cost 0 pass even when the limit is exhausted (reject mode)."""
    svc = layers.RateLimit(1, mode="reject", cost=lambda r: r).layer(echo)
    await svc(1)
    for _ in range(5):
        assert await svc(0) == 0
    with pytest.raises(layers.RateLimited):
        await svc(1)


# ------------------------------------------------------------ wait mode


async def test_waiters_are_served_in_arrival_order_and_never_overtaken() -> None:
    """A cheap newcomer that would fit waits behind an earlier, costlier waiter."""
    log: list[tuple[Any, float]] = []
    svc = layers.RateLimit(10, burst=3, cost=lambda r: r[1]).layer(recorder(log))
    async with anyio.create_task_group() as group:
        group.start_soon(svc, ("first", 2))  # t=0, leaves 1 of the burst
        await anyio.sleep(0.05)
        group.start_soon(svc, ("big", 3))  # needs the whole burst: waits
        await anyio.sleep(0.01)
        group.start_soon(svc, ("small", 1))  # would fit now, must not overtake
    order = [name for (name, _), _ in log]
    assert order == ["first", "big", "small"]
    times = {name: at for (name, _), at in log}
    assert times["big"] == pytest.approx(0.2, abs=1e-6)
    assert times["small"] == pytest.approx(0.3, abs=1e-6)


async def test_newcomer_at_the_head_s_due_time_does_not_overtake() -> None:
    """A caller arriving exactly when the head's slot opens goes after the head."""
    log: list[tuple[Any, float]] = []
    svc = layers.RateLimit(1).layer(recorder(log))
    async with anyio.create_task_group() as group:
        await svc("a")
        group.start_soon(svc, "b")  # due at t=1
        await anyio.sleep(1)  # wake at t=1, maybe before "b" does
        group.start_soon(svc, "c")
    assert [name for name, _ in log] == ["a", "b", "c"]
    assert [at for _, at in log] == pytest.approx([0, 1, 2], abs=1e-6)


async def test_max_wait_refuses_calls_that_would_wait_longer() -> None:
    """With max_wait, a call whose wait (the queue included) exceeds it is refused."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(10, max_wait=0.25)
    svc = limit.layer(recorder(log))
    refused: list[float | None] = []

    async def call(i: int) -> None:
        try:
            await svc(i)
        except layers.RateLimited as error:
            refused.append(error.retry_after)

    with capture_events(layers.events.RateLimitRejected) as events:
        async with anyio.create_task_group() as group:
            for i in range(5):
                group.start_soon(call, i)
    # waits 0, 0.1, 0.2 fit; 0.3 does not, twice
    assert [at for _, at in log] == pytest.approx([0, 0.1, 0.2], abs=1e-6)
    assert refused == pytest.approx([0.3, 0.3])
    assert [e.reason for e in events] == ["max_wait", "max_wait"]
    assert limit.statistics().rejected == 2
    assert now() == pytest.approx(0.2, abs=1e-6)


async def test_a_wait_beyond_the_deadline_is_refused_at_once() -> None:
    """Under Timeout(0.5), a call due in 1 s raises RateLimited now, not Elapsed."""
    limit = layers.RateLimit(1)
    svc = layers.ServiceBuilder().timeout(0.5).layer(limit).service(echo)
    await svc(1)
    with (
        capture_events(layers.events.RateLimitRejected) as events,
        pytest.raises(layers.RateLimited) as info,
    ):
        await svc(2)
    assert info.value.retry_after == pytest.approx(1.0)
    assert now() == 0
    assert [e.reason for e in events] == ["deadline"]
    await anyio.sleep(0.6)
    assert await svc(3) == 3  # due at 1.0, within the deadline at 1.1


async def test_cancelled_head_waiter_takes_nothing() -> None:
    """Cancelling the first waiter leaves the queue; the next keeps the slot time."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1)
    svc = limit.layer(recorder(log))
    await svc("a")  # t=0
    async with anyio.create_task_group() as group:
        scope_b = anyio.CancelScope()
        group.start_soon(_call_in_scope, svc, "b", scope_b)
        await anyio.sleep(0.1)
        group.start_soon(svc, "c")
        await anyio.sleep(0.4)
        assert limit.statistics().waiting == 2
        scope_b.cancel()
    assert [name for name, _ in log] == ["a", "c"]
    assert log[1][1] == pytest.approx(1.0, abs=1e-6)  # b's slot, not 2.0
    assert limit.statistics().waiting == 0


async def test_cancelled_middle_waiter_takes_nothing() -> None:
    """Cancelling a waiter behind the head moves the later ones up by its cost."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1)
    svc = limit.layer(recorder(log))
    await svc("a")
    async with anyio.create_task_group() as group:
        group.start_soon(svc, "b")  # due at 1
        await anyio.sleep(0.1)
        scope_c = anyio.CancelScope()
        group.start_soon(_call_in_scope, svc, "c", scope_c)
        await anyio.sleep(0.1)
        group.start_soon(svc, "d")
        await anyio.sleep(0.3)
        scope_c.cancel()
    assert [name for name, _ in log] == ["a", "b", "d"]
    assert [at for _, at in log] == pytest.approx([0, 1, 2], abs=1e-6)
    assert limit.statistics().waiting == 0


@pytest.mark.parametrize("keyed", [False, True], ids=["no-key", "key"])
async def test_cancelling_every_waiter_at_once_leaves_nothing(keyed: bool) -> None:
    """Whole queues cancelled together go away and take nothing."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1, key=(lambda r: r[0]) if keyed else None)
    svc = limit.layer(recorder(log))
    await svc(("a", 0))  # t=0: the next call is due at t=1
    async with anyio.create_task_group() as group:
        for i in range(1, 4):
            group.start_soon(svc, ("a", i))
            group.start_soon(svc, ("b", i))
        await anyio.sleep(0.5)
        waiting = 5 if keyed else 6  # with keys, "b" 1 went through at once
        assert limit.statistics().waiting == waiting
        group.cancel_scope.cancel()
    assert limit.statistics().waiting == 0
    assert limit._state.queues == {}  # pyright: ignore[reportPrivateUsage]
    await svc(("a", 9))  # still due at t=1: the cancelled calls took nothing
    assert log[-1][0] == ("a", 9)
    assert log[-1][1] == pytest.approx(1.0, abs=1e-6)
    assert len(log) == (3 if keyed else 2)


@pytest.mark.parametrize("order", CANCEL_ORDERS)
async def test_mass_cancellation_keeps_the_schedule_and_leaves_nothing(
    order: str,
) -> None:
    """Cancel many waiters in any order: the rest keep their order and schedule."""
    count = 300
    log: list[tuple[Any, float]] = []
    arrived: list[int] = []
    limit = layers.RateLimit(10)
    svc = limit.layer(recorder(log))
    await svc(-1)  # t=0: the next call is due at t=0.1
    scopes = [anyio.CancelScope() for _ in range(count)]
    doomed = cancelled_waiters(order, count)
    async with anyio.create_task_group() as group:
        for i in range(count):
            group.start_soon(arrive, svc, i, arrived, scopes[i])
        await anyio.sleep(0.05)
        assert limit.statistics().waiting == count
        for i in doomed:
            scopes[i].cancel()
        await anyio.sleep(0.01)
        assert limit.statistics().waiting == count - len(doomed)
    cancelled = set(doomed)
    survivors = [r for r in arrived if r not in cancelled]
    assert [r for r, _ in log[1:]] == survivors
    # the cancelled calls took nothing: the survivors follow the schedule
    assert [at for _, at in log[1:]] == pytest.approx(
        [0.1 * (k + 1) for k in range(len(survivors))], abs=1e-6
    )
    assert limit.statistics().waiting == 0
    assert limit._state.queues == {}  # pyright: ignore[reportPrivateUsage]


async def _call_in_scope(
    svc: layers.Service[Any, Any], request: Any, scope: anyio.CancelScope
) -> None:
    with scope:
        await svc(request)


@hypothesis.settings(
    max_examples=25,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
    calls=st.lists(
        st.tuples(st.integers(0, 50), st.none() | st.integers(0, 3_000)),
        min_size=1,
        max_size=25,
    ),
    keyed=st.booleans(),
)
async def test_property_random_cancellation_leaves_nothing_waiting(
    calls: list[tuple[int, int | None]], keyed: bool
) -> None:
    """Cancel waiters at random times: the schedule stays exact, nothing is left."""
    log: list[tuple[Any, float]] = []
    arrived: list[int] = []
    limit = layers.RateLimit(10, key=(lambda r: r % 2) if keyed else None)
    svc = limit.layer(recorder(log))
    async with anyio.create_task_group() as group:
        for i, (gap_ms, cancel_ms) in enumerate(calls):
            await anyio.sleep(gap_ms / 1000)
            scope = anyio.CancelScope()
            if cancel_ms is not None:
                scope.deadline = now() + cancel_ms / 1000
            group.start_soon(arrive, svc, i, arrived, scope)
    assert limit.statistics().waiting == 0
    assert limit._state.queues == {}  # pyright: ignore[reportPrivateUsage]
    # Per key, the admitted calls are in arrival order and at least T apart,
    # and a call is admitted at once when nobody before it is still due.
    for parity in (0, 1) if keyed else (None,):
        mine = [(r, at) for r, at in log if parity is None or r % 2 == parity]
        order = [r for r in arrived if r in {r for r, _ in mine}]
        assert [r for r, _ in mine] == order
        for (_, a), (_, b) in itertools.pairwise(mine):
            assert b - a >= 0.1 - 1e-6


# ------------------------------------------------------------ per key


async def test_keys_are_independent() -> None:
    """One tenant's exhausted limit does not touch another's."""
    limit = layers.RateLimit(1, mode="reject", key=lambda r: r[0])
    svc = limit.layer(echo)
    await svc(("a", 1))
    with pytest.raises(layers.RateLimited):
        await svc(("a", 2))
    assert await svc(("b", 1)) == ("b", 1)
    assert limit.statistics().keys == 2


async def test_waiting_on_one_key_does_not_block_another() -> None:
    """A queue for key a does not hold up a call for key b."""
    log: list[tuple[Any, float]] = []
    svc = layers.RateLimit(1, key=lambda r: r[0]).layer(recorder(log))
    async with anyio.create_task_group() as group:
        for request in [("a", 1), ("a", 2), ("a", 3), ("b", 1)]:
            group.start_soon(svc, request)
    assert [at for (key, _), at in log if key == "b"] == [0]
    assert [at for (key, _), at in log if key == "a"] == pytest.approx(
        [0, 1, 2], abs=1e-6
    )


async def test_expired_keys_are_dropped_when_room_is_needed() -> None:
    """A key whose tat has passed gives its entry to a new key."""
    limit = layers.RateLimit(10, mode="reject", key=lambda r: r, max_keys=2)
    svc = limit.layer(echo)
    await svc("a")
    await svc("b")
    await anyio.sleep(0.1)  # both expire
    await svc("c")
    assert limit.statistics().keys == 1
    assert limit.statistics().table_full == 0


async def test_full_table_limits_new_keys_until_the_earliest_expiry() -> None:
    """New keys meet RateLimited(retry_after = earliest expiry); no entry is evicted."""
    limit = layers.RateLimit(1, 10.0, mode="reject", key=lambda r: r, max_keys=3)
    svc = limit.layer(echo)
    for key in ["a", "b", "c"]:
        await svc(key)  # tats 10, 11, 12
        await anyio.sleep(1)
    # t=3: full of live keys. A churn of new keys does not get in...
    for churn in range(100):
        with pytest.raises(layers.RateLimited) as info:
            await svc(churn)
        assert info.value.retry_after == pytest.approx(7.0)
    # ...and evicts nobody: "a" is still limited, until its own tat.
    with pytest.raises(layers.RateLimited) as still:
        await svc("a")
    assert still.value.retry_after == pytest.approx(7.0)
    assert limit.statistics().keys == 3
    assert limit.statistics().table_full == 100
    await anyio.sleep(7)  # t=10: "a" has expired; a new key takes its entry
    assert await svc("new") == "new"
    with pytest.raises(layers.RateLimited):
        await svc("a")  # the table is full again: "a" must wait for "b"


async def test_full_table_in_wait_mode_waits_for_room() -> None:
    """In wait mode a new key waits until the earliest entry expires."""
    log: list[tuple[Any, float]] = []
    svc = layers.RateLimit(1, key=lambda r: r, max_keys=2).layer(recorder(log))
    await svc("a")
    await anyio.sleep(0.5)
    await svc("b")
    await svc("c")  # waits for "a" to expire at t=1
    assert log[-1][0] == "c"
    assert log[-1][1] == pytest.approx(1.0, abs=1e-6)


async def test_free_call_on_an_idle_key_leaves_no_entry() -> None:
    """A cost-0 call on an idle key is admitted and leaves nothing in the table."""
    limit = layers.RateLimit(
        1, mode="reject", key=lambda r: r[0], cost=lambda r: r[1], max_keys=1
    )
    svc = limit.layer(echo)
    assert await svc(("a", 0)) == ("a", 0)
    assert limit.statistics().keys == 0
    assert await svc(("b", 1)) == ("b", 1)  # "a" left the only entry free
    assert await svc(("b", 0)) == ("b", 0)  # free on a live key: it stays
    assert limit.statistics().keys == 1
    with pytest.raises(layers.RateLimited) as info:
        await svc(("b", 1))
    assert info.value.retry_after == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["wait", "reject"])
async def test_free_call_on_a_new_key_passes_a_full_table(mode: str) -> None:
    """A cost-0 call on a new key is admitted at once while the table is full."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(
        1, 10.0, mode=mode, key=lambda r: r[0], cost=lambda r: r[1], max_keys=2
    )
    svc = limit.layer(recorder(log))
    await svc(("a", 1))
    await svc(("b", 1))  # the table is full of live keys until t=10
    for cost in (0, 0.0, Fraction(0)):
        assert await svc(("new", cost)) == ("new", cost)
    assert [at for _, at in log] == [0, 0, 0, 0, 0]
    stats = limit.statistics()
    assert (stats.keys, stats.table_full, stats.rejected) == (2, 0, 0)
    if mode == "reject":
        with pytest.raises(layers.RateLimited):
            await svc(("new", 1))  # a call that takes something still meets it


async def test_free_call_never_waits_behind_a_queue() -> None:
    """In wait mode a cost-0 call takes nothing, so it does not queue."""
    log: list[tuple[Any, float]] = []
    limit = layers.RateLimit(1, key=lambda r: r[0], cost=lambda r: r[1])
    svc = limit.layer(recorder(log))
    await svc(("a", 1))
    async with anyio.create_task_group() as group:
        group.start_soon(svc, ("a", 1))  # waits until t=1
        await anyio.sleep(0.1)
        assert limit.statistics().waiting == 1
        assert await svc(("a", 0)) == ("a", 0)
        assert now() == pytest.approx(0.1)
    assert [(r, round(at, 6)) for r, at in log] == [
        (("a", 1), 0),
        (("a", 0), 0.1),
        (("a", 1), 1),
    ]


def test_store_admits_a_free_call_on_a_new_key_when_full() -> None:
    """MemoryRateLimitStore: cost 0 on a new key needs no entry, full or not."""
    store = layers.MemoryRateLimitStore(1)
    assert store.take("a", 1, 0.0, 1.0, 1.0) == 0.0
    assert store.take("b", 0, 0.5, 1.0, 1.0) == 0.0
    assert store.peek("b", 0, 0.5, 1.0, 1.0) == 0.0
    assert (len(store), store.table_full) == (1, 0)
    assert store.take("b", 1, 0.5, 1.0, 1.0) == pytest.approx(0.5)  # still full


def test_heap_stays_bounded_when_keys_repeat() -> None:
    """Keys taken again and again leave stale heap items; rebuilds bound them."""
    store = layers.MemoryRateLimitStore()
    interval, tolerance = 0.001, 0.002
    rng = random.Random(7)
    model: dict[Hashable, float] = {}
    at = 0.0
    worst = admitted = idle = 0
    for _ in range(20_000):
        key = rng.randrange(5)
        at += rng.expovariate(5000)  # 1 call per ms per key, 1 admitted per ms
        previous = model.get(key, -math.inf)
        ok, tat, retry_after = gcra(previous, at, 1, interval, tolerance)
        assert store.take(key, 1, at, interval, tolerance) == retry_after
        model[key] = tat
        admitted += ok
        idle += previous < at
        assert len(store) <= 5
        assert store.heap_size() <= 2 * len(store) + 64
        worst = max(worst, store.heap_size())
    # Admitted, refused and idle keys were all met...
    assert 1_000 < admitted < 19_000
    assert idle > 1_000
    # ...and the heap did fill up with stale items, and was rebuilt.
    assert worst > 64


def test_full_table_skips_stale_heap_items() -> None:
    """A full table drops stale heap items, never the live entry behind them."""
    store = layers.MemoryRateLimitStore(2)
    assert store.take("a", 1, 0.0, 1.0, 2.0) == 0.0  # tat 1
    assert store.take("a", 1, 0.0, 1.0, 2.0) == 0.0  # tat 2: item (1, "a") stale
    assert store.take("b", 1, 0.5, 1.0, 2.0) == 0.0  # tat 1.5
    assert store.heap_size() == 3
    # "c" needs room at t=1.2: (1, "a") is stale, so the wait is for "b".
    assert store.take("c", 1, 1.2, 1.0, 2.0) == pytest.approx(0.3)
    assert store.table_full == 1
    assert store.heap_size() == 2
    assert store.peek("a", 2, 1.2, 1.0, 2.0) == pytest.approx(0.8)  # "a" kept
    assert store.take("c", 1, 1.5, 1.0, 2.0) == 0.0  # "b" expired at 1.5
    assert len(store) == 2
    assert store.take("b", 1, 1.5, 1.0, 2.0) == pytest.approx(0.5)  # until "a"


def test_store_peek_on_a_full_table_and_an_expired_key() -> None:
    """A peek waits for room in a full table and treats an expired key as idle."""
    store = layers.MemoryRateLimitStore(1)
    assert store.take("a", 1, 0.0, 0.5, 1.0) == 0.0  # tat 0.5
    # "b" must first wait for the entry of "a" to expire...
    assert store.peek("b", 1, 0.25, 0.5, 1.0) == 0.25
    # ...then for the part of its cost beyond the tolerance.
    assert store.peek("b", 3, 0.25, 0.5, 1.0) == 0.75
    assert store.table_full == 0  # peek counts and takes nothing
    assert len(store) == 1
    # At t=2 "a" has expired: it is idle, with its whole tolerance.
    assert store.peek("a", 1, 2.0, 0.5, 1.0) == 0.0
    assert store.peek("a", 4, 2.0, 0.5, 1.0) == 1.0
    assert store.peek("b", 1, 2.0, 0.5, 1.0) == 0.0  # room: "a" is dropped
    assert len(store) == 0


def test_memory_bound_holds_for_a_million_keys() -> None:
    """1,000,000 distinct keys never make the table exceed max_keys (store driven)."""
    store = layers.MemoryRateLimitStore(1000)
    interval, tolerance = 0.001, 0.001
    worst_table = worst_heap = 0
    admitted = refused = 0
    for i in range(1_000_000):
        at = i * 1e-6  # a key lives 1 ms = 1,000 arrivals: the table stays full
        if store.take(i, 1, at, interval, tolerance):
            refused += 1
        else:
            admitted += 1
        worst_table = max(worst_table, len(store))
        worst_heap = max(worst_heap, store.heap_size())
    assert worst_table == 1000
    assert worst_heap <= 2 * 1000 + 65
    assert admitted + refused == 1_000_000
    assert admitted > 900_000  # keys expire as fast as they come


async def test_memory_bound_holds_through_the_layer() -> None:
    """50,000 keys through the layer: the table never exceeds max_keys."""
    limit = layers.RateLimit(100, key=lambda r: r, max_keys=500, mode="reject")
    svc = limit.layer(echo)
    worst = 0
    refused = 0
    for i in range(50_000):
        try:
            await svc(i)
        except layers.RateLimited:
            refused += 1
        worst = max(worst, limit.statistics().keys or 0)
        if i % 100 == 0:
            await anyio.sleep(0.001)  # 1,000 keys live per 10 ms: some refused
    assert worst == 500
    assert refused > 0


def test_store_peek_predicts_the_queue() -> None:
    """peek(total cost) is the wait until a whole queue is served; it takes nothing."""
    store = layers.MemoryRateLimitStore()
    assert store.take("k", 1, 0.0, 0.5, 1.0) == 0.0
    assert store.peek("k", 4, 0.0, 0.5, 1.0) == 1.5
    assert store.peek("k", 1, 0.0, 0.5, 1.0) == 0.0
    assert store.take("k", 1, 0.0, 0.5, 1.0) == 0.0
    assert store.take("k", 1, 0.0, 0.5, 1.0) == 0.5
    assert len(store) == 1
    assert "entries=1" in repr(store)


# ------------------------------------------------------------ custom store


class DictStore:
    """A minimal RateLimitStore that counts its calls."""

    def __init__(self) -> None:
        self.tats: dict[Hashable, float] = {}
        self.takes = 0
        self.stolen = 0.0  # extra lead added by "another process"

    def take(
        self,
        key: Hashable,
        cost: float,
        now: float,
        interval: float,
        tolerance: float,
        /,
    ) -> float:
        self.takes += 1
        tat = max(self.tats.get(key, now), now) + self.stolen
        self.stolen = 0.0
        backlog = tat - now
        slack = tolerance - cost * interval
        if backlog > slack:
            self.tats[key] = tat
            return backlog - slack
        self.tats[key] = tat + cost * interval
        return 0.0

    def peek(
        self,
        key: Hashable,
        cost: float,
        now: float,
        interval: float,
        tolerance: float,
        /,
    ) -> float:
        tat = max(self.tats.get(key, now), now)
        return max(0.0, (tat - now) - (tolerance - cost * interval))


async def test_custom_store_holds_the_state() -> None:
    """A store given as store= holds the state (key None without a key function)."""
    store = DictStore()
    limit = layers.RateLimit(2, mode="reject", store=store)
    svc = limit.layer(echo)
    await svc(1)
    with pytest.raises(layers.RateLimited) as info:
        await svc(2)
    assert info.value.retry_after == 0.5
    assert list(store.tats) == [None]
    assert limit.statistics().keys is None


async def test_head_gives_up_when_another_process_takes_the_capacity() -> None:
    """With a shared store, a head whose wait grows past max_wait is refused."""
    store = DictStore()
    limit = layers.RateLimit(1, max_wait=1.5, store=store)
    svc = limit.layer(echo)
    await svc(1)  # t=0, tat=1
    outcome: list[tuple[str, float, float | None]] = []

    async def waiter() -> None:
        try:
            await svc(2)  # due at t=1, within max_wait
            outcome.append(("admitted", now(), None))
        except layers.RateLimited as error:
            outcome.append(("refused", now(), error.retry_after))

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.sleep(0.5)
        store.stolen = 1.0  # another process takes a slot: now due at t=2
    assert outcome == [("refused", 1.0, 1.0)]
    assert limit.statistics().waiting == 0
    assert limit.statistics().rejected == 1


# ------------------------------------------------------------ shared state


async def test_one_layer_on_two_services_shares_one_limit() -> None:
    """One RateLimit object wrapping two services: one quota for both."""
    limit = layers.RateLimit(1, mode="reject")
    first, second = limit.layer(echo), limit.layer(echo)
    await first(1)
    with pytest.raises(layers.RateLimited):
        await second(2)


async def test_two_layers_are_separate_limits() -> None:
    """Two RateLimit objects with the same settings are two quotas."""
    first = layers.RateLimit(1, mode="reject").layer(echo)
    second = layers.RateLimit(1, mode="reject").layer(echo)
    await first(1)
    assert await second(2) == 2


async def test_a_builder_reused_for_two_services_shares_its_limit() -> None:
    """.rate_limit() makes the layer when called: services built from it share."""
    builder = layers.ServiceBuilder().rate_limit(1, mode="reject")
    first, second = builder.service(echo), builder.service(echo)
    await first(1)
    with pytest.raises(layers.RateLimited):
        await second(2)
    other = layers.ServiceBuilder().rate_limit(1, mode="reject").service(echo)
    assert await other(3) == 3


# ------------------------------------------------------------ events, stats


async def test_events_and_statistics() -> None:
    """Rejections and waits are reported as events and counted."""
    limit = layers.RateLimit(10, max_wait=0.15, name="api")
    svc = limit.layer(echo)
    with capture_events(layers.Event) as events:
        async with anyio.create_task_group() as group:
            for i in range(4):
                group.start_soon(_swallow, svc, i)
                await anyio.lowlevel.checkpoint()
    waited = [e for e in events if isinstance(e, layers.events.RateLimitWaited)]
    rejected = [e for e in events if isinstance(e, layers.events.RateLimitRejected)]
    assert [e.waited for e in waited] == pytest.approx([0.1])
    assert [(e.layer, e.reason, e.cost) for e in rejected] == [
        ("api", "max_wait", 1),
        ("api", "max_wait", 1),
    ]
    assert rejected[0].retry_after == pytest.approx(0.2)
    assert rejected[0].event == "rate_limit_rejected"
    assert rejected[0].level == "warning"
    assert waited[0].level == "debug"
    stats = limit.statistics()
    assert stats == layers.RateLimitStatistics(
        waiting=0,
        waited=1,
        rejected=2,
        keys=None,
        table_full=0,
        rate=10,
        period=1.0,
        burst=1,
    )
    with pytest.raises(AttributeError):
        stats.waiting = 3  # type: ignore[misc]


async def _swallow(svc: layers.Service[Any, Any], request: Any) -> None:
    with contextlib.suppress(layers.RateLimited):
        await svc(request)


def test_repr_and_identity() -> None:
    """The layer's repr shows its settings; two equal configs are two limits."""
    limit = layers.RateLimit(5, 2.0, burst=2, name="api")
    assert repr(limit).startswith("RateLimit(rate=5, period=2.0, burst=2,")
    assert limit != layers.RateLimit(5, 2.0, burst=2, name="api")
