"""Tests of a CircuitBreaker shared by a fleet through a store (MemoryBreakerStore).

Each breaker given the same store stands for one process of a fleet; a
``Link`` between a breaker and the store stands for that process's
connection: it can fail (StoreError), lose every notice, and counts the
steps it carries.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from test_breaker import Benign, Boom, call, run, service

import layers
import layers.testing
from layers import CircuitState
from layers.events import (
    CircuitOpened,
    CircuitThresholdExceeded,
    StoreFailed,
    StoreRecovered,
)
from layers.testing import capture_events

pytestmark = pytest.mark.anyio

OPTIONS: dict[str, Any] = {
    "window_size": 4,
    "min_calls": 4,
    "open_duration": 10,
    "probes": 2,
}


async def settle() -> None:
    """Let the background work run (a millisecond of virtual time)."""
    await anyio.sleep(0.001)


class Link:
    """One process's connection to the shared store: it may fail or go deaf."""

    def __init__(self, store: layers.MemoryBreakerStore) -> None:
        self.inner = store  # the host, and the notices
        self.target = store  # the steps
        self.name = store.name
        self.sync_interval = store.sync_interval
        self.failing = False
        self.deaf = False  # loses every notice
        self.steps: Counter[str] = Counter()
        self.reported = 0  # outcomes sent in batches

    def start_soon(
        self,
        function: Callable[[], Coroutine[Any, Any, None]],
        /,
        *,
        name: str | None = None,
    ) -> None:
        self.inner.start_soon(function, name=name)

    async def _step(self, method: str, *args: Any) -> layers.BreakerView:
        self.steps[method] += 1
        if self.failing:
            await anyio.lowlevel.checkpoint()
            raise layers.StoreError("the link is down", store=self.name)
        view: layers.BreakerView = await getattr(self.target, method)(*args)
        return view

    async def read(self, rules: layers.BreakerRules, /) -> layers.BreakerView:
        return await self._step("read", rules)

    async def report(
        self, rules: layers.BreakerRules, batch: layers.BreakerBatch, /
    ) -> layers.BreakerView:
        view = await self._step("report", rules, batch)
        self.reported += batch.calls
        return view

    async def take_probe(
        self, rules: layers.BreakerRules, probe: str, /
    ) -> layers.BreakerView:
        return await self._step("take_probe", rules, probe)

    async def report_probe(
        self, rules: layers.BreakerRules, probe: str, outcome: Any, slow: bool, /
    ) -> layers.BreakerView:
        return await self._step("report_probe", rules, probe, outcome, slow)

    async def set_state(
        self, rules: layers.BreakerRules, state: CircuitState, /
    ) -> layers.BreakerView:
        return await self._step("set_state", rules, state)

    async def open_for(
        self, rules: layers.BreakerRules, seconds: float, reason: str, /
    ) -> layers.BreakerView:
        return await self._step("open_for", rules, seconds, reason)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncGenerator[AsyncIterator[layers.BreakerView]]:
        if self.failing:
            raise layers.StoreError("the link is down", store=self.name)
        async with self.inner.subscribe() as notices:
            yield self._heard(notices)

    async def _heard(
        self, notices: AsyncIterator[layers.BreakerView]
    ) -> AsyncIterator[layers.BreakerView]:
        async for view in notices:
            if not self.deaf and not self.failing:
                yield view


def fleet(
    store: layers.MemoryBreakerStore, count: int, **options: Any
) -> tuple[list[layers.CircuitBreaker], list[layers.Service[str, str]], list[Link]]:
    """*count* processes sharing *store*: their breakers, services and links."""
    links = [Link(store) for _ in range(count)]
    breakers = [
        layers.CircuitBreaker(name=f"p{i}", store=link, **{**OPTIONS, **options})
        for i, link in enumerate(links)
    ]
    return breakers, [b.layer(service) for b in breakers], links


# ------------------------------------------------------------ configuration


