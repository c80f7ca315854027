"""The observable protocol: what health checks and metrics read from a layer.

A stateful layer (a breaker, a limit, a drain, a retry budget, a per-key
table, or a layer of your own) is *observable* when it has a ``name``, a
``kind`` and an ``observe()`` method that returns an :class:`Observation`:
its health verdict and its figures, under names shared by every layer where
the meaning is shared (``in_flight``, ``waiting``, ``rejected``).
:meth:`HealthChecks.add_layer <layers.HealthChecks.add_layer>` makes a
health check of any observable, and :meth:`OtelMetrics.observe
<layers.otel.OtelMetrics.observe>` gives it OpenTelemetry gauges; neither
knows the built-in classes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, Final, Protocol, cast, final, runtime_checkable

import attrs

from ._config import fail_value

__all__ = ["SHARED_FIGURES", "HealthStatus", "Observable", "Observation"]


class HealthStatus(enum.StrEnum):
    """The status of a health check, a whole report, or a layer.

    A :class:`~layers.health.HealthReport` and each of its checks have one,
    and so has an :class:`Observation`: the layer's own verdict.
    """

    HEALTHY = "healthy"
    """Everything works."""
    DEGRADED = "degraded"
    """It works, with less capacity or without an optional dependency."""
    UNHEALTHY = "unhealthy"
    """It does not work, and a readiness probe should take the instance out."""


SHARED_FIGURES: Final = frozenset({"state", "in_flight", "waiting", "rejected"})
"""The names an :class:`Observation` gives its own fields; a figure of
:attr:`Observation.figures` may not take one of them."""

_NAME: Final = re.compile(r"[a-z][a-z0-9_]*\Z")


def is_metric_name(value: object) -> bool:
    """Whether *value* can be part of an instrument name: ``[a-z][a-z0-9_]*``."""
    return isinstance(value, str) and _NAME.match(value) is not None


def _figures(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Mapping):
        fail_value("Observation", "figures", value, "a mapping of names to numbers")
    figures = cast("Mapping[object, object]", value)
    for name, figure in figures.items():
        if not is_metric_name(name) or name in SHARED_FIGURES:
            fail_value(
                "Observation",
                "figures",
                figures,
                "a mapping whose keys are lower-case names ([a-z][a-z0-9_]*) other "
                f"than {', '.join(sorted(SHARED_FIGURES))}",
            )
        if figure is not None and (
            isinstance(figure, bool) or not isinstance(figure, int | float)
        ):
            fail_value(
                "Observation",
                "figures",
                figures,
                "a mapping whose values are numbers (int or float) or None",
            )


def _count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or value < 0
    ):
        fail_value("Observation", attribute.name, value, "None or an int >= 0")


def _status(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, HealthStatus):
        fail_value("Observation", "status", value, "a HealthStatus")


def _state(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        fail_value("Observation", "state", value, "None or a non-empty string")


@final
@attrs.frozen(kw_only=True)
class Observation:
    """What an :class:`Observable` layer reports when it is looked at.

    Every field is optional: a layer reports what it has. ``None`` means
    "not counted here" (a breaker counts no calls in flight), which is not
    the same as ``0``.

    Attributes:
        status: The layer's own verdict from its state: a breaker that is
            open is ``UNHEALTHY``, half-open ``DEGRADED``; a drain that has
            started is ``UNHEALTHY`` (the instance is leaving); a limit is
            ``HEALTHY`` (its refusals speak through ``rejected``). Default
            ``HEALTHY``.
        state: The state the layer is in, if it has named states
            (``"open"``, ``"draining"``). A member of a string enum (as
            :class:`~layers.CircuitState`) also says which other states
            there are: the state gauge shows 0 for each of them.
        in_flight: Calls inside the layer now.
        waiting: Calls waiting to get in now.
        rejected: Calls refused so far, since the layer was made: a count
            that never goes down. A health check is ``DEGRADED`` when it
            grew since the check's previous run.
        figures: Other numbers that explain the layer (a failure rate, the
            keys in a table, a bound), by lower-case names
            (``[a-z][a-z0-9_]*``) other than the four above; a value may be
            ``None`` when it is unknown now. They are a health check's
            details and OpenTelemetry gauges. Report the same names every
            time.

    Raises:
        layers.ConfigurationError: For a field of the wrong type or a bad
            figure name.
    """

    status: HealthStatus = attrs.field(default=HealthStatus.HEALTHY, validator=_status)
    state: str | None = attrs.field(default=None, validator=_state)
    in_flight: int | None = attrs.field(default=None, validator=_count)
    waiting: int | None = attrs.field(default=None, validator=_count)
    rejected: int | None = attrs.field(default=None, validator=_count)
    figures: Mapping[str, int | float | None] = attrs.field(
        factory=lambda: dict[str, int | float | None](), validator=_figures
    )


@runtime_checkable
class Observable(Protocol):
    """A layer that health checks and metrics can look at.

    Implement three members and your own layer plugs into
    :meth:`HealthChecks.add_layer <layers.HealthChecks.add_layer>` and
    :meth:`OtelMetrics.observe <layers.otel.OtelMetrics.observe>`, as the
    built-in stateful layers do (:class:`~layers.CircuitBreaker`,
    :class:`~layers.RateLimit`, :class:`~layers.ConcurrencyLimit`,
    :class:`~layers.Drain`, :class:`~layers.RetryBudget`,
    :class:`~layers.PerKey`, :class:`~layers.Fallback`,
    :class:`~layers.Coalesce`, :class:`~layers.AdaptiveThrottle` and the
    fault injection layers). See the
    guide "Writing a layer".

    ``observe()`` is called off the success path (by a health check, at a
    metrics collection), possibly with no event loop running in the thread
    (an exporter's thread): it must not await, block or need the loop.

    Example:
        >>> import layers
        >>> class Cache:
        ...     name = "users-cache"
        ...     kind = "cache"
        ...
        ...     def __init__(self) -> None:
        ...         self.loading = 0
        ...
        ...     def observe(self) -> layers.Observation:
        ...         return layers.Observation(in_flight=self.loading)
        >>> isinstance(Cache(), layers.Observable)
        True
    """

    @property
    def name(self) -> str:
        """The layer's name, which names its health check and its metrics."""
        ...

    @property
    def kind(self) -> str:
        """The kind of layer, lower case (``"circuit_breaker"``, ``"cache"``).

        As :attr:`layers.Event.kind`; the metrics' instrument names start with
        ``layers.<kind>.``, so it must match ``[a-z][a-z0-9_]*``.
        """
        ...

    def observe(self) -> Observation:
        """Look at the layer now: its verdict and its figures."""
        ...
