"""ServiceBuilder: order, immutability, adding layers, into_layer, building, state."""

from __future__ import annotations

import inspect
import sys
import typing
from typing import Any, ForwardRef

import anyio
import pytest
from helpers import recording

import layers
from layers import Identity, Service, ServiceBuilder, Stack, layer_fn

pytestmark = pytest.mark.anyio


def handler_recording(seen: list[str]) -> Service[Any, Any]:
    """The innermost service: records that it was called and echoes."""

    async def handler(request: Any) -> Any:
        seen.append("handler")
        return request

    return handler


async def echo(request: Any) -> Any:
    """Echo the request."""
    return request


# -- order --------------------------------------------------------------------


async def test_first_layer_added_is_outermost() -> None:
    """Requests pass the layers in the order added; responses come back in reverse."""
    seen: list[str] = []
    svc = (
        ServiceBuilder()
        .layer(recording("a", seen))
        .layer(recording("b", seen))
        .layer(recording("c", seen))
        .service(handler_recording(seen))
    )
    assert await svc("x") == "x"
    assert seen == ["a in", "b in", "c in", "handler", "c out", "b out", "a out"]


async def test_empty_builder_returns_the_service_itself() -> None:
    """A builder with no layers returns the inner service unchanged."""
    assert ServiceBuilder().service(echo) is echo
    assert ServiceBuilder().layers == ()


# -- immutability -------------------------------------------------------------


def test_extending_a_builder_leaves_it_unchanged() -> None:
    """Adding a layer returns a new builder; the original's layers stay the same."""
    a = Identity()
    base = ServiceBuilder().layer(a)
    extended = base.layer(Identity()).timeout(1)
    assert base.layers == (a,)
    assert len(extended.layers) == 3
    assert extended is not base


async def test_two_branches_from_one_base_are_independent() -> None:
    """Two builders extended from one base do not see each other's layers."""
    seen: list[str] = []
    base = ServiceBuilder().layer(recording("base", seen))
    left = base.layer(recording("left", seen))
    right = base.layer(recording("right", seen))
    assert left.layers[0] is right.layers[0] is base.layers[0]
    assert left.layers[1] is not right.layers[1]

    await left.service(handler_recording(seen))("x")
    assert seen == ["base in", "left in", "handler", "left out", "base out"]
    seen.clear()
    await right.service(handler_recording(seen))("x")
    assert seen == ["base in", "right in", "handler", "right out", "base out"]


# -- .layer adds; into_layer is the builder's layer ----------------------------


def test_layer_adds_the_layer() -> None:
    """.layer(l) appends l to the builder's layers."""
    first, second = Identity(), layers.Timeout(1)
    builder = ServiceBuilder().layer(first).layer(second)
    assert builder.layers == (first, second)


async def test_layer_refuses_a_service_pointing_to_service() -> None:
    """builder.layer(service) is refused at once: .layer adds, .service builds."""
    builder = ServiceBuilder().timeout(1)
    with pytest.raises(TypeError) as info:
        builder.layer(echo)  # type: ignore[call-overload]
    message = str(info.value)
    assert message.startswith("ServiceBuilder.layer(layer=echo): layer must be a Layer")
    assert "ServiceBuilder.service(echo)" in message


async def test_into_layer_is_the_builders_layer() -> None:
    """builder.into_layer().layer(service) builds the same stack as .service."""
    seen: list[str] = []
    builder = ServiceBuilder().layer(recording("a", seen))
    svc = builder.into_layer().layer(handler_recording(seen))
    assert await svc("x") == "x"
    assert seen == ["a in", "handler", "a out"]


def test_layer_refuses_a_layer_class_pointing_to_an_instance() -> None:
    """.layer(layers.Timeout), the class, is refused: pass an instance."""
    with pytest.raises(TypeError) as info:
        ServiceBuilder().layer(layers.Timeout)  # type: ignore[call-overload]
    message = str(info.value)
    assert message.startswith("ServiceBuilder.layer(layer=Timeout)")
    assert "the class Timeout itself" in message
    assert "Timeout(...)" in message


def test_layer_refuses_a_function_pointing_to_layer_fn() -> None:
    """.layer(f) with a plain function Service -> Service points to layer_fn(f)."""

    def wrap(inner: Service[Any, Any]) -> Service[Any, Any]:
        return inner

    with pytest.raises(TypeError) as info:
        ServiceBuilder().layer(wrap)  # type: ignore[call-overload]
    assert "layers.layer_fn(" in str(info.value)
    assert "wrap)" in str(info.value)


