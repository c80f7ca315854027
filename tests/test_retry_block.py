"""Tests of Retry's block form: ``async for attempt in retry: with attempt: ...``.

Most scenarios run through both forms, the service (``retry.layer(service)``)
and the block (:func:`through_block`), with the same expectations: the block
form decides by the same code, so it must retry, wait, stop, note and report
exactly as the service form does.
"""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from helpers import quiet_events as quiet_events  # autouse fixture
from test_retry import Flaky, now

import layers
from layers import Attempt, ConstantBackoff, Retry
from layers._deadline import DEADLINE
from layers.events import RetryAttemptFailed, RetryStopped
from layers.testing import capture_events, retry_testing, virtual_time_backend

pytestmark = pytest.mark.anyio

Call = Callable[[Retry, Callable[[Any], Awaitable[Any]], Any], Awaitable[Any]]


async def through_service(
    retry: Retry, service: Callable[[Any], Awaitable[Any]], request: Any
) -> Any:
    """The service form: ``retry.layer(service)(request)``."""
    return await retry.layer(service)(request)


async def through_block(
    retry: Retry, service: Callable[[Any], Awaitable[Any]], request: Any
) -> Any:
    """The block form of the same call; the last response is kept after the loop."""
    response = None
    async for attempt in retry:
        with attempt:
            response = attempt.result(await service(request))
    return response


FORMS = pytest.mark.parametrize(
    "call", [through_service, through_block], ids=["service", "block"]
)
"""Run a test through the service form and the block form."""


# ------------------------------------------------------------------ both forms


@FORMS
async def test_retries_until_success(call: Call) -> None:
    """Retryable errors are retried after the backoff; attempts 1, 2, 3."""
    flaky = Flaky(2)
    retry = Retry(on=ConnectionError, max_attempts=5, backoff=[0.5, 1])
    with capture_events() as seen:
        assert await call(retry, flaky, "x") == "x"
    assert flaky.attempts == [1, 2, 3]
    assert flaky.gaps == pytest.approx([0.5, 1])
    assert seen == [
        RetryAttemptFailed(
            layer="retry", attempt=1, delay=0.5, error="ConnectionError"
        ),
        RetryAttemptFailed(
            layer="retry", attempt=2, delay=1.0, error="ConnectionError"
        ),
    ]
    assert layers.current_attempt() == 1


@FORMS
async def test_gives_up_with_the_last_error_itself(call: Call) -> None:
    """After max_attempts, the last error: the same object, the same note and event."""
    flaky = Flaky(10)
    retry = Retry(on=ConnectionError, max_attempts=3, backoff=[0.1], name="db")
    with (
        capture_events(RetryStopped) as stopped,
        pytest.raises(ConnectionError) as info,
    ):
        await call(retry, flaky, "x")
    assert info.value is flaky.raised[-1]
    assert info.value.__notes__ == [
        "retry 'db' gave up after 3 attempts: the attempts limit (3) was reached"
    ]
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].line == "raise error"
    assert stopped == [
        RetryStopped(
            layer="db",
            attempts=3,
            reason="max_attempts",
            error="ConnectionError",
            delay=None,
            remaining=None,
        )
    ]
    assert len(flaky.starts) == 3


@FORMS
async def test_a_non_retryable_error_propagates_at_once(call: Call) -> None:
    """An error on= does not match: raised unchanged, no note, no event, no wait."""
    flaky = Flaky(1, error=lambda: KeyError("k"))
    retry = Retry(on=ConnectionError, max_attempts=3)
    with capture_events() as seen, pytest.raises(KeyError) as info:
        await call(retry, flaky, "x")
    assert info.value is flaky.raised[0]
    assert not hasattr(info.value, "__notes__")
    assert info.value.__context__ is None
    assert seen == []
    assert now() == 0


@FORMS
async def test_a_non_retryable_error_after_a_retry_ends_with_a_note(call: Call) -> None:
    """A retry that raises an error on= does not match: a note and not_retryable."""
    errors = [ConnectionError(), KeyError("k")]
    flaky = Flaky(2, error=lambda: errors.pop(0))
    retry = Retry(on=ConnectionError, max_attempts=5, backoff=[0.5], name="db")
    with capture_events(RetryStopped) as seen, pytest.raises(KeyError) as info:
        await call(retry, flaky, "x")
    assert info.value.__notes__ == [
        "retry 'db': attempt 2 raised an error that is not retryable"
    ]
    assert [event.reason for event in seen] == ["not_retryable"]
    assert seen[0].attempts == 2


