"""Tests of the CircuitBreaker layer: windows, trips, half-open probes, states."""

from __future__ import annotations

import math
from typing import Any

import anyio
import attrs
import pytest

import layers
from layers import CircuitState
from layers.testing import MockService, capture_events

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """The failure the test services raise."""


class Benign(Exception):
    """An exception that is not a failure in some tests."""


async def service(request: str) -> str:
    """Answers by request: 'ok', 'fail', 'benign', 'slow' (5 s), 'slowfail', 'hang'."""
    if request in ("slow", "slowfail"):
        await anyio.sleep(5)
    elif request == "hang":
        await anyio.sleep(math.inf)
    if request in ("fail", "slowfail"):
        raise Boom(request)
    if request == "benign":
        raise Benign(request)
    return request


async def call(svc: layers.Service[str, str], request: str) -> str:
    """Call *svc*; return the response or the exception's class name."""
    try:
        return await svc(request)
    except layers.CircuitOpen:
        return "rejected"
    except Exception as error:
        return type(error).__name__


async def run(svc: layers.Service[str, str], *requests: str) -> list[str]:
    """Call *svc* with each request in turn."""
    return [await call(svc, request) for request in requests]


def make(**options: Any) -> tuple[layers.CircuitBreaker, layers.Service[str, str]]:
    """A breaker with test-friendly defaults, and the service it guards."""
    defaults: dict[str, Any] = {
        "window_size": 4,
        "min_calls": 4,
        "open_duration": 10,
        "probes": 2,
    }
    breaker = layers.CircuitBreaker(**{**defaults, **options})
    return breaker, breaker.layer(service)


# ----------------------------------------------------------------- closed


_WINDOW_OPTIONS = pytest.mark.parametrize(
    "options",
    [
        {},
        {"window_type": "time", "window_size": 60},
        {"slow_call_duration": 5},
        {"window_type": "time", "window_size": 60, "slow_call_duration": 5},
        {"on_result": lambda response: response == "bad"},
    ],
    ids=["count", "time", "count+slow", "time+slow", "on_result"],
)


@_WINDOW_OPTIONS
async def test_success_path_adds_no_checkpoint(options: dict[str, Any]) -> None:
    """A closed breaker's call does not yield: it completes in a cancelled scope."""
    breaker, svc = make(**options)
    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await svc("ok") == "ok"
    assert not scope.cancelled_caught
    assert breaker.statistics().calls == 1


async def fails_while_cancelled(request: str) -> str:
    """A call whose child task fails while the call is being cancelled.

    On trio it ends with a group of the cancellation and the KeyError.
    """
    async with anyio.create_task_group() as group:
        group.start_soon(anyio.sleep_forever)
        try:
            await anyio.sleep_forever()
        finally:
            raise KeyError(request)
    raise AssertionError


@_WINDOW_OPTIONS
async def test_a_failure_raised_while_cancelled_is_counted(
    options: dict[str, Any],
) -> None:
    """An error that ends a cancelled call counts as a failure on both backends."""
    breaker = layers.CircuitBreaker(**{"min_calls": 4, **options})
    svc = breaker.layer(fails_while_cancelled)
    with pytest.raises((KeyError, ExceptionGroup)), anyio.move_on_after(1):
        await svc("x")
    stats = breaker.statistics()
    assert (stats.calls, stats.failed_calls) == (1, 1)


async def test_a_probe_failing_while_cancelled_reopens_the_breaker() -> None:
    """A half-open probe that fails while cancelled is a failed probe, not freed."""
    breaker, svc = make(probes=1)
    await run(svc, *["fail"] * 4)
    await anyio.sleep(10)  # open -> half-open at the next call
    probe = breaker.layer(fails_while_cancelled)
    with pytest.raises((KeyError, ExceptionGroup)), anyio.move_on_after(1):
        await probe("x")
    assert breaker.state is CircuitState.OPEN
    assert breaker.statistics().trips == 2


async def test_successes_pass_through_and_are_counted() -> None:
    """A closed breaker returns responses and counts them in its window."""
    breaker, svc = make()
    assert await run(svc, "ok", "ok", "ok") == ["ok", "ok", "ok"]
    stats = breaker.statistics()
    assert stats.state is CircuitState.CLOSED
    assert (stats.calls, stats.failed_calls) == (3, 0)
    assert stats.failure_rate is None  # below min_calls


async def test_inner_exception_passes_through_unchanged() -> None:
    """The inner service's exception is re-raised as it is, traceback kept."""
    error = Boom("original")

    async def failing(request: str) -> str:
        raise error

    svc = layers.CircuitBreaker().layer(failing)
    with pytest.raises(Boom) as info:
        await svc("x")
    assert info.value is error
    assert info.traceback[-1].name == "failing"


async def test_count_window_trips_at_the_failure_rate() -> None:
    """A count window trips once min_calls are in and failures reach the rate."""
    breaker, svc = make(window_size=4, min_calls=4, failure_rate_threshold=0.5)
    assert await run(svc, "fail", "ok", "ok") == ["Boom", "ok", "ok"]
    assert breaker.state is CircuitState.CLOSED
    # 4 calls, 2 failures: 50 % >= 50 %
    assert await run(svc, "fail") == ["Boom"]
    assert breaker.state is CircuitState.OPEN


