"""ServiceBuilder: stack layers onto a service, outermost first.

Order
-----
The first layer added is the **outermost**: a request passes the layers in
the order they were written, and the response comes back through them in
reverse, as in tower. The order changes behaviour. A timeout outside a retry
bounds the whole retry loop, backoff included; inside it, it bounds each
attempt. A concurrency limit outside a retry holds one slot for the whole
loop; inside it, each attempt takes (and waits for) a slot of its own.

    >>> import anyio, layers
    >>> seen = []
    >>> def tag(name):
    ...     def wrap(inner):
    ...         async def call(request):
    ...             seen.append(f"{name} in")
    ...             response = await inner(request)
    ...             seen.append(f"{name} out")
    ...             return response
    ...
    ...         return call
    ...
    ...     return layers.layer_fn(wrap)
    >>> async def handler(request):
    ...     seen.append("handler")
    ...     return request
    >>> svc = layers.ServiceBuilder().layer(tag("a")).layer(tag("b")).service(handler)
    >>> anyio.run(svc, "x")
    'x'
    >>> seen
    ['a in', 'b in', 'handler', 'b out', 'a out']

State
-----
The builder is immutable: every method returns a new builder and leaves the
old one as it was, so a partial builder can be shared and extended.

One rule for the methods named after a layer (``.timeout()``, ``.retry()``,
``.circuit_breaker()``...): each makes a **new** layer from the layer's own
options, with the layer's own defaults, when the method is called; every
service built from that builder, or from builders extended from it, shares
that one state. A layer object that you make and keep (one breaker for the
services of one host, a :class:`~layers.Drain` that a supervisor starts) is
added with ``.layer(obj)``; no builder method takes one.

Adding and building
-------------------
``.layer(some_layer)`` adds a layer and returns a new builder; ``.service(s)``
(or the builder used as a decorator) builds the stacked service. ``.layer()``
takes layers only: a class, a function or a service given to it is refused
at once, with a message that says what to pass instead
(``layers.Timeout(1.0)`` for the class ``layers.Timeout``, ``layers.layer_fn(f)``
for a function ``Service -> Service``, ``.service(s)`` to build).

So, unlike tower's ``ServiceBuilder`` (whose inherent ``layer`` adds while its
``Layer`` implementation builds, which Rust tells apart by trait), the builder
is not itself a :class:`~layers.Layer`: :meth:`ServiceBuilder.into_layer` turns
it into one. The APIs of ``layers`` that take a whole stack (``.layer()``
itself, :class:`~layers.Stack`, ``LayersMiddleware``, ``LayeredTransport``)
take a builder as well, and use its ``into_layer()``.

    >>> inner = layers.ServiceBuilder().layer(tag("b")).layer(tag("c"))
    >>> seen.clear()
    >>> svc = layers.ServiceBuilder().layer(tag("a")).layer(inner).service(handler)
    >>> anyio.run(svc, "x")
    'x'
    >>> seen
    ['a in', 'b in', 'c in', 'handler', 'c out', 'b out', 'a out']
    >>> inner.into_layer().layer(handler) is not None
    True
    >>> layers.ServiceBuilder().layer(handler)
    Traceback (most recent call last):
      ...
    layers.ConfigurationError: ServiceBuilder.layer(layer=handler): layer must be ...
"""

from __future__ import annotations

import inspect
import random as _random
import sys
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, ParamSpec, TypedDict, Unpack, final, overload

from ._adaptive import (
    AIMD,
    DEFAULT_DROPS,
    AdaptiveConcurrencyLimit,
    Gradient2,
    Vegas,
    Windowed,
)
from ._arguments import Arguments, decorate, takes_one_request
from ._backoff import BackoffSpec
from ._breaker import CircuitBreaker, CircuitBreakerOptions
from ._budget import RetryBudget
from ._chaos import InjectError, InjectLatency, InjectResult
from ._classify import Classification
from ._coalesce import Coalesce
from ._concurrency import ConcurrencyLimit, ConcurrencyStore
from ._core import (
    Identity,
    Layer,
    Service,
    Stack,
    TypePreservingLayer,
    check_layer,
    describe,
    is_async_callable,
    wrap_in,
)
from ._errors import ConfigurationError
from ._fallback import NO_VALUE, Fallback, Outcome
from ._hedge import Hedge
from ._ratelimit import Mode, RateLimit, RateLimitStore, SharedRateLimitStore
from ._retry import Retry
from ._throttle import AdaptiveThrottle
from ._timeout import Timeout
from ._transforms import (
    AndThen,
    Filter,
    MapErr,
    MapRequest,
    MapResponse,
    check_plain_function,
)

