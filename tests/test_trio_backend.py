"""Tests of the backend corner's trio mechanics: the Timeout wheel, the clock cache.

The behaviour of Timeout is tested on both backends in test_timeout.py; these
tests look at how trio is served: one wheel task per run (no task per call),
nothing left filed once calls end, deadlines handed back to trio when the
run closes, and a clock cache that follows runs and threads.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
import trio
import trio.lowlevel
import trio.testing

import layers
from layers import _backend
from layers.testing import virtual_time_backend

TRIO_ONLY = pytest.mark.parametrize(
    "anyio_backend", [virtual_time_backend("trio")], ids=["trio"]
)


def sleeper(duration: float) -> layers.Service[str, str]:
    """A service that sleeps *duration*, then echoes."""

    async def service(request: str) -> str:
        await trio.sleep(duration)
        return request

    return service


CACHED = pytest.mark.skipif(
    not _backend._CACHES,  # pyright: ignore[reportPrivateUsage]
    reason="the caches are off (LAYERS_NO_FAST_PATHS, or no GIL)",
)
FAST = pytest.mark.skipif(
    not _backend.FAST_PATHS, reason="the fast paths are off (LAYERS_NO_FAST_PATHS)"
)


def wheel() -> Any:
    """The Timeout wheel of the trio run in progress."""
    run = _backend._trio_run_here(trio)  # pyright: ignore[reportPrivateUsage]
    if _backend._CACHES:  # pyright: ignore[reportPrivateUsage]
        assert _backend._trio_thread == threading.get_ident()  # pyright: ignore[reportPrivateUsage]
    found = run.wheel
    assert found is not None
    return found


@TRIO_ONLY
@pytest.mark.anyio
async def test_no_task_is_spawned_per_call() -> None:
    """One wheel task per run serves every call; a call runs in its caller's task."""

    def living() -> int:
        return trio.lowlevel.current_statistics().tasks_living

    service = layers.Timeout(1).layer(sleeper(0.1))
    assert await service("start") == "start"
    before = living()
    during: list[int] = []

    async def call() -> None:
        assert await service("hi") == "hi"

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(call)
        await trio.sleep(0.05)
        during.append(living())
    assert during == [before + 100]  # the callers only
    assert living() == before


@TRIO_ONLY
@pytest.mark.anyio
async def test_each_call_has_its_own_cancel_scope_under_the_callers() -> None:
    """The call's scope nests in trio's scope tree: outer deadlines and shields hold."""
    seen: list[float] = []

    async def inner(request: str) -> str:
        seen.append(trio.current_effective_deadline())
        with trio.CancelScope(shield=True):
            await trio.sleep(2)  # past the Timeout's deadline, shielded
        seen.append(trio.current_time())
        await trio.lowlevel.checkpoint()  # the first outside the shield
        return request  # pragma: no cover

    start = trio.current_time()
    with trio.fail_after(7):  # an outer trio deadline the call sees
        with pytest.raises(layers.Elapsed):
            await layers.Timeout(1).layer(inner)("hi")
    assert seen == [start + 7, start + 2]


@TRIO_ONLY
@pytest.mark.anyio
async def test_a_deadline_already_passed_expires_at_the_first_checkpoint() -> None:
    """Under an outer Timeout whose deadline passed (shielded), a call expires."""
    inner_timeout = layers.Timeout(5).layer(sleeper(3))
    when: list[float] = []

    async def late(request: str) -> str:
        with trio.CancelScope(shield=True):
            await trio.sleep(2)  # the outer deadline (1 s) passes here
            try:
                return await inner_timeout(request)
            finally:
                when.append(trio.current_time())
        raise AssertionError("a shield swallows nothing")  # pragma: no cover

    start = trio.current_time()
    with pytest.raises(layers.Elapsed) as info:
        await layers.Timeout(1).layer(late)("hi")
    assert info.value.timeout == 5  # the inner call's own timeout expired
    assert when == [start + 2]


def test_calls_in_flight_when_the_run_closes_get_trio_deadlines() -> None:
    """When the wheel's task ends with the run, filed calls still expire on time."""
    outcomes: list[tuple[str, float]] = []
    service = layers.Timeout(5).layer(sleeper(10))

    async def shielded_calls() -> None:
        with trio.CancelScope(shield=True):
            for _ in range(2):  # filed in the wheel, then after the wheel ended
                try:
                    await service("hi")
                except layers.Elapsed:
                    outcomes.append(("elapsed", trio.current_time()))

    async def main() -> None:
        trio.lowlevel.spawn_system_task(shielded_calls)
        await trio.sleep(1)
        # the main task returns: the run cancels its system tasks, the wheel too

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # (trio cancels one float step after a deadline)
    assert outcomes == [
        ("elapsed", pytest.approx(5.0)),
        ("elapsed", pytest.approx(10.0)),
    ]


