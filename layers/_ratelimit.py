"""RateLimit: at most *rate* calls per *period*, by GCRA, waiting or rejecting.

The algorithm is GCRA, the generic cell rate algorithm (as in redis-cell).
With the emission interval ``T = period / rate`` and the tolerance
``tau = burst * T``, the state of a limit is one timestamp, the theoretical
arrival time ``tat`` (absent means "now"). A call of cost ``n`` at time
``now``::

    backlog = max(tat, now) - now       # the schedule's lead over the clock
    slack = tau - n * T                 # the lead this call may leave behind
    if backlog <= slack:  admitted, tat = max(tat, now) + n * T
    else:                 limited, retry_after = backlog - slack, state unchanged

This is the usual ``allow_at = max(tat, now) + n * T - tau <= now``, arranged
so that floating point cannot refuse a call on an idle limit by one rounding
step (``(now + T) - T`` may exceed ``now``).

There is no refill task and no window: the state is one float per key, the
schedule is smooth (no double burst at a window boundary), ``retry_after``
is exact, and weighted calls cost ``n * T``. A key whose ``tat`` has passed
holds nothing that "absent" would not, so it can be dropped at any time.

Waiting callers queue per key in arrival order. Only the first waiter (the
head) looks at the clock: it sleeps until its call fits, takes it, and hands
the head position to the next one. A newcomer that finds a queue joins it
even when the limit would admit it, so nobody is overtaken.

A store shared by several processes (:class:`SharedRateLimitStore`, such as
:class:`layers.redis.RedisRateLimitStore`) keeps the same GCRA state on a
server, on the server's clock; its ``take`` is a coroutine. ``layer()``
builds a service of its own for it (see ``_shared_service``), so the
in-memory services above keep their cost.
"""

from __future__ import annotations

import heapq
import inspect
import math
import numbers
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, MutableMapping
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
    cast,
    final,
)

import anyio
import anyio.lowlevel
import attrs

from . import events
from ._backend import Waiter, base_time, clock_source, new_waiter
from ._config import (
    callable_or_none,
    check_int,
    fail,
    finite_number,
    int_at_least,
    name_value,
    optional_positive_seconds,
)
from ._core import Service, mark_built
from ._deadline import DEADLINE
from ._errors import CallbackError, ConfigurationError, RateLimited, StoreError
from ._guard import GuardShorthand
from ._observable import Observation
from ._store import StoreHealth
from ._tuners import Tuners
from .events import Event, Level, report_limit_changes

__all__ = [
    "MemoryRateLimitStore",
    "RateLimit",
    "RateLimitRejected",
    "RateLimitStatistics",
    "RateLimitStore",
    "RateLimitWaited",
    "SharedRateLimitStore",
]

Req = TypeVar("Req")
Res = TypeVar("Res")

Mode = Literal["wait", "reject"]

DEFAULT_MAX_KEYS: Final = 10_000

# The most jitter a waiter of a shared limit adds to the wait it was told.
_JITTER: Final = 0.001

# What a shared store told a waiter: (base time of the reply, wait, units
# asked for, interval and tolerance sent); see RateLimit._due_after_change.
_Told = tuple[float, float, float, float, float]


# ------------------------------------------------------------------ validation


_positive_number = finite_number("a finite number > 0", lambda v: v > 0)
_positive_int = int_at_least(1, "an int >= 1")
_optional_positive_int = int_at_least(1, "an int >= 1", optional=True)
_optional_seconds = optional_positive_seconds
_optional_callable = callable_or_none("None or callable")
_name = name_value