@FORMS
async def test_a_rejection_waits_for_its_retry_after(call: Call) -> None:
    """A retried RateLimited waits its retry_after, not the backoff."""
    flaky = Flaky(2, error=lambda: layers.RateLimited(retry_after=2.5))
    retry = Retry(on=layers.Rejected, max_attempts=3, backoff=ConstantBackoff(0.1))
    assert await call(retry, flaky, "x") == "x"
    assert flaky.gaps == pytest.approx([2.5, 2.5])


@FORMS
async def test_a_hint_function_reads_the_delay(call: Call) -> None:
    """retry_after=hook replaces the backoff; None from it falls back to it."""
    hints = iter([1.5, None])
    retry = Retry(
        on=ConnectionError,
        max_attempts=3,
        backoff=ConstantBackoff(0.1),
        retry_after=lambda error: next(hints),
    )
    flaky = Flaky(2)
    assert await call(retry, flaky, "x") == "x"
    assert flaky.gaps == pytest.approx([1.5, 0.1])


@FORMS
async def test_a_hint_over_max_delay_ends_retrying(call: Call) -> None:
    """A hint longer than max_delay: the error at once, reason retry_after."""
    flaky = Flaky(2, error=lambda: layers.CircuitOpen(retry_after=30))
    retry = Retry(on=layers.CircuitOpen, max_attempts=3, max_delay=5)
    with (
        capture_events(RetryStopped) as seen,
        pytest.raises(layers.CircuitOpen) as info,
    ):
        await call(retry, flaky, "x")
    assert info.value.__notes__ == [
        "retry 'retry' gave up after 1 attempt: the error's retry_after (30 s) is "
        "longer than max_delay (5 s)"
    ]
    assert seen[0].reason == "retry_after"
    assert now() == 0


@FORMS
async def test_a_bad_hint_is_a_callback_error(call: Call) -> None:
    """A hint that is not a number: CallbackError chained from the error."""
    flaky = Flaky(2)
    retry = Retry(
        on=ConnectionError,
        max_attempts=3,
        retry_after=lambda error: "soon",  # type: ignore[arg-type,return-value]
    )
    with pytest.raises(layers.CallbackError) as info:
        await call(retry, flaky, "x")
    assert "the delay hint (retry_after=) for ConnectionError" in str(info.value)
    assert info.value.__cause__ is flaky.raised[0]


@FORMS
async def test_no_attempt_starts_past_the_deadline(call: Call) -> None:
    """Under a Timeout(1): attempts at 0, .3, .6, .9, then the deadline stops it."""
    flaky = Flaky(10)
    retry = Retry(on=ConnectionError, max_attempts=10, backoff=ConstantBackoff(0.3))

    async def run(request: str) -> Any:
        return await call(retry, flaky, request)

    with (
        capture_events(RetryStopped) as stopped,
        pytest.raises(ConnectionError) as info,
    ):
        await layers.Timeout(1).layer(run)("x")
    assert flaky.starts == pytest.approx([0, 0.3, 0.6, 0.9])
    assert now() == pytest.approx(0.9)
    (note,) = info.value.__notes__
    assert note.startswith("retry 'retry' gave up after 4 attempts: the deadline")
    assert stopped[0].reason == "deadline"
    assert stopped[0].remaining == pytest.approx(0.1)


@FORMS
async def test_min_attempt_time_keeps_room_for_an_attempt(call: Call) -> None:
    """With 0.5 s needed per attempt, none starts with less left: 0, .3, no .6."""
    flaky = Flaky(10)
    retry = Retry(
        on=ConnectionError,
        max_attempts=10,
        backoff=ConstantBackoff(0.3),
        min_attempt_time=0.5,
    )

    async def run(request: str) -> Any:
        return await call(retry, flaky, request)

    with pytest.raises(ConnectionError):
        await layers.Timeout(1).layer(run)("x")
    assert flaky.starts == pytest.approx([0, 0.3])


