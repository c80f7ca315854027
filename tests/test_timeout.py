"""Tests of the Timeout layer: deadlines, cancellation, nesting, events, config."""

from __future__ import annotations

import asyncio
import math
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import hypothesis
import pytest
import sniffio
import trio
from hypothesis import strategies as st

import layers
from layers import _backend
from layers.testing import virtual_time_backend

pytestmark = pytest.mark.anyio

Handler = layers.Service[str, str]


def now() -> float:
    """The event loop's (virtual) clock."""
    return anyio.current_time()


def sleeper(duration: float, log: list[str] | None = None) -> Handler:
    """A service that sleeps *duration* then echoes; logs when its finally runs."""

    async def service(request: str) -> str:
        try:
            await anyio.sleep(duration)
        finally:
            if log is not None:
                log.append("finally")
        return request

    return service


# Tests of asyncio's own mechanics (the timer wheel, its tasks) run on asyncio
# only, on virtual time, instead of being skipped on trio.
ASYNCIO_ONLY = pytest.mark.parametrize(
    "anyio_backend", [virtual_time_backend("asyncio")], ids=["asyncio"]
)


def on_asyncio() -> bool:
    """Whether the running backend is asyncio."""
    return sniffio.current_async_library() == "asyncio"


# ----------------------------------------------------------------- basics


async def test_response_before_deadline_is_returned() -> None:
    """A call that finishes before the timeout returns its response then."""
    svc = layers.Timeout(1).layer(sleeper(0.5))
    assert await svc("hi") == "hi"
    assert now() == pytest.approx(0.5, abs=1e-6)


async def test_expiry_raises_elapsed_at_the_deadline() -> None:
    """A slow call is cancelled at its await and Elapsed is raised at t=1."""
    log: list[str] = []
    svc = layers.Timeout(1, name="db").layer(sleeper(2, log))
    with pytest.raises(layers.Elapsed) as info:
        await svc("hi")
    assert now() == pytest.approx(1, abs=1e-6)
    error = info.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, layers.LayersError)
    assert error.timeout == 1
    assert error.layer == "db"
    assert str(error) == "request timed out after 1 s"
    assert log == ["finally"]
    if on_asyncio():
        assert isinstance(error.__cause__, asyncio.CancelledError)


async def test_response_ready_exactly_at_the_deadline_is_returned() -> None:
    """An inner sleep that ends exactly at the deadline wins over the timeout."""
    svc = layers.Timeout(1.0).layer(sleeper(1.0))
    assert await svc("hi") == "hi"
    assert now() == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("setter_first", [True, False], ids=["setter", "call"])
async def test_event_set_at_the_deadline_is_returned(setter_first: bool) -> None:
    """An event set by another task exactly at the deadline wins over the timeout."""
    event = anyio.Event()

    async def wait_for_event(request: str) -> str:
        await event.wait()
        return request

    async def setter() -> None:
        await anyio.sleep(1.0)
        event.set()

    svc = layers.Timeout(1.0).layer(wait_for_event)
    async with anyio.create_task_group() as tg:
        if setter_first:
            tg.start_soon(setter)
            await anyio.lowlevel.checkpoint()  # the setter's timer goes first
        else:
            tg.start_soon(setter)
        assert await svc("hi") == "hi"
        assert now() == pytest.approx(1, abs=1e-6)


# ---------------------------------------------------------------- nesting


@pytest.mark.parametrize(
    ("outer", "inner", "expiring"),
    [(1, 5, "outer"), (5, 1, "inner")],
    ids=["tight-outside", "tight-inside"],
)
async def test_nested_timeouts_the_tighter_expires(
    outer: float, inner: float, expiring: str
) -> None:
    """Nested timeouts expire at the tighter deadline, named after its layer."""
    log: list[str] = []
    svc = layers.Timeout(outer, name="outer").layer(
        layers.Timeout(inner, name="inner").layer(sleeper(10, log))
    )
    with pytest.raises(layers.Elapsed) as info:
        await svc("hi")
    assert now() == pytest.approx(1, abs=1e-6)
    assert info.value.timeout == 1
    assert info.value.layer == expiring
    assert log == ["finally"]