async def test_count_window_forgets_the_oldest_outcome() -> None:
    """Only the last window_size outcomes count: old failures slide out."""
    breaker, svc = make(window_size=4, min_calls=4, failure_rate_threshold=0.75)
    await run(svc, "fail", "fail", "ok", "ok", "ok")  # the first failure slid out
    stats = breaker.statistics()
    assert (stats.calls, stats.failed_calls) == (4, 1)
    await run(svc, "fail", "fail")  # ok ok fail fail: 50 %
    assert breaker.state is CircuitState.CLOSED
    await run(svc, "fail")  # ok fail fail fail: 75 %
    assert breaker.state is CircuitState.OPEN


async def test_min_calls_holds_back_the_rate() -> None:
    """Below min_calls nothing trips, whatever the failure rate."""
    breaker, svc = make(window_size=10, min_calls=5)
    await run(svc, *["fail"] * 4)
    stats = breaker.statistics()
    assert stats.state is CircuitState.CLOSED
    assert stats.failure_rate is None
    await run(svc, "fail")
    assert breaker.state is CircuitState.OPEN


async def test_a_success_reaching_min_calls_can_trip() -> None:
    """The call that brings the window to min_calls is evaluated, even a success."""
    breaker, svc = make(window_size=4, min_calls=4, failure_rate_threshold=0.5)
    await run(svc, "fail", "fail", "fail")
    assert breaker.state is CircuitState.CLOSED
    await run(svc, "ok")  # 3 of 4 failed
    assert breaker.state is CircuitState.OPEN


@pytest.mark.parametrize("slow", [False, True], ids=["plain", "slow-threshold"])
async def test_time_window_counts_the_last_seconds(slow: bool) -> None:
    """A time window forgets outcomes one bucket at a time as time passes."""
    breaker, svc = make(
        window_type="time",
        window_size=10,
        window_buckets=5,
        min_calls=4,
        failure_rate_threshold=0.5,
        slow_call_duration=100 if slow else None,
    )
    await run(svc, "fail", "fail", "fail")  # t = 0
    await anyio.sleep(8)
    await run(svc, "ok")  # t = 8: 3 failures of 4 -> trip? rate 75 %
    assert breaker.state is CircuitState.OPEN
    breaker.reset()
    await run(svc, "fail", "fail", "fail")  # t = 8
    await anyio.sleep(10)  # t = 18: bucket [8, 10) has left the window
    assert breaker.statistics().calls == 0
    await run(svc, "ok", "ok", "ok", "fail")
    stats = breaker.statistics()
    assert (stats.calls, stats.failed_calls) == (4, 1)
    assert breaker.state is CircuitState.CLOSED


async def test_time_window_min_calls_counts_only_the_window() -> None:
    """Outcomes that left the time window do not count toward min_calls."""
    breaker, svc = make(
        window_type="time", window_size=4, window_buckets=4, min_calls=3
    )
    await run(svc, "fail", "fail")
    await anyio.sleep(4)  # both left the window
    await run(svc, "fail", "fail")
    assert breaker.state is CircuitState.CLOSED
    await run(svc, "fail")
    assert breaker.state is CircuitState.OPEN


async def test_time_window_success_fast_path_still_reaches_minimum() -> None:
    """In a time window, many successes after a failure trip only at the rate."""
    breaker, svc = make(
        window_type="time",
        window_size=60,
        min_calls=3,
        failure_rate_threshold=0.3,
    )
    await run(svc, "fail", "ok", "ok")  # 1/3 >= 0.3 once the third call is in
    assert breaker.state is CircuitState.OPEN
    breaker.reset()
    await run(svc, "ok", "ok", "ok", "ok", "fail")  # 1/5 < 0.3
    await run(svc, *["ok"] * 20)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics().failed_calls == 1


async def test_consecutive_failures_trip_on_their_own() -> None:
    """consecutive_failures trips after a run of failures, below min_calls."""
    breaker, svc = make(window_size=100, min_calls=100, consecutive_failures=3)
    await run(svc, "fail", "fail", "ok", "fail", "fail")
    assert breaker.statistics().consecutive_failures == 2
    assert breaker.state is CircuitState.CLOSED
    await run(svc, "fail")
    stats = breaker.statistics()
    assert stats.state is CircuitState.OPEN


async def test_ignored_calls_do_not_break_a_run_of_failures() -> None:
    """An ignored exception neither counts nor resets the failure run."""
    breaker, svc = make(
        window_size=100, min_calls=100, consecutive_failures=2, ignore=Benign
    )
    await run(svc, "fail", "benign", "benign")
    assert breaker.statistics().calls == 1
    await run(svc, "fail")
    assert breaker.state is CircuitState.OPEN


@pytest.mark.parametrize("window_type", ["count", "time"])
async def test_slow_calls_trip_at_the_slow_call_rate(window_type: str) -> None:
    """Calls slower than slow_call_duration trip at slow_call_rate_threshold."""
    breaker, svc = make(
        window_type=window_type,
        window_size=4 if window_type == "count" else 60,
        slow_call_duration=2,
        slow_call_rate_threshold=0.5,
    )
    await run(svc, "ok", "slow", "ok")
    stats = breaker.statistics()
    assert (stats.calls, stats.slow_calls, stats.failed_calls) == (3, 1, 0)
    await run(svc, "slowfail")  # slow and failed: counts for both rates
    stats = breaker.statistics()
    assert stats.state is CircuitState.OPEN
    assert (stats.slow_calls, stats.failed_calls) == (2, 1)
    assert stats.slow_call_rate == 0.5


