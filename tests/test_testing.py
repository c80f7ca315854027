"""The testing kit for users: MockService, capture_events, virtual time."""

from __future__ import annotations

import anyio
import pytest

import layers
from layers.testing import (
    MockService,
    MockStatistics,
    capture_events,
    run,
    virtual_time_backend,
)

pytestmark = pytest.mark.anyio


async def test_mock_records_requests_and_answers_from_script() -> None:
    """Scripted answers come first in, first out; every request is recorded."""
    mock = MockService[int, str]().respond("a").respond("b", delay=2.0)
    assert await mock(1) == "a"
    start = anyio.current_time()
    assert await mock(2) == "b"
    assert anyio.current_time() - start == pytest.approx(2.0)
    assert mock.requests == [1, 2]
    assert mock.calls == 2


async def test_mock_scripted_failure_class_and_instance() -> None:
    """fail() takes an exception class (fresh each time) or an instance."""
    error = KeyError("k")
    mock = MockService[int, int]().fail(ValueError).fail(error, delay=1.0)
    with pytest.raises(ValueError):  # noqa: PT011
        await mock(1)
    with pytest.raises(KeyError) as caught:
        await mock(2)
    assert caught.value is error
    assert anyio.current_time() == pytest.approx(1.0)
    assert mock.statistics() == MockStatistics(
        calls=2, in_flight=0, completed=0, failed=2, cancelled=0
    )


async def test_mock_default_answer_after_script() -> None:
    """respond_always answers every call once the script is empty."""
    mock = MockService[int, str]().respond("first").respond_always("rest")
    assert [await mock(i) for i in range(3)] == ["first", "rest", "rest"]


async def test_mock_handle_style_answers_one_by_one() -> None:
    """Without a script, calls wait until the test takes and answers them."""
    mock = MockService[str, str]()
    results: list[str] = []

    async def caller(request: str) -> None:
        results.append(await mock(request))

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, "x")
        tg.start_soon(caller, "y")
        first = await mock.next_call()
        second = await mock.next_call()
        assert {first.request, second.request} == {"x", "y"}
        assert mock.statistics().in_flight == 2
        assert results == []
        second.respond(second.request.upper())
        await anyio.sleep(1)
        assert results == [second.request.upper()]
        first.respond("done")
    assert sorted(results) == sorted(["done", second.request.upper()])
    assert mock.statistics().completed == 2


async def test_mock_handle_fail_and_double_answer() -> None:
    """A pending call can be failed, and answering twice is an error."""
    mock = MockService[int, int]()
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            with pytest.raises(OSError, match="down"):
                await mock(5)

        tg.start_soon(caller)
        pending = await mock.next_call()
        pending.fail(OSError("down"))
        with pytest.raises(RuntimeError, match="answered already"):
            pending.respond(1)
    assert mock.statistics().failed == 1


async def test_mock_counts_cancelled_calls() -> None:
    """A call cancelled while it waits is counted and marked, and leaves no flight."""
    mock = MockService[int, int]()
    with anyio.move_on_after(1):
        await mock(1)
    mock.respond(2, delay=10)
    with anyio.move_on_after(1):
        await mock(2)
    stats = mock.statistics()
    assert stats.cancelled == 2
    assert stats.in_flight == 0
    pending = await mock.next_call()
    assert pending.cancelled
    assert "cancelled" in repr(pending)


def test_mock_rejects_bad_delay() -> None:
    """A negative or non-numeric delay is refused with the value in the message."""
    with pytest.raises(ValueError, match="-1"):
        MockService[int, int]().respond(1, delay=-1)
    with pytest.raises(ValueError, match="'x'"):
        MockService[int, int]().fail(ValueError, delay="x")  # type: ignore[arg-type]


async def test_capture_events_filters_by_type() -> None:
    """capture_events collects emitted events, optionally of given types only."""
    svc = layers.Timeout(1, name="db").layer(
        MockService[int, int]().respond(1, delay=5)
    )
    with (
        capture_events() as everything,
        capture_events(layers.events.TimeoutElapsed) as only,
    ):
        with pytest.raises(layers.Elapsed):
            await svc(0)
        layers.events.emit(layers.Event(layer="other"))
    assert only == [layers.events.TimeoutElapsed(layer="db", timeout=1)]
    assert everything == [*only, layers.Event(layer="other")]
    layers.events.emit(layers.Event(layer="after"))
    assert len(everything) == 2


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_uses_virtual_time(backend: str) -> None:
    """layers.testing.run runs on virtual time: an hour passes at once."""

    async def main() -> float:
        await anyio.sleep(3600)
        return anyio.current_time()

    assert run(main, backend=backend) == pytest.approx(3600)


def test_virtual_time_backend_rejects_unknown() -> None:
    """Only asyncio and trio are known backends."""
    with pytest.raises(ValueError, match="curio"):
        virtual_time_backend("curio")


def test_virtual_time_backend_fresh_clock_each_call() -> None:
    """Each call makes a new clock, so tests do not share time."""
    _, first = virtual_time_backend("trio")
    _, second = virtual_time_backend("trio")
    assert first["clock"] is not second["clock"]
