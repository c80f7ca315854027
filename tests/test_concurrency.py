"""Tests of ConcurrencyLimit: permits, FIFO queue, bounds, shedding, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any, cast

import anyio
import anyio.lowlevel
import hypothesis
import pytest
import sniffio
from helpers import CANCEL_ORDERS, cancelled_waiters
from hypothesis import strategies as st

import layers
from layers.testing import capture_events, virtual_time_backend

pytestmark = pytest.mark.anyio


def now() -> float:
    """The event loop's (virtual) clock."""
    return anyio.current_time()


class Gauge:
    """An inner service that counts calls in flight and records the maximum."""

    def __init__(self, duration: float = 1.0) -> None:
        self.duration = duration
        self.in_flight = 0
        self.max_in_flight = 0
        self.started: list[Any] = []
        self.start_times: dict[Any, float] = {}
        self.finished: list[Any] = []

    async def __call__(self, request: Any) -> Any:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.started.append(request)
        self.start_times[request] = now()
        try:
            await anyio.sleep(self.delay(request))
        finally:
            self.in_flight -= 1
        self.finished.append(request)
        return request

    def delay(self, request: object) -> float:
        """A request (name, seconds) says how long it takes; others take duration."""
        if isinstance(request, tuple):
            return float(cast(tuple[Any, float], request)[1])
        return self.duration


async def echo(request: Any) -> Any:
    """A service that answers at once, without a checkpoint."""
    return request


async def until_in_flight(limit: layers.ConcurrencyLimit, count: int) -> None:
    """Let other tasks run (no time passes) until *count* calls hold permits."""
    while limit.statistics().in_flight < count:
        await anyio.lowlevel.checkpoint()


async def arrive(
    svc: layers.Service[Any, Any],
    request: Any,
    arrived: list[Any],
    scope: anyio.CancelScope | None = None,
    outcomes: list[tuple[Any, str]] | None = None,
) -> None:
    """Call svc(request), logging the arrival (nothing yields in between)."""
    with scope or anyio.CancelScope():
        arrived.append(request)
        try:
            await svc(request)
        except layers.Overloaded:
            if outcomes is None:
                raise
            outcomes.append((request, "overloaded"))
            return
        if outcomes is not None:
            outcomes.append((request, "ok"))


