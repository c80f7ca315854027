"""Layers between an ``httpx.AsyncClient`` and the network.

:class:`LayeredTransport` is an ``httpx.AsyncBaseTransport`` that sends
every request of a client through a ``layers`` stack before it reaches the
real transport (by default ``httpx.AsyncHTTPTransport()``)::

    transport = LayeredTransport(
        ServiceBuilder()
        .timeout(10)
        .retry(on=RetryOn(), retry_after=retry_after, max_attempts=3, max_delay=30)
        .layer(
            PerKey(
                lambda host: CircuitBreaker(name=host, **breaker_options()),
                key=host_key,
            )
        )
        .rate_limit(50, key=host_key)
    )
    async with httpx.AsyncClient(transport=transport) as client:
        ...

The HTTP-aware helpers plug into the generic layers:

* :class:`RetryOn` classifies for :class:`~layers.Retry` (``on=`` and
  ``on_result=``): 429, 502, 503, 504 and ``httpx.TransportError``, for
  idempotent methods and replayable bodies only;
* :func:`retry_after` reads ``Retry-After`` (seconds or an HTTP-date) as
  Retry's delay hint, from an error or from a response kept as a response;
  :func:`parse_retry_after` parses the header itself
  (never raising: a malformed value is no hint, a huge one is clamped to
  :data:`MAX_RETRY_AFTER`);
* :func:`breaker_options` (:func:`is_failure`, :func:`is_failure_response`)
  makes a :class:`~layers.CircuitBreaker` count transport errors and 5xx
  responses as failures;
* :func:`host_key` is the key of a request's origin: give it to
  :class:`~layers.PerKey` (one breaker per host) or to a
  :class:`~layers.RateLimit` (one rate per host);
* :func:`redact_url`, :func:`redact_headers` and :func:`describe_request`
  describe a request without its credentials (:func:`is_credential_name`
  says which header and query parameter names are hidden).

It needs httpx: install the ``httpx`` extra (``pip install
'service-layers[httpx]'``). See the how-to page "A layered httpx client".
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, TypedDict, TypeVar, cast, final, overload
from urllib.parse import unquote_plus

import anyio
import attrs

from ._builder import ServiceBuilder
from ._config import fail_value
from ._core import Layer, Service, TypePreservingLayer, as_layer
from ._errors import ConfigurationError, Elapsed
from ._public import publish as _publish

try:
    import httpx
except ImportError as error:  # pragma: no cover - httpx is installed for the tests
    raise ImportError(
        "layers.httpx needs httpx: install the 'httpx' extra "
        "(pip install 'service-layers[httpx]')"
    ) from error

__all__ = [
    "IDEMPOTENT_METHODS",
    "MAX_RETRY_AFTER",
    "RETRY_STATUSES",
    "SENSITIVE_HEADERS",
    "SENSITIVE_NAME_PARTS",
    "SENSITIVE_NAME_WORDS",
    "BreakerOptions",
    "LayeredTransport",
    "RetryOn",
    "RetryableResponse",
    "breaker_options",
    "describe_request",
    "host_key",
    "is_credential_name",
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
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
    }
)
"""Header names that are always hidden (lower case). Any name that
:func:`is_credential_name` flags is hidden too."""

SENSITIVE_NAME_PARTS: Final[tuple[str, ...]] = (
    "auth",
    "token",
    "secret",
    "passw",
    "pwd",
    "cookie",
    "session",
    "signature",
    "credential",
    "apikey",
    "api-key",
    "api_key",
    "private",
    "jwt",
    "bearer",
    "csrf",
    "xsrf",
)
"""A header or query parameter whose name (in lower case) *contains* one of
these is hidden: ``X-Auth-Token``, ``X-Amz-Security-Token``,
``access_token``, ``client_secret``, ``X-Amz-Signature``..."""

SENSITIVE_NAME_WORDS: Final[frozenset[str]] = frozenset(
    {"key", "sig", "sid", "pass", "pin", "otp", "hmac"}
)
"""A header or query parameter one of whose *words* (the name in lower case,
split at anything but letters and digits) is one of these is hidden:
``key``, ``Ocp-Apim-Subscription-Key``, ``sig``, ``X-Functions-Key``..."""

REDACTED: Final = "[redacted]"

_CLOSE_GRACE: Final = 5.0
"""Seconds a discarded response may take to close, even when cancelled."""

MAX_RETRY_AFTER: Final = 1e9
"""The longest ``Retry-After`` that :func:`parse_retry_after` returns, in
seconds (about 31.7 years): a longer one, however many digits it has, is
read as this one. It is a wait no client makes: any :class:`~layers.Retry`
whose ``max_delay`` (or default cap on hints) is shorter stops retrying at
once and returns the response."""

_MAX_DIGITS: Final = len(str(int(MAX_RETRY_AFTER)))
_MAX_DATE_LENGTH: Final = 64
"""Longer than any HTTP-date form (29 characters for the preferred one)."""


# ------------------------------------------------------------------ redaction

_WORDS: Final = re.compile(r"[^a-z0-9]+")
_QUERY_PIECES: Final = re.compile(r"([&;])")


def is_credential_name(name: str | bytes, /) -> bool:
    """Whether a header or query parameter named *name* holds a credential.

    True for the names of :data:`SENSITIVE_HEADERS`, for a name that
    contains one of :data:`SENSITIVE_NAME_PARTS` (``auth``, ``token``,
    ``secret``, ``passw``, ``cookie``, ``session``, ``signature``,
    ``apikey``...) and for a name one of whose words is in
    :data:`SENSITIVE_NAME_WORDS` (``key``, ``sig``...), in any case, as
    ``str`` or ``bytes``. It errs on the side of hiding: ``Idempotency-Key``
    and ``?author=`` are hidden too.

    Example:
        >>> from layers.httpx import is_credential_name
        >>> [is_credential_name(n) for n in ("X-Api-Key", b"x-auth-token", "Accept")]
        [True, True, False]
        >>> [is_credential_name(n) for n in ("access_token", "sig", "page")]
        [True, True, False]
    """
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    lowered = text.lower()
    if lowered in SENSITIVE_HEADERS:
        return True
    if any(part in lowered for part in SENSITIVE_NAME_PARTS):
        return True
    return any(word in SENSITIVE_NAME_WORDS for word in _WORDS.split(lowered))


def _redact_params(text: str) -> str:
    """Hide the values of the credential-like parameters of a query string."""
    pieces = _QUERY_PIECES.split(text)
    for index in range(0, len(pieces), 2):
        name, equals, _ = pieces[index].partition("=")
        if equals and is_credential_name(unquote_plus(name)):
            pieces[index] = f"{name}={REDACTED}"
    return "".join(pieces)


def redact_url(url: httpx.URL | str) -> str:
    """Return *url* as a string with its credentials hidden.

    The userinfo (user and password) becomes ``[redacted]``, and so does
    the value of each query parameter (and fragment parameter, as in
    ``#access_token=...``) whose name :func:`is_credential_name` flags:
    ``token``, ``access_token``, ``api_key``, ``apikey``, ``key``,
    ``secret``, ``password``, ``signature``, ``sig``, ``auth``,
    ``X-Amz-Signature``... in any case, percent-encoded or not. Other
    parameters and the path are kept (a secret in a path segment cannot be
    told from a name). A string that is not a URL at all is hidden whole.

    Example:
        >>> import httpx
        >>> from layers.httpx import redact_url
        >>> redact_url("https://ada:s3cret@api.example.com/users?page=2")
        'https://[redacted]@api.example.com/users?page=2'
        >>> redact_url("https://api.example.com/users?api_key=abc&page=2")
        'https://api.example.com/users?api_key=[redacted]&page=2'
        >>> redact_url("https://api.example.com/users")
        'https://api.example.com/users'
    """
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return REDACTED
    changes: dict[str, Any] = {}
    if parsed.userinfo:
        changes["username"] = REDACTED
        changes["password"] = None
    query = parsed.query.decode("latin-1")
    if query:
        redacted = _redact_params(query)
        if redacted != query:
            changes["query"] = redacted.encode("latin-1")
    fragment = parsed.fragment
    if fragment:
        redacted = _redact_params(fragment)
        if redacted != fragment:
            changes["fragment"] = redacted
    if not changes:
        return str(parsed)
    return str(parsed.copy_with(**changes)).replace("%5Bredacted%5D", REDACTED)


@overload
def redact_headers(
    headers: httpx.Headers | Mapping[str, str] | Iterable[tuple[str, str]],
) -> list[tuple[str, str]]: ...
@overload
def redact_headers(
    headers: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]: ...
def redact_headers(headers: Any) -> list[Any]:
    """Return *headers* as ``(name, value)`` pairs, credentials hidden.

    The value of every header whose name :func:`is_credential_name` flags
    (``Authorization``, ``Proxy-Authorization``, ``Cookie``,
    ``Set-Cookie``, ``X-Api-Key``, ``X-Auth-Token``, any name with
    ``auth``, ``token``, ``secret``, ``key``..., in any case) becomes
    ``"[redacted]"`` (``b"[redacted]"`` for a ``bytes`` value). It takes an
    ``httpx.Headers``, a mapping, or pairs of ``str`` or of ``bytes`` (as in
    ``httpx.Headers.raw`` or an ASGI scope).

    Example:
        >>> import httpx
        >>> from layers.httpx import redact_headers
        >>> redact_headers({"Authorization": "Bearer abc", "Accept": "*/*"})
        [('Authorization', '[redacted]'), ('Accept', '*/*')]
        >>> redact_headers([(b"x-api-key", b"abc"), (b"accept", b"*/*")])
        [(b'x-api-key', b'[redacted]'), (b'accept', b'*/*')]
    """
    pairs: Iterable[tuple[str | bytes, str | bytes]]
    if isinstance(headers, httpx.Headers):
        pairs = headers.multi_items()
    elif isinstance(headers, Mapping):
        pairs = cast("Mapping[str | bytes, str | bytes]", headers).items()
    else:
        pairs = cast("Iterable[tuple[str | bytes, str | bytes]]", headers)
    return [
        (name, _hidden(value) if is_credential_name(name) else value)
        for name, value in pairs
    ]


def _hidden(value: str | bytes) -> str | bytes:
    return REDACTED.encode() if isinstance(value, bytes) else REDACTED


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
    default the current UTC time; a naive *now* is read as UTC). A date in
    the past gives ``0.0``.

    It never raises, whatever the header holds:

    * a missing or malformed value gives ``None`` (no hint: the backoff
      applies). Malformed means outside the grammar: a sign (``"-5"``),
      a fraction or exponent (``"1.5"``, ``"1e400"``), ``"nan"`` or
      ``"inf"``, a date that no calendar holds (a five-digit year, an
      offset of 99 hours);
    * a value longer than :data:`MAX_RETRY_AFTER` (about 31.7 years),
      delta-seconds of any number of digits or a far date, gives
      :data:`MAX_RETRY_AFTER`: the server asks for a wait no client makes,
      and a :class:`~layers.Retry` whose ``max_delay`` (or cap on hints) is
      shorter stops retrying at once.

    So the result is ``None`` or a finite float from 0 to
    :data:`MAX_RETRY_AFTER`.

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
        >>> parse_retry_after("9" * 400)  # clamped: MAX_RETRY_AFTER
        1000000000.0
        >>> parse_retry_after("soon") is None, parse_retry_after("-5") is None
        (True, True)
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0")
        if len(digits) > _MAX_DIGITS:
            return MAX_RETRY_AFTER  # never int() it: 5,000 digits raise
        return min(float(int(digits or "0")), MAX_RETRY_AFTER)
    if len(text) > _MAX_DATE_LENGTH:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if now is None:
            current = datetime.now(UTC)
        else:
            current = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        seconds = (when - current).total_seconds()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)  # a timedelta is finite


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

    def __reduce__(self) -> tuple[object, ...]:
        # httpx pickles a response and a request (an unread body stays unread)
        return (RetryableResponse, (self.response, self.request))


def _is_status(value: object) -> bool:
    """Whether *value* is an HTTP status code, an int from 100 to 599."""
    return (
        isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599
    )


def _status_order(value: object) -> tuple[int, int, str]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, repr(value))


def _check_statuses(owner: str, parameter: str, values: Iterable[object]) -> None:
    """Refuse *values* unless each is a status code; the message shows the bad ones."""
    bad = sorted((each for each in values if not _is_status(each)), key=_status_order)
    if bad:
        shown = ", ".join(map(repr, bad))
        raise ConfigurationError(
            f"{owner}({parameter}=...): {parameter} must hold HTTP status codes "
            f"(integers from 100 to 599), got {shown}"
        )


def _statuses(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    items = cast("frozenset[object]", value)
    _check_statuses(type(instance).__name__, attribute.name, items)


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
        fail_value(
            type(instance).__name__,
            attribute.name,
            shown,
            "a tuple of Exception subclasses",
        )


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
    for a transport made with ``raise_statuses=()``
    (``Retry(on=RetryOn(), on_result=RetryOn().response,
    retry_after=retry_after, ...)``: :func:`retry_after` reads the
    response's ``Retry-After`` too).

    An error that carries no request, such as the :class:`~layers.Elapsed`
    of a per-attempt :class:`~layers.Timeout` inside the retry or a
    :class:`~layers.Rejected` from a layer below it, is judged by the
    request that the :class:`LayeredTransport` is sending (its method and
    body), once its type is in *errors*: ``RetryOn(errors=(httpx.TransportError,
    layers.Elapsed))`` retries timed-out GETs. Outside a transport such an
    error is never retried (its method is unknown).

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
        >>> retry = layers.Retry(on=RetryOn(), retry_after=retry_after, max_attempts=3)
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
            if request is None:
                # An error that carries no request (an Elapsed from a Timeout
                # inside the retry, a Rejected from a layer below): inside a
                # LayeredTransport, the request being sent is known.
                call = _CALL.get()
                if call is None:
                    return False
                request = call.request
            return self.allows(request)
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


def retry_after(outcome: Exception | httpx.Response, /) -> float | None:
    """The ``Retry-After`` of a response (or of the response behind an error).

    The delay hint for ``Retry(retry_after=retry_after)``, in seconds. Retry
    calls it with the error it retries: a :class:`RetryableResponse` (and an
    ``httpx.HTTPStatusError``, for services that raise those); or, for a
    transport made with ``raise_statuses=()``, with the **response** that
    ``on_result=RetryOn().response`` retries, so a 429 or a 503 kept as a
    response is retried after the server's delay too. ``None`` (no header,
    a malformed one, another error) lets Retry use the error's own hint or
    its backoff. A hint longer than Retry's limit on hinted waits
    (``max_delay``, else a default) ends retrying.
    """
    if isinstance(outcome, httpx.Response):
        return _response_retry_after(outcome)
    if isinstance(outcome, RetryableResponse):
        return outcome.retry_after
    if isinstance(outcome, httpx.HTTPStatusError):
        return _response_retry_after(outcome.response)
    return None


# ------------------------------------------------------------------ breaker


def is_failure(error: BaseException, /) -> bool:
    """Whether *error* says the server is unhealthy (for the breaker's ``on=``).

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
    """Whether *response* has a 5xx status (for the breaker's ``on_result=``)."""
    return response.status_code >= 500


class BreakerOptions(TypedDict):
    """What :func:`breaker_options` returns: two options of a breaker."""

    on: Callable[[Exception], bool]
    """:func:`is_failure`."""
    on_result: Callable[[Any], bool]
    """:func:`is_failure_response`."""


def breaker_options() -> BreakerOptions:
    """The :class:`~layers.CircuitBreaker` options that classify HTTP outcomes.

    ``{"on": is_failure, "on_result": is_failure_response}``:
    transport errors, timeouts and 5xx responses count as failures,
    everything else as successes. Spread it into the breaker's options::

        layers.CircuitBreaker(name="api", open_duration=30, **breaker_options())
        builder.circuit_breaker(name="api", **breaker_options())
    """
    return {"on": is_failure, "on_result": is_failure_response}


# ------------------------------------------------------------------ the host key


def host_key(request: httpx.Request, /) -> str:
    """The key of *request*'s origin: ``scheme://host:port``, no credentials.

    A key function for a per-host limit (``RateLimit(..., key=host_key)``)
    or breaker (``PerKey(factory, key=host_key)``, see
    :class:`~layers.PerKey`). The port is
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

    **Retry-After** is the server's to choose: a hint longer than the
    retry's limit on hinted waits (its ``max_delay`` as below, else a
    default of at most 60 s) returns the response at once instead of
    sleeping. A header that no
    number can hold never raises (see :func:`parse_retry_after`).

    Args:
        stack: A layer for ``Service[httpx.Request, httpx.Response]``: a
            :class:`~layers.ServiceBuilder`, one layer, or a
            :class:`~layers.Stack`.
        transport: The real transport (default: a new
            ``httpx.AsyncHTTPTransport()``). Closing this transport closes it.
        raise_statuses: The statuses raised as :class:`RetryableResponse`
            inside the stack (default :data:`RETRY_STATUSES`); ``()`` to
            leave every response a response (then retry with
            ``on_result=RetryOn().response``, and ``retry_after=retry_after``
            reads the response's ``Retry-After``).

    Raises:
        layers.ConfigurationError: If *stack* is not a layer or *transport*
            not an ``httpx.AsyncBaseTransport``, or for a status outside
            100-599.

    Example:
        >>> import httpx
        >>> from layers.httpx import LayeredTransport, RetryOn, retry_after
        >>> import anyio, layers
        >>> answers = iter([503, 200])
        >>> mock = httpx.MockTransport(lambda request: httpx.Response(next(answers)))
        >>> stack = layers.ServiceBuilder().retry(
        ...     on=RetryOn(),
        ...     retry_after=retry_after,
        ...     max_attempts=3,
        ...     backoff=[0.01],
        ...     max_delay=30,  # a longer Retry-After returns the response
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
            raise ConfigurationError(
                f"LayeredTransport(transport={transport!r}): transport must be an "
                f"httpx.AsyncBaseTransport, got {type(transport).__name__}"
            )
        if isinstance(cast(object, raise_statuses), int | str | bytes):
            raise ConfigurationError(
                f"LayeredTransport(raise_statuses={raise_statuses!r}): "
                "raise_statuses must be a collection of HTTP status codes 100-599"
            )
        statuses = frozenset(raise_statuses)
        _check_statuses(
            "LayeredTransport", "raise_statuses", cast("frozenset[object]", statuses)
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


_publish(__name__, __all__)