@pytest.mark.parametrize(("outer", "inner"), [(1, 5), (5, 1)])
async def test_current_deadline_is_the_tighter_absolute_deadline(
    outer: float, inner: float
) -> None:
    """current_deadline() is the tightest absolute deadline and is restored."""
    seen: dict[str, float | None] = {}

    async def probe(request: str) -> str:
        seen["inner"] = layers.current_deadline()
        seen["child"] = None
        async with anyio.create_task_group() as tg:

            async def child() -> None:
                seen["child"] = layers.current_deadline()

            tg.start_soon(child)
        if request == "fail":
            raise ValueError(request)
        return request

    inner_svc = layers.Timeout(inner).layer(probe)

    async def middle(request: str) -> str:
        seen["middle"] = layers.current_deadline()
        try:
            return await inner_svc(request)
        finally:
            seen["middle after"] = layers.current_deadline()

    svc = layers.Timeout(outer).layer(middle)
    await anyio.sleep(0.25)  # so that absolute and relative deadlines differ
    assert layers.current_deadline() is None
    tighter = 0.25 + min(outer, inner)

    assert await svc("ok") == "ok"
    assert seen["inner"] == pytest.approx(tighter, abs=1e-6)
    assert seen["child"] == seen["inner"]
    assert seen["middle"] == pytest.approx(0.25 + outer, abs=1e-6)
    assert seen["middle after"] == seen["middle"]
    assert layers.current_deadline() is None

    with pytest.raises(ValueError, match="fail"):
        await svc("fail")
    assert seen["middle after"] == seen["middle"]
    assert layers.current_deadline() is None


async def test_current_deadline_is_restored_after_elapsed() -> None:
    """current_deadline() is None again after a call that timed out."""
    svc = layers.Timeout(1).layer(sleeper(2))
    with pytest.raises(layers.Elapsed):
        await svc("hi")
    assert layers.current_deadline() is None


# ------------------------------------------------ cancellation from outside


@pytest.mark.parametrize("outer_deadline", [0.5, 1.0], ids=["earlier", "equal"])
async def test_outside_cancel_scope_passes_through(outer_deadline: float) -> None:
    """An enclosing move_on_after (earlier or at the same deadline) is no Elapsed."""
    log: list[str] = []
    svc = layers.Timeout(1).layer(sleeper(3, log))
    with anyio.move_on_after(outer_deadline) as scope:
        await svc("hi")
    # Equal deadlines: the enclosing scope, armed first, cancels first; the
    # layer then sees a cancellation that is not its own and lets it pass.
    assert scope.cancelled_caught
    assert now() == pytest.approx(outer_deadline, abs=1e-6)
    assert log == ["finally"]


async def test_outside_fail_after_raises_anyio_timeout_not_elapsed() -> None:
    """An enclosing fail_after at the same deadline raises its own TimeoutError."""
    svc = layers.Timeout(1).layer(sleeper(3))
    with pytest.raises(TimeoutError) as info, anyio.fail_after(1):
        await svc("hi")
    assert not isinstance(info.value, layers.Elapsed)


async def test_task_group_cancellation_passes_through() -> None:
    """A sibling cancelling the task group cancels the call, without Elapsed."""
    log: list[str] = []
    raised: list[BaseException] = []
    svc = layers.Timeout(1).layer(sleeper(3, log))

    async def call() -> None:
        try:
            await svc("hi")
        except BaseException as error:
            raised.append(error)
            raise

    async def canceller() -> None:
        await anyio.sleep(0.5)
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        tg.start_soon(canceller)
    assert tg.cancel_scope.cancelled_caught
    assert now() == pytest.approx(0.5, abs=1e-6)
    assert len(raised) == 1
    assert isinstance(raised[0], anyio.get_cancelled_exc_class())
    assert log == ["finally"]
    # the task is not left cancelled
    await anyio.sleep(1)
    assert now() == pytest.approx(1.5, abs=1e-6)


