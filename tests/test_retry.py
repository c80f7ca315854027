"""Tests of the Retry layer: classification, limits, backoff, deadlines, budget."""

from __future__ import annotations

import asyncio
import math
import random
import re
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import hypothesis
import pytest
from helpers import quiet_events as quiet_events  # autouse fixture
from hypothesis import strategies as st

import layers
from layers import ConstantBackoff, ExponentialBackoff, Retry
from layers._deadline import DEADLINE
from layers.events import RetryAttemptFailed, RetryStopped
from layers.testing import (
    capture_events,
    retry_testing,
    set_retry_testing,
    virtual_time_backend,
)

pytestmark = pytest.mark.anyio

ASYNCIO_ONLY = pytest.mark.parametrize(
    "anyio_backend", [virtual_time_backend("asyncio")], ids=["asyncio"]
)
TRIO_ONLY = pytest.mark.parametrize(
    "anyio_backend", [virtual_time_backend("trio")], ids=["trio"]
)

SHAPES = pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"max_attempts": 3}, "retry_with_budget"),
        ({"max_attempts": 3, "budget": None}, "retry"),
        ({"max_time": 5}, "retry_general"),
        ({"max_attempts": 3, "on_result": lambda response: False}, "retry_general"),
    ],
    ids=["default", "no-budget", "max_time", "on_result"],
)
"""The service shapes that Retry.layer picks, by the options given."""


def now() -> float:
    """The event loop's (virtual) clock."""
    return anyio.current_time()


class Flaky:
    """A service that fails *failures* times, then echoes; records each call."""

    def __init__(
        self,
        failures: int,
        error: Callable[[], Exception] = lambda: ConnectionError("reset"),
        duration: float = 0.0,
    ) -> None:
        self.failures = failures
        self.error = error
        self.duration = duration
        self.starts: list[float] = []
        self.attempts: list[int] = []
        self.requests: list[Any] = []
        self.raised: list[Exception] = []

    async def __call__(self, request: Any) -> Any:
        self.starts.append(now())
        self.attempts.append(layers.current_attempt())
        self.requests.append(request)
        if self.duration:
            await anyio.sleep(self.duration)
        if len(self.starts) <= self.failures:
            error = self.error()
            self.raised.append(error)
            raise error
        return request

    @property
    def gaps(self) -> list[float]:
        """Time between the starts of consecutive attempts."""
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]


# ------------------------------------------------------------------ basics


async def test_success_on_the_first_attempt() -> None:
    """A call that succeeds is returned at once, attempt 1, no retry, no wait."""
    flaky = Flaky(0)
    svc = Retry(on=ConnectionError, max_attempts=3).layer(flaky)
    assert await svc("x") == "x"
    assert flaky.attempts == [1]
    assert now() == 0


@SHAPES
async def test_success_adds_no_checkpoint(kwargs: dict[str, Any], shape: str) -> None:
    """A first attempt that succeeds does not yield: it completes when cancelled."""

    async def echo(request: str) -> str:
        return request  # no checkpoint of its own either

    svc = Retry(on=ConnectionError, **kwargs).layer(echo)
    assert svc.__name__ == shape  # type: ignore[attr-defined]
    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await svc("x") == "x"
    assert not scope.cancelled_caught  # no checkpoint raised the cancellation


async def test_retries_until_success_and_numbers_attempts() -> None:
    """Retryable errors are retried; the inner sees current_attempt() 1, 2, 3."""
    flaky = Flaky(2)
    svc = Retry(on=ConnectionError, max_attempts=5).layer(flaky)
    assert await svc("x") == "x"
    assert flaky.attempts == [1, 2, 3]
    assert flaky.requests == ["x", "x", "x"]  # the same request object again
    assert layers.current_attempt() == 1  # reset after the call


async def test_gives_up_with_the_last_error_itself_and_a_note() -> None:
    """After the last attempt, the last error is raised: same object, a note added."""
    flaky = Flaky(10)
    svc = Retry(on=ConnectionError, max_attempts=3, name="users-api").layer(flaky)
    with pytest.raises(ConnectionError) as info:
        await svc("x")
    assert info.value is flaky.raised[-1]
    assert info.value.__notes__ == [
        "retry 'users-api' gave up after 3 attempts: the attempts limit (3) was reached"
    ]
    # its traceback still reaches the line in the service that raised it
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].name == "__call__"
    assert frames[-1].line == "raise error"
    assert len(flaky.attempts) == 3


async def test_non_retryable_errors_pass_through_unchanged() -> None:
    """An error `on` does not match: raised at once, same object, no note, same tb."""
    original: list[BaseException] = []

    async def broken(request: str) -> str:
        error = KeyError(request)
        original.append(error)
        raise error

    svc = Retry(on=ConnectionError, max_attempts=5).layer(broken)
    with pytest.raises(KeyError) as info:
        await svc("x")
    assert info.value is original[0]
    assert not hasattr(info.value, "__notes__")
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert names[-2:] == ["retry_with_budget", "broken"]
    assert info.value.__context__ is None
    assert now() == 0


@SHAPES
async def test_non_retryable_errors_pass_through_every_shape(
    kwargs: dict[str, Any], shape: str
) -> None:
    """Whatever the options, an error `on` does not match is raised as it is."""
    original: list[BaseException] = []

    async def broken(request: str) -> str:
        error = KeyError(request)
        original.append(error)
        raise error

    svc = Retry(on=ConnectionError, **kwargs).layer(broken)
    with pytest.raises(KeyError) as info:
        await svc("x")
    assert info.value is original[0]
    assert not hasattr(info.value, "__notes__")
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert names[-2:] == [shape, "broken"]
    assert len(original) == 1
    assert now() == 0


async def test_a_non_retryable_error_after_retries_gets_a_note() -> None:
    """A non-retryable error on attempt 3 is raised at once, with a note."""
    errors = iter([ConnectionError(), ConnectionError(), ValueError("bad")])

    async def service(request: str) -> str:
        raise next(errors)

    svc = Retry(on=ConnectionError, max_attempts=5, backoff=[0]).layer(service)
    with pytest.raises(ValueError, match="bad") as info:
        await svc("x")
    assert info.value.__notes__ == [
        "retry 'retry': attempt 3 raised an error that is not retryable"
    ]


