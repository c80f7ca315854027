"""Tests of layers.httpx: the layered transport, HTTP classification, redaction."""

from __future__ import annotations

import email.utils
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

import layers
from layers.httpx import (
    IDEMPOTENT_METHODS,
    MAX_RETRY_AFTER,
    RETRY_STATUSES,
    LayeredTransport,
    RetryableResponse,
    RetryOn,
    breaker_options,
    describe_request,
    host_key,
    is_failure,
    is_failure_response,
    is_replayable,
    parse_retry_after,
    redact_headers,
    redact_url,
    retry_after,
)
from layers.testing import capture_events

pytestmark = pytest.mark.anyio

URL = "https://api.example.com/items"
SECRET_URL = "https://ada:hunter2@api.example.com/items?page=1"


class Body(httpx.AsyncByteStream):
    """A response body that records whether it was closed, and its chunks sent."""

    def __init__(self, chunks: list[bytes] | None = None, pause: float = 0.0) -> None:
        self.chunks = chunks if chunks is not None else [b"body"]
        self.pause = pause
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if self.pause:
                await anyio.sleep(self.pause)
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


class Server:
    """A scripted MockTransport handler: answers in turn, keeps requests and bodies."""

    def __init__(self, *answers: int | Exception | tuple[int, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.bodies: list[Body] = []
        self.delay = 0.0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delay:
            await anyio.sleep(self.delay)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        body = Body()
        self.bodies.append(body)
        return httpx.Response(status, headers=headers, stream=body)

    @property
    def transport(self) -> httpx.MockTransport:
        """A MockTransport that answers with this server."""
        return httpx.MockTransport(self)


def client(stack: Any, server: Server, **options: Any) -> httpx.AsyncClient:
    """An AsyncClient whose requests pass *stack* and reach *server*."""
    return httpx.AsyncClient(
        transport=LayeredTransport(stack, server.transport, **options)
    )


def retrying(**options: Any) -> layers.ServiceBuilder:
    """A builder with an HTTP retry: 3 attempts, 1 s apart, no budget."""
    settings: dict[str, Any] = {
        "on": RetryOn(),
        "retry_after": retry_after,
        "max_attempts": 3,
        "backoff": [1.0],
        "budget": None,
    }
    settings.update(options)
    return layers.ServiceBuilder().retry(**settings)


def state(breaker: layers.CircuitBreaker) -> layers.CircuitState:
    """The breaker's state (a call, so type checkers do not narrow it)."""
    return breaker.state


def connect_error() -> httpx.ConnectError:
    """A connection failure (httpx sets its request when it passes the client)."""
    return httpx.ConnectError("connection refused")


# ----------------------------------------------------------------- retry


async def test_503_is_retried_and_the_discarded_response_closed() -> None:
    """A 503 then a 200: two calls reach the server, the 503's body is closed."""
    server = Server(503, 200)
    async with client(retrying(), server) as http:
        response = await http.get(URL)
    assert response.status_code == 200
    assert len(server.requests) == 2
    assert server.bodies[0].closed
    assert response.content == b"body"


async def test_discarded_response_is_closed_before_the_next_attempt() -> None:
    """The earlier response is closed by the time the next attempt is sent."""
    server = Server(503, 503, 200)
    seen: list[list[bool]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append([body.closed for body in server.bodies])
        return await server(request)

    transport = LayeredTransport(retrying(), httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as http:
        assert (await http.get(URL)).status_code == 200
    assert seen == [[], [True], [True, True]]


@pytest.mark.parametrize("status", sorted(RETRY_STATUSES))
async def test_each_default_status_is_retried(status: int) -> None:
    """429, 502, 503 and 504 are retried by default."""
    server = Server(status, 200)
    async with client(retrying(), server) as http:
        assert (await http.get(URL)).status_code == 200
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 500, 501])
async def test_other_statuses_are_returned_at_once(status: int) -> None:
    """A 4xx or a 500 is not retried by default: one call, returned as is."""
    server = Server(status, 200)
    async with client(retrying(), server) as http:
        assert (await http.get(URL)).status_code == status
    assert len(server.requests) == 1


async def test_giving_up_returns_the_last_response_open_and_closes_the_others() -> None:
    """After 3 x 503 the caller gets the third, readable; the first two are closed."""
    server = Server(503)
    async with client(retrying(), server) as http:
        response = await http.send(http.build_request("GET", URL), stream=True)
        assert response.status_code == 503
        assert [body.closed for body in server.bodies] == [True, True, False]
        assert await response.aread() == b"body"
        await response.aclose()
    assert len(server.requests) == 3


async def test_retry_after_seconds_is_the_delay() -> None:
    """A 429 with Retry-After: 7 makes the retry wait 7 s, not the 1 s backoff."""
    server = Server((429, {"Retry-After": "7"}), 200)
    async with client(retrying(max_delay=60), server) as http:
        start = anyio.current_time()
        assert (await http.get(URL)).status_code == 200
        assert anyio.current_time() - start == pytest.approx(7, abs=0.01)


async def test_retry_after_http_date_is_the_delay() -> None:
    """A Retry-After HTTP-date 30 s ahead makes the retry wait about 30 s."""
    when = email.utils.format_datetime(
        datetime.now(UTC) + timedelta(seconds=30), usegmt=True
    )
    server = Server((503, {"Retry-After": when}), 200)
    async with client(retrying(max_delay=60), server) as http:
        start = anyio.current_time()
        assert (await http.get(URL)).status_code == 200
        assert 28 <= anyio.current_time() - start <= 30.01


async def test_retry_after_above_max_delay_stops_and_returns_the_response() -> None:
    """A Retry-After longer than max_delay ends retrying: the 503 is returned."""
    server = Server((503, {"Retry-After": "3600"}), 200)
    async with client(retrying(max_delay=60), server) as http:
        response = await http.get(URL)
    assert response.status_code == 503
    assert len(server.requests) == 1


async def test_post_is_not_retried_by_default() -> None:
    """A POST that gets a 503 is returned at once: it may have been processed."""
    server = Server(503, 200)
    async with client(retrying(), server) as http:
        assert (await http.post(URL, json={"a": 1})).status_code == 503
    assert len(server.requests) == 1


async def test_post_is_retried_when_told() -> None:
    """RetryOn(methods=None) retries any method, POST included (its body resent)."""
    server = Server(503, 200)
    async with client(retrying(on=RetryOn(methods=None)), server) as http:
        assert (await http.post(URL, json={"a": 1})).status_code == 200
    assert [request.content for request in server.requests] == [b'{"a":1}'] * 2


async def test_transport_errors_are_retried_for_get() -> None:
    """A connection failure on a GET is retried."""
    server = Server(connect_error(), 200)
    async with client(retrying(), server) as http:
        assert (await http.get(URL)).status_code == 200
    assert len(server.requests) == 2


async def test_transport_errors_on_post_reach_the_caller() -> None:
    """A connection failure on a POST is raised at once, unchanged."""
    error = connect_error()
    server = Server(error, 200)
    async with client(retrying(), server) as http:
        with pytest.raises(httpx.ConnectError) as raised:
            await http.post(URL, content=b"x")
    assert raised.value is error
    assert len(server.requests) == 1


async def streamed_body() -> AsyncIterator[bytes]:
    """A request body that can be read once."""
    yield b"chunk-1"
    yield b"chunk-2"


async def test_streaming_request_body_is_not_retried_error() -> None:
    """A streaming PUT that fails to connect: the caller sees the ConnectError."""
    server = Server(connect_error(), 200)
    async with client(retrying(), server) as http:
        with pytest.raises(httpx.ConnectError):
            await http.put(URL, content=streamed_body())
    assert len(server.requests) == 1


async def test_streaming_request_body_is_not_retried_response() -> None:
    """A streaming PUT answered 503: the caller gets the 503, one call made."""
    server = Server(503, 200)
    async with client(retrying(), server) as http:
        assert (await http.put(URL, content=streamed_body())).status_code == 503
    assert len(server.requests) == 1


async def test_on_result_path_closes_discarded_responses() -> None:
    """raise_statuses=() with on_result=RetryOn().response: retried, closed."""
    server = Server(503, 200)
    stack = retrying(on=httpx.TransportError, on_result=RetryOn().response)
    async with client(stack, server, raise_statuses=()) as http:
        assert (await http.get(URL)).status_code == 200
    assert server.bodies[0].closed
    assert len(server.requests) == 2


def kept_responses(**options: Any) -> layers.ServiceBuilder:
    """The HTTP retry for responses kept as responses (raise_statuses=())."""
    return retrying(on_result=RetryOn().response, max_delay=60, **options)


async def test_a_kept_429_waits_for_its_retry_after() -> None:
    """raise_statuses=(): a 429 response is retried after its Retry-After."""
    server = Server((429, {"Retry-After": "7"}), (503, {"Retry-After": "2"}), 200)
    with capture_events(layers.events.RetryAttemptFailed) as seen:
        async with client(kept_responses(), server, raise_statuses=()) as http:
            assert (await http.get(URL)).status_code == 200
    assert anyio.current_time() == pytest.approx(9, abs=0.01)
    assert [event.delay for event in seen] == [7.0, 2.0]
    assert [event.error for event in seen] == [None, None]
    assert server.bodies[0].closed
    assert server.bodies[1].closed
    assert len(server.requests) == 3


async def test_a_kept_response_without_retry_after_waits_the_backoff() -> None:
    """raise_statuses=(): a 503 with no (or a malformed) header waits the backoff."""
    server = Server(503, (503, {"Retry-After": "soon"}), 200)
    async with client(kept_responses(), server, raise_statuses=()) as http:
        assert (await http.get(URL)).status_code == 200
    assert anyio.current_time() == pytest.approx(2, abs=0.01)


async def test_a_kept_response_with_a_long_retry_after_is_returned() -> None:
    """raise_statuses=(): a Retry-After over max_delay returns the 503 at once."""
    server = Server((503, {"Retry-After": "3600"}), 200)
    with capture_events(layers.events.RetryStopped) as stopped:
        async with client(kept_responses(), server, raise_statuses=()) as http:
            response = await http.get(URL)
    assert response.status_code == 503
    assert len(server.requests) == 1
    assert anyio.current_time() == 0
    assert [(event.reason, event.delay) for event in stopped] == [
        ("retry_after", 3600.0)
    ]


async def test_a_retried_block_reads_a_kept_response() -> None:
    """A retried block hands its response over: a 429 waits its Retry-After."""
    server = Server((429, {"Retry-After": "3"}), 200)
    (retry,) = kept_responses().layers
    assert isinstance(retry, layers.Retry)
    async with httpx.AsyncClient(transport=server.transport) as http:
        async for attempt in retry:
            with attempt:
                response = attempt.result(await http.get(URL))
    assert response.status_code == 200
    assert attempt.number == 2
    assert attempt.delay == pytest.approx(3)


async def test_no_retry_in_the_stack_returns_retryable_statuses() -> None:
    """Without a retry, a 503 raised inside the stack comes back as the response."""
    server = Server(503)
    async with client(layers.ServiceBuilder().timeout(5), server) as http:
        response = await http.send(http.build_request("GET", URL), stream=True)
        assert response.status_code == 503
        assert not server.bodies[0].closed
        await response.aclose()


async def test_cancelled_during_backoff_closes_the_pending_response() -> None:
    """Cancelled while the retry waits: the 503 it held is closed, the permit freed."""
    server = Server(503, 200)
    limit = layers.ConcurrencyLimit(1)
    stack = retrying(backoff=[100.0]).layer(limit)
    async with client(stack, server) as http:
        with anyio.move_on_after(5) as scope:
            await http.get(URL)
    assert scope.cancelled_caught
    assert len(server.requests) == 1
    assert server.bodies[0].closed
    assert limit.statistics().in_flight == 0


async def test_cancelled_in_the_transport_releases_everything() -> None:
    """Cancelled while the server is slow: nothing held, nothing returned."""
    server = Server(200)
    server.delay = 100
    limit = layers.ConcurrencyLimit(1)
    async with client(layers.ServiceBuilder().layer(limit), server) as http:
        with anyio.move_on_after(1) as scope:
            await http.get(URL)
    assert scope.cancelled_caught
    assert limit.statistics().in_flight == 0


async def test_timeout_applies_to_the_headers() -> None:
    """A Timeout in the stack raises Elapsed when the server is slower."""
    server = Server(200)
    server.delay = 10
    async with client(layers.ServiceBuilder().timeout(2), server) as http:
        with pytest.raises(layers.Elapsed):
            await http.get(URL)


# ----------------------------------------------------------------- streaming


async def test_streamed_response_is_not_buffered_and_holds_end_at_headers() -> None:
    """Streaming a body: the layers return at the headers; the permit is back first."""
    body = Body([b"a", b"b", b"c"], pause=1.0)
    limit = layers.ConcurrencyLimit(1)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=body)

    transport = LayeredTransport(
        layers.ServiceBuilder().timeout(0.5).layer(limit), httpx.MockTransport(handler)
    )
    async with (
        httpx.AsyncClient(transport=transport) as http,
        http.stream("GET", URL) as response,
    ):
        assert limit.statistics().in_flight == 0  # the hold ended at the headers
        chunks = [chunk async for chunk in response.aiter_raw()]
    # 3 s of body under a 0.5 s timeout: the timeout covered the headers only
    assert chunks == [b"a", b"b", b"c"]
    assert body.closed


# ----------------------------------------------------------------- breaker, per host


async def test_breaker_counts_5xx_and_transport_errors_not_429() -> None:
    """breaker_options(): 503s and 500s open the breaker; 429s do not."""
    server = Server(429)
    breaker = layers.CircuitBreaker(
        name="api", window_size=4, min_calls=4, **breaker_options()
    )
    async with client(layers.ServiceBuilder().layer(breaker), server) as http:
        for _ in range(4):
            assert (await http.get(URL)).status_code == 429
        assert state(breaker) is layers.CircuitState.CLOSED
        server.answers[:] = [503, 500]
        for _ in range(2):  # the window: 429, 429, 503, 500 -> half failed
            assert (await http.get(URL)).status_code >= 500
        assert state(breaker) is layers.CircuitState.OPEN
        with pytest.raises(layers.CircuitOpen):
            await http.get(URL)
    assert len(server.requests) == 6


def test_breaker_classification() -> None:
    """is_failure and is_failure_response classify errors and statuses."""
    request = httpx.Request("GET", URL)
    assert is_failure(httpx.ConnectError("x"))
    assert is_failure(httpx.ReadTimeout("x"))
    assert is_failure(layers.Elapsed(timeout=1.0, layer="t"))
    assert is_failure(RetryableResponse(httpx.Response(503), request))
    assert not is_failure(RetryableResponse(httpx.Response(429), request))
    assert not is_failure(ValueError("bug"))
    assert not is_failure(layers.Overloaded(layer="limit"))
    assert is_failure_response(httpx.Response(500))
    assert not is_failure_response(httpx.Response(404))


async def test_per_host_breakers_are_separate() -> None:
    """PerKey(key=host_key): a failing host opens its own breaker, not another's."""
    made: dict[str, layers.CircuitBreaker] = {}

    def breaker(host: str) -> layers.CircuitBreaker:
        made[host] = layers.CircuitBreaker(
            name=host, window_size=2, min_calls=2, **breaker_options()
        )
        return made[host]

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if request.url.host == "down.test" else 200)

    per_host = layers.PerKey(breaker, key=host_key)
    transport = LayeredTransport(per_host, httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as http:
        for _ in range(2):
            await http.get("https://down.test/")
        with pytest.raises(layers.CircuitOpen):
            await http.get("https://down.test/")
        assert (await http.get("https://up.test/")).status_code == 200
    assert made["https://down.test:443"].state is layers.CircuitState.OPEN
    assert made["https://up.test:443"].state is layers.CircuitState.CLOSED


async def test_rate_limit_per_host() -> None:
    """RateLimit(key=host_key): each host has its own rate."""
    server = Server(200)
    stack = layers.ServiceBuilder().rate_limit(1, 10, key=host_key)
    async with client(stack, server) as http:
        start = anyio.current_time()
        await http.get("https://a.test/")
        await http.get("https://b.test/")
        assert anyio.current_time() - start == pytest.approx(0, abs=0.01)
        await http.get("https://a.test/x")
        assert anyio.current_time() - start == pytest.approx(10, abs=0.01)


def test_host_key() -> None:
    """host_key gives scheme://host:port, with the default port and no userinfo."""
    assert host_key(httpx.Request("GET", SECRET_URL)) == "https://api.example.com:443"
    assert host_key(httpx.Request("GET", "http://x.test:8080/")) == "http://x.test:8080"
    assert host_key(httpx.Request("GET", "http://x.test/")) == "http://x.test:80"


# ----------------------------------------------------------------- redaction


def test_redact_url_hides_userinfo() -> None:
    """redact_url hides user and password; URLs without them are unchanged."""
    assert redact_url(SECRET_URL) == "https://[redacted]@api.example.com/items?page=1"
    assert redact_url(httpx.URL("https://tok@x.test/")) == "https://[redacted]@x.test/"
    assert redact_url(URL) == URL


def test_redact_headers_and_describe_request() -> None:
    """Authorization, Proxy-Authorization and Cookie values are hidden."""
    request = httpx.Request(
        "GET",
        SECRET_URL,
        headers={
            "Authorization": "Bearer hunter2",
            "proxy-authorization": "Basic hunter2",
            "Cookie": "session=hunter2",
            "Accept": "*/*",
        },
    )
    described = describe_request(request) + repr(redact_headers(request.headers))
    assert "hunter2" not in described
    assert "GET https://[redacted]@api.example.com/items?page=1" in described
    assert ("accept", "*/*") in redact_headers(request.headers)


async def test_nothing_that_describes_a_request_leaks_credentials() -> None:
    """Events, logs, RetryableResponse and the transport's repr carry no secret."""
    server = Server(503)
    headers = {"Authorization": "Bearer hunter2", "Cookie": "sid=hunter2"}
    stack = retrying()
    transport = LayeredTransport(stack, server.transport)
    with capture_events(layers.Event) as events:
        async with httpx.AsyncClient(transport=transport, headers=headers) as http:
            await http.get(SECRET_URL)
    assert events
    error = RetryableResponse(httpx.Response(503), server.requests[0])
    text = " ".join(map(repr, events)) + str(error) + repr(error) + repr(transport)
    assert "hunter2" not in text
    assert "[redacted]@api.example.com" in str(error)


# ----------------------------------------------------------------- classification


def test_retry_on_classification() -> None:
    """RetryOn: status, method, body and error type decide."""
    on = RetryOn()
    get = httpx.Request("GET", URL)
    post = httpx.Request("POST", URL, content=b"x")
    assert on(RetryableResponse(httpx.Response(503), get))
    assert not on(RetryableResponse(httpx.Response(503), post))
    assert not on(RetryableResponse(httpx.Response(500), get))
    assert on(httpx.ReadTimeout("slow", request=get))
    assert not on(httpx.ReadTimeout("slow", request=post))
    assert not on(httpx.ConnectError("no request attached"))
    assert not on(ValueError("bug"))
    assert RetryOn(methods={"post"})(httpx.ConnectError("x", request=post))
    assert RetryOn(statuses={500})(RetryableResponse(httpx.Response(500), get))
    assert RetryOn(errors=ValueError).errors == (ValueError,)
    response = httpx.Response(503, request=get)
    assert on.response(response)
    assert not on.response(httpx.Response(503))  # no request: cannot tell
    assert set(IDEMPOTENT_METHODS) == {
        "GET",
        "HEAD",
        "OPTIONS",
        "PUT",
        "DELETE",
        "TRACE",
    }


def test_is_replayable() -> None:
    """Bodies in memory are replayable; a streaming body is not."""
    assert is_replayable(httpx.Request("GET", URL))
    assert is_replayable(httpx.Request("POST", URL, data={"a": "b"}))
    assert is_replayable(httpx.Request("POST", URL, files={"f": b"data"}))
    assert not is_replayable(httpx.Request("POST", URL, content=streamed_body()))


def test_retry_after_reader() -> None:
    """retry_after reads a response, RetryableResponse, HTTPStatusError; else None."""
    request = httpx.Request("GET", URL)
    response = httpx.Response(429, headers={"Retry-After": "3"}, request=request)
    assert retry_after(RetryableResponse(response, request)) == 3.0
    status_error = httpx.HTTPStatusError("x", request=request, response=response)
    assert retry_after(status_error) == 3.0
    assert retry_after(RetryableResponse(httpx.Response(503), request)) is None
    assert retry_after(ValueError()) is None
    assert retry_after(response) == 3.0
    assert retry_after(httpx.Response(503)) is None
    assert retry_after(httpx.Response(503, headers={"Retry-After": "-1"})) is None


def test_parse_retry_after_forms() -> None:
    """Seconds, HTTP-dates (future, past, IMF and obsolete forms), garbage."""
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    assert parse_retry_after(" 5 ") == 5.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now=now) == 60.0
    assert parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now=now) == 60.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now=now) == 0.0
    for bad in [None, "", "-5", "1.5", "soon", "²", "Wed, 99 Foo 2015"]:
        assert parse_retry_after(bad, now=now) is None, bad


