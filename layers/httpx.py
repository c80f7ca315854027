"""Layers between an ``httpx.AsyncClient`` and the network.

:class:`LayeredTransport` is an ``httpx.AsyncBaseTransport`` that sends
every request of a client through a ``layers`` stack before it reaches the
real transport (by default ``httpx.AsyncHTTPTransport()``)::

    transport = LayeredTransport(
        ServiceBuilder()
        .timeout(10)
        .retry(on=RetryOn(), retry_after=retry_after, attempts=3)
        .layer(PerHost(lambda host: CircuitBreaker(name=host, **breaker_options())))
        .rate_limit(50, key=host_key)
    )
    async with httpx.AsyncClient(transport=transport) as client:
        ...

The HTTP-aware helpers plug into the generic layers:

* :class:`RetryOn` classifies for :class:`~layers.Retry` (``on=`` and
  ``on_result=``): 429, 502, 503, 504 and ``httpx.TransportError``, for
  idempotent methods and replayable bodies only;
* :func:`retry_after` reads ``Retry-After`` (seconds or an HTTP-date) as
  Retry's delay hint; :func:`parse_retry_after` parses the header itself;
* :func:`breaker_options` (:func:`is_failure`, :func:`is_failure_response`)
  makes a :class:`~layers.CircuitBreaker` count transport errors and 5xx
  responses as failures;
* :func:`host_key` and :class:`PerHost` give each host its own rate limit
  or breaker;
* :func:`redact_url`, :func:`redact_headers` and :func:`describe_request`
  describe a request without its credentials.

It needs httpx: install the ``httpx`` extra (``pip install
'service-layers[httpx]'``). See the how-to page "A layered httpx client".
"""

from __future__ import annotations

import email.utils
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, TypedDict, TypeVar, cast, final

import anyio
import attrs

from ._builder import ServiceBuilder
from ._config import check_int, fail
from ._core import Layer, Service, TypePreservingLayer, as_layer, check_layer
from ._errors import ConfigurationError, Elapsed

try:
    import httpx
except ImportError as error:  # pragma: no cover - httpx is installed for the tests
    raise ImportError(
        "layers.httpx needs httpx: install the 'httpx' extra "
        "(pip install 'service-layers[httpx]')"
    ) from error

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "SENSITIVE_HEADERS",
    "BreakerOptions",
    "LayeredTransport",
    "PerHost",
    "RetryOn",
    "RetryableResponse",
    "breaker_options",
    "describe_request",
    "host_key",
    "is_failure",
    "is_failure_response",
    "is_replayable",
    "parse_retry_after",
    "redact_headers",
    "redact_url",
    "retry_after",
]

Req = TypeVar("Req")
Res = TypeVar("Res")

IDEMPOTENT_METHODS: Final[frozenset[str]] = frozenset(
    {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"}
)
"""The methods :class:`RetryOn` retries by default (RFC 9110, section 9.2.2)."""

RETRY_STATUSES: Final[frozenset[int]] = frozenset({429, 502, 503, 504})
"""The statuses :class:`RetryOn` retries by default (and that
:class:`LayeredTransport` raises as :class:`RetryableResponse` inside the stack)."""

SENSITIVE_HEADERS: Final[frozenset[str]] = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie"}
)
"""Headers whose values :func:`redact_headers` hides (lower case)."""

REDACTED: Final = "[redacted]"

_CLOSE_GRACE: Final = 5.0
"""Seconds a discarded response may take to close, even when cancelled."""


# ------------------------------------------------------------------ redaction


def redact_url(url: httpx.URL | str) -> str:
    """Return *url* as a string with its userinfo (user and password) hidden.

    ``https://ada:secret@api.example.com/x`` becomes
    ``https://[redacted]@api.example.com/x``. The query string is kept: do not
    put secrets in it (or redact it yourself).

    Example:
        >>> import httpx
        >>> from layers.httpx import redact_url
        >>> redact_url("https://ada:s3cret@api.example.com/users?page=2")
        'https://[redacted]@api.example.com/users?page=2'
        >>> redact_url("https://api.example.com/users")
        'https://api.example.com/users'
    """
    parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    if not parsed.userinfo:
        return str(parsed)
    return str(parsed.copy_with(username=REDACTED, password=None)).replace(
        "%5Bredacted%5D", REDACTED
    )


