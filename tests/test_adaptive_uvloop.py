"""Smoke tests of the adaptive layers on uvloop, on the real clock.

AdaptiveConcurrencyLimit times each call and AdaptiveThrottle keeps its
window on the loop's clock, both through the backend corner's clock reads,
whose uvloop path differs from asyncio's (uvloop's loop is not cached): so
they are checked on uvloop's loop too. Real time, a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import pytest
from helpers import uvloop_backend as uvloop_backend  # anyio_backend

import layers

uvloop = pytest.importorskip("uvloop")

pytestmark = [pytest.mark.anyio, pytest.mark.realtime]


async def test_the_adaptive_limit_rises_and_falls_on_uvloop() -> None:
    """AIMD on uvloop: calls that fill the limit raise it; drops cut it."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    limit = layers.AdaptiveConcurrencyLimit(
        layers.AIMD(initial_limit=4, min_limit=2, max_limit=100, timeout=1.0)
    )
    failing = False

    async def inner(request: int) -> int:
        await anyio.sleep(0.001)
        if failing:
            raise TimeoutError("downstream too slow")
        return request

    svc = limit.layer(inner)

    async def call(n: int) -> None:
        with contextlib.suppress(TimeoutError):
            await svc(n)

    for _ in range(10):  # waves that fill the limit: each success adds one
        async with anyio.create_task_group() as group:
            for n in range(limit.statistics().max_in_flight):
                group.start_soon(call, n)
    risen = limit.statistics().max_in_flight
    assert risen > 4
    failing = True
    async with anyio.create_task_group() as group:
        for n in range(risen):
            group.start_soon(call, n)
    fallen = limit.statistics().max_in_flight
    assert 2 <= fallen < risen
    assert limit.statistics().in_flight == 0  # every permit back


async def test_the_throttle_refuses_and_recovers_on_uvloop() -> None:
    """AdaptiveThrottle on uvloop: refusals when the downstream refuses, none after."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    throttle = layers.AdaptiveThrottle(window=0.2, min_requests=5, seed=1)
    refusing = True

    async def inner(request: int) -> int:
        if refusing:
            raise ConnectionError("refused")
        return request

    svc = throttle.layer(inner)
    throttled = 0
    for n in range(200):
        try:
            await svc(n)
        except layers.Throttled:
            throttled += 1
        except ConnectionError:
            pass
    assert throttled > 100  # most refused locally, never reaching inner
    assert throttle.statistics().reject_probability > 0.5
    refusing = False
    await anyio.sleep(0.3)  # the window (0.2 s) has rolled over
    for n in range(50):
        assert await svc(n) == n
    assert throttle.statistics().reject_probability == 0
