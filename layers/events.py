"""Typed events: what the layers report, and where the reports go.

Every layer reports what it does (a timeout expired, a failed attempt will
be retried, a call was rejected...) as a small frozen event object. Events
go to *sinks*: callables that take one event. By default one sink is
installed, which logs each event to the standard library's :mod:`logging`
under the logger ``layers`` (or to structlog, once the application has
configured structlog); turn it off with :func:`~layers.set_logging` and add
your own with :func:`~layers.add_sink` (a metrics sink, say). As for any library, the
application decides where logs go: with no logging configuration, nothing
below WARNING is shown and nothing ever reaches standard output. Nothing is
built or called on a layer's success path, and nothing at all when no sink
listens.

Events never carry request or response payloads.

This module is the public home of every event class of the core
(``layers.events.RetryStopped``, ``layers.events.CircuitOpened``...); the
top-level ``layers`` namespace keeps only :class:`~layers.Event` and the
sink functions, so that an event never reads like the exception a caller
catches (:class:`~layers.CircuitOpen` is raised,
:class:`~layers.events.CircuitOpened` is reported). Each event class is
defined next to the layer that emits it and published here. An integration
that needs an extra would keep its events in its own module, since this
module cannot import the extra (none has an event of its own today).
"""

from __future__ import annotations

import logging
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal, Protocol

import attrs
import structlog

from ._errors import ConfigurationError

__all__ = [
    "STATE",
    "AdaptiveThrottleRejected",
    "CircuitCallRejected",
    "CircuitClosed",
    "CircuitHalfOpened",
    "CircuitOpened",
    "CircuitStateChanged",
    "CircuitThresholdExceeded",
    "CoalesceAbandoned",
    "CoalesceBypassed",
    "ConcurrencyLimitRejected",
    "DrainRejected",
    "DrainStarted",
    "Event",
    "FallbackUsed",
    "FaultInjected",
    "HedgeRefused",
    "HedgeSent",
    "HedgeWon",
    "Level",
    "LimitChanged",
    "PerKeyRejected",
    "RateLimitRejected",
    "RateLimitWaited",
    "RetryAttemptFailed",
    "RetryStopped",
    "ShutdownCompleted",
    "ShutdownStarted",
    "Sink",
    "StoreFailed",
    "StoreRecovered",
    "TimeoutElapsed",
    "add_sink",
    "emit",
    "remove_sink",
    "set_error_messages",
    "set_logging",
]

Level = Literal["debug", "info", "warning", "error"]
"""The log levels an event can have (:attr:`layers.Event.level`)."""


_LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# The highest level any event class has: the logging sink listens while the
# logger is enabled for it (a custom event may be at "error").
_HIGHEST: list[int] = [logging.WARNING]


def _note_level(level: str) -> None:
    _HIGHEST[0] = max(_HIGHEST[0], _LEVELS.get(level, logging.WARNING))


@attrs.frozen(kw_only=True)
class Event:
    """Base class of every event.

    Attributes:
        layer: The ``name`` of the layer that emitted the event.
    """

    event: ClassVar[str] = "event"
    """The event's name, as logged (``"elapsed"``, ``"retry_attempt_failed"``...)."""

    level: ClassVar[Level] = "info"
    """The log level the default logging sink uses for it."""

    kind: ClassVar[str] = "custom"
    """The kind of layer that emits it (``"timeout"``, ``"retry"``,
    ``"rate_limit"``, ``"concurrency_limit"``, ``"circuit_breaker"``; set it
    on your own events), logged as ``layer_kind``."""

    layer: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _note_level(cls.level)

    def fields(self) -> dict[str, Any]:
        """The event's attributes as a dict, for logging or metrics tags."""
        return attrs.asdict(self, recurse=False)


@attrs.frozen(kw_only=True)
class TimeoutElapsed(Event):
    """A :class:`~layers.Timeout` cancelled its inner call at the deadline.

    Attributes:
        timeout: The layer's timeout in seconds.
    """

    event: ClassVar[str] = "elapsed"
    kind: ClassVar[str] = "timeout"
    level: ClassVar[Level] = "warning"

    timeout: float


