"""Tests of the backend corner's contract (layers/_backend.py).

Its fast paths never fail silently: each private detail is checked before it
is used, and a change in it (simulated here) falls back to the public API
with the same behaviour. The stateful layers' times keep their meaning from
one run to the next. Event loops that ran a Timeout are collected.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import time
import types
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
import trio.testing

import layers
from layers import _backend
from layers.testing import virtual_time_backend

FAST = pytest.mark.skipif(
    not _backend.FAST_PATHS, reason="the fast paths are off (LAYERS_NO_FAST_PATHS)"
)
CACHED = pytest.mark.skipif(
    not _backend._CACHES,  # pyright: ignore[reportPrivateUsage]
    reason="the caches are off (LAYERS_NO_FAST_PATHS, or no GIL)",
)
ASYNCIO_ONLY = pytest.mark.parametrize(
    "anyio_backend", [virtual_time_backend("asyncio")], ids=["asyncio"]
)


async def echo(request: str) -> str:
    """A service that answers at once."""
    return request


def sleeper(duration: float) -> layers.Service[str, str]:
    """A service that sleeps *duration*, then echoes."""

    async def service(request: str) -> str:
        await anyio.sleep(duration)
        return request

    return service


async def down(request: str) -> str:
    """A service that always fails."""
    raise ConnectionError(request)


# ------------------------------------------------------- loops are collected


def test_closed_loops_that_ran_a_timeout_are_collected() -> None:
    """300 asyncio.run calls with a Timeout leave no loop alive once closed."""
    refs: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    service = layers.Timeout(10).layer(sleeper(0))  # its timer outlives the run

    async def main() -> None:
        refs.append(weakref.ref(asyncio.get_running_loop()))
        assert await service("hi") == "hi"

    for _ in range(300):
        asyncio.run(main())
    last = refs.pop()  # the corner's cache may hold the last until another runs
    asyncio.run(echo("a new loop"))
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []
    del last


# ---------------------------------------------------------- state across runs

RUNS = [
    ("asyncio", "asyncio"),
    ("trio", "trio"),
    ("asyncio", "trio"),
    ("trio", "asyncio"),
]
SAME_BASE = pytest.mark.skipif(
    time.get_clock_info("monotonic").implementation
    != time.get_clock_info("perf_counter").implementation,
    reason="asyncio's and trio's base clocks differ on this platform",
)


def runs_param() -> list[Any]:
    """The pairs of backends for a first and a second run."""
    return [
        pytest.param(first, second, marks=[] if first == second else [SAME_BASE])
        for first, second in RUNS
    ]


def run_on(backend: str, main: Callable[[], Awaitable[Any]]) -> Any:
    """``anyio.run(main)`` on *backend*, on its real clock."""
    return anyio.run(main, backend=backend)


@pytest.mark.realtime
@pytest.mark.parametrize(("first", "second"), runs_param())
def test_a_rate_limit_keeps_its_quota_in_a_second_run(first: str, second: str) -> None:
    """A quota spent in one run is still spent in the next, with a sane retry_after."""
    limit = layers.RateLimit(1, 60.0, mode="reject")
    service = limit.layer(echo)

    async def spend() -> None:
        assert await service("a") == "a"

    async def refused() -> float | None:
        with pytest.raises(layers.RateLimited) as info:
            await service("b")
        return info.value.retry_after

    run_on(first, spend)
    retry_after = run_on(second, refused)
    assert retry_after is not None
    assert 50 < retry_after <= 60


@pytest.mark.realtime
@pytest.mark.parametrize(("first", "second"), runs_param())
def test_a_keyed_waiting_rate_limit_keeps_its_schedule(first: str, second: str) -> None:
    """A keyed limit's schedule holds across runs; waiting is bounded by a deadline."""
    limit = layers.RateLimit(1, 60.0, key=lambda request: request, max_wait=5)
    service = limit.layer(echo)

    async def spend() -> None:
        assert await service("a") == "a"

    async def refused() -> float | None:
        with pytest.raises(layers.RateLimited) as info:
            await service("a")  # a 60 s wait, beyond max_wait
        return info.value.retry_after

    run_on(first, spend)
    retry_after = run_on(second, refused)
    assert retry_after is not None
    assert 50 < retry_after <= 60


