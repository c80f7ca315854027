"""OpenTelemetry metrics for every layer: a sink, a call-measuring layer, gauges.

Needs the ``otel`` extra (``pip install 'service-layers[otel]'``, which
brings ``opentelemetry-api``); configure a ``MeterProvider`` from the
OpenTelemetry SDK (or any other implementation) as usual.

Three parts, each opt-in:

* :class:`OtelMetrics` is an event sink (:func:`layers.add_sink`): once
  installed (:meth:`~OtelMetrics.install`), it counts the events of every layer
  (``layers.events``), retries (``layers.retries``), the calls Retry gave
  up on by reason (``layers.retry.stops``), rejections by reason
  (``layers.rejections``), circuit breaker transitions
  (``layers.circuit_breaker.transitions``), timeouts (``layers.timeouts``),
  fallbacks (``layers.fallbacks``), injected faults
  (``layers.faults.injected``), hedges sent or refused (``layers.hedges``)
  and hedged calls by winning attempt (``layers.hedge.wins``).
  Events are only emitted off the success path, so this adds nothing to a
  successful call.
* :class:`Instrumented` is a layer that measures each call through it: the
  count by outcome (``layers.calls``) and the duration
  (``layers.call.duration``). Put it where you want calls measured,
  outermost to see what the caller sees. It records only while its
  :class:`OtelMetrics` is installed; otherwise it costs one attribute read.
* :meth:`OtelMetrics.observe` registers any observable layer
  (:class:`~layers.Observable`: the built-in stateful layers, and your own)
  for observable gauges (breaker state, calls in flight and waiting,
  refusals, figures such as a failure rate), read when the metrics are
  collected.

Every instrument and attribute is listed in the how-to guide "Metrics with
OpenTelemetry". Attributes hold layer names, event names and fixed reasons,
never anything taken from a request, a response or an exception message.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast, final

import attrs

from . import _backend, events
from ._breaker import CircuitCallRejected, CircuitStateChanged
from ._chaos import FaultInjected
from ._concurrency import ConcurrencyLimitRejected
from ._config import name_value
from ._core import Service
from ._errors import ConfigurationError, Elapsed, Rejected, type_name
from ._failures import split_failure
from ._fallback import FallbackUsed
from ._hedge import HedgeRefused, HedgeSent, HedgeWon
from ._observable import Observable, Observation, is_metric_name
from ._public import publish as _publish
from ._ratelimit import RateLimitRejected
from ._retry import RetryAttemptFailed, RetryStopped
from ._throttle import AdaptiveThrottleRejected
from .events import Event, TimeoutElapsed

try:
    from opentelemetry import metrics as _otel_metrics
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider
    from opentelemetry.metrics import Observation as OtelObservation
except ImportError as error:  # pragma: no cover - tested in a subprocess-free way
    raise ImportError(
        "layers.otel needs OpenTelemetry: install the 'otel' extra "
        "(pip install 'service-layers[otel]')"
    ) from error

if TYPE_CHECKING:
    from opentelemetry.util.types import Attributes

__all__ = [
    "ATTRIBUTE_ERROR_TYPE",
    "ATTRIBUTE_LAYER_KIND",
    "ATTRIBUTE_LAYER_NAME",
    "Instrumented",
    "InstrumentedService",
    "OtelMetrics",
]

Req = TypeVar("Req")
Res = TypeVar("Res")

METER_NAME: Final = "layers"
"""The instrumentation scope name of every instrument."""

ATTRIBUTE_LAYER_NAME: Final = "layers.layer.name"
"""The ``name`` of the layer that emitted the event or measured the call."""
ATTRIBUTE_LAYER_KIND: Final = "layers.layer.kind"
"""The kind of layer (:attr:`layers.Event.kind`): ``timeout``, ``retry``..."""
ATTRIBUTE_ERROR_TYPE: Final = "error.type"
"""OpenTelemetry's attribute for the exception type (never its message)."""

