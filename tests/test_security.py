"""Security: no payloads or messages in what layers report; every table bounded."""

from __future__ import annotations

import contextlib
import gc
import json
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import structlog.testing

import layers
from layers.health import HealthChecks
from layers.testing import capture_events

pytestmark = pytest.mark.anyio

SECRET = "Bearer sk-live-4242 card=4111111111111111"


class PayloadError(Exception):
    """An error whose message holds a payload, as real ones often do."""


async def leaky(request: str) -> str:
    """A service that fails with the request in the message."""
    raise PayloadError(f"could not charge {request}")


def test_messages_are_off_by_default() -> None:
    """The switch exists and is off at import."""
    assert layers.events.STATE.error_messages is False


async def test_events_and_logs_carry_types_not_messages() -> None:
    """Retry, breaker and timeout events and their log lines hold no payload."""
    breaker = layers.CircuitBreaker(name="cb", consecutive_failures=2)
    service = (
        layers.ServiceBuilder()
        .retry(on=PayloadError, max_attempts=3, backoff=layers.ConstantBackoff(0.01))
        .layer(breaker)
        .timeout(5)
        .service(leaky)
    )
    with capture_events() as events, structlog.testing.capture_logs() as logs:
        for _ in range(2):
            with pytest.raises((PayloadError, layers.CircuitOpen)):
                await service(SECRET)
    assert events, "the layers reported nothing"
    assert any("PayloadError" in repr(event) for event in events)
    for event in events:
        assert "sk-live" not in repr(event)
        assert "4111" not in json.dumps(event.fields(), default=str)
    assert logs
    assert "sk-live" not in repr(logs)


async def test_health_report_carries_types_not_messages() -> None:
    """A failing check's message stays out of the report and its JSON."""

    async def check() -> None:
        await leaky(SECRET)

    checks = HealthChecks()
    checks.add("payments", check)
    report = await checks.run()
    assert report["payments"].error == f"{__name__}.PayloadError"
    assert "sk-live" not in repr(report)
    assert "sk-live" not in json.dumps(report.to_dict(errors=True))
    layers.set_error_messages(True)
    try:
        checks.invalidate()
        report = await checks.run()
    finally:
        layers.set_error_messages(False)
    assert report["payments"].message == f"could not charge {SECRET}"
    assert "sk-live" not in json.dumps(report.to_dict())  # statuses only


# --------------------------------------------------------------------- floods


@pytest.fixture
def quiet() -> Iterator[None]:
    """Turn the default log sink off: a flood would log every rejection."""
    layers.set_logging(False)
    try:
        yield
    finally:
        layers.set_logging(True)


async def flood_growth(flood: Callable[[int], Awaitable[None]], n: int) -> int:
    """Run flood(n) once to warm up, then return what a second flood(n) kept."""
    tracemalloc.start()
    try:
        await flood(n)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        await flood(n)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


async def echo(request: Any) -> Any:
    """Answer at once."""
    return request


@pytest.mark.usefixtures("quiet")
async def test_rate_limit_key_table_is_bounded() -> None:
    """10,000 distinct keys: the table holds at most max_keys, memory flat."""
    limit = layers.RateLimit(1, period=60, mode="reject", key=lambda r: r, max_keys=100)
    service = limit.layer(echo)
    counter = [0]

    async def flood(n: int) -> None:
        for _ in range(n):
            counter[0] += 1
            with contextlib.suppress(layers.RateLimited):
                await service(f"client-{counter[0]}")
            assert (limit.statistics().keys or 0) <= 100

    growth = await flood_growth(flood, 5_000)
    stats = limit.statistics()
    assert stats.keys == 100
    assert stats.table_full >= 9_900
    assert growth < 64 * 1024, growth
    print(f"rate limit key table: 10,000 keys -> {stats.keys} entries, {growth} B")


@pytest.mark.usefixtures("quiet")
async def test_rate_limit_wait_queue_is_bounded_by_max_wait() -> None:
    """1,000 callers at once: with max_wait, at most rate x max_wait wait."""
    limit = layers.RateLimit(10, burst=1, max_wait=1.0)
    service = limit.layer(echo)
    peak = 0
    outcomes = {"ok": 0, "limited": 0}

    async def call(i: int) -> None:
        nonlocal peak
        try:
            await service(i)
            outcomes["ok"] += 1
        except layers.RateLimited:
            outcomes["limited"] += 1
        peak = max(peak, limit.statistics().waiting)

    async with anyio.create_task_group() as group:
        for i in range(1_000):
            group.start_soon(call, i)
            peak = max(peak, limit.statistics().waiting)
    assert peak <= 11, peak
    assert outcomes["ok"] <= 12
    assert outcomes["ok"] + outcomes["limited"] == 1_000
    assert limit.statistics().waiting == 0
    print(f"rate limit wait queue: 1,000 callers -> peak {peak} waiting")


