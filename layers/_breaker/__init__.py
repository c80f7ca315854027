"""Circuit breaker: stop calling a failing service, probe it, resume.

The breaker keeps its state in the :class:`CircuitBreaker` object, so one
breaker applied to several services guards them together (one breaker per
downstream host). Every transition happens between two ``await`` points of
the calls, so it is atomic with respect to every other call on the event
loop, on asyncio and trio alike; no lock is held, least of all across the
inner call.

How the state is kept (for readers of the code):

* ``_Core`` holds the state, the live *window* (the outcomes that decide
  whether to trip) and, while half-open, the *trial* (the probes' outcomes).
* A call remembers the window or trial it was admitted under. Its outcome is
  recorded only if that object is still the live one: the window is kept
  when the breaker opens (calls admitted before still record their late
  outcome, as in resilience4j) and replaced when it half-opens, and every
  half-open period has a trial of its own, so a late outcome never lands in
  a newer trial. ``_Core.generation`` counts these changes.
* Time-driven transitions (open to half-open, a half-open period that lasts
  too long) are made lazily by the next call or outcome; no task or timer
  is started.
* The success path of a closed breaker does the least it can: it reads the
  clock only if a time window or a slow-call threshold needs it, and records
  a success in O(1) without a method call in the common case. Each window
  kind has its own service function, chosen once in
  :meth:`CircuitBreaker.layer`.
* A breaker given a store (a breaker shared by a fleet of processes) keeps
  a view of the fleet's state and sends its outcomes in batches: see
  ``fleet.py`` (this process), ``server.py`` (the atomic steps every store
  runs) and ``store.py`` (the protocol and the in-memory store).
"""

from .events import (
    CircuitCallRejected,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    CircuitStateChanged,
    CircuitThresholdExceeded,
)
from .layer import CircuitBreaker, CircuitBreakerOptions
from .records import BreakerBatch, BreakerRules, BreakerView
from .statistics import CircuitBreakerStatistics, CircuitState
from .store import BreakerStore, MemoryBreakerStore

__all__ = [
    "BreakerBatch",
    "BreakerRules",
    "BreakerStore",
    "BreakerView",
    "CircuitBreaker",
    "CircuitBreakerOptions",
    "CircuitBreakerStatistics",
    "CircuitCallRejected",
    "CircuitClosed",
    "CircuitHalfOpened",
    "CircuitOpened",
    "CircuitState",
    "CircuitStateChanged",
    "CircuitThresholdExceeded",
    "MemoryBreakerStore",
]