async def test_builder_added_to_another_builder_keeps_order() -> None:
    """A builder added with .layer sits where it was added, its own order kept."""
    seen: list[str] = []
    inner_builder = (
        ServiceBuilder().layer(recording("b", seen)).layer(recording("c", seen))
    )
    svc = (
        ServiceBuilder()
        .layer(recording("a", seen))
        .layer(inner_builder)
        .layer(recording("d", seen))
        .service(handler_recording(seen))
    )
    await svc("x")
    assert seen == [
        *("a in", "b in", "c in", "d in"),
        "handler",
        *("d out", "c out", "b out", "a out"),
    ]


def test_a_builder_added_to_a_builder_adds_its_layers() -> None:
    """.layer(builder) adds the builder's layers, in order, not the builder."""
    a, b, c = Identity(), layers.Timeout(1), layers.Timeout(2)
    inner = ServiceBuilder().layer(b).layer(c)
    assert ServiceBuilder().layer(a).layer(inner).layers == (a, b, c)
    assert ServiceBuilder().option_layer(inner).layers == (b, c)


def test_into_layer_of_an_empty_builder_is_identity() -> None:
    """An empty builder's into_layer() is an Identity."""
    assert isinstance(ServiceBuilder().into_layer(), Identity)


def test_into_layer_of_one_layer_is_that_layer() -> None:
    """A builder with one layer gives that very layer."""
    only = layers.Timeout(1)
    assert ServiceBuilder().layer(only).into_layer() is only


def test_into_layer_of_several_layers_is_a_stack() -> None:
    """A builder with several layers gives a Stack of them, in order."""
    a, b = Identity(), layers.Timeout(1)
    stack = ServiceBuilder().layer(a).layer(b).into_layer()
    assert isinstance(stack, Stack)
    assert stack.layers == (a, b)


async def test_into_layer_reused_in_another_builder_keeps_order() -> None:
    """A stack from into_layer() reused inside another builder keeps its order."""
    seen: list[str] = []
    reusable = (
        ServiceBuilder()
        .layer(recording("b", seen))
        .layer(recording("c", seen))
        .into_layer()
    )
    svc = (
        ServiceBuilder()
        .layer(recording("a", seen))
        .layer(reusable)
        .layer(recording("d", seen))
        .service(handler_recording(seen))
    )
    await svc("x")
    assert seen == [
        *("a in", "b in", "c in", "d in"),
        "handler",
        *("d out", "c out", "b out", "a out"),
    ]


# -- decorator ----------------------------------------------------------------


async def test_builder_works_as_a_decorator() -> None:
    """@ServiceBuilder().timeout(1) on an async def gives the stacked service."""

    @ServiceBuilder().timeout(1)
    async def slow(request: str) -> str:
        await anyio.sleep(5)
        return request

    assert isinstance(slow, layers.TimeoutService)
    with pytest.raises(layers.Elapsed):
        await slow("x")


# -- option_layer -------------------------------------------------------------


def test_option_layer_none_adds_nothing() -> None:
    """option_layer(None) adds no layer."""
    base = ServiceBuilder().timeout(1)
    assert base.option_layer(None).layers == base.layers


def test_option_layer_adds_a_layer() -> None:
    """option_layer(layer) adds it, like .layer."""
    timeout = layers.Timeout(1)
    assert ServiceBuilder().option_layer(timeout).layers == (timeout,)


@pytest.mark.parametrize("bad", [42, "timeout", echo, layers.Timeout])
def test_option_layer_rejects_a_non_layer(bad: Any) -> None:
    """option_layer with something that is not a layer raises TypeError."""
    with pytest.raises(TypeError, match="layer"):
        ServiceBuilder().option_layer(bad)


# -- .service -----------------------------------------------------------------


def test_service_refuses_a_sync_function() -> None:
    """.service(sync function) raises TypeError pointing to service_fn."""

    def sync(request: int) -> int:
        return request

    with pytest.raises(TypeError, match="service_fn"):
        ServiceBuilder().timeout(1).service(sync)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [42, None, "svc"])
def test_service_refuses_a_non_callable(bad: Any) -> None:
    """.service(non-callable) raises TypeError."""
    with pytest.raises(TypeError, match="inner"):
        ServiceBuilder().service(bad)


def test_layer_with_a_non_callable_non_layer_raises_type_error() -> None:
    """.layer(42): TypeError from .layer itself, naming its parameter and the type."""
    with pytest.raises(TypeError) as info:
        ServiceBuilder().layer(42)  # type: ignore[call-overload]
    message = str(info.value)
    assert message.startswith("ServiceBuilder.layer(layer=42): layer must be a Layer")
    assert message.endswith("got int")
    assert "service(" not in message