@FORMS
async def test_max_time_stops_before_a_late_attempt(call: Call) -> None:
    """max_time=1 with 0.4 s waits: attempts at 0, .4, .8, and no more."""
    flaky = Flaky(10)
    retry = Retry(on=ConnectionError, max_time=1, backoff=ConstantBackoff(0.4))
    with capture_events(RetryStopped) as stopped, pytest.raises(ConnectionError):
        await call(retry, flaky, "x")
    assert flaky.starts == pytest.approx([0, 0.4, 0.8])
    assert stopped[0].reason == "max_time"


@FORMS
async def test_an_empty_budget_stops_retrying(call: Call) -> None:
    """No budget left: the error at once, reason budget."""
    budget = layers.RetryBudget(min_per_second=0, ratio=0)
    flaky = Flaky(5)
    retry = Retry(on=ConnectionError, max_attempts=5, backoff=[0.25], budget=budget)
    with (
        capture_events(RetryStopped) as stopped,
        pytest.raises(ConnectionError) as info,
    ):
        await call(retry, flaky, "x")
    assert info.value.__notes__ == [
        "retry 'retry' gave up after 1 attempt: the retry budget is exhausted"
    ]
    assert stopped[0].reason == "budget"
    assert stopped[0].delay == 0.25


@FORMS
async def test_the_budget_counts_deposits_and_retries(call: Call) -> None:
    """Each call or block deposits once; each retry withdraws once."""
    budget = layers.RetryBudget()
    retry = Retry(on=ConnectionError, max_attempts=3, backoff=[0], budget=budget)
    for _ in range(4):
        await call(retry, Flaky(0), "x")
    await call(retry, Flaky(2), "x")
    stats = budget.statistics()
    assert (stats.deposits, stats.retries) == (5, 2)


@FORMS
async def test_a_response_is_retried_and_the_last_one_kept(call: Call) -> None:
    """on_result: a 503 is retried; when retrying stops, the last response."""
    answers = iter([503, 503, 200])

    async def http(request: str) -> int:
        return next(answers)

    retry = Retry(
        on=ConnectionError, max_attempts=5, backoff=[0.1], on_result=lambda s: s >= 500
    )
    assert await call(retry, http, "GET /") == 200
    assert now() == pytest.approx(0.2)

    async def always_503(request: str) -> int:
        return 503

    retry = Retry(
        on=ConnectionError, max_attempts=3, backoff=[0.1], on_result=lambda s: s >= 500
    )
    with capture_events() as seen:
        assert await call(retry, always_503, "GET /") == 503
    assert seen[-1] == RetryStopped(
        layer="retry",
        attempts=3,
        reason="max_attempts",
        error=None,
        delay=None,
        remaining=None,
    )
    assert [type(event) for event in seen] == [
        RetryAttemptFailed,
        RetryAttemptFailed,
        RetryStopped,
    ]
    assert seen[0] == RetryAttemptFailed(
        layer="retry", attempt=1, delay=0.1, error=None
    )


@FORMS
async def test_a_response_waits_for_its_own_delay_hint(call: Call) -> None:
    """retry_after is called with the response on_result retries: its delay."""
    answers = iter([(429, 2.0), (503, None), (200, None)])
    hinted: list[object] = []

    async def http(request: str) -> tuple[int, float | None]:
        return next(answers)

    def hint(outcome: Any) -> float | None:
        hinted.append(outcome)
        return outcome[1] if isinstance(outcome, tuple) else None

    retry = Retry(
        on=ConnectionError,
        max_attempts=5,
        backoff=ConstantBackoff(0.5),
        on_result=lambda response: response[0] >= 429,
        retry_after=hint,
    )
    with capture_events(RetryAttemptFailed) as seen:
        assert await call(retry, http, "GET /") == (200, None)
    assert hinted == [(429, 2.0), (503, None)]  # never the response kept
    assert [event.delay for event in seen] == [2.0, 0.5]
    assert now() == pytest.approx(2.5)


@FORMS
async def test_a_response_hint_over_the_limit_ends_retrying(call: Call) -> None:
    """A response's hint over max_delay: the response at once, reason retry_after."""
    calls: list[float] = []

    async def busy(request: str) -> int:
        calls.append(now())
        return 429

    retry = Retry(
        on=ConnectionError,
        max_attempts=5,
        max_delay=30,
        on_result=lambda status: status == 429,
        retry_after=lambda response: 3600,
    )
    with capture_events(RetryStopped) as stopped:
        assert await call(retry, busy, "GET /") == 429
    assert calls == [0]
    assert stopped == [
        RetryStopped(
            layer="retry",
            attempts=1,
            reason="retry_after",
            error=None,
            delay=3600.0,
            remaining=None,
        )
    ]


