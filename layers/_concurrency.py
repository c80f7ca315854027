"""ConcurrencyLimit: at most N calls in flight, a FIFO queue, load shedding.

The success path is a counter: when a permit is free the call takes it (an
increment, no await, so no other task can run in between and no lock is
needed) and gives it back in a ``finally``. Only a call that must wait
parks: on a waiter of its own from the backend corner (a bare future on
asyncio, a parked task on trio: anyio's Event costs twice as much there).

A permit given back while calls wait is *handed over*: the first waiter is
taken out of the queue and marked as holding the permit before it wakes, so
the count of calls in flight never drops and no newcomer can slip in
between. A waiter cancelled at the very moment the permit reaches it hands
the permit on to the next waiter (or gives it back), so no permit is lost
and none is granted twice. Hence: while anyone waits, every permit is in
use, and a newcomer that finds a free permit may take it.

The queue is a deque of waiters. A waiter that gives up (cancelled, or
``max_wait`` passed) is not searched for: it is marked as gone (put in a
set) and skipped when its turn comes, and the marked ones are swept out
once they are half the queue. So joining, being woken and leaving each
cost O(1) (amortized), cancelling many waiters costs the same in any
order, and the queue never holds more than twice the live waiters (plus
64). An ordered dict would do the same with less code, but it made every
queued call about 5 % slower under contention than a deque.
"""

from __future__ import annotations

import math
from collections import deque
from typing import ClassVar, Literal, NoReturn, TypeVar, final

import anyio
import attrs

from . import events
from ._backend import Waiter, new_waiter
from ._config import int_at_least, name_value, optional_positive_seconds
from ._core import Service, mark_built
from ._errors import Overloaded
from ._observable import Observation
from .events import Event, Level

__all__ = [
    "ConcurrencyLimit",
    "ConcurrencyLimitRejected",
    "ConcurrencyLimitStatistics",
]

Req = TypeVar("Req")
Res = TypeVar("Res")


_positive_int = int_at_least(1, "an int >= 1")
_optional_queue_bound = int_at_least(
    0, "None (no bound) or an int >= 0 (0: no queue, load shedding)", optional=True
)
_optional_seconds = optional_positive_seconds
_name = name_value


@attrs.frozen(kw_only=True)
class ConcurrencyLimitRejected(Event):
    """A concurrency limit refused a call with :class:`~layers.Overloaded`.

    Emitted by :class:`~layers.ConcurrencyLimit` (and so by the load shedder,
    :meth:`~layers.ServiceBuilder.load_shed`).

    Attributes:
        reason: ``"queue_full"`` (every permit in use and the queue at its
            bound; with ``max_waiting=0``, load shedding) or ``"max_wait"``
            (the call waited ``max_wait`` seconds without a permit).
        max_in_flight: The layer's limit.
        waiting: Calls waiting in the queue at the time.
    """

    event: ClassVar[str] = "concurrency_limit_rejected"
    kind: ClassVar[str] = "concurrency_limit"
    level: ClassVar[Level] = "warning"

    reason: Literal["queue_full", "max_wait"]
    max_in_flight: int
    waiting: int


@final
@attrs.frozen(kw_only=True)
class ConcurrencyLimitStatistics:
    """A snapshot of a :class:`ConcurrencyLimit` (see its ``statistics()``).

    Attributes:
        in_flight: Calls holding a permit now (at most ``max_in_flight``).
        waiting: Calls waiting in the queue now.
        rejected: Calls refused with :class:`~layers.Overloaded`, so far.
        max_in_flight: The limit.
    """

    in_flight: int
    waiting: int
    rejected: int
    max_in_flight: int


@final
class _State:
    """The permits of one ConcurrencyLimit, shared by every service it wraps."""

    __slots__ = ("gone", "in_flight", "rejected", "waiters")

    def __init__(self) -> None:
        self.in_flight = 0
        self.rejected = 0
        # FIFO; a waiter leaves it when woken (popped from the front) or,
        # having given up, when its turn comes or a sweep finds it in `gone`
        # (deque.remove() would search: cancelling N waiters newest-first
        # took O(N**2)). Both objects stay the same: the layer holds them.
        self.waiters: deque[Waiter] = deque()
        self.gone: set[Waiter] = set()

    def waiting(self) -> int:
        """The waiters that have not given up."""
        return len(self.waiters) - len(self.gone)

    def release(self) -> None:
        """Give a permit back: to the first waiter if any, else to the pool."""
        waiters = self.waiters
        gone = self.gone
        while waiters:
            waiter = waiters.popleft()
            if gone and waiter in gone:
                gone.remove(waiter)
                continue
            # The permit passes straight to it: in_flight does not change.
            waiter.wake()
            return
        self.in_flight -= 1

    def leave(self, waiter: Waiter) -> None:
        """A waiter gives up (cancelled, or max_wait passed)."""
        if waiter.woken:
            # The permit reached it as it was cancelled: pass it on.
            self.release()
            return
        gone = self.gone
        gone.add(waiter)
        waiters = self.waiters
        if len(gone) > 64 and 2 * len(gone) > len(waiters):
            # Half the queue is gone: sweep (O(n), once per n/2 leaves).
            live = [w for w in waiters if w not in gone]
            waiters.clear()
            waiters.extend(live)
            gone.clear()


