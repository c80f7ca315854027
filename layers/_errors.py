"""The exceptions that ``layers`` raises, and the one policy for raising them.

Every exception of the library derives from :class:`LayersError`. The tree::

    Exception
    └── LayersError
        ├── Rejected                  the inner service was not called
        │   ├── Filtered              a filter layer refused the request
        │   ├── Overloaded            a concurrency limit or load shedder is full
        │   ├── RateLimited           a rate limit has no capacity left
        │   ├── CircuitOpen           a circuit breaker is open
        │   ├── ShuttingDown          the service is draining before shutdown
        │   ├── Throttled             an adaptive throttle refused the call
        │   │                         locally: the downstream refuses many
        │   └── StoreUnavailable      a shared limit's store failed, and the
        │                             layer's policy is to refuse (fail closed)
        ├── StoreError                a shared store (Redis) failed or timed out
        ├── Elapsed (also TimeoutError)  a timeout expired during the call
        ├── ConfigurationError (also ValueError and TypeError)
        │                             a layer was built with a bad argument
        └── CallbackError (also TypeError and ValueError)
                                      a user's function returned what a layer
                                      cannot use, during a call

(:class:`layers.KeyTableFull` is one more :class:`Rejected`.)

:class:`Rejected` and its subclasses are raised *without* calling the inner
service, so a retry or fallback layer can tell "the downstream failed" from
"we did not even try". They carry :attr:`Rejected.reason`, and
:attr:`Rejected.retry_after` when the layer that rejected knows when
capacity returns.

The policy (docs/explanation/errors.md tells why):

* **A bad configuration argument**, whether its type is wrong
  (``Timeout("1")``, ``ServiceBuilder().layer(42)``) or its value
  (``Timeout(-1)``), raises :class:`ConfigurationError` when the layer,
  builder or tool is made, never later. It is both a :class:`ValueError`
  and a :class:`TypeError`, so code written for the standard library's
  convention catches it either way. The message names the owner, the
  parameter, the value (for a wrong type, its type) and what is allowed.
* **A user's function that misbehaves during a call** (a key function
  returning an unhashable value, a cost function returning a non-number,
  a ``retry_after`` hint function returning junk, a backoff function
  returning a negative delay, ``map_err`` returning a non-exception, a sync
  callable returning a coroutine) raises :class:`CallbackError`, which
  names the layer, the parameter and the type of what was returned (never
  the value when it may hold a payload), chained (``__cause__``) from the
  error at hand, if any. A function that *raises* is not misbehaving: its
  exception propagates unchanged, as the inner service's do (a filter or a
  key function may refuse a request by raising).
* **An object used in the wrong state** (a ``Supervisor`` entered twice)
  raises :class:`RuntimeError`, as the standard library does.

Exceptions raised by the inner service itself pass through every layer
unchanged: never wrapped, traceback kept. Cancellation is never turned into
another exception, except by the :class:`~layers.Timeout` layer whose own
deadline caused it.

Every public class says where to import it from: its ``__module__`` is its
public home (``layers.RateLimited``, not ``layers._errors.RateLimited``), so
reprs, tracebacks, events and pickles name it so.
"""

from __future__ import annotations

__all__ = [
    "CallbackError",
    "CircuitOpen",
    "ConfigurationError",
    "Elapsed",
    "Filtered",
    "LayersError",
    "Overloaded",
    "RateLimited",
    "Rejected",
    "ShuttingDown",
    "StoreError",
    "StoreUnavailable",
    "Throttled",
]


class LayersError(Exception):
    """Base class of every exception raised by ``layers`` itself."""


class ConfigurationError(LayersError, ValueError, TypeError):
    """A layer, builder or tool was given an invalid argument.

    Raised at construction, never during a call, for a value of the wrong
    type as for a bad value. The message names the parameter, the value
    given and what is allowed, for example
    ``Timeout(seconds=-1): seconds must be a finite number of seconds > 0,
    got -1``. It is both a :class:`ValueError` and a :class:`TypeError`, so
    ``except ValueError`` and ``except TypeError`` catch it, as they would
    the standard library's error for a bad value or a wrong type.
    """


