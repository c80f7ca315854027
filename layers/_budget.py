"""RetryBudget: retries may add at most a fraction of recent traffic.

Finagle's ``RetryBudget`` and tower's ``TpsBudget``, with the same meaning
and defaults: every request *deposits*, every retry *withdraws*, and a
retry is allowed only while the balance over the last ``ttl`` seconds covers
it. See :class:`RetryBudget` for the exact rules.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Final, final

import attrs

from . import _backend
from ._config import fail, finite_number, name_value
from ._observable import HealthStatus, Observation

__all__ = ["RetryBudget", "RetryBudgetStatistics", "budget_or_none"]

SLOTS: Final = 10
"""The window is kept in this many slots of ``ttl / SLOTS`` seconds."""

MAX_UNREAD: Final = 64
"""The most deposits counted between two readings of the clock."""


_ttl = finite_number("a number of seconds from 1 to 60", lambda v: 1 <= v <= 60)
_per_second = finite_number("a finite number >= 0", lambda v: v >= 0)
_ratio = finite_number("a fraction from 0 to 10 (0.2 is 20 %)", lambda v: 0 <= v <= 10)


@final
class BudgetState:
    """The mutable state of a :class:`RetryBudget` (one event loop at a time).

    Deposits are counted without reading the clock and dated at the last
    reading, which came before them: they may leave the window early,
    never late. How many deposits may be counted before the next reading
    (``left``) is sized at each reading from the rate since the previous
    one: about one slot's worth, at most :data:`MAX_UNREAD`. So dense
    traffic reads the clock once per slot or per 64 calls, and sparse
    traffic (less than a call per slot) reads it at every call and is dated
    exactly.

    A deposit on the success path is ``if left: left -= 1`` (inlined in
    :class:`~layers.Retry`), else :meth:`deposit_and_read`.
    """

    __slots__ = (
        "deposits",
        "index",
        "left",
        "ratio",
        "read_at",
        "reserve",
        "retries",
        "room",
        "slot_start",
        "window",
    )

    def __init__(self, ttl: float, min_per_second: float, ratio: float) -> None:
        self.left: int = 0
        """Deposits that may still be counted without reading the clock."""
        self.room: int = 0
        """``left`` just after the last reading: ``room - left`` are pending."""
        self.read_at: float = -math.inf
        """When the clock was last read; pending deposits are dated then."""
        self.deposits = [0] * SLOTS
        self.retries = [0] * SLOTS
        self.index = 0
        self.slot_start: float | None = None
        self.window = ttl / SLOTS
        self.ratio = ratio
        self.reserve = min_per_second * ttl

    def deposit(self) -> None:
        """Count one request; read the clock only when ``left`` has run out."""
        left = self.left
        if left:
            self.left = left - 1
        else:
            self.deposit_and_read()

    def deposit_and_read(self) -> None:
        """Count one request, reading the clock: no deposit is ``left``."""
        now = _backend.base_time()
        span = now - self.read_at
        pending = self.room
        if span > 0:
            per_slot = pending * self.window / span
        else:  # all at one instant (if any), or a new loop's clock
            per_slot = math.inf if span == 0 and pending else 0.0
        self.advance(now)
        left = MAX_UNREAD if per_slot >= MAX_UNREAD else int(per_slot)
        self.left = left
        self.room = left + 1  # this deposit, pending, dated now

    def read_clock(self) -> None:
        """File the pending deposits and move the window to now."""
        now = _backend.base_time()
        left = self.left
        span = now - self.read_at
        if span > 0:
            # deposits slower than planned (traffic dropped): count fewer
            # of them before the next reading; never more (a withdrawal
            # right after a deposit says nothing about the rate)
            per_slot = (self.room - left) * self.window / span
            if per_slot < left:
                left = int(per_slot)
        elif span < 0:  # a new event loop whose clock starts again
            left = 0
        self.advance(now)
        self.left = self.room = left

    def advance(self, now: float) -> None:
        """File the pending deposits at the last reading; move the window to *now*."""
        pending = self.room - self.left
        start = self.slot_start
        if start is not None and now < start:
            # A new event loop whose clock starts again: how old the deposits
            # are is unknown, so they no longer count; the retries taken keep
            # counting until they expire on the new clock (fewer retries,
            # never more).
            self.deposits = [0] * SLOTS
            pending = 0
            start = None
        self.deposits[self.index] += pending
        self.read_at = now
        if start is None:
            self.slot_start = now
        elif now - start >= self.window:
            steps = int((now - start) / self.window)
            deposits, retries = self.deposits, self.retries
            index = self.index
            for _ in range(min(steps, SLOTS)):
                index = (index + 1) % SLOTS
                deposits[index] = 0
                retries[index] = 0
            self.index = index
            self.slot_start = start + steps * self.window

    def balance(self) -> float:
        """Retries that the window allows now (call :meth:`read_clock` first)."""
        return sum(self.deposits) * self.ratio - sum(self.retries) + self.reserve

    def withdraw(self) -> bool:
        """Take one retry from the budget if it allows one."""
        self.read_clock()
        # a small tolerance for the float products (0.2 x 5 deposits = 1 retry)
        if self.balance() >= 1 - 1e-9:
            self.retries[self.index] += 1
            return True
        return False


@final
@attrs.frozen
class RetryBudgetStatistics:
    """A snapshot of a :class:`RetryBudget`; see :meth:`RetryBudget.statistics`."""

    deposits: int
    """Requests (first attempts) counted in the window."""
    retries: int
    """Retries taken in the window."""
    available: int
    """Retries the budget would allow now."""


@final
@attrs.frozen(eq=False)
class RetryBudget:
    """A limit on retries: at most a share of recent traffic, plus a floor.

    The semantics of Finagle's ``RetryBudget`` and tower's ``TpsBudget``,
    with their defaults (10 s, 10 retries per second, 20 %). Every call
    through a :class:`~layers.Retry` that uses the budget *deposits* once
    (its first attempt); every retry *withdraws* one. A retry is allowed
    while, over the last *ttl* seconds,

        retries + 1 <= ratio x requests + min_per_second x ttl

    so in steady traffic retries add at most *ratio* of the load (0.2: 20 %), and at
    least *min_per_second* retries per second are always allowed (the
    reserve ``min_per_second x ttl`` is there from the start, and every
    retry gives its share back *ttl* seconds later). Over a stretch of ``T``
    seconds with ``N`` requests, retries stay within
    ``ratio x N + min_per_second x (ttl + T)``. When the budget is
    empty, Retry raises the last error at once and emits
    :class:`~layers.events.RetryStopped` (``reason="budget"``): during an
    outage, the retries stop adding load to a service that is already down.

    One budget can be shared: pass the same object to several
    :class:`~layers.Retry` layers (one budget per downstream host, say), or
    apply one ``Retry`` to several services. A budget belongs to one event
    loop at a time, as anyio's own primitives do; it takes no lock and is
    not thread-safe.

    **How the window is kept.** The window is ten slots of ``ttl / 10``
    seconds, as in tower and Finagle. A deposit is dated at the last reading
    of the clock before it, so a deposit may leave the window early, never
    late: the budget never allows more retries than Finagle's would. The
    success path of a call mostly does not read the clock: after each
    reading, the budget counts as many deposits without it as the recent
    rate of calls brings in one slot, and at most 64. So in steady traffic
    a deposit is dated at most about one slot early (at 1,000 calls per
    second the clock is read once per 64 calls), and when calls are sparse
    (less than about one per slot, where each one matters) every deposit
    reads the clock and expires *ttl* after it was made, as in tower. A
    sudden drop in traffic can date at most one such batch earlier than
    that. Withdrawals always read the clock.

    A later event loop whose clock starts again (a new ``anyio.run`` on
    virtual time, or trio's clock, whose offset differs per run) cannot
    tell how old the earlier deposits are: they no longer count, while the
    retries taken before keep counting until they expire on the new clock
    (fewer retries, never more).

    Args:
        ttl: How long deposits and withdrawals count, seconds, from 1 to 60
            (default 10).
        min_per_second: Retries per second always allowed, whatever the
            traffic; finite, >= 0 (default 10).
        ratio: Retries allowed per request, a fraction from 0 to 10
            (default 0.2, that is 20 %, as tower's ``retry_percent=0.2``).
        name: A name for health checks and metrics (default
            ``"retry_budget"``).

    Example:
        >>> import anyio, layers
        >>> budget = layers.RetryBudget(ttl=10, min_per_second=0, ratio=0.5)
        >>> async def main():
        ...     for _ in range(4):
        ...         budget.deposit()
        ...     return [budget.withdraw() for _ in range(3)]
        >>> anyio.run(main)
        [True, True, False]
    """

    ttl: float = attrs.field(default=10.0, kw_only=True, validator=_ttl)
    min_per_second: float = attrs.field(
        default=10.0, kw_only=True, validator=_per_second
    )
    ratio: float = attrs.field(default=0.2, kw_only=True, validator=_ratio)
    name: str = attrs.field(default="retry_budget", kw_only=True, validator=name_value)
    _state: BudgetState = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(
            lambda self: BudgetState(self.ttl, self.min_per_second, self.ratio),
            takes_self=True,
        ),
    )

    kind = "retry_budget"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def deposit(self) -> None:
        """Count one request. Cheap: it mostly does not read the clock.

        :class:`~layers.Retry` calls it once per call; call it yourself only
        if you use the budget in your own retry logic.
        """
        self._state.deposit()

    def withdraw(self) -> bool:
        """Take one retry if the budget allows it; return whether it did.

        Needs a running event loop (it reads the loop's clock).
        """
        return self._state.withdraw()

    def statistics(self) -> RetryBudgetStatistics:
        """Return a snapshot of the window now (needs a running event loop)."""
        state = self._state
        state.read_clock()
        return RetryBudgetStatistics(
            deposits=sum(state.deposits),
            retries=sum(state.retries),
            available=max(0, math.floor(state.balance() + 1e-9)),
        )

    def observe(self) -> Observation:
        """The budget for health checks and metrics (:class:`~layers.Observable`).

        ``DEGRADED`` while retries have used the whole budget (a retry now
        would be refused), else ``HEALTHY``; the figures are ``deposits``,
        ``retries`` and ``available`` as in :meth:`statistics`. Outside the
        event loop's thread (a metrics exporter's), it does not read the
        clock: the figures are as of the last call.
        """
        state = self._state
        with contextlib.suppress(RuntimeError):  # no event loop in this thread
            state.read_clock()
        deposits = sum(state.deposits) + state.room - state.left  # pending ones too
        retries = sum(state.retries)
        balance = deposits * state.ratio - retries + state.reserve
        available = max(0, math.floor(balance + 1e-9))
        exhausted = retries > 0 and available == 0
        return Observation(
            status=HealthStatus.DEGRADED if exhausted else HealthStatus.HEALTHY,
            figures={"deposits": deposits, "retries": retries, "available": available},
        )


def budget_or_none(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept a :class:`RetryBudget` or ``None`` (the ``budget=`` of Retry, Hedge)."""
    if value is not None and not isinstance(value, RetryBudget):
        fail(instance, attribute, value, "a RetryBudget or None (no budget)")
