"""The small transforms: map_request, map_response, and_then, map_err, filter."""

from __future__ import annotations

import functools
import inspect
import sys
import traceback
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import layers
from layers import (
    AndThen,
    ConfigurationError,
    Filter,
    Filtered,
    MapErr,
    MapRequest,
    MapResponse,
    ServiceBuilder,
)

pytestmark = pytest.mark.anyio


class Recorder:
    """An async service that records its requests and echoes them."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def __call__(self, request: Any) -> Any:
        self.requests.append(request)
        return request


class Boom(Exception):
    pass


class ApiError(Exception):
    pass


async def boom(request: Any) -> Any:
    """Always fail with Boom."""
    raise Boom(request)


# Each transform built two ways: as a layer object, and with the builder method.
BUILD = [
    pytest.param(lambda layer: layer.layer, id="layer"),
    pytest.param(lambda layer: ServiceBuilder().layer(layer).service, id="builder"),
]


# -- map_request / map_response / and_then ------------------------------------


async def test_map_request_changes_the_request() -> None:
    """MapRequest(f): the inner service gets f(request)."""
    inner = Recorder()
    svc = MapRequest(lambda r: r * 10).layer(inner)
    assert await svc(2) == 20
    assert inner.requests == [20]


async def test_map_request_builder_method() -> None:
    """builder.map_request(f) adds a MapRequest."""
    inner = Recorder()
    builder = ServiceBuilder().map_request(str)
    assert isinstance(builder.layers[0], MapRequest)
    assert await builder.service(inner)(5) == "5"
    assert inner.requests == ["5"]


async def test_map_response_changes_the_response() -> None:
    """MapResponse(f): callers get f(response)."""
    svc = MapResponse(lambda r: r + 1).layer(Recorder())
    assert await svc(1) == 2


async def test_map_response_builder_method() -> None:
    """builder.map_response(f) adds a MapResponse."""
    builder = ServiceBuilder().map_response(len)
    assert isinstance(builder.layers[0], MapResponse)
    assert await builder.service(Recorder())("abc") == 3


async def test_map_response_leaves_errors_alone() -> None:
    """MapResponse does not call its function when the inner service raises."""
    calls: list[Any] = []
    svc = MapResponse(calls.append).layer(boom)
    with pytest.raises(Boom):
        await svc(1)
    assert calls == []


async def test_and_then_awaits_an_async_function_on_the_response() -> None:
    """AndThen(f): callers get await f(response)."""

    async def decode(response: bytes) -> str:
        await anyio.lowlevel.checkpoint()
        return response.decode()

    assert await AndThen(decode).layer(Recorder())(b"hi") == "hi"


async def test_and_then_builder_method() -> None:
    """builder.and_then(f) adds an AndThen."""

    async def twice(response: int) -> int:
        return response * 2

    builder = ServiceBuilder().and_then(twice)
    assert isinstance(builder.layers[0], AndThen)
    assert await builder.service(Recorder())(4) == 8


# -- map_err ------------------------------------------------------------------


@pytest.mark.parametrize("build", BUILD)
async def test_map_err_raises_the_replacement_from_the_original(
    build: Callable[[Any], Any],
) -> None:
    """A replacement is raised with __cause__ the original, its traceback kept."""
    seen: list[Exception] = []

    def replace(error: Exception) -> Exception:
        seen.append(error)
        return ApiError("lookup failed")

    svc = build(MapErr(replace))(boom)
    with pytest.raises(ApiError, match="lookup failed") as info:
        await svc(7)
    original = info.value.__cause__
    assert isinstance(original, Boom)
    assert seen == [original]
    # The original's traceback still reaches the frame that raised it.
    frames = [frame.name for frame in traceback.extract_tb(original.__traceback__)]
    assert "boom" in frames


async def test_map_err_builder_method() -> None:
    """builder.map_err(f) adds a MapErr."""
    builder = ServiceBuilder().map_err(lambda e: ApiError(str(e)))
    assert isinstance(builder.layers[0], MapErr)
    with pytest.raises(ApiError):
        await builder.service(boom)(1)


async def test_map_err_returning_the_same_error_reraises_it_unchanged() -> None:
    """If f returns the error itself, that very object is raised, not chained."""
    seen: list[Exception] = []

    def keep(error: Exception) -> Exception:
        seen.append(error)
        return error

    svc = MapErr(keep).layer(boom)
    with pytest.raises(Boom) as info:
        await svc(1)
    assert seen == [info.value]
    assert info.value.__cause__ is None
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "boom" in frames


async def test_map_err_is_not_called_on_success() -> None:
    """MapErr leaves a successful response alone and does not call f."""
    calls: list[Exception] = []

    def record(error: Exception) -> Exception:
        calls.append(error)
        return error

    assert await MapErr(record).layer(Recorder())(3) == 3
    assert calls == []


async def test_map_err_never_sees_cancellation() -> None:
    """A call cancelled inside a MapErr layer is not passed to the function."""
    calls: list[BaseException] = []
    started = anyio.Event()

    def record(error: Exception) -> Exception:
        calls.append(error)
        return error

    async def slow(request: Any) -> Any:
        started.set()
        await anyio.sleep(100)
        return request

    svc = MapErr(record).layer(slow)
    async with anyio.create_task_group() as tg:
        tg.start_soon(svc, 1)
        await started.wait()
        tg.cancel_scope.cancel()
    assert calls == []


async def test_map_err_never_sees_a_timeout_cancellation() -> None:
    """A Timeout outside MapErr cancels the call; f is not called, Elapsed comes out."""
    calls: list[BaseException] = []

    def record(error: Exception) -> Exception:
        calls.append(error)
        return ApiError("mapped")

    async def slow(request: Any) -> Any:
        await anyio.sleep(100)
        return request

    svc = ServiceBuilder().timeout(1).map_err(record).service(slow)
    with pytest.raises(layers.Elapsed):
        await svc(1)
    assert calls == []


# -- filter -------------------------------------------------------------------


def is_even(request: int) -> bool:
    """Accept even requests."""
    return request % 2 == 0


async def is_even_async(request: int) -> bool:
    """Accept even requests, after a checkpoint."""
    await anyio.lowlevel.checkpoint()
    return request % 2 == 0


class AsyncPredicate:
    async def __call__(self, request: int) -> bool:
        return request % 2 == 0


PREDICATES = [
    pytest.param(is_even, id="sync"),
    pytest.param(is_even_async, id="async"),
    pytest.param(AsyncPredicate(), id="async-object"),
]


@pytest.mark.parametrize("build", BUILD)
@pytest.mark.parametrize("predicate", PREDICATES)
async def test_filter_refuses_without_calling_the_inner_service(
    predicate: Any, build: Callable[[Any], Any]
) -> None:
    """A refused request raises Filtered (a Rejected), and the inner is not called."""
    inner = Recorder()
    svc = build(Filter(predicate, name="evens"))(inner)
    with pytest.raises(Filtered) as info:
        await svc(3)
    assert isinstance(info.value, layers.Rejected)
    assert isinstance(info.value, layers.LayersError)
    assert info.value.layer == "evens"
    assert "evens" in str(info.value)
    assert inner.requests == []


@pytest.mark.parametrize("build", BUILD)
@pytest.mark.parametrize("predicate", PREDICATES)
async def test_filter_lets_accepted_requests_through(
    predicate: Any, build: Callable[[Any], Any]
) -> None:
    """An accepted request reaches the inner service and its response comes back."""
    inner = Recorder()
    svc = build(Filter(predicate))(inner)
    assert await svc(4) == 4
    assert inner.requests == [4]


@pytest.mark.parametrize("predicate", PREDICATES)
async def test_filter_builder_method(predicate: Any) -> None:
    """builder.filter(p, name=...) adds a Filter with that name."""
    inner = Recorder()
    builder = ServiceBuilder().filter(predicate, name="evens")
    assert builder.layers == (Filter(predicate, name="evens"),)
    svc = builder.service(inner)
    with pytest.raises(Filtered) as info:
        await svc(1)
    assert info.value.layer == "evens"
    assert await svc(2) == 2
    assert inner.requests == [2]


async def test_filter_default_name() -> None:
    """A Filter's default name is "filter", and Filtered carries it."""
    with pytest.raises(Filtered) as info:
        await Filter(is_even).layer(Recorder())(1)
    assert info.value.layer == "filter"


