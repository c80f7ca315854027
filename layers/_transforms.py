"""Small transforms: change the request, the response or the error, or refuse.

Each is a layer (usable anywhere a layer is) and a
:class:`~layers.ServiceBuilder` method of the same name.

``MapRequest``, ``MapResponse`` and ``MapErr`` take a plain (sync)
function. An async one is refused when the layer is made: its coroutine
would be passed on unawaited. ``AndThen`` is the async sibling of
``MapResponse``; async work on a request or an error is a layer of its own
(:func:`~layers.layer_fn`). What the function returns is passed on as it
is, unchecked: a plain function that returns a coroutine anyway
(``lambda r: fetch(r)``) passes the coroutine on (Python then warns that it
was never awaited). A check per call cost about 20 ns a layer, 15 % of five
``map_request`` layers, for a mistake that the refusal of async functions
already catches in its common form. ``MapErr`` checks what its function
returns (it runs on the error path only).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NoReturn, TypeVar, cast, final

import attrs

from ._config import Validator, callable_value, check_callable, name_value
from ._core import (
    Service,
    describe,
    is_async_callable,
    mark_built,
    refuse_awaitable,
)
from ._errors import CallbackError, ConfigurationError, Filtered

__all__ = ["AndThen", "Filter", "MapErr", "MapRequest", "MapResponse"]

Req = TypeVar("Req")
Res = TypeVar("Res")
A = TypeVar("A")
B = TypeVar("B")

# What to use instead of an async function, per transform.
_INSTEAD = {
    "map_request": (
        "for async work on the request, write a layer with layers.layer_fn "
        "(see MapRequest's documentation)"
    ),
    "map_response": (
        "for an async function of the response, use and_then "
        "(ServiceBuilder.and_then, layers.AndThen)"
    ),
    "map_err": (
        "for async work on an error, write a layer with layers.layer_fn that catches it"
    ),
}


def check_plain_function(owner: str, transform: str, function: object) -> None:
    """Refuse a non-callable or an async callable where a plain function is due.

    *transform* is the builder method's name (``"map_request"``...): it
    chooses what the message offers instead.
    """
    check_callable(owner, "function", function)
    if is_async_callable(function):
        raise ConfigurationError(
            f"{owner}(function={describe(function)}): function must be a plain "
            "(sync) function, got an async callable, whose coroutine would be "
            f"passed on unawaited; {_INSTEAD[transform]}"
        )


def _plain_function(transform: str) -> Validator:
    """An attrs validator: :func:`check_plain_function` for *transform*."""

    def validate(
        instance: object, attribute: attrs.Attribute[Any], value: object
    ) -> None:
        check_plain_function(type(instance).__name__, transform, value)

    return validate


@final
@attrs.frozen
class MapRequest(Generic[A, B]):
    """Change the request before it reaches the inner service.

    ``MapRequest(f).layer(inner)`` calls ``inner(f(request))``. *f* is a plain
    function; an async one is refused (its coroutine would reach the inner
    service). For async work on the request, write a layer
    (:func:`~layers.layer_fn`)::

        def with_token(inner):
            async def call(request):
                return await inner({**request, "token": await fetch_token()})

            return call


        builder.layer(layers.layer_fn(with_token))

    Args:
        function: Maps the outer request to the inner one.

    Raises:
        layers.ConfigurationError: If *function* is not callable, or is
            async (an ``async def``, a partial of one, an object with an
            ``async def __call__``).
    """

    function: Callable[[A], B] = attrs.field(validator=_plain_function("map_request"))

    def layer(self, inner: Service[B, Res], /) -> Service[A, Res]:
        """Wrap *inner*."""
        function = self.function

        async def map_request(request: A, /) -> Res:
            return await inner(function(request))

        return mark_built(map_request, self, inner)


@final
@attrs.frozen
class MapResponse(Generic[A, B]):
    """Change the response on its way out.

    ``MapResponse(f).layer(inner)`` returns ``f(await inner(request))``.
    Errors pass through untouched (see :class:`MapErr` for those). *f* is a
    plain function; for an async one, use :class:`AndThen`.

    Args:
        function: Maps the inner response to the outer one.

    Raises:
        layers.ConfigurationError: If *function* is not callable, or is
            async (use :class:`AndThen`).
    """

    function: Callable[[A], B] = attrs.field(validator=_plain_function("map_response"))

    def layer(self, inner: Service[Req, A], /) -> Service[Req, B]:
        """Wrap *inner*."""
        function = self.function

        async def map_response(request: Req, /) -> B:
            return function(await inner(request))

        return mark_built(map_response, self, inner)


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

        return mark_built(and_then, self, inner)


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

    *function* is a plain function (an async one is refused: write a layer
    with :func:`~layers.layer_fn` for async work on an error) and must
    return an :class:`Exception` instance; anything else (a string, ``None``,
    an exception class) raises :class:`~layers.CallbackError`, with the
    original error as its ``__cause__``.

    Args:
        function: Maps an exception to the exception to raise.

    Raises:
        layers.ConfigurationError: If *function* is not callable, or is async.

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

    function: Callable[[Exception], Exception] = attrs.field(
        validator=_plain_function("map_err")
    )

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
                if not isinstance(replacement, Exception):  # pyright: ignore[reportUnnecessaryIsInstance]
                    _not_an_exception(function, replacement, error)
                raise replacement from error

        return mark_built(map_err, self, inner)


def _not_an_exception(function: object, value: object, error: Exception) -> NoReturn:
    """Raise the CallbackError for a map_err function that returned *value*."""
    got = type(value).__name__
    if isinstance(value, type):
        got = f"the class {value.__name__} (return an instance)"
    elif inspect.iscoroutine(value):
        value.close()
        got = (
            "coroutine (a plain function wrapping an async one; for async work "
            "on an error, write a layer with layers.layer_fn)"
        )
    # The value's type only: the value itself may hold the payload.
    raise CallbackError(
        f"MapErr (ServiceBuilder.map_err): the function {describe(function)} must "
        f"return an Exception to raise, got {got}",
        parameter="map_err",
    ) from error


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
                    raise Filtered(
                        f"request refused by filter {name!r}",
                        layer=name,
                        reason="filtered",
                    )
                return await inner(request)

            return mark_built(async_filter, self, inner)
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
                        layer=name,
                        parameter="predicate",
                    )
                if not admitted:
                    raise Filtered(
                        f"request refused by filter {name!r}",
                        layer=name,
                        reason="filtered",
                    )
            return await inner(request)

        return mark_built(sync_filter, self, inner)
