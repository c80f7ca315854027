"""The two protocols everything is built on: :class:`Service` and :class:`Layer`.

A *service* is an async callable from a request to a response. Any
``async def f(request)`` already is one; nothing needs to wrap it.

A *layer* is any object with a ``layer(inner)`` method that wraps a service in
another service adding one behaviour. Layers are configuration: ``layer()``
only constructs the wrapping service, and the same layer object can wrap any
number of services (sharing its state, if it has any).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    NoReturn,
    Protocol,
    TypeGuard,
    cast,
    final,
    overload,
)

import anyio.lowlevel
import anyio.to_thread

from ._config import check_callable
from ._errors import CallbackError, ConfigurationError

# Type parameter defaults (PEP 696) are in typing from Python 3.13 on.
if sys.version_info >= (3, 13):
    from typing import TypeVar
else:
    from typing_extensions import TypeVar

if TYPE_CHECKING:
    from ._builder import ServiceBuilder

__all__ = [
    "Identity",
    "Layer",
    "LayerFn",
    "Service",
    "Stack",
    "TypePreservingLayer",
    "layer_fn",
    "service_fn",
]

Req = TypeVar("Req")
Res = TypeVar("Res")
Req_contra = TypeVar("Req_contra", contravariant=True)
Res_co = TypeVar("Res_co", covariant=True)

# The type parameters of a layer, inner first: ``Layer[InReq, InRes, OutReq,
# OutRes]`` wraps a ``Service[InReq, InRes]`` into a ``Service[OutReq, OutRes]``
# (the order of ServiceBuilder's too). The outer side defaults to the inner
# one, so ``Layer[Req, Res]`` is a layer that keeps the types.
InReq = TypeVar("InReq")
InRes = TypeVar("InRes")
OutReq = TypeVar("OutReq", default=InReq)
OutRes = TypeVar("OutRes", default=InRes)
InReq_co = TypeVar("InReq_co", covariant=True)
InRes_contra = TypeVar("InRes_contra", contravariant=True)
OutReq_contra = TypeVar("OutReq_contra", contravariant=True, default=InReq_co)
OutRes_co = TypeVar("OutRes_co", covariant=True, default=InRes_contra)


class Service(Protocol[Req_contra, Res_co]):
    """An async callable from a request to a response.

    Any ``async def f(request)`` is a ``Service``: the protocol only asks for
    ``await service(request)``. Layers wrap services in services.

    Example:
        >>> async def echo(request: str) -> str:
        ...     return request
        >>> svc: Service[str, str] = echo
    """

    async def __call__(self, request: Req_contra, /) -> Res_co:
        """Handle *request* and return its response (or raise)."""
        ...


class Layer(Protocol[InReq_co, InRes_contra, OutReq_contra, OutRes_co]):
    """Wraps a ``Service[InReq, InRes]`` into a ``Service[OutReq, OutRes]``.

    A layer is any object with this one method. ``layer()`` should only build
    the wrapping service; the work happens when that service is called.
    Type-preserving layers (most of them) implement ``layer`` as a generic
    method ``Service[R, S] -> Service[R, S]``; see :class:`TypePreservingLayer`.

    The type parameters come inner side first, as
    :class:`~layers.ServiceBuilder`'s; the outer side defaults to the inner
    one, so ``Layer[Req, Res]`` is ``Layer[Req, Res, Req, Res]``.
    """

    def layer(
        self, inner: Service[InReq_co, InRes_contra], /
    ) -> Service[OutReq_contra, OutRes_co]:
        """Return a service that wraps *inner*."""
        ...


class TypePreservingLayer(Protocol):
    """A layer whose service has the same request and response types as its inner.

    Timeout, retry, limits, breakers and ``map_err`` are such layers: their
    ``layer`` is generic, so type checkers follow the types straight through.
    """

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Return a service with the same types that wraps *inner*."""
        ...


