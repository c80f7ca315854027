"""Type checks: layers.httpx helpers fit Retry, CircuitBreaker and the builder."""

from __future__ import annotations

from typing import Any, assert_type

import httpx

import layers
from layers import Service, ServiceBuilder
from layers.httpx import (
    BreakerOptions,
    LayeredTransport,
    RetryOn,
    breaker_options,
    describe_request,
    host_key,
    parse_retry_after,
    redact_url,
    retry_after,
)


async def send(request: httpx.Request) -> httpx.Response:
    """A service from httpx.Request to httpx.Response."""
    return httpx.Response(200, request=request)


def breaker(host: str) -> layers.CircuitBreaker:
    """One breaker per host."""
    return layers.CircuitBreaker(name=host, **breaker_options())


builder = (
    ServiceBuilder()
    .timeout(10)
    .retry(on=RetryOn(), retry_after=retry_after, attempts=3)
    .layer(layers.PerKey(breaker, key=host_key))
    .circuit_breaker(name="all", **breaker_options())
    .rate_limit(10, key=host_key)
)
assert_type(builder.service(send), Service[httpx.Request, httpx.Response])
assert_type(
    ServiceBuilder()
    .retry(on=httpx.TransportError, on_result=RetryOn().response, attempts=2)
    .service(send),
    Service[httpx.Request, httpx.Response],
)

transport = LayeredTransport(builder)
assert_type(transport, LayeredTransport)
assert_type(
    LayeredTransport(
        layers.Timeout(1), httpx.MockTransport(lambda r: httpx.Response(200))
    ),
    LayeredTransport,
)
client = httpx.AsyncClient(transport=transport)
assert_type(transport.transport, httpx.AsyncBaseTransport)
assert_type(client, httpx.AsyncClient)
assert_type(parse_retry_after("5"), float | None)
assert_type(redact_url("https://a:b@x/"), str)
assert_type(describe_request(httpx.Request("GET", "https://x/")), str)
assert_type(host_key(httpx.Request("GET", "https://x/")), str)
assert_type(RetryOn()(ValueError()), bool)
options: dict[str, Any] = dict(breaker_options())
assert_type(breaker_options(), BreakerOptions)
