"""The shared breaker's "server": one function per atomic step, over one flat record.

This module is the reference for every shared breaker store. Each public
function here is one step that a store runs atomically on its server (one
Lua script on Redis), reading the server's clock once (*now*) and, when
the fleet's state changes, publishing the new view to every process. The
record is flat (numbers, short strings and short lists), so it maps to a
Redis hash and a few small lists; no step loops over more than
``window_buckets + 1`` chunks, ``window_buckets`` buckets or ``probes``
probe ids.

The rules are those of the in-memory breaker (layers/_breaker/core.py),
applied to the outcomes of the whole fleet:

* **Generations.** Every change of state adds one to ``generation`` (a
  ``reset()`` of a closed breaker too, silently: it empties the window).
  A batch of outcomes counts only if it was collected under the current
  generation and the breaker is closed or metrics-only; a probe's outcome
  counts only if its id is one of the current half-open period's probes
  (ids are dropped at every change of state). So an outcome of an older
  generation never counts.
* **The count window** holds the fleet's last ``window_size`` outcomes, in
  at most ``window_buckets + 1`` chunks: a batch joins the newest chunk
  while that chunk holds fewer than ``ceil(window_size / window_buckets)``
  calls, else starts a new one. When the window overflows, the oldest
  chunks leave; a chunk that must leave in part keeps its failures and slow
  calls in proportion (rounded half up).
* **The time window** has ``window_buckets`` buckets on the server's clock;
  a batch counts in the bucket of its arrival. A run of failures is
  forgotten when a new bucket starts and no failure or slow call is left
  in the window, as in memory.
* **Consecutive failures** run across the fleet in the order batches
  arrive: a batch without a success adds its failures to the run; a batch
  with one may trip on ``run + leading_failures`` or on its own longest
  run, and leaves ``trailing_failures`` as the run.
* **Open to half-open** happens when a process asks for a probe after
  ``open_until``; a half-open period longer than ``max_half_open_duration``
  opens it again when a process next asks for a probe or reports one.
* **Openings for a duration** (``open_for``: the manual call, or a
  failure's ``retry_after``) open the fleet at once, a new generation.
* **Probes** are ids: at most ``probes`` are taken or recorded in one
  half-open period, fleet-wide. A probe not reported within its lease is
  given back (its process may have died); its late outcome does not count.
"""

# The modules of layers._breaker share its private names.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import math
from typing import Final, Literal

import attrs

from .codes import _CLOSED, _DISABLED, _FORCED_OPEN, _HALF_OPEN, _METRICS_ONLY, _OPEN
from .records import BreakerBatch, BreakerRules, BreakerView
from .statistics import CircuitState

ProbeOutcome = Literal["success", "failure", "released"]

_MANUAL_REASONS: Final[dict[CircuitState, str]] = {
    _CLOSED: "reset",
    _FORCED_OPEN: "force_open",
    _DISABLED: "force_closed",
    _METRICS_ONLY: "metrics_only",
}


@attrs.define(eq=False)
class Record:
    """The fleet's state of one shared breaker (a Redis hash and lists later)."""

    epoch: str
    """Made when the record is made: a process that sees another epoch (the
    record was lost and made again) adopts it whatever its generation."""
    state: CircuitState = _CLOSED
    generation: int = 0
    since: float | None = None  # server time the state was entered
    reason: str = "initial"
    open_until: float = 0.0
    open_duration: float = 0.0
    trips: int = 0
    opened_failure_rate: float | None = None
    opened_slow_call_rate: float | None = None
    exceeded: bool = False  # metrics-only: a trip condition holds
    streak: int = 0  # failures in a row, fleet-wide
    # the count window: [calls, failures, slow] per chunk, oldest first
    chunks: list[int] = attrs.field(factory=lambda: list[int]())
    # the time window: the current bucket's number, and per-slot counts
    bucket: int = -1
    calls: list[int] = attrs.field(factory=lambda: list[int]())
    failures: list[int] = attrs.field(factory=lambda: list[int]())
    slow: list[int] = attrs.field(factory=lambda: list[int]())
    # the half-open trial
    trial_since: float = 0.0
    probes: list[str] = attrs.field(factory=lambda: list[str]())
    leases: list[float] = attrs.field(
        factory=lambda: list[float]()
    )  # each probe's lease end
    recorded: int = 0
    trial_failures: int = 0
    trial_slow: int = 0


