"""Fallback: answer a call that failed in a way you chose with a value or a handler."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast, final

import attrs

from . import events
from ._classify import Classification, classification, matcher
from ._config import bool_value, callable_or_none, fail, name_value
from ._core import Service, mark_built
from ._errors import CallbackError, ConfigurationError, Rejected, type_name
from ._observable import Observation
from .events import Event, Level

__all__ = ["NO_VALUE", "Fallback", "FallbackStatistics", "FallbackUsed", "Outcome"]

Req = TypeVar("Req")
Res = TypeVar("Res")

Reason = Literal["error", "rejected", "result"]


@attrs.frozen(kw_only=True)
class FallbackUsed(Event):
    """A :class:`~layers.Fallback` answered a call in place of the inner service.

    Attributes:
        reason: What was replaced: ``"error"`` (an exception that ``on=``
            matched), ``"rejected"`` (a :class:`~layers.Rejected`: the call
            was refused without reaching the downstream) or ``"result"`` (a
            response that ``on_result=`` matched).
        error: The replaced exception's type (``"ConnectionError"``,
            ``"layers.CircuitOpen"``), never its message; ``None`` for a
            response.
    """

    event: ClassVar[str] = "fallback_used"
    kind: ClassVar[str] = "fallback"
    level: ClassVar[Level] = "warning"

    reason: Reason
    error: str | None


@final
@attrs.frozen(kw_only=True)
class Outcome(Generic[Res]):
    """What a :class:`~layers.Fallback` handler is told about the failed call.

    Attributes:
        reason: ``"error"``, ``"rejected"`` or ``"result"`` (see
            :attr:`FallbackUsed.reason <layers.events.FallbackUsed.reason>`).
        error: The exception being replaced, or ``None`` for a response.
        response: The response that ``on_result=`` matched, or ``None``
            for an exception.
    """

    reason: Reason
    error: Exception | None = None
    response: Res | None = None


@final
@attrs.frozen(kw_only=True)
class FallbackStatistics:
    """A snapshot of a :class:`~layers.Fallback` (see its ``statistics()``).

    Attributes:
        errors: Exceptions matched by ``on=`` and replaced, so far.
        rejected: :class:`~layers.Rejected` refusals replaced, so far.
        results: Responses matched by ``on_result=`` and replaced, so far.
    """

    errors: int
    rejected: int
    results: int

    @property
    def fallbacks(self) -> int:
        """Every call answered by the fallback, so far."""
        return self.errors + self.rejected + self.results


class _Missing:
    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _Missing()
"""The default of ``value=``: no value given (a handler is)."""

_on = classification("replaced")
_optional_callable = callable_or_none("None or callable")


def _handler(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        fail(
            instance,
            attribute,
            value,
            "None or an async callable handler(request, outcome) -> response",
        )


def _never(error: Exception) -> bool:
    return False


@final
class _Counts:
    __slots__ = ("error", "rejected", "result")

    def __init__(self) -> None:
        self.error = 0
        self.rejected = 0
        self.result = 0


@final
@attrs.frozen(eq=False)
class Fallback(Generic[Res]):
    """Answer a call that failed in a way you chose: with a value, or a handler.

    **What falls back** is yours to say, as for :class:`~layers.Retry`:

    * *on*: exception types (or a predicate on the exception) that the
      fallback replaces;
    * *on_result*: a predicate on the response (an HTTP 503, an empty
      page) that the fallback replaces;
    * *on_rejected* (default ``True``): any :class:`~layers.Rejected`
      from a layer inside (a breaker that is open, a limit that is full, a
      rate limit, a drain): the call never reached the downstream. With
      ``on_rejected=False``, a ``Rejected`` falls back only if *on* matches
      it.

    Never replaced, whatever *on* says: cancellation and every other
    :class:`BaseException` (``KeyboardInterrupt``...), which always
    propagate, and an exception that nothing above matches, which
    propagates unchanged.

    **The answer** is *value* (the same object for every call: do not
    mutate it), or what ``await handler(request, outcome)`` returns: the
    handler gets the request and an :class:`~layers.Outcome` that holds
    the exception or the response being replaced, so it can call a
    secondary service with the same request, read a cache, or decide to
    raise after all. The handler runs inside the ``except`` block, so an
    exception it raises has the replaced one as its ``__context__``.

    **Typed**: ``Fallback[Res]`` wraps a ``Service[Req, Res]`` into a
    ``Service[Req, Res]``; a *value* or a handler of another response type
    is a type error.

    Each replacement emits :class:`~layers.events.FallbackUsed` (the
    reason and the exception's type) and is counted in
    :meth:`statistics`; a call that succeeds costs one ``try``.

    Args:
        value: The response to return in place of a failure.
        handler: An async callable ``handler(request, outcome) ->
            response``; give *value* or *handler*, not both.
        on: What exceptions to replace: an :class:`Exception` subclass, a
            tuple of them, or a predicate ``on(error) -> bool``. ``None``
            (default): none but the :class:`~layers.Rejected` ones of
            *on_rejected*.
        on_result: A predicate ``on_result(response) -> bool``: true to
            replace that response. ``None`` (default): responses are
            returned.
        on_rejected: Replace any :class:`~layers.Rejected` (default ``True``).
        name: A name for events and metrics (default ``"fallback"``).

    Raises:
        layers.ConfigurationError: At construction: neither or both of
            *value* and *handler*, nothing to fall back on (``on=None``,
            ``on_result=None`` and ``on_rejected=False``), or a bad value.

    Example:
        >>> import anyio, layers
        >>> async def fetch(request: str) -> list[str]:
        ...     raise ConnectionError("down")
        >>> svc = layers.Fallback(value=["cached"], on=ConnectionError).layer(fetch)
        >>> anyio.run(svc, "GET /")
        ['cached']
    """

    value: Res = attrs.field(default=NO_VALUE)
    handler: Callable[[Any, Outcome[Res]], Awaitable[Res]] | None = attrs.field(
        default=None, kw_only=True, validator=_handler
    )
    on: Classification | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(_on),
    )
    on_result: Callable[[Res], bool] | None = attrs.field(
        default=None, kw_only=True, validator=_optional_callable
    )
    on_rejected: bool = attrs.field(default=True, kw_only=True, validator=bool_value)
    name: str = attrs.field(default="fallback", kw_only=True, validator=name_value)
    _counts: _Counts = attrs.field(init=False, factory=_Counts, repr=False)
    kind: ClassVar[str] = "fallback"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def __attrs_post_init__(self) -> None:
        given = self.value is not NO_VALUE
        if given == (self.handler is not None):
            raise ConfigurationError(
                f"Fallback(value={self.value!r}, handler={self.handler!r}): give "
                "exactly one of value (the response to return) and handler (an "
                "async callable handler(request, outcome) -> response)"
            )
        if self.on is None and self.on_result is None and not self.on_rejected:
            raise ConfigurationError(
                "Fallback(on=None, on_result=None, on_rejected=False): give at "
                "least one of on (exceptions), on_result (a response predicate) "
                "or on_rejected=True, or the fallback is never used"
            )

    def statistics(self) -> FallbackStatistics:
        """A snapshot of the counters (see :class:`FallbackStatistics`)."""
        counts = self._counts
        return FallbackStatistics(
            errors=counts.error, rejected=counts.rejected, results=counts.result
        )

    def observe(self) -> Observation:
        """The fallback for health checks and metrics (:class:`~layers.Observable`).

        Always ``HEALTHY``; the figures ``fallbacks`` (every replacement so
        far), ``errors``, ``rejected_calls`` and ``results``.
        """
        stats = self.statistics()
        return Observation(
            figures={
                "fallbacks": stats.fallbacks,
                "errors": stats.errors,
                "rejected_calls": stats.rejected,
                "results": stats.results,
            }
        )

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: failures it raises or returns, as configured, are replaced."""
        replace = self._replacer()
        matches = _never if self.on is None else matcher(self.on)
        on_rejected = self.on_rejected
        on_result = self.on_result

        def wanted(error: Exception) -> Reason | None:
            if isinstance(error, Rejected):
                return "rejected" if on_rejected or matches(error) else None
            return "error" if matches(error) else None

        if on_result is None:

            async def fallback(request: Req, /) -> Res:
                try:
                    return await inner(request)
                except Exception as error:
                    reason = wanted(error)
                    if reason is None:
                        raise
                    return await replace(
                        request, Outcome[Res](reason=reason, error=error)
                    )

            return mark_built(fallback, self, inner)

        async def fallback_on_result(request: Req, /) -> Res:
            try:
                response = await inner(request)
            except Exception as error:
                reason = wanted(error)
                if reason is None:
                    raise
                return await replace(request, Outcome[Res](reason=reason, error=error))
            if on_result(response):
                return await replace(
                    request, Outcome[Res](reason="result", response=response)
                )
            return response

        return mark_built(fallback_on_result, self, inner)

    def _replacer(self) -> Callable[[Any, Outcome[Res]], Awaitable[Res]]:
        counts = self._counts
        name = self.name
        handler = self.handler
        value = self.value

        def report(outcome: Outcome[Res]) -> None:
            reason = outcome.reason
            setattr(counts, reason, getattr(counts, reason) + 1)
            if events.STATE.sinks:
                error = outcome.error
                events.emit(
                    FallbackUsed(
                        layer=name,
                        reason=reason,
                        error=None if error is None else type_name(error),
                    )
                )

        if handler is None:

            async def give_value(request: Any, outcome: Outcome[Res]) -> Res:
                report(outcome)
                return value

            return give_value

        call = cast("Callable[[Any, Outcome[Res]], object]", handler)

        async def call_handler(request: Any, outcome: Outcome[Res]) -> Res:
            report(outcome)
            answer = call(request, outcome)
            if not inspect.isawaitable(answer):
                raise CallbackError(
                    f"Fallback {name!r}: the handler (handler=) must be an async "
                    "callable handler(request, outcome) -> response, but it "
                    f"returned a {type(answer).__name__}, which cannot be awaited",
                    layer=name,
                    parameter="handler",
                )
            return cast("Res", await answer)

        return call_handler
