"""Hedge: send another copy of a slow request; the first success wins.

How a call runs
---------------
A call that may be hedged opens a task group in the caller's task, and the
first copy runs in the caller's task itself. The call puts an entry on the
heap of its service's timer (:class:`_Timer`: one task per service and
event loop, shared by the calls), due at the delay. When it comes due, the
timer's task sends the next copy into the call's task group, in the
caller's context (its deadline and context variables, copied when the call
began). The first copy to succeed stores its response and cancels the
group's scope: the other copies are cancelled, and the group's exit waits
for them, so when the call returns nothing it started is still running. A
call answered before the delay leaves its entry behind, void, to be dropped
when it comes due: it costs the task group and a heap push, not a task. A
copy that fails is recorded and sends the next copy at once (if one is left
and allowed); the call raises only when every copy sent has failed.

The latency window
------------------
With ``quantile=``, the delay is a quantile (percentile) of recent latencies, kept
as tower keeps them: samples go into the current window; every ``period``
seconds the windows rotate, and the delay for the next period is computed
once, from the window that just closed (never from a half-filled one), and
only if it holds at least ``min_samples`` samples.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from contextvars import Context, copy_context
from typing import Any, ClassVar, Final, Generic, Literal, TypeVar, cast, final

import anyio
import anyio.abc
import attrs

from . import _backend, events
from ._budget import RetryBudget, budget_or_none
from ._config import callable_or_none, finite_number, int_at_least, name_value
from ._core import Service, mark_built
from ._deadline import DEADLINE
from ._errors import ConfigurationError
from ._observable import Observation
from .events import Event, Level

__all__ = ["Hedge", "HedgeRefused", "HedgeSent", "HedgeStatistics", "HedgeWon"]

Req = TypeVar("Req")
Res = TypeVar("Res")

MAX_SAMPLES: Final = 10_000
"""The most latency samples kept per window (the first ones of the period)."""

RefusedReason = Literal["budget", "deadline"]


@attrs.frozen(kw_only=True)
class HedgeSent(Event):
    """A :class:`~layers.Hedge` sent another copy of a request.

    Attributes:
        attempt: The copy's number: 2 for the first hedge.
        after: Seconds since the call started.
    """

    event: ClassVar[str] = "hedge_sent"
    kind: ClassVar[str] = "hedge"
    level: ClassVar[Level] = "info"

    attempt: int
    after: float


@attrs.frozen(kw_only=True)
class HedgeWon(Event):
    """A call that a :class:`~layers.Hedge` had hedged succeeded.

    Emitted only for calls that sent at least one hedge.

    Attributes:
        attempt: The copy whose response was returned: 1 is the original
            request, 2 the first hedge, and so on.
        copies: The copies sent in all (the original included).
    """

    event: ClassVar[str] = "hedge_won"
    kind: ClassVar[str] = "hedge"
    level: ClassVar[Level] = "info"

    attempt: int
    copies: int


@attrs.frozen(kw_only=True)
class HedgeRefused(Event):
    """A :class:`~layers.Hedge` did not send a copy that was due.

    Attributes:
        reason: ``"budget"`` (the :class:`~layers.RetryBudget` is empty) or
            ``"deadline"`` (the deadline, :func:`~layers.current_deadline`,
            has passed). No further copy is sent for that call.
    """

    event: ClassVar[str] = "hedge_refused"
    kind: ClassVar[str] = "hedge"
    level: ClassVar[Level] = "info"

    reason: RefusedReason


@final
@attrs.frozen(kw_only=True)
class HedgeStatistics:
    """A snapshot of a :class:`~layers.Hedge` (see its ``statistics()``).

    Attributes:
        calls: Calls through the layer, so far.
        hedges: Extra copies sent, so far.
        hedge_wins: Calls answered by a hedge (not the original request).
        budget_refusals: Hedges not sent because the retry budget was empty.
        deadline_refusals: Hedges not sent because the deadline had passed.
        delay: The delay in force now, seconds: the fixed *delay*, the
            percentile of the last window, or ``None`` (no hedging until
            the window has *min_samples*).
    """

    calls: int
    hedges: int
    hedge_wins: int
    budget_refusals: int
    deadline_refusals: int
    delay: float | None


@final
class _Counts:
    __slots__ = ("budget", "calls", "deadline", "hedges", "wins")

    def __init__(self) -> None:
        self.calls = 0
        self.hedges = 0
        self.wins = 0
        self.budget = 0
        self.deadline = 0


@final
class _Window:
    """Recent latencies in two windows; the delay comes from the closed one."""

    __slots__ = (
        "current",
        "delay",
        "fallback",
        "min_samples",
        "period",
        "quantile",
        "rotate_at",
    )

    def __init__(
        self, quantile: float, period: float, min_samples: int, fallback: float | None
    ) -> None:
        self.current: list[float] = []
        self.quantile = quantile
        self.period = period
        self.min_samples = min_samples
        self.fallback = fallback
        self.delay = fallback
        self.rotate_at: float | None = None

    def read(self, now: float) -> float | None:
        """The delay in force at *now* (rotating the windows when due)."""
        rotate_at = self.rotate_at
        if rotate_at is None or now >= rotate_at or now < rotate_at - self.period:
            self.rotate(now)
        return self.delay

    def rotate(self, now: float) -> None:
        rotate_at = self.rotate_at
        period = self.period
        if rotate_at is not None and rotate_at <= now < rotate_at + period:
            samples = self.current  # the window that just closed
            self.rotate_at = rotate_at + period
        else:  # the first reading, a period with no reading, or a new clock
            samples = []
            self.rotate_at = now + period
        if samples and len(samples) >= self.min_samples:
            samples.sort()
            rank = math.ceil(self.quantile * len(samples))
            self.delay = samples[max(rank, 1) - 1]
        else:
            self.delay = self.fallback
        self.current = []

    def record(self, latency: float) -> None:
        current = self.current
        if len(current) < MAX_SAMPLES:
            current.append(latency)


_delay = finite_number(
    "None or a finite number of seconds >= 0", lambda v: v >= 0, optional=True
)
_quantile = finite_number(
    "None or a fraction strictly between 0 and 1 (0.95 is the 95th percentile)",
    lambda v: 0 < v < 1,
    optional=True,
)
_period = finite_number("a finite number of seconds > 0", lambda v: v > 0)
_max_hedges = int_at_least(1, "an integer >= 1")
_min_samples = int_at_least(1, "an integer >= 1")
_safe = callable_or_none("None (every request) or a predicate safe(request) -> bool")


@final
@attrs.frozen(eq=False)
class Hedge:
    """Send another copy of a request that is slow; the first success wins.

    "The Tail at Scale" (Dean and Barroso): a request that has not answered
    within the latency most requests answer in is sent again, and the
    first answer is used. The few slow calls no longer set the tail.

    **When a copy is sent.** The original request goes out at once. While
    no copy has succeeded, another copy is sent every *delay* seconds, up
    to *max_hedges* extra copies; and a copy that fails sends the next one
    at once (as gRPC and Polly do: a failure is the strongest sign that
    another copy is needed). The delay is

    * fixed: ``delay=0.05``; ``delay=0`` is *parallel mode*: every copy is
      sent at once;
    * or ``quantile=0.95``: the 95th percentile of the latencies measured
      over the last *period* (tower's rotating windows: the delay for the
      next *period* seconds is computed once, when the window closes).
      Until a window has *min_samples* samples no hedge is sent, or, if
      *delay* is given too, that fixed delay is used. The samples are the
      latencies of the original requests (not of hedges): the time to a
      response, or, for one cancelled because a hedge won, the time it
      ran. It would have taken at least that long, so the slow calls that
      hedging hides stay in the window and the percentile does not drift
      down (a sample above the delay cannot move a percentile below it),
      and about ``1 - quantile`` of calls are hedged. Failures and
      cancelled calls give none. The first 10,000 samples of each period
      are kept.

    **Which answer wins.** The first copy to *succeed* (return a response)
    wins, as in Polly; a failure (an :class:`Exception`) does not end the
    call while other copies run or can still be sent. The losers are
    cancelled and awaited before the call returns: no copy the call sent
    is left running, nor can one be sent after it. If every copy fails,
    the call raises the **last** failure (the same object, traceback kept;
    the earlier ones are dropped). Cancellation of the caller cancels
    every copy and waits for them.

    **What limits hedging.**

    * *safe*: only requests that can be sent twice are hedged: a predicate
      ``safe(request) -> bool`` (``None``, the default, hedges every
      request: adding the layer says the downstream can take duplicates).
      For HTTP, hedge the idempotent methods, as :class:`layers.httpx.RetryOn`
      retries them: ``safe=lambda r: r.method in IDEMPOTENT_METHODS``. An
      unsafe request is passed through, its latency not measured.
    * *budget*: every call deposits in the :class:`~layers.RetryBudget`
      and every hedge withdraws, as a retry does (share one budget with a
      :class:`~layers.Retry` to cap both). When it is empty no hedge is sent
      (:class:`~layers.events.HedgeRefused`, ``reason="budget"``). The
      default is a new budget with Finagle's defaults (20 % of calls plus
      10 per second); ``budget=None`` for none.
    * the deadline (:func:`~layers.current_deadline`): no copy is sent at or
      after it (``reason="deadline"``); the deadline's own
      :class:`~layers.Timeout` cancels the copies in flight.

    **Events and statistics.** :class:`~layers.events.HedgeSent` for each
    extra copy (its number, 2 for the first hedge), :class:`~layers.events.HedgeWon`
    when a hedged call succeeds (which copy won),
    :class:`~layers.events.HedgeRefused`; :meth:`statistics` counts calls,
    hedges, hedge wins and refusals and gives the delay in force.

    **Cost.** A call that may be hedged opens a task group (the hedges'
    home) and puts an entry on a heap. One timer task per service and
    event loop, shared by the calls, sends the hedges that come due; it
    ends when no entry is left, at most one delay after the last call
    began. A call answered before the delay starts no task.

    Args:
        delay: Seconds to wait before each hedge, >= 0 (``0``: parallel
            mode), or ``None`` (default) with *quantile*.
        quantile: A fraction in (0, 1): hedge after that quantile of recent
            latencies (0.95: the 95th percentile), or ``None``.
        max_hedges: The most extra copies per call, an integer >= 1
            (default 1).
        min_samples: Samples a window needs before its percentile is used
            (default 20).
        period: Seconds each latency window lasts (default 1.0).
        safe: ``None`` or a predicate ``safe(request) -> bool``.
        budget: A :class:`~layers.RetryBudget`, or ``None`` for none.
        name: A name for events and metrics (default ``"hedge"``).

    Raises:
        layers.ConfigurationError: At construction: neither *delay* nor
            *quantile* given, or a bad value.

    Example:
        >>> import anyio, layers
        >>> calls = []
        >>> async def fetch(request: str) -> str:
        ...     calls.append(request)
        ...     await anyio.sleep(1.0 if len(calls) == 1 else 0.01)  # the first is slow
        ...     return f"copy {len(calls)}"
        >>> svc = layers.Hedge(delay=0.05).layer(fetch)
        >>> anyio.run(svc, "GET /")
        'copy 2'
    """

    delay: float | None = attrs.field(default=None, kw_only=True, validator=_delay)
    quantile: float | None = attrs.field(
        default=None, kw_only=True, validator=_quantile
    )
    max_hedges: int = attrs.field(default=1, kw_only=True, validator=_max_hedges)
    min_samples: int = attrs.field(default=20, kw_only=True, validator=_min_samples)
    period: float = attrs.field(default=1.0, kw_only=True, validator=_period)
    safe: Callable[[Any], bool] | None = attrs.field(
        default=None, kw_only=True, validator=_safe
    )
    budget: RetryBudget | None = attrs.field(
        factory=RetryBudget, kw_only=True, validator=budget_or_none
    )
    name: str = attrs.field(default="hedge", kw_only=True, validator=name_value)
    _counts: _Counts = attrs.field(init=False, factory=_Counts, repr=False)
    _window: _Window | None = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(
            lambda self: (
                None
                if self.quantile is None
                else _Window(self.quantile, self.period, self.min_samples, self.delay)
            ),
            takes_self=True,
        ),
    )
    kind: ClassVar[str] = "hedge"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def __attrs_post_init__(self) -> None:
        if self.delay is None and self.quantile is None:
            raise ConfigurationError(
                "Hedge(delay=None, quantile=None): give delay (seconds, 0 for "
                "parallel mode) or quantile (0.95: the 95th percentile of "
                "recent latencies), or both"
            )

    def statistics(self) -> HedgeStatistics:
        """A snapshot of the counters (see :class:`HedgeStatistics`)."""
        counts = self._counts
        window = self._window
        return HedgeStatistics(
            calls=counts.calls,
            hedges=counts.hedges,
            hedge_wins=counts.wins,
            budget_refusals=counts.budget,
            deadline_refusals=counts.deadline,
            delay=self.delay if window is None else window.delay,
        )

    def observe(self) -> Observation:
        """The hedge for health checks and metrics (:class:`~layers.Observable`).

        Always ``HEALTHY``; the figures ``calls``, ``hedges``,
        ``hedge_wins`` and ``budget_refusals`` and ``deadline_refusals``.
        """
        stats = self.statistics()
        return Observation(
            figures={
                "calls": stats.calls,
                "hedges": stats.hedges,
                "hedge_wins": stats.hedge_wins,
                "budget_refusals": stats.budget_refusals,
                "deadline_refusals": stats.deadline_refusals,
            }
        )

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: slow calls are sent again, the first success wins."""
        counts = self._counts
        safe = self.safe
        budget = self.budget
        state = None if budget is None else budget._state  # pyright: ignore[reportPrivateUsage]
        window = self._window
        fixed = self.delay
        config = _Config(self, inner)
        now = _backend.current_time

        async def hedge(request: Req, /) -> Res:
            counts.calls += 1
            if state is not None:
                state.deposit()
            if safe is not None and not safe(request):
                return await inner(request)
            delay = fixed if window is None else window.read(now())
            if delay is None:  # not enough samples yet: measure, do not hedge
                assert window is not None  # a fixed delay is never None
                start = now()
                response = await inner(request)
                window.record(now() - start)
                return response
            run: _Run[Res] = _Run(config, request)
            return await run.run(delay)

        return mark_built(hedge, self, inner)