@hypothesis.given(st.integers(min_value=0, max_value=10**400))
def test_parse_retry_after_any_delta_seconds(seconds: int) -> None:
    """Any non-negative integer of delta-seconds parses to itself, at most the cap."""
    expected = float(seconds) if seconds <= MAX_RETRY_AFTER else MAX_RETRY_AFTER
    assert parse_retry_after(str(seconds)) == expected


@hypothesis.given(st.text(max_size=40))
def test_parse_retry_after_never_raises(value: str) -> None:
    """Whatever the header holds, parsing gives None or a number >= 0."""
    result = parse_retry_after(value)
    assert result is None or result >= 0


# ----------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda: RetryOn(statuses={99}), "statuses"),
        (lambda: RetryOn(statuses=503), "statuses"),  # type: ignore[arg-type]
        (lambda: RetryOn(methods="GET"), "methods"),
        (lambda: RetryOn(methods=[""]), "methods"),
        (lambda: RetryOn(errors=(int,)), "errors"),  # type: ignore[arg-type]
        (
            lambda: LayeredTransport(layers.Identity(), raise_statuses=503),  # type: ignore[arg-type]
            "raise_statuses",
        ),
        (
            lambda: LayeredTransport(layers.Identity(), raise_statuses={600}),
            "raise_statuses",
        ),
    ],
    ids=[
        "status-99",
        "statuses-int",
        "methods-str",
        "methods-empty",
        "errors-int",
        "raise-statuses-int",
        "raise-statuses-600",
    ],
)
def test_bad_configuration_is_a_clear_error(
    make: Callable[[], object], names: str
) -> None:
    """Every bad option raises ConfigurationError naming the parameter."""
    with pytest.raises(layers.ConfigurationError, match=names):
        make()


