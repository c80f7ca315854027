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

__all__ = ["callable_value", "name_value", "positive_seconds"]


def _fail(
    instance: object, attribute: attrs.Attribute[Any], value: object, rule: str
) -> None:
    owner = type(instance).__name__
    raise ConfigurationError(
        f"{owner}({attribute.name}={value!r}): {attribute.name} must be {rule}, "
        f"got {value!r}"
    )


def positive_seconds(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept a finite real number of seconds greater than zero."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        _fail(instance, attribute, value, "a finite number of seconds > 0")


def name_value(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept a non-empty string."""
    if not isinstance(value, str) or not value:
        _fail(instance, attribute, value, "a non-empty string")


def callable_value(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept any callable."""
    if not callable(value):
        _fail(instance, attribute, value, "callable")


def check_callable(owner: str, parameter: str, value: object) -> Callable[..., Any]:
    """Raise unless *value* is callable (for plain functions, not attrs fields)."""
    if not callable(value):
        raise ConfigurationError(
            f"{owner}({parameter}={value!r}): {parameter} must be callable, "
            f"got {value!r}"
        )
    return value