def redact_headers(
    headers: httpx.Headers | Iterable[tuple[str, str]],
) -> list[tuple[str, str]]:
    """Return *headers* as ``(name, value)`` pairs, credentials hidden.

    The values of ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and
    ``Set-Cookie`` (:data:`SENSITIVE_HEADERS`, any case) become
    ``"[redacted]"``.

    Example:
        >>> import httpx
        >>> from layers.httpx import redact_headers
        >>> redact_headers({"Authorization": "Bearer abc", "Accept": "*/*"}.items())
        [('Authorization', '[redacted]'), ('Accept', '*/*')]
    """
    pairs = headers.multi_items() if isinstance(headers, httpx.Headers) else headers
    return [
        (name, REDACTED if name.lower() in SENSITIVE_HEADERS else value)
        for name, value in pairs
    ]


def describe_request(request: httpx.Request) -> str:
    """Describe *request* in one line, credentials hidden: method and redacted URL.

    Headers and body are left out (they are where credentials and payloads
    live); see :func:`redact_headers` if you need the headers.

    Example:
        >>> import httpx
        >>> from layers.httpx import describe_request
        >>> describe_request(httpx.Request("GET", "https://ada:pw@example.com/a"))
        'GET https://[redacted]@example.com/a'
    """
    return f"{request.method} {redact_url(request.url)}"


# ------------------------------------------------------------------ Retry-After


def parse_retry_after(
    value: str | None, *, now: datetime | None = None
) -> float | None:
    """Parse a ``Retry-After`` header value into seconds from *now*.

    Both forms of RFC 9110 are read: delta-seconds (``"120"``) and an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, counted from *now*, by
    default the current UTC time). A date in the past gives ``0.0``. A
    missing or malformed value gives ``None`` (no hint: the backoff applies).

    Example:
        >>> import httpx
        >>> from datetime import UTC, datetime
        >>> from layers.httpx import parse_retry_after
        >>> parse_retry_after("120")
        120.0
        >>> parse_retry_after(
        ...     "Wed, 21 Oct 2015 07:28:30 GMT",
        ...     now=datetime(2015, 10, 21, 7, 28, tzinfo=UTC),
        ... )
        30.0
        >>> parse_retry_after("soon") is None
        True
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC) if now is None else now
    return max(0.0, (when - current).total_seconds())


def _response_retry_after(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("retry-after"))


# ------------------------------------------------------------------ the per-call record


@final
class _Call:
    """What one request through a LayeredTransport has produced so far."""

    __slots__ = ("replayable", "request", "responses")

    def __init__(self, request: httpx.Request, replayable: bool) -> None:
        self.request = request
        self.replayable = replayable
        self.responses: list[httpx.Response] = []


_CALL: Final[ContextVar[_Call | None]] = ContextVar("layers_httpx_call", default=None)


async def _close(response: httpx.Response) -> None:
    """Close *response*, even inside a cancelled scope (bounded)."""
    with anyio.move_on_after(_CLOSE_GRACE, shield=True):
        await response.aclose()


async def _close_all(
    responses: list[httpx.Response], keep: httpx.Response | None
) -> None:
    """Close every response in *responses* but *keep*."""
    for each in responses:
        if each is not keep:
            await _close(each)


def is_replayable(request: httpx.Request) -> bool:
    """Whether *request* can be sent again: its body is in memory.

    Bodies given as ``content=bytes``/``str``, ``data=`` (a form), ``json=``
    and ``files=`` are replayable; a streaming body (an iterator or async
    iterator given as ``content=``) is not, since it is consumed as it is
    sent. Inside a :class:`LayeredTransport`, the answer is the one taken
    when the request entered the transport, before any attempt read it.

    Example:
        >>> import httpx
        >>> from layers.httpx import is_replayable
        >>> is_replayable(httpx.Request("POST", "https://example.com", json={}))
        True
        >>> async def chunks():
        ...     yield b"data"
        >>> is_replayable(
        ...     httpx.Request("POST", "https://example.com", content=chunks())
        ... )
        False
    """
    call = _CALL.get()
    if call is not None and call.request is request:
        return call.replayable
    return _stream_replayable(request)


def _stream_replayable(request: httpx.Request) -> bool:
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        return True
    return type(stream).__name__ == "MultipartStream"


# ------------------------------------------------------------------ retry


@final
class RetryableResponse(Exception):
    """A response with a retryable status, raised inside a :class:`LayeredTransport`.

    The transport raises it from the bottom of the stack for a response whose
    status is in its *raise_statuses* (429, 502, 503, 504 by default), so
    that :class:`~layers.Retry` (``on=RetryOn()``) can retry it and read its
    ``Retry-After``, and a :class:`~layers.CircuitBreaker` sees it as an
    error. The caller never sees it: if no retry takes it, or retrying
    stops, the transport returns the last response as an ordinary response.

    Its message describes the request with credentials hidden
    (:func:`describe_request`).

    Attributes:
        response: The response (not read: its body is still a stream).
        request: The request it answers.
        retry_after: Its ``Retry-After`` in seconds, or ``None``.
    """

    def __init__(self, response: httpx.Response, request: httpx.Request) -> None:
        self.response = response
        self.request = request
        self.retry_after: float | None = _response_retry_after(response)
        super().__init__(
            f"{response.status_code} {response.reason_phrase} from "
            f"{describe_request(request)}"
        )

    @property
    def status_code(self) -> int:
        """The response's status code."""
        return self.response.status_code

    def __repr__(self) -> str:
        return f"RetryableResponse({str(self)!r})"


