"""Layers in front of an ASGI application: rate limits, load shedding, timeouts.

:class:`LayersMiddleware` runs every inbound HTTP request through a
``layers`` stack before it reaches the application, and answers the
stack's refusals with the matching HTTP response:

* :class:`~layers.RateLimited`: 429 Too Many Requests, with ``Retry-After``;
* :class:`~layers.Overloaded`, :class:`~layers.CircuitOpen`: 503 Service
  Unavailable, with ``Retry-After`` when the layer knows it;
* :class:`~layers.ShuttingDown` (a :class:`~layers.Drain`): 503, with
  ``Retry-After`` when known and ``Connection: close``;
* :class:`~layers.Filtered`: 403 Forbidden; any other
  :class:`~layers.Rejected`: 503;
* :class:`~layers.Elapsed` (a :class:`~layers.Timeout`): 504 Gateway Timeout.

It speaks plain ASGI (dicts and callables): no web framework is needed, and
it wraps Starlette, FastAPI or any ASGI application. Lifespan and websocket
messages pass through untouched.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Awaitable, Callable, Hashable, MutableMapping
from typing import Any, Final, cast, final

import attrs

from ._builder import ServiceBuilder
from ._core import Layer, Service, TypePreservingLayer, as_layer
from ._errors import (
    ConfigurationError,
    Elapsed,
    Filtered,
    LayersError,
    RateLimited,
    Rejected,
    ShuttingDown,
)
from ._lifespan import answer_lifespan
from ._public import publish as _publish

__all__ = [
    "MAX_RETRY_AFTER",
    "ASGIApp",
    "ErrorResponse",
    "HTTPRequest",
    "LayersMiddleware",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "client_address",
    "error_response",
    "header_key",
    "retry_after_header",
]

Scope = MutableMapping[str, Any]
"""An ASGI connection scope."""
Message = MutableMapping[str, Any]
"""An ASGI event message."""
Receive = Callable[[], Awaitable[Message]]
"""The ASGI ``receive`` callable."""
Send = Callable[[Message], Awaitable[None]]
"""The ASGI ``send`` callable."""
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""

MAX_RETRY_AFTER: Final = 86_400
"""The largest ``Retry-After`` the middleware sends, in seconds (one day).

