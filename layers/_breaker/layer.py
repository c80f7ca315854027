"""The circuit breaker layer: its options, their validation, the layer."""

# The modules of layers._breaker share its private names.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Literal, TypedDict, TypeVar, final

import attrs

from .._backend import base_time as _now
from .._classify import Classification, ExceptionTypes, classification, exception_types
from .._config import (
    callable_or_none,
    check_number,
    fail,
    fail_value,
    finite_number,
    int_at_least,
    is_finite_number,
    name_value,
    positive_seconds,
)
from .._core import Service, mark_built
from .._errors import ConfigurationError
from .._guard import GuardShorthand
from .._observable import HealthStatus, Observation
from .codes import _CLOSED, _DISABLED, _FORCED_OPEN, _METRICS_ONLY
from .core import _Core
from .fleet import _Fleet, _fleet_service, _slow_fleet_service
from .guard import _BreakerGuard
from .records import BreakerRules
from .services import (
    _count_service,
    _slow_count_service,
    _slow_time_service,
    _time_service,
)
from .statistics import CircuitBreakerStatistics, CircuitState
from .store import BreakerStore

Req = TypeVar("Req")
Res = TypeVar("Res")


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


_STORE_METHODS = (
    "read",
    "report",
    "take_probe",
    "report_probe",
    "set_state",
    "open_for",
)


