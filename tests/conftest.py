"""Shared pytest configuration: backends on virtual time, hypothesis profiles."""

from __future__ import annotations

import os
from typing import Any

import hypothesis
import pytest

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
