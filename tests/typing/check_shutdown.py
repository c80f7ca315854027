"""Type checks: Drain keeps the types; the supervisor and the ASGI middleware."""

from __future__ import annotations

import signal
from typing import assert_type

import anyio

import layers
from layers import Drain, Service, ServiceBuilder, ShutdownReport, Supervisor
from layers.asgi import (
    HTTPRequest,
    LayersMiddleware,
    Receive,
    Scope,
    Send,
    client_address,
)


async def fetch(request: int) -> str:
    """A service from int to str."""
    return str(request)


def parse(body: bytes) -> int:
    """Maps a request."""
    return len(body)


drain = Drain(retry_after=5, name="api")

assert_type(drain.layer(fetch), Service[int, str])
assert_type(ServiceBuilder().layer(drain).service(fetch), Service[int, str])
assert_type(
    ServiceBuilder().layer(drain).timeout(1).concurrency_limit(4).service(fetch),
    Service[int, str],
)
assert_type(
    ServiceBuilder().map_request(parse).layer(drain).service(fetch),
    Service[bytes, str],
)
assert_type(drain.statistics(), layers.DrainStatistics)


async def work(seconds: float, label: str) -> None:
    """A supervised task."""
    await anyio.sleep(seconds)


async def main() -> int:
    """Use the supervisor and its report."""
    assert_type(await drain.wait_idle(1.0), bool)
    assert_type(await layers.wait_for_signal(signal.SIGTERM), signal.Signals)
    async with Supervisor(grace=5, drains=[drain], signals=()) as supervisor:
        assert_type(supervisor, Supervisor)
        supervisor.start_soon(work, 1.0, "a", name="worker")
        supervisor.start_soon(supervisor.wait_shutdown)
        assert_type(supervisor.shutting_down, anyio.Event)
        with supervisor.cancel_on_shutdown() as scope:
            assert_type(scope, anyio.CancelScope)
    report = supervisor.report
    assert_type(report, ShutdownReport)
    assert_type(report.cancelled, tuple[str, ...])
    assert_type(report.errors, dict[str, Exception])
    return report.exit_code


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app."""


async def handler(request: HTTPRequest) -> None:
    """A service of HTTP requests."""


middleware = LayersMiddleware(
    app,
    ServiceBuilder().layer(drain).rate_limit(10, key=client_address),
)
assert_type(middleware, LayersMiddleware)
assert_type(
    ServiceBuilder().layer(drain).timeout(1).service(handler),
    Service[HTTPRequest, None],
)
