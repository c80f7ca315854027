"""AdaptiveConcurrencyLimit: a ConcurrencyLimit whose limit follows the downstream.

The layer is a :class:`~layers.ConcurrencyLimit` (its queue, permits,
refusals and events) around a measuring closure: each call that got a
permit is timed on the anyio clock, and the sample (round-trip time, calls
in flight when it started, whether it was dropped) goes to an algorithm,
which returns the new limit. The layer calls
:meth:`ConcurrencyLimit.set_limit` only when the integer limit changes.

The algorithms follow Netflix's concurrency-limits (AIMD, Gradient2,
Vegas, and WindowedLimit as :class:`Windowed`, which feeds one of them a
sample per window of calls), with its defaults. They are small mutable
estimators; the layer works on a copy of the one it is given
(``attrs.evolve``), so one algorithm object may configure many layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, ClassVar, Protocol, TypeVar, final

import attrs

from ._backend import current_time
from ._classify import Classification, classification, matcher
from ._concurrency import ConcurrencyLimit
from ._config import (
    fail,
    finite_number,
    int_at_least,
    is_finite_number,
    name_value,
    optional_positive_seconds,
    positive_seconds,
    random_draw,
    seed_value,
)
from ._core import Service, mark_built
from ._deadline import current_deadline
from ._errors import ConfigurationError, Rejected
from ._failures import is_cancellation
from ._guard import GuardShorthand
from ._observable import Observation

__all__ = [
    "AIMD",
    "AdaptiveConcurrencyLimit",
    "AdaptiveConcurrencyLimitStatistics",
    "Gradient2",
    "LimitAlgorithm",
    "Vegas",
    "Windowed",
]

Req = TypeVar("Req")
Res = TypeVar("Res")

_limit = int_at_least(1, "an int >= 1")
_window = int_at_least(1, "an int >= 1")


def _queue(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if callable(value):
        return
    if not is_finite_number(value) or value < 0:
        fail(
            instance,
            attribute,
            value,
            "a finite number >= 0 or a function of the limit",
        )


_backoff = finite_number("a finite number >= 0.5 and < 1", lambda v: 0.5 <= v < 1)
_smoothing = finite_number("a finite number > 0 and <= 1", lambda v: 0 < v <= 1)
_tolerance = finite_number("a finite number >= 1", lambda v: v >= 1)
_drop_on = classification("counted as drops")
_queue_bound = int_at_least(
    0, "None (no bound) or an int >= 0 (0: no queue, load shedding)", optional=True
)


DEFAULT_DROPS: tuple[type[Exception], ...] = (Rejected, TimeoutError)
"""What :class:`AdaptiveConcurrencyLimit` counts as a drop unless told."""


class LimitAlgorithm(Protocol):
    """What :class:`AdaptiveConcurrencyLimit` asks of an algorithm.

    The interface :class:`AIMD`, :class:`Gradient2` and :class:`Vegas`
    share, for annotations and for a simulation that drives one directly.
    """

    @property
    def limit(self) -> int:
        """The limit now (starts at the algorithm's initial limit)."""
        ...

    def update(
        self, rtt: float, in_flight: int, dropped: bool, start: float = 0.0
    ) -> int:
        """Take one sample and return the new limit.

        Args:
            rtt: The call's round-trip time, in seconds.
            in_flight: The calls in flight when it started, itself included.
            dropped: Whether the call failed with an overload error.
            start: When the call started, in seconds on the clock that
                times it (the layer passes the anyio clock's time); only
                :class:`Windowed` uses it, to close its windows.
        """
        ...


def _check_bounds(owner: object, initial: int, low: int, high: int) -> None:
    if not low <= initial <= high:
        name = type(owner).__name__
        raise ConfigurationError(
            f"{name}(initial_limit={initial}, min_limit={low}, max_limit={high}): "
            "need min_limit <= initial_limit <= max_limit"
        )


@final
@attrs.define(kw_only=True, on_setattr=attrs.setters.NO_OP)
class AIMD:
    """Additive increase, multiplicative decrease (Netflix's ``AIMDLimit``).

    On a drop, or a call slower than *timeout*, the limit is multiplied by
    *backoff_ratio* (rounded down); on any other sample it grows by one,
    but only when the calls in flight were at least half the limit (no
    growth while the application, not the downstream, limits the calls).
    Always within ``[min_limit, max_limit]``.

    Args:
        initial_limit: The first limit (20).
        min_limit: The lowest limit (20; set it lower for a small downstream).
        max_limit: The highest limit (200).
        backoff_ratio: The factor of a decrease, in [0.5, 1) (0.9), as
            Netflix's builder allows.
        timeout: A call slower than this many seconds counts as a drop (5).

    Example:
        >>> import layers
        >>> aimd = layers.AIMD(initial_limit=10, min_limit=1)
        >>> aimd.update(rtt=0.1, in_flight=5, dropped=False)
        11
        >>> aimd.update(rtt=0.1, in_flight=5, dropped=True)
        9
    """

    initial_limit: int = attrs.field(default=20, validator=_limit)
    min_limit: int = attrs.field(default=20, validator=_limit)
    max_limit: int = attrs.field(default=200, validator=_limit)
    backoff_ratio: float = attrs.field(default=0.9, validator=_backoff)
    timeout: float = attrs.field(default=5.0, validator=positive_seconds)
    limit: int = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        _check_bounds(self, self.initial_limit, self.min_limit, self.max_limit)
        self.limit = self.initial_limit

    def update(
        self, rtt: float, in_flight: int, dropped: bool, start: float = 0.0
    ) -> int:
        """Take one sample; return the new limit (see the class)."""
        limit = self.limit
        if dropped or rtt > self.timeout:
            limit = int(limit * self.backoff_ratio)
        elif in_flight * 2 >= limit:
            limit += 1
        self.limit = min(self.max_limit, max(self.min_limit, limit))
        return self.limit


@final
@attrs.define(kw_only=True, on_setattr=attrs.setters.NO_OP)
class Gradient2:
    """Netflix's ``Gradient2Limit``: the limit follows short RTT against long RTT.

    Each sample's RTT is the short RTT; the long RTT is its exponential
    average over *long_window* samples (a plain average over the first
    10), cut by 5 % at each sample while it is more than twice the short
    one (load has gone: recover fast). While fewer than half the limit's
    calls are in flight nothing changes (the application limits the
    calls). Otherwise, with ``gradient = clamp(tolerance * long / short,
    0.5, 1)``::

        new = limit * gradient + queue_size
        limit = (1 - smoothing) * limit + smoothing * new

    within ``[min_limit, max_limit]``. RTT rising above ``tolerance`` times
    the long average lowers the limit; steady RTT lets it grow by about
    ``smoothing * queue_size`` per sample up to *max_limit*. Drops are not
    used (as Netflix's).

    **Give it windows, not calls**: ``Windowed(Gradient2())``, the
    layer's default and Netflix's own pairing (``WindowedLimit``). A
    sample is then a window's average RTT (about a second), so the long
    RTT's 600 samples span minutes and stay near the unloaded RTT through
    an overload. Fed a sample per call, the long average follows the
    latency up within seconds under load, the gradient stays at 1, and
    the limit climbs until calls time out.

    Args:
        initial_limit: The first limit (20).
        min_limit: The lowest limit (20).
        max_limit: The highest limit (200).
        smoothing: The weight of a new estimate, in (0, 1] (0.2).
        queue_size: The calls allowed to queue at the downstream: a number
            (4), or a function of the limit (an int) that returns one, as
            Netflix's ``queueSizeFunction`` (say ``lambda limit:
            max(4, int(limit ** 0.5))``).
        long_window: The long RTT's window, in samples (600).
        tolerance: How much slower than the long RTT still counts as
            steady, >= 1 (1.5).
    """

    initial_limit: int = attrs.field(default=20, validator=_limit)
    min_limit: int = attrs.field(default=20, validator=_limit)
    max_limit: int = attrs.field(default=200, validator=_limit)
    smoothing: float = attrs.field(default=0.2, validator=_smoothing)
    queue_size: float | Callable[[int], float] = attrs.field(
        default=4, validator=_queue
    )
    long_window: int = attrs.field(default=600, validator=_window)
    tolerance: float = attrs.field(default=1.5, validator=_tolerance)
    estimate: float = attrs.field(init=False, repr=False)
    long_rtt: float = attrs.field(init=False, default=0.0, repr=False)
    samples: int = attrs.field(init=False, default=0, repr=False)
    _factor: float = attrs.field(init=False, default=0.0, repr=False)
    _warm_up_sum: float = attrs.field(init=False, default=0.0, repr=False)

    def __attrs_post_init__(self) -> None:
        _check_bounds(self, self.initial_limit, self.min_limit, self.max_limit)
        self.estimate = float(self.initial_limit)
        self._factor = 2 / (self.long_window + 1)

    @property
    def limit(self) -> int:
        """The limit now (the estimate, rounded down)."""
        return int(self.estimate)

    def update(
        self, rtt: float, in_flight: int, dropped: bool, start: float = 0.0
    ) -> int:
        """Take one sample; return the new limit (see the class)."""
        short = rtt if rtt > 1e-9 else 1e-9
        samples = self.samples = self.samples + 1
        if samples <= 10:  # warm-up: the plain average of the samples so far
            self._warm_up_sum += short
            long = self._warm_up_sum / samples
        else:
            long = self.long_rtt + (short - self.long_rtt) * self._factor
        # far above the short RTT: load has gone, recover fast
        self.long_rtt = long * 0.95 if long > 2 * short else long
        estimate = self.estimate
        if in_flight < estimate / 2:
            return int(estimate)
        gradient = max(0.5, min(1.0, self.tolerance * long / short))
        queue = self.queue_size
        allowance = queue(int(estimate)) if callable(queue) else queue
        new = estimate * gradient + allowance
        new = estimate * (1 - self.smoothing) + new * self.smoothing
        self.estimate = max(float(self.min_limit), min(float(self.max_limit), new))
        return int(self.estimate)


def _log10(limit: float) -> int:
    # Netflix's Log10RootFunction: the integer log10, at least 1.
    return max(1, int(math.log10(max(limit, 1.0))))


@final
@attrs.define(kw_only=True, on_setattr=attrs.setters.NO_OP)
class Vegas:
    """Netflix's ``VegasLimit`` (after TCP Vegas): grow while no queue builds.

    The lowest RTT seen is the no-load RTT (re-measured, as a probe, every
    ``probe_multiplier * limit`` samples, when the sample's RTT becomes it).
    A sample's queue estimate is ``ceil(limit * (1 - rtt_noload / rtt))``;
    with ``L = max(1, int(log10(limit)))``: a drop lowers the limit by
    ``L``; with fewer than half the limit's calls in flight nothing changes;
    a queue ``<= L`` raises it by ``beta = 6 L``, one ``< alpha = 3 L``
    raises it by ``L``, one ``> beta`` lowers it by ``L``; in between it
    stays. Then ``limit = (1 - smoothing) * limit + smoothing * new``,
    within ``[min_limit, max_limit]``. As Netflix's, a probe comes after
    a random 0.5 to 1 times ``probe_multiplier * limit`` samples (drawn
    anew at each probe, so that many limits do not probe at once); give
    *seed* to make the draws repeatable.

    Args:
        initial_limit: The first limit (20).
        min_limit: The lowest limit (1).
        max_limit: The highest limit (1000).
        smoothing: The weight of a new estimate, in (0, 1] (1.0).
        probe_multiplier: Samples between probes, per unit of limit (30).
        seed: A seed for the probes' random draws, or ``None`` (a new
            :class:`random.Random`).
    """

    initial_limit: int = attrs.field(default=20, validator=_limit)
    min_limit: int = attrs.field(default=1, validator=_limit)
    max_limit: int = attrs.field(default=1000, validator=_limit)
    smoothing: float = attrs.field(default=1.0, validator=_smoothing)
    probe_multiplier: int = attrs.field(default=30, validator=_window)
    seed: int | None = attrs.field(default=None, validator=seed_value)
    estimate: float = attrs.field(init=False, repr=False)
    rtt_noload: float = attrs.field(init=False, default=0.0, repr=False)
    probe_count: int = attrs.field(init=False, default=0, repr=False)
    _draw: Callable[[], float] = attrs.field(init=False, repr=False)
    _jitter: float = attrs.field(init=False, default=1.0, repr=False)

    def __attrs_post_init__(self) -> None:
        _check_bounds(self, self.initial_limit, self.min_limit, self.max_limit)
        self.estimate = float(self.initial_limit)
        self._draw = random_draw(type(self).__name__, self.seed, None)
        self._jitter = 0.5 + 0.5 * self._draw()

    @property
    def limit(self) -> int:
        """The limit now (the estimate, rounded down)."""
        return int(self.estimate)

    def update(
        self, rtt: float, in_flight: int, dropped: bool, start: float = 0.0
    ) -> int:
        """Take one sample; return the new limit (see the class)."""
        estimate = self.estimate
        self.probe_count += 1
        if self.probe_count >= self._jitter * self.probe_multiplier * estimate:
            self.probe_count = 0
            self._jitter = 0.5 + 0.5 * self._draw()
            self.rtt_noload = rtt
            return int(estimate)
        if self.rtt_noload <= 0 or rtt < self.rtt_noload:
            self.rtt_noload = rtt
            return int(estimate)
        step = _log10(estimate)
        if dropped:
            new = estimate - step
        elif in_flight * 2 < estimate:
            return int(estimate)
        else:
            queue = math.ceil(estimate * (1 - self.rtt_noload / rtt))
            if queue <= step:
                new = estimate + 6 * step
            elif queue < 3 * step:
                new = estimate + step
            elif queue > 6 * step:
                new = estimate - step
            else:
                return int(estimate)
        new = max(float(self.min_limit), min(float(self.max_limit), new))
        self.estimate = (1 - self.smoothing) * estimate + self.smoothing * new
        return int(self.estimate)


def _measured(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, AIMD | Gradient2 | Vegas):
        raise ConfigurationError(
            f"{type(instance).__name__}({attribute.name}={value!r}): "
            f"{attribute.name} must be layers.AIMD(), layers.Gradient2() or "
            "layers.Vegas()"
        )


_window_time = finite_number("a finite number of seconds >= 0.1", lambda v: v >= 0.1)
_window_samples = int_at_least(10, "an int >= 10")
_min_rtt = finite_number("a finite number of seconds >= 0", lambda v: v >= 0)


@final
@attrs.define(on_setattr=attrs.setters.NO_OP)
class Windowed:
    """Netflix's ``WindowedLimit``: one sample per window of calls to *algorithm*.

    The calls' samples are gathered in a window; when a call ends after
    the window's end, the window closes and, if it holds at least
    *min_samples* samples, *algorithm* gets one sample for it: the
    **average** RTT of its calls, the **most** calls in flight any of
    them saw, and whether any was dropped. A window with fewer samples is
    discarded. The next window lasts twice the lowest RTT of the one
    that closed, within ``[min_time, max_time]`` (1 s by default: a
    window a second). Calls faster than *min_rtt* are ignored (a cache
    hit says nothing of the downstream).

    This is how :class:`Gradient2` is meant to be fed (the layer's
    default is ``Windowed(Gradient2())``): an average over many calls is
    steady where single calls are noisy, and the long RTT's window counts
    windows, so it spans minutes. :class:`AIMD` and :class:`Vegas` work
    on every call (Netflix's default) or windowed.

    Args:
        algorithm: :class:`AIMD`, :class:`Gradient2` or :class:`Vegas`;
            it is updated in place (the layer works on a copy of both).
        min_time: The shortest window, seconds, >= 0.1 (1).
        max_time: The longest window, seconds, >= min_time (1).
        min_samples: The fewest samples that make a window, >= 10 (10).
        min_rtt: Calls faster than this many seconds are ignored (0.0001).

    Example:
        >>> import layers
        >>> windowed = layers.Windowed(layers.AIMD(initial_limit=10, min_limit=1))
        >>> for n in range(40):  # a call every 0.05 s, 0.1 s each, 8 in flight
        ...     limit = windowed.update(0.1, 8, dropped=False, start=n * 0.05)
        >>> limit  # the first window (one call) is discarded; the next is a step
        11
    """

    algorithm: AIMD | Gradient2 | Vegas = attrs.field(validator=_measured)
    min_time: float = attrs.field(default=1.0, kw_only=True, validator=_window_time)
    max_time: float = attrs.field(default=1.0, kw_only=True, validator=_window_time)
    min_samples: int = attrs.field(default=10, kw_only=True, validator=_window_samples)
    min_rtt: float = attrs.field(default=1e-4, kw_only=True, validator=_min_rtt)
    _next: float = attrs.field(init=False, default=-math.inf, repr=False)
    _count: int = attrs.field(init=False, default=0, repr=False)
    _total: float = attrs.field(init=False, default=0.0, repr=False)
    _lowest: float = attrs.field(init=False, default=math.inf, repr=False)
    _peak: int = attrs.field(init=False, default=0, repr=False)
    _dropped: bool = attrs.field(init=False, default=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.max_time < self.min_time:
            raise ConfigurationError(
                f"Windowed(min_time={self.min_time!r}, max_time={self.max_time!r}): "
                "need min_time <= max_time"
            )

    @property
    def limit(self) -> int:
        """The limit now (*algorithm*'s)."""
        return self.algorithm.limit

    def update(
        self, rtt: float, in_flight: int, dropped: bool, start: float = 0.0
    ) -> int:
        """Add one call's sample to the window; return the limit (see the class)."""
        if rtt < self.min_rtt:
            return self.algorithm.limit
        self._count += 1
        self._total += rtt
        self._lowest = min(self._lowest, rtt)
        self._peak = max(self._peak, in_flight)
        self._dropped = self._dropped or dropped
        end = start + rtt
        if end <= self._next:
            return self.algorithm.limit
        count, total, peak, drop = self._count, self._total, self._peak, self._dropped
        self._next = end + min(max(2 * self._lowest, self.min_time), self.max_time)
        self._count, self._total, self._lowest = 0, 0.0, math.inf
        self._peak, self._dropped = 0, False
        if count < self.min_samples:
            return self.algorithm.limit
        return self.algorithm.update(total / count, peak, drop, start)


def _fresh(
    algorithm: AIMD | Gradient2 | Vegas | Windowed,
) -> AIMD | Gradient2 | Vegas | Windowed:
    """A copy of *algorithm* in its initial state, for one layer."""
    if isinstance(algorithm, Windowed):
        return attrs.evolve(algorithm, algorithm=attrs.evolve(algorithm.algorithm))
    return attrs.evolve(algorithm)


def _algorithm(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if not isinstance(value, AIMD | Gradient2 | Vegas | Windowed):
        raise ConfigurationError(
            f"{type(instance).__name__}({attribute.name}={value!r}): "
            f"{attribute.name} must be layers.Windowed(...), layers.AIMD(), "
            "layers.Gradient2() or layers.Vegas()"
        )


def _default_algorithm() -> Windowed:
    return Windowed(Gradient2())


@final
@attrs.frozen(kw_only=True)
class AdaptiveConcurrencyLimitStatistics:
    """A snapshot of an :class:`AdaptiveConcurrencyLimit`.

    Attributes:
        max_in_flight: The limit now.
        in_flight: Calls holding a permit now.
        waiting: Calls waiting in the queue now.
        rejected: Calls refused with :class:`~layers.Overloaded`, so far.
        samples: Calls measured (a response or a drop), so far.
        drops: Of those, the drops (``on=``), so far.
    """

    max_in_flight: int
    in_flight: int
    waiting: int
    rejected: int
    samples: int
    drops: int


def _cut_at_deadline(error: BaseException) -> bool:
    """Whether *error* is a cancellation by a deadline that has passed."""
    if not is_cancellation(error):
        return False
    deadline = current_deadline()
    return deadline is not None and current_time() >= deadline


@final
class _Meter:
    """Times the calls inside the limit and feeds the algorithm their samples.

    One for the layer object: its service form and its block form
    (:meth:`AdaptiveConcurrencyLimit.guard`) both go through :meth:`begin`
    and :meth:`end`.
    """

    __slots__ = ("drop", "drops", "estimator", "in_flight", "limit", "samples")

    def __init__(
        self,
        estimator: AIMD | Gradient2 | Vegas | Windowed,
        limit: ConcurrencyLimit,
        on: Classification,
    ) -> None:
        self.estimator = estimator
        self.limit = limit
        self.drop = matcher(on)
        self.in_flight = 0
        self.samples = 0
        self.drops = 0

    def begin(self) -> tuple[float, int]:
        """A call got its permit: its start time and the calls in flight."""
        self.in_flight += 1
        return current_time(), self.in_flight

    def end(self, start: float, in_flight: int, error: BaseException | None) -> None:
        """The call begun at *start* ended (with *error*): record its sample.

        A success is a sample; an error that *on* matches a dropped one, and
        so is a cancellation at or past the deadline of a
        :class:`~layers.Timeout` outside (the caller gave up on a slow
        call); any other error, and any other cancellation, none.
        """
        self.in_flight -= 1
        if error is None:
            dropped = False
        elif (isinstance(error, Exception) and self.drop(error)) or _cut_at_deadline(
            error
        ):
            dropped = True
            self.drops += 1
        else:
            return
        self.samples += 1
        new = self.estimator.update(current_time() - start, in_flight, dropped, start)
        limit = self.limit
        if new != limit.max_in_flight:
            limit.set_limit(new)


@final
class _AdaptiveGuard:
    """``async with limit.guard():`` a permit held and timed for the block."""

    __slots__ = ("_in_flight", "_meter", "_permit", "_start")

    def __init__(self, layer: AdaptiveConcurrencyLimit) -> None:
        self._meter = layer._meter  # pyright: ignore[reportPrivateUsage]
        self._permit = layer.concurrency_limit.guard()
        self._start = 0.0
        self._in_flight = 0

    async def __aenter__(self) -> None:
        await self._permit.__aenter__()
        self._start, self._in_flight = self._meter.begin()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._meter.end(self._start, self._in_flight, exc)
        finally:
            await self._permit.__aexit__(exc_type, exc, tb)


@final
@attrs.frozen(eq=False)
class AdaptiveConcurrencyLimit(GuardShorthand):
    """A :class:`~layers.ConcurrencyLimit` whose limit an algorithm moves.

    Calls beyond the limit wait in its queue or are refused with
    :class:`~layers.Overloaded` (*max_waiting*, *max_wait*), exactly as in
    :class:`~layers.ConcurrencyLimit`; ``max_waiting=0`` sheds load (a
    server behind :class:`~layers.asgi.LayersMiddleware` answers 503).
    Each call that got a permit is timed on the anyio clock (virtual time
    works) from the start of the inner call to its end, and gives the
    algorithm a sample: its round-trip time, the calls in flight when it
    started (itself included), and whether it was **dropped**: it raised
    an error that *on* matches (by default :class:`~layers.Rejected`, the
    downstream refusing, and :class:`TimeoutError`, which includes
    :class:`~layers.Elapsed`). A call that a :class:`~layers.Timeout`
    outside the layer cancels at its deadline is a drop too (the caller
    gave up on it, as Netflix's server counts a cancelled call). Any other
    error gives no sample (its RTT says nothing of the downstream's load);
    neither does any other cancellation, waiting or inside (the permit is
    given back). When the integer limit
    changes, the layer calls :meth:`ConcurrencyLimit.set_limit`: the
    waiting calls are admitted at once when it rises, and calls in flight
    are never cut when it falls; each change is a
    :class:`~layers.events.LimitChanged` event (kind
    ``"concurrency_limit"``, parameter ``"max_in_flight"``).

    The limit is in :meth:`statistics` and :meth:`observe` (the OTel gauge
    ``layers.adaptive_concurrency_limit.max_in_flight``). One layer object
    is one limit, shared by every service it wraps.

    Args:
        algorithm: :class:`AIMD`, :class:`Gradient2` or :class:`Vegas`,
            fed every call's sample, or one of them in :class:`Windowed`,
            fed a sample per window (the default:
            ``Windowed(Gradient2())``, Netflix's pairing); the layer works
            on a fresh copy of it (the same parameters, the initial limit).
        max_waiting: As :class:`~layers.ConcurrencyLimit`'s.
        max_wait: As :class:`~layers.ConcurrencyLimit`'s.
        on: What counts as a drop: exception classes or a predicate
            (default ``(layers.Rejected, TimeoutError)``).
        name: For events and errors (default ``"adaptive_concurrency_limit"``).

    Raises:
        layers.ConfigurationError: For any invalid value, naming it.

    Example:
        >>> import layers
        >>> limit = layers.AdaptiveConcurrencyLimit(
        ...     layers.AIMD(initial_limit=4, min_limit=1), max_waiting=0
        ... )
        >>> limit.statistics().max_in_flight
        4
    """

    algorithm: AIMD | Gradient2 | Vegas | Windowed = attrs.field(
        factory=_default_algorithm, validator=_algorithm
    )
    max_waiting: int | None = attrs.field(
        default=None, kw_only=True, validator=_queue_bound
    )
    max_wait: float | None = attrs.field(
        default=None, kw_only=True, validator=optional_positive_seconds
    )
    on: Classification = attrs.field(
        default=DEFAULT_DROPS, kw_only=True, validator=_drop_on
    )
    name: str = attrs.field(
        default="adaptive_concurrency_limit", kw_only=True, validator=name_value
    )
    _estimator: AIMD | Gradient2 | Vegas | Windowed = attrs.field(
        init=False, repr=False
    )
    _limit: ConcurrencyLimit = attrs.field(init=False, repr=False)
    _meter: _Meter = attrs.field(init=False, repr=False)
    kind: ClassVar[str] = "adaptive_concurrency_limit"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def __attrs_post_init__(self) -> None:
        estimator = _fresh(self.algorithm)
        object.__setattr__(self, "_estimator", estimator)
        limit = ConcurrencyLimit(
            estimator.limit,
            max_waiting=self.max_waiting,
            max_wait=self.max_wait,
            name=self.name,
        )
        object.__setattr__(self, "_limit", limit)
        object.__setattr__(self, "_meter", _Meter(estimator, limit, self.on))

    @property
    def concurrency_limit(self) -> ConcurrencyLimit:
        """The :class:`~layers.ConcurrencyLimit` this layer moves (queue, permits)."""
        return self._limit

    def statistics(self) -> AdaptiveConcurrencyLimitStatistics:
        """A snapshot (see :class:`AdaptiveConcurrencyLimitStatistics`)."""
        inner = self._limit.statistics()
        counts = self._meter
        return AdaptiveConcurrencyLimitStatistics(
            max_in_flight=inner.max_in_flight,
            in_flight=inner.in_flight,
            waiting=inner.waiting,
            rejected=inner.rejected,
            samples=counts.samples,
            drops=counts.drops,
        )

    def observe(self) -> Observation:
        """For health checks and metrics: the limit's (figure ``max_in_flight``)."""
        return self._limit.observe()

    def guard(self) -> AbstractAsyncContextManager[None]:
        """The block form: a permit held for the block, and the block timed.

        ``async with limit.guard():`` (or ``async with limit:``) waits in
        the same queue as the service form's calls and is refused the same
        way (:class:`~layers.Overloaded`); the block is a call: its duration
        is the sample's RTT, an exception that *on* matches makes it a
        drop, any other exception gives no sample, and a clean exit is a
        success. Cancelled while it waits, it holds nothing; cancelled
        inside, it gives its permit back and no sample, unless a
        :class:`~layers.Timeout`'s deadline cancelled it (a drop).

        Example:
            >>> import anyio, layers
            >>> limit = layers.AdaptiveConcurrencyLimit(
            ...     layers.AIMD(initial_limit=4, min_limit=1)
            ... )
            >>> async def main() -> None:
            ...     async with limit:
            ...         pass
            ...     try:
            ...         async with limit.guard():
            ...             raise TimeoutError("too slow")
            ...     except TimeoutError:
            ...         pass
            ...     print(limit.statistics().samples, limit.statistics().drops)
            ...     print(limit.statistics().max_in_flight)
            >>> anyio.run(main)
            2 1
            3
        """
        return _AdaptiveGuard(self)

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner* in the limit, measuring each call inside it."""
        meter = self._meter
        begin = meter.begin
        end = meter.end

        async def measured(request: Req, /) -> Res:
            start, in_flight = begin()
            try:
                response = await inner(request)
            except BaseException as error:
                end(start, in_flight, error)
                raise
            end(start, in_flight, None)
            return response

        service = self._limit.layer(measured)
        return mark_built(service, self, inner)
