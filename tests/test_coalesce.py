"""Tests of Coalesce (singleflight): shared calls, cancellation, errors, bounds."""

from __future__ import annotations

import contextvars
import traceback
from typing import Any

import anyio
import anyio.lowlevel
import hypothesis
import pytest
from hypothesis import strategies as st

import layers
from layers.testing import MockService, capture_events

pytestmark = pytest.mark.anyio


class Slow:
    """An inner service that counts its calls and ends after *duration*."""

    def __init__(self, duration: float = 1.0) -> None:
        self.duration = duration
        self.calls: list[Any] = []
        self.cancelled = 0
        self.finished = 0
        self.deadlines: list[float | None] = []

    async def __call__(self, request: Any) -> Any:
        self.calls.append(request)
        self.deadlines.append(layers.current_deadline())
        try:
            await anyio.sleep(self.duration)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        self.finished += 1
        return {"for": request}


async def test_1000_concurrent_identical_requests_make_one_inner_call() -> None:
    """The issue's figure: 1,000 concurrent identical requests, 1 inner call."""
    inner = Slow()
    coalesce = layers.Coalesce()
    svc = coalesce.layer(inner)
    answers: list[Any] = []

    async def call() -> None:
        answers.append(await svc("GET /users/1"))

    async with anyio.create_task_group() as group:
        for _ in range(1000):
            group.start_soon(call)
    assert inner.calls == ["GET /users/1"]
    assert len(answers) == 1000
    assert all(answer is answers[0] for answer in answers)  # the same object
    assert anyio.current_time() == 1.0
    stats = coalesce.statistics()
    assert (stats.calls, stats.inner_calls, stats.coalesced) == (1000, 1, 999)
    assert (stats.keys, stats.waiting) == (0, 0)


async def test_different_keys_do_not_share_and_a_later_call_starts_anew() -> None:
    """Distinct keys get a call each; a call after the shared one makes a new one."""
    inner = Slow()
    svc = layers.Coalesce().layer(inner)
    async with anyio.create_task_group() as group:
        for request in ("a", "b", "a", "b"):
            group.start_soon(svc, request)
    assert sorted(inner.calls) == ["a", "b"]
    await svc("a")
    assert sorted(inner.calls) == ["a", "a", "b"]


async def test_key_function_decides_what_is_the_same() -> None:
    """key= maps requests to keys: requests with one key share a call."""
    inner = Slow()
    svc = layers.Coalesce(key=lambda r: r["url"]).layer(inner)
    answers: list[Any] = []

    async def call(request: dict[str, str]) -> None:
        answers.append(await svc(request))

    async with anyio.create_task_group() as group:
        group.start_soon(call, {"url": "/a", "trace": "1"})
        group.start_soon(call, {"url": "/a", "trace": "2"})
    assert len(inner.calls) == 1
    assert answers[0] is answers[1]


async def test_unhashable_request_is_a_callback_error() -> None:
    """An unhashable request (no key=) raises CallbackError naming key."""
    svc = layers.Coalesce(name="users").layer(Slow())
    with pytest.raises(layers.CallbackError, match=r"'users'.*hashable.*list") as info:
        await svc(["a"])
    assert info.value.parameter == "key"


async def test_unhashable_key_is_a_callback_error() -> None:
    """A key function that returns an unhashable value raises CallbackError."""
    svc = layers.Coalesce(key=lambda r: [r]).layer(Slow())
    with pytest.raises(layers.CallbackError, match="the key must be hashable"):
        await svc("a")


async def test_errors_reach_every_waiter_as_the_same_object() -> None:
    """One failure, raised to every waiter: the same object, its traceback not grown."""
    mock = MockService[str, str]().fail(ConnectionError("down"), delay=1)
    svc = layers.Coalesce().layer(mock)
    errors: list[BaseException] = []
    depths: list[int] = []

    async def call() -> None:
        try:
            await svc("a")
        except ConnectionError as error:
            errors.append(error)
            depths.append(len(traceback.extract_tb(error.__traceback__)))

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(call)
    assert mock.calls == 1
    assert len(errors) == 10
    assert all(error is errors[0] for error in errors)
    assert len(set(depths)) == 1  # each raise starts from the shared traceback


async def test_a_cancelled_waiter_leaves_without_cancelling_the_shared_call() -> None:
    """A waiter cancelled while others wait leaves; the others get the response."""
    inner = Slow(duration=2)
    svc = layers.Coalesce().layer(inner)
    answers: list[Any] = []

    async def call(patience: float) -> None:
        with anyio.move_on_after(patience):
            answers.append(await svc("a"))

    async with anyio.create_task_group() as group:
        group.start_soon(call, 1)  # the one that started it leaves first
        group.start_soon(call, 10)
    assert inner.cancelled == 0
    assert inner.finished == 1
    assert len(answers) == 1


