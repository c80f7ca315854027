"""PerKey: one instance of a stateful layer per key (a tenant, a host, a user).

A :class:`~layers.CircuitBreaker` holds one state for everything it wraps;
:class:`PerKey` builds one layer per key with a factory, keeps at most
``max_keys`` of them, and never forgets a key whose breaker still protects
it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, ClassVar, Final, TypeVar, cast, final

import attrs

from . import events
from ._breaker import CircuitBreaker, CircuitState
from ._builder import ServiceBuilder
from ._config import check_int
from ._core import Layer, Service, Stack, TypePreservingLayer, as_layer, mark_built
from ._errors import CallbackError, ConfigurationError, Rejected
from ._observable import Observation
from .events import Event, Level

__all__ = ["KeyTableFull", "PerKey", "PerKeyRejected", "PerKeyStatistics"]

Req = TypeVar("Req")
Res = TypeVar("Res")

_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN
_HALF_OPEN: Final = CircuitState.HALF_OPEN


class KeyTableFull(Rejected):
    """:class:`PerKey` refused a new key: every key it keeps is protected.

    The table holds ``max_keys`` keys and each of them has a breaker that is
    not closed (open with time left, half-open with probes in flight, or set
    by hand), so none can be forgotten and the new key gets no layer. The
    inner service was not called. ``retry_after`` is the time until the
    first of those breakers ends its open period (``None`` if none will by
    itself). Its ``reason`` is ``"key_table_full"``.
    """


@attrs.frozen(kw_only=True)
class PerKeyRejected(Event):
    """:class:`~layers.PerKey` refused a new key (see :class:`~layers.KeyTableFull`).

    Attributes:
        max_keys: The table's bound, every entry of it protected.
        retry_after: As the exception's.
    """

    event: ClassVar[str] = "per_key_rejected"
    kind: ClassVar[str] = "per_key"
    level: ClassVar[Level] = "warning"

    max_keys: int
    retry_after: float | None


@final
@attrs.frozen(kw_only=True)
class PerKeyStatistics:
    """A snapshot of a :class:`PerKey` (see :meth:`PerKey.statistics`).

    Attributes:
        keys: Keys in the table now (at most ``max_keys``).
        protected: Keys whose breaker is not closed (kept however full the
            table gets while it protects them).
        rejected: New keys refused with :class:`KeyTableFull`, so far.
        max_keys: The bound.
    """

    keys: int
    protected: int
    rejected: int
    max_keys: int


def _breakers_in(layer: object) -> tuple[CircuitBreaker, ...]:
    """The circuit breakers in *layer*: itself, or inside a builder or a Stack."""
    if isinstance(layer, CircuitBreaker):
        return (layer,)
    if isinstance(layer, ServiceBuilder | Stack):
        inner = cast("tuple[object, ...]", layer.layers)
        return tuple(found for each in inner for found in _breakers_in(each))
    return ()


def _held_for(breaker: CircuitBreaker) -> float | None:
    """How long *breaker* protects its key, in seconds.

    ``None``: not at all (closed); ``0``: no longer (its open period is over,
    or its half-open trial has no probe running); ``inf``: until something
    happens (a probe ends, a manual call).
    """
    state = breaker.state
    if state is _CLOSED:
        return None
    if state is _OPEN:
        return breaker.statistics().retry_after or 0.0
    if state is _HALF_OPEN:
        return math.inf if breaker.statistics().probes_in_flight else 0.0
    return math.inf  # a state set by hand stays until another manual call


def _protected_for(breakers: tuple[CircuitBreaker, ...]) -> float | None:
    """The longest protection of any of *breakers* (``None``: none protects)."""
    longest: float | None = None
    for breaker in breakers:
        held = _held_for(breaker)
        if held is not None and (longest is None or held > longest):
            longest = held
    return longest


@final
class _PerKeyGuard:
    """``async with per_key.guard(key):``: the key's own layer's block form."""

    __slots__ = ("_inner", "_key", "_owner")

    def __init__(self, owner: PerKey, key: Hashable) -> None:
        self._owner = owner
        self._key = key
        self._inner: AbstractAsyncContextManager[Any] | None = None

    async def __aenter__(self) -> None:
        owner = self._owner
        made = owner._entry(self._key).layer  # pyright: ignore[reportPrivateUsage]
        guard = getattr(made, "guard", None)
        if not callable(guard):
            raise ConfigurationError(
                f"PerKey.guard(key=...): {owner.name!r}'s factory(key) made "
                f"{type(made).__name__}, which has no block form (guard()); "
                "make the factory return one layer that has one"
            )
        inner = cast("AbstractAsyncContextManager[Any]", guard())
        await inner.__aenter__()
        self._inner = inner

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        inner, self._inner = self._inner, None
        assert inner is not None
        return await inner.__aexit__(exc_type, exc, tb)


@final
class _Entry:
    """One key's layer, its breakers, and the service it built per wrapped inner."""

    __slots__ = ("breakers", "layer", "services")

    def __init__(
        self, layer: Layer[Any, Any, Any, Any], breakers: tuple[CircuitBreaker, ...]
    ) -> None:
        self.layer = layer
        self.breakers = breakers
        self.services: dict[int, Service[Any, Any]] = {}


