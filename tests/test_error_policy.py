"""The one error policy: public homes, pickling, wrong types, bad values, callbacks.

See docs/explanation/errors.md: a bad configuration argument raises
ConfigurationError (a ValueError and a TypeError) at construction; a user's
function that returns what a layer cannot use raises CallbackError during the
call, naming the layer and the parameter, chained from the error at hand; a
function that raises is not wrapped; every Rejected says why in ``reason``.
"""

from __future__ import annotations

import importlib
import pickle
import traceback
import typing
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest

import layers
from layers import (
    CallbackError,
    CircuitBreaker,
    ConcurrencyLimit,
    ConfigurationError,
    Drain,
    Filter,
    RateLimit,
    Retry,
    ServiceBuilder,
    Timeout,
    service_fn,
)
from layers.asgi import header_key
from layers.httpx import RetryableResponse
from layers.testing import MockService, capture_events, virtual_time_backend

PUBLIC_MODULES = ["layers", "layers.asgi", "layers.health", "layers.httpx"]
PUBLIC_MODULES += ["layers.testing", "layers.otel", "layers.events"]


def public_classes() -> list[tuple[str, str, type]]:
    """(module, name, class) for every class in a public module's ``__all__``.

    Event classes are left out: ``layers.events`` is their home, which the
    events namespace gives them.
    """
    found: list[tuple[str, str, type]] = []
    for module_name in PUBLIC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:  # pragma: no cover - otel is an extra
            continue
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) and not issubclass(value, layers.Event):
                found.append((module_name, name, value))
    return found


PUBLIC_CLASSES = public_classes()
PUBLIC_EXCEPTIONS = sorted(
    {cls for _, _, cls in PUBLIC_CLASSES if issubclass(cls, BaseException)},
    key=lambda cls: cls.__qualname__,
)


def is_public(module: str) -> bool:
    """Whether no part of the dotted name *module* is private."""
    return not any(part.startswith("_") for part in module.split("."))


# -- public homes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name", "cls"),
    PUBLIC_CLASSES,
    ids=[f"{module}.{name}" for module, name, _ in PUBLIC_CLASSES],
)
def test_every_public_class_has_a_public_home(
    module: str, name: str, cls: type
) -> None:
    """A public class's __module__ is public, and that module has the class."""
    assert is_public(cls.__module__), f"{module}.{name} is {cls.__module__}"
    home = importlib.import_module(cls.__module__)
    assert getattr(home, cls.__qualname__) is cls


def test_the_tests_see_the_classes_that_matter() -> None:
    """The walk finds exceptions, layers, statistics, enums and protocols."""
    names = {f"{module}.{name}" for module, name, _ in PUBLIC_CLASSES}
    assert {
        "layers.RateLimited",
        "layers.CircuitBreaker",
        "layers.CircuitState",
        "layers.RateLimitStatistics",
        "layers.Service",
        "layers.ServiceBuilder",
        "layers.KeyTableFull",
        "layers.health.HealthStatus",
        "layers.testing.MockService",
    } <= names


def test_reprs_and_tracebacks_show_public_names() -> None:
    """The class's repr and a formatted traceback say layers.RateLimited."""
    assert repr(layers.RateLimited) == "<class 'layers.RateLimited'>"
    assert repr(layers.CircuitState) == "<enum 'CircuitState'>"
    assert layers.CircuitState.__module__ == "layers"
    try:
        raise layers.RateLimited("busy", reason="limited")
    except layers.RateLimited as error:
        text = "".join(traceback.format_exception(error))
    assert "layers.RateLimited: busy" in text
    assert "_errors" not in text


def test_type_name_is_module_and_qualname() -> None:
    """type_name gives the public name: layers.Elapsed, as before."""
    from layers._errors import type_name

    assert type_name(layers.Elapsed()) == "layers.Elapsed"
    assert type_name(layers.KeyTableFull()) == "layers.KeyTableFull"
    assert type_name(ValueError()) == "ValueError"


# -- pickling ------------------------------------------------------------------------