def test_store_must_be_a_breaker_store() -> None:
    """Anything but a BreakerStore as store= is refused, naming the option."""
    for bad in (object(), "redis://", layers.MemoryRateLimitStore()):
        with pytest.raises(layers.ConfigurationError, match="store"):
            layers.CircuitBreaker(store=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("name", ""),
        ("name", 3),
        ("sync_interval", 0),
        ("sync_interval", math.inf),
        ("sync_interval", "1"),
        ("probe_lease", -1),
    ],
)
def test_memory_store_refuses_bad_options(option: str, value: object) -> None:
    """Each bad option of MemoryBreakerStore raises ConfigurationError naming it."""
    with pytest.raises(layers.ConfigurationError, match=option):
        layers.MemoryBreakerStore(**{option: value})


async def test_a_shared_breaker_needs_a_host() -> None:
    """The first call of a breaker whose store is not entered raises RuntimeError."""
    store = layers.MemoryBreakerStore()
    svc = layers.CircuitBreaker(store=store).layer(service)
    with pytest.raises(RuntimeError, match="async with store"):
        await svc("ok")
    async with store:
        assert await svc("ok") == "ok"


async def test_the_host_can_end_and_start_again() -> None:
    """After its store's block ends, the next block's first call joins again."""
    store = layers.MemoryBreakerStore()
    _, (sa, sb), _ = fleet(store, 2)
    async with store:
        assert await run(sa, "fail", "fail") == ["Boom", "Boom"]
        await settle()
    async with store:
        assert await run(sb, "fail", "fail") == ["Boom", "Boom"]
        await settle()
        assert store.state is CircuitState.OPEN
        assert await run(sa, "ok") == ["rejected"]


async def test_a_store_cannot_be_entered_twice() -> None:
    """Entering a MemoryBreakerStore that is already entered raises RuntimeError."""
    async with layers.MemoryBreakerStore() as store:
        with pytest.raises(RuntimeError, match="already entered"):
            await store.__aenter__()


# ------------------------------------------------------------ closed state


async def test_success_path_adds_no_checkpoint() -> None:
    """A joined, closed shared breaker's call does not yield."""
    async with layers.MemoryBreakerStore() as store:
        _, (svc,), _ = fleet(store, 1, slow_call_duration=1)
        assert await svc("ok") == "ok"  # joins
        with anyio.CancelScope() as scope:
            scope.cancel()
            assert await svc("ok") == "ok"
        assert not scope.cancelled_caught


async def test_the_window_holds_every_process_outcomes() -> None:
    """One failure from each of four processes trips the fleet (4 of 4)."""
    async with layers.MemoryBreakerStore() as store:
        _, svcs, links = fleet(store, 4, failure_rate_threshold=1.0)
        for svc in svcs:
            assert await run(svc, "fail") == ["Boom"]
        await anyio.sleep(1.5)  # each batch of one failure is sent within 1 s
        assert [link.reported for link in links] == [1, 1, 1, 1]
        assert store.state is CircuitState.OPEN
        assert [await call(svc, "ok") for svc in svcs] == ["rejected"] * 4


async def test_the_trip_reaches_every_process_by_notice() -> None:
    """After one process trips the fleet, the others reject with no re-read."""
    async with layers.MemoryBreakerStore(sync_interval=60) as store:
        breakers, svcs, links = fleet(store, 3)
        for svc in svcs:
            assert await svc("ok") == "ok"  # every process has joined
        await settle()
        reads = [link.steps["read"] for link in links]
        with capture_events(CircuitOpened) as opened:
            assert await run(svcs[0], *["fail"] * 4) == ["Boom"] * 4
            await settle()
        assert [b.state for b in breakers] == [CircuitState.OPEN] * 3
        assert [link.steps["read"] for link in links] == reads
        assert sorted(e.layer for e in opened) == ["p0", "p1", "p2"]
        with pytest.raises(layers.CircuitOpen) as info:
            await svcs[2]("ok")
        assert info.value.retry_after == pytest.approx(10, abs=0.01)


async def test_a_lost_notice_is_caught_by_the_periodic_reread() -> None:
    """A process that missed the trip's notice learns of it within sync_interval."""
    async with layers.MemoryBreakerStore(sync_interval=2) as store:
        (_, deaf), (sa, sd), (_, link) = fleet(store, 2)
        assert await run(sd, "ok") == ["ok"]
        await settle()
        link.deaf = True
        assert await run(sa, *["fail"] * 4) == ["Boom"] * 4
        await settle()
        assert store.state is CircuitState.OPEN
        assert deaf.state is CircuitState.CLOSED
        await anyio.sleep(2)
        assert deaf.state is CircuitState.OPEN
        assert await run(sd, "ok") == ["rejected"]


