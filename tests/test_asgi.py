"""Tests of the ASGI middleware, in process: status codes, headers, pass-through."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import anyio
import hypothesis
import pytest
from hypothesis import strategies as st

import layers
from layers.asgi import HTTPRequest, LayersMiddleware, Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """A tiny ASGI app: 200 'hello' after a (virtual) sleep given by the path."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    delay = float(scope["path"].strip("/") or 0)
    await anyio.sleep(delay)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def http_scope(path: str = "/", client: str = "10.0.0.1", **headers: str) -> Scope:
    """An ASGI http scope."""
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "client": (client, 1234),
        "headers": [
            (name.replace("_", "-").encode(), value.encode())
            for name, value in headers.items()
        ],
    }


async def call(app: Any, scope: Scope) -> tuple[int, dict[str, str], bytes]:
    """Run *app* on *scope*; return status, headers and body."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    headers = {bytes(k).decode(): bytes(v).decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, body


async def test_pass_through() -> None:
    """An admitted request reaches the app; its response is unchanged."""
    app = LayersMiddleware(hello, layers.ServiceBuilder().timeout(5))
    assert await call(app, http_scope()) == (200, {}, b"hello")


async def test_rate_limited_is_429_with_retry_after() -> None:
    """RateLimited becomes 429 with Retry-After rounded up to whole seconds."""
    stack = layers.ServiceBuilder().rate_limit(
        1, 2.5, mode="reject", key=layers.asgi.client_address
    )
    app = LayersMiddleware(hello, stack)
    assert (await call(app, http_scope()))[0] == 200
    status, headers, body = await call(app, http_scope())
    assert status == 429
    assert headers["retry-after"] == "3"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert body == b"Too Many Requests\n"
    assert headers["content-length"] == str(len(body))
    # Another client has its own key.
    assert (await call(app, http_scope(client="10.0.0.2")))[0] == 200


async def test_api_key_header_key() -> None:
    """header_key limits per API key; requests without it share one key."""
    stack = layers.ServiceBuilder().rate_limit(
        1, 10, mode="reject", key=layers.asgi.header_key("X-Api-Key")
    )
    app = LayersMiddleware(hello, stack)
    assert (await call(app, http_scope(x_api_key="a")))[0] == 200
    assert (await call(app, http_scope(x_api_key="b")))[0] == 200
    assert (await call(app, http_scope(x_api_key="a")))[0] == 429
    assert (await call(app, http_scope()))[0] == 200
    assert (await call(app, http_scope()))[0] == 429


async def test_timeout_is_504() -> None:
    """Elapsed becomes 504 Gateway Timeout at the deadline."""
    app = LayersMiddleware(hello, layers.ServiceBuilder().timeout(1))
    status, _, body = await call(app, http_scope("/5"))
    assert (status, body) == (504, b"Gateway Timeout\n")
    assert anyio.current_time() == pytest.approx(1, abs=1e-6)


async def test_overloaded_is_503() -> None:
    """A full load shedder answers 503 without Retry-After (unknown)."""
    app = LayersMiddleware(hello, layers.ServiceBuilder().load_shed(1))
    results: list[tuple[int, dict[str, str], bytes]] = []

    async def one() -> None:
        results.append(await call(app, http_scope("/1")))

    async with anyio.create_task_group() as group:
        group.start_soon(one)
        group.start_soon(one)
    assert sorted(status for status, _, _ in results) == [200, 503]
    refused = next(headers for status, headers, _ in results if status == 503)
    assert "retry-after" not in refused


async def test_a_refusal_the_app_raises_is_answered_the_same_way() -> None:
    """The app's own CircuitOpen (before its response) becomes 503 + Retry-After."""

    async def calls_a_broken_downstream(
        scope: Scope, receive: Receive, send: Send
    ) -> None:
        raise layers.CircuitOpen("downstream open", retry_after=2.5, layer="db")

    app = LayersMiddleware(calls_a_broken_downstream, layers.ServiceBuilder())
    status, headers, body = await call(app, http_scope())
    assert (status, headers["retry-after"]) == (503, "3")
    assert body == b"Service Unavailable\n"  # not the exception's message