@final
class _Config:
    """What every call of one built service shares."""

    __slots__ = ("_timer", "budget", "counts", "inner", "max_hedges", "name", "window")

    def __init__(self, hedge: Hedge, inner: Service[Any, Any]) -> None:
        self.inner = inner
        self.counts = hedge._counts  # pyright: ignore[reportPrivateUsage]
        self.window = hedge._window  # pyright: ignore[reportPrivateUsage]
        self.budget = hedge.budget
        self.max_hedges = hedge.max_hedges
        self.name = hedge.name
        self._timer: _Timer | None = None

    def timer(self) -> _Timer:
        """The timer of this service on the running event loop (made on first use)."""
        loop = _backend.current_loop()
        timer = self._timer
        if timer is None or timer.loop is not loop:
            timer = self._timer = _Timer(loop, self.name)
        return timer


@final
class _Timer:
    """Sends the hedges that come due, for every call of one service on one loop.

    A call that may be hedged puts ``(when, serial, run)`` on the heap
    (``run.queued`` says the entry is live). One task
    (:func:`~layers._backend.spawn_detached`) sleeps until the earliest
    live entry is due, and asks its call for the next copy
    (:meth:`_Run.due`). A call that ends leaves its entry, void: the task
    drops the void entries at the top of the heap whenever it wakes, and
    sleeps until the first live one, so it wakes about once per delay when
    the calls answer before it; and the heap is compacted when it holds
    more than twice the live entries (plus 64), so it stays in proportion
    to the calls in flight. Answering before the delay costs a heap push,
    not a task. The task ends when the heap is empty. An entry earlier than
    the task's wake-up (a delay that shrank when the percentile window
    rotated) replaces the task with one that wakes in time.
    """

    __slots__ = (
        "generation",
        "heap",
        "live",
        "loop",
        "name",
        "serial",
        "task",
        "wake_at",
    )

    def __init__(self, loop: object, name: str) -> None:
        self.loop = loop
        self.name = name
        self.heap: list[tuple[float, int, _Run[Any]]] = []
        self.live = 0  # entries whose call has not ended
        self.serial = 0
        self.generation = 0
        self.task: _backend.Detached | None = None
        # When the task looks at the heap next: inf with no task, -inf while
        # it takes the entries that are due.
        self.wake_at = math.inf

    def add(self, when: float, run: _Run[Any]) -> None:
        """Call ``run.due()`` at *when* (or soon after), unless the call ends first."""
        heap = self.heap
        if len(heap) > 2 * self.live + 64:
            heap[:] = [entry for entry in heap if entry[2].queued]
            heapq.heapify(heap)
        self.serial += 1
        heapq.heappush(heap, (when, self.serial, run))
        run.queued = True
        self.live += 1
        if when < self.wake_at:
            task = self.task
            if task is not None:
                task.cancel()
            self.generation += 1
            self.wake_at = when
            generation = self.generation
            self.task = _backend.spawn_detached(
                lambda: self.tick(generation), name=f"layers.Hedge({self.name}) timer"
            )

    def void(self, run: _Run[Any]) -> None:
        """*run* has ended: its entry (if any) is void."""
        if run.queued:
            run.queued = False
            self.live -= 1

    async def tick(self, generation: int) -> None:
        heap = self.heap
        now = _backend.current_time
        pop = heapq.heappop
        try:
            while True:
                while heap and not heap[0][2].queued:
                    pop(heap)  # void: its call has ended
                if not heap:
                    return
                when = heap[0][0]
                delay = when - now()
                if delay > 0:
                    self.wake_at = when
                    await anyio.sleep(delay)
                # due: what the sleep was for (a clock may read a hair
                # early after it), and whatever else is due by now
                horizon = max(when, now())
                self.wake_at = -math.inf
                while heap and heap[0][0] <= horizon:
                    run = pop(heap)[2]
                    if run.queued:
                        self.void(run)  # taken off the heap: no longer live
                        run.due(self)
        finally:
            if self.generation == generation:  # not replaced
                self.task = None
                self.wake_at = math.inf


