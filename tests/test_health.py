"""Health checks: registry, report, cache, shared runs, breakers, limits, ASGI app."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from helpers import Maintenance

import layers
from layers.health import HealthApp, HealthChecks, HealthReport, HealthStatus

pytestmark = pytest.mark.anyio

HEALTHY = HealthStatus.HEALTHY
DEGRADED = HealthStatus.DEGRADED
UNHEALTHY = HealthStatus.UNHEALTHY


@pytest.fixture
def messages_on() -> Iterator[None]:
    """Turn error messages on for one test."""
    layers.set_error_messages(True)
    try:
        yield
    finally:
        layers.set_error_messages(False)


class Counter:
    """A check that counts its runs, sleeps, then passes or raises."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay = delay
        self.error = error
        self.calls = 0
        self.finished = 0
        self.cancelled = 0

    async def __call__(self) -> None:
        self.calls += 1
        try:
            await anyio.sleep(self.delay)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        self.finished += 1
        if self.error is not None:
            raise self.error


# ------------------------------------------------------------------ report


async def test_all_checks_pass_report_healthy_with_durations() -> None:
    """Every check passes: healthy overall and per check, durations measured."""
    checks = HealthChecks()
    checks.add("db", Counter(0.2))
    checks.add("cache", Counter(0.1), critical=False)
    report = await checks.run()
    assert report.status is HEALTHY
    assert [r.name for r in report.checks] == ["db", "cache"]
    assert report["db"].duration == pytest.approx(0.2)
    assert report["cache"].duration == pytest.approx(0.1)
    assert report["db"].error is None
    assert report["db"].message is None
    assert report.duration == pytest.approx(0.2)
    with pytest.raises(KeyError):
        report["nope"]


async def test_checks_run_concurrently() -> None:
    """Three 1 s checks finish in 1 s, not 3."""
    checks = HealthChecks()
    for name in "abc":
        checks.add(name, Counter(1.0))
    start = anyio.current_time()
    report = await checks.run()
    assert anyio.current_time() - start == pytest.approx(1.0)
    assert report.duration == pytest.approx(1.0)


async def test_no_checks_is_healthy() -> None:
    """An empty registry reports healthy."""
    report = await HealthChecks().run()
    assert report.status is HEALTHY
    assert report.checks == ()


async def test_critical_failure_makes_the_report_unhealthy() -> None:
    """A critical check that raises: unhealthy, with its error type."""
    checks = HealthChecks()
    checks.add("db", Counter(error=ConnectionError("db:5432 password=hunter2")))
    checks.add("cache", Counter())
    report = await checks.run()
    assert report.status is UNHEALTHY
    assert report["db"].status is UNHEALTHY
    assert report["db"].error == "ConnectionError"
    assert report["cache"].status is HEALTHY


async def test_non_critical_failure_only_degrades() -> None:
    """A non-critical check that raises makes the report degraded."""
    checks = HealthChecks()
    checks.add("search", Counter(error=OSError("x")), critical=False)
    checks.add("db", Counter())
    report = await checks.run()
    assert report.status is DEGRADED
    assert report["search"].status is UNHEALTHY
    assert not report["search"].critical


async def test_check_may_report_degraded_or_unhealthy() -> None:
    """A check returns DEGRADED or UNHEALTHY to say so without raising."""

    async def slow_replica() -> HealthStatus:
        return DEGRADED

    async def broken() -> HealthStatus:
        return UNHEALTHY

    checks = HealthChecks()
    checks.add("replica", slow_replica)
    report = await checks.run()
    assert report.status is DEGRADED
    assert report["replica"].error is None
    checks.add("broken", broken)
    assert (await checks.run()).status is UNHEALTHY


async def test_check_returning_garbage_is_a_type_error() -> None:
    """A check that returns something else than None or a status fails."""

    async def wrong() -> Any:
        return "ok"

    checks = HealthChecks()
    checks.add("wrong", wrong)
    report = await checks.run()
    assert report["wrong"].status is UNHEALTHY
    assert report["wrong"].error == "TypeError"