class SharedFailure:
    """One failed result awaited by many callers: each await raises the same object.

    As an ``asyncio.Future`` that holds an exception, or a cached failed
    lookup, does.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def __call__(self, request: object) -> object:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        raise self.error


async def gather_failures(svc: Callable[[int], Any], calls: int) -> list[BaseException]:
    """Run *calls* calls of *svc* at once; return what each one raised."""
    raised: list[BaseException] = []

    async def one(request: int) -> None:
        try:
            await svc(request)
        except Exception as error:
            raised.append(error)

    async with anyio.create_task_group() as group:
        for request in range(calls):
            group.start_soon(one, request)
    assert len(raised) == calls
    return raised


async def test_a_shared_error_gets_one_note_however_many_calls_give_up() -> None:
    """100 calls giving up on one shared exception object add one note, not 100."""
    shared = SharedFailure(ConnectionError("down"))
    svc = Retry(
        on=ConnectionError, max_attempts=3, backoff=[0.1], budget=None, name="api"
    ).layer(shared)
    raised = await gather_failures(svc, 100)
    assert all(error is shared.error for error in raised)
    assert shared.calls == 300
    assert shared.error.__notes__ == [
        "retry 'api' gave up after 3 attempts: the attempts limit (3) was reached"
    ]


async def test_a_shared_error_gets_one_note_per_reason() -> None:
    """Calls that stop for another reason add that reason once; counts do not matter."""
    # a budget of 60 retries for 100 calls of 3 attempts: 40 calls are refused
    # after 1 attempt, the other 60 after 2; one reason, one note
    shared = SharedFailure(ConnectionError("down"))
    budget = layers.RetryBudget(ttl=10, min_per_second=6, ratio=0)
    svc = Retry(on=ConnectionError, max_attempts=3, backoff=[0.1], budget=budget)
    await gather_failures(svc.layer(shared), 100)
    assert shared.calls == 160
    assert shared.error.__notes__ == [
        "retry 'retry' gave up after 1 attempt: the retry budget is exhausted"
    ]

    # 150 retries: 50 calls refused after 2 attempts, 50 reach the limit
    shared = SharedFailure(ConnectionError("down"))
    budget = layers.RetryBudget(ttl=10, min_per_second=15, ratio=0)
    svc = Retry(on=ConnectionError, max_attempts=3, backoff=[0.1], budget=budget)
    await gather_failures(svc.layer(shared), 100)
    assert shared.error.__notes__ == [
        "retry 'retry' gave up after 2 attempts: the retry budget is exhausted",
        "retry 'retry' gave up after 3 attempts: the attempts limit (3) was reached",
    ]


async def test_a_shared_non_retryable_error_gets_one_note() -> None:
    """The note on an error that is not retryable is added once too."""
    shared = ValueError("bad")
    seen: set[int] = set()

    async def service(request: int) -> int:
        await anyio.lowlevel.checkpoint()
        if request not in seen:
            seen.add(request)
            raise ConnectionError
        raise shared

    svc = Retry(on=ConnectionError, max_attempts=3, backoff=[0]).layer(service)
    raised = await gather_failures(svc, 20)
    assert all(error is shared for error in raised)
    assert shared.__notes__ == [
        "retry 'retry': attempt 2 raised an error that is not retryable"
    ]


async def test_nested_retries_on_a_shared_error_each_note_once() -> None:
    """An inner and an outer Retry that give up on one error each add one note."""
    shared = SharedFailure(ConnectionError("down"))
    inner = Retry(
        on=ConnectionError, max_attempts=2, backoff=[0], budget=None, name="inner"
    )
    outer = Retry(
        on=ConnectionError, max_attempts=3, backoff=[0], budget=None, name="outer"
    )
    svc = outer.layer(inner.layer(shared))
    await gather_failures(svc, 10)
    assert shared.calls == 60  # 10 calls x 3 outer attempts x 2 inner attempts
    assert shared.error.__notes__ == [
        "retry 'inner' gave up after 2 attempts: the attempts limit (2) was reached",
        "retry 'outer' gave up after 3 attempts: the attempts limit (3) was reached",
    ]


def test_a_retry_note_is_plain_text_that_survives_pickling() -> None:
    """A Retry's note equals its text, prints as it, and keeps its origin in a copy."""
    import pickle

    from layers._retry import RetryNote, add_note_once

    error = ConnectionError("down")
    add_note_once(error, "api", "max_attempts", "retry 'api' gave up")
    copied = pickle.loads(pickle.dumps(error))
    (note,) = copied.__notes__
    assert note == "retry 'api' gave up"
    assert isinstance(note, RetryNote)
    assert (note.layer, note.reason) == ("api", "max_attempts")
    assert traceback.format_exception(copied)[-1] == "retry 'api' gave up\n"
    add_note_once(copied, "api", "max_attempts", "retry 'api' gave up again")
    add_note_once(copied, "api", "budget", "retry 'api': budget")
    add_note_once(copied, "other", "max_attempts", "retry 'other' gave up")
    assert copied.__notes__ == [
        "retry 'api' gave up",
        "retry 'api': budget",
        "retry 'other' gave up",
    ]


async def test_classification_by_tuple_and_predicate() -> None:
    """`on` takes a tuple of types or a predicate on the exception."""
    flaky = Flaky(2, error=lambda: TimeoutError())
    svc = Retry(on=(ConnectionError, TimeoutError), max_attempts=3, backoff=[0]).layer(
        flaky
    )
    assert await svc("x") == "x"

    flaky = Flaky(2, error=lambda: OSError(503, "unavailable"))
    svc = Retry(
        on=lambda error: isinstance(error, OSError) and error.errno == 503,
        max_attempts=3,
        backoff=[0],
    ).layer(flaky)
    assert await svc("x") == "x"

    flaky = Flaky(2, error=lambda: OSError(404, "not found"))
    svc = Retry(
        on=lambda error: isinstance(error, OSError) and error.errno == 503,
        max_attempts=3,
    ).layer(flaky)
    with pytest.raises(OSError, match="not found"):
        await svc("x")
    assert len(flaky.starts) == 1


async def test_retries_a_response_and_returns_the_last_one() -> None:
    """on_result retries responses; when retrying stops, the last one is returned."""
    answers = iter([503, 503, 200])

    async def http(request: str) -> int:
        return next(answers)

    svc = Retry(
        on=ConnectionError, max_attempts=5, backoff=[0.1], on_result=lambda s: s >= 500
    ).layer(http)
    assert await svc("GET /") == 200

    calls: list[float] = []

    async def always_503(request: str) -> int:
        calls.append(now())
        return 503

    svc = Retry(
        on=ConnectionError, max_attempts=3, backoff=[0.1], on_result=lambda s: s >= 500
    ).layer(always_503)
    with capture_events(RetryStopped) as stopped:
        assert await svc("GET /") == 503
    assert len(calls) == 3
    assert stopped == [
        RetryStopped(
            layer="retry",
            attempts=3,
            reason="max_attempts",
            error=None,
            delay=None,
            remaining=None,
        )
    ]


async def test_prepare_builds_the_request_of_each_retry() -> None:
    """prepare(request, attempt) gives the request sent on attempts 2, 3..."""
    flaky = Flaky(2)
    svc = Retry(
        on=ConnectionError,
        max_attempts=3,
        backoff=[0],
        prepare=lambda request, attempt: f"{request}#{attempt}",
    ).layer(flaky)
    assert await svc("x") == "x#3"
    assert flaky.requests == ["x", "x#2", "x#3"]