# Type parameter defaults (PEP 696) are in typing from Python 3.13 on.
if sys.version_info >= (3, 13):
    from typing import TypeVar
else:
    from typing_extensions import TypeVar

__all__ = [
    "HedgeOptions",
    "InjectionOptions",
    "RetryOptions",
    "ServiceBuilder",
    "Unchanged",
]


@final
class Unchanged:
    """Type marker: this side of the builder does not change the type.

    A builder whose layers all keep the request and response types is a
    ``ServiceBuilder[Unchanged, Unchanged, Unchanged, Unchanged]``, which a
    bare ``ServiceBuilder`` means (the type parameters default to it):
    ``.service(f)`` returns a service with exactly *f*'s types. A builder
    that changes one side only (a ``map_request``, say) keeps ``Unchanged``
    on the other. It is never instantiated.
    """

    def __init__(self) -> None:  # pragma: no cover
        raise TypeError("Unchanged is a type marker, not a value")


U = Unchanged

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")
P = TypeVar("P")
Q = TypeVar("Q")
R = TypeVar("R")
S = TypeVar("S")
# The parameters of a decorated function.
Params = ParamSpec("Params")
# What a transform's function takes and gives where nothing else says: Any
# when the function is a lambda (its parameter has no type), so that the
# built service takes Any rather than a type guessed from elsewhere.
X = TypeVar("X", default=Any)
Y = TypeVar("Y", default=Any)

# Inner first, as Layer's: a ServiceBuilder[InReq, InRes, OutReq, OutRes]
# builds a Service[OutReq, OutRes] around a Service[InReq, InRes]. A bare
# ServiceBuilder is the type-preserving one; ServiceBuilder[Req, Res] is one
# that keeps the types of a Service[Req, Res].
InReq = TypeVar("InReq", default=Unchanged)
InRes = TypeVar("InRes", default=Unchanged)
OutReq = TypeVar("OutReq", default=InReq)
OutRes = TypeVar("OutRes", default=InRes)


class RetryOptions(TypedDict, total=False):
    """The keyword options of :class:`~layers.Retry`, as a typed dict.

    :meth:`ServiceBuilder.retry <layers.ServiceBuilder.retry>` takes them
    (``**options``) to make a retry layer; an option left out has the
    layer's own default (a new :class:`~layers.RetryBudget`, the default
    :class:`~layers.ExponentialBackoff`...).
    """

    max_attempts: int | None
    max_time: float | None
    backoff: BackoffSpec
    budget: RetryBudget | None
    max_delay: float | None
    min_attempt_time: float
    retry_after: Callable[[Any], float | None] | None
    on_result: Callable[[Any], bool] | None
    prepare: Callable[[Any, int], Any] | None
    name: str


class HedgeOptions(TypedDict, total=False):
    """The keyword options of :class:`~layers.Hedge`, as a typed dict.

    :meth:`ServiceBuilder.hedge <layers.ServiceBuilder.hedge>` takes them
    (``**options``); an option left out has the layer's own default (a new
    :class:`~layers.RetryBudget`...).
    """

    delay: float | None
    quantile: float | None
    max_hedges: int
    min_samples: int
    period: float
    safe: Callable[[Any], bool] | None
    budget: RetryBudget | None
    name: str


class InjectionOptions(TypedDict, total=False):
    """The keyword options shared by the fault injection layers, as a typed dict.

    :meth:`ServiceBuilder.inject_error <layers.ServiceBuilder.inject_error>`,
    ``.inject_latency()`` and ``.inject_result()`` take them (``**options``);
    see :class:`~layers.InjectError` for each.
    """

    rate: float
    enabled: bool
    seed: int | None
    random: _random.Random | None
    name: str


