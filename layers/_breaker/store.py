"""The store of a breaker shared by a fleet: its protocol and the in-memory one."""

# The modules of layers._breaker share its private names.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Protocol

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from .._backend import base_time
from .._config import check_name, check_number
from .._host import BackgroundHost
from . import server
from .records import BreakerBatch, BreakerRules, BreakerView
from .server import ProbeOutcome
from .statistics import CircuitState


class BreakerStore(Protocol):
    """Where the state of a breaker shared by several processes lives.

    Give one to :class:`~layers.CircuitBreaker` (``store=``); every
    process makes its own breaker, with the same options, and its own
    store object for the same shared state. :class:`MemoryBreakerStore`
    is the reference (in one process: for tests and as the model of the
    others); :class:`layers.redis.RedisBreakerStore` keeps it in Redis.

    Each ``async`` method is **one atomic step** on the store's server,
    which reads its own clock: the processes' clocks may differ, so every
    time in a :class:`~layers.BreakerView` is a duration from the server's
    *now*. Each takes the breaker's :class:`~layers.BreakerRules` (the
    store keeps no configuration) and replies with the fleet's state after
    the step. A step that changes the fleet's state also publishes the new
    view to every subscriber (:meth:`subscribe`), in the same atomic step.
    A failure of the store raises :class:`~layers.StoreError`; the breaker
    then falls back to its own local logic until the store answers again.

    The breaker cannot own a task group, so the store hosts the breaker's
    background work (sending batches, listening to notices, re-reading the
    state): :meth:`start_soon`.
    """

    @property
    def name(self) -> str:
        """The store's name, for :class:`~layers.events.StoreFailed` and errors."""
        ...

    @property
    def sync_interval(self) -> float:
        """Seconds between two re-reads of the fleet's state by a process.

        The backstop for lost notices (pub/sub delivers at most once), and
        the interval at which a count window's outcomes are sent (a time
        window's are sent every bucket).
        """
        ...

    def start_soon(
        self,
        function: Callable[[], Coroutine[Any, Any, None]],
        /,
        *,
        name: str | None = None,
    ) -> None:
        """Run *function* in the background until the store's host ends.

        Raises:
            RuntimeError: No host is running (the store, or its connection,
                is not entered with ``async with``).
        """
        ...

    async def read(self, rules: BreakerRules, /) -> BreakerView:
        """The fleet's state, as recorded (writes nothing)."""
        ...

    async def report(self, rules: BreakerRules, batch: BreakerBatch, /) -> BreakerView:
        """Merge a batch of closed-state outcomes into the fleet's window.

        Dropped unless ``batch.generation`` is the current generation and
        the breaker is closed or metrics-only. A trip condition that holds
        then opens the breaker: generation + 1, open until now plus the
        (growing) open duration, published.
        """
        ...

    async def take_probe(self, rules: BreakerRules, probe: str, /) -> BreakerView:
        """Take one of the half-open period's probes for the id *probe*.

        First makes the due time-driven transitions (open to half-open
        once the open period has passed; a half-open period past
        ``max_half_open_duration`` back to open), published. The reply's
        ``probe`` says whether *probe* holds a slot: at most
        ``rules.probes`` across the fleet in one half-open period.
        """
        ...

    async def report_probe(
        self, rules: BreakerRules, probe: str, outcome: ProbeOutcome, slow: bool, /
    ) -> BreakerView:
        """Report the outcome of the probe *probe* (``"released"``: not counted).

        A released probe's slot is free again (published, so that other
        processes may take it). Once all the probes are recorded, their
        failure and slow-call rates close the breaker or open it again
        (generation + 1, published). An id that does not hold a slot of
        the current half-open period is dropped.
        """
        ...

    async def set_state(
        self, rules: BreakerRules, state: CircuitState, /
    ) -> BreakerView:
        """Put the fleet in a manual state (``CLOSED``: reset), published.

        ``FORCED_OPEN``, ``DISABLED``, ``METRICS_ONLY`` or ``CLOSED``, as
        the breaker's :meth:`~layers.CircuitBreaker.force_open`,
        :meth:`~layers.CircuitBreaker.force_closed`,
        :meth:`~layers.CircuitBreaker.metrics_only` and
        :meth:`~layers.CircuitBreaker.reset`.
        """
        ...

    async def open_for(
        self, rules: BreakerRules, seconds: float, reason: str, /
    ) -> BreakerView:
        """Open the fleet now for *seconds*, then half-open as usual, published.

        As :meth:`~layers.CircuitBreaker.open_for` (*reason* ``"open_for"``,
        from any state) or a failure's ``retry_after`` (*reason*
        ``"retry_after"``, which leaves a manual state alone): generation
        + 1, open until the server's now plus *seconds*; an open breaker
        is opened anew only if that ends its open period later.
        """
        ...

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[BreakerView]]:
        """Receive every view the store publishes, while the block lasts.

        Delivery is at most once, in order: a notice may be lost (the
        periodic re-read catches up). Entering may raise
        :class:`~layers.StoreError`.
        """
        ...


def check_store_options(
    owner: str, name: object, sync_interval: object, probe_lease: object
) -> tuple[str, float, float]:
    """Check the options every breaker store has; raise ConfigurationError."""
    rule = "a finite number of seconds > 0"
    return (
        check_name(owner, "name", name),
        check_number(owner, "sync_interval", sync_interval, rule, lambda v: v > 0),
        check_number(owner, "probe_lease", probe_lease, rule, lambda v: v > 0),
    )