async def test_calls_just_under_the_slow_threshold_are_not_slow() -> None:
    """A call taking less than slow_call_duration is not slow; one taking it is."""
    breaker = layers.CircuitBreaker(window_size=4, slow_call_duration=5)

    async def sleeper(duration: float) -> float:
        await anyio.sleep(duration)
        return duration

    svc = breaker.layer(sleeper)
    await svc(4.999)
    assert breaker.statistics().slow_calls == 0
    await svc(5)
    assert breaker.statistics().slow_calls == 1


# ----------------------------------------------------------- what counts


@pytest.mark.parametrize(
    ("on", "ignore", "expected"),
    [
        (Exception, (), {"fail": 1, "benign": 1}),
        (Boom, (), {"fail": 1, "benign": 0}),
        ((Boom, KeyError), (), {"fail": 1, "benign": 0}),
        (lambda e: isinstance(e, Benign), (), {"fail": 0, "benign": 1}),
        (Exception, Benign, {"fail": 1, "benign": None}),
        (Exception, (Benign, Boom), {"fail": None, "benign": None}),
    ],
    ids=["all", "type", "tuple", "predicate", "ignore", "ignore-tuple"],
)
async def test_what_counts_as_a_failure(
    on: Any, ignore: Any, expected: dict[str, int | None]
) -> None:
    """`on` picks failures (others succeed); `ignore` keeps calls out."""
    for request, failures in expected.items():
        breaker, svc = make(on=on, ignore=ignore)
        await run(svc, request)
        stats = breaker.statistics()
        if failures is None:
            assert stats.calls == 0, request
        else:
            assert (stats.calls, stats.failed_calls) == (1, failures), request


async def test_failure_response_counts_a_response_as_a_failure() -> None:
    """on_result marks responses as failures; they are still returned."""
    breaker = layers.CircuitBreaker(
        window_size=2, on_result=lambda response: response["status"] >= 500
    )

    async def http(request: int) -> dict[str, int]:
        return {"status": request}

    svc = breaker.layer(http)
    assert await svc(503) == {"status": 503}
    assert await svc(200) == {"status": 200}
    stats = breaker.statistics()
    assert (stats.calls, stats.failed_calls) == (2, 1)
    assert breaker.state is CircuitState.OPEN  # 50 % of 2


async def test_cancelled_closed_call_is_not_counted() -> None:
    """A call cancelled while it waits records nothing and leaves the breaker usable."""
    breaker, svc = make()
    with anyio.move_on_after(1) as scope:
        await svc("hang")
    assert scope.cancelled_caught
    assert breaker.statistics().calls == 0
    assert await svc("ok") == "ok"


# ------------------------------------------------------------------- open


async def test_open_rejects_at_once_with_retry_after() -> None:
    """Open: CircuitOpen without calling the inner, retry_after = time to half-open."""
    mock = MockService[str, str]().respond_always("ok")
    breaker = layers.CircuitBreaker(name="db", open_duration=30)
    svc = breaker.layer(mock)
    breaker.reset()
    await anyio.sleep(1)
    for _ in range(100):
        mock.fail(Boom)
    for _ in range(100):
        await call(svc, "x")
    assert breaker.state is CircuitState.OPEN
    assert mock.calls == 100
    await anyio.sleep(12)
    with pytest.raises(layers.CircuitOpen) as info:
        await svc("x")
    assert mock.calls == 100
    assert info.value.retry_after == pytest.approx(18)
    assert info.value.layer == "db"
    assert str(info.value) == "circuit breaker 'db' is open"
    assert isinstance(info.value, layers.Rejected)
    assert breaker.statistics().rejected == 1
    assert breaker.statistics().retry_after == pytest.approx(18)


async def test_open_half_opens_lazily_after_the_open_duration() -> None:
    """After open_duration the next call is a probe; the state changes only then."""
    breaker, svc = make(open_duration=10)
    await run(svc, *["fail"] * 4)
    await anyio.sleep(10)
    assert breaker.state is CircuitState.OPEN  # no timer moved it
    assert await run(svc, "ok") == ["ok"]
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.statistics().probes_recorded == 1


async def test_late_outcomes_of_calls_admitted_before_opening_are_recorded() -> None:
    """Calls in flight when the breaker opens still record, without tripping again."""
    breaker, svc = make(window_size=10, min_calls=4, probes=1)
    with capture_events(layers.events.CircuitOpened) as opened:
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(call, svc, "slowfail")  # done at t=5
            await anyio.sleep(1)
            await run(svc, "fail", "fail", "fail", "fail")  # trips at t=1
            assert breaker.state is CircuitState.OPEN
    stats = breaker.statistics()
    assert stats.state is CircuitState.OPEN
    assert (stats.calls, stats.failed_calls) == (7, 7)
    assert len(opened) == 1


async def test_outcomes_from_before_half_open_do_not_count_as_probes() -> None:
    """A call admitted while closed and ending in half-open leaves the trial alone."""
    breaker, svc = make(open_duration=10, probes=1, consecutive_failures=1)

    async def slow_ok(request: str) -> str:
        await anyio.sleep(30)
        return request

    slow_svc = breaker.layer(slow_ok)
    async with anyio.create_task_group() as group:
        group.start_soon(slow_svc, "x")  # admitted closed, ends at t=30
        await anyio.sleep(1)
        await run(svc, "fail")  # trips at t=1
        await anyio.sleep(10)  # t = 11
        group.start_soon(call, svc, "hang")  # the probe, which never ends
        await anyio.sleep(25)  # t = 36: slow_ok ended at t=30 (a success)
        assert breaker.state is CircuitState.HALF_OPEN
        stats = breaker.statistics()
        assert stats.probes_recorded == 0
        assert stats.probes_in_flight == 1
        assert stats.calls == 0
        group.cancel_scope.cancel()


