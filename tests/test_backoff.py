"""Tests of the backoff strategies: exact sequences, jitter bounds, configuration."""

from __future__ import annotations

import math
import random
import re
from itertools import islice

import hypothesis
import pytest
from hypothesis import strategies as st

import layers
from layers import ConstantBackoff, ExponentialBackoff
from layers._backoff import to_backoff


def take(backoff: layers.Backoff, count: int) -> list[float]:
    """The first *count* delays of a fresh iterator."""
    return list(islice(backoff.delays(), count))


# ------------------------------------------------------------ exact sequences


def test_exponential_without_jitter_doubles_up_to_the_cap() -> None:
    """jitter='none': base x 2^n, capped, exactly."""
    backoff = ExponentialBackoff(base=0.5, cap=5, jitter="none")
    assert take(backoff, 7) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_exponential_multiplier() -> None:
    """The multiplier sets the growth factor."""
    backoff = ExponentialBackoff(base=1, cap=100, multiplier=3, jitter="none")
    assert take(backoff, 5) == [1, 3, 9, 27, 81]


def test_full_jitter_sequence_with_a_seeded_source() -> None:
    """Full jitter: uniform(0, min(cap, base x 2^n)) from the given Random."""
    backoff = ExponentialBackoff(base=1, cap=5, rng=random.Random(42).random)
    reference = random.Random(42)
    expected = [min(5, 2**n) * reference.random() for n in range(6)]
    assert take(backoff, 6) == expected
    pinned = ExponentialBackoff(base=1, cap=5, rng=random.Random(42).random)
    assert [round(delay, 4) for delay in take(pinned, 3)] == [0.6394, 0.05, 1.1001]


def test_equal_jitter_sequence_with_a_seeded_source() -> None:
    """Equal jitter: t/2 + uniform(0, t/2)."""
    backoff = ExponentialBackoff(
        base=1, cap=5, jitter="equal", rng=random.Random(3).random
    )
    reference = random.Random(3)
    expected = []
    for n in range(6):
        t = min(5, 2**n)
        expected.append(t / 2 + t / 2 * reference.random())
    assert take(backoff, 6) == expected


def test_decorrelated_jitter_sequence_with_a_seeded_source() -> None:
    """Decorrelated: min(cap, uniform(base, 3 x previous)), from previous = base."""
    backoff = ExponentialBackoff(
        base=0.5, cap=4, jitter="decorrelated", rng=random.Random(9).random
    )
    reference = random.Random(9)
    previous = 0.5
    expected = []
    for _ in range(8):
        previous = min(4, 0.5 + (previous * 3 - 0.5) * reference.random())
        expected.append(previous)
    assert take(backoff, 8) == expected


def test_every_delays_call_starts_afresh() -> None:
    """Two iterators of one backoff are independent (one per call that retries)."""
    backoff = ExponentialBackoff(base=1, cap=8, jitter="none")
    first = backoff.delays()
    next(first)
    next(first)
    assert next(backoff.delays()) == 1
    assert next(first) == 4


def test_constant_backoff() -> None:
    """ConstantBackoff gives the same delay forever."""
    assert take(ConstantBackoff(0.25), 4) == [0.25] * 4
    assert take(ConstantBackoff(0), 2) == [0.0, 0.0]


def test_a_sequence_repeats_its_last_delay() -> None:
    """A list of delays is used in order, then its last value repeats."""
    assert take(to_backoff("Retry", [0.1, 0.5, 2]), 5) == [0.1, 0.5, 2, 2, 2]


def test_a_function_gets_the_attempt_number() -> None:
    """A function of the attempt that failed (1 first) gives each delay."""
    assert take(to_backoff("Retry", lambda attempt: attempt / 10), 3) == [
        0.1,
        0.2,
        0.3,
    ]


def test_no_overflow_after_many_retries() -> None:
    """Thousands of retries stay at the cap, without overflow."""
    backoff = ExponentialBackoff(base=1, cap=30, multiplier=10, jitter="none")
    assert list(islice(backoff.delays(), 5000, 5001)) == [30]


def test_default_is_full_jitter_from_a_tenth_of_a_second_to_ten() -> None:
    """The defaults: base 0.1 s, cap 10 s, doubling, full jitter."""
    backoff = ExponentialBackoff()
    assert (backoff.base, backoff.cap, backoff.multiplier, backoff.jitter) == (
        0.1,
        10.0,
        2.0,
        "full",
    )


# ------------------------------------------------------------------ bounds

settings = hypothesis.settings(max_examples=50)
bases = st.floats(min_value=1e-3, max_value=10)
caps = st.floats(min_value=1e-3, max_value=100)
multipliers = st.floats(min_value=1, max_value=5)
seeds = st.integers(min_value=0, max_value=2**32)


def ceilings(base: float, cap: float, multiplier: float, count: int) -> list[float]:
    """The un-jittered delays min(cap, base x multiplier^n), step by step.

    Computed the way ExponentialBackoff rounds them, so that the jitter
    bounds below hold exactly; test_no_jitter_is_exactly_the_capped_exponential
    checks the implementation against the formula itself.
    """
    out = []
    ceiling = min(base, cap)
    for _ in range(count):
        out.append(ceiling)
        ceiling = min(cap, ceiling * multiplier)
    return out


