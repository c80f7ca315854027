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

With a shared store (:class:`layers.redis.RedisConcurrencyStore`) the
permits live in the store, and ``layer()`` builds another closure, so the
in-memory one above keeps its cost. A call asks the store for a permit of
its own id; when every permit is in use it queues in this process, first
come first served, and only the first waiter (the head) asks the store
again: when the store says a permit was released (in any process) or at
the re-check time the store gives. The head hands its position on as it
leaves. When the store fails, its policy decides: refuse
(:class:`~layers.StoreUnavailable`), admit, or take a permit of the
in-memory limit above, sized ``max_in_flight // processes``.
"""

from __future__ import annotations

import math
from collections import deque
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import (
    Any,
    ClassVar,
    Final,
    Literal,
    NoReturn,
    Protocol,
    TypeVar,
    final,
    runtime_checkable,
)

import anyio
import anyio.lowlevel
import attrs

from . import events
from ._backend import Waiter, new_waiter
from ._config import fail, int_at_least, name_value, optional_positive_seconds
from ._core import Service, mark_built
from ._errors import Overloaded, StoreError
from ._guard import GuardShorthand
from ._observable import Observation
from ._store import StoreHealth, StorePolicy
from ._tuners import Tuners
from .events import Event, Level, report_limit_changes

# What a call holds besides a store permit (whose id is a str): see _acquire.
_LOCAL: Final = 0  # a permit of the in-memory limit
_OPEN: Final = 1  # admitted by a failed store's "open" policy

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


@runtime_checkable
class ConcurrencyStore(Protocol):
    """Where a shared :class:`ConcurrencyLimit` keeps its permits.

    :class:`layers.redis.RedisConcurrencyStore` is the one store; this is
    the seam the layer speaks to (not a public interface yet). A permit is
    an id the layer makes (:meth:`permit`), so that asking for the same
    one twice is harmless.
    """

    @property
    def label(self) -> str:
        """The store's name for events and errors."""
        ...

    @property
    def policy(self) -> StorePolicy:
        """What the layer does when the store fails."""
        ...

    @property
    def processes(self) -> int | None:
        """The expected number of processes (for the ``"local"`` policy)."""
        ...

    @property
    def changes(self) -> int:
        """A count that grows when a permit may have come free."""
        ...

    def start(self) -> None:
        """Start the store's background work if it is not running (cheap)."""
        ...

    def permit(self) -> str:
        """A new permit id, unique across processes."""
        ...

    async def acquire(self, permit: str, limit: int) -> tuple[bool, float]:
        """Take *permit* if fewer than *limit* are held.

        Returns ``(True, free permits left)`` or ``(False, seconds until
        the next re-check)``; raises :class:`~layers.StoreError`. A permit
        taken is held (and renewed) until :meth:`release`; a call cancelled
        or failed in between leaves nothing held.
        """
        ...

    async def release(self, permit: str) -> None:
        """Give *permit* back now (never raises; shielded from cancellation)."""
        ...

    async def changed(self, since: int, at_most: float) -> None:
        """Return when :attr:`changes` differs from *since*, or after *at_most* s."""
        ...

    def use_limit(self, limit: int) -> None:
        """Hold the permits to *limit* from now on (the layer's ``set_limit``).

        Each :meth:`acquire` passes the limit too; this tells the store's
        background work (the renewal that takes a lost permit again if
        there is room) before the next acquire.
        """
        ...