@final
class ServiceBuilder(Generic[InReq, InRes, OutReq, OutRes]):
    """An immutable stack of layers; the first one added is the outermost.

    ``ServiceBuilder[InReq, InRes, OutReq, OutRes]`` builds a
    ``Service[OutReq, OutRes]`` around a ``Service[InReq, InRes]``: the same
    parameters, in the same order, as :class:`~layers.Layer` (and
    :meth:`into_layer` gives a ``Layer[InReq, InRes, OutReq, OutRes]``).
    While all its layers keep the types, the parameters are
    :class:`Unchanged` and the built service has the inner service's types.
    Type checkers follow the types through the built-in layers and
    transforms.

    The parameters have defaults, so a helper's return type is short:

    * ``-> ServiceBuilder``: a builder that keeps the types, whatever the
      service (``ServiceBuilder[Unchanged, Unchanged, Unchanged, Unchanged]``);
    * ``-> ServiceBuilder[Req, Res]``: one that keeps the types of a
      ``Service[Req, Res]`` (the outer side defaults to the inner one);
    * ``-> ServiceBuilder[InReq, InRes, OutReq, OutRes]``: one that changes
      them (``Unchanged`` on a side it leaves alone).

    Each built-in layer has a method that makes a new layer from the
    layer's own options, with the layer's defaults (``.timeout(2.0)`` is
    ``.layer(layers.Timeout(2.0))``). To share a layer object that you
    made (one breaker for two services, a :class:`~layers.Drain` that a
    :class:`~layers.Supervisor` starts), add it with ``.layer(obj)``.

    ``.layer(some_layer)`` adds a layer and :meth:`service` builds. The
    builder is not itself a :class:`~layers.Layer` (its ``.layer()`` only
    adds); :meth:`into_layer` turns it into one. It is also a decorator
    (the same as :meth:`service`) for a function of one request, and
    :meth:`decorate` puts the stack around an ``async def`` of any
    signature (the request inside the stack is then an
    :class:`~layers.Arguments`)::

        @layers.ServiceBuilder().timeout(2.0)
        async def fetch(url: str) -> bytes: ...


        @layers.ServiceBuilder().timeout(2.0).decorate
        async def get_user(session: Session, user_id: int) -> User: ...

    See the module documentation for the order of layers, with an example.
    """

    __slots__ = ("_layers",)

    _layers: tuple[Layer[Any, Any, Any, Any], ...]

    def __init__(self: ServiceBuilder[U, U, U, U]) -> None:
        self._layers = ()

    @classmethod
    def _of(
        cls, layers: tuple[Layer[Any, Any, Any, Any], ...]
    ) -> ServiceBuilder[Any, Any, Any, Any]:
        builder = object.__new__(cls)
        builder._layers = layers
        return builder

    def _add(
        self, layer: Layer[Any, Any, Any, Any]
    ) -> ServiceBuilder[Any, Any, Any, Any]:
        return ServiceBuilder._of((*self._layers, layer))

    @property
    def layers(self) -> tuple[Layer[Any, Any, Any, Any], ...]:
        """The layers added so far, outermost first."""
        return self._layers

    def __repr__(self) -> str:
        return f"ServiceBuilder({', '.join(map(repr, self._layers))})"

    # -- adding a layer ----------------------------------------------------------

    @overload
    def layer(
        self, layer: TypePreservingLayer, /
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]: ...
    @overload
    def layer(
        self, layer: ServiceBuilder[U, U, U, U], /
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]: ...
    @overload
    def layer(
        self: ServiceBuilder[U, U, U, U], layer: Layer[P, Q, A, B], /
    ) -> ServiceBuilder[P, Q, A, B]: ...
    @overload
    def layer(
        self: ServiceBuilder[U, C, U, D], layer: Layer[P, Q, A, C], /
    ) -> ServiceBuilder[P, Q, A, D]: ...
    @overload
    def layer(
        self: ServiceBuilder[B, U, A, U], layer: Layer[P, Q, B, D], /
    ) -> ServiceBuilder[P, Q, A, D]: ...
    @overload
    def layer(
        self: ServiceBuilder[C, D, A, B], layer: Layer[P, Q, C, D], /
    ) -> ServiceBuilder[P, Q, A, B]: ...
    @overload
    def layer(
        self: ServiceBuilder[U, U, U, U], layer: ServiceBuilder[P, Q, A, B], /
    ) -> ServiceBuilder[P, Q, A, B]: ...
    @overload
    def layer(
        self: ServiceBuilder[C, D, A, B], layer: ServiceBuilder[P, Q, C, D], /
    ) -> ServiceBuilder[P, Q, A, B]: ...
    def layer(self, layer: Any, /) -> Any:
        """Add *layer* inside those already added; return the new builder.

        ``.layer()`` only adds: it takes a layer, an object with a
        ``layer(inner)`` method, such as ``layers.Timeout(1.0)`` or
        ``layers.layer_fn(wrap)``. Another builder is taken as its layers,
        in their order (the same as ``.layer(other.into_layer())``).
        Anything else is refused at once: a class (pass an instance), a
        function ``Service -> Service`` (pass ``layers.layer_fn(f)``), a
        service (build with :meth:`service`).

        This is how a layer object you keep is added: one
        :class:`~layers.CircuitBreaker` shared by several services, a
        :class:`~layers.Drain` that the program starts at shutdown. (The
        methods named after layers, such as :meth:`circuit_breaker`, make
        a new layer each time they are called.)

        The builder is not itself a :class:`~layers.Layer`: where a layer is
        wanted, :meth:`into_layer` gives one. (The APIs of ``layers`` that
        take a whole stack, such as ``LayersMiddleware`` and
        ``LayeredTransport``, take a builder too and do that themselves.)

        Raises:
            layers.ConfigurationError: If *layer* is not a layer or a builder.
        """
        if isinstance(layer, ServiceBuilder):
            return ServiceBuilder._of((*self._layers, *layer._layers))
        check_layer("ServiceBuilder.layer", "layer", layer)
        return self._add(layer)

    def option_layer(
        self, layer: TypePreservingLayer | ServiceBuilder[U, U, U, U] | None, /
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add *layer* if it is not ``None``; otherwise add nothing.

        For a layer that configuration turns on or off::

            builder.option_layer(layers.Timeout(t) if t is not None else None)

        Raises:
            layers.ConfigurationError: If *layer* is neither ``None``, a layer
                nor a builder.
        """
        if layer is None:
            return self
        if isinstance(layer, ServiceBuilder):
            return ServiceBuilder._of((*self._layers, *layer._layers))
        check_layer("ServiceBuilder.option_layer", "layer", layer)
        return self._add(layer)

    # -- building ---------------------------------------------------------------

    # The type-preserving overload comes last: a side typed Any (a lambda's
    # parameter, say) then stays Any, instead of matching Unchanged and
    # taking the inner service's type.
    @overload
    def service(
        self: ServiceBuilder[B, U, A, U], inner: Service[B, S], /
    ) -> Service[A, S]: ...
    @overload
    def service(
        self: ServiceBuilder[U, C, U, D], inner: Service[R, C], /
    ) -> Service[R, D]: ...
    @overload
    def service(
        self: ServiceBuilder[A, B, C, D], inner: Service[A, B], /
    ) -> Service[C, D]: ...
    @overload
    def service(
        self: ServiceBuilder[U, U, U, U], inner: Service[R, S], /
    ) -> Service[R, S]: ...
    def service(self, inner: Any, /) -> Any:
        """Wrap *inner* in every layer and return the stacked service.

        Args:
            inner: The innermost service: any ``async def f(request)``, or
                any object with an ``async def __call__``. A plain (sync)
                function is refused; adapt it with :func:`~layers.service_fn`.
                So is a callable that cannot be called with one request
                (``async def get(session, user_id)``, a method written in
                a class body): :meth:`decorate` layers those.

        Raises:
            layers.ConfigurationError: If *inner* is not callable, is a plain
                sync function, or cannot be called with one positional
                argument.
        """
        _check_service(inner)
        return wrap_in(self._layers, inner)

    __call__ = service

    @overload
    def decorate(
        self: ServiceBuilder[U, U, U, U],
        function: classmethod[A, Params, Awaitable[R]],
        /,
    ) -> classmethod[A, Params, Coroutine[Any, Any, R]]: ...
    @overload
    def decorate(
        self: ServiceBuilder[U, U, U, U],
        function: staticmethod[Params, Awaitable[R]],
        /,
    ) -> staticmethod[Params, Coroutine[Any, Any, R]]: ...
    @overload
    def decorate(
        self: ServiceBuilder[U, U, U, U], function: Callable[Params, Awaitable[R]], /
    ) -> Callable[Params, Coroutine[Any, Any, R]]: ...
    @overload
    def decorate(
        self: ServiceBuilder[Arguments, U, Arguments, U],
        function: Callable[Params, Awaitable[R]],
        /,
    ) -> Callable[Params, Coroutine[Any, Any, R]]: ...
    @overload
    def decorate(
        self: ServiceBuilder[U, R, U, S], function: Callable[Params, Awaitable[R]], /
    ) -> Callable[Params, Coroutine[Any, Any, S]]: ...
    def decorate(self, function: Any, /) -> Any:
        """Put the stack around an ``async def`` of any signature; a decorator.

        The decorated function has *function*'s signature, name,
        ``__qualname__``, docstring, module and ``__wrapped__``
        (:func:`functools.wraps`), and type checkers keep its parameters and
        return type. Each call passes through the layers as one request, an
        :class:`~layers.Arguments` (the call's arguments, read by parameter
        name), and the innermost service calls *function* with the
        arguments that reach it::

            users_api = layers.ServiceBuilder().timeout(2.0).retry(on=ConnectionError)


            @users_api.decorate
            async def get_user(session, user_id: int, *, fields=None) -> User: ...

        so ``key=lambda a: a["tenant"]``, ``cost=``, ``filter``, ``prepare=``
        and ``map_request(lambda a: a.replace(...))`` see the arguments. A
        method (``self`` is its first argument, so each instance's calls
        carry their own), a ``classmethod`` or ``staticmethod`` (above or
        below the ``@classmethod``), a bound method, or an object with an
        ``async def __call__`` can be decorated as well.

        The layers are the builder's: a builder that decorates two functions
        gives both the same layer objects, so they share one breaker, one
        rate limit, one concurrency limit (the builder's rule, see the
        module documentation); a layer of each function's own needs a
        builder method called for each (``.circuit_breaker()`` makes a new
        breaker each time it is called).

        ``@builder`` alone (:meth:`service`) is for a function of one
        request, and refuses a function of another signature.

        Type checkers keep the parameters (a ``ParamSpec``) and the return
        type. The builder must keep the request type (its request side
        :class:`Unchanged`, or a ``map_request`` from
        :class:`~layers.Arguments` to :class:`~layers.Arguments`); a
        builder that changes the response type (``map_response``,
        ``and_then``) gives the decorated function its response type.

        Args:
            function: An ``async def`` (or any async callable), or a
                ``classmethod`` or ``staticmethod`` of one.

        Returns:
            An async function (a ``classmethod``/``staticmethod`` of one for
            those) of the same signature.

        Raises:
            layers.ConfigurationError: If *function* is not an async callable.
        """
        return decorate("ServiceBuilder.decorate", self._layers, function)

    @overload
    def into_layer(self: ServiceBuilder[U, U, U, U]) -> TypePreservingLayer: ...
    @overload
    def into_layer(self: ServiceBuilder[U, C, U, D]) -> Layer[Any, C, Any, D]: ...
    @overload
    def into_layer(self: ServiceBuilder[B, U, A, U]) -> Layer[B, Any, A, Any]: ...
    @overload
    def into_layer(self: ServiceBuilder[A, B, C, D]) -> Layer[A, B, C, D]: ...
    def into_layer(self) -> Any:
        """Turn the whole stack into one layer: the builder's way to be a Layer.

        ``builder.into_layer().layer(service)`` is ``builder.service(service)``.
        Use it wherever a :class:`~layers.Layer` is wanted (a builder's own
        ``.layer()`` adds a layer, so the builder is not one). An empty
        builder gives :class:`~layers.Identity`, a builder of one layer that
        layer, and more a :class:`~layers.Stack`.
        """
        if not self._layers:
            return Identity()
        if len(self._layers) == 1:
            return self._layers[0]
        return Stack(*self._layers)

    # -- built-in layers ----------------------------------------------------------
    #
    # One rule: each method makes a new layer from the layer's own options,
    # with the layer's own defaults (tests/test_builder.py checks that they
    # do not drift apart). A layer object to share goes through .layer(obj).

    def timeout(
        self, seconds: float, *, name: str = "timeout"
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a new :class:`~layers.Timeout` of *seconds*; options are the layer's."""
        return self._add(Timeout(seconds, name=name))

    def circuit_breaker(
        self, **options: Unpack[CircuitBreakerOptions]
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a new :class:`~layers.CircuitBreaker`; the options are the layer's.

        The breaker is made now from :class:`~layers.CircuitBreaker`'s options
        (see :class:`~layers.CircuitBreakerOptions`), with its defaults, so
        every service built from this builder shares it::

            builder.circuit_breaker(name="users-api", failure_rate_threshold=0.25)

        To guard services built from different builders with one breaker
        (one breaker per downstream host), make the breaker yourself and add
        it with ``.layer(breaker)``.

        Raises:
            layers.ConfigurationError: For an invalid option.
        """
        return self._add(CircuitBreaker(**options))

    def rate_limit(
        self,
        rate: float,
        period: float = 1.0,
        *,
        burst: int = 1,
        mode: Mode = "wait",
        max_wait: float | None = None,
        key: Callable[[Any], Hashable] | None = None,
        max_keys: int | None = None,
        cost: Callable[[Any], float] | None = None,
        store: RateLimitStore | SharedRateLimitStore | None = None,
        name: str = "rate_limit",
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a new :class:`~layers.RateLimit`: *rate* calls per *period*.

        The options are the layer's. The layer object is made now, so every
        service built from this builder shares one limit; to share one limit
        between builders, add a ``RateLimit`` you made with ``.layer()``.
        """
        return self._add(
            RateLimit(
                rate,
                period,
                burst=burst,
                mode=mode,
                max_wait=max_wait,
                key=key,
                max_keys=max_keys,
                cost=cost,
                store=store,
                name=name,
            )
        )

    def concurrency_limit(
        self,
        max_in_flight: int,
        *,
        max_waiting: int | None = None,
        max_wait: float | None = None,
        store: ConcurrencyStore | None = None,
        name: str = "concurrency_limit",
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a new :class:`~layers.ConcurrencyLimit` of *max_in_flight* calls.

        The options are the layer's (``store=`` a
        :class:`~layers.redis.RedisConcurrencyStore` shares the permits
        across processes). The layer object is made now, so every service
        built from this builder shares the same permits.
        """
        return self._add(
            ConcurrencyLimit(
                max_in_flight,
                max_waiting=max_waiting,
                max_wait=max_wait,
                store=store,
                name=name,
            )
        )

    def load_shed(
        self,
        max_in_flight: int,
        *,
        store: ConcurrencyStore | None = None,
        name: str = "load_shed",
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add load shedding: refuse at once what finds *max_in_flight* calls inside.

        The same as ``.concurrency_limit(max_in_flight, max_waiting=0)``: a new
        :class:`~layers.ConcurrencyLimit` without a queue, whose refusals
        raise :class:`~layers.Overloaded` without calling the inner service.
        (Tower's ``load_shed()`` sheds when the inner service is not ready;
        in ``layers`` a service has no readiness, so the bound is given
        here.) With ``store=`` a :class:`~layers.redis.RedisConcurrencyStore`,
        the *max_in_flight* calls are counted across processes.
        """
        return self._add(
            ConcurrencyLimit(max_in_flight, max_waiting=0, store=store, name=name)
        )

    def retry(
        self, on: Classification, **options: Unpack[RetryOptions]
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a new :class:`~layers.Retry`; the options are the layer's.

        *on* and the options (see :class:`RetryOptions`) are
        :class:`~layers.Retry`'s, with its defaults: an option left out has
        the layer's default, so the layer gets a new
        :class:`~layers.RetryBudget`, made now and shared by every service
        built from this builder, unless ``budget=`` says otherwise
        (``budget=None`` turns it off)::

            builder.retry(on=ConnectionError, max_attempts=3)

        Raises:
            layers.ConfigurationError: For an invalid option.
        """
        return self._add(Retry(on, **options))

    # -- transforms -----------------------------------------------------------------

    @overload
    def map_request(
        self: ServiceBuilder[U, C, U, D], function: Callable[[X], Y]
    ) -> ServiceBuilder[Y, C, X, D]: ...
    @overload
    def map_request(
        self: ServiceBuilder[B, C, A, D], function: Callable[[B], Y]
    ) -> ServiceBuilder[Y, C, A, D]: ...
    def map_request(self, function: Callable[[Any], Any]) -> Any:
        """Add a :class:`~layers.MapRequest`: the inner gets ``function(request)``.

        *function* is a plain function; an async one is refused (for async
        work on the request, add a layer made with :func:`~layers.layer_fn`).
        Give it a function whose parameter is annotated (``def parse(body:
        bytes) -> int``): the built service then takes that type. A lambda's
        parameter has no type for a checker to find (mypy takes it as
        ``Any``; pyright strict reports it).

        Raises:
            layers.ConfigurationError: If *function* is not callable, or is async.
        """
        check_plain_function("ServiceBuilder.map_request", "map_request", function)
        return self._add(MapRequest(function))

    @overload
    def map_response(
        self: ServiceBuilder[B, U, A, U], function: Callable[[X], Y]
    ) -> ServiceBuilder[B, X, A, Y]: ...
    @overload
    def map_response(
        self: ServiceBuilder[B, C, A, D], function: Callable[[X], C]
    ) -> ServiceBuilder[B, X, A, D]: ...
    def map_response(self, function: Callable[[Any], Any]) -> Any:
        """Add a :class:`~layers.MapResponse`: callers get ``function(response)``.

        *function* is a plain function; for an async one, use :meth:`and_then`.

        Raises:
            layers.ConfigurationError: If *function* is not callable, or is async.
        """
        check_plain_function("ServiceBuilder.map_response", "map_response", function)
        return self._add(MapResponse(function))

    @overload
    def and_then(
        self: ServiceBuilder[B, U, A, U], function: Callable[[X], Awaitable[Y]]
    ) -> ServiceBuilder[B, X, A, Y]: ...
    @overload
    def and_then(
        self: ServiceBuilder[B, C, A, D], function: Callable[[X], Awaitable[C]]
    ) -> ServiceBuilder[B, X, A, D]: ...
    def and_then(self, function: Callable[[Any], Awaitable[Any]]) -> Any:
        """Add an :class:`~layers.AndThen`: callers get ``await function(response)``."""
        return self._add(AndThen(function))

    def map_err(
        self, function: Callable[[Exception], Exception]
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a :class:`~layers.MapErr`: exceptions pass through ``function``.

        *function* is a plain function that returns the exception to raise.

        Raises:
            layers.ConfigurationError: If *function* is not callable, or is async.
        """
        check_plain_function("ServiceBuilder.map_err", "map_err", function)
        return self._add(MapErr(function))

    def filter(
        self,
        predicate: Callable[[Any], bool] | Callable[[Any], Awaitable[bool]],
        *,
        name: str = "filter",
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a :class:`~layers.Filter`; refused requests raise ``Filtered``."""
        return self._add(Filter(predicate, name=name))

    def adaptive_throttle(
        self,
        *,
        window: float = 120.0,
        multiplier: float = 2.0,
        min_requests: int = 20,
        window_buckets: int = 10,
        on: Classification = Exception,
        on_result: Callable[[Any], bool] | None = None,
        seed: int | None = None,
        random: _random.Random | None = None,
        name: str = "adaptive_throttle",
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a new :class:`~layers.AdaptiveThrottle`; the options are the layer's.

        The layer object is made now, so every service built from this
        builder shares its window (one throttle for one downstream).
        """
        return self._add(
            AdaptiveThrottle(
                window=window,
                multiplier=multiplier,
                min_requests=min_requests,
                window_buckets=window_buckets,
                on=on,
                on_result=on_result,
                seed=seed,
                random=random,
                name=name,
            )
        )

    # -- fallback, coalescing, fault injection --------------------------------------

    # The fallback's response type is the stack's at the point it is added:
    # on a builder that keeps the types it becomes the response type.
    @overload
    def fallback(
        self: ServiceBuilder[U, U, U, U],
        value: S = ...,
        *,
        handler: Callable[[Any, Outcome[S]], Awaitable[S]] | None = None,
        on: Classification | None = None,
        on_result: Callable[[S], bool] | None = None,
        on_rejected: bool = True,
        name: str = "fallback",
    ) -> ServiceBuilder[U, S, U, S]: ...
    @overload
    def fallback(
        self: ServiceBuilder[A, U, B, U],
        value: S = ...,
        *,
        handler: Callable[[Any, Outcome[S]], Awaitable[S]] | None = None,
        on: Classification | None = None,
        on_result: Callable[[S], bool] | None = None,
        on_rejected: bool = True,
        name: str = "fallback",
    ) -> ServiceBuilder[A, S, B, S]: ...
    @overload
    def fallback(
        self: ServiceBuilder[A, C, B, D],
        value: C = ...,
        *,
        handler: Callable[[Any, Outcome[C]], Awaitable[C]] | None = None,
        on: Classification | None = None,
        on_result: Callable[[C], bool] | None = None,
        on_rejected: bool = True,
        name: str = "fallback",
    ) -> ServiceBuilder[A, C, B, D]: ...
    def fallback(
        self,
        value: Any = NO_VALUE,
        *,
        handler: Callable[[Any, Outcome[Any]], Awaitable[Any]] | None = None,
        on: Classification | None = None,
        on_result: Callable[[Any], bool] | None = None,
        on_rejected: bool = True,
        name: str = "fallback",
    ) -> Any:
        """Add a new :class:`~layers.Fallback`; the options are the layer's.

        Give *value* or ``handler=``; the response type of the stack below
        is the fallback's (a value of another type is a type error)::

            builder.fallback([], on=ConnectionError)

        Raises:
            layers.ConfigurationError: For an invalid option.
        """
        return self._add(
            Fallback(
                value,
                handler=handler,
                on=on,
                on_result=on_result,
                on_rejected=on_rejected,
                name=name,
            )
        )

    def adaptive_concurrency_limit(
        self,
        algorithm: AIMD | Gradient2 | Vegas | Windowed | None = None,
        *,
        max_waiting: int | None = None,
        max_wait: float | None = None,
        on: Classification = DEFAULT_DROPS,
        name: str = "adaptive_concurrency_limit",
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a new :class:`~layers.AdaptiveConcurrencyLimit` (its options).

        *algorithm* ``None`` is a new ``Windowed(Gradient2())`` (the
        layer's default, see :class:`~layers.Windowed`). The layer
        object is made now, so every service built from this builder shares
        the same limit.
        """
        return self._add(
            AdaptiveConcurrencyLimit(
                Windowed(Gradient2()) if algorithm is None else algorithm,
                max_waiting=max_waiting,
                max_wait=max_wait,
                on=on,
                name=name,
            )
        )

    def coalesce(
        self,
        *,
        key: Callable[[Any], Hashable] | None = None,
        max_keys: int = 1000,
        name: str = "coalesce",
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a new :class:`~layers.Coalesce`: calls with one key share one call.

        The options are the layer's. The layer object is made now, so every
        service built from this builder shares its calls in flight.
        """
        return self._add(Coalesce(key=key, max_keys=max_keys, name=name))

    def hedge(
        self, **options: Unpack[HedgeOptions]
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a new :class:`~layers.Hedge`; the options are the layer's.

        The layer (its latency window and its budget) is made now and
        shared by every service built from this builder::

            builder.hedge(quantile=0.95, max_hedges=1)
        """
        return self._add(Hedge(**options))

    def inject_error(
        self,
        error: type[Exception] | Callable[[], Exception],
        **options: Unpack[InjectionOptions],
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a new :class:`~layers.InjectError`; the options are the layer's.

        To switch it on and off at run time, make the layer yourself, keep
        it, and add it with ``.layer(chaos)``.
        """
        return self._add(InjectError(error, **options))

    def inject_latency(
        self, delay: float, **options: Unpack[InjectionOptions]
    ) -> ServiceBuilder[InReq, InRes, OutReq, OutRes]:
        """Add a new :class:`~layers.InjectLatency`; the options are the layer's."""
        return self._add(InjectLatency(delay, **options))

    @overload
    def inject_result(
        self: ServiceBuilder[U, U, U, U],
        value: S,
        **options: Unpack[InjectionOptions],
    ) -> ServiceBuilder[U, S, U, S]: ...
    @overload
    def inject_result(
        self: ServiceBuilder[A, U, B, U],
        value: S,
        **options: Unpack[InjectionOptions],
    ) -> ServiceBuilder[A, S, B, S]: ...
    @overload
    def inject_result(
        self: ServiceBuilder[A, C, B, D],
        value: C,
        **options: Unpack[InjectionOptions],
    ) -> ServiceBuilder[A, C, B, D]: ...
    def inject_result(self, value: Any, **options: Unpack[InjectionOptions]) -> Any:
        """Add a new :class:`~layers.InjectResult`; the options are the layer's.

        The response type of the stack below is *value*'s, as for
        :meth:`fallback`.
        """
        return self._add(InjectResult(value, **options))


def _check_service(inner: Any) -> None:
    if not callable(inner):
        raise ConfigurationError(
            f"ServiceBuilder.service(inner={inner!r}): inner must be a service "
            f"(an async callable), got {type(inner).__name__}"
        )
    if inspect.isfunction(inner) and not is_async_callable(inner):
        raise ConfigurationError(
            f"ServiceBuilder.service(inner={inner.__qualname__}): inner is a sync "
            "function; make it an async def, or wrap it with layers.service_fn() "
            "to run it in a worker thread"
        )
    signature = takes_one_request(inner)
    if signature is not None:
        raise ConfigurationError(
            f"ServiceBuilder.service(inner={describe(inner)}): inner must take "
            f"one request, but its signature is {signature}; for a function "
            "of several arguments, or a method, use @builder.decorate, which "
            "keeps the signature"
        )