@pytest.mark.parametrize(
    ("kwargs", "with_budget"),
    [
        ({}, False),
        ({}, True),
        ({"max_time": 5}, True),
    ],
    ids=["no budget", "budget", "budget+max_time"],
)
async def test_nested_retries_each_count_their_own_attempts(
    kwargs: dict[str, Any], with_budget: bool
) -> None:
    """Inside an outer retry's 2nd attempt, an inner retry's first attempt is 1.

    With a budget, the inner retry deposits once per call (every service shape).
    """
    seen: list[tuple[int, str]] = []
    inner_failures = iter([True, True, True, False])

    async def service(request: str) -> str:
        seen.append((layers.current_attempt(), request))
        if next(inner_failures):
            raise ConnectionError
        return request

    budget = layers.RetryBudget() if with_budget else None
    inner = Retry(
        on=ConnectionError, max_attempts=2, backoff=[0], budget=budget, **kwargs
    )
    outer = Retry(
        on=ConnectionError,
        max_attempts=2,
        backoff=[0],
        budget=None,
        prepare=lambda request, attempt: f"outer {attempt}",
    )
    svc = outer.layer(inner.layer(service))
    assert await svc("outer 1") == "outer 2"
    assert seen == [(1, "outer 1"), (2, "outer 1"), (1, "outer 2"), (2, "outer 2")]
    assert layers.current_attempt() == 1
    if budget is not None:
        stats = budget.statistics()
        assert (stats.deposits, stats.retries) == (2, 2)


async def test_many_calls_at_once() -> None:
    """Fifty concurrent calls each retry on their own and all succeed."""
    services = [Flaky(index % 3) for index in range(50)]
    retry = Retry(on=ConnectionError, max_attempts=3, backoff=ConstantBackoff(1))
    results: dict[int, Any] = {}

    async def one(index: int) -> None:
        results[index] = await retry.layer(services[index])(index)

    async with anyio.create_task_group() as group:
        for index in range(50):
            group.start_soon(one, index)
    assert results == {index: index for index in range(50)}
    assert [s.attempts for s in services[:3]] == [[1], [1, 2], [1, 2, 3]]
    assert now() == pytest.approx(2)


# ---------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("backoff", "reference"),
    [
        (
            lambda: ExponentialBackoff(base=1, cap=4, rng=random.Random(5).random),
            lambda r: [min(4, 2**n) * r.random() for n in range(5)],
        ),
        (
            lambda: ExponentialBackoff(
                base=1, cap=4, jitter="equal", rng=random.Random(5).random
            ),
            lambda r: [
                min(4, 2**n) / 2 + min(4, 2**n) / 2 * r.random() for n in range(5)
            ],
        ),
        (
            lambda: ExponentialBackoff(base=1, cap=4, jitter="none"),
            lambda r: [1, 2, 4, 4, 4],
        ),
        (lambda: ConstantBackoff(0.5), lambda r: [0.5] * 5),
        (lambda: [0.1, 0.2, 0.4], lambda r: [0.1, 0.2, 0.4, 0.4, 0.4]),
        (
            lambda: lambda attempt: attempt * 0.25,
            lambda r: [0.25, 0.5, 0.75, 1.0, 1.25],
        ),
    ],
    ids=["full", "equal", "none", "constant", "sequence", "function"],
)
async def test_the_exact_delays_between_attempts(
    backoff: Callable[[], Any], reference: Callable[[random.Random], list[float]]
) -> None:
    """On virtual time, attempts start exactly the backoff's delays apart."""
    flaky = Flaky(5)
    svc = Retry(
        on=ConnectionError, max_attempts=6, backoff=backoff(), budget=None
    ).layer(flaky)
    assert await svc("x") == "x"
    assert flaky.gaps == pytest.approx(reference(random.Random(5)), abs=1e-6)


async def test_decorrelated_delays_between_attempts() -> None:
    """Decorrelated jitter through Retry: min(cap, uniform(base, 3 x previous))."""
    flaky = Flaky(5)
    backoff = ExponentialBackoff(
        base=0.5, cap=3, jitter="decorrelated", rng=random.Random(11).random
    )
    svc = Retry(on=ConnectionError, max_attempts=6, backoff=backoff).layer(flaky)
    await svc("x")
    r, previous, expected = random.Random(11), 0.5, []
    for _ in range(5):
        previous = min(3, 0.5 + (previous * 3 - 0.5) * r.random())
        expected.append(previous)
    assert flaky.gaps == pytest.approx(expected, abs=1e-6)


class FiniteBackoff:
    """A Backoff whose iterator ends after the given delays."""

    def __init__(self, *values: float) -> None:
        self.values = values

    def delays(self) -> Iterator[float]:
        """The given delays, then nothing."""
        return iter(self.values)


@pytest.mark.parametrize(
    ("values", "gaps"),
    [((0.5, 1.0), [0.5, 1.0, 1.0, 1.0]), ((), [0.0, 0.0, 0.0, 0.0])],
    ids=["repeats-last", "none-given"],
)
async def test_a_backoff_that_ends_repeats_its_last_delay(
    values: tuple[float, ...], gaps: list[float]
) -> None:
    """When a backoff's iterator ends, its last delay repeats (0 s if it gave none)."""
    flaky = Flaky(4)
    svc = Retry(
        on=ConnectionError, max_attempts=5, backoff=FiniteBackoff(*values), budget=None
    ).layer(flaky)
    assert await svc("x") == "x"
    assert flaky.gaps == pytest.approx(gaps)