def _store(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, ConcurrencyStore):
        fail(
            instance,
            attribute,
            value,
            "None or a shared concurrency store (layers.redis.RedisConcurrencyStore)",
        )


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
        store_fallbacks: Calls decided by the store's failure policy
            (refused, admitted, or given a local permit because the shared
            store failed), so far; always 0 without a store.
    """

    in_flight: int
    waiting: int
    rejected: int
    max_in_flight: int
    store_fallbacks: int = 0


@final
class _State:
    """The permits of one ConcurrencyLimit, shared by every service it wraps."""

    __slots__ = ("gone", "in_flight", "limit", "rejected", "tuners", "waiters")

    def __init__(self) -> None:
        self.in_flight = 0
        self.rejected = 0
        self.limit = 1
        """The permits (set by the layer; the local limit, with a store)."""
        # For each service built (weakly), the function that reads the limit
        # into its closure again (see ConcurrencyLimit.set_limit).
        self.tuners = Tuners()
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
        """Give a permit back: to the first waiter if any, else to the pool.

        While more calls are in flight than the limit (it was lowered),
        the permit goes back to the pool: the waiters wait until the calls
        in flight are below the limit.
        """
        waiters = self.waiters
        gone = self.gone
        if self.in_flight <= self.limit:
            while waiters:
                waiter = waiters.popleft()
                if gone and waiter in gone:
                    gone.remove(waiter)
                    continue
                # The permit passes straight to it: in_flight does not change.
                waiter.wake()
                return
        self.in_flight -= 1

    def admit(self) -> None:
        """Hand the permits free under the limit to the first waiters (raised)."""
        waiters = self.waiters
        gone = self.gone
        while waiters and self.in_flight < self.limit:
            waiter = waiters.popleft()
            if gone and waiter in gone:
                gone.remove(waiter)
                continue
            self.in_flight += 1
            waiter.wake()

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
class _Queue:
    """The calls of this process waiting for a shared permit, first come first served.

    Only the first live waiter, the head, asks the store; it is woken when
    it reaches the front and wakes the next one as it leaves. Waiters that
    give up before their turn are marked as gone, as in :class:`_State`.
    """

    __slots__ = ("gone", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[Waiter] = deque()
        self.gone: set[Waiter] = set()

    def live(self) -> int:
        """The waiters that have not given up (the head included)."""
        return len(self.waiters) - len(self.gone)

    def join(self) -> Waiter:
        """Queue a new waiter; woken at once if it is the head."""
        waiter = new_waiter()
        self.waiters.append(waiter)
        if len(self.waiters) - len(self.gone) == 1:
            waiter.wake()
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """*waiter* leaves: the head (woken) passes its position on."""
        waiters = self.waiters
        gone = self.gone
        if waiter.woken:
            # The head is the first waiter that is not gone.
            while waiters[0] is not waiter:
                gone.remove(waiters.popleft())
            waiters.popleft()
            while waiters:
                first = waiters[0]
                if first in gone:
                    gone.remove(waiters.popleft())
                    continue
                first.wake()
                break
            return
        gone.add(waiter)
        if len(gone) > 64 and 2 * len(gone) > len(waiters):
            live = [w for w in waiters if w not in gone]
            waiters.clear()
            waiters.extend(live)
            gone.clear()


@final
class _Shared:
    """The part of a ConcurrencyLimit with a shared store that lives here.

    The layer's :class:`_State` serves as the local limit of the
    ``"local"`` policy.
    """

    __slots__ = ("handoff", "health", "in_flight", "nap", "queue", "version")

    def __init__(self, health: StoreHealth) -> None:
        self.in_flight = 0
        self.version = 0
        """How often set_limit changed the limit (a head asking asks again)."""
        self.nap: anyio.CancelScope | None = None
        """The head's wait for a release, while it waits (set_limit cancels it)."""
        """Calls of this process holding a store permit, or admitted by "open"."""
        self.queue = _Queue()
        self.health = health
        self.handoff: int | None = None
        """The store's change count when the last head took the last free permit."""