class PredicateError(Exception):
    pass


async def test_sync_predicate_error_propagates_unchanged() -> None:
    """A sync predicate's own exception propagates as it is; inner not called."""
    error = PredicateError("bad request")

    def fails(request: Any) -> bool:
        raise error

    inner = Recorder()
    with pytest.raises(PredicateError) as info:
        await Filter(fails).layer(inner)(1)
    assert info.value is error
    assert inner.requests == []


async def test_async_predicate_error_propagates_unchanged() -> None:
    """An async predicate's own exception propagates as it is; inner not called."""
    error = PredicateError("bad request")

    async def fails(request: Any) -> bool:
        raise error

    inner = Recorder()
    with pytest.raises(PredicateError) as info:
        await ServiceBuilder().filter(fails).service(inner)(1)
    assert info.value is error
    assert inner.requests == []


# -- bad configuration --------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "parameter"),
    [
        pytest.param(MapRequest, "function", id="MapRequest"),
        pytest.param(MapResponse, "function", id="MapResponse"),
        pytest.param(AndThen, "function", id="AndThen"),
        pytest.param(MapErr, "function", id="MapErr"),
        pytest.param(Filter, "predicate", id="Filter"),
        pytest.param(ServiceBuilder().map_request, "function", id="map_request"),
        pytest.param(ServiceBuilder().map_response, "function", id="map_response"),
        pytest.param(ServiceBuilder().and_then, "function", id="and_then"),
        pytest.param(ServiceBuilder().map_err, "function", id="map_err"),
        pytest.param(ServiceBuilder().filter, "predicate", id="filter"),
    ],
)
@pytest.mark.parametrize("bad", [42, None, "upper"])
def test_non_callable_is_a_configuration_error(
    make: Callable[[Any], Any], parameter: str, bad: Any
) -> None:
    """A non-callable raises ConfigurationError naming the parameter and value."""
    with pytest.raises(ConfigurationError) as info:
        make(bad)
    message = str(info.value)
    assert parameter in message
    assert repr(bad) in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: Filter(is_even, name=""), id="Filter"),
        pytest.param(lambda: ServiceBuilder().filter(is_even, name=""), id="filter"),
    ],
)
def test_empty_filter_name_is_a_configuration_error(make: Callable[[], Any]) -> None:
    """An empty name raises ConfigurationError naming `name`."""
    with pytest.raises(ConfigurationError, match="name"):
        make()


