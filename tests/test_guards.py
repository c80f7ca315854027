"""The block forms: ``async with layer.guard(...)`` and ``async with layer:``.

Each layer's block shares the service form's state, events, errors and
statistics; cancellation while waiting to enter takes nothing, and inside
the block gives back what was taken.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest

import layers
from layers import _guard
from layers.events import (
    CircuitCallRejected,
    CircuitOpened,
    ConcurrencyLimitRejected,
    DrainRejected,
    RateLimitRejected,
    RateLimitWaited,
)
from layers.testing import capture_events

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """A failure."""


class Benign(Exception):
    """An exception some breakers ignore."""


async def echo(request: str) -> str:
    """A service that answers at once."""
    return request


async def nap(request: str) -> str:
    """A service that takes one second."""
    await anyio.sleep(1)
    return request


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Any:
    """After each test, no ``async with layer:`` entry is left."""
    yield
    assert _guard.entered() == 0


# ------------------------------------------------------------------ Drain


async def test_drain_block_counts_in_flight_with_the_service() -> None:
    """A block is a call in flight of the same Drain as its service's calls."""
    drain = layers.Drain()
    svc = drain.layer(nap)
    seen: list[int] = []
    async with anyio.create_task_group() as group:
        group.start_soon(svc, "x")
        await anyio.sleep(0.1)
        async with drain.guard():
            seen.append(drain.in_flight)
    assert seen == [2]
    assert drain.statistics() == layers.DrainStatistics(
        in_flight=0, draining=False, admitted=2, rejected=0
    )


async def test_drain_block_is_refused_once_draining() -> None:
    """Once draining, entering raises ShuttingDown and the block does not run."""
    drain = layers.Drain(retry_after=5)
    ran: list[str] = []
    drain.start()
    with (
        capture_events(DrainRejected) as events,
        pytest.raises(layers.ShuttingDown) as caught,
    ):
        async with drain:
            ran.append("ran")
    assert ran == []
    assert caught.value.retry_after == 5
    assert drain.statistics().rejected == 1
    assert len(events) == 1


async def test_drain_block_cancelled_inside_leaves_and_wakes_wait_idle() -> None:
    """A block cancelled inside is no longer in flight: wait_idle returns."""
    drain = layers.Drain()

    async def block() -> None:
        async with drain:
            await anyio.sleep(math.inf)

    async with anyio.create_task_group() as group:
        group.start_soon(block)
        await anyio.sleep(0.1)
        assert drain.in_flight == 1
        group.cancel_scope.cancel()
    assert drain.in_flight == 0
    with anyio.fail_after(1):
        assert await drain.drain()


async def test_drain_block_exception_propagates_and_leaves() -> None:
    """The block's exception propagates unchanged; the count goes back."""
    drain = layers.Drain()
    with pytest.raises(Boom):
        async with drain:
            raise Boom
    assert drain.in_flight == 0


async def test_the_shorthand_nests_and_runs_concurrently() -> None:
    """``async with layer:`` nested in one task and across many is right."""
    drain = layers.Drain()
    inside: list[int] = []

    async def task() -> None:
        async with drain:
            async with drain:
                inside.append(drain.in_flight)
                await anyio.sleep(1)
            inside.append(drain.in_flight)

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(task)
        await anyio.sleep(0.5)
        assert _guard.entered() == 6
    assert drain.in_flight == 0
    assert sorted(inside) == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------ ConcurrencyLimit


async def test_concurrency_block_holds_a_permit_shared_with_the_service() -> None:
    """A call of the service waits while a block holds the only permit."""
    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(echo)
    done: list[float] = []

    async def later() -> None:
        await svc("x")
        done.append(anyio.current_time())

    start = anyio.current_time()
    async with anyio.create_task_group() as group, limit:
        group.start_soon(later)
        await anyio.sleep(2)
        assert limit.statistics().waiting == 1
        assert limit.statistics().in_flight == 1
    assert done == [pytest.approx(start + 2)]
    assert limit.statistics().in_flight == 0


