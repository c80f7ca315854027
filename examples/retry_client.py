"""Retrying safely: a client for a flaky inventory API, on asyncio and trio.

Run it with ``python examples/retry_client.py [--backend asyncio|trio]``.
It shows, against an in-process fake API:

1. transient connection errors retried with jittered exponential backoff,
   the attempt number sent along with each request;
2. a "503, retry after 0.05 s" response, turned into an error that Retry
   retries after the server's hint (``retry_after=``);
3. a retry under a Timeout that stops by itself before the deadline, with
   the note saying why;
4. an outage: how many retries the retry budget lets through, and how many
   there would be without it.
"""

from __future__ import annotations

import argparse
import contextlib
import random
from dataclasses import dataclass, field

import anyio

import layers
from layers.events import RetryAttemptFailed, RetryStopped


@dataclass
class Response:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict[str, str])


@dataclass
class FakeApi:
    """The inventory API: fails *failures* times in the way given, then answers."""

    failures: int = 0
    mode: str = "reset"  # "reset": ConnectionError, "busy": a 503 response
    calls: int = 0

    async def __call__(self, item: str) -> Response:
        self.calls += 1
        attempt = layers.current_attempt()  # what a client would send on
        await anyio.sleep(0.001)
        if self.calls <= self.failures:
            if self.mode == "reset":
                raise ConnectionError("connection reset by peer")
            return Response(503, headers={"retry-after": "0.05"})
        return Response(200, f"{item}: 12 in stock (attempt {attempt})")


class ServerBusy(Exception):
    """A 503 answer, as an error that carries the server's Retry-After."""

    def __init__(self, response: Response) -> None:
        super().__init__("503 Service Unavailable")
        self.response = response


def raise_for_busy(response: Response) -> Response:
    """Turn a 503 response into ServerBusy (so that Retry can classify it)."""
    if response.status == 503:
        raise ServerBusy(response)
    return response


def retry_after_header(error: Exception) -> float | None:
    """Read the Retry-After header of a ServerBusy error, in seconds."""
    if isinstance(error, ServerBusy) and "retry-after" in error.response.headers:
        return float(error.response.headers["retry-after"])
    return None


def print_event(event: layers.Event) -> None:
    """A sink that prints the retry events."""
    if isinstance(event, RetryAttemptFailed):
        print(
            f"  event: attempt {event.attempt} failed ({event.error}), "
            f"retrying in {event.delay:.3f} s"
        )
    elif isinstance(event, RetryStopped):
        print(
            f"  event: {event.event} ({event.reason}) after {event.attempts} attempts"
        )


async def transient_errors() -> None:
    print("1. transient errors")
    api = FakeApi(failures=2)
    client = (
        layers.ServiceBuilder()
        .retry(
            on=ConnectionError,
            max_attempts=4,
            backoff=layers.ExponentialBackoff(
                base=0.01, cap=0.1, rng=random.Random(1).random
            ),
        )
        .service(api)
    )
    response = await client("widget")
    print(f"  -> {response.status} {response.body}")


async def busy_responses() -> None:
    print("2. 503 responses with Retry-After")
    api = FakeApi(failures=2, mode="busy")
    start = anyio.current_time()

    client = (
        layers.ServiceBuilder()
        .retry(
            on=(ConnectionError, ServerBusy),
            max_attempts=4,
            retry_after=retry_after_header,
            backoff=layers.ConstantBackoff(0.01),
        )
        .map_response(raise_for_busy)
        .service(api)
    )
    response = await client("gadget")
    waited = anyio.current_time() - start
    print(f"  -> {response.status} after {api.calls} calls, {waited:.2f} s or more")


async def under_a_deadline() -> None:
    print("3. under a deadline")
    api = FakeApi(failures=100)
    client = (
        layers.ServiceBuilder()
        .timeout(0.25, name="checkout")
        .retry(on=ConnectionError, max_attempts=10, backoff=layers.ConstantBackoff(0.1))
        .service(api)
    )
    try:
        await client("gizmo")
    except ConnectionError as error:
        print(f"  -> ConnectionError after {api.calls} calls")
        for note in error.__notes__:
            print(f"  note: {note}")


async def outage() -> None:
    print("4. an outage: 300 calls to a dead API, max_attempts=3")
    for budget in (layers.RetryBudget(), None):
        api = FakeApi(failures=10**9)
        client = (
            layers.ServiceBuilder()
            .retry(
                on=ConnectionError,
                max_attempts=3,
                backoff=layers.ConstantBackoff(0.001),
                budget=budget,
            )
            .service(api)
        )

        async def one(client: layers.Service[str, Response] = client) -> None:
            with contextlib.suppress(ConnectionError):
                await client("thing")

        async with anyio.create_task_group() as group:
            for _ in range(300):
                group.start_soon(one)
        label = "with the default budget" if budget else "without a budget"
        print(f"  retries {label}: {api.calls - 300}")


async def main() -> None:
    remove = layers.add_sink(print_event)
    try:
        await transient_errors()
        await busy_responses()
        await under_a_deadline()
    finally:
        remove()
    await outage()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"])
    args = parser.parse_args()
    layers.set_logging(False)  # the sink above prints what matters here
    for backend in [args.backend] if args.backend else ["asyncio", "trio"]:
        print(f"== {backend} ==")
        anyio.run(main, backend=backend)
