"""The failure in what a call raised, apart from what must propagate.

Code that records a call's failure instead of raising it (a supervised
task, a health check) cannot simply write ``except Exception``. A call that
runs child tasks ends, when a child raises while the call is being
cancelled, with a :class:`BaseExceptionGroup` that holds the cancellation
*and* the error (trio's nurseries and anyio's task groups on trio; anyio's
task groups on asyncio drop the cancellation instead). ``except Exception``
misses such a group, so the error escapes the recording code, and the
cancellation, if it is caught too, must not be swallowed.

:func:`split_failure` splits what was raised into the failure (every
:class:`Exception` in it) and the rest (cancellations, ``KeyboardInterrupt``,
``SystemExit``...), which :func:`reraise` raises again so that the cancel
scope it belongs to can catch it::

    try:
        await call()
    except BaseException as raised:
        failure, rest = split_failure(raised)
        if failure is not None:
            record(failure)
        if rest is not None:
            reraise(rest)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn, cast

import anyio

__all__ = ["is_cancellation", "reraise", "split_failure", "wraps_only"]


def split_failure(
    error: BaseException,
) -> tuple[Exception | None, BaseException | None]:
    """Split *error* into ``(failure, rest)``.

    *failure* is *error* itself if it is an :class:`Exception` (an
    :class:`ExceptionGroup` included), else the :class:`ExceptionGroup` of
    the exceptions in a group (its leaves keep their tracebacks), else
    ``None``. *rest* is what must propagate: *error* itself if it is a bare
    :class:`BaseException`, the group of the rest of a group, else ``None``.
    """
    if isinstance(error, Exception):
        return error, None
    if isinstance(error, BaseExceptionGroup):
        return cast("BaseExceptionGroup[BaseException]", error).split(Exception)
    return None, error


def is_cancellation(error: BaseException | None) -> bool:
    """Whether *error* is the backend's cancellation, or a group of nothing else."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(error, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", error)
        return group.split(cancelled)[1] is None
    return isinstance(error, cancelled)


def reraise(error: BaseException) -> NoReturn:
    """Raise *error* (the *rest* of :func:`split_failure`) as it is.

    Raised from an ``except`` block, a part split off the exception being
    handled would get that exception as its ``__context__``; its own
    context is kept instead (as trio's cancel scopes do).
    """
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error, context


def wraps_only(group: BaseExceptionGroup[BaseException], error: BaseException) -> bool:
    """Whether *group* holds *error* and nothing else.

    That is, the same exceptions (the leaves, by identity, in order) as
    *error*, in groups of one or in a copy of *error* if it is a group
    itself (trio's nurseries may rebuild a group raised in their body). A
    context manager whose task group only hosts background work that never
    raises lets the block's own exception through as it was raised when its
    task group's exit wraps that one exception alone, so that an ``except``
    around the ``async with`` sees it (the pattern trio's docs suggest for a
    nursery that is an implementation detail).
    """
    mine = list(_leaves(error))
    theirs = list(_leaves(group))
    return len(mine) == len(theirs) and all(
        a is b for a, b in zip(mine, theirs, strict=True)
    )


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for member in cast("BaseExceptionGroup[BaseException]", error).exceptions:
            yield from _leaves(member)
    else:
        yield error
