"""Timeout: cancel the inner call at a deadline and raise :class:`~layers.Elapsed`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar, final

import attrs

from . import _backend, events
from ._config import name_value, positive_seconds
from ._core import Service
from ._errors import Elapsed

__all__ = ["Timeout", "TimeoutService"]

Req = TypeVar("Req")
Res = TypeVar("Res")


@final
@attrs.frozen
class Timeout:
    """Cancel the inner call if it has not finished within *seconds*.

    The inner call runs under the backend's structured cancellation: at the
    deadline it is cancelled at its current ``await`` (its ``finally`` blocks
    and ``async with`` exits run), then the call raises
    :class:`~layers.Elapsed`, which is both a :class:`~layers.LayersError` and
    a builtin :class:`TimeoutError`. It composes with anyio and trio cancel
    scopes around it and inside it:

    * a response that is ready at the deadline is returned, not discarded;
    * a cancellation from outside (an enclosing cancel scope, a task group
      being cancelled) passes through unchanged, never turned into
      ``Elapsed``;
    * the deadline covers everything inside the layer, waiting in the queue
      of an inner limit included;
    * deadlines propagate: the layer records an absolute deadline that
      :func:`~layers.current_deadline` returns during the call, and a
      ``Timeout`` inside another never extends it (the tighter one wins;
      ``Elapsed`` then comes from the outer layer).

    No task is spawned per call. On asyncio the deadline is kept in a timer
    wheel shared by all calls on the event loop; on trio each call has its
    own :class:`trio.CancelScope`, which a timer wheel of the run (one task
    per run) cancels at the deadline. Code inside the call that cannot be
    cancelled (a worker thread, see :func:`~layers.service_fn`) delays the
    ``Elapsed`` until it returns.

    On asyncio the cancellation is a :meth:`asyncio.Task.cancel`, as with
    :func:`asyncio.timeout`, so a shielded anyio cancel scope *inside* the
    call does not hold it back there; on trio it does.

    Args:
        seconds: The time limit, a finite number of seconds > 0.
        name: A name for events and errors (default ``"timeout"``).

    Example:
        >>> import anyio, layers
        >>> async def slow(request: str) -> str:
        ...     await anyio.sleep(10)
        ...     return request
        >>> svc = layers.Timeout(0.01).layer(slow)
        >>> anyio.run(svc, "hi")
        Traceback (most recent call last):
          ...
        layers.Elapsed: request timed out after 0.01 s
    """

    seconds: float = attrs.field(validator=positive_seconds)
    name: str = attrs.field(default="timeout", kw_only=True, validator=name_value)

    def layer(self, inner: Service[Req, Res], /) -> TimeoutService[Req, Res]:
        """Wrap *inner* with this timeout."""
        return TimeoutService(inner, self)


@final
class TimeoutService(Generic[Req, Res]):
    """The service built by :class:`Timeout`; see there."""

    __slots__ = ("built_by", "inner", "seconds")

    def __init__(self, inner: Service[Req, Res], layer: Timeout) -> None:
        self.inner: Callable[[Req], Awaitable[Res]] = inner
        """The service it wraps (see :func:`~layers.inner_of`)."""
        self.built_by: Timeout = layer
        """The layer that built it (see :func:`~layers.layers_of`)."""
        self.seconds: float = layer.seconds

    if TYPE_CHECKING:

        async def __call__(self, request: Req, /) -> Res:
            """Call the inner service under the deadline."""
            ...

    else:
        __call__ = _backend.timeout_call

    def elapsed(self) -> Elapsed:
        """Report the expiry (an event) and return the error to raise."""
        layer = self.built_by
        if events.STATE.sinks:
            events.emit(events.TimeoutElapsed(layer=layer.name, timeout=layer.seconds))
        return Elapsed(timeout=layer.seconds, layer=layer.name)

    def __repr__(self) -> str:
        return f"TimeoutService({self.built_by!r}, inner={self.inner!r})"
