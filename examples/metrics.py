"""OpenTelemetry metrics for a stack: calls, retries, rejections, breaker state.

A client stack (measured, retried, behind a circuit breaker) calls a flaky
downstream a few times; the metrics go to the OpenTelemetry SDK's in-memory
reader, and the script prints every data point. In production, give
``OtelMetrics`` your own ``MeterProvider`` (or none: the global one) with an
exporter such as OTLP or Prometheus instead.

Run it with ``python examples/metrics.py`` (needs ``service-layers[otel]``
and ``opentelemetry-sdk``).
"""

from __future__ import annotations

import anyio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

import layers
from layers.otel import OtelMetrics


def print_metrics(reader: InMemoryMetricReader) -> None:
    """Print each data point as ``name {attributes} value``."""
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = ", ".join(
                        f"{key}={value!s}"
                        for key, value in sorted((point.attributes or {}).items())
                    )
                    if isinstance(point, HistogramDataPoint):
                        shown = f"count={point.count} sum={point.sum:.2f}"
                    else:
                        assert isinstance(point, NumberDataPoint)
                        shown = str(point.value)
                    print(f"{metric.name} {{{attributes}}} {shown}")


async def main() -> None:
    """Make a few calls through an instrumented stack; print the metrics."""
    reader = InMemoryMetricReader()
    metrics = OtelMetrics(MeterProvider(metric_readers=[reader]))
    metrics.install()
    layers.set_logging(False)  # keep the output to the metrics

    breaker = layers.CircuitBreaker(
        name="inventory", consecutive_failures=2, open_duration=30
    )
    metrics.observe(breaker)
    client = (
        layers.ServiceBuilder()
        .layer(metrics.instrument("inventory-api"))
        .retry(on=ConnectionError, max_attempts=2, backoff=[0.01], budget=None)
        .layer(breaker)
        .service(inventory)
    )
    for item in ["apple", "pear", "broken", "plum"]:
        try:
            print(f"{item}: {await client(item)}")
        except (ConnectionError, layers.CircuitOpen) as error:
            print(f"{item}: {type(error).__name__}")
    print_metrics(reader)
    metrics.uninstall()


async def inventory(item: str) -> int:
    """The downstream: counts a fruit, or fails for a broken item."""
    await anyio.sleep(0.001)
    if item == "broken":
        raise ConnectionError("connection reset")
    return len(item)


if __name__ == "__main__":
    anyio.run(main)
