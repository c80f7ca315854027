"""Tests of the Drain layer: counting, refusing once draining, wait_idle."""

from __future__ import annotations

import anyio
import pytest

import layers
from layers.testing import capture_events

pytestmark = pytest.mark.anyio


async def started() -> None:
    """Let the tasks just started run up to their first wait (a little virtual time)."""
    await anyio.sleep(0.001)


def sleeper(duration: float) -> layers.Service[str, str]:
    """A service that sleeps *duration* then echoes."""

    async def service(request: str) -> str:
        await anyio.sleep(duration)
        return request

    return service


async def test_counts_calls_in_flight_and_passes_results() -> None:
    """Calls inside are counted; results and the count return to 0 after."""
    drain = layers.Drain()
    svc = drain.layer(sleeper(1))
    seen: list[int] = []
    async with anyio.create_task_group() as group:
        for i in range(3):
            group.start_soon(svc, str(i))
        await anyio.sleep(0.5)
        seen.append(drain.in_flight)
    assert seen == [3]
    assert drain.in_flight == 0
    assert drain.statistics() == layers.DrainStatistics(
        in_flight=0, draining=False, admitted=3, rejected=0
    )


async def test_success_path_adds_no_checkpoint() -> None:
    """A call through an open Drain does not yield: it completes when cancelled."""

    async def echo(request: int) -> int:
        return request

    drain = layers.Drain()
    svc = drain.layer(echo)
    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await svc(1) == 1
    assert not scope.cancelled_caught
    assert drain.in_flight == 0


async def test_errors_pass_through_and_are_uncounted_after() -> None:
    """The inner error passes unchanged and the call leaves the count."""
    drain = layers.Drain()

    async def broken(request: str) -> str:
        raise KeyError(request)

    with pytest.raises(KeyError, match="x"):
        await drain.layer(broken)("x")
    assert drain.in_flight == 0


async def test_new_calls_are_refused_once_draining() -> None:
    """After start(), calls raise ShuttingDown without calling the inner service."""
    drain = layers.Drain(retry_after=30, name="api")
    calls: list[str] = []

    async def inner(request: str) -> str:
        calls.append(request)
        return request

    svc = drain.layer(inner)
    assert await svc("before") == "before"
    with capture_events(
        layers.events.DrainStarted, layers.events.DrainRejected
    ) as seen:
        drain.start()
        drain.start()  # idempotent: one event
        with pytest.raises(layers.ShuttingDown) as info:
            await svc("after")
    assert calls == ["before"]
    error = info.value
    assert isinstance(error, layers.Rejected)
    assert error.retry_after == 30
    assert error.layer == "api"
    assert str(error) == "drain 'api' is shutting down: 0 calls still in flight"
    assert seen == [
        layers.events.DrainStarted(layer="api", in_flight=0),
        layers.events.DrainRejected(layer="api", in_flight=0),
    ]
    assert drain.draining
    assert drain.statistics().rejected == 1


async def test_in_flight_calls_finish_after_draining_starts() -> None:
    """A call admitted before start() runs to completion and returns its value."""
    drain = layers.Drain()
    svc = drain.layer(sleeper(2))
    results: list[str] = []

    async def call() -> None:
        results.append(await svc("slow"))

    async with anyio.create_task_group() as group:
        group.start_soon(call)
        await anyio.sleep(1)
        drain.start()
        assert await drain.wait_idle() is True
        assert anyio.current_time() == pytest.approx(2, abs=1e-6)
    assert results == ["slow"]


async def test_wait_idle_returns_when_the_last_call_ends() -> None:
    """wait_idle wakes at the end of the last of several calls, not the first."""
    drain = layers.Drain()
    svc = drain.layer(sleeper(0))
    async with anyio.create_task_group() as group:
        for duration in (1, 3, 2):
            group.start_soon(drain.layer(sleeper(duration)), "x")
        await started()
        assert await drain.drain() is True
        assert anyio.current_time() == pytest.approx(3, abs=1e-6)
    with pytest.raises(layers.ShuttingDown):
        await svc("late")


async def test_wait_idle_times_out_with_false() -> None:
    """With a call still running at the timeout, wait_idle returns False then."""
    drain = layers.Drain()
    async with anyio.create_task_group() as group:
        group.start_soon(drain.layer(sleeper(10)), "x")
        await started()
        drain.start()
        assert await drain.wait_idle(timeout=2) is False
        assert anyio.current_time() == pytest.approx(2.001, abs=1e-6)
        assert drain.in_flight == 1
        assert await drain.wait_idle(timeout=100) is True
        assert anyio.current_time() == pytest.approx(10, abs=1e-6)


