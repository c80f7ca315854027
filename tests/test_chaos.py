"""Tests of fault injection: InjectError, InjectLatency, InjectResult."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

import layers
from layers.testing import MockService, capture_events

pytestmark = pytest.mark.anyio


def ok_service() -> MockService[int, str]:
    """An inner service that always answers "ok"."""
    return MockService[int, str]().respond_always("ok")


async def outcomes(svc: layers.Service[int, str], count: int) -> list[str]:
    """Call *svc* *count* times; each answer, or the type of the error raised."""
    seen: list[str] = []
    for i in range(count):
        try:
            seen.append(await svc(i))
        except Exception as error:
            seen.append(type(error).__name__)
    return seen


async def test_error_at_a_rate_with_a_seed_is_reproducible() -> None:
    """The same seed injects into the same calls; the share is near the rate."""
    runs = []
    for _ in range(2):
        chaos = layers.InjectError(ConnectionError, rate=0.3, seed=7)
        runs.append(await outcomes(chaos.layer(ok_service()), 1000))
    assert runs[0] == runs[1]
    injected = runs[0].count("ConnectionError")
    assert 250 < injected < 350
    assert chaos.statistics() == layers.InjectionStatistics(
        enabled=True, rate=0.3, calls=1000, injected=injected
    )


async def test_error_skips_the_inner_call_and_emits_an_event() -> None:
    """An injected error never reaches the inner service; the event names its type."""
    mock = ok_service()
    svc = layers.InjectError(ConnectionError, rate=1.0, name="chaos").layer(mock)
    with (
        capture_events(layers.events.FaultInjected) as seen,
        pytest.raises(ConnectionError, match="injected by 'chaos'"),
    ):
        await svc(1)
    assert mock.calls == 0
    assert seen == [
        layers.events.FaultInjected(
            layer="chaos", fault="error", error="ConnectionError"
        )
    ]


async def test_error_factory_makes_each_exception() -> None:
    """error= may be a function returning a new exception each time."""
    made: list[Exception] = []

    def make() -> Exception:
        made.append(TimeoutError("slow"))
        return made[-1]

    svc = layers.InjectError(make, rate=1.0).layer(ok_service())
    for _ in range(2):
        with pytest.raises(TimeoutError) as info:
            await svc(1)
        assert info.value is made[-1]
    assert len(made) == 2


async def test_error_factory_returning_junk_is_a_callback_error() -> None:
    """A factory that returns no exception raises CallbackError naming error."""
    svc = layers.InjectError(lambda: "oops", rate=1.0).layer(ok_service())  # type: ignore[arg-type,return-value]
    with pytest.raises(layers.CallbackError, match="InjectError 'inject_error'"):
        await svc(1)


async def test_switch_on_and_off_at_run_time() -> None:
    """disable() stops injecting at once, enable() resumes, set_rate() changes it."""
    chaos = layers.InjectError(ConnectionError, rate=1.0, enabled=False)
    svc = chaos.layer(ok_service())
    assert not chaos.enabled
    assert await outcomes(svc, 2) == ["ok", "ok"]
    assert chaos.statistics().calls == 0  # nothing drawn while off
    chaos.enable()
    assert await outcomes(svc, 1) == ["ConnectionError"]
    chaos.set_rate(0.0)
    assert chaos.rate == 0.0
    assert await outcomes(svc, 1) == ["ok"]
    chaos.set_rate(1)
    chaos.disable()
    assert await outcomes(svc, 1) == ["ok"]
    assert chaos.observe().state == "disabled"


async def test_latency_delays_then_calls() -> None:
    """An injected latency sleeps the delay (virtual time), then calls the inner."""
    mock = ok_service()
    chaos = layers.InjectLatency(2.5, rate=1.0)
    svc = chaos.layer(mock)
    with capture_events(layers.events.FaultInjected) as seen:
        assert await svc(1) == "ok"
    assert anyio.current_time() == 2.5
    assert mock.calls == 1
    assert seen[0].fault == "latency"
    assert seen[0].delay == 2.5


async def test_latency_is_cancelled_by_an_outer_timeout() -> None:
    """The injected delay can be cancelled: an outer Timeout fires during it."""
    mock = ok_service()
    svc = layers.ServiceBuilder().timeout(1).inject_latency(10, rate=1.0).service(mock)
    with pytest.raises(layers.Elapsed):
        await svc(1)
    assert anyio.current_time() == pytest.approx(1)
    assert mock.calls == 0


async def test_result_replaces_the_call() -> None:
    """An injected result is returned without calling the inner service."""
    mock = ok_service()
    svc = layers.InjectResult("stale", rate=1.0).layer(mock)
    with capture_events(layers.events.FaultInjected) as seen:
        assert await svc(1) == "stale"
    assert mock.calls == 0
    assert seen == [layers.events.FaultInjected(layer="inject_result", fault="result")]


async def test_random_source_is_used() -> None:
    """random= gives the draws; a source that always draws 0.5 injects at rate 0.6."""

    class Half(random.Random):
        def random(self) -> float:
            return 0.5

    svc = layers.InjectResult("x", rate=0.6, random=Half()).layer(ok_service())
    assert await svc(1) == "x"
    svc = layers.InjectResult("x", rate=0.4, random=Half()).layer(ok_service())
    assert await svc(1) == "ok"


async def test_default_rate_is_polly_s() -> None:
    """The default rate is 0.001, Polly's."""
    assert layers.InjectError(ConnectionError).rate == 0.001
    assert layers.InjectLatency(1).rate == 0.001
    assert layers.InjectResult(1).rate == 0.001


