"""Smoke tests of Timeout on uvloop, on the real clock (looptime cannot patch it)."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest
from helpers import uvloop_backend as uvloop_backend  # anyio_backend

import layers

uvloop = pytest.importorskip("uvloop")

pytestmark = [pytest.mark.anyio, pytest.mark.realtime]


async def sleeping(request: float) -> float:
    """Sleep *request* seconds and return it."""
    await anyio.sleep(request)
    return request


async def test_runs_on_uvloop() -> None:
    """The loop under test really is uvloop's."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_expiry_raises_elapsed_promptly() -> None:
    """Timeout(0.05) on a 2 s sleep raises Elapsed well within 1 s."""
    begun = time.perf_counter()
    with pytest.raises(layers.Elapsed) as info:
        await layers.Timeout(0.05, name="smoke").layer(sleeping)(2)
    took = time.perf_counter() - begun
    assert 0.04 <= took < 1
    assert info.value.timeout == 0.05
    assert info.value.layer == "smoke"
    assert layers.current_deadline() is None


async def test_response_before_deadline_is_returned() -> None:
    """A call well inside its timeout returns its response."""
    begun = time.perf_counter()
    assert await layers.Timeout(1).layer(sleeping)(0.01) == 0.01
    assert time.perf_counter() - begun < 0.5


@pytest.mark.parametrize(
    ("outer", "inner", "expiring"),
    [(0.05, 5, "outer"), (5, 0.05, "inner")],
)
async def test_nested_timeouts(outer: float, inner: float, expiring: str) -> None:
    """The tighter of two nested timeouts expires, whichever side it is on."""
    svc = layers.Timeout(outer, name="outer").layer(
        layers.Timeout(inner, name="inner").layer(sleeping)
    )
    begun = time.perf_counter()
    with pytest.raises(layers.Elapsed) as info:
        await svc(2)
    assert time.perf_counter() - begun < 1
    assert info.value.layer == expiring
    assert info.value.timeout == 0.05


async def test_outside_cancellation_passes_through() -> None:
    """An enclosing move_on_after cancels the call without Elapsed."""
    begun = time.perf_counter()
    with anyio.move_on_after(0.05) as scope:
        await layers.Timeout(1).layer(sleeping)(2)
    assert scope.cancelled_caught
    assert time.perf_counter() - begun < 1
    # the task is not left cancelled
    assert await layers.Timeout(1).layer(sleeping)(0.01) == 0.01


async def test_many_concurrent_calls() -> None:
    """Concurrent calls under and over their timeouts each get the right outcome."""
    outcomes: list[tuple[float, str]] = []
    svc = layers.Timeout(0.1).layer(sleeping)

    async def one(duration: float) -> None:
        try:
            await svc(duration)
        except layers.Elapsed:
            outcomes.append((duration, "elapsed"))
        else:
            outcomes.append((duration, "ok"))

    begun = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, 0.01 if i % 2 else 2.0)
    assert time.perf_counter() - begun < 1.5
    assert sorted(outcomes) == [(0.01, "ok")] * 100 + [(2.0, "elapsed")] * 100