def test_bad_types_are_type_errors() -> None:
    """A stack that is not a layer, or a transport that is not one, is refused."""
    with pytest.raises(TypeError, match="stack must be a Layer"):
        LayeredTransport(object())  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"transport must be an httpx\.AsyncBaseTransport"
    ):
        LayeredTransport(layers.Identity(), object())  # type: ignore[arg-type]


async def test_closing_the_transport_closes_the_real_one() -> None:
    """The client's aclose reaches the real transport."""
    closed: list[bool] = []

    class Real(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200)

        async def aclose(self) -> None:
            closed.append(True)

    async with httpx.AsyncClient(
        transport=LayeredTransport(layers.Identity(), Real())
    ) as http:
        await http.get(URL)
    assert closed == [True]


def test_default_transport_is_httpx() -> None:
    """With no transport given, requests go to an httpx.AsyncHTTPTransport."""
    transport = LayeredTransport(layers.Identity())
    assert isinstance(transport.transport, httpx.AsyncHTTPTransport)


# ----------------------------------------------------------------- a real server


@pytest.mark.realtime
@pytest.mark.timeout(30)
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_against_a_real_server(anyio_backend: str) -> None:
    """Over real HTTP (hypercorn): a 503 then 200 is retried by a layered client."""
    pytest.importorskip("hypercorn")
    from hypercorn.config import Config

    hits: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        hits.append(scope["path"])
        status = 503 if len(hits) == 1 else 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"retry-after", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b"hello"})

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]
    config.accesslog = config.errorlog = None
    if anyio_backend == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment]
    stop = anyio.Event()
    response: httpx.Response | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        )
        stack = (
            layers.ServiceBuilder()
            .timeout(10)
            .layer(layers.Retry(on=RetryOn(), retry_after=retry_after, max_attempts=3))
        )
        async with httpx.AsyncClient(transport=LayeredTransport(stack)) as http:
            for _ in range(100):
                try:
                    response = await http.get(f"http://user:pw@127.0.0.1:{port}/x")
                    break
                except httpx.ConnectError:
                    await anyio.sleep(0.05)
            else:
                pytest.fail("the server did not start")
        stop.set()
    assert response is not None
    assert response.status_code == 200
    assert response.text == "hello"
    assert hits == ["/x", "/x"]


