"""Typing: Instrumented keeps the request and response types through a builder."""

from __future__ import annotations

from typing import assert_type

import layers
from layers.otel import Instrumented, InstrumentedService, OtelMetrics


async def fetch(request: int) -> str:
    """A typed service."""
    return str(request)


def check_instrumented() -> None:
    """Instrumented as a builder layer and directly."""
    metrics = OtelMetrics()
    svc = (
        layers.ServiceBuilder()
        .layer(metrics.instrument("api"))
        .timeout(1)
        .service(fetch)
    )
    assert_type(svc, layers.Service[int, str])
    direct = Instrumented(metrics, name="api").layer(fetch)
    assert_type(direct, InstrumentedService[int, str])
    remove = metrics.install()
    assert_type(remove(), None)