async def test_successes_are_sent_in_batches() -> None:
    """10,000 successes over 10 s cost one report per second, not per call."""
    async with layers.MemoryBreakerStore(sync_interval=1) as store:
        (breaker,), (svc,), (link,) = fleet(store, 1, window_size=100, min_calls=10)
        await svc("ok")  # joins at 0
        await anyio.sleep(0.5)
        for _ in range(10):
            for _ in range(1000):
                await svc("ok")
            await anyio.sleep(1)
        assert link.reported == 10_001
        assert 10 <= link.steps["report"] <= 11  # (at 0), then every 1 s
        assert link.steps["read"] == 2  # the join and the subscription's re-read
        assert breaker.statistics().calls == 100  # the fleet's window is full


async def test_a_time_window_is_sent_every_bucket() -> None:
    """A time window's batches go at most once a bucket (6 s of a 60 s window)."""
    async with layers.MemoryBreakerStore(sync_interval=1) as store:
        (_,), (svc,), (link,) = fleet(
            store, 1, window_type="time", window_size=60, min_calls=10
        )
        await svc("ok")  # joins at 0
        await anyio.sleep(0.5)
        for _ in range(60):
            await svc("ok")
            await anyio.sleep(1)
        assert link.reported == 61
        assert 10 <= link.steps["report"] <= 11  # (at 0), then every 6 s


async def test_a_failure_near_a_trip_is_sent_at_once() -> None:
    """Failures are batched while the fleet is healthy, sent at once near a trip."""
    async with layers.MemoryBreakerStore(sync_interval=60) as store:
        (_,), (svc,), (link,) = fleet(store, 1, window_size=100, min_calls=20)
        assert await run(svc, *["ok"] * 20) == ["ok"] * 20
        await anyio.sleep(30)  # the successes were sent at once (a first batch)
        sent = link.steps["report"]
        assert sent == 1
        await run(svc, *["fail"] * 4)  # 4 of 24: under half of 50 %
        await settle()
        assert link.steps["report"] == sent
        await run(svc, *["fail"] * 3)  # 7 of 27 > 25 %: near
        await settle()
        assert link.steps["report"] == sent + 1


async def test_consecutive_failures_count_across_the_fleet() -> None:
    """Failures in a row from two processes trip consecutive_failures=4."""
    async with layers.MemoryBreakerStore() as store:
        _, (sa, sb), _ = fleet(
            store,
            2,
            window_size=100,
            min_calls=100,
            consecutive_failures=4,
        )
        assert await run(sa, "ok", "fail", "fail") == ["ok", "Boom", "Boom"]
        await settle()
        assert await run(sb, "fail") == ["Boom"]
        await settle()
        assert store.state is CircuitState.CLOSED
        assert await run(sb, "fail") == ["Boom"]
        await settle()
        assert store.state is CircuitState.OPEN


async def test_a_success_breaks_the_fleet_run() -> None:
    """A success between two processes' failures breaks the run."""
    async with layers.MemoryBreakerStore() as store:
        _, (sa, sb), _ = fleet(
            store, 2, window_size=100, min_calls=100, consecutive_failures=3
        )
        await run(sa, "fail", "fail")
        await settle()
        await run(sb, "ok", "fail", "fail")
        await settle()
        assert store.state is CircuitState.CLOSED


async def test_ignored_and_cancelled_calls_are_not_counted() -> None:
    """Neither an ignored exception nor a cancellation is an outcome."""
    async with layers.MemoryBreakerStore() as store:
        (breaker,), (svc,), _ = fleet(store, 1, ignore=Benign)
        assert await run(svc, "ok", "benign") == ["ok", "Benign"]
        with anyio.move_on_after(1):
            await svc("hang")
        await anyio.sleep(1.5)
        assert breaker.statistics().calls == 1


async def test_on_result_and_slow_calls_count_as_in_memory() -> None:
    """A response on_result rejects is a failure; a slow call is slow."""
    async with layers.MemoryBreakerStore() as store:
        (breaker,), (svc,), _ = fleet(
            store,
            1,
            window_size=10,
            min_calls=10,
            on_result=lambda response: response == "bad",
            slow_call_duration=2,
        )
        bad = breaker.layer(lambda request: _answer("bad"))
        assert await run(svc, "ok", "slow") == ["ok", "slow"]
        assert await bad("x") == "bad"
        await anyio.sleep(1.5)  # the batch is sent within 1 s
        stats = breaker.statistics()
        assert (stats.calls, stats.failed_calls, stats.slow_calls) == (3, 1, 1)


