"""Logging: events reach stdlib ``logging`` (logger ``layers``), or structlog.

With no configuration, nothing reaches standard output and nothing below
WARNING reaches anything; an application that configures ``logging`` or
structlog gets every event with its fields.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import attrs
import pytest
import structlog
import structlog.testing

import layers
from layers import events

pytestmark = pytest.mark.anyio

SECRET = "Bearer hunter2"


@pytest.fixture(autouse=True)
def logging_on() -> Iterator[None]:
    """Each test runs with the default sink only and structlog unconfigured."""
    saved = events.STATE.sinks
    configured, config = structlog.is_configured(), structlog.get_config()
    events.STATE.sinks = ()
    events.set_logging(True)
    structlog.reset_defaults()
    yield
    events.STATE.sinks = saved
    if configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()


@pytest.fixture
def layers_logger() -> Iterator[logging.Logger]:
    """The ``layers`` logger, its level and handlers restored afterwards."""
    logger = logging.getLogger("layers")
    level, handlers, propagate = logger.level, logger.handlers[:], logger.propagate
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers
    logger.propagate = propagate


# Every built-in event, its level in production, and its kind.
EVENTS: list[tuple[events.Event, str, str]] = [
    (events.TimeoutElapsed(layer="l", timeout=1.0), "warning", "timeout"),
    (
        events.RetryAttemptFailed(layer="l", attempt=1, delay=0.5, error="OSError"),
        "info",
        "retry",
    ),
    (
        events.RetryStopped(
            layer="l",
            attempts=2,
            reason="deadline",
            error=None,
            delay=0.2,
            remaining=0.1,
        ),
        "warning",
        "retry",
    ),
    (
        events.RateLimitRejected(
            layer="l", retry_after=1.0, cost=1.0, reason="limited"
        ),
        "warning",
        "rate_limit",
    ),
    (
        events.RateLimitWaited(layer="l", waited=0.5, cost=1.0),
        "debug",
        "rate_limit",
    ),
    (
        events.ConcurrencyLimitRejected(
            layer="l", reason="queue_full", max_in_flight=2, waiting=0
        ),
        "warning",
        "concurrency_limit",
    ),
    (
        events.CircuitOpened(
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
        events.CircuitHalfOpened(
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
        events.CircuitClosed(
            layer="l",
            from_state="half_open",
            to_state="closed",
            reason="probes_succeeded",
        ),
        "info",
        "circuit_breaker",
    ),
    (
        events.CircuitStateChanged(
            layer="l", from_state="closed", to_state="forced_open", reason="force_open"
        ),
        "info",
        "circuit_breaker",
    ),
    (
        events.CircuitCallRejected(layer="l", state="open", retry_after=3.0),
        "debug",
        "circuit_breaker",
    ),
    (
        events.CircuitThresholdExceeded(
            layer="l", reason="failure_rate", failure_rate=0.9, slow_call_rate=None
        ),
        "warning",
        "circuit_breaker",
    ),
    (events.DrainStarted(layer="l", in_flight=2), "info", "drain"),
    (events.DrainRejected(layer="l", in_flight=2), "info", "drain"),
    (
        events.ShutdownStarted(
            layer="l", reason="signal SIGTERM", running=3, grace=30.0
        ),
        "warning",
        "supervisor",
    ),
    (
        events.ShutdownCompleted(
            layer="l", finished=2, failed=0, cancelled=1, forced=False
        ),
        "info",
        "supervisor",
    ),
    (
        events.PerKeyRejected(layer="l", max_keys=3, retry_after=2.0),
        "warning",
        "per_key",
    ),
    (
        events.StoreFailed(
            layer="l", store="layers", policy="closed", error="ConnectionError"
        ),
        "warning",
        "store",
    ),
    (
        events.StoreRecovered(layer="l", store="layers", down_for=1.5, fallbacks=4),
        "info",
        "store",
    ),
    (
        events.FallbackUsed(layer="l", reason="error", error="OSError"),
        "warning",
        "fallback",
    ),
    (events.HedgeSent(layer="l", attempt=2, after=0.05), "info", "hedge"),
    (events.HedgeWon(layer="l", attempt=2, copies=2), "info", "hedge"),
    (events.HedgeRefused(layer="l", reason="budget"), "info", "hedge"),
    (events.CoalesceAbandoned(layer="l", callers=3), "info", "coalesce"),
    (
        events.AdaptiveThrottleRejected(layer="l", reject_probability=0.5),
        "warning",
        "adaptive_throttle",
    ),
    (events.CoalesceBypassed(layer="l", max_keys=10), "info", "coalesce"),
    (
        events.FaultInjected(layer="l", fault="latency", error=None, delay=0.5),
        "info",
        "fault_injection",
    ),
    (
        events.LimitChanged(
            layer="l", layer_kind="rate_limit", parameter="rate", old=10, new=20
        ),
        "info",
        "rate_limit",
    ),
]


LEVELNO = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records of the ``layers`` logger that caplog captured."""
    return [r for r in caplog.records if r.name == "layers"]


