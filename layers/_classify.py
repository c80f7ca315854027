"""Which errors count: the ``on=`` / ``ignore=`` values shared by layers.

:class:`~layers.Retry` (what to retry) and :class:`~layers.CircuitBreaker`
(what is a failure) classify a call's outcome with the same two options:
``on=`` for errors and ``on_result=`` for responses. Both look only at
:class:`Exception`: cancellation, ``KeyboardInterrupt``, ``SystemExit`` and
other :class:`BaseException` s always propagate and are never retried nor
counted, so a class among them in ``on=`` could never match, and is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import attrs

from ._config import Validator, fail

__all__ = [
    "Classification",
    "ExceptionTypes",
    "classification",
    "exception_types",
    "matcher",
]

ExceptionTypes = type[Exception] | tuple[type[Exception], ...]
"""An :class:`Exception` subclass or a tuple of them, as for ``isinstance``."""

Classification = (
    type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]
)
"""What ``on=`` accepts: exception classes, or a predicate on the exception."""


def _exception_type(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, Exception)


def _exception_types(value: object) -> bool:
    if isinstance(value, tuple):
        items = cast("tuple[object, ...]", value)
        return all(_exception_type(each) for each in items)
    return _exception_type(value)


def classification(never: str) -> Validator:
    """An attrs validator for ``on=``; *never* ends the rule ("retried"...)."""
    rule = (
        "an Exception subclass, a tuple of them, or a predicate on the exception "
        f"(cancellation and other BaseExceptions are never {never})"
    )

    def validate(
        instance: object, attribute: attrs.Attribute[Any], value: object
    ) -> None:
        if isinstance(value, type):
            if not _exception_type(value):
                fail(instance, attribute, value, rule)
        elif isinstance(value, tuple):
            items = cast("tuple[object, ...]", value)
            if not items or not all(_exception_type(each) for each in items):
                fail(instance, attribute, items, rule)
        elif not callable(value):
            fail(instance, attribute, value, rule)

    return validate


def exception_types(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept an Exception subclass or a (possibly empty) tuple of them."""
    if not _exception_types(value):
        fail(
            instance,
            attribute,
            value,
            "an Exception subclass or a tuple of them (cancellation and other "
            "BaseExceptions are never counted)",
        )


def matcher(on: Classification) -> Callable[[Exception], bool]:
    """The predicate of a checked ``on=`` value: ``isinstance`` for classes."""
    if isinstance(on, type | tuple):
        kinds = cast("type[Exception] | tuple[type[Exception], ...]", on)

        def matches(error: Exception) -> bool:
            return isinstance(error, kinds)

        return matches
    return on
