"""AdaptiveConcurrencyLimit and its algorithms: AIMD, Gradient2, Vegas."""

from __future__ import annotations

import math
import random
import re
from typing import Any

import anyio
import hypothesis
import pytest
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from test_asgi import call, hello, http_scope

import layers
from layers.asgi import LayersMiddleware
from layers.events import LimitChanged
from layers.otel import OtelMetrics
from layers.testing import capture_events

# -- the algorithms, by hand ----------------------------------------------------


def test_aimd_grows_by_one_only_when_half_the_limit_is_in_flight() -> None:
    """Aimd grows by one only when half the limit is in flight."""
    aimd = layers.AIMD()
    assert aimd.limit == 20
    assert aimd.update(0.1, 10, False) == 21  # 10 * 2 >= 20
    assert aimd.update(0.1, 10, False) == 21  # 10 * 2 < 21: app-limited
    assert aimd.update(0.1, 11, False) == 22


def test_aimd_drops_and_slow_calls_shrink_by_the_backoff_ratio() -> None:
    """Aimd drops and slow calls shrink by the backoff ratio."""
    aimd = layers.AIMD(initial_limit=50, min_limit=1)
    assert aimd.update(0.1, 50, True) == 45  # int(50 * 0.9)
    assert aimd.update(5.5, 50, False) == 40  # rtt > timeout 5 s: int(45 * 0.9)
    aimd = layers.AIMD(initial_limit=21, backoff_ratio=0.5, min_limit=20)
    assert aimd.update(0.1, 1, True) == 20  # never below min_limit


def test_gradient2_steady_rtt_grows_by_the_queue_size() -> None:
    """Gradient2 steady rtt grows by the queue size."""
    g = layers.Gradient2(min_limit=1)
    # long = short = 1: gradient = min(1, 1.5) = 1;
    # new = 20 + 4; limit = 0.8 * 20 + 0.2 * 24 = 20.8
    assert g.update(1.0, 20, False) == 20
    assert g.estimate == pytest.approx(20.8)
    g.update(1.0, 20, False)
    assert g.estimate == pytest.approx(21.6)


def test_gradient2_rising_rtt_lowers_the_limit() -> None:
    """Gradient2 rising rtt lowers the limit."""
    g = layers.Gradient2(initial_limit=100, min_limit=1)
    for _ in range(10):  # warm-up: the long RTT is the plain average
        g.update(1.0, 100, False)
    before = g.estimate
    g.update(3.0, 100, False)
    factor = 2 / 601
    long = (1 - factor) * 1.0 + factor * 3.0
    gradient = max(0.5, min(1.0, 1.5 * long / 3.0))
    expected = 0.8 * before + 0.2 * (before * gradient + 4)
    assert g.estimate == pytest.approx(expected)
    assert g.estimate < before


def test_gradient2_application_limited_keeps_the_limit() -> None:
    """Gradient2 application limited keeps the limit."""
    g = layers.Gradient2(initial_limit=100, min_limit=1)
    g.update(1.0, 100, False)
    before = g.estimate
    assert g.update(10.0, 49, False) == int(before)  # 49 < 100.8 / 2
    assert g.estimate == before


def test_gradient2_long_rtt_decays_when_twice_the_short() -> None:
    """Gradient2 long rtt decays when twice the short."""
    g = layers.Gradient2(min_limit=1)
    g.update(10.0, 1, False)
    g.update(1.0, 1, False)  # long = 5.5 (average), > 2 x 1: times 0.95
    assert g.long_rtt == pytest.approx(5.5 * 0.95)


def test_gradient2_warm_up_is_the_plain_average_of_the_samples() -> None:
    """The first 10 long RTTs are the samples' average, a decay in between or not.

    Netflix's warm-up keeps the samples' sum, so a 5 % cut of the long RTT
    (long > 2 x short) during the warm-up lasts one sample only.
    """
    g = layers.Gradient2(min_limit=1)
    g.update(10.0, 1, False)
    g.update(1.0, 1, False)  # average 5.5 > 2 x 1: cut to 5.225
    g.update(1.0, 1, False)  # average (10 + 1 + 1) / 3 = 4, > 2 x 1: cut
    assert g.long_rtt == pytest.approx(4.0 * 0.95)


