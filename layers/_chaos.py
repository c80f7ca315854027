"""Fault injection: inject an error, a latency or a result at a rate (as Polly's Simmy).

Three layers share one switch and one draw: :class:`InjectError`,
:class:`InjectLatency` and :class:`InjectResult`. Each call through one that
is enabled draws a number from the layer's random source and injects when it
is below the rate; a layer that is disabled reads one attribute and calls the
inner service.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Literal, NoReturn, TypeVar, cast, final

import anyio
import attrs

from . import events
from ._config import (
    bool_value,
    check_number,
    fail,
    name_value,
    random_draw,
    random_value,
    seconds_at_least_zero,
    seed_value,
)
from ._core import Service, mark_built
from ._errors import CallbackError, type_name
from ._observable import Observation
from .events import Event, Level

__all__ = [
    "FaultInjected",
    "InjectError",
    "InjectLatency",
    "InjectResult",
    "InjectionStatistics",
]

Req = TypeVar("Req")
Res = TypeVar("Res")

Fault = Literal["error", "latency", "result"]

_RATE_RULE = "a number from 0 to 1 (the share of calls to inject into)"


def _in_unit_interval(value: float) -> bool:
    return 0 <= value <= 1


def _rate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # attribute.alias: the private field's init name ("rate", not "_rate").
    check_number(
        type(instance).__name__,
        attribute.alias or attribute.name,
        value,
        _RATE_RULE,
        _in_unit_interval,
    )


@attrs.frozen(kw_only=True)
class FaultInjected(Event):
    """A fault injection layer injected a fault into a call.

    Attributes:
        fault: ``"error"`` (:class:`~layers.InjectError`), ``"latency"``
            (:class:`~layers.InjectLatency`) or ``"result"``
            (:class:`~layers.InjectResult`).
        error: The injected exception's type, for ``"error"``; else ``None``.
        delay: The injected delay in seconds, for ``"latency"``; else ``None``.
    """

    event: ClassVar[str] = "fault_injected"
    kind: ClassVar[str] = "fault_injection"
    level: ClassVar[Level] = "info"

    fault: Fault
    error: str | None = None
    delay: float | None = None


@final
@attrs.frozen(kw_only=True)
class InjectionStatistics:
    """A snapshot of a fault injection layer (see its ``statistics()``).

    Attributes:
        enabled: Whether it injects now.
        rate: The share of calls it injects into while enabled.
        calls: Calls that drew while it was enabled, so far.
        injected: Calls it injected a fault into, so far.
    """

    enabled: bool
    rate: float
    calls: int
    injected: int


@final
class _Switch:
    """The run-time state of one injection layer, shared by every service it wraps."""

    __slots__ = ("calls", "enabled", "injected", "rate")

    def __init__(self, enabled: bool, rate: float) -> None:
        self.enabled = enabled
        self.rate = rate
        self.calls = 0
        self.injected = 0


@attrs.frozen(eq=False)
class _Injection:
    """What the three injection layers share: the rate, the switch, the draw."""

    _rate: float = attrs.field(
        default=0.001, kw_only=True, validator=_rate, repr=False, alias="rate"
    )
    _enabled: bool = attrs.field(
        default=True, kw_only=True, validator=bool_value, repr=False, alias="enabled"
    )
    seed: int | None = attrs.field(default=None, kw_only=True, validator=seed_value)
    random: _random.Random | None = attrs.field(
        default=None, kw_only=True, validator=random_value
    )
    _switch: _Switch = attrs.field(init=False, repr=False)
    _draw: Callable[[], float] = attrs.field(init=False, repr=False)
    kind: ClassVar[str] = "fault_injection"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def __attrs_post_init__(self) -> None:
        draw = random_draw(type(self).__name__, self.seed, self.random)
        object.__setattr__(self, "_switch", _Switch(self._enabled, self._rate))
        object.__setattr__(self, "_draw", draw)

    @property
    def enabled(self) -> bool:
        """Whether the layer injects now (see :meth:`enable`, :meth:`disable`)."""
        return self._switch.enabled

    @property
    def rate(self) -> float:
        """The share of calls it injects into while enabled (see :meth:`set_rate`)."""
        return self._switch.rate

    def enable(self) -> None:
        """Start injecting, at :attr:`rate`, into every service it wraps."""
        self._switch.enabled = True

    def disable(self) -> None:
        """Stop injecting: calls go straight to the inner service."""
        self._switch.enabled = False

    def set_rate(self, rate: float) -> None:
        """Change the share of calls to inject into, from 0 to 1, at once.

        Raises:
            layers.ConfigurationError: For a rate outside [0, 1].
        """
        check_number(
            f"{type(self).__name__}.set_rate",
            "rate",
            rate,
            _RATE_RULE,
            _in_unit_interval,
        )
        self._switch.rate = rate

    def statistics(self) -> InjectionStatistics:
        """A snapshot of the switch and the counters (:class:`InjectionStatistics`)."""
        switch = self._switch
        return InjectionStatistics(
            enabled=switch.enabled,
            rate=switch.rate,
            calls=switch.calls,
            injected=switch.injected,
        )

    def observe(self) -> Observation:
        """The layer for health checks and metrics (:class:`~layers.Observable`).

        Always ``HEALTHY``; the state ``"enabled"`` or ``"disabled"``, and
        the figures ``rate``, ``calls`` and ``injected``.
        """
        stats = self.statistics()
        return Observation(
            state="enabled" if stats.enabled else "disabled",
            figures={
                "rate": stats.rate,
                "calls": stats.calls,
                "injected": stats.injected,
            },
        )

    def _injects(self) -> bool:
        """Draw for one call of an enabled layer: whether to inject."""
        switch = self._switch
        switch.calls += 1
        if self._draw() < switch.rate:
            switch.injected += 1
            return True
        return False


_DOC_COMMON = """
    The layer is **switchable at run time**: :meth:`enable`,
    :meth:`disable` and :meth:`set_rate` act at once on every service it
    wraps (a game day turns faults on and off without a restart). Disabled,
    a call costs one attribute read. Each injection emits
    :class:`~layers.events.FaultInjected` and is counted in
    :meth:`statistics`.

    Draws come from *random* or a new :class:`random.Random` seeded with
    *seed*, so a test that gives a seed injects into the same calls every
    run (with one task calling; concurrent calls draw in the order they
    arrive).