async def test_error_type_is_qualified_outside_builtins() -> None:
    """A non-builtin exception is named with its module."""

    class DatabaseDown(Exception):
        pass

    checks = HealthChecks()
    checks.add("db", Counter(error=DatabaseDown("secret")))
    report = await checks.run()
    assert report["db"].error == f"{__name__}.{DatabaseDown.__qualname__}"


async def test_timeout_cancels_the_check() -> None:
    """A check that outlasts its timeout is cancelled and reported TimeoutError."""
    hung = Counter(60.0)
    checks = HealthChecks(default_timeout=2.0)
    checks.add("hung", hung, timeout=0.5)
    checks.add("default", Counter(10.0), critical=False)
    start = anyio.current_time()
    report = await checks.run()
    assert anyio.current_time() - start == pytest.approx(2.0)
    assert report["hung"].status is UNHEALTHY
    assert report["hung"].error == "TimeoutError"
    assert report["hung"].duration == pytest.approx(0.5)
    assert report["default"].duration == pytest.approx(2.0)
    assert hung.cancelled == 1
    assert hung.finished == 0


async def _cleanup_fails() -> None:
    """Wait until cancelled, then fail while unwinding."""
    try:
        await anyio.sleep_forever()
    finally:
        raise RuntimeError("cleanup failed")


async def check_with_a_failing_child() -> None:
    """A check whose child task raises while the check's cancellation unwinds it."""
    async with anyio.create_task_group() as group:
        group.start_soon(_cleanup_fails)
        await anyio.sleep_forever()


async def check_whose_cleanup_fails() -> None:
    """A check that raises from its own finally block when cancelled."""
    await _cleanup_fails()


async def check_that_swallows_cancellation() -> None:
    """A check that ignores its cancellation and returns late."""
    with anyio.CancelScope(shield=True):
        await anyio.sleep(3)


@pytest.mark.parametrize(
    "check",
    [
        check_with_a_failing_child,
        check_whose_cleanup_fails,
        check_that_swallows_cancellation,
    ],
)
async def test_timed_out_check_is_unhealthy_whatever_its_cleanup_does(
    check: Any,
) -> None:
    """A check running at its timeout is TimeoutError, whatever its cleanup does."""
    checks = HealthChecks()
    checks.add("db", check, timeout=1)
    checks.add("ok", Counter(0.5))
    report = await checks.run()
    assert report.status is UNHEALTHY
    assert report["db"].status is UNHEALTHY
    assert report["db"].error == "TimeoutError"
    assert report["ok"].status is HEALTHY


@pytest.mark.usefixtures("messages_on")
async def test_timed_out_check_whose_cleanup_fails_says_so() -> None:
    """With messages on, the message names what the cancelled check raised."""
    checks = HealthChecks()
    checks.add("db", check_with_a_failing_child, timeout=1)
    report = await checks.run()
    assert report["db"].error == "TimeoutError"
    message = report["db"].message
    assert message is not None
    assert message.startswith("the check took longer than 1.0 s; cancelled, it raised")
    assert "ExceptionGroup" in message


async def test_check_raising_a_group_is_a_failure() -> None:
    """A check whose task group fails (no timeout) is unhealthy, on both backends."""

    async def failing_child() -> None:
        raise ConnectionError("refused")

    async def grouped() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(failing_child)
            await anyio.sleep_forever()

    checks = HealthChecks()
    checks.add("db", grouped)
    report = await checks.run()
    assert report["db"].status is UNHEALTHY
    assert report["db"].error == "ExceptionGroup"


async def test_cancelled_run_with_a_failing_cleanup_is_still_cancelled() -> None:
    """Cancelled as a check's cleanup fails: no group escapes, the cancellation does."""
    checks = HealthChecks(cache_ttl=0)
    checks.add("db", check_with_a_failing_child, timeout=5)
    with anyio.move_on_after(1) as scope:
        await checks.run()
    assert anyio.current_time() == pytest.approx(1)
    assert scope.cancelled_caught
    checks.remove("db")
    checks.add("ok", Counter())
    report = await checks.run()
    assert report.status is HEALTHY