async def _answer(response: str) -> str:
    return response


async def test_metrics_only_reports_when_the_fleet_would_trip() -> None:
    """In metrics-only mode the fleet never opens; the reporter emits the event."""
    async with layers.MemoryBreakerStore() as store:
        (admin, worker), (_, sw), _ = fleet(store, 2)
        assert await run(sw, "ok") == ["ok"]
        admin.metrics_only()
        await settle()
        assert worker.state is CircuitState.METRICS_ONLY
        with capture_events(CircuitThresholdExceeded) as exceeded:
            assert await run(sw, *["fail"] * 6) == ["Boom"] * 6
            await settle()
        assert store.state is CircuitState.METRICS_ONLY
        assert [(e.layer, e.reason) for e in exceeded] == [("p1", "failure_rate")]


# ------------------------------------------------------------ open, half-open


async def trip(store: layers.MemoryBreakerStore, svc: layers.Service[str, str]) -> None:
    """Trip the fleet through *svc* (window 4, min 4)."""
    assert await run(svc, *["fail"] * 4) == ["Boom"] * 4
    await settle()
    assert store.state is CircuitState.OPEN


@pytest.mark.parametrize("probes", [1, 3])
async def test_exactly_probes_probes_across_the_fleet(probes: int) -> None:
    """Many concurrent calls in 5 processes: exactly `probes` reach the service."""
    async with layers.MemoryBreakerStore() as store:
        breakers, _, _ = fleet(store, 5, probes=probes)
        started = 0
        release = anyio.Event()

        async def slow_ok(request: str) -> str:
            nonlocal started
            if request == "fail":
                raise Boom
            if request == "ok":
                started += 1
                await release.wait()
            return request

        svcs = [b.layer(slow_ok) for b in breakers]
        for svc in svcs:
            await call(svc, "join")
        await trip(store, svcs[0])
        await anyio.sleep(10)
        outcomes: list[str] = []

        async def one(svc: layers.Service[str, str]) -> None:
            outcomes.append(await call(svc, "ok"))

        async with anyio.create_task_group() as group:
            for _ in range(20):
                for svc in svcs:
                    group.start_soon(one, svc)
                await anyio.sleep(0.01)
            assert started == probes
            assert store.probes_in_flight == probes
            assert outcomes.count("rejected") == 100 - probes
            release.set()
        await settle()
        assert outcomes.count("ok") == probes
        assert store.state is CircuitState.CLOSED
        assert [b.state for b in breakers] == [CircuitState.CLOSED] * 5


async def test_failed_probes_reopen_the_fleet_with_a_longer_open_duration() -> None:
    """Failing probes open every process again, for the grown open duration."""
    async with layers.MemoryBreakerStore() as store:
        breakers, svcs, _ = fleet(
            store, 2, probes=1, open_duration_growth=2, max_open_duration=100
        )
        await call(svcs[1], "ok")
        await trip(store, svcs[0])
        await anyio.sleep(10)
        assert await run(svcs[1], "fail") == ["Boom"]
        await settle()
        assert store.state is CircuitState.OPEN
        assert [b.state for b in breakers] == [CircuitState.OPEN] * 2
        with pytest.raises(layers.CircuitOpen) as info:
            await svcs[0]("ok")
        assert info.value.retry_after == pytest.approx(20, abs=0.01)


async def test_a_cancelled_probe_gives_its_slot_back() -> None:
    """A probe cancelled while it runs frees its slot for another process."""
    async with layers.MemoryBreakerStore() as store:
        _, (sa, sb), _ = fleet(store, 2, probes=1)
        await call(sb, "ok")
        await trip(store, sa)
        await anyio.sleep(10)
        with anyio.move_on_after(1):
            await sa("hang")
        await settle()
        assert store.state is CircuitState.HALF_OPEN
        assert store.probes_in_flight == 0
        assert await run(sb, "ok") == ["ok"]
        await settle()
        assert store.state is CircuitState.CLOSED


