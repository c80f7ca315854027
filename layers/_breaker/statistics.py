"""The breaker's states and its statistics snapshot."""

from __future__ import annotations

import enum
from typing import final

import attrs


class CircuitState(enum.StrEnum):
    """The states of a :class:`CircuitBreaker`.

    The first three are the automatic ones; the other three are set by hand
    (:meth:`~CircuitBreaker.force_open`, :meth:`~CircuitBreaker.force_closed`,
    :meth:`~CircuitBreaker.metrics_only`) and left only by another manual
    call (:meth:`~CircuitBreaker.reset` goes back to ``CLOSED``).
    """

    CLOSED = "closed"
    """Calls go through; outcomes are recorded; the breaker trips (opens)
    when a trip condition holds."""
    OPEN = "open"
    """Calls are rejected with :class:`~layers.CircuitOpen` until the open
    duration has passed; then the next call half-opens the breaker."""
    HALF_OPEN = "half_open"
    """A fixed number of trial calls (probes) go through; their outcomes close
    the breaker or open it again. Other calls are rejected meanwhile."""
    DISABLED = "disabled"
    """Forced closed; every call goes through and nothing is recorded."""
    FORCED_OPEN = "forced_open"
    """Every call is rejected (``retry_after`` is ``None``)."""
    METRICS_ONLY = "metrics_only"
    """Shadow mode, in which outcomes are recorded and a
    :class:`~layers.events.CircuitThresholdExceeded` event reports when the
    breaker *would* open, but no call is ever rejected."""


# ---------------------------------------------------------------- statistics


@final
@attrs.frozen(kw_only=True)
class CircuitBreakerStatistics:
    """A snapshot of a breaker, from :meth:`CircuitBreaker.statistics`."""

    name: str
    """The breaker's name."""
    state: CircuitState
    """The state as recorded (an open breaker whose open duration has passed
    still shows ``OPEN`` until the next call half-opens it)."""
    time_in_state: float | None
    """Seconds since the breaker entered this state, or ``None`` if unknown
    (the breaker has never been called, or no event loop is running)."""
    calls: int
    """Outcomes in the window (ignored and cancelled calls are not counted)."""
    failed_calls: int
    """Failures in the window."""
    slow_calls: int
    """Slow calls (successful or not) in the window."""
    failure_rate: float | None
    """``failed_calls / calls``, or ``None`` while ``calls`` is below
    ``min_calls`` (no rate is computed then, as in resilience4j)."""
    slow_call_rate: float | None
    """``slow_calls / calls``, or ``None`` likewise."""
    consecutive_failures: int
    """Failures since the last success (in the closed state)."""
    retry_after: float | None
    """Seconds until the next call half-opens the breaker (``None`` unless open)."""
    open_duration: float
    """The open duration of the next trip (it grows on repeated trips)."""
    trips: int
    """Trips in a row without a healthy period (the growth exponent)."""
    probes_in_flight: int
    """Probes running now (half-open only, else 0)."""
    probes_recorded: int
    """Probes that have finished and counted (half-open only, else 0)."""
    rejected: int
    """Calls rejected since the breaker was made."""
    generation: int
    """Counts state changes; calls admitted in an older generation never
    count toward a newer half-open trial."""
    store_fallbacks: int = 0
    """The calls this process's own breaker decided while its shared store
    failed, so far (``0`` without a store)."""