# ----------------------------------------------------------------- hardening (issue 11)


HUGE_RETRY_AFTERS = ["9" * 20, "9" * 400, "9" * 5000, "99999999999"]


@pytest.mark.parametrize("value", HUGE_RETRY_AFTERS, ids=lambda v: f"{len(v)}-digits")
def test_parse_retry_after_huge_delta_seconds_is_clamped(value: str) -> None:
    """Delta-seconds no float can hold (or absurdly long) clamp to the ceiling."""
    assert parse_retry_after(value) == MAX_RETRY_AFTER
    assert parse_retry_after(f" {value} ") == MAX_RETRY_AFTER


def test_parse_retry_after_ceiling_and_below() -> None:
    """Up to the ceiling a value is itself; one second more is the ceiling."""
    ceiling = int(MAX_RETRY_AFTER)
    assert parse_retry_after(str(ceiling)) == MAX_RETRY_AFTER
    assert parse_retry_after(str(ceiling + 1)) == MAX_RETRY_AFTER
    assert parse_retry_after(str(ceiling - 1)) == MAX_RETRY_AFTER - 1
    assert parse_retry_after("0" * 500 + "7") == 7.0  # leading zeros


@pytest.mark.parametrize(
    "value",
    [
        "-5",
        "-0",
        "+5",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e400",
        "1e3",
        "0x10",
        "5_000",
        "Fri, 31 Dec 99999 23:59:59 GMT",  # a year no date can hold
        "Fri, 31 Dec 9999 23:59:59 +9999",  # an offset no timezone can hold
        "Fri, 31 Dec 9999 99:99:99 GMT",
        "Mon, 99 Jan 2015 00:00:00 GMT",
        "Mon, 01 Jan " + "9" * 400 + " 00:00:00 GMT",
        "Mon, 01 Jan 2015 " + "9" * 400 + ":00:00 GMT",
    ],
)
def test_parse_retry_after_malformed_values_give_no_hint(value: str) -> None:
    """Negative, nan/inf, float syntax and impossible dates are malformed: None."""
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    assert parse_retry_after(value, now=now) is None


