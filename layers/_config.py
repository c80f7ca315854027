"""Validation of configuration values, shared by every layer.

Each check raises :class:`~layers.ConfigurationError` with a message that
names the owner, the parameter, the value given and what is allowed, e.g.
``Timeout(seconds=-1): seconds must be a finite number > 0, got -1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from ._errors import ConfigurationError

__all__ = [
    "callable_value",
    "fail",
    "finite_number",
    "name_value",
    "positive_seconds",
    "seconds_at_least_zero",
]


def fail(
    instance: object, attribute: attrs.Attribute[Any], value: object, rule: str
) -> None:
    owner = type(instance).__name__
    raise ConfigurationError(
        f"{owner}({attribute.name}={value!r}): {attribute.name} must be {rule}, "
        f"got {value!r}"
    )


Validator = Callable[[object, "attrs.Attribute[Any]", object], None]


def finite_number(
    rule: str, accept: Callable[[float], bool], *, optional: bool = False
) -> Validator:
    """Make an attrs validator for a finite real number that *accept* approves.

    Booleans, non-numbers, NaN and infinities are refused too. With
    *optional*, ``None`` passes. *rule* says what is allowed, for the message:
    ``Timeout(seconds=-1): seconds must be a finite number of seconds > 0,
    got -1``.
    """

    def validate(
        instance: object, attribute: attrs.Attribute[Any], value: object
    ) -> None:
        if optional and value is None:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not accept(value)
        ):
            fail(instance, attribute, value, rule)

    return validate


positive_seconds = finite_number("a finite number of seconds > 0", lambda v: v > 0)
"""Accept a finite real number of seconds greater than zero."""

seconds_at_least_zero = finite_number(
    "a finite number of seconds >= 0", lambda v: v >= 0
)
"""Accept a finite real number of seconds, zero included."""


def name_value(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept a non-empty string."""
    if not isinstance(value, str) or not value:
        fail(instance, attribute, value, "a non-empty string")


def callable_value(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept any callable."""
    if not callable(value):
        fail(instance, attribute, value, "callable")


def check_callable(owner: str, parameter: str, value: object) -> Callable[..., Any]:
    """Raise unless *value* is callable (for plain functions, not attrs fields)."""
    if not callable(value):
        raise ConfigurationError(
            f"{owner}({parameter}={value!r}): {parameter} must be callable, "
            f"got {value!r}"
        )
    return value
