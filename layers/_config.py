"""Validation of configuration values, shared by every layer.

Each check raises :class:`~layers.ConfigurationError` with a message that
names the owner, the parameter, the value given and what is allowed, e.g.
``Timeout(seconds=-1): seconds must be a finite number > 0, got -1``: for a
value of the wrong type as for a bad value (the error is both a
``TypeError`` and a ``ValueError``; see docs/explanation/errors.md).
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from typing import Any, NoReturn, TypeGuard, final

import attrs

from ._errors import ConfigurationError

__all__ = [
    "Rule",
    "bool_value",
    "callable_or_none",
    "callable_value",
    "check_callable",
    "check_int",
    "check_name",
    "check_number",
    "fail",
    "fail_value",
    "finite_number",
    "int_at_least",
    "is_finite_number",
    "name_value",
    "optional_positive_seconds",
    "positive_seconds",
    "random_draw",
    "random_value",
    "seconds_at_least_zero",
    "seed_value",
]


def fail_value(owner: str, parameter: str, value: object, rule: str) -> NoReturn:
    """Raise the ConfigurationError for *value* of *owner*'s *parameter*."""
    raise ConfigurationError(
        f"{owner}({parameter}={value!r}): {parameter} must be {rule}, got {value!r}"
    )


def fail(
    instance: object, attribute: attrs.Attribute[Any], value: object, rule: str
) -> NoReturn:
    """:func:`fail_value` for an attrs field of *instance*."""
    fail_value(type(instance).__name__, attribute.name, value, rule)


def is_finite_number(value: object) -> TypeGuard[float]:
    """Whether *value* is a finite int or float (booleans are not numbers here)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
    )


Validator = Callable[[object, "attrs.Attribute[Any]", object], None]


@final
class Rule:
    """An attrs validator that can also check a value given to a method.

    A field's validator names the owner by the instance's class
    (``RateLimit(rate=0)``); :meth:`check` takes the owner as text, so a
    method that changes the field later reuses the same rule
    (``RateLimit.set_limit(rate=0)``).
    """

    __slots__ = ("_check",)

    def __init__(self, check: Callable[[str, str, object], object]) -> None:
        self._check = check

    def __call__(
        self, instance: object, attribute: attrs.Attribute[Any], value: object
    ) -> None:
        self._check(type(instance).__name__, attribute.name, value)

    def check(self, owner: str, parameter: str, value: object) -> None:
        """Raise the ConfigurationError of *owner*'s *parameter* for a bad *value*."""
        self._check(owner, parameter, value)


def finite_number(
    rule: str, accept: Callable[[float], bool], *, optional: bool = False
) -> Rule:
    """Make an attrs validator for a finite real number that *accept* approves.

    Booleans, non-numbers, NaN and infinities are refused too. With
    *optional*, ``None`` passes. *rule* says what is allowed, for the message:
    ``Timeout(seconds=-1): seconds must be a finite number of seconds > 0,
    got -1``.
    """

    def validate(owner: str, parameter: str, value: object) -> None:
        if optional and value is None:
            return
        check_number(owner, parameter, value, rule, accept)

    return Rule(validate)


def check_number(
    owner: str,
    parameter: str,
    value: object,
    rule: str,
    accept: Callable[[float], bool],
) -> float:
    """Return *value* if it is a finite number that *accept* approves; else raise."""
    if not is_finite_number(value) or not accept(value):
        fail_value(owner, parameter, value, rule)
    return value


def check_int(
    owner: str, parameter: str, value: object, minimum: int, rule: str
) -> int:
    """Return *value* if it is an int >= *minimum* (not a bool); else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail_value(owner, parameter, value, rule)
    return value


def check_name(owner: str, parameter: str, value: object) -> str:
    """Return *value* if it is a non-empty string; else raise."""
    if not isinstance(value, str) or not value:
        fail_value(owner, parameter, value, "a non-empty string")
    return value


def int_at_least(minimum: int, rule: str, *, optional: bool = False) -> Rule:
    """Make an attrs validator for an int >= *minimum* (not a bool).

    With *optional*, ``None`` passes. *rule* says what is allowed.
    """

    def validate(owner: str, parameter: str, value: object) -> None:
        if optional and value is None:
            return
        check_int(owner, parameter, value, minimum, rule)

    return Rule(validate)


positive_seconds = finite_number("a finite number of seconds > 0", lambda v: v > 0)
"""Accept a finite real number of seconds greater than zero."""

optional_positive_seconds = finite_number(
    "None or a finite number of seconds > 0", lambda v: v > 0, optional=True
)
"""Accept None or a finite real number of seconds greater than zero."""

seconds_at_least_zero = finite_number(
    "a finite number of seconds >= 0", lambda v: v >= 0
)
"""Accept a finite real number of seconds, zero included."""


def name_value(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept a non-empty string."""
    check_name(type(instance).__name__, attribute.name, value)


def bool_value(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept ``True`` or ``False`` (a private field is named by its ``alias``)."""
    if not isinstance(value, bool):
        fail_value(
            type(instance).__name__,
            attribute.alias or attribute.name,
            value,
            "True or False",
        )


def callable_value(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept any callable."""
    if not callable(value):
        fail(instance, attribute, value, "callable")


def callable_or_none(rule: str) -> Validator:
    """Make an attrs validator that accepts None or any callable (*rule*: the text)."""

    def validate(
        instance: object, attribute: attrs.Attribute[Any], value: object
    ) -> None:
        if value is not None and not callable(value):
            fail(instance, attribute, value, rule)

    return validate


def check_callable(owner: str, parameter: str, value: object) -> Callable[..., Any]:
    """Raise unless *value* is callable (for plain functions, not attrs fields)."""
    if not callable(value):
        fail_value(owner, parameter, value, "callable")
    return value


def seed_value(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept ``None`` or an int (not a bool): a seed for a new random source."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        fail(instance, attribute, value, "None or an int")


def random_value(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    """Accept ``None`` or a :class:`random.Random`."""
    if value is not None and not isinstance(value, _random.Random):
        fail(instance, attribute, value, "None or a random.Random")


def random_draw(
    owner: str, seed: int | None, source: _random.Random | None
) -> Callable[[], float]:
    """The draw of a layer with ``seed=`` and ``random=``: *source*, or a new one."""
    if seed is not None and source is not None:
        raise ConfigurationError(
            f"{owner}(seed={seed!r}, random={source!r}): "
            "give seed (for a new random.Random) or random, not both"
        )
    return (source or _random.Random(seed)).random
