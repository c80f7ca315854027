"""What a shared breaker and its store exchange: the rules, a batch, a view."""

from __future__ import annotations

from typing import Literal, final

import attrs

from .statistics import CircuitState


@final
@attrs.frozen(kw_only=True)
class BreakerRules:
    """A breaker's options as a shared store applies them, defaults resolved.

    The breaker makes it from its options and passes it with every call to
    its :class:`~layers.BreakerStore`, as a rate limit passes its interval:
    the store keeps no configuration, and every process of the fleet should
    use the same options.
    """

    window_type: Literal["count", "time"]
    window_size: float
    """Calls (an integer) or seconds."""
    window_buckets: int
    """A time window's buckets; a count window's chunks on the store."""
    min_calls: int
    failure_rate_threshold: float
    slow_call_rate_threshold: float
    consecutive_failures: int | None
    open_duration: float
    open_duration_growth: float
    max_open_duration: float
    healthy_duration: float
    probes: int
    max_half_open_duration: float | None


@final
@attrs.frozen(kw_only=True)
class BreakerBatch:
    """The outcomes one process collected in the closed (or metrics-only) state.

    Every field counts outcomes of calls admitted under *generation*, in the
    order they ended in this process. Failures in a row across batches are
    told by the last three fields.
    """

    generation: int
    """The fleet's generation when the calls were admitted."""
    calls: int
    """Outcomes (successes and failures; ignored and cancelled calls are not
    outcomes)."""
    failures: int
    slow: int
    leading_failures: int
    """Failures before the first success (all of them, if none succeeded)."""
    trailing_failures: int
    """Failures after the last success (all of them, if none succeeded)."""
    longest_run: int
    """The most failures in a row within the batch."""


@final
@attrs.frozen(kw_only=True)
class BreakerView:
    """The fleet's state of a shared breaker, as a store reports it.

    Every reply of a :class:`~layers.BreakerStore` is one, and so is every
    notice it publishes. Times are durations from the store's *now*, since
    the processes' clocks differ from the store's.
    """

    epoch: str
    """Identifies the stored state, which changes if the state is lost and
    made again (a process then adopts it, whatever its generation)."""
    generation: int
    """Counts the changes of state (and the resets of a closed breaker)."""
    state: CircuitState
    reason: str
    """Why the breaker entered its state (as in the breaker's events)."""
    open_for: float | None
    """Seconds until the open period ends (a probe may be taken at 0 or
    less), or None if not open."""
    open_duration: float | None
    """The length of the current open period, or None if not open."""
    opened_failure_rate: float | None
    """The failure rate that opened it, if computed (None if not open)."""
    opened_slow_call_rate: float | None
    """The slow-call rate that opened it, if computed (None if not open)."""
    trips: int
    """Trips in a row (the growth exponent of the open duration)."""
    calls: int
    """Outcomes in the fleet's window."""
    failures: int
    slow: int
    consecutive_failures: int
    """Failures in a row across the fleet."""
    probes_in_flight: int
    probes_recorded: int
    probe: bool = False
    """Whether the probe asked for was granted (in the reply to
    :meth:`~layers.BreakerStore.take_probe`)."""
    exceeded: str | None = None
    """The trip condition (``"failure_rate"``...) that a batch reported in
    the metrics-only state made hold, if it did not hold before (in the
    reply to :meth:`~layers.BreakerStore.report`)."""