# -------------------------------------------------------------- half-open


async def test_half_open_closes_when_the_probes_succeed() -> None:
    """All N probes under the threshold close the breaker with a fresh window."""
    breaker, svc = make(probes=3, failure_rate_threshold=0.5)
    await run(svc, *["fail"] * 4)
    await anyio.sleep(10)
    with capture_events(layers.events.CircuitStateChanged) as seen:
        assert await run(svc, "ok", "fail", "ok") == ["ok", "Boom", "ok"]
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics().calls == 0
    assert [(e.event, e.reason) for e in seen] == [
        ("circuit_half_opened", "open_duration_elapsed"),
        ("circuit_closed", "probes_succeeded"),
    ]


async def test_half_open_reopens_when_the_probes_fail() -> None:
    """Probes at the failure rate open the breaker again."""
    breaker, svc = make(probes=2, failure_rate_threshold=0.5)
    await run(svc, *["fail"] * 4)
    await anyio.sleep(10)
    await run(svc, "ok", "fail")
    stats = breaker.statistics()
    assert stats.state is CircuitState.OPEN
    assert stats.retry_after == pytest.approx(10)


async def test_half_open_reopens_on_slow_probes() -> None:
    """Probes at the slow-call rate open the breaker again."""
    breaker, svc = make(probes=2, slow_call_duration=1, slow_call_rate_threshold=0.5)
    await run(svc, *["fail"] * 4)
    await anyio.sleep(10)
    await run(svc, "ok", "slow")
    assert breaker.state is CircuitState.OPEN


@pytest.mark.parametrize("probes", [1, 5])
async def test_thousand_concurrent_calls_in_half_open_let_exactly_n_through(
    probes: int,
) -> None:
    """1,000 concurrent calls while half-open: exactly N reach the service."""
    mock = MockService[str, str]()
    breaker = layers.CircuitBreaker(
        window_size=1, min_calls=1, open_duration=5, probes=probes
    )
    svc = breaker.layer(mock)
    breaker.force_open()
    breaker.reset()
    mock.fail(Boom)
    await call(svc, "trip")
    assert breaker.state is CircuitState.OPEN
    await anyio.sleep(5)
    outcomes: list[str] = []

    async def one() -> None:
        outcomes.append(await call(svc, "x"))

    async with anyio.create_task_group() as group:
        for _ in range(1000):
            group.start_soon(one)
        await anyio.sleep(1)  # every call has been admitted or rejected
        assert mock.calls == 1 + probes
        assert outcomes.count("rejected") == 1000 - probes
        stats = breaker.statistics()
        assert stats.probes_in_flight == probes
        for _ in range(probes):
            (await mock.next_call()).respond("ok")
    assert outcomes.count("ok") == probes
    assert breaker.state is CircuitState.CLOSED


async def test_half_open_rejection_has_no_retry_after() -> None:
    """While the probes run, rejections carry retry_after=None."""
    _, svc = make(probes=1)
    await run(svc, *["fail"] * 4)
    await anyio.sleep(10)
    async with anyio.create_task_group() as group:
        group.start_soon(call, svc, "hang")
        await anyio.sleep(1)
        with pytest.raises(layers.CircuitOpen) as info:
            await svc("ok")
        assert info.value.retry_after is None
        assert "half-open" in str(info.value)
        group.cancel_scope.cancel()


async def test_cancelled_probe_frees_its_slot() -> None:
    """A probe cancelled while it waits frees its slot for the next call."""
    breaker, svc = make(probes=1)
    await run(svc, *["fail"] * 4)
    await anyio.sleep(10)
    with anyio.move_on_after(3):
        await svc("hang")
    stats = breaker.statistics()
    assert stats.state is CircuitState.HALF_OPEN
    assert (stats.probes_in_flight, stats.probes_recorded) == (0, 0)
    assert await run(svc, "ok") == ["ok"]
    assert breaker.state is CircuitState.CLOSED


async def test_probe_cancelled_by_a_task_group_frees_its_slot() -> None:
    """Probes cancelled with their task group (no result) all free their slots."""
    breaker, svc = make(probes=3)
    await run(svc, *["fail"] * 4)
    await anyio.sleep(10)
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(svc, "hang")
        await anyio.sleep(1)
        assert breaker.statistics().probes_in_flight == 3
        group.cancel_scope.cancel()
    assert breaker.statistics().probes_in_flight == 0
    assert await run(svc, "ok", "ok", "ok") == ["ok", "ok", "ok"]
    assert breaker.state is CircuitState.CLOSED


async def test_probe_timed_out_outside_frees_its_slot() -> None:
    """A Timeout outside the breaker cancels the probe: slot freed, not counted."""
    breaker = layers.CircuitBreaker(
        window_size=1, min_calls=1, open_duration=10, probes=1
    )
    svc = layers.ServiceBuilder().timeout(2).layer(breaker).service(service)
    await run(svc, "fail")
    await anyio.sleep(10)
    assert await run(svc, "hang") == ["Elapsed"]
    stats = breaker.statistics()
    assert stats.state is CircuitState.HALF_OPEN
    assert stats.probes_in_flight == 0
    assert await run(svc, "ok") == ["ok"]
    assert breaker.state is CircuitState.CLOSED


