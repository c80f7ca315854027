"""The two protocols everything is built on: :class:`Service` and :class:`Layer`.

A *service* is an async callable from a request to a response. Any
``async def f(request)`` already is one; nothing needs to wrap it.

A *layer* is any object with a ``layer(inner)`` method that wraps a service in
another service adding one behaviour. Layers are configuration: ``layer()``
only constructs the wrapping service, and the same layer object can wrap any
number of services (sharing its state, if it has any).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import types
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
    "describe_stack",
    "inner_of",
    "layer_fn",
    "layers_of",
    "mark_built",
    "service_fn",
]

Req = TypeVar("Req")
Res = TypeVar("Res")
Req_contra = TypeVar("Req_contra", contravariant=True)
Res_co = TypeVar("Res_co", covariant=True)
S = TypeVar("S")

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
        """Return ``function(inner)``, marked as built by this layer.

        The service it returns gets the marks :func:`inner_of` and
        :func:`layers_of` read (``built_by``, this layer; ``inner``), unless
        it is *inner* itself, it was already built by layers (the function
        applied other layers: the walk shows those), or it takes no
        attributes.
        """
        service = self.function(inner)
        if service is not inner and not _marked_by_itself(service, inner):
            with contextlib.suppress(AttributeError, TypeError):
                mark_built(service, self, inner)
        return service

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


# -- inspecting a built stack ----------------------------------------------------
#
# A built service says how it was built with two attributes, set once when it
# is built (on a closure: the function object's own attributes), so a call
# pays nothing for them: ``built_by``, the layer object, and ``inner``, the
# service it wraps.


def mark_built(service: S, layer: Layer[Any, Any, Any, Any], inner: object) -> S:
    """Mark *service* as built by *layer* around *inner*, and return it.

    It sets ``service.built_by = layer`` and ``service.inner = inner``, the
    two attributes that :func:`inner_of`, :func:`layers_of` and
    :func:`describe_stack` read; every built-in layer marks the services it
    builds. Call it in your own layer's ``layer()`` when the service is a
    closure (a type checker refuses attributes set on a function); a service
    class can instead have the two attributes itself. A call costs nothing
    more: the marks are set once, when the service is built. A function's
    ``__qualname__`` becomes the stack's layer classes, outermost first, so
    its ``repr`` shows the stack (``<function Timeout > ConcurrencyLimit >
    echo at 0x...>``; :func:`describe_stack` gives each layer's options).

        >>> import layers
        >>> class Tag:
        ...     def layer(self, inner):
        ...         async def tag(request):
        ...             return await inner(request)
        ...
        ...         return layers.mark_built(tag, self, inner)
        >>> async def echo(request):
        ...     return request
        >>> tag = Tag()
        >>> layers.layers_of(layers.ServiceBuilder().layer(tag).service(echo)) == (tag,)
        True

    Args:
        service: The service *layer* built: a function or an object that
            takes attributes.
        layer: The layer object that built it.
        inner: The service it wraps.

    Returns:
        *service* itself.

    Raises:
        AttributeError: If *service* takes no attributes (an object with
            ``__slots__`` that lack them, a bound method, a builtin).
    """
    marked = cast(Any, service)
    marked.built_by = layer
    marked.inner = inner
    if isinstance(service, types.FunctionType):
        # A function's repr is Python's own, but it shows __qualname__:
        # naming the stack there makes the repr show it, and costs a call
        # nothing (tracebacks read the code object's name, not this one).
        found, innermost = _walk(service)
        marked.__qualname__ = " > ".join(
            [*(type(each).__name__ for each in found), describe(innermost)]
        )
    return service


def _mark(service: object, attribute: str) -> Any:
    """*service*'s own *attribute*, or None; never one a mock makes up on the fly."""
    try:
        inspect.getattr_static(service, attribute)
    except AttributeError:
        return None
    return getattr(service, attribute, None)


def _built(service: object) -> tuple[Any, Any] | None:
    """``(built_by, inner)`` of a built service, or None."""
    layer = _mark(service, "built_by")
    if layer is None:
        return None
    inner = _mark(service, "inner")
    if inner is None:
        return None
    return layer, inner


def _marked_by_itself(service: object, inner: object) -> bool:
    """Whether *service* has marks that are not a copy of *inner*'s.

    :func:`functools.wraps` copies a function's ``__dict__``, and so its marks,
    into the wrapper: those say nothing about the wrapper.
    """
    built = _built(service)
    if built is None:
        return False
    below = _built(inner)
    return below is None or built[0] is not below[0] or built[1] is not below[1]


def _walk(service: object) -> tuple[list[Any], object]:
    """The layers from *service* inwards, and the first service not built by one."""
    found: list[Any] = []
    seen: set[int] = set()
    while id(service) not in seen and (built := _built(service)) is not None:
        seen.add(id(service))
        found.append(built[0])
        service = built[1]
    return found, service


def inner_of(service: object) -> Service[Any, Any] | None:
    """The service that *service* wraps, or None if no layer built it.

    The Python spelling of tower's ``get_ref``: a service a layer built
    carries the service it wraps (its ``inner`` attribute, see
    :func:`mark_built`). The user's own function, a mock, or a service of a
    layer that does not mark what it builds give None.

        >>> import layers
        >>> async def echo(request):
        ...     return request
        >>> svc = layers.ServiceBuilder().timeout(1).service(echo)
        >>> layers.inner_of(svc) is echo
        True
        >>> layers.inner_of(echo) is None
        True
    """
    built = _built(service)
    return None if built is None else cast("Service[Any, Any]", built[1])


def layers_of(service: object) -> tuple[Layer[Any, Any, Any, Any], ...]:
    """The layers a built service is made of, the outermost first.

    It follows each service's ``built_by`` and ``inner`` (see
    :func:`mark_built`) down to the first service that no layer built: the
    user's own, usually. The layer objects are the very ones given to the
    builder, so a stack can be searched for its breaker or limit::

        breakers = [x for x in layers.layers_of(svc) if isinstance(x, CircuitBreaker)]

    A :class:`Stack` or a builder's :meth:`~layers.ServiceBuilder.into_layer`
    inside shows as the layers it holds; :class:`Identity` builds nothing and
    does not show. A layer made with :func:`layer_fn` shows as its
    :class:`LayerFn`. The walk stops at a service that does not say how it
    was built (a user's layer that does not mark its services).

        >>> import layers
        >>> async def echo(request):
        ...     return request
        >>> svc = layers.ServiceBuilder().timeout(1).concurrency_limit(4).service(echo)
        >>> [type(layer).__name__ for layer in layers.layers_of(svc)]
        ['Timeout', 'ConcurrencyLimit']

    Returns:
        The layer objects, outermost first; empty if no layer built *service*.
    """
    return tuple(_walk(service)[0])


def describe_stack(service: object) -> str:
    """A readable picture of a built service: its layers, then the service inside.

    One line per layer (its ``repr``), the outermost first, each nested in
    the one above, and last the innermost service (a function by its name).
    The walk is that of :func:`layers_of`.

        >>> import layers
        >>> async def echo(request):
        ...     return request
        >>> svc = layers.ServiceBuilder().timeout(1).layer(layers.Drain()).service(echo)
        >>> print(layers.describe_stack(svc))
        Timeout(seconds=1, name='timeout')
        └─ Drain(retry_after=None, name='drain')
           └─ echo
    """
    found, innermost = _walk(service)
    lines = [*map(repr, found), describe(innermost)]
    return "\n".join(
        line if depth == 0 else f"{'   ' * (depth - 1)}└─ {line}"
        for depth, line in enumerate(lines)
    )


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