# ------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            (0,),
            {},
            "ConcurrencyLimit(max_in_flight=0): max_in_flight must be an int >= 1, "
            "got 0",
        ),
        ((-3,), {}, "max_in_flight must be an int >= 1, got -3"),
        ((2.0,), {}, "max_in_flight must be an int >= 1, got 2.0"),
        ((True,), {}, "max_in_flight must be an int >= 1, got True"),
        (
            (2,),
            {"max_waiting": -1},
            "max_waiting must be None (no bound) or an int >= 0",
        ),
        ((2,), {"max_waiting": 1.5}, "got 1.5"),
        ((2,), {"max_wait": 0}, "max_wait must be None or a finite number of seconds"),
        ((2,), {"max_wait": -1.0}, "got -1.0"),
        ((2,), {"max_wait": math.inf}, "got inf"),
        ((2,), {"name": ""}, "name must be a non-empty string"),
    ],
)
def test_bad_configuration_fails_at_construction(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    """Each invalid value raises ConfigurationError naming parameter and value."""
    with pytest.raises(layers.ConfigurationError) as info:
        layers.ConcurrencyLimit(*args, **kwargs)
    assert message in str(info.value)


def test_builder_methods_validate_too() -> None:
    """.concurrency_limit() and .load_shed() build the layer, so they validate."""
    with pytest.raises(layers.ConfigurationError, match="max_in_flight"):
        layers.ServiceBuilder().concurrency_limit(0)
    with pytest.raises(layers.ConfigurationError, match="max_in_flight"):
        layers.ServiceBuilder().load_shed(-1)


def test_load_shed_is_a_limit_without_a_queue() -> None:
    """.load_shed(n) adds ConcurrencyLimit(n, max_waiting=0, name='load_shed')."""
    (layer,) = layers.ServiceBuilder().load_shed(4).layers
    assert isinstance(layer, layers.ConcurrencyLimit)
    assert (layer.max_in_flight, layer.max_waiting, layer.name) == (4, 0, "load_shed")


# ------------------------------------------------------------ basics


async def test_success_path_adds_no_checkpoint() -> None:
    """With a free permit, a call does not yield: it completes in a cancelled scope."""
    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(echo)
    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await svc(1) == 1
        assert await svc(2) == 2
    assert not scope.cancelled_caught  # no checkpoint raised the cancellation
    assert limit.statistics().in_flight == 0


async def test_permit_released_on_error() -> None:
    """An inner exception passes through unchanged and gives the permit back."""

    async def broken(request: int) -> int:
        raise KeyError(request)

    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(broken)
    for i in range(3):
        with pytest.raises(KeyError):
            await svc(i)
    assert limit.statistics().in_flight == 0


async def test_ten_thousand_tasks_through_a_limit_of_ten() -> None:
    """10,000 tasks, limit 10: at most exactly 10 inside at once, all complete."""
    gauge = Gauge()
    limit = layers.ConcurrencyLimit(10)
    svc = limit.layer(gauge)
    async with anyio.create_task_group() as group:
        for i in range(10_000):
            group.start_soon(svc, (i, 0.001 * (1 + i % 7)))
    assert gauge.max_in_flight == 10
    assert len(gauge.finished) == 10_000
    assert limit.statistics() == layers.ConcurrencyLimitStatistics(
        in_flight=0, waiting=0, rejected=0, max_in_flight=10
    )


async def test_admission_is_first_come_first_served() -> None:
    """Queued calls enter in arrival order as permits free up."""
    gauge = Gauge()
    arrived: list[Any] = []
    svc = layers.ConcurrencyLimit(1).layer(gauge)
    async with anyio.create_task_group() as group:
        for i in range(20):
            group.start_soon(arrive, svc, (i, 0.1), arrived)
    assert gauge.started == arrived
    # With two permits, two calls may be granted in the same instant and
    # resume in either order; the start times still follow arrival order.
    gauge = Gauge()
    arrived = []
    svc = layers.ConcurrencyLimit(2).layer(gauge)
    async with anyio.create_task_group() as group:
        for i in range(20):
            group.start_soon(arrive, svc, (i, 0.1 + 0.01 * (i % 3)), arrived)
    starts = [gauge.start_times[request] for request in arrived]
    assert starts == sorted(starts)
    assert gauge.max_in_flight == 2


async def test_newcomer_never_overtakes_a_handed_over_permit() -> None:
    """A permit given back goes to the first waiter, not to a caller arriving then."""
    gauge = Gauge()
    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(gauge)
    async with anyio.create_task_group() as group:
        group.start_soon(svc, ("a", 1.0))
        await anyio.sleep(0.1)
        group.start_soon(svc, ("b", 1.0))  # waits for a
        await anyio.sleep(0.9)  # t=1: a is done now, b not yet resumed
        assert limit.statistics().in_flight == 1  # b holds the permit already
        group.start_soon(svc, ("c", 1.0))
    assert [name for name, _ in gauge.started] == ["a", "b", "c"]
    assert now() == pytest.approx(3.0)


# ------------------------------------------------------------ bounds


async def test_queue_bound_refuses_at_once_without_calling_inner() -> None:
    """Beyond max_waiting waiting calls, Overloaded is raised at once."""
    gauge = Gauge()
    limit = layers.ConcurrencyLimit(2, max_waiting=1, name="db")
    svc = limit.layer(gauge)
    outcomes: list[tuple[Any, str]] = []
    arrived: list[Any] = []
    with capture_events(layers.events.ConcurrencyLimitRejected) as events:
        async with anyio.create_task_group() as group:
            for i in range(5):
                group.start_soon(arrive, svc, i, arrived, None, outcomes)
            await anyio.sleep(0.5)
            assert limit.statistics().waiting == 1
    refused = [r for r, what in outcomes if what == "overloaded"]
    assert refused == arrived[3:]  # two in, one queued, two refused
    assert sorted(gauge.finished) == sorted(arrived[:3])
    assert [(e.layer, e.reason, e.max_in_flight, e.waiting) for e in events] == [
        ("db", "queue_full", 2, 1),
        ("db", "queue_full", 2, 1),
    ]
    assert limit.statistics().rejected == 2


async def test_overloaded_error_says_why() -> None:
    """Overloaded is a Rejected naming the layer, with retry_after None."""
    limit = layers.ConcurrencyLimit(1, max_waiting=0, name="db")
    svc = limit.layer(Gauge())
    async with anyio.create_task_group() as group:
        group.start_soon(svc, 1)
        await until_in_flight(limit, 1)
        with pytest.raises(layers.Overloaded) as info:
            await svc(2)
        error = info.value
        assert isinstance(error, layers.Rejected)
        assert error.layer == "db"
        assert error.retry_after is None
        assert str(error) == (
            "concurrency limit 'db' is full: 1 calls in flight, 0 waiting"
        )


async def test_load_shedding_refuses_everything_beyond_the_limit() -> None:
    """load_shed(3): 3 calls run, the other 7 are refused at once at t=0."""
    gauge = Gauge()
    svc = layers.ServiceBuilder().load_shed(3).service(gauge)
    outcomes: list[tuple[Any, str]] = []
    async with anyio.create_task_group() as group:
        for i in range(10):
            group.start_soon(arrive, svc, i, list[Any](), None, outcomes)
        await anyio.sleep(0.01)
        assert [what for _, what in outcomes] == ["overloaded"] * 7
    assert len(gauge.finished) == 3
    assert now() == pytest.approx(1.0)


async def test_max_wait_refuses_after_waiting_that_long() -> None:
    """A call that gets no permit within max_wait leaves the queue with Overloaded."""
    limit = layers.ConcurrencyLimit(1, max_wait=0.5)
    svc = limit.layer(Gauge(duration=2.0))
    with capture_events(layers.events.ConcurrencyLimitRejected) as events:
        async with anyio.create_task_group() as group:
            group.start_soon(svc, 1)
            await until_in_flight(limit, 1)
            with pytest.raises(layers.Overloaded, match=r"max_wait=0\.5 s") as info:
                await svc(2)
            assert now() == pytest.approx(0.5)
            assert limit.statistics().waiting == 0
            assert info.value.retry_after is None
    assert [e.reason for e in events] == ["max_wait"]


async def test_max_wait_admits_a_call_that_gets_a_permit_in_time() -> None:
    """A waiter granted a permit before max_wait runs normally."""
    limit = layers.ConcurrencyLimit(1, max_wait=1.0)
    svc = limit.layer(Gauge(duration=0.5))
    async with anyio.create_task_group() as group:
        group.start_soon(svc, 1)
        await until_in_flight(limit, 1)
        assert await svc(2) == 2
    assert now() == pytest.approx(1.0)


async def test_max_wait_and_grant_at_the_same_instant_admit() -> None:
    """Grant and max_wait at the same instant: whichever wins, no permit is lost."""
    limit = layers.ConcurrencyLimit(1, max_wait=1.0)
    gauge = Gauge(duration=1.0)
    svc = limit.layer(gauge)
    async with anyio.create_task_group() as group:
        group.start_soon(svc, 1)
        await until_in_flight(limit, 1)
        with contextlib.suppress(layers.Overloaded):
            await svc(2)  # either outcome is right
    assert limit.statistics().in_flight == 0
    assert limit.statistics().waiting == 0
    assert await svc(3) == 3


# ------------------------------------------------------------ cancellation


async def test_cancel_while_queued_leaves_the_queue() -> None:
    """A waiter cancelled in the queue holds nothing; the next one gets the permit."""
    gauge = Gauge()
    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(gauge)
    arrived: list[Any] = []
    async with anyio.create_task_group() as group:
        group.start_soon(svc, "a")
        await anyio.sleep(0.1)
        scope = anyio.CancelScope()
        group.start_soon(arrive, svc, "b", arrived, scope)
        await anyio.sleep(0.1)
        group.start_soon(svc, "c")
        await anyio.sleep(0.1)
        assert limit.statistics().waiting == 2
        scope.cancel()
        await anyio.sleep(0.01)
        assert limit.statistics().waiting == 1
    assert gauge.started == ["a", "c"]
    assert now() == pytest.approx(2.0)
    assert limit.statistics().in_flight == 0


async def test_cancel_while_in_flight_releases_the_permit() -> None:
    """A call cancelled inside the inner service gives its permit back."""
    gauge = Gauge()
    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(gauge)
    with anyio.move_on_after(0.5):
        await svc("a")
    assert limit.statistics().in_flight == 0
    assert gauge.in_flight == 0
    assert await svc(("b", 0.1)) == ("b", 0.1)


async def test_cancel_while_in_flight_hands_the_permit_to_a_waiter() -> None:
    """Cancelling the holder passes its permit to the first waiter at once."""
    gauge = Gauge()
    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(gauge)
    async with anyio.create_task_group() as group:
        scope = anyio.CancelScope()
        group.start_soon(arrive, svc, "a", list[Any](), scope)
        await until_in_flight(limit, 1)
        group.start_soon(svc, ("b", 0.5))
        await anyio.sleep(0.1)
        scope.cancel()
    assert gauge.finished == [("b", 0.5)]
    assert now() == pytest.approx(0.6)


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_permit_handed_to_a_waiter_being_cancelled_goes_to_the_next(
    cancel_first: bool,
) -> None:
    """Grant and cancellation in the same step: the permit moves on, none is lost."""
    gauge = Gauge(duration=0.5)
    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(gauge)
    scope_b = anyio.CancelScope()

    async def holder() -> None:
        # Between the call's end (which hands the permit to b) and this
        # cancel nothing yields: b is granted, then cancelled, before it runs.
        await svc(("a", 1.0))
        scope_b.cancel()

    async def hold_then_cancel_inside() -> None:
        # The other order: b is cancelled, then the holder releases the
        # permit in the same step (the cancellation is still pending).
        async def inner(request: Any) -> Any:
            await anyio.sleep(1.0)
            scope_b.cancel()
            return request

        await limit.layer(inner)("a")

    async with anyio.create_task_group() as group:
        group.start_soon(hold_then_cancel_inside if cancel_first else holder)
        await anyio.sleep(0.1)
        group.start_soon(arrive, svc, "b", list[Any](), scope_b)
        await anyio.sleep(0.1)
        group.start_soon(svc, "c")
        await anyio.sleep(0.1)
        assert limit.statistics().waiting == 2
    # b never completes; on trio (and for asyncio's own Task.cancel) it does
    # not even start. An anyio scope cancelled on asyncio in the same step
    # as the grant is delivered at b's first await inside the call instead,
    # as with anyio's own Semaphore: b starts, is cancelled, passes it on.
    assert "b" not in gauge.finished
    if cancel_first or sniffio.current_async_library() == "trio":
        assert "b" not in gauge.started
    assert "c" in gauge.finished
    assert gauge.max_in_flight == 1
    assert limit.statistics() == layers.ConcurrencyLimitStatistics(
        in_flight=0, waiting=0, rejected=0, max_in_flight=1
    )


@hypothesis.settings(
    max_examples=30,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
    limit_size=st.integers(1, 4),
    max_waiting=st.none() | st.integers(0, 5),
    max_wait=st.none() | st.sampled_from([0.05, 0.3]),
    calls=st.lists(
        st.tuples(
            st.integers(0, 30),  # gap before it arrives, ms
            st.integers(0, 200),  # inner duration, ms
            st.none() | st.integers(0, 300),  # cancel after, ms
        ),
        min_size=1,
        max_size=30,
    ),
)
async def test_property_random_cancellation_returns_to_zero(
    limit_size: int,
    max_waiting: int | None,
    max_wait: float | None,
    calls: list[tuple[int, int, int | None]],
) -> None:
    """Cancel at random points: never over the limit, and zero in flight and waiting."""
    gauge = Gauge()
    limit = layers.ConcurrencyLimit(
        limit_size, max_waiting=max_waiting, max_wait=max_wait
    )
    svc = limit.layer(gauge)
    outcomes: list[tuple[Any, str]] = []
    arrived: list[Any] = []
    async with anyio.create_task_group() as group:
        for i, (gap_ms, duration_ms, cancel_ms) in enumerate(calls):
            await anyio.sleep(gap_ms / 1000)
            scope = anyio.CancelScope()
            if cancel_ms is not None:
                scope.deadline = now() + cancel_ms / 1000
            request = (i, duration_ms / 1000)
            group.start_soon(arrive, svc, request, arrived, scope, outcomes)
            assert limit.statistics().in_flight <= limit_size
    assert gauge.max_in_flight <= limit_size
    assert limit.statistics().in_flight == 0
    assert limit.statistics().waiting == 0
    assert gauge.in_flight == 0
    # Admission follows arrival order among the calls that were admitted.
    starts = [gauge.start_times[r] for r in arrived if r in gauge.start_times]
    assert starts == sorted(starts)
    if max_waiting == 0:
        assert limit.statistics().rejected == sum(
            1 for _, what in outcomes if what == "overloaded"
        )


# ------------------------------------------------------------ shared state


async def test_one_layer_on_two_services_shares_the_permits() -> None:
    """One ConcurrencyLimit wrapping two services: one pool of permits."""
    limit = layers.ConcurrencyLimit(1, max_waiting=0)
    first, second = limit.layer(Gauge()), limit.layer(Gauge())
    async with anyio.create_task_group() as group:
        group.start_soon(first, 1)
        await anyio.sleep(0.01)
        with pytest.raises(layers.Overloaded):
            await second(2)


async def test_two_layers_are_separate_pools() -> None:
    """Two ConcurrencyLimit objects with the same settings are two pools."""
    first = layers.ConcurrencyLimit(1, max_waiting=0).layer(Gauge())
    second = layers.ConcurrencyLimit(1, max_waiting=0).layer(Gauge())
    async with anyio.create_task_group() as group:
        group.start_soon(first, 1)
        await anyio.sleep(0.01)
        assert await second(2) == 2


async def test_a_builder_reused_for_two_services_shares_its_permits() -> None:
    """.concurrency_limit() makes the layer once: services built from it share."""
    builder = layers.ServiceBuilder().concurrency_limit(1, max_waiting=0)
    first, second = builder.service(Gauge()), builder.service(Gauge())
    async with anyio.create_task_group() as group:
        group.start_soon(first, 1)
        await anyio.sleep(0.01)
        with pytest.raises(layers.Overloaded):
            await second(2)


def test_repr_and_identity() -> None:
    """The repr shows the settings; two equal configurations are two limits."""
    limit = layers.ConcurrencyLimit(3, max_waiting=5)
    assert repr(limit) == (
        "ConcurrencyLimit(max_in_flight=3, max_waiting=5, max_wait=None, "
        "store=None, name='concurrency_limit')"
    )
    assert limit != layers.ConcurrencyLimit(3, max_waiting=5)


@pytest.mark.parametrize(
    "anyio_backend", [virtual_time_backend("asyncio")], ids=["asyncio"]
)
async def test_task_cancel_as_the_permit_arrives_passes_it_on() -> None:
    """asyncio: Task.cancel() on a waiter just granted: it never starts, c does."""
    gauge = Gauge()
    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(gauge)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = []

    async def hold() -> None:
        await svc(("a", 1.0))  # its finally has just handed the permit to b
        tasks[0].cancel()  # before b runs again

    holder = loop.create_task(hold())
    await anyio.sleep(0.1)
    tasks.append(loop.create_task(svc("b")))
    await anyio.sleep(0.1)
    last = loop.create_task(svc("c"))
    await asyncio.wait([holder, tasks[0], last])
    assert tasks[0].cancelled()
    assert "b" not in gauge.started
    assert gauge.finished == [("a", 1.0), "c"]
    assert limit.statistics().in_flight == 0


# ------------------------------------------------------------ mass cancellation


@pytest.mark.parametrize("order", CANCEL_ORDERS)
async def test_mass_cancellation_keeps_order_and_leaves_nothing_behind(
    order: str,
) -> None:
    """Cancel many waiters in any order: the rest start in arrival order, none left."""
    count = 300
    gauge = Gauge(duration=0.01)
    limit = layers.ConcurrencyLimit(2)
    svc = limit.layer(gauge)
    scopes = [anyio.CancelScope() for _ in range(count)]
    arrived: list[Any] = []
    doomed = cancelled_waiters(order, count)
    async with anyio.create_task_group() as group:
        group.start_soon(svc, ("holder 1", 1.0))
        group.start_soon(svc, ("holder 2", 1.0))
        await until_in_flight(limit, 2)
        for i in range(count):
            group.start_soon(arrive, svc, i, arrived, scopes[i])
        await anyio.sleep(0.1)
        assert limit.statistics().waiting == count
        for i in doomed:
            scopes[i].cancel()
        await anyio.sleep(0.1)
        assert limit.statistics().waiting == count - len(doomed)
        assert limit.statistics().in_flight == 2
    # trio starts tasks in an order of its own: arrival order is what counts
    cancelled = set(doomed)
    survivors = [r for r in arrived if r not in cancelled]
    assert len(survivors) == count - len(doomed)
    assert sorted(r for r in gauge.started if isinstance(r, int)) == sorted(survivors)
    starts = [gauge.start_times[r] for r in survivors]
    assert starts == sorted(starts)  # first come, first served
    assert gauge.max_in_flight == 2
    assert limit.statistics() == layers.ConcurrencyLimitStatistics(
        in_flight=0, waiting=0, rejected=0, max_in_flight=2
    )


class _CountingWaiter:
    """Wraps a backend waiter; counts the comparisons and hashes made on it."""

    eq_calls = 0
    hash_calls = 0

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @property
    def woken(self) -> bool:
        return bool(self.inner.woken)

    def wait(self) -> Any:
        return self.inner.wait()

    def wake(self) -> None:
        self.inner.wake()

    def __eq__(self, other: object) -> bool:
        type(self).eq_calls += 1
        return self is other

    def __hash__(self) -> int:
        type(self).hash_calls += 1
        return id(self) >> 4


@pytest.mark.parametrize("count", [50, 400])
async def test_cancelling_waiters_costs_the_same_in_any_order(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled waiter is never searched for: newest-first costs as oldest-first."""
    import layers._concurrency as module

    real = module.new_waiter
    monkeypatch.setattr(module, "new_waiter", lambda: _CountingWaiter(real()))

    async def cancel_all(newest_first: bool) -> tuple[int, int]:
        limit = layers.ConcurrencyLimit(1)
        svc = limit.layer(Gauge())
        scopes = [anyio.CancelScope() for _ in range(count)]
        async with anyio.create_task_group() as group:
            group.start_soon(svc, ("holder", 1.0))
            await until_in_flight(limit, 1)
            for i in range(count):
                group.start_soon(arrive, svc, i, list[Any](), scopes[i])
            await anyio.sleep(0.1)
            assert limit.statistics().waiting == count
            _CountingWaiter.eq_calls = _CountingWaiter.hash_calls = 0
            for scope in reversed(scopes) if newest_first else scopes:
                scope.cancel()
            await anyio.sleep(0.1)
            assert limit.statistics().waiting == 0
        assert limit.statistics().in_flight == 0
        return _CountingWaiter.eq_calls, _CountingWaiter.hash_calls

    newest = await cancel_all(newest_first=True)
    oldest = await cancel_all(newest_first=False)
    assert newest == oldest
    eq_calls, hash_calls = newest
    assert eq_calls <= count  # a search would compare ~count**2 / 2 times
    assert hash_calls <= 4 * count  # linear: O(1) per cancellation, amortized


async def test_waiters_that_give_up_do_not_pile_up() -> None:
    """Waiters leaving by max_wait under a held permit: the queue stays bounded."""
    limit = layers.ConcurrencyLimit(1, max_wait=0.05)
    svc = limit.layer(Gauge())
    state = limit._state  # pyright: ignore[reportPrivateUsage]
    outcomes: list[tuple[Any, str]] = []
    worst = 0
    async with anyio.create_task_group() as group:
        group.start_soon(svc, ("holder", 3.0))
        await until_in_flight(limit, 1)
        for i in range(2_000):
            group.start_soon(arrive, svc, i, list[Any](), None, outcomes)
            await anyio.sleep(0.001)
            waiting = limit.statistics().waiting
            assert waiting <= 51
            worst = max(worst, len(state.waiters))
            assert len(state.waiters) <= 2 * waiting + 64
    assert worst > 51  # the waiters that gave up were kept for a while
    assert outcomes == [(i, "overloaded") for i in range(2_000)]
    assert limit.statistics() == layers.ConcurrencyLimitStatistics(
        in_flight=0, waiting=0, rejected=2_000, max_in_flight=1
    )
    assert len(state.waiters) == 0


async def test_queue_bound_counts_only_live_waiters() -> None:
    """max_waiting counts the calls still waiting, not those that gave up."""
    gauge = Gauge()
    limit = layers.ConcurrencyLimit(1, max_waiting=3)
    svc = limit.layer(gauge)
    scopes = [anyio.CancelScope() for _ in range(3)]
    arrived: list[Any] = []
    async with anyio.create_task_group() as group:
        group.start_soon(svc, ("holder", 1.0))
        await until_in_flight(limit, 1)
        for i in range(3):
            group.start_soon(arrive, svc, i, arrived, scopes[i])
        await anyio.sleep(0.1)
        scopes[0].cancel()
        scopes[2].cancel()
        await anyio.sleep(0.1)
        assert limit.statistics().waiting == 1
        group.start_soon(svc, "d")
        await anyio.sleep(0.01)
        group.start_soon(svc, "e")
        await anyio.sleep(0.01)
        assert limit.statistics().waiting == 3
        with pytest.raises(layers.Overloaded):
            await svc("f")
    assert [r for r in gauge.started if r != ("holder", 1.0)] == [1, "d", "e"]