async def test_probe_timed_out_inside_counts_as_a_failure() -> None:
    """A Timeout inside the breaker raises Elapsed: a failed probe, slot used."""
    breaker = layers.CircuitBreaker(
        window_size=1, min_calls=1, open_duration=10, probes=1
    )
    svc = layers.ServiceBuilder().layer(breaker).timeout(2).service(service)
    await run(svc, "fail")
    await anyio.sleep(10)
    assert await run(svc, "hang") == ["Elapsed"]
    assert breaker.state is CircuitState.OPEN


async def test_ignored_probe_frees_its_slot() -> None:
    """A probe whose exception is ignored does not count and frees its slot."""
    breaker, svc = make(probes=1, ignore=Benign)
    await run(svc, *["fail"] * 4)
    await anyio.sleep(10)
    assert await run(svc, "benign") == ["Benign"]
    assert breaker.state is CircuitState.HALF_OPEN
    assert await run(svc, "ok") == ["ok"]
    assert breaker.state is CircuitState.CLOSED


async def test_max_half_open_duration_reopens_a_stalled_trial() -> None:
    """A trial without a verdict by max_half_open_duration opens the breaker again."""
    breaker, svc = make(probes=1, max_half_open_duration=20, open_duration=10)
    await run(svc, *["fail"] * 4)  # open until t=10
    await anyio.sleep(10)
    async with anyio.create_task_group() as group:
        group.start_soon(call, svc, "hang")  # the probe, from t=10
        await anyio.sleep(25)  # t = 35: the trial expired at t=30
        with pytest.raises(layers.CircuitOpen) as info:
            await svc("ok")
        # open again from t=30 for 10 s: 5 s left
        assert info.value.retry_after == pytest.approx(5)
        assert breaker.state is CircuitState.OPEN
        group.cancel_scope.cancel()
    # the stalled probe's cancellation did not disturb the new state
    assert breaker.state is CircuitState.OPEN
    await anyio.sleep(5)
    assert await run(svc, "ok") == ["ok"]  # a new trial's probe
    assert breaker.state is CircuitState.CLOSED


async def test_late_probe_outcome_after_expiry_is_dropped() -> None:
    """A probe ending after its trial expired is not counted in a newer trial."""
    breaker, svc = make(probes=1, max_half_open_duration=5, open_duration=10)

    async def slow(request: str) -> str:
        await anyio.sleep(float(request))
        return request

    slow_svc = breaker.layer(slow)
    await run(svc, *["fail"] * 4)
    await anyio.sleep(10)  # t = 10
    async with anyio.create_task_group() as group:
        group.start_soon(slow_svc, "30")  # probe of the first trial, ends at t=40
        await anyio.sleep(27)  # t = 37: expired at 15, open until 25, now probe #2
        group.start_soon(call, svc, "hang")
        await anyio.sleep(1)
        assert breaker.statistics().probes_in_flight == 1
        await anyio.sleep(3)  # t = 41: the old probe succeeded at 40: dropped
        stats = breaker.statistics()
        assert stats.state is CircuitState.HALF_OPEN
        assert stats.probes_in_flight == 1
        assert stats.probes_recorded == 0
        group.cancel_scope.cancel()


# ------------------------------------------------------ open-duration growth


async def test_open_duration_grows_on_repeated_trips_up_to_the_cap() -> None:
    """Each trip in a row multiplies the open duration, up to max_open_duration."""
    breaker, svc = make(
        probes=1,
        open_duration=10,
        open_duration_growth=2,
        max_open_duration=35,
    )
    durations: list[float] = []
    next_durations: list[float] = []
    with capture_events(layers.events.CircuitOpened) as opened:
        await run(svc, *["fail"] * 4)
        for _ in range(4):
            retry_after = breaker.statistics().retry_after
            assert retry_after is not None
            durations.append(retry_after)
            next_durations.append(breaker.statistics().open_duration)
            await anyio.sleep(retry_after)
            await run(svc, "fail")  # the probe fails: open again
    assert durations == [10, 20, 35, 35]
    assert next_durations == [20, 35, 35, 35]  # while open: the next trip's
    assert [e.open_duration for e in opened] == [10, 20, 35, 35, 35]
    assert breaker.statistics().trips == 5


async def test_open_duration_stays_at_the_cap_after_many_trips() -> None:
    """After thousands of trips the open duration is the cap (no float overflow)."""
    breaker, svc = make(
        probes=1,
        open_duration=1.0,
        open_duration_growth=2.0,  # a float: 2.0 ** 1100 overflows, 2 ** 1100 not
        max_open_duration=5,
    )
    await run(svc, *["fail"] * 4)
    for _ in range(1100):  # 2.0 ** 1100 is past the largest float
        retry_after = breaker.statistics().retry_after
        assert retry_after is not None
        await anyio.sleep(retry_after)
        await run(svc, "fail")  # the probe fails: open again
    statistics = breaker.statistics()
    assert statistics.trips == 1101
    assert statistics.retry_after == 5
    assert statistics.open_duration == 5