@FAST
def test_the_public_enter_serves_when_trio_internals_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If trio's internals are not as expected, the wheel enters scopes publicly."""

    def no_lean_enter(trio: Any) -> None:
        return None

    monkeypatch.setattr(_backend, "_lean_enter", no_lean_enter)
    outcomes: list[object] = []

    async def main() -> None:
        outcomes.append(await layers.Timeout(1).layer(sleeper(0.5))("hi"))
        assert wheel().enter is _backend._public_enter  # pyright: ignore[reportPrivateUsage]
        with pytest.raises(layers.Elapsed):
            await layers.Timeout(1).layer(sleeper(2))("hi")
        outcomes.append(trio.current_time())

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert outcomes == ["hi", pytest.approx(1.5)]


def test_clock_cache_follows_runs_and_threads() -> None:
    """Runs in turn and at once in two threads: each reads its own run's clock."""
    errors: list[BaseException] = []
    offsets: list[float] = []

    async def compare() -> None:
        for _ in range(300):
            source_offset, read = _backend.clock_source()
            before = trio.current_time()
            ours = _backend.current_time()
            from_source = source_offset + read()
            after = trio.current_time()
            assert before <= ours <= from_source <= after
            async with trio.open_nursery():
                await layers.Timeout(5).layer(sleeper(0))("hi")
        offsets.append(trio.current_time())

    def in_thread() -> None:
        try:
            trio.run(compare)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    for _ in range(2):  # runs in turn in this thread: a new clock offset each
        trio.run(compare)
        assert not _backend._trio_thread  # pyright: ignore[reportPrivateUsage]
    threads = [threading.Thread(target=in_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(offsets) == 4
    assert not _backend._trio_thread  # pyright: ignore[reportPrivateUsage]


@CACHED
def test_anyio_trio_runs_share_the_cache_rules() -> None:
    """anyio.run on trio (a plain trio run) is cached and forgotten the same way."""

    async def check() -> float:
        ours = _backend.current_time()
        assert _backend._trio_thread == threading.get_ident()  # pyright: ignore[reportPrivateUsage]
        return ours

    assert anyio.run(check, backend="trio") > 0
    assert not _backend._trio_thread  # pyright: ignore[reportPrivateUsage]


def test_a_trio_guest_run_on_asyncio_is_refused_clearly() -> None:
    """A Timeout in trio guest mode on an asyncio loop says what is unsupported."""
    import asyncio

    outcomes: list[Any] = []

    async def trio_main() -> None:
        await layers.Timeout(1).layer(sleeper(0))("hi")

    async def host() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def finished(result: Any) -> None:
            outcomes.append(result)
            done.set()

        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=finished,
        )
        await done.wait()

    asyncio.run(host())
    [result] = outcomes
    with pytest.raises(RuntimeError, match="trio guest run on an asyncio loop"):
        result.unwrap()


@CACHED
@TRIO_ONLY
@pytest.mark.anyio
async def test_a_run_that_lost_the_cache_finds_its_own_state_again() -> None:
    """After another thread's run took the cache, a run gets back its wheel."""
    service = layers.Timeout(1).layer(sleeper(0.1))
    assert await service("start") == "start"
    run = _backend._trio_run  # pyright: ignore[reportPrivateUsage]
    first_wheel = wheel()
    tasks = trio.lowlevel.current_statistics().tasks_living

    # what another thread's trio run does to the cache
    _backend._cache_trio_run(_backend._NO_TRIO_RUN)  # pyright: ignore[reportPrivateUsage]
    assert not _backend._trio_thread  # pyright: ignore[reportPrivateUsage]

    assert _backend.current_time() == trio.current_time()
    assert _backend._trio_run is run  # pyright: ignore[reportPrivateUsage]
    assert await service("again") == "again"
    assert wheel() is first_wheel
    assert trio.lowlevel.current_statistics().tasks_living == tasks


@FAST
@TRIO_ONLY
@pytest.mark.anyio
async def test_the_lean_enter_is_checked_against_trios_own() -> None:
    """The wheel's scope entry matches trio's __enter__; a wrong one is caught."""
    from trio._core._run import GLOBAL_RUN_CONTEXT, CancelStatus

    def forgets_entered(scope: Any) -> None:  # an entry trio would not make
        task: Any = GLOBAL_RUN_CONTEXT.task
        status = CancelStatus(scope=scope, parent=task._cancel_status)
        scope._cancel_status = status
        task._activate_cancel_status(status)

    lean = _backend._lean_enter(trio)  # pyright: ignore[reportPrivateUsage]
    assert lean is not None
    assert _backend._enters_alike(lean, trio)  # pyright: ignore[reportPrivateUsage]
    assert not _backend._enters_alike(forgets_entered, trio)  # pyright: ignore[reportPrivateUsage]
    # the task's scopes are as they were: a deadline still works
    with trio.move_on_after(1) as scope:
        await trio.sleep(2)
    assert scope.cancelled_caught
