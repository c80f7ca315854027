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
from collections.abc import Awaitable, Callable, Hashable
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
from ._observable import Observation
from ._store import StoreHealth
from .events import Event, Level

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
    """

    waiting: int
    waited: int
    rejected: int
    keys: int | None
    table_full: int
    store_fallbacks: int = 0


# ----------------------------------------------------------------------- layer


@final
class _Waiter:
    __slots__ = ("parked",)

    def __init__(self) -> None:
        self.parked: Waiter | None = None  # only for a waiter behind the head


@final
class _Queue:
    __slots__ = ("cost", "due", "head_cost", "waiters")

    def __init__(self) -> None:
        self.waiters: OrderedDict[_Waiter, None] = OrderedDict()
        self.cost = 0.0
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


@final
@attrs.frozen(eq=False)
class RateLimit:
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
        interval = self.period / self.rate
        if not (math.isfinite(interval) and interval > 0):
            raise ConfigurationError(
                f"RateLimit(rate={self.rate!r}, period={self.period!r}): "
                f"period / rate must be a finite number of seconds > 0, got "
                f"{interval!r}"
            )
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
        lease = shared.lease
        if lease is not None and lease > self.burst:
            raise ConfigurationError(
                f"RateLimit(burst={self.burst!r}, store={shared!r}): the store's "
                f"lease must be <= burst (a lease is taken at once, as a burst), "
                f"got lease={lease!r}"
            )
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
        )

    def observe(self) -> Observation:
        """The limit for health checks and metrics (:class:`~layers.Observable`).

        Always ``HEALTHY`` itself (a health check turns ``degraded`` on
        refusals); ``waiting`` and ``rejected`` as in :meth:`statistics`,
        and the figures ``keys`` (``None`` without a key function or with a
        custom store) and ``store_fallbacks`` (calls decided by a shared
        store's failure policy; ``0`` in memory).
        """
        stats = self.statistics()
        return Observation(
            waiting=stats.waiting,
            rejected=stats.rejected,
            figures={"keys": stats.keys, "store_fallbacks": stats.store_fallbacks},
        )

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
            return mark_built(
                _cell_service(
                    inner, cell, interval, tolerance - 1 * interval, self._slow
                ),
                self,
                inner,
            )

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

        return mark_built(keyed_rate_limit, self, inner)

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
            self._reject(
                None,
                real,
                "cost",
                f"rate limit {self.name!r}: cost {cost!r} exceeds the burst "
                f"({self.burst}); such a call can never be admitted",
            )
        return real

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
        if now + wait > limit:
            self._reject(wait, cost, "max_wait" if limit != deadline else "deadline")
        await self._wait(key, cost, now, limit)

    async def _wait(
        self, key: Hashable, cost: float, start: float, limit: float
    ) -> None:
        state = self._state
        store = state.store
        cell = state.cell
        interval = state.interval
        tolerance = state.tolerance
        queue = state.queues.get(key)
        if queue is None:
            queue = state.queues[key] = _Queue()
        waiters = queue.waiters
        waiter = _Waiter()
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
            due = start
            offset, read = clock_source()  # the loop's time is offset + read()
            while True:
                now = read()
                if now < due:  # the clock woke us a hair early
                    now = due
                wait = store.take(key, cost, now, interval, tolerance)
                if not wait:
                    break
                if now + wait > limit:
                    # Someone else took the capacity (a shared store), or the
                    # table of keys is full: the wait no longer fits.
                    deadline = DEADLINE.get()
                    self._reject(
                        wait,
                        cost,
                        "deadline"
                        if deadline is not None and limit == deadline - offset
                        else "max_wait",
                    )
                due = max(now + wait, math.nextafter(now, math.inf))
                await anyio.sleep_until(offset + due)
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
        queues = state.queues
        balances = state.balances
        check_cost = self._check_cost
        bad_key = self._bad_key
        direct = self._shared_direct
        queued = self._shared_queued
        plain = (int, float)
        burst = self.burst
        leased = shared.lease is not None

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
            if queues and key in queues:
                await queued(key, cost)
            elif leased:
                left = balances.get(key)
                if left is not None and left >= cost:
                    balances[key] = left - cost  # a permit of the lease
                else:
                    await queued(key, cost)
            else:
                await direct(key, cost)
            return await inner(request)

        return shared_rate_limit

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
        try:
            _, wait = await shared.take(
                key, cost, state.interval, state.tolerance, patience=limit - now
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
        if now + wait > limit:
            self._reject(wait, cost, "deadline" if by_deadline else "max_wait")
        # The store gave this call a turn (wait <= patience): keep it.
        await self._shared_queued(
            key, cost, now, limit, by_deadline, base_time() + wait, True, False
        )

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
    ) -> None:
        """Queue a call of a shared limit behind this process's calls for *key*.

        *start* is ``None`` for a newcomer (its wait is estimated from the
        queue and refused at once if it cannot fit); otherwise the call
        comes from :meth:`_shared_direct` with its *limit*, the base time
        *due* at which to ask the store, whether the store gave it a turn
        (*waited*), and whether it was *counted* as a fallback already.
        """
        state = self._state
        shared = state.shared
        health = state.health
        assert shared is not None
        assert health is not None
        interval = state.interval
        tolerance = state.tolerance
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
        waiter = _Waiter()
        if waiters:
            waiter.parked = new_waiter()
        waiters[waiter] = None
        queue.cost += cost
        state.waiting += 1
        slept = False
        try:
            if waiter.parked is not None:
                await waiter.parked.wait()  # until we are the head
                # Promoted as our scope was being cancelled: take nothing.
                await anyio.lowlevel.checkpoint_if_cancelled()
                slept = True
            queue.head_cost = cost
            while True:
                now = base_time()
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
                    await anyio.sleep(
                        due - now + random.random() * min(interval, _JITTER)
                    )
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
                if now + wait > limit:
                    own = wait - (need - (cost - left)) * interval
                    if whole and now + own <= limit:
                        # A whole lease would come too late (and the store
                        # gave no turn for it); the call's own share would
                        # not: ask for that (and what fits) then.
                        whole = False
                        due, waited = base_time() + own, False
                        continue
                    # Other processes took the capacity: the wait no longer fits.
                    self._reject(wait, cost, "deadline" if by_deadline else "max_wait")
                due, waited = base_time() + wait, True
        finally:
            head = next(iter(waiters)) is waiter
            del waiters[waiter]
            queue.cost -= cost
            state.waiting -= 1
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


def _cell_service(
    inner: Service[Req, Res],
    cell: _TatCell,
    interval: float,
    slack: float,
    slow: Callable[[float], Awaitable[None]],
) -> Service[Req, Res]:
    """The service of a RateLimit without key or cost function, in memory.

    One GCRA update of cost 1: admitted when the limit is idle
    (``tat <= now``) or its lead fits in *slack* (``tau - T``); otherwise
    ``await slow(now)`` queues or raises. ``cell.tat`` is ``+inf`` while
    anyone waits, so nobody overtakes them. A closure: its variables are
    cheaper to reach than an object's attributes.
    """
    clock = base_time

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

    return rate_limit
