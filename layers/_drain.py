"""Drain: count the calls in flight, refuse new ones once shutdown begins.

The success path is a flag test and a counter (no await of its own, no
lock: nothing can run between the test and the increment). Only
:meth:`Drain.wait_idle` waits, on an :class:`anyio.Event` made when someone
waits and set by the call that brings the count to zero.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import ClassVar, NoReturn, TypeVar, final

import anyio
import anyio.lowlevel
import attrs

from . import events
from ._config import check_number, finite_number, name_value
from ._core import Service, mark_built
from ._errors import ShuttingDown
from ._guard import GuardShorthand
from ._observable import HealthStatus, Observation
from .events import Event, Level

__all__ = ["Drain", "DrainRejected", "DrainStarted", "DrainStatistics"]

Req = TypeVar("Req")
Res = TypeVar("Res")

_optional_seconds = finite_number(
    "None or a finite number of seconds >= 0", lambda v: v >= 0, optional=True
)


@attrs.frozen(kw_only=True)
class DrainStarted(Event):
    """A :class:`~layers.Drain` began draining: new calls are refused from now on.

    Attributes:
        in_flight: Calls still inside at that moment.
    """

    event: ClassVar[str] = "drain_started"
    kind: ClassVar[str] = "drain"
    level: ClassVar[Level] = "info"

    in_flight: int


@attrs.frozen(kw_only=True)
class DrainRejected(Event):
    """A :class:`~layers.Drain` refused a call with :class:`~layers.ShuttingDown`.

    Attributes:
        in_flight: Calls still inside at that moment.
    """

    event: ClassVar[str] = "drain_rejected"
    kind: ClassVar[str] = "drain"
    level: ClassVar[Level] = "info"

    in_flight: int


@final
@attrs.frozen(kw_only=True)
class DrainStatistics:
    """A snapshot of a :class:`Drain` (see its ``statistics()``).

    Attributes:
        in_flight: Calls inside now.
        draining: Whether draining has begun.
        admitted: Calls let in so far.
        rejected: Calls refused with :class:`~layers.ShuttingDown` so far.
    """

    in_flight: int
    draining: bool
    admitted: int
    rejected: int


@final
class _State:
    """The counters of one Drain, shared by every service it wraps."""

    __slots__ = ("admitted", "draining", "idle", "in_flight", "rejected")

    def __init__(self) -> None:
        self.in_flight = 0
        self.admitted = 0
        self.rejected = 0
        self.draining = False
        # Made by the first wait_idle() that must wait, set and dropped by
        # the call that brings in_flight to 0: at most one at a time.
        self.idle: anyio.Event | None = None

    def leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight and self.idle is not None:
            idle, self.idle = self.idle, None
            idle.set()


@final
@attrs.frozen(eq=False)
class Drain(GuardShorthand):
    """Count the calls in flight; once draining begins, refuse new ones.

    Put it outermost (or near it) in the stack of a service that must stop
    cleanly: a server's request handler, a queue consumer. Until
    :meth:`start` is called it only counts. After :meth:`start`, every new
    call raises :class:`~layers.ShuttingDown` (a :class:`~layers.Rejected`:
    the inner service is not called) and :meth:`wait_idle` returns as soon
    as the last call already inside has ended: on success, on error or
    cancelled. Draining cannot be undone: a drained service is stopping.

    A :class:`~layers.Supervisor` given the drain (``drains=[drain]``) starts
    it when shutdown begins, at the same moment it tells its tasks; the
    ASGI middleware (:mod:`layers.asgi`) answers ``ShuttingDown`` with 503.
    Add it to a stack with ``ServiceBuilder().layer(drain)``: the program
    keeps the object to start it and wait on it, so no builder method makes
    one.

    The state lives in this layer object: every service it wraps counts
    into the same total, and one :meth:`start` drains them all. The success
    path adds no await and no checkpoint of its own.

    **As a block.** ``async with drain:`` (or ``async with drain.guard():``)
    counts the block as a call in flight, and refuses it with
    :class:`~layers.ShuttingDown` before it runs once draining has begun:
    a worker loop's unit of work drains as a service's call does.

    Args:
        retry_after: The hint given in :attr:`ShuttingDown.retry_after
            <layers.Rejected.retry_after>`: seconds after which a client may
            try again (another replica, the restarted process), or ``None``
            (the default) when unknown.
        name: A name for events and errors (default ``"drain"``).

    Raises:
        layers.ConfigurationError: For an invalid value, naming it.

    Example:
        >>> import anyio, layers
        >>> drain = layers.Drain()
        >>> async def slow(request: str) -> str:
        ...     await anyio.sleep(1)
        ...     return request
        >>> svc = drain.layer(slow)
        >>> async def main() -> None:
        ...     async with anyio.create_task_group() as group:
        ...         group.start_soon(svc, "in flight")
        ...         await anyio.sleep(0.1)
        ...         drain.start()
        ...         try:
        ...             await svc("late")
        ...         except layers.ShuttingDown as error:
        ...             print("late ->", error)
        ...         print("idle:", await drain.wait_idle(timeout=5))
        ...         print(drain.statistics())
        >>> anyio.run(main)
        late -> drain 'drain' is shutting down: 1 call still in flight
        idle: True
        DrainStatistics(in_flight=0, draining=True, admitted=1, rejected=1)
    """

    retry_after: float | None = attrs.field(
        default=None, kw_only=True, validator=_optional_seconds
    )
    name: str = attrs.field(default="drain", kw_only=True, validator=name_value)
    _state: _State = attrs.field(init=False, factory=_State, repr=False)
    kind = "drain"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    @property
    def draining(self) -> bool:
        """Whether :meth:`start` has been called."""
        return self._state.draining

    @property
    def in_flight(self) -> int:
        """The calls inside now."""
        return self._state.in_flight

    def statistics(self) -> DrainStatistics:
        """A snapshot of the counters (see :class:`DrainStatistics`)."""
        state = self._state
        return DrainStatistics(
            in_flight=state.in_flight,
            draining=state.draining,
            admitted=state.admitted,
            rejected=state.rejected,
        )

    def observe(self) -> Observation:
        """The drain for health checks and metrics (:class:`~layers.Observable`).

        ``UNHEALTHY`` once draining (the instance is leaving: a readiness
        check should take it out), with the state ``"draining"``; else
        ``HEALTHY``, ``"serving"``. ``in_flight`` and ``rejected`` as in
        :meth:`statistics`.
        """
        state = self._state
        draining = state.draining
        return Observation(
            status=HealthStatus.UNHEALTHY if draining else HealthStatus.HEALTHY,
            state="draining" if draining else "serving",
            in_flight=state.in_flight,
            rejected=state.rejected,
        )

    def start(self) -> None:
        """Begin draining: every new call is refused from now on.

        Calls already inside run on. Calling it again does nothing. It does
        not wait; :meth:`wait_idle` does.
        """
        state = self._state
        if state.draining:
            return
        state.draining = True
        if events.STATE.sinks:
            events.emit(DrainStarted(layer=self.name, in_flight=state.in_flight))

    async def wait_idle(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until no call is in flight; at most *timeout* seconds.

        Returns at once (after a checkpoint) when nothing is in flight. It
        does not start draining: without :meth:`start`, new calls may keep
        it waiting.

        Args:
            timeout: The longest wait in seconds (>= 0), or ``None`` (the
                default) to wait for as long as it takes.

        Returns:
            ``True`` if no call is in flight, ``False`` if *timeout* passed
            first.

        Raises:
            layers.ConfigurationError: If *timeout* is invalid.
        """
        if timeout is not None:
            _check_timeout(timeout)
        state = self._state
        if not state.in_flight:
            await anyio.lowlevel.checkpoint()
            return True
        if state.idle is None:
            state.idle = anyio.Event()
        idle = state.idle
        if timeout is None:
            await idle.wait()
            return True
        with anyio.move_on_after(timeout):
            await idle.wait()
        return not state.in_flight

    async def drain(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """:meth:`start`, then :meth:`wait_idle` (*timeout*); the latter's result."""
        self.start()
        return await self.wait_idle(timeout)

    def guard(self) -> AbstractAsyncContextManager[None]:
        """The block form: ``async with drain.guard():`` (or ``async with drain:``).

        The block counts as a call in flight from its start to its end
        (however it ends: normally, by an exception, cancelled), in the
        same counters as the service form's calls; once draining has
        begun, entering raises :class:`~layers.ShuttingDown` and the block
        does not run.

        Example:
            >>> import anyio, layers
            >>> drain = layers.Drain()
            >>> async def main() -> None:
            ...     async with drain:
            ...         print("in flight:", drain.in_flight)
            ...     drain.start()
            ...     try:
            ...         async with drain:
            ...             print("never runs")
            ...     except layers.ShuttingDown as error:
            ...         print(error)
            >>> anyio.run(main)
            in flight: 1
            drain 'drain' is shutting down: 0 calls still in flight
        """
        return _DrainGuard(self)

    def _admit(self) -> None:
        """Count a call (or a block) in, or refuse it once draining."""
        state = self._state
        if state.draining:
            self._reject()
        state.in_flight += 1
        state.admitted += 1

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: count its calls, refuse new ones once draining."""
        state = self._state
        admit = self._admit

        async def drain(request: Req, /) -> Res:
            admit()
            try:
                return await inner(request)
            finally:
                state.leave()

        return mark_built(drain, self, inner)

    def _reject(self) -> NoReturn:
        state = self._state
        state.rejected += 1
        in_flight = state.in_flight
        if events.STATE.sinks:
            events.emit(DrainRejected(layer=self.name, in_flight=in_flight))
        plural = "call" if in_flight == 1 else "calls"
        raise ShuttingDown(
            f"drain {self.name!r} is shutting down: {in_flight} {plural} still "
            "in flight",
            retry_after=self.retry_after,
            layer=self.name,
            reason="draining",
        )


@final
class _DrainGuard:
    """``async with drain.guard():``: the block is a call in flight."""

    __slots__ = ("_drain",)

    def __init__(self, drain: Drain) -> None:
        self._drain = drain

    async def __aenter__(self) -> None:
        self._drain._admit()  # pyright: ignore[reportPrivateUsage]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._drain._state.leave()  # pyright: ignore[reportPrivateUsage]


def _check_timeout(timeout: object) -> None:
    check_number(
        "Drain.wait_idle",
        "timeout",
        timeout,
        "None or a finite number of seconds >= 0",
        lambda v: v >= 0,
    )
