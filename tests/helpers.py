"""Helpers shared by several test modules."""

from __future__ import annotations

from typing import Any

import pytest

import layers
from layers import Service, layer_fn


def recording(name: str, seen: list[str]) -> layers.LayerFn[Any, Any, Any, Any]:
    """A layer that records the request going in and the response coming out."""

    def wrap(inner: Service[Any, Any]) -> Service[Any, Any]:
        async def call(request: Any) -> Any:
            seen.append(f"{name} in")
            response = await inner(request)
            seen.append(f"{name} out")
            return response

        return call

    return layer_fn(wrap)


CANCEL_ORDERS = ["newest_first", "oldest_first", "every_other"]
"""The orders in which the mass-cancellation tests cancel waiters."""


def cancelled_waiters(order: str, count: int) -> list[int]:
    """Which of *count* waiters (by arrival) to cancel, in which order.

    ``newest_first``: the newest two thirds, newest first (a search from the
    front would be quadratic); ``oldest_first``: the oldest third;
    ``every_other``: the odd ones.
    """
    if order == "newest_first":
        return list(range(count - 1, count // 3, -1))
    if order == "oldest_first":
        return list(range(count // 3))
    assert order == "every_other", order
    return list(range(1, count, 2))


@pytest.fixture(autouse=True)
def quiet_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """No structlog output: only the sinks a test installs.

    Autouse in every test module that imports it.
    """
    monkeypatch.setattr(layers.events.STATE, "sinks", ())
