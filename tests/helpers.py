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


@pytest.fixture(autouse=True)
def quiet_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """No structlog output: only the sinks a test installs.

    Autouse in every test module that imports it.
    """
    monkeypatch.setattr(layers.events.STATE, "sinks", ())
