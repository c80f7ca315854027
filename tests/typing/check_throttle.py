"""Type checks: AdaptiveThrottle keeps the stack's types."""

from __future__ import annotations

from typing import assert_type

import layers
from layers import Service, ServiceBuilder


async def fetch(request: int) -> str:
    """A service from int to str."""
    return str(request)


assert_type(layers.AdaptiveThrottle().layer(fetch), Service[int, str])
assert_type(
    ServiceBuilder()
    .adaptive_throttle(on=ConnectionError, on_result=lambda r: r == "503")
    .timeout(1)
    .service(fetch),
    Service[int, str],
)
assert_type(layers.AdaptiveThrottle().statistics().reject_probability, float)
