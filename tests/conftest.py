"""Shared pytest configuration: backends on virtual time, hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from redis_server import RedisServer, redis_required, redis_server_path

from layers.testing import virtual_time_backend

# No per-example deadline: virtual time makes wall-clock timing meaningless,
# and shared CI machines are slow. CI also derandomizes, so a failure there
# reproduces with the same examples.
hypothesis.settings.register_profile("dev", deadline=None)
hypothesis.settings.register_profile(
    "ci", deadline=None, derandomize=True, print_blob=True
)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    # Every async test runs on both backends, on virtual time with a fresh
    # clock that starts at 0 and jumps to the next deadline when all tasks wait.
    # Tests marked `realtime` override this fixture to use the real clock.
    # The same recipe that layers.testing documents for users' own tests.
    return virtual_time_backend(request.param)


# ------------------------------------------------------------------- Redis
# A real redis-server (Debian's package), never a fake. Tests that use these
# fixtures are skipped where redis-server is not on the PATH, and the run
# says so at its end; with LAYERS_REQUIRE_REDIS=1 (.ci/run) that is an error.

_NO_REDIS = "redis-server is not on the PATH: the Redis tests are skipped"


def _need_redis() -> None:
    if redis_server_path() is None:
        if redis_required():
            pytest.fail(f"{_NO_REDIS} (and LAYERS_REQUIRE_REDIS is set)")
        pytest.skip(_NO_REDIS)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session, on a free port, in a temporary directory."""
    _need_redis()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's server, emptied for this test."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # a test before this one stopped it
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, that it may kill, restart or freeze."""
    _need_redis()
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def redis_server_on_path() -> str:
    """The redis-server executable, for a test whose subprocess starts its own."""
    _need_redis()
    path = redis_server_path()
    assert path is not None
    return path


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    """A layers.redis.RedisConnection to the session's (emptied) server."""
    from layers.redis import RedisConnection

    async with RedisConnection.from_url(redis_url) as connection:
        yield connection


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if any(_NO_REDIS in str(getattr(report, "longrepr", "")) for report in skipped):
        terminalreporter.write_line(
            f"NOTE: {_NO_REDIS}; install it (Debian: apt-get install redis-server) "
            "to run them.",
            yellow=True,
            bold=True,
        )