async def test_shutting_down_is_503_with_connection_close() -> None:
    """A draining stack answers 503, Retry-After from the drain, Connection: close."""
    drain = layers.Drain(retry_after=5)
    app = LayersMiddleware(hello, layers.ServiceBuilder().layer(drain))
    drain.start()
    status, headers, body = await call(app, http_scope())
    assert (status, body) == (503, b"Service Unavailable\n")
    assert headers["retry-after"] == "5"
    assert headers["connection"] == "close"


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (layers.CircuitOpen(retry_after=0.2), 503, "1"),
        (layers.Overloaded(), 503, None),
        (layers.Filtered(), 403, None),
        (layers.Rejected(retry_after=7), 503, "7"),
        (layers.RateLimited(retry_after=0), 429, "0"),
        (layers.Elapsed(timeout=1), 504, None),
    ],
)
def test_error_response_mapping(
    error: layers.LayersError, status: int, retry_after: str | None
) -> None:
    """The default mapping: status and Retry-After per rejection type."""
    response = layers.asgi.error_response(error)
    assert response is not None
    assert response.status == status
    assert dict(response.headers).get("retry-after") == retry_after
    assert layers.asgi.error_response(layers.ConfigurationError("x")) is None


async def test_error_after_response_started_propagates() -> None:
    """An error after http.response.start cannot become a response: it is raised."""

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await anyio.sleep(10)

    app = LayersMiddleware(streaming, layers.ServiceBuilder().timeout(1))
    with pytest.raises(layers.Elapsed):
        await call(app, http_scope())


async def test_other_errors_propagate() -> None:
    """The app's own exceptions pass through unchanged."""

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise KeyError("app")

    app = LayersMiddleware(broken, layers.ServiceBuilder().timeout(1))
    with pytest.raises(KeyError, match="app"):
        await call(app, http_scope())


async def test_custom_error_response() -> None:
    """error_response= replaces the mapping; None lets the error propagate."""

    def mapping(error: layers.LayersError) -> layers.asgi.ErrorResponse | None:
        if isinstance(error, layers.Elapsed):
            return layers.asgi.ErrorResponse(status=503, body="slow\n")
        return None

    app = LayersMiddleware(
        hello, layers.ServiceBuilder().timeout(1), error_response=mapping
    )
    assert (await call(app, http_scope("/5")))[0::2] == (503, b"slow\n")
    drain = layers.Drain()
    drain.start()
    app = LayersMiddleware(
        hello, layers.ServiceBuilder().layer(drain), error_response=mapping
    )
    with pytest.raises(layers.ShuttingDown):
        await call(app, http_scope())


async def test_lifespan_passes_through_untouched() -> None:
    """Lifespan messages reach the app, which answers them; the stack is not used."""
    drain = layers.Drain()
    drain.start()  # would refuse anything that went through the stack
    app = LayersMiddleware(hello, layers.ServiceBuilder().layer(drain))
    await check_lifespan(app)
    assert drain.statistics().rejected == 0