@hypothesis.settings(
    max_examples=20,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(seed=st.integers(0, 2**32), cap=st.floats(0.01, 20))
async def test_full_jitter_delays_stay_within_zero_and_cap(
    seed: int, cap: float
) -> None:
    """With the default full jitter, every wait between attempts is in [0, cap]."""
    flaky = Flaky(8)
    start = now()
    backoff = ExponentialBackoff(
        base=min(0.1, cap), cap=cap, rng=random.Random(seed).random
    )
    svc = Retry(on=ConnectionError, max_attempts=9, backoff=backoff, budget=None).layer(
        flaky
    )
    await svc("x")
    assert flaky.starts[0] == start
    assert all(0 <= gap <= cap + 1e-9 for gap in flaky.gaps)


async def test_a_bad_delay_from_a_backoff_function_is_an_error() -> None:
    """A backoff function giving a negative delay raises ValueError, in context."""
    flaky = Flaky(3)
    svc = Retry(on=ConnectionError, max_attempts=3, backoff=lambda attempt: -1).layer(
        flaky
    )
    with pytest.raises(
        ValueError, match="gave -1 as the delay after attempt 1"
    ) as info:
        await svc("x")
    assert isinstance(info.value.__cause__, ConnectionError)


async def test_zero_delays_still_let_other_tasks_run() -> None:
    """Retries with no delay checkpoint between attempts (others run meanwhile)."""
    ticks: list[int] = []

    async def fails_without_waiting(request: str) -> str:
        ticks.append(len(ticks))
        raise ConnectionError

    progressed = []

    async def other() -> None:
        progressed.append(len(ticks))

    svc = Retry(on=ConnectionError, max_attempts=3, backoff=[0], budget=None).layer(
        fails_without_waiting
    )
    async with anyio.create_task_group() as group:
        group.start_soon(other)
        with pytest.raises(ConnectionError):
            await svc("x")
    assert progressed
    assert progressed[0] < 3


# ---------------------------------------------------------------- never retried


async def test_cancellation_during_an_attempt_is_not_retried() -> None:
    """Cancelled while an attempt runs: it propagates, nothing is retried after."""
    flaky = Flaky(0, duration=10)
    svc = Retry(on=Exception, max_attempts=5, backoff=[0]).layer(flaky)
    with anyio.move_on_after(1) as scope:
        await svc("x")
    assert scope.cancelled_caught
    await anyio.sleep(100)  # nothing left running that would try again
    assert flaky.starts == [0]
    assert layers.current_attempt() == 1


async def test_cancellation_during_the_backoff_sleep_is_not_retried() -> None:
    """Cancelled during the wait between attempts: no new attempt, cancel propagates."""
    flaky = Flaky(5)
    svc = Retry(on=ConnectionError, max_attempts=5, backoff=ConstantBackoff(10)).layer(
        flaky
    )
    with anyio.move_on_after(3) as scope:
        await svc("x")
    assert scope.cancelled_caught
    assert now() == pytest.approx(3)
    await anyio.sleep(100)
    assert flaky.starts == [0]


async def test_cancellation_during_the_second_attempt() -> None:
    """Cancelled in attempt 2: the attempt number is reset and nothing retries."""
    flaky = Flaky(1, duration=1)
    svc = Retry(on=ConnectionError, max_attempts=5, backoff=[0.5]).layer(flaky)
    with anyio.move_on_after(2) as scope:
        await svc("x")
    assert scope.cancelled_caught
    assert flaky.attempts == [1, 2]
    assert layers.current_attempt() == 1
    await anyio.sleep(100)
    assert len(flaky.starts) == 2


@ASYNCIO_ONLY
async def test_a_cancelled_error_raised_inside_is_never_retried() -> None:
    """A CancelledError from the service passes through, even if `on` says yes."""
    calls = 0

    async def cancelled(request: str) -> str:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    svc = Retry(on=lambda error: True, max_attempts=5, budget=None).layer(cancelled)
    with pytest.raises(asyncio.CancelledError):
        await svc("x")
    assert calls == 1


async def test_base_exceptions_are_never_retried() -> None:
    """A BaseException that is not an Exception (e.g. KeyboardInterrupt) passes."""

    class Stop(BaseException):
        pass

    calls = 0

    async def stopping(request: str) -> str:
        nonlocal calls
        calls += 1
        raise Stop

    svc = Retry(on=lambda error: True, max_attempts=5).layer(stopping)
    with pytest.raises(Stop):
        await svc("x")
    assert calls == 1


# ---------------------------------------------------------------- deadlines


async def test_inside_a_timeout_no_attempt_starts_past_the_deadline() -> None:
    """Retry under Timeout(1): attempts at 0, .3, .6, .9; it stops at .9, not later."""
    flaky = Flaky(10)
    svc = (
        layers.ServiceBuilder()
        .timeout(1)
        .retry(on=ConnectionError, max_attempts=10, backoff=ConstantBackoff(0.3))
        .service(flaky)
    )
    with (
        capture_events(RetryStopped) as stopped,
        pytest.raises(ConnectionError) as info,
    ):
        await svc("x")
    assert flaky.starts == pytest.approx([0, 0.3, 0.6, 0.9])
    assert now() == pytest.approx(0.9)  # it did not sleep to the deadline
    assert info.value is flaky.raised[-1]
    (note,) = info.value.__notes__
    assert note.startswith("retry 'retry' gave up after 4 attempts: the deadline")
    assert stopped[0].reason == "deadline"
    assert stopped[0].attempts == 4
    assert stopped[0].remaining == pytest.approx(0.1)
    assert stopped[0].delay == pytest.approx(0.3)


async def test_an_outer_timeout_is_not_retried_whatever_on_says() -> None:
    """Elapsed from an outer Timeout ends the call, even with on=TimeoutError."""
    starts: list[float] = []

    async def hangs(request: str) -> str:
        starts.append(now())
        await anyio.sleep(10)
        return request  # pragma: no cover

    svc = (
        layers.ServiceBuilder()
        .timeout(1)
        .retry(on=TimeoutError, max_attempts=5, backoff=[0], budget=None)
        .timeout(5)
        .service(hangs)
    )
    with pytest.raises(layers.Elapsed) as info:
        await svc("x")
    assert info.value.timeout == 1  # the outer layer's, not an inner expiry
    assert starts == [0]
    assert now() == pytest.approx(1)


async def test_min_attempt_time_keeps_room_for_an_attempt() -> None:
    """With min_attempt_time=0.2, an attempt needs 0.2 s left after its wait."""
    flaky = Flaky(10)
    svc = (
        layers.ServiceBuilder()
        .timeout(1)
        .retry(
            on=ConnectionError,
            max_attempts=10,
            backoff=ConstantBackoff(0.3),
            min_attempt_time=0.2,
        )
        .service(flaky)
    )
    with pytest.raises(ConnectionError):
        await svc("x")
    assert flaky.starts == pytest.approx([0, 0.3, 0.6])


async def test_a_failure_after_the_deadline_is_not_retried() -> None:
    """A failure that arrives once the deadline has passed is raised, not retried."""
    flaky = Flaky(5, duration=2)
    svc = Retry(on=ConnectionError, max_attempts=5, backoff=[0]).layer(flaky)
    # a deadline as an outer Timeout records it, but nothing that cancels
    token = DEADLINE.set(now() + 1)
    try:
        with (
            capture_events(RetryStopped) as stopped,
            pytest.raises(ConnectionError) as info,
        ):
            await svc("x")
    finally:
        DEADLINE.reset(token)
    assert flaky.starts == [0]
    assert info.value.__notes__ == [
        "retry 'retry' gave up after 1 attempt: the deadline has passed"
    ]
    assert stopped[0].reason == "deadline"
    assert stopped[0].remaining == pytest.approx(-1)


@hypothesis.settings(
    max_examples=30,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
    seconds=st.floats(0.05, 5),
    duration=st.floats(0, 1),
    delays=st.lists(st.floats(0, 2), min_size=1, max_size=5),
)
async def test_no_sleep_or_attempt_past_the_deadline(
    seconds: float, duration: float, delays: list[float]
) -> None:
    """Under any Timeout, attempts start before the deadline, sleeps end before it."""
    start = now()
    deadline = start + seconds
    flaky = Flaky(100, duration=duration)
    svc = (
        layers.ServiceBuilder()
        .timeout(seconds)
        .retry(on=ConnectionError, max_attempts=20, backoff=delays, budget=None)
        .service(flaky)
    )
    with pytest.raises((ConnectionError, layers.Elapsed)) as info:
        await svc("x")
    assert all(s < deadline for s in flaky.starts)
    if isinstance(info.value, ConnectionError):
        # it gave up by itself: before the deadline, not after a long sleep
        assert now() <= deadline + 1e-6  # looptime rounds its clock to 1 µs
        # and not while a retry would still fit: the next start would not
        # have been before the deadline
        assert info.value.__notes__
        attempts = len(flaky.starts)
        if attempts < 20:  # not the attempts limit: the deadline stopped it
            next_delay = delays[min(attempts - 1, len(delays) - 1)]
            assert now() + next_delay >= deadline - 1e-6
            assert "the deadline" in info.value.__notes__[0]


@TRIO_ONLY
@pytest.mark.parametrize("limit", ["deadline", "max_time"])
async def test_a_backoff_sleep_that_ends_late_is_checked_again(limit: str) -> None:
    """A wait that ends past the deadline or max_time starts no attempt after it."""
    import trio.lowlevel
    import trio.testing

    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    start = now()  # both cases share one MockClock (made at import)
    flaky = Flaky(5)
    kwargs: dict[str, Any] = (
        {"max_attempts": 5} if limit == "deadline" else {"max_time": 5}
    )
    svc = Retry(
        on=ConnectionError, backoff=ConstantBackoff(1), budget=None, **kwargs
    ).layer(flaky)

    async def oversleep() -> None:
        await anyio.sleep(0.5)  # the retry is in its 1 s wait, 4 s before the limit
        clock.jump(10)

    # a deadline as an outer Timeout records it, but nothing that cancels
    token = DEADLINE.set(start + 5) if limit == "deadline" else None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(oversleep)
            with (
                capture_events() as seen,
                pytest.raises(ConnectionError) as info,
            ):
                await svc("x")
    finally:
        if token is not None:
            DEADLINE.reset(token)
    assert flaky.starts == [start]
    assert now() == pytest.approx(start + 10.5)
    (failed, stopped) = seen
    assert failed == RetryAttemptFailed(
        layer="retry", attempt=1, delay=1.0, error="ConnectionError"
    )
    if limit == "deadline":
        assert stopped == RetryStopped(
            layer="retry",
            attempts=1,
            reason="deadline",
            remaining=pytest.approx(-5.5),  # type: ignore[arg-type]
            delay=0.0,
            error="ConnectionError",
        )
        reason = "the deadline leaves no time for another attempt"
    else:
        assert stopped == RetryStopped(
            layer="retry",
            attempts=1,
            reason="max_time",
            error="ConnectionError",
            delay=0.0,
            remaining=None,
        )
        reason = "the next attempt could not start within max_time (5 s)"
    assert info.value.__notes__ == [f"retry 'retry' gave up after 1 attempt: {reason}"]


# ------------------------------------------------------------ delay hints


async def test_rejections_wait_for_their_retry_after() -> None:
    """A retried RateLimited waits its retry_after (not the backoff)."""
    flaky = Flaky(2, error=lambda: layers.RateLimited(retry_after=2.5))
    svc = Retry(on=layers.Rejected, max_attempts=3, backoff=ConstantBackoff(0.1)).layer(
        flaky
    )
    assert await svc("x") == "x"
    assert flaky.gaps == pytest.approx([2.5, 2.5])


async def test_rejections_are_not_retried_unless_classified() -> None:
    """A Rejected that `on` does not match is raised on the first attempt."""
    flaky = Flaky(2, error=lambda: layers.Overloaded())
    svc = Retry(on=ConnectionError, max_attempts=3).layer(flaky)
    with pytest.raises(layers.Overloaded):
        await svc("x")
    assert len(flaky.starts) == 1


async def test_a_hint_longer_than_the_cap_ends_retrying() -> None:
    """retry_after above max_delay (the exponential cap here) raises at once."""
    flaky = Flaky(2, error=lambda: layers.CircuitOpen(retry_after=30))
    svc = Retry(
        on=layers.CircuitOpen, max_attempts=3, backoff=ExponentialBackoff(cap=5)
    )
    with (
        capture_events(RetryStopped) as stopped,
        pytest.raises(layers.CircuitOpen) as info,
    ):
        await svc.layer(flaky)("x")
    assert now() == 0
    assert info.value.__notes__ == [
        "retry 'retry' gave up after 1 attempt: the error's retry_after (30 s) is "
        "longer than max_delay (5 s)"
    ]
    assert stopped[0].reason == "retry_after"


async def test_a_hint_past_the_deadline_ends_retrying() -> None:
    """retry_after that would end past the deadline raises at once."""
    flaky = Flaky(2, error=lambda: layers.RateLimited(retry_after=3))
    svc = (
        layers.ServiceBuilder()
        .timeout(2)
        .retry(on=layers.RateLimited, max_attempts=3)
        .service(flaky)
    )
    with pytest.raises(layers.RateLimited):
        await svc("x")
    assert now() == 0


async def test_a_user_hook_reads_the_hint() -> None:
    """retry_after=hook reads a delay from the error (an HTTP Retry-After, say)."""

    class HttpError(Exception):
        def __init__(self, headers: dict[str, str]) -> None:
            super().__init__("HTTP 429")
            self.headers = headers

    def hint(error: Exception) -> float | None:
        if isinstance(error, HttpError) and "retry-after" in error.headers:
            return float(error.headers["retry-after"])
        return None

    flaky = Flaky(2, error=lambda: HttpError({"retry-after": "1.5"}))
    svc = Retry(
        on=HttpError, max_attempts=3, retry_after=hint, backoff=ConstantBackoff(0.1)
    ).layer(flaky)
    assert await svc("x") == "x"
    assert flaky.gaps == pytest.approx([1.5, 1.5])

    flaky = Flaky(2, error=lambda: HttpError({}))
    svc = Retry(
        on=HttpError, max_attempts=3, retry_after=hint, backoff=ConstantBackoff(0.1)
    ).layer(flaky)
    assert await svc("x") == "x"
    assert flaky.gaps == pytest.approx([0.1, 0.1])


@pytest.mark.parametrize("hint", ["1.5", True, [1]], ids=["str", "bool", "list"])
async def test_a_hint_that_is_not_a_number_is_a_callback_error(hint: object) -> None:
    """A retry_after hook returning a non-number: CallbackError from the error."""
    flaky = Flaky(2)
    svc = Retry(
        on=ConnectionError,
        max_attempts=3,
        retry_after=lambda error: hint,  # type: ignore[arg-type,return-value]
    ).layer(flaky)
    with pytest.raises(layers.CallbackError) as info:
        await svc("x")
    assert str(info.value) == (
        "Retry 'retry': the delay hint (retry_after=) for ConnectionError must be "
        "a number of "
        f"seconds or None, got {hint!r}"
    )
    assert info.value.__cause__ is flaky.raised[0]
    assert flaky.starts == [0]


_DEFAULT_LIMIT = "the default limit on hinted waits (60 s; set max_delay to change it)"


@pytest.mark.parametrize(
    ("backoff", "hint", "note"),
    [
        pytest.param(
            None,
            float("nan"),
            "retry_after (inf s) is longer than max_delay (10 s)",
            id="nan-is-infinite",
        ),
        pytest.param(
            [1],
            math.inf,
            f"retry_after (inf s) is longer than {_DEFAULT_LIMIT}",
            id="infinite-no-max_delay",
        ),
        *(
            pytest.param(
                backoff,
                99999999999,
                f"retry_after (1e+11 s) is longer than {_DEFAULT_LIMIT}",
                id=f"huge-{kind}",
            )
            for backoff, kind in [
                ([0.01], "list"),
                (ConstantBackoff(0.01), "constant"),
                (lambda attempt: 0.01, "function"),
            ]
        ),
    ],
)
async def test_a_hint_over_the_limit_ends_retrying_at_once(
    backoff: Any, hint: float, note: str
) -> None:
    """A hint longer than the limit on hinted waits stops at once: no 3,000 years.

    The limit is max_delay (the ExponentialBackoff's cap by default), else 60 s
    for any other backoff; a NaN hint is an infinite wait.
    """
    flaky = Flaky(2)
    options: dict[str, Any] = {} if backoff is None else {"backoff": backoff}
    svc = Retry(
        on=ConnectionError,
        max_attempts=3,
        retry_after=lambda error: hint,
        name="api",
        **options,
    ).layer(flaky)
    with (
        capture_events(RetryStopped) as stopped,
        pytest.raises(ConnectionError) as info,
    ):
        await svc("x")
    assert flaky.starts == [0]
    assert now() == 0
    assert info.value.__notes__ == [
        f"retry 'api' gave up after 1 attempt: the error's {note}"
    ]
    assert stopped == [
        RetryStopped(
            layer="api",
            attempts=1,
            reason="retry_after",
            error="ConnectionError",
            delay=math.inf if math.isnan(hint) else hint,
            remaining=None,
        )
    ]


async def test_the_default_hint_limit_waits_up_to_60_seconds() -> None:
    """Without max_delay, a 60 s hint is waited out; 60.5 s stops at once."""
    flaky = Flaky(1)
    svc = Retry(
        on=ConnectionError, max_attempts=3, backoff=[0.1], retry_after=lambda error: 60
    ).layer(flaky)
    assert await svc("x") == "x"
    assert flaky.gaps == [60]

    flaky = Flaky(1, error=lambda: layers.RateLimited(retry_after=60.5))
    svc = Retry(on=layers.RateLimited, max_attempts=3, backoff=[0.1]).layer(flaky)
    with pytest.raises(layers.RateLimited):
        await svc("x")
    assert flaky.starts == [now()]


async def test_max_delay_sets_the_hint_limit() -> None:
    """An explicit max_delay is the limit on hinted waits: longer ones are waited."""
    flaky = Flaky(1, error=lambda: layers.RateLimited(retry_after=500))
    svc = Retry(
        on=layers.RateLimited, max_attempts=3, backoff=[0.1], max_delay=600
    ).layer(flaky)
    assert await svc("x") == "x"
    assert flaky.gaps == [500]

    flaky = Flaky(1, error=lambda: layers.RateLimited(retry_after=30))
    svc = Retry(on=layers.RateLimited, max_attempts=3, backoff=[0.1], max_delay=20)
    with pytest.raises(layers.RateLimited) as info:
        await svc.layer(flaky)("x")
    assert info.value.__notes__ == [
        "retry 'retry' gave up after 1 attempt: the error's retry_after (30 s) is "
        "longer than max_delay (20 s)"
    ]


async def test_the_default_hint_limit_does_not_clamp_computed_delays() -> None:
    """The 60 s limit is on hints only: a backoff's own long delays are kept."""
    flaky = Flaky(1)
    svc = Retry(on=ConnectionError, max_attempts=2, backoff=[120]).layer(flaky)
    assert await svc("x") == "x"
    assert flaky.gaps == [120]


async def test_a_huge_retry_after_header_through_httpx_is_not_waited() -> None:
    """LayeredTransport's documented stack returns the 503 at once on a huge header."""
    httpx = pytest.importorskip("httpx")
    from layers.httpx import LayeredTransport, RetryOn, retry_after

    calls: list[float] = []

    def answer(request: Any) -> Any:
        calls.append(now())
        return httpx.Response(503, headers={"Retry-After": "99999999999"})

    stack = layers.ServiceBuilder().retry(
        on=RetryOn(), retry_after=retry_after, max_attempts=3, backoff=[0.01]
    )
    transport = LayeredTransport(stack, httpx.MockTransport(answer))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://api.test/")
    assert response.status_code == 503
    assert calls == [0]
    assert now() == 0


async def test_max_delay_clamps_computed_delays() -> None:
    """max_delay clamps the delays a backoff computes."""
    flaky = Flaky(3)
    svc = Retry(
        on=ConnectionError, max_attempts=4, backoff=[1, 5, 50], max_delay=2
    ).layer(flaky)
    await svc("x")
    assert flaky.gaps == pytest.approx([1, 2, 2])


# ----------------------------------------------------------------- max_time


async def test_max_time_stops_before_an_attempt_that_would_start_late() -> None:
    """max_time=1 with 0.4 s waits: attempts at 0, .4, .8; the next is not started."""
    flaky = Flaky(10)
    svc = Retry(on=ConnectionError, max_time=1, backoff=ConstantBackoff(0.4)).layer(
        flaky
    )
    with (
        capture_events(RetryStopped) as stopped,
        pytest.raises(ConnectionError) as info,
    ):
        await svc("x")
    assert flaky.starts == pytest.approx([0, 0.4, 0.8])
    assert now() == pytest.approx(0.8)
    assert "could not start within max_time (1 s)" in info.value.__notes__[0]
    assert stopped[0].reason == "max_time"


async def test_max_time_counts_from_the_first_attempt() -> None:
    """A slow first attempt uses up max_time: no retry after it."""
    flaky = Flaky(10, duration=2)
    svc = Retry(on=ConnectionError, max_time=1, backoff=[0]).layer(flaky)
    with pytest.raises(ConnectionError):
        await svc("x")
    assert flaky.starts == [0]


# ------------------------------------------------------------------ budget


async def test_an_empty_budget_stops_retrying() -> None:
    """With no budget left, the error is raised at once and an event says why."""
    budget = layers.RetryBudget(min_per_second=0, ratio=0)
    flaky = Flaky(5)
    svc = Retry(
        on=ConnectionError, max_attempts=5, backoff=[0.25], budget=budget, name="db"
    ).layer(flaky)
    with (
        capture_events(RetryStopped) as stopped,
        pytest.raises(ConnectionError) as info,
    ):
        await svc("x")
    assert info.value.__notes__ == [
        "retry 'db' gave up after 1 attempt: the retry budget is exhausted"
    ]
    assert stopped == [
        RetryStopped(
            layer="db",
            attempts=1,
            reason="budget",
            error="ConnectionError",
            delay=0.25,
            remaining=None,
        )
    ]


async def test_one_layer_shares_its_budget_between_services() -> None:
    """Two services from one Retry layer (or builder) draw on one budget."""
    retry = Retry(
        on=ConnectionError,
        max_attempts=2,
        backoff=[0],
        budget=layers.RetryBudget(ttl=1, min_per_second=1, ratio=0),
    )
    first, second = retry.layer(Flaky(1)), retry.layer(Flaky(1))
    assert await first("a") == "a"  # takes the one retry there is
    with pytest.raises(ConnectionError):
        await second("b")

    builder = layers.ServiceBuilder().retry(
        on=ConnectionError, max_attempts=2, backoff=[0]
    )
    budget = builder.layers[0].budget  # type: ignore[attr-defined]
    again = layers.ServiceBuilder().retry(on=ConnectionError, max_attempts=2)
    assert isinstance(budget, layers.RetryBudget)
    assert again.layers[0].budget is not budget  # type: ignore[attr-defined]
    await builder.service(Flaky(1))("a")
    await builder.service(Flaky(1))("b")
    assert budget.statistics().retries == 2


async def test_the_budget_counts_every_call() -> None:
    """Every call deposits once (first attempts), every retry withdraws once."""
    budget = layers.RetryBudget()
    svc = Retry(on=ConnectionError, max_attempts=3, backoff=[0], budget=budget)
    for _ in range(5):
        await svc.layer(Flaky(0))("x")
    await svc.layer(Flaky(2))("x")
    stats = budget.statistics()
    assert (stats.deposits, stats.retries) == (6, 2)


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 3}, {"max_time": 5}], ids=["default", "max_time"]
)
async def test_an_early_call_does_not_pay_for_a_late_retry(
    kwargs: dict[str, Any],
) -> None:
    """A call at t=0 pays for no retry 30 s later with ttl=1 (its deposit expired).

    With ratio=0.5, it takes two calls' deposits to pay for a retry: the
    failing call's own and, had it not expired, the first call's.
    """
    budget = layers.RetryBudget(ttl=1, min_per_second=0, ratio=0.5)
    retry = Retry(on=ConnectionError, backoff=[0], budget=budget, **kwargs)
    assert await retry.layer(Flaky(0))("x") == "x"
    await anyio.sleep(30)
    flaky = Flaky(1)
    with (
        capture_events(RetryStopped) as refused,
        pytest.raises(ConnectionError),
    ):
        await retry.layer(flaky)("x")
    assert len(flaky.starts) == 1
    assert len(refused) == 1


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 3}, {"max_time": 5}], ids=["default", "max_time"]
)
async def test_a_burst_of_calls_is_dated_when_it_started(
    kwargs: dict[str, Any],
) -> None:
    """64 calls at one instant are dated then: they expire ttl later, not later."""

    async def echo(request: int) -> int:
        return request

    budget = layers.RetryBudget(ttl=1, min_per_second=0, ratio=1)
    svc = Retry(on=ConnectionError, budget=budget, **kwargs).layer(echo)
    for request in range(64):
        await svc(request)
    await anyio.sleep(2)
    # dated at 0, the clock reading before them: expired
    assert budget.statistics().deposits == 0
    assert await svc(64) == 64
    assert budget.statistics().deposits == 1


