"""Circuit breaker: stop calling a failing service, probe it, resume.

The breaker keeps its state in the :class:`CircuitBreaker` object, so one
breaker applied to several services guards them together (one breaker per
downstream host). Every transition happens between two ``await`` points of
the calls, so it is atomic with respect to every other call on the event
loop, on asyncio and trio alike; no lock is held, least of all across the
inner call.

How the state is kept (for readers of the code):

* ``_Core`` holds the state, the live *window* (the outcomes that decide
  whether to trip) and, while half-open, the *trial* (the probes' outcomes).
* A call remembers the window or trial it was admitted under. Its outcome is
  recorded only if that object is still the live one: the window is kept
  when the breaker opens (calls admitted before still record their late
  outcome, as in resilience4j) and replaced when it half-opens, and every
  half-open period has a trial of its own, so a late outcome never lands in
  a newer trial. ``_Core.generation`` counts these changes.
* Time-driven transitions (open to half-open, a half-open period that lasts
  too long) are made lazily by the next call or outcome; no task or timer
  is started.
* The success path of a closed breaker does the least it can: it reads the
  clock only if a time window or a slow-call threshold needs it, and records
  a success in O(1) without a method call in the common case. Each window
  kind has its own service function, chosen once in
  :meth:`CircuitBreaker.layer`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import (
    Any,
    ClassVar,
    Final,
    Literal,
    TypedDict,
    TypeVar,
    final,
)

import attrs

from . import events
from ._backend import base_time as _now
from ._backend import clock_source
from ._classify import Classification, ExceptionTypes, classification, exception_types
from ._config import (
    callable_or_none,
    fail,
    fail_value,
    finite_number,
    int_at_least,
    is_finite_number,
    name_value,
    positive_seconds,
)
from ._core import Service, mark_built
from ._errors import CircuitOpen, ConfigurationError
from ._failures import split_failure
from ._observable import HealthStatus, Observation
from .events import Event, Level

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerOptions",
    "CircuitBreakerStatistics",
    "CircuitCallRejected",
    "CircuitClosed",
    "CircuitHalfOpened",
    "CircuitOpened",
    "CircuitState",
    "CircuitStateChanged",
    "CircuitThresholdExceeded",
]

Req = TypeVar("Req")
Res = TypeVar("Res")


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


_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN
_HALF_OPEN: Final = CircuitState.HALF_OPEN
_DISABLED: Final = CircuitState.DISABLED
_FORCED_OPEN: Final = CircuitState.FORCED_OPEN
_METRICS_ONLY: Final = CircuitState.METRICS_ONLY

# Outcome codes, as bits, stored in the count window's ring.
_PRESENT: Final = 1
_FAILED: Final = 2
_SLOW: Final = 4
_SUCCESS: Final = _PRESENT

# Outcome kinds of an exception.
_KIND_FAILURE: Final = 0
_KIND_SUCCESS: Final = 1
_KIND_IGNORED: Final = 2


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
            ``"open_duration_elapsed"``, ``"probes_succeeded"``, or the
            manual call (``"force_open"``, ``"force_closed"``,
            ``"metrics_only"``, ``"reset"``).
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


# ---------------------------------------------------------------- validation


_rate = finite_number("a rate in (0, 1], e.g. 0.5", lambda v: 0 < v <= 1)
_count = int_at_least(1, "an integer >= 1")
_optional_count = int_at_least(1, "an integer >= 1", optional=True)
_optional_seconds = finite_number(
    "a finite number of seconds > 0", lambda v: v > 0, optional=True
)
_optional_callable = callable_or_none("None or a callable")
_growth = finite_number("a finite number >= 1 (1 means no growth)", lambda v: v >= 1)


_on = classification("counted")


def _window_type(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value not in ("count", "time"):
        fail(instance, attribute, value, "'count' or 'time'")


# ---------------------------------------------------------------- options


class CircuitBreakerOptions(TypedDict, total=False):
    """The keyword options of :class:`CircuitBreaker`, as a typed dict.

    :meth:`ServiceBuilder.circuit_breaker <layers.ServiceBuilder.circuit_breaker>`
    takes them (``**options``) to make a breaker.
    """

    name: str
    failure_rate_threshold: float
    window_type: Literal["count", "time"]
    window_size: float
    window_buckets: int
    min_calls: int | None
    slow_call_duration: float | None
    slow_call_rate_threshold: float
    consecutive_failures: int | None
    on: Classification
    ignore: ExceptionTypes
    on_result: Callable[[Any], bool] | None
    open_duration: float
    open_duration_growth: float
    max_open_duration: float | None
    healthy_duration: float | None
    probes: int
    max_half_open_duration: float | None


_STATE_HEALTH: Final[dict[CircuitState, HealthStatus]] = {
    CircuitState.CLOSED: HealthStatus.HEALTHY,
    CircuitState.OPEN: HealthStatus.UNHEALTHY,
    CircuitState.HALF_OPEN: HealthStatus.DEGRADED,
    CircuitState.DISABLED: HealthStatus.HEALTHY,
    CircuitState.FORCED_OPEN: HealthStatus.UNHEALTHY,
    CircuitState.METRICS_ONLY: HealthStatus.HEALTHY,
}


# ---------------------------------------------------------------- the layer


@final
@attrs.frozen(kw_only=True, eq=False)
class CircuitBreaker:
    """Stop calling a service that keeps failing; probe it; resume when it heals.

    **Closed** (the normal state), every call goes through and its outcome
    is recorded in a sliding *window*, either the last *window_size* calls
    (``window_type="count"``) or the last *window_size* seconds in
    *window_buckets* buckets (``window_type="time"``). Once the window holds
    at least *min_calls* outcomes, the breaker **opens** (trips) when the
    failure rate reaches *failure_rate_threshold* or the slow-call rate
    reaches *slow_call_rate_threshold*; with *consecutive_failures* set, it
    also opens after that many failures in a row.

    **Open**, every call is rejected at once with :class:`~layers.CircuitOpen`,
    whose ``retry_after`` is the time left until the breaker half-opens. After
    the open duration the next call half-opens it (no timer runs).

    **Half-open**, exactly *probes* trial calls (probes) go through and every
    other call is rejected (``retry_after=None``: the time the probes take
    is unknown). Once all the probes have finished, the breaker closes if
    their failure rate and slow-call rate are below the thresholds, else it
    opens again. A probe that is cancelled, or whose exception is ignored,
    frees its slot for another call, so the breaker never stays stuck
    half-open; *max_half_open_duration* bounds the whole trial.

    Each trip in a row opens the breaker for *open_duration* times
    *open_duration_growth* to the power of the earlier trips, at most
    *max_open_duration*; after *healthy_duration* seconds closed, the next
    trip starts from *open_duration* again.

    **What counts.** An exception matching *on* is a failure unless
    it matches *ignore*; an ignored call is not counted at all. Any other
    exception counts as a success (as in resilience4j: the service answered).
    A response for which *on_result* returns true is a failure. A call
    taking *slow_call_duration* seconds or more is also slow (successful or
    not). Cancellation (and any other :class:`BaseException` that is not an
    :class:`Exception`) is never counted. A :class:`~layers.Timeout` *inside*
    the breaker raises :class:`~layers.Elapsed`, a failure; a timeout
    outside it cancels the call, which does not count.

    The breaker object holds the state: applying one breaker to several
    services makes them share it. A breaker belongs to the event loop that
    calls it (it is not thread-safe, and needs no lock on one loop).

    Args:
        name: For events, errors and logs.
        failure_rate_threshold: Trip when failures / calls reaches this,
            in (0, 1].
        window_type: ``"count"`` (the last *window_size* calls) or
            ``"time"`` (the last *window_size* seconds).
        window_size: Calls (an integer >= 1) or seconds (> 0).
        window_buckets: For a time window, how many buckets it is kept in;
            outcomes leave the window one bucket at a time.
        min_calls: No rate is computed below this many outcomes in the
            window. Default: ``min(100, window_size)`` for a count window,
            100 for a time window. For a count window it may not exceed
            *window_size*.
        slow_call_duration: Calls taking at least this many seconds are
            slow; ``None`` (the default) turns slow-call tracking off and
            spares the success path its clock reads.
        slow_call_rate_threshold: Trip when slow calls / calls reaches this,
            in (0, 1].
        consecutive_failures: Also trip after this many failures in a row
            (with no success between; ignored calls do not break a run). In a
            time window, a run is forgotten once all its failures have left
            the window.
        on: Which exceptions are failures, as :class:`~layers.Retry`'s
            ``on``: an :class:`Exception` subclass, a tuple of them, or a
            predicate ``(exception) -> bool`` (which must not raise).
            Default: :class:`Exception` (all of them).
        ignore: :class:`Exception` subclasses that are not counted at all (the call
            neither fails nor succeeds), checked before *on*.
        on_result: A predicate ``(response) -> bool``, as
            :class:`~layers.Retry`'s ``on_result``; a response for which it
            returns true counts as a failure (the response is still returned).
        open_duration: Seconds the breaker stays open after its first trip.
        open_duration_growth: Factor (>= 1) by which each further trip in a
            row lengthens the open duration.
        max_open_duration: The cap of the growing open duration. Default:
            10 x *open_duration*. At least *open_duration*.
        healthy_duration: Seconds the breaker must stay closed for its open
            duration to go back to *open_duration*. Default: the max open
            duration.
        probes: How many trial calls (probes) a half-open breaker lets
            through.
        max_half_open_duration: If set, a half-open period lasting this long
            without a verdict opens the breaker again (its probes' late
            outcomes are not counted). Default: no limit.

    Raises:
        layers.ConfigurationError: For any invalid option; the message names
            the option, the value and what is allowed.

    Example:
        >>> import anyio, layers
        >>> breaker = layers.CircuitBreaker(
        ...     name="users-api", window_size=4, min_calls=4, open_duration=30
        ... )
        >>> async def users_api(request: int) -> str:
        ...     raise ConnectionError("down")
        >>> svc = breaker.layer(users_api)
        >>> async def main() -> None:
        ...     for _ in range(4):
        ...         try:
        ...             await svc(1)
        ...         except ConnectionError:
        ...             pass
        ...     try:
        ...         await svc(1)
        ...     except layers.CircuitOpen as error:
        ...         print(error, "- retry after", round(error.retry_after or 0), "s")
        >>> anyio.run(main)
        circuit breaker 'users-api' is open - retry after 30 s
        >>> breaker.state
        <CircuitState.OPEN: 'open'>
    """

    name: str = attrs.field(default="circuit_breaker", validator=name_value)
    failure_rate_threshold: float = attrs.field(default=0.5, validator=_rate)
    window_type: Literal["count", "time"] = attrs.field(
        default="count", validator=_window_type
    )
    window_size: float = attrs.field(default=100)
    window_buckets: int = attrs.field(default=10, validator=_count)
    min_calls: int | None = attrs.field(default=None, validator=_optional_count)
    slow_call_duration: float | None = attrs.field(
        default=None, validator=_optional_seconds
    )
    slow_call_rate_threshold: float = attrs.field(default=1.0, validator=_rate)
    consecutive_failures: int | None = attrs.field(
        default=None, validator=_optional_count
    )
    on: Classification = attrs.field(default=Exception, validator=_on)
    ignore: ExceptionTypes = attrs.field(default=(), validator=exception_types)
    on_result: Callable[[Any], bool] | None = attrs.field(
        default=None, validator=_optional_callable
    )
    open_duration: float = attrs.field(default=60.0, validator=positive_seconds)
    open_duration_growth: float = attrs.field(default=1.0, validator=_growth)
    max_open_duration: float | None = attrs.field(
        default=None, validator=_optional_seconds
    )
    healthy_duration: float | None = attrs.field(
        default=None, validator=_optional_seconds
    )
    probes: int = attrs.field(default=10, validator=_count)
    max_half_open_duration: float | None = attrs.field(
        default=None, validator=_optional_seconds
    )
    _core: _Core = attrs.field(init=False, repr=False)
    kind = "circuit_breaker"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def __attrs_post_init__(self) -> None:
        size = self.window_size
        if self.window_type == "count":
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                fail_value(
                    "CircuitBreaker",
                    "window_size",
                    size,
                    "an integer >= 1 (calls) for a count window",
                )
            if self.min_calls is not None and self.min_calls > size:
                raise ConfigurationError(
                    f"CircuitBreaker(min_calls={self.min_calls!r}): "
                    f"min_calls must be <= window_size ({size}) for a count "
                    f"window, which never holds more calls, got "
                    f"{self.min_calls!r}"
                )
        elif not is_finite_number(size) or size <= 0:
            fail_value(
                "CircuitBreaker",
                "window_size",
                size,
                "a finite number of seconds > 0 for a time window",
            )
        if (
            self.max_open_duration is not None
            and self.max_open_duration < self.open_duration
        ):
            raise ConfigurationError(
                f"CircuitBreaker(max_open_duration={self.max_open_duration!r}): "
                f"max_open_duration must be >= open_duration "
                f"({self.open_duration!r}), got {self.max_open_duration!r}"
            )
        object.__setattr__(self, "_core", _Core(self))

    # -- the layer --------------------------------------------------------------

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: calls go through this breaker (and share its state).

        The success path is chosen here, once: without a slow-call threshold
        a count window reads no clock and a time window reads it once per
        call; with one, a call reads it twice. An ``on_result``
        predicate adds one call of it per response.
        """
        core = self._core
        check = self.on_result
        if self.slow_call_duration is not None:
            if self.window_type == "time":
                build = _slow_time_service
            else:
                build = _slow_count_service
        elif self.window_type == "time":
            build = _time_service
        else:
            build = _count_service
        return mark_built(build(core, inner, check), self, inner)

    # -- looking at it ------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state, as recorded.

        An open breaker whose open duration has passed shows ``OPEN`` until
        the next call half-opens it.
        """
        return self._core.state

    def statistics(self) -> CircuitBreakerStatistics:
        """Return a frozen snapshot of the state and the window.

        Call it from the event loop's thread; outside a running event loop,
        the time-dependent fields (``time_in_state``, ``retry_after``, a time
        window's eviction of old buckets) are as of the last call.
        """
        return self._core.statistics()

    def observe(self) -> Observation:
        """The breaker for health checks and metrics (:class:`~layers.Observable`).

        Open or forced open is ``UNHEALTHY``, half-open ``DEGRADED``, any
        other state ``HEALTHY``; ``state`` is the :class:`CircuitState`,
        ``rejected`` the calls rejected so far, and the figures are the
        failure rate, the slow-call rate and the seconds until the next
        probe (``None`` when unknown).
        """
        stats = self._core.statistics()
        state = stats.state
        return Observation(
            status=_STATE_HEALTH[state],
            state=state,
            rejected=stats.rejected,
            figures={
                "failure_rate": stats.failure_rate,
                "slow_call_rate": stats.slow_call_rate,
                "retry_after": stats.retry_after,
            },
        )

    # -- manual control -------------------------------------------------------------

    def force_open(self) -> None:
        """Reject every call (state ``FORCED_OPEN``) until another manual call.

        Already forced open, it does nothing (no event).
        """
        self._core.manual(_FORCED_OPEN, "force_open")

    def force_closed(self) -> None:
        """Let every call through and record nothing (state ``DISABLED``).

        The breaker stays so until another manual call
        (:meth:`reset` resumes normal operation). Already disabled, it does
        nothing (no event).
        """
        self._core.manual(_DISABLED, "force_closed")

    def disable(self) -> None:
        """The same as :meth:`force_closed` (resilience4j's name for it)."""
        self._core.manual(_DISABLED, "force_closed")

    def metrics_only(self) -> None:
        """Record and report, never reject (state ``METRICS_ONLY``).

        A shadow mode to tune thresholds on real traffic: the window is kept
        as when closed, and a :class:`~layers.events.CircuitThresholdExceeded`
        event reports each time the breaker would have opened. It starts with an empty
        window; already metrics-only, it does nothing (the window is kept,
        no event): :meth:`reset` first to start afresh.
        """
        self._core.manual(_METRICS_ONLY, "metrics_only")

    def reset(self) -> None:
        """Go back to ``CLOSED`` with an empty window and no trips in a row.

        Leaves any state, manual ones included. Calls in flight from before
        do not count toward the new window. On a breaker that is already
        closed it still empties the window and forgets the trips, but that is
        not a transition: no event, and the time in state runs on.
        """
        self._core.manual(_CLOSED, "reset")


# ---------------------------------------------------------------- windows


class _CountWindow:
    """The last *size* outcomes in a ring of outcome codes."""

    __slots__ = (
        "calls",
        "failures",
        "pos",
        "ring",
        "size",
        "slow",
        "streak",
    )

    def __init__(self, size: int) -> None:
        self.ring = bytearray(size)  # 0: empty slot
        self.size = size
        self.pos = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self.streak = 0  # failures in a row

    def add(self, code: int, now: float) -> None:
        ring = self.ring
        i = self.pos
        old = ring[i]
        if old:
            self.calls -= 1
            if old & _FAILED:
                self.failures -= 1
            if old & _SLOW:
                self.slow -= 1
        ring[i] = code
        i += 1
        self.pos = 0 if i == self.size else i
        self.calls += 1
        if code & _FAILED:
            self.failures += 1
            self.streak += 1
        else:
            self.streak = 0
        if code & _SLOW:
            self.slow += 1

    def counts(self, now: float | None) -> tuple[int, int, int]:
        return self.calls, self.failures, self.slow


class _TimeWindow:
    """The outcomes of the last *buckets* x *width* seconds.

    The current bucket's counters are plain attributes (the success path
    adds one to ``cur_calls``); older buckets are in lists, with their sums
    in ``old_*``.
    """

    __slots__ = (
        "bucket_end",
        "buckets",
        "calls",
        "clean_until",
        "cur",
        "cur_calls",
        "cur_failures",
        "cur_slow",
        "failures",
        "minimum",
        "old_calls",
        "old_failures",
        "old_slow",
        "slow",
        "streak",
        "width",
    )

    def __init__(self, seconds: float, buckets: int, minimum: int) -> None:
        self.width = seconds / buckets
        self.buckets = buckets
        self.minimum = minimum
        self.calls = [0] * buckets
        self.failures = [0] * buckets
        self.slow = [0] * buckets
        self.cur = -1  # the current bucket's number (time // width); none yet
        self.bucket_end = -math.inf  # the first outcome rotates
        # Until when a success can be counted by adding one to cur_calls:
        # the current bucket's end while a success can change no verdict
        # (no failure run, and no failure or slow call in a window still
        # short of min_calls), else -inf.
        self.clean_until = -math.inf
        self.cur_calls = self.cur_failures = self.cur_slow = 0
        self.old_calls = self.old_failures = self.old_slow = 0
        self.streak = 0

    def _bucket(self, now: float) -> int:
        width = self.width
        k = math.floor(now / width)
        while (k + 1) * width <= now:  # float rounding at a boundary
            k += 1
        return k

    def rotate(self, now: float) -> None:
        """Make the bucket that holds *now* current, evicting what fell out."""
        k = self._bucket(now)
        cur = self.cur
        if cur >= 0 and k > cur:
            size = self.buckets
            slot = cur % size
            self.calls[slot] = self.cur_calls
            self.failures[slot] = self.cur_failures
            self.slow[slot] = self.cur_slow
            self.old_calls += self.cur_calls
            self.old_failures += self.cur_failures
            self.old_slow += self.cur_slow
            if k - cur >= size:
                self.calls = [0] * size
                self.failures = [0] * size
                self.slow = [0] * size
                self.old_calls = self.old_failures = self.old_slow = 0
            else:
                for j in range(cur + 1, k + 1):
                    slot = j % size
                    self.old_calls -= self.calls[slot]
                    self.old_failures -= self.failures[slot]
                    self.old_slow -= self.slow[slot]
                    self.calls[slot] = self.failures[slot] = self.slow[slot] = 0
            self.cur_calls = self.cur_failures = self.cur_slow = 0
        if k > cur:
            self.cur = k
            self.bucket_end = (k + 1) * self.width
            if self.old_failures + self.old_slow == 0:
                self.streak = 0  # its failures have all left the window
        # k < cur: the clock read before an outcome that was recorded first;
        # count it in the current bucket.

    def add(self, code: int, now: float) -> None:
        if now >= self.bucket_end:
            self.rotate(now)
        self.cur_calls += 1
        if code & _FAILED:
            self.cur_failures += 1
            self.streak += 1
        else:
            self.streak = 0
        if code & _SLOW:
            self.cur_slow += 1
        bad = self.old_failures + self.old_slow + self.cur_failures + self.cur_slow
        if not self.streak and (
            not bad or self.old_calls + self.cur_calls >= self.minimum
        ):
            self.clean_until = self.bucket_end
        else:
            self.clean_until = -math.inf

    def counts(self, now: float | None) -> tuple[int, int, int]:
        """(calls, failures, slow) in the window at *now*, without changing it."""
        calls = self.old_calls + self.cur_calls
        failures = self.old_failures + self.cur_failures
        slow = self.old_slow + self.cur_slow
        if now is None or now < self.bucket_end or self.cur < 0:
            return calls, failures, slow
        k = self._bucket(now)
        size = self.buckets
        if k - self.cur >= size:
            return 0, 0, 0
        # buckets cur+1-size .. k-size leave; the current one is not in the lists
        for j in range(self.cur + 1, k + 1):
            slot = j % size
            calls -= self.calls[slot]
            failures -= self.failures[slot]
            slow -= self.slow[slot]
        return calls, failures, slow


_Window = _CountWindow | _TimeWindow


class _Trial:
    """The probes of one half-open period."""

    __slots__ = ("failures", "recorded", "since", "slow", "taken")

    def __init__(self, since: float) -> None:
        self.since = since
        self.taken = 0  # slots held: probes in flight + probes recorded
        self.recorded = 0
        self.failures = 0
        self.slow = 0


# ---------------------------------------------------------------- the state


class _Core:
    """The mutable state of one breaker (see the module docs)."""

    __slots__ = (
        "breaker",
        "exceeded",
        "fast",
        "generation",
        "healthy_duration",
        "ignore",
        "max_half_open",
        "max_open",
        "minimum",
        "name",
        "on",
        "on_types",
        "open_until",
        "probes",
        "rejected",
        "since",
        "slow_after",
        "state",
        "trial",
        "trips",
        "window",
    )

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.name = breaker.name
        if breaker.min_calls is not None:
            self.minimum = breaker.min_calls
        elif breaker.window_type == "count":
            self.minimum = min(100, int(breaker.window_size))
        else:
            self.minimum = 100
        on = breaker.on
        if isinstance(on, type | tuple):
            self.on_types: ExceptionTypes | None = on
            self.on: Callable[[Exception], bool] | None = None
        else:
            self.on_types = None
            self.on = on
        ignore = breaker.ignore
        self.ignore: ExceptionTypes | None = ignore if ignore != () else None
        self.slow_after = (
            math.inf
            if breaker.slow_call_duration is None
            else breaker.slow_call_duration
        )
        self.max_open = (
            breaker.max_open_duration
            if breaker.max_open_duration is not None
            else 10 * breaker.open_duration
        )
        self.healthy_duration = (
            breaker.healthy_duration
            if breaker.healthy_duration is not None
            else self.max_open
        )
        self.max_half_open = (
            math.inf
            if breaker.max_half_open_duration is None
            else breaker.max_half_open_duration
        )
        self.probes = breaker.probes
        self.state = _CLOSED
        self.window: _Window = self.new_window()
        self.fast: _Window | None = self.window  # the window while closed
        self.trial: _Trial | None = None
        self.generation = 0
        self.since: float | None = None  # when it entered its state
        self.open_until = -math.inf
        self.trips = 0
        self.rejected = 0
        self.exceeded = False

    def new_window(self) -> _Window:
        breaker = self.breaker
        if breaker.window_type == "count":
            return _CountWindow(int(breaker.window_size))
        return _TimeWindow(breaker.window_size, breaker.window_buckets, self.minimum)

    # -- classification ------------------------------------------------------------

    def kind_of(self, error: Exception) -> int:
        """Failure, success (not a failure) or ignored, for an Exception."""
        ignore = self.ignore
        if ignore is not None and isinstance(error, ignore):
            return _KIND_IGNORED
        types = self.on_types
        if types is not None:
            return _KIND_FAILURE if isinstance(error, types) else _KIND_SUCCESS
        assert self.on is not None
        return _KIND_FAILURE if self.on(error) else _KIND_SUCCESS

    # -- recording in the closed (and metrics-only, and open) window ------------------

    def record(self, window: _Window, code: int, now: float) -> None:
        """Record an outcome of a call admitted under *window*, then evaluate."""
        if window is not self.window:
            return  # admitted before a half-open period or a reset: dropped
        window.add(code, now)
        self.evaluate(window, now)

    def rates(
        self, calls: int, failures: int, slow: int
    ) -> tuple[float | None, float | None]:
        """(failure rate, slow rate), or Nones below the minimum number of calls."""
        if calls < self.minimum:  # minimum >= 1: no division by zero
            return None, None
        return failures / calls, slow / calls

    def verdict(self, window: _Window) -> tuple[str | None, float | None, float | None]:
        """(reason to trip or None, failure rate, slow rate)."""
        failure_rate, slow_rate = self.rates(*window.counts(None))
        breaker = self.breaker
        reason: str | None = None
        if failure_rate is not None and slow_rate is not None:
            if failure_rate >= breaker.failure_rate_threshold:
                reason = "failure_rate"
            elif slow_rate >= breaker.slow_call_rate_threshold:
                reason = "slow_call_rate"
        limit = breaker.consecutive_failures
        if reason is None and limit is not None and window.streak >= limit:
            reason = "consecutive_failures"
        return reason, failure_rate, slow_rate

    def evaluate(self, window: _Window, now: float) -> None:
        """Trip (or, in metrics-only mode, report) if a trip condition holds."""
        state = self.state
        if window is not self.window or not (
            state is _CLOSED or state is _METRICS_ONLY
        ):
            return  # a late outcome: recorded, but it decides nothing
        reason, failure_rate, slow_rate = self.verdict(window)
        if state is _METRICS_ONLY:
            if reason is None:
                self.exceeded = False
            elif not self.exceeded:
                self.exceeded = True
                if events.STATE.sinks:
                    events.emit(
                        CircuitThresholdExceeded(
                            layer=self.name,
                            reason=reason,
                            failure_rate=failure_rate,
                            slow_call_rate=slow_rate,
                        )
                    )
        elif reason is not None:
            self.trip(now, now, reason, failure_rate, slow_rate)

    # -- transitions -----------------------------------------------------------------

    def _enter(self, state: CircuitState, at: float | None) -> CircuitState:
        previous = self.state
        self.state = state
        self.fast = self.window if state is _CLOSED else None
        self.since = at
        self.generation += 1
        return previous

    def trip(
        self,
        at: float,
        now: float,
        reason: str,
        failure_rate: float | None,
        slow_rate: float | None,
    ) -> None:
        """Open the breaker as of *at* (<= *now*)."""
        if self.state is _CLOSED:
            since = self.since
            if since is not None and at - since >= self.healthy_duration:
                self.trips = 0
        duration = self.open_duration(self.trips)
        self.trips += 1
        self.open_until = at + duration
        self.trial = None
        previous = self._enter(_OPEN, at)
        if events.STATE.sinks:
            events.emit(
                CircuitOpened(
                    layer=self.name,
                    from_state=previous.value,
                    to_state="open",
                    reason=reason,
                    open_duration=duration,
                    failure_rate=failure_rate,
                    slow_call_rate=slow_rate,
                )
            )

    def half_open(self, now: float) -> None:
        self.window = self.new_window()  # older calls' late outcomes are dropped
        self.trial = _Trial(now)
        previous = self._enter(_HALF_OPEN, now)
        if events.STATE.sinks:
            events.emit(
                CircuitHalfOpened(
                    layer=self.name,
                    from_state=previous.value,
                    to_state="half_open",
                    reason="open_duration_elapsed",
                    probes=self.probes,
                )
            )

    def close(self, now: float, reason: str) -> None:
        self.window = self.new_window()
        self.trial = None
        previous = self._enter(_CLOSED, now)
        if events.STATE.sinks:
            events.emit(
                CircuitClosed(
                    layer=self.name,
                    from_state=previous.value,
                    to_state="closed",
                    reason=reason,
                )
            )

    def catch_up(self, now: float) -> None:
        """Make the time-driven transitions that are due (open or half-open)."""
        state = self.state
        if state is _HALF_OPEN:
            trial = self.trial
            assert trial is not None
            expiry = trial.since + self.max_half_open
            if now >= expiry:
                self.trip(expiry, now, "half_open_timeout", None, None)
                state = _OPEN
        if state is _OPEN and now >= self.open_until:
            self.half_open(now)

    def manual(self, state: CircuitState, reason: str) -> None:
        """Enter *state* by hand; in that state already, it is no transition.

        A manual state set again changes nothing and emits nothing (as in
        resilience4j, a same-state call is not a transition): a second
        ``metrics_only()`` keeps its window. ``reset()`` of a closed breaker
        still empties the window and forgets the trips in a row, silently.
        """
        previous = self.state
        if state is previous and state is not _CLOSED:
            return
        self.window = self.new_window()
        self.trial = None
        self.exceeded = False
        if state is _CLOSED:
            self.trips = 0
            self.open_until = -math.inf
            if previous is _CLOSED:
                self.fast = self.window  # the success paths record here now
                return
        try:
            now: float | None = _now()
        except RuntimeError:  # no event loop: the time in state is unknown
            now = None
        self._enter(state, now)
        if events.STATE.sinks:
            event_type = CircuitClosed if state is _CLOSED else CircuitStateChanged
            events.emit(
                event_type(
                    layer=self.name,
                    from_state=previous.value,
                    to_state=state.value,
                    reason=reason,
                )
            )

    # -- half-open probes ----------------------------------------------------------

    def record_probe(self, trial: _Trial, code: int, now: float) -> None:
        """Count a probe's outcome (code 0: not counted, free the slot)."""
        if self.state is not _CLOSED:
            self.catch_up(now)
        if trial is not self.trial:
            return  # from an older half-open period: dropped
        if not code:
            trial.taken -= 1
            return
        trial.recorded += 1
        if code & _FAILED:
            trial.failures += 1
        if code & _SLOW:
            trial.slow += 1
        probes = self.probes
        if trial.recorded < probes:
            return
        breaker = self.breaker
        failure_rate = trial.failures / probes
        slow_rate = trial.slow / probes
        if failure_rate >= breaker.failure_rate_threshold:
            self.trip(now, now, "failure_rate", failure_rate, slow_rate)
        elif slow_rate >= breaker.slow_call_rate_threshold:
            self.trip(now, now, "slow_call_rate", failure_rate, slow_rate)
        else:
            self.close(now, "probes_succeeded")

    # -- rejection ---------------------------------------------------------------------

    def reject(self, now: float | None) -> CircuitOpen:
        self.rejected += 1
        state = self.state
        retry_after: float | None = None
        if state is _OPEN:
            assert now is not None
            retry_after = self.open_until - now
            message = f"circuit breaker {self.name!r} is open"
        elif state is _HALF_OPEN:
            message = (
                f"circuit breaker {self.name!r} is half-open and its "
                f"{self.probes} trial call(s) are in flight"
            )
        else:
            message = f"circuit breaker {self.name!r} is forced open"
        if events.STATE.sinks:
            events.emit(
                CircuitCallRejected(
                    layer=self.name, state=state.value, retry_after=retry_after
                )
            )
        return CircuitOpen(
            message, retry_after=retry_after, layer=self.name, reason=state.value
        )

    # -- statistics --------------------------------------------------------------------

    def statistics(self) -> CircuitBreakerStatistics:
        try:
            now: float | None = _now()
        except RuntimeError:
            now = None
        window = self.window
        calls, failures, slow = window.counts(now)
        failure_rate, slow_rate = self.rates(calls, failures, slow)
        trial = self.trial
        state = self.state
        since = self.since
        return CircuitBreakerStatistics(
            name=self.name,
            state=state,
            time_in_state=None if now is None or since is None else now - since,
            calls=calls,
            failed_calls=failures,
            slow_calls=slow,
            failure_rate=failure_rate,
            slow_call_rate=slow_rate,
            consecutive_failures=window.streak,
            retry_after=(
                max(0.0, self.open_until - now)
                if state is _OPEN and now is not None
                else None
            ),
            open_duration=self._next_duration(now),
            trips=self.trips,
            probes_in_flight=0 if trial is None else trial.taken - trial.recorded,
            probes_recorded=0 if trial is None else trial.recorded,
            rejected=self.rejected,
            generation=self.generation,
        )

    def open_duration(self, trips: int) -> float:
        """How long the breaker stays open after *trips* earlier trips (capped)."""
        breaker = self.breaker
        try:
            grown = breaker.open_duration * breaker.open_duration_growth**trips
        except OverflowError:  # a float growth past the largest float: the cap
            return self.max_open
        return min(self.max_open, grown)

    def _next_duration(self, now: float | None) -> float:
        """The open duration of the next trip."""
        trips = self.trips
        if (
            self.state is _CLOSED
            and now is not None
            and self.since is not None
            and now - self.since >= self.healthy_duration
        ):
            trips = 0
        return self.open_duration(trips)


# ---------------------------------------------------------------- the services


async def _call_other(core: _Core, inner: Service[Req, Res], request: Req) -> Res:
    """Every call that is not a plain closed-state call.

    Written for clarity rather than speed: the fast paths below handle the
    closed state's calls.
    """
    state = core.state
    if state is _DISABLED:
        return await inner(request)
    if state is _CLOSED or state is _METRICS_ONLY:
        return await _call_recorded(core, core.window, inner, request)
    if state is _FORCED_OPEN:
        raise core.reject(None)
    now = _now()
    core.catch_up(now)
    if core.state is _HALF_OPEN:
        trial = core.trial
        assert trial is not None
        if trial.taken < core.probes:
            trial.taken += 1  # the slot is held until the outcome or cancellation
            return await _call_probe(core, trial, inner, request, now)
    raise core.reject(now)


async def _call_recorded(
    core: _Core, window: _Window, inner: Service[Req, Res], request: Req
) -> Res:
    """A call whose outcome goes to *window* (closed or metrics-only)."""
    # the start only matters with a slow-call threshold (else slow_after is inf)
    start = _now() if core.slow_after < math.inf else 0.0
    try:
        response = await inner(request)
    except BaseException as error:
        _record_error(core, window, error, start)
        raise
    end = _now()
    code = _SUCCESS
    check = core.breaker.on_result
    if check is not None and check(response):
        code |= _FAILED
    if end >= start + core.slow_after:
        code |= _SLOW
    core.record(window, code, end)
    return response


async def _call_probe(
    core: _Core, trial: _Trial, inner: Service[Req, Res], request: Req, start: float
) -> Res:
    """A half-open trial call: it holds one slot until it is counted or freed."""
    code = 0  # not counted: frees the slot
    try:
        response = await inner(request)
    except BaseException as raised:
        error = split_failure(raised)[0]
        kind = _KIND_IGNORED if error is None else core.kind_of(error)
        if kind == _KIND_FAILURE:
            code = _FAILED | _PRESENT
        elif kind == _KIND_SUCCESS:
            code = _SUCCESS
        raise
    else:
        check = core.breaker.on_result
        # a predicate that raises leaves code 0: the slot is freed, uncounted
        failed = check is not None and check(response)
        code = _SUCCESS | _FAILED if failed else _SUCCESS
        return response
    finally:
        # also on cancellation (code 0, the slot is freed): never stuck half-open
        end = _now()
        if code and end >= start + core.slow_after:
            code |= _SLOW
        core.record_probe(trial, code, end)


def _record_error(
    core: _Core, window: _Window, raised: BaseException, start: float | None
) -> None:
    """Record what a closed-state call admitted under *window* raised.

    *start* is the call's start time when slow calls are tracked, else None.
    A cancellation is not an outcome; the errors in a group that also holds
    one (a child task that failed while the call was cancelled, on trio)
    are, as they are on asyncio, where the group holds only the errors.
    """
    error = split_failure(raised)[0]
    if error is None or window is not core.window:
        return  # a cancellation; or admitted before a half-open period or a reset
    kind = core.kind_of(error)
    if kind == _KIND_IGNORED:
        return
    code = _FAILED | _PRESENT if kind == _KIND_FAILURE else _SUCCESS
    now = _now()  # the time of a trip, if this outcome trips the breaker
    if start is not None and now >= start + core.slow_after:
        code |= _SLOW
    core.record(window, code, now)


# The services are closures rather than objects with __call__: a closure's
# variables are cheaper to reach than an object's attributes, and the success
# path is counted in nanoseconds (see benchmarks/README.md). ``core.fast`` is
# the window while the breaker is closed, else None: one load decides. Each
# window kind has two closures, chosen in CircuitBreaker.layer(): without a
# on_result predicate, and with one (*check*), which records a
# response it calls a failure as the general path does. Every time is the
# base time (layers._backend.base_time), which keeps its meaning across runs.


def _record_failed_response(
    core: _Core, window: _Window, now: float, slow: bool
) -> None:
    """Record a response that ``on_result`` calls a failure."""
    core.record(window, _FAILED | _PRESENT | _SLOW if slow else _FAILED | _PRESENT, now)


def _count_service(
    core: _Core, inner: Service[Req, Res], check: Callable[[Any], bool] | None
) -> Service[Req, Res]:
    """A count window, no slow-call threshold: no clock on the success path."""

    async def circuit_breaker(request: Req, /) -> Res:
        window: _CountWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, None)
            raise
        i = window.pos
        if window.ring[i] == _SUCCESS and not window.streak:
            # a success replaces a success: only the position moves
            i += 1
            window.pos = 0 if i == window.size else i
        else:
            core.record(window, _SUCCESS, _now())
        return response

    if check is None:
        return circuit_breaker

    async def checked_circuit_breaker(request: Req, /) -> Res:
        window: _CountWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, None)
            raise
        if check(response):
            _record_failed_response(core, window, _now(), False)
            return response
        i = window.pos
        if window.ring[i] == _SUCCESS and not window.streak:
            i += 1
            window.pos = 0 if i == window.size else i
        else:
            core.record(window, _SUCCESS, _now())
        return response

    return checked_circuit_breaker