def _store(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if (
        all(
            inspect.iscoroutinefunction(getattr(value, n, None)) for n in _STORE_METHODS
        )
        and callable(getattr(value, "subscribe", None))
        and callable(getattr(value, "start_soon", None))
        and isinstance(getattr(value, "name", None), str)
        and is_finite_number(getattr(value, "sync_interval", None))
    ):
        return
    fail(
        instance,
        attribute,
        value,
        "None or a BreakerStore such as layers.MemoryBreakerStore (async "
        "read, report, take_probe, report_probe, set_state and open_for methods, "
        "subscribe and start_soon methods, a name and a sync_interval)",
    )


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
    retry_after: Callable[[Any], float | None] | None
    open_duration: float
    open_duration_growth: float
    max_open_duration: float | None
    healthy_duration: float | None
    probes: int
    max_half_open_duration: float | None
    store: BreakerStore | None


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
class CircuitBreaker(GuardShorthand):
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

    **As a block.** ``async with breaker:`` (or ``async with
    breaker.guard():``) runs the block as one call of this breaker: see
    :meth:`guard`.

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
        retry_after: A function ``(failure) -> seconds | None``, as
            :class:`~layers.Retry`'s ``retry_after``: the downstream said
            when to come back. It is called with each counted failure (an
            exception the breaker counts as a failure, or a response that
            *on_result* calls one); a number opens the breaker at once for
            that many seconds (then it half-opens as usual), whatever the
            window says, or lengthens its open period; ``None`` changes
            nothing. :func:`layers.httpx.retry_after` reads ``Retry-After``.
            A return that is not ``None`` nor a finite number >= 0 raises
            :class:`~layers.CallbackError` (chained from the failure). It is
            not asked in the manual states (``metrics_only()`` included).
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
        store: ``None`` (the default): the state lives in this object. A
            :class:`~layers.BreakerStore` (such as
            :class:`~layers.MemoryBreakerStore`): one breaker for every
            process that uses the same store, see "Shared by a fleet"
            below.

    **Shared by a fleet.** With a *store*, every process's breaker (each
    made with the same options) is one breaker: the window holds the
    outcomes of the whole fleet, a trip is made once in the store and
    reaches every process through the store's notices (and a periodic
    re-read), exactly *probes* trial calls run across the fleet, and
    the manual states hold for every process. Each process keeps a view of
    the fleet's state and decides each call from it with no I/O while
    closed or open; outcomes are sent in batches by a background task that
    the store hosts (enter the store, or its connection, with ``async
    with``: the first call raises :class:`RuntimeError` otherwise), every
    bucket of a time window (every ``store.sync_interval`` for a count
    window), and at once after a failure when the fleet is half-way to a
    trip. Outcomes sent after the fleet changed state do not count (in
    memory, the window kept while open records them). When the store
    fails, the breaker decides with its own local logic, from the state
    it was in, emits :class:`~layers.events.StoreFailed`, and adopts the
    fleet's state again when the store answers (its local outcomes are
    not sent). ``statistics()`` then shows the fleet's window as last
    seen, and ``store_fallbacks``.

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
    retry_after: Callable[[Any], float | None] | None = attrs.field(
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
    store: BreakerStore | None = attrs.field(default=None, validator=_store)
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
        core = _Core(self)
        object.__setattr__(self, "_core", core)
        if self.store is not None:
            rules = BreakerRules(
                window_type=self.window_type,
                window_size=size,
                window_buckets=self.window_buckets,
                min_calls=core.minimum,
                failure_rate_threshold=self.failure_rate_threshold,
                slow_call_rate_threshold=self.slow_call_rate_threshold,
                consecutive_failures=self.consecutive_failures,
                open_duration=self.open_duration,
                open_duration_growth=self.open_duration_growth,
                max_open_duration=core.max_open,
                healthy_duration=core.healthy_duration,
                probes=self.probes,
                max_half_open_duration=self.max_half_open_duration,
            )
            core.fleet = _Fleet(core, self.store, rules)

    # -- the layer --------------------------------------------------------------

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: calls go through this breaker (and share its state).

        The success path is chosen here, once: without a slow-call threshold
        a count window reads no clock and a time window reads it once per
        call; with one, a call reads it twice. An ``on_result``
        predicate adds one call of it per response. With a *store*, a
        closed breaker's success adds one to the pending batch and reads
        no clock (unless slow calls are timed).
        """
        core = self._core
        check = self.on_result
        fleet = core.fleet
        if fleet is not None:
            shared = (
                _fleet_service
                if self.slow_call_duration is None
                else _slow_fleet_service
            )
            return mark_built(shared(fleet, inner, check), self, inner)
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

    def guard(self) -> AbstractAsyncContextManager[None]:
        """The block form: the block is one call (``async with breaker:`` too).

        Entering decides as for a call: an open (or forced-open) breaker,
        or a half-open one whose probes are all taken, raises
        :class:`~layers.CircuitOpen` and the block does not run; a
        half-open breaker's free slot makes the block a probe. Leaving
        records the block's outcome in the same state as the service
        form's calls: an exception is classified by *on* and *ignore*
        exactly as a call's (and given to *retry_after* if it is a
        failure), a clean exit is a success, a slow call is measured by
        the block's duration, and a cancellation is not an outcome (a
        probe's slot is freed). With a *store*, for the whole fleet (entering
        may then wait for the store, as a call does). The exception always
        propagates. *on_result* does not apply: a block has no response.

        Example:
            >>> import anyio, layers
            >>> breaker = layers.CircuitBreaker(window_size=2, min_calls=2)
            >>> async def main() -> None:
            ...     for _ in range(2):
            ...         try:
            ...             async with breaker:
            ...                 raise ConnectionError("down")
            ...         except ConnectionError:
            ...             pass
            ...     try:
            ...         async with breaker.guard():
            ...             print("never runs")
            ...     except layers.CircuitOpen as error:
            ...         print(error)
            >>> anyio.run(main)
            circuit breaker 'circuit_breaker' is open
        """
        return _BreakerGuard(self._core)

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
        figures: dict[str, float | None] = {
            "failure_rate": stats.failure_rate,
            "slow_call_rate": stats.slow_call_rate,
            "retry_after": stats.retry_after,
        }
        if self.store is not None:
            figures["store_fallbacks"] = stats.store_fallbacks
        return Observation(
            status=_STATE_HEALTH[state],
            state=state,
            rejected=stats.rejected,
            figures=figures,
        )

    # -- manual control -------------------------------------------------------------

    def _manual(self, state: CircuitState, reason: str) -> None:
        core = self._core
        fleet = core.fleet
        if fleet is not None:
            fleet.host_if_running()  # RuntimeError: no host for the store
        core.manual(state, reason)
        if fleet is not None:
            fleet.manual(state)  # for the whole fleet: sent at once

    def force_open(self) -> None:
        """Reject every call (state ``FORCED_OPEN``) until another manual call.

        Already forced open, it does nothing (no event). With a *store*, for
        the whole fleet (see "Shared by a fleet"; in an event loop, a store
        with no host raises :class:`RuntimeError`).
        """
        self._manual(_FORCED_OPEN, "force_open")

    def force_closed(self) -> None:
        """Let every call through and record nothing (state ``DISABLED``).

        The breaker stays so until another manual call
        (:meth:`reset` resumes normal operation). Already disabled, it does
        nothing (no event). With a *store*, for the whole fleet.
        """
        self._manual(_DISABLED, "force_closed")

    def disable(self) -> None:
        """The same as :meth:`force_closed` (resilience4j's name for it)."""
        self._manual(_DISABLED, "force_closed")

    def metrics_only(self) -> None:
        """Record and report, never reject (state ``METRICS_ONLY``).

        A shadow mode to tune thresholds on real traffic: the window is kept
        as when closed, and a :class:`~layers.events.CircuitThresholdExceeded`
        event reports each time the breaker would have opened. It starts with an empty
        window; already metrics-only, it does nothing (the window is kept,
        no event): :meth:`reset` first to start afresh. With a *store*, for
        the whole fleet: the process whose batch makes a threshold hold
        emits the event.
        """
        self._manual(_METRICS_ONLY, "metrics_only")

    def open_for(self, seconds: float) -> None:
        """Open the breaker now for *seconds*, then half-open as usual.

        Not a forced open: after *seconds* the next call half-opens it and
        the probes decide, as after a trip; calls meanwhile are rejected
        with :class:`~layers.CircuitOpen` whose ``retry_after`` is the time
        left. It leaves any state, the manual ones included; an open
        breaker is opened anew only if that ends its open period later.
        The window is kept (a manual state's is emptied) and the trips in
        a row do not change. Emits :class:`~layers.events.CircuitOpened`
        with ``reason="open_for"``. With a *store*, for the whole fleet
        (a new generation, open for *seconds* from the store's now).

        Call it in the event loop (the open period is on its clock).

        Raises:
            layers.ConfigurationError: *seconds* is not a finite number > 0.
            RuntimeError: Outside an event loop; or with a *store* that
                has no host.
        """
        check_number(
            "CircuitBreaker.open_for",
            "seconds",
            seconds,
            "a finite number of seconds > 0",
            lambda v: v > 0,
        )
        core = self._core
        now = _now()  # RuntimeError outside an event loop
        fleet = core.fleet
        if fleet is not None:
            fleet.host_if_running()  # RuntimeError: no host for the store
            fleet.open_for(float(seconds), "open_for", manual=True)
        else:
            core.open_for(float(seconds), now, "open_for")

    def reset(self) -> None:
        """Go back to ``CLOSED`` with an empty window and no trips in a row.

        Leaves any state, manual ones included. Calls in flight from before
        do not count toward the new window. On a breaker that is already
        closed it still empties the window and forgets the trips, but that is
        not a transition: no event, and the time in state runs on. With a
        *store*, for the whole fleet.
        """
        self._manual(_CLOSED, "reset")
