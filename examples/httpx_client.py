"""A layered httpx client: retries with Retry-After, a per-host breaker, redaction.

Runs on asyncio and trio against an in-process MockTransport (no network)
that answers like a flaky API: a 503, a 429 with Retry-After, then success;
and a second host that is down.

    python examples/httpx_client.py [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import itertools

import anyio
import httpx

import layers
from layers.httpx import (
    LayeredTransport,
    RetryOn,
    breaker_options,
    describe_request,
    host_key,
    retry_after,
)

calls = itertools.count(1)


def flaky_api(request: httpx.Request) -> httpx.Response:
    """api.test: 503, then 429 (Retry-After: 2), then 200; down.test: always 503."""
    if request.url.host == "down.test":
        return httpx.Response(503)
    n = next(calls)
    if n == 1:
        return httpx.Response(503)
    if n == 2:
        return httpx.Response(429, headers={"Retry-After": "2"})
    return httpx.Response(200, json={"items": [1, 2, 3]})


def breaker(host: str) -> layers.CircuitBreaker:
    """One breaker per host: 4 calls in the window, open for 30 s."""
    return layers.CircuitBreaker(
        name=host, window_size=4, min_calls=4, open_duration=30, **breaker_options()
    )


async def main() -> None:
    """Fetch from the flaky host, then hammer the down one until its breaker opens."""
    stack = (
        layers.ServiceBuilder()
        .timeout(30)
        .retry(
            on=RetryOn(),
            retry_after=retry_after,
            max_attempts=4,
            backoff=layers.ConstantBackoff(0.1),
            max_delay=30,  # a longer Retry-After returns the response at once
        )
        .layer(layers.PerKey(breaker, key=host_key))
        .rate_limit(100, key=host_key)
    )
    transport = LayeredTransport(stack, httpx.MockTransport(flaky_api))
    headers = {"Authorization": "Bearer s3cret"}
    async with httpx.AsyncClient(transport=transport, headers=headers) as client:
        start = anyio.current_time()
        response = await client.get("https://user:pw@api.test/items")
        waited = anyio.current_time() - start
        print(f"{describe_request(response.request)} -> {response.status_code}")
        print(f"items: {response.json()['items']}, after {waited:.1f} s of retries")
        for attempt in range(3):
            try:
                response = await client.get("https://down.test/")
                print(f"down.test attempt {attempt + 1}: {response.status_code}")
            except layers.CircuitOpen as error:
                print(f"down.test attempt {attempt + 1}: {error}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    layers.set_logging(False)
    anyio.run(main, backend=args.backend)