@FORMS
async def test_a_bad_response_hint_is_a_callback_error(call: Call) -> None:
    """A response's hint that is not a number: CallbackError naming its type."""

    async def busy(request: str) -> int:
        return 503

    retry = Retry(
        on=ConnectionError,
        max_attempts=3,
        on_result=lambda status: True,
        retry_after=lambda response: "later",  # type: ignore[arg-type,return-value]
    )
    with pytest.raises(layers.CallbackError) as info:
        await call(retry, busy, "GET /")
    assert str(info.value) == (
        "Retry 'retry': the delay hint (retry_after=) for int must be a number of "
        "seconds or None, got 'later'"
    )
    assert info.value.__cause__ is None


@FORMS
async def test_testing_mode_caps_attempts_and_skips_waits(call: Call) -> None:
    """retry_testing(max_attempts=2): two attempts, no wait, in both forms."""
    flaky = Flaky(10)
    retry = Retry(on=ConnectionError, max_attempts=5, backoff=ConstantBackoff(60))
    with retry_testing(max_attempts=2), pytest.raises(ConnectionError):
        await call(retry, flaky, "x")
    assert flaky.starts == [0, 0]


@FORMS
async def test_cancellation_in_an_attempt_is_not_retried(call: Call) -> None:
    """Cancelled while an attempt runs: it propagates, nothing retries after."""
    flaky = Flaky(0, duration=10)
    retry = Retry(on=Exception, max_attempts=5, backoff=[0])
    with anyio.move_on_after(1) as scope:
        await call(retry, flaky, "x")
    assert scope.cancelled_caught
    await anyio.sleep(100)
    assert flaky.starts == [0]
    assert layers.current_attempt() == 1


@FORMS
async def test_cancellation_in_the_wait_is_not_retried(call: Call) -> None:
    """Cancelled while waiting between attempts: no new attempt, it propagates."""
    flaky = Flaky(5)
    retry = Retry(on=ConnectionError, max_attempts=5, backoff=ConstantBackoff(10))
    with anyio.move_on_after(3) as scope:
        await call(retry, flaky, "x")
    assert scope.cancelled_caught
    assert now() == pytest.approx(3)
    await anyio.sleep(100)
    assert flaky.starts == [0]


@FORMS
async def test_cancellation_in_a_retried_attempt(call: Call) -> None:
    """Cancelled in attempt 2: the attempt number is reset, nothing retries."""
    flaky = Flaky(1, duration=1)
    retry = Retry(on=ConnectionError, max_attempts=5, backoff=[0.5])
    with anyio.move_on_after(2) as scope:
        await call(retry, flaky, "x")
    assert scope.cancelled_caught
    assert flaky.attempts == [1, 2]
    assert layers.current_attempt() == 1
    await anyio.sleep(100)
    assert len(flaky.starts) == 2


@FORMS
async def test_base_exceptions_are_never_retried(call: Call) -> None:
    """A BaseException that is not an Exception passes, whatever on says."""

    class Stop(BaseException):
        pass

    flaky = Flaky(5, error=Stop)  # type: ignore[arg-type]
    retry = Retry(on=lambda error: True, max_attempts=5)
    with pytest.raises(Stop):
        await call(retry, flaky, "x")
    assert len(flaky.starts) == 1


# ------------------------------------------------------------------ the block only


async def test_the_block_sees_its_attempt() -> None:
    """Attempt.number, Attempt.delay and current_attempt() inside the block."""
    seen: list[tuple[int, float, int]] = []
    retry = Retry(on=ConnectionError, max_attempts=3, backoff=[0.5, 1.5])
    async for attempt in retry.attempts():
        with attempt:
            seen.append((attempt.number, attempt.delay, layers.current_attempt()))
            if attempt.number < 3:
                raise ConnectionError
    assert seen == [(1, 0.0, 1), (2, 0.5, 2), (3, 1.5, 3)]
    assert layers.current_attempt() == 1
    assert repr(attempt) == "<Attempt number=3 delay=1.5>"