# -- shared state -------------------------------------------------------------


def counting_layer() -> tuple[layers.LayerFn[Any, Any, Any, Any], list[int]]:
    """A layer whose state (a call count) lives in the layer object's closure."""
    count = [0]

    def wrap(inner: Service[Any, Any]) -> Service[Any, Any]:
        async def call(request: Any) -> Any:
            count[0] += 1
            return await inner(request)

        return call

    return layer_fn(wrap), count


async def test_one_layer_object_on_two_services_shares_state() -> None:
    """One layer object applied to two services keeps one state for both."""
    counter, count = counting_layer()

    async def other(request: Any) -> Any:
        return request

    first = counter.layer(echo)
    second = counter.layer(other)
    await first(1)
    await second(2)
    await second(3)
    assert count == [3]


async def test_builder_reused_for_two_services_shares_layer_objects() -> None:
    """A builder reused for two services shares its layer objects and their state."""
    counter, count = counting_layer()
    builder = ServiceBuilder().layer(counter).timeout(5)
    assert builder.layers[0] is counter

    async def other(request: Any) -> Any:
        return request

    first = builder.service(echo)
    second = builder.service(other)
    await first(1)
    await second(2)
    assert count == [2]
    assert builder.layers[0] is counter


# -- timeout through the builder ----------------------------------------------


async def test_builder_timeout_raises_elapsed_at_the_deadline() -> None:
    """.timeout(1) on a slow service raises Elapsed after exactly 1 s (virtual)."""

    async def slow(request: str) -> str:
        await anyio.sleep(10)
        return request

    svc = ServiceBuilder().timeout(1).service(slow)
    start = anyio.current_time()
    with pytest.raises(layers.Elapsed) as info:
        await svc("x")
    assert anyio.current_time() - start == pytest.approx(1, abs=0.02)
    assert info.value.timeout == 1
    assert info.value.layer == "timeout"


async def test_builder_timeout_passes_a_fast_response() -> None:
    """.timeout(1) returns a response that arrives in time."""

    async def quick(request: str) -> str:
        await anyio.sleep(0.5)
        return request

    assert await ServiceBuilder().timeout(1).service(quick)("x") == "x"


# -- one builder pattern: each method makes a new layer from the layer's options


# Every builder method named after a layer: the layer it makes, and whether
# its parameters' annotations are the layer's word for word (the transforms'
# layers are generic, their builder methods spell the types their own way).
LAYER_METHODS: dict[str, tuple[type, bool]] = {
    "timeout": (layers.Timeout, True),
    "rate_limit": (layers.RateLimit, True),
    "concurrency_limit": (layers.ConcurrencyLimit, True),
    "load_shed": (layers.ConcurrencyLimit, True),
    "circuit_breaker": (layers.CircuitBreaker, True),
    "retry": (layers.Retry, True),
    "map_request": (layers.MapRequest, False),
    "map_response": (layers.MapResponse, False),
    "and_then": (layers.AndThen, False),
    "map_err": (layers.MapErr, False),
    "filter": (layers.Filter, False),
    "fallback": (layers.Fallback, False),
    "coalesce": (layers.Coalesce, True),
    "hedge": (layers.Hedge, True),
    "adaptive_concurrency_limit": (layers.AdaptiveConcurrencyLimit, False),
    "inject_error": (layers.InjectError, True),
    "inject_latency": (layers.InjectLatency, True),
    "inject_result": (layers.InjectResult, False),
    "adaptive_throttle": (layers.AdaptiveThrottle, True),
}
# The builder's own methods: adding a layer, building, looking at the stack.
OWN_METHODS = {"layer", "option_layer", "service", "decorate", "into_layer", "layers"}
# Options that a builder method sets itself and does not take: load_shed is
# a ConcurrencyLimit without a queue.
SET_BY_THE_METHOD = {"load_shed": {"max_waiting", "max_wait"}}
# Defaults that a builder method chooses on purpose: load_shed's own name.
OWN_DEFAULTS = {"load_shed": {"name"}, "adaptive_concurrency_limit": {"algorithm"}}


def test_every_builder_method_is_a_layer_method_or_the_builders_own() -> None:
    """A new builder method must be listed here, so the drift test covers it."""
    public = {name for name in vars(ServiceBuilder) if not name.startswith("_")}
    assert public == set(LAYER_METHODS) | OWN_METHODS


def spelled(annotation: object) -> str:
    """An annotation as written in the source, whitespace removed."""
    if isinstance(annotation, ForwardRef):
        annotation = annotation.__forward_arg__
    assert isinstance(annotation, str), annotation  # from __future__ import annotations
    return "".join(annotation.split())