ORDERS = {
    "oldest_first": list(range(8)),
    "newest_first": list(reversed(range(8))),
    "odd_then_even": [1, 3, 5, 7, 0, 2, 4, 6],
}


@pytest.mark.parametrize("order", ORDERS)
async def test_the_last_waiter_to_leave_cancels_the_shared_call(order: str) -> None:
    """Waiters cancelled one by one: the call goes on until the last one leaves."""
    inner = Slow(duration=100)
    coalesce = layers.Coalesce()
    svc = coalesce.layer(inner)
    count = 8
    scopes = [anyio.CancelScope() for _ in range(count)]

    async def call(index: int) -> None:
        with scopes[index]:
            await svc("a")

    with capture_events(layers.events.CoalesceAbandoned) as seen:
        async with anyio.create_task_group() as group:
            for index in range(count):
                group.start_soon(call, index)
            await anyio.sleep(1)
            for step, index in enumerate(ORDERS[order]):
                scopes[index].cancel()
                await anyio.sleep(1)
                left = count - step - 1
                assert coalesce.statistics().waiting == left
                assert inner.cancelled == (0 if left else 1)
    assert len(inner.calls) == 1
    assert inner.cancelled == 1
    assert seen == [layers.events.CoalesceAbandoned(layer="coalesce", callers=count)]
    stats = coalesce.statistics()
    assert (stats.keys, stats.waiting, stats.abandoned) == (0, 0, 1)


async def test_the_last_waiter_waits_for_the_shared_call_to_end() -> None:
    """Nothing is left running: the last waiter returns after the cleanup."""
    ended: list[float] = []

    async def inner(request: str) -> str:
        try:
            await anyio.sleep(100)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(3)  # slow cleanup
            ended.append(anyio.current_time())
        return request

    svc = layers.Coalesce().layer(inner)
    with anyio.move_on_after(1):
        await svc("a")
    assert ended == [4.0]
    assert anyio.current_time() == 4.0


async def test_the_only_caller_cancelled_at_its_first_await() -> None:
    """Cancelled at its first await, the only caller leaves, taking the call along."""
    inner = Slow()
    coalesce = layers.Coalesce()
    svc = coalesce.layer(inner)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await svc("a")
    assert anyio.current_time() == 0
    assert inner.finished == 0
    assert inner.cancelled == len(inner.calls)  # started or not, nothing runs on
    stats = coalesce.statistics()
    assert (stats.keys, stats.waiting, stats.abandoned) == (0, 0, 1)


async def test_a_newcomer_after_the_last_left_starts_a_new_call() -> None:
    """Once the last waiter left, the abandoned call is not joined."""
    inner = Slow(duration=5)
    svc = layers.Coalesce().layer(inner)
    with anyio.move_on_after(1):
        await svc("a")
    assert await svc("a") == {"for": "a"}
    assert len(inner.calls) == 2


async def test_the_shared_call_runs_without_the_callers_deadline() -> None:
    """A caller's Timeout bounds the caller; the shared call has no deadline."""
    inner = Slow(duration=2)
    svc = layers.ServiceBuilder().timeout(10).coalesce().service(inner)
    assert await svc("a") == {"for": "a"}
    assert inner.deadlines == [None]


async def test_a_caller_timeout_leaves_while_another_caller_still_waits() -> None:
    """Two deadlines: the short caller gets Elapsed, the long one the answer."""
    inner = Slow(duration=2)
    coalesce = layers.Coalesce()
    short = layers.ServiceBuilder().timeout(1).layer(coalesce).service(inner)
    long = layers.ServiceBuilder().timeout(5).layer(coalesce).service(inner)
    outcomes: list[object] = []

    async def call(svc: layers.Service[str, Any]) -> None:
        try:
            outcomes.append(await svc("a"))
        except layers.Elapsed as error:
            outcomes.append(type(error))

    async with anyio.create_task_group() as group:
        group.start_soon(call, short)
        group.start_soon(call, long)
    assert outcomes == [layers.Elapsed, {"for": "a"}]
    assert len(inner.calls) == 1


async def test_the_shared_call_sees_the_first_callers_context() -> None:
    """The shared call runs in a copy of the context of the caller that started it."""
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: list[str] = []

    async def inner(request: str) -> str:
        await anyio.sleep(1)
        seen.append(request_id.get("none"))
        return request

    svc = layers.Coalesce().layer(inner)

    async def call(rid: str) -> None:
        request_id.set(rid)
        await svc("a")

    async with anyio.create_task_group() as group:
        group.start_soon(call, "first")
        await anyio.sleep(0.5)
        group.start_soon(call, "second")
    assert seen == ["first"]