async def test_open_duration_resets_after_a_healthy_period() -> None:
    """Closed for healthy_duration, the next trip starts from open_duration again."""
    breaker, svc = make(
        probes=1,
        open_duration=10,
        open_duration_growth=3,
        healthy_duration=60,
    )

    async def trip_and_recover(healthy: float) -> float:
        await run(svc, *["fail"] * 4)
        retry_after = breaker.statistics().retry_after
        assert retry_after is not None
        await anyio.sleep(retry_after)
        await run(svc, "ok")  # closes
        assert breaker.state is CircuitState.CLOSED
        await anyio.sleep(healthy)
        return retry_after

    assert await trip_and_recover(10) == 10
    assert await trip_and_recover(59) == 30  # not healthy long enough
    assert await trip_and_recover(60) == 90
    assert breaker.statistics().open_duration == 10
    assert await trip_and_recover(0) == 10


# ---------------------------------------------------------- manual states


async def test_force_open_rejects_everything_without_retry_after() -> None:
    """force_open rejects every call with retry_after=None until reset."""
    mock = MockService[str, str]().respond_always("ok")
    breaker = layers.CircuitBreaker(name="db")
    svc = breaker.layer(mock)
    breaker.force_open()
    await anyio.sleep(3600)
    with pytest.raises(layers.CircuitOpen) as info:
        await svc("x")
    assert info.value.retry_after is None
    assert str(info.value) == "circuit breaker 'db' is forced open"
    assert mock.calls == 0
    assert breaker.state is CircuitState.FORCED_OPEN
    breaker.reset()
    assert await svc("x") == "ok"


@pytest.mark.parametrize("method", ["force_closed", "disable"])
async def test_force_closed_lets_everything_through_and_records_nothing(
    method: str,
) -> None:
    """force_closed / disable: every call goes through, nothing is recorded."""
    breaker, svc = make()
    getattr(breaker, method)()
    assert breaker.state is CircuitState.DISABLED
    assert await run(svc, *["fail"] * 10, "ok") == ["Boom"] * 10 + ["ok"]
    stats = breaker.statistics()
    assert stats.state is CircuitState.DISABLED
    assert stats.calls == 0


async def test_metrics_only_records_and_reports_but_never_rejects() -> None:
    """metrics_only: outcomes counted, a would-trip event emitted, nothing rejected."""
    breaker, svc = make(name="shadow")
    breaker.metrics_only()
    with capture_events(layers.events.CircuitThresholdExceeded) as exceeded:
        results = await run(svc, *["fail"] * 10)
    assert results == ["Boom"] * 10
    stats = breaker.statistics()
    assert stats.state is CircuitState.METRICS_ONLY
    assert (stats.calls, stats.failed_calls, stats.failure_rate) == (4, 4, 1.0)
    assert exceeded == [
        layers.events.CircuitThresholdExceeded(
            layer="shadow",
            reason="failure_rate",
            failure_rate=1.0,
            slow_call_rate=0.0,
        )
    ]
    with capture_events(layers.events.CircuitThresholdExceeded) as exceeded:
        await run(svc, "ok", "ok", "ok", "fail", "fail", "fail")
    assert len(exceeded) == 1  # reported again after it stopped holding


async def test_reset_clears_window_and_growth() -> None:
    """reset() closes the breaker with an empty window and no trips in a row."""
    breaker, svc = make(open_duration_growth=2)
    await run(svc, *["fail"] * 4)
    breaker.reset()
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.trips) == (CircuitState.CLOSED, 0, 0)
    assert stats.open_duration == 10
    assert await run(svc, "ok") == ["ok"]


async def test_reset_drops_outcomes_of_calls_from_before() -> None:
    """Calls in flight across a reset do not count toward the new window."""
    breaker, svc = make()
    async with anyio.create_task_group() as group:
        group.start_soon(call, svc, "slowfail")
        await anyio.sleep(1)
        breaker.reset()
    assert breaker.statistics().calls == 0


@pytest.mark.parametrize(
    ("method", "state"),
    [
        ("force_open", CircuitState.FORCED_OPEN),
        ("force_closed", CircuitState.DISABLED),
        ("disable", CircuitState.DISABLED),
        ("metrics_only", CircuitState.METRICS_ONLY),
    ],
)
async def test_a_manual_state_set_again_is_not_a_transition(
    method: str, state: CircuitState
) -> None:
    """Setting a manual state again emits nothing and changes nothing."""
    breaker, _ = make(name="api")
    with capture_events(layers.events.CircuitStateChanged) as seen:
        getattr(breaker, method)()
        await anyio.sleep(5)
        before = breaker.statistics()
        getattr(breaker, method)()
        getattr(breaker, method)()
    assert [(e.from_state, e.to_state) for e in seen] == [("closed", state.value)]
    after = breaker.statistics()
    assert after == before  # same state, same generation, same time in state
    assert after.time_in_state == pytest.approx(5)


async def test_force_closed_then_disable_is_one_transition() -> None:
    """disable() after force_closed() (both DISABLED) is not a second transition."""
    breaker, _ = make()
    with capture_events(layers.events.CircuitStateChanged) as seen:
        breaker.force_closed()
        breaker.disable()
    assert [e.to_state for e in seen] == ["disabled"]