# -------------------------------------------------- cancel scopes inside


async def test_inner_move_on_after_catches_its_own_cancellation() -> None:
    """A move_on_after inside the call catches its own expiry; the call returns."""

    async def service(request: str) -> str:
        with anyio.move_on_after(0.2) as scope:
            await anyio.sleep(0.5)
        assert scope.cancelled_caught
        await anyio.sleep(0.3)
        return request

    svc = layers.Timeout(1).layer(service)
    assert await svc("hi") == "hi"
    assert now() == pytest.approx(0.5, abs=1e-6)


async def test_inner_fail_after_raises_its_own_timeout_error() -> None:
    """A fail_after inside the call raises anyio's TimeoutError, not Elapsed."""

    async def service(request: str) -> str:
        with anyio.fail_after(0.2):
            await anyio.sleep(0.5)
        return request

    svc = layers.Timeout(1).layer(service)
    with pytest.raises(TimeoutError) as info:
        await svc("hi")
    assert not isinstance(info.value, layers.Elapsed)
    assert now() == pytest.approx(0.2, abs=1e-6)


@pytest.mark.parametrize("kind", ["move_on_after", "fail_after"])
async def test_looser_inner_scope_does_not_hide_the_timeout(kind: str) -> None:
    """A cancel scope inside with a later deadline lets the layer's expiry through."""
    scopes: list[anyio.CancelScope] = []

    async def service(request: str) -> str:
        make_scope = anyio.fail_after if kind == "fail_after" else anyio.move_on_after
        with make_scope(2) as scope:
            scopes.append(scope)
            await anyio.sleep(3)
        return request

    svc = layers.Timeout(1).layer(service)
    with pytest.raises(layers.Elapsed):
        await svc("hi")
    assert now() == pytest.approx(1, abs=1e-6)
    assert not scopes[0].cancelled_caught


async def test_inner_swallowing_the_cancellation_returns_its_value() -> None:
    """A call that swallows the timeout's cancellation returns; nothing stays hit."""

    async def service(request: str) -> str:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            return "swallowed"
        return request  # pragma: no cover

    svc = layers.Timeout(1).layer(service)
    assert await svc("hi") == "swallowed"
    assert now() == pytest.approx(1, abs=1e-6)
    if on_asyncio():
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
    await anyio.sleep(1)
    assert now() == pytest.approx(2, abs=1e-6)
    # and the next call gets its own full timeout
    assert await layers.Timeout(1).layer(sleeper(0.9))("again") == "again"
    assert now() == pytest.approx(2.9, abs=1e-6)


# -------------------------------------------------------------- exceptions


async def test_inner_exception_passes_through_unchanged() -> None:
    """An exception from the inner call is the same object, traceback kept."""
    boom = ValueError("boom")

    async def failing(request: str) -> str:
        await anyio.sleep(0.5)
        raise boom

    svc = layers.Timeout(1).layer(failing)
    with pytest.raises(ValueError, match="boom") as info:
        await svc("hi")
    assert info.value is boom
    assert not isinstance(info.value, layers.Elapsed)
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "failing" in frames
    assert now() == pytest.approx(0.5, abs=1e-6)


async def test_exception_raised_while_cancelled_passes_through() -> None:
    """An error raised by cleanup after the timeout's cancellation is not Elapsed."""
    boom = RuntimeError("cleanup failed")

    async def failing_cleanup(request: str) -> str:
        try:
            await anyio.sleep(5)
        finally:
            if request:  # always: the cleanup fails
                raise boom
        return request  # pragma: no cover

    svc = layers.Timeout(1).layer(failing_cleanup)
    with pytest.raises(RuntimeError) as info:
        await svc("hi")
    assert info.value is boom
    assert now() == pytest.approx(1, abs=1e-6)
    if on_asyncio():
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
    await anyio.sleep(1)
    assert now() == pytest.approx(2, abs=1e-6)


