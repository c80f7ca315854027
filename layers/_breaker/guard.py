"""The breaker's block form: ``async with breaker.guard():``."""

# The modules of layers._breaker share its private names.
# pyright: reportPrivateUsage=false

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, final

from .fleet import _admit_fleet
from .services import _admit, _Ticket

if TYPE_CHECKING:
    from .core import _Core


@final
class _BreakerGuard:
    """A block admitted as one call: the same steps as the service form's.

    Entering is :func:`~layers._breaker.services._admit` (or, with a
    store, ``_admit_fleet``); leaving records the block's outcome on the
    ticket: an exception as the service form records one (``on`` and
    ``ignore``; a cancellation is not an outcome), a clean exit as a
    success. ``on_result`` does not apply: a block has no response.
    """

    __slots__ = ("_core", "_entered", "_ticket")

    def __init__(self, core: _Core) -> None:
        self._core = core
        self._ticket: _Ticket | None = None
        self._entered = False

    async def __aenter__(self) -> None:
        if self._entered:
            raise RuntimeError(
                f"CircuitBreaker {self._core.name!r}: this guard is already "
                "entered; call guard() once per block"
            )
        core = self._core
        fleet = core.fleet
        self._ticket = _admit(core) if fleet is None else await _admit_fleet(fleet)
        self._entered = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticket, self._ticket = self._ticket, None
        self._entered = False
        if ticket is None:
            return
        if exc is None:
            ticket.answered(None, None)
        else:
            ticket.failed(exc)
