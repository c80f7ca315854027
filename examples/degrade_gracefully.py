"""Coalesce, Fallback and fault injection together, on asyncio and trio.

Run it with ``python examples/degrade_gracefully.py [--backend asyncio|trio]``.
A product page reads a user from a database and asks a recommender for
suggestions. It shows:

1. a cache stampede: 1,000 concurrent requests for one user make one
   database query (``Coalesce``);
2. a recommender that fails: the page gets an empty shelf instead of an
   error, first for the errors, then for the calls the open breaker refuses
   (``Fallback``);
3. a game day: a fault injection layer switched on at run time fails 20 %
   of the recommender calls; retries and the fallback absorb them, and
   switching it off stops them at once (``InjectError``).
"""

from __future__ import annotations

import argparse

import anyio

import layers
from layers.events import FallbackUsed
from layers.testing import capture_events


async def stampede() -> None:
    queries: list[int] = []

    async def load_user(user_id: int) -> dict[str, object]:
        queries.append(user_id)
        await anyio.sleep(0.05)  # the database
        return {"id": user_id, "name": "Ada"}

    users = layers.ServiceBuilder().timeout(1.0).coalesce().service(load_user)
    answers: list[dict[str, object]] = []

    async def request() -> None:
        answers.append(await users(1))

    async with anyio.create_task_group() as group:
        for _ in range(1000):
            group.start_soon(request)
    shared = all(answer is answers[0] for answer in answers)
    print(f"stampede: {len(answers)} requests, {len(queries)} database query")
    print(f"every request got the same answer object: {shared}")


async def failing_recommender() -> None:
    async def recommend(user_id: int) -> list[str]:
        raise ConnectionError("recommender unreachable")

    breaker = layers.CircuitBreaker(
        name="recommender", window_size=3, min_calls=3, failure_rate_threshold=0.5
    )
    shelf = (
        layers.ServiceBuilder()
        .fallback(list[str](), on=ConnectionError, name="empty-shelf")
        .layer(breaker)
        .service(recommend)
    )
    with capture_events(FallbackUsed) as seen:
        for _ in range(5):
            assert await shelf(1) == []
    for event in seen:
        print(f"shelf: [] in place of {event.error} ({event.reason})")
    print(f"breaker: {breaker.state}")


async def game_day() -> None:
    async def recommend(user_id: int) -> list[str]:
        return ["tea", "cups"]

    chaos = layers.InjectError(
        ConnectionError, rate=0.2, seed=7, enabled=False, name="game-day"
    )
    shelf = (
        layers.ServiceBuilder()
        .fallback(list[str](), on=ConnectionError)
        .retry(on=ConnectionError, max_attempts=2, backoff=[0.001])
        .layer(chaos)
        .service(recommend)
    )
    chaos.enable()
    empty = sum([await shelf(1) == [] for _ in range(100)])
    stats = chaos.statistics()
    print(
        f"game day: {stats.injected} faults injected in {stats.calls} calls; "
        f"{100 - empty} of 100 pages full, {empty} with the fallback"
    )
    chaos.disable()
    before = chaos.statistics().injected
    for _ in range(100):
        await shelf(1)
    print(f"switched off: {chaos.statistics().injected - before} faults in 100 calls")


async def main() -> None:
    await stampede()
    await failing_recommender()
    await game_day()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=("asyncio", "trio"))
    chosen = parser.parse_args().backend
    layers.set_logging(False)  # print our own lines instead of log records
    for backend in [chosen] if chosen else ["asyncio", "trio"]:
        print(f"== {backend} ==")
        anyio.run(main, backend=backend)