@final
@attrs.frozen(eq=False)
class ConcurrencyLimit:
    """Let at most *max_in_flight* calls run inside at once; queue the others.

    A call takes a permit for the whole inner call and gives it back when
    the call ends: on success, on error and on cancellation, at any await.
    When every permit is in use, the call waits in a queue, first come first
    served (a permit given back goes straight to the first waiter; a
    newcomer never overtakes it). A call cancelled while it waits leaves the
    queue and holds nothing.

    Two bounds turn waiting into :class:`~layers.Overloaded`, raised without
    calling the inner service:

    * *max_waiting*: a call that finds this many calls already waiting is
      refused at once. ``max_waiting=0`` never queues: a call that finds every
      permit in use is refused at once, which is **load shedding**
      (:meth:`ServiceBuilder.load_shed <layers.ServiceBuilder.load_shed>`).
    * *max_wait*: a call that has waited this long without a permit leaves
      the queue and is refused.

    ``Overloaded.retry_after`` is ``None``: when a permit frees up depends
    on the inner calls.

    The state lives in this layer object: every service it wraps shares the
    same *max_in_flight* permits (a bulkhead around one downstream). A
    success path with a free permit adds no checkpoint and no await.

    Args:
        max_in_flight: The most calls inside at once, an int >= 1.
        max_waiting: The most calls waiting, an int >= 0, or ``None`` (the
            default) for no bound.
        max_wait: The longest a call waits for a permit, in seconds, or
            ``None`` (the default) for no bound.
        name: A name for events and errors (default ``"concurrency_limit"``).

    Raises:
        layers.ConfigurationError: For any invalid value, naming it.

    Example:
        >>> import anyio, layers
        >>> async def slow(request: int) -> int:
        ...     await anyio.sleep(1)
        ...     return request
        >>> limit = layers.ConcurrencyLimit(2, max_waiting=0)
        >>> svc = limit.layer(slow)
        >>> async def call(i: int) -> None:
        ...     try:
        ...         print(i, "->", await svc(i))
        ...     except layers.Overloaded as error:
        ...         print(i, "->", error)
        >>> async def main() -> None:
        ...     async with anyio.create_task_group() as group:
        ...         for i in range(3):
        ...             group.start_soon(call, i)
        >>> anyio.run(main)
        2 -> concurrency limit 'concurrency_limit' is full: 2 calls in flight, 0 waiting
        0 -> 0
        1 -> 1
    """

    max_in_flight: int = attrs.field(validator=_positive_int)
    max_waiting: int | None = attrs.field(
        default=None, kw_only=True, validator=_optional_queue_bound
    )
    max_wait: float | None = attrs.field(
        default=None, kw_only=True, validator=_optional_seconds
    )
    name: str = attrs.field(default="concurrency_limit", kw_only=True, validator=_name)
    _state: _State = attrs.field(init=False, factory=_State, repr=False)
    kind = "concurrency_limit"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def statistics(self) -> ConcurrencyLimitStatistics:
        """A snapshot of the counters (see :class:`ConcurrencyLimitStatistics`)."""
        state = self._state
        return ConcurrencyLimitStatistics(
            in_flight=state.in_flight,
            waiting=state.waiting(),
            rejected=state.rejected,
            max_in_flight=self.max_in_flight,
        )

    def observe(self) -> Observation:
        """The limit for health checks and metrics (:class:`~layers.Observable`).

        Always ``HEALTHY`` itself (a health check turns ``degraded`` on
        refusals); ``in_flight``, ``waiting`` and ``rejected`` as in
        :meth:`statistics`, and the figure ``max_in_flight``.
        """
        state = self._state
        return Observation(
            in_flight=state.in_flight,
            waiting=state.waiting(),
            rejected=state.rejected,
            figures={"max_in_flight": self.max_in_flight},
        )

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner* in this limit (shared with every service it wraps)."""
        state = self._state
        waiters = state.waiters
        gone = state.gone
        limit = self.max_in_flight
        reject = self._reject
        max_wait = self.max_wait
        max_waiting = math.inf if self.max_waiting is None else self.max_waiting

        # The queued path is inline too: under contention every call takes
        # it, and a second coroutine would be resumed at every wake-up.
        async def concurrency_limit(request: Req, /) -> Res:
            # While anyone waits every permit is in use, so one comparison
            # also keeps newcomers behind the queue.
            if state.in_flight < limit:
                state.in_flight += 1
                try:
                    return await inner(request)
                finally:
                    if state.waiters:
                        state.release()
                    else:
                        state.in_flight -= 1
            if len(waiters) - len(gone) >= max_waiting:
                reject("queue_full")
            waiter = new_waiter()
            waiters.append(waiter)
            try:
                if max_wait is None:
                    await waiter.wait()
                else:
                    with anyio.move_on_after(max_wait):
                        await waiter.wait()
            except BaseException:
                state.leave(waiter)
                raise
            if not waiter.woken:  # max_wait passed without a permit
                state.leave(waiter)
                reject("max_wait")
            try:
                return await inner(request)
            finally:
                state.release()

        return mark_built(concurrency_limit, self, inner)

    def _reject(self, reason: Literal["queue_full", "max_wait"]) -> NoReturn:
        state = self._state
        state.rejected += 1
        waiting = state.waiting()
        if events.STATE.sinks:
            events.emit(
                ConcurrencyLimitRejected(
                    layer=self.name,
                    reason=reason,
                    max_in_flight=self.max_in_flight,
                    waiting=waiting,
                )
            )
        if reason == "max_wait":
            message = (
                f"concurrency limit {self.name!r}: no permit within "
                f"max_wait={self.max_wait:g} s ({self.max_in_flight} calls in "
                f"flight, {waiting} waiting)"
            )
        else:
            message = (
                f"concurrency limit {self.name!r} is full: {state.in_flight} calls "
                f"in flight, {waiting} waiting"
            )
        raise Overloaded(message, layer=self.name, reason=reason)
