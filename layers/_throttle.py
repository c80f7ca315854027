"""AdaptiveThrottle: client-side adaptive throttling (Google SRE, "Handling Overload").

Over a sliding window of *window* seconds the layer counts ``requests``
(every call that reached the layer, those it refused itself included) and
``accepts`` (calls the downstream accepted), and refuses a new call locally
with the probability::

    p = max(0, (requests - multiplier * accepts) / (requests + 1))

The window is the circuit breaker's time window (``layers._breaker.windows``:
*window_buckets* buckets on the loop's clock): an accept adds one to the
current bucket's calls, a request that was not accepted (refused by the
downstream, or here) is added as a ``_FAILED`` outcome. So ``requests`` is
the window's calls and ``accepts`` its calls minus its failures. While the
window holds no failure, ``p`` is 0: a call reads the clock, compares it
with one time (``clean_until``, the current bucket's end) and draws
nothing.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from typing import Any, ClassVar, Literal, NoReturn, TypeVar, final

import attrs

from . import events
from ._backend import base_time
from ._breaker.codes import _FAILED  # pyright: ignore[reportPrivateUsage]
from ._breaker.windows import _TimeWindow  # pyright: ignore[reportPrivateUsage]
from ._classify import Classification, classification, matcher
from ._config import (
    callable_or_none,
    finite_number,
    int_at_least,
    name_value,
    positive_seconds,
    random_draw,
    random_value,
    seed_value,
)
from ._core import Service, mark_built
from ._errors import Rejected, Throttled
from ._observable import Observation
from .events import Event, Level

__all__ = ["AdaptiveThrottle", "AdaptiveThrottleRejected", "AdaptiveThrottleStatistics"]

Req = TypeVar("Req")
Res = TypeVar("Res")


@attrs.frozen(kw_only=True)
class AdaptiveThrottleRejected(Event):
    """An :class:`~layers.AdaptiveThrottle` refused a call (:class:`~layers.Throttled`).

    Attributes:
        reason: Always ``"throttled"``, as the error's.
        reject_probability: The probability the call was refused with.
    """

    event: ClassVar[str] = "adaptive_throttle_rejected"
    kind: ClassVar[str] = "adaptive_throttle"
    level: ClassVar[Level] = "warning"

    reason: Literal["throttled"] = "throttled"
    reject_probability: float


@final
@attrs.frozen(kw_only=True)
class AdaptiveThrottleStatistics:
    """A snapshot of an :class:`~layers.AdaptiveThrottle` (see its ``statistics()``).

    Attributes:
        requests: Calls counted in the window now: those that reached the
            layer and ended (accepted or not), those it refused included.
        accepts: Calls in the window that the downstream accepted.
        rejected: Calls refused locally with :class:`~layers.Throttled`,
            since the layer was made.
        reject_probability: The probability that a call made now is
            refused, from 0 to 1.
    """

    requests: int
    accepts: int
    rejected: int
    reject_probability: float


def _probability(requests: int, accepts: int, multiplier: float, floor: int) -> float:
    if requests < floor:
        return 0.0
    p = (requests - multiplier * accepts) / (requests + 1)
    return p if p > 0.0 else 0.0


@final
class _State:
    __slots__ = ("clean_until", "matches", "rejected", "window")

    def __init__(
        self, window: _TimeWindow, matches: Callable[[Exception], bool]
    ) -> None:
        self.window = window
        self.matches = matches
        self.rejected = 0
        # Until when a call needs no look at the window: the current
        # bucket's end while the window holds no refusal, else -inf.
        self.clean_until = -math.inf


_on = classification("counted")
_optional_callable = callable_or_none("None or a callable on_result(response) -> bool")
_multiplier = finite_number("a finite number >= 1", lambda v: v >= 1)
_buckets = int_at_least(1, "an int >= 1")
_min_requests = int_at_least(0, "an int >= 0")


@final
@attrs.frozen(eq=False)
class AdaptiveThrottle:
    """Refuse calls locally while the downstream refuses many (SRE adaptive throttling).

    The client-side throttling of Google's SRE book ("Handling Overload"):
    over the last *window* seconds the layer counts **requests** (every
    call that reached it, the ones it refused itself included) and
    **accepts** (calls the downstream accepted), and refuses a new call,
    without calling the inner service, with the probability ::

        max(0, (requests - multiplier * accepts) / (requests + 1))

    While the downstream accepts at least one call in *multiplier*, no
    call is refused. When it refuses more, the calls that reach it settle
    at about *multiplier* times those it accepts (plus about one per
    window): the rest are refused here at no cost to the downstream. A
    refusal raises :class:`~layers.Throttled` (``reason="throttled"``, no
    ``retry_after``: the next call may pass), emits
    :class:`~layers.events.AdaptiveThrottleRejected` and is counted in
    :meth:`statistics`.

    **What counts as accepted** is a classification, as a breaker's:

    * *on*: the exceptions that mean "the downstream refused the call"
      (types, or a predicate). The default, :class:`Exception`, counts
      every error, as a breaker does: the layer cannot tell an overloaded
      server's 503 from a 404 without you. The SRE book counts only
      refusals for overload, so narrow *on* to those when you can (a
      ``429``/``503`` status, an ``Overloaded`` reply); an error that *on*
      does not match counts as accepted: the downstream answered.
    * *on_result*: a predicate on a response that is a refusal (a 503
      returned rather than raised).
    * A :class:`~layers.Rejected` raised by a layer inside (a rate limit, an
      open breaker) counts as neither: the downstream was not asked.
    * A cancelled call (a timeout outside, a caller gone) counts as
      neither, and leaves nothing behind; so does any other
      :class:`BaseException`.

    A call is counted when it ends, at the time it started.

    **Recovery.** The counts leave the window *window* seconds after they
    were made (in *window_buckets* steps), but refusals made after the
    downstream healed count as requests too, so traffic comes back as
    accepts grow, by a factor of about ``e ** multiplier`` per window. From
    a downstream that accepted a share of the load, full traffic returns
    within about one window (``benchmarks/sim_throttle.py`` measures it);
    from one that refused everything it takes a few windows (about
    ``window * ln(requests) / multiplier``). A shorter window recovers
    sooner and forgets sooner.

    **A floor.** With fewer than *min_requests* requests in the window the
    layer refuses nothing: the formula alone refuses 3 calls in 4 after
    three failures, which would lock a quiet client out after a blip.

    **Per key** (one throttle per downstream host or tenant): wrap a
    factory in :class:`~layers.PerKey`, whose bounded table keeps one
    throttle per key.

    The state (the window) lives in the layer object, shared by every
    service it wraps.

    Args:
        window: The window's length in seconds (default 120, the book's
            two minutes).
        multiplier: ``K``, how many requests per accept are sent before
            refusing: a finite number >= 1 (default 2, the book's). Lower is
            more aggressive.
        min_requests: The fewest requests in the window before any call is
            refused, an int >= 0 (default 20; 0 for the bare formula).
        window_buckets: How many buckets the window is kept in (default
            10): counts leave it in steps of ``window / window_buckets``.
        on: What exceptions count as a refusal by the downstream: an
            :class:`Exception` subclass, a tuple of them, or a predicate
            ``on(error) -> bool`` (default :class:`Exception`).
        on_result: A predicate ``on_result(response) -> bool``: true for a
            response that is a refusal (default ``None``: none is).
        seed: A seed for a new :class:`random.Random`, or ``None``.
        random: A :class:`random.Random` to draw from (not with *seed*).
        name: A name for events and metrics (default ``"adaptive_throttle"``).

    Raises:
        layers.ConfigurationError: For an invalid value, naming it.

    Example:
        >>> import anyio, layers
        >>> throttle = layers.AdaptiveThrottle(min_requests=0, seed=1)
        >>> async def overloaded(request: str) -> str:
        ...     raise ConnectionRefusedError("no capacity")
        >>> svc = throttle.layer(overloaded)
        >>> async def main() -> None:
        ...     for _ in range(100):
        ...         try:
        ...             await svc("GET /")
        ...         except Exception:
        ...             pass
        >>> anyio.run(main)
        >>> stats = throttle.statistics()
        >>> stats.requests, stats.accepts, 100 - stats.rejected < 15
        (100, 0, True)
    """

    window: float = attrs.field(default=120.0, kw_only=True, validator=positive_seconds)
    multiplier: float = attrs.field(default=2.0, kw_only=True, validator=_multiplier)
    min_requests: int = attrs.field(default=20, kw_only=True, validator=_min_requests)
    window_buckets: int = attrs.field(default=10, kw_only=True, validator=_buckets)
    on: Classification = attrs.field(default=Exception, kw_only=True, validator=_on)
    on_result: Callable[[Any], bool] | None = attrs.field(
        default=None, kw_only=True, validator=_optional_callable
    )
    seed: int | None = attrs.field(default=None, kw_only=True, validator=seed_value)
    random: _random.Random | None = attrs.field(
        default=None, kw_only=True, validator=random_value
    )
    name: str = attrs.field(
        default="adaptive_throttle", kw_only=True, validator=name_value
    )
    _state: _State = attrs.field(init=False, repr=False)
    _draw: Callable[[], float] = attrs.field(init=False, repr=False)
    kind: ClassVar[str] = "adaptive_throttle"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def __attrs_post_init__(self) -> None:
        draw = random_draw("AdaptiveThrottle", self.seed, self.random)
        window = _TimeWindow(self.window, self.window_buckets, 0)
        object.__setattr__(self, "_state", _State(window, matcher(self.on)))
        object.__setattr__(self, "_draw", draw)

    def _counts(self) -> tuple[int, int]:
        try:
            now: float | None = base_time()
        except RuntimeError:  # no event loop: the counts as of the last call
            now = None
        requests, failures, _ = self._state.window.counts(now)
        return requests, requests - failures

    def statistics(self) -> AdaptiveThrottleStatistics:
        """A snapshot of the counts (:class:`AdaptiveThrottleStatistics`)."""
        requests, accepts = self._counts()
        return AdaptiveThrottleStatistics(
            requests=requests,
            accepts=accepts,
            rejected=self._state.rejected,
            reject_probability=_probability(
                requests, accepts, self.multiplier, self.min_requests
            ),
        )

    def observe(self) -> Observation:
        """The layer for health checks and metrics (:class:`~layers.Observable`).

        Always ``HEALTHY`` (a health check sees ``rejected`` grow); the
        figures ``requests``, ``accepts`` and ``reject_probability``.
        """
        stats = self.statistics()
        return Observation(
            rejected=stats.rejected,
            figures={
                "requests": stats.requests,
                "accepts": stats.accepts,
                "reject_probability": stats.reject_probability,
            },
        )

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: calls are refused locally at the current probability."""
        state = self._state
        window = state.window
        check = self._check
        refused = self._on_error
        on_result = self.on_result
        # The success path: while the window holds no refusal and the clock
        # is inside its current bucket (now < state.clean_until), a call
        # reads the clock once and counts its accept in the current bucket.

        if on_result is None:

            async def adaptive_throttle(request: Req, /) -> Res:
                now = base_time()
                if now >= state.clean_until:
                    check(now)
                try:
                    response = await inner(request)
                except Exception as error:
                    refused(error, now)
                    raise
                window.cur_calls += 1  # an accept, in its start's bucket
                return response

            return mark_built(adaptive_throttle, self, inner)

        record = self._record_refusal

        async def adaptive_throttle_on_result(request: Req, /) -> Res:
            now = base_time()
            if now >= state.clean_until:
                check(now)
            try:
                response = await inner(request)
            except Exception as error:
                refused(error, now)
                raise
            if on_result(response):
                record(now)
            else:
                window.cur_calls += 1
            return response

        return mark_built(adaptive_throttle_on_result, self, inner)

    def _check(self, now: float) -> None:
        """Off the success path: move the window to *now*, draw if it holds refusals."""
        state = self._state
        window = state.window
        if now >= window.bucket_end:
            window.rotate(now)
        if window.old_failures or window.cur_failures:
            state.clean_until = -math.inf
            self._admit(now)
        else:
            state.clean_until = window.bucket_end

    def _record_refusal(self, now: float) -> None:
        state = self._state
        state.window.add(_FAILED, now)
        state.clean_until = -math.inf

    def _on_error(self, error: Exception, now: float) -> None:
        """Count an error of the inner service (a Rejected from inside: not at all)."""
        if isinstance(error, Rejected):
            return
        state = self._state
        if state.matches(error):
            self._record_refusal(now)
        else:
            state.window.cur_calls += 1  # the downstream answered: an accept

    def _admit(self, now: float) -> None:
        """Draw for a call while the window holds refusals; Throttled to refuse."""
        state = self._state
        window = state.window
        requests = window.old_calls + window.cur_calls
        accepts = requests - window.old_failures - window.cur_failures
        p = _probability(requests, accepts, self.multiplier, self.min_requests)
        if p and self._draw() < p:
            self._refuse(now, requests, accepts, p)

    def _refuse(self, now: float, requests: int, accepts: int, p: float) -> NoReturn:
        state = self._state
        self._record_refusal(now)
        state.rejected += 1
        name = self.name
        if events.STATE.sinks:
            events.emit(AdaptiveThrottleRejected(layer=name, reject_probability=p))
        raise Throttled(
            f"adaptive throttle {name!r} refused the call locally (reject "
            f"probability {p:.3f}: {requests} requests, {accepts} accepted in "
            f"the last {self.window:g} s)",
            layer=name,
            reason="throttled",
        )
