"""Inspectable stacks: walking a built service, outer layer first, to the user's one.

Every service a built-in layer builds carries ``built_by`` (the layer object)
and ``inner`` (the service it wraps), set when it is built: nothing per call.
"""

from __future__ import annotations

import gc
import tracemalloc
import types
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import layers
from layers import (
    AndThen,
    CircuitBreaker,
    ConcurrencyLimit,
    Drain,
    Filter,
    Identity,
    MapErr,
    MapRequest,
    MapResponse,
    RateLimit,
    Retry,
    ServiceBuilder,
    Stack,
    Timeout,
    describe_stack,
    inner_of,
    layer_fn,
    layers_of,
    mark_built,
    service_fn,
)

pytestmark = pytest.mark.anyio


async def echo(request: Any) -> Any:
    """The user's service: answers at once."""
    return request


def same(value: Any) -> Any:
    """A plain identity function for the transforms."""
    return value


async def same_async(value: Any) -> Any:
    """An async identity function for AndThen."""
    return value


async def admit(request: Any) -> bool:
    """An async predicate that lets everything in."""
    return True


def passing(inner: layers.Service[Any, Any]) -> layers.Service[Any, Any]:
    """A layer_fn function: a new closure around *inner*."""

    async def call(request: Any) -> Any:
        return await inner(request)

    return call


# One factory per way a built-in layer builds its service (each closure).
BUILT_INS: dict[str, Callable[[], layers.Layer[Any, Any, Any, Any]]] = {
    "Timeout": lambda: Timeout(10),
    "Retry, budget": lambda: Retry(on=ValueError, max_attempts=3),
    "Retry, no budget": lambda: Retry(on=ValueError, max_attempts=3, budget=None),
    "Retry, general": lambda: Retry(on=ValueError, max_attempts=3, max_time=5),
    "RateLimit": lambda: RateLimit(1000),
    "RateLimit, key": lambda: RateLimit(1000, key=lambda request: 0),
    "ConcurrencyLimit": lambda: ConcurrencyLimit(10),
    "CircuitBreaker, count": lambda: CircuitBreaker(),
    "CircuitBreaker, count, checked": lambda: CircuitBreaker(
        on_result=lambda response: False
    ),
    "CircuitBreaker, time": lambda: CircuitBreaker(window_type="time"),
    "CircuitBreaker, time, checked": lambda: CircuitBreaker(
        window_type="time", on_result=lambda response: False
    ),
    "CircuitBreaker, slow count": lambda: CircuitBreaker(slow_call_duration=1),
    "CircuitBreaker, slow count, checked": lambda: CircuitBreaker(
        slow_call_duration=1, on_result=lambda response: False
    ),
    "CircuitBreaker, slow time": lambda: CircuitBreaker(
        window_type="time", slow_call_duration=1
    ),
    "CircuitBreaker, slow time, checked": lambda: CircuitBreaker(
        window_type="time",
        slow_call_duration=1,
        on_result=lambda response: False,
    ),
    "Drain": lambda: Drain(),
    "MapRequest": lambda: MapRequest(same),
    "MapResponse": lambda: MapResponse(same),
    "MapErr": lambda: MapErr(same),
    "AndThen": lambda: AndThen(same_async),
    "Filter, sync": lambda: Filter(lambda request: True),
    "Filter, async": lambda: Filter(admit),
    "layer_fn": lambda: layer_fn(passing),
}


def five_around(
    make: Callable[[], layers.Layer[Any, Any, Any, Any]],
) -> list[layers.Layer[Any, Any, Any, Any]]:
    """Five layers: the layer under test at the top, the middle and the bottom."""
    return [make(), Timeout(10), make(), ConcurrencyLimit(10), make()]


def innermost(service: Any) -> Any:
    """Follow inner_of() to the end."""
    while (inner := inner_of(service)) is not None:
        service = inner
    return service


@pytest.mark.parametrize("kind", list(BUILT_INS))
async def test_walking_a_built_stack_gives_its_layers_outer_first(kind: str) -> None:
    """layers_of() gives the same layers, outer first, then the user's service."""
    stack = five_around(BUILT_INS[kind])
    builder = ServiceBuilder()
    for each in stack:
        builder = builder.layer(each)
    service = builder.service(echo)
    walked = layers_of(service)
    assert len(walked) == 5
    assert all(got is want for got, want in zip(walked, stack, strict=True))
    assert innermost(service) is echo
    assert await service(7) == 7  # the stack works as built


@pytest.mark.parametrize("kind", list(BUILT_INS))
def test_each_built_service_names_its_layer_and_inner(kind: str) -> None:
    """service.built_by is the layer, service.inner the wrapped service."""
    layer = BUILT_INS[kind]()
    service: Any = layer.layer(echo)
    assert service.built_by is layer
    assert service.inner is echo
    assert inner_of(service) is echo
    assert layers_of(service) == (layer,)