def _time_service(
    core: _Core, inner: Service[Req, Res], check: Callable[[Any], bool] | None
) -> Service[Req, Res]:
    """A time window, no slow-call threshold: one clock read per call.

    A success read at ``now < window.clean_until`` adds one to
    ``window.cur_calls`` (it can change no verdict); otherwise it is
    recorded in full.
    """
    clock = _now

    async def circuit_breaker(request: Req, /) -> Res:
        window: _TimeWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, None)
            raise
        now = clock()
        if now < window.clean_until:
            window.cur_calls += 1
        else:
            core.record(window, _SUCCESS, now)
        return response

    if check is None:
        return circuit_breaker

    async def checked_circuit_breaker(request: Req, /) -> Res:
        window: _TimeWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, None)
            raise
        now = clock()
        if check(response):
            _record_failed_response(core, window, now, False)
        elif now < window.clean_until:
            window.cur_calls += 1
        else:
            core.record(window, _SUCCESS, now)
        return response

    return checked_circuit_breaker


def _slow_time_service(
    core: _Core, inner: Service[Req, Res], check: Callable[[Any], bool] | None
) -> Service[Req, Res]:
    """A time window and a slow-call threshold: two clock reads per call.

    As :func:`_time_service`, and a call that took ``slow_after`` or more
    (``end >= start + slow_after``) is recorded as slow. The clock source
    is found once per call: a coroutine never changes event loop.
    """
    slow_after = core.slow_after

    async def circuit_breaker(request: Req, /) -> Res:
        window: _TimeWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        read = clock_source()[1]
        start = read()
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, start)
            raise
        end = read()
        if end >= start + slow_after:
            core.record(window, _SUCCESS | _SLOW, end)
        elif end < window.clean_until:
            window.cur_calls += 1
        else:
            core.record(window, _SUCCESS, end)
        return response

    if check is None:
        return circuit_breaker

    async def checked_circuit_breaker(request: Req, /) -> Res:
        window: _TimeWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        read = clock_source()[1]
        start = read()
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, start)
            raise
        end = read()
        slow = end >= start + slow_after
        if check(response):
            _record_failed_response(core, window, end, slow)
        elif slow:
            core.record(window, _SUCCESS | _SLOW, end)
        elif end < window.clean_until:
            window.cur_calls += 1
        else:
            core.record(window, _SUCCESS, end)
        return response

    return checked_circuit_breaker