async def test_cancellation_while_waiting_the_latency() -> None:
    """A caller cancelled during the injected delay leaves; nothing is called."""
    mock = ok_service()
    svc = layers.InjectLatency(5, rate=1.0).layer(mock)
    with anyio.move_on_after(1):
        await svc(1)
    assert mock.calls == 0


async def test_one_layer_shared_by_services() -> None:
    """One layer object switches every service it wraps."""
    chaos = layers.InjectError(ConnectionError, rate=1.0)
    one, two = chaos.layer(ok_service()), chaos.layer(ok_service())
    chaos.disable()
    assert await one(1) == await two(1) == "ok"


def test_observe() -> None:
    """observe(): the state, the rate and the counts, under kind fault_injection."""
    chaos = layers.InjectLatency(1, rate=0.5)
    assert isinstance(chaos, layers.Observable)
    observation = chaos.observe()
    assert observation.state == "enabled"
    assert observation.figures == {"rate": 0.5, "calls": 0, "injected": 0}
    assert chaos.kind == "fault_injection"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: layers.InjectError(ConnectionError("x")),
            r"\(error=Connection.*not an",
        ),
        (lambda: layers.InjectError(KeyboardInterrupt), r"InjectError\(error="),
        (lambda: layers.InjectError(3), r"InjectError\(error=3\)"),
        (
            lambda: layers.InjectError(OSError, rate=1.5),
            r"InjectError\(rate=1.5\): rate must be a number from 0 to 1",
        ),
        (lambda: layers.InjectError(OSError, rate=-0.1), r"rate must be a number"),
        (lambda: layers.InjectLatency(-1), r"InjectLatency\(delay=-1\)"),
        (lambda: layers.InjectResult(1, enabled=1), r"InjectResult\(enabled=1\)"),
        (lambda: layers.InjectResult(1, seed="a"), r"InjectResult\(seed='a'\)"),
        (lambda: layers.InjectResult(1, random=3), r"InjectResult\(random=3\)"),
        (
            lambda: layers.InjectResult(1, seed=1, random=random.Random()),
            r"InjectResult\(seed=1, random=.*not both",
        ),
        (lambda: layers.InjectResult(1, name=""), r"InjectResult\(name=''\)"),
        (
            lambda: layers.InjectResult(1).set_rate(2),
            r"InjectResult.set_rate\(rate=2\)",
        ),
    ],
)
def test_bad_configuration_names_the_parameter(make: Any, match: str) -> None:
    """Bad options raise ConfigurationError naming the parameter and value."""
    with pytest.raises(layers.ConfigurationError, match=match):
        make()


async def test_builder_methods() -> None:
    """.inject_error(), .inject_latency() and .inject_result() add the layers."""
    svc = layers.ServiceBuilder().inject_result("x", rate=1.0).service(ok_service())
    assert await svc(1) == "x"
    svc = (
        layers.ServiceBuilder()
        .inject_error(ConnectionError, rate=1.0, seed=1)
        .service(ok_service())
    )
    with pytest.raises(ConnectionError):
        await svc(1)


async def test_testing_flaky_and_slow_are_seeded_injections() -> None:
    """layers.testing.flaky and slow: the injection layers with a fixed seed."""
    from layers.testing import flaky, slow

    runs = [await outcomes(flaky(ok_service(), rate=0.5), 20) for _ in range(2)]
    assert runs[0] == runs[1]
    assert "ConnectionError" in runs[0]
    assert "ok" in runs[0]
    svc = slow(ok_service(), 3)
    assert await svc(1) == "ok"
    assert anyio.current_time() == 3
