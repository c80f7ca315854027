"""The events a circuit breaker emits (published in :mod:`layers.events`)."""

from __future__ import annotations

from typing import ClassVar

import attrs

from ..events import Event, Level

# ---------------------------------------------------------------- events


@attrs.frozen(kw_only=True)
class CircuitStateChanged(Event):
    """A :class:`~layers.CircuitBreaker` changed state.

    Transitions to ``open``, ``half_open`` and ``closed`` are reported by the
    subclasses :class:`CircuitOpened`, :class:`CircuitHalfOpened` and
    :class:`CircuitClosed` (with their own log levels); the manual states
    (``forced_open``, ``disabled``, ``metrics_only``) by this class.

    Attributes:
        from_state: The state left (a :class:`~layers.CircuitState` value).
        to_state: The state entered.
        reason: Why: ``"failure_rate"``, ``"slow_call_rate"``,
            ``"consecutive_failures"``, ``"half_open_timeout"``,
            ``"open_duration_elapsed"``, ``"probes_succeeded"``,
            ``"retry_after"`` (a failure carried the duration: the
            breaker's *retry_after* option), or the manual call
            (``"force_open"``, ``"force_closed"``, ``"metrics_only"``,
            ``"reset"``, ``"open_for"``).
    """

    event: ClassVar[str] = "circuit_state_changed"
    kind: ClassVar[str] = "circuit_breaker"
    level: ClassVar[Level] = "info"

    from_state: str
    to_state: str
    reason: str


@attrs.frozen(kw_only=True)
class CircuitOpened(CircuitStateChanged):
    """The breaker tripped: calls are rejected for *open_duration* seconds.

    Also emitted when a duration opens it (``reason="retry_after"`` or
    ``"open_for"``, with no rates), including one that lengthens the open
    period of an open breaker (``from_state`` is then ``"open"``).

    Attributes:
        open_duration: How long it stays open before it lets probes through.
        failure_rate: The failure rate that tripped it (of the window, or of
            the probes when it re-opens from half-open), if computed.
        slow_call_rate: The slow-call rate likewise, if computed.
    """

    event: ClassVar[str] = "circuit_opened"
    level: ClassVar[Level] = "warning"

    open_duration: float
    failure_rate: float | None
    slow_call_rate: float | None


@attrs.frozen(kw_only=True)
class CircuitHalfOpened(CircuitStateChanged):
    """The open duration has passed: the next calls are probes.

    Attributes:
        probes: How many trial calls will be let through.
    """

    event: ClassVar[str] = "circuit_half_opened"
    level: ClassVar[Level] = "warning"

    probes: int


@attrs.frozen(kw_only=True)
class CircuitClosed(CircuitStateChanged):
    """The breaker closed: the probes succeeded, or it was reset by hand."""

    event: ClassVar[str] = "circuit_closed"
    level: ClassVar[Level] = "info"


@attrs.frozen(kw_only=True)
class CircuitCallRejected(Event):
    """A call was refused with :class:`~layers.CircuitOpen`.

    Emitted for each rejected call (at ``debug`` level for the default log
    sink: an open breaker can reject thousands of calls a second).

    Attributes:
        state: The breaker's state (``open``, ``half_open``, ``forced_open``).
        retry_after: The ``retry_after`` of the error raised.
    """

    event: ClassVar[str] = "circuit_call_rejected"
    kind: ClassVar[str] = "circuit_breaker"
    level: ClassVar[Level] = "debug"

    state: str
    retry_after: float | None


@attrs.frozen(kw_only=True)
class CircuitThresholdExceeded(Event):
    """In metrics-only mode, the breaker would have opened now.

    Emitted when a trip condition starts to hold (not again until it has
    stopped holding), so that thresholds can be tuned on real traffic.

    Attributes:
        reason: ``"failure_rate"``, ``"slow_call_rate"`` or
            ``"consecutive_failures"``.
        failure_rate: The window's failure rate, if computed.
        slow_call_rate: The window's slow-call rate, if computed.
    """

    event: ClassVar[str] = "circuit_threshold_exceeded"
    kind: ClassVar[str] = "circuit_breaker"
    level: ClassVar[Level] = "warning"

    reason: str
    failure_rate: float | None
    slow_call_rate: float | None