@attrs.frozen(kw_only=True)
class LimitChanged(Event):
    """A limit was changed while in use (``set_limit()`` of a limit layer).

    Emitted by :meth:`RateLimit.set_limit <layers.RateLimit.set_limit>` and
    :meth:`ConcurrencyLimit.set_limit <layers.ConcurrencyLimit.set_limit>`
    (which :class:`~layers.AdaptiveConcurrencyLimit` calls as its limit
    moves), one event per parameter whose value changed (a call that changes nothing
    emits nothing). Its :attr:`~layers.Event.kind` is the kind of the layer
    that changed (``"rate_limit"``, ``"concurrency_limit"``).

    Attributes:
        layer_kind: The kind of the layer (the same as ``kind``).
        parameter: The parameter that changed (``"rate"``, ``"period"``,
            ``"burst"``, ``"max_in_flight"``).
        old: Its value before the change.
        new: Its value from now on.
    """

    event: ClassVar[str] = "limit_changed"
    level: ClassVar[Level] = "info"

    layer_kind: str
    parameter: str
    old: float
    new: float

    @property
    def kind(self) -> str:  # type: ignore[override]  # one class, many kinds
        """The kind of the layer that changed (:attr:`layer_kind`)."""
        return self.layer_kind


def report_limit_changes(
    layer: str, kind: str, changes: list[tuple[str, float, float]]
) -> None:
    """Emit a :class:`LimitChanged` per ``(parameter, old, new)`` that differ.

    For the limit layers' ``set_limit``; nothing is built when nobody listens.
    """
    if STATE.sinks:
        for parameter, old, new in changes:
            if old != new:
                emit(
                    LimitChanged(
                        layer=layer,
                        layer_kind=kind,
                        parameter=parameter,
                        old=old,
                        new=new,
                    )
                )


class Sink(Protocol):
    """A callable that receives every event a layer emits (see :func:`add_sink`)."""

    def __call__(self, event: Event, /) -> None:
        """Handle one event; must not block."""
        ...


_LOGGER: Final = logging.getLogger("layers")


def _log_event(event: Event) -> None:
    """The default sink: structlog if the application configured it, else logging."""
    if structlog.is_configured():
        getattr(structlog.get_logger("layers"), event.level)(
            event.event, **_fields(event)
        )
        return
    level = _LEVELS[event.level]
    if not _LOGGER.isEnabledFor(level):
        return  # before anything is built
    fields = _fields(event)
    message = " ".join(
        [event.event, *(f"{key}={_text(value)}" for key, value in fields.items())]
    )
    extra: dict[str, object] = {"event": event.event}
    for key, value in fields.items():
        extra["layers_" + key if key in _RESERVED else key] = value
    _LOGGER.log(level, message, extra=extra)


def _fields(event: Event) -> dict[str, Any]:
    """``layer``, ``layer_kind``, then the event's own fields."""
    fields = event.fields()
    return {
        "layer": fields.pop("layer", event.layer),
        "layer_kind": event.kind,
        **fields,
    }


def _text(value: object) -> str:
    """A value as a key-value line shows it: a plain word bare, else its repr.

    A float is shown to 6 significant digits (the record keeps it whole).
    """
    if isinstance(value, float):
        return repr(float(f"{value:.6g}"))
    if not isinstance(value, str):
        return str(value)
    if value and value.isprintable() and _PLAIN.isdisjoint(value):
        return value
    return repr(value)


_PLAIN: Final = frozenset(" \"'=\\")  # characters that call for quotes
# Attributes a LogRecord has already: a field of that name gets a prefix.
_RESERVED: Final = frozenset(
    {"message", "asctime", "taskName"}
    | set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
)


def _logging_listens() -> bool:
    return _LOGGER.isEnabledFor(_HIGHEST[0]) or structlog.is_configured()


class _Sinks(tuple[Sink, ...]):
    """The installed sinks: false when none of them would do anything.

    The default logging sink alone listens only while the ``layers`` logger
    is enabled (``logging`` caches that per level and clears its cache on
    every change of configuration, so this stays cheap and current) or
    structlog is configured.
    """

    __slots__ = ()

    def __bool__(self) -> bool:
        if len(self) != 1 or self[0] is not _log_event:
            return len(self) > 0
        return _logging_listens()


class _State:
    """The installed sinks, swapped whole so that emitting needs no lock."""

    sinks: tuple[Sink, ...] = _Sinks()
    error_messages: bool = False


STATE: Final = _State()
"""``STATE.sinks`` is falsy when nobody listens: layers test it before they
build an event."""