def test_parse_retry_after_far_dates() -> None:
    """A date in the far future clamps to the ceiling; a far past one is 0."""
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=now) == (
        MAX_RETRY_AFTER
    )
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 -2359", now=now) == (
        MAX_RETRY_AFTER
    )
    assert parse_retry_after("Mon, 01 Jan 0001 00:00:00 +2359", now=now) == 0.0
    # a naive "now" is read as UTC, not refused
    naive = datetime(2015, 10, 21, 7, 28)
    assert parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now=naive) == 60.0


_header_atoms = st.one_of(
    st.integers(min_value=-(10**500), max_value=10**500).map(str),
    st.sampled_from(
        ["Mon,", "Wed,", "Jan", "Dec", "Foo", "GMT", "UTC", "+2359", "-9999", ":"]
    ),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "-0", " ", ",", "-"]),
    st.text(max_size=6),
)


@hypothesis.given(st.lists(_header_atoms, max_size=8).map(" ".join))
def test_parse_retry_after_never_raises_on_date_like_values(value: str) -> None:
    """Date-like and number-like junk of any size: None or a finite value in range."""
    result = parse_retry_after(value)
    assert result is None or 0 <= result <= MAX_RETRY_AFTER


@pytest.mark.parametrize("value", HUGE_RETRY_AFTERS, ids=lambda v: f"{len(v)}-digits")
async def test_huge_retry_after_through_the_transport_returns_the_response(
    value: str,
) -> None:
    """A 503 with a huge Retry-After: the client gets the 503, no exception, no wait."""
    server = Server((503, {"Retry-After": value}), 200)
    async with client(retrying(max_delay=60), server) as http:
        start = anyio.current_time()
        response = await http.get(URL)
        assert anyio.current_time() - start < 1
    assert response.status_code == 503
    assert len(server.requests) == 1


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "9" * 5000 + "x"])
async def test_malformed_retry_after_through_the_transport_uses_the_backoff(
    value: str,
) -> None:
    """A malformed Retry-After is no hint: the 1 s backoff applies, then a 200."""
    server = Server((503, {"Retry-After": value}), 200)
    async with client(retrying(max_delay=60), server) as http:
        start = anyio.current_time()
        assert (await http.get(URL)).status_code == 200
        assert anyio.current_time() - start == pytest.approx(1, abs=0.01)