async def test_filter_sync_predicate_returning_awaitable_is_refused() -> None:
    """A sync predicate that returns a coroutine is an error, not an admission."""

    async def check(request: int) -> bool:
        return False

    called = []

    async def inner(request: int) -> int:
        called.append(request)
        return request

    svc = layers.Filter(lambda r: check(r)).layer(inner)
    with pytest.raises(TypeError, match="async def"):
        await svc(1)
    assert called == []


# -- async functions where a plain one is due ---------------------------------


async def add_async(offset: int, value: int) -> int:
    """An async function of two arguments (for a partial)."""
    return offset + value


async def fetch_more(value: Any) -> Any:
    """An async function: not a mapper."""
    return value


class AsyncMapper:
    """A callable object whose __call__ is async."""

    async def __call__(self, value: Any) -> Any:
        return value

    async def method(self, value: Any) -> Any:
        return value


def marked_mapper() -> Callable[[Any], Any]:
    """A sync function marked as a coroutine function (Python 3.12+)."""

    def mapper(value: Any) -> Any:
        return fetch_more(value)

    return inspect.markcoroutinefunction(mapper)  # type: ignore[attr-defined,no-any-return,unused-ignore]


ASYNC_MAPPERS = [
    pytest.param(lambda: fetch_more, id="async-def"),
    pytest.param(lambda: functools.partial(add_async, 1), id="partial"),
    pytest.param(
        lambda: functools.partial(functools.partial(add_async), 1),
        id="partial-of-partial",
    ),
    pytest.param(AsyncMapper, id="async-__call__"),
    pytest.param(lambda: AsyncMapper().method, id="bound-async-method"),
]
if sys.version_info >= (3, 12):  # inspect.markcoroutinefunction is new in 3.12
    ASYNC_MAPPERS.append(pytest.param(marked_mapper, id="markcoroutinefunction"))