def add_sink(sink: Sink) -> Callable[[], None]:
    """Send every event to *sink* as well, until it is removed.

    Args:
        sink: Called with each event, in the task that emitted it. It must not
            block; an exception it raises does not reach the caller of the
            service but is reported to :func:`sys.unraisablehook`.

    Returns:
        A function that removes the sink again.
    """
    if not callable(sink):
        raise ConfigurationError(f"add_sink(sink={sink!r}): sink must be callable")
    STATE.sinks = _Sinks((*STATE.sinks, sink))
    return lambda: remove_sink(sink)


def remove_sink(sink: Sink) -> None:
    """Stop sending events to *sink* (no error if it was not installed)."""
    STATE.sinks = _Sinks(s for s in STATE.sinks if s != sink)


def set_logging(enabled: bool) -> None:
    """Turn the default logging sink (logger ``layers``) on or off.

    It is on when ``layers`` is imported. It logs each event at its
    :attr:`~Event.level` to :func:`logging.getLogger("layers") <logging.getLogger>`,
    so your logging configuration decides what is shown and where; or, once
    your application has configured structlog (:func:`structlog.is_configured`),
    to structlog's logger ``layers``. A record's message is the event name
    followed by ``key=value`` pairs (``layer``, ``layer_kind``, then the
    event's fields), and each of these is also an attribute of the record
    (``record.layer``, ``record.layer_kind``, ``record.event``...), for
    formatters that render structured fields.
    """
    remove_sink(_log_event)
    if enabled:
        STATE.sinks = _Sinks((_log_event, *STATE.sinks))


def set_error_messages(enabled: bool) -> None:
    """Let exception messages into what ``layers`` reports (off by default).

    By default events, logs and health reports name an exception by its
    type only (``"ConnectionError"``), never by its message, which can hold
    a payload, a credential or a customer's data. Turn messages on where
    that is safe (a development machine, say); read the setting in your own
    sinks as ``layers.events.STATE.error_messages``.
    """
    STATE.error_messages = bool(enabled)


def emit(event: Event) -> None:
    """Send *event* to every sink. For authors of layers.

    Build the event only when someone listens::

        if layers.events.STATE.sinks:
            layers.events.emit(MyEvent(layer=self.name, ...))
    """
    for sink in STATE.sinks:
        try:
            sink(event)
        except Exception as error:  # a broken sink must not fail the call
            _report_broken_sink(sink, event, error)


def _report_broken_sink(sink: Sink, event: Event, error: Exception) -> None:
    message = f"Exception in layers event sink {sink!r}"
    if sys.unraisablehook is sys.__unraisablehook__:
        # The default hook takes only its own UnraisableHookArgs type.
        print(f"{message} for {event!r}:", file=sys.stderr)
        traceback.print_exception(error, file=sys.stderr)
        return
    sys.unraisablehook(
        types.SimpleNamespace(  # pyright: ignore[reportArgumentType]
            exc_type=type(error),
            exc_value=error,
            exc_traceback=error.__traceback__,
            err_msg=message,
            object=event,
        )
    )


set_logging(True)


# ------------------------------------------------------------------ the events
#
# The built-in layers' events, defined next to the layer that emits them and
# published here under this module's name. Those modules import Event from
# this one, so these imports come last (and layers/__init__.py imports this
# module before any layer's).

from ._breaker import (  # noqa: E402
    CircuitCallRejected,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    CircuitStateChanged,
    CircuitThresholdExceeded,
)
from ._chaos import FaultInjected  # noqa: E402
from ._coalesce import CoalesceAbandoned, CoalesceBypassed  # noqa: E402
from ._concurrency import ConcurrencyLimitRejected  # noqa: E402
from ._drain import DrainRejected, DrainStarted  # noqa: E402
from ._fallback import FallbackUsed  # noqa: E402
from ._hedge import HedgeRefused, HedgeSent, HedgeWon  # noqa: E402
from ._per_key import PerKeyRejected  # noqa: E402
from ._public import publish  # noqa: E402
from ._ratelimit import RateLimitRejected, RateLimitWaited  # noqa: E402
from ._retry import RetryAttemptFailed, RetryStopped  # noqa: E402
from ._shutdown import ShutdownCompleted, ShutdownStarted  # noqa: E402
from ._store import StoreFailed, StoreRecovered  # noqa: E402
from ._throttle import AdaptiveThrottleRejected  # noqa: E402

publish(__name__, __all__)  # every event class imported above: its public home