def test_retry_after_reader_never_raises_on_huge_headers() -> None:
    """retry_after() on an HTTPStatusError with a 5,000-digit header: the ceiling."""
    request = httpx.Request("GET", URL)
    response = httpx.Response(503, headers={"Retry-After": "9" * 5000}, request=request)
    error = httpx.HTTPStatusError("x", request=request, response=response)
    assert retry_after(error) == MAX_RETRY_AFTER
    assert retry_after(RetryableResponse(response, request)) == MAX_RETRY_AFTER


async def test_documented_stack_does_not_sleep_on_a_huge_retry_after() -> None:
    """The LayeredTransport docstring's stack (with its max_delay): no absurd sleep."""
    stack = layers.ServiceBuilder().retry(
        on=RetryOn(),
        retry_after=retry_after,
        max_attempts=3,
        backoff=[0.01],
        max_delay=30,
    )
    server = Server((503, {"Retry-After": "99999999999"}), 200)
    async with client(stack, server) as http:
        start = anyio.current_time()
        response = await http.get(URL)
        waited = anyio.current_time() - start
    assert response.status_code == 503
    assert waited < 1, waited
    assert len(server.requests) == 1
    # and the docstring's example says so (max_delay shown)
    assert "max_delay=" in (LayeredTransport.__doc__ or "")