# ------------------------------------------------------------- concurrency


async def _run_mixed(calls: list[tuple[float, float, float]]) -> None:
    """Run (start, timeout, duration) calls concurrently, checking each outcome."""
    outcomes: list[tuple[float, float, float, float, object]] = []
    timeouts: dict[float, layers.Timeout] = {}

    async def one(index: int, start: float, limit: float, duration: float) -> None:
        if start:
            await anyio.sleep(start)
        begun = now()
        layer = timeouts.setdefault(limit, layers.Timeout(limit))
        outcome: object
        try:
            outcome = await layer.layer(sleeper(duration))(str(index))
        except layers.Elapsed as error:
            outcome = error.timeout
        outcomes.append((index, begun, limit, duration, now(), outcome))

    async with anyio.create_task_group() as tg:
        for index, (start, limit, duration) in enumerate(calls):
            tg.start_soon(one, index, start, limit, duration)

    assert len(outcomes) == len(calls)
    for index, begun, timeout, duration, ended, outcome in outcomes:
        # a response (the request echoed) iff in time, else Elapsed(timeout)
        expected = str(index) if duration <= timeout else timeout
        assert isinstance(outcome, str) == (duration <= timeout)
        assert outcome == expected
        assert ended - begun == pytest.approx(min(timeout, duration), abs=1e-6), (
            begun,
            timeout,
            duration,
        )


async def test_many_concurrent_calls_each_meet_their_own_deadline() -> None:
    """1000 concurrent calls each return or raise Elapsed at their own deadline."""
    timeouts = [0.001, 0.004, 0.5, 1, 2]
    durations = [0.0005, 0.001, 0.002, 0.004, 0.005, 0.3, 0.5, 0.7, 1, 1.5, 2, 3]
    calls = [
        (0.0, timeouts[i % len(timeouts)], durations[(i * 7) % len(durations)])
        for i in range(1000)
    ]
    await _run_mixed(calls)


async def test_staggered_calls_with_deadlines_in_shared_and_separate_buckets() -> None:
    """Staggered calls with deadlines near 1/64 s boundaries meet their deadlines."""
    slot = 1 / 64
    calls: list[tuple[float, float, float]] = []
    for i in range(400):
        start = round(i * 0.001, 6)
        timeout = [0.001, 0.004, slot, 0.05, 0.5][i % 5]
        duration = [0.0005, 0.001, 0.004, 0.01, slot, 0.1, 0.6][(i * 3) % 7]
        calls.append((start, timeout, duration))
    # Deadlines exactly on, just before and just after bucket boundaries.
    # (Steps of 10 us, not 1 us: looptime's clock ticks in 1 us and can jump
    # two ticks over a 1 us gap that floating point makes a hair shorter.)
    step = 1e-5
    for k in (1, 2, 3, 64, 65):
        boundary = k * slot
        for start in (0.0, 0.003, 0.010):
            for offset in (-step, 0.0, step):
                timeout = round(boundary - start + offset, 6)
                if timeout <= 0:
                    continue
                for duration in (timeout - step, timeout, timeout + step, 1.0):
                    calls.append((start, timeout, round(duration, 6)))
    await _run_mixed(calls)


def current_wheel() -> Any:
    """The Timeout wheel of the running asyncio loop or trio run."""
    if on_asyncio():
        return _backend._wheel_for(asyncio.get_running_loop())  # pyright: ignore[reportPrivateUsage]
    found = _backend._trio_run_here(trio).wheel  # pyright: ignore[reportPrivateUsage]
    assert found is not None  # started by the run's first Timeout call
    return found