SYNC_ONLY = [
    pytest.param(MapRequest, "MapRequest", "layer_fn", id="MapRequest"),
    pytest.param(MapResponse, "MapResponse", "and_then", id="MapResponse"),
    pytest.param(MapErr, "MapErr", "layer_fn", id="MapErr"),
    pytest.param(
        ServiceBuilder().map_request,
        "ServiceBuilder.map_request",
        "layer_fn",
        id="map_request",
    ),
    pytest.param(
        ServiceBuilder().map_response,
        "ServiceBuilder.map_response",
        "and_then",
        id="map_response",
    ),
    pytest.param(
        ServiceBuilder().map_err, "ServiceBuilder.map_err", "layer_fn", id="map_err"
    ),
]


@pytest.mark.parametrize(("make", "owner", "instead"), SYNC_ONLY)
@pytest.mark.parametrize("mapper", ASYNC_MAPPERS)
def test_an_async_mapper_is_refused_when_the_layer_is_made(
    make: Callable[[Any], Any],
    owner: str,
    instead: str,
    mapper: Callable[[], Any],
) -> None:
    """An async callable given to map_request, map_response or map_err is refused."""
    with pytest.raises(ConfigurationError) as info:
        make(mapper())
    message = str(info.value)
    assert message.startswith(f"{owner}(function=")
    assert "async" in message
    assert instead in message


def test_a_class_is_a_plain_mapper() -> None:
    """A class is a plain function (calling it makes an instance)."""
    assert isinstance(MapErr(ApiError).function, type)
    assert ServiceBuilder().map_response(AsyncMapper).layers[0] == MapResponse(
        AsyncMapper
    )


async def test_a_sync_mapper_returning_a_coroutine_passes_it_on_unchecked() -> None:
    """What a plain mapper returns is passed on as it is (documented: no check)."""
    inner = Recorder()
    svc = ServiceBuilder().map_request(lambda value: fetch_more(value)).service(inner)
    await svc(1)
    [request] = inner.requests
    assert inspect.iscoroutine(request)
    request.close()  # this test's cleanup: no "never awaited" warning


async def test_a_mapper_may_return_an_awaitable() -> None:
    """An awaitable a mapper returns is a value like any other."""

    class Ticket:
        def __await__(self) -> Any:
            yield from ()

    ticket = Ticket()
    inner = Recorder()
    svc = ServiceBuilder().map_request(lambda r: ticket).service(inner)
    assert await svc(1) is ticket
    assert inner.requests == [ticket]


def as_text(error: Exception) -> Any:
    """A map_err function that returns a string instead of an exception."""
    return f"failed: {error}"


@pytest.mark.parametrize("build", BUILD)
@pytest.mark.parametrize(
    ("value", "kind"),
    [
        pytest.param("failed", "str", id="str"),
        pytest.param(None, "NoneType", id="None"),
        pytest.param(ApiError, "type", id="class"),
        pytest.param(KeyboardInterrupt(), "KeyboardInterrupt", id="BaseException"),
    ],
)
async def test_map_err_returning_a_non_exception_raises_type_error(
    build: Callable[[Any], Any], value: Any, kind: str
) -> None:
    """A non-exception from map_err: TypeError naming MapErr, the function, the type."""

    def replace(error: Exception) -> Any:
        return value

    svc = build(MapErr(replace))(boom)
    with pytest.raises(TypeError) as info:
        await svc(1)
    message = str(info.value)
    assert "MapErr" in message
    assert "map_err" in message
    assert "replace" in message
    assert kind in message
    assert isinstance(info.value.__cause__, Boom)


async def test_map_err_returning_a_coroutine_closes_it_and_raises_type_error() -> None:
    """A sync map_err function returning a coroutine: TypeError, coroutine closed."""

    async def translate(error: Exception) -> Exception:
        return ApiError(str(error))

    svc = ServiceBuilder().map_err(lambda e: translate(e)).service(boom)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="coroutine"):
        await svc(1)