class CallbackError(LayersError, TypeError, ValueError):
    """A function given to a layer returned what the layer cannot use.

    Raised during a call, when a user's function misbehaves: a key function
    returns an unhashable value, a cost function a non-number, a
    ``retry_after`` hint function something that is not a number of seconds,
    a backoff function a negative delay, ``map_err`` something that is not an
    exception, a sync callable a coroutine. The message names the layer, the
    parameter that took the function, and the type of what it returned; the
    error is chained (``__cause__``) from the error at hand, if any (the
    failure a hint was asked about, the one ``map_err`` was given). It is a
    bug in the function, so no layer retries or counts it as the service's
    failure on purpose; it is also a :class:`TypeError` and a
    :class:`ValueError`, the standard library's errors for a wrong type or
    value. A function that *raises* is not misbehaving: its exception
    propagates unchanged.

    Args:
        message: What went wrong.
        layer: The ``name`` of the layer (or the name of the tool) whose
            function misbehaved, if any.
        parameter: The parameter that took the function (``"key"``,
            ``"cost"``, ``"retry_after"``...), if any.
    """

    layer: str | None
    """The name of the layer whose function misbehaved, or ``None``."""

    parameter: str | None
    """The parameter that took the function, or ``None``."""

    def __init__(
        self,
        message: str = "",
        *,
        layer: str | None = None,
        parameter: str | None = None,
    ) -> None:
        super().__init__(message)
        self.layer = layer
        self.parameter = parameter

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_callback_error, (str(self), self.layer, self.parameter))


def _rebuild_callback_error(
    message: str, layer: str | None, parameter: str | None
) -> CallbackError:
    return CallbackError(message, layer=layer, parameter=parameter)


class Rejected(LayersError):
    """A layer refused the call without calling the inner service.

    Args:
        message: A human-readable account of the refusal.
        retry_after: Seconds after which the same call may succeed, if the
            rejecting layer knows it (a rate limiter does, exactly; an open
            circuit breaker knows when it will let a probe through), else
            ``None``.
        layer: The ``name`` of the layer that rejected the call, if any.
        reason: Why, in one word that a program can test (see
            :attr:`reason`); the same word as the rejection's event carries.
    """

    retry_after: float | None
    """Seconds until the call may be admitted, or ``None`` if unknown."""

    layer: str | None
    """The name of the layer that rejected the call, or ``None``."""

    reason: str
    """Why the call was refused, as the rejection's event says it:

    * :class:`RateLimited`: ``"limited"`` (no capacity now), ``"max_wait"``
      (the wait would exceed ``max_wait``), ``"deadline"`` (the wait would
      outlast the deadline in force) or ``"cost"`` (the cost exceeds the
      burst);
    * :class:`Overloaded`: ``"queue_full"`` or ``"max_wait"``;
    * :class:`CircuitOpen`: the breaker's state, ``"open"``,
      ``"half_open"`` (its trial calls are all in flight) or
      ``"forced_open"``;
    * :class:`ShuttingDown`: ``"draining"``;
    * :class:`Throttled`: ``"throttled"``;
    * :class:`Filtered`: ``"filtered"``;
    * :class:`~layers.KeyTableFull`: ``"key_table_full"``;
    * :class:`StoreUnavailable`: ``"store_unavailable"``.

    ``""`` for a rejection raised without one (by a user's own code)."""

    def __init__(
        self,
        message: str = "",
        *,
        retry_after: float | None = None,
        layer: str | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message or self._default_message())
        self.retry_after = retry_after
        self.layer = layer
        self.reason = reason

    @classmethod
    def _default_message(cls) -> str:
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]

    def __repr__(self) -> str:
        fields = "".join(
            f", {name}={value!r}"
            for name, value in (
                ("reason", self.reason),
                ("retry_after", self.retry_after),
                ("layer", self.layer),
            )
            if value is not None and value != ""
        )
        return f"{type(self).__name__}({str(self)!r}{fields})"

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_rejected,
            (type(self), str(self), self.retry_after, self.layer, self.reason),
        )