def test_to_dict_is_strict_json_whatever_the_details() -> None:
    """Non-finite figures in details (an infinite retry_after) become null."""
    result = layers.health.CheckResult(
        name="breaker",
        status=UNHEALTHY,
        critical=False,
        duration=0.0,
        details={"retry_after": math.inf, "failure_rate": math.nan, "calls": 3},
    )
    out = json.dumps(result.to_dict(errors=True), allow_nan=False)
    assert json.loads(out)["details"] == {
        "retry_after": None,
        "failure_rate": None,
        "calls": 3,
    }
    assert result.details["retry_after"] == math.inf  # the result keeps the figure


async def test_messages_are_off_by_default() -> None:
    """By default a report has error types, never messages."""
    checks = HealthChecks()
    checks.add("db", Counter(error=ConnectionError("password=hunter2")))
    report = await checks.run()
    assert report["db"].message is None
    assert "hunter2" not in repr(report)
    assert "hunter2" not in json.dumps(report.to_dict(errors=True))


@pytest.mark.usefixtures("messages_on")
async def test_messages_when_turned_on() -> None:
    """With set_error_messages(True), the message is recorded."""
    checks = HealthChecks()
    checks.add("db", Counter(error=ConnectionError("refused")))
    checks.add("hung", Counter(5.0), timeout=1.0)
    report = await checks.run()
    assert report["db"].message == "refused"
    assert report["hung"].message == "the check took longer than 1.0 s"
    assert report.to_dict(errors=True)["checks"]["db"]["message"] == "refused"


async def test_to_dict_shows_statuses_only_by_default() -> None:
    """to_dict() has statuses; to_dict(errors=True) adds type, duration, details."""
    checks = HealthChecks()
    checks.add("db", Counter(0.25, error=ValueError("x")))
    report = await checks.run()
    assert report.to_dict() == {
        "status": "unhealthy",
        "checks": {"db": {"status": "unhealthy", "critical": True}},
    }
    full = report.to_dict(errors=True)["checks"]["db"]
    assert full == {
        "status": "unhealthy",
        "critical": True,
        "duration": pytest.approx(0.25),
        "error": "ValueError",
        "details": {},
    }


# ------------------------------------------------------------ cache, sharing


async def test_report_is_cached_for_cache_ttl() -> None:
    """Within cache_ttl the same report is returned and the check not rerun."""
    probe = Counter(0.1)
    checks = HealthChecks(cache_ttl=5.0)
    checks.add("db", probe)
    first = await checks.run()
    await anyio.sleep(4.8)  # the report expires 5 s after the run ended
    assert await checks.run() is first
    assert probe.calls == 1
    await anyio.sleep(0.3)
    second = await checks.run()
    assert second is not first
    assert probe.calls == 2
    assert second.checked_at == pytest.approx(5.2)


async def test_zero_ttl_reruns_every_time() -> None:
    """cache_ttl=0 runs the checks at every call."""
    probe = Counter()
    checks = HealthChecks(cache_ttl=0)
    checks.add("db", probe)
    for _ in range(3):
        await checks.run()
    assert probe.calls == 3


async def test_invalidate_and_registration_drop_the_cache() -> None:
    """invalidate(), add() and remove() make the next run check again."""
    probe = Counter()
    checks = HealthChecks(cache_ttl=60)
    checks.add("db", probe)
    await checks.run()
    checks.invalidate()
    await checks.run()
    assert probe.calls == 2
    checks.add("other", Counter(error=OSError()))
    assert (await checks.run()).status is UNHEALTHY
    checks.remove("other")
    checks.remove("never-added")
    assert (await checks.run()).status is HEALTHY
    assert checks.names == ("db",)
    assert probe.calls == 4


async def test_concurrent_callers_share_one_run() -> None:
    """Fifty callers during a refresh get the same report from one check run."""
    probe = Counter(1.0)
    checks = HealthChecks(cache_ttl=0)
    checks.add("db", probe)
    reports: list[HealthReport] = []

    async def ask() -> None:
        reports.append(await checks.run())

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(ask)
    assert probe.calls == 1
    assert len(reports) == 50
    assert all(r is reports[0] for r in reports)