async def check_lifespan(app: Any) -> None:
    """Drive a lifespan startup and shutdown through *app*."""
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_answer_lifespan_for_apps_without_it() -> None:
    """answer_lifespan=True answers lifespan without calling the app."""

    async def http_only(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"

    app = LayersMiddleware(http_only, layers.ServiceBuilder(), answer_lifespan=True)
    await check_lifespan(app)


async def test_websocket_passes_through() -> None:
    """Websocket scopes go straight to the app."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    drain = layers.Drain()
    drain.start()
    middleware = LayersMiddleware(app, layers.ServiceBuilder().layer(drain))
    await middleware({"type": "websocket"}, None, None)  # type: ignore[arg-type]
    assert seen == ["websocket"]


async def test_cancelled_request_releases_the_stack() -> None:
    """A request cancelled while inside leaves the concurrency limit and drain."""
    drain = layers.Drain()
    stack = layers.ServiceBuilder().layer(drain).concurrency_limit(1)
    app = LayersMiddleware(hello, stack)
    with anyio.move_on_after(1):
        await call(app, http_scope("/10"))
    assert drain.in_flight == 0
    assert (await call(app, http_scope()))[0] == 200


def test_http_request_helpers() -> None:
    """HTTPRequest exposes method, path, client and headers (any case)."""
    request = HTTPRequest(http_scope("/x", X_Api_Key="k"), None, None)  # type: ignore[arg-type]
    assert (request.method, request.path, request.client) == ("GET", "/x", "10.0.0.1")
    assert request.header("x-api-key") == "k"
    assert request.header("missing") is None
    assert layers.asgi.client_address(HTTPRequest({"type": "http"}, None, None)) == (  # type: ignore[arg-type]
        "unknown"
    )
    assert repr(request) == "<HTTPRequest GET /x>"


def test_bad_arguments() -> None:
    """A non-callable app, a non-layer stack or a bad header name are refused."""
    with pytest.raises(TypeError, match="app must be callable"):
        LayersMiddleware(None, layers.ServiceBuilder())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stack must be a Layer"):
        LayersMiddleware(hello, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        layers.asgi.header_key("")


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (math.inf, str(layers.asgi.MAX_RETRY_AFTER)),
        (1e308, str(layers.asgi.MAX_RETRY_AFTER)),
        (10**400, str(layers.asgi.MAX_RETRY_AFTER)),
        (layers.asgi.MAX_RETRY_AFTER + 0.5, str(layers.asgi.MAX_RETRY_AFTER)),
        (layers.asgi.MAX_RETRY_AFTER - 0.5, str(layers.asgi.MAX_RETRY_AFTER)),
        (-math.inf, "0"),
        (-5, "0"),
        (-0.0, "0"),
        (0, "0"),
        (5e-324, "1"),
        (2.000001, "3"),
        (Fraction(7, 2), "4"),
        (math.nan, None),
        (Decimal("1.5"), None),
        (Fraction(10**400, 3), str(layers.asgi.MAX_RETRY_AFTER)),
        (True, None),
        ("5", None),
    ],
)
def test_any_retry_after_gives_a_sane_header(
    retry_after: Any, header: str | None
) -> None:
    """Any retry_after maps to whole seconds in [0, MAX_RETRY_AFTER], or no header."""
    for error in (
        layers.RateLimited(retry_after=retry_after),
        layers.CircuitOpen(retry_after=retry_after),
        layers.ShuttingDown(retry_after=retry_after),
    ):
        response = layers.asgi.error_response(error)
        assert response is not None
        assert dict(response.headers).get("retry-after") == header


@hypothesis.given(
    st.one_of(st.floats(), st.integers(), st.none()),
)
def test_retry_after_header_is_always_valid(retry_after: float | None) -> None:
    """For every float or int, Retry-After is absent or a sane delay in seconds."""
    response = layers.asgi.error_response(layers.RateLimited(retry_after=retry_after))
    assert response is not None
    assert response.status == 429
    value = dict(response.headers).get("retry-after")
    if retry_after is None or math.isnan(retry_after):
        assert value is None
        return
    assert value is not None
    assert value.isdigit()
    seconds = int(value)
    assert 0 <= seconds <= layers.asgi.MAX_RETRY_AFTER
    if retry_after <= layers.asgi.MAX_RETRY_AFTER:
        # never earlier than the hint: a client that obeys it is not refused again
        assert seconds >= retry_after
        assert seconds - 1 < max(retry_after, 0)


def test_a_refusal_without_retry_after_gets_no_header() -> None:
    """A Rejected subclass that skipped Rejected.__init__ still gets its response."""

    class Odd(layers.RateLimited):
        def __init__(self) -> None:
            Exception.__init__(self, "odd")

    response = layers.asgi.error_response(Odd())
    assert response is not None
    assert (response.status, response.headers) == (429, ())


async def test_app_raising_an_infinite_retry_after_gets_a_429() -> None:
    """RateLimited(retry_after=inf) from the app is answered, not a crash."""

    async def refusing(scope: Scope, receive: Receive, send: Send) -> None:
        raise layers.RateLimited(retry_after=math.inf)

    app = LayersMiddleware(refusing, layers.ServiceBuilder().timeout(1))
    status, headers, body = await call(app, http_scope())
    assert status == 429
    assert headers["retry-after"] == str(layers.asgi.MAX_RETRY_AFTER)
    assert body == b"Too Many Requests\n"


async def _refuse_in_a_child(scope: Scope, receive: Receive, send: Send) -> None:
    """An app whose child task lets a refusal out (it arrives in a group)."""

    async def downstream() -> None:
        raise layers.CircuitOpen(retry_after=3)

    async with anyio.create_task_group() as group:
        group.start_soon(downstream)
        await anyio.sleep_forever()


async def test_a_refusal_in_an_exception_group_is_answered() -> None:
    """A refusal raised by a child task of the app, alone in its group, is answered."""
    app = LayersMiddleware(_refuse_in_a_child, layers.ServiceBuilder().timeout(5))
    status, headers, _ = await call(app, http_scope())
    assert status == 503
    assert headers["retry-after"] == "3"


async def test_a_group_of_several_errors_propagates() -> None:
    """A group holding more than one error is not a refusal: it propagates."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise ExceptionGroup("two", [layers.CircuitOpen(), KeyError("x")])

    middleware = LayersMiddleware(app, layers.ServiceBuilder().timeout(5))
    with pytest.raises(ExceptionGroup) as caught:
        await call(middleware, http_scope())
    assert caught.group_contains(KeyError)