@pytest.mark.usefixtures("quiet")
async def test_concurrency_queue_is_bounded_by_max_queue() -> None:
    """1,000 callers at a full limit: max_waiting wait, the rest are refused."""
    limit = layers.ConcurrencyLimit(2, max_waiting=10)
    release = anyio.Event()

    async def hold(request: int) -> int:
        await release.wait()
        return request

    service = limit.layer(hold)
    refused = 0

    async def call(i: int) -> None:
        nonlocal refused
        try:
            await service(i)
        except layers.Overloaded:
            refused += 1

    async with anyio.create_task_group() as group:
        for i in range(1_000):
            group.start_soon(call, i)
        await anyio.sleep(0.1)
        stats = limit.statistics()
        assert (stats.in_flight, stats.waiting) == (2, 10)
        assert refused == 988
        release.set()
    assert limit.statistics().waiting == 0
    print(f"concurrency queue: 1,000 callers -> {stats.waiting} waiting")


async def test_retry_budget_window_is_bounded() -> None:
    """200,000 deposits and retries over 10 minutes: the window stays flat."""
    budget = layers.RetryBudget(ttl=10)

    async def flood(n: int) -> None:
        for i in range(n):
            budget.deposit()
            if i % 5 == 0:
                budget.withdraw()
            if i % 1_000 == 0:
                await anyio.sleep(3)

    growth = await flood_growth(flood, 100_000)
    assert growth < 16 * 1024, growth
    assert budget.statistics().deposits <= 10_000  # only the last ttl counts
    print(f"retry budget: 200,000 deposits -> {growth} B kept")


@pytest.mark.parametrize("window_type", ["count", "time"])
@pytest.mark.usefixtures("quiet")
async def test_breaker_window_is_bounded(window_type: str) -> None:
    """40,000 outcomes: the breaker's window holds at most its size."""
    breaker = layers.CircuitBreaker(
        name="cb",
        window_type=window_type,  # type: ignore[arg-type]
        window_size=50 if window_type == "count" else 10.0,
        failure_rate_threshold=1.0,
    )

    async def sometimes(request: int) -> int:
        if request % 3 == 0:
            raise PayloadError
        return request

    service = breaker.layer(sometimes)
    counter = [0]

    async def flood(n: int) -> None:
        for _ in range(n):
            counter[0] += 1
            with contextlib.suppress(PayloadError):
                await service(counter[0])
            if counter[0] % 500 == 0:
                await anyio.sleep(1)

    growth = await flood_growth(flood, 20_000)
    stats = breaker.statistics()
    assert stats.calls <= (50 if window_type == "count" else 10 * 500 + 500)
    assert growth < 16 * 1024, growth
    print(f"breaker {window_type} window: 40,000 calls -> {stats.calls} in window")


async def test_flood_growth_sees_a_leak() -> None:
    """The measuring helper of the flood tests is not blind: a leak shows up."""
    kept: list[bytearray] = []

    async def leaky_flood(n: int) -> None:
        for _ in range(n):
            kept.append(bytearray(100))
            await anyio.lowlevel.checkpoint()

    growth = await flood_growth(leaky_flood, 1_000)
    assert growth > 100_000


# --------------------------------------------------------------------- httpx redaction


CREDENTIAL_HEADERS = [
    "Authorization",
    "proxy-authorization",
    "Cookie",
    "SET-COOKIE",
    "X-Api-Key",
    "x-api-key",
    "X-API-KEY",
    "X-Auth-Token",
    "X-Amz-Security-Token",
    "X-CSRF-Token",
    "X-Goog-Api-Key",
    "Ocp-Apim-Subscription-Key",
    "X-Functions-Key",
    "X-Client-Secret",
    "X-Session-Id",
    "X-Hub-Signature-256",
    "Api_Key",
    "apikey",
    "X-Password",
]
PLAIN_HEADERS = ["Accept", "Content-Type", "User-Agent", "Keep-Alive", "Retry-After"]