def test_stacks_and_builders_flatten_into_their_layers() -> None:
    """A Stack, a builder's into_layer() and a nested builder show their own layers."""
    a, b, c, d = Timeout(1), ConcurrencyLimit(2), Drain(), MapRequest(same)
    inner_builder = ServiceBuilder().layer(b).layer(c)
    service = (
        ServiceBuilder()
        .layer(Stack(a, inner_builder.into_layer()))
        .layer(inner_builder.layer(d))
        .service(echo)
    )
    assert layers_of(service) == (a, b, c, b, c, d)
    assert [type(x) for x in layers_of(service)] == [
        Timeout,
        ConcurrencyLimit,
        Drain,
        ConcurrencyLimit,
        Drain,
        MapRequest,
    ]
    assert innermost(service) is echo


def test_identity_builds_nothing_and_does_not_show() -> None:
    """Identity returns its inner service, so the walk does not see it."""
    timeout = Timeout(1)
    service = ServiceBuilder().layer(Identity()).layer(timeout).service(echo)
    assert layers_of(service) == (timeout,)
    assert layers_of(ServiceBuilder().layer(Identity()).service(echo)) == ()
    assert layers_of(ServiceBuilder().option_layer(None).service(echo)) == ()


def test_the_walk_ends_at_a_service_fn_thread_service() -> None:
    """A service_fn of a sync function is the innermost service; __wrapped__ is it."""

    def sync_echo(request: Any) -> Any:
        return request

    timeout = Timeout(1)
    service = ServiceBuilder().layer(timeout).service(service_fn(sync_echo))
    assert layers_of(service) == (timeout,)
    last = innermost(service)
    assert last.__wrapped__ is sync_echo
    assert inner_of(last) is None
    assert service_fn(echo) is echo  # an async one is not wrapped at all


def test_a_plain_function_and_a_mock_are_not_built_services() -> None:
    """Anything without the marks (a function, a mock) has no inner and no layers."""
    from unittest.mock import AsyncMock, Mock

    for service in (echo, AsyncMock(), Mock(), object()):
        assert inner_of(service) is None
        assert layers_of(service) == ()


class Shed:
    """A user's layer, written as a class, that opts in."""

    def layer(self, inner: layers.Service[Any, Any]) -> layers.Service[Any, Any]:
        return ShedService(inner, self)


class ShedService:
    """A user's service class: two attributes opt it in."""

    __slots__ = ("built_by", "inner")

    def __init__(self, inner: layers.Service[Any, Any], layer: Shed) -> None:
        self.inner = inner
        self.built_by = layer

    async def __call__(self, request: Any) -> Any:
        return await self.inner(request)


class Tag:
    """A user's layer whose service is a closure, marked with mark_built()."""

    def layer(self, inner: layers.Service[Any, Any]) -> layers.Service[Any, Any]:
        async def tag(request: Any) -> Any:
            return await inner(request)

        return mark_built(tag, self, inner)


async def test_a_users_layer_that_opts_in_shows_up() -> None:
    """A user's layer shows up in the walk when its service carries the marks."""
    shed, tag, timeout = Shed(), Tag(), Timeout(1)
    service = ServiceBuilder().layer(shed).layer(timeout).layer(tag).service(echo)
    assert layers_of(service) == (shed, timeout, tag)
    assert innermost(service) is echo
    assert await service(3) == 3


def test_a_users_layer_that_does_not_opt_in_ends_the_walk() -> None:
    """The walk stops at the first service that does not say how it was built."""

    class Plain:
        def layer(self, inner: layers.Service[Any, Any]) -> layers.Service[Any, Any]:
            async def plain(request: Any) -> Any:
                return await inner(request)

            return plain

    timeout, drain = Timeout(1), Drain()
    service = ServiceBuilder().layer(timeout).layer(Plain()).layer(drain).service(echo)
    assert layers_of(service) == (timeout,)
    assert innermost(service).__name__ == "plain"


def test_layer_fn_leaves_a_service_built_by_layers_as_it_is() -> None:
    """A layer_fn that applies layers shows those; one returning inner adds nothing."""
    a, b = Timeout(1), Drain()
    via_stack = layer_fn(lambda inner: Stack(a, b).layer(inner))
    assert layers_of(ServiceBuilder().layer(via_stack).service(echo)) == (a, b)
    nothing = layer_fn(lambda inner: inner)
    assert layers_of(ServiceBuilder().layer(nothing).service(echo)) == ()
    assert not hasattr(echo, "built_by")


def test_layer_fn_marks_a_functools_wraps_wrapper() -> None:
    """functools.wraps copies the inner marks into a wrapper; layer_fn replaces them."""
    import functools

    def wrapping(inner: layers.Service[Any, Any]) -> layers.Service[Any, Any]:
        @functools.wraps(inner)
        async def call(request: Any) -> Any:
            return await inner(request)

        return call

    timeout, wrapper = Timeout(1), layer_fn(wrapping)
    service = ServiceBuilder().layer(wrapper).layer(timeout).service(echo)
    assert layers_of(service) == (wrapper, timeout)
    assert innermost(service) is echo