@pytest.mark.realtime
@pytest.mark.parametrize("window_type", ["count", "time"])
@pytest.mark.parametrize(("first", "second"), runs_param())
def test_an_open_breaker_stays_open_in_a_second_run(
    first: str, second: str, window_type: str
) -> None:
    """A breaker opened in one run is open in the next, for the rest of its time."""
    breaker = layers.CircuitBreaker(
        window_type=window_type,  # type: ignore[arg-type]
        window_size=2 if window_type == "count" else 60,
        min_calls=2,
        open_duration=30,
    )
    service = breaker.layer(down)

    async def trip() -> None:
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await service("x")
        assert breaker.state is layers.CircuitState.OPEN

    async def still_open() -> tuple[float | None, float | None]:
        with pytest.raises(layers.CircuitOpen) as info:
            await service("x")
        return info.value.retry_after, breaker.statistics().retry_after

    run_on(first, trip)
    retry_after, remaining = run_on(second, still_open)
    assert retry_after is not None
    assert remaining is not None
    assert 25 < retry_after <= 30
    assert 25 < remaining <= 30


@pytest.mark.realtime
@pytest.mark.parametrize(("first", "second"), runs_param())
def test_a_retry_budget_keeps_its_window_in_later_runs(first: str, second: str) -> None:
    """Deposits and withdrawals of one run still count in the next ones."""
    budget = layers.RetryBudget(ttl=10, min_per_second=0, ratio=0.5)

    async def spend() -> None:
        for _ in range(4):
            budget.deposit()
        assert [budget.withdraw(), budget.withdraw()] == [True, True]

    async def look() -> tuple[int, int, bool]:
        stats = budget.statistics()
        return stats.deposits, stats.retries, budget.withdraw()

    run_on(first, spend)
    for backend in (second, first, second):  # three new clock offsets on trio
        assert run_on(backend, look) == (4, 2, False)


@pytest.mark.realtime
@pytest.mark.parametrize(("first", "second"), runs_param())
def test_a_health_report_stays_cached_in_later_runs(first: str, second: str) -> None:
    """A report cached for an hour in one run is the cached one in the next runs."""
    from layers.health import HealthChecks

    checks = HealthChecks(cache_ttl=3600)
    ran: list[None] = []

    async def check() -> None:
        ran.append(None)

    checks.add("db", check)

    async def look() -> None:
        await checks.run()

    run_on(first, look)
    for backend in (second, first, second, first):  # new clock offsets on trio
        run_on(backend, look)
    assert len(ran) == 1


@pytest.mark.anyio
async def test_virtual_clocks_are_their_own_base() -> None:
    """On a virtual clock the base time is the clock itself (it starts at 0)."""
    await anyio.sleep(3)
    assert _backend.base_time() == anyio.current_time() == 3
    assert _backend.clock_source()[0] == 0.0


# ----------------------------------------------- fast paths, and their fallbacks


@CACHED
def test_the_fast_paths_are_used_where_their_checks_hold() -> None:
    """On the stock loop and trio's SystemClock, the clock is one C call."""

    async def on_asyncio() -> None:
        assert _backend.current_time() == pytest.approx(time.monotonic(), abs=0.1)
        assert _backend._clock_fn is time.monotonic  # pyright: ignore[reportPrivateUsage]

    async def on_trio() -> None:
        assert _backend.current_time() == pytest.approx(trio.current_time(), abs=0.1)
        assert _backend._trio_read is time.perf_counter  # pyright: ignore[reportPrivateUsage]

    asyncio.run(on_asyncio())
    trio.run(on_trio)


