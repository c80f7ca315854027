"""A host for background work: an async context manager that owns a task group.

A shared store's background work (a concurrency limit renewing its leases,
a breaker sending its batches and listening for the fleet's changes) needs
a task to run in, and a layer cannot own one: the task group must be opened
and closed by the application, in one task. :class:`BackgroundHost` is that
task group behind ``async with``; :class:`layers.redis.RedisConnection` and
:class:`layers.MemoryBreakerStore` are hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, ClassVar, Self

import anyio
import anyio.abc

from ._failures import wraps_only

__all__ = ["BackgroundHost"]


class BackgroundHost:
    """Hosts background work in a task group for the life of its ``async with``."""

    __slots__ = ("_group",)

    enter_hint: ClassVar[str] = "use `async with` around the code that uses it"
    """How to enter this kind of host, for the error a call outside it raises."""

    def __init__(self) -> None:
        self._group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        """Open the task group that hosts the background work."""
        if self._group is not None:
            raise RuntimeError(f"{self!r} is already entered")
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        """Cancel the background work and wait for it to end.

        An exception of the block comes out as it was raised, not wrapped
        in an exception group of one (the background work never raises).
        """
        group, self._group = self._group, None
        if group is None:
            return None
        group.cancel_scope.cancel()
        try:
            return await group.__aexit__(exc_type, exc, traceback)
        except BaseExceptionGroup as failed:
            if exc is not None and wraps_only(failed, exc):
                return False  # the block's own exception goes on, unwrapped
            raise

    @property
    def entered(self) -> bool:
        """Whether it is entered (its background work can run)."""
        return self._group is not None

    def start_soon(
        self,
        function: Callable[[], Coroutine[Any, Any, object]],
        /,
        *,
        name: str | None = None,
    ) -> None:
        """Run *function* in the background until the ``async with`` block ends.

        Bind arguments with :func:`functools.partial` (as the other anyio
        spawning calls leave the name a keyword of their own).

        *function* must not raise (an exception would end the block).

        Raises:
            RuntimeError: It is not entered.
        """
        group = self._group
        if group is None:
            raise RuntimeError(
                f"{self!r} is not entered, so it cannot run background work: "
                f"{self.enter_hint}"
            )
        group.start_soon(function, name=name)
