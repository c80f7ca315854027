"""Serve liveness and readiness probes with hypercorn, on asyncio and trio.

A registry checks a database (critical) and watches a payment API's circuit
breaker (not critical); ``HealthApp`` serves ``/livez`` and ``/readyz`` on
127.0.0.1 (a free port), and an httpx client asks while the breaker opens
and the database goes down. Needs ``pip install hypercorn httpx``.

Run: ``python examples/health_endpoint.py [--backend asyncio|trio]``.
"""

from __future__ import annotations

import argparse
import importlib
import socket
from typing import Any

import anyio
import httpx
import sniffio
from hypercorn.config import Config

import layers
from layers.health import HealthApp, HealthChecks


class Database:
    def __init__(self) -> None:
        self.up = True

    async def ping(self) -> None:
        await anyio.sleep(0.01)  # a round trip
        if not self.up:
            raise ConnectionError("postgres://app:s3cret@db:5432 refused")


async def serve(app: Any, config: Config, stop: anyio.Event) -> None:
    """Serve *app* with hypercorn until *stop* is set, on the running backend."""

    async def shutdown_trigger() -> None:
        await stop.wait()

    # hypercorn.asyncio or hypercorn.trio, whichever backend runs this.
    backend = importlib.import_module(f"hypercorn.{sniffio.current_async_library()}")
    await backend.serve(app, config, shutdown_trigger=shutdown_trigger)


async def main() -> None:
    database = Database()
    payments = layers.CircuitBreaker(name="payments-api")
    checks = HealthChecks(cache_ttl=0.5, default_timeout=2.0)
    checks.add("database", database.ping, timeout=1.0)
    checks.add_layer(payments)  # open: degraded, not unhealthy
    app = HealthApp(checks)

    # A socket on a free port, handed to hypercorn: no race for the port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.errorlog = None

    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(serve, app, config, stop)
        async with httpx.AsyncClient(base_url=url) as client:

            async def show(path: str) -> None:
                response = await client.get(path)
                print(f"GET {path} -> {response.status_code} {response.text}")

            await show("/livez")
            await show("/readyz")
            payments.force_open()
            checks.invalidate()  # or wait for cache_ttl
            await show("/readyz")
            database.up = False
            checks.invalidate()
            await show("/readyz")
        stop.set()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"])
    chosen = parser.parse_args().backend
    for backend in [chosen] if chosen else ["asyncio", "trio"]:
        print(f"== {backend} ==")
        anyio.run(main, backend=backend)