def test_gradient2_queue_size_may_be_a_function_of_the_limit() -> None:
    """Netflix's queueSizeFunction: the allowance is a function of the int limit."""
    seen: list[int] = []

    def queue(limit: int) -> float:
        seen.append(limit)
        return 10.0

    g = layers.Gradient2(initial_limit=30, min_limit=1, queue_size=queue)
    g.update(1.0, 30, False)  # steady: new = 30 * 1 + 10
    assert g.estimate == pytest.approx(0.8 * 30 + 0.2 * 40)
    g.update(1.0, 30, False)
    assert seen == [30, 32]


def test_windowed_gives_one_sample_per_window() -> None:
    """A window's average RTT, its most calls in flight and any drop, once."""
    g = layers.Gradient2(initial_limit=10, min_limit=1)
    windowed = layers.Windowed(g)
    # the first call closes the empty first window (too few samples: none)
    assert windowed.update(0.2, 5, False, start=0.0) == 10
    assert g.samples == 0
    # the next window ends 1 s later (2 x the lowest RTT 0.2, within [1, 1])
    for n in range(20):
        windowed.update(0.1 if n % 2 else 0.3, 6 + n % 3, False, start=0.04 * n)
    assert g.samples == 0  # every call so far ended before 1.2 s
    windowed.update(0.2, 4, True, start=1.1)  # ends at 1.3: the window closes
    assert g.samples == 1
    assert g.long_rtt == pytest.approx(0.2)  # the average of its 21 RTTs
    aimd = layers.AIMD(initial_limit=10, min_limit=1)
    windowed = layers.Windowed(aimd)
    windowed.update(0.2, 5, False, start=0.0)
    for n in range(19):
        windowed.update(0.2, 5, n == 3, start=0.05 * n)  # one drop among them
    assert windowed.update(0.2, 5, False, start=1.1) == 9  # one backoff, not 19
    assert aimd.limit == 9


def test_windowed_discards_short_windows_and_ignores_fast_calls() -> None:
    """Fewer than min_samples: the window is dropped; calls under min_rtt count not."""
    aimd = layers.AIMD(initial_limit=10, min_limit=1)
    windowed = layers.Windowed(aimd, min_time=0.5, max_time=2.0)
    windowed.update(1.0, 10, False, start=0.0)  # closes the first window at 1 s
    for n in range(20):
        windowed.update(0.00001, 10, False, start=1.0 + n * 0.01)  # ignored
    for n in range(8):
        windowed.update(1.0, 10, False, start=0.1 * n)  # ends <= 1.7
    # window: 2 x 1.0 = 2 s (within [0.5, 2]): it ends at 3 s; the call
    # that ends after it makes 9 samples
    windowed.update(1.0, 10, False, start=2.5)
    assert aimd.limit == 10  # discarded: 10 samples are needed
    # the next window: 2 s again, to 5.5 s
    for n in range(10):
        windowed.update(1.0, 10, False, start=3.0 + 0.1 * n)
    assert aimd.limit == 10
    windowed.update(1.0, 10, False, start=4.6)  # ends at 5.6: 11 samples
    assert aimd.limit == 11


def test_vegas_queue_estimate_thresholds() -> None:
    """Vegas queue estimate thresholds."""
    v = layers.Vegas()
    assert v.update(1.0, 20, False) == 20  # first sample: the no-load RTT
    assert v.update(1.0, 20, False) == 26  # queue 0 <= log10 = 1: + beta 6
    assert v.update(2.0, 26, False) == 25  # queue ceil(26 * 0.5) = 13 > 6: - 1
    assert v.update(1.1, 25, False) == 25  # queue ceil(2.27) = 3: alpha..beta
    assert v.update(1.05, 25, False) == 26  # queue ceil(1.19) = 2 < alpha 3: + 1
    assert v.update(1.0, 26, True) == 25  # a drop: - 1
    assert v.update(1.0, 5, False) == 25  # app-limited: 5 * 2 < 25
    assert math.ceil(25 * (1 - 1 / 1.1)) == 3