def check_timeouts_fire_right(
    now: Callable[[], float],
) -> Callable[[], Awaitable[None]]:
    """A check, in a run on its real clock, that Timeouts fire on time."""

    async def main() -> None:
        start = now()
        assert await layers.Timeout(5).layer(sleeper(0.01))("quick") == "quick"
        with pytest.raises(layers.Elapsed):
            await layers.Timeout(0.05).layer(sleeper(3))("slow")
        assert now() - start < 2
        # the corner's clock is the loop's
        before = now()
        ours = _backend.current_time()
        assert before <= ours <= now()

    return main


@pytest.mark.realtime
@pytest.mark.parametrize("skew", [10.0, -10.0])
def test_a_trio_clock_of_another_formula_is_read_through_trio(
    monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """If SystemClock were not offset + perf_counter(), Timeouts still fire right.

    A cached clock 10 s off trio's own would make a Timeout fire at once
    (+10 s) or 10 s late (-10 s).
    """
    from trio._core._run import SystemClock  # trio.run's default clock

    system_clock: Any = SystemClock
    formula = system_clock.current_time

    def skewed(self: Any) -> float:
        return formula(self) + skew  # type: ignore[no-any-return]

    monkeypatch.setattr(system_clock, "current_time", skewed)

    async def main() -> None:
        await check_timeouts_fire_right(trio.current_time)()
        assert _backend.clock_source()[1] is not time.perf_counter

    trio.run(main)


@pytest.mark.realtime
@pytest.mark.parametrize("skew", [10.0, -10.0])
def test_an_asyncio_clock_of_another_formula_is_read_through_the_loop(
    monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """If BaseEventLoop.time() were not time.monotonic(), Timeouts still fire right."""

    def skewed(self: Any) -> float:
        return time.monotonic() + skew

    monkeypatch.setattr(asyncio.BaseEventLoop, "time", skewed)

    def loop_time() -> float:
        return asyncio.get_running_loop().time()

    async def main() -> None:
        await check_timeouts_fire_right(loop_time)()
        assert _backend.clock_source()[1] is not time.monotonic

    asyncio.run(main())


@pytest.mark.realtime
def test_a_loop_whose_thread_id_disagrees_is_not_cached() -> None:
    """A loop whose ``_thread_id`` is not the running thread takes the public path."""

    async def main() -> None:
        loop: Any = asyncio.get_running_loop()
        loop._thread_id = -1  # what a loop that recorded its thread otherwise has
        await check_timeouts_fire_right(loop.time)()
        assert _backend._clock_loop is not loop  # pyright: ignore[reportPrivateUsage]
        assert _backend.base_time() == pytest.approx(loop.time(), abs=0.1)

    asyncio.run(main())


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.11's task table")
@pytest.mark.parametrize("table", ["moved", "disagrees"])
def test_a_moved_or_wrong_current_task_table_is_not_used(
    monkeypatch: pytest.MonkeyPatch, table: str
) -> None:
    """A moved or wrong asyncio.tasks._current_tasks: current_task() serves."""
    fake = (
        types.SimpleNamespace()
        if table == "moved"
        else types.SimpleNamespace(_current_tasks={})
    )
    monkeypatch.setattr(_backend, "asyncio_tasks", fake)

    async def main() -> None:
        assert await layers.Timeout(5).layer(echo)("hi") == "hi"
        wheel = _backend._wheel_for(asyncio.get_running_loop())  # pyright: ignore[reportPrivateUsage]
        assert wheel.task_of is asyncio.current_task
        with pytest.raises(layers.Elapsed):
            await layers.Timeout(0.01).layer(sleeper(1))("slow")

    asyncio.run(main())


class _OpaqueTask(asyncio.Task):  # type: ignore[type-arg]
    """A task whose ``_fut_waiter`` and ``_must_cancel`` cannot be read."""

    @property
    def _fut_waiter(self) -> Any:
        raise AttributeError("_fut_waiter")

    @property
    def _must_cancel(self) -> Any:
        raise AttributeError("_must_cancel")


async def race_at_the_deadline(setter_first: bool) -> None:
    """An event set exactly at a Timeout's deadline wins; a late call expires."""
    event = anyio.Event()
    outcomes: list[object] = []

    async def wait_for_event(request: str) -> str:
        await event.wait()
        return request

    async def setter() -> None:
        await anyio.sleep(1.0)
        event.set()

    async def call() -> None:
        outcomes.append(await layers.Timeout(1.0).layer(wait_for_event)("hi"))
        with pytest.raises(layers.Elapsed):
            await layers.Timeout(1.0).layer(sleeper(2))("late")
        outcomes.append(anyio.current_time())

    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        if setter_first:
            tg.start_soon(setter)
            await anyio.lowlevel.checkpoint()
            tg.start_soon(call)
        else:
            tg.start_soon(call)
            tg.start_soon(setter)
    assert outcomes == ["hi", pytest.approx(start + 2.0, abs=1e-6)]


@ASYNCIO_ONLY
@pytest.mark.anyio
@pytest.mark.parametrize("setter_first", [True, False], ids=["setter", "call"])
async def test_without_task_internals_a_response_at_the_deadline_still_wins(
    setter_first: bool,
) -> None:
    """With the task's internals unreadable, an event set at the deadline still wins."""
    loop = asyncio.get_running_loop()
    loop.set_task_factory(
        lambda loop, coro, **kwargs: _OpaqueTask(coro, loop=loop, **kwargs)
    )
    try:
        await race_at_the_deadline(setter_first)
    finally:
        loop.set_task_factory(None)


@ASYNCIO_ONLY
@pytest.mark.anyio
@pytest.mark.parametrize("setter_first", [True, False], ids=["setter", "call"])
async def test_without_the_ready_queue_work_due_at_the_deadline_still_runs_first(
    monkeypatch: pytest.MonkeyPatch, setter_first: bool
) -> None:
    """If loop._ready were not a deque, the wheel still lets due work run first."""
    monkeypatch.setattr(_backend, "deque", type("NotTheReadyQueue", (), {}))
    await race_at_the_deadline(setter_first)


@pytest.mark.realtime
def test_a_trio_clock_of_its_own_is_read_through_its_api() -> None:
    """A real-time trio clock that is not trio's SystemClock: read, never guessed."""

    class Shifted(trio.abc.Clock):
        def start_clock(self) -> None:
            pass

        def current_time(self) -> float:
            return time.perf_counter() + 1000.0

        def deadline_to_sleep_time(self, deadline: float) -> float:
            return deadline - self.current_time()

    async def main() -> None:
        await check_timeouts_fire_right(trio.current_time)()
        # its base time is perf_counter()'s, measured once
        assert _backend.base_time() == pytest.approx(time.perf_counter(), abs=0.01)

    trio.run(main, clock=Shifted())


def test_without_trios_internals_the_wheel_enters_scopes_publicly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If trio's internals cannot be imported, Timeout on trio still works."""
    monkeypatch.setitem(sys.modules, "trio._core._run", None)  # an ImportError
    outcomes: list[object] = []

    async def main() -> None:
        outcomes.append(await layers.Timeout(1).layer(sleeper(0.5))("hi"))
        run = _backend._trio_run_here(trio)  # pyright: ignore[reportPrivateUsage]
        assert run.wheel is not None
        assert run.wheel.enter is _backend._public_enter  # pyright: ignore[reportPrivateUsage]
        with pytest.raises(layers.Elapsed):
            await layers.Timeout(1).layer(sleeper(2))("hi")
        outcomes.append(trio.current_time())

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert outcomes == ["hi", pytest.approx(1.5)]


def test_the_switch_is_read_from_the_environment() -> None:
    """LAYERS_NO_FAST_PATHS set to anything but "" or "0" turns the fast paths off."""
    wanted = _backend._fast_paths_wanted  # pyright: ignore[reportPrivateUsage]
    assert wanted({})
    assert wanted({"LAYERS_NO_FAST_PATHS": ""})
    assert wanted({"LAYERS_NO_FAST_PATHS": "0"})
    assert not wanted({"LAYERS_NO_FAST_PATHS": "1"})
    assert not wanted({"LAYERS_NO_FAST_PATHS": "yes"})


PROGRAM = textwrap.dedent(
    """
    import asyncio, sys, time
    {prelude}
    import anyio, trio
    import layers
    from layers import _backend as b

    async def sleeper(request):
        await anyio.sleep(request)
        return request

    async def main():
        limit = layers.RateLimit(1, 60.0, mode="reject").layer(sleeper)
        assert await limit(0) == 0
        assert await layers.Timeout(5).layer(sleeper)(0.01) == 0.01
        try:
            await layers.Timeout(0.01).layer(sleeper)(2)
        except layers.Elapsed:
            pass
        else:
            raise AssertionError("no Elapsed")
        assert b._clock_fn is time.monotonic  # never replaced: no cache
        assert b._trio_read is time.perf_counter and not b._trio_thread
        return b._clock_loop._thread_id

    for backend in ("asyncio", "trio"):
        assert anyio.run(main, backend=backend) == 0, backend
    print(b.FAST_PATHS, b._CACHES)
    """
)


def run_program(prelude: str, environ: dict[str, str]) -> str:
    """Run PROGRAM in a fresh interpreter; return what it prints."""
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(prelude=prelude)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **environ},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]  # (events may print before it)