async def test_concurrency_block_refused_when_full_as_the_service() -> None:
    """max_waiting=0 refuses a block with Overloaded, before it runs."""
    limit = layers.ConcurrencyLimit(1, max_waiting=0)
    svc = limit.layer(nap)
    ran: list[str] = []
    with capture_events(ConcurrencyLimitRejected) as events:
        async with anyio.create_task_group() as group:
            group.start_soon(svc, "x")
            await anyio.sleep(0.1)
            with pytest.raises(layers.Overloaded):
                async with limit.guard():
                    ran.append("ran")
    assert ran == []
    assert [e.reason for e in events] == ["queue_full"]
    assert limit.statistics().rejected == 1


async def test_concurrency_block_max_wait() -> None:
    """A block that waits longer than max_wait is refused, holding nothing."""
    limit = layers.ConcurrencyLimit(1, max_wait=0.5)
    async with limit:
        with pytest.raises(layers.Overloaded, match="max_wait"):
            async with limit:
                pass
        assert limit.statistics().waiting == 0
    assert limit.statistics().in_flight == 0


async def test_concurrency_block_cancelled_while_waiting_takes_nothing() -> None:
    """Cancelled in the queue, the block never runs; the permit goes on."""
    limit = layers.ConcurrencyLimit(1)
    ran: list[str] = []
    svc = limit.layer(echo)

    async def block() -> None:
        async with limit:
            ran.append("ran")

    async with limit:
        with anyio.move_on_after(1):
            await block()
        assert limit.statistics().waiting == 0
        assert limit.statistics().in_flight == 1
    assert ran == []
    assert limit.statistics().in_flight == 0
    assert await svc("ok") == "ok"


async def test_concurrency_block_cancelled_inside_gives_the_permit_back() -> None:
    """A block cancelled inside gives its permit to the next waiter."""
    limit = layers.ConcurrencyLimit(1)
    svc = limit.layer(echo)
    got: list[tuple[str, float]] = []
    holder = anyio.CancelScope()

    async def hold() -> None:
        with holder:
            async with limit.guard():
                await anyio.sleep(math.inf)

    async def waiter() -> None:
        got.append((await svc("waiter"), anyio.current_time()))

    start = anyio.current_time()
    async with anyio.create_task_group() as group:
        group.start_soon(hold)
        await anyio.sleep(0.1)
        group.start_soon(waiter)
        await anyio.sleep(0.9)
        assert limit.statistics().waiting == 1
        holder.cancel()
    assert got == [("waiter", pytest.approx(start + 1))]
    assert limit.statistics().in_flight == 0


# ------------------------------------------------------------------ RateLimit


def test_rate_guard_key_is_required_for_a_keyed_limit_and_refused_otherwise() -> None:
    """A keyed limit needs key=, an unkeyed one refuses it, naming the parameter."""
    keyed = layers.RateLimit(1, key=lambda request: request)
    with pytest.raises(layers.ConfigurationError, match=r"RateLimit\.guard\(key=None"):
        keyed.guard()
    with pytest.raises(layers.ConfigurationError, match="key must be hashable"):
        keyed.guard(key=["not", "hashable"])
    plain = layers.RateLimit(1)
    with pytest.raises(layers.ConfigurationError, match=r"RateLimit\.guard\(key='a'"):
        plain.guard(key="a")


@pytest.mark.parametrize("cost", [-1, math.inf, math.nan, True, "1"])
def test_rate_guard_refuses_a_bad_cost(cost: Any) -> None:
    """A cost that is not a finite number >= 0 is a ConfigurationError naming it."""
    with pytest.raises(layers.ConfigurationError, match=r"RateLimit\.guard\(cost="):
        layers.RateLimit(1).guard(cost=cost)


async def test_rate_guard_shares_the_limit_with_the_service_in_reject_mode() -> None:
    """A block takes from the same limit as the service; a refused block never runs."""
    limit = layers.RateLimit(1, mode="reject")
    svc = limit.layer(echo)
    ran: list[str] = []
    async with limit:
        ran.append("first")
    with pytest.raises(layers.RateLimited) as caught:
        await svc("x")
    assert caught.value.retry_after == pytest.approx(1)
    with capture_events(RateLimitRejected) as events, pytest.raises(layers.RateLimited):
        async with limit.guard():
            ran.append("never")
    assert ran == ["first"]
    assert [e.reason for e in events] == ["limited"]
    assert limit.statistics().rejected == 2