def builder_parameters(method: str) -> list[inspect.Parameter]:
    """The method's parameters, with ``**options: Unpack[SomeOptions]`` unpacked.

    An unpacked option has no default of its own: a left-out option is not
    passed, so the layer's default applies (shown here as the layer's).
    """
    signature = inspect.signature(getattr(ServiceBuilder, method))
    layer_type, _ = LAYER_METHODS[method]
    theirs = inspect.signature(layer_type).parameters
    ours: list[inspect.Parameter] = []
    for parameter in list(signature.parameters.values())[1:]:
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD:
            ours.append(parameter)
            continue
        options = typing.get_args(
            eval(parameter.annotation, vars(sys.modules["layers._builder"]))
        )[0]
        assert options.__total__ is False
        for name, annotation in options.__annotations__.items():
            ours.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=theirs[name].default if name in theirs else None,
                    annotation=annotation,
                )
            )
    return ours


@pytest.mark.parametrize("method", sorted(LAYER_METHODS))
def test_builder_methods_take_the_layers_options_and_defaults(method: str) -> None:
    """A builder method has its layer's options: names, kinds, defaults, types."""
    layer_type, same_annotations = LAYER_METHODS[method]
    theirs = {
        name: parameter
        for name, parameter in inspect.signature(layer_type).parameters.items()
        if name not in SET_BY_THE_METHOD.get(method, set())
    }
    ours = builder_parameters(method)
    assert [parameter.name for parameter in ours] == list(theirs)
    for parameter in ours:
        layer_parameter = theirs[parameter.name]
        assert parameter.kind == layer_parameter.kind, parameter.name
        if parameter.name not in OWN_DEFAULTS.get(method, set()):
            assert parameter.default == layer_parameter.default, parameter.name
        if same_annotations:
            assert spelled(parameter.annotation) == spelled(
                layer_parameter.annotation
            ), parameter.name


def test_builder_retry_has_no_sentinel_and_makes_a_budget_per_call() -> None:
    """.retry() with no budget option gets the layer's default: a new RetryBudget."""
    builder = ServiceBuilder().retry(on=OSError, max_attempts=2)
    (retry,) = builder.layers
    assert isinstance(retry, layers.Retry)
    assert isinstance(retry.budget, layers.RetryBudget)
    assert isinstance(retry.backoff, layers.ExponentialBackoff)
    (again,) = ServiceBuilder().retry(on=OSError, max_attempts=2).layers
    assert isinstance(again, layers.Retry)
    assert again.budget is not retry.budget
    (none,) = ServiceBuilder().retry(on=OSError, max_attempts=2, budget=None).layers
    assert isinstance(none, layers.Retry)
    assert none.budget is None
    with pytest.raises(layers.ConfigurationError, match="budget"):
        ServiceBuilder().retry(on=OSError, max_attempts=2, budget="new")  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    ("add", "layer_type"),
    [
        (lambda b: b.timeout(1), layers.Timeout),
        (lambda b: b.rate_limit(1), layers.RateLimit),
        (lambda b: b.concurrency_limit(1), layers.ConcurrencyLimit),
        (lambda b: b.load_shed(1), layers.ConcurrencyLimit),
        (lambda b: b.circuit_breaker(), layers.CircuitBreaker),
        (lambda b: b.retry(on=OSError, max_attempts=2), layers.Retry),
    ],
    ids=["timeout", "rate_limit", "concurrency_limit", "load_shed", "breaker", "retry"],
)
def test_each_call_of_a_builder_method_makes_a_new_layer(
    add: Any, layer_type: type
) -> None:
    """Two calls of one builder method make two layer objects of the layer's type."""
    (first,) = add(ServiceBuilder()).layers
    (second,) = add(ServiceBuilder()).layers
    assert type(first) is type(second) is layer_type
    assert first is not second


@pytest.mark.parametrize(
    ("add", "shared"),
    [
        (lambda b, obj: b.circuit_breaker(obj), layers.CircuitBreaker()),
        (
            lambda b, obj: b.retry(OSError, obj),
            layers.Retry(on=OSError, max_attempts=2),
        ),
    ],
    ids=["circuit_breaker", "retry"],
)
def test_a_layer_object_is_shared_through_layer_not_a_builder_method(
    add: Any, shared: Any
) -> None:
    """A builder method refuses a layer object; .layer(obj) adds that very object."""
    with pytest.raises(TypeError, match="positional"):
        add(ServiceBuilder(), shared)
    assert ServiceBuilder().layer(shared).layers == (shared,)
