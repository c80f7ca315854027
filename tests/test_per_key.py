"""PerKey: one layer per key, bounded, never forgetting a key a breaker protects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

import layers
from layers import KeyTableFull, PerKey, PerKeyStatistics
from layers.events import PerKeyRejected
from layers.testing import capture_events

pytestmark = pytest.mark.anyio


def same(request: str) -> str:
    """The key of a request is the request itself (a tenant's name)."""
    return request


def flaky_breaker(
    made: dict[str, layers.CircuitBreaker],
) -> Callable[[str], layers.CircuitBreaker]:
    """A factory of breakers that open after 2 failures, for 30 s."""

    def breaker(key: str) -> layers.CircuitBreaker:
        made[key] = layers.CircuitBreaker(
            name=key,
            window_size=2,
            min_calls=2,
            open_duration=30,
            probes=1,
        )
        return made[key]

    return breaker


class Backend:
    """The key "down" fails, every other key answers; records the keys called."""

    def __init__(self) -> None:
        self.called: list[str] = []

    async def __call__(self, request: str) -> str:
        self.called.append(request)
        if request == "down":
            raise ConnectionError("down is down")
        return request


async def open_down(service: layers.Service[str, str]) -> None:
    """Fail "down" twice, so that its breaker opens."""
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await service("down")


async def test_each_key_has_its_own_breaker() -> None:
    """A failing key opens its own breaker; another key still works."""
    made: dict[str, layers.CircuitBreaker] = {}
    service = PerKey(flaky_breaker(made), key=same).layer(Backend())
    await open_down(service)
    with pytest.raises(layers.CircuitOpen):
        await service("down")
    assert await service("up") == "up"
    assert made["down"].state is layers.CircuitState.OPEN
    assert made["up"].state is layers.CircuitState.CLOSED


async def test_the_table_is_bounded_least_recently_used_first() -> None:
    """At most max_keys layers are kept; the least recently used goes first."""
    made: list[str] = []

    def limit(key: str) -> layers.ConcurrencyLimit:
        made.append(key)
        return layers.ConcurrencyLimit(1)

    per_key = PerKey(limit, key=same, max_keys=2)
    service = per_key.layer(Backend())
    for key in ["a", "b", "a", "c", "a", "b"]:
        await service(key)
    # a stays (recently used); b is dropped when c arrives and made again
    assert made == ["a", "b", "c", "b"]
    assert per_key.statistics() == PerKeyStatistics(
        keys=2, protected=0, rejected=0, max_keys=2
    )


async def test_layers_per_key_are_shared_by_every_wrapped_service() -> None:
    """The state lives in the PerKey: two services it wraps share each key's breaker."""
    made: dict[str, layers.CircuitBreaker] = {}
    builder = layers.ServiceBuilder().layer(PerKey(flaky_breaker(made), key=same))
    first, second = Backend(), Backend()
    one, other = builder.service(first), builder.service(second)
    with pytest.raises(ConnectionError):
        await one("down")
    with pytest.raises(ConnectionError):
        await other("down")
    with pytest.raises(layers.CircuitOpen):  # tripped by the two together
        await one("down")
    assert list(made) == ["down"]  # one breaker for the key, not one per service
    assert await other("up") == "up"
    assert (first.called, second.called) == (["down"], ["down", "up"])


async def test_an_open_breaker_is_not_evicted() -> None:
    """A full table evicts a closed key, never the one whose breaker is open."""
    made: dict[str, layers.CircuitBreaker] = {}
    backend = Backend()
    service = PerKey(flaky_breaker(made), key=same, max_keys=2).layer(backend)
    await open_down(service)
    for key in ["a", "b", "c", "d"]:  # "down" is now the least recently used
        assert await service(key) == key
    backend.called.clear()
    with pytest.raises(layers.CircuitOpen):
        await service("down")
    assert backend.called == []  # the failing key was not called again


async def test_a_table_full_of_open_breakers_refuses_a_new_key() -> None:
    """Every kept key protected: a new one is refused (KeyTableFull), bound kept."""
    made: dict[str, layers.CircuitBreaker] = {}
    backend = Backend()
    per_key = PerKey(flaky_breaker(made), key=same, max_keys=1, name="tenants")
    service = per_key.layer(backend)
    with capture_events(PerKeyRejected) as events:
        await open_down(service)
        await anyio.sleep(10)
        backend.called.clear()
        with pytest.raises(KeyTableFull) as raised:
            await service("new")
        assert backend.called == []
        assert "new" not in made
        assert isinstance(raised.value, layers.Rejected)
        assert raised.value.retry_after == pytest.approx(20, abs=0.01)
        assert raised.value.layer == "tenants"
        assert "max_keys" in str(raised.value)
        assert per_key.statistics() == PerKeyStatistics(
            keys=1, protected=1, rejected=1, max_keys=1
        )
        with pytest.raises(layers.CircuitOpen):  # still protected
            await service("down")
        # once the open period is over, its protection has lapsed: evicted
        await anyio.sleep(20)
        assert await service("new") == "new"
    assert backend.called == ["new"]
    (event,) = events
    assert (event.layer, event.max_keys) == ("tenants", 1)
    assert event.retry_after == pytest.approx(20, abs=0.01)
    assert (event.event, event.kind, event.level) == (
        "per_key_rejected",
        "per_key",
        "warning",
    )


async def test_a_forced_open_breaker_is_kept() -> None:
    """A breaker forced open by hand is kept however full the table gets."""
    made: dict[str, layers.CircuitBreaker] = {}
    backend = Backend()
    service = PerKey(flaky_breaker(made), key=same, max_keys=2).layer(backend)
    assert await service("kept") == "kept"
    made["kept"].force_open()
    for key in ["a", "b", "c"]:
        assert await service(key) == key
    with pytest.raises(layers.CircuitOpen):
        await service("kept")
    assert backend.called == ["kept", "a", "b", "c"]


@pytest.mark.parametrize("wrap", ["builder", "stack"])
async def test_breakers_inside_a_builder_or_a_stack_count(wrap: str) -> None:
    """A factory returning a ServiceBuilder or a Stack with a breaker is protected."""
    made: dict[str, layers.CircuitBreaker] = {}
    make = flaky_breaker(made)

    def stack(key: str) -> Any:
        builder = layers.ServiceBuilder().timeout(5).layer(make(key))
        return builder if wrap == "builder" else layers.Stack(builder)

    backend = Backend()
    service = PerKey(stack, key=same, max_keys=2).layer(backend)
    await open_down(service)
    for key in ["a", "b", "c"]:
        assert await service(key) == key
    backend.called.clear()
    with pytest.raises(layers.CircuitOpen):
        await service("down")
    assert backend.called == []


async def test_a_half_open_breaker_with_a_probe_running_is_kept() -> None:
    """A half-open breaker whose probe is running is not evicted."""
    made: dict[str, layers.CircuitBreaker] = {}
    release = anyio.Event()
    fail = True

    async def backend(request: str) -> str:
        if request == "down":
            if fail:
                raise ConnectionError
            await release.wait()  # the probe hangs
        return request

    per_key = PerKey(flaky_breaker(made), key=same, max_keys=1)
    service = per_key.layer(backend)
    await open_down(service)
    await anyio.sleep(31)
    fail = False
    async with anyio.create_task_group() as group:
        group.start_soon(service, "down")  # the probe
        await anyio.sleep(1)
        assert made["down"].state is layers.CircuitState.HALF_OPEN
        with pytest.raises(KeyTableFull) as raised:
            await service("new")
        assert raised.value.retry_after is None  # until the probe ends
        release.set()
    assert made["down"].state is layers.CircuitState.CLOSED
    assert await service("new") == "new"


async def test_a_closed_key_is_forgotten_before_a_lapsed_one() -> None:
    """A closed key goes first; an open breaker past its open time goes next."""
    made: dict[str, layers.CircuitBreaker] = {}
    factory = flaky_breaker(made)
    calls: list[str] = []

    def counted(key: str) -> layers.CircuitBreaker:
        calls.append(key)
        return factory(key)

    service = PerKey(counted, key=same, max_keys=2).layer(Backend())
    await open_down(service)
    await anyio.sleep(31)  # down's open period is over: lapsed
    await service("b")
    await service("c")  # b (closed) is forgotten
    await service("d")  # c too: closed goes first
    with pytest.raises(ConnectionError):
        await service("down")  # its breaker, kept, lets a probe by
    assert calls == ["down", "b", "c", "d"]
    assert made["down"].state is layers.CircuitState.OPEN  # re-tripped


async def test_an_unhashable_key_is_a_clear_error() -> None:
    """A key function returning an unhashable value: a CallbackError naming key."""
    service = PerKey(lambda key: layers.Identity(), key=lambda request: [1]).layer(
        Backend()
    )
    with pytest.raises(layers.CallbackError, match=r"PerKey .*key=.*hashable.*list"):
        await service("a")


def test_bad_configuration_is_a_clear_error() -> None:
    """A bad bound or a bad type is a ConfigurationError, each named."""
    with pytest.raises(layers.ConfigurationError, match=r"PerKey\(max_keys=0\)"):
        PerKey(lambda key: layers.Identity(), key=same, max_keys=0)
    with pytest.raises(
        layers.ConfigurationError, match=r"PerKey\(factory=None\).*must be callable"
    ):
        PerKey(None, key=same)  # type: ignore[arg-type]
    with pytest.raises(
        layers.ConfigurationError, match=r"PerKey\(key=3\).*must be callable"
    ):
        PerKey(lambda key: layers.Identity(), key=3)  # type: ignore[arg-type]
    with pytest.raises(
        layers.ConfigurationError, match=r"PerKey\(name=1\).*must be a string"
    ):
        PerKey(lambda key: layers.Identity(), key=same, name=1)  # type: ignore[arg-type]


async def test_a_factory_that_returns_no_layer_is_a_clear_error() -> None:
    """factory(key) must return a layer: a CallbackError naming it, at the call."""
    service = PerKey(lambda key: 42, key=same).layer(Backend())  # type: ignore[arg-type,return-value]
    with pytest.raises(layers.CallbackError, match=r"factory\(key\)"):
        await service("a")


async def test_it_is_observable() -> None:
    """observe() gives the refusals and the table's figures, by shared names."""
    made: dict[str, layers.CircuitBreaker] = {}
    per_key = PerKey(flaky_breaker(made), key=same, max_keys=1, name="tenants")
    service = per_key.layer(Backend())
    assert isinstance(per_key, layers.Observable)
    assert (per_key.name, per_key.kind) == ("tenants", "per_key")
    await open_down(service)
    with pytest.raises(KeyTableFull):
        await service("new")
    observation = per_key.observe()
    assert observation.status is layers.HealthStatus.HEALTHY
    assert observation.rejected == 1
    assert dict(observation.figures) == {"keys": 1, "protected": 1, "max_keys": 1}
    assert "PerKey(flaky_breaker.<locals>.breaker, max_keys=1" in repr(per_key)


def test_public_homes() -> None:
    """PerKey and KeyTableFull live in layers, its event in layers.events."""
    assert layers.PerKey.__module__ == "layers"
    assert layers.KeyTableFull.__module__ == "layers"
    assert layers.events.PerKeyRejected.__module__ == "layers.events"
    assert "PerKeyRejected" not in layers.__all__


def test_a_per_key_service_shows_in_the_stack() -> None:
    """layers_of walks through a PerKey to the service it wraps."""
    per_key = PerKey(lambda key: layers.Identity(), key=same)
    timeout = layers.Timeout(5)
    backend = Backend()
    service = timeout.layer(per_key.layer(backend))
    assert layers.layers_of(service) == (timeout, per_key)
    assert layers.inner_of(layers.inner_of(service)) is backend