async def test_rate_guard_waits_its_turn_with_key_and_cost() -> None:
    """In wait mode a block of cost 2 waits behind the key's schedule."""
    limit = layers.RateLimit(1, burst=2, key=lambda request: request)
    start = anyio.current_time()
    times: list[float] = []
    with capture_events(RateLimitWaited) as waited:
        for _ in range(2):
            async with limit.guard(key="a", cost=2):
                times.append(anyio.current_time() - start)
        async with limit.guard(key="b", cost=2):  # another key: its own limit
            times.append(anyio.current_time() - start)
    assert times == [0, pytest.approx(2), pytest.approx(2)]
    assert [e.cost for e in waited] == [2]


async def test_rate_guard_cost_beyond_burst_and_free_cost() -> None:
    """A cost beyond the burst is RateLimited on entry; a cost of 0 is free."""
    limit = layers.RateLimit(1, burst=2, mode="reject")
    with pytest.raises(layers.RateLimited, match="exceeds the burst"):
        async with limit.guard(cost=3):
            pass
    for _ in range(5):
        async with limit.guard(cost=0):
            pass
    async with limit.guard(cost=2):
        pass


async def test_rate_guard_cancelled_while_waiting_takes_nothing() -> None:
    """A block cancelled in the queue takes nothing: the next one is not delayed."""
    limit = layers.RateLimit(1)
    ran: list[str] = []
    async with limit:
        pass
    with anyio.move_on_after(0.5):
        async with limit:
            ran.append("never")
    assert ran == []
    assert limit.statistics().waiting == 0
    start = anyio.current_time()
    async with limit:  # due at 1 s, as if the cancelled block never came
        pass
    assert anyio.current_time() - start == pytest.approx(0.5)


# ------------------------------------------------------------------ CircuitBreaker


def breaker(**options: Any) -> layers.CircuitBreaker:
    """A small breaker: trips at 2 failures out of 2 calls, open 10 s, 1 probe."""
    defaults: dict[str, Any] = {
        "window_size": 2,
        "min_calls": 2,
        "open_duration": 10,
        "probes": 1,
    }
    return layers.CircuitBreaker(**{**defaults, **options})


async def fail_block(guarded: Any, error: BaseException | None = None) -> str:
    """Run a block under *guarded* that raises *error* (Boom by default)."""
    try:
        async with guarded:
            raise error or Boom()
    except layers.CircuitOpen:
        return "rejected"
    except Exception as caught:
        return type(caught).__name__


async def test_breaker_block_failures_open_it_and_the_service_shares_it() -> None:
    """Failing blocks trip the breaker; its service and blocks are then rejected."""
    cb = breaker()
    svc = cb.layer(echo)
    assert await fail_block(cb) == "Boom"
    assert await fail_block(cb.guard()) == "Boom"
    assert cb.state is layers.CircuitState.OPEN
    ran: list[str] = []
    with capture_events(CircuitCallRejected) as events:
        with pytest.raises(layers.CircuitOpen) as caught:
            async with cb:
                ran.append("never")
        with pytest.raises(layers.CircuitOpen):
            await svc("x")
    assert ran == []
    assert caught.value.retry_after == pytest.approx(10)
    assert len(events) == 2
    assert cb.statistics().rejected == 2


async def test_breaker_block_classifies_as_the_service() -> None:
    """on/ignore classify a block's exception; a clean exit is a success."""
    cb = breaker(on=Boom, ignore=(Benign,), window_size=3, min_calls=3)
    assert await fail_block(cb, Benign()) == "Benign"  # not counted
    assert cb.statistics().calls == 0
    assert await fail_block(cb, KeyError()) == "KeyError"  # not `on`: a success
    async with cb:
        pass
    stats = cb.statistics()
    assert (stats.calls, stats.failed_calls) == (2, 0)
    assert await fail_block(cb) == "Boom"
    assert cb.statistics().failed_calls == 1


async def test_breaker_block_slow_calls_are_timed_by_the_block() -> None:
    """A block lasting slow_call_duration or more is a slow call."""
    cb = breaker(slow_call_duration=1, slow_call_rate_threshold=1.0)
    for _ in range(2):
        async with cb:
            await anyio.sleep(1)
    assert cb.state is layers.CircuitState.OPEN


