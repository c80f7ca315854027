"""The breaker's state machine (see the :mod:`layers._breaker` docs)."""

# The modules of layers._breaker share its private names.
# pyright: reportPrivateUsage=false, reportUnusedClass=false

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import events
from .._backend import base_time as _now
from .._classify import ExceptionTypes
from .._errors import CallbackError, CircuitOpen, type_name
from .codes import (
    _CLOSED,
    _FAILED,
    _HALF_OPEN,
    _JOINED,
    _KIND_FAILURE,
    _KIND_IGNORED,
    _KIND_SUCCESS,
    _METRICS_ONLY,
    _OPEN,
    _SLOW,
)
from .events import (
    CircuitCallRejected,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    CircuitStateChanged,
    CircuitThresholdExceeded,
)
from .statistics import CircuitBreakerStatistics, CircuitState
from .windows import _CountWindow, _TimeWindow, _Trial, _Window

if TYPE_CHECKING:
    from .fleet import _Fleet
    from .layer import CircuitBreaker
    from .records import BreakerView

# ---------------------------------------------------------------- the state


class _Core:
    """The mutable state of one breaker (see the module docs)."""

    __slots__ = (
        "breaker",
        "exceeded",
        "fast",
        "fleet",
        "generation",
        "healthy_duration",
        "hint_of",
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
        self.hint_of: Callable[[Any], object] | None = breaker.retry_after
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
        self.fleet: _Fleet | None = None  # with a shared store (fleet.py)

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
        self._open(at, duration, reason, failure_rate, slow_rate)

    def _open(
        self,
        at: float,
        duration: float,
        reason: str,
        failure_rate: float | None,
        slow_rate: float | None,
    ) -> None:
        """Enter OPEN as of *at* for *duration* seconds, and say so."""
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

    def open_for(self, seconds: float, now: float, reason: str) -> bool:
        """Open now for *seconds*, then half-open as usual; whether it changed.

        *reason* is ``"retry_after"`` (a failure's hint: it never leaves a
        manual state) or ``"open_for"`` (the manual call: it leaves any
        state). An open breaker is opened anew only if that ends its open
        period later. The window is kept, as by a trip (a manual state's
        is emptied); the trips in a row do not change.
        """
        state = self.state
        regular = state is _CLOSED or state is _OPEN or state is _HALF_OPEN
        if not regular and reason == "retry_after":
            return False
        until = now + seconds
        if state is _OPEN and self.open_until >= until:
            return False
        if not regular:
            self.window = self.new_window()
            self.exceeded = False
        self._open(now, seconds, reason, None, None)
        return True

    def hinted(self, outcome: object, cause: BaseException | None) -> None:
        """A counted failure: a duration from *retry_after* opens the breaker.

        *outcome* is the exception or the response (*cause*: the exception,
        for the chain of a :class:`~layers.CallbackError`).
        """
        hint_of = self.hint_of
        if hint_of is None:
            return
        seconds = hint_of(outcome)
        if seconds is None:
            return
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            what = (
                type_name(outcome)
                if isinstance(outcome, BaseException)
                else f"a {type(outcome).__name__} response"
            )
            raise CallbackError(
                f"CircuitBreaker {self.name!r}: the open duration (retry_after=) "
                f"for {what} must be a finite number of seconds "
                f">= 0 or None, got {seconds!r}",
                layer=self.name,
                parameter="retry_after",
            ) from cause
        fleet = self.fleet
        if fleet is not None and fleet.mode == _JOINED:
            fleet.open_for(float(seconds), "retry_after")
        else:
            self.open_for(float(seconds), _now(), "retry_after")

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

    # -- a shared breaker's view (layers/_breaker/fleet.py) ---------------------------

    def adopt(self, view: BreakerView, open_until: float, now: float) -> None:
        """Take the fleet's state; a change of state emits its event here too.

        The local window and trial start afresh (they are used only if the
        store fails, by the local fallback).
        """
        previous = self.state
        state = view.state
        self.window = self.new_window()
        self.trial = None
        self.exceeded = False
        self.open_until = open_until
        self.trips = view.trips
        if state is previous:
            return
        self._enter(state, now)
        if not events.STATE.sinks:
            return
        fields = {
            "layer": self.name,
            "from_state": previous.value,
            "to_state": state.value,
            "reason": view.reason,
        }
        if state is _OPEN:
            event: CircuitStateChanged = CircuitOpened(
                **fields,
                open_duration=view.open_duration or 0.0,
                failure_rate=view.opened_failure_rate,
                slow_call_rate=view.opened_slow_call_rate,
            )
        elif state is _HALF_OPEN:
            event = CircuitHalfOpened(**fields, probes=self.probes)
        elif state is _CLOSED:
            event = CircuitClosed(**fields)
        else:
            event = CircuitStateChanged(**fields)
        events.emit(event)

    def fall_back(self, now: float) -> None:
        """The store failed: decide calls locally from the state now held."""
        self.window = self.new_window()
        self.fast = self.window if self.state is _CLOSED else None
        self.trial = _Trial(now) if self.state is _HALF_OPEN else None
        self.exceeded = False

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
            retry_after = max(0.0, self.open_until - now)
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
        streak = window.streak
        trial = self.trial
        in_flight = 0 if trial is None else trial.taken - trial.recorded
        recorded = 0 if trial is None else trial.recorded
        fallbacks = 0
        fleet = self.fleet
        if fleet is not None:
            fallbacks = fleet.health.fallbacks
            view = fleet.view
            if fleet.mode == _JOINED and view is not None:  # the fleet's figures
                calls, failures, slow = view.calls, view.failures, view.slow
                streak = view.consecutive_failures
                in_flight = view.probes_in_flight
                recorded = view.probes_recorded
        failure_rate, slow_rate = self.rates(calls, failures, slow)
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
            consecutive_failures=streak,
            retry_after=(
                max(0.0, self.open_until - now)
                if state is _OPEN and now is not None
                else None
            ),
            open_duration=self._next_duration(now),
            trips=self.trips,
            probes_in_flight=in_flight,
            probes_recorded=recorded,
            rejected=self.rejected,
            generation=self.generation,
            store_fallbacks=fallbacks,
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