def _slow_count_service(
    core: _Core, inner: Service[Req, Res], check: Callable[[Any], bool] | None
) -> Service[Req, Res]:
    """A count window and a slow-call threshold: two clock reads per call.

    A slow call is recorded as slow. A success that replaces a success
    outside a failure run only moves the ring's position.
    """
    slow_after = core.slow_after

    async def circuit_breaker(request: Req, /) -> Res:
        window: _CountWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        read = clock_source()[1]
        start = read()
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, start)
            raise
        end = read()
        if end >= start + slow_after:
            core.record(window, _SUCCESS | _SLOW, end)
            return response
        i = window.pos
        if window.ring[i] == _SUCCESS and not window.streak:
            i += 1
            window.pos = 0 if i == window.size else i
        else:
            core.record(window, _SUCCESS, end)
        return response

    if check is None:
        return circuit_breaker

    async def checked_circuit_breaker(request: Req, /) -> Res:
        window: _CountWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        read = clock_source()[1]
        start = read()
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, start)
            raise
        end = read()
        slow = end >= start + slow_after
        if check(response):
            _record_failed_response(core, window, end, slow)
            return response
        if slow:
            core.record(window, _SUCCESS | _SLOW, end)
            return response
        i = window.pos
        if window.ring[i] == _SUCCESS and not window.streak:
            i += 1
            window.pos = 0 if i == window.size else i
        else:
            core.record(window, _SUCCESS, end)
        return response

    return checked_circuit_breaker