"""


def _makes_errors(value: object) -> bool:
    if isinstance(value, type):
        return issubclass(value, Exception)
    return callable(value) and not isinstance(value, BaseException)


def _check_error(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if _makes_errors(value):
        return
    fail(
        instance,
        attribute,
        value,
        "an Exception subclass or a function that returns a new exception (not "
        "an exception instance: a raised instance keeps its traceback, which "
        "grows each time it is raised again)",
    )


@final
@attrs.frozen(eq=False)
class InjectError(_Injection):
    """Raise an exception in place of a share of the calls (Polly's fault strategy).

    At *rate* (default 0.001, Polly's), a call raises a new exception
    without calling the inner service: ``error("injected by '<name>'")``
    for an exception class (one that takes other arguments needs a
    function), or ``error()`` for a function that returns one.
    """

    __doc__ = (
        (__doc__ or "")
        + _DOC_COMMON
        + """
    Args:
        error: An :class:`Exception` subclass, or a function ``error() ->
            Exception``.
        rate: The share of calls to inject into, from 0 to 1 (default 0.001).
        enabled: Whether it injects from the start (default ``True``).
        seed: A seed for a new :class:`random.Random`, or ``None``.
        random: A :class:`random.Random` to draw from (not with *seed*).
        name: A name for events and metrics (default ``"inject_error"``).

    Raises:
        layers.ConfigurationError: For an invalid value, naming it.

    Example:
        >>> import anyio, layers
        >>> async def ok(request: str) -> str:
        ...     return "ok"
        >>> chaos = layers.InjectError(ConnectionError, rate=1.0)
        >>> svc = chaos.layer(ok)
        >>> anyio.run(svc, "x")
        Traceback (most recent call last):
          ...
        ConnectionError: injected by 'inject_error'
        >>> chaos.disable()
        >>> anyio.run(svc, "x")
        'ok'
    """
    )

    error: type[Exception] | Callable[[], Exception] = attrs.field(
        validator=_check_error
    )
    name: str = attrs.field(default="inject_error", kw_only=True, validator=name_value)

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: while enabled, a share of the calls raise instead."""
        switch = self._switch
        injects = self._injects
        fault = self._fault

        async def inject_error(request: Req, /) -> Res:
            if switch.enabled and injects():
                fault()
            return await inner(request)

        return mark_built(inject_error, self, inner)

    def _fault(self) -> NoReturn:
        make = self.error
        if isinstance(make, type):
            error = make(f"injected by {self.name!r}")
        else:
            made = cast(object, make())  # checked: user code
            if not isinstance(made, Exception):
                raise CallbackError(
                    f"InjectError {self.name!r}: the error function (error=) must "
                    f"return an Exception, got a {type(made).__name__}",
                    layer=self.name,
                    parameter="error",
                )
            error = made
        if events.STATE.sinks:
            events.emit(
                FaultInjected(layer=self.name, fault="error", error=type_name(error))
            )
        raise error


@final
@attrs.frozen(eq=False)
class InjectLatency(_Injection):
    """Delay a share of the calls before the inner call (Polly's latency strategy).

    At *rate* (default 0.001), a call sleeps *delay* seconds
    (:func:`anyio.sleep`, on the event loop's clock: virtual time in tests;
    it can be cancelled, by a :class:`~layers.Timeout` outside, say), then
    calls the inner service.
    """

    __doc__ = (
        (__doc__ or "")
        + _DOC_COMMON
        + """
    Args:
        delay: The delay to inject, seconds >= 0.
        rate: The share of calls to inject into, from 0 to 1 (default 0.001).
        enabled: Whether it injects from the start (default ``True``).
        seed: A seed for a new :class:`random.Random`, or ``None``.
        random: A :class:`random.Random` to draw from (not with *seed*).
        name: A name for events and metrics (default ``"inject_latency"``).

    Raises:
        layers.ConfigurationError: For an invalid value, naming it.
    """
    )

    delay: float = attrs.field(validator=seconds_at_least_zero)
    name: str = attrs.field(
        default="inject_latency", kw_only=True, validator=name_value
    )

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: while enabled, a share of the calls wait *delay* first."""
        switch = self._switch
        injects = self._injects
        delay = self.delay
        report = self._report

        async def inject_latency(request: Req, /) -> Res:
            if switch.enabled and injects():
                report()
                await anyio.sleep(delay)
            return await inner(request)

        return mark_built(inject_latency, self, inner)

    def _report(self) -> None:
        if events.STATE.sinks:
            events.emit(
                FaultInjected(layer=self.name, fault="latency", delay=self.delay)
            )


@final
@attrs.frozen(eq=False)
class InjectResult(_Injection, Generic[Res]):
    """Return a response in place of a share of the calls (Polly's outcome strategy).

    At *rate* (default 0.001), a call returns *value* (the same object each
    time) without calling the inner service: an HTTP 503, an empty page, a
    stale answer. Typed: ``InjectResult[Res]`` wraps a ``Service[Req, Res]``.
    """

    __doc__ = (
        (__doc__ or "")
        + _DOC_COMMON
        + """
    Args:
        value: The response to return.
        rate: The share of calls to inject into, from 0 to 1 (default 0.001).
        enabled: Whether it injects from the start (default ``True``).
        seed: A seed for a new :class:`random.Random`, or ``None``.
        random: A :class:`random.Random` to draw from (not with *seed*).
        name: A name for events and metrics (default ``"inject_result"``).

    Raises:
        layers.ConfigurationError: For an invalid value, naming it.
    """
    )

    value: Res
    name: str = attrs.field(default="inject_result", kw_only=True, validator=name_value)

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: while enabled, a share of the calls return *value*."""
        switch = self._switch
        injects = self._injects
        value = self.value
        report = self._report

        async def inject_result(request: Req, /) -> Res:
            if switch.enabled and injects():
                report()
                return value
            return await inner(request)

        return mark_built(inject_result, self, inner)

    def _report(self) -> None:
        if events.STATE.sinks:
            events.emit(FaultInjected(layer=self.name, fault="result"))
