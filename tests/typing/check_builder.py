"""Type checks: what a user's editor sees through the builder (mypy and pyright)."""

from __future__ import annotations

from typing import assert_type

import layers
from layers import Service, ServiceBuilder


async def fetch(request: int) -> str:
    """A service from int to str."""
    return str(request)


assert_type(ServiceBuilder().timeout(1).service(fetch), Service[int, str])
assert_type(ServiceBuilder().service(fetch), Service[int, str])
assert_type(ServiceBuilder().layer(layers.Timeout(1)).service(fetch), Service[int, str])
assert_type(ServiceBuilder().timeout(1)(fetch), Service[int, str])


def parse(body: bytes) -> int:
    """Maps a request."""
    return int(body)


def length(text: str) -> int:
    """Maps a response."""
    return len(text)


assert_type(
    ServiceBuilder().map_request(parse).timeout(1).service(fetch),
    Service[bytes, str],
)
assert_type(ServiceBuilder().map_response(length).service(fetch), Service[int, int])


async def to_float(response: str) -> float:
    """Async post-processing."""
    return float(response)


assert_type(ServiceBuilder().and_then(to_float).service(fetch), Service[int, float])
assert_type(
    ServiceBuilder().map_request(parse).map_response(length).service(fetch),
    Service[bytes, int],
)
assert_type(
    ServiceBuilder().map_err(lambda e: e).filter(lambda r: True).service(fetch),
    Service[int, str],
)


@ServiceBuilder().timeout(2.0)
async def decorated(request: bytes) -> bytes:
    """Decorated service."""
    return request


assert_type(decorated, Service[bytes, bytes])

inner_stack = ServiceBuilder().timeout(1).into_layer()
assert_type(ServiceBuilder().layer(inner_stack).service(fetch), Service[int, str])
typed_stack = ServiceBuilder().map_request(parse).map_response(length).into_layer()
assert_type(typed_stack, layers.Layer[int, str, bytes, int])
assert_type(ServiceBuilder().layer(typed_stack).service(fetch), Service[bytes, int])


def blocking(request: int) -> int:
    """A sync function, run in a worker thread."""
    return request + 1


assert_type(layers.service_fn(blocking), Service[int, int])
assert_type(layers.service_fn(fetch), Service[int, str])
assert_type(layers.Timeout(1).layer(fetch), layers.TimeoutService[int, str])

# .layer() adds a layer or another builder's layers; it never builds.
assert_type(
    ServiceBuilder().layer(ServiceBuilder().timeout(1)).service(fetch),
    Service[int, str],
)
assert_type(
    ServiceBuilder().map_request(parse).layer(ServiceBuilder().timeout(1)),
    ServiceBuilder[int, layers.Unchanged, bytes, layers.Unchanged],
)
# A builder that changes the types is added with its types.
assert_type(
    ServiceBuilder().timeout(1).layer(ServiceBuilder().map_request(parse)),
    ServiceBuilder[int, layers.Unchanged, bytes, layers.Unchanged],
)


def encode(text: str) -> bytes:
    """Maps a request."""
    return text.encode()


assert_type(
    ServiceBuilder()
    .map_request(encode)
    .layer(ServiceBuilder().map_request(parse))
    .service(fetch),
    Service[str, str],
)
ServiceBuilder().layer(fetch)  # type: ignore[call-overload]
ServiceBuilder().layer(layers.Timeout)  # type: ignore[call-overload]
assert_type(ServiceBuilder().timeout(1).into_layer(), layers.TypePreservingLayer)
assert_type(layers.Stack(ServiceBuilder().timeout(1), layers.Timeout(2)), layers.Stack)
