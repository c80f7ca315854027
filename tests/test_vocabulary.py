"""One vocabulary: the same idea has one spelling in every layer.

docs/explanation/vocabulary.md is the table; these tests hold the public
options, statistics and event fields to it, so a new layer or option that
drifts (``minimum_x``, ``percent``, ``rejected_calls``, a hyphenated default
name) fails here.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import attrs
import pytest

import layers
import layers.events
import layers.health
import layers.httpx


def _attrs_classes() -> list[type[Any]]:
    found: list[type[Any]] = []
    for module in (layers, layers.events, layers.health, layers.httpx):
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if isinstance(value, type) and attrs.has(value):
                found.append(value)
    return found


def _field_names(cls: type[Any]) -> list[str]:
    if attrs.has(cls):
        return [field.name for field in attrs.fields(cls)]
    if dataclasses.is_dataclass(cls):
        return [field.name for field in dataclasses.fields(cls)]
    return list(getattr(cls, "__annotations__", {}))


def _public_classes() -> list[type[Any]]:
    found: dict[int, type[Any]] = {}
    for module in (layers, layers.events, layers.health, layers.httpx):
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if isinstance(value, type):
                found[id(value)] = value
    return list(found.values())


# Spellings that the vocabulary replaced, with the word to use instead.
_RETIRED = {
    r"^minimum_": "min_",
    r"^maximum_": "max_",
    r"percent": "a fraction (ratio)",
    r"^rejected_": "rejected",
    r"^half_open_calls": "probes",
    r"^failure_on$": "on",
    r"^failure_response$": "on_result",
    r"^max_queue$": "max_waiting",
}


@pytest.mark.parametrize("cls", _public_classes(), ids=lambda cls: cls.__qualname__)
def test_no_retired_spelling(cls: type[Any]) -> None:
    """No public option, statistic or event field uses a retired spelling."""
    for field in _field_names(cls):
        for pattern, instead in _RETIRED.items():
            assert not re.search(pattern, field), (
                f"{cls.__qualname__}.{field}: use {instead!r}"
            )


def test_default_names_use_underscores() -> None:
    """Every layer's default ``name`` is a snake_case word."""
    names = {}
    for cls in _attrs_classes():
        fields = {field.name: field for field in attrs.fields(cls)}
        name = fields.get("name")
        if name is not None and isinstance(name.default, str):
            names[cls.__qualname__] = name.default
    assert names["CircuitBreaker"] == "circuit_breaker"
    for owner, default in names.items():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", default), (owner, default)


def test_retry_and_breaker_classify_with_the_same_options() -> None:
    """``on`` and ``on_result`` mean "which errors / which results count" in both."""
    retry = {field.name for field in attrs.fields(layers.Retry)}
    breaker = {field.name for field in attrs.fields(layers.CircuitBreaker)}
    assert {"on", "on_result"} <= retry & breaker
    assert set(layers.httpx.breaker_options()) == {"on", "on_result"}


def test_probes_is_one_word() -> None:
    """The option, the event field and the statistics share ``probes``."""
    breaker = layers.CircuitBreaker(probes=3)
    assert breaker.probes == 3
    assert "probes" in _field_names(layers.events.CircuitHalfOpened)
    stats = breaker.statistics()
    assert (stats.probes_in_flight, stats.probes_recorded) == (0, 0)


def test_a_bound_shares_the_word_of_what_it_bounds() -> None:
    """ConcurrencyLimit bounds ``in_flight`` and ``waiting`` with ``max_`` them."""
    limit = layers.ConcurrencyLimit(2, max_waiting=3)
    assert (limit.max_in_flight, limit.max_waiting) == (2, 3)
    stats = limit.statistics()
    assert (stats.in_flight, stats.waiting, stats.max_in_flight) == (0, 0, 2)


def test_a_limit_is_max_and_its_reason_says_so() -> None:
    """Retry's limits are max_attempts and max_time, and so are its reasons."""
    retry = {field.name for field in attrs.fields(layers.Retry)}
    assert {"max_attempts", "max_time"} <= retry
    assert "attempts" not in retry
    hints = typing.get_type_hints(layers.events.RetryStopped)
    reasons = typing.get_args(hints["reason"])
    assert "max_attempts" in reasons
    assert "max_time" in reasons


def test_rejected_is_the_shared_counter() -> None:
    """Every stateful layer's statistics count refusals as ``rejected``."""
    stats = [
        layers.CircuitBreaker().statistics(),
        layers.ConcurrencyLimit(1).statistics(),
        layers.RateLimit(1, 1.0).statistics(),
        layers.Drain().statistics(),
    ]
    for each in stats:
        assert each.rejected == 0, type(each).__qualname__


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt, SystemExit, GeneratorExit, BaseException]
)
def test_classification_refuses_what_is_never_counted(
    error: type[BaseException],
) -> None:
    """on= and ignore= take Exception classes only, in Retry and the breaker."""
    with pytest.raises(layers.ConfigurationError, match=r"CircuitBreaker\(on="):
        layers.CircuitBreaker(on=error)  # type: ignore[arg-type]
    with pytest.raises(layers.ConfigurationError, match=r"CircuitBreaker\(ignore="):
        layers.CircuitBreaker(ignore=error)  # type: ignore[arg-type]
    with pytest.raises(layers.ConfigurationError, match=r"Retry\(on="):
        layers.Retry(on=error)  # type: ignore[arg-type]


def test_budget_ratio_is_a_fraction() -> None:
    """RetryBudget takes a fraction, as tower: 0.2 is 20 %."""
    assert layers.RetryBudget().ratio == 0.2
