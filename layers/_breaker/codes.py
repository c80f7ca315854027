"""The breaker's state aliases, outcome codes and outcome kinds."""

from __future__ import annotations

from typing import Final

from .statistics import CircuitState

_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN
_HALF_OPEN: Final = CircuitState.HALF_OPEN
_DISABLED: Final = CircuitState.DISABLED
_FORCED_OPEN: Final = CircuitState.FORCED_OPEN
_METRICS_ONLY: Final = CircuitState.METRICS_ONLY

# Outcome codes, as bits, stored in the count window's ring.
_PRESENT: Final = 1
_FAILED: Final = 2
_SLOW: Final = 4
_SUCCESS: Final = _PRESENT

# Outcome kinds of an exception.
_KIND_FAILURE: Final = 0
_KIND_SUCCESS: Final = 1
_KIND_IGNORED: Final = 2

# The modes of a shared breaker's process (layers/_breaker/fleet.py).
_UNJOINED: Final = 0  # no view yet (or its host ended): the next call joins
_JOINED: Final = 1  # the view follows the store
_FALLBACK: Final = 2  # the store failed: the local breaker decides