def example(cls: type[BaseException]) -> BaseException:
    """An instance of the public exception *cls*, with every attribute set."""
    if issubclass(cls, layers.Rejected):
        return cls("no", retry_after=1.5, layer="limit", reason="max_wait")
    if cls is layers.Elapsed:
        return layers.Elapsed(timeout=2.0, layer="api")
    if cls is CallbackError:
        return CallbackError("bad key", layer="limit", parameter="key")
    if cls is RetryableResponse:
        request = httpx.Request("GET", "https://user:secret@api.test/x?token=t")
        response = httpx.Response(503, headers={"retry-after": "7"}, request=request)
        return RetryableResponse(response, request)
    return cls("bad value")


def attributes(error: BaseException) -> dict[str, Any]:
    """What a copy must keep: type, message and public attributes."""
    kept = {"type": type(error), "str": str(error), "repr": repr(error)}
    for name in ("retry_after", "layer", "reason", "timeout", "parameter"):
        if hasattr(error, name):
            kept[name] = getattr(error, name)
    if isinstance(error, RetryableResponse):
        kept["status"] = error.status_code
    return kept


@pytest.mark.parametrize("cls", PUBLIC_EXCEPTIONS, ids=lambda cls: cls.__qualname__)
def test_every_public_exception_pickles(cls: type[BaseException]) -> None:
    """Each public exception survives pickling with its type and attributes."""
    error = example(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert attributes(copy) == attributes(error)


def test_the_exceptions_pickled_are_all_of_them() -> None:
    """Every exception of the tree, and the httpx ones, are among those pickled."""
    names = {cls.__qualname__ for cls in PUBLIC_EXCEPTIONS}
    assert set(layers._errors.__all__) <= names
    assert {"KeyTableFull", "RetryableResponse"} <= names


# -- bad configuration: ConfigurationError, a ValueError and a TypeError -------------


async def echo(request: Any) -> Any:
    """A service that answers with its request."""
    return request


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that is never called."""


# Untyped handles on the API, to pass what its annotations refuse.
L: Any = layers
ASGI: Any = layers.asgi
HTTPX: Any = layers.httpx
TESTING: Any = layers.testing

WRONG_TYPES = [
    pytest.param(lambda: L.Timeout("1"), "Timeout(seconds='1')", id="timeout-str"),
    pytest.param(
        lambda: L.Retry(on=Boom, max_attempts="3"), "max_attempts", id="retry"
    ),
    pytest.param(lambda: L.RateLimit("10"), "rate", id="rate-limit"),
    pytest.param(lambda: L.ConcurrencyLimit("x"), "max_in_flight", id="concurrency"),
    pytest.param(
        lambda: L.CircuitBreaker(failure_rate_threshold="x"),
        "failure_rate_threshold",
        id="breaker",
    ),
    pytest.param(lambda: L.ServiceBuilder().layer(42), "layer", id="builder-layer"),
    pytest.param(lambda: L.ServiceBuilder().service(42), "inner", id="builder-service"),
    pytest.param(
        lambda: L.ServiceBuilder().service(lambda r: r), "inner", id="builder-sync"
    ),
    pytest.param(lambda: ASGI.header_key(3), "header_key(name=3)", id="header-key"),
    pytest.param(
        lambda: ASGI.LayersMiddleware(1, L.ServiceBuilder()), "app", id="asgi-app"
    ),
    pytest.param(lambda: ASGI.LayersMiddleware(asgi_app, 1), "stack", id="asgi-stack"),
    pytest.param(lambda: L.add_sink(1), "add_sink(sink=1)", id="add-sink"),
    pytest.param(lambda: L.PerKey(1, key=hash), "PerKey(factory=1)", id="per-key"),
    pytest.param(
        lambda: L.PerKey(lambda key: L.Identity(), key=hash, name=1),
        "name",
        id="per-key-name",
    ),
    pytest.param(
        lambda: HTTPX.LayeredTransport(L.ServiceBuilder(), 1),
        "transport",
        id="transport",
    ),
    pytest.param(lambda: L.MapErr(1), "MapErr", id="map-err"),
    pytest.param(lambda: L.Filter(1), "predicate", id="filter"),
    pytest.param(lambda: L.service_fn(1), "service_fn", id="service-fn"),
    pytest.param(
        lambda: TESTING.MockService().respond(1, delay="1"), "delay", id="mock-delay"
    ),
]

BAD_VALUES = [
    pytest.param(lambda: Timeout(-1), "Timeout(seconds=-1)", id="timeout-negative"),
    pytest.param(lambda: Timeout(float("nan")), "seconds", id="timeout-nan"),
    pytest.param(lambda: RateLimit(0), "rate", id="rate-zero"),
    pytest.param(lambda: header_key(""), "name", id="header-key-empty"),
    pytest.param(
        lambda: MockService().respond(1, delay=-1), "delay=-1", id="mock-delay-negative"
    ),
    pytest.param(
        lambda: virtual_time_backend("curio"), "backend='curio'", id="backend"
    ),
]


@pytest.mark.parametrize(("make", "named"), WRONG_TYPES + BAD_VALUES)
def test_a_bad_argument_is_a_configuration_error(
    make: Callable[[], object], named: str
) -> None:
    """Wrong type or bad value: ConfigurationError naming the parameter, at once."""
    with pytest.raises(ConfigurationError) as info:
        make()
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, ValueError)
    assert named in str(info.value)


def test_configuration_error_is_caught_as_either_builtin() -> None:
    """Code written for the stdlib's convention catches both kinds."""
    with pytest.raises(TypeError):
        Timeout("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # noqa: PT011
        ServiceBuilder().layer(42)  # type: ignore[arg-type]


# -- misbehaving callbacks: CallbackError during the call ----------------------------


class Boom(Exception):
    """The service's own failure."""


async def boom(request: Any) -> Any:
    """A service that always fails with Boom."""
    raise Boom(request)


async def fetch(request: Any) -> Any:
    """An async function, for sync callables that wrongly return its coroutine."""
    return request


def returns_coroutine(value: Any) -> Any:
    """A sync function that returns a coroutine (a bug)."""
    return fetch(value)


CALLBACKS = [
    # make the service, layer, parameter, type of __cause__
    pytest.param(
        lambda: RateLimit(10, key=lambda r: [r], name="rl").layer(echo),
        "rl",
        "key",
        None,
        id="rate-key",
    ),
    pytest.param(
        lambda: L.RateLimit(10, cost=lambda r: "3", name="rl").layer(echo),
        "rl",
        "cost",
        None,
        id="rate-cost",
    ),
    pytest.param(
        lambda: RateLimit(10, cost=lambda r: -1, name="rl").layer(echo),
        "rl",
        "cost",
        None,
        id="rate-cost-negative",
    ),
    pytest.param(
        lambda: L.Retry(
            on=Boom, max_attempts=2, retry_after=lambda e: "1", name="rt"
        ).layer(boom),
        "rt",
        "retry_after",
        Boom,
        id="retry-hint",
    ),
    pytest.param(
        lambda: Retry(on=Boom, max_attempts=2, backoff=lambda n: -1.0, name="rt").layer(
            boom
        ),
        "rt",
        "backoff",
        Boom,
        id="retry-backoff",
    ),
    pytest.param(
        lambda: L.MapErr(lambda e: "text").layer(boom),
        None,
        "map_err",
        Boom,
        id="map-err",
    ),
    pytest.param(
        lambda: Filter(returns_coroutine, name="f").layer(echo),
        "f",
        "predicate",
        None,
        id="filter",
    ),
    pytest.param(
        lambda: service_fn(returns_coroutine),
        "service_fn",
        "function",
        None,
        id="service-fn",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("make", "layer", "parameter", "cause"),
    CALLBACKS,
)
async def test_a_misbehaving_callback_raises_callback_error(
    make: Callable[[], Callable[[Any], Awaitable[Any]]],
    layer: str | None,
    parameter: str,
    cause: type[BaseException] | None,
) -> None:
    """CallbackError names the layer and the parameter, chained from the failure."""
    svc = make()
    with pytest.raises(CallbackError) as info:
        await svc(1)
    error = info.value
    assert (error.layer, error.parameter) == (layer, parameter)
    assert parameter in str(error)
    if layer is not None and layer != "service_fn":
        assert repr(layer) in str(error)
    if cause is not None:
        assert isinstance(error.__cause__, cause)
    assert isinstance(error, layers.LayersError)
    assert not isinstance(error, ConfigurationError | layers.Rejected)


@pytest.mark.anyio
async def test_an_unhashable_key_names_its_type_not_its_value() -> None:
    """The key's value is not in the message (it may hold a payload), its type is."""
    svc = RateLimit(10, key=lambda r: {"secret": r}, name="rl").layer(echo)
    with pytest.raises(CallbackError) as info:
        await svc("tenant-secret")
    assert "dict" in str(info.value)
    assert "tenant-secret" not in str(info.value)


class Refused(Exception):
    """A user's own refusal, raised on purpose by a callback."""


def refuse(value: Any) -> Any:
    """A callback that raises (which is not misbehaving)."""
    raise Refused(value)


RAISING: list[tuple[str, Callable[[], Callable[[Any], Awaitable[Any]]]]] = [
    ("rate-key", lambda: RateLimit(10, key=refuse).layer(echo)),
    ("rate-cost", lambda: RateLimit(10, cost=refuse).layer(echo)),
    (
        "retry-hint",
        lambda: Retry(on=Boom, max_attempts=2, retry_after=refuse).layer(boom),
    ),
    ("retry-on", lambda: Retry(on=refuse, max_attempts=2).layer(boom)),
    ("filter", lambda: Filter(refuse).layer(echo)),
    ("map-request", lambda: ServiceBuilder().map_request(refuse).service(echo)),
    ("breaker-failure-on", lambda: CircuitBreaker(on=refuse).layer(boom)),
    (
        "breaker-failure-response",
        lambda: CircuitBreaker(on_result=refuse).layer(echo),
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "make", [make for _, make in RAISING], ids=[case for case, _ in RAISING]
)
async def test_a_callback_that_raises_is_not_wrapped(
    make: Callable[[], Callable[[Any], Awaitable[Any]]],
) -> None:
    """A callback's own exception propagates unchanged, as a service's does."""
    svc = make()
    with pytest.raises(Refused):
        await svc(1)


# -- Rejected.reason -----------------------------------------------------------------


def test_reason_is_in_the_repr_and_defaults_to_empty() -> None:
    """The repr shows reason, retry_after and layer; a bare Rejected has reason ''."""
    error = layers.RateLimited("busy", retry_after=0.5, layer="api", reason="limited")
    assert repr(error) == (
        "RateLimited('busy', reason='limited', retry_after=0.5, layer='api')"
    )
    assert layers.Rejected().reason == ""
    assert repr(layers.Overloaded("full")) == "Overloaded('full')"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"mode": "reject"}, "limited"),
        ({"max_wait": 0.5}, "max_wait"),
    ],
)
async def test_rate_limited_reason_is_the_events(
    options: dict[str, Any], reason: str
) -> None:
    """RateLimited.reason is the reason its RateLimitRejected event carries."""
    svc = RateLimit(1, **options).layer(echo)
    await svc(1)
    with (
        capture_events(layers.events.RateLimitRejected) as events,
        pytest.raises(layers.RateLimited) as info,
    ):
        await svc(2)
    assert info.value.reason == reason
    assert [event.reason for event in events] == [reason]