# ------------------------------------------------------------------ the steps


def read(record: Record, rules: BreakerRules, now: float) -> BreakerView:
    """The fleet's state as recorded (no write: time-driven changes wait)."""
    return _view(record, rules, now)


def report(
    record: Record, rules: BreakerRules, batch: BreakerBatch, now: float
) -> tuple[BreakerView, BreakerView | None]:
    """Merge a batch of closed-state outcomes; trip if a rule says so.

    Returns ``(reply, notice)``: the notice, if not None, is published.
    """
    if (
        batch.generation != record.generation
        or not (record.state is _CLOSED or record.state is _METRICS_ONLY)
        or batch.calls <= 0
    ):
        return _view(record, rules, now), None  # an older generation: dropped
    if rules.window_type == "count":
        _add_chunk(record, rules, batch)
    else:
        _rotate(record, rules, now)
        slot = record.bucket % rules.window_buckets
        record.calls[slot] += batch.calls
        record.failures[slot] += batch.failures
        record.slow[slot] += batch.slow
    if batch.failures >= batch.calls:  # no success: the run goes on
        record.streak += batch.failures
        peak = record.streak
    else:
        peak = max(record.streak + batch.leading_failures, batch.longest_run)
        record.streak = batch.trailing_failures
    calls, failures, slow = _counts(record, rules, now)
    reason: str | None = None
    failure_rate = slow_rate = None
    if calls >= rules.min_calls:
        failure_rate = failures / calls
        slow_rate = slow / calls
        if failure_rate >= rules.failure_rate_threshold:
            reason = "failure_rate"
        elif slow_rate >= rules.slow_call_rate_threshold:
            reason = "slow_call_rate"
    limit = rules.consecutive_failures
    if reason is None and limit is not None and peak >= limit:
        reason = "consecutive_failures"
    if record.state is _METRICS_ONLY:
        exceeded = None
        if reason is None:
            record.exceeded = False
        elif not record.exceeded:
            record.exceeded = True
            exceeded = reason
        return _view(record, rules, now, exceeded=exceeded), None
    if reason is None:
        return _view(record, rules, now), None
    _trip(record, rules, now, reason, failure_rate, slow_rate)
    view = _view(record, rules, now)
    return view, view


def take_probe(
    record: Record, rules: BreakerRules, probe: str, lease: float, now: float
) -> tuple[BreakerView, BreakerView | None]:
    """Half-open the breaker if its open period has passed; take a probe if free.

    The reply's ``probe`` is true if *probe* (a new id) holds one of the
    current half-open period's ``probes`` slots, until its outcome is
    reported or *lease* seconds have passed.
    """
    changed = _catch_up(record, rules, now)
    granted = False
    if record.state is _HALF_OPEN:
        _reclaim(record, now)
        if len(record.probes) + record.recorded < rules.probes:
            record.probes.append(probe)
            record.leases.append(now + lease)
            granted = True
    view = _view(record, rules, now, probe=granted)
    return view, (_view(record, rules, now) if changed else None)


def report_probe(
    record: Record,
    rules: BreakerRules,
    probe: str,
    outcome: ProbeOutcome,
    slow: bool,
    now: float,
) -> tuple[BreakerView, BreakerView | None]:
    """Count a probe's outcome (``"released"``: give its slot back, uncounted).

    Once all ``probes`` are recorded, close the breaker or open it again.
    An id that is not one of the current period's probes is dropped.
    """
    changed = _catch_up(record, rules, now)
    if record.state is not _HALF_OPEN or probe not in record.probes:
        view = _view(record, rules, now)
        return view, (view if changed else None)
    i = record.probes.index(probe)
    del record.probes[i]
    del record.leases[i]
    if outcome == "released":
        view = _view(record, rules, now)
        return view, view  # a slot is free: processes may ask again
    record.recorded += 1
    if outcome == "failure":
        record.trial_failures += 1
    if slow:
        record.trial_slow += 1
    probes = rules.probes
    if record.recorded < probes:
        view = _view(record, rules, now)
        return view, (view if changed else None)
    failure_rate = record.trial_failures / probes
    slow_rate = record.trial_slow / probes
    if failure_rate >= rules.failure_rate_threshold:
        _trip(record, rules, now, "failure_rate", failure_rate, slow_rate)
    elif slow_rate >= rules.slow_call_rate_threshold:
        _trip(record, rules, now, "slow_call_rate", failure_rate, slow_rate)
    else:
        _clear_window(record)
        _clear_trial(record)
        _enter(record, _CLOSED, now, "probes_succeeded")
    view = _view(record, rules, now)
    return view, view