@final
class _Run(Generic[Res]):
    """One hedged call: the copies in flight, the winner, the last failure."""

    __slots__ = (
        "config",
        "context",
        "delay",
        "done",
        "error",
        "group",
        "queued",
        "request",
        "response",
        "running",
        "sent",
        "start",
        "stopped",
        "timer",
        "winner",
    )

    def __init__(self, config: _Config, request: object) -> None:
        self.config = config
        self.request = request
        self.response: object = None
        self.error: BaseException | None = None
        self.done = False
        self.stopped = False
        self.running = 0
        self.sent = 1
        self.winner = 0
        self.start = 0.0
        self.delay = 0.0
        self.group: anyio.abc.TaskGroup | None = None
        self.context: Context | None = None
        self.timer: _Timer | None = None
        self.queued = False  # an entry on the timer's heap, live

    async def run(self, delay: float) -> Res:
        config = self.config
        self.start = start = _backend.current_time()
        try:
            async with anyio.create_task_group() as group:
                self.group = group
                if delay > 0 or config.window is not None:
                    # the hedges run in the caller's context (its deadline,
                    # its context variables), though the timer sends them
                    self.context = copy_context()
                    self.delay = delay
                    timer = self.timer = config.timer()
                    timer.add(start + delay, self)
                else:  # parallel mode (delay=0): every copy at once
                    while self.send():
                        pass
                self.running += 1
                await self.copy(1)
        finally:
            self.group = None
            self.context = None
            if self.timer is not None:
                self.timer.void(self)  # its entry, if any
                self.timer = None
            self.request = None
        if self.done:
            if self.sent > 1:
                if self.winner > 1:
                    config.counts.wins += 1
                if events.STATE.sinks:
                    events.emit(
                        HedgeWon(
                            layer=config.name, attempt=self.winner, copies=self.sent
                        )
                    )
            response = self.response
            self.response = None
            return cast("Res", response)
        error = self.error
        self.error = None
        assert error is not None
        raise error

    def due(self, timer: _Timer) -> None:
        """The delay has passed (called by the timer's task): send the next copy."""
        group = self.group
        context = self.context
        if group is None or context is None or group.cancel_scope.cancel_called:
            # The call has ended, or is ending: anyio's task group on asyncio
            # still takes a task while its exit passes its last checkpoint,
            # and would not wait for it.
            return
        try:
            sent = context.run(self.send)
        except Exception as error:  # pragma: no cover - a defect: fail the call
            self.error = error
            self.done = False
            group.cancel_scope.cancel()
            return
        if sent and self.sent <= self.config.max_hedges:
            timer.add(_backend.current_time() + self.delay, self)

    async def copy(self, number: int) -> None:
        """Run copy *number* (``running`` already counts it)."""
        config = self.config
        now = _backend.current_time
        start = now()
        try:
            response = await config.inner(self.request)
        except Exception as error:
            self.running -= 1
            self.error = error
            if not self.done and not self.send() and self.running == 0:
                # nothing left running and nothing more to send: end the call
                group = self.group
                assert group is not None
                group.cancel_scope.cancel()
            return
        except BaseException:
            self.running -= 1
            window = config.window
            if number == 1 and self.done and window is not None:
                # cancelled because a hedge won: it would have taken at
                # least this long, so the slow calls stay in the window
                window.record(now() - start)
            raise
        self.running -= 1
        window = config.window
        if number == 1 and window is not None:
            window.record(now() - start)
        if not self.done:
            self.done = True
            self.response = response
            self.winner = number
            if self.running:  # the losers: cancel them (the group awaits them)
                group = self.group
                assert group is not None
                group.cancel_scope.cancel()

    def send(self) -> bool:
        """Send the next copy if one is left and allowed; return whether it did."""
        config = self.config
        if self.stopped or self.done or self.sent > config.max_hedges:
            return False
        counts = config.counts
        now = _backend.current_time()
        deadline = DEADLINE.get()
        reason: RefusedReason | None = None
        if deadline is not None and now >= deadline:
            reason = "deadline"
            counts.deadline += 1
        elif config.budget is not None and not config.budget.withdraw():
            reason = "budget"
            counts.budget += 1
        if reason is not None:
            self.stopped = True
            if events.STATE.sinks:
                events.emit(HedgeRefused(layer=config.name, reason=reason))
            return False
        self.sent += 1
        self.running += 1
        counts.hedges += 1
        number = self.sent
        if events.STATE.sinks:
            events.emit(
                HedgeSent(layer=config.name, attempt=number, after=now - self.start)
            )
        group = self.group
        assert group is not None
        group.start_soon(self.copy, number)
        return True
