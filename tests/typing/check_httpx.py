"""Type checks: layers.httpx helpers fit Retry, CircuitBreaker and the builder."""

from __future__ import annotations

from typing import Any, assert_type

import httpx

import layers
from layers import Service, ServiceBuilder, Unchanged
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
    .retry(on=RetryOn(), retry_after=retry_after, max_attempts=3)
    .layer(layers.PerKey(breaker, key=host_key))
    .circuit_breaker(name="all", **breaker_options())
    .rate_limit(10, key=host_key)
)
assert_type(builder.service(send), Service[httpx.Request, httpx.Response])
assert_type(
    ServiceBuilder()
    .retry(on=httpx.TransportError, on_result=RetryOn().response, max_attempts=2)
    .service(send),
    Service[httpx.Request, httpx.Response],
)
assert_type(
    ServiceBuilder()
    .retry(
        on=RetryOn(),
        on_result=RetryOn().response,
        retry_after=retry_after,
        max_attempts=3,
    )
    .service(send),
    Service[httpx.Request, httpx.Response],
)
assert_type(retry_after(httpx.Response(429)), float | None)

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


# A helper's return type, as the tutorial spells it (docs/tutorial.md).
def resilient() -> ServiceBuilder:
    """Keeps the types: a bare ServiceBuilder."""
    return ServiceBuilder().timeout(10).retry(on=RetryOn(), max_attempts=3)


assert_type(resilient().service(send), Service[httpx.Request, httpx.Response])
assert_type(LayeredTransport(resilient()), LayeredTransport)


def user_request(user_id: int) -> httpx.Request:
    """The request for one user."""
    return httpx.Request("GET", f"https://users.example/users/{user_id}")


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON body."""
    body: dict[str, Any] = response.json()
    return body


def users_api() -> ServiceBuilder[httpx.Request, httpx.Response, int, dict[str, Any]]:
    """Changes the types: int -> dict outside, httpx inside."""
    return (
        ServiceBuilder()
        .map_request(user_request)
        .map_response(json_body)
        .timeout(5)
        .retry(on=RetryOn(), max_attempts=3)
    )


assert_type(users_api().service(send), Service[int, dict[str, Any]])


def signed(request: httpx.Request) -> httpx.Request:
    """Signs a request."""
    request.headers["x-signature"] = "..."
    return request


def checked(response: httpx.Response) -> httpx.Response:
    """Raises for an error status."""
    return response.raise_for_status()


def http_only() -> ServiceBuilder[httpx.Request, httpx.Response]:
    """Keeps the types of a Service[httpx.Request, httpx.Response] only."""
    return ServiceBuilder().map_request(signed).map_response(checked).timeout(5)


assert_type(
    http_only(),
    ServiceBuilder[httpx.Request, httpx.Response, httpx.Request, httpx.Response],
)
assert_type(http_only().service(send), Service[httpx.Request, httpx.Response])
assert_type(LayeredTransport(http_only()), LayeredTransport)


def signed_only() -> ServiceBuilder[httpx.Request, Unchanged]:
    """Changes (here: touches) the request side only: Unchanged on the other."""
    return ServiceBuilder().map_request(signed).timeout(5)


assert_type(signed_only().service(send), Service[httpx.Request, httpx.Response])


def built_client() -> Service[httpx.Request, httpx.Response]:
    """A helper that builds: the service's type."""
    return http_only().service(send)


def http_checks() -> ServiceBuilder[httpx.Request, httpx.Response]:
    """The tutorial's: a stack for httpx services, with a type-preserving one in it."""
    return ServiceBuilder().map_request(signed).map_response(checked).layer(resilient())


def checks_only() -> ServiceBuilder[Unchanged, httpx.Response]:
    """Touches the responses only: the request side stays Unchanged."""
    return ServiceBuilder().map_response(checked).layer(resilient())


assert_type(checks_only().service(send), Service[httpx.Request, httpx.Response])


def user_client(http: httpx.AsyncClient) -> Service[int, dict[str, Any]]:
    """The tutorial's: a builder that changes the types, then one that keeps them."""
    return users_api().layer(http_checks()).service(http.send)


assert_type(
    users_api().layer(http_checks()),
    ServiceBuilder[httpx.Request, httpx.Response, int, dict[str, Any]],
)
to_user = ServiceBuilder().map_request(user_request)
users_api().layer(to_user)  # type: ignore[arg-type]
