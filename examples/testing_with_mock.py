"""Testing services and layers with ``layers.testing``, on virtual time.

This file is a pytest test module: every test runs on asyncio and on trio,
on a virtual clock, so a test of a 5 s timeout takes no real time. It needs
pytest and the ``testing`` extra (trio and looptime)::

    pip install pytest -e '.[testing]'   # from the checkout
    python examples/testing_with_mock.py      # runs pytest on this file

The last two tests exercise the ``Shed`` layer of ``custom_layer.py``.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio
import pytest
from custom_layer import LoadShed, Shed

import layers
from layers.events import TimeoutElapsed
from layers.testing import MockService, capture_events, virtual_time_backend

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return virtual_time_backend(request.param)


async def test_scripted_answers() -> None:
    """A scripted mock: answers, errors and delays, in order."""
    mock = (
        MockService[str, str]()
        .respond("fast")
        .respond("slow", delay=30)  # longer than the timeout below
        .fail(ConnectionError)
    )
    service = layers.ServiceBuilder().timeout(5, name="api").service(mock)

    assert await service("a") == "fast"

    with capture_events(TimeoutElapsed) as events:
        with pytest.raises(layers.Elapsed) as caught:
            await service("b")
        assert anyio.current_time() == pytest.approx(5)  # virtual seconds
    assert caught.value.layer == "api"
    assert events == [TimeoutElapsed(layer="api", timeout=5)]

    # The mock's own error passes through the layers unchanged.
    with pytest.raises(ConnectionError):
        await service("c")

    assert mock.requests == ["a", "b", "c"]
    stats = mock.statistics()
    assert (stats.completed, stats.cancelled, stats.failed) == (1, 1, 1)


async def test_answer_each_call() -> None:
    """The handle style: the test takes each call and answers it itself."""
    mock = MockService[str, str]()
    service = layers.ServiceBuilder().timeout(10).service(mock)
    results: list[str] = []

    async def caller() -> None:
        results.append(await service("ping"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        call = await mock.next_call()  # waits until the request arrives
        assert call.request == "ping"
        await anyio.sleep(3)  # the call is still waiting for its answer
        assert not results
        call.respond("pong")
    assert results == ["pong"]


async def test_shed_refuses_beyond_the_limit() -> None:
    """Shed lets max_in_flight calls in and refuses the next, with an event."""
    mock = MockService[int, str]().respond_always("ok", delay=1)
    shed = Shed(max_in_flight=2, name="shed")
    service = layers.ServiceBuilder().layer(shed).service(mock)

    async with anyio.create_task_group() as tg:
        tg.start_soon(service, 1)
        tg.start_soon(service, 2)
        await anyio.sleep(0.5)  # both calls are in flight now
        assert shed.in_flight == 2
        with capture_events(LoadShed) as events, pytest.raises(layers.Overloaded):
            await service(3)
        assert events == [LoadShed(layer="shed", max_in_flight=2)]
    # The refused call never reached the mock. (Tasks started together may
    # run in either order: trio shuffles them on purpose.)
    assert sorted(mock.requests) == [1, 2]
    assert await service(4) == "ok"  # there is room again


async def test_shed_releases_a_cancelled_call() -> None:
    """A call cancelled while it waits gives its place back."""
    mock = MockService[int, str]()  # no script: every call waits for an answer
    shed = Shed(max_in_flight=1)
    service = layers.ServiceBuilder().timeout(2).layer(shed).service(mock)

    with pytest.raises(layers.Elapsed):
        await service(1)
    assert shed.in_flight == 0
    assert mock.statistics().cancelled == 1


if __name__ == "__main__":
    # A fresh interpreter: pytest must import the test module itself. The
    # looptime package's own pytest plugin clashes with anyio's: keep it off.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:looptime_plugin"]
    sys.exit(subprocess.call([*command, __file__]))