def test_a_cycle_of_marks_ends_the_walk() -> None:
    """A service whose marks lead back to itself is walked once, not forever."""

    async def loop(request: Any) -> Any:
        return request

    layer = Timeout(1)
    mark_built(loop, layer, loop)
    assert layers_of(loop) == (layer,)


def test_describe_stack_lists_the_layers_and_the_service() -> None:
    """describe_stack() gives one line per layer, outermost first, then the service."""
    timeout, limit, mapped = Timeout(1), ConcurrencyLimit(4), MapRequest(same)
    service = ServiceBuilder().layer(timeout).layer(limit).layer(mapped).service(echo)
    assert describe_stack(service) == (
        f"{timeout!r}\n└─ {limit!r}\n   └─ {mapped!r}\n      └─ echo"
    )
    assert describe_stack(Timeout(1, name="api").layer(echo)) == (
        "Timeout(seconds=1, name='api')\n└─ echo"
    )
    assert describe_stack(echo) == "echo"
    assert describe_stack(service_fn(same)) == repr(service_fn(same))


def test_the_repr_of_a_timeout_service_names_its_layer_and_inner() -> None:
    """TimeoutService, a class, shows its layer and its inner service."""
    timeout = Timeout(2, name="api")
    service = timeout.layer(echo)
    assert repr(service) == f"TimeoutService({timeout!r}, inner={echo!r})"


def test_a_closure_is_the_service_itself() -> None:
    """The marks are set on the layer's own closure: no wrapper is added per call."""
    for kind, make in BUILT_INS.items():
        if kind == "Timeout":
            continue
        service = make().layer(echo)
        assert type(service) is types.FunctionType, kind
        assert set(vars(service)) == {"built_by", "inner"}, kind


async def test_calls_allocate_nothing_that_stays() -> None:
    """Calls through a five-layer stack keep no memory: the marks cost calls nothing."""
    service = (
        ServiceBuilder()
        .layer(Timeout(10))
        .layer(Retry(on=ValueError, max_attempts=3))
        .layer(ConcurrencyLimit(10))
        .layer(CircuitBreaker())
        .layer(MapRequest(same))
        .service(echo)
    )
    for _ in range(100):  # warm up: caches, the timer wheel
        await service(1)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            await service(1)
        await anyio.lowlevel.checkpoint()
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A block kept per call would be >= 16 bytes a call, 80 kB in all; the
    # few kB allowed are the interpreter's and the event loop's own caches.
    assert kept < 10_000


def test_instrumented_shows_in_the_walk() -> None:
    """The OTel Instrumented layer's service carries the marks too."""
    otel = pytest.importorskip("layers.otel")
    instrumented = otel.Instrumented(otel.OtelMetrics(), name="api")
    timeout = Timeout(1)
    service = ServiceBuilder().layer(instrumented).layer(timeout).service(echo)
    assert layers_of(service) == (instrumented, timeout)
    assert innermost(service) is echo
    built: Any = instrumented.layer(echo)
    assert built.built_by is instrumented
    assert repr(built) == f"InstrumentedService({instrumented!r}, inner={echo!r})"


def test_the_guides_shed_shows_up() -> None:
    """examples/custom_layer.py's Shed and bearer_auth show in the walk."""
    import runpy
    from pathlib import Path

    example = runpy.run_path(
        str(Path(__file__).resolve().parent.parent / "examples" / "custom_layer.py")
    )
    shed = example["Shed"](max_in_flight=2)
    auth = example["bearer_auth"]("s3cret")
    service = ServiceBuilder().layer(shed).layer(auth).service(echo)
    assert layers_of(service) == (shed, auth)
    assert innermost(service) is echo


def test_the_repr_of_a_built_function_shows_the_stack() -> None:
    """A closure's repr names its layers, outermost first, then the service inside."""
    service = (
        ServiceBuilder()
        .concurrency_limit(4)
        .layer(MapRequest(same))
        .rate_limit(10)
        .service(echo)
    )
    assert type(service) is types.FunctionType
    assert repr(service).startswith(
        "<function ConcurrencyLimit > MapRequest > RateLimit > echo at 0x"
    )
    # Each service of the stack names what is below it, and the user's
    # function keeps its own name.
    assert inner_of(service).__qualname__ == "MapRequest > RateLimit > echo"  # type: ignore[union-attr]
    assert echo.__qualname__ == "echo"
    # A service class inside the stack (a TimeoutService) shows by its layer.
    wrapped = ServiceBuilder().concurrency_limit(1).timeout(1).service(echo)
    assert repr(wrapped).startswith("<function ConcurrencyLimit > Timeout > echo at 0x")


async def test_a_renamed_service_still_names_its_code_in_a_traceback() -> None:
    """The stack in __qualname__ does not replace the code's name in tracebacks."""

    async def fail(request: int) -> int:
        raise ValueError(request)

    service = ServiceBuilder().concurrency_limit(1).service(fail)
    with pytest.raises(ValueError, match=r"^1$") as caught:
        await service(1)
    names = [entry.name for entry in caught.traceback]
    assert "fail" in names
    assert not any(">" in name for name in names)
