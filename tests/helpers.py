"""Helpers shared by several test modules."""

from __future__ import annotations

import gc
import importlib
import pkgutil
import sys
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


class Maintenance:
    """A user's own layer: refuses every call while in maintenance; observable."""

    kind = "maintenance"

    def __init__(self, name: str = "maintenance", *, switches: float = 1) -> None:
        self.name = name
        self.on = False
        self.inside = 0
        self.refused = 0
        self.switches = switches

    def layer(self, inner: layers.Service[int, int], /) -> layers.Service[int, int]:
        """Wrap *inner*: refuse while in maintenance."""

        async def service(request: int, /) -> int:
            if self.on:
                self.refused += 1
                raise layers.Rejected("in maintenance", layer=self.name)
            self.inside += 1
            try:
                return await inner(request)
            finally:
                self.inside -= 1

        return service

    def observe(self) -> layers.Observation:
        """Unhealthy in maintenance; the calls inside and refused, a figure."""
        return layers.Observation(
            status=(
                layers.HealthStatus.UNHEALTHY
                if self.on
                else layers.HealthStatus.HEALTHY
            ),
            state="maintenance" if self.on else "serving",
            in_flight=self.inside,
            rejected=self.refused,
            figures={"switches": self.switches},
        )


def package_events() -> list[type[layers.Event]]:
    """Every subclass of Event that a module of the package defines."""
    for module in pkgutil.walk_packages(layers.__path__, "layers."):
        importlib.import_module(module.name)
    # attrs replaces each slotted class with a new one: the first class
    # object stays among __subclasses__() until it is collected.
    gc.collect()
    found: list[type[layers.Event]] = []
    pending = [layers.Event]
    while pending:
        for cls in pending.pop().__subclasses__():
            pending.append(cls)
            home = sys.modules.get(cls.__module__)
            if (
                cls.__module__.split(".")[0] == "layers"
                and getattr(home, cls.__qualname__, None) is cls
            ):
                found.append(cls)
    return found


@pytest.fixture(name="anyio_backend")
def uvloop_backend() -> tuple[str, dict[str, Any]]:
    """Run on asyncio with uvloop's event loop and the real clock.

    The ``anyio_backend`` of the uvloop smoke tests: ``from helpers import
    uvloop_backend as uvloop_backend`` in a module that imported uvloop
    (``pytest.importorskip``).
    """
    import uvloop

    return ("asyncio", {"loop_factory": uvloop.new_event_loop})