async def test_cancelled_while_taking_a_probe_gives_it_back() -> None:
    """A call cancelled while its take_probe is in flight holds no slot after."""
    async with layers.MemoryBreakerStore() as store:
        (a, b), (sa, sb), _ = fleet(store, 2, probes=1)
        await call(sb, "ok")
        await trip(store, sa)
        await anyio.sleep(10)
        with anyio.CancelScope() as scope:
            scope.cancel()  # cancelled at the store's first checkpoint
            await sa("ok")
        assert scope.cancelled_caught
        await settle()
        assert store.probes_in_flight == 0
        assert await run(sb, "ok") == ["ok"]
        await settle()
        assert [a.state, b.state] == [CircuitState.CLOSED] * 2


async def test_a_notice_of_a_free_slot_lets_a_process_probe_at_once() -> None:
    """A process refused a probe asks again as soon as a slot is given back."""
    async with layers.MemoryBreakerStore(sync_interval=60) as store:
        _, (sa, sb), _ = fleet(store, 2, probes=1)
        await call(sb, "ok")
        await trip(store, sa)
        await anyio.sleep(10)
        async with anyio.create_task_group() as group:
            group.start_soon(call, sa, "hang")  # holds the one probe
            await settle()
            assert await run(sb, "ok") == ["rejected"]  # no slot: wait 60 s
            group.cancel_scope.cancel()  # the probe is given back, published
        await settle()
        assert await run(sb, "ok") == ["ok"]
        await settle()
        assert store.state is CircuitState.CLOSED


async def test_a_dead_process_probe_is_given_back_after_its_lease() -> None:
    """A probe whose process never reports it frees its slot after probe_lease."""
    async with layers.MemoryBreakerStore(probe_lease=30) as store:
        _, (sa, sb), (la, _) = fleet(store, 2, probes=1)
        await call(sb, "ok")
        await trip(store, sa)
        await anyio.sleep(10)
        async with anyio.create_task_group() as group:
            group.start_soon(call, sa, "hang")
            await settle()
            assert store.probes_in_flight == 1
            la.failing = True  # the process is gone: its report never arrives
            group.cancel_scope.cancel()
        assert await run(sb, "ok") == ["rejected"]
        await anyio.sleep(30)
        assert await run(sb, "ok") == ["ok"]
        await settle()
        assert store.state is CircuitState.CLOSED


async def test_a_late_outcome_of_an_old_generation_does_not_count() -> None:
    """A call admitted before a trip and a half-open period fails late: not counted."""
    async with layers.MemoryBreakerStore() as store:
        breakers, svcs, _ = fleet(store, 2, probes=1)
        gate = anyio.Event()

        async def waits_then_fails(request: str) -> str:
            await gate.wait()
            raise Boom(request)

        late = breakers[0].layer(waits_then_fails)
        await call(svcs[1], "ok")
        async with anyio.create_task_group() as group:
            group.start_soon(call, late, "late")  # admitted at generation 0
            await settle()
            await trip(store, svcs[1])
            await anyio.sleep(10)
            assert await run(svcs[1], "ok") == ["ok"]  # the probe closes it
            await settle()
            assert store.state is CircuitState.CLOSED
            generation = store.generation
            gate.set()
        await anyio.sleep(2)
        assert store.generation == generation
        assert breakers[0].statistics().calls == 0
        assert breakers[0].statistics().failed_calls == 0


async def test_a_late_probe_outcome_after_the_trial_expired_is_dropped() -> None:
    """A probe that outlives max_half_open_duration does not count in the next trial."""
    async with layers.MemoryBreakerStore() as store:
        _, (sa, sb), _ = fleet(store, 2, probes=1, max_half_open_duration=5)
        await call(sb, "ok")
        await trip(store, sa)
        await anyio.sleep(10)
        async with anyio.create_task_group() as group:
            group.start_soon(call, sa, "slow")  # a probe for 5 s
            await anyio.sleep(5)  # the trial expires as the probe ends
            group.start_soon(call, sb, "ok")
        await settle()
        # the expiry reopened the fleet (generation + 1); the late success of
        # the first probe did not close it
        assert store.state is CircuitState.OPEN


# ------------------------------------------------------------ manual states