@_WINDOW_OPTIONS
async def test_metrics_only_again_keeps_the_window(options: dict[str, Any]) -> None:
    """A second metrics_only() keeps the window and the would-trip report."""
    breaker, svc = make(name="shadow", **options)
    breaker.metrics_only()
    with capture_events() as seen:
        await run(svc, *["fail"] * 3)  # below min_calls: no verdict yet
        breaker.metrics_only()
        await run(svc, "fail")  # the fourth failure in the window
        stats = breaker.statistics()
        breaker.metrics_only()
        await run(svc, "fail")  # the threshold still holds: not reported again
    assert stats.state is CircuitState.METRICS_ONLY
    assert (stats.calls, stats.failed_calls) == (4, 4)
    assert [type(e).__name__ for e in seen] == ["CircuitThresholdExceeded"]


@_WINDOW_OPTIONS
async def test_reset_of_a_closed_breaker_empties_the_window_silently(
    options: dict[str, Any],
) -> None:
    """reset() when closed: a fresh window and no trips in a row, but no event."""
    breaker, svc = make(open_duration_growth=2, probes=1, **options)
    await run(svc, *["fail"] * 4)  # trips
    await anyio.sleep(10)
    await run(svc, "ok")  # the probe closes it; one trip in a row remembered
    await run(svc, "fail", "fail", "ok")
    closed = breaker.statistics()
    assert (closed.state, closed.trips, closed.calls) == (CircuitState.CLOSED, 1, 3)
    assert closed.open_duration == 20
    with capture_events() as seen:
        breaker.reset()
    assert seen == []
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.trips) == (CircuitState.CLOSED, 0, 0)
    assert stats.open_duration == 10
    assert stats.generation == closed.generation  # no state change
    assert stats.time_in_state == closed.time_in_state
    # the calls after the reset count in the new window, on every success path
    assert await run(svc, "ok", "ok", "fail") == ["ok", "ok", "Boom"]
    assert (breaker.statistics().calls, breaker.statistics().failed_calls) == (3, 1)


async def test_reset_from_another_state_is_one_transition() -> None:
    """reset() from a manual or automatic state emits one CircuitClosed."""
    breaker, _ = make()
    with capture_events(layers.events.CircuitStateChanged) as seen:
        breaker.force_open()
        breaker.reset()
        breaker.reset()
    assert [(e.from_state, e.to_state, e.reason) for e in seen] == [
        ("closed", "forced_open", "force_open"),
        ("forced_open", "closed", "reset"),
    ]


def test_manual_transitions_work_outside_an_event_loop() -> None:
    """Manual calls and statistics() work outside a loop (time in state unknown)."""
    breaker = layers.CircuitBreaker()
    breaker.force_open()
    stats = breaker.statistics()
    assert stats.state is CircuitState.FORCED_OPEN
    assert stats.time_in_state is None
    breaker.reset()
    assert breaker.state is CircuitState.CLOSED


# ------------------------------------------------------- sharing, builder


async def test_one_breaker_guards_several_services() -> None:
    """Two services built from one breaker share its state."""
    breaker = layers.CircuitBreaker(window_size=2, min_calls=2)

    async def a(request: str) -> str:
        raise Boom

    async def b(request: str) -> str:
        return request

    svc_a, svc_b = breaker.layer(a), breaker.layer(b)
    await run(svc_a, "x", "x")
    with pytest.raises(layers.CircuitOpen):
        await svc_b("x")


async def test_builder_makes_a_breaker_from_options_and_layer_shares_one() -> None:
    """.circuit_breaker(**options) makes one now; .layer(breaker) adds a given one."""
    breaker = layers.CircuitBreaker(window_size=1, min_calls=1)
    builder = layers.ServiceBuilder().layer(breaker)
    assert builder.layers == (breaker,)
    made = layers.ServiceBuilder().circuit_breaker(
        name="api", window_size=1, min_calls=1
    )
    (layer,) = made.layers
    assert isinstance(layer, layers.CircuitBreaker)
    assert layer.name == "api"
    one, two = made.service(service), made.service(service)
    await run(one, "fail")
    assert await run(two, "ok") == ["rejected"]


def test_builder_refuses_bad_arguments() -> None:
    """.circuit_breaker takes options only (a breaker goes to .layer), valid ones."""
    with pytest.raises(TypeError, match="positional"):
        layers.ServiceBuilder().circuit_breaker(  # type: ignore[call-arg]
            layers.CircuitBreaker()
        )
    with pytest.raises(layers.ConfigurationError, match="failure_rate_threshold"):
        layers.ServiceBuilder().circuit_breaker(failure_rate_threshold=2)


# ------------------------------------------------------- events, statistics


async def test_events_on_every_transition_and_rejection() -> None:
    """Each transition and each rejection emits an event with the breaker's name."""
    breaker, svc = make(name="api", probes=1)
    with capture_events() as seen:
        await run(svc, *["fail"] * 4)
        await run(svc, "ok")  # rejected
        await anyio.sleep(10)
        await run(svc, "ok")  # probe: closes
        breaker.force_open()
        breaker.metrics_only()
        breaker.force_closed()
        breaker.reset()
    names = [(type(e).__name__, getattr(e, "to_state", None)) for e in seen]
    assert names == [
        ("CircuitOpened", "open"),
        ("CircuitCallRejected", None),
        ("CircuitHalfOpened", "half_open"),
        ("CircuitClosed", "closed"),
        ("CircuitStateChanged", "forced_open"),
        ("CircuitStateChanged", "metrics_only"),
        ("CircuitStateChanged", "disabled"),
        ("CircuitClosed", "closed"),
    ]
    assert all(e.layer == "api" for e in seen)
    opened = seen[0]
    assert isinstance(opened, layers.events.CircuitOpened)
    assert (opened.reason, opened.failure_rate, opened.open_duration) == (
        "failure_rate",
        1.0,
        10,
    )
    assert opened.level == "warning"
    rejected = seen[1]
    assert isinstance(rejected, layers.events.CircuitCallRejected)
    assert rejected.retry_after == pytest.approx(10)
    assert rejected.state == "open"


