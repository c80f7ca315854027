"""Smoke test of CircuitBreaker on uvloop, on the real clock."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from helpers import uvloop_backend as uvloop_backend  # anyio_backend

import layers

uvloop = pytest.importorskip("uvloop")

pytestmark = [pytest.mark.anyio, pytest.mark.realtime]


@pytest.mark.parametrize("window_type", ["count", "time"])
async def test_trips_rejects_probes_and_closes_on_uvloop(window_type: str) -> None:
    """On uvloop a breaker trips, rejects, half-opens after 50 ms and closes."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    down = True

    async def host(request: int) -> int:
        if down:
            raise ConnectionError
        return request

    breaker = layers.CircuitBreaker(
        window_type=window_type,  # type: ignore[arg-type]
        window_size=4 if window_type == "count" else 10,
        min_calls=4,
        slow_call_duration=5,
        open_duration=0.05,
        probes=1,
    )
    svc = breaker.layer(host)
    for _ in range(4):
        with pytest.raises(ConnectionError):
            await svc(1)
    with pytest.raises(layers.CircuitOpen) as info:
        await svc(1)
    assert info.value.retry_after is not None
    assert 0 < info.value.retry_after <= 0.05 + 1e-9  # uvloop caches its time
    down = False
    await anyio.sleep(0.06)
    assert await svc(2) == 2
    assert breaker.state is layers.CircuitState.CLOSED