@pytest.mark.anyio
async def test_rate_limited_reason_deadline_and_cost() -> None:
    """A wait past the deadline says "deadline"; a cost over the burst "cost"."""
    limit = RateLimit(1)
    svc = ServiceBuilder().timeout(0.5).layer(limit).service(echo)
    await svc(1)
    with pytest.raises(layers.RateLimited) as info:
        await svc(2)
    assert info.value.reason == "deadline"
    costly = RateLimit(1, burst=2, cost=lambda r: 5).layer(echo)
    with pytest.raises(layers.RateLimited) as info:
        await costly(1)
    assert info.value.reason == "cost"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "reason"),
    [({"max_waiting": 0}, "queue_full"), ({"max_wait": 1.0}, "max_wait")],
)
async def test_overloaded_reason_is_the_events(
    options: dict[str, Any], reason: str
) -> None:
    """Overloaded.reason: "queue_full" (or load shedding) or "max_wait"."""
    mock = MockService[int, int]()
    svc = ConcurrencyLimit(1, **options).layer(mock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(svc, 1)
        await mock.next_call()
        with (
            capture_events(layers.events.ConcurrencyLimitRejected) as events,
            pytest.raises(layers.Overloaded) as info,
        ):
            await svc(2)
        tg.cancel_scope.cancel()
    assert info.value.reason == reason
    assert [event.reason for event in events] == [reason]


@pytest.mark.anyio
async def test_circuit_open_reason_is_the_breakers_state() -> None:
    """CircuitOpen.reason: "open", "half_open" (trial calls all out), "forced_open"."""
    breaker = CircuitBreaker(consecutive_failures=1, open_duration=10, probes=1)
    failing = breaker.layer(boom)
    with pytest.raises(Boom):
        await failing(1)
    with pytest.raises(layers.CircuitOpen) as info:
        await failing(2)
    assert info.value.reason == "open"
    await anyio.sleep(10)
    mock = MockService[int, int]()
    svc = breaker.layer(mock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(svc, 1)
        await mock.next_call()
        with pytest.raises(layers.CircuitOpen) as info:
            await svc(2)
        tg.cancel_scope.cancel()
    assert info.value.reason == "half_open"
    breaker.force_open()
    with pytest.raises(layers.CircuitOpen) as info:
        await svc(3)
    assert info.value.reason == "forced_open"


@pytest.mark.anyio
async def test_shutting_down_and_filtered_reasons() -> None:
    """A draining Drain says "draining"; a Filter that refuses, "filtered"."""
    drain = Drain()
    drain.start()
    with pytest.raises(layers.ShuttingDown) as info:
        await drain.layer(echo)(1)
    assert info.value.reason == "draining"
    for predicate in (lambda r: False, fetch_false):
        with pytest.raises(layers.Filtered) as refused:
            await Filter(predicate).layer(echo)(1)
        assert refused.value.reason == "filtered"


async def fetch_false(request: Any) -> bool:
    """An async predicate that refuses every request."""
    return False


@pytest.mark.parametrize(
    ("module", "name", "cls"),
    PUBLIC_CLASSES,
    ids=[f"{module}.{name}" for module, name, _ in PUBLIC_CLASSES],
)
def test_type_hints_still_resolve(module: str, name: str, cls: type) -> None:
    """get_type_hints works on every public class, though __module__ moved.

    It looks names up in the module that ``__module__`` names (hynek/svcs#52);
    the annotations were resolved where the class is defined.
    """
    typing.get_type_hints(cls)


@pytest.mark.anyio
async def test_a_probe_whose_failure_response_raises_is_not_a_success() -> None:
    """A raising on_result neither closes the breaker nor holds the slot.

    The closed state records nothing for such a call; a half-open trial call
    does the same: its slot is freed, uncounted, so a broken predicate cannot
    close the breaker.
    """
    broken = False

    def on_result(response: Any) -> bool:
        if broken:
            raise Refused(response)
        return False

    breaker = CircuitBreaker(
        consecutive_failures=1,
        open_duration=10,
        probes=1,
        on_result=on_result,
    )
    with pytest.raises(Boom):
        await breaker.layer(boom)(1)
    await anyio.sleep(10)
    broken = True
    svc = breaker.layer(echo)
    with pytest.raises(Refused):
        await svc(1)
    assert breaker.state is layers.CircuitState.HALF_OPEN
    broken = False
    assert await svc(2) == 2  # the freed slot takes the next probe
    assert breaker.state is layers.CircuitState.CLOSED