# ------------------------------------------------------------------ events


async def test_events_report_attempts_by_error_type_only() -> None:
    """Each retry emits attempt, delay and error type; never the error's message."""
    flaky = Flaky(2, error=lambda: ConnectionError("secret=hunter2"))
    svc = Retry(on=ConnectionError, max_attempts=3, backoff=[0.5, 1], name="api")
    with capture_events() as seen:
        await svc.layer(flaky)("x")
    assert seen == [
        RetryAttemptFailed(layer="api", attempt=1, delay=0.5, error="ConnectionError"),
        RetryAttemptFailed(layer="api", attempt=2, delay=1.0, error="ConnectionError"),
    ]
    assert "hunter2" not in repr(seen)
    assert seen[0].event == "retry_attempt_failed"


async def test_error_types_outside_builtins_are_qualified() -> None:
    """An error type from a module is named with its module."""
    flaky = Flaky(1, error=lambda: layers.RateLimited(retry_after=0))
    with capture_events(RetryAttemptFailed) as seen:
        await Retry(on=layers.RateLimited, max_attempts=2).layer(flaky)("x")
    assert seen[0].error == "layers.RateLimited"


async def test_exhaustion_event() -> None:
    """Giving up after the attempts limit emits RetryStopped, reason attempts."""
    with (
        capture_events(RetryStopped) as seen,
        pytest.raises(ConnectionError),
    ):
        await Retry(on=ConnectionError, max_attempts=2, backoff=[0]).layer(Flaky(5))(
            "x"
        )
    assert seen == [
        RetryStopped(
            layer="retry",
            attempts=2,
            reason="max_attempts",
            error="ConnectionError",
            delay=None,
            remaining=None,
        )
    ]


