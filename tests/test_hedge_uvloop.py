"""Smoke tests of Hedge on uvloop, on the real clock (looptime cannot patch it)."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest
from helpers import uvloop_backend as uvloop_backend  # anyio_backend

import layers

uvloop = pytest.importorskip("uvloop")

pytestmark = [pytest.mark.anyio, pytest.mark.realtime]


async def test_a_hedge_wins_and_the_loser_is_cancelled_on_uvloop() -> None:
    """A slow first copy: the hedge answers, the first is cancelled before return."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    calls: list[int] = []
    cancelled: list[int] = []

    async def inner(request: str) -> int:
        number = len(calls) + 1
        calls.append(number)
        try:
            await anyio.sleep(5 if number == 1 else 0.01)
        except anyio.get_cancelled_exc_class():
            cancelled.append(number)
            raise
        return number

    begun = time.perf_counter()
    assert await layers.Hedge(delay=0.05).layer(inner)("r") == 2
    assert cancelled == [1]
    assert time.perf_counter() - begun < 1


async def test_calls_answered_before_the_delay_send_nothing_on_uvloop() -> None:
    """100 concurrent fast calls: no hedge, every answer back."""
    calls = 0

    async def inner(request: int) -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.01)
        return request

    hedge = layers.Hedge(delay=1.0)
    svc = hedge.layer(inner)
    answers: list[int] = []

    async def one(n: int) -> None:
        answers.append(await svc(n))

    async with anyio.create_task_group() as group:
        for n in range(100):
            group.start_soon(one, n)
    assert sorted(answers) == list(range(100))
    assert calls == 100
    assert hedge.statistics().hedges == 0