async def test_cancelled_leader_hands_over_to_a_waiting_caller() -> None:
    """If the caller running the checks is cancelled, a waiter runs them again."""
    probe = Counter(1.0)
    checks = HealthChecks(cache_ttl=0)
    checks.add("db", probe)
    got: list[HealthReport] = []

    async def follower() -> None:
        got.append(await checks.run())

    async with anyio.create_task_group() as group:
        with anyio.move_on_after(0.5):
            group.start_soon(follower)
            await checks.run()  # the leader: it started first
            pytest.fail("the leader should have been cancelled")
    assert probe.cancelled == 1
    assert probe.calls == 2  # the follower ran the checks again
    assert len(got) == 1
    assert got[0].status is HEALTHY
    assert anyio.current_time() == pytest.approx(1.5)
    # Nothing is left behind: the next run starts at once.
    with anyio.fail_after(1.1):
        await checks.run()


async def test_cancelled_caller_waiting_on_a_run_leaves_it_alone() -> None:
    """A follower cancelled while waiting does not disturb the leader's run."""
    probe = Counter(1.0)
    checks = HealthChecks(cache_ttl=10)
    checks.add("db", probe)
    got: list[HealthReport] = []

    async def leader() -> None:
        got.append(await checks.run())

    async with anyio.create_task_group() as group:
        group.start_soon(leader)
        await anyio.sleep(0.1)
        with anyio.move_on_after(0.2) as scope:
            await checks.run()
        assert scope.cancelled_caught
    assert probe.calls == 1
    assert probe.cancelled == 0
    assert await checks.run() is got[0]


# ------------------------------------------------------------ breakers, limits


async def test_open_breaker_degrades_or_fails_the_report() -> None:
    """An open breaker: degraded by default, unhealthy when critical."""
    breaker = layers.CircuitBreaker(name="payments")
    strict = layers.CircuitBreaker(name="ledger")
    checks = HealthChecks(cache_ttl=0)
    checks.add_layer(breaker)
    report = await checks.run()
    assert report.status is HEALTHY
    assert report["payments"].details["state"] == "closed"
    breaker.force_open()
    report = await checks.run()
    assert report.status is DEGRADED
    assert report["payments"].status is UNHEALTHY
    assert report["payments"].details["state"] == "forced_open"
    checks.add_layer(strict, name="ledger-db", critical=True)
    strict.force_open()
    assert (await checks.run()).status is UNHEALTHY
    breaker.reset()
    strict.reset()
    assert (await checks.run()).status is HEALTHY


async def test_tripped_and_half_open_breaker() -> None:
    """A tripped breaker is unhealthy, half-open is degraded, then healthy."""
    breaker = layers.CircuitBreaker(
        name="api", consecutive_failures=1, open_duration=1.0, probes=1
    )
    gate = anyio.Event()

    async def api(request: str) -> str:
        if request == "fail":
            raise ConnectionError
        await gate.wait()
        return request

    service = breaker.layer(api)
    checks = HealthChecks(cache_ttl=0)
    checks.add_layer(breaker, critical=True)
    with pytest.raises(ConnectionError):
        await service("fail")
    report = await checks.run()
    assert report.status is UNHEALTHY
    assert report["api"].details["state"] == "open"
    assert report["api"].details["retry_after"] == pytest.approx(1.0)
    await anyio.sleep(1.0)
    async with anyio.create_task_group() as group:
        group.start_soon(service, "probe")
        await anyio.sleep(0.01)
        report = await checks.run()
        assert report["api"].status is DEGRADED
        assert report.status is DEGRADED
        gate.set()
    assert (await checks.run()).status is HEALTHY


async def test_concurrency_limit_saturation_is_degraded() -> None:
    """A limit that refused calls since the last check is degraded, then healthy."""
    limit = layers.ConcurrencyLimit(1, max_waiting=0, name="bulkhead")
    release = anyio.Event()

    async def work(request: int) -> int:
        await release.wait()
        return request

    service = limit.layer(work)
    checks = HealthChecks(cache_ttl=0)
    checks.add_layer(limit)
    async with anyio.create_task_group() as group:
        group.start_soon(service, 1)
        await anyio.sleep(0.01)
        with pytest.raises(layers.Overloaded):
            await service(2)
        report = await checks.run()
        assert report.status is DEGRADED
        assert dict(report["bulkhead"].details) == {
            "in_flight": 1,
            "max_in_flight": 1,
            "waiting": 0,
            "rejected": 1,
            "rejected_since_last_check": 1,
        }
        release.set()
    report = await checks.run()
    assert report.status is HEALTHY
    assert report["bulkhead"].details["rejected_since_last_check"] == 0