# --- item 10: a timeout inside the retry


def slow_then_fast(delays: list[float]) -> tuple[httpx.MockTransport, list[str]]:
    """A transport whose n-th call takes delays[n] seconds (the last repeats)."""
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        delay = delays[min(len(seen), len(delays)) - 1]
        await anyio.sleep(delay)
        return httpx.Response(200)

    return httpx.MockTransport(handler), seen


def retry_with_attempt_timeout(
    on: RetryOn,
) -> layers.ServiceBuilder:
    """The pattern of docs/howto/retry.md: retry, then a per-attempt timeout."""
    return retrying(on=on).timeout(1.0, name="attempt")


async def test_elapsed_inside_the_retry_is_retried() -> None:
    """RetryOn(errors=(TransportError, Elapsed)) retries a per-attempt timeout."""
    transport, seen = slow_then_fast([10.0, 0.0])
    on = RetryOn(errors=(httpx.TransportError, layers.Elapsed))
    layered = LayeredTransport(retry_with_attempt_timeout(on), transport)
    async with httpx.AsyncClient(transport=layered) as http:
        assert (await http.get(URL)).status_code == 200
    assert seen == ["GET", "GET"]


async def test_elapsed_inside_the_retry_respects_method_and_body() -> None:
    """A POST (by default) or a streaming PUT that times out is not retried."""
    on = RetryOn(errors=(httpx.TransportError, layers.Elapsed))
    transport, seen = slow_then_fast([10.0, 0.0])
    layered = LayeredTransport(retry_with_attempt_timeout(on), transport)
    async with httpx.AsyncClient(transport=layered) as http:
        with pytest.raises(layers.Elapsed):
            await http.post(URL, content=b"x")
        assert seen == ["POST"]
        seen.clear()
        with pytest.raises(layers.Elapsed):
            await http.put(URL, content=streamed_body())
        assert seen == ["PUT"]