def set_state(
    record: Record, rules: BreakerRules, state: CircuitState, now: float
) -> tuple[BreakerView, BreakerView | None]:
    """A manual state for the whole fleet (``CLOSED``: ``reset()``).

    A manual state set again changes nothing. A reset empties the window
    and forgets the trips; from another state it is a transition, and of a
    closed breaker it is a new generation in the same state.
    """
    previous = record.state
    if state is previous and state is not _CLOSED:
        return _view(record, rules, now), None
    _clear_window(record)
    _clear_trial(record)
    record.exceeded = False
    reason = _MANUAL_REASONS[state]
    if state is _CLOSED:
        record.trips = 0
        record.open_until = 0.0
        if previous is _CLOSED:  # no transition: the time in state runs on
            record.generation += 1
            record.reason = reason
            view = _view(record, rules, now)
            return view, view
    _enter(record, state, now, reason)
    view = _view(record, rules, now)
    return view, view


def open_for(
    record: Record, rules: BreakerRules, seconds: float, reason: str, now: float
) -> tuple[BreakerView, BreakerView | None]:
    """Open the fleet now for *seconds* (then half-open as usual), published.

    *reason* ``"retry_after"`` (a failure carried the duration) changes
    nothing in a manual state; ``"open_for"`` (the manual call) leaves any
    state. An open breaker is opened anew only if that ends its open period
    later. The window is kept (a manual state's is emptied), the trial is
    dropped, the trips in a row do not change.
    """
    state = record.state
    regular = state is _CLOSED or state is _OPEN or state is _HALF_OPEN
    until = now + seconds
    if (not regular and reason == "retry_after") or (
        state is _OPEN and record.open_until >= until
    ):
        return _view(record, rules, now), None
    if not regular:
        _clear_window(record)
        record.exceeded = False
    record.open_until = until
    record.open_duration = seconds
    record.opened_failure_rate = None
    record.opened_slow_call_rate = None
    _clear_trial(record)
    _enter(record, _OPEN, now, reason)
    view = _view(record, rules, now)
    return view, view


# ------------------------------------------------------------- transitions


def _enter(record: Record, state: CircuitState, at: float, reason: str) -> None:
    record.state = state
    record.since = at
    record.generation += 1
    record.reason = reason


def _trip(
    record: Record,
    rules: BreakerRules,
    at: float,
    reason: str,
    failure_rate: float | None,
    slow_rate: float | None,
) -> None:
    """Open as of *at*; the open duration grows with the trips in a row."""
    if (
        record.state is _CLOSED
        and record.since is not None
        and at - record.since >= rules.healthy_duration
    ):
        record.trips = 0
    duration = open_duration(rules, record.trips)
    record.trips += 1
    record.open_until = at + duration
    record.open_duration = duration
    record.opened_failure_rate = failure_rate
    record.opened_slow_call_rate = slow_rate
    _clear_trial(record)  # the window is kept, as in memory
    _enter(record, _OPEN, at, reason)


def open_duration(rules: BreakerRules, trips: int) -> float:
    """The open duration after *trips* earlier trips in a row (capped)."""
    try:
        grown = rules.open_duration * rules.open_duration_growth**trips
    except OverflowError:
        return rules.max_open_duration
    return min(rules.max_open_duration, grown)


def _catch_up(record: Record, rules: BreakerRules, now: float) -> bool:
    """Make the time-driven transitions that are due; whether any was made."""
    changed = False
    limit = rules.max_half_open_duration
    if record.state is _HALF_OPEN and limit is not None:
        expiry = record.trial_since + limit
        if now >= expiry:
            _trip(record, rules, expiry, "half_open_timeout", None, None)
            changed = True
    if record.state is _OPEN and now >= record.open_until:
        _clear_window(record)
        _clear_trial(record)
        record.trial_since = now
        _enter(record, _HALF_OPEN, now, "open_duration_elapsed")
        changed = True
    return changed


