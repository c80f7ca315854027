"""Type checks: walking a built stack, and marking a user's closure."""

from __future__ import annotations

from typing import Any, assert_type

import layers
from layers import Layer, Service, ServiceBuilder


async def fetch(request: int) -> str:
    """A service from int to str."""
    return str(request)


svc = ServiceBuilder().timeout(1).service(fetch)

assert_type(layers.layers_of(svc), tuple[Layer[Any, Any, Any, Any], ...])
assert_type(layers.inner_of(svc), Service[Any, Any] | None)
assert_type(layers.describe_stack(svc), str)


class Tag:
    """A user's layer whose service is a closure: mark_built keeps its type."""

    def layer(self, inner: Service[int, str], /) -> Service[int, str]:
        async def tag(request: int) -> str:
            return await inner(request)

        return layers.mark_built(tag, self, inner)


def mark(service: Service[int, str], layer: Tag, inner: Service[int, str]) -> None:
    """mark_built returns its service with the type it had."""
    assert_type(layers.mark_built(service, layer, inner), Service[int, str])


assert_type(ServiceBuilder().layer(Tag()).service(fetch), Service[int, str])