class MemoryBreakerStore(BackgroundHost):
    """A breaker's shared state in this process: the reference store.

    Its steps are the functions of the reference "server" (module
    ``layers._breaker.server``), run on this event loop's clock; a shared
    store on a real server (Redis) runs the same steps as scripts.
    Several breakers given one ``MemoryBreakerStore`` behave as the
    processes of a fleet sharing one breaker: use it to test code that
    uses a shared breaker, or to see what a fleet does. It never fails.

    It hosts the breakers' background work while it is entered::

        async with layers.MemoryBreakerStore() as store:
            breaker = layers.CircuitBreaker(store=store)
            ...

    A breaker whose store is not entered raises :class:`RuntimeError` on
    its first call. Leaving the block cancels the background work.

    Args:
        name: For events and errors.
        sync_interval: Seconds between two re-reads by a breaker (> 0); see
            :attr:`BreakerStore.sync_interval`.
        probe_lease: Seconds a probe holds its slot unless its outcome is
            reported first (> 0): a process that died holding one does not
            leave the fleet half-open for good.

    Raises:
        ConfigurationError: An argument is of the wrong type or out of range.
    """

    enter_hint: ClassVar[str] = (
        "use `async with store:` around the code that calls its shared breakers"
    )

    __slots__ = (
        "_record",
        "_subscribers",
        "name",
        "probe_lease",
        "sync_interval",
    )

    def __init__(
        self,
        *,
        name: str = "memory_breaker_store",
        sync_interval: float = 1.0,
        probe_lease: float = 60.0,
    ) -> None:
        self.name, self.sync_interval, self.probe_lease = check_store_options(
            type(self).__name__, name, sync_interval, probe_lease
        )
        self._record = server.Record(epoch=uuid.uuid4().hex)
        self._subscribers: list[MemoryObjectSendStream[BreakerView]] = []
        super().__init__()

    # -- the steps ------------------------------------------------------------------

    async def read(self, rules: BreakerRules, /) -> BreakerView:
        """See :meth:`BreakerStore.read`."""
        await anyio.lowlevel.checkpoint()
        return server.read(self._record, rules, base_time())

    async def report(self, rules: BreakerRules, batch: BreakerBatch, /) -> BreakerView:
        """See :meth:`BreakerStore.report`."""
        await anyio.lowlevel.checkpoint()
        return self._reply(server.report(self._record, rules, batch, base_time()))

    async def take_probe(self, rules: BreakerRules, probe: str, /) -> BreakerView:
        """See :meth:`BreakerStore.take_probe`."""
        await anyio.lowlevel.checkpoint()
        step = server.take_probe(
            self._record, rules, probe, self.probe_lease, base_time()
        )
        return self._reply(step)

    async def report_probe(
        self, rules: BreakerRules, probe: str, outcome: ProbeOutcome, slow: bool, /
    ) -> BreakerView:
        """See :meth:`BreakerStore.report_probe`."""
        await anyio.lowlevel.checkpoint()
        step = server.report_probe(
            self._record, rules, probe, outcome, slow, base_time()
        )
        return self._reply(step)

    async def set_state(
        self, rules: BreakerRules, state: CircuitState, /
    ) -> BreakerView:
        """See :meth:`BreakerStore.set_state`."""
        await anyio.lowlevel.checkpoint()
        return self._reply(server.set_state(self._record, rules, state, base_time()))

    async def open_for(
        self, rules: BreakerRules, seconds: float, reason: str, /
    ) -> BreakerView:
        """See :meth:`BreakerStore.open_for`."""
        await anyio.lowlevel.checkpoint()
        step = server.open_for(self._record, rules, seconds, reason, base_time())
        return self._reply(step)

    def _reply(self, step: tuple[BreakerView, BreakerView | None]) -> BreakerView:
        reply, notice = step
        if notice is not None:
            self.publish(notice)
        return reply

    # -- notices --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _subscription(self) -> AsyncGenerator[AsyncIterator[BreakerView]]:
        send, receive = anyio.create_memory_object_stream[BreakerView](_NOTICE_BUFFER)
        self._subscribers.append(send)
        try:
            with receive:
                yield receive
        finally:
            self._subscribers.remove(send)
            send.close()

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[BreakerView]]:
        """See :meth:`BreakerStore.subscribe` (up to 100 notices wait unread)."""
        return self._subscription()

    def publish(self, view: BreakerView) -> None:
        """Deliver *view* to every subscriber; a full subscriber misses it.

        Called by the steps when the fleet's state changes; a subclass may
        override it to delay or drop notices (a test of lost notices).
        """
        for send in list(self._subscribers):
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                send.send_nowait(view)

    # -- looking at it --------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The fleet's state, as recorded."""
        return self._record.state

    @property
    def generation(self) -> int:
        """The fleet's generation."""
        return self._record.generation

    @property
    def probes_in_flight(self) -> int:
        """Probes taken and not reported (half-open only, else 0)."""
        return len(self._record.probes)

    def __repr__(self) -> str:
        return f"MemoryBreakerStore(name={self.name!r})"


_NOTICE_BUFFER = 100