@pytest.mark.parametrize(
    ("event", "level", "kind"), EVENTS, ids=[type(e).__name__ for e, _, _ in EVENTS]
)
def test_every_event_is_a_stdlib_record_with_level_kind_and_fields(
    event: events.Event, level: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each built-in event is a ``layers`` record at its level, fields attached."""
    with caplog.at_level(logging.DEBUG, logger="layers"):
        events.emit(event)
    [record] = records(caplog)
    assert record.levelno == LEVELNO[level]
    assert record.__dict__["event"] == event.event
    assert record.__dict__["layer_kind"] == kind
    for key, value in event.fields().items():
        assert record.__dict__[key] == value
    message = record.getMessage()
    assert message.startswith(f"{event.event} layer=l layer_kind={kind} ")
    for key in event.fields():
        assert f" {key}=" in message


@pytest.mark.parametrize(
    ("event", "level", "kind"), EVENTS, ids=[type(e).__name__ for e, _, _ in EVENTS]
)
def test_every_event_reaches_a_configured_structlog_with_its_fields(
    event: events.Event, level: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With structlog configured, each event goes to structlog, not to logging."""
    with (
        caplog.at_level(logging.DEBUG, logger="layers"),
        structlog.testing.capture_logs() as logs,
    ):
        events.emit(event)
    assert logs == [
        {"event": event.event, "log_level": level, "layer_kind": kind, **event.fields()}
    ]
    assert records(caplog) == []


def test_every_event_class_is_covered() -> None:
    """The table above lists every event class of events."""
    exported = {
        obj
        for name in events.__all__
        if isinstance(obj := getattr(events, name), type)
        and issubclass(obj, events.Event)
        and obj is not events.Event
    }
    assert exported == {type(e) for e, _, _ in EVENTS}


def test_the_message_reads_as_key_value_pairs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The message is the event name, then layer, layer_kind and the fields."""
    with caplog.at_level(logging.DEBUG, logger="layers"):
        events.emit(events.TimeoutElapsed(layer="api", timeout=0.5))
        events.emit(
            events.ShutdownStarted(
                layer="sup", reason="signal SIGTERM", running=3, grace=30.0
            )
        )
        events.emit(
            events.RetryStopped(
                layer="r",
                attempts=3,
                reason="max_attempts",
                error=None,
                delay=None,
                remaining=None,
            )
        )
    assert [r.getMessage() for r in records(caplog)] == [
        "elapsed layer=api layer_kind=timeout timeout=0.5",
        "shutdown_started layer=sup layer_kind=supervisor reason='signal SIGTERM' "
        "running=3 grace=30.0",
        "retry_stopped layer=r layer_kind=retry attempts=3 reason=max_attempts "
        "error=None delay=None remaining=None",
    ]


def test_a_field_named_like_a_record_attribute_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A custom event's field that a LogRecord already has is renamed, not lost."""

    @attrs.frozen(kw_only=True)
    class Custom(events.Event):
        event = "custom_thing"
        name: str
        message: str

    with caplog.at_level(logging.INFO, logger="layers"):
        events.emit(Custom(layer="c", name="n", message="m"))
    [record] = records(caplog)
    assert record.name == "layers"
    assert record.__dict__["layers_name"] == "n"
    assert record.__dict__["layers_message"] == "m"
    assert (
        record.getMessage() == "custom_thing layer=c layer_kind=custom name=n message=m"
    )


def test_below_the_logger_level_nothing_is_logged_and_nothing_built(
    caplog: pytest.LogCaptureFixture, layers_logger: logging.Logger
) -> None:
    """Debug events are dropped at INFO; above every level, nobody listens."""
    with caplog.at_level(logging.INFO, logger="layers"):
        events.emit(events.RateLimitWaited(layer="api", waited=0.1, cost=1.0))
        events.emit(events.TimeoutElapsed(layer="api", timeout=0.5))
        assert events.STATE.sinks
    assert [r.getMessage().split()[0] for r in records(caplog)] == ["elapsed"]
    layers_logger.setLevel(logging.CRITICAL)
    assert not events.STATE.sinks  # layers test this before they build an event
    layers_logger.setLevel(logging.NOTSET)
    assert events.STATE.sinks


def test_logging_disable_silences_the_sink() -> None:
    """logging.disable() above every event level means nobody listens."""
    logging.disable(logging.CRITICAL)
    try:
        assert not events.STATE.sinks
    finally:
        logging.disable(logging.NOTSET)
    assert events.STATE.sinks


def test_a_configured_structlog_always_listens(layers_logger: logging.Logger) -> None:
    """With structlog configured, its own configuration filters: events are built."""
    layers_logger.setLevel(logging.CRITICAL)
    assert not events.STATE.sinks
    structlog.configure(processors=[structlog.processors.KeyValueRenderer()])
    assert events.STATE.sinks


def test_a_user_sink_always_listens(layers_logger: logging.Logger) -> None:
    """A sink added by the application makes STATE.sinks truthy at any log level."""
    layers_logger.setLevel(logging.CRITICAL)
    received: list[events.Event] = []
    remove = layers.add_sink(received.append)
    assert events.STATE.sinks
    events.emit(events.TimeoutElapsed(layer="api", timeout=0.5))
    assert len(received) == 1
    remove()
    assert not events.STATE.sinks


def test_a_custom_error_level_event_keeps_the_sink_listening(
    layers_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """A custom event at "error" is logged while the logger is at ERROR."""

    @attrs.frozen(kw_only=True)
    class Broken(events.Event):
        event = "broken"
        level = "error"

    layers_logger.setLevel(logging.ERROR)
    assert events.STATE.sinks
    with caplog.at_level(logging.ERROR, logger="layers"):
        events.emit(Broken(layer="b"))
    assert [r.levelno for r in records(caplog)] == [logging.ERROR]


async def test_a_success_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Successful calls through every layer log nothing."""

    async def ok(request: str) -> str:
        return request

    svc = (
        layers.ServiceBuilder()
        .timeout(5)
        .retry(on=OSError, max_attempts=3)
        .rate_limit(100, burst=10)
        .concurrency_limit(4)
        .circuit_breaker(consecutive_failures=3)
        .service(ok)
    )
    with caplog.at_level(logging.DEBUG, logger="layers"):
        for _ in range(5):
            assert await svc(SECRET) == SECRET
    assert records(caplog) == []


async def test_breaker_opening_is_a_warning_closing_info_retry_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A retried failure logs info; the trip logs a warning; recovery logs info."""
    fail = True

    async def downstream(request: str) -> str:
        if fail:
            raise OSError(f"refused {request}")
        return request

    breaker = layers.CircuitBreaker(
        name="db", consecutive_failures=2, open_duration=10, probes=1
    )
    svc = (
        layers.ServiceBuilder()
        .retry(on=OSError, max_attempts=2, backoff=[0.1], name="db-retry", budget=None)
        .layer(breaker)
        .service(downstream)
    )
    with caplog.at_level(logging.DEBUG, logger="layers"):
        with pytest.raises(OSError, match="refused"):
            await svc(SECRET)
        await anyio.sleep(10)
        fail = False
        assert await svc(SECRET) == SECRET
    logs = records(caplog)
    levels = [(r.__dict__["event"], r.levelname, r.__dict__["layer"]) for r in logs]
    assert levels == [
        ("retry_attempt_failed", "INFO", "db-retry"),
        ("circuit_opened", "WARNING", "db"),
        ("retry_stopped", "WARNING", "db-retry"),
        ("circuit_half_opened", "WARNING", "db"),
        ("circuit_closed", "INFO", "db"),
    ]
    assert logs[0].__dict__["error"] == "OSError"
    for record in logs:
        assert SECRET not in repr(record.__dict__)
        assert "refused" not in repr(record.__dict__)


async def test_error_fields_show_public_names(caplog: pytest.LogCaptureFixture) -> None:
    """A layers exception in an event's ``error`` is ``layers.Elapsed``, not private."""

    async def slow(request: str) -> str:
        await anyio.sleep(10)
        return request

    svc = (
        layers.ServiceBuilder()
        .retry(on=layers.Elapsed, max_attempts=2, backoff=[0.1], name="r", budget=None)
        .timeout(1, name="t")
        .service(slow)
    )
    with caplog.at_level(logging.INFO, logger="layers"), pytest.raises(layers.Elapsed):
        await svc("x")
    errors = [r.__dict__["error"] for r in records(caplog) if "error" in r.__dict__]
    assert errors == ["layers.Elapsed", "layers.Elapsed"]
    assert "layers._" not in caplog.text


def test_structlog_routed_through_stdlib_reaches_the_layers_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Configured for the standard library, structlog hands events to 'layers'."""
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
    with caplog.at_level(logging.INFO, logger="layers"):
        events.emit(events.TimeoutElapsed(layer="api", timeout=0.5))
        events.emit(events.RateLimitWaited(layer="api", waited=0.1, cost=1.0))
    [record] = records(caplog)  # the debug event is filtered by the stdlib level
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "event='elapsed' layer='api' layer_kind='timeout' timeout=0.5 level='warning'"
    )


def test_structlog_processor_formatter_gets_the_fields_of_stdlib_records() -> None:
    """With ProcessorFormatter and ExtraAdder, structlog renders the fields."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
    )
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(formatter)
    logger = logging.getLogger("layers")
    logger.addHandler(handler)
    try:
        events.emit(events.TimeoutElapsed(layer="api", timeout=0.5))
    finally:
        logger.removeHandler(handler)
    assert [json.loads(line) for line in lines] == [
        {"event": "elapsed", "layer": "api", "layer_kind": "timeout", "timeout": 0.5}
    ]


# A program that retries (info), waits on a rate limit (debug), trips a
# breaker (warning) and is refused by it (debug), configured by argv[1].
PROGRAM = textwrap.dedent(
    """
    import logging
    import sys

    import anyio

    import layers

    if sys.argv[1] == "stdlib":
        logging.basicConfig(level=logging.DEBUG)
    elif sys.argv[1] == "structlog":
        import structlog

        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.JSONRenderer(),
            ],
        )

    async def main() -> None:
        calls = 0

        async def flaky(request: str) -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OSError("refused")
            return request

        retried = layers.ServiceBuilder().retry(
            on=OSError, max_attempts=2, backoff=[0.001], budget=None, name="r"
        ).service(flaky)
        await retried("x")

        limited = layers.RateLimit(50, burst=1, name="q").layer(flaky)
        await limited("x")
        await limited("x")

        async def down(request: str) -> str:
            raise OSError("down")

        broken = layers.ServiceBuilder().circuit_breaker(
            consecutive_failures=1, name="b"
        ).service(down)
        for _ in range(2):
            try:
                await broken("x")
            except (OSError, layers.CircuitOpen):
                pass
        print("done", file=sys.stderr)

    anyio.run(main)
    """
)

DEBUG_INFO_EVENTS = (
    "retry_attempt_failed",
    "rate_limit_waited",
    "circuit_call_rejected",
)


def run_program(mode: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run PROGRAM in a fresh interpreter, configured by *mode*."""
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    result = subprocess.run(
        [sys.executable, str(script), mode],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
        env={"PYTHONPATH": str(Path(layers.__file__).parent.parent), "PATH": ""},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "done"
    return result


@pytest.mark.realtime
def test_unconfigured_program_prints_nothing_below_warning(tmp_path: Path) -> None:
    """No configuration: nothing on stdout; stderr holds only warning events."""
    result = run_program("none", tmp_path)
    assert result.stdout == ""
    lines = result.stderr.splitlines()[:-1]
    # Python's last-resort handler shows warnings (here the breaker's trip),
    # as bare messages.
    [line] = lines
    assert line.startswith(
        "circuit_opened layer=b layer_kind=circuit_breaker from_state=closed "
        "to_state=open reason=consecutive_failures "
    )
    for name in DEBUG_INFO_EVENTS:
        assert name not in result.stderr


@pytest.mark.realtime
def test_program_with_basic_config_shows_every_event(tmp_path: Path) -> None:
    """logging.basicConfig(level=DEBUG): every event on stderr, with its fields."""
    result = run_program("stdlib", tmp_path)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if ":layers:" in line]
    seen = {line.split(":")[2].split()[0]: line.split(":")[0] for line in lines}
    assert seen == {
        "retry_attempt_failed": "INFO",
        "rate_limit_waited": "DEBUG",
        "circuit_opened": "WARNING",
        "circuit_call_rejected": "DEBUG",
    }
    assert (
        "INFO:layers:retry_attempt_failed layer=r layer_kind=retry attempt=1 "
        "delay=0.001 error=OSError"
    ) in lines


@pytest.mark.realtime
def test_program_with_structlog_configured_logs_through_structlog(
    tmp_path: Path,
) -> None:
    """With structlog configured, every event goes through it, as key-value pairs."""
    result = run_program("structlog", tmp_path)
    logs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(log["event"], log["level"]) for log in logs] == [
        ("retry_attempt_failed", "info"),
        ("rate_limit_waited", "debug"),
        ("circuit_opened", "warning"),
        ("circuit_call_rejected", "debug"),
    ]
    assert logs[0] == {
        "event": "retry_attempt_failed",
        "level": "info",
        "layer": "r",
        "layer_kind": "retry",
        "attempt": 1,
        "delay": 0.001,
        "error": "OSError",
    }
    assert result.stderr.splitlines() == ["done"]
