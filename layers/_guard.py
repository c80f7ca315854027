"""``async with layer:``: the shorthand for ``async with layer.guard():``.

A layer object is shared by every task that uses it, so the guard entered
by ``async with layer:`` cannot live on the layer itself: each task keeps a
stack of the guards it entered on that layer (nested blocks on one task,
concurrent blocks on many), keyed by the layer's id and the task's
:func:`anyio.get_current_task` id. An entry lives only while its
block runs: the last exit removes it, so nothing is left behind.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final

from anyio import get_current_task

__all__ = ["GuardShorthand"]

# (id(layer), task id) -> the guards entered by that task on that layer,
# innermost last. A layer is alive while an entry names it (its guard holds
# it), so its id cannot be reused meanwhile.
_ENTERED: Final[dict[tuple[int, int], list[AbstractAsyncContextManager[Any]]]] = {}


class GuardShorthand:
    """A mixin: ``async with layer:`` enters ``layer.guard()`` (no arguments).

    The class provides ``guard()``; a guard that needs arguments (a keyed
    :class:`~layers.RateLimit`) refuses to be entered without them.
    """

    __slots__ = ()

    def guard(self) -> AbstractAsyncContextManager[None]:
        """The block form of the layer (see each layer's own ``guard``)."""
        raise NotImplementedError  # pragma: no cover - every layer overrides it

    async def __aenter__(self) -> None:
        guard = self.guard()
        await guard.__aenter__()
        key = (id(self), get_current_task().id)
        stack = _ENTERED.get(key)
        if stack is None:
            _ENTERED[key] = [guard]
        else:
            stack.append(guard)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        key = (id(self), get_current_task().id)
        stack = _ENTERED[key]
        guard = stack.pop()
        if not stack:
            del _ENTERED[key]
        return await guard.__aexit__(exc_type, exc, tb)


def entered() -> int:
    """How many ``async with layer:`` blocks are open (for tests)."""
    return sum(len(stack) for stack in _ENTERED.values())