async def test_breaker_block_cancelled_inside_is_not_an_outcome() -> None:
    """A cancelled block is not counted, closed or half-open (its slot is freed)."""
    cb = breaker()
    with anyio.move_on_after(1):
        async with cb:
            await anyio.sleep(math.inf)
    assert cb.statistics().calls == 0
    await fail_block(cb)
    await fail_block(cb)
    await anyio.sleep(10)
    with anyio.move_on_after(1):
        async with cb:  # the probe
            assert cb.state is layers.CircuitState.HALF_OPEN
            assert cb.statistics().probes_in_flight == 1
            await anyio.sleep(math.inf)
    assert cb.statistics().probes_in_flight == 0
    async with cb:  # the slot was freed: this one is the probe
        pass
    assert cb.state is layers.CircuitState.CLOSED


async def test_breaker_block_probe_failure_reopens() -> None:
    """A half-open breaker's block is a probe; other blocks meanwhile are rejected."""
    cb = breaker()
    await fail_block(cb)
    await fail_block(cb)
    await anyio.sleep(10)
    outcomes: list[str] = []

    async def probe() -> None:
        try:
            async with cb:
                await anyio.sleep(1)
                raise Boom
        except Boom:
            outcomes.append("probe failed")

    async with anyio.create_task_group() as group:
        group.start_soon(probe)
        await anyio.sleep(0.1)
        outcomes.append(await fail_block(cb))
    assert outcomes == ["rejected", "probe failed"]
    assert cb.state is layers.CircuitState.OPEN


async def test_breaker_block_with_a_store_opens_the_fleet() -> None:
    """With a store, failing blocks of one process open the other's breaker."""
    async with layers.MemoryBreakerStore() as store:
        one = breaker(store=store, consecutive_failures=2)
        two = breaker(store=store, consecutive_failures=2)
        svc = two.layer(echo)
        assert await svc("x") == "x"  # joins
        async with one:  # joins; a success
            pass
        assert await fail_block(one) == "Boom"
        assert await fail_block(one) == "Boom"
        await anyio.sleep(1.1)  # a sync interval: sent and published
        assert store.state is layers.CircuitState.OPEN
        assert await fail_block(two) == "rejected"
        with pytest.raises(layers.CircuitOpen):
            await svc("x")


# ------------------------------------------------------- retry_after and open_for


class Later(Exception):
    """A failure that says when to come back."""

    def __init__(self, after: float | None) -> None:
        super().__init__(after)
        self.after = after


def hint(outcome: Any) -> float | None:
    """The duration a Later or a ('later', seconds) response carries."""
    if isinstance(outcome, Later):
        return outcome.after
    if isinstance(outcome, tuple):
        return outcome[1]  # type: ignore[no-any-return]
    return None


def test_retry_after_must_be_callable() -> None:
    """retry_after= that is not callable is refused at construction, naming it."""
    with pytest.raises(layers.ConfigurationError, match="retry_after"):
        layers.CircuitBreaker(retry_after=5)  # type: ignore[arg-type]


async def test_a_failure_hint_opens_the_breaker_for_its_duration() -> None:
    """One failure carrying 30 s opens the breaker at once, then half-open."""
    cb = breaker(retry_after=hint, window_size=100, min_calls=100)
    svc = cb.layer(echo)
    with capture_events(CircuitOpened) as events:
        assert await fail_block(cb, Later(30)) == "Later"
    assert cb.state is layers.CircuitState.OPEN
    assert [(e.reason, e.open_duration, e.from_state) for e in events] == [
        ("retry_after", 30, "closed")
    ]
    with pytest.raises(layers.CircuitOpen) as caught:
        await svc("x")
    assert caught.value.retry_after == pytest.approx(30)
    await anyio.sleep(30)
    assert await svc("probe") == "probe"  # half-open, one probe: closes
    assert cb.state is layers.CircuitState.CLOSED


async def test_a_hint_of_none_changes_nothing() -> None:
    """A failure whose hint is None is counted as usual, nothing more."""
    cb = breaker(retry_after=hint, window_size=100, min_calls=100)
    assert await fail_block(cb, Later(None)) == "Later"
    assert cb.state is layers.CircuitState.CLOSED
    assert cb.statistics().failed_calls == 1