async def test_stopping_under_a_deadline_reports_the_time_remaining() -> None:
    """RetryStopped carries the time left before the deadline, whatever the reason."""
    svc = (
        layers.ServiceBuilder()
        .timeout(10)
        .retry(on=ConnectionError, max_attempts=2, backoff=[1])
        .service(Flaky(5))
    )
    with capture_events(RetryStopped) as seen, pytest.raises(ConnectionError):
        await svc("x")
    assert seen == [
        RetryStopped(
            layer="retry",
            attempts=2,
            reason="max_attempts",
            error="ConnectionError",
            delay=None,
            remaining=pytest.approx(9),  # type: ignore[arg-type]
        )
    ]


async def test_a_retry_that_raises_an_error_not_retried_stops_with_an_event() -> None:
    """A retry whose error on= does not match ends it: RetryStopped not_retryable."""
    errors = [ConnectionError(), ConnectionError(), KeyError("k")]
    flaky = Flaky(3, error=lambda: errors.pop(0))
    retry = Retry(on=ConnectionError, max_attempts=5, backoff=[0.5], name="db")
    with capture_events(RetryStopped) as seen, pytest.raises(KeyError) as info:
        await retry.layer(flaky)("x")
    assert info.value.__notes__ == [
        "retry 'db': attempt 3 raised an error that is not retryable"
    ]
    assert seen == [
        RetryStopped(
            layer="db",
            attempts=3,
            reason="not_retryable",
            error="KeyError",
            delay=None,
            remaining=None,
        )
    ]


