"""The ASGI middleware behind real servers (hypercorn, uvicorn), over real HTTP."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import anyio
import pytest

import layers
from layers.asgi import LayersMiddleware, Receive, Scope, Send

httpx = pytest.importorskip("httpx")
pytest.importorskip("hypercorn")
from hypercorn.config import Config  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.realtime, pytest.mark.timeout(60)]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends on the real clock: the server waits on real sockets."""
    return str(request.param)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """GET /sleep/<s> answers 200 after s seconds; lifespan is answered."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path: str = scope["path"]
    if path.startswith("/sleep/"):
        await anyio.sleep(float(path.removeprefix("/sleep/")))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": path.encode()})


@asynccontextmanager
async def served(
    stack: Any, supervisor: layers.Supervisor, backend: str
) -> AsyncIterator[str]:
    """Serve app behind *stack* on a free port until the supervisor shuts down."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]
    config.graceful_timeout = 5
    config.accesslog = config.errorlog = None
    if backend == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment]
    supervisor.start_soon(
        partial(
            serve,
            LayersMiddleware(app, stack),
            config,
            shutdown_trigger=supervisor.wait_shutdown,
        ),
        name="hypercorn",
    )
    yield f"http://127.0.0.1:{port}"


async def test_status_codes_over_real_http(anyio_backend: str) -> None:
    """200 passes through, 429 carries Retry-After, a slow request gets 504."""
    stack = (
        layers.ServiceBuilder()
        .rate_limit(3, 10, burst=2, mode="reject", key=layers.asgi.client_address)
        .timeout(0.2)
    )
    async with layers.Supervisor(grace=10, signals=()) as supervisor:
        async with (
            served(stack, supervisor, anyio_backend) as base,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
        ):
            ok = await http.get("/hello")
            slow = await http.get("/sleep/5")
            await http.get("/")
            limited = await http.get("/")
        supervisor.shutdown()
    assert (ok.status_code, ok.text) == (200, "/hello")
    assert slow.status_code == 504
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 10
    assert supervisor.report.clean


async def test_graceful_shutdown_drains_in_flight_request(anyio_backend: str) -> None:
    """Shutdown mid-request: it gets its 200; a later one gets 503 or no server."""
    drain = layers.Drain(retry_after=2)
    stack = layers.ServiceBuilder().layer(drain)
    results: dict[str, Any] = {}
    async with (
        layers.Supervisor(grace=10, signals=(), drains=[drain]) as supervisor,
        served(stack, supervisor, anyio_backend) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):

        async def slow() -> None:
            results["slow"] = await http.get("/sleep/0.5")

        async with anyio.create_task_group() as group:
            group.start_soon(slow)
            await anyio.sleep(0.2)
            began = time.monotonic()
            supervisor.shutdown()
            try:
                late = await http.get("/late")
                results["late"] = late.status_code
            except httpx.TransportError as error:
                results["late"] = type(error).__name__
    took = time.monotonic() - began
    assert results["slow"].status_code == 200
    assert results["slow"].text == "/sleep/0.5"
    assert results["late"] in (503, "ConnectError", "RemoteProtocolError"), results
    assert drain.in_flight == 0
    assert supervisor.report.finished == ("hypercorn",)
    assert took < 5  # the in-flight request takes 0.3 s more


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_uvicorn_graceful_shutdown_drains_in_flight_request(
    anyio_backend: str,
) -> None:
    """The supervisor stops uvicorn: in flight gets 200, later 503 or no server."""
    uvicorn = pytest.importorskip("uvicorn")

    class SupervisedServer(uvicorn.Server):  # type: ignore[misc]
        # The supervisor owns the signals: uvicorn must not replace them.
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    drain = layers.Drain(retry_after=2)
    stack = layers.ServiceBuilder().layer(drain)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    config = uvicorn.Config(
        LayersMiddleware(app, stack),
        interface="asgi3",
        lifespan="on",
        ws="none",
        http="h11",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = SupervisedServer(config)

    async def stop_uvicorn() -> None:
        await supervisor.wait_shutdown()
        server.should_exit = True

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    results: dict[str, Any] = {}
    async with (
        layers.Supervisor(grace=10, signals=(), drains=[drain]) as supervisor,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        supervisor.start_soon(server.serve, [listener], name="uvicorn")
        supervisor.start_soon(stop_uvicorn, name="uvicorn-stop")
        assert (await http.get("/hello")).status_code == 200
        results["handlers"] = {sig: signal.getsignal(sig) for sig in handlers}

        async def slow() -> None:
            results["slow"] = await http.get("/sleep/0.3")

        async with anyio.create_task_group() as group:
            group.start_soon(slow)
            await anyio.sleep(0.1)
            supervisor.shutdown()
            try:
                late = await http.get("/late")
                results["late"] = late.status_code
            except httpx.TransportError as error:
                results["late"] = type(error).__name__
    report = supervisor.report
    assert results["handlers"] == handlers
    assert results["slow"].status_code == 200
    assert results["slow"].text == "/sleep/0.3"
    assert results["late"] in (503, "ConnectError", "RemoteProtocolError"), results
    assert drain.in_flight == 0
    assert report.clean, report.summary()
    assert set(report.finished) == {"uvicorn", "uvicorn-stop"}
    assert report.shutdown_took is not None
    assert report.shutdown_took < 3  # 10 times the in-flight request's 0.3 s
