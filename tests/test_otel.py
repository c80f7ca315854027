"""OpenTelemetry metrics: the event sink, the Instrumented layer, the gauges."""

from __future__ import annotations

import contextlib
import gc
import importlib
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from helpers import Maintenance
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import layers
from layers import events
from layers.otel import Instrumented, InstrumentedService, OtelMetrics

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_logging() -> Iterator[None]:
    """Keep structlog's output out; restore the sinks afterwards."""
    saved = events.STATE.sinks
    events.set_logging(False)
    yield
    events.STATE.sinks = saved


@pytest.fixture
def reader() -> InMemoryMetricReader:
    """A fresh in-memory reader."""
    return InMemoryMetricReader()


@pytest.fixture
def metrics(reader: InMemoryMetricReader) -> Iterator[OtelMetrics]:
    """Installed metrics that report to *reader*."""
    m = OtelMetrics(MeterProvider(metric_readers=[reader]))
    m.install()
    yield m
    m.uninstall()


Points = dict[str, list[tuple[dict[str, Any], Any]]]


def read(reader: InMemoryMetricReader) -> Points:
    """Every data point by instrument name: (attributes, value or histogram)."""
    out: Points = {}
    data = reader.get_metrics_data()
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "layers"
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", point)
                    out.setdefault(metric.name, []).append(
                        (dict(point.attributes or {}), value)
                    )
    return out


def value(points: Points, name: str, **attributes: Any) -> Any:
    """The value of the one point of *name* whose attributes include these."""
    wanted = {k.replace("__", "."): v for k, v in attributes.items()}
    found = [
        v
        for attrs, v in points.get(name, [])
        if all(attrs.get(k) == v2 for k, v2 in wanted.items())
    ]
    assert len(found) == 1, (name, wanted, points.get(name))
    return found[0]


async def ok(request: int) -> int:
    """A service that always succeeds."""
    return request


# ------------------------------------------------------------- event counters