async def test_a_first_attempt_not_retried_emits_no_stop() -> None:
    """An error on= does not match on the first attempt: no retry began, no event."""
    flaky = Flaky(1, error=lambda: KeyError("k"))
    with capture_events() as seen, pytest.raises(KeyError):
        await Retry(on=ConnectionError, max_attempts=3).layer(flaky)("x")
    assert seen == []


# ------------------------------------------------------------- testing mode


async def test_testing_mode_turns_retrying_off() -> None:
    """set_retry_testing(True): one attempt, no wait; off again restores retries."""
    set_retry_testing(True)
    try:
        flaky = Flaky(1)
        svc = Retry(on=ConnectionError, max_attempts=5).layer(flaky)
        with pytest.raises(ConnectionError):
            await svc("x")
        assert len(flaky.starts) == 1
    finally:
        set_retry_testing(False)
    flaky = Flaky(1)
    assert await Retry(on=ConnectionError, max_attempts=5).layer(flaky)("x") == "x"


async def test_testing_mode_context_manager_caps_attempts_and_skips_waits() -> None:
    """retry_testing(max_attempts=3): at most 3 attempts, no waits; restored after."""
    flaky = Flaky(10)
    svc = Retry(on=ConnectionError, max_attempts=5, backoff=ConstantBackoff(60)).layer(
        flaky
    )
    with retry_testing(max_attempts=3):
        with pytest.raises(ConnectionError):
            await svc("x")
        assert len(flaky.starts) == 3
        with retry_testing(max_attempts=10):  # never more than the layer's own
            flaky.starts.clear()
            with pytest.raises(ConnectionError):
                await svc("x")
            assert len(flaky.starts) == 5
    assert now() == 0
    assert layers._retry.TESTING.attempts is None


