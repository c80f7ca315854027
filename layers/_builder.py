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
old one as it was, so a partial builder can be shared and extended. A method
that adds a stateful layer (a rate limit, a breaker...) makes the layer object
when the method is called; every service built from that builder, or from
builders extended from it, shares that one state.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, final, overload

from ._core import (
    Identity,
    Layer,
    Service,
    Stack,
    TypePreservingLayer,
    check_layer,
    is_async_callable,
)
from ._timeout import Timeout
from ._transforms import AndThen, Filter, MapErr, MapRequest, MapResponse

__all__ = ["ServiceBuilder", "Unchanged"]

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")
P = TypeVar("P")
Q = TypeVar("Q")
R = TypeVar("R")
S = TypeVar("S")
X = TypeVar("X")
Y = TypeVar("Y")

ReqOut = TypeVar("ReqOut")
ResOut = TypeVar("ResOut")
ReqIn = TypeVar("ReqIn")
ResIn = TypeVar("ResIn")


@final
class Unchanged:
    """Type marker: this side of the builder does not change the type.

    ``ServiceBuilder[Unchanged, Unchanged, Unchanged, Unchanged]`` is a builder
    whose layers all keep the request and response types, so
    ``.service(f)`` returns a service with exactly *f*'s types. It is never
    instantiated.
    """

    def __init__(self) -> None:  # pragma: no cover
        raise TypeError("Unchanged is a type marker, not a value")


U = Unchanged


