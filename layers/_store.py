"""What a layer does when its shared store fails: the policy, its events, its count.

A layer whose state lives in a shared store (Redis, see :mod:`layers.redis`)
cannot decide a call when the store does not answer. The store raises
:class:`~layers.StoreError` (an error, a timeout, or its guard breaker is
open, so that a dead store costs no timeout per call), and the layer applies
the store's policy:

* ``"closed"``: refuse the call with :class:`~layers.StoreUnavailable` (a
  :class:`~layers.Rejected`; the inner service is not called);
* ``"open"``: admit the call as if the limit had room;
* ``"local"``: decide it with a limit kept in this process (for a rate
  limit, the rate divided by the expected number of processes).

:class:`StoreHealth` keeps one layer's account: it emits
:class:`StoreFailed` once when the store starts failing and
:class:`StoreRecovered` when it answers again, and counts the calls its
policy decided, for ``statistics()`` and the metrics. The success path
pays one attribute test.
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal, NoReturn

import attrs

from . import events
from ._backend import base_time
from ._errors import StoreError, StoreUnavailable, type_name
from .events import Event, Level

__all__ = [
    "STORE_POLICIES",
    "StoreFailed",
    "StoreHealth",
    "StorePolicy",
    "StoreRecovered",
]

StorePolicy = Literal["closed", "open", "local"]
"""What a layer does with a call when its shared store fails (module docs)."""

STORE_POLICIES: Final[tuple[StorePolicy, ...]] = ("closed", "open", "local")


@attrs.frozen(kw_only=True)
class StoreFailed(Event):
    """A layer's shared store started failing; its policy decides calls now.

    Emitted once per outage and layer (at the first failure after the store
    last answered), not once per call: the count of calls decided by the
    policy is in the layer's ``statistics()`` and in
    :class:`StoreRecovered`.

    Attributes:
        store: The store's name (its key prefix and limit name).
        policy: ``"closed"``, ``"open"`` or ``"local"``.
        error: The type of the error (``module.Name``), never its message.
    """

    event: ClassVar[str] = "store_failed"
    kind: ClassVar[str] = "store"
    level: ClassVar[Level] = "warning"

    store: str
    policy: StorePolicy
    error: str


@attrs.frozen(kw_only=True)
class StoreRecovered(Event):
    """A layer's shared store answered again after failing.

    Attributes:
        store: The store's name.
        down_for: Seconds from the first failure to this answer.
        fallbacks: Calls the policy decided meanwhile.
    """

    event: ClassVar[str] = "store_recovered"
    kind: ClassVar[str] = "store"
    level: ClassVar[Level] = "info"

    store: str
    down_for: float
    fallbacks: int


class StoreHealth:
    """One layer's account of its store: failing or not, and calls decided by policy.

    Args:
        layer: The layer's name, for the events and the error.
        store: The store's name.
        policy: The store's failure policy.
    """

    __slots__ = (
        "failing_since",
        "fallbacks",
        "layer",
        "outage_fallbacks",
        "policy",
        "store",
    )

    def __init__(self, layer: str, store: str, policy: StorePolicy) -> None:
        self.layer = layer
        self.store = store
        self.policy: StorePolicy = policy
        self.failing_since: float | None = None
        """When the current outage began (base time), or None if the store answers."""
        self.fallbacks = 0
        """Calls the policy decided since the layer was made."""
        self.outage_fallbacks = 0

    def failed(self, error: StoreError) -> StorePolicy:
        """Count a call the store could not decide; return the policy to apply.

        For ``"closed"`` use :meth:`refuse`.
        """
        self.fallbacks += 1
        self.outage_fallbacks += 1
        if self.failing_since is None:
            self.failing_since = base_time()
            if events.STATE.sinks:
                events.emit(
                    StoreFailed(
                        layer=self.layer,
                        store=self.store,
                        policy=self.policy,
                        error=error_type(error),
                    )
                )
        return self.policy

    def began(self, error: StoreError) -> None:
        """The store failed outside a call (background work): start the outage.

        Emits :class:`StoreFailed` if the store was answering; counts no call.
        """
        if self.failing_since is not None:
            return
        self.failing_since = base_time()
        if events.STATE.sinks:
            events.emit(
                StoreFailed(
                    layer=self.layer,
                    store=self.store,
                    policy=self.policy,
                    error=error_type(error),
                )
            )

    def answered(self) -> None:
        """The store answered: end the outage, if there was one."""
        since = self.failing_since
        if since is None:
            return
        self.failing_since = None
        fallbacks, self.outage_fallbacks = self.outage_fallbacks, 0
        if events.STATE.sinks:
            events.emit(
                StoreRecovered(
                    layer=self.layer,
                    store=self.store,
                    down_for=base_time() - since,
                    fallbacks=fallbacks,
                )
            )

    def refuse(self, error: StoreError, retry_after: float | None = None) -> NoReturn:
        """Raise :class:`~layers.StoreUnavailable` for *error* (fail closed)."""
        raise StoreUnavailable(
            f"{self.layer!r}: its shared store {self.store!r} is unavailable "
            "and its policy is to refuse calls (fail closed)",
            retry_after=retry_after,
            layer=self.layer,
            reason="store_unavailable",
        ) from error


def error_type(error: StoreError) -> str:
    """The type of the error behind *error* (its cause's, if it has one)."""
    cause = error.__cause__
    return type_name(cause if cause is not None else error)