A longer (or infinite) ``retry_after`` is sent as this: a client told to
come back in a day is better served than one told nothing, and no client
should be asked to wait for years."""


@final
class HTTPRequest:
    """One inbound HTTP request, as the layers of the stack see it.

    Key functions (a per-client rate limit's ``key=``) and filters take it.
    It holds the ASGI scope and the connection's ``receive`` and ``send``;
    the body is not read.

    Attributes:
        scope: The ASGI ``http`` scope.
        receive: The connection's ``receive``.
    """

    __slots__ = ("_send", "receive", "response_started", "scope")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self._send = send
        self.response_started = False
        """Whether the application has sent ``http.response.start``."""

    async def send(self, message: Message) -> None:
        """Send *message* to the client (noting when the response starts)."""
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    @property
    def method(self) -> str:
        """The HTTP method, such as ``"GET"``."""
        return str(self.scope.get("method", "GET"))

    @property
    def path(self) -> str:
        """The request path, such as ``"/users/1"``."""
        return str(self.scope.get("path", "/"))

    @property
    def client(self) -> str | None:
        """The client's host (address), or ``None`` if the server gives none."""
        client = self.scope.get("client")
        return None if not client else str(client[0])

    def header(self, name: str) -> str | None:
        """The first value of header *name* (any case), or ``None``."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.scope.get("headers", ()):
            if bytes(key).lower() == wanted:
                return bytes(value).decode("latin-1")
        return None

    def __repr__(self) -> str:
        return f"<HTTPRequest {self.method} {self.path}>"


def client_address(request: HTTPRequest) -> str:
    """A key function: the client's address (``"unknown"`` if not given).

    For a per-client limit:
    ``builder.rate_limit(10, key=layers.asgi.client_address, max_keys=10_000)``.
    Behind a proxy every request comes from the proxy's address; read the
    forwarded header the proxy sets with :func:`header_key` instead (and only
    trust it from the proxy).
    """
    return request.client or "unknown"


def header_key(
    name: str, *, default: str = "anonymous"
) -> Callable[[HTTPRequest], Hashable]:
    """Make a key function that returns the value of header *name*.

    For a per-API-key limit:
    ``builder.rate_limit(100, key=layers.asgi.header_key("x-api-key"))``.
    Requests without the header share the one key *default*. Keys reach
    events and statistics of the layers: hash a secret key first if they
    must not (``.map_request`` is not needed; wrap the key function).

    Args:
        name: The header's name, in any case.
        default: The key of requests that lack the header.
    """
    checked = cast(object, name)
    if not isinstance(checked, str) or not checked:
        raise ConfigurationError(
            f"header_key(name={name!r}): name must be a non-empty string"
        )

    def key(request: HTTPRequest) -> Hashable:
        value = request.header(name)
        return default if value is None else value

    key.__qualname__ = f"header_key({name!r})"
    return key


@final
@attrs.frozen(kw_only=True)
class ErrorResponse:
    """The HTTP response that answers a refused request.

    Attributes:
        status: The status code.
        headers: Extra headers (lower-case names, latin-1 values);
            ``content-type`` and ``content-length`` are added.
        body: The body, plain text.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""


_REASONS = {
    403: "Forbidden",
    429: "Too Many Requests",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def retry_after_header(retry_after: object) -> str | None:
    """The ``Retry-After`` value for a delay hint of *retry_after* seconds.

    Whole seconds, rounded up (a client that obeys it is not refused
    again), at least 0 and at most :data:`MAX_RETRY_AFTER`; ``None`` (no
    header) when the hint is ``None``, NaN or not a real number. Never
    raises, whatever the hint: an infinite one gives the maximum, a
    negative one ``"0"``.

    Example:
        >>> from layers.asgi import retry_after_header
        >>> retry_after_header(2.1), retry_after_header(-3), retry_after_header(None)
        ('3', '0', None)
        >>> retry_after_header(float("inf")), retry_after_header(float("nan"))
        ('86400', None)
    """
    if isinstance(retry_after, bool) or not isinstance(retry_after, numbers.Real):
        return None
    value: Any = retry_after  # numbers.Real declares no arithmetic to typing
    seconds: float
    if isinstance(value, int):
        seconds = value  # exact: an int too large for a float is fine
    else:
        try:
            seconds = float(value)
        except (TypeError, ValueError, OverflowError):  # a huge Fraction, say
            return _huge(value)
        if math.isnan(seconds):
            return None
    if seconds <= 0:
        return "0"
    if seconds >= MAX_RETRY_AFTER:
        return str(MAX_RETRY_AFTER)
    return str(math.ceil(seconds))


def _huge(value: Any) -> str | None:
    """A real number that overflows a float: its sign says which bound."""
    try:
        return str(MAX_RETRY_AFTER) if value > 0 else "0"
    except (TypeError, ValueError, ArithmeticError):
        return None


def _retry_after(error: Rejected) -> tuple[tuple[str, str], ...]:
    # getattr: a subclass whose __init__ skipped Rejected's has no attribute
    value = retry_after_header(getattr(error, "retry_after", None))
    return () if value is None else (("retry-after", value),)


def error_response(error: LayersError) -> ErrorResponse | None:
    """The default mapping from a refusal to an HTTP response (see the table).

    ``Retry-After`` comes from the error's ``retry_after`` through
    :func:`retry_after_header` (whole seconds, at most
    :data:`MAX_RETRY_AFTER`; none for NaN), so any hint gives a valid
    response. The body is the reason phrase only: never the exception's
    message, which can name a rate-limit key (an API key, an address).
    Returns ``None``
    for an error it does not map (a :class:`~layers.ConfigurationError`),
    which the middleware re-raises.
    """
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(error, RateLimited):
        status, headers = 429, _retry_after(error)
    elif isinstance(error, ShuttingDown):
        status, headers = 503, (*_retry_after(error), ("connection", "close"))
    elif isinstance(error, Filtered):
        status = 403
    elif isinstance(error, Rejected):  # Overloaded, CircuitOpen and the rest
        status, headers = 503, _retry_after(error)
    elif isinstance(error, Elapsed):
        status = 504
    else:
        return None
    return ErrorResponse(status=status, headers=headers, body=f"{_REASONS[status]}\n")


@final
class LayersMiddleware:
    """Run each inbound HTTP request through a ``layers`` stack.

    The stack is a layer, or a :class:`~layers.ServiceBuilder` (as its
    ``into_layer()``), whose services take an :class:`HTTPRequest` and return
    ``None``; the innermost service calls the application. A refusal raised by
    the stack before the response has started is answered by *error_response*
    (by default :func:`error_response`: 429, 503, 403 or 504, with
    ``Retry-After`` where the layer knows it). Once the application has
    started its response, an error cannot become a new response: it is
    raised, and the server closes the connection.

    A refusal the application itself raises (it called a downstream through
    a breaker, say) is answered the same way if its response has not begun,
    also when a child task of the application raised it and it arrives
    alone in an :class:`ExceptionGroup`.

    Lifespan messages pass through untouched: the application answers them
    (hypercorn under trio needs an answer). For an application that does
    not speak the lifespan protocol, ``answer_lifespan=True`` makes the
    middleware answer startup and shutdown itself. Websocket connections
    pass through untouched.

    Args:
        app: The ASGI application.
        stack: The layers, outermost first; the same stack object (and its
            state: limits, breakers, a drain) serves every request.
        error_response: Maps a refusal to an :class:`ErrorResponse`, or
            ``None`` to let the error propagate.
        answer_lifespan: Answer the lifespan protocol here instead of
            passing it to *app*.

    Example::

        drain = layers.Drain()
        stack = (
            layers.ServiceBuilder()
            .layer(drain)
            .rate_limit(10, key=layers.asgi.client_address, mode="reject")
            .load_shed(100)
            .timeout(5.0)
        )
        app = layers.asgi.LayersMiddleware(app, stack)
    """

    __slots__ = ("_answer_lifespan", "_error_response", "_service", "app", "stack")

    def __init__(
        self,
        app: ASGIApp,
        stack: Layer[HTTPRequest, None, HTTPRequest, None]
        | TypePreservingLayer
        | ServiceBuilder[Any, Any, Any, Any],
        *,
        error_response: Callable[[LayersError], ErrorResponse | None] = error_response,
        answer_lifespan: bool = False,
    ) -> None:
        if not callable(app):
            raise ConfigurationError(
                f"LayersMiddleware(app={app!r}): app must be callable"
            )
        layer = as_layer("LayersMiddleware", "stack", stack)
        self.app = app
        self.stack = stack

        async def call_app(request: HTTPRequest, /) -> None:
            await app(request.scope, request.receive, request.send)

        self._service: Service[HTTPRequest, None] = layer.layer(call_app)
        self._error_response = error_response
        self._answer_lifespan = answer_lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan" and self._answer_lifespan:
                await answer_lifespan(receive, send)
                return
            await self.app(scope, receive, send)
            return
        request = HTTPRequest(scope, receive, send)
        try:
            await self._service(request)
        except Exception as error:
            refusal = _refusal(error)
            if refusal is None or request.response_started:
                raise
            response = self._error_response(refusal)
            if response is None:
                raise
            await _send_response(send, response)

    def __repr__(self) -> str:
        return f"LayersMiddleware({self.app!r}, {self.stack!r})"


def _refusal(error: Exception) -> LayersError | None:
    """The LayersError to answer: *error*, or the only one in its group.

    The application's own task groups deliver a refusal raised by a child
    task in an ExceptionGroup (nested, on trio): alone in it, it is
    answered as if raised bare. A group of several errors is not.
    """
    while isinstance(error, ExceptionGroup):
        inside = cast("ExceptionGroup[Exception]", error).exceptions
        if len(inside) != 1:
            return None
        error = inside[0]
    return error if isinstance(error, LayersError) else None


async def _send_response(send: Send, response: ErrorResponse) -> None:
    body = response.body.encode("utf-8")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("latin-1")),
        *(
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers
        ),
    ]
    await send(
        {"type": "http.response.start", "status": response.status, "headers": headers}
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


_publish(__name__, __all__)