async def test_rejection_below_the_retry_is_retried_when_named() -> None:
    """A Rejected from a layer below (no request on it) is retried when in errors."""
    on = RetryOn(errors=(httpx.TransportError, layers.RateLimited))
    server = Server(200)
    stack = retrying(on=on, max_delay=60).rate_limit(1, 10, mode="reject")
    async with client(stack, server) as http:
        await http.get(URL)
        start = anyio.current_time()
        assert (await http.get(URL)).status_code == 200  # refused, waited, sent
        assert anyio.current_time() - start == pytest.approx(10, abs=0.01)
    assert len(server.requests) == 2


def test_retry_on_without_a_request_outside_a_transport() -> None:
    """Outside a LayeredTransport an error with no request is not retried."""
    on = RetryOn(errors=(httpx.TransportError, layers.Elapsed))
    assert not on(layers.Elapsed(timeout=1.0, layer="t"))


# --- item 13: messages


@pytest.mark.parametrize(
    ("make", "shown", "hidden"),
    [
        (lambda: RetryOn(statuses={200, 700}), ["RetryOn", "statuses", "700"], "200"),
        (lambda: RetryOn(statuses={503, 99, 1000}), ["99", "1000"], "503"),
        (
            lambda: RetryOn(statuses={503, "504"}),  # type: ignore[arg-type]
            ["RetryOn", "statuses", "'504'"],
            "503",
        ),
        (
            lambda: LayeredTransport(layers.Identity(), raise_statuses={200, 700}),
            ["LayeredTransport", "raise_statuses", "700"],
            "200",
        ),
    ],
    ids=["retry-on-700", "retry-on-two-bad", "retry-on-str", "transport-700"],
)
def test_status_messages_name_only_the_bad_values(
    make: Callable[[], object], shown: list[str], hidden: str
) -> None:
    """The message names the class, the parameter and only the bad statuses."""
    with pytest.raises(layers.ConfigurationError) as raised:
        make()
    message = str(raised.value)
    for part in shown:
        assert part in message, message
    assert hidden not in message, message
    assert "'700'" not in message, message  # numbers are shown as numbers


# --- item 15: PerKey(key=host_key) keeps a host whose breaker is open


async def test_per_host_full_table_keeps_the_open_host() -> None:
    """Through the transport: a full table never forgets the host that is down.

    The rules themselves are tested on plain services in test_per_key.py.
    """
    made: dict[str, layers.CircuitBreaker] = {}
    hosts: list[str] = []

    def breaker(host: str) -> layers.CircuitBreaker:
        made[host] = layers.CircuitBreaker(
            name=host,
            window_size=2,
            min_calls=2,
            open_duration=30,
            **breaker_options(),
        )
        return made[host]

    async def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(503 if request.url.host == "down.test" else 200)

    per_host = layers.PerKey(breaker, key=host_key, max_keys=1)
    layered = LayeredTransport(per_host, httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=layered) as http:
        for _ in range(2):
            assert (await http.get("https://down.test/")).status_code == 503
        with pytest.raises(layers.KeyTableFull):
            await http.get("https://new.test/")
        with pytest.raises(layers.CircuitOpen):
            await http.get("https://down.test/")
    assert hosts == ["down.test", "down.test"]
    assert list(made) == ["https://down.test:443"]
