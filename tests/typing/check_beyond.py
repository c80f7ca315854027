"""Type checks: Fallback, Coalesce and fault injection keep the stack's types."""

from __future__ import annotations

from typing import assert_type

import layers
from layers import Service, ServiceBuilder


async def fetch(request: int) -> str:
    """A service from int to str."""
    return str(request)


def parse(body: bytes) -> int:
    """Maps a request."""
    return int(body)


async def secondary(request: int, outcome: layers.Outcome[str]) -> str:
    """A fallback handler for a service of str responses."""
    return "secondary"


# Fallback[Res] keeps Service[Req, Res]; its value has the response type.
assert_type(layers.Fallback("cached", on=ConnectionError), layers.Fallback[str])
assert_type(
    layers.Fallback("cached", on=ConnectionError).layer(fetch), Service[int, str]
)
assert_type(layers.Fallback(handler=secondary).layer(fetch), Service[int, str])
assert_type(
    ServiceBuilder().fallback("cached", on=ConnectionError).service(fetch),
    Service[int, str],
)
assert_type(
    ServiceBuilder().timeout(1).fallback(handler=secondary).service(fetch),
    Service[int, str],
)
assert_type(
    ServiceBuilder()
    .map_request(parse)
    .fallback("cached", on_result=lambda r: r == "")
    .service(fetch),
    Service[bytes, str],
)

# A fallback value of another type than the service's responses is an error.
layers.Fallback(0, on=ConnectionError).layer(fetch)  # type: ignore[arg-type]
ServiceBuilder().fallback(0).service(fetch)  # type: ignore[arg-type]

# Coalesce and the injection layers keep the types; InjectResult's value is typed.
assert_type(layers.Coalesce().layer(fetch), Service[int, str])
assert_type(ServiceBuilder().coalesce(key=str).service(fetch), Service[int, str])
assert_type(layers.InjectError(ConnectionError).layer(fetch), Service[int, str])
assert_type(layers.InjectLatency(0.1).layer(fetch), Service[int, str])
assert_type(layers.InjectResult("stale").layer(fetch), Service[int, str])
assert_type(
    ServiceBuilder()
    .inject_error(ConnectionError, rate=0.1, seed=1)
    .inject_latency(0.5)
    .inject_result("stale", rate=0.01)
    .service(fetch),
    Service[int, str],
)
layers.InjectResult(0).layer(fetch)  # type: ignore[arg-type]

# Hedge keeps the types; its options are typed.
assert_type(layers.Hedge(delay=0.05).layer(fetch), Service[int, str])
assert_type(
    ServiceBuilder().hedge(quantile=0.95, safe=lambda r: True).service(fetch),
    Service[int, str],
)
ServiceBuilder().hedge(delay="1")  # type: ignore[arg-type]