def _reclaim(record: Record, now: float) -> None:
    """Give back the probes whose lease has ended."""
    i = 0
    while i < len(record.probes):
        if record.leases[i] <= now:
            del record.probes[i]
            del record.leases[i]
        else:
            i += 1


def _clear_trial(record: Record) -> None:
    record.probes = []
    record.leases = []
    record.recorded = record.trial_failures = record.trial_slow = 0


def _clear_window(record: Record) -> None:
    record.chunks = []
    record.bucket = -1
    record.calls = []
    record.failures = []
    record.slow = []
    record.streak = 0


# ------------------------------------------------------------------ windows


def _add_chunk(record: Record, rules: BreakerRules, batch: BreakerBatch) -> None:
    """Add a batch to the count window; evict the oldest beyond window_size."""
    chunks = record.chunks
    size = int(rules.window_size)
    chunk = max(1, -(-size // rules.window_buckets))  # ceil
    if chunks and chunks[-3] < chunk:
        chunks[-3] += batch.calls
        chunks[-2] += batch.failures
        chunks[-1] += batch.slow
    else:
        chunks += [batch.calls, batch.failures, batch.slow]
    excess = sum(chunks[0::3]) - size
    while excess > 0:
        calls = chunks[0]
        if calls <= excess:
            del chunks[0:3]
            excess -= calls
        else:
            keep = calls - excess
            chunks[0] = keep
            chunks[1] = _share(chunks[1], keep, calls)
            chunks[2] = _share(chunks[2], keep, calls)
            excess = 0


def _share(part: int, keep: int, whole: int) -> int:
    """``part * keep / whole``, rounded half up."""
    return (2 * part * keep + whole) // (2 * whole)


def bucket_of(rules: BreakerRules, now: float) -> int:
    """The number of the time-window bucket that holds *now*."""
    width = rules.window_size / rules.window_buckets
    k = math.floor(now / width)
    while (k + 1) * width <= now:  # float rounding at a boundary
        k += 1
    return k


def _rotate(record: Record, rules: BreakerRules, now: float) -> None:
    """Make the bucket of *now* current, emptying the buckets it passes."""
    size = rules.window_buckets
    k = bucket_of(rules, now)
    if record.bucket < 0 or len(record.calls) != size:
        record.calls = [0] * size
        record.failures = [0] * size
        record.slow = [0] * size
        record.bucket = k
        return
    cur = record.bucket
    if k <= cur:
        return  # the same bucket (or a clock that went back: count it here)
    for n in range(cur + 1, min(k, cur + size) + 1):
        slot = n % size
        record.calls[slot] = record.failures[slot] = record.slow[slot] = 0
    record.bucket = k
    if sum(record.failures) + sum(record.slow) == 0:
        record.streak = 0  # its failures have all left the window


def _counts(record: Record, rules: BreakerRules, now: float) -> tuple[int, int, int]:
    """(calls, failures, slow) in the window at *now*."""
    if rules.window_type == "count":
        chunks = record.chunks
        return sum(chunks[0::3]), sum(chunks[1::3]), sum(chunks[2::3])
    size = rules.window_buckets
    cur = record.bucket
    if cur < 0 or len(record.calls) != size:
        return 0, 0, 0
    oldest = bucket_of(rules, now) - size  # buckets up to this one have left
    calls = failures = slow = 0
    for n in range(cur - size + 1, cur + 1):
        if n > oldest:
            slot = n % size
            calls += record.calls[slot]
            failures += record.failures[slot]
            slow += record.slow[slot]
    return calls, failures, slow


def _view(
    record: Record,
    rules: BreakerRules,
    now: float,
    *,
    probe: bool = False,
    exceeded: str | None = None,
) -> BreakerView:
    calls, failures, slow = _counts(record, rules, now)
    is_open = record.state is _OPEN
    return BreakerView(
        epoch=record.epoch,
        generation=record.generation,
        state=record.state,
        reason=record.reason,
        open_for=record.open_until - now if is_open else None,
        open_duration=record.open_duration if is_open else None,
        opened_failure_rate=record.opened_failure_rate if is_open else None,
        opened_slow_call_rate=record.opened_slow_call_rate if is_open else None,
        trips=record.trips,
        calls=calls,
        failures=failures,
        slow=slow,
        consecutive_failures=record.streak,
        probes_in_flight=len(record.probes),
        probes_recorded=record.recorded,
        probe=probe,
        exceeded=exceeded,
    )
