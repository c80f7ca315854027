"""Type checks: the spellings of a builder's type, for a helper that returns one.

``ServiceBuilder`` and ``Layer`` take their type parameters in one order,
inner first: ``[InReq, InRes, OutReq, OutRes]``. The parameters have
defaults, so a bare ``ServiceBuilder`` is a builder that keeps the types,
and ``ServiceBuilder[Req, Res]`` / ``Layer[Req, Res]`` keep those of a
``Service[Req, Res]``.
"""

from __future__ import annotations

from typing import Any, assert_type

import layers
from layers import Layer, Service, ServiceBuilder, Unchanged
from layers.testing import capture_events


async def fetch(request: int) -> str:
    """A service from int to str."""
    return str(request)


async def fetch_bytes(request: bytes) -> bytes:
    """A service from bytes to bytes."""
    return request


def parse(body: bytes) -> int:
    """Maps a request."""
    return int(body)


def length(text: str) -> int:
    """Maps a response."""
    return len(text)


def resilient() -> ServiceBuilder:
    """A bare ServiceBuilder: a builder that keeps the types of any service."""
    return ServiceBuilder().timeout(10).retry(on=ConnectionError, max_attempts=3)


assert_type(resilient(), ServiceBuilder[Unchanged, Unchanged, Unchanged, Unchanged])
assert_type(resilient().service(fetch), Service[int, str])
assert_type(resilient().service(fetch_bytes), Service[bytes, bytes])
assert_type(resilient().concurrency_limit(4).service(fetch), Service[int, str])
assert_type(ServiceBuilder().layer(resilient()).service(fetch), Service[int, str])


def decoded() -> ServiceBuilder[int, str, bytes, int]:
    """Changes both sides: a Service[int, str] inside, a Service[bytes, int] out."""
    return ServiceBuilder().timeout(1).map_request(parse).map_response(length)


assert_type(decoded().service(fetch), Service[bytes, int])
assert_type(decoded().into_layer(), Layer[int, str, bytes, int])
decoded().service(fetch_bytes)  # type: ignore[arg-type]


def parsed() -> ServiceBuilder[int, Unchanged, bytes, Unchanged]:
    """Changes the request only: Unchanged stays on the response side."""
    return ServiceBuilder().map_request(parse).timeout(1)


assert_type(parsed().service(fetch), Service[bytes, str])


def same_int(request: int) -> int:
    """Maps a request to the same type."""
    return request + 1


def same_str(response: str) -> str:
    """Maps a response to the same type."""
    return response.strip()


def normalised() -> ServiceBuilder[int, str]:
    """Two parameters: the types of one Service[int, str], the same outside."""
    return ServiceBuilder().map_request(same_int).map_response(same_str)


assert_type(normalised(), ServiceBuilder[int, str, int, str])
assert_type(normalised().service(fetch), Service[int, str])
normalised().service(fetch_bytes)  # type: ignore[arg-type]


def int_timeout() -> Layer[int, str]:
    """Layer has the same order and defaults: Layer[Req, Res] keeps the types."""
    return layers.Timeout(1)


assert_type(int_timeout(), Layer[int, str, int, str])
assert_type(ServiceBuilder().layer(int_timeout()).service(fetch), Service[int, str])


def built() -> Service[int, str]:
    """A helper that builds: the service's own type."""
    return resilient().service(fetch)


# capture_events() needs no annotation: every Event, or the class given.
with capture_events() as events:
    assert_type(events, list[layers.Event])
with capture_events(layers.Event) as only:
    assert_type(only, list[layers.Event])
with capture_events(layers.events.TimeoutElapsed) as elapsed:
    assert_type(elapsed, list[layers.events.TimeoutElapsed])

# map_request with an annotated function: the built service takes its type.
assert_type(ServiceBuilder().map_request(parse).service(fetch), Service[bytes, str])
# A lambda's parameter has no type, so the built service takes Any (it used
# to take the inner service's int, and a correct call was reported). Pyright
# strict also reports the lambda's body: give map_request a def whose
# parameter is annotated, as above.
from_text = ServiceBuilder().map_request(
    lambda s: int(s)  # pyright: ignore[reportArgumentType]
)
assert_type(from_text.service(fetch), Service[Any, str])


async def call_it() -> str:
    """The correct call is accepted."""
    return await from_text.service(fetch)("42")