@final
@attrs.frozen(eq=False)
class ConcurrencyLimit(GuardShorthand):
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

    **As a block.** ``async with limit:`` (or ``async with limit.guard():``)
    holds a permit of the same limit for the whole block, as a call does:
    see :meth:`guard`.

    **Shared across processes.** With ``store=``
    :class:`~layers.redis.RedisConcurrencyStore`, the *max_in_flight*
    permits live in Redis and hold for every process that uses the same
    store name (give them all the same *max_in_flight*). A permit is a
    lease that this process renews while the call runs, so the permits of
    a process that crashed come back within the store's ``lease_ttl``, and
    a call gives its permit back as it ends (one more round trip). Calls
    wait in a queue per process, first come first served within the
    process; across processes, whoever asks first after a release gets the
    permit (no global order). *max_waiting* bounds this process's queue,
    and *max_wait* applies as in memory. When Redis fails, the store's
    ``fail=`` policy decides (see
    :class:`~layers.redis.RedisConcurrencyStore`); those calls count in
    ``statistics().store_fallbacks``.

    Args:
        max_in_flight: The most calls inside at once, an int >= 1 (across
            every process, with a shared store).
        max_waiting: The most calls waiting, an int >= 0, or ``None`` (the
            default) for no bound (in this process, with a shared store).
        max_wait: The longest a call waits for a permit, in seconds, or
            ``None`` (the default) for no bound.
        store: ``None`` (the default) to keep the permits in this layer
            object, or a :class:`~layers.redis.RedisConcurrencyStore` to
            share them across processes.
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
    store: ConcurrencyStore | None = attrs.field(
        default=None, kw_only=True, validator=_store
    )
    name: str = attrs.field(default="concurrency_limit", kw_only=True, validator=_name)
    _state: _State = attrs.field(init=False, factory=_State, repr=False)
    _shared: _Shared | None = attrs.field(init=False, default=None, repr=False)
    kind = "concurrency_limit"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def __attrs_post_init__(self) -> None:
        store = self.store
        self._state.limit = self._local_limit(self.max_in_flight)
        if store is not None:
            health = StoreHealth(self.name, store.label, store.policy)
            object.__setattr__(self, "_shared", _Shared(health))

    def _local_limit(self, max_in_flight: int) -> int:
        """The permits of the in-memory limit (with a store, its "local" policy's)."""
        store = self.store
        if store is None:
            return max_in_flight
        return max(1, max_in_flight // (store.processes or 1))

    def _in_flight(self) -> int:
        shared = self._shared
        in_flight = self._state.in_flight
        return in_flight if shared is None else in_flight + shared.in_flight

    def _waiting(self) -> int:
        shared = self._shared
        waiting = self._state.waiting()
        return waiting if shared is None else waiting + shared.queue.live()

    def statistics(self) -> ConcurrencyLimitStatistics:
        """A snapshot of the counters (see :class:`ConcurrencyLimitStatistics`).

        With a shared store, ``in_flight`` and ``waiting`` count the calls
        of this process (the store's permits are shared by all of them).
        """
        shared = self._shared
        return ConcurrencyLimitStatistics(
            in_flight=self._in_flight(),
            waiting=self._waiting(),
            rejected=self._state.rejected,
            max_in_flight=self.max_in_flight,
            store_fallbacks=0 if shared is None else shared.health.fallbacks,
        )

    def observe(self) -> Observation:
        """The limit for health checks and metrics (:class:`~layers.Observable`).

        Always ``HEALTHY`` itself (a health check turns ``degraded`` on
        refusals); ``in_flight``, ``waiting`` and ``rejected`` as in
        :meth:`statistics`, and the figure ``max_in_flight`` (with a shared
        store, also ``store_fallbacks``).
        """
        shared = self._shared
        figures: dict[str, int | float | None] = {"max_in_flight": self.max_in_flight}
        if shared is not None:
            figures["store_fallbacks"] = shared.health.fallbacks
        return Observation(
            in_flight=self._in_flight(),
            waiting=self._waiting(),
            rejected=self._state.rejected,
            figures=figures,
        )

    def guard(self) -> AbstractAsyncContextManager[None]:
        """The block form: hold a permit for the block (``async with limit:`` too).

        Entering takes a permit of this limit, waiting in the same queue
        as the service form's calls (first come first served, *max_wait*
        and *max_waiting* apply, :class:`~layers.Overloaded` when they
        refuse), with a shared store too; leaving gives it back, however
        the block ends. Cancelled while it waits, the block never runs and
        holds nothing; cancelled inside, its permit is given back.

        Example:
            >>> import anyio, layers
            >>> limit = layers.ConcurrencyLimit(1, max_waiting=0)
            >>> async def main() -> None:
            ...     async with limit:
            ...         print("in flight:", limit.statistics().in_flight)
            ...         try:
            ...             async with limit.guard():
            ...                 print("never runs")
            ...         except layers.Overloaded as error:
            ...             print(error)
            >>> anyio.run(main)
            in flight: 1
            concurrency limit 'concurrency_limit' is full: 1 calls in flight, 0 waiting
        """
        return _PermitGuard(self)

    def set_limit(self, max_in_flight: int) -> None:
        """Change *max_in_flight* while the limit is in use.

        Checked as the constructor checks it. The change takes effect at
        once, costs ``O(calls admitted)`` and starts no task; call it from
        the event loop's thread (a task, or a callback on the loop), like
        the limit's calls. A :class:`~layers.events.LimitChanged` event
        records it (setting the value in force does nothing);
        :meth:`statistics` and :meth:`observe` show the value in force.

        * **Raising** it admits waiting calls at once, as many as the new
          limit has room for, first come first served.
        * **Lowering** it never cuts off a call in flight: they run to
          their end. New calls wait (or, with *max_waiting* reached or
          ``max_waiting=0``, are refused with :class:`~layers.Overloaded`)
          until the calls in flight are below the new limit: a permit
          given back while they are not goes back to the pool, not to a
          waiter.

        *max_waiting* and *max_wait* are unchanged. A waiter cancelled
        during or after a change holds nothing: a permit that reached it
        as it was cancelled passes on to the next waiter (or back).

        **With a shared store** (:class:`~layers.redis.RedisConcurrencyStore`)
        the limit travels with each request for a permit: the change applies
        to this process's calls from its next request (the first waiter
        asks again at once after a raise; the others follow as permits are
        taken), and to no other process. Change it in every process that
        shares the store: meanwhile a process with a higher limit may take
        permits beyond the lower one. The local limit of ``fail="local"``
        follows (``max(1, max_in_flight // processes)``).

        Args:
            max_in_flight: The new limit, an int >= 1.

        Raises:
            layers.ConfigurationError: For an invalid value, naming it; the
                limit is left unchanged.

        Example:
            >>> import layers
            >>> limit = layers.ConcurrencyLimit(10)
            >>> limit.set_limit(4)
            >>> limit.max_in_flight, limit.statistics().max_in_flight
            (4, 4)
        """
        _positive_int.check(
            "ConcurrencyLimit.set_limit", "max_in_flight", max_in_flight
        )
        old = self.max_in_flight
        if max_in_flight == old:
            return
        object.__setattr__(self, "max_in_flight", max_in_flight)
        state = self._state
        state.limit = self._local_limit(max_in_flight)
        state.tuners.tune()
        state.admit()  # the local waiters, with a store (its "local" policy)
        shared = self._shared
        store = self.store
        if shared is not None and store is not None:
            store.use_limit(max_in_flight)
            shared.version += 1
            if max_in_flight > old and shared.nap is not None:
                shared.nap.cancel()
        report_limit_changes(
            self.name, self.kind, [("max_in_flight", old, max_in_flight)]
        )

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner* in this limit (shared with every service it wraps)."""
        if self.store is not None:
            return self._shared_layer(inner, self.store)
        state = self._state
        limit = self.max_in_flight
        queued = self._queued

        # The success path is inline: a free permit is taken with no await.
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
            await queued()
            try:
                return await inner(request)
            finally:
                state.release()

        def tune() -> None:
            nonlocal limit
            limit = self.max_in_flight

        state.tuners.add(concurrency_limit, tune)
        return mark_built(concurrency_limit, self, inner)

    async def _queued(self) -> None:
        """Wait in the queue for a permit handed over, or raise Overloaded.

        For a call (or a block) that found every permit in use. Cancelled
        while waiting, it leaves the queue holding nothing.
        """
        state = self._state
        waiters = state.waiters
        max_waiting = self.max_waiting
        if max_waiting is not None and len(waiters) - len(state.gone) >= max_waiting:
            self._reject("queue_full")
        waiter = new_waiter()
        waiters.append(waiter)
        max_wait = self.max_wait
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
            self._reject("max_wait")

    async def _acquire(self) -> str | int:
        """Take a permit (waiting if need be): what :meth:`_release` gives back.

        The steps of the service form, for the block form: in memory, a
        free permit or :meth:`_queued`; with a shared store,
        :meth:`_acquire_shared`.
        """
        store = self.store
        if store is not None:
            return await self._acquire_shared(store)
        state = self._state
        if state.in_flight < self.max_in_flight:
            state.in_flight += 1
        else:
            await self._queued()
        return _LOCAL

    async def _release(self, held: str | int) -> None:
        """Give back what :meth:`_acquire` (or :meth:`_acquire_shared`) took."""
        if held == _LOCAL:
            self._state.release()
            return
        shared = self._shared
        assert shared is not None
        shared.in_flight -= 1
        if held != _OPEN:
            assert self.store is not None
            assert isinstance(held, str)
            await self.store.release(held)

    def _shared_layer(
        self, inner: Service[Req, Res], store: ConcurrencyStore, /
    ) -> Service[Req, Res]:
        """The service for a shared store: a closure of its own (module docs)."""
        acquire = self._acquire_shared
        release = self._release

        async def concurrency_limit(request: Req, /) -> Res:
            held = await acquire(store)
            try:
                return await inner(request)
            finally:
                await release(held)

        return mark_built(concurrency_limit, self, inner)

    async def _acquire_shared(self, store: ConcurrencyStore) -> str | int:
        """Take a permit of the shared store, or what its failure policy gives.

        Returns the store permit's id, ``_OPEN`` (admitted by the "open"
        policy) or ``_LOCAL`` (a permit of the in-memory limit, by the
        "local" policy), for :meth:`_release`.
        """
        shared = self._shared
        assert shared is not None  # made with the store
        queue = shared.queue
        health = shared.health
        max_wait = self.max_wait
        max_waiting = math.inf if self.max_waiting is None else self.max_waiting
        store.start()
        permit = store.permit()
        seen: int | None = None
        recheck = math.inf  # the store's own bound
        if not queue.live():
            seen = store.changes
            version = shared.version
            try:
                granted, figure = await store.acquire(permit, self.max_in_flight)
            except StoreError as error:
                give_up = (
                    math.inf if max_wait is None else anyio.current_time() + max_wait
                )
                return await self._fallback(store, error, give_up)
            if health.failing_since is not None:
                health.answered()
            if granted:
                shared.in_flight += 1
                return permit
            recheck = figure
            if shared.version != version:
                # set_limit while it asked: as the head, ask again at
                # once (a count of changes is never -1)
                seen = -1
        if queue.live() + self._state.waiting() >= max_waiting:
            self._reject("queue_full")
        give_up = math.inf if max_wait is None else anyio.current_time() + max_wait
        failure: StoreError | None = None
        with anyio.CancelScope(deadline=give_up) as scope:
            failure = await self._wait_shared(store, permit, seen, recheck)
        if failure is not None:
            return await self._fallback(store, failure, give_up)
        if scope.cancelled_caught:
            self._reject("max_wait")
        shared.in_flight += 1
        return permit

    async def _fallback(
        self, store: ConcurrencyStore, error: StoreError, give_up: float
    ) -> str | int:
        """The store failed: its policy refuses, admits (_OPEN) or limits (_LOCAL)."""
        shared = self._shared
        assert shared is not None
        policy = shared.health.failed(error)
        if policy == "closed":
            shared.health.refuse(error)
        if policy == "local":
            await self._take_local(store, give_up)
            return _LOCAL
        shared.in_flight += 1
        return _OPEN

    async def _take_local(self, store: ConcurrencyStore, give_up: float) -> None:
        """The "local" policy: a permit of the in-memory limit (for this process)."""
        shared = self._shared
        assert shared is not None
        state = self._state
        if state.in_flight < state.limit:
            state.in_flight += 1
            return
        max_waiting = math.inf if self.max_waiting is None else self.max_waiting
        if shared.queue.live() + state.waiting() >= max_waiting:
            self._reject("queue_full")
        waiter = new_waiter()
        state.waiters.append(waiter)
        try:
            with anyio.CancelScope(deadline=give_up):
                await waiter.wait()
        except BaseException:
            state.leave(waiter)
            raise
        if not waiter.woken:
            state.leave(waiter)
            self._reject("max_wait")

    async def _wait_shared(
        self, store: ConcurrencyStore, permit: str, seen: int | None, recheck: float
    ) -> StoreError | None:
        """Queue in this process; as the head, ask the store until it grants.

        Returns None once the permit is granted, or the store's error (for
        the policy).
        """
        shared = self._shared
        assert shared is not None
        queue = shared.queue
        health = shared.health
        waiter = queue.join()
        try:
            await waiter.wait()
            if seen is None:
                seen, shared.handoff = shared.handoff, None
            while True:
                if seen is not None:
                    with anyio.CancelScope() as nap:
                        shared.nap = nap
                        await store.changed(seen, recheck)
                    shared.nap = None
                    if nap.cancelled_caught:
                        # set_limit raised the limit: ask now, unless our
                        # own scope was cancelled meanwhile.
                        await anyio.lowlevel.checkpoint_if_cancelled()
                seen = store.changes
                version = shared.version
                try:
                    granted, figure = await store.acquire(permit, self.max_in_flight)
                except StoreError as error:
                    return error
                if health.failing_since is not None:
                    health.answered()
                if granted:
                    # It took the last free permit: the next head waits
                    # for a release before it asks.
                    shared.handoff = seen if figure <= 0 else None
                    return None
                recheck = figure
                if shared.version != version:
                    seen = None  # set_limit while it asked: ask again now
        finally:
            queue.leave(waiter)

    def _reject(self, reason: Literal["queue_full", "max_wait"]) -> NoReturn:
        state = self._state
        state.rejected += 1
        if self._shared is not None:
            self._reject_shared(reason)
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

    def _reject_shared(self, reason: Literal["queue_full", "max_wait"]) -> NoReturn:
        # The rejection of a limit with a shared store: its own words.
        in_flight = self._in_flight()
        waiting = self._waiting()
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
                f"max_wait={self.max_wait:g} s ({self.max_in_flight} permits shared "
                f"across processes; here {in_flight} in flight, {waiting} waiting)"
            )
        else:
            message = (
                f"concurrency limit {self.name!r} is full: its {self.max_in_flight} "
                f"permits shared across processes are in use (here {in_flight} "
                f"in flight, {waiting} waiting)"
            )
        raise Overloaded(message, layer=self.name, reason=reason)


@final
class _PermitGuard:
    """``async with limit.guard():``: a permit held for the block."""

    __slots__ = ("_held", "_limit")

    def __init__(self, limit: ConcurrencyLimit) -> None:
        self._limit = limit
        self._held: str | int | None = None

    async def __aenter__(self) -> None:
        if self._held is not None:
            raise RuntimeError(
                f"ConcurrencyLimit {self._limit.name!r}: this guard is already "
                "entered; call guard() once per block"
            )
        self._held = await self._limit._acquire()  # pyright: ignore[reportPrivateUsage]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        assert held is not None
        await self._limit._release(held)  # pyright: ignore[reportPrivateUsage]