async def test_statistics_is_a_frozen_snapshot() -> None:
    """statistics() returns a frozen object that later calls do not change."""
    breaker, svc = make()
    await run(svc, "ok", "fail")
    await anyio.sleep(2)
    stats = breaker.statistics()
    await run(svc, "fail", "fail")
    assert (stats.calls, stats.failed_calls, stats.state) == (
        2,
        1,
        CircuitState.CLOSED,
    )
    assert stats.time_in_state is None  # closed since it was made: unknown
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.calls = 3  # type: ignore[misc]
    later = breaker.statistics()
    assert later.state is CircuitState.OPEN
    assert later.time_in_state == 0
    assert later.generation == stats.generation + 1
    await anyio.sleep(3)
    assert breaker.statistics().time_in_state == pytest.approx(3)


def test_breaker_is_compared_by_identity() -> None:
    """Two breakers with the same options are two states, never equal."""
    assert layers.CircuitBreaker() != layers.CircuitBreaker()
    breaker = layers.CircuitBreaker()
    assert {breaker: 1}[breaker] == 1
    assert "failure_rate_threshold=0.5" in repr(breaker)


# ----------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"failure_rate_threshold": 0},
            "CircuitBreaker(failure_rate_threshold=0): failure_rate_threshold must "
            "be a rate in (0, 1], e.g. 0.5, got 0",
        ),
        ({"failure_rate_threshold": 1.5}, "must be a rate in (0, 1]"),
        ({"failure_rate_threshold": math.nan}, "must be a rate in (0, 1]"),
        ({"slow_call_rate_threshold": -0.1}, "slow_call_rate_threshold must be"),
        ({"slow_call_rate_threshold": True}, "slow_call_rate_threshold must be"),
        (
            {"window_size": 0},
            "CircuitBreaker(window_size=0): window_size must be an integer >= 1 "
            "(calls) for a count window, got 0",
        ),
        ({"window_size": 2.5}, "an integer >= 1 (calls) for a count window"),
        (
            {"window_type": "time", "window_size": 0},
            "window_size must be a finite number of seconds > 0 for a time window",
        ),
        ({"window_type": "time", "window_size": math.inf}, "for a time window"),
        ({"window_type": "sliding"}, "window_type must be 'count' or 'time'"),
        ({"window_buckets": 0}, "window_buckets must be an integer >= 1, got 0"),
        ({"min_calls": 0}, "min_calls must be an integer >= 1, got 0"),
        (
            {"window_size": 10, "min_calls": 11},
            "min_calls must be <= window_size (10) for a count window",
        ),
        ({"open_duration": -1}, "open_duration must be a finite number of seconds > 0"),
        ({"open_duration": 0}, "open_duration must be a finite number of seconds > 0"),
        ({"slow_call_duration": -5}, "slow_call_duration must be a finite number"),
        ({"max_open_duration": -1}, "max_open_duration must be a finite number"),
        (
            {"open_duration": 10, "max_open_duration": 5},
            "max_open_duration must be >= open_duration (10), got 5",
        ),
        ({"healthy_duration": 0}, "healthy_duration must be a finite number"),
        ({"max_half_open_duration": -1}, "max_half_open_duration must be"),
        (
            {"open_duration_growth": 0.5},
            "open_duration_growth must be a finite number >= 1",
        ),
        ({"probes": 0}, "probes must be an integer >= 1, got 0"),
        ({"consecutive_failures": 0}, "consecutive_failures must be an integer >= 1"),
        ({"on": int}, "on must be an Exception subclass, a tuple of them"),
        ({"on": (Boom, "x")}, "on must be an Exception subclass, a tuple of them"),
        ({"on": 3}, "on must be an Exception subclass, a tuple of them"),
        ({"on": ()}, "on must be an Exception subclass, a tuple of them"),
        ({"on": KeyboardInterrupt}, "BaseExceptions are never counted), got"),
        ({"on": (Boom, SystemExit)}, "on must be an Exception subclass"),
        ({"ignore": [Boom]}, "ignore must be an Exception subclass or a tuple"),
        ({"ignore": KeyboardInterrupt}, "ignore must be an Exception subclass"),
        ({"on_result": 1}, "on_result must be None or a callable"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_bad_configuration_fails_at_construction(
    options: dict[str, Any], message: str
) -> None:
    """An invalid option raises ConfigurationError naming it, its value, the rule."""
    with pytest.raises(layers.ConfigurationError) as info:
        layers.CircuitBreaker(**options)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_good_edge_configuration_is_accepted() -> None:
    """Rates of exactly 1, one-call windows and tuples of exceptions are fine."""
    breaker = layers.CircuitBreaker(
        failure_rate_threshold=1,
        slow_call_rate_threshold=1.0,
        window_size=1,
        on=(Boom, KeyError),
        ignore=(),
        open_duration=0.001,
    )
    assert breaker.statistics().open_duration == 0.001