@pytest.mark.parametrize("name", CREDENTIAL_HEADERS)
def test_redact_headers_hides_credential_like_names(name: str) -> None:
    """Any credential-like header name, in any case, as str or bytes, is hidden."""
    httpx = pytest.importorskip("httpx")
    from layers.httpx import redact_headers

    assert redact_headers([(name, "hunter2")]) == [(name, "[redacted]")]
    raw = name.encode()
    assert redact_headers([(raw, b"hunter2")]) == [(raw, b"[redacted]")]
    assert redact_headers({name: "hunter2"}) == [(name, "[redacted]")]
    headers = httpx.Headers({name: "hunter2"})
    assert "hunter2" not in repr(redact_headers(headers))
    assert "hunter2" not in repr(redact_headers(headers.raw))


@pytest.mark.parametrize("name", PLAIN_HEADERS)
def test_redact_headers_keeps_plain_headers(name: str) -> None:
    """Ordinary headers keep their values (str and bytes alike)."""
    pytest.importorskip("httpx")
    from layers.httpx import redact_headers

    assert redact_headers([(name, "v")]) == [(name, "v")]
    assert redact_headers([(name.encode(), b"v")]) == [(name.encode(), b"v")]


CREDENTIAL_PARAMS = [
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "api-key",
    "key",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "signature",
    "sig",
    "auth",
    "session",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "TOKEN",
    "%74oken",  # percent-encoded "token"
]


@pytest.mark.parametrize("name", CREDENTIAL_PARAMS)
def test_redact_url_hides_credential_like_query_parameters(name: str) -> None:
    """The value of a credential-like query parameter is hidden; others are kept."""
    pytest.importorskip("httpx")
    from layers.httpx import redact_url

    url = f"https://api.example.com/items?page=2&{name}=hunter2&sort=asc"
    redacted = redact_url(url)
    assert "hunter2" not in redacted
    assert redacted == (
        f"https://api.example.com/items?page=2&{name}=[redacted]&sort=asc"
    )


def test_redact_url_edge_cases() -> None:
    """Userinfo and query together, fragments, repeats, empty values, non-URLs."""
    httpx = pytest.importorskip("httpx")
    from layers.httpx import redact_url

    assert redact_url("https://ada:pw@x.test/a?token=t1&q=1&token=t2") == (
        "https://[redacted]@x.test/a?token=[redacted]&q=1&token=[redacted]"
    )
    assert redact_url("https://x.test/cb#access_token=t1&state=s") == (
        "https://x.test/cb#access_token=[redacted]&state=s"
    )
    assert redact_url(httpx.URL("https://x.test/?key=k&page=1")) == (
        "https://x.test/?key=[redacted]&page=1"
    )
    assert redact_url("https://x.test/?token") == "https://x.test/?token"
    assert redact_url("https://x.test/?monkey=1&keyword=2") == (
        "https://x.test/?monkey=1&keyword=2"
    )
    assert redact_url("https://x.test/?") == "https://x.test/?"
    assert redact_url("http://[::1:token=hunter2") == "[redacted]"  # not a URL


async def test_no_url_or_header_credential_reaches_a_message_event_or_log() -> None:
    """A retried request with credentials in its URL, userinfo and headers: no leak."""
    httpx = pytest.importorskip("httpx")
    from layers.httpx import (
        LayeredTransport,
        RetryableResponse,
        RetryOn,
        describe_request,
        retry_after,
    )

    sent: list[Any] = []

    def handler(request: Any) -> Any:
        sent.append(request)
        return httpx.Response(503)

    stack = layers.ServiceBuilder().retry(
        on=RetryOn(),
        retry_after=retry_after,
        max_attempts=3,
        backoff=[0.1],
        budget=None,
    )
    transport = LayeredTransport(stack, httpx.MockTransport(handler))
    headers = {"X-Api-Key": "hunter2", "X-Auth-Token": "hunter2"}
    url = "https://ada:hunter2@api.example.com/items?access_token=hunter2&page=1"
    layers.set_error_messages(True)
    try:
        with (
            capture_events(layers.Event) as events,
            structlog.testing.capture_logs() as logs,
        ):
            async with httpx.AsyncClient(transport=transport, headers=headers) as http:
                response = await http.get(url)
    finally:
        layers.set_error_messages(False)
    assert response.status_code == 503
    assert len(sent) == 3
    error = RetryableResponse(response, sent[0])
    text = " ".join(
        [
            *map(repr, events),
            json.dumps([event.fields() for event in events], default=str),
            repr(logs),
            str(error),
            repr(error),
            describe_request(sent[0]),
            repr(transport),
        ]
    )
    assert events
    assert "hunter2" not in text
    assert "access_token=[redacted]&page=1" in str(error)