async def test_wheel_is_empty_after_calls_finish() -> None:
    """No wheel entry or bucket remains once every call is over, whatever its end."""

    async def swallow(request: str) -> str:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            return "swallowed"
        return request  # pragma: no cover

    async def fail(request: str) -> str:
        await anyio.sleep(0.1)
        raise ValueError(request)

    fast = layers.Timeout(1).layer(sleeper(0.2))
    slow = layers.Timeout(1).layer(sleeper(2))
    swallowing = layers.Timeout(0.3).layer(swallow)
    failing = layers.Timeout(1).layer(fail)
    results: list[object] = []

    async def outside_cancelled() -> None:
        with anyio.move_on_after(0.4):
            await layers.Timeout(2).layer(sleeper(5))("hi")

    async def outcome(call: Callable[[], Awaitable[object]]) -> None:
        try:
            results.append(await call())
        except (layers.Elapsed, ValueError) as error:
            results.append(type(error))

    def filed() -> int:
        return sum(len(b.entries) for b in current_wheel().buckets.values())

    assert await fast("first") == "first"  # on trio, starts the run's wheel
    during: list[int] = []
    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(outcome, lambda i=i: fast(str(i)))
            tg.start_soon(outcome, lambda: slow("x"))
            tg.start_soon(outcome, lambda: swallowing("s"))
            tg.start_soon(outcome, lambda: failing("f"))
            tg.start_soon(outside_cancelled)
        await anyio.sleep(0.05)
        during.append(filed())

    assert during == [250]
    assert sorted(map(str, results)) == sorted(
        [str(i) for i in range(50)]
        + [str(layers.Elapsed)] * 50
        + ["swallowed"] * 50
        + [str(ValueError)] * 50
    )
    assert filed() == 0
    await anyio.sleep(10)  # every timer has come due: the buckets are gone
    assert current_wheel().buckets == {}
    if not on_asyncio():
        assert current_wheel().heap == []


# ------------------------------------------------------------------ events


async def test_one_event_per_expiry_and_none_on_success() -> None:
    """Each expiry emits exactly one TimeoutElapsed; a success emits nothing."""
    captured: list[layers.Event] = []
    remove = layers.add_sink(captured.append)
    try:
        assert await layers.Timeout(1, name="db").layer(sleeper(0.5))("hi") == "hi"
        assert captured == []
        with pytest.raises(layers.Elapsed):
            await layers.Timeout(1, name="db").layer(sleeper(2))("hi")
        assert captured == [layers.events.TimeoutElapsed(layer="db", timeout=1)]
        captured.clear()
        # nested: one expiry, one event, from the layer that raised
        nested = layers.Timeout(1, name="outer").layer(
            layers.Timeout(1, name="inner").layer(sleeper(2))
        )
        with pytest.raises(layers.Elapsed, match="after 1 s"):
            await nested("hi")
        # equal deadlines: the outer layer's cancellation is the one that lands
        assert captured == [layers.events.TimeoutElapsed(layer="outer", timeout=1)]
        captured.clear()
        # outside cancellation is not an expiry
        with anyio.move_on_after(0.5):
            await layers.Timeout(1, name="db").layer(sleeper(2))("hi")
        assert captured == []
    finally:
        remove()
    assert captured.append not in layers.events.STATE.sinks


# ---------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "parameter", "shown"),
    [
        ({"seconds": 0}, "seconds", "0"),
        ({"seconds": -1}, "seconds", "-1"),
        ({"seconds": float("nan")}, "seconds", "nan"),
        ({"seconds": float("inf")}, "seconds", "inf"),
        ({"seconds": True}, "seconds", "True"),
        ({"seconds": "1"}, "seconds", "'1'"),
        ({"seconds": None}, "seconds", "None"),
        ({"seconds": 1, "name": ""}, "name", "''"),
        ({"seconds": 1, "name": 3}, "name", "3"),
    ],
)
def test_bad_configuration_is_rejected(
    kwargs: dict[str, Any], parameter: str, shown: str
) -> None:
    """Bad values raise ConfigurationError naming the parameter and the value."""
    with pytest.raises(layers.ConfigurationError) as info:
        layers.Timeout(**kwargs)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert f"{parameter}=" in message
    assert f"got {shown}" in message


