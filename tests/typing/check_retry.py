"""Type checks: the retry builder method and layer keep the service's types."""

from __future__ import annotations

import random
from typing import assert_type

import layers
from layers import Service, ServiceBuilder


async def fetch(request: int) -> str:
    """A service from int to str."""
    return str(request)


assert_type(
    ServiceBuilder().retry(on=ConnectionError, max_attempts=3).service(fetch),
    Service[int, str],
)
assert_type(
    ServiceBuilder()
    .timeout(10)
    .retry(
        on=(ConnectionError, TimeoutError),
        max_time=5,
        backoff=layers.ExponentialBackoff(jitter="equal", rng=random.Random(1).random),
        budget=layers.RetryBudget(ratio=0.1),
        retry_after=lambda error: 1.0,
        on_result=lambda response: response == "busy",
        prepare=lambda request, attempt: request,
    )
    .timeout(1)
    .service(fetch),
    Service[int, str],
)


def parse(body: bytes) -> int:
    """Maps a request."""
    return int(body)


assert_type(
    ServiceBuilder()
    .map_request(parse)
    .retry(on=lambda error: True, max_attempts=2, backoff=[0.1, 1], budget=None)
    .service(fetch),
    Service[bytes, str],
)
assert_type(
    ServiceBuilder()
    .retry(on=OSError, max_attempts=2, backoff=lambda attempt: attempt * 0.5)
    .service(fetch),
    Service[int, str],
)
assert_type(
    layers.Retry(on=OSError, max_attempts=2).layer(fetch),
    Service[int, str],
)
assert_type(
    ServiceBuilder().layer(layers.Retry(on=OSError, max_attempts=2)).service(fetch),
    Service[int, str],
)
assert_type(layers.current_attempt(), int)
assert_type(layers.RetryBudget().withdraw(), bool)


async def retried_block() -> str:
    """The block form: each attempt is an Attempt, a response keeps its type."""
    retry = layers.Retry(on=ConnectionError, max_attempts=3)
    response = ""
    async for attempt in retry:
        assert_type(attempt, layers.Attempt)
        assert_type(attempt.number, int)
        assert_type(attempt.delay, float)
        with attempt:
            response = attempt.result(await fetch(attempt.number))
            assert_type(response, str)
    async for attempt in retry.attempts():
        with attempt as entered:
            assert_type(entered, layers.Attempt)
    return response