@pytest.mark.realtime
def test_the_switch_turns_every_cache_and_fast_path_off() -> None:
    """With LAYERS_NO_FAST_PATHS=1 the layers work and no cache is kept."""
    assert run_program("", {"LAYERS_NO_FAST_PATHS": "1"}) == "False False"


@pytest.mark.realtime
def test_without_the_gil_the_caches_are_not_used() -> None:
    """On a free-threaded build with the GIL off, the GIL-reliant caches are off."""
    prelude = "sys._is_gil_enabled = lambda: False"
    expected = "True False"
    environ = {"LAYERS_NO_FAST_PATHS": "0"}
    assert run_program(prelude, environ) == expected


# ---------------------------------------- a breaker with a on_result check

KINDS = [
    pytest.param({"window_type": "count", "window_size": 4}, id="count"),
    pytest.param({"window_type": "time", "window_size": 60}, id="time"),
    pytest.param(
        {"window_type": "count", "window_size": 4, "slow_call_duration": 5},
        id="count-slow",
    ),
    pytest.param(
        {"window_type": "time", "window_size": 60, "slow_call_duration": 5},
        id="time-slow",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize("options", KINDS)
async def test_a_failure_response_trips_the_breaker_on_its_fast_path(
    options: dict[str, Any],
) -> None:
    """on_result takes a closure of its own; failures are counted as before."""
    breaker = layers.CircuitBreaker(
        min_calls=4,
        failure_rate_threshold=0.4,
        on_result=lambda response: response == "bad",
        **options,
    )
    service = breaker.layer(echo)
    assert service.__name__ == "checked_circuit_breaker"  # type: ignore[attr-defined]
    for _ in range(3):
        assert await service("good") == "good"
    assert await service("bad") == "bad"
    stats = breaker.statistics()
    assert (stats.calls, stats.failed_calls) == (4, 1)
    assert breaker.state is layers.CircuitState.CLOSED
    assert await service("bad") == "bad"  # 2 of the last 4 (or of 5): >= 0.4
    assert breaker.state is layers.CircuitState.OPEN
    with pytest.raises(layers.CircuitOpen):
        await service("good")


@pytest.mark.realtime
def test_the_first_clock_read_on_trio_imports_nothing_heavy() -> None:
    """No trio.testing import (0.15-0.35 s, the loop blocked) unless a MockClock runs.

    A shared breaker's background task read the clock first while the join's
    Redis command ran under its 0.25 s timeout: the import made it time out.
    """
    program = textwrap.dedent(
        """
        import sys, anyio, trio
        from layers import _backend as b

        async def main():
            b.base_time()
            b.clock_source()

        anyio.run(main, backend="trio")
        print("trio.testing" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