@settings
@hypothesis.given(base=bases, cap=caps, multiplier=multipliers, seed=seeds)
def test_full_jitter_is_within_zero_and_the_ceiling(
    base: float, cap: float, multiplier: float, seed: int
) -> None:
    """Full jitter: every delay in [0, min(cap, base x m^n)], so never above cap."""
    hypothesis.assume(cap >= base)
    backoff = ExponentialBackoff(
        base=base, cap=cap, multiplier=multiplier, rng=random.Random(seed).random
    )
    for delay, ceiling in zip(
        take(backoff, 30), ceilings(base, cap, multiplier, 30), strict=True
    ):
        assert 0 <= delay <= ceiling <= cap


@settings
@hypothesis.given(base=bases, cap=caps, multiplier=multipliers, seed=seeds)
def test_equal_jitter_is_within_half_and_the_ceiling(
    base: float, cap: float, multiplier: float, seed: int
) -> None:
    """Equal jitter: every delay in [t/2, t] with t the capped exponential."""
    hypothesis.assume(cap >= base)
    backoff = ExponentialBackoff(
        base=base,
        cap=cap,
        multiplier=multiplier,
        jitter="equal",
        rng=random.Random(seed).random,
    )
    for delay, ceiling in zip(
        take(backoff, 30), ceilings(base, cap, multiplier, 30), strict=True
    ):
        assert ceiling / 2 <= delay <= ceiling


@settings
@hypothesis.given(base=bases, cap=caps, seed=seeds)
def test_decorrelated_jitter_is_within_base_and_cap(
    base: float, cap: float, seed: int
) -> None:
    """Decorrelated jitter: every delay in [base, cap] and at most 3x the previous."""
    hypothesis.assume(cap >= base)
    backoff = ExponentialBackoff(
        base=base, cap=cap, jitter="decorrelated", rng=random.Random(seed).random
    )
    previous = base
    for delay in take(backoff, 30):
        assert base <= delay <= cap
        assert delay <= previous * 3 * (1 + 1e-12)
        previous = delay


@settings
@hypothesis.given(base=bases, cap=caps, multiplier=multipliers)
def test_no_jitter_is_exactly_the_capped_exponential(
    base: float, cap: float, multiplier: float
) -> None:
    """jitter='none': exactly min(cap, base x m^n), non-decreasing."""
    hypothesis.assume(cap >= base)
    backoff = ExponentialBackoff(
        base=base, cap=cap, multiplier=multiplier, jitter="none"
    )
    delays = take(backoff, 30)
    formula = [min(cap, base * multiplier**n) for n in range(30)]
    assert delays == pytest.approx(formula, rel=1e-9)
    assert delays == sorted(delays)


@settings
@hypothesis.given(delay=st.floats(min_value=0, max_value=1e6))
def test_constant_is_exactly_its_delay(delay: float) -> None:
    """ConstantBackoff: every delay is the one given."""
    assert take(ConstantBackoff(delay), 10) == [delay] * 10


@settings
@hypothesis.given(
    values=st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=10)
)
def test_sequence_is_its_values_then_the_last(values: list[float]) -> None:
    """A sequence: its values in order, then the last one again."""
    assert take(to_backoff("Retry", values), len(values) + 3) == [
        *values,
        values[-1],
        values[-1],
        values[-1],
    ]


# ----------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": -1}, "ExponentialBackoff(base=-1): base must be a finite number"),
        ({"base": 0}, "base must be a finite number of seconds > 0, got 0"),
        ({"cap": math.inf}, "cap must be a finite number of seconds > 0, got inf"),
        ({"base": 2, "cap": 1}, "ExponentialBackoff(cap=1): cap must be >= base (2)"),
        ({"multiplier": 0.5}, "multiplier must be a finite number >= 1, got 0.5"),
        ({"jitter": "half"}, "jitter must be one of 'full', 'equal', 'decorrelated'"),
        ({"rng": 42}, "rng must be None or a function returning floats in [0, 1)"),
        ({"base": True}, "base must be a finite number of seconds > 0, got True"),
    ],
)
def test_bad_exponential_configuration(kwargs: dict[str, object], message: str) -> None:
    """Bad values fail at construction, naming the parameter, value and range."""
    with pytest.raises(layers.ConfigurationError, match=re.escape(message)):
        ExponentialBackoff(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", [-0.1, math.nan, math.inf, "1", None])
def test_bad_constant_delay(delay: object) -> None:
    """ConstantBackoff refuses a negative, infinite or non-numeric delay."""
    with pytest.raises(
        layers.ConfigurationError,
        match=r"ConstantBackoff\(delay=.*\): delay must be a finite number of seconds",
    ):
        ConstantBackoff(delay)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], r"Retry\(backoff=\[\]\): a sequence of delays must not be empty"),
        ([0.1, -1], r"backoff\[1\] must be a finite number of seconds >= 0, got -1"),
        ([math.nan], r"backoff\[0\] must be a finite number of seconds >= 0, got nan"),
        (iter([1.0]), r"an iterator can be used only once, so it is refused"),
        (3, r"backoff must be a Backoff"),
        ("1,2", r"backoff must be a Backoff"),
    ],
)
def test_bad_backoff_values_for_retry(value: object, message: str) -> None:
    """Retry(backoff=...) refuses empty or negative sequences and iterators."""
    with pytest.raises(layers.ConfigurationError, match=message):
        layers.Retry(on=OSError, max_attempts=2, backoff=value)  # type: ignore[arg-type]