async def test_manual_states_hold_for_the_whole_fleet() -> None:
    """force_open, force_closed, metrics_only and reset in one process reach all."""
    async with layers.MemoryBreakerStore(sync_interval=60) as store:
        breakers, svcs, _ = fleet(store, 3)
        for svc in svcs:
            await call(svc, "ok")
        admin = breakers[0]
        for action, state in [
            ("force_open", CircuitState.FORCED_OPEN),
            ("force_closed", CircuitState.DISABLED),
            ("metrics_only", CircuitState.METRICS_ONLY),
            ("reset", CircuitState.CLOSED),
        ]:
            getattr(admin, action)()
            assert admin.state is state  # at once here
            await settle()
            assert store.state is state
            assert [b.state for b in breakers] == [state] * 3
        breakers[1].force_open()
        await settle()
        assert [await call(svc, "ok") for svc in svcs] == ["rejected"] * 3


async def test_reset_of_a_closed_fleet_drops_its_window() -> None:
    """reset() of a closed fleet empties the window for every process."""
    async with layers.MemoryBreakerStore() as store:
        (a, b), (sa, _), _ = fleet(store, 2)
        await run(sa, "fail", "fail", "fail")
        await anyio.sleep(1.5)
        assert a.statistics().failed_calls == 3
        generation = store.generation
        b.reset()
        await settle()
        assert store.generation == generation + 1
        assert store.state is CircuitState.CLOSED
        assert await run(sa, "fail") == ["Boom"]
        await anyio.sleep(1.5)
        assert store.state is CircuitState.CLOSED
        assert a.statistics().failed_calls == 1


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_manual_state_set_outside_an_event_loop_is_sent_on_joining(
    backend: str,
) -> None:
    """force_open() outside any event loop holds here, and for all once joined."""
    store = layers.MemoryBreakerStore()
    (admin, _), (sa, so), _ = fleet(store, 2)
    admin.force_open()
    assert admin.state is CircuitState.FORCED_OPEN

    async def main() -> None:
        async with store:
            assert await run(sa, "ok") == ["rejected"]
            await settle()
            assert store.state is CircuitState.FORCED_OPEN
            assert await run(so, "ok") == ["rejected"]

    layers.testing.run(main, backend=backend)


async def test_a_manual_state_in_an_event_loop_needs_a_host() -> None:
    """force_open() in an event loop with no host: RuntimeError, nothing changed."""
    (admin,), _, _ = fleet(layers.MemoryBreakerStore(), 1)
    with pytest.raises(RuntimeError, match="not entered"):
        admin.force_open()
    assert admin.state is CircuitState.CLOSED


async def test_a_manual_state_starts_the_background_work() -> None:
    """force_open() on a breaker never called reaches the fleet."""
    async with layers.MemoryBreakerStore() as store:
        (admin, other), (_, so), _ = fleet(store, 2)
        assert await run(so, "ok") == ["ok"]
        admin.force_open()
        await settle()
        assert store.state is CircuitState.FORCED_OPEN
        assert other.state is CircuitState.FORCED_OPEN


# ------------------------------------------------------------ store failure


async def test_store_failure_falls_back_to_the_local_breaker_and_rejoins() -> None:
    """A failing store: local logic, StoreFailed; the store back: the fleet's state."""
    async with layers.MemoryBreakerStore(sync_interval=1) as store:
        (lone, other), (sl, _), (link, _) = fleet(store, 2)
        assert await run(sl, "ok") == ["ok"]
        await settle()
        with capture_events(StoreFailed, StoreRecovered) as seen:
            link.failing = True
            await anyio.sleep(1.5)  # the periodic re-read fails
            # the local breaker decides: it trips on this process's own failures
            assert await run(sl, *["fail"] * 4) == ["Boom"] * 4
            assert lone.state is CircuitState.OPEN
            assert await run(sl, "ok") == ["rejected"]
            assert store.state is CircuitState.CLOSED  # nothing was sent
            assert [type(e) for e in seen] == [StoreFailed]
            failed = seen[0]
            assert isinstance(failed, StoreFailed)
            assert (failed.layer, failed.policy) == ("p0", "local")
            stats = lone.statistics()
            assert stats.store_fallbacks >= 5
            assert lone.observe().figures["store_fallbacks"] == stats.store_fallbacks
            link.failing = False
            await anyio.sleep(1.5)  # the next re-read rejoins
        assert [type(e) for e in seen] == [StoreFailed, StoreRecovered]
        recovered = seen[1]
        assert isinstance(recovered, StoreRecovered)
        assert recovered.fallbacks == stats.store_fallbacks
        assert lone.state is CircuitState.CLOSED  # the fleet's state
        assert await run(sl, "ok") == ["ok"]
        await anyio.sleep(1.5)
        assert lone.statistics().failed_calls == 0  # local outcomes not sent
        assert other.state is CircuitState.CLOSED