_EVENT_NAME: Final = "layers.event.name"
_EVENT_SEVERITY: Final = "layers.event.severity"
_REASON: Final = "layers.rejection.reason"
_RETRY_REASON: Final = "layers.retry.reason"
_OUTCOME: Final = "layers.call.outcome"
_FROM_STATE: Final = "layers.circuit_breaker.from_state"
_TO_STATE: Final = "layers.circuit_breaker.to_state"
_TRANSITION_REASON: Final = "layers.circuit_breaker.reason"
_FALLBACK_REASON: Final = "layers.fallback.reason"
_FAULT: Final = "layers.fault.kind"
_HEDGE: Final = "layers.hedge.outcome"
_HEDGE_ATTEMPT: Final = "layers.hedge.attempt"

# Bucket boundaries for call durations in seconds, as OpenTelemetry's HTTP
# semantic conventions advise (5 ms to 10 s).
DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
"""The histogram bucket boundaries advised for ``layers.call.duration``."""


@final
class OtelMetrics:
    """OpenTelemetry instruments fed by the events of every layer.

    Create one per process (or per meter provider), then :meth:`install` it.
    The instruments are created at once from *meter_provider*'s meter
    ``layers``; the event counters move only while it is installed.

    Args:
        meter_provider: Where the instruments come from; the global
            provider (:func:`opentelemetry.metrics.get_meter_provider`) if
            ``None``.

    Example:
        >>> from opentelemetry.sdk.metrics import MeterProvider
        >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        >>> from layers.otel import OtelMetrics
        >>> reader = InMemoryMetricReader()
        >>> metrics = OtelMetrics(MeterProvider(metric_readers=[reader]))
        >>> uninstall = metrics.install()
        >>> uninstall()
    """

    __slots__ = (
        "__weakref__",
        "_call_duration",
        "_calls",
        "_dispatch",
        "_events",
        "_fallbacks",
        "_faults",
        "_hedge_wins",
        "_hedges",
        "_observed",
        "_rejections",
        "_retries",
        "_retry_stops",
        "_timeouts",
        "_transitions",
        "enabled",
        "meter",
    )

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        from . import __version__

        provider = meter_provider or _otel_metrics.get_meter_provider()
        meter: Meter = provider.get_meter(METER_NAME, __version__)
        self.meter: Meter = meter
        """The OpenTelemetry meter of the instruments."""
        self.enabled: bool = False
        """True while installed; :class:`Instrumented` records only then."""
        self._events = meter.create_counter(
            "layers.events", unit="{event}", description="Events emitted by layers."
        )
        self._retries = meter.create_counter(
            "layers.retries",
            unit="{retry}",
            description="Failed attempts that Retry will try again.",
        )
        self._retry_stops = meter.create_counter(
            "layers.retry.stops",
            unit="{call}",
            description="Calls on which Retry gave up, by reason.",
        )
        self._rejections = meter.create_counter(
            "layers.rejections",
            unit="{rejection}",
            description="Calls refused without calling the inner service.",
        )
        self._transitions = meter.create_counter(
            "layers.circuit_breaker.transitions",
            unit="{transition}",
            description="Circuit breaker state changes.",
        )
        self._timeouts = meter.create_counter(
            "layers.timeouts",
            unit="{timeout}",
            description="Calls cancelled by a Timeout at its deadline.",
        )
        self._fallbacks = meter.create_counter(
            "layers.fallbacks",
            unit="{call}",
            description="Calls answered by a Fallback in place of the inner service.",
        )
        self._faults = meter.create_counter(
            "layers.faults.injected",
            unit="{fault}",
            description="Faults injected by the fault injection layers.",
        )
        self._hedges = meter.create_counter(
            "layers.hedges",
            unit="{hedge}",
            description="Hedges a Hedge sent (sent) or did not (budget, deadline).",
        )
        self._hedge_wins = meter.create_counter(
            "layers.hedge.wins",
            unit="{call}",
            description="Hedged calls that succeeded, by the attempt that won.",
        )
        self._calls = meter.create_counter(
            "layers.calls",
            unit="{call}",
            description="Calls measured by an Instrumented layer, by outcome.",
        )
        self._call_duration = meter.create_histogram(
            "layers.call.duration",
            unit="s",
            description="Duration of calls measured by an Instrumented layer.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        # The gauges of observed layers, made on first use: by instrument
        # name, the layers it reports (weakly: observing keeps none alive).
        self._observed: dict[str, dict[int, Callable[[], Observable | None]]] = {}
        # The handler for each event class, found once along its MRO.
        self._dispatch: dict[type[Event], Callable[[Any], None]] = {}

    # -- the sink -------------------------------------------------------------------

    def install(self) -> Callable[[], None]:
        """Add this sink (:func:`layers.add_sink`) and turn :class:`Instrumented` on.

        Installing twice is no error (it is added once).

        Returns:
            A function that uninstalls it again (see :meth:`uninstall`).
        """
        if self not in events.STATE.sinks:
            events.add_sink(self)
        self.enabled = True
        return self.uninstall

    def uninstall(self) -> None:
        """Remove this sink; :class:`Instrumented` layers stop recording."""
        self.enabled = False
        events.remove_sink(self)

    def __call__(self, event: Event, /) -> None:
        """Record one event (the sink protocol)."""
        kind = type(event)
        handler = self._dispatch.get(kind)
        if handler is None:
            handler = self._dispatch[kind] = self._handler_for(kind)
        self._events.add(
            1,
            {
                ATTRIBUTE_LAYER_NAME: event.layer,
                ATTRIBUTE_LAYER_KIND: event.kind,
                _EVENT_NAME: event.event,
                _EVENT_SEVERITY: event.level,
            },
        )
        handler(event)

    def _handler_for(self, kind: type[Event]) -> Callable[[Any], None]:
        if issubclass(kind, RetryAttemptFailed):
            return self._on_retry
        if issubclass(kind, RetryStopped):
            return self._on_retry_stopped
        if issubclass(
            kind,
            (RateLimitRejected, ConcurrencyLimitRejected, AdaptiveThrottleRejected),
        ):
            return self._on_limit_rejected
        if issubclass(kind, CircuitCallRejected):
            return self._on_circuit_rejected
        if issubclass(kind, CircuitStateChanged):
            return self._on_transition
        if issubclass(kind, TimeoutElapsed):
            return self._on_timeout
        if issubclass(kind, FallbackUsed):
            return self._on_fallback
        if issubclass(kind, FaultInjected):
            return self._on_fault
        if issubclass(kind, HedgeSent):
            return self._on_hedge_sent
        if issubclass(kind, HedgeRefused):
            return self._on_hedge_refused
        if issubclass(kind, HedgeWon):
            return self._on_hedge_won
        return _ignore

    def _on_retry(self, event: RetryAttemptFailed) -> None:
        attributes: dict[str, str] = {ATTRIBUTE_LAYER_NAME: event.layer}
        if event.error is not None:
            attributes[ATTRIBUTE_ERROR_TYPE] = event.error
        self._retries.add(1, attributes)

    def _on_retry_stopped(self, event: RetryStopped) -> None:
        attributes: dict[str, str] = {
            ATTRIBUTE_LAYER_NAME: event.layer,
            _RETRY_REASON: event.reason,
        }
        if event.error is not None:
            attributes[ATTRIBUTE_ERROR_TYPE] = event.error
        self._retry_stops.add(1, attributes)

    def _on_limit_rejected(
        self,
        event: RateLimitRejected | ConcurrencyLimitRejected | AdaptiveThrottleRejected,
    ) -> None:
        self._rejections.add(
            1,
            {
                ATTRIBUTE_LAYER_NAME: event.layer,
                ATTRIBUTE_LAYER_KIND: event.kind,
                _REASON: event.reason,
            },
        )

    def _on_circuit_rejected(self, event: CircuitCallRejected) -> None:
        self._rejections.add(
            1,
            {
                ATTRIBUTE_LAYER_NAME: event.layer,
                ATTRIBUTE_LAYER_KIND: event.kind,
                _REASON: event.state,
            },
        )

    def _on_transition(self, event: CircuitStateChanged) -> None:
        self._transitions.add(
            1,
            {
                ATTRIBUTE_LAYER_NAME: event.layer,
                _FROM_STATE: event.from_state,
                _TO_STATE: event.to_state,
                _TRANSITION_REASON: event.reason,
            },
        )

    def _on_timeout(self, event: TimeoutElapsed) -> None:
        self._timeouts.add(1, {ATTRIBUTE_LAYER_NAME: event.layer})

    def _on_fallback(self, event: FallbackUsed) -> None:
        attributes = {ATTRIBUTE_LAYER_NAME: event.layer, _FALLBACK_REASON: event.reason}
        if event.error is not None:
            attributes[ATTRIBUTE_ERROR_TYPE] = event.error
        self._fallbacks.add(1, attributes)

    def _on_hedge_sent(self, event: HedgeSent) -> None:
        self._hedges.add(1, {ATTRIBUTE_LAYER_NAME: event.layer, _HEDGE: "sent"})

    def _on_hedge_refused(self, event: HedgeRefused) -> None:
        self._hedges.add(1, {ATTRIBUTE_LAYER_NAME: event.layer, _HEDGE: event.reason})

    def _on_hedge_won(self, event: HedgeWon) -> None:
        attributes: dict[str, str | int] = {
            ATTRIBUTE_LAYER_NAME: event.layer,
            _HEDGE_ATTEMPT: event.attempt,
        }
        self._hedge_wins.add(1, attributes)

    def _on_fault(self, event: FaultInjected) -> None:
        attributes = {ATTRIBUTE_LAYER_NAME: event.layer, _FAULT: event.fault}
        if event.error is not None:
            attributes[ATTRIBUTE_ERROR_TYPE] = event.error
        self._faults.add(1, attributes)

    # -- calls ----------------------------------------------------------------------

    def instrument(self, name: str = "call") -> Instrumented:
        """Return an :class:`Instrumented` layer that records into these metrics."""
        return Instrumented(self, name=name)

    def record_call(
        self, name: str, duration: float, error: BaseException | None
    ) -> None:
        """Record one call: ``layers.calls`` and ``layers.call.duration``.

        :class:`Instrumented` calls it; call it yourself to measure calls
        that do not go through a service.

        Args:
            name: The ``layers.layer.name`` attribute.
            duration: Seconds the call took.
            error: What it raised, or ``None`` if it returned. The outcome is
                ``success``, ``rejected`` (a :class:`~layers.Rejected`),
                ``timeout`` (:class:`~layers.Elapsed`), ``cancelled`` (a
                ``BaseException`` that is not an ``Exception``, such as a
                cancellation) or ``failure`` (any other exception, and a
                group that holds one beside a cancellation).
        """
        attributes: Attributes
        if error is None:
            attributes = {ATTRIBUTE_LAYER_NAME: name, _OUTCOME: "success"}
        else:
            # A group of a cancellation and an error (a child task that
            # failed while the call was cancelled, on trio) is a failure.
            error = split_failure(error)[0] or error
            if isinstance(error, Rejected):
                outcome = "rejected"
            elif isinstance(error, Elapsed):
                outcome = "timeout"
            elif isinstance(error, Exception):
                outcome = "failure"
            else:
                outcome = "cancelled"
            attributes = {
                ATTRIBUTE_LAYER_NAME: name,
                _OUTCOME: outcome,
                ATTRIBUTE_ERROR_TYPE: type_name(error),
            }
        self._calls.add(1, attributes)
        self._call_duration.record(duration, attributes)

    # -- gauges ---------------------------------------------------------------------

    def observe(self, *layer_objects: Observable) -> None:
        """Report these layers' state as observable gauges, read at each collection.

        Any :class:`~layers.Observable` will do: the built-in stateful layers
        (:class:`~layers.CircuitBreaker`, :class:`~layers.RateLimit`,
        :class:`~layers.ConcurrencyLimit` (and
        :class:`~layers.AdaptiveConcurrencyLimit`), :class:`~layers.Drain`,
        :class:`~layers.RetryBudget`, :class:`~layers.PerKey`) and your own.
        A layer of kind ``K`` gets, for each field of its
        :class:`~layers.Observation` that is not ``None`` when it is
        observed here:

        * ``state``: the gauge ``layers.K.state``, 1 with the attribute
          ``layers.K.state`` set to the state, and (for a string enum such
          as :class:`~layers.CircuitState`) 0 for each other state;
        * ``in_flight`` and ``waiting``: the gauges ``layers.K.in_flight``
          and ``layers.K.waiting``;
        * ``rejected``: the observable counter ``layers.K.rejected``;
        * each figure ``F``: the gauge ``layers.K.F`` (skipped at a
          collection where its value is ``None``).

        Every point carries ``layers.layer.name``. The layers are held
        weakly (a layer that cannot be weakly referenced is held strongly):
        a layer that is garbage collected stops being reported. Observing
        one twice is no error. ``observe()`` is read at each collection,
        maybe in an exporter's thread; a layer whose ``observe()`` raises
        then is left out of that collection.

        Raises:
            ConfigurationError: An argument is not observable, or its kind
                is not a lower-case name (``[a-z][a-z0-9_]*``).
        """
        for obj in layer_objects:
            if not isinstance(cast(object, obj), Observable):
                raise ConfigurationError(
                    f"OtelMetrics.observe(): {obj!r} is not observable; allowed: "
                    "an Observable layer (a name, a kind and an observe() method), "
                    "such as a CircuitBreaker, ConcurrencyLimit or RateLimit"
                )
            kind = obj.kind
            if not is_metric_name(kind):
                raise ConfigurationError(
                    f"OtelMetrics.observe(): {obj!r} has kind={kind!r}; kind must "
                    "be a lower-case name ([a-z][a-z0-9_]*), part of the "
                    "instruments' names"
                )
            observation = obj.observe()
            key = id(obj)
            for figure in _figures_of(observation):
                name = f"layers.{kind}.{figure}"
                table = self._observed.get(name)
                if table is None:
                    table = self._observed[name] = {}
                    self._instrument(name, kind, figure, table)
                try:
                    table[key] = weakref.ref(obj, _Forget(table, key))
                except TypeError:  # no weak reference to it: hold it
                    table[key] = _Held(obj)

    def _instrument(
        self,
        name: str,
        kind: str,
        figure: str,
        table: dict[int, Callable[[], Observable | None]],
    ) -> None:
        """Make the instrument *name*, which reports *figure* of *table*'s layers."""

        def collect(options: CallbackOptions) -> Iterable[OtelObservation]:
            for layer in _alive(table):
                try:
                    observation = layer.observe()
                    points = list(_points(observation, kind, figure))
                except Exception:  # one layer must not hide the others
                    continue
                layer_name = layer.name
                for value, attributes in points:
                    yield OtelObservation(
                        value, {ATTRIBUTE_LAYER_NAME: layer_name, **attributes}
                    )

        meter = self.meter
        if figure == "rejected":
            meter.create_observable_counter(
                name,
                callbacks=[collect],
                unit="{call}",
                description=f"Calls refused so far by each observed {kind} layer.",
            )
        elif figure == "state":
            meter.create_observable_gauge(
                name,
                callbacks=[collect],
                unit="1",
                description=f"1 for the state each observed {kind} layer is in.",
            )
        elif figure in ("in_flight", "waiting"):
            what = "inside" if figure == "in_flight" else "waiting to get in"
            meter.create_observable_gauge(
                name,
                callbacks=[collect],
                unit="{call}",
                description=f"Calls {what} each observed {kind} layer.",
            )
        else:
            meter.create_observable_gauge(
                name,
                callbacks=[collect],
                description=f"The {figure} of each observed {kind} layer.",
            )

    def __repr__(self) -> str:
        return f"OtelMetrics(enabled={self.enabled})"


_SHARED: Final = ("state", "in_flight", "waiting", "rejected")


def _figures_of(observation: object) -> list[str]:
    """The names of the fields and figures *observation* reports."""
    if not isinstance(observation, Observation):
        raise TypeError(
            "observe() must return a layers.Observation, got "
            f"{type(observation).__name__}"
        )
    shared = [name for name in _SHARED if getattr(observation, name) is not None]
    return shared + list(observation.figures)


def _points(
    observation: Observation, kind: str, figure: str
) -> Iterator[tuple[float, dict[str, str]]]:
    """The values of *figure* in *observation*, with their own attributes."""
    if figure == "state":
        state = observation.state
        if state is None:
            return
        attribute = f"layers.{kind}.state"
        if isinstance(state, enum.Enum):
            for member in type(state):
                yield (1 if member is state else 0), {attribute: str(member.value)}
        else:
            yield 1, {attribute: state}
        return
    if figure in _SHARED:
        value = getattr(observation, figure)
    else:
        value = observation.figures.get(figure)
    if value is not None:
        yield value, {}


def _alive(
    table: dict[int, Callable[[], Observable | None]],
) -> Iterator[Observable]:
    for ref in list(table.values()):  # a copy: a callback may remove entries
        obj = ref()
        if obj is not None:
            yield obj


@final
class _Held:
    """A strong stand-in for a weak reference, for a layer that has none."""

    __slots__ = ("obj",)

    def __init__(self, obj: Observable) -> None:
        self.obj = obj

    def __call__(self) -> Observable:
        return self.obj


@final
class _Forget:
    """A weakref callback: drop a collected layer from its table."""

    __slots__ = ("key", "table")

    def __init__(self, table: dict[int, Any], key: int) -> None:
        self.table = table
        self.key = key

    def __call__(self, ref: object, /) -> None:
        self.table.pop(self.key, None)


def _ignore(event: Event) -> None:
    pass


def _metrics_value(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if not isinstance(value, OtelMetrics):
        raise ConfigurationError(
            f"Instrumented(metrics={value!r}): metrics must be an OtelMetrics, "
            f"got {type(value).__name__}"
        )


@final
@attrs.frozen
class Instrumented:
    """A layer that measures each call: ``layers.calls`` and ``layers.call.duration``.

    Each call is timed on the event loop's clock (virtual time in tests) and
    counted by outcome (``success``, ``failure``, ``rejected``, ``timeout``,
    ``cancelled``; see :meth:`OtelMetrics.record_call`), with ``error.type``
    for all but ``success``. Exceptions pass through unchanged.

    It records only while *metrics* is installed (:meth:`OtelMetrics.install`);
    otherwise a call costs one attribute read on top of the inner call, and
    nothing is allocated.

    Args:
        metrics: Where to record.
        name: The ``layers.layer.name`` attribute (default ``"call"``); name
            it after the downstream (``"users-api"``).

    Example:
        >>> import layers
        >>> from layers.otel import Instrumented, OtelMetrics
        >>> metrics = OtelMetrics()
        >>> builder = layers.ServiceBuilder().layer(Instrumented(metrics, name="api"))
    """

    metrics: OtelMetrics = attrs.field(validator=_metrics_value)
    name: str = attrs.field(default="call", kw_only=True, validator=name_value)

    def layer(self, inner: Service[Req, Res], /) -> InstrumentedService[Req, Res]:
        """Wrap *inner* so that its calls are measured."""
        return InstrumentedService(inner, self)


@final
class InstrumentedService(Generic[Req, Res]):
    """The service built by :class:`Instrumented`; see there."""

    __slots__ = ("_metrics", "built_by", "inner", "name")

    def __init__(self, inner: Service[Req, Res], layer: Instrumented) -> None:
        self.inner: Callable[[Req], Awaitable[Res]] = inner
        """The service it wraps (see :func:`~layers.inner_of`)."""
        self.built_by: Instrumented = layer
        """The layer that built it (see :func:`~layers.layers_of`)."""
        self.name: str = layer.name
        self._metrics = layer.metrics

    async def __call__(self, request: Req, /) -> Res:
        """Call the inner service; measure the call if the metrics are installed."""
        metrics = self._metrics
        if not metrics.enabled:
            return await self.inner(request)
        start = _backend.current_time()
        try:
            response = await self.inner(request)
        except BaseException as error:
            metrics.record_call(self.name, _backend.current_time() - start, error)
            raise
        metrics.record_call(self.name, _backend.current_time() - start, None)
        return response

    def __repr__(self) -> str:
        return f"InstrumentedService({self.built_by!r}, inner={self.inner!r})"


_publish(__name__, __all__)
