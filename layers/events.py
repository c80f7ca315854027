"""Typed events: what the layers report, and where the reports go.

Every layer reports what it does (a timeout expired, a retry is scheduled, a
call was rejected...) as a small frozen event object. Events go to *sinks*:
callables that take one event. By default one sink is installed, which logs
each event with structlog under the logger name ``layers``; turn it off with
:func:`set_logging` and add your own with :func:`add_sink` (a metrics sink,
say). Nothing is built or called on a layer's success path, and nothing at
all when no sink listens.

Events never carry request or response payloads.
"""

from __future__ import annotations

import sys
import traceback
import types
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal, Protocol

import attrs
import structlog

__all__ = [
    "STATE",
    "Event",
    "Level",
    "Sink",
    "TimeoutElapsed",
    "add_sink",
    "emit",
    "remove_sink",
    "set_error_messages",
    "set_logging",
]

Level = Literal["debug", "info", "warning", "error"]
"""The log levels an event can have (:attr:`layers.Event.level`)."""


@attrs.frozen(kw_only=True)
class Event:
    """Base class of every event.

    Attributes:
        layer: The ``name`` of the layer that emitted the event.
    """

    event: ClassVar[str] = "event"
    """The event's name, as logged (``"elapsed"``, ``"retry_scheduled"``...)."""

    level: ClassVar[Level] = "info"
    """The log level the default structlog sink uses for it."""

    kind: ClassVar[str] = "custom"
    """The kind of layer that emits it (``"timeout"``, ``"retry"``,
    ``"rate_limit"``, ``"concurrency_limit"``, ``"circuit_breaker"``; set it
    on your own events), logged as ``layer_kind``."""

    layer: str

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


class Sink(Protocol):
    """A callable that receives every event a layer emits (see :func:`add_sink`)."""

    def __call__(self, event: Event, /) -> None:
        """Handle one event; must not block."""
        ...


class _State:
    """The installed sinks, swapped whole so that emitting needs no lock."""

    sinks: tuple[Sink, ...] = ()
    error_messages: bool = False


STATE: Final = _State()
"""``STATE.sinks`` is falsy when nobody listens: layers test it before they
build an event."""


def _log_event(event: Event) -> None:
    logger = structlog.get_logger("layers")
    getattr(logger, event.level)(event.event, layer_kind=event.kind, **event.fields())


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
        raise TypeError(f"add_sink(sink={sink!r}): sink must be callable")
    STATE.sinks = (*STATE.sinks, sink)
    return lambda: remove_sink(sink)


def remove_sink(sink: Sink) -> None:
    """Stop sending events to *sink* (no error if it was not installed)."""
    STATE.sinks = tuple(s for s in STATE.sinks if s != sink)


def set_logging(enabled: bool) -> None:
    """Turn the default structlog sink (logger ``layers``) on or off.

    It is on when ``layers`` is imported. Its records carry the event name
    as the message and the event's fields (layer name, timeout...) as
    key-value pairs, at the event's :attr:`~Event.level`.
    """
    remove_sink(_log_event)
    if enabled:
        STATE.sinks = (_log_event, *STATE.sinks)


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
