"""Tower-style composable service layers for asyncio and trio.

A *service* is an async function from a request to a response; a *layer*
wraps a service in another one that adds a behaviour (a timeout, a retry, a
limit...); :class:`ServiceBuilder` stacks layers onto any async callable.
Everything runs on anyio, so the same code runs under asyncio and trio.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from . import events  # first: it imports the layers' event classes
from ._adaptive import (
    AIMD,
    AdaptiveConcurrencyLimit,
    AdaptiveConcurrencyLimitStatistics,
    Gradient2,
    LimitAlgorithm,
    Vegas,
    Windowed,
)
from ._arguments import Arguments
from ._backoff import Backoff, ConstantBackoff, ExponentialBackoff
from ._breaker import (
    BreakerBatch,
    BreakerRules,
    BreakerStore,
    BreakerView,
    CircuitBreaker,
    CircuitBreakerOptions,
    CircuitBreakerStatistics,
    CircuitState,
    MemoryBreakerStore,
)
from ._budget import RetryBudget, RetryBudgetStatistics
from ._builder import (
    HedgeOptions,
    InjectionOptions,
    RetryOptions,
    ServiceBuilder,
    Unchanged,
)
from ._chaos import InjectError, InjectionStatistics, InjectLatency, InjectResult
from ._coalesce import Coalesce, CoalesceStatistics
from ._concurrency import (
    ConcurrencyLimit,
    ConcurrencyLimitStatistics,
)
from ._core import (
    Identity,
    Layer,
    LayerFn,
    Service,
    Stack,
    TypePreservingLayer,
    describe_stack,
    inner_of,
    layer_fn,
    layers_of,
    mark_built,
    service_fn,
)
from ._deadline import current_deadline
from ._drain import Drain, DrainStatistics
from ._errors import (
    CallbackError,
    CircuitOpen,
    ConfigurationError,
    Elapsed,
    Filtered,
    LayersError,
    Overloaded,
    RateLimited,
    Rejected,
    ShuttingDown,
    StoreError,
    StoreUnavailable,
    Throttled,
)
from ._fallback import Fallback, FallbackStatistics, Outcome
from ._hedge import Hedge, HedgeStatistics
from ._observable import Observable, Observation
from ._per_key import KeyTableFull, PerKey, PerKeyStatistics
from ._public import publish as _publish
from ._ratelimit import (
    MemoryRateLimitStore,
    RateLimit,
    RateLimitStatistics,
    RateLimitStore,
    SharedRateLimitStore,
)
from ._retry import (
    Attempt,
    Retry,
    current_attempt,
)
from ._shutdown import (
    ShutdownReport,
    Supervisor,
    TaskOutcome,
    wait_for_signal,
)
from ._throttle import AdaptiveThrottle, AdaptiveThrottleStatistics
from ._timeout import Timeout, TimeoutService
from ._transforms import AndThen, Filter, MapErr, MapRequest, MapResponse
from .events import (
    Event,
    Sink,
    add_sink,
    remove_sink,
    set_error_messages,
    set_logging,
)
from .health import CheckResult, HealthApp, HealthChecks, HealthReport, HealthStatus

try:
    __version__: str = _version("service-layers")
except _PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0+unknown"

__all__ = [
    "AIMD",
    "AdaptiveConcurrencyLimit",
    "AdaptiveConcurrencyLimitStatistics",
    "AdaptiveThrottle",
    "AdaptiveThrottleStatistics",
    "AndThen",
    "Arguments",
    "Attempt",
    "Backoff",
    "BreakerBatch",
    "BreakerRules",
    "BreakerStore",
    "BreakerView",
    "CallbackError",
    "CheckResult",
    "CircuitBreaker",
    "CircuitBreakerOptions",
    "CircuitBreakerStatistics",
    "CircuitOpen",
    "CircuitState",
    "Coalesce",
    "CoalesceStatistics",
    "ConcurrencyLimit",
    "ConcurrencyLimitStatistics",
    "ConfigurationError",
    "ConstantBackoff",
    "Drain",
    "DrainStatistics",
    "Elapsed",
    "Event",
    "ExponentialBackoff",
    "Fallback",
    "FallbackStatistics",
    "Filter",
    "Filtered",
    "Gradient2",
    "HealthApp",
    "HealthChecks",
    "HealthReport",
    "HealthStatus",
    "Hedge",
    "HedgeOptions",
    "HedgeStatistics",
    "Identity",
    "InjectError",
    "InjectLatency",
    "InjectResult",
    "InjectionOptions",
    "InjectionStatistics",
    "KeyTableFull",
    "Layer",
    "LayerFn",
    "LayersError",
    "LimitAlgorithm",
    "MapErr",
    "MapRequest",
    "MapResponse",
    "MemoryBreakerStore",
    "MemoryRateLimitStore",
    "Observable",
    "Observation",
    "Outcome",
    "Overloaded",
    "PerKey",
    "PerKeyStatistics",
    "RateLimit",
    "RateLimitStatistics",
    "RateLimitStore",
    "RateLimited",
    "Rejected",
    "Retry",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RetryOptions",
    "Service",
    "ServiceBuilder",
    "SharedRateLimitStore",
    "ShutdownReport",
    "ShuttingDown",
    "Sink",
    "Stack",
    "StoreError",
    "StoreUnavailable",
    "Supervisor",
    "TaskOutcome",
    "Throttled",
    "Timeout",
    "TimeoutService",
    "TypePreservingLayer",
    "Unchanged",
    "Vegas",
    "Windowed",
    "__version__",
    "add_sink",
    "current_attempt",
    "current_deadline",
    "describe_stack",
    "events",
    "inner_of",
    "layer_fn",
    "layers_of",
    "mark_built",
    "remove_sink",
    "service_fn",
    "set_error_messages",
    "set_logging",
    "wait_for_signal",
]

_publish(__name__, __all__)