async def test_queue_length_above_max_waiting_is_degraded() -> None:
    """max_waiting: more waiters than that make the limit check degraded."""
    limit = layers.ConcurrencyLimit(1)
    release = anyio.Event()

    async def work(request: int) -> int:
        await release.wait()
        return request

    service = limit.layer(work)
    checks = HealthChecks(cache_ttl=0)
    checks.add_layer(limit, name="pool", max_waiting=1)
    async with anyio.create_task_group() as group:
        for i in range(2):
            group.start_soon(service, i)
        await anyio.sleep(0.01)
        assert (await checks.run()).status is HEALTHY  # one waiting
        group.start_soon(service, 3)
        await anyio.sleep(0.01)
        report = await checks.run()
        assert report.status is DEGRADED
        assert report["pool"].details["waiting"] == 2
        release.set()


async def test_rate_limit_rejections_degrade() -> None:
    """A rate limit that refused calls since the last check is degraded."""
    limit = layers.RateLimit(1, mode="reject", key=lambda r: r, name="per-user")

    async def echo(request: str) -> str:
        return request

    service = limit.layer(echo)
    checks = HealthChecks(cache_ttl=0)
    checks.add_layer(limit)
    await service("a")
    assert (await checks.run()).status is HEALTHY
    with pytest.raises(layers.RateLimited):
        await service("a")
    report = await checks.run()
    assert report.status is DEGRADED
    assert report["per-user"].details["keys"] == 1
    assert (await checks.run()).status is HEALTHY


async def echo(request: int) -> int:
    """A service that answers its request."""
    return request


async def test_a_users_own_layer_is_a_health_check() -> None:
    """A layer implementing Observable becomes a check: its verdict and figures."""
    maintenance = Maintenance()
    assert isinstance(maintenance, layers.Observable)
    service = maintenance.layer(echo)
    checks = HealthChecks(cache_ttl=0)
    checks.add_layer(maintenance, critical=True)
    assert await service(1) == 1
    report = await checks.run()
    assert report.status is HEALTHY
    assert dict(report["maintenance"].details) == {
        "state": "serving",
        "in_flight": 0,
        "rejected": 0,
        "rejected_since_last_check": 0,
        "switches": 1,
    }
    maintenance.on = True
    with pytest.raises(layers.Rejected):
        await service(2)
    report = await checks.run()
    assert report.status is UNHEALTHY  # critical
    assert report["maintenance"].details["rejected_since_last_check"] == 1


async def test_a_started_drain_fails_readiness() -> None:
    """A Drain as a critical check: healthy while serving, unhealthy once draining."""
    drain = layers.Drain(name="server")
    checks = HealthChecks(cache_ttl=0)
    checks.add_layer(drain, critical=True)
    report = await checks.run()
    assert report.status is HEALTHY
    assert report["server"].details["state"] == "serving"
    drain.start()
    report = await checks.run()
    assert report.status is UNHEALTHY
    assert report["server"].details["state"] == "draining"


async def test_an_exhausted_retry_budget_is_degraded() -> None:
    """A RetryBudget whose retries used it up is degraded, with its figures."""
    budget = layers.RetryBudget(min_per_second=0, ratio=0.5, name="api-retries")
    checks = HealthChecks(cache_ttl=0)
    checks.add_layer(budget)
    assert (await checks.run()).status is HEALTHY  # no traffic: not exhausted
    for _ in range(2):
        budget.deposit()
    assert budget.withdraw()
    report = await checks.run()
    assert report.status is DEGRADED
    assert dict(report["api-retries"].details) == {
        "deposits": 2,
        "retries": 1,
        "available": 0,
    }


