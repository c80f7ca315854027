"""Smoke tests of Coalesce on uvloop, on the real clock (looptime cannot patch it).

Coalesce runs its shared call in a task of its own (the backend corner's
detached task), so it is checked on uvloop's loop too.
"""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest
from helpers import uvloop_backend as uvloop_backend  # anyio_backend

import layers

uvloop = pytest.importorskip("uvloop")

pytestmark = [pytest.mark.anyio, pytest.mark.realtime]


async def _elapsed(svc: layers.Service[str, str]) -> None:
    """Call *svc* and expect its timeout."""
    with pytest.raises(layers.Elapsed):
        await svc("a")


async def test_concurrent_calls_share_one_inner_call_on_uvloop() -> None:
    """100 concurrent identical calls make one inner call on uvloop."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    calls: list[str] = []

    async def inner(request: str) -> str:
        calls.append(request)
        await anyio.sleep(0.05)
        return request

    svc = layers.Coalesce().layer(inner)
    async with anyio.create_task_group() as group:
        for _ in range(100):
            group.start_soon(svc, "a")
    assert calls == ["a"]


async def test_the_last_caller_to_leave_cancels_the_shared_call_on_uvloop() -> None:
    """Callers that time out leave; the last one cancels the call promptly."""
    cancelled: list[bool] = []

    async def inner(request: str) -> str:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise
        return request

    svc = layers.ServiceBuilder().timeout(0.05).coalesce().service(inner)
    begun = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(_elapsed, svc)
    assert cancelled == [True]
    assert time.perf_counter() - begun < 1
