"""The health app over real HTTP: hypercorn on 127.0.0.1, httpx, both backends."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import sniffio
from hypercorn.config import Config

import layers
from layers.health import HealthApp, HealthChecks

pytestmark = [pytest.mark.anyio, pytest.mark.realtime, pytest.mark.timeout(60)]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Real clock: the client and the server wait on sockets."""
    return str(request.param)


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve *app* with hypercorn on a free port of 127.0.0.1; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns it from now on
    config.graceful_timeout = 2.0
    config.errorlog = None
    stop = anyio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()

    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: serve(app, config, shutdown_trigger=shutdown_trigger))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop.set()


class Flaky:
    """A check that sleeps (real time), counts, and fails while ``down`` is set."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.down = False
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        await anyio.sleep(self.delay)
        if self.down:
            raise ConnectionError("postgres://admin:hunter2@db.internal:5432")


async def test_readiness_over_http_200_then_503() -> None:
    """Healthy: 200 and a JSON body; a critical check down: 503, no error text."""
    db = Flaky()
    checks = HealthChecks(cache_ttl=0)
    checks.add("db", db)
    async with serving(HealthApp(checks)) as url, httpx.AsyncClient() as client:
        response = await client.get(f"{url}/readyz")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "status": "healthy",
            "checks": {"db": {"status": "healthy", "critical": True}},
        }
        db.down = True
        response = await client.get(f"{url}/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "unhealthy"
        assert "hunter2" not in response.text
        assert "ConnectionError" not in response.text
        live = await client.get(f"{url}/livez")
        assert (live.status_code, live.json()["status"]) == (200, "healthy")
        assert (await client.get(f"{url}/nope")).status_code == 404
        assert (await client.post(f"{url}/readyz")).status_code == 405
        head = await client.head(f"{url}/readyz")
        assert (head.status_code, head.content) == (503, b"")


async def test_open_breaker_over_http() -> None:
    """An open breaker: 200 degraded when not critical, 503 when critical."""
    breaker = layers.CircuitBreaker(name="payments")
    checks = HealthChecks(cache_ttl=0)
    checks.add_layer(breaker)
    strict = HealthChecks(cache_ttl=0)
    strict.add_layer(breaker, critical=True)
    breaker.force_open()

    async def router(scope: Any, receive: Any, send: Any) -> None:
        # A minimal mount: /strict/* goes to the second app, with root_path.
        if scope["type"] == "http" and scope["path"].startswith("/strict/"):
            scope = {**scope, "root_path": "/strict"}
            await strict_app(scope, receive, send)
        else:
            await app(scope, receive, send)

    app = HealthApp(checks, expose_errors=True)
    strict_app = HealthApp(strict)
    async with serving(router) as url, httpx.AsyncClient() as client:
        response = await client.get(f"{url}/readyz")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "degraded"
        assert body["checks"]["payments"]["details"]["state"] == "forced_open"
        response = await client.get(f"{url}/strict/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["payments"] == {
            "status": "unhealthy",
            "critical": True,
        }
        breaker.reset()
        assert (await client.get(f"{url}/strict/readyz")).status_code == 200


async def test_concurrent_requests_share_one_check_run() -> None:
    """Thirty simultaneous requests during a 0.3 s check run it once."""
    db = Flaky(delay=0.3)
    checks = HealthChecks(cache_ttl=30)
    checks.add("db", db)
    codes: list[int] = []
    async with serving(HealthApp(checks)) as url, httpx.AsyncClient() as client:

        async def hit() -> None:
            codes.append((await client.get(f"{url}/readyz")).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(30):
                group.start_soon(hit)
        await hit()
    assert codes == [200] * 31
    assert db.calls == 1