def _rebuild_rejected(
    cls: type[Rejected],
    message: str,
    retry_after: float | None,
    layer: str | None,
    reason: str = "",
) -> Rejected:
    return cls(message, retry_after=retry_after, layer=layer, reason=reason)


class Filtered(Rejected):
    """A filter layer refused the request; the inner service was not called."""


class Overloaded(Rejected):
    """The service is at its concurrency limit and its queue is full."""


class RateLimited(Rejected):
    """The rate limit has no capacity left for this call."""


class CircuitOpen(Rejected):
    """The circuit breaker is open; calls are refused until it half-opens."""


class ShuttingDown(Rejected):
    """The service is draining for shutdown and takes no new calls."""


class Throttled(Rejected):
    """An adaptive throttle refused the call locally: the downstream refuses many."""


class StoreUnavailable(Rejected):
    """A shared limit's store is unavailable, and the layer fails closed.

    Raised by a layer whose state lives in a shared store (Redis, see
    :mod:`layers.redis`) when the store failed or timed out and the store's
    failure policy is ``"closed"``. Its ``__cause__`` is the
    :class:`StoreError`; its :attr:`~Rejected.reason` is
    ``"store_unavailable"``.
    """


class StoreError(LayersError):
    """A shared store failed: an error from it, a timeout, or its guard is open.

    A store (such as :class:`layers.redis.RedisRateLimitStore`) raises it,
    chained (``__cause__``) from the client's own error; the layer that uses
    the store catches it and applies the store's failure policy (fail open,
    fail closed with :class:`StoreUnavailable`, or fall back to a local
    limit), so a caller sees it only from a store used directly.

    Args:
        message: What failed.
        store: The store's name, for events and metrics.
    """

    store: str
    """The name of the store that failed."""

    def __init__(self, message: str = "", *, store: str = "") -> None:
        super().__init__(message or "the shared store failed")
        self.store = store

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_store_error, (str(self), self.store))


def _rebuild_store_error(message: str, store: str) -> StoreError:
    return StoreError(message, store=store)


class Elapsed(LayersError, TimeoutError):
    """A :class:`~layers.Timeout` expired before the inner call finished.

    The inner call was cancelled at the deadline (structured cancellation:
    it had the chance to run its ``finally`` blocks) and then this error was
    raised. It is also the builtin :class:`TimeoutError`.

    Args:
        timeout: The timeout, in seconds, of the layer whose deadline passed.
        layer: The ``name`` of that layer, if it has one.
    """

    timeout: float | None
    """The timeout in seconds of the layer that expired, if known."""

    layer: str | None
    """The name of the layer that expired, or ``None``."""

    def __init__(
        self,
        message: str = "",
        *,
        timeout: float | None = None,
        layer: str | None = None,
    ) -> None:
        if not message:
            message = (
                "request timed out"
                if timeout is None
                else f"request timed out after {timeout:g} s"
            )
        super().__init__(message)
        self.timeout = timeout
        self.layer = layer

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_elapsed, (str(self), self.timeout, self.layer))


def _rebuild_elapsed(message: str, timeout: float | None, layer: str | None) -> Elapsed:
    return Elapsed(message, timeout=timeout, layer=layer)


def type_name(error: object) -> str:
    """The name of *error*'s type as events, logs, metrics and reports carry it.

    ``module.QualName`` (``layers.Elapsed``: every public class of
    ``layers`` has its public home as ``__module__``), or the bare name for
    a builtin: never the message, which may hold a payload.
    """
    kind = type(error)
    module = kind.__module__
    if module == "builtins":
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"
