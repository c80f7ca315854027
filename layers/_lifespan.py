"""The ASGI lifespan answer shared by :mod:`layers.asgi` and :mod:`layers.health`.

Both serve ASGI (the middleware for an application that does not speak the
lifespan protocol, the health app always); neither is the other's owner, so
the helper lives here, private to the package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["answer_lifespan"]


async def answer_lifespan(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    """Answer the ASGI lifespan protocol: startup, then shutdown, and return."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