def vegas_probes(seed: int, samples: int = 250) -> list[int]:
    """The samples at which a Vegas (limit 10, period 100) probed."""
    v = layers.Vegas(initial_limit=10, probe_multiplier=10, seed=seed)
    probes: list[int] = []
    v.update(1.0, 0, False)  # the no-load RTT, 1
    for n in range(2, samples):
        before = v.rtt_noload
        v.update(1.0 + n, 0, False)  # slower each time; app-limited: limit 10
        if v.rtt_noload != before:  # only a probe takes a slower RTT
            probes.append(n)
    return probes


def test_vegas_probes_after_a_random_share_of_the_period() -> None:
    """Netflix's jitter: a probe after 0.5 to 1 times probe_multiplier * limit."""
    draws = random.Random(7)
    jitters = [0.5 + 0.5 * draws.random() for _ in range(2)]
    first = math.ceil(jitters[0] * 100)
    assert vegas_probes(7)[:2] == [first, first + math.ceil(jitters[1] * 100)]
    assert first < 100  # the whole period, 100 samples, would be later
    assert vegas_probes(3) == vegas_probes(3)  # a seed repeats the draws
    assert vegas_probes(3) != vegas_probes(4)


def test_vegas_probes_the_no_load_rtt() -> None:
    """Vegas probes the no load rtt."""
    v = layers.Vegas(initial_limit=2, probe_multiplier=1)
    v.update(1.0, 2, False)
    v.update(5.0, 2, False)  # the second sample: 2 >= 1 * 2, a probe
    assert v.rtt_noload == 5.0


@hypothesis.given(
    kind=st.sampled_from(["aimd", "gradient2", "vegas", "windowed"]),
    samples=st.lists(
        st.tuples(st.floats(0.0001, 100), st.integers(0, 500), st.booleans()),
        max_size=60,
    ),
)
def test_the_limit_stays_within_bounds(
    kind: str, samples: list[tuple[float, int, bool]]
) -> None:
    """The limit stays within bounds."""
    algorithm: layers.AIMD | layers.Gradient2 | layers.Vegas | layers.Windowed
    if kind == "aimd":
        algorithm = layers.AIMD(initial_limit=10, min_limit=3, max_limit=30)
    elif kind == "gradient2":
        algorithm = layers.Gradient2(initial_limit=10, min_limit=3, max_limit=30)
    elif kind == "vegas":
        algorithm = layers.Vegas(initial_limit=10, min_limit=3, max_limit=30)
    else:
        algorithm = layers.Windowed(
            layers.Gradient2(initial_limit=10, min_limit=3, max_limit=30),
            min_time=0.1,
            max_time=0.1,
        )
    for number, (rtt, in_flight, dropped) in enumerate(samples):
        limit = algorithm.update(rtt, in_flight, dropped, start=number * 0.01)
        assert 3 <= limit <= 30
        assert limit == algorithm.limit


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: layers.AIMD(backoff_ratio=1.0), "AIMD(backoff_ratio=1.0)"),
        # Netflix's AIMDLimit refuses a backoff ratio below 0.5
        (lambda: layers.AIMD(backoff_ratio=0.4), "AIMD(backoff_ratio=0.4)"),
        (lambda: layers.Gradient2(queue_size=-1), "Gradient2(queue_size=-1)"),
        (
            lambda: layers.Windowed(layers.AIMD(), min_samples=5),
            "Windowed(min_samples=5)",
        ),
        (lambda: layers.Windowed(layers.AIMD(), min_time=0.05), "Windowed(min_time"),
        (
            lambda: layers.Windowed(layers.AIMD(), min_time=2.0, max_time=1.0),
            "Windowed(min_time=2.0, max_time=1.0)",
        ),
        (lambda: layers.Windowed(20), "Windowed(algorithm=20)"),  # type: ignore[arg-type]
        (
            lambda: layers.Windowed(layers.Windowed(layers.AIMD())),  # type: ignore[arg-type]
            "Windowed(algorithm=Windowed(",
        ),
        (lambda: layers.AIMD(min_limit=0), "AIMD(min_limit=0)"),
        (
            lambda: layers.AIMD(initial_limit=5),
            "AIMD(initial_limit=5, min_limit=20, max_limit=200)",
        ),
        (lambda: layers.Gradient2(smoothing=0), "Gradient2(smoothing=0)"),
        (lambda: layers.Gradient2(tolerance=0.5), "Gradient2(tolerance=0.5)"),
        (lambda: layers.Vegas(probe_multiplier=0), "Vegas(probe_multiplier=0)"),
        (
            lambda: layers.AdaptiveConcurrencyLimit(algorithm=20),  # type: ignore[arg-type]
            "AdaptiveConcurrencyLimit(algorithm=20)",
        ),
        (
            lambda: layers.AdaptiveConcurrencyLimit(max_waiting=-1),
            "AdaptiveConcurrencyLimit(max_waiting=-1)",
        ),
        (
            lambda: layers.AdaptiveConcurrencyLimit(on=KeyboardInterrupt),  # type: ignore[arg-type]
            "AdaptiveConcurrencyLimit(on=",
        ),
    ],
)
def test_bad_configuration_is_named(make: Any, message: str) -> None:
    """Bad configuration is named."""
    with pytest.raises(layers.ConfigurationError, match=re.escape(message)):
        make()


