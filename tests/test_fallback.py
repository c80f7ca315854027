"""Tests of Fallback: what falls back, the value or handler, events, cancellation."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import layers
from layers.testing import MockService, capture_events

pytestmark = pytest.mark.anyio


async def test_value_replaces_a_matching_error() -> None:
    """An exception that on= matches is replaced by the value; the event says which."""
    mock = MockService[str, list[str]]().fail(ConnectionError("down"))
    fallback = layers.Fallback(["cached"], on=ConnectionError, name="users")
    svc = fallback.layer(mock)
    with capture_events(layers.events.FallbackUsed) as seen:
        assert await svc("a") == ["cached"]
    assert seen == [
        layers.events.FallbackUsed(
            layer="users", reason="error", error="ConnectionError"
        )
    ]
    assert fallback.statistics() == layers.FallbackStatistics(
        errors=1, rejected=0, results=0
    )


async def test_an_error_not_matched_propagates_unchanged() -> None:
    """An exception that nothing matches propagates, the same object."""
    error = ValueError("bug")
    mock = MockService[str, str]().fail(error)
    svc = layers.Fallback("x", on=ConnectionError).layer(mock)
    with pytest.raises(ValueError, match="bug") as info:
        await svc("a")
    assert info.value is error


async def test_predicate_on() -> None:
    """on= may be a predicate on the exception."""
    mock = MockService[str, str]().fail(OSError(5, "io")).fail(OSError(6, "other"))
    svc = layers.Fallback("x", on=lambda e: getattr(e, "errno", None) == 5).layer(mock)
    assert await svc("a") == "x"
    with pytest.raises(OSError, match="other"):
        await svc("a")


async def test_rejected_falls_back_by_default() -> None:
    """A Rejected from a layer inside falls back by default (on_rejected=True)."""
    breaker = layers.CircuitBreaker(name="b")
    breaker.force_open()
    svc = (
        layers.ServiceBuilder()
        .fallback("degraded")
        .layer(breaker)
        .service(MockService[str, str]().respond_always("live"))
    )
    with capture_events(layers.events.FallbackUsed) as seen:
        assert await svc("a") == "degraded"
    assert seen[0].reason == "rejected"
    assert seen[0].error == "layers.CircuitOpen"


async def test_on_rejected_false_lets_rejected_through() -> None:
    """on_rejected=False: a Rejected falls back only if on= matches it."""
    mock = MockService[str, str]().fail(layers.Overloaded("full"))
    svc = layers.Fallback("x", on=ConnectionError, on_rejected=False).layer(mock)
    with pytest.raises(layers.Overloaded):
        await svc("a")
    mock.fail(layers.Overloaded("full"))
    svc = layers.Fallback("x", on=layers.Overloaded, on_rejected=False).layer(mock)
    assert await svc("a") == "x"


async def test_on_result_replaces_a_response() -> None:
    """on_result= replaces a response it matches; the handler sees it."""
    seen: list[layers.Outcome[int]] = []

    async def handler(request: str, outcome: layers.Outcome[int]) -> int:
        seen.append(outcome)
        return 200

    mock = MockService[str, int]().respond(503).respond(201)
    fallback = layers.Fallback[int](handler=handler, on_result=lambda r: r >= 500)
    svc = fallback.layer(mock)
    assert await svc("a") == 200
    assert await svc("a") == 201
    assert seen == [layers.Outcome(reason="result", response=503)]
    assert fallback.statistics().results == 1


async def test_handler_gets_the_request_and_the_error() -> None:
    """The handler gets the request and the failure, and may call another service."""
    secondary = MockService[str, str]().respond_always("from secondary")
    outcomes: list[layers.Outcome[str]] = []

    async def handler(request: str, outcome: layers.Outcome[str]) -> str:
        outcomes.append(outcome)
        return await secondary(request)

    error = ConnectionError("down")
    mock = MockService[str, str]().fail(error)
    svc = layers.Fallback(handler=handler, on=ConnectionError).layer(mock)
    assert await svc("GET /") == "from secondary"
    assert secondary.requests == ["GET /"]
    assert outcomes[0].error is error
    assert outcomes[0].reason == "error"


async def test_handler_error_has_the_replaced_one_as_context() -> None:
    """An exception the handler raises keeps the replaced one as __context__."""

    async def handler(request: str, outcome: layers.Outcome[str]) -> str:
        raise RuntimeError("secondary down too")

    error = ConnectionError("down")
    svc = layers.Fallback(handler=handler, on=ConnectionError).layer(
        MockService[str, str]().fail(error)
    )
    with pytest.raises(RuntimeError) as info:
        await svc("a")
    assert info.value.__context__ is error


async def test_handler_that_returns_no_awaitable_is_a_callback_error() -> None:
    """A sync handler returning a plain value raises CallbackError naming handler."""
    svc = layers.Fallback[str](
        handler=lambda request, outcome: "x",  # type: ignore[arg-type,return-value]
        on=ConnectionError,
        name="f",
    ).layer(MockService[str, str]().fail(ConnectionError))
    with pytest.raises(layers.CallbackError, match=r"Fallback 'f'.*handler") as info:
        await svc("a")
    assert info.value.parameter == "handler"


async def test_cancellation_never_falls_back() -> None:
    """A cancelled call is not replaced, even with on=Exception; the inner call ends."""
    mock = MockService[str, str]()
    svc = layers.Fallback("x", on=Exception).layer(mock)
    with anyio.move_on_after(1) as scope:
        await svc("a")
    assert scope.cancelled_caught
    assert mock.statistics().cancelled == 1


async def test_cancellation_inside_the_handler() -> None:
    """A call cancelled while the handler waits is cancelled, not replaced again."""

    async def handler(request: str, outcome: layers.Outcome[str]) -> str:
        await anyio.sleep(10)
        return "late"

    svc = layers.Fallback(handler=handler, on=ConnectionError).layer(
        MockService[str, str]().fail(ConnectionError)
    )
    with anyio.move_on_after(1) as scope:
        await svc("a")
    assert scope.cancelled_caught
    assert anyio.current_time() == 1


async def test_base_exception_is_never_replaced() -> None:
    """KeyboardInterrupt and other BaseExceptions propagate."""

    async def inner(request: str) -> str:
        raise KeyboardInterrupt

    svc = layers.Fallback("x", on=lambda e: True).layer(inner)
    with pytest.raises(KeyboardInterrupt):
        await svc("a")


async def test_success_passes_through() -> None:
    """A response on_result does not match is returned as it is."""
    svc = layers.Fallback("x", on=ConnectionError, on_result=lambda r: False).layer(
        MockService[str, str]().respond("live")
    )
    assert await svc("a") == "live"


def test_observe() -> None:
    """observe() reports the counts as figures, under the kind fallback."""
    fallback = layers.Fallback("x", on=ConnectionError)
    assert isinstance(fallback, layers.Observable)
    assert fallback.kind == "fallback"
    assert fallback.observe().figures == {
        "fallbacks": 0,
        "errors": 0,
        "rejected_calls": 0,
        "results": 0,
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, r"Fallback\(value=<no value>, handler=None\): give exactly one"),
        (
            {"value": 1, "handler": lambda r, o: None},
            r"give exactly one of value",
        ),
        (
            {"value": 1, "on_rejected": False},
            r"Fallback\(on=None, on_result=None, on_rejected=False\)",
        ),
        ({"value": 1, "on": BaseException}, r"Fallback\(on=<class 'BaseException'>"),
        ({"value": 1, "on": ()}, r"Fallback\(on=\(\)\)"),
        ({"value": 1, "on_result": 3}, r"Fallback\(on_result=3\)"),
        ({"value": 1, "on_rejected": 1}, r"Fallback\(on_rejected=1\)"),
        ({"value": 1, "handler": 3}, r"Fallback\(handler=3\)"),
        ({"value": 1, "name": ""}, r"Fallback\(name=''\)"),
    ],
)
def test_bad_configuration_names_the_parameter(
    kwargs: dict[str, Any], match: str
) -> None:
    """Bad options raise ConfigurationError naming the parameter and value."""
    with pytest.raises(layers.ConfigurationError, match=match):
        layers.Fallback(**kwargs)