async def test_a_response_hint_through_on_result() -> None:
    """A response that on_result calls a failure gives its hint too."""

    async def later(request: str) -> tuple[str, float]:
        return (request, 7.0)

    cb = breaker(
        retry_after=hint,
        on_result=lambda response: isinstance(response, tuple),
        window_size=100,
        min_calls=100,
    )
    svc = cb.layer(later)
    assert await svc("x") == ("x", 7.0)
    assert cb.statistics().retry_after == pytest.approx(7)


@pytest.mark.parametrize("window_type", ["count", "time"])
@pytest.mark.parametrize("slow", [None, 5.0])
async def test_the_hint_on_every_service_path(window_type: str, slow: Any) -> None:
    """Every specialised closed-state service (and its on_result form) asks the hint."""
    options: dict[str, Any] = {
        "retry_after": hint,
        "window_type": window_type,
        "window_size": 100,
        "min_calls": 100,
        "slow_call_duration": slow,
    }

    async def answer(request: str) -> Any:
        if request == "raise":
            raise Later(3)
        return ("later", 4.0)

    cb = breaker(**options)
    with pytest.raises(Later):
        await cb.layer(answer)("raise")
    assert cb.statistics().retry_after == pytest.approx(3)
    cb = breaker(on_result=lambda r: isinstance(r, tuple), **options)
    await cb.layer(answer)("answer")
    assert cb.statistics().retry_after == pytest.approx(4)


async def test_a_shorter_hint_does_not_shorten_an_open_period() -> None:
    """An open breaker is opened anew only if that ends its period later."""
    cb = breaker(retry_after=hint, probes=2)
    await fail_block(cb)
    await fail_block(cb)  # open for 10 s
    cb.open_for(3)
    assert cb.statistics().retry_after == pytest.approx(10)
    with capture_events(CircuitOpened) as events:
        cb.open_for(20)
    assert [(e.from_state, e.reason, e.open_duration) for e in events] == [
        ("open", "open_for", 20)
    ]
    assert cb.statistics().retry_after == pytest.approx(20)


@pytest.mark.parametrize("bad", [-1, math.inf, math.nan, "5", True])
async def test_a_bad_hint_is_a_callback_error_chained_from_the_failure(
    bad: Any,
) -> None:
    """A hint that is not None nor a finite number >= 0 raises CallbackError."""
    cb = breaker(retry_after=lambda error: bad)
    with pytest.raises(layers.CallbackError, match="retry_after") as caught:
        async with cb:
            raise Boom
    assert isinstance(caught.value.__cause__, Boom)
    assert caught.value.parameter == "retry_after"
    assert cb.state is layers.CircuitState.CLOSED


async def test_a_probe_failure_hint_opens_for_its_duration() -> None:
    """A failing probe's hint decides how long the breaker opens again."""
    cb = breaker(retry_after=hint)
    await fail_block(cb)
    await fail_block(cb)
    await anyio.sleep(10)
    assert await fail_block(cb, Later(42)) == "Later"
    assert cb.statistics().retry_after == pytest.approx(42)


async def test_no_hint_in_manual_states() -> None:
    """A hint never leaves a manual state (metrics-only counts, never opens)."""
    cb = breaker(retry_after=hint)
    cb.metrics_only()
    assert await fail_block(cb, Later(30)) == "Later"
    assert cb.state is layers.CircuitState.METRICS_ONLY


async def test_open_for_opens_then_half_opens_by_itself() -> None:
    """open_for(s) rejects for s seconds, then a probe may close the breaker."""
    cb = breaker()
    svc = cb.layer(echo)
    cb.force_open()
    with capture_events(CircuitOpened) as events:
        cb.open_for(5)
    assert [(e.from_state, e.reason, e.open_duration) for e in events] == [
        ("forced_open", "open_for", 5)
    ]
    with pytest.raises(layers.CircuitOpen) as caught:
        await svc("x")
    assert caught.value.retry_after == pytest.approx(5)
    await anyio.sleep(5)
    assert await svc("x") == "x"
    assert cb.state is layers.CircuitState.CLOSED


@pytest.mark.parametrize("seconds", [0, -1, math.inf, math.nan, "5"])
def test_open_for_refuses_bad_seconds(seconds: Any) -> None:
    """open_for(seconds) must be a finite number > 0: a ConfigurationError names it."""
    with pytest.raises(
        layers.ConfigurationError, match=r"CircuitBreaker\.open_for\(seconds="
    ):
        breaker().open_for(seconds)