async def test_a_per_key_table_that_refused_a_key_is_degraded() -> None:
    """PerKey as a check: a key refused since the last run makes it degraded."""
    per_key = layers.PerKey(
        lambda key: layers.CircuitBreaker(name=str(key), consecutive_failures=1),
        key=lambda request: request,
        max_keys=1,
        name="tenants",
    )

    async def fail(request: int) -> int:
        raise ConnectionError

    service = per_key.layer(fail)
    checks = HealthChecks(cache_ttl=0)
    checks.add_layer(per_key)
    with pytest.raises(ConnectionError):
        await service(1)
    with pytest.raises(layers.KeyTableFull):
        await service(2)
    report = await checks.run()
    assert report.status is DEGRADED
    assert report["tenants"].details["protected"] == 1
    assert (await checks.run()).status is HEALTHY


async def test_an_observe_that_returns_no_observation_fails_the_check() -> None:
    """observe() returning something else: the check is unhealthy (TypeError)."""

    class Broken:
        name = "broken"
        kind = "broken"
        calls = 0

        def observe(self) -> layers.Observation:
            self.calls += 1
            if self.calls > 1:
                return {"status": "fine"}  # type: ignore[return-value]
            return layers.Observation()

    checks = HealthChecks(cache_ttl=0)
    checks.add_layer(Broken(), critical=True)
    report = await checks.run()
    assert report.status is UNHEALTHY
    assert report["broken"].error == "TypeError"


# ------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: HealthChecks(cache_ttl=-1), "cache_ttl must be a finite number"),
        (lambda: HealthChecks(cache_ttl=float("nan")), "cache_ttl=nan"),
        (lambda: HealthChecks(default_timeout=0), "default_timeout must be"),
        (lambda: HealthChecks(default_timeout=True), "default_timeout=True"),
        (lambda: HealthChecks().add("", Counter()), "name must be a non-empty"),
        (lambda: HealthChecks().add("x", 3), "check must be an async callable"),  # type: ignore[arg-type]
        (lambda: HealthChecks().add("x", Counter(), timeout=-2), "timeout=-2"),
        (lambda: HealthChecks().add("x", Counter(), critical=1), "critical=1"),  # type: ignore[arg-type]
        (
            lambda: HealthChecks().add_layer(3),
            "layer=3\\): layer must be an Observable",
        ),  # type: ignore[arg-type]
        (
            lambda: HealthChecks().add_layer(layers.Timeout(1)),
            "layer must be an Observable",
        ),  # type: ignore[arg-type]
        (
            lambda: HealthChecks().add_layer(
                layers.ConcurrencyLimit(1), max_waiting=-1
            ),
            "max_waiting must be None or an int >= 0, got -1",
        ),
        (lambda: HealthApp(3), "readiness must be a HealthChecks"),  # type: ignore[arg-type]
        (lambda: HealthApp(HealthChecks(), liveness=3), "liveness must be None"),  # type: ignore[arg-type]
        (lambda: HealthApp(HealthChecks(), readiness_path="ready"), "starts with '/'"),
        (
            lambda: HealthApp(HealthChecks(), readiness_path="/x", liveness_path="/x"),
            "the two paths must differ",
        ),
        (lambda: HealthApp(HealthChecks(), expose_errors=None), "expose_errors=None"),  # type: ignore[arg-type]
        (lambda: HealthApp(HealthChecks(), degraded_status=42), "degraded_status=42"),
    ],
)
def test_bad_configuration_is_refused(build: Any, message: str) -> None:
    """Every bad option raises ConfigurationError naming it and the value."""
    with pytest.raises(layers.ConfigurationError, match=message.replace("(", r"\(")):
        build()


def test_duplicate_names_are_refused() -> None:
    """Two checks with one name: the second is refused."""
    checks = HealthChecks()
    checks.add("db", Counter())
    with pytest.raises(layers.ConfigurationError, match="'db' is already registered"):
        checks.add("db", Counter())
    breaker = layers.CircuitBreaker(name="db")
    with pytest.raises(layers.ConfigurationError, match="already registered"):
        checks.add_layer(breaker)


async def test_decorator_registers() -> None:
    """@checks.check(name) registers the function and returns it unchanged."""
    checks = HealthChecks()

    @checks.check("db", timeout=1, critical=False)
    async def db() -> None:
        raise OSError

    assert checks.names == ("db",)
    report = await checks.run()
    assert report.status is DEGRADED
    assert not report["db"].critical


# ------------------------------------------------------------ ASGI, in process


