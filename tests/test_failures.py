"""Tests of the private helper that splits a failure from a cancellation."""

from __future__ import annotations

import sys

import anyio
import pytest

from layers._failures import is_cancellation, reraise, split_failure

pytestmark = pytest.mark.anyio


class Stop(BaseException):
    """A BaseException that is not a cancellation."""


def test_split_plain_exceptions() -> None:
    """An Exception is all failure; a bare BaseException is all rest."""
    error = ValueError("x")
    assert split_failure(error) == (error, None)
    stop = Stop()
    assert split_failure(stop) == (None, stop)
    group = ExceptionGroup("all errors", [ValueError("a"), KeyError("b")])
    assert split_failure(group) == (group, None)


def test_split_a_mixed_nested_group() -> None:
    """A group keeps its shape: the Exceptions on one side, the rest on the other."""
    value, stop, key = ValueError("a"), Stop(), KeyError("b")
    group = BaseExceptionGroup("outer", [value, BaseExceptionGroup("in", [stop, key])])
    failure, rest = split_failure(group)
    assert isinstance(failure, ExceptionGroup)
    assert failure.exceptions[0] is value
    inner = failure.exceptions[1]
    assert isinstance(inner, ExceptionGroup)
    assert inner.exceptions == (key,)
    assert isinstance(rest, BaseExceptionGroup)
    assert not isinstance(rest, Exception)
    inner_rest = rest.exceptions[0]
    assert isinstance(inner_rest, BaseExceptionGroup)
    assert inner_rest.exceptions == (stop,)


async def test_is_cancellation() -> None:
    """The backend's cancellation, alone or in groups of nothing else."""
    seen: list[BaseException] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(1)
        finally:
            seen.append(sys.exc_info()[1] or Stop())
    [cancelled] = seen
    assert is_cancellation(cancelled)
    assert is_cancellation(BaseExceptionGroup("g", [cancelled]))
    assert not is_cancellation(BaseExceptionGroup("g", [cancelled, Stop()]))
    assert not is_cancellation(None)
    assert not is_cancellation(Stop())
    assert not is_cancellation(ValueError())


def split_and_reraise(group: BaseExceptionGroup[BaseException]) -> None:
    """Raise *group*, catch it, record nothing and raise its rest again."""
    try:
        raise group
    except BaseException as raised:
        _, rest = split_failure(raised)
        assert rest is not None
        reraise(rest)


def test_reraise_keeps_the_parts_own_context() -> None:
    """reraise() from an except block does not chain the whole group as context."""
    group = BaseExceptionGroup("g", [ValueError("a"), Stop()])
    with pytest.raises(BaseExceptionGroup) as caught:
        split_and_reraise(group)
    assert caught.value is not group
    assert caught.value.__context__ is None
    assert caught.value.exceptions == (group.exceptions[1],)