async def test_a_clean_exit_ends_the_loop() -> None:
    """A block that succeeds is run once; the loop ends with no checkpoint."""
    runs = 0
    retry = Retry(on=ConnectionError, max_attempts=3)
    with anyio.CancelScope() as scope:
        scope.cancel()
        async for attempt in retry:
            with attempt:
                runs += 1
    assert runs == 1
    assert not scope.cancelled_caught  # neither the first attempt nor the end waits


async def test_each_loop_is_a_new_sequence_of_attempts() -> None:
    """Two loops over one Retry each start at attempt 1 and share its budget."""
    budget = layers.RetryBudget()
    retry = Retry(on=ConnectionError, max_attempts=2, backoff=[0], budget=budget)
    numbers: list[list[int]] = []
    for _ in range(2):
        numbers.append([])
        async for attempt in retry:
            with attempt:
                numbers[-1].append(attempt.number)
                if attempt.number == 1:
                    raise ConnectionError
    assert numbers == [[1, 2], [1, 2]]
    stats = budget.statistics()
    assert (stats.deposits, stats.retries) == (2, 2)


async def test_the_budget_is_shared_with_the_service_form() -> None:
    """A service and a block of one Retry draw on one budget."""
    retry = Retry(
        on=ConnectionError,
        max_attempts=2,
        backoff=[0],
        budget=layers.RetryBudget(ttl=1, min_per_second=1, ratio=0),
    )
    assert await retry.layer(Flaky(1))("a") == "a"  # takes the one retry there is
    flaky = Flaky(1)
    with capture_events(RetryStopped) as stopped, pytest.raises(ConnectionError):
        await through_block(retry, flaky, "b")
    assert len(flaky.starts) == 1
    assert stopped[0].reason == "budget"

    # and the other way round, from a builder's layer
    builder = layers.ServiceBuilder().retry(
        on=ConnectionError,
        max_attempts=2,
        backoff=[0],
        budget=layers.RetryBudget(ttl=1, min_per_second=1, ratio=0),
    )
    (layer,) = builder.layers
    assert isinstance(layer, Retry)
    assert await through_block(layer, Flaky(1), "a") == "a"
    with pytest.raises(ConnectionError):
        await builder.service(Flaky(1))("b")


async def test_breaking_out_early_leaves_nothing_behind() -> None:
    """A break after a failure: no more attempts, no task, no attempt number."""
    flaky = Flaky(5)
    retry = Retry(on=ConnectionError, max_attempts=5, backoff=[1])
    async for attempt in retry:
        with attempt:
            await flaky("x")
        break
    assert layers.current_attempt() == 1
    await anyio.sleep(100)
    assert flaky.starts == [0]
    # the Retry is as good as new
    assert await through_block(retry, Flaky(1), "y") == "y"


async def test_a_retry_inside_the_block_counts_its_own_attempts() -> None:
    """A service Retry in attempt 2 of a block: its first attempt is 1."""
    seen: list[tuple[int, int]] = []
    failures = iter([True, True, True, False])

    async def service(request: int) -> int:
        seen.append((request, layers.current_attempt()))
        if next(failures):
            raise ConnectionError
        return request

    inner = Retry(on=ConnectionError, max_attempts=2, backoff=[0]).layer(service)
    outer = Retry(on=ConnectionError, max_attempts=2, backoff=[0])
    async for attempt in outer:
        with attempt:
            assert await inner(attempt.number) == 2
    assert seen == [(1, 1), (1, 2), (2, 1), (2, 2)]


async def test_an_attempt_never_entered_is_an_error() -> None:
    """An iteration that never enters `with attempt:` fails on the next one."""
    retry = Retry(on=ConnectionError, max_attempts=3, name="db")
    iterations = 0

    async def skip_the_block() -> None:
        nonlocal iterations
        async for _attempt in retry:
            iterations += 1

    with pytest.raises(RuntimeError) as info:
        await skip_the_block()
    assert iterations == 1
    assert str(info.value) == (
        "Retry 'db': attempt 1 was never entered: write `with attempt:` around the "
        "block in each iteration of `async for attempt in retry`"
    )


async def test_an_attempt_is_entered_once() -> None:
    """Entering an attempt twice is an error; so is a result outside the block."""
    retry = Retry(on=ConnectionError, max_attempts=3)
    async for attempt in retry:
        with attempt:
            pass
        with (
            pytest.raises(RuntimeError, match="attempt 1 was already entered"),
            attempt,
        ):
            pass
        with pytest.raises(RuntimeError, match=r"attempt 1.result\(\) was called"):
            attempt.result(200)


