"""Layers in front of an ASGI app, served by hypercorn, stopped gracefully.

A plain ASGI app (no framework) is wrapped by
:class:`layers.asgi.LayersMiddleware` with a stack that drains on shutdown,
limits each client to 2 requests per second and times requests out after
1 s. hypercorn serves it on 127.0.0.1 (a free port) under a
:class:`layers.Supervisor`, whose shutdown is hypercorn's shutdown trigger.

The script then talks to its own server with httpx: a 200, a 429 with
``Retry-After``, a 504; then it begins shutdown while a slow request is in
flight: that request still gets its 200, the server stops, and the program
exits 0. Needs ``hypercorn`` and ``httpx``.

    python examples/asgi_app.py --backend trio
"""

from __future__ import annotations

import argparse
import importlib
import socket
import sys
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import httpx
from hypercorn.config import Config

import layers
from layers.asgi import LayersMiddleware, Receive, Scope, Send, client_address


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """GET /sleep/<seconds> answers after that long; lifespan is answered."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path: str = scope["path"]
    if path.startswith("/sleep/"):
        await anyio.sleep(float(path.removeprefix("/sleep/")))
    body = f"hello from {path}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def serve_function(backend: str) -> Callable[..., Awaitable[None]]:
    # hypercorn.asyncio.serve or hypercorn.trio.serve: the same call on both.
    module = importlib.import_module(f"hypercorn.{backend}")
    serve: Callable[..., Awaitable[None]] = module.serve
    return serve


async def client(base: str, supervisor: layers.Supervisor) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        response = await http.get("/")
        print("GET /", response.status_code, response.text.strip())
        await http.get("/")  # the 2 per second of 127.0.0.1 are used up
        response = await http.get("/")
        print(
            "GET /",
            response.status_code,
            "Retry-After:",
            response.headers.get("retry-after"),
        )
        await anyio.sleep(1.1)
        response = await http.get("/sleep/3")
        print("GET /sleep/3", response.status_code, response.text.strip())

        async def in_flight() -> None:
            response = await http.get("/sleep/0.5")
            print(
                "in flight during shutdown:",
                response.status_code,
                response.text.strip(),
            )

        async with anyio.create_task_group() as group:
            group.start_soon(in_flight)
            await anyio.sleep(0.2)
            print("beginning shutdown")
            supervisor.shutdown("demo over")


async def main(backend: str) -> int:
    drain = layers.Drain(retry_after=1, name="http")
    stack = (
        layers.ServiceBuilder()
        .layer(drain)
        .rate_limit(2, 1, mode="reject", key=client_address)
        .timeout(1)
    )
    wrapped = LayersMiddleware(app, stack)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    config = Config()
    # hypercorn takes the socket over (and closes it when it stops).
    config.bind = [f"fd://{listener.detach()}"]
    config.graceful_timeout = 5
    config.accesslog = None
    config.errorlog = None
    serve = serve_function(backend)
    async with layers.Supervisor(grace=10, drains=[drain]) as supervisor:
        supervisor.start_soon(
            partial(serve, wrapped, config, shutdown_trigger=supervisor.wait_shutdown),
            name="hypercorn",
        )
        supervisor.start_soon(
            client, f"http://127.0.0.1:{port}", supervisor, name="client"
        )
    print(supervisor.report.summary())
    print("drained:", drain.statistics())
    return supervisor.report.exit_code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    arguments = parser.parse_args()
    layers.set_logging(False)
    sys.exit(anyio.run(main, arguments.backend, backend=arguments.backend))