async def test_wait_idle_when_idle_returns_at_once() -> None:
    """Nothing in flight: wait_idle returns True without waiting."""
    drain = layers.Drain()
    assert await drain.wait_idle(timeout=0) is True
    assert await drain.wait_idle() is True
    assert anyio.current_time() == 0


async def test_several_waiters_all_wake() -> None:
    """Two tasks waiting for idle both wake when the last call ends."""
    drain = layers.Drain()
    woke: list[float] = []

    async def waiter() -> None:
        assert await drain.wait_idle()
        woke.append(anyio.current_time())

    async with anyio.create_task_group() as group:
        group.start_soon(drain.layer(sleeper(1)), "x")
        await started()
        group.start_soon(waiter)
        group.start_soon(waiter)
    assert woke == [pytest.approx(1, abs=1e-6)] * 2


async def test_cancelled_call_leaves_the_count() -> None:
    """A call cancelled while inside releases its place; wait_idle wakes."""
    drain = layers.Drain()
    svc = drain.layer(sleeper(10))
    async with anyio.create_task_group() as group:
        group.start_soon(svc, "x")
        await anyio.sleep(1)
        assert drain.in_flight == 1
        group.cancel_scope.cancel()
    assert drain.in_flight == 0
    assert await drain.wait_idle(timeout=0) is True


async def test_cancelled_wait_idle_holds_nothing() -> None:
    """wait_idle cancelled while it waits leaves the drain working."""
    drain = layers.Drain()
    async with anyio.create_task_group() as group:
        group.start_soon(drain.layer(sleeper(5)), "x")
        await started()
        with anyio.move_on_after(1):
            await drain.wait_idle()
        assert anyio.current_time() == pytest.approx(1.001, abs=1e-6)
        assert await drain.wait_idle() is True
        assert anyio.current_time() == pytest.approx(5, abs=1e-6)


async def test_one_drain_shared_by_two_services() -> None:
    """One Drain wrapping two services counts both and refuses both."""
    drain = layers.Drain()
    first, second = drain.layer(sleeper(1)), drain.layer(sleeper(2))
    async with anyio.create_task_group() as group:
        group.start_soon(first, "a")
        group.start_soon(second, "b")
        await started()
        assert drain.in_flight == 2
        drain.start()
        for svc in (first, second):
            with pytest.raises(layers.ShuttingDown):
                await svc("late")
        assert await drain.wait_idle()
        assert anyio.current_time() == pytest.approx(2, abs=1e-6)


async def test_builder_layer_keeps_the_given_drain() -> None:
    """.layer(d) adds d itself; starting it refuses calls of the built service."""
    drain = layers.Drain()
    builder = layers.ServiceBuilder().layer(drain).timeout(5)
    assert builder.layers[0] is drain
    svc = builder.service(sleeper(1))
    assert await svc("x") == "x"
    drain.start()
    with pytest.raises(layers.ShuttingDown):
        await svc("y")


def test_builder_has_no_drain_method() -> None:
    """A drain is made by the program, which keeps it: no builder method makes one."""
    assert not hasattr(layers.ServiceBuilder, "drain")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry_after": -1}, r"Drain\(retry_after=-1\): retry_after must be None or"),
        ({"retry_after": float("nan")}, r"retry_after must be None or a finite"),
        ({"retry_after": True}, r"retry_after must be"),
        ({"name": ""}, r"Drain\(name=''\): name must be a non-empty string"),
    ],
)
def test_bad_configuration(kwargs: dict[str, object], message: str) -> None:
    """Invalid options raise ConfigurationError naming the parameter and value."""
    with pytest.raises(layers.ConfigurationError, match=message):
        layers.Drain(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [-1, float("inf"), "1", True])
async def test_bad_wait_idle_timeout(timeout: object) -> None:  # noqa: ASYNC109
    """wait_idle refuses a bad timeout, naming it."""
    with pytest.raises(layers.ConfigurationError, match=r"Drain\.wait_idle\(timeout="):
        await layers.Drain().wait_idle(timeout)  # type: ignore[arg-type]


async def test_many_concurrent_calls() -> None:
    """100 calls: drained mid-way, admitted ones finish, late ones refused."""
    drain = layers.Drain()
    svc = drain.layer(sleeper(1))
    outcomes: list[str] = []

    async def call(i: int) -> None:
        await anyio.sleep(i * 0.02)
        try:
            outcomes.append(await svc(str(i)))
        except layers.ShuttingDown:
            outcomes.append("refused")

    async with anyio.create_task_group() as group:
        for i in range(100):
            group.start_soon(call, i)
        await anyio.sleep(1.01)  # calls 0..50 are inside (0 has just ended)
        drain.start()
        assert await drain.wait_idle()
    assert outcomes.count("refused") == 49
    assert drain.statistics() == layers.DrainStatistics(
        in_flight=0, draining=True, admitted=51, rejected=49
    )