async def test_retries_and_events_are_counted(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """Two failed attempts move layers.retries by 2 (with error.type) and events."""
    failures = [ConnectionError("secret payload"), ConnectionError("x")]

    async def flaky(request: int) -> int:
        if failures:
            raise failures.pop()
        return request

    svc = layers.Retry(on=ConnectionError, max_attempts=3, name="api-retry").layer(
        flaky
    )
    assert await svc(7) == 7
    points = read(reader)
    assert (
        value(
            points,
            "layers.retries",
            layers__layer__name="api-retry",
            error__type="ConnectionError",
        )
        == 2
    )
    assert (
        value(
            points,
            "layers.events",
            layers__event__name="retry_attempt_failed",
            layers__layer__kind="retry",
            layers__event__severity="info",
        )
        == 2
    )
    for attrs, _ in points["layers.events"]:
        assert "secret" not in repr(attrs)


async def test_retry_stops_are_counted_by_reason(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """layers.retry.stops counts the calls Retry gave up on, by reason and error."""

    async def down(request: int) -> int:
        raise ConnectionError("secret payload")

    svc = layers.Retry(on=ConnectionError, max_attempts=2, backoff=[0], name="r")
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await svc.layer(down)(1)
    budget = layers.RetryBudget(min_per_second=0, ratio=0)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await layers.Retry(
                on=ConnectionError, max_attempts=3, budget=budget, name="r"
            ).layer(down)(1)
    points = read(reader)
    stops = "layers.retry.stops"
    common = {"layers__layer__name": "r", "error__type": "ConnectionError"}
    assert value(points, stops, layers__retry__reason="max_attempts", **common) == 2
    assert value(points, stops, layers__retry__reason="budget", **common) == 3
    assert value(points, "layers.events", layers__event__name="retry_stopped") == 5
    for attrs, _ in points[stops]:
        assert "secret" not in repr(attrs)


async def test_rate_limit_rejections_by_reason(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """A rate limit in reject mode counts layers.rejections with reason limited."""
    svc = layers.RateLimit(1, 10, mode="reject", name="quota").layer(ok)
    await svc(1)
    for _ in range(3):
        with pytest.raises(layers.RateLimited):
            await svc(2)
    points = read(reader)
    assert (
        value(
            points,
            "layers.rejections",
            layers__layer__name="quota",
            layers__layer__kind="rate_limit",
            layers__rejection__reason="limited",
        )
        == 3
    )


async def test_concurrency_rejections_and_gauges(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """A full limit counts queue_full rejections; its gauges show occupancy."""
    limit = layers.ConcurrencyLimit(1, max_waiting=1, name="pool")
    metrics.observe(limit)
    release = anyio.Event()

    async def held(request: int) -> int:
        await release.wait()
        return request

    svc = limit.layer(held)
    async with anyio.create_task_group() as group:
        group.start_soon(svc, 1)
        group.start_soon(svc, 2)
        await anyio.sleep(1)
        with pytest.raises(layers.Overloaded):
            await svc(3)
        points = read(reader)
        assert value(points, "layers.concurrency_limit.in_flight") == 1
        assert value(points, "layers.concurrency_limit.waiting") == 1
        assert value(points, "layers.concurrency_limit.max_in_flight") == 1
        assert value(points, "layers.concurrency_limit.rejected") == 1
        release.set()
    points = read(reader)
    assert value(points, "layers.concurrency_limit.in_flight") == 0
    assert value(points, "layers.concurrency_limit.waiting") == 0
    assert (
        value(
            points,
            "layers.rejections",
            layers__layer__name="pool",
            layers__rejection__reason="queue_full",
        )
        == 1
    )


async def test_breaker_transitions_rejections_and_state_gauge(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """A breaker's trip, rejections and recovery move the counters and the gauge."""
    breaker = layers.CircuitBreaker(
        name="db", consecutive_failures=2, open_duration=10, probes=1
    )
    metrics.observe(breaker)
    fail = True

    async def downstream(request: int) -> int:
        if fail:
            raise OSError("down")
        return request

    svc = breaker.layer(downstream)

    def state_gauge() -> dict[str, int]:
        return {
            attrs["layers.circuit_breaker.state"]: v
            for attrs, v in read(reader)["layers.circuit_breaker.state"]
        }

    assert state_gauge()["closed"] == 1
    for _ in range(2):
        with pytest.raises(OSError, match="down"):
            await svc(1)
    with pytest.raises(layers.CircuitOpen):
        await svc(1)
    gauge = state_gauge()
    assert gauge["open"] == 1
    assert sum(gauge.values()) == 1
    points = read(reader)
    assert (
        value(
            points,
            "layers.circuit_breaker.transitions",
            layers__circuit_breaker__from_state="closed",
            layers__circuit_breaker__to_state="open",
        )
        == 1
    )
    assert value(points, "layers.rejections", layers__rejection__reason="open") == 1
    await anyio.sleep(10)
    fail = False
    assert await svc(5) == 5
    assert state_gauge()["closed"] == 1
    points = read(reader)
    to_states = {
        attrs["layers.circuit_breaker.to_state"]
        for attrs, _ in points["layers.circuit_breaker.transitions"]
    }
    assert to_states == {"open", "half_open", "closed"}


async def test_a_manual_state_set_again_is_not_counted(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """Same-state manual calls add nothing to the transitions counter."""
    breaker = layers.CircuitBreaker(name="db")
    breaker.force_open()
    breaker.force_open()
    breaker.metrics_only()
    breaker.metrics_only()
    breaker.reset()
    breaker.reset()  # already closed: it empties the window, no transition
    breaker.disable()
    breaker.force_closed()
    counted = {
        (
            attrs["layers.circuit_breaker.from_state"],
            attrs["layers.circuit_breaker.to_state"],
        ): v
        for attrs, v in read(reader)["layers.circuit_breaker.transitions"]
    }
    assert counted == {
        ("closed", "forced_open"): 1,
        ("forced_open", "metrics_only"): 1,
        ("metrics_only", "closed"): 1,
        ("closed", "disabled"): 1,
    }


async def test_timeouts_are_counted(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """A Timeout that expires moves layers.timeouts by one."""

    async def slow(request: int) -> int:
        await anyio.sleep(5)
        return request

    svc = layers.Timeout(1, name="deadline").layer(slow)
    with pytest.raises(layers.Elapsed):
        await svc(1)
    assert value(read(reader), "layers.timeouts", layers__layer__name="deadline") == 1


async def test_fallbacks_and_injected_faults_are_counted(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """A fallback moves layers.fallbacks; an injected fault layers.faults.injected."""

    async def ok(request: int) -> int:
        return request

    svc = (
        layers.ServiceBuilder()
        .fallback(0, on=ConnectionError, name="fb")
        .inject_error(ConnectionError, rate=1.0, name="chaos")
        .service(ok)
    )
    assert await svc(1) == 0
    data = read(reader)
    assert (
        value(
            data,
            "layers.fallbacks",
            layers__layer__name="fb",
            layers__fallback__reason="error",
            error__type="ConnectionError",
        )
        == 1
    )
    assert (
        value(
            data,
            "layers.faults.injected",
            layers__layer__name="chaos",
            layers__fault__kind="error",
            error__type="ConnectionError",
        )
        == 1
    )


async def test_hedges_are_counted(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """Hedges sent and refused move layers.hedges; a win layers.hedge.wins."""
    seen = 0

    async def first_slow(request: int) -> int:
        nonlocal seen
        seen += 1
        await anyio.sleep(5 if seen == 1 else 0.1)
        return seen

    svc = layers.Hedge(delay=1, name="h").layer(first_slow)
    assert await svc(1) == 2
    empty = layers.RetryBudget(min_per_second=0, ratio=0)
    refusing = layers.Hedge(delay=1, budget=empty, name="r").layer(first_slow)
    seen = 0
    assert await refusing(1) == 1
    data = read(reader)
    hedges = "layers.hedges"
    sent = value(data, hedges, layers__layer__name="h", layers__hedge__outcome="sent")
    assert sent == 1
    refused = value(data, hedges, layers__layer__name="r")
    assert refused == 1
    assert value(data, hedges, layers__hedge__outcome="budget") == 1
    assert value(data, "layers.hedge.wins", layers__hedge__attempt=2) == 1


async def test_rate_limit_waiting_gauge(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """The rate limit gauge shows the callers waiting in its queue."""
    limit = layers.RateLimit(1, 10, name="slowly")
    metrics.observe(limit)
    svc = limit.layer(ok)
    await svc(1)
    async with anyio.create_task_group() as group:
        group.start_soon(svc, 2)
        group.start_soon(svc, 3)
        await anyio.sleep(1)
        assert value(read(reader), "layers.rate_limit.waiting") == 2
    assert value(read(reader), "layers.rate_limit.waiting") == 0


# ---------------------------------------------------------------- Instrumented


async def test_instrumented_records_outcomes_and_durations(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """Instrumented counts each outcome with error.type, timed on the loop clock."""

    async def service(request: str) -> str:
        await anyio.sleep(2)
        if request == "fail":
            raise KeyError("secret")
        if request == "reject":
            raise layers.Overloaded("full", layer="x")
        if request == "timeout":
            raise layers.Elapsed(timeout=1.0, layer="t")
        return request

    svc = Instrumented(metrics, name="users-api").layer(service)
    assert await svc("ok") == "ok"
    assert await svc("ok") == "ok"
    for request, error in (
        ("fail", KeyError),
        ("reject", layers.Overloaded),
        ("timeout", layers.Elapsed),
    ):
        with pytest.raises(error):
            await svc(request)
    points = read(reader)
    calls = {
        (a["layers.call.outcome"], a.get("error.type")): v
        for a, v in points["layers.calls"]
    }
    assert calls == {
        ("success", None): 2,
        ("failure", "KeyError"): 1,
        ("rejected", "layers.Overloaded"): 1,
        ("timeout", "layers.Elapsed"): 1,
    }
    histogram = value(points, "layers.call.duration", layers__call__outcome="success")
    assert histogram.count == 2
    assert histogram.sum == pytest.approx(4.0, abs=0.01)
    for attrs, _ in points["layers.calls"]:
        assert attrs["layers.layer.name"] == "users-api"
        assert "secret" not in repr(attrs)


async def test_instrumented_records_a_cancelled_call(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """A call cancelled while it waits is recorded as cancelled and passes on."""
    limit = layers.ConcurrencyLimit(1, name="pool")
    metrics.observe(limit)

    async def wait_forever(request: int) -> int:
        await anyio.sleep_forever()
        raise AssertionError

    svc = Instrumented(metrics, name="c").layer(limit.layer(wait_forever))
    with anyio.move_on_after(3) as scope:
        await svc(1)
    assert scope.cancelled_caught
    points = read(reader)
    (attrs, count) = points["layers.calls"][0]
    assert attrs["layers.call.outcome"] == "cancelled"
    assert count == 1
    assert value(points, "layers.call.duration").sum == pytest.approx(3.0, abs=0.01)
    assert value(points, "layers.concurrency_limit.in_flight") == 0


async def test_instrumented_records_a_failure_raised_while_cancelled(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """A child task failing while the call is cancelled is a failure, not cancelled.

    On trio (and anyio's task groups on trio) the call ends with a group of
    the cancellation and the error; the error is what the call did.
    """

    async def fails_in_cleanup(request: int) -> int:
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.sleep_forever)
            try:
                await anyio.sleep_forever()
            finally:
                raise KeyError("cleanup")
        raise AssertionError

    svc = Instrumented(metrics, name="c").layer(fails_in_cleanup)
    with pytest.raises((KeyError, ExceptionGroup)), anyio.move_on_after(3):
        await svc(1)
    (attrs, count) = read(reader)["layers.calls"][0]
    assert attrs["layers.call.outcome"] == "failure"
    assert count == 1


async def test_instrumented_records_nothing_unless_installed(
    reader: InMemoryMetricReader,
) -> None:
    """Not installed (or uninstalled), Instrumented and the sink record nothing."""
    metrics = OtelMetrics(MeterProvider(metric_readers=[reader]))
    svc = metrics.instrument("api").layer(ok)
    assert await svc(1) == 1
    events.emit(events.TimeoutElapsed(layer="t", timeout=1.0))
    assert "layers.calls" not in read(reader)
    assert "layers.events" not in read(reader)
    remove = metrics.install()
    metrics.install()  # twice is once
    assert events.STATE.sinks.count(metrics) == 1
    assert await svc(1) == 1
    remove()
    assert metrics not in events.STATE.sinks
    assert await svc(1) == 1
    events.emit(events.TimeoutElapsed(layer="t", timeout=1.0))
    points = read(reader)
    assert value(points, "layers.calls") == 1
    assert "layers.events" not in points


async def test_instrumented_keeps_types_and_composes(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """Instrumented is a type-preserving layer for ServiceBuilder.layer."""
    svc = (
        layers.ServiceBuilder()
        .layer(metrics.instrument("stack"))
        .timeout(5)
        .service(ok)
    )
    assert await svc(3) == 3
    inner = Instrumented(metrics).layer(ok)
    assert isinstance(inner, InstrumentedService)
    assert inner.name == "call"
    assert "InstrumentedService" in repr(inner)
    assert value(read(reader), "layers.calls", layers__layer__name="stack") == 1


def test_instrumented_and_observe_refuse_bad_configuration(
    metrics: OtelMetrics,
) -> None:
    """Bad metrics, names and observed objects raise ConfigurationError naming them."""
    with pytest.raises(layers.ConfigurationError, match=r"metrics=.*OtelMetrics"):
        Instrumented(object())  # type: ignore[arg-type]
    with pytest.raises(layers.ConfigurationError, match="name"):
        Instrumented(metrics, name="")
    with pytest.raises(layers.ConfigurationError, match="CircuitBreaker"):
        metrics.observe(layers.Timeout(1))  # type: ignore[arg-type]
    assert repr(metrics) == "OtelMetrics(enabled=True)"


def test_observed_layers_are_held_weakly(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """A garbage-collected breaker stops being reported; observing twice is once."""
    breaker = layers.CircuitBreaker(name="gone")
    metrics.observe(breaker, breaker)
    assert len(read(reader)["layers.circuit_breaker.state"]) == len(layers.CircuitState)
    del breaker
    gc.collect()
    assert read(reader).get("layers.circuit_breaker.state", []) == []


async def test_a_users_own_layer_gets_gauges_and_is_a_health_check(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """A user-defined Observable layer gets OTel gauges and becomes a health check."""
    maintenance = Maintenance("edge", switches=1.5)
    metrics.observe(maintenance)
    checks = layers.HealthChecks(cache_ttl=0)
    checks.add_layer(maintenance, critical=True)
    release = anyio.Event()

    async def held(request: int) -> int:
        await release.wait()
        return request

    service = maintenance.layer(held)
    async with anyio.create_task_group() as group:
        group.start_soon(service, 1)
        await anyio.sleep(1)
        points = read(reader)
        assert (
            value(points, "layers.maintenance.in_flight", layers__layer__name="edge")
            == 1
        )
        assert (
            value(
                points, "layers.maintenance.state", layers__maintenance__state="serving"
            )
            == 1
        )
        assert value(points, "layers.maintenance.switches") == 1.5
        assert value(points, "layers.maintenance.rejected") == 0
        assert (await checks.run()).status is layers.HealthStatus.HEALTHY
        release.set()
    maintenance.on = True
    with pytest.raises(layers.Rejected):
        await service(2)
    points = read(reader)
    assert value(points, "layers.maintenance.in_flight") == 0
    assert value(points, "layers.maintenance.rejected") == 1
    assert points["layers.maintenance.state"] == [
        ({"layers.layer.name": "edge", "layers.maintenance.state": "maintenance"}, 1)
    ]
    assert "layers.maintenance.waiting" not in points  # None: not reported
    report = await checks.run()
    assert report.status is layers.HealthStatus.UNHEALTHY
    assert report["edge"].details["rejected_since_last_check"] == 1


async def test_every_built_in_stateful_layer_gets_gauges(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """Drain, RetryBudget and PerKey are observable too, as breakers and limits are."""
    drain = layers.Drain(name="server")
    budget = layers.RetryBudget(min_per_second=0, ratio=0.5, name="retries")
    per_key = layers.PerKey(
        lambda key: layers.ConcurrencyLimit(1), key=lambda request: request, name="keys"
    )
    metrics.observe(drain, budget, per_key)
    await drain.layer(per_key.layer(ok))(3)
    for _ in range(4):
        budget.deposit()
    assert budget.withdraw()
    drain.start()
    points = read(reader)
    assert value(points, "layers.drain.in_flight") == 0
    assert value(points, "layers.drain.state", layers__drain__state="draining") == 1
    assert value(points, "layers.retry_budget.deposits") == 4
    assert value(points, "layers.retry_budget.retries") == 1
    assert value(points, "layers.retry_budget.available") == 1
    assert value(points, "layers.per_key.keys", layers__layer__name="keys") == 1
    assert value(points, "layers.per_key.max_keys") == 1000
    assert value(points, "layers.per_key.rejected") == 0


async def test_fallback_coalesce_and_injection_get_gauges(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """Fallback, Coalesce and the injection layers are observable."""
    fallback = layers.Fallback(0, on=ConnectionError)
    coalesce = layers.Coalesce()
    chaos = layers.InjectError(ConnectionError, rate=1.0, enabled=False)
    metrics.observe(fallback, coalesce, chaos)
    await fallback.layer(coalesce.layer(chaos.layer(ok)))(3)
    chaos.enable()
    assert await fallback.layer(chaos.layer(ok))(3) == 0
    points = read(reader)
    assert value(points, "layers.fallback.fallbacks") == 1
    assert value(points, "layers.fallback.errors") == 1
    assert value(points, "layers.coalesce.in_flight") == 0
    assert value(points, "layers.coalesce.inner_calls") == 1
    assert value(points, "layers.coalesce.max_keys") == 1000
    assert (
        value(
            points,
            "layers.fault_injection.state",
            layers__fault_injection__state="enabled",
        )
        == 1
    )
    assert value(points, "layers.fault_injection.injected") == 1
    assert value(points, "layers.fault_injection.rate") == 1.0


async def test_gauges_are_read_from_an_exporters_thread(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """A collection in another thread (no event loop there) reads every layer."""
    breaker = layers.CircuitBreaker(name="db", window_size=1)
    budget = layers.RetryBudget(name="retries")
    quota = layers.RateLimit(1, name="quota")
    metrics.observe(breaker, budget, quota)

    async def fail(request: int) -> int:
        raise OSError("down")

    with pytest.raises(OSError, match="down"):
        await breaker.layer(fail)(1)
    budget.deposit()
    points = await anyio.to_thread.run_sync(read, reader)
    assert (
        value(
            points,
            "layers.circuit_breaker.state",
            layers__circuit_breaker__state="open",
        )
        == 1
    )
    assert value(points, "layers.circuit_breaker.failure_rate") == 1.0
    assert value(points, "layers.retry_budget.available") == 100
    assert value(points, "layers.rate_limit.waiting") == 0


async def test_a_layer_whose_observe_fails_is_left_out_of_that_collection(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """observe() raising at a collection hides that layer only, that time."""
    broken, fine = Maintenance("broken"), Maintenance("fine")
    metrics.observe(broken, fine)
    broken.observe = lambda: 1 / 0  # type: ignore[method-assign,assignment,return-value]
    points = read(reader)
    assert [
        a["layers.layer.name"] for a, _ in points["layers.maintenance.in_flight"]
    ] == ["fine"]


def test_a_layer_without_weak_references_is_held(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """An observable that cannot be weakly referenced is held, and reported."""

    class Slotted:
        __slots__ = ()
        name = "slotted"
        kind = "slotted"

        def observe(self) -> layers.Observation:
            return layers.Observation(waiting=2)

    metrics.observe(Slotted())
    gc.collect()
    assert value(read(reader), "layers.slotted.waiting") == 2


@pytest.mark.parametrize(
    ("kind", "observation"),
    [("Bad Kind", layers.Observation()), ("", layers.Observation()), ("ok", None)],
    ids=["spaces", "empty", "no-observation"],
)
def test_observe_refuses_a_bad_kind_or_observation(
    metrics: OtelMetrics, kind: str, observation: layers.Observation | None
) -> None:
    """A kind that cannot be part of an instrument name, or no Observation: refused."""

    class Odd:
        name = "odd"

        def observe(self) -> layers.Observation | None:
            return observation

    odd = Odd()
    odd.kind = kind  # type: ignore[attr-defined]
    error = layers.ConfigurationError if observation is not None else TypeError
    with pytest.raises(error, match=r"kind=|Observation"):
        metrics.observe(odd)  # type: ignore[arg-type]


def test_unknown_events_are_counted_as_events(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """An event the sink does not know is counted only in layers.events."""

    class Custom(events.Event):
        event = "custom_thing"

    events.emit(Custom(layer="mine"))
    points = read(reader)
    assert (
        value(
            points,
            "layers.events",
            layers__event__name="custom_thing",
            layers__layer__kind="custom",
        )
        == 1
    )


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OpenTelemetry, importing layers.otel says which extra to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "layers.otel")
    with pytest.raises(ImportError, match=r"service-layers\[otel\]"):
        importlib.import_module("layers.otel")
    monkeypatch.undo()
    assert importlib.import_module("layers.otel").OtelMetrics is OtelMetrics


async def test_adaptive_throttle_rejections_and_gauges(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    """A throttle's refusals count in layers.rejections; its figures are gauges."""

    async def busy(request: int) -> int:
        raise ConnectionError

    throttle = layers.AdaptiveThrottle(min_requests=0, seed=1, name="api")
    metrics.observe(throttle)
    svc = throttle.layer(busy)
    for i in range(50):
        with contextlib.suppress(ConnectionError, layers.Throttled):
            await svc(i)
    refused = throttle.statistics().rejected
    assert refused > 30
    points = read(reader)
    rejections = value(
        points,
        "layers.rejections",
        layers__layer__name="api",
        layers__layer__kind="adaptive_throttle",
        layers__rejection__reason="throttled",
    )
    assert rejections == refused
    assert value(points, "layers.adaptive_throttle.rejected") == refused
    assert value(points, "layers.adaptive_throttle.requests") == 50
    assert value(points, "layers.adaptive_throttle.reject_probability") > 0.9
