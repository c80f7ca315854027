"""The exceptions that ``layers`` raises.

Every exception of the library derives from :class:`LayersError`. The tree::

    Exception
    └── LayersError
        ├── Rejected                  the inner service was not called
        │   ├── Filtered              a filter layer refused the request
        │   ├── Overloaded            a concurrency limit or load shedder is full
        │   ├── RateLimited           a rate limit has no capacity left
        │   ├── CircuitOpen           a circuit breaker is open
        │   └── ShuttingDown          the service is draining before shutdown
        ├── Elapsed (also TimeoutError)  a timeout expired during the call
        └── ConfigurationError (also ValueError)  a layer was built with a bad value

:class:`Rejected` and its subclasses are raised *without* calling the inner
service, so a retry or fallback layer can tell "the downstream failed" from
"we did not even try". They carry :attr:`Rejected.retry_after` when the layer
that rejected knows when capacity returns.

Exceptions raised by the inner service itself pass through every layer
unchanged: never wrapped, traceback kept. Cancellation is never turned into
another exception, except by the :class:`~layers.Timeout` layer whose own
deadline caused it.
"""

from __future__ import annotations

import sys

__all__ = [
    "CircuitOpen",
    "ConfigurationError",
    "Elapsed",
    "Filtered",
    "LayersError",
    "Overloaded",
    "RateLimited",
    "Rejected",
    "ShuttingDown",
]


class LayersError(Exception):
    """Base class of every exception raised by ``layers`` itself."""


class ConfigurationError(LayersError, ValueError):
    """A layer or builder was given an invalid configuration value.

    Raised at construction, never during a call. The message names the
    parameter, the value given and what is allowed, for example
    ``Timeout(seconds=-1): seconds must be a finite number > 0, got -1``.
    It is also a :class:`ValueError`, so ``except ValueError`` catches it.
    """


class Rejected(LayersError):
    """A layer refused the call without calling the inner service.

    Args:
        message: A human-readable reason.
        retry_after: Seconds after which the same call may succeed, if the
            rejecting layer knows it (a rate limiter does, exactly; an open
            circuit breaker knows when it will let a probe through), else
            ``None``.
        layer: The ``name`` of the layer that rejected the call, if any.
    """

    retry_after: float | None
    """Seconds until the call may be admitted, or ``None`` if unknown."""

    layer: str | None
    """The name of the layer that rejected the call, or ``None``."""

    def __init__(
        self,
        message: str = "",
        *,
        retry_after: float | None = None,
        layer: str | None = None,
    ) -> None:
        super().__init__(message or self._default_message())
        self.retry_after = retry_after
        self.layer = layer

    @classmethod
    def _default_message(cls) -> str:
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_rejected,
            (type(self), str(self), self.retry_after, self.layer),
        )


def _rebuild_rejected(
    cls: type[Rejected], message: str, retry_after: float | None, layer: str | None
) -> Rejected:
    return cls(message, retry_after=retry_after, layer=layer)


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


def type_name(error: BaseException) -> str:
    """The name of *error*'s type as events, logs, metrics and reports carry it.

    ``module.QualName`` by its public name (``layers.Elapsed``, not
    ``layers._errors.Elapsed``: a class defined in a private module and
    re-exported by its package is named by the package), or the bare name
    for a builtin: never the message, which may hold a payload.
    """
    kind = type(error)
    module = kind.__module__
    if module == "builtins":
        return kind.__qualname__
    if "._" in module:
        package = module.partition("._")[0]
        if getattr(sys.modules.get(package), kind.__qualname__, None) is kind:
            module = package
    return f"{module}.{kind.__qualname__}"