async def test_a_store_failing_at_the_first_call_falls_back() -> None:
    """A store that fails when the breaker joins: the call is decided locally."""
    async with layers.MemoryBreakerStore() as store:
        (breaker,), (svc,), (link,) = fleet(store, 1)
        link.failing = True
        with capture_events(StoreFailed) as failed:
            assert await run(svc, "ok") == ["ok"]
        assert len(failed) == 1
        assert breaker.statistics().store_fallbacks == 1


async def test_store_failure_while_taking_a_probe_falls_back() -> None:
    """A take_probe that fails: the local breaker probes, and rejoins later."""
    async with layers.MemoryBreakerStore(sync_interval=1) as store:
        (a, _), (sa, sb), (la, _) = fleet(store, 2, probes=1)
        await call(sb, "ok")
        await trip(store, sa)
        await anyio.sleep(10)
        la.failing = True
        assert await run(sa, "ok") == ["ok"]  # a local probe
        assert a.state is CircuitState.CLOSED  # locally closed
        la.failing = False
        await anyio.sleep(1.5)
        # rejoined; giving back the probe it may have taken half-opened the
        # fleet (its open period had passed)
        assert store.state is CircuitState.HALF_OPEN
        assert a.state is CircuitState.HALF_OPEN
        assert await run(sa, "ok") == ["ok"]  # now the fleet's probe
        await settle()
        assert store.state is CircuitState.CLOSED
        assert store.probes_in_flight == 0


async def test_a_manual_state_set_during_an_outage_is_sent_when_it_ends() -> None:
    """force_open() while the store fails holds here at once and for all later."""
    async with layers.MemoryBreakerStore(sync_interval=1) as store:
        (admin, other), (sa, so), (link, _) = fleet(store, 2)
        await call(sa, "ok")
        await call(so, "ok")
        link.failing = True
        await settle()
        admin.force_open()
        assert await run(sa, "ok") == ["rejected"]
        await settle()
        assert store.state is CircuitState.CLOSED
        link.failing = False
        await anyio.sleep(1.5)
        assert store.state is CircuitState.FORCED_OPEN
        assert other.state is CircuitState.FORCED_OPEN
        assert admin.state is CircuitState.FORCED_OPEN


# ------------------------------------------------------------ statistics


async def test_statistics_show_the_fleet_window() -> None:
    """statistics() counts the fleet's outcomes as last seen, from any process."""
    async with layers.MemoryBreakerStore() as store:
        (a, _), (sa, sb), _ = fleet(store, 2, window_size=10, min_calls=10)
        await run(sa, "ok", "ok", "fail")
        await run(sb, "ok")
        await anyio.sleep(1.5)
        await call(sa, "ok")
        await anyio.sleep(1.5)
        stats = a.statistics()
        assert (stats.calls, stats.failed_calls) == (5, 1)
        assert stats.store_fallbacks == 0
        assert a.observe().figures["store_fallbacks"] == 0


# ------------------------------------------------------------ the store's steps
# Plain vectors of the reference steps (layers._breaker.server), which a
# store on a server runs as scripts.


def rules(**options: Any) -> layers.BreakerRules:
    """The rules of a breaker made with *options* (test defaults)."""
    breaker = layers.CircuitBreaker(
        store=layers.MemoryBreakerStore(), **{**OPTIONS, **options}
    )
    fleet_of = breaker._core.fleet
    assert fleet_of is not None
    return fleet_of.rules


def batch(generation: int, outcomes: str, slow: int = 0) -> layers.BreakerBatch:
    """A batch of outcomes written as 'S' (success) and 'F' (failure)."""
    runs = [len(run) for run in outcomes.split("S")]
    return layers.BreakerBatch(
        generation=generation,
        calls=len(outcomes),
        failures=outcomes.count("F"),
        slow=slow,
        leading_failures=runs[0],
        trailing_failures=runs[-1],
        longest_run=max(runs),
    )


