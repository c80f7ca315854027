"""Backoff: how long :class:`~layers.Retry` waits before each new attempt.

A backoff is any object with a ``delays()`` method that returns a fresh
iterator of delays in seconds: the first one is waited before attempt 2, the
second before attempt 3, and so on (:class:`Backoff`). Two are built in:

* :class:`ExponentialBackoff` (the default): ``min(cap, base x multiplier^n)``
  with *full jitter* by default, as in AWS's study "Exponential Backoff And
  Jitter" and in gRPC; or ``"equal"``, ``"decorrelated"`` or ``"none"``;
* :class:`ConstantBackoff`: the same delay every time.

:class:`~layers.Retry` also takes a plain function of the attempt number or
a sequence of delays, and turns them into a backoff (see its ``backoff``
option).

Random numbers come from a function returning floats in [0, 1); pass a
seeded one to get the same delays every run (``rng=random.Random(1).random``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from itertools import count
from typing import Any, Final, Literal, Protocol, cast, final, runtime_checkable

import attrs

from ._config import (
    fail,
    finite_number,
    is_finite_number,
    positive_seconds,
    seconds_at_least_zero,
)
from ._errors import CallbackError, ConfigurationError

__all__ = ["Backoff", "ConstantBackoff", "ExponentialBackoff"]

Jitter = Literal["full", "equal", "decorrelated", "none"]
"""The jitter kinds of :class:`ExponentialBackoff`."""

JITTERS: Final[tuple[str, ...]] = ("full", "equal", "decorrelated", "none")

_DEFAULT_RNG: Final = random.Random()


@runtime_checkable
class Backoff(Protocol):
    """Anything that gives :class:`~layers.Retry` its delays.

    ``delays()`` is called once per call that needs a retry, when the first
    attempt has failed, and must return a *fresh* iterator: its first value
    is the delay before attempt 2, its second before attempt 3, and so on.
    Delays are finite numbers of seconds ``>= 0``. The iterator may end;
    :class:`~layers.Retry` then repeats its last delay (or waits 0 s if it
    gave none). Retry asks for the next delay before every retry, also when
    a delay hint from the error (``retry_after``) replaces it.
    """

    def delays(self) -> Iterator[float]:
        """Return a new iterator of delays, in seconds."""
        ...


_multiplier = finite_number("a finite number >= 1", lambda v: v >= 1)


def _jitter(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in JITTERS:
        fail(instance, attribute, value, f"one of {', '.join(map(repr, JITTERS))}")


def _rng(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        fail(
            instance,
            attribute,
            value,
            "None or a function returning floats in [0, 1), such as "
            "random.Random(1).random",
        )


@final
@attrs.frozen(kw_only=True)
class ExponentialBackoff:
    """Exponential backoff with a cap and jitter.

    Before retry *n* (``n = 0`` before attempt 2), the un-jittered delay is
    ``t = min(cap, base x multiplier^n)``. The jitter then spreads the
    clients that failed together, so that they do not all come back at once:

    ``"full"`` (the default)
        ``uniform(0, t)``. The least total work and the fastest recovery in
        AWS's simulation; gRPC uses it too.
    ``"equal"``
        ``t/2 + uniform(0, t/2)``: never less than half of ``t``.
    ``"decorrelated"``
        ``min(cap, uniform(base, 3 x previous))``, with ``previous`` the
        last delay given (``base`` at first): grows from the last delay
        rather than from the attempt number. ``multiplier`` is not used.
    ``"none"``
        ``t`` exactly. Clients that failed together retry together: avoid it
        for anything with many clients.

    Args:
        base: The first un-jittered delay, seconds, finite and > 0
            (default 0.1).
        cap: The longest delay, seconds, finite and >= *base* (default 10).
            :class:`~layers.Retry` also refuses to wait longer than this for
            a ``retry_after`` hint, unless its ``max_delay`` says otherwise.
        multiplier: The growth factor per retry, finite and >= 1 (default 2).
        jitter: ``"full"``, ``"equal"``, ``"decorrelated"`` or ``"none"``.
        rng: The source of random numbers: a function returning floats
            uniformly in [0, 1), such as ``random.Random(1).random`` (default:
            the ``random`` method of one shared, unseeded ``random.Random``).
            Pass a seeded one for repeatable delays in tests.

    Example:
        >>> import random
        >>> from layers import ExponentialBackoff
        >>> delays = ExponentialBackoff(base=1, cap=5, jitter="none").delays()
        >>> [next(delays) for _ in range(5)]
        [1.0, 2.0, 4.0, 5.0, 5.0]
        >>> seeded = random.Random(7).random
        >>> full = ExponentialBackoff(base=1, cap=5, rng=seeded).delays()
        >>> [round(next(full), 3) for _ in range(4)]
        [0.324, 0.302, 2.604, 0.362]
    """

    base: float = attrs.field(default=0.1, validator=positive_seconds)
    cap: float = attrs.field(default=10.0, validator=positive_seconds)
    multiplier: float = attrs.field(default=2.0, validator=_multiplier)
    jitter: Jitter = attrs.field(default="full", validator=_jitter)
    rng: Callable[[], float] | None = attrs.field(
        default=None, validator=_rng, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        if self.cap < self.base:
            raise ConfigurationError(
                f"ExponentialBackoff(cap={self.cap!r}): cap must be >= base "
                f"({self.base!r}), got {self.cap!r}"
            )

    def delays(self) -> Iterator[float]:
        """Return a new iterator of delays (an endless one)."""
        uniform = self.rng if self.rng is not None else _DEFAULT_RNG.random
        cap = float(self.cap)
        base = float(self.base)
        if self.jitter == "decorrelated":
            return _decorrelated(base, cap, uniform)
        return _exponential(base, cap, float(self.multiplier), self.jitter, uniform)


def _exponential(
    base: float,
    cap: float,
    multiplier: float,
    jitter: str,
    uniform: Callable[[], float],
) -> Iterator[float]:
    ceiling = min(base, cap)
    while True:
        if jitter == "full":
            yield ceiling * uniform()
        elif jitter == "equal":
            half = ceiling / 2
            yield half + half * uniform()
        else:
            yield ceiling
        # grows step by step: no overflow however many retries
        ceiling = min(cap, ceiling * multiplier)


def _decorrelated(
    base: float, cap: float, uniform: Callable[[], float]
) -> Iterator[float]:
    previous = base
    while True:
        previous = min(cap, base + (previous * 3 - base) * uniform())
        yield previous


@final
@attrs.frozen
class ConstantBackoff:
    """The same delay before every retry.

    Args:
        delay: Seconds, finite and >= 0. ``0`` retries at once (Retry still
            lets other tasks run between attempts).

    Example:
        >>> from layers import ConstantBackoff
        >>> delays = ConstantBackoff(0.5).delays()
        >>> [next(delays) for _ in range(3)]
        [0.5, 0.5, 0.5]
    """

    delay: float = attrs.field(validator=seconds_at_least_zero)

    def delays(self) -> Iterator[float]:
        """Return a new iterator of delays (an endless one)."""
        delay = float(self.delay)
        while True:
            yield delay


@final
@attrs.frozen
class FunctionBackoff:
    """A backoff from a function of the attempt number that just failed."""

    function: Callable[[int], float]

    def delays(self) -> Iterator[float]:
        """Yield ``function(1)``, ``function(2)``..."""
        function = self.function
        for attempt in count(1):
            yield function(attempt)


@final
@attrs.frozen
class SequenceBackoff:
    """A backoff from a fixed sequence of delays; the last one repeats."""

    values: tuple[float, ...]

    def delays(self) -> Iterator[float]:
        """Yield the values, then the last one forever."""
        yield from self.values
        last = self.values[-1]
        while True:
            yield last


BackoffSpec = Backoff | Callable[[int], float] | Sequence[float]
"""What ``Retry(backoff=...)`` accepts."""


def to_backoff(owner: str, value: object) -> Backoff:
    """Turn *value* into a :class:`Backoff`, or raise a ConfigurationError."""
    if isinstance(value, Backoff):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        values = tuple(cast("Sequence[object]", value))
        delays: list[float] = []
        if not values:
            raise ConfigurationError(
                f"{owner}(backoff=[]): a sequence of delays must not be empty"
            )
        for index, delay in enumerate(values):
            if not is_finite_number(delay) or delay < 0:
                raise ConfigurationError(
                    f"{owner}(backoff={value!r}): backoff[{index}] must be a "
                    f"finite number of seconds >= 0, got {delay!r}"
                )
            delays.append(float(delay))
        return SequenceBackoff(tuple(delays))
    if callable(value):
        return FunctionBackoff(cast("Callable[[int], float]", value))
    raise ConfigurationError(
        f"{owner}(backoff={value!r}): backoff must be a Backoff (such as "
        "ExponentialBackoff()), a function of the attempt number returning "
        "seconds, or a sequence (list or tuple) of delays; an iterator can be "
        f"used only once, so it is refused; got {type(value).__name__}"
    )


def check_delay(
    owner: str,
    backoff: object,
    attempt: int,
    delay: object,
    cause: BaseException | None = None,
    *,
    layer: str | None = None,
) -> float:
    """Return *delay* as a float, or raise CallbackError (from *cause*) if bad."""
    if not is_finite_number(delay) or delay < 0:
        raise CallbackError(
            f"{owner}: backoff {backoff!r} gave {delay!r} as the delay after "
            f"attempt {attempt}; delays must be finite numbers of seconds >= 0",
            layer=layer,
            parameter="backoff",
        ) from cause
    return float(delay)
