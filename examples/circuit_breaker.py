"""Circuit breaker: stop hammering a failing host, probe it, resume.

A fake payments host has two endpoints, ``/charge`` and ``/refund``. One
breaker guards both (one breaker per downstream host): when the host goes
down, calls to either endpoint fail fast with ``CircuitOpen`` instead of
waiting on a dead host, and ``retry_after`` says when to try again. After
the open duration, two probe calls are let through; they succeed, so the
breaker closes. The breaker's events are printed as they happen.

    python examples/circuit_breaker.py                    # both backends
    python examples/circuit_breaker.py --backend trio     # or asyncio

Each run takes about half a second of real time.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import anyio

import layers
from layers.events import CircuitCallRejected, CircuitStateChanged


class HostDown(ConnectionError):
    """The fake host is unreachable."""


class PaymentsHost:
    """A fake downstream host whose endpoints fail while it is down."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def charge(self, amount: int) -> str:
        return await self._call(f"charged {amount}")

    async def refund(self, amount: int) -> str:
        return await self._call(f"refunded {amount}")

    async def _call(self, answer: str) -> str:
        self.calls += 1
        await anyio.sleep(0.01)
        if self.down:
            raise HostDown("connection refused")
        return answer


def show(event: layers.Event) -> None:
    """A sink that prints the breaker's transitions and rejections."""
    if isinstance(event, CircuitStateChanged):
        print(f"    event: {event.event} {event.from_state} -> {event.to_state}")
    elif isinstance(event, CircuitCallRejected):
        print(f"    event: {event.event} state={event.state}")


async def attempt(service: layers.Service[int, str], amount: int) -> None:
    try:
        print(f"  {amount}: {await service(amount)}")
    except layers.CircuitOpen as error:
        retry = "unknown" if error.retry_after is None else f"{error.retry_after:.1f} s"
        print(f"  {amount}: CircuitOpen (retry after {retry})")
    except HostDown as error:
        print(f"  {amount}: HostDown: {error}")


async def main() -> None:
    host = PaymentsHost()
    breaker = layers.CircuitBreaker(
        name="payments-host",
        window_size=10,  # the last 10 calls
        min_calls=4,  # no verdict before 4 calls
        failure_rate_threshold=0.5,
        open_duration=0.3,
        probes=2,
    )
    # one breaker, two services: they share its state
    charge = layers.ServiceBuilder().layer(breaker).service(host.charge)
    refund = layers.ServiceBuilder().layer(breaker).service(host.refund)

    print("the host is up:")
    await attempt(charge, 10)
    await attempt(refund, 20)

    print("the host goes down:")
    host.down = True
    for amount in (30, 40, 50):
        await attempt(charge, amount)
    calls_before = host.calls
    await attempt(refund, 60)  # /refund is rejected too: the same host
    await attempt(charge, 70)
    print(f"  calls that reached the host while open: {host.calls - calls_before}")

    stats = breaker.statistics()
    print(
        f"statistics: state={stats.state} calls={stats.calls} "
        f"failure_rate={stats.failure_rate}"
    )

    print("the host recovers; after the open duration, probes go through:")
    host.down = False
    await anyio.sleep(0.3)
    await attempt(charge, 80)
    await attempt(refund, 90)
    print(f"state: {breaker.state}")


def run(backend: str) -> None:
    print(f"== {backend} ==")
    anyio.run(main, backend=backend)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the circuit breaker example.")
    parser.add_argument(
        "--backend", choices=["asyncio", "trio", "both"], default="both"
    )
    backend: str = parser.parse_args().backend
    layers.set_logging(False)  # print our own lines instead of log records
    layers.add_sink(show)
    if backend in ("asyncio", "both"):
        run("asyncio")
    if backend in ("trio", "both"):
        if importlib.util.find_spec("trio") is None:
            sys.exit("trio is not installed: pip install -e '.[trio]'")
        run("trio")
