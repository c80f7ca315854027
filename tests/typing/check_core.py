"""Type checks: an async def and an object with an async __call__ are Services."""

from __future__ import annotations

from layers import Service


async def double(request: int) -> int:
    """A service from int to int."""
    return request * 2


class AsyncCallable:
    """An object whose async __call__ makes it a service."""

    async def __call__(self, request: int) -> int:
        return request + 1


plain: Service[int, int] = double
instance: Service[int, int] = AsyncCallable()


async def wrong_request(request: str) -> int:
    """A service from str: not a Service[int, int]."""
    return len(request)


mismatched: Service[int, int] = wrong_request  # type: ignore[assignment]