async def test_a_block_with_on_result_and_no_response_is_a_success() -> None:
    """on_result with no response handed over: the clean exit ends the loop."""
    runs = 0
    retry = Retry(on=ConnectionError, max_attempts=3, on_result=lambda r: True)
    async for attempt in retry:
        with attempt:
            runs += 1
    assert runs == 1


async def test_a_response_without_on_result_is_not_looked_at() -> None:
    """attempt.result() with no on_result returns the response; the loop ends."""
    retry = Retry(on=ConnectionError, max_attempts=3)
    async for attempt in retry:
        with attempt:
            response = attempt.result(503)
    assert response == 503
    assert attempt.number == 1


async def test_a_return_keeps_the_response_unjudged() -> None:
    """A return inside the block: that response, no retry begun, no budget spent."""
    budget = layers.RetryBudget()
    retry = Retry(
        on=ConnectionError,
        max_attempts=3,
        backoff=[1],
        budget=budget,
        on_result=lambda status: status >= 500,
    )

    async def get() -> int:
        async for attempt in retry:
            with attempt:
                return attempt.result(503)
        raise AssertionError("unreachable")

    with capture_events() as seen:
        assert await get() == 503
    assert seen == []
    assert budget.statistics().retries == 0
    assert now() == 0


async def test_the_last_error_propagates_from_the_block_itself() -> None:
    """Giving up: the error leaves the block; code after `with` does not run."""
    after: list[int] = []
    retry = Retry(on=ConnectionError, max_attempts=2, backoff=[0])

    async def fail() -> None:
        async for attempt in retry:
            with attempt:
                raise ConnectionError(attempt.number)
            after.append(attempt.number)  # runs after a retried failure only

    with pytest.raises(ConnectionError) as info:
        await fail()
    assert after == [1]
    assert info.value.args == (2,)


def test_prepare_is_refused_for_a_block() -> None:
    """A block has no request for prepare to rebuild: a ConfigurationError."""
    retry = Retry(
        on=ConnectionError, max_attempts=3, prepare=lambda request, attempt: request
    )
    with pytest.raises(layers.ConfigurationError) as info:
        retry.attempts()
    message = str(info.value)
    assert message.startswith("Retry 'retry': attempts() with prepare=<function")
    assert "a retried block has no request for prepare to rebuild" in message
    with pytest.raises(layers.ConfigurationError):
        retry.__aiter__()


@pytest.mark.parametrize("anyio_backend", [virtual_time_backend("trio")], ids=["trio"])
async def test_a_wait_that_ends_late_raises_the_last_error() -> None:
    """A wait that ends past the deadline: the loop raises the last error."""
    import trio.lowlevel
    import trio.testing

    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    start = now()
    flaky = Flaky(5)
    retry = Retry(
        on=ConnectionError, max_attempts=5, backoff=ConstantBackoff(1), budget=None
    )

    async def oversleep() -> None:
        await anyio.sleep(0.5)  # the loop is in its 1 s wait, 4 s before the limit
        clock.jump(10)

    token = DEADLINE.set(start + 5)  # as an outer Timeout records it
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(oversleep)
            with (
                capture_events(RetryStopped) as stopped,
                pytest.raises(ConnectionError) as info,
            ):
                await through_block(retry, flaky, "x")
    finally:
        DEADLINE.reset(token)
    assert info.value is flaky.raised[0]
    assert flaky.starts == [start]
    assert stopped[0].reason == "deadline"
    assert info.value.__notes__ == [
        "retry 'retry' gave up after 1 attempt: the deadline leaves no time for "
        "another attempt"
    ]


async def test_many_blocks_at_once() -> None:
    """Fifty concurrent blocks of one Retry each retry on their own."""
    retry = Retry(on=ConnectionError, max_attempts=3, backoff=[0.1], budget=None)
    results: list[Any] = []

    async def one(index: int) -> None:
        results.append(await through_block(retry, Flaky(2), index))

    async with anyio.create_task_group() as group:
        for index in range(50):
            group.start_soon(one, index)
    assert sorted(results) == list(range(50))
    assert now() == pytest.approx(0.2)


def test_attempt_is_public() -> None:
    """layers.Attempt is the class the loop yields, with a docstring."""
    assert Attempt.__module__ == "layers"
    assert Attempt.__doc__