def _mode(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ("wait", "reject"):
        fail(instance, attribute, value, "'wait' or 'reject'")


def _check_interval(owner: str, rate: float, period: float) -> float:
    """The emission interval ``period / rate``; raise if it is not a usable time."""
    interval = period / rate
    if not (math.isfinite(interval) and interval > 0):
        raise ConfigurationError(
            f"{owner}(rate={rate!r}, period={period!r}): period / rate must be a "
            f"finite number of seconds > 0, got {interval!r}"
        )
    return interval


def _check_lease(owner: str, burst: int, shared: SharedRateLimitStore) -> None:
    """Raise unless the shared store's lease fits in *burst*."""
    lease = shared.lease
    if lease is not None and lease > burst:
        raise ConfigurationError(
            f"{owner}(burst={burst!r}, store={shared!r}): the store's lease must "
            f"be <= burst (a lease is taken at once, as a burst), got "
            f"lease={lease!r}"
        )


def is_shared_store(value: object) -> bool:
    """Whether *value* is a :class:`SharedRateLimitStore`: its ``take`` is async."""
    return inspect.iscoroutinefunction(getattr(value, "take", None)) and all(
        hasattr(value, name) for name in ("name", "fail", "processes", "lease")
    )


def _store(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None or is_shared_store(value):
        return
    take = getattr(value, "take", None)
    if (
        callable(take)
        and not inspect.iscoroutinefunction(take)
        and callable(getattr(value, "peek", None))
    ):
        return
    fail(
        instance,
        attribute,
        value,
        "None or a RateLimitStore (an object with take() and peek() methods), "
        "or a SharedRateLimitStore (an async take() and the attributes name, "
        "fail, processes and lease, as layers.redis.RedisRateLimitStore)",
    )


# ----------------------------------------------------------------------- store


class RateLimitStore(Protocol):
    """Where a :class:`RateLimit` keeps its GCRA state: one timestamp per key.

    The layer owns the parameters of the limit and passes them on every call
    (the emission interval ``T`` and the tolerance ``tau``, both in
    seconds), so a store holds nothing but state. Both methods are
    synchronous and must be atomic for their key: the in-memory store is, as
    nothing else runs on the event loop while it computes; a store shared by
    several processes (Redis, say) does the same in one server-side step.

    A store serves one limit: do not share one between layers with
    different rates. For a limit without a key function the key is ``None``.
    A store may refuse a call for reasons of its own (the in-memory store
    refuses a new key while its table is full of live keys) by returning a
    wait, like a limited call.
    """

    def take(
        self,
        key: Hashable,
        cost: float,
        now: float,
        interval: float,
        tolerance: float,
        /,
    ) -> float:
        """Try to take *cost* units for *key* at time *now*.

        With ``base = max(tat, now)``, ``backlog = base - now`` and
        ``slack = tolerance - cost * interval``: if ``backlog <= slack``,
        store ``base + cost * interval`` and return ``0.0``; otherwise change
        nothing and return ``backlog - slack`` (seconds, > 0), the exact wait
        until the same call would be taken.
        """
        ...

    def peek(
        self,
        key: Hashable,
        cost: float,
        now: float,
        interval: float,
        tolerance: float,
        /,
    ) -> float:
        """Return what :meth:`take` would return, without taking anything.

        The waiting mode asks for the total cost of the queue plus a
        newcomer's, which may exceed the tolerance: the answer is still
        ``max(0, backlog - slack)``, the wait until the whole queue will
        have been served.
        """
        ...


class SharedRateLimitStore(Protocol):
    """A rate-limit store shared by several processes, on the store's own clock.

    :class:`layers.redis.RedisRateLimitStore` is one; implement this protocol
    to keep a :class:`RateLimit`'s state elsewhere (another database). A
    store whose ``take`` is a coroutine function is taken for a shared
    store; the layer then builds a service of its own for it, so the
    in-memory path keeps its cost.

    The store reads the time itself, on the server (``TIME`` in Redis), so
    the clocks of the processes may differ; the process passes no ``now``.
    The layer owns the limit's parameters (the emission interval ``T`` and
    the tolerance ``tau``, in seconds) and passes them on every call, as to
    a :class:`RateLimitStore`. One ``take`` must be atomic for its key
    (one server-side script).

    What the layer does around it: per-key FIFO queues within the process
    (only the first waiter of a queue calls ``take``); sleeping the wait
    that ``take`` returns (plus a small jitter) and asking again; refusing
    at once a wait beyond ``max_wait`` or the caller's deadline; the lease
    mode (permits taken by the batch and spent locally, see :attr:`lease`);
    and the failure policy (:attr:`fail`) when ``take`` raises
    :class:`~layers.StoreError`.
    """

    @property
    def name(self) -> str:
        """The store's name in the events of its failures and recoveries."""
        ...

    @property
    def fail(self) -> Literal["closed", "open", "local"]:
        """What the layer does with a call when ``take`` raises a StoreError.

        ``"closed"`` refuses it with :class:`~layers.StoreUnavailable`,
        ``"open"`` admits it, ``"local"`` decides it with a limit in this
        process, at ``rate / processes`` with the same burst.
        """
        ...

    @property
    def processes(self) -> int | None:
        """The number of processes expected to share the limit, for ``"local"``."""
        ...

    @property
    def lease(self) -> int | None:
        """The permits a process takes at once and spends locally, or ``None``.

        ``None`` asks the store for every call (exact).
        """
        ...

    async def take(
        self,
        key: Hashable,
        cost: float,
        interval: float,
        tolerance: float,
        /,
        *,
        up_to: float | None = None,
        waited: bool = False,
        patience: float = 0.0,
    ) -> tuple[float, float]:
        """Try to take *cost* units for *key*, on the store's clock.

        Returns ``(granted, wait)``. With ``now`` the store's time and
        ``backlog = max(tat, now) - now``: if ``backlog <= tolerance - cost
        * interval``, the call is admitted: it takes ``granted`` units
        (*cost*, or with *up_to* as many as fit up to *up_to*), stores
        ``max(tat, now) + granted * interval``, and returns ``(granted,
        0.0)``. Otherwise it changes no ``tat`` and returns ``(0.0, wait)``,
        the exact seconds until *cost* would fit (``backlog - (tolerance -
        cost * interval)``), as :meth:`RateLimitStore.take`.

        The keyword arguments are hints a simple store may ignore:

        * *waited*: the caller was told to wait by an earlier ``take`` and
          has waited; a store that hands out turns to waiters lets it in
          ahead of newcomers;
        * *patience*: the longest wait, in seconds, that the caller accepts
          (``0`` in reject mode); a store that hands out turns gives none to
          a caller whose wait exceeds it.

        A key the store cannot keep raises :class:`~layers.CallbackError`
        naming ``key``; a failure of the store raises
        :class:`~layers.StoreError`. A ``take`` cancelled while its command
        is in flight should take nothing, where the store can make sure of
        it.

        A store that hands out turns may also define ``async def
        forfeit(self, key)``: the layer calls it, in the waiter's task, when
        a call that waited for *key* leaves its queue (admitted, cancelled
        or refused), before the next waiter asks, so that the store can give
        back a turn it handed to that call and that the call did not come
        for (see
        :meth:`RedisRateLimitStore.forfeit
        <layers.redis.RedisRateLimitStore.forfeit>`). It must not raise
        (it runs while a cancellation is on its way) and should not wait
        long.
        """
        ...


@final
class MemoryRateLimitStore:
    """The default store: a table in memory, bounded to *max_keys* entries.

    An entry whose theoretical arrival time has passed says nothing that an
    absent entry would not, so it is dropped whenever room is needed, and
    the table never holds more than *max_keys* entries.

    **A full table.** When a new key arrives and every entry is still live,
    the new key is *limited*, exactly as if its own limit were exhausted:
    :meth:`take` returns the time until the earliest entry expires (a
    :class:`~layers.RateLimited` with that ``retry_after`` in reject mode, a
    wait in wait mode). A live entry is never evicted, so churning through
    new keys never resets anybody's limit: a full table only slows new keys
    down. Size *max_keys* for the number of keys active within one
    ``burst * period / rate``.

    Finding the earliest entry uses a heap with one item per update; it is
    rebuilt (dropping stale and expired items) when it grows past twice the
    table, so it stays below ``2 * max_keys + 64`` items and each operation
    costs ``O(log max_keys)`` amortized.

    Args:
        max_keys: The most entries the table holds, an int >= 1.
    """

    __slots__ = ("_heap", "_seq", "_tats", "max_keys", "table_full")

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        check_int("MemoryRateLimitStore", "max_keys", max_keys, 1, "an int >= 1")
        self.max_keys: int = max_keys
        """The most entries the table holds."""
        self.table_full: int = 0
        """How many times a new key was refused because the table was full."""
        self._tats: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = 0

    def __len__(self) -> int:
        """The number of entries in the table (some may have expired)."""
        return len(self._tats)

    def heap_size(self) -> int:
        """The number of items in the expiry heap (for tests of the bound)."""
        return len(self._heap)

    def take(
        self,
        key: Hashable,
        cost: float,
        now: float,
        interval: float,
        tolerance: float,
        /,
    ) -> float:
        """See :meth:`RateLimitStore.take`."""
        tats = self._tats
        tat = tats.get(key)
        if tat is None:
            if now + cost * interval <= now:
                return 0.0  # a free call on a new key: no entry, full or not
            if len(tats) >= self.max_keys:
                wait = self._make_room(now)
                if wait > 0.0:
                    self.table_full += 1
                    return wait
            tat = now
        elif tat < now:
            tat = now
        backlog = tat - now
        slack = tolerance - cost * interval
        if backlog > slack:
            return backlog - slack
        new_tat = tat + cost * interval
        if new_tat <= now:  # a free call on an idle key: nothing to remember
            tats.pop(key, None)
            return 0.0
        tats[key] = new_tat
        heap = self._heap
        heapq.heappush(heap, (new_tat, self._seq, key))
        self._seq += 1
        if len(heap) > 2 * len(tats) + 64:
            self._rebuild(now)
        return 0.0

    def peek(
        self,
        key: Hashable,
        cost: float,
        now: float,
        interval: float,
        tolerance: float,
        /,
    ) -> float:
        """See :meth:`RateLimitStore.peek`."""
        tats = self._tats
        tat = tats.get(key)
        room = 0.0
        if tat is None:
            if now + cost * interval <= now:
                return 0.0  # as take(): a free call needs no entry
            if len(tats) >= self.max_keys:
                room = self._make_room(now)
            tat = now + room
        elif tat < now:
            tat = now
        wait = (tat - now) - (tolerance - cost * interval)
        return wait if wait > room else room

    def _make_room(self, now: float) -> float:
        """Drop expired entries; return 0 if there is room, else the wait for it."""
        tats = self._tats
        heap = self._heap
        while heap:
            tat, _, key = heap[0]
            if tats.get(key) != tat:  # stale: the key was updated or dropped
                heapq.heappop(heap)
            elif tat <= now:  # expired
                heapq.heappop(heap)
                del tats[key]
            else:
                break
        if len(tats) < self.max_keys:
            return 0.0
        return heap[0][0] - now

    def _rebuild(self, now: float) -> None:
        tats = self._tats
        for key in [key for key, tat in tats.items() if tat <= now]:
            del tats[key]
        heap = [(tat, seq, key) for seq, (key, tat) in enumerate(tats.items())]
        heapq.heapify(heap)
        self._heap = heap
        self._seq = len(heap)

    def __repr__(self) -> str:
        return f"MemoryRateLimitStore(max_keys={self.max_keys}, entries={len(self)})"


@final
class _Cell:
    """The store of a limit without a key: one timestamp (the key is ignored).

    ``tat`` is what the success path reads. While anyone waits in the
    limit's queue it is ``+inf``, so that no newcomer gets past the success
    path's test, and the real value lives in ``held``.
    """

    __slots__ = ("held", "tat", "waiting")

    def __init__(self) -> None:
        self.tat = -math.inf
        self.held = -math.inf
        self.waiting = 0

    def block(self) -> None:
        """A caller joins the queue."""
        self.waiting += 1
        if self.waiting == 1:
            self.held = self.tat
            self.tat = math.inf

    def unblock(self) -> None:
        """A caller leaves the queue."""
        self.waiting -= 1
        if not self.waiting:
            self.tat = self.held

    def take(
        self,
        key: Hashable,
        cost: float,
        now: float,
        interval: float,
        tolerance: float,
        /,
    ) -> float:
        tat = self.held if self.waiting else self.tat
        if tat < now:
            tat = now
        backlog = tat - now
        slack = tolerance - cost * interval
        if backlog > slack:
            return backlog - slack
        if self.waiting:
            self.held = tat + cost * interval
        else:
            self.tat = tat + cost * interval
        return 0.0

    def peek(
        self,
        key: Hashable,
        cost: float,
        now: float,
        interval: float,
        tolerance: float,
        /,
    ) -> float:
        tat = self.held if self.waiting else self.tat
        if tat < now:
            tat = now
        wait = (tat - now) - (tolerance - cost * interval)
        return wait if wait > 0.0 else 0.0


# ---------------------------------------------------------------------- events


@attrs.frozen(kw_only=True)
class RateLimitRejected(Event):
    """A :class:`~layers.RateLimit` refused a call with :class:`~layers.RateLimited`.

    Attributes:
        retry_after: The ``retry_after`` of the error: seconds until the
            same call would be admitted (``None`` for a cost beyond the burst,
            which is never admitted).
        cost: The call's cost.
        reason: ``"limited"`` (reject mode, no capacity now), ``"max_wait"``
            (wait mode, the wait would exceed ``max_wait``),
            ``"deadline"`` (the wait would outlast the deadline in force,
            see :func:`~layers.current_deadline`) or ``"cost"`` (the cost
            exceeds the burst).
    """

    event: ClassVar[str] = "rate_limit_rejected"
    kind: ClassVar[str] = "rate_limit"
    level: ClassVar[Level] = "warning"

    retry_after: float | None
    cost: float
    reason: Literal["limited", "max_wait", "deadline", "cost"]


@attrs.frozen(kw_only=True)
class RateLimitWaited(Event):
    """A call waited in a :class:`~layers.RateLimit`'s queue, then went through.

    Attributes:
        waited: Seconds from its arrival to its admission.
        cost: The call's cost.
    """

    event: ClassVar[str] = "rate_limit_waited"
    kind: ClassVar[str] = "rate_limit"
    level: ClassVar[Level] = "debug"

    waited: float
    cost: float


@final
@attrs.frozen(kw_only=True)
class RateLimitStatistics:
    """A snapshot of a :class:`RateLimit` (see :meth:`RateLimit.statistics`).

    Attributes:
        waiting: Calls waiting in the queues now.
        waited: Calls that had to wait and were then admitted, so far.
        rejected: Calls refused with :class:`~layers.RateLimited`, so far.
        keys: Entries in the in-memory table of keys (``None`` without a
            key function or with a custom store).
        table_full: How many times a new key was refused (or made to
            wait) because the in-memory table was full of live keys (``0``
            without a key function or with a custom store).
        store_fallbacks: Calls decided by the failure policy of a shared
            store (:class:`SharedRateLimitStore`) because the store failed,
            so far (``0`` in memory).
        rate: The limit's rate now (calls per *period*; see
            :meth:`RateLimit.set_limit`).
        period: Its period now, in seconds.
        burst: Its burst now.
    """

    waiting: int
    waited: int
    rejected: int
    keys: int | None
    table_full: int
    store_fallbacks: int = 0
    rate: float
    period: float
    burst: int


# ----------------------------------------------------------------------- layer


@final
class _Waiter:
    __slots__ = ("by_deadline", "cost", "limit", "paid", "parked", "refused")

    def __init__(self, cost: float, limit: float, by_deadline: bool) -> None:
        self.parked: Waiter | None = None  # only for a waiter behind the head
        self.cost = cost
        # Admitted from a lease's permits by the head that took the lease (it
        # left the queue then): it has nothing more to do.
        self.paid = False
        # The latest base time it may be admitted, and whether the deadline
        # (rather than max_wait) sets it: for set_limit's re-evaluation.
        self.limit = limit
        self.by_deadline = by_deadline
        # Set by set_limit for a waiter behind the head that can no longer
        # be admitted in time: (retry_after, reason); it is woken to leave.
        self.refused: (
            tuple[float | None, Literal["max_wait", "deadline", "cost"]] | None
        ) = None


def _spend(
    balances: MutableMapping[Hashable, float], key: Hashable, cost: float
) -> bool:
    """Spend *cost* of the lease's permits left for *key*, if they cover it."""
    left = balances.get(key)
    if left is not None and left >= cost:
        balances[key] = left - cost
        return True
    return False


@final
class _Queue:
    __slots__ = ("cost", "due", "head_cost", "nap", "waiters")

    def __init__(self) -> None:
        self.waiters: OrderedDict[_Waiter, None] = OrderedDict()
        self.cost = 0.0
        # The head's sleep, while it sleeps: set_limit cancels it, so that
        # the head looks again at once with the new parameters.
        self.nap: anyio.CancelScope | None = None
        # With a shared store: when the head asks the store next (base
        # time), and its cost, for a newcomer's estimate of its wait.
        self.due = -math.inf
        self.head_cost = 0.0


@final
class _State:
    """The mutable part of a RateLimit, shared by every service it wraps."""

    __slots__ = (
        "balances",
        "cell",
        "health",
        "interval",
        "local_interval",
        "local_tolerance",
        "queues",
        "rejected",
        "shared",
        "store",
        "tolerance",
        "tuners",
        "version",
        "waited",
        "waiting",
    )

    def __init__(
        self,
        store: RateLimitStore | None,
        keyed: bool,
        max_keys: int,
        interval: float,
        tolerance: float,
    ) -> None:
        self.interval = interval
        """The emission interval ``T = period / rate``, computed once."""
        self.tolerance = tolerance
        """The tolerance ``tau = burst * T``, computed once."""
        self.cell: _Cell | None = None
        if store is None:
            if keyed:
                store = MemoryRateLimitStore(max_keys)
            else:
                store = self.cell = _Cell()
        self.store: RateLimitStore = store
        self.queues: dict[Hashable, _Queue] = {}
        self.waiting = 0
        self.waited = 0
        self.rejected = 0
        # With a shared store (see RateLimit.__attrs_post_init__); self.store
        # is then the in-memory limit of fail="local".
        self.shared: SharedRateLimitStore | None = None
        self.health: StoreHealth | None = None
        self.local_interval = interval
        self.local_tolerance = tolerance
        self.balances: OrderedDict[Hashable, float] = OrderedDict()
        # For each service built (weakly), the function that makes it read
        # the limit's parameters again: its closure holds them, so that its
        # success path reads no attribute (see RateLimit.set_limit).
        self.tuners = Tuners()
        self.version = 0
        """How often set_limit changed the limit (a waiter asking asks again)."""


@final
@attrs.frozen(eq=False)
class RateLimit(GuardShorthand):
    """Admit at most *rate* calls per *period*, with an explicit *burst*.

    The limit is GCRA (see the module documentation of
    ``layers._ratelimit`` or the how-to guide): calls are spaced by the
    emission interval ``T = period / rate``, and up to *burst* calls may go
    through at once when the limit has been idle. With the default
    ``burst=1`` there is no burst at all: admitted calls are at least ``T``
    apart. Over any stretch of time ``d`` at most ``burst + d / T`` calls
    are admitted. The limit trusts the event loop's clock: calls that read
    the same instant share the burst, and a late wake-up is not made up
    for, so a fast limit admits less than its rate unless *burst* covers
    the loop's granularity (about ``1 + rate x 2 ms``; see the how-to guide,
    "Fast limits and the event loop's clock").

    **Wait mode** (the default): a call that does not fit waits until it
    does, in arrival order per key; a newcomer never overtakes a waiting
    call, even when it would fit. A call whose wait would outlast the
    deadline in force (:func:`~layers.current_deadline`, set by an enclosing
    :class:`~layers.Timeout`) is refused at once with
    :class:`~layers.RateLimited`, with or without *max_wait*, since waiting
    could only end in :class:`~layers.Elapsed`; with *max_wait*, so is a
    call whose wait would exceed it. Either way ``retry_after`` is the wait
    it would have had. A call cancelled while it waits leaves the queue and
    takes nothing.

    **Reject mode**: a call that does not fit raises
    :class:`~layers.RateLimited` at once, without calling the inner service;
    its ``retry_after`` is exact: the same call made that many seconds later
    is admitted (if nothing else took the capacity meanwhile).

    **Weighted calls**: *cost* maps a request to its cost in calls (a number
    >= 0; the default costs 1). A call of cost ``n`` counts as ``n`` calls.
    A call of cost 0 is free: it is admitted at once in either mode (even
    behind a queue or with the table of keys full) and leaves no entry.
    A cost greater than *burst* can never be admitted and raises
    :class:`~layers.RateLimited` with ``retry_after=None``; a cost that is
    negative, not a finite number, or a bool raises
    :class:`~layers.CallbackError`.

    **Per-key limits**: *key* maps a request to a hashable key (a tenant, a
    host); each key has its own limit and its own queue. The state lives in
    an in-memory table bounded to *max_keys* entries; see
    :class:`MemoryRateLimitStore` for what a new key meets when the table is
    full of live keys (it is limited until the earliest entry expires; a
    live entry is never evicted, so churning keys cannot bypass a limit).

    The state lives in this layer object: every service it wraps shares one
    limit (and one table of keys). Build one ``RateLimit`` per quota.

    **As a block**: ``async with limit:`` (or ``async with
    limit.guard(key=..., cost=...)``) admits the block as one call of the
    same limit: see :meth:`guard`.

    **Shared stores**: with a :class:`SharedRateLimitStore` (such as
    :class:`layers.redis.RedisRateLimitStore`) the limit holds for every
    process that uses the same store, with the same options and meaning.
    Each call asks the store (a Redis store sends the calls that arrive
    while one of its commands is in flight together, in one round trip)
    unless the store leases permits; in wait mode, calls queue per key
    within the process and only the first of a queue asks the store; when
    the store fails, its failure policy decides the call (counted in
    ``statistics().store_fallbacks``).

    Args:
        rate: Calls admitted per *period*, a finite number > 0.
        period: The period in seconds, a finite number > 0 (default 1).
        burst: How many calls may go through at once after an idle spell,
            an int >= 1 (default 1: none beyond the schedule).
        mode: ``"wait"`` (the default) or ``"reject"``.
        max_wait: In wait mode, the longest a call may wait, in seconds
            (default ``None``: no bound). Not allowed in reject mode.
        key: A function from the request to the key of its limit, a
            hashable value (default ``None``: one limit for all calls). An
            unhashable key raises :class:`~layers.CallbackError` at call time.
        max_keys: With *key*, the most keys the in-memory table holds, an
            int >= 1 (default 10,000). Not allowed without *key*, nor with a
            custom *store*.
        cost: A function from the request to its cost (default: 1 each).
        store: Where the state lives (default: in memory). See
            :class:`RateLimitStore`; for a limit shared by several
            processes, a :class:`SharedRateLimitStore` such as
            :class:`layers.redis.RedisRateLimitStore` (see "Shared stores"
            above).
        name: A name for events and errors (default ``"rate_limit"``).

    Raises:
        layers.ConfigurationError: For any invalid value, naming it.

    Example:
        >>> import anyio, layers
        >>> async def api(request: int) -> int:
        ...     return request
        >>> limit = layers.RateLimit(2, period=1.0, mode="reject")
        >>> svc = limit.layer(api)
        >>> async def main() -> None:
        ...     print(await svc(1))
        ...     try:
        ...         await svc(2)
        ...     except layers.RateLimited as error:
        ...         print(f"limited, retry after {error.retry_after:.2f} s")
        >>> anyio.run(main)
        1
        limited, retry after 0.50 s
    """

    rate: float = attrs.field(validator=_positive_number)
    period: float = attrs.field(default=1.0, validator=_positive_number)
    burst: int = attrs.field(default=1, kw_only=True, validator=_positive_int)
    mode: Mode = attrs.field(default="wait", kw_only=True, validator=_mode)
    max_wait: float | None = attrs.field(
        default=None, kw_only=True, validator=_optional_seconds
    )
    key: Callable[[Any], Hashable] | None = attrs.field(
        default=None, kw_only=True, validator=_optional_callable
    )
    max_keys: int | None = attrs.field(
        default=None, kw_only=True, validator=_optional_positive_int
    )
    cost: Callable[[Any], float] | None = attrs.field(
        default=None, kw_only=True, validator=_optional_callable
    )
    store: RateLimitStore | SharedRateLimitStore | None = attrs.field(
        default=None, kw_only=True, validator=_store
    )
    name: str = attrs.field(default="rate_limit", kw_only=True, validator=_name)
    _state: _State = attrs.field(init=False, repr=False)
    kind = "rate_limit"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def __attrs_post_init__(self) -> None:
        interval = _check_interval("RateLimit", self.rate, self.period)
        if self.mode == "reject" and self.max_wait is not None:
            raise ConfigurationError(
                f"RateLimit(max_wait={self.max_wait!r}): max_wait applies to "
                "mode='wait' only, got it with mode='reject'"
            )
        if self.store is not None and self.max_keys is not None:
            raise ConfigurationError(
                f"RateLimit(max_keys={self.max_keys!r}): max_keys sizes the "
                "default in-memory store; with store= given, it must be None "
                f"(configure your store instead), got {self.max_keys!r}"
            )
        if self.key is None and self.max_keys is not None:
            raise ConfigurationError(
                f"RateLimit(max_keys={self.max_keys!r}, key=None): max_keys sizes "
                "the table of keys that key= makes, so without key it means "
                "nothing; give key= a function from the request to its key, or "
                "leave max_keys out"
            )
        max_keys = DEFAULT_MAX_KEYS if self.max_keys is None else self.max_keys
        store = self.store
        shared: SharedRateLimitStore | None = None
        if store is not None and is_shared_store(store):
            shared = cast("SharedRateLimitStore", store)
            # the in-memory limit of fail="local", keyed or not
            store = MemoryRateLimitStore(DEFAULT_MAX_KEYS)
        state = _State(
            cast("RateLimitStore | None", store),
            self.key is not None,
            max_keys,
            interval,
            self.burst * interval,
        )
        if shared is not None:
            self._share(state, shared)
        object.__setattr__(self, "_state", state)

    def _share(self, state: _State, shared: SharedRateLimitStore) -> None:
        """Set *state* up for a shared store: its health and local fallback."""
        _check_lease("RateLimit", self.burst, shared)
        processes = shared.processes or 1
        state.shared = shared
        state.health = StoreHealth(self.name, shared.name, shared.fail)
        state.local_interval = state.interval * processes
        state.local_tolerance = self.burst * state.local_interval

    @property
    def interval(self) -> float:
        """The emission interval ``T = period / rate``, in seconds."""
        return self._state.interval

    @property
    def tolerance(self) -> float:
        """The GCRA tolerance ``tau = burst * T``, in seconds."""
        return self._state.tolerance

    def statistics(self) -> RateLimitStatistics:
        """A snapshot of the counters (see :class:`RateLimitStatistics`)."""
        state = self._state
        store = state.store
        keys: int | None = None
        table_full = 0
        health = state.health
        if health is None and isinstance(store, MemoryRateLimitStore):
            keys = len(store)
            table_full = store.table_full
        return RateLimitStatistics(
            waiting=state.waiting,
            waited=state.waited,
            rejected=state.rejected,
            keys=keys,
            table_full=table_full,
            store_fallbacks=0 if health is None else health.fallbacks,
            rate=self.rate,
            period=self.period,
            burst=self.burst,
        )

    def observe(self) -> Observation:
        """The limit for health checks and metrics (:class:`~layers.Observable`).

        Always ``HEALTHY`` itself (a health check turns ``degraded`` on
        refusals); ``waiting`` and ``rejected`` as in :meth:`statistics`,
        and the figures ``keys`` (``None`` without a key function or with a
        custom store), ``store_fallbacks`` (calls decided by a shared
        store's failure policy; ``0`` in memory), and the limit now:
        ``rate``, ``period`` and ``burst`` (see :meth:`set_limit`).
        """
        stats = self.statistics()
        return Observation(
            waiting=stats.waiting,
            rejected=stats.rejected,
            figures={
                "keys": stats.keys,
                "store_fallbacks": stats.store_fallbacks,
                "rate": stats.rate,
                "period": stats.period,
                "burst": stats.burst,
            },
        )

    def set_limit(
        self,
        rate: float | None = None,
        period: float | None = None,
        *,
        burst: int | None = None,
    ) -> None:
        """Change the rate, the period and/or the burst while the limit is in use.

        An argument left ``None`` keeps its value; each is checked as the
        constructor checks it. Every key of a per-key limit gets the new
        parameters. The change takes effect at once, costs ``O(waiters)``
        at most and starts no task; call it from the event loop's thread
        (a task, or a callback on the loop), like the limit's calls. A
        :class:`~layers.events.LimitChanged` event records each parameter
        that changed (a call that changes nothing does nothing);
        :meth:`statistics` and :meth:`observe` show the values in force.

        **The time already booked is kept.** A key's state is one
        timestamp, ``tat``: the time the calls admitted so far are booked
        up to, whatever their price. ``set_limit`` keeps it and prices the
        calls from now on: with ``T = period / rate`` and ``tau = burst x
        T`` the new values, a call of cost ``n`` is admitted once
        ``tat - now <= tau - n x T``, and books ``n x T``. So a caller sees:

        * **after raising the rate**: admitted calls are spaced by the new,
          shorter interval from the first one on. Time booked at the old
          price is not given back: with ``burst=1`` the next call goes at
          ``tat``, as it would have (a limit of 1/s raised to 10/s half a
          second after a call admits the next call at 1 s, then at 1.1,
          1.2...). With a larger burst the lead the limit allows, ``burst x
          T`` seconds, shrinks with ``T``: a call may wait until up to
          ``tat`` (never later, and ``tat`` is at most ``burst`` old
          intervals away).
        * **after lowering the rate**: calls are spaced by the new, longer
          interval. The booked time counts as it is, which at the new price
          is fewer calls: the next call waits until ``tat - (burst - n) x
          T``, and an idle limit keeps its full burst. Over any stretch of
          time ``d`` that starts at the change, at most ``burst + d / T``
          calls are admitted (the calls before the change are not counted
          again).
        * **burst**: raising it lets that many more calls through at once
          (the lead allowed grows), lowering it holds back calls until the
          lead is within the new one. A call whose cost exceeds the new
          burst can never be admitted: a waiting one is refused
          (:class:`~layers.RateLimited`, ``reason="cost"``) at once.

        **Waiting calls are re-evaluated at once**: the first waiter of
        each key, asleep until its turn under the old parameters, wakes and
        computes its wait again; the others keep their order (FIFO) behind
        it. A waiter that can no longer be admitted within its ``max_wait``
        or the deadline in force is refused at once with
        :class:`~layers.RateLimited` (``retry_after``: its wait under the
        new parameters), as a newcomer would be. A call cancelled during
        or after the change takes nothing.

        **A shared store** (:class:`SharedRateLimitStore`, such as
        :class:`layers.redis.RedisRateLimitStore`): the store keeps the
        ``tat``; each call sends this process's interval and tolerance, so
        the change applies to this process's calls from their next request,
        and to no other process. Change the limit in every process that
        shares it (each one prices its own calls meanwhile). A waiter asleep
        on the old parameters works its new wait out from what the store
        told it, with no round trip; a store that gives waiters turns (the
        Redis store) keeps the turn it gave at the old price, so the calls
        queued behind that waiter may wait for its end (one old interval
        per unit of its cost) before the new spacing applies. In lease
        mode, the permits left of a lease taken before the change are kept
        and spent (they were booked in the store at the old price); the
        next lease is taken at the new one. A burst below the store's
        ``lease`` is refused. The local limit of ``fail="local"`` follows
        (``rate / processes``).

        Args:
            rate: The new rate (calls per *period*), a finite number > 0.
            period: The new period in seconds, a finite number > 0.
            burst: The new burst, an int >= 1.

        Raises:
            layers.ConfigurationError: For an invalid value, naming it; the
                limit is left unchanged.

        Example:
            >>> import layers
            >>> limit = layers.RateLimit(10, burst=5)
            >>> limit.set_limit(20)
            >>> limit.set_limit(burst=10)
            >>> (limit.rate, limit.period, limit.burst, limit.interval)
            (20, 1.0, 10, 0.05)
        """
        owner = "RateLimit.set_limit"
        if rate is not None:
            _positive_number.check(owner, "rate", rate)
        else:
            rate = self.rate
        if period is not None:
            _positive_number.check(owner, "period", period)
        else:
            period = self.period
        if burst is not None:
            _positive_int.check(owner, "burst", burst)
        else:
            burst = self.burst
        interval = _check_interval(owner, rate, period)
        state = self._state
        if state.shared is not None:
            _check_lease(owner, burst, state.shared)
        changes = [
            ("rate", self.rate, rate),
            ("period", self.period, period),
            ("burst", self.burst, burst),
        ]
        if all(old == new for _, old, new in changes):
            return
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "period", period)
        object.__setattr__(self, "burst", burst)
        state.interval = interval
        state.tolerance = burst * interval
        if state.shared is not None:
            state.local_interval = interval * (state.shared.processes or 1)
            state.local_tolerance = burst * state.local_interval
        state.version += 1
        state.tuners.tune()
        if state.queues:
            self._reevaluate()
        report_limit_changes(self.name, self.kind, changes)

    def _reevaluate(self) -> None:
        """After set_limit: wake each queue's head, refuse waiters out of time.

        The head (asleep until its turn under the old parameters) looks
        again at once. Behind it, each waiter's wait is estimated as a
        newcomer's would be (the queue ahead of it and its own cost); one
        that can no longer be admitted by its limit (or whose cost exceeds
        the burst) is woken to leave, and the waiters behind it move up.
        """
        state = self._state
        now = base_time()
        shared = state.shared is not None
        interval = state.interval
        tolerance = state.tolerance
        store = state.store
        burst = self.burst
        for key, queue in state.queues.items():
            nap = queue.nap
            if nap is not None:
                nap.cancel()
            ahead = 0.0
            for position, waiter in enumerate(queue.waiters):
                if waiter.refused is not None:
                    continue
                ahead += waiter.cost
                if not position:
                    continue  # the head decides for itself, as it wakes
                parked = waiter.parked
                assert parked is not None
                if waiter.cost > burst:
                    waiter.refused = (None, "cost")
                else:
                    if shared:
                        # As _shared_queued's estimate for a newcomer, the
                        # head asking now: a lower bound.
                        wait = (ahead - queue.head_cost) * interval
                    else:
                        wait = store.peek(key, ahead, now, interval, tolerance)
                    if now + wait <= waiter.limit:
                        continue
                    waiter.refused = (
                        wait,
                        "deadline" if waiter.by_deadline else "max_wait",
                    )
                ahead -= waiter.cost
                parked.wake()

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner* in this limit (shared with every service it wraps)."""
        state = self._state
        if state.shared is not None:
            return mark_built(self._shared_service(inner), self, inner)
        interval = state.interval
        tolerance = state.tolerance
        cell = state.cell
        if cell is not None and self.cost is None and self.key is None:
            # The common case, kept to one GCRA update inline: no key, cost 1,
            # the in-memory cell (whose tat is +inf while anyone waits).
            # _slow(now) itself is the slow path: its defaults are this
            # case's, so a queued call runs no coroutine but _slow's.
            service, retune = _cell_service(inner, cell, state, self._slow)
            state.tuners.add(service, retune)
            return mark_built(service, self, inner)

        key_of = self.key
        cost_of = self.cost
        store = state.store
        queues = state.queues
        general_slow = self._slow
        check_cost = self._check_cost
        bad_key = self._bad_key
        plain = (int, float)
        clock = base_time
        burst = self.burst

        async def keyed_rate_limit(request: Req, /) -> Res:
            if key_of is None:
                key = None
            else:
                key = key_of(request)
                try:
                    hash(key)
                except TypeError:
                    bad_key(key)
            if cost_of is None:
                cost: float = 1
            else:
                cost = cost_of(request)
                # One exact type test first: a comparison alone would admit
                # True as 1 and raise a bare TypeError for a non-number.
                if type(cost) not in plain or not 0 < cost <= burst:
                    cost = check_cost(cost)
                    if not cost:  # free: it takes nothing, so it never waits
                        return await inner(request)
            now = clock()
            wait = None
            if not queues or key not in queues:
                wait = store.take(key, cost, now, interval, tolerance)
                if not wait:
                    return await inner(request)
            await general_slow(now, key, cost, wait)
            return await inner(request)

        def tune() -> None:
            nonlocal interval, tolerance, burst
            interval = state.interval
            tolerance = state.tolerance
            burst = self.burst

        state.tuners.add(keyed_rate_limit, tune)
        return mark_built(keyed_rate_limit, self, inner)

    # -- the block form -----------------------------------------------------------

    def guard(
        self, key: Hashable = None, cost: float = 1
    ) -> AbstractAsyncContextManager[None]:
        """The block form: admit the block as one call (``async with limit:`` too).

        Entering takes *cost* of this limit's capacity under *key*, as a
        call of the service form does, in the same state (the same queue,
        statistics and events): in wait mode it waits its turn (*max_wait*
        and the deadline in force apply), in reject mode it raises
        :class:`~layers.RateLimited` at once, and the block does not run.
        A shared store works the same. Cancelled while it waits, it takes
        nothing. Leaving gives nothing back: a rate limit counts starts.

        Args:
            key: The key of the block's limit, the value itself (the
                layer's ``key=`` function maps a request, and a block has
                none). Required when the limit was made with ``key=``,
                refused otherwise.
            cost: The block's cost in calls, a finite number >= 0 (0 is
                free), as the layer's ``cost=`` function would return. A
                cost beyond *burst* raises :class:`~layers.RateLimited`
                on entry, as in the service form.

        Raises:
            layers.ConfigurationError: A key missing for a keyed limit,
                given to an unkeyed one, or unhashable; a cost that is not
                a finite number >= 0.

        Example:
            >>> import anyio, layers
            >>> limit = layers.RateLimit(2, key=lambda request: request, mode="reject")
            >>> async def main() -> None:
            ...     async with limit.guard(key="alice"):
            ...         print("alice in")
            ...     try:
            ...         async with limit.guard(key="alice"):
            ...             print("never runs")
            ...     except layers.RateLimited as error:
            ...         print(f"alice limited, retry after {error.retry_after:.2f} s")
            ...     async with limit.guard(key="bob"):
            ...         print("bob in")
            >>> anyio.run(main)
            alice in
            alice limited, retry after 0.50 s
            bob in
        """
        if self.key is None:
            if key is not None:
                raise ConfigurationError(
                    f"RateLimit.guard(key={key!r}): rate limit {self.name!r} has "
                    "no key function (key=), so a block takes no key; leave "
                    "key out"
                )
        elif key is None:
            raise ConfigurationError(
                f"RateLimit.guard(key=None): rate limit {self.name!r} is keyed "
                "(made with key=): give the block's key, e.g. "
                "guard(key=tenant)"
            )
        else:
            try:
                hash(key)
            except TypeError:
                # The value's type only: the key may hold a payload.
                raise ConfigurationError(
                    f"RateLimit.guard(key=<{type(key).__name__}>): key must be "
                    f"hashable, got an unhashable {type(key).__name__}"
                ) from None
        given: object = cost  # checked: the caller's value
        if (
            isinstance(given, bool)
            or not isinstance(given, numbers.Real)
            or not (isinstance(given, numbers.Integral) or math.isfinite(given))
            or given < 0
        ):
            raise ConfigurationError(
                f"RateLimit.guard(cost={cost!r}): cost must be a finite number "
                f">= 0, got {cost!r}"
            )
        return _RateGuard(self, key, cost)

    async def _admit(self, key: Hashable, cost: float) -> None:
        """Admit one call (or block) of *cost* under *key*, or raise.

        The steps of the service forms once the key and cost are known
        (*cost* is a checked number): a cost beyond the burst is refused,
        a free one admitted, the others take from the store at once or go
        the slow path (:meth:`_slow`, or the shared store's own steps).
        """
        if cost > self.burst:
            self._check_cost(cost)  # raises RateLimited
        if not cost:
            return
        state = self._state
        if state.shared is not None:
            await self._admit_shared(key, cost)
            return
        now = base_time()
        wait = None
        queues = state.queues
        if not queues or key not in queues:
            wait = state.store.take(key, cost, now, state.interval, state.tolerance)
            if not wait:
                return
        await self._slow(now, key, cost, wait)

    # -- off the success path --------------------------------------------------

    def _bad_key(self, key: object) -> NoReturn:
        """Raise the CallbackError for a key function's unhashable result."""
        # The value's type only: the key may hold a payload.
        raise CallbackError(
            f"RateLimit {self.name!r}: the key function (key=) must return a "
            f"hashable value, got an unhashable {type(key).__name__}",
            layer=self.name,
            parameter="key",
        ) from None

    def _check_cost(self, cost: object) -> float:
        """Check a cost that is not a plain int or float in ``(0, burst]``.

        Another real number (``numpy.int64``, ``Fraction``, a subclass of
        ``float``) in range, or zero, is returned as it is; a bool, a
        non-number, a negative or non-finite number raises
        :class:`~layers.CallbackError`; a cost beyond the burst raises
        :class:`~layers.RateLimited`.
        """
        if (
            isinstance(cost, bool)
            or not isinstance(cost, numbers.Real)
            or not (isinstance(cost, numbers.Integral) or math.isfinite(cost))
            or cost < 0
        ):
            raise CallbackError(
                f"RateLimit {self.name!r}: the cost function must return a finite "
                f"number >= 0, got {cost!r}",
                layer=self.name,
                parameter="cost",
            )
        real = cast("float", cost)
        if real > self.burst:
            self._reject_cost(real)
        return real

    def _reject_cost(self, cost: float) -> NoReturn:
        """Refuse a call whose cost exceeds the burst: it can never be admitted."""
        self._reject(
            None,
            cost,
            "cost",
            f"rate limit {self.name!r}: cost {cost!r} exceeds the burst "
            f"({self.burst}); such a call can never be admitted",
        )

    def _refuse(self, waiter: _Waiter) -> NoReturn:
        """Refuse a waiter that set_limit found could no longer be admitted."""
        assert waiter.refused is not None
        retry_after, reason = waiter.refused
        if reason == "cost":
            self._reject_cost(waiter.cost)
        self._reject(retry_after, waiter.cost, reason)

    def _reject(
        self,
        retry_after: float | None,
        cost: float,
        reason: Literal["limited", "max_wait", "deadline", "cost"],
        message: str = "",
    ) -> NoReturn:
        self._state.rejected += 1
        if events.STATE.sinks:
            events.emit(
                RateLimitRejected(
                    layer=self.name, retry_after=retry_after, cost=cost, reason=reason
                )
            )
        if not message:
            message = (
                f"rate limit {self.name!r} exceeded; retry after {retry_after:.6g} s"
            )
        raise RateLimited(
            message, retry_after=retry_after, layer=self.name, reason=reason
        )

    async def _slow(
        self,
        now: float,
        key: Hashable = None,
        cost: float = 1,
        wait: float | None = None,
    ) -> None:
        """Admit a call that the success path could not: reject, or queue.

        *wait* is what the success path's ``take`` returned, or ``None`` if
        it did not try (someone is queued, or it is the inline cell, called
        as ``_slow(now)``).
        """
        state = self._state
        if wait is None:
            # With nobody queued this is the inline cell, whose own test (the
            # same as the cell's take, at the same now) has just refused the
            # call: peek gives that refusal's wait and takes nothing.
            queue = state.queues.get(key)
            ahead = 0.0 if queue is None else queue.cost
            wait = state.store.peek(
                key, ahead + cost, now, state.interval, state.tolerance
            )
        if self.mode == "reject":
            self._reject(wait, cost, "limited")
        limit = math.inf if self.max_wait is None else now + self.max_wait
        deadline = DEADLINE.get()
        if deadline is not None:
            # the deadline is on the loop's clock, the schedule on the base time
            deadline -= clock_source()[0]
            if deadline < limit:
                limit = deadline
        by_deadline = limit == deadline
        if now + wait > limit:
            self._reject(wait, cost, "deadline" if by_deadline else "max_wait")
        await self._wait(key, cost, now, limit, by_deadline)

    async def _wait(
        self, key: Hashable, cost: float, start: float, limit: float, by_deadline: bool
    ) -> None:
        state = self._state
        store = state.store
        cell = state.cell
        queue = state.queues.get(key)
        if queue is None:
            queue = state.queues[key] = _Queue()
        waiters = queue.waiters
        waiter = _Waiter(cost, limit, by_deadline)
        if waiters:
            waiter.parked = new_waiter()
        waiters[waiter] = None
        queue.cost += cost
        state.waiting += 1
        if cell is not None:
            cell.block()
        try:
            if waiter.parked is not None:
                await waiter.parked.wait()  # until we are the head
                # Promoted as our scope was being cancelled: take nothing.
                await anyio.lowlevel.checkpoint_if_cancelled()
                if waiter.refused is not None:  # by set_limit
                    self._refuse(waiter)
            due = start
            offset, read = clock_source()  # the loop's time is offset + read()
            while True:
                now = read()
                if now < due:  # the clock woke us a hair early
                    now = due
                if cost > self.burst:  # lowered by set_limit
                    self._reject_cost(cost)
                # The parameters are read at each turn: set_limit may change them.
                wait = store.take(key, cost, now, state.interval, state.tolerance)
                if not wait:
                    break
                if now + wait > limit:
                    # Someone else took the capacity (a shared store), the
                    # table of keys is full, or set_limit lowered the limit:
                    # the wait no longer fits.
                    self._reject(wait, cost, "deadline" if by_deadline else "max_wait")
                due = max(now + wait, math.nextafter(now, math.inf))
                with anyio.CancelScope() as nap:
                    queue.nap = nap
                    await anyio.sleep_until(offset + due)
                queue.nap = None
                if nap.cancelled_caught:
                    # set_limit woke us: look again now, unless our own scope
                    # was cancelled meanwhile (then take nothing).
                    await anyio.lowlevel.checkpoint_if_cancelled()
                    due = -math.inf
        finally:
            head = next(iter(waiters)) is waiter
            del waiters[waiter]
            queue.cost -= cost
            state.waiting -= 1
            if cell is not None:
                cell.unblock()
            if not waiters:
                # A queue stays in state.queues while it has a waiter (it is
                # made with its first one), so it is still there for its last.
                del state.queues[key]
            elif head:
                nxt = next(iter(waiters))
                assert nxt.parked is not None
                nxt.parked.wake()
        state.waited += 1
        if events.STATE.sinks:
            events.emit(
                RateLimitWaited(layer=self.name, waited=base_time() - start, cost=cost)
            )

    # -- a shared store -----------------------------------------------------------
    #
    # Every call asks the store (the store may carry concurrent calls in one
    # round trip), except in lease mode, where the permits left from a lease
    # are spent locally. Calls that must wait
    # queue per key in this process (the in-memory _Queue and _Waiter): only
    # the head asks the store, sleeps the wait it returns plus a small
    # jitter, and asks again. Without a queue, calls ask concurrently (in
    # lease mode, only the head asks, so that a process holds one lease per
    # key at most).

    def _shared_service(self, inner: Service[Req, Res]) -> Service[Req, Res]:
        """The service of a limit whose store is a :class:`SharedRateLimitStore`."""
        state = self._state
        shared = state.shared
        assert shared is not None
        key_of = self.key
        cost_of = self.cost
        check_cost = self._check_cost
        bad_key = self._bad_key
        admit = self._admit_shared
        plain = (int, float)
        burst = self.burst
        # Lease mode: a permit of the lease is spent here, with no call
        # between (the cost of the success path of a process holding a lease).
        balances = state.balances if shared.lease is not None else None
        queues = state.queues

        async def shared_rate_limit(request: Req, /) -> Res:
            if key_of is None:
                key = None
            else:
                key = key_of(request)
                try:
                    hash(key)
                except TypeError:
                    bad_key(key)
            if cost_of is None:
                cost: float = 1
            else:
                cost = cost_of(request)
                if type(cost) not in plain or not 0 < cost <= burst:
                    cost = check_cost(cost)
                    if not cost:  # free: it takes nothing, so it never waits
                        return await inner(request)
            if (
                balances is not None
                and not (queues and key in queues)
                and _spend(balances, key, cost)
            ):
                return await inner(request)
            await admit(key, cost)
            return await inner(request)

        def tune() -> None:
            nonlocal burst
            burst = self.burst

        state.tuners.add(shared_rate_limit, tune)
        return shared_rate_limit

    async def _admit_shared(self, key: Hashable, cost: float) -> None:
        """Admit a call of cost > 0 under *key* with a shared store (or raise)."""
        state = self._state
        queues = state.queues
        if queues and key in queues:
            await self._shared_queued(key, cost)
        elif state.shared is not None and state.shared.lease is not None:
            if not _spend(state.balances, key, cost):
                await self._shared_queued(key, cost)
        else:
            await self._shared_direct(key, cost)

    def _limit(self, now: float) -> tuple[float, bool]:
        """The latest base time a call arriving at *now* may be admitted.

        And whether the caller's deadline (rather than ``max_wait``) sets it.
        """
        limit = math.inf if self.max_wait is None else now + self.max_wait
        deadline = DEADLINE.get()
        if deadline is not None:
            # the deadline is on the loop's clock, the schedule on the base time
            deadline -= clock_source()[0]
            if deadline < limit:
                return deadline, True
        return limit, False

    async def _shared_direct(self, key: Hashable, cost: float) -> None:
        """Admit a call of an exact shared limit whose key has no queue here."""
        state = self._state
        shared = state.shared
        health = state.health
        assert shared is not None
        assert health is not None
        now = base_time()
        reject = self.mode == "reject"
        limit, by_deadline = (now, False) if reject else self._limit(now)
        version = state.version
        interval = state.interval
        tolerance = state.tolerance
        try:
            _, wait = await shared.take(
                key, cost, interval, tolerance, patience=limit - now
            )
        except StoreError as error:
            # The time now: a failure may take the connection's timeout.
            now = base_time()
            wait = self._shared_failed(error, key, cost, now, limit, by_deadline, False)
            if wait:
                await self._shared_queued(
                    key, cost, now, limit, by_deadline, now + wait, False, True
                )
            return
        if health.failing_since is not None:
            health.answered()
        if not wait:
            return
        if reject:
            self._reject(wait, cost, "limited")
        told = (base_time(), wait, cost, interval, tolerance)
        if state.version != version:
            # set_limit while it asked: its wait under the new parameters.
            due = self._due_after_change(told)
            if due > limit:
                self._reject(due - now, cost, "deadline" if by_deadline else "max_wait")
            await self._shared_queued(
                key,
                cost,
                now,
                limit,
                by_deadline,
                due,
                now + wait <= limit,
                False,
                told,
            )
            return
        if now + wait > limit:
            self._reject(wait, cost, "deadline" if by_deadline else "max_wait")
        # The store gave this call a turn (wait <= patience): keep it.
        await self._shared_queued(
            key, cost, now, limit, by_deadline, told[0] + wait, True, False, told
        )

    def _due_after_change(self, told: _Told) -> float:
        """When a call told to wait should ask the store, under the new parameters.

        The store told it *wait* at *at* for *need* units under *interval*
        and *tolerance*: its backlog then was ``wait + tolerance - need x
        interval``. The same backlog under the parameters now gives the
        new due time, with no round trip (asking the store early would
        not help: a waiter given a turn is kept until the turn's end).
        """
        at, wait, need, interval, tolerance = told
        state = self._state
        backlog = wait + tolerance - need * interval
        return at + backlog - (state.tolerance - need * state.interval)

    async def _shared_queued(
        self,
        key: Hashable,
        cost: float,
        start: float | None = None,
        limit: float = math.inf,
        by_deadline: bool = False,
        due: float | None = None,
        waited: bool = False,
        counted: bool = False,
        told: _Told | None = None,
    ) -> None:
        """Queue a call of a shared limit behind this process's calls for *key*.

        *start* is ``None`` for a newcomer (its wait is estimated from the
        queue and refused at once if it cannot fit); otherwise the call
        comes from :meth:`_shared_direct` with its *limit*, the base time
        *due* at which to ask the store, whether the store gave it a turn
        (*waited*), whether it was *counted* as a fallback already, and
        what the store *told* it (for :meth:`_due_after_change`).
        """
        state = self._state
        shared = state.shared
        health = state.health
        assert shared is not None
        assert health is not None
        interval = state.interval
        reject = self.mode == "reject"
        lease = shared.lease
        whole = lease is not None and not reject
        balances = state.balances
        queue = state.queues.get(key)
        if start is None:
            start = base_time()
            if not reject:
                limit, by_deadline = self._limit(start)
                if queue is not None:
                    # What the in-memory limit's peek would say: the head asks
                    # at queue.due, then the queue behind it and this call
                    # each need their cost in intervals (a lower bound: other
                    # processes take their share too).
                    ahead = queue.cost - queue.head_cost + cost
                    wait = max(queue.due - start, 0.0) + ahead * interval
                    if start + wait > limit:
                        self._reject(
                            wait, cost, "deadline" if by_deadline else "max_wait"
                        )
        if queue is None:
            queue = state.queues[key] = _Queue()
        waiters = queue.waiters
        waiter = _Waiter(cost, limit, by_deadline)
        if waiters:
            waiter.parked = new_waiter()
        waiters[waiter] = None
        queue.cost += cost
        state.waiting += 1
        slept = False
        admitted = closed = False
        try:
            if waiter.parked is not None:
                await waiter.parked.wait()  # until we are the head (or paid)
                # Promoted as our scope was being cancelled: take nothing.
                await anyio.lowlevel.checkpoint_if_cancelled()
                if waiter.refused is not None:  # by set_limit
                    self._refuse(waiter)
                slept = True
            if not waiter.paid:
                queue.head_cost = cost
            while not waiter.paid:
                now = base_time()
                # The parameters are read at each turn: set_limit may change them.
                interval = state.interval
                if cost > self.burst:  # lowered by set_limit
                    self._reject_cost(cost)
                left = 0.0
                if lease is not None:
                    left = balances.get(key, 0.0)
                    if left >= cost:
                        balances[key] = left - cost
                        break
                if due is not None and due > now:
                    queue.due = due
                    slept = True
                    # A jitter of up to one interval (at most 1 ms), so that
                    # waiters told the same wait do not ask at the same instant.
                    with anyio.CancelScope() as nap:
                        queue.nap = nap
                        await anyio.sleep(
                            due - now + random.random() * min(interval, _JITTER)
                        )
                    queue.nap = None
                    if nap.cancelled_caught:
                        # set_limit woke us (unless our own scope was
                        # cancelled meanwhile): our due under the new
                        # parameters, or now if we cannot tell.
                        await anyio.lowlevel.checkpoint_if_cancelled()
                        now = base_time()
                        if told is None:
                            due = None
                        else:
                            due = self._due_after_change(told)
                            if due > limit:
                                self._reject(
                                    due - now,
                                    cost,
                                    "deadline" if by_deadline else "max_wait",
                                )
                        continue
                    now = base_time()
                queue.due = now
                need = cost - left
                up_to = None
                if lease is not None and lease > need:
                    # A waiter takes a whole lease (it waits for it: a lease
                    # of whatever had come back meanwhile, under contention
                    # a permit or two, would save no round trip); a call
                    # that cannot wait takes what fits, up to a lease.
                    if whole:
                        need = lease
                    else:
                        up_to = lease
                version = state.version
                tolerance = state.tolerance
                told = None
                try:
                    granted, wait = await shared.take(
                        key,
                        need,
                        interval,
                        tolerance,
                        up_to=up_to,
                        waited=waited,
                        patience=0.0 if reject else limit - now,
                    )
                except StoreError as error:
                    now = base_time()
                    wait = self._shared_failed(
                        error, key, cost, now, limit, by_deadline, counted
                    )
                    counted = True
                    if not wait:
                        break
                    due, waited = now + wait, False
                    continue
                if health.failing_since is not None:
                    health.answered()
                if not wait:
                    if lease is not None:
                        self._keep_lease(key, left + granted - cost)
                    break
                if reject:
                    self._reject(wait, cost, "limited")
                told = (base_time(), wait, need, interval, tolerance)
                if state.version != version:
                    # set_limit while we asked: our due under the new
                    # parameters (keeping a turn the store gave us).
                    waited = waited or now + wait <= limit
                    due = self._due_after_change(told)
                    if due > limit:
                        self._reject(
                            due - now, cost, "deadline" if by_deadline else "max_wait"
                        )
                    continue
                if now + wait > limit:
                    own = wait - (need - (cost - left)) * interval
                    if whole and now + own <= limit:
                        # A whole lease would come too late (and the store
                        # gave no turn for it); the call's own share would
                        # not: ask for that (and what fits) then.
                        whole = False
                        due, waited, told = base_time() + own, False, None
                        continue
                    # Other processes took the capacity: the wait no longer fits.
                    self._reject(wait, cost, "deadline" if by_deadline else "max_wait")
                due, waited = told[0] + wait, True
            admitted = True
        except GeneratorExit:  # closed unfinished (not cancelled): await nothing
            closed = True
            raise
        finally:
            if not closed:
                # A turn the store gave this call and it did not come for
                # (cancelled, refused, paid from a lease): give it back before
                # the next waiter asks (shielded, in the store; nothing to do,
                # and no round trip, when the call holds none).
                forfeit = getattr(shared, "forfeit", None)
                if forfeit is not None:
                    await forfeit(key)
            if waiter.paid:  # it left the queue when it was paid
                if not admitted:  # cancelled before it could run: refund
                    self._keep_lease(key, balances.get(key, 0.0) + cost)
            else:
                head = next(iter(waiters)) is waiter
                del waiters[waiter]
                queue.cost -= cost
                state.waiting -= 1
                if head and admitted and lease is not None:
                    self._pay_waiters(key, queue)
                if not waiters:
                    del state.queues[key]
                elif head:
                    queue.due = base_time()  # the next head asks at once
                    nxt = next(iter(waiters))
                    assert nxt.parked is not None
                    nxt.parked.wake()
        if slept and not reject:
            state.waited += 1
            if events.STATE.sinks:
                events.emit(
                    RateLimitWaited(
                        layer=self.name, waited=base_time() - start, cost=cost
                    )
                )

    def _pay_waiters(self, key: Hashable, queue: _Queue) -> None:
        """Admit the waiters at the front of *queue* from the lease's permits.

        In order, as long as the permits left cover each one's cost: each
        leaves the queue paid, and is woken with nothing more to do. So a
        lease serves the calls that waited for it at once, one task switch
        each, rather than one after another through the queue, and the
        next calls find no queue and spend the rest without waiting.
        """
        state = self._state
        balances = state.balances
        left = balances.get(key, 0.0)
        waiters = queue.waiters
        while waiters:
            waiter = next(iter(waiters))
            if waiter.refused is not None or waiter.cost > left:
                break
            left -= waiter.cost
            waiter.paid = True
            del waiters[waiter]
            queue.cost -= waiter.cost
            state.waiting -= 1
            assert waiter.parked is not None
            waiter.parked.wake()
        self._keep_lease(key, left)

    def _keep_lease(self, key: Hashable, left: float) -> None:
        """Keep the *left* permits of a lease for *key* (a bounded table)."""
        balances = self._state.balances
        if left <= 0.0:
            balances.pop(key, None)
            return
        balances[key] = left
        balances.move_to_end(key)
        if len(balances) > DEFAULT_MAX_KEYS:
            # Forgetting permits only admits fewer calls: never more.
            balances.popitem(last=False)

    def _shared_failed(
        self,
        error: StoreError,
        key: Hashable,
        cost: float,
        now: float,
        limit: float,
        by_deadline: bool,
        counted: bool,
    ) -> float:
        """Apply the store's failure policy to a call: 0 to admit it, or its wait.

        Raises :class:`~layers.StoreUnavailable` (``"closed"``) or
        :class:`~layers.RateLimited` (``"local"``, no room now in reject
        mode, or a wait that cannot fit). *counted*: this call was counted
        as a fallback already (a waiter asking again).
        """
        state = self._state
        health = state.health
        assert health is not None
        if counted and health.failing_since is not None:
            policy = health.policy
        else:
            policy = health.failed(error)
        if policy == "open":
            return 0.0
        if policy == "closed":
            health.refuse(error)
        wait = state.store.take(
            key, cost, now, state.local_interval, state.local_tolerance
        )
        if not wait:
            return 0.0
        if self.mode == "reject":
            self._reject(wait, cost, "limited")
        if now + wait > limit:
            self._reject(wait, cost, "deadline" if by_deadline else "max_wait")
        return wait


# ------------------------------------------------------------ the success path


class _TatCell(Protocol):
    """The GCRA state of a limit without a key: its ``tat`` (see _State.cell)."""

    tat: float


class _Tuning(Protocol):
    """The parameters of a limit in use (see _State)."""

    interval: float
    tolerance: float


def _cell_service(
    inner: Service[Req, Res],
    cell: _TatCell,
    limit: _Tuning,
    slow: Callable[[float], Awaitable[None]],
) -> tuple[Service[Req, Res], Callable[[], None]]:
    """The service of a RateLimit without key or cost function, in memory.

    One GCRA update of cost 1: admitted when the limit is idle
    (``tat <= now``) or its lead fits in the slack ``tau - T``; otherwise
    ``await slow(now)`` queues or raises. ``cell.tat`` is ``+inf`` while
    anyone waits, so nobody overtakes them. A closure: its variables are
    cheaper to reach than an object's attributes. Returns the service and
    the function that reads *limit*'s ``interval`` and ``tolerance`` into
    the closure again (after ``set_limit``).
    """
    clock = base_time
    interval = limit.interval
    slack = limit.tolerance - interval

    async def rate_limit(request: Req, /) -> Res:
        now = clock()
        tat = cell.tat
        if tat <= now:  # idle: admitted
            cell.tat = now + interval
            return await inner(request)
        if tat - now <= slack:
            cell.tat = tat + interval
            return await inner(request)
        await slow(now)
        return await inner(request)

    def tune() -> None:
        nonlocal interval, slack
        interval = limit.interval
        slack = limit.tolerance - interval

    return rate_limit, tune


@final
class _RateGuard:
    """``async with limit.guard(key, cost):``: the block is one call of the limit."""

    __slots__ = ("_cost", "_key", "_limit")

    def __init__(self, limit: RateLimit, key: Hashable, cost: float) -> None:
        self._limit = limit
        self._key = key
        self._cost = cost

    async def __aenter__(self) -> None:
        await self._limit._admit(self._key, self._cost)  # pyright: ignore[reportPrivateUsage]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