def test_open_for_outside_an_event_loop() -> None:
    """Outside an event loop open_for raises RuntimeError (its clock is the loop's)."""
    with pytest.raises(RuntimeError):
        breaker().open_for(5)


async def test_open_for_and_hints_open_the_whole_fleet() -> None:
    """With a store, open_for and a failure's hint open every process's breaker."""
    async with layers.MemoryBreakerStore() as store:
        one = breaker(store=store, retry_after=hint)
        two = breaker(store=store, retry_after=hint)
        s1, s2 = one.layer(echo), two.layer(echo)
        assert await s1("x") == "x"
        assert await s2("x") == "x"
        one.open_for(20)
        await anyio.sleep(0.01)
        assert store.state is layers.CircuitState.OPEN
        assert two.state is layers.CircuitState.OPEN
        with pytest.raises(layers.CircuitOpen) as caught:
            await s2("x")
        assert caught.value.retry_after == pytest.approx(20, abs=0.1)
        await anyio.sleep(20)
        assert await s2("probe") == "probe"
        await anyio.sleep(0.01)
        assert store.state is layers.CircuitState.CLOSED
        await anyio.sleep(0.01)
        assert one.state is layers.CircuitState.CLOSED
        generation = store.generation
        assert await fail_block(two, Later(15)) == "Later"  # the hint
        await anyio.sleep(0.01)
        assert store.generation == generation + 1
        assert one.state is layers.CircuitState.OPEN
        assert one.statistics().retry_after == pytest.approx(15, abs=0.1)


# ------------------------------------------------------------------ PerKey


async def test_per_key_block_uses_the_keys_own_breaker() -> None:
    """PerKey.guard(key) enters factory(key)'s block form, shared with its service."""
    per = layers.PerKey(
        lambda tenant: layers.CircuitBreaker(name=tenant, consecutive_failures=1),
        key=lambda request: request,
    )
    svc = per.layer(echo)
    assert await fail_block(per.guard("acme")) == "Boom"
    assert await fail_block(per.guard("acme")) == "rejected"
    with pytest.raises(layers.CircuitOpen):
        await svc("acme")
    assert await svc("globex") == "globex"
    async with per.guard("globex"):
        pass
    assert per.statistics().keys == 2


async def test_per_key_block_needs_a_layer_with_a_block_form() -> None:
    """A factory that makes a builder has no block form: ConfigurationError."""
    per = layers.PerKey(
        lambda key: layers.ServiceBuilder().timeout(1), key=lambda request: request
    )
    with pytest.raises(layers.ConfigurationError, match="no block form"):
        async with per.guard("a"):
            pass


async def test_the_builder_passes_retry_after() -> None:
    """ServiceBuilder.circuit_breaker(retry_after=...) makes a hinted breaker."""

    async def throttled(request: str) -> str:
        raise Later(12)

    svc = layers.ServiceBuilder().circuit_breaker(retry_after=hint).service(throttled)
    with pytest.raises(Later):
        await svc("x")
    with pytest.raises(layers.CircuitOpen) as caught:
        await svc("x")
    assert caught.value.retry_after == pytest.approx(12)


class SlowProbes(layers.MemoryBreakerStore):
    """A store whose take_probe takes a second (a slow round trip)."""

    async def take_probe(
        self, rules: layers.BreakerRules, probe: str, /
    ) -> layers.BreakerView:
        await anyio.sleep(1)
        return await super().take_probe(rules, probe)


async def test_a_shared_breaker_block_cancelled_while_entering_takes_nothing() -> None:
    """Cancelled while the store is asked for a probe, a block never runs nor holds."""
    async with SlowProbes() as store:
        cb = breaker(store=store)
        svc = cb.layer(echo)
        assert await svc("x") == "x"  # joins
        cb.open_for(5)
        await anyio.sleep(5.5)
        ran: list[str] = []
        with anyio.move_on_after(0.5):
            async with cb:
                ran.append("never")
        assert ran == []
        await anyio.sleep(0.1)  # the background gives back what it may hold
        assert store.probes_in_flight == 0
        async with cb:  # the next block is the probe, and closes it
            ran.append("probe")
        await anyio.sleep(0.1)
        assert ran == ["probe"]
        assert store.state is layers.CircuitState.CLOSED
