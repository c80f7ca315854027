"""The effective deadline of the current call, shared by every layer."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final

__all__ = ["DEADLINE", "current_deadline"]

DEADLINE: Final[ContextVar[float | None]] = ContextVar("layers_deadline", default=None)
"""Absolute deadline (event-loop clock) set by the innermost Timeout, or None."""


def current_deadline() -> float | None:
    """Return the effective deadline of the current call, or ``None``.

    A :class:`~layers.Timeout` records an absolute deadline on the event
    loop's clock (:func:`anyio.current_time`) for the duration of its inner
    call; nested timeouts record the tighter of theirs and the outer one, so
    this is always the earliest deadline in force. Retry uses it never to
    start an attempt or a backoff sleep that the deadline cannot cover; your
    own code can use it to pass a deadline on (a gRPC ``grpc-timeout``
    header, a database statement timeout)::

        deadline = layers.current_deadline()
        if deadline is not None:
            remaining = deadline - anyio.current_time()

    It is a :mod:`contextvars` variable: tasks started inside the call
    inherit it.
    """
    return DEADLINE.get()
