"""The default structlog sink: every event's level, name, kind and fields."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import structlog
import structlog.testing

import layers
from layers import events

pytestmark = pytest.mark.anyio

SECRET = "Bearer hunter2"


@pytest.fixture(autouse=True)
def logging_on() -> Iterator[None]:
    """Each test runs with the default sink only, and restores the sinks."""
    saved = events.STATE.sinks
    events.STATE.sinks = ()
    events.set_logging(True)
    yield
    events.STATE.sinks = saved


# Every built-in event, its level in production, and its kind.
EVENTS: list[tuple[events.Event, str, str]] = [
    (events.TimeoutElapsed(layer="l", timeout=1.0), "warning", "timeout"),
    (
        layers.RetryAttemptFailed(layer="l", attempt=1, delay=0.5, error="OSError"),
        "info",
        "retry",
    ),
    (
        layers.RetriesExhausted(layer="l", attempts=3, reason="attempts", error=None),
        "warning",
        "retry",
    ),
    (
        layers.RetryBudgetExhausted(layer="l", attempts=2, error="OSError"),
        "warning",
        "retry",
    ),
    (
        layers.RetryDeadlineReached(
            layer="l", attempts=2, remaining=0.1, delay=0.2, error=None
        ),
        "warning",
        "retry",
    ),
    (
        layers.RateLimitRejected(
            layer="l", retry_after=1.0, cost=1.0, reason="limited"
        ),
        "warning",
        "rate_limit",
    ),
    (layers.RateLimitWaited(layer="l", waited=0.5, cost=1.0), "debug", "rate_limit"),
    (
        layers.ConcurrencyLimitRejected(
            layer="l", reason="queue_full", max_in_flight=2, waiting=0
        ),
        "warning",
        "concurrency_limit",
    ),
    (
        layers.CircuitOpened(
            layer="l",
            from_state="closed",
            to_state="open",
            reason="failure_rate",
            open_duration=10.0,
            failure_rate=1.0,
            slow_call_rate=None,
        ),
        "warning",
        "circuit_breaker",
    ),
    (
        layers.CircuitHalfOpened(
            layer="l",
            from_state="open",
            to_state="half_open",
            reason="open_duration_elapsed",
            probes=1,
        ),
        "warning",
        "circuit_breaker",
    ),
    (
        layers.CircuitClosed(
            layer="l",
            from_state="half_open",
            to_state="closed",
            reason="probes_succeeded",
        ),
        "info",
        "circuit_breaker",
    ),
    (
        layers.CircuitStateChanged(
            layer="l", from_state="closed", to_state="forced_open", reason="force_open"
        ),
        "info",
        "circuit_breaker",
    ),
    (
        layers.CircuitCallRejected(layer="l", state="open", retry_after=3.0),
        "debug",
        "circuit_breaker",
    ),
    (
        layers.CircuitThresholdExceeded(
            layer="l", reason="failure_rate", failure_rate=0.9, slow_call_rate=None
        ),
        "warning",
        "circuit_breaker",
    ),
    (layers.DrainStarted(layer="l", in_flight=2), "info", "drain"),
    (layers.DrainRejected(layer="l", in_flight=2), "info", "drain"),
    (
        layers.ShutdownStarted(
            layer="l", reason="signal SIGTERM", running=3, grace=30.0
        ),
        "warning",
        "supervisor",
    ),
    (
        layers.ShutdownCompleted(
            layer="l", finished=2, failed=0, cancelled=1, forced=False
        ),
        "info",
        "supervisor",
    ),
]


@pytest.mark.parametrize(
    ("event", "level", "kind"), EVENTS, ids=[type(e).__name__ for e, _, _ in EVENTS]
)
def test_every_event_is_logged_with_level_kind_and_fields(
    event: events.Event, level: str, kind: str
) -> None:
    """Each built-in event logs at its production level with name, kind, fields."""
    with structlog.testing.capture_logs() as logs:
        events.emit(event)
    assert logs == [
        {"event": event.event, "log_level": level, "layer_kind": kind, **event.fields()}
    ]
    assert logs[0]["layer"] == "l"


def test_every_event_class_is_covered() -> None:
    """The table above lists every exported event class."""
    exported = {
        obj
        for name in layers.__all__
        if isinstance(obj := getattr(layers, name), type)
        and issubclass(obj, events.Event)
        and obj is not events.Event
    }
    assert exported == {type(e) for e, _, _ in EVENTS}


async def test_a_success_is_never_logged() -> None:
    """Successful calls through every layer log nothing."""

    async def ok(request: str) -> str:
        return request

    svc = (
        layers.ServiceBuilder()
        .timeout(5)
        .retry(on=OSError, attempts=3)
        .rate_limit(100, burst=10)
        .concurrency_limit(4)
        .circuit_breaker(consecutive_failures=3)
        .service(ok)
    )
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            assert await svc(SECRET) == SECRET
    assert logs == []


async def test_breaker_opening_is_a_warning_closing_info_retry_info() -> None:
    """A retried failure logs info; the trip logs a warning; recovery logs info."""
    fail = True

    async def downstream(request: str) -> str:
        if fail:
            raise OSError(f"refused {request}")
        return request

    breaker = layers.CircuitBreaker(
        name="db", consecutive_failures=2, open_duration=10, half_open_calls=1
    )
    svc = (
        layers.ServiceBuilder()
        .retry(on=OSError, attempts=2, backoff=[0.1], name="db-retry", budget=None)
        .circuit_breaker(breaker)
        .service(downstream)
    )
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(OSError, match="refused"):
            await svc(SECRET)
        await anyio.sleep(10)
        fail = False
        assert await svc(SECRET) == SECRET
    levels = [(log["event"], log["log_level"], log["layer"]) for log in logs]
    assert levels == [
        ("retry_attempt_failed", "info", "db-retry"),
        ("circuit_opened", "warning", "db"),
        ("retries_exhausted", "warning", "db-retry"),
        ("circuit_half_opened", "warning", "db"),
        ("circuit_closed", "info", "db"),
    ]
    assert logs[0]["error"] == "OSError"
    for log in logs:
        assert SECRET not in repr(log)
        assert "refused" not in repr(log)


def test_logs_route_through_stdlib_logging(caplog: pytest.LogCaptureFixture) -> None:
    """Configured for the standard library, events reach logging.getLogger('layers')."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.processors.KeyValueRenderer(key_order=["event", "layer"]),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    try:
        with caplog.at_level(logging.INFO, logger="layers"):
            events.emit(events.TimeoutElapsed(layer="api", timeout=0.5))
            events.emit(layers.RateLimitWaited(layer="api", waited=0.1, cost=1.0))
    finally:
        structlog.reset_defaults()
    records: list[Any] = [r for r in caplog.records if r.name == "layers"]
    assert len(records) == 1  # the debug event is filtered by the stdlib level
    assert records[0].levelno == logging.WARNING
    assert records[0].getMessage() == (
        "event='elapsed' layer='api' layer_kind='timeout' timeout=0.5 level='warning'"
    )