@final
class Identity:
    """The layer that does nothing: ``Identity().layer(s)`` is ``s`` itself.

    Useful as a default where a layer is optional (:meth:`ServiceBuilder.option_layer
    <layers.ServiceBuilder.option_layer>` uses it for ``None``).
    """

    __slots__ = ()

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Return *inner* unchanged."""
        return inner

    def __repr__(self) -> str:
        return "Identity()"


@final
class Stack:
    """Several layers applied as one; the first one given is the outermost.

    ``Stack(a, b, c).layer(s)`` is ``a.layer(b.layer(c.layer(s)))``: a request
    passes ``a``, then ``b``, then ``c``, then reaches ``s``. This is the same
    order as :class:`~layers.ServiceBuilder`, which is the typed way to stack.

    Args:
        *layers: The layers, outermost first. A
            :class:`~layers.ServiceBuilder` among them stands for its
            :meth:`~layers.ServiceBuilder.into_layer`.

    Raises:
        layers.ConfigurationError: If one of *layers* is not a layer (nor a
            builder).
    """

    __slots__ = ("layers",)

    layers: tuple[Layer[Any, Any, Any, Any], ...]
    """The layers, outermost first."""

    def __init__(
        self, *layers: Layer[Any, Any, Any, Any] | ServiceBuilder[Any, Any, Any, Any]
    ) -> None:
        self.layers = tuple(
            as_layer("Stack", f"layers[{index}]", candidate)
            for index, candidate in enumerate(layers)
        )

    def layer(self, inner: Service[Any, Any], /) -> Service[Any, Any]:
        """Wrap *inner* in every layer, the last one innermost."""
        return wrap_in(self.layers, inner)

    def __repr__(self) -> str:
        return f"Stack({', '.join(map(repr, self.layers))})"


def wrap_in(
    layers: Sequence[Layer[Any, Any, Any, Any]], inner: Service[Any, Any]
) -> Service[Any, Any]:
    """*inner* wrapped in each of *layers*, the first one outermost."""
    service = inner
    for each in reversed(layers):
        service = each.layer(service)
    return service


def is_layer(value: object) -> bool:
    """Whether *value* is a Layer: an object, not a class, with a ``layer`` method.

    A :class:`~layers.ServiceBuilder` is not one (its ``.layer()`` adds a
    layer); :func:`as_layer` takes its ``into_layer()``.
    """
    return (
        not isinstance(value, type)
        and callable(getattr(value, "layer", None))
        and not _is_builder(value)
    )


def _is_builder(value: object) -> TypeGuard[ServiceBuilder[Any, Any, Any, Any]]:
    from ._builder import ServiceBuilder  # here: _builder imports this module

    return isinstance(value, ServiceBuilder)


def describe(value: object) -> str:
    """*value* for a message: a function or class by its qualified name, else repr."""
    if inspect.isroutine(value) or isinstance(value, type):
        name = getattr(value, "__qualname__", None)
        if isinstance(name, str):
            return name
    return repr(value)


def not_a_layer(owner: str, parameter: str, value: object) -> str:
    """The message that says *value* is not a layer, and what to pass instead."""
    start = (
        f"{owner}({parameter}={describe(value)}): {parameter} must be a Layer "
        "(an object with a .layer(inner) method)"
    )
    if isinstance(value, type):
        if callable(getattr(value, "layer", None)):
            return (
                f"{start}, got the class {value.__name__} itself; pass an "
                f"instance, e.g. {value.__name__}(...)"
            )
        return f"{start}, got the class {value.__name__}"
    if _is_builder(value):
        return (
            f"{start}, got a ServiceBuilder, which is not itself a layer; pass "
            "builder.into_layer()"
        )
    name = describe(value)
    if is_async_callable(value):
        return (
            f"{start}, got an async callable, which is a service: to build the "
            f"stack around it, call ServiceBuilder.service({name})"
        )
    if callable(value):
        return (
            f"{start}, got {type(value).__name__}; to make a layer from a "
            f"function Service -> Service, pass layers.layer_fn({name}) (a sync "
            f"service is built around with .service(layers.service_fn({name})))"
        )
    return f"{start}, got {type(value).__name__}"


def check_layer(owner: str, parameter: str, value: object) -> None:
    """Raise a clear ConfigurationError unless *value* is a Layer (:func:`is_layer`)."""
    if not is_layer(value):
        raise ConfigurationError(not_a_layer(owner, parameter, value))


def as_layer(owner: str, parameter: str, value: object) -> Layer[Any, Any, Any, Any]:
    """*value* as a Layer: a ServiceBuilder gives its ``into_layer()``.

    For the parameters that take a whole stack (``LayersMiddleware(app,
    stack)``, ``LayeredTransport(stack)``, :class:`Stack`...), where a
    builder is the usual way to write one. Anything else that is not a
    layer raises :class:`~layers.ConfigurationError` (see :func:`check_layer`).
    """
    if _is_builder(value):
        return value.into_layer()
    check_layer(owner, parameter, value)
    return cast("Layer[Any, Any, Any, Any]", value)


@final
class LayerFn(Generic[InReq, InRes, OutReq, OutRes]):
    """A layer made from a function ``Service -> Service``; see :func:`layer_fn`."""

    __slots__ = ("function",)

    function: Callable[[Service[InReq, InRes]], Service[OutReq, OutRes]]
    """The function that wraps an inner service."""

    def __init__(
        self, function: Callable[[Service[InReq, InRes]], Service[OutReq, OutRes]]
    ) -> None:
        self.function = function

    def layer(self, inner: Service[InReq, InRes], /) -> Service[OutReq, OutRes]:
        """Return ``function(inner)``."""
        return self.function(inner)

    def __repr__(self) -> str:
        return f"layer_fn({getattr(self.function, '__qualname__', self.function)!r})"


def layer_fn(
    function: Callable[[Service[InReq, InRes]], Service[OutReq, OutRes]], /
) -> LayerFn[InReq, InRes, OutReq, OutRes]:
    """Make a layer from a function that wraps a service.

    A custom layer in a few lines:

        >>> import layers
        >>> def add_header(inner):
        ...     async def call(request: dict) -> dict:
        ...         return await inner({**request, "x-trace": "on"})
        ...
        ...     return call
        >>> async def echo(request: dict) -> dict:
        ...     return request
        >>> svc = (
        ...     layers.ServiceBuilder().layer(layers.layer_fn(add_header)).service(echo)
        ... )
        >>> import anyio
        >>> anyio.run(svc, {"path": "/"})
        {'path': '/', 'x-trace': 'on'}

    Args:
        function: Called with the inner service each time the layer is
            applied; returns the wrapping service.

    Returns:
        A :class:`LayerFn`.
    """
    check_callable("layer_fn", "function", function)
    return LayerFn(function)


@final
class _ThreadService(Generic[Req, Res]):
    __slots__ = ("__wrapped__", "_abandon_on_cancel", "_function", "_limiter")

    def __init__(
        self,
        function: Callable[[Req], Res],
        abandon_on_cancel: bool,
        limiter: anyio.CapacityLimiter | None,
    ) -> None:
        self._function = function
        self._abandon_on_cancel = abandon_on_cancel
        self._limiter = limiter
        self.__wrapped__ = function

    async def __call__(self, request: Req, /) -> Res:
        if self._abandon_on_cancel:
            return await anyio.to_thread.run_sync(
                self._call, request, abandon_on_cancel=True, limiter=self._limiter
            )
        # Wait for the thread whatever cancels us. anyio's shield holds off
        # anyio's own cancellation but not a bare Task.cancel() (asyncio's
        # timeouts, ours included), so the thread runs in a child task, which
        # a task group always waits for.
        outcome: list[Any] = []
        async with anyio.create_task_group() as group:
            group.start_soon(self._run_to_end, request, outcome)
        # Cancelled while the thread ran (trio's task group does not re-raise
        # it): the outcome is discarded, as documented.
        await anyio.lowlevel.checkpoint_if_cancelled()
        value, error = outcome
        if error is not None:
            try:
                raise error
            finally:
                del error, outcome
        return cast(Res, value)

    async def _run_to_end(self, request: Req, outcome: list[Any]) -> None:
        try:
            value = await anyio.to_thread.run_sync(
                self._call, request, limiter=self._limiter
            )
        except Exception as error:  # re-raised unchanged by __call__
            outcome += (None, error)
        else:
            outcome += (value, None)

    def _call(self, request: Req) -> Res:
        response = self._function(request)
        if inspect.isawaitable(response):
            refuse_awaitable(
                response,
                f"service_fn({self._function!r}) ran a sync callable in a worker "
                "thread and it returned an awaitable; make it an async def (an "
                "async callable is a service as it is)",
                layer="service_fn",
                parameter="function",
            )
        return response

    def __repr__(self) -> str:
        return f"service_fn({self._function!r}, thread)"


def refuse_awaitable(
    value: object,
    message: str,
    *,
    layer: str | None = None,
    parameter: str | None = None,
) -> NoReturn:
    """Close *value* if it is a coroutine (no "never awaited" warning), then raise.

    For a sync callable that returned an awaitable where a plain value was
    due: a :class:`~layers.CallbackError` with *message*, *layer* and
    *parameter*.
    """
    if inspect.iscoroutine(value):
        value.close()
    raise CallbackError(message, layer=layer, parameter=parameter)


def is_async_callable(function: object) -> bool:
    """Whether calling *function* returns an awaitable by its definition."""
    while isinstance(function, functools.partial):
        function = function.func
    if inspect.iscoroutinefunction(function):
        return True
    if inspect.isroutine(function):
        return False
    return inspect.iscoroutinefunction(type(function).__call__)


@overload
def service_fn(
    function: Callable[[Req], Awaitable[Res]],
    /,
    *,
    abandon_on_cancel: bool = ...,
    limiter: anyio.CapacityLimiter | None = ...,
) -> Service[Req, Res]: ...
@overload
def service_fn(
    function: Callable[[Req], Res],
    /,
    *,
    abandon_on_cancel: bool = ...,
    limiter: anyio.CapacityLimiter | None = ...,
) -> Service[Req, Res]: ...
def service_fn(
    function: Callable[[Req], Any],
    /,
    *,
    abandon_on_cancel: bool = False,
    limiter: anyio.CapacityLimiter | None = None,
) -> Service[Req, Any]:
    """Adapt a callable that is not already a service.

    An async callable (an ``async def`` function, an object with an
    ``async def __call__``, a :func:`functools.partial` of either) already is
    a service: ``service_fn`` returns it unchanged, at no cost per call.

    Any other callable is treated as **synchronous** and runs in a worker
    thread (:func:`anyio.to_thread.run_sync`), so a blocking call does not
    block the event loop. Threads cannot be cancelled, which matters under a
    :class:`~layers.Timeout` (or any cancellation):

    * ``abandon_on_cancel=False`` (the default): the cancelled call waits for
      the thread to return, then raises (``Elapsed`` under a timeout). Nothing
      keeps running after the call has ended, but the caller's wait is only
      bounded by the thread.
    * ``abandon_on_cancel=True``: the cancelled call raises at once; the
      thread runs on in the background and its result is thrown away. The
      caller's wait is bounded, but the work is not stopped.

    Args:
        function: The callable to adapt, taking the request.
        abandon_on_cancel: For a sync callable, whether cancellation leaves the
            worker thread behind (see above).
        limiter: For a sync callable, the :class:`anyio.CapacityLimiter` that
            bounds the worker threads (anyio's default limiter allows 40).

    Returns:
        A service calling *function*.

    Raises:
        layers.ConfigurationError: If *function* is not callable.

    A sync callable that returns an awaitable (``lambda r: client.get(r)``)
    is a mistake here: the call raises :class:`~layers.CallbackError` instead of
    awaiting a coroutine made in a worker thread. Write an ``async def``.
    """
    check_callable("service_fn", "function", function)
    if is_async_callable(function):
        return cast(Service[Req, Any], function)
    return _ThreadService(function, abandon_on_cancel, limiter)


if TYPE_CHECKING:
    # The protocols must accept plain async functions.
    async def _check(request: int) -> str: ...

    _s: Service[int, str] = _check
