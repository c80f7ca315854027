"""RetryBudget: retries may add at most a fraction of recent traffic.

Finagle's ``RetryBudget`` and tower's ``TpsBudget``, with the same meaning
and defaults: every request *deposits*, every retry *withdraws*, and a
retry is allowed only while the balance over the last ``ttl`` seconds covers
it. See :class:`RetryBudget` for the exact rules.
"""

from __future__ import annotations

import math
from typing import Final, final

import attrs

from . import _backend
from ._config import finite_number

__all__ = ["RetryBudget", "RetryBudgetStatistics"]

SLOTS: Final = 10
"""The window is kept in this many slots of ``ttl / SLOTS`` seconds."""

FLUSH_EVERY: Final = 64
"""Deposits are counted without reading the clock; every this many deposits
(and at every withdrawal) they are filed into the window."""


_ttl = finite_number("a number of seconds from 1 to 60", lambda v: 1 <= v <= 60)
_per_second = finite_number("a finite number >= 0", lambda v: v >= 0)
_percent = finite_number("a percentage from 0 to 1000", lambda v: 0 <= v <= 1000)


@final
class BudgetState:
    """The mutable state of a :class:`RetryBudget` (one event loop at a time)."""

    __slots__ = (
        "deposits",
        "index",
        "pending",
        "ratio",
        "reserve",
        "retries",
        "slot_start",
        "window",
    )

    def __init__(self, ttl: float, min_per_second: float, percent: float) -> None:
        self.pending = 0
        """Deposits counted since the last flush, not yet filed in a slot."""
        self.deposits = [0] * SLOTS
        self.retries = [0] * SLOTS
        self.index = 0
        self.slot_start: float | None = None
        self.window = ttl / SLOTS
        self.ratio = percent / 100
        self.reserve = min_per_second * ttl

    def deposit(self) -> None:
        """Count one request; file the pending ones every ``FLUSH_EVERY``."""
        pending = self.pending + 1
        self.pending = pending
        if pending >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """File the pending deposits into the window (reads the clock)."""
        self.advance(_backend.base_time())

    def advance(self, now: float) -> None:
        """Move the window to *now* and file the pending deposits.

        The pending deposits were made at unknown times since the last
        flush. They are filed into the slot that was current then, the
        oldest they can belong to, so they expire no later than they
        should: the budget errs on the side of fewer retries.
        """
        self.deposits[self.index] += self.pending
        self.pending = 0
        start = self.slot_start
        if start is None or now < start:
            # first use, or a new event loop whose clock starts again
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
        """Retries that the window allows now (call :meth:`advance` first)."""
        return sum(self.deposits) * self.ratio - sum(self.retries) + self.reserve

    def withdraw(self) -> bool:
        """Take one retry from the budget if it allows one."""
        self.advance(_backend.base_time())
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

        retries + 1 <= percent / 100 x requests + min_per_second x ttl

    so in steady traffic retries add at most *percent* % to the load, and at
    least *min_per_second* retries per second are always allowed (the
    reserve ``min_per_second x ttl`` is there from the start, and every
    retry gives its share back *ttl* seconds later). Over a stretch of ``T``
    seconds with ``N`` requests, retries stay within
    ``percent/100 x N + min_per_second x (ttl + T)``. When the budget is
    empty, Retry raises the last error at once and emits
    :class:`~layers.RetryBudgetExhausted`: during an outage, the retries
    stop adding load to a service that is already down.

    One budget can be shared: pass the same object to several
    :class:`~layers.Retry` layers (one budget per downstream host, say), or
    apply one ``Retry`` to several services. A budget belongs to one event
    loop at a time, as anyio's own primitives do; it takes no lock and is
    not thread-safe.

    **How the window is kept.** The window is ten slots of ``ttl / 10``
    seconds, as in tower and Finagle. A deposit is only a counter increment:
    the success path of a call never reads the clock. The counted deposits
    are filed into the window at the next withdrawal, or after every 64
    deposits, whichever comes first, and they are dated at the previous
    filing, the oldest they can be. So a deposit may leave the window
    early, never late: the budget never allows more retries than
    Finagle's would. A deposit is dated at most the time that 64 calls
    take too early: at 50 calls per second, where
    20 % of the traffic starts to exceed the default floor of 10 per
    second, that is 1.3 s of a 10 s window; below that rate the floor
    dominates anyway.

    Args:
        ttl: How long deposits and withdrawals count, seconds, from 1 to 60
            (default 10).
        min_per_second: Retries per second always allowed, whatever the
            traffic; finite, >= 0 (default 10).
        percent: Retries allowed as a percentage of requests, from 0 to
            1000 (default 20, that is 20 %: tower's ``retry_percent=0.2``).

    Example:
        >>> import anyio, layers
        >>> budget = layers.RetryBudget(ttl=10, min_per_second=0, percent=50)
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
    percent: float = attrs.field(default=20.0, kw_only=True, validator=_percent)
    _state: BudgetState = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(
            lambda self: BudgetState(self.ttl, self.min_per_second, self.percent),
            takes_self=True,
        ),
    )

    def deposit(self) -> None:
        """Count one request. Cheap: it does not read the clock.

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
        state.flush()
        return RetryBudgetStatistics(
            deposits=sum(state.deposits),
            retries=sum(state.retries),
            available=max(0, math.floor(state.balance() + 1e-9)),
        )