def _is_status(value: object) -> bool:
    """Whether *value* is an HTTP status code, an int from 100 to 599."""
    return (
        isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599
    )


def _statuses(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    items = cast("frozenset[object]", value)
    if not all(_is_status(each) for each in items):
        fail(instance, attribute, sorted(map(repr, items)), "HTTP status codes 100-599")


def _to_statuses(value: Iterable[int]) -> frozenset[int]:
    if isinstance(value, int | str | bytes):
        raise ConfigurationError(
            f"RetryOn(statuses={value!r}): statuses must be a collection of "
            f"HTTP status codes 100-599, such as {{503}}, got {value!r}"
        )
    return frozenset(value)


def _to_methods(value: Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigurationError(
            f"RetryOn(methods={value!r}): methods must be a collection of method "
            f"names such as {{'GET', 'POST'}}, or None for any method, got {value!r}"
        )
    items = cast("list[object]", list(value))
    if not all(isinstance(each, str) and each for each in items):
        raise ConfigurationError(
            f"RetryOn(methods={items!r}): methods must be non-empty strings "
            "(HTTP method names), or None for any method"
        )
    return frozenset(cast("str", each).upper() for each in items)


def _errors(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    shown = value
    if not isinstance(value, tuple) or not all(
        isinstance(each, type) and issubclass(each, Exception)
        for each in cast("tuple[object, ...]", value)
    ):
        fail(instance, attribute, shown, "a tuple of Exception subclasses")


def _to_errors(
    value: type[Exception] | tuple[type[Exception], ...],
) -> tuple[type[Exception], ...]:
    if isinstance(value, type):
        return (value,)
    return value


@final
@attrs.frozen
class RetryOn:
    """Which HTTP failures to retry: a classification for :class:`~layers.Retry`.

    An instance is the predicate for ``Retry(on=...)``: it is true for a
    :class:`RetryableResponse` whose status is in *statuses* and for an
    error of one of *errors* (``httpx.TransportError``: connection
    failures, timeouts, protocol errors), **if** the request's method is in
    *methods* and its body can be sent again (:func:`is_replayable`). Its
    :meth:`response` method is the predicate for ``Retry(on_result=...)``,
    for a transport made with ``raise_statuses=()``.

    A POST is not retried by default: it may have been processed before
    the connection failed. Pass ``methods=None`` (any method) or add
    ``"POST"`` when your API makes POSTs idempotent (an idempotency key).

    Args:
        statuses: Retryable statuses (default :data:`RETRY_STATUSES`: 429,
            502, 503, 504).
        methods: Retryable methods, any case (default
            :data:`IDEMPOTENT_METHODS`), or ``None`` for every method.
        errors: Retryable exception types (default
            ``(httpx.TransportError,)``); one class is accepted too.

    Raises:
        layers.ConfigurationError: For a status outside 100-599, a method
            that is not a string, or an error that is not an Exception class.

    Example:
        >>> import httpx
        >>> from layers.httpx import RetryOn, retry_after
        >>> import layers
        >>> retry = layers.Retry(on=RetryOn(), retry_after=retry_after, attempts=3)
        >>> on = RetryOn(methods={"GET", "POST"}, statuses={503})
        >>> on(httpx.ConnectError("refused", request=httpx.Request("POST", "http://x")))
        True
    """

    statuses: frozenset[int] = attrs.field(
        default=RETRY_STATUSES, converter=_to_statuses, validator=_statuses
    )
    methods: frozenset[str] | None = attrs.field(
        default=IDEMPOTENT_METHODS, converter=_to_methods
    )
    errors: tuple[type[Exception], ...] = attrs.field(
        default=(httpx.TransportError,),
        converter=_to_errors,
        validator=_errors,
    )

    def __call__(self, error: Exception, /) -> bool:
        """Whether *error* is worth another attempt (for ``Retry(on=...)``)."""
        if isinstance(error, RetryableResponse):
            if error.response.status_code not in self.statuses:
                return False
            return self.allows(error.request)
        if isinstance(error, self.errors):
            request = _error_request(error)
            return request is not None and self.allows(request)
        return False

    def response(self, response: httpx.Response, /) -> bool:
        """Whether *response* is worth another attempt (for ``on_result=``)."""
        if response.status_code not in self.statuses:
            return False
        try:
            request = response.request
        except RuntimeError:
            return False
        return self.allows(request)

    def allows(self, request: httpx.Request, /) -> bool:
        """Whether *request* may be sent again: its method and its body allow it."""
        if self.methods is not None and request.method.upper() not in self.methods:
            return False
        return is_replayable(request)


def _error_request(error: Exception) -> httpx.Request | None:
    if isinstance(error, httpx.RequestError):
        try:
            return error.request
        except RuntimeError:
            return None
    request = getattr(error, "request", None)
    return request if isinstance(request, httpx.Request) else None


def retry_after(error: Exception, /) -> float | None:
    """The ``Retry-After`` of the response behind *error*, in seconds, or ``None``.

    The delay hint for ``Retry(retry_after=retry_after)``: it reads a
    :class:`RetryableResponse` (and an ``httpx.HTTPStatusError``, for
    services that raise those). ``None`` (no header, a malformed one, another
    error) lets Retry use the error's own hint or its backoff. A hint longer
    than Retry's ``max_delay`` ends retrying.
    """
    if isinstance(error, RetryableResponse):
        return error.retry_after
    if isinstance(error, httpx.HTTPStatusError):
        return _response_retry_after(error.response)
    return None


# ------------------------------------------------------------------ breaker


def is_failure(error: BaseException, /) -> bool:
    """Whether *error* says the server is unhealthy (for ``failure_on=``).

    True for ``httpx.TransportError`` (it could not be reached or broke
    the connection), for a :class:`RetryableResponse` with a 5xx status,
    and for :class:`~layers.Elapsed` (a :class:`~layers.Timeout` inside the
    breaker). A 429 is not a failure (the server is healthy and asks you to
    slow down); neither are refusals of the layers below the breaker nor
    programming errors.
    """
    if isinstance(error, RetryableResponse):
        return error.response.status_code >= 500
    return isinstance(error, httpx.TransportError | Elapsed)


def is_failure_response(response: httpx.Response, /) -> bool:
    """Whether *response* has a 5xx status (for ``failure_response=``)."""
    return response.status_code >= 500


class BreakerOptions(TypedDict):
    """What :func:`breaker_options` returns: two options of a breaker."""

    failure_on: Callable[[BaseException], bool]
    """:func:`is_failure`."""
    failure_response: Callable[[Any], bool]
    """:func:`is_failure_response`."""


def breaker_options() -> BreakerOptions:
    """The :class:`~layers.CircuitBreaker` options that classify HTTP outcomes.

    ``{"failure_on": is_failure, "failure_response": is_failure_response}``:
    transport errors, timeouts and 5xx responses count as failures,
    everything else as successes. Spread it into the breaker's options::

        layers.CircuitBreaker(name="api", open_duration=30, **breaker_options())
        builder.circuit_breaker(name="api", **breaker_options())
    """
    return {"failure_on": is_failure, "failure_response": is_failure_response}


# ------------------------------------------------------------------ per host


def host_key(request: httpx.Request, /) -> str:
    """The key of *request*'s origin: ``scheme://host:port``, no credentials.

    A key function for a per-host limit
    (``RateLimit(..., key=host_key)``) or :class:`PerHost`. The port is
    always given (80 and 443 by default), so ``https://example.com`` and
    ``https://example.com:443`` share a key.

    Example:
        >>> import httpx
        >>> from layers.httpx import host_key
        >>> host_key(httpx.Request("GET", "https://ada:pw@Example.com/a?b=1"))
        'https://example.com:443'
    """
    url = request.url
    port = url.port
    if port is None:
        port = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(url.scheme, 0)
    return f"{url.scheme}://{url.host}:{port}"


def _positive_int(owner: str, parameter: str, value: object) -> None:
    check_int(owner, parameter, value, 1, "an integer >= 1")


@final
class PerHost:
    """Give each host (or any key) its own instance of a stateful layer.

    A :class:`~layers.CircuitBreaker` holds one state for everything it
    wraps; ``PerHost(factory)`` builds one layer per key, on the key's first
    request, with ``factory(key)``, so that a failing host opens only its
    own breaker. The table keeps the *max_hosts* most recently used keys;
    the least recently used one is dropped beyond that (its next request
    starts afresh; calls in flight finish normally).

    (A :class:`~layers.RateLimit` needs no ``PerHost``: give it
    ``key=host_key``.)

    Args:
        factory: ``factory(key) -> layer``, called once per key kept.
        key: ``key(request) -> hashable`` (default :func:`host_key`).
        max_hosts: The most keys kept, an integer >= 1 (default 1,000).

    Raises:
        layers.ConfigurationError: For a *max_hosts* below 1.
        TypeError: If *factory* or *key* is not callable.

    Example:
        >>> import httpx
        >>> from layers.httpx import PerHost, breaker_options
        >>> import layers
        >>> breakers = PerHost(
        ...     lambda host: layers.CircuitBreaker(name=host, **breaker_options())
        ... )
    """

    __slots__ = ("factory", "key", "max_hosts")

    def __init__(
        self,
        factory: Callable[[Any], Layer[Any, Any, Any, Any] | TypePreservingLayer],
        *,
        key: Callable[[Any], Hashable] = host_key,
        max_hosts: int = 1000,
    ) -> None:
        for name, value in (("factory", factory), ("key", key)):
            if not callable(value):
                raise TypeError(
                    f"PerHost({name}={value!r}): {name} must be callable, "
                    f"got {type(value).__name__}"
                )
        _positive_int("PerHost", "max_hosts", max_hosts)
        self.factory = factory
        self.key = key
        self.max_hosts = max_hosts

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: each key gets ``factory(key).layer(inner)``."""
        table: OrderedDict[Hashable, Service[Req, Res]] = OrderedDict()
        factory = self.factory
        key_of = self.key
        max_hosts = self.max_hosts

        async def per_host(request: Req, /) -> Res:
            key = key_of(request)
            service = table.get(key)
            if service is None:
                made = factory(key)
                check_layer("PerHost", "factory(key)", made)
                service = cast("Service[Req, Res]", made.layer(inner))
                table[key] = service
                if len(table) > max_hosts:
                    table.popitem(last=False)
            else:
                table.move_to_end(key)
            return await service(request)

        return per_host

    def __repr__(self) -> str:
        name = getattr(self.factory, "__qualname__", repr(self.factory))
        return f"PerHost({name}, max_hosts={self.max_hosts})"


# ------------------------------------------------------------------ the transport


@final
class LayeredTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends every request through a ``layers`` stack.

    ``httpx.AsyncClient(transport=LayeredTransport(stack))``: each request
    the client sends (each redirect hop too) passes the layers of *stack*,
    then reaches *transport*. The stack's service takes an ``httpx.Request``
    and returns an ``httpx.Response``. It runs on asyncio and trio, like
    httpx.

    **Retryable statuses.** A response whose status is in *raise_statuses*
    (429, 502, 503, 504 by default) is raised inside the stack as a
    :class:`RetryableResponse`, so that a Retry with ``on=RetryOn()``
    retries it (with its ``Retry-After`` as the delay hint, through
    ``retry_after=retry_after``) and a breaker sees it fail. The caller
    never sees that exception: the transport returns the response.

    **Discarded responses are closed.** When a layer calls the service again
    for the same request (a retry), the response of the previous attempt is
    closed (``aclose``) before the next attempt is sent; any response that
    the stack does not return is closed before ``handle_async_request``
    returns or raises, cancellation included.

    **Streaming.** The layers never read a body: the stack returns as soon
    as the response's headers have arrived; httpx reads the body afterwards
    (at once, or as you iterate a streamed response). So every hold of the
    layers ends with the headers: a Timeout covers the time to the headers,
    a concurrency permit is given back and a breaker records the outcome by
    status then. The body is under httpx's own timeouts.

    **Requests that cannot be replayed** (a streaming body) are never
    retried by :class:`RetryOn`: the caller gets the first attempt's
    outcome, the ``httpx.TransportError`` itself or the retryable response.

    Args:
        stack: A layer for ``Service[httpx.Request, httpx.Response]``: a
            :class:`~layers.ServiceBuilder`, one layer, or a
            :class:`~layers.Stack`.
        transport: The real transport (default: a new
            ``httpx.AsyncHTTPTransport()``). Closing this transport closes it.
        raise_statuses: The statuses raised as :class:`RetryableResponse`
            inside the stack (default :data:`RETRY_STATUSES`); ``()`` to
            leave every response a response (then retry with
            ``on_result=RetryOn().response``).

    Raises:
        TypeError: If *stack* is not a layer or *transport* not an
            ``httpx.AsyncBaseTransport``.
        layers.ConfigurationError: For a status outside 100-599.

    Example:
        >>> import httpx
        >>> from layers.httpx import LayeredTransport, RetryOn, retry_after
        >>> import anyio, layers
        >>> answers = iter([503, 200])
        >>> mock = httpx.MockTransport(lambda request: httpx.Response(next(answers)))
        >>> stack = layers.ServiceBuilder().retry(
        ...     on=RetryOn(), retry_after=retry_after, attempts=3, backoff=[0.01]
        ... )
        >>> async def main() -> int:
        ...     transport = LayeredTransport(stack, mock)
        ...     async with httpx.AsyncClient(transport=transport) as client:
        ...         return (await client.get("https://example.com/")).status_code
        >>> anyio.run(main)
        200
    """

    __slots__ = ("_service", "raise_statuses", "stack", "transport")

    def __init__(
        self,
        stack: Layer[Any, Any, Any, Any]
        | TypePreservingLayer
        | ServiceBuilder[Any, Any, Any, Any],
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        raise_statuses: Iterable[int] = RETRY_STATUSES,
    ) -> None:
        layer = as_layer("LayeredTransport", "stack", stack)
        if transport is None:
            transport = httpx.AsyncHTTPTransport()
        elif not isinstance(cast(object, transport), httpx.AsyncBaseTransport):
            raise TypeError(
                f"LayeredTransport(transport={transport!r}): transport must be an "
                f"httpx.AsyncBaseTransport, got {type(transport).__name__}"
            )
        if isinstance(cast(object, raise_statuses), int | str | bytes):
            raise ConfigurationError(
                f"LayeredTransport(raise_statuses={raise_statuses!r}): "
                "raise_statuses must be a collection of HTTP status codes 100-599"
            )
        statuses = frozenset(raise_statuses)
        for each in cast("frozenset[object]", statuses):
            if not _is_status(each):
                raise ConfigurationError(
                    f"LayeredTransport(raise_statuses={sorted(statuses, key=repr)!r}): "
                    f"raise_statuses must hold HTTP status codes 100-599, got {each!r}"
                )
        self.stack = stack
        """The layer the requests pass."""
        self.transport: httpx.AsyncBaseTransport = transport
        """The real transport below the layers."""
        self.raise_statuses = statuses
        """The statuses raised as :class:`RetryableResponse` inside the stack."""
        self._service: Service[httpx.Request, httpx.Response] = layer.layer(self._send)

    async def _send(self, request: httpx.Request, /) -> httpx.Response:
        """The bottom of the stack: the real transport."""
        call = _CALL.get()
        if call is not None and call.responses:
            # another attempt for the same request: the earlier ones are discarded
            earlier = call.responses[:]
            call.responses.clear()
            for response in earlier:
                await _close(response)
        try:
            response = await self.transport.handle_async_request(request)
        except httpx.RequestError as error:
            # httpx attaches the request only once the error leaves the
            # client; the classification inside the stack needs it now
            if _error_request(error) is None:
                error.request = request
            raise
        response.request = request
        if call is not None:
            call.responses.append(response)
        if response.status_code in self.raise_statuses:
            raise RetryableResponse(response, request)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send *request* through the layers; return the response."""
        call = _Call(request, _stream_replayable(request))
        token = _CALL.set(call)
        try:
            try:
                response = await self._service(request)
            except RetryableResponse as error:
                if not any(error.response is each for each in call.responses):
                    raise  # not ours (raised by a nested transport?): leave it
                response = error.response
        except BaseException:
            _CALL.reset(token)
            await _close_all(call.responses, None)
            raise
        _CALL.reset(token)
        await _close_all(call.responses, response)
        return response

    async def aclose(self) -> None:
        """Close the real transport."""
        await self.transport.aclose()

    async def __aenter__(self) -> LayeredTransport:
        await self.transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.transport.__aexit__(exc_type, exc_value, traceback)

    def __repr__(self) -> str:
        return f"LayeredTransport({self.stack!r}, {self.transport!r})"