@final
class ServiceBuilder(Generic[ReqOut, ResOut, ReqIn, ResIn]):
    """An immutable stack of layers; the first one added is the outermost.

    ``ServiceBuilder[ReqOut, ResOut, ReqIn, ResIn]`` builds a
    ``Service[ReqOut, ResOut]`` around a ``Service[ReqIn, ResIn]``. While all
    its layers keep the types, the parameters are :class:`Unchanged` and the
    built service has the inner service's types. Type checkers follow the
    types through the built-in layers and transforms.

    The builder is itself a layer (``builder.layer(service)`` builds, as
    :meth:`service` does) and a decorator::

        @layers.ServiceBuilder().timeout(2.0)
        async def fetch(url: str) -> bytes: ...

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

    # -- adding any layer, or acting as one -------------------------------------

    @overload
    def layer(
        self, layer: TypePreservingLayer, /
    ) -> ServiceBuilder[ReqOut, ResOut, ReqIn, ResIn]: ...
    @overload
    def layer(
        self: ServiceBuilder[U, U, U, U], layer: Layer[P, Q, A, B], /
    ) -> ServiceBuilder[A, B, P, Q]: ...
    @overload
    def layer(
        self: ServiceBuilder[U, D, U, C], layer: Layer[P, Q, A, C], /
    ) -> ServiceBuilder[A, D, P, Q]: ...
    @overload
    def layer(
        self: ServiceBuilder[A, U, B, U], layer: Layer[P, Q, B, D], /
    ) -> ServiceBuilder[A, D, P, Q]: ...
    @overload
    def layer(
        self: ServiceBuilder[A, B, C, D], layer: Layer[P, Q, C, D], /
    ) -> ServiceBuilder[A, B, P, Q]: ...
    @overload
    def layer(
        self: ServiceBuilder[U, U, U, U], inner: Service[R, S], /
    ) -> Service[R, S]: ...
    @overload
    def layer(
        self: ServiceBuilder[U, D, U, C], inner: Service[R, C], /
    ) -> Service[R, D]: ...
    @overload
    def layer(
        self: ServiceBuilder[A, U, B, U], inner: Service[B, S], /
    ) -> Service[A, S]: ...
    @overload
    def layer(
        self: ServiceBuilder[A, B, C, D], inner: Service[C, D], /
    ) -> Service[A, B]: ...
    def layer(self, layer_or_inner: Any, /) -> Any:
        """Add a layer inside those already added; or, given a service, build.

        ``builder.layer(some_layer)`` returns a new builder with *some_layer*
        innermost so far. Given a service instead (anything without a
        ``layer`` method), the builder acts as the :class:`~layers.Layer`
        that it is and returns the stacked service, exactly as
        :meth:`service`.
        """
        if callable(getattr(layer_or_inner, "layer", None)):
            return self._add(layer_or_inner)
        return self.service(layer_or_inner)

    def option_layer(
        self, layer: TypePreservingLayer | None, /
    ) -> ServiceBuilder[ReqOut, ResOut, ReqIn, ResIn]:
        """Add *layer* if it is not ``None``; otherwise add nothing.

        For a layer that configuration turns on or off::

            builder.option_layer(layers.Timeout(t) if t is not None else None)
        """
        if layer is None:
            return self
        check_layer("ServiceBuilder.option_layer", "layer", layer)
        return self._add(layer)

    # -- building ---------------------------------------------------------------

    @overload
    def service(
        self: ServiceBuilder[U, U, U, U], inner: Service[R, S], /
    ) -> Service[R, S]: ...
    @overload
    def service(
        self: ServiceBuilder[U, D, U, C], inner: Service[R, C], /
    ) -> Service[R, D]: ...
    @overload
    def service(
        self: ServiceBuilder[A, U, B, U], inner: Service[B, S], /
    ) -> Service[A, S]: ...
    @overload
    def service(
        self: ServiceBuilder[A, B, C, D], inner: Service[C, D], /
    ) -> Service[A, B]: ...
    def service(self, inner: Any, /) -> Any:
        """Wrap *inner* in every layer and return the stacked service.

        Args:
            inner: The innermost service: any ``async def f(request)``, or
                any object with an ``async def __call__``. A plain (sync)
                function is refused; adapt it with :func:`~layers.service_fn`.

        Raises:
            TypeError: If *inner* is not callable or is a plain sync function.
        """
        _check_service(inner)
        service = inner
        for each in reversed(self._layers):
            service = each.layer(service)
        return service

    __call__ = service

    @overload
    def into_layer(self: ServiceBuilder[U, U, U, U]) -> TypePreservingLayer: ...
    @overload
    def into_layer(self: ServiceBuilder[U, D, U, C]) -> Layer[Any, C, Any, D]: ...
    @overload
    def into_layer(self: ServiceBuilder[A, U, B, U]) -> Layer[B, Any, A, Any]: ...
    @overload
    def into_layer(self: ServiceBuilder[A, B, C, D]) -> Layer[C, D, A, B]: ...
    def into_layer(self) -> Any:
        """Turn the whole stack into one layer, to reuse inside another builder.

        An empty builder gives :class:`~layers.Identity`.
        """
        if not self._layers:
            return Identity()
        if len(self._layers) == 1:
            return self._layers[0]
        return Stack(*self._layers)

    # -- built-in layers ----------------------------------------------------------

    def timeout(
        self, seconds: float, *, name: str = "timeout"
    ) -> ServiceBuilder[ReqOut, ResOut, ReqIn, ResIn]:
        """Add a :class:`~layers.Timeout` of *seconds*."""
        return self._add(Timeout(seconds, name=name))

    # -- transforms -----------------------------------------------------------------

    @overload
    def map_request(
        self: ServiceBuilder[U, D, U, C], function: Callable[[X], Y], /
    ) -> ServiceBuilder[X, D, Y, C]: ...
    @overload
    def map_request(
        self: ServiceBuilder[A, D, B, C], function: Callable[[B], Y], /
    ) -> ServiceBuilder[A, D, Y, C]: ...
    def map_request(self, function: Callable[[Any], Any], /) -> Any:
        """Add a :class:`~layers.MapRequest`: the inner gets ``function(request)``."""
        return self._add(MapRequest(function))

    @overload
    def map_response(
        self: ServiceBuilder[A, U, B, U], function: Callable[[X], Y], /
    ) -> ServiceBuilder[A, Y, B, X]: ...
    @overload
    def map_response(
        self: ServiceBuilder[A, D, B, C], function: Callable[[X], C], /
    ) -> ServiceBuilder[A, D, B, X]: ...
    def map_response(self, function: Callable[[Any], Any], /) -> Any:
        """Add a :class:`~layers.MapResponse`: callers get ``function(response)``."""
        return self._add(MapResponse(function))

    @overload
    def and_then(
        self: ServiceBuilder[A, U, B, U], function: Callable[[X], Awaitable[Y]], /
    ) -> ServiceBuilder[A, Y, B, X]: ...
    @overload
    def and_then(
        self: ServiceBuilder[A, D, B, C], function: Callable[[X], Awaitable[C]], /
    ) -> ServiceBuilder[A, D, B, X]: ...
    def and_then(self, function: Callable[[Any], Awaitable[Any]], /) -> Any:
        """Add an :class:`~layers.AndThen`: callers get ``await function(response)``."""
        return self._add(AndThen(function))

    def map_err(
        self, function: Callable[[Exception], Exception], /
    ) -> ServiceBuilder[ReqOut, ResOut, ReqIn, ResIn]:
        """Add a :class:`~layers.MapErr`: exceptions pass through ``function``."""
        return self._add(MapErr(function))

    def filter(
        self,
        predicate: Callable[[Any], bool] | Callable[[Any], Awaitable[bool]],
        /,
        *,
        name: str = "filter",
    ) -> ServiceBuilder[ReqOut, ResOut, ReqIn, ResIn]:
        """Add a :class:`~layers.Filter`; refused requests raise ``Filtered``."""
        return self._add(Filter(predicate, name=name))


def _check_service(inner: Any) -> None:
    if not callable(inner):
        raise TypeError(
            f"ServiceBuilder.service(inner={inner!r}): inner must be a service "
            f"(an async callable), got {type(inner).__name__}"
        )
    if inspect.isfunction(inner) and not is_async_callable(inner):
        raise TypeError(
            f"ServiceBuilder.service(inner={inner.__qualname__}): inner is a sync "
            "function; make it an async def, or wrap it with layers.service_fn() "
            "to run it in a worker thread"
        )