def test_the_layer_works_on_a_copy_of_the_algorithm() -> None:
    """The layer works on a copy of the algorithm."""
    aimd = layers.AIMD(initial_limit=30)
    layers.AdaptiveConcurrencyLimit(algorithm=aimd)
    layers.AdaptiveConcurrencyLimit(algorithm=aimd)
    assert aimd.limit == 30


def test_the_default_is_a_windowed_gradient2() -> None:
    """Netflix's pairing: Gradient2 fed a sample per window (WindowedLimit)."""
    limit = layers.AdaptiveConcurrencyLimit()
    assert limit.algorithm == layers.Windowed(layers.Gradient2())
    (layer,) = layers.layers_of(
        layers.ServiceBuilder().adaptive_concurrency_limit().service(hello_service)
    )
    assert isinstance(layer, layers.AdaptiveConcurrencyLimit)
    assert layer.algorithm == layers.Windowed(layers.Gradient2())


@pytest.mark.anyio
async def test_a_windowed_layer_works_on_a_copy_of_both() -> None:
    """The layer copies the window and the algorithm inside it."""
    aimd = layers.AIMD(initial_limit=10, min_limit=1)
    windowed = layers.Windowed(aimd)
    limit = layers.AdaptiveConcurrencyLimit(windowed)

    async def work(request: int) -> int:
        await anyio.sleep(0.1)
        return request

    svc = limit.layer(work)
    async with anyio.create_task_group() as group:
        for i in range(300):  # about 10 at a time for 3 s: windows close
            group.start_soon(svc, i)
    assert limit.statistics().max_in_flight > 10  # the layer's copy moved
    assert aimd.limit == 10
    assert windowed.limit == 10


# -- the layer, on virtual time --------------------------------------------------


class Downstream:
    """A model: capacity C; latency grows with the calls in flight past C."""

    def __init__(self, capacity: int, base: float = 0.1, refuse: bool = False) -> None:
        self.capacity = capacity
        self.base = base
        self.refuse = refuse
        self.in_flight = 0
        self.peak = 0

    async def __call__(self, request: int) -> int:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.refuse and self.in_flight > self.capacity:
                await anyio.sleep(self.base / 10)
                raise layers.Overloaded("downstream full", layer="downstream")
            await anyio.sleep(self.base * max(1.0, self.in_flight / self.capacity))
            return request
        finally:
            self.in_flight -= 1


async def drive(
    svc: Any, clients: int, calls: int, limit: layers.AdaptiveConcurrencyLimit
) -> list[int]:
    """Drive."""
    """Run *clients* loops of *calls*; the limit every 0.1 s while they run."""
    seen: list[int] = []

    async def client() -> None:
        for i in range(calls):
            try:
                await svc(i)
            except layers.Overloaded:
                await anyio.sleep(0.01)

    async def watch() -> None:
        while True:
            seen.append(limit.statistics().max_in_flight)
            await anyio.sleep(0.1)

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        async with anyio.create_task_group() as load:
            for _ in range(clients):
                load.start_soon(client)
        group.cancel_scope.cancel()
    return seen