def test_testing_mode_refuses_bad_attempts() -> None:
    """set_retry_testing(max_attempts=0) is a configuration error."""
    with pytest.raises(layers.ConfigurationError, match="attempts must be an integer"):
        set_retry_testing(True, max_attempts=0)


# ----------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"on": OSError},
            "Retry(max_attempts=None, max_time=None): give at least one limit",
        ),
        (
            {"on": OSError, "max_attempts": 0},
            "max_attempts must be None or an integer >= 1",
        ),
        (
            {"on": OSError, "max_attempts": True},
            "max_attempts must be None or an integer",
        ),
        ({"on": OSError, "max_attempts": 2.5}, "got 2.5"),
        ({"on": OSError, "max_time": -1}, "max_time must be None or a finite number"),
        (
            {"on": OSError, "max_attempts": 2, "max_delay": 0},
            "max_delay must be None or",
        ),
        (
            {"on": OSError, "max_attempts": 2, "min_attempt_time": -0.1},
            "min_attempt_time must be a finite number of seconds >= 0",
        ),
        ({"on": BaseException, "max_attempts": 2}, "on must be an Exception subclass"),
        (
            {"on": asyncio.CancelledError, "max_attempts": 2},
            "cancellation and other BaseExceptions are never retried",
        ),
        ({"on": (), "max_attempts": 2}, "on must be an Exception subclass, a tuple"),
        ({"on": (OSError, KeyboardInterrupt), "max_attempts": 2}, "Retry(on=("),
        ({"on": "OSError", "max_attempts": 2}, "Retry(on='OSError')"),
        (
            {"on": OSError, "max_attempts": 2, "budget": 5},
            "budget must be a RetryBudget",
        ),
        (
            {"on": OSError, "max_attempts": 2, "retry_after": 3},
            "retry_after must be None or callable",
        ),
        (
            {"on": OSError, "max_attempts": 2, "name": ""},
            "name must be a non-empty string",
        ),
        (
            {"on": OSError, "max_attempts": 2, "backoff": [-1]},
            "backoff[0] must be a finite number of seconds >= 0",
        ),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    """Bad values fail at construction, naming the parameter, value and range."""
    with pytest.raises(layers.ConfigurationError, match=re.escape(message)):
        Retry(**kwargs)


def test_builder_method_adds_a_retry_layer() -> None:
    """.retry(...) adds one Retry with the options given."""
    budget = layers.RetryBudget()
    builder = layers.ServiceBuilder().retry(
        on=ConnectionError, max_attempts=4, budget=budget, name="users"
    )
    (retry,) = builder.layers
    assert isinstance(retry, Retry)
    assert (retry.max_attempts, retry.budget, retry.name) == (4, budget, "users")
    assert isinstance(retry.backoff, ExponentialBackoff)
    (no_budget,) = (
        layers.ServiceBuilder().retry(on=OSError, max_time=3, budget=None).layers
    )
    assert no_budget.budget is None  # type: ignore[attr-defined]


# ------------------------------------------------------------ uvloop smoke

UVLOOP = pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(
            ("asyncio", {"loop_factory": lambda: _uvloop().new_event_loop()}),
            marks=pytest.mark.realtime,
        )
    ],
    ids=["uvloop"],
)


def _uvloop() -> Any:
    """Import uvloop, or skip where it is not installed."""
    return pytest.importorskip("uvloop")


@UVLOOP
async def test_uvloop_smoke_retries_within_a_deadline() -> None:
    """On uvloop and the real clock: retries, delays and the deadline rule hold."""
    flaky = Flaky(2)
    svc = Retry(
        on=ConnectionError, max_attempts=3, backoff=ConstantBackoff(0.02)
    ).layer(flaky)
    assert await svc("x") == "x"
    assert all(0.015 <= gap < 0.5 for gap in flaky.gaps)
    assert flaky.attempts == [1, 2, 3]

    down = Flaky(100)
    bounded = (
        layers.ServiceBuilder()
        .timeout(0.1)
        .retry(on=ConnectionError, max_attempts=50, backoff=ConstantBackoff(0.03))
        .service(down)
    )
    with pytest.raises(ConnectionError) as info:
        await bounded("x")
    assert 2 <= len(down.starts) <= 4
    assert "the deadline" in info.value.__notes__[0]