async def test_max_keys_beyond_it_calls_go_uncoalesced() -> None:
    """A new key that finds the table full calls the inner service on its own."""
    inner = Slow()
    coalesce = layers.Coalesce(max_keys=2)
    svc = coalesce.layer(inner)
    with capture_events(layers.events.CoalesceBypassed) as seen:
        async with anyio.create_task_group() as group:
            for request in ("a", "b", "c", "c", "a"):
                group.start_soon(svc, request)
                await anyio.lowlevel.checkpoint()  # in this order
    assert sorted(inner.calls) == ["a", "b", "c", "c"]
    stats = coalesce.statistics()
    assert (stats.bypassed, stats.coalesced, stats.inner_calls) == (2, 1, 4)
    assert seen == [layers.events.CoalesceBypassed(layer="coalesce", max_keys=2)] * 2


async def test_base_exception_of_the_shared_call_reaches_waiters() -> None:
    """A BaseException (not a cancellation) from the inner call reaches the waiters."""

    class Stop(BaseException):
        pass

    async def inner(request: str) -> str:
        await anyio.sleep(1)
        raise Stop

    svc = layers.Coalesce().layer(inner)
    with pytest.raises(Stop):
        await svc("a")


async def test_statistics_and_observe_while_in_flight() -> None:
    """statistics() and observe() count keys in flight and callers waiting."""
    coalesce = layers.Coalesce(name="users")
    svc = coalesce.layer(Slow(duration=2))
    async with anyio.create_task_group() as group:
        for request in ("a", "a", "b"):
            group.start_soon(svc, request)
        await anyio.sleep(1)
        stats = coalesce.statistics()
        assert (stats.keys, stats.waiting) == (2, 3)
        observation = coalesce.observe()
        assert (observation.in_flight, observation.waiting) == (2, 3)
        assert observation.figures["coalesced"] == 1
        assert observation.figures["max_keys"] == 1000
    assert isinstance(coalesce, layers.Observable)
    assert coalesce.kind == "coalesce"


def test_bad_configuration_names_the_parameter() -> None:
    """Bad options raise ConfigurationError naming the parameter and value."""
    with pytest.raises(layers.ConfigurationError, match=r"Coalesce\(max_keys=0\)"):
        layers.Coalesce(max_keys=0)
    with pytest.raises(layers.ConfigurationError, match=r"Coalesce\(key=3\)"):
        layers.Coalesce(key=3)  # type: ignore[arg-type]
    with pytest.raises(layers.ConfigurationError, match=r"Coalesce\(name=''\)"):
        layers.Coalesce(name="")


async def test_builder_method_shares_one_table() -> None:
    """.coalesce() makes the layer once: two services built from it share calls."""
    builder = layers.ServiceBuilder().coalesce()
    inner = Slow()
    one, two = builder.service(inner), builder.service(inner)
    async with anyio.create_task_group() as group:
        group.start_soon(one, "a")
        group.start_soon(two, "a")
    assert len(inner.calls) == 1


@hypothesis.settings(
    max_examples=30,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
    duration=st.integers(1, 20),
    patience=st.lists(st.integers(1, 20), min_size=1, max_size=8),
)
async def test_property_callers_leaving_at_random_times(
    duration: int, patience: list[int]
) -> None:
    """Callers leave at random times: the call ends for the patient, or the last."""
    inner = Slow(duration=duration)
    coalesce = layers.Coalesce()
    svc = coalesce.layer(inner)
    answers: list[Any] = []
    start = anyio.current_time()

    async def call(wait: float) -> None:
        with anyio.move_on_after(wait):
            answers.append(await svc("a"))

    async with anyio.create_task_group() as group:
        for each in patience:
            group.start_soon(call, each + 0.5)  # never at the inner call's end
    patient = [each for each in patience if each + 0.5 > duration]
    assert len(inner.calls) == 1
    assert len(answers) == len(patient)
    assert inner.finished == (1 if patient else 0)
    assert inner.cancelled == (0 if patient else 1)
    stats = coalesce.statistics()
    assert (stats.keys, stats.waiting) == (0, 0)
    assert stats.abandoned == (0 if patient else 1)
    # each caller leaves with the answer at the end, or at its patience
    end = max(min(duration, each + 0.5) for each in patience)
    assert anyio.current_time() - start == pytest.approx(end)