@pytest.mark.anyio
async def test_aimd_follows_a_downstream_that_refuses_beyond_its_capacity() -> None:
    """Aimd follows a downstream that refuses beyond its capacity."""
    downstream = Downstream(10, refuse=True)
    limit = layers.AdaptiveConcurrencyLimit(
        algorithm=layers.AIMD(initial_limit=60, min_limit=1)
    )
    seen = await drive(limit.layer(downstream), 60, 40, limit)
    settled = seen[len(seen) // 4 : -len(seen) // 4]
    assert min(settled) >= 5
    assert max(settled) <= 15
    assert limit.statistics().drops > 0


@pytest.mark.anyio
async def test_gradient2_drives_the_limit_down_toward_the_capacity() -> None:
    """Gradient2 drives the limit down toward the capacity."""
    downstream = Downstream(10)
    limit = layers.AdaptiveConcurrencyLimit(
        algorithm=layers.Gradient2(initial_limit=100, min_limit=1, long_window=100)
    )
    svc = limit.layer(downstream)
    await drive(svc, 5, 40, limit)  # unloaded: RTT 0.1 s, the limit stays
    assert limit.statistics().max_in_flight == 100
    seen = await drive(svc, 100, 5, limit)  # 10x the capacity: RTT rises
    assert min(seen) <= 30
    assert limit.statistics().drops == 0


@pytest.mark.anyio
async def test_waiters_are_admitted_when_the_limit_rises() -> None:
    """Waiters are admitted when the limit rises."""
    limit = layers.AdaptiveConcurrencyLimit(
        algorithm=layers.AIMD(initial_limit=1, min_limit=1)
    )
    ends: list[float] = []

    async def work(request: int) -> int:
        await anyio.sleep(1)
        ends.append(anyio.current_time())
        return request

    svc = limit.layer(work)
    start = anyio.current_time()
    async with anyio.create_task_group() as group:
        for i in range(3):
            group.start_soon(svc, i)
    # the first ends at 1 s: limit 2, both waiters run from 1 s to 2 s
    assert [round(t - start, 3) for t in ends] == [1, 2, 2]


@pytest.mark.anyio
async def test_cancelled_inside_or_waiting_gives_no_sample_and_frees_the_permit() -> (
    None
):
    """Cancelled inside or waiting gives no sample and frees the permit."""
    limit = layers.AdaptiveConcurrencyLimit(
        algorithm=layers.AIMD(initial_limit=1, min_limit=1)
    )

    async def forever(request: int) -> int:
        await anyio.sleep(math.inf)
        return request

    svc = limit.layer(forever)
    async with anyio.create_task_group() as group:
        group.start_soon(svc, 1)
        group.start_soon(svc, 2)
        await anyio.sleep(1)
        assert limit.statistics().in_flight == 1
        assert limit.statistics().waiting == 1
        group.cancel_scope.cancel()
    stats = limit.statistics()
    assert (stats.in_flight, stats.waiting, stats.samples, stats.max_in_flight) == (
        0,
        0,
        0,
        1,
    )


@pytest.mark.anyio
async def test_a_call_cut_by_an_outer_timeouts_deadline_is_a_drop() -> None:
    """Netflix's server counts a call its client's deadline cut as dropped.

    A ``Timeout`` outside the limit cancels the call at its deadline: that
    is a drop (the downstream was too slow for the caller), with the time
    until then as its RTT; a cancellation before any deadline is not.
    """
    limit = layers.AdaptiveConcurrencyLimit(
        algorithm=layers.AIMD(initial_limit=10, min_limit=1)
    )

    async def slow(request: int) -> int:
        await anyio.sleep(5)
        return request

    svc = layers.ServiceBuilder().timeout(1.0).layer(limit).service(slow)
    with pytest.raises(layers.Elapsed):
        await svc(1)
    stats = limit.statistics()
    assert (stats.samples, stats.drops, stats.max_in_flight) == (1, 1, 9)
    # cancelled by its task group, under a deadline still far away: no sample
    svc = layers.ServiceBuilder().timeout(60.0).layer(limit).service(slow)
    async with anyio.create_task_group() as group:
        group.start_soon(svc, 2)
        await anyio.sleep(1)
        group.cancel_scope.cancel()
    stats = limit.statistics()
    assert (stats.samples, stats.drops, stats.in_flight) == (1, 1, 0)

    async def block(request: int) -> int:  # the block form, under a Timeout
        async with limit:
            await anyio.sleep(5)
        return request

    with pytest.raises(layers.Elapsed):
        await layers.ServiceBuilder().timeout(1.0).service(block)(3)
    stats = limit.statistics()
    assert (stats.samples, stats.drops, stats.max_in_flight) == (2, 2, 8)


@pytest.mark.anyio
async def test_other_errors_give_no_sample_drops_do() -> None:
    """Other errors give no sample drops do."""
    limit = layers.AdaptiveConcurrencyLimit(
        algorithm=layers.AIMD(initial_limit=10, min_limit=1)
    )
    errors = iter([ValueError("bad"), TimeoutError(), layers.RateLimited("x")])

    async def failing(request: int) -> int:
        raise next(errors)

    svc = limit.layer(failing)
    for _ in range(3):
        with pytest.raises((ValueError, TimeoutError, layers.RateLimited)):
            await svc(1)
    stats = limit.statistics()
    assert (stats.samples, stats.drops, stats.max_in_flight) == (2, 2, 8)


@pytest.mark.anyio
async def test_a_custom_drop_classification() -> None:
    """A custom drop classification."""
    limit = layers.AdaptiveConcurrencyLimit(
        algorithm=layers.AIMD(initial_limit=10, min_limit=1), on=ValueError
    )

    async def failing(request: int) -> int:
        raise ValueError(request)

    with pytest.raises(ValueError, match="1"):
        await limit.layer(failing)(1)
    assert limit.statistics().max_in_flight == 9


@pytest.mark.anyio
async def test_one_limit_changed_event_per_change_and_the_gauge() -> None:
    """One limit changed event per change and the gauge."""
    reader = InMemoryMetricReader()
    metrics = OtelMetrics(MeterProvider(metric_readers=[reader]))
    limit = layers.AdaptiveConcurrencyLimit(
        algorithm=layers.AIMD(initial_limit=1, min_limit=1), name="db"
    )
    metrics.observe(limit)

    async def ok(request: int) -> int:
        return request

    svc = layers.ServiceBuilder().layer(limit).service(ok)
    with capture_events(LimitChanged) as seen:
        await svc(1)  # 1 * 2 >= 1: 2
        await svc(2)  # 1 * 2 >= 2: 3
        await svc(3)  # 1 * 2 < 3: unchanged
    assert [(e.layer, e.kind, e.old, e.new) for e in seen] == [
        ("db", "concurrency_limit", 1, 2),
        ("db", "concurrency_limit", 2, 3),
    ]
    assert limit.observe().figures["max_in_flight"] == 3
    data = reader.get_metrics_data()
    assert data is not None
    gauges = {
        metric.name: [point.value for point in metric.data.data_points]  # type: ignore[union-attr]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert gauges["layers.adaptive_concurrency_limit.max_in_flight"] == [3]


@pytest.mark.anyio
async def test_the_builder_and_describe_stack() -> None:
    """The builder and describe stack."""
    svc = (
        layers.ServiceBuilder()
        .adaptive_concurrency_limit(layers.Vegas(), max_waiting=0, on=ValueError)
        .service(hello_service)
    )
    (layer,) = layers.layers_of(svc)
    assert isinstance(layer, layers.AdaptiveConcurrencyLimit)
    assert layer.on is ValueError
    assert layer.concurrency_limit.max_waiting == 0
    assert await svc(4) == 4


async def hello_service(request: int) -> int:
    """Hello service."""
    return request


@pytest.mark.anyio
async def test_server_side_503_beyond_the_limit() -> None:
    """Server side 503 beyond the limit."""
    stack = layers.ServiceBuilder().adaptive_concurrency_limit(
        layers.AIMD(initial_limit=1, min_limit=1), max_waiting=0
    )
    app = LayersMiddleware(hello, stack)
    statuses: list[int] = []

    async def one() -> None:
        status, _, _ = await call(app, http_scope("/1"))
        statuses.append(status)

    async with anyio.create_task_group() as group:
        group.start_soon(one)
        group.start_soon(one)
    assert sorted(statuses) == [200, 503]
    # the 200 took 1 s with 1 in flight: the limit grew to 2
    async with anyio.create_task_group() as group:
        group.start_soon(one)
        group.start_soon(one)
    assert sorted(statuses) == [200, 200, 200, 503]


@pytest.mark.anyio
async def test_vegas_backs_off_when_a_queue_builds_at_the_downstream() -> None:
    """Vegas: RTT far above the no-load RTT (a queue) lowers the limit."""
    downstream = Downstream(10)
    limit = layers.AdaptiveConcurrencyLimit(
        algorithm=layers.Vegas(initial_limit=60, max_limit=100, seed=1)
    )
    svc = limit.layer(downstream)
    await drive(svc, 5, 10, limit)  # unloaded: learns the no-load RTT, 0.1 s
    seen = await drive(svc, 100, 10, limit)
    assert min(seen) <= 30


def test_gradient2_zero_rtts_are_steady() -> None:
    """A downstream that answers in no (virtual) time: steady, not halving."""
    g = layers.Gradient2(min_limit=1)
    for _ in range(20):
        g.update(0.0, 20, False)
    assert g.limit > 20


# -- the block form ---------------------------------------------------------------


@pytest.mark.anyio
async def test_a_block_shares_the_limit_and_feeds_the_algorithm() -> None:
    """A block holds a permit of the same limit and gives the same samples."""
    limit = layers.AdaptiveConcurrencyLimit(
        layers.AIMD(initial_limit=2, min_limit=1), max_waiting=0
    )

    async def echo(request: int) -> int:
        return request

    svc = limit.layer(echo)
    async with limit:
        assert limit.statistics().in_flight == 1
        async with limit.guard():
            assert limit.statistics().in_flight == 2
            with pytest.raises(layers.Overloaded):
                await svc(1)  # the service form finds the blocks' permits taken
            with pytest.raises(layers.Overloaded):
                async with limit.guard():
                    pytest.fail("a block beyond the limit never runs")
        # the inner block ended with 2 in flight: AIMD grows (2 * 2 >= 2)
        assert limit.statistics().max_in_flight == 3

    async def drop() -> None:
        async with limit.guard():
            await anyio.sleep(0.5)
            raise TimeoutError("the downstream was too slow")

    async def other() -> None:
        async with limit:
            raise ValueError("not a drop")

    with pytest.raises(TimeoutError):
        await drop()
    with pytest.raises(ValueError, match="not a drop"):
        await other()
    stats = limit.statistics()
    # samples: two clean blocks and one drop; the ValueError gives none
    assert (stats.samples, stats.drops, stats.in_flight) == (3, 1, 0)
    assert stats.max_in_flight == 2  # int(3 * 0.9)
    assert await svc(7) == 7


@pytest.mark.anyio
async def test_a_block_cancelled_waiting_or_inside_gives_no_sample() -> None:
    """Cancelled while it waits or inside, a block frees its permit, no sample."""
    limit = layers.AdaptiveConcurrencyLimit(layers.AIMD(initial_limit=1, min_limit=1))
    entered: list[int] = []

    async def block(number: int) -> None:
        async with limit.guard():
            entered.append(number)
            await anyio.sleep(math.inf)

    async with anyio.create_task_group() as group:
        group.start_soon(block, 1)
        await anyio.sleep(1)
        group.start_soon(block, 2)
        await anyio.sleep(1)
        stats = limit.statistics()
        assert (stats.in_flight, stats.waiting) == (1, 1)
        group.cancel_scope.cancel()
    stats = limit.statistics()
    assert entered == [1]
    assert (stats.in_flight, stats.waiting, stats.samples, stats.drops) == (
        0,
        0,
        0,
        0,
    )
    async with limit:  # the permit came back
        assert limit.statistics().in_flight == 1
