"""Small transforms: change the request, the response or the error, or refuse.

Each is a layer (usable anywhere a layer is) and a
:class:`~layers.ServiceBuilder` method of the same name.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, cast, final

import attrs

from ._config import callable_value, name_value
from ._core import Service, is_async_callable, refuse_awaitable
from ._errors import Filtered

__all__ = ["AndThen", "Filter", "MapErr", "MapRequest", "MapResponse"]

Req = TypeVar("Req")
Res = TypeVar("Res")
A = TypeVar("A")
B = TypeVar("B")


@final
@attrs.frozen
class MapRequest(Generic[A, B]):
    """Change the request before it reaches the inner service.

    ``MapRequest(f).layer(inner)`` calls ``inner(f(request))``. *f* is a plain
    function; for async work on the request, write a layer
    (:func:`~layers.layer_fn`).

    Args:
        function: Maps the outer request to the inner one.
    """

    function: Callable[[A], B] = attrs.field(validator=callable_value)

    def layer(self, inner: Service[B, Res], /) -> Service[A, Res]:
        """Wrap *inner*."""
        function = self.function

        async def map_request(request: A, /) -> Res:
            return await inner(function(request))

        return map_request


@final
@attrs.frozen
class MapResponse(Generic[A, B]):
    """Change the response on its way out.

    ``MapResponse(f).layer(inner)`` returns ``f(await inner(request))``.
    Errors pass through untouched (see :class:`MapErr` for those).

    Args:
        function: Maps the inner response to the outer one.
    """

    function: Callable[[A], B] = attrs.field(validator=callable_value)

    def layer(self, inner: Service[Req, A], /) -> Service[Req, B]:
        """Wrap *inner*."""
        function = self.function

        async def map_response(request: Req, /) -> B:
            return function(await inner(request))

        return map_response


@final
@attrs.frozen
class AndThen(Generic[A, B]):
    """Run an async function on the response on its way out.

    ``AndThen(f).layer(inner)`` returns ``await f(await inner(request))``: the
    async sibling of :class:`MapResponse` (read a body, decode, validate).

    Args:
        function: An async function from the inner response to the outer one.
    """

    function: Callable[[A], Awaitable[B]] = attrs.field(validator=callable_value)

    def layer(self, inner: Service[Req, A], /) -> Service[Req, B]:
        """Wrap *inner*."""
        function = self.function

        async def and_then(request: Req, /) -> B:
            return await function(await inner(request))

        return and_then


@final
@attrs.frozen
class MapErr:
    """Transform or replace the exceptions raised inside.

    *function* receives every :class:`Exception` raised by the inner stack
    and returns the exception to raise instead. Returning the same object
    re-raises it untouched; returning another one raises that one with the
    original as its ``__cause__`` (``raise new from original``), so the
    original traceback is kept in the report. Cancellation and other
    :class:`BaseException` that are not :class:`Exception` are never passed
    to it.

    Args:
        function: Maps an exception to the exception to raise.

    Example:
        >>> import anyio, layers
        >>> class ApiError(Exception): ...
        >>> async def flaky(request: int) -> int:
        ...     raise KeyError(request)
        >>> svc = layers.MapErr(lambda e: ApiError(f"lookup failed: {e!r}")).layer(
        ...     flaky
        ... )
        >>> anyio.run(svc, 7)
        Traceback (most recent call last):
          ...
        ApiError: lookup failed: KeyError(7)
    """

    function: Callable[[Exception], Exception] = attrs.field(validator=callable_value)

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*."""
        function = self.function

        async def map_err(request: Req, /) -> Res:
            try:
                return await inner(request)
            except Exception as error:
                replacement = function(error)
                if replacement is error:
                    raise
                raise replacement from error

        return map_err


@final
@attrs.frozen
class Filter(Generic[Req]):
    """Refuse requests that fail a predicate, without calling the inner service.

    The predicate may be a plain function or an ``async def``; which one is
    decided once, when the layer is made. A refused request raises
    :class:`~layers.Filtered`, a :class:`~layers.Rejected`, so retry and
    fallback logic can tell it from a failure of the service. The predicate
    may also raise its own exception, which propagates unchanged.

    Args:
        predicate: ``predicate(request)`` returns true to let the request in.
        name: A name for the error message and events (default ``"filter"``).
    """

    predicate: Callable[[Req], bool] | Callable[[Req], Awaitable[bool]] = attrs.field(
        validator=callable_value
    )
    name: str = attrs.field(default="filter", kw_only=True, validator=name_value)

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner*."""
        name = self.name
        if is_async_callable(self.predicate):
            check = cast(Callable[[Req], Awaitable[bool]], self.predicate)

            async def async_filter(request: Req, /) -> Res:
                if not await check(request):
                    raise Filtered(f"request refused by filter {name!r}", layer=name)
                return await inner(request)

            return async_filter
        predicate = cast(Callable[[Req], object], self.predicate)

        async def sync_filter(request: Req, /) -> Res:
            admitted = predicate(request)
            if admitted is not True:
                if inspect.isawaitable(admitted):
                    refuse_awaitable(
                        admitted,
                        f"the predicate of filter {name!r} returned an awaitable "
                        "but is not an async def; make it one (an awaitable is not "
                        "an answer: it would admit every request)",
                    )
                if not admitted:
                    raise Filtered(f"request refused by filter {name!r}", layer=name)
            return await inner(request)

        return sync_filter
