"""Coalesce (singleflight): concurrent calls with the same key share one inner call.

Where the shared call runs
--------------------------
The shared call cannot run in the task of the caller that started it: that
caller may be cancelled and leave while others still wait, and a coroutine
cannot move to another task. anyio has no task that outlives its task
group, and a task group the user must enter would make every stack with a
``Coalesce`` need one. So the shared call runs in a task of its own that no
task group owns (:func:`layers._backend.spawn_detached`: an asyncio task, a
trio system task), and its life is bound to its waiters instead, as a task
group's would be:

* it starts with the first caller of its key;
* it ends when the inner call ends, and wakes every waiter;
* when its last waiter leaves (cancelled), that waiter cancels it and waits
  for its end (shielded), so that once every caller has returned, nothing
  the layer started is still running.

A flight is taken out of the table when it ends or when its last waiter
leaves, whichever comes first; a caller that comes later starts a new one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Generic, NoReturn, TypeVar, final

import anyio
import attrs

from . import events
from ._backend import Detached, Waiter, new_waiter, spawn_detached
from ._config import callable_or_none, int_at_least, name_value
from ._core import Service, mark_built
from ._deadline import DEADLINE
from ._errors import CallbackError
from ._failures import is_cancellation
from ._observable import Observation
from .events import Event, Level

__all__ = ["Coalesce", "CoalesceAbandoned", "CoalesceBypassed", "CoalesceStatistics"]

Req = TypeVar("Req")
Res = TypeVar("Res")


@attrs.frozen(kw_only=True)
class CoalesceAbandoned(Event):
    """Every caller of a shared call left, so :class:`~layers.Coalesce` cancelled it.

    Attributes:
        callers: The callers that had shared the call (all of them left,
            cancelled: a timeout, a client that went away).
    """

    event: ClassVar[str] = "coalesce_abandoned"
    kind: ClassVar[str] = "coalesce"
    level: ClassVar[Level] = "info"

    callers: int


@attrs.frozen(kw_only=True)
class CoalesceBypassed(Event):
    """A call found :class:`~layers.Coalesce`'s table full and ran on its own.

    Attributes:
        max_keys: The table's bound (keys with a shared call in flight).
    """

    event: ClassVar[str] = "coalesce_bypassed"
    kind: ClassVar[str] = "coalesce"
    level: ClassVar[Level] = "info"

    max_keys: int


@final
@attrs.frozen(kw_only=True)
class CoalesceStatistics:
    """A snapshot of a :class:`~layers.Coalesce` (see its ``statistics()``).

    Attributes:
        keys: Keys with a shared call in flight now (at most ``max_keys``).
        waiting: Callers waiting for a shared call now.
        calls: Calls through the layer, so far.
        inner_calls: Shared calls started (calls of the inner service, the
            bypassed ones included), so far.
        coalesced: Calls that joined a shared call already in flight, so far.
        bypassed: Calls that found the table full and called the inner
            service on their own, so far.
        abandoned: Shared calls cancelled because every caller left, so far.
        max_keys: The table's bound.
    """

    keys: int
    waiting: int
    calls: int
    inner_calls: int
    coalesced: int
    bypassed: int
    abandoned: int
    max_keys: int


@final
class _Flight(Generic[Res]):
    """One shared call and the callers waiting for it."""

    __slots__ = (
        "callers",
        "done",
        "ended",
        "error",
        "left",
        "ok",
        "response",
        "started",
        "task",
        "traceback",
        "waiters",
    )

    def __init__(self) -> None:
        # The callers waiting, each parked on a waiter of its own (cheaper
        # than anyio's Event); a dict, so that one leaves in O(1).
        self.waiters: dict[Waiter, None] = {}
        self.callers = 0
        self.done = False
        self.ended: Waiter | None = None  # the last caller, waiting for the end
        self.task: Detached | None = None
        self.started = False
        self.left = False  # every waiter left: cancelled, or not to start
        self.ok = False
        self.response: Res | None = None
        self.error: BaseException | None = None
        self.traceback: Any = None

    def finish(self) -> None:
        """The shared call ended: wake every caller."""
        self.done = True
        for waiter in self.waiters:
            waiter.wake()
        if self.ended is not None:
            self.ended.wake()

    def answer(self, name: str) -> Res:
        """What every waiter gets: the response, or the error raised again."""
        if self.ok:
            return self.response  # type: ignore[return-value]
        error = self.error
        if error is None:  # cancelled from outside: the run is closing
            raise RuntimeError(
                f"coalesce {name!r}: the shared call was cancelled from outside "
                "(the event loop or the trio run is closing)"
            )
        # As asyncio.Future.result(): the same object, raised from the shared
        # call's own traceback each time (not one that grows per waiter).
        raise error.with_traceback(self.traceback)


@final
class _State:
    __slots__ = (
        "abandoned",
        "bypassed",
        "calls",
        "coalesced",
        "flights",
        "inner_calls",
        "waiting",
    )

    def __init__(self) -> None:
        self.flights: dict[Hashable, _Flight[Any]] = {}
        self.waiting = 0
        self.calls = 0
        self.inner_calls = 0
        self.coalesced = 0
        self.bypassed = 0
        self.abandoned = 0


_key = callable_or_none("None (the request itself) or a callable key(request)")
_max_keys = int_at_least(1, "an int >= 1")


@final
@attrs.frozen(eq=False)
class Coalesce:
    """Let concurrent calls with the same key share one inner call (singleflight).

    A call whose key (``key(request)``, by default the request itself)
    matches a call in flight does not call the inner service: it waits for
    that call and gets its outcome. As Go's ``singleflight``: a thousand
    concurrent requests for one cold cache entry make one downstream call.
    Calls that come after the shared call ended start a new one (nothing is
    cached).

    * **Responses** reach every caller as **the same object**: do not
      mutate it (or copy it in a layer outside).
    * **Errors** reach every caller as the same exception object, as an
      :class:`asyncio.Future`'s result does: each caller raises it from the
      shared call's own traceback (so the traceback does not grow per
      caller), and notes that outer layers add (a :class:`~layers.Retry`'s)
      are shared.
    * **Cancellation**: a caller that is cancelled leaves alone; the shared
      call goes on while others wait. When the **last** caller leaves, the
      shared call is cancelled, and that caller waits for its end, so
      nothing is left running.
    * **Deadlines**: the shared call runs without the callers' deadlines
      (:func:`~layers.current_deadline` is ``None`` in it): a caller's
      :class:`~layers.Timeout` outside this layer makes that caller leave
      at its deadline, and the call is cancelled when the last one has
      left. Put a ``Timeout`` *inside* ``Coalesce`` to bound the shared
      call itself.
    * **Context**: the shared call runs in a task of its own (see the
      module ``layers._coalesce``), in a copy of the context of the caller
      that started it (its :mod:`contextvars`, such as a request id).
      :func:`~layers.current_attempt` of an outer ``Retry`` is that caller's.
    * **Bound**: at most *max_keys* keys are in flight at once. A call
      with a new key that finds the table full is not coalesced: it calls
      the inner service on its own, as if the layer were not there (so a
      flood of distinct keys is never refused by this layer), and emits
      :class:`~layers.events.CoalesceBypassed`.

    Only requests that are safe to share belong here (reads, idempotent
    calls whose answer is the same for every caller); use *key* to say what
    makes two requests the same (an URL without its tracing headers). The
    key must be hashable: an unhashable one raises
    :class:`~layers.CallbackError`. The state (the calls in flight) lives
    in the layer object, shared by every service it wraps.

    Args:
        key: A function ``key(request) -> Hashable``, or ``None`` (the
            default) to use the request itself.
        max_keys: The most keys in flight at once, an int >= 1 (default
            1,000).
        name: A name for events and metrics (default ``"coalesce"``).

    Raises:
        layers.ConfigurationError: For an invalid value, naming it.

    Example:
        >>> import anyio, layers
        >>> calls = []
        >>> async def fetch(url: str) -> str:
        ...     calls.append(url)
        ...     await anyio.sleep(1)
        ...     return f"body of {url}"
        >>> svc = layers.Coalesce().layer(fetch)
        >>> async def main() -> None:
        ...     async with anyio.create_task_group() as group:
        ...         for _ in range(100):
        ...             group.start_soon(svc, "/users/1")
        >>> anyio.run(main)
        >>> calls
        ['/users/1']
    """

    key: Callable[[Any], Hashable] | None = attrs.field(
        default=None, kw_only=True, validator=_key
    )
    max_keys: int = attrs.field(default=1000, kw_only=True, validator=_max_keys)
    name: str = attrs.field(default="coalesce", kw_only=True, validator=name_value)
    _state: _State = attrs.field(init=False, factory=_State, repr=False)
    kind: ClassVar[str] = "coalesce"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def statistics(self) -> CoalesceStatistics:
        """A snapshot of the counters (see :class:`CoalesceStatistics`)."""
        state = self._state
        return CoalesceStatistics(
            keys=len(state.flights),
            waiting=state.waiting,
            calls=state.calls,
            inner_calls=state.inner_calls,
            coalesced=state.coalesced,
            bypassed=state.bypassed,
            abandoned=state.abandoned,
            max_keys=self.max_keys,
        )

    def observe(self) -> Observation:
        """The layer for health checks and metrics (:class:`~layers.Observable`).

        Always ``HEALTHY``; ``in_flight`` is the keys with a shared call in
        flight, ``waiting`` the callers waiting for one, and the figures are
        ``calls``, ``inner_calls``, ``coalesced``, ``bypassed``,
        ``abandoned`` and ``max_keys``.
        """
        stats = self.statistics()
        return Observation(
            in_flight=stats.keys,
            waiting=stats.waiting,
            figures={
                "calls": stats.calls,
                "inner_calls": stats.inner_calls,
                "coalesced": stats.coalesced,
                "bypassed": stats.bypassed,
                "abandoned": stats.abandoned,
                "max_keys": stats.max_keys,
            },
        )

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: calls with the same key in flight share one call of it."""
        state = self._state
        flights = state.flights
        key_of = self.key
        max_keys = self.max_keys
        name = self.name
        task_name = f"layers.Coalesce {name!r} shared call"
        bad_key = self._bad_key
        bypass = self._bypass
        leave = self._leave

        async def run(key: Hashable, flight: _Flight[Res], request: Req) -> None:
            # The shared call, in its own task (see the module docs).
            DEADLINE.set(None)  # this task's context is a copy: no caller's deadline
            try:
                if flight.left:  # every waiter left before it started
                    return
                flight.started = True
                flight.response = await inner(request)
                flight.ok = True
            except BaseException as error:
                if is_cancellation(error):
                    raise  # the last waiter left, or the run is closing
                flight.error = error
                flight.traceback = error.__traceback__
            finally:
                if flights.get(key) is flight:
                    del flights[key]
                flight.finish()

        async def coalesce(request: Req, /) -> Res:
            key = request if key_of is None else key_of(request)
            try:
                flight = flights.get(key)
            except TypeError:
                bad_key(key)
            state.calls += 1
            if flight is None:
                if len(flights) >= max_keys:
                    bypass()
                    return await inner(request)
                flight = flights[key] = _Flight[Res]()
                state.inner_calls += 1
                flight.task = spawn_detached(
                    functools.partial(run, key, flight, request), name=task_name
                )
            else:
                state.coalesced += 1
            waiter = new_waiter()
            waiters = flight.waiters
            waiters[waiter] = None
            flight.callers += 1
            state.waiting += 1
            try:
                await waiter.wait()
            except BaseException:
                state.waiting -= 1
                del waiters[waiter]
                if not waiters and not flight.done:
                    await leave(key, flight)
                raise
            state.waiting -= 1
            del waiters[waiter]
            return flight.answer(name)

        return mark_built(coalesce, self, inner)

    async def _leave(self, key: Hashable, flight: _Flight[Any]) -> None:
        """The last waiter leaves: cancel the shared call, wait for its end."""
        flight.left = True
        state = self._state
        if state.flights.get(key) is flight:
            del state.flights[key]  # a newcomer starts a call of its own
        state.abandoned += 1
        if flight.started and flight.task is not None:
            flight.task.cancel()
        ended = flight.ended = new_waiter()
        with anyio.CancelScope(shield=True):
            await ended.wait()
        if events.STATE.sinks:
            events.emit(CoalesceAbandoned(layer=self.name, callers=flight.callers))

    def _bypass(self) -> None:
        state = self._state
        state.bypassed += 1
        state.inner_calls += 1
        if events.STATE.sinks:
            events.emit(CoalesceBypassed(layer=self.name, max_keys=self.max_keys))

    def _bad_key(self, key: object) -> NoReturn:
        # The value's type only: the key may hold a payload.
        what = "the request (no key= function)" if self.key is None else "the key"
        raise CallbackError(
            f"Coalesce {self.name!r}: {what} must be hashable, got an unhashable "
            f"{type(key).__name__}; give key= a function that returns a hashable "
            "value",
            layer=self.name,
            parameter="key",
        ) from None
