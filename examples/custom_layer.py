"""Custom layers: one made from a function, one written as a class.

* ``bearer_auth`` adds an ``Authorization`` header to every request. It is a
  function from the inner service to a new service, made into a layer by
  ``layers.layer_fn``: a custom layer in a few lines.
* ``Shed`` is a load shedder: it lets at most ``max_in_flight`` calls run at
  once and refuses the others at once with ``layers.Overloaded``, without
  calling the inner service. It is a class, as the built-in layers are: a
  frozen attrs configuration whose ``layer()`` only builds a ``ShedService``.
  Its state (the number of calls in flight) lives in the layer object, so
  every service wrapped by one ``Shed`` shares one limit. When it refuses a
  call it emits a ``LoadShed`` event.

Run it on both backends (trio needs ``pip install -e '.[trio]'``)::

    python examples/custom_layer.py                    # both backends
    python examples/custom_layer.py --backend trio     # or asyncio
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Mapping
from typing import ClassVar, Generic, Literal, TypeVar, final

import anyio
import attrs

import layers

Req = TypeVar("Req")
Res = TypeVar("Res")


@attrs.frozen
class Request:
    """A tiny HTTP-like request for this example."""

    path: str
    headers: Mapping[str, str] = attrs.field(factory=dict[str, str])


# -- a layer from a function ---------------------------------------------------


def bearer_auth(token: str) -> layers.LayerFn[Request, str, Request, str]:
    """A layer that adds ``Authorization: Bearer <token>`` to every request."""

    def wrap(inner: layers.Service[Request, str]) -> layers.Service[Request, str]:
        async def call(request: Request) -> str:
            headers = {**request.headers, "authorization": f"Bearer {token}"}
            return await inner(attrs.evolve(request, headers=headers))

        return call

    return layers.layer_fn(wrap)


# -- a layer as a class --------------------------------------------------------


@attrs.frozen(kw_only=True)
class LoadShed(layers.Event):
    """A :class:`Shed` layer refused a call: it was at its limit."""

    event: ClassVar[str] = "load_shed"
    level: ClassVar[Literal["debug", "info", "warning", "error"]] = "warning"

    max_in_flight: int


def _at_least_one(
    instance: object, attribute: attrs.Attribute[int], value: object
) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise layers.ConfigurationError(
            f"Shed({attribute.name}={value!r}): {attribute.name} must be an "
            f"int >= 1, got {value!r}"
        )


@attrs.define(eq=False)
class _ShedState:
    """The mutable part, shared by every service that one Shed wraps."""

    in_flight: int = 0


@final
@attrs.frozen(kw_only=True)
class Shed:
    """Refuse calls beyond *max_in_flight* at once with ``layers.Overloaded``.

    Args:
        max_in_flight: How many calls may run at once, an int >= 1.
        name: A name for errors and events.
    """

    max_in_flight: int = attrs.field(validator=_at_least_one)
    name: str = "shed"
    _state: _ShedState = attrs.field(factory=_ShedState, init=False, repr=False)

    def layer(self, inner: layers.Service[Req, Res], /) -> ShedService[Req, Res]:
        """Wrap *inner*; nothing else happens here."""
        return ShedService(inner, self, self._state)

    @property
    def in_flight(self) -> int:
        """How many calls are running through this layer now."""
        return self._state.in_flight


@final
class ShedService(Generic[Req, Res]):
    """The service that :class:`Shed` builds."""

    # built_by and inner show the stack to layers.layers_of() and friends.
    __slots__ = ("_state", "built_by", "inner")

    def __init__(
        self, inner: layers.Service[Req, Res], layer: Shed, state: _ShedState
    ) -> None:
        self.inner = inner
        self.built_by = layer
        self._state = state

    async def __call__(self, request: Req, /) -> Res:
        state = self._state
        # No await between the check and the increment: no other task can
        # run in between, so no lock is needed.
        if state.in_flight >= self.built_by.max_in_flight:
            raise self._refuse()
        state.in_flight += 1
        try:
            return await self.inner(request)
        finally:  # also when the call is cancelled
            state.in_flight -= 1

    def _refuse(self) -> layers.Overloaded:
        # Off the success path: the event is built only if a sink listens.
        layer = self.built_by
        if layers.events.STATE.sinks:
            layers.events.emit(
                LoadShed(layer=layer.name, max_in_flight=layer.max_in_flight)
            )
        return layers.Overloaded(
            f"{layer.max_in_flight} calls already in flight",
            layer=layer.name,
            reason="queue_full",  # the word ConcurrencyLimit uses for the same refusal
        )


# -- using them ----------------------------------------------------------------


async def api(request: Request) -> str:
    """The fake downstream: 100 ms per call, and it wants a token."""
    await anyio.sleep(0.1)
    if "authorization" not in request.headers:
        return f"401 {request.path}"
    return f"200 {request.path} (authorized)"


def print_event(event: layers.Event) -> None:
    fields = " ".join(f"{k}={v!r}" for k, v in event.fields().items())
    print(f"    event: {event.event} {fields}")


async def main() -> None:
    shed = Shed(max_in_flight=2, name="api-shed")
    client = (
        layers.ServiceBuilder()
        .layer(shed)
        .layer(bearer_auth("not-a-real-token"))
        .service(api)
    )

    print("  one call, the auth layer adds the header:")
    print(f"    -> {await client(Request('/users'))}")

    async def call(service: layers.Service[Request, str], path: str) -> None:
        try:
            print(f"    {path} -> {await service(Request(path))}")
        except layers.Overloaded as error:  # a Rejected: api was not called
            print(f"    {path} -> Overloaded: {error}")

    print("  three calls at once, max_in_flight=2:")
    async with anyio.create_task_group() as tg:
        for n in range(1, 4):
            tg.start_soon(call, client, f"/users/{n}")
            await anyio.sleep(0.01)  # start them in order

    # The same Shed object wraps a second service: they share one limit.
    reports = layers.ServiceBuilder().layer(shed).service(api)
    print("  two calls on client, then one on reports (the same Shed):")
    async with anyio.create_task_group() as tg:
        for n in range(4, 6):
            tg.start_soon(call, client, f"/users/{n}")
            await anyio.sleep(0.01)
        print(f"    in flight through the shed: {shed.in_flight}")
        tg.start_soon(call, reports, "/reports")
    print(f"  in flight at the end: {shed.in_flight}")


def cli() -> int:
    parser = argparse.ArgumentParser(description="Run the custom layers.")
    parser.add_argument(
        "--backend", choices=["asyncio", "trio", "both"], default="both"
    )
    backend: str = parser.parse_args().backend
    layers.set_logging(False)  # print events ourselves, briefly
    layers.add_sink(print_event)
    has_trio = importlib.util.find_spec("trio") is not None
    if backend == "trio" and not has_trio:
        print("trio is not installed: pip install -e '.[trio]'")
        return 1
    run_on = ["asyncio", "trio"] if backend == "both" else [backend]
    for name in run_on:
        if name == "trio" and not has_trio:
            print("== trio == skipped: pip install -e '.[trio]'")
            continue
        print(f"== {name} ==")
        anyio.run(main, backend=name)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