@final
class PerKey:
    """Give each key (a tenant, a host, a user) its own instance of a stateful layer.

    A :class:`~layers.CircuitBreaker` holds one state for everything it
    wraps; ``PerKey(factory, key=...)`` builds one layer per key, on the
    key's first request, with ``factory(key)``, so that a failing tenant or
    host opens only its own breaker. In an httpx client, the key is the
    host (``key=layers.httpx.host_key``); behind the ASGI middleware, a
    tenant or an API key (``key=layers.asgi.header_key("x-tenant")``).

    **The state lives in this object**, as in every stateful layer: the
    layers made per key are shared by every service it wraps (a builder
    reused for two services gives both the same breaker per key), while
    each wrapped service gets its own service per key.

    **The table is bounded** by *max_keys*. When it is full, a new key
    takes the place of the least recently used key whose protection would
    not be lost: a key with no breaker, or whose breakers (the layer
    itself, or inside a :class:`~layers.ServiceBuilder` or
    :class:`~layers.Stack` the factory returns) are all closed. A key whose
    breaker is not closed is never forgotten while it protects: an open
    breaker with time left, a half-open one with probes running, or a
    state set by hand (:meth:`~layers.CircuitBreaker.force_open`...). Next
    in line is the least recently used key whose protection has lapsed (an
    open breaker past its open duration, a half-open one with no probe
    running: its next call would be let through anyway). If every key is
    protected, the new key is refused with :class:`KeyTableFull` (a
    :class:`~layers.Rejected`, with a ``retry_after``) and a
    :class:`~layers.events.PerKeyRejected` event, and the table keeps its
    bound. A forgotten key starts afresh on its next request; its calls in
    flight finish normally. Only breakers count as protection: another
    layer (a concurrency limit) of a forgotten key starts afresh.

    Finding a place scans the table from its oldest entry and stops at the
    first key without protection, so it costs one step when the oldest key
    is unprotected, and up to *max_keys* when many are protected.

    (A :class:`~layers.RateLimit` needs no ``PerKey``: give it ``key=``
    itself, with its own bounded table.)

    It is :class:`~layers.Observable`: a health check
    (:meth:`HealthChecks.add_layer <layers.HealthChecks.add_layer>`) turns
    ``degraded`` when it refused a key since its previous run, and the
    metrics show ``keys``, ``protected`` and ``max_keys``.

    Args:
        factory: ``factory(key) -> layer`` (a layer, a
            :class:`~layers.ServiceBuilder` or a :class:`~layers.Stack`),
            called once per key kept.
        key: ``key(request) -> hashable``: the key of a request.
        max_keys: The most keys kept, an integer >= 1 (default 1,000).
        name: The name in :class:`KeyTableFull`, its event, health checks
            and metrics (default ``"per_key"``).

    Raises:
        layers.ConfigurationError: For a *max_keys* below 1.
        TypeError: If *factory* or *key* is not callable, or *name* not a
            string; at a call, if ``key(request)`` is not hashable.

    Example:
        >>> import anyio, layers
        >>> def breaker(tenant: str) -> layers.CircuitBreaker:
        ...     return layers.CircuitBreaker(name=tenant, consecutive_failures=1)
        >>> breakers = layers.PerKey(
        ...     breaker,
        ...     key=lambda request: request["tenant"],
        ...     max_keys=10_000,
        ... )
        >>> async def backend(request: dict[str, str]) -> str:
        ...     if request["tenant"] == "acme":
        ...         raise ConnectionError("acme's database is down")
        ...     return "ok"
        >>> service = layers.ServiceBuilder().layer(breakers).service(backend)
        >>> async def main() -> None:
        ...     for tenant in ("acme", "acme", "globex"):
        ...         try:
        ...             print(tenant, await service({"tenant": tenant}))
        ...         except Exception as error:
        ...             print(tenant, type(error).__name__)
        >>> anyio.run(main)
        acme ConnectionError
        acme CircuitOpen
        globex ok
        >>> breakers.statistics()
        PerKeyStatistics(keys=2, protected=1, rejected=0, max_keys=10000)
    """

    __slots__ = (
        "__weakref__",
        "_rejected",
        "_slots",
        "_table",
        "factory",
        "key",
        "max_keys",
        "name",
    )

    kind = "per_key"
    """The kind of layer, for events and metrics (:class:`~layers.Observable`)."""

    def __init__(
        self,
        factory: Callable[[Any], Layer[Any, Any, Any, Any] | TypePreservingLayer],
        *,
        key: Callable[[Any], Hashable],
        max_keys: int = 1000,
        name: str = "per_key",
    ) -> None:
        for parameter, value in (("factory", factory), ("key", key)):
            if not callable(value):
                raise ConfigurationError(
                    f"PerKey({parameter}={value!r}): {parameter} must be callable, "
                    f"got {type(value).__name__}"
                )
        check_int("PerKey", "max_keys", max_keys, 1, "an integer >= 1")
        if not isinstance(cast(object, name), str):
            raise ConfigurationError(
                f"PerKey(name={name!r}): name must be a string, "
                f"got {type(name).__name__}"
            )
        self.factory = factory
        """``factory(key) -> layer``."""
        self.key = key
        """``key(request) -> hashable``."""
        self.max_keys = max_keys
        """The most keys kept."""
        self.name = name
        """The name in errors, events, health checks and metrics."""
        self._table: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._rejected = 0
        self._slots = 0

    def statistics(self) -> PerKeyStatistics:
        """A snapshot of the table (see :class:`PerKeyStatistics`).

        Counting the protected keys scans the table: it costs up to
        *max_keys* steps, off the success path.
        """
        table = self._table
        protected = sum(
            1
            for entry in list(table.values())
            if entry.breakers and _protected_for(entry.breakers) is not None
        )
        return PerKeyStatistics(
            keys=len(table),
            protected=protected,
            rejected=self._rejected,
            max_keys=self.max_keys,
        )

    def observe(self) -> Observation:
        """The table for health checks and metrics (:class:`~layers.Observable`)."""
        stats = self.statistics()
        return Observation(
            rejected=stats.rejected,
            figures={
                "keys": stats.keys,
                "protected": stats.protected,
                "max_keys": stats.max_keys,
            },
        )

    def _make_room(self) -> None:
        """Forget one key, or raise KeyTableFull."""
        table = self._table
        lapsed: Hashable | None = None
        found_lapsed = False
        soonest = math.inf
        for kept, entry in table.items():  # the oldest first
            breakers = entry.breakers
            held = _protected_for(breakers) if breakers else None
            if held is None:
                del table[kept]
                return
            if held <= 0:
                if not found_lapsed:
                    lapsed, found_lapsed = kept, True
            else:
                soonest = min(soonest, held)
        if found_lapsed:
            del table[lapsed]
            return
        self._rejected += 1
        retry_after = None if math.isinf(soonest) else soonest
        name = self.name
        max_keys = self.max_keys
        if events.STATE.sinks:
            events.emit(
                PerKeyRejected(layer=name, max_keys=max_keys, retry_after=retry_after)
            )
        raise KeyTableFull(
            f"PerKey {name!r}: all {max_keys} keys kept (max_keys) have a "
            "breaker that is not closed; a new key is refused",
            retry_after=retry_after,
            layer=name,
            reason="key_table_full",
        )

    def _admit(self, key: Hashable) -> _Entry:
        """Make the entry of a new *key* (making room first if the table is full)."""
        table = self._table
        if len(table) >= self.max_keys:
            self._make_room()
        try:
            made = as_layer("PerKey", "factory(key)", self.factory(key))
        except ConfigurationError as error:  # the factory misbehaved: not a layer
            raise CallbackError(
                f"PerKey {self.name!r}: {error}", layer=self.name, parameter="factory"
            ) from error
        entry = table[key] = _Entry(made, _breakers_in(made))
        return entry

    def _entry(self, key: Hashable) -> _Entry:
        """The entry of *key*: found (now the most recently used) or made."""
        table = self._table
        try:
            entry = table.get(key)
        except TypeError:
            raise CallbackError(
                f"PerKey {self.name!r}: the key function (key={self.key!r}) must "
                f"return a hashable value, got an unhashable {type(key).__name__}",
                layer=self.name,
                parameter="key",
            ) from None
        if entry is None:
            return self._admit(key)
        table.move_to_end(key)
        return entry

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*: each key's calls go through ``factory(key)`` (shared)."""
        key_of = self.key
        entry_of = self._entry
        slot = self._slots
        self._slots += 1

        async def per_key(request: Req, /) -> Res:
            entry = entry_of(key_of(request))
            service = entry.services.get(slot)
            if service is None:
                service = entry.services[slot] = entry.layer.layer(inner)
            return cast("Res", await service(request))

        return mark_built(per_key, self, inner)

    def guard(self, key: Hashable) -> AbstractAsyncContextManager[None]:
        """The block form: the block goes through the layer of *key*.

        ``async with breakers.guard(tenant):`` enters ``factory(tenant)``'s
        own block form (its ``guard()``), made or found in the same table
        as the service form's keys (the same bound, the same
        :class:`KeyTableFull` when every kept key is protected). So the
        factory must make a layer with a block form (a
        :class:`~layers.CircuitBreaker`, :class:`~layers.ConcurrencyLimit`,
        :class:`~layers.Drain`, or an unkeyed :class:`~layers.RateLimit`);
        a builder or a stack of several layers has none.

        Args:
            key: The key itself (the layer's *key* function maps a request,
                and a block has none).

        Raises:
            layers.ConfigurationError: On entry, if ``factory(key)`` has
                no block form.
            layers.CallbackError: On entry, if *key* is not hashable.
        """
        return _PerKeyGuard(self, key)

    def __repr__(self) -> str:
        name = getattr(self.factory, "__qualname__", repr(self.factory))
        return f"PerKey({name}, max_keys={self.max_keys}, name={self.name!r})"