def test_good_configuration_is_accepted() -> None:
    """Ints, floats and tiny values are valid timeouts; the layer is frozen."""
    assert layers.Timeout(1).seconds == 1
    assert layers.Timeout(1e-9, name="x").name == "x"
    timeout = layers.Timeout(2.5)
    with pytest.raises(AttributeError):
        timeout.seconds = 3  # type: ignore[misc]
    assert timeout.layer(sleeper(1)).seconds == 2.5


# ---------------------------------------------------------- no task per call


@ASYNCIO_ONLY
async def test_no_task_is_spawned_per_call() -> None:
    """On asyncio a call runs in the caller's task: the task count is unchanged."""
    before = len(asyncio.all_tasks())
    during: list[int] = []
    tasks: list[object] = []

    async def count(request: str) -> str:
        during.append(len(asyncio.all_tasks()))
        tasks.append(asyncio.current_task())
        await anyio.sleep(0.1)
        return request

    assert await layers.Timeout(1).layer(count)("hi") == "hi"
    assert during == [before]
    assert tasks == [asyncio.current_task()]


# ------------------------------------------------------------------ property


@hypothesis.settings(
    max_examples=40,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
    timeout_us=st.integers(1, 3_000_000),
    duration_us=st.integers(0, 4_000_000),
    same=st.booleans(),
)
async def test_property_response_iff_duration_within_timeout(
    timeout_us: int, duration_us: int, same: bool
) -> None:
    """The response comes back iff duration <= timeout, else Elapsed at the timeout."""
    if same:
        duration_us = timeout_us
    timeout, duration = timeout_us / 1e6, duration_us / 1e6
    svc = layers.Timeout(timeout).layer(sleeper(duration))
    begun = now()
    if duration <= timeout:
        assert await svc("hi") == "hi"
    else:
        with pytest.raises(layers.Elapsed) as info:
            await svc("hi")
        assert info.value.timeout == timeout
    # looptime keeps time in whole microseconds and can round a sleep such as
    # 1.000001 s (not exact in binary) up by one more tick: allow two.
    assert now() - begun == pytest.approx(min(duration, timeout), abs=2.5e-6)
    assert layers.current_deadline() is None
    assert math.isfinite(now())


@ASYNCIO_ONLY  # trio's MockClock never reaches a deadline while a task runs
async def test_busy_call_at_the_deadline_is_still_cancelled() -> None:
    """On asyncio, a call busy at the deadline (virtual time frozen) still expires."""
    spins = 0

    async def busy(request: str) -> str:
        nonlocal spins
        await anyio.sleep(1)
        while True:
            spins += 1
            await anyio.lowlevel.checkpoint()

    with pytest.raises(layers.Elapsed):
        await layers.Timeout(1).layer(busy)("hi")
    assert now() == pytest.approx(1, abs=1e-6)
    assert 0 < spins < 1000


async def test_backend_current_time_is_the_loop_clock() -> None:
    """The backend corner's cheap clock reads the same clock as anyio."""
    await anyio.sleep(12.5)
    assert _backend.current_time() == anyio.current_time()


def test_backend_current_time_on_real_loops() -> None:
    """On real asyncio and trio runs (trio's system clock cached) it matches anyio's."""

    async def compare() -> tuple[float, float, float]:
        before = anyio.current_time()
        ours = _backend.current_time()
        ours_again = _backend.current_time()
        after = anyio.current_time()
        assert before <= ours <= ours_again <= after
        return before, ours, after

    for _ in range(2):  # a second run of each has a new loop / clock offset
        asyncio.run(compare())
        trio.run(compare)
        anyio.run(compare, backend="trio")