async def call_app(
    app: HealthApp, path: str, method: str = "GET", root_path: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """Call the ASGI app once in process; return status, headers, body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": method, "path": path, "root_path": root_path}
    await app(scope, receive, send)
    start, body = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body["body"]


async def test_app_readiness_200_then_503() -> None:
    """Readiness answers 200 when healthy and 503 when a critical check fails."""
    failing = Counter()
    checks = HealthChecks(cache_ttl=0)
    checks.add("db", failing)
    app = HealthApp(checks)
    status, headers, body = await call_app(app, "/readyz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {
        "status": "healthy",
        "checks": {"db": {"status": "healthy", "critical": True}},
    }
    failing.error = ConnectionError("postgres://admin:hunter2@db")
    status, _, body = await call_app(app, "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["db"] == {"status": "unhealthy", "critical": True}
    assert b"hunter2" not in body
    assert b"ConnectionError" not in body


async def test_app_degraded_status_and_exposed_errors() -> None:
    """Degraded is 200 unless configured; expose_errors shows error types."""
    checks = HealthChecks(cache_ttl=0)
    checks.add("search", Counter(error=OSError("secret")), critical=False)
    status, _, body = await call_app(HealthApp(checks), "/readyz")
    assert (status, json.loads(body)["status"]) == (200, "degraded")
    app = HealthApp(checks, degraded_status=503, expose_errors=True)
    status, _, body = await call_app(app, "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["search"]["error"] == "OSError"
    assert b"secret" not in body


async def test_app_liveness_without_and_with_checks() -> None:
    """Liveness is 200 with no checks; with its own checks it reports them."""
    readiness = HealthChecks()
    readiness.add("db", Counter(error=OSError()))
    app = HealthApp(readiness)
    status, _, body = await call_app(app, "/livez")
    assert status == 200
    assert json.loads(body) == {"status": "healthy", "checks": {}}
    liveness = HealthChecks()
    liveness.add("loop", Counter(error=RuntimeError()))
    app = HealthApp(readiness, liveness=liveness, liveness_path="/live")
    assert (await call_app(app, "/live"))[0] == 503


async def test_app_paths_methods_and_mounting() -> None:
    """404 elsewhere, 405 for POST, HEAD has no body, root_path is stripped."""
    app = HealthApp(HealthChecks())
    assert (await call_app(app, "/other"))[0] == 404
    status, headers, _ = await call_app(app, "/readyz", method="POST")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    status, headers, body = await call_app(app, "/readyz", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 0
    mounted = await call_app(app, "/health/readyz", root_path="/health")
    assert mounted[0] == 200
    stripped_by_router = await call_app(app, "/readyz", root_path="/health")
    assert stripped_by_router[0] == 200


async def test_app_answers_lifespan_and_closes_websockets() -> None:
    """The lifespan protocol completes; a websocket is closed."""
    app = HealthApp(HealthChecks())
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Any] = []

    async def receive() -> Any:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    sent.clear()
    await app({"type": "websocket", "path": "/readyz"}, receive, send)
    assert sent == ["websocket.close"]


async def test_app_request_shares_the_cached_run() -> None:
    """Many requests within cache_ttl run the check once."""
    probe = Counter(0.5)
    checks = HealthChecks(cache_ttl=10)
    checks.add("db", probe)
    app = HealthApp(checks)
    codes: list[int] = []

    async def hit() -> None:
        codes.append((await call_app(app, "/readyz"))[0])

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(hit)
    for _ in range(5):
        await hit()
    assert codes == [200] * 25
    assert probe.calls == 1


# ------------------------------------------------------------ structure


def test_no_module_imports_a_private_name_of_a_public_module() -> None:
    """layers.health shares the lifespan answer through a private module, not asgi's.

    A public module's private names are its own: another module that needs
    one gets it from a private module both import.
    """
    import ast
    from pathlib import Path

    package = Path(layers.__file__).parent
    found: list[str] = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level != 1:
                continue
            module = node.module or ""
            if module.startswith("_") or not module:
                continue
            found += [
                f"{path.name}: from .{module} import {alias.name}"
                for alias in node.names
                if alias.name.startswith("_")
            ]
    assert found == []