def test_a_count_window_keeps_the_last_calls_in_chunks() -> None:
    """Chunks of ceil(size/buckets) calls; the oldest leaves in proportion."""
    from layers._breaker import server

    r = rules(window_size=10, window_buckets=5, min_calls=10)  # chunks of 2
    record = server.Record(epoch="e")
    server.report(record, r, batch(0, "SF"), 0.0)  # [2, 1, 0]
    server.report(record, r, batch(0, "S"), 0.0)  # a new chunk
    server.report(record, r, batch(0, "S"), 0.0)  # joins it: [2, 0, 0]
    assert record.chunks == [2, 1, 0, 2, 0, 0]
    server.report(record, r, batch(0, "SSSSFFS", slow=3), 0.0)
    # 11 calls: one leaves the oldest chunk, whose failure stays (1 x 1/2
    # rounds half up)
    assert record.chunks == [1, 1, 0, 2, 0, 0, 7, 2, 3]
    view = server.read(record, r, 0.0)
    assert (view.calls, view.failures, view.slow) == (10, 3, 3)
    assert view.state is CircuitState.CLOSED  # 30 % < 50 %


def test_a_time_window_counts_batches_in_the_bucket_of_their_arrival() -> None:
    """Batches land in the bucket of the store's clock; old buckets leave."""
    from layers._breaker import server

    r = rules(window_type="time", window_size=10, window_buckets=5, min_calls=10)
    record = server.Record(epoch="e")
    server.report(record, r, batch(0, "FF"), 0.5)  # bucket 0
    server.report(record, r, batch(0, "SSS"), 3.0)  # bucket 1
    assert server.read(record, r, 9.9).calls == 5
    assert server.read(record, r, 10.0).calls == 3  # bucket 0 has left
    assert server.read(record, r, 12.0).calls == 0
    server.report(record, r, batch(0, "S"), 12.0)
    assert record.streak == 0  # no failure is left: the run is forgotten


def test_failures_in_a_row_run_across_batches() -> None:
    """A run goes on across batches without a success, and is cut by one."""
    from layers._breaker import server

    r = rules(window_size=100, min_calls=100, consecutive_failures=4)
    record = server.Record(epoch="e")
    server.report(record, r, batch(0, "SFF"), 0.0)
    assert record.streak == 2
    server.report(record, r, batch(0, "F"), 0.0)
    assert (record.streak, record.state) == (3, CircuitState.CLOSED)
    server.report(record, r, batch(0, "FS"), 0.0)  # 3 + 1 leading: trips
    assert (record.state, record.reason) == (
        CircuitState.OPEN,
        "consecutive_failures",
    )
    record = server.Record(epoch="e")
    server.report(record, r, batch(0, "SFFFFS"), 0.0)  # a run inside a batch
    assert record.state is CircuitState.OPEN


def test_a_batch_of_another_generation_is_dropped() -> None:
    """Outcomes collected under an older generation never count."""
    from layers._breaker import server

    r = rules()
    record = server.Record(epoch="e")
    server.set_state(record, r, CircuitState.CLOSED, 0.0)  # reset: generation 1
    reply, notice = server.report(record, r, batch(0, "FFFF"), 0.0)
    assert (reply.calls, notice) == (0, None)
    assert record.state is CircuitState.CLOSED


async def test_a_view_of_another_epoch_is_adopted() -> None:
    """A process adopts a stored state that was lost and made again."""
    async with layers.MemoryBreakerStore(sync_interval=1) as store:
        (breaker,), (svc,), (link,) = fleet(store, 1)
        await trip(store, svc)
        await anyio.sleep(10)
        assert await run(svc, "ok", "ok") == ["ok", "ok"]  # the probes close it
        await settle()
        assert store.generation == 3
        link.target = layers.MemoryBreakerStore()  # the state lost: generation 0
        await anyio.sleep(1.5)  # the periodic re-read
        assert await run(svc, *["fail"] * 4) == ["Boom"] * 4
        await settle()
        assert link.target.state is CircuitState.OPEN  # its batches count there
        assert breaker.state is CircuitState.OPEN
