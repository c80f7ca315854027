"""The Lua steps of RedisBreakerStore against the reference steps, step for step.

Each test runs the same sequence of steps through the reference "server"
(``layers._breaker.server``, on a ``Record``) and through the scripts on a
real redis-server, on the same clock (the scripts take the test's *now*
instead of ``TIME``), and compares every reply and every notice.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import anyio
import attrs
import hypothesis
import pytest
from hypothesis import strategies as st

pytest.importorskip("coredis")

from layers import BreakerBatch, BreakerRules, BreakerView, CircuitState
from layers._breaker import server
from layers.redis import RedisBreakerStore, RedisConnection

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(120)]

Step = tuple[Any, ...]


def make_rules(**options: Any) -> BreakerRules:
    """Rules with small test defaults."""
    values: dict[str, Any] = {
        "window_type": "count",
        "window_size": 4,
        "window_buckets": 2,
        "min_calls": 4,
        "failure_rate_threshold": 0.5,
        "slow_call_rate_threshold": 1.0,
        "consecutive_failures": None,
        "open_duration": 10.0,
        "open_duration_growth": 2.0,
        "max_open_duration": 60.0,
        "healthy_duration": math.inf,
        "probes": 2,
        "max_half_open_duration": None,
    }
    values.update(options)
    return BreakerRules(**values)


def batch(generation: int, outcomes: str, slow: int = 0) -> BreakerBatch:
    """A batch of outcomes written as 'S' (success) and 'F' (failure)."""
    runs = [len(run) for run in outcomes.split("S")]
    return BreakerBatch(
        generation=generation,
        calls=len(outcomes),
        failures=outcomes.count("F"),
        slow=slow,
        leading_failures=runs[0],
        trailing_failures=runs[-1],
        longest_run=max(runs),
    )


def _plain(view: BreakerView | None) -> BreakerView | None:
    return None if view is None else attrs.evolve(view, epoch="")


class Twins:
    """One record in Python and one in Redis, stepped together."""

    def __init__(self, store: RedisBreakerStore, rules: BreakerRules) -> None:
        self.store = store
        self.rules = rules
        self.record = server.Record(epoch="")
        self.now = 1000.0
        self.steps = 0

    async def step(self, step: Step) -> tuple[BreakerView, BreakerView | None]:
        """Run *step* on both; assert they agree; the reference's result."""
        kind = step[0]
        rules, record, now = self.rules, self.record, self.now
        expected: tuple[BreakerView, BreakerView | None]
        args: list[str]
        if kind == "wait":
            self.now += step[1]
            return server.read(record, rules, self.now), None
        if kind == "read":
            expected = (server.read(record, rules, now), None)
            args = []
        elif kind == "report":
            _, offset, outcomes, slow = step
            b = batch(record.generation + offset, outcomes, slow)
            expected = server.report(record, rules, b, now)
            args = [
                str(b.generation),
                str(b.calls),
                str(b.failures),
                str(b.slow),
                str(b.leading_failures),
                str(b.trailing_failures),
                str(b.longest_run),
            ]
        elif kind == "take_probe":
            _, probe, lease = step
            expected = server.take_probe(record, rules, probe, lease, now)
            args = [probe, repr(lease)]
        elif kind == "report_probe":
            _, probe, outcome, slow = step
            expected = server.report_probe(record, rules, probe, outcome, slow, now)
            args = [probe, outcome, "1" if slow else "0"]
        elif kind == "open_for":
            _, seconds, reason = step
            expected = server.open_for(record, rules, seconds, reason, now)
            args = [repr(float(seconds)), reason]
        else:
            assert kind == "set_state"
            expected = server.set_state(record, rules, step[1], now)
            args = [step[1].value]
        got = await self.store._step(kind, rules, args, now=now)  # pyright: ignore[reportPrivateUsage]
        self.steps += 1
        if self.steps == 1:
            record.epoch = got[0].epoch  # made by the script
        assert got[0].epoch == record.epoch
        assert (_plain(got[0]), _plain(got[1])) == (
            _plain(expected[0]),
            _plain(expected[1]),
        ), f"step {self.steps}: {step!r}"
        return expected


async def run_steps(url: str, rules: BreakerRules, steps: list[Step]) -> Twins:
    """Run *steps* through both on a fresh breaker; the twins."""
    async with RedisConnection.from_url(url, timeout=5.0) as redis:
        store = RedisBreakerStore(redis, name=uuid.uuid4().hex)
        twins = Twins(store, rules)
        for step in steps:
            await twins.step(step)
        return twins


# ------------------------------------------------------------------ vectors

VECTORS: dict[str, tuple[dict[str, Any], list[Step]]] = {
    "count window: chunks, eviction in proportion, trip": (
        {"window_size": 10, "window_buckets": 5, "min_calls": 10},
        [
            ("report", 0, "SF", 0),
            ("report", 0, "S", 0),
            ("report", 0, "S", 0),
            ("report", 0, "SSSSFFS", 3),
            ("read",),
            ("report", 0, "FFFFF", 0),
            ("read",),
        ],
    ),
    "time window: buckets by arrival, old buckets leave, run forgotten": (
        {"window_type": "time", "window_size": 10.0, "window_buckets": 5},
        [
            ("report", 0, "FF", 0),
            ("wait", 2.5),
            ("report", 0, "SSS", 1),
            ("wait", 7.4),
            ("read",),
            ("wait", 0.1),
            ("read",),
            ("wait", 2.0),
            ("report", 0, "S", 0),
            ("wait", 30.0),
            ("report", 0, "FFFF", 0),
        ],
    ),
    "consecutive failures across batches": (
        {"window_size": 100, "min_calls": 100, "consecutive_failures": 4},
        [
            ("report", 0, "SFF", 0),
            ("report", 0, "F", 0),
            ("report", 0, "FS", 0),
            ("read",),
        ],
    ),
    "old generations dropped; probes; reopen with growth; close": (
        {"probes": 2, "consecutive_failures": 2},
        [
            ("set_state", CircuitState.CLOSED),
            ("report", -1, "FFFF", 0),
            ("report", 0, "FFFF", 0),
            ("take_probe", "early", 60.0),
            ("wait", 10.0),
            ("report", -2, "FFFF", 0),
            ("take_probe", "a", 60.0),
            ("take_probe", "b", 60.0),
            ("take_probe", "c", 60.0),
            ("report_probe", "a", "released", False),
            ("take_probe", "c", 60.0),
            ("report_probe", "b", "failure", True),
            ("report_probe", "nope", "success", False),
            ("report_probe", "c", "failure", False),
            ("report_probe", "c", "success", False),
            ("wait", 19.9),
            ("take_probe", "d", 60.0),
            ("wait", 0.1),
            ("take_probe", "d", 60.0),
            ("take_probe", "e", 60.0),
            ("report_probe", "d", "success", True),
            ("report_probe", "e", "success", False),
            ("read",),
        ],
    ),
    "leases end; half-open times out": (
        {"probes": 1, "max_half_open_duration": 5.0, "open_duration": 1.0},
        [
            ("report", 0, "FFFF", 0),
            ("wait", 1.0),
            ("take_probe", "a", 2.0),
            ("wait", 2.0),
            ("take_probe", "b", 2.0),
            ("report_probe", "a", "success", False),
            ("wait", 3.5),
            ("take_probe", "c", 2.0),
            ("report_probe", "b", "success", False),
        ],
    ),
    "manual states; metrics-only exceeds once": (
        {"slow_call_rate_threshold": 0.5},
        [
            ("set_state", CircuitState.FORCED_OPEN),
            ("set_state", CircuitState.FORCED_OPEN),
            ("report", 0, "FFFF", 0),
            ("set_state", CircuitState.METRICS_ONLY),
            ("report", 0, "SSSS", 3),
            ("report", 0, "S", 0),
            ("report", 0, "S", 0),
            ("report", 0, "SS", 0),
            ("report", 0, "FFFF", 0),
            ("set_state", CircuitState.DISABLED),
            ("set_state", CircuitState.CLOSED),
            ("set_state", CircuitState.CLOSED),
        ],
    ),
    "open for a duration: hinted, manual, kept when shorter, half-open after": (
        {"probes": 1, "open_duration": 5.0},
        [
            ("report", 0, "SS", 0),
            ("open_for", 30.0, "retry_after"),
            ("read",),
            ("open_for", 10.0, "retry_after"),
            ("open_for", 45.0, "open_for"),
            ("wait", 44.9),
            ("take_probe", "a", 60.0),
            ("wait", 0.1),
            ("take_probe", "b", 60.0),
            ("open_for", 2.5, "retry_after"),
            ("report_probe", "b", "success", False),
            ("wait", 2.5),
            ("take_probe", "c", 60.0),
            ("report_probe", "c", "failure", False),
            ("set_state", CircuitState.FORCED_OPEN),
            ("open_for", 3.0, "retry_after"),
            ("set_state", CircuitState.METRICS_ONLY),
            ("report", 0, "FF", 0),
            ("open_for", 3.0, "open_for"),
            ("read",),
        ],
    ),
    "healthy duration resets the growth": (
        {"open_duration": 1.0, "healthy_duration": 5.0, "probes": 1},
        [
            ("report", 0, "FFFF", 0),
            ("wait", 1.0),
            ("take_probe", "a", 60.0),
            ("report_probe", "a", "success", False),
            ("report", 0, "FFFF", 0),
            ("wait", 2.0),
            ("take_probe", "b", 60.0),
            ("report_probe", "b", "success", False),
            ("wait", 6.0),
            ("report", 0, "FFFF", 0),
        ],
    ),
}


@pytest.mark.parametrize("name", list(VECTORS))
def test_the_scripts_follow_the_reference_steps(redis_url: str, name: str) -> None:
    """Each vector gives the same replies and notices in Lua as in Python."""
    options, steps = VECTORS[name]
    twins = anyio.run(run_steps, redis_url, make_rules(**options), steps)
    assert twins.steps == sum(step[0] != "wait" for step in steps)


# --------------------------------------------------------------- hypothesis

PROBE_IDS = ["p0", "p1", "p2", "p3"]

rules_strategy = st.builds(
    make_rules,
    window_type=st.sampled_from(["count", "time"]),
    window_buckets=st.integers(1, 4),
    min_calls=st.integers(1, 6),
    failure_rate_threshold=st.sampled_from([0.25, 0.5, 1.0]),
    slow_call_rate_threshold=st.sampled_from([0.5, 1.0]),
    consecutive_failures=st.none() | st.integers(1, 4),
    open_duration=st.sampled_from([0.5, 3.0]),
    open_duration_growth=st.sampled_from([1.0, 2.0, 1.5]),
    max_open_duration=st.sampled_from([4.0, math.inf]),
    healthy_duration=st.sampled_from([2.0, math.inf]),
    probes=st.integers(1, 3),
    max_half_open_duration=st.none() | st.sampled_from([1.0, 4.0]),
).flatmap(
    lambda r: st.sampled_from(
        [
            attrs.evolve(r, window_size=size)
            for size in ([1, 3, 7] if r.window_type == "count" else [1.0, 2.5])
        ]
    )
)

steps_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("read")),
        st.tuples(st.just("wait"), st.sampled_from([0.05, 0.3, 0.7, 1.0, 2.5, 9.0])),
        st.builds(
            lambda offset, outcomes, slow: (
                "report",
                offset,
                outcomes,
                min(slow, len(outcomes)),
            ),
            st.sampled_from([0, 0, 0, -1]),
            st.text("SF", min_size=0, max_size=5),
            st.integers(0, 2),
        ),
        st.tuples(
            st.just("take_probe"),
            st.sampled_from(PROBE_IDS),
            st.sampled_from([0.5, 60.0]),
        ),
        st.tuples(
            st.just("report_probe"),
            st.sampled_from(PROBE_IDS),
            st.sampled_from(["success", "failure", "released"]),
            st.booleans(),
        ),
        st.tuples(
            st.just("open_for"),
            st.sampled_from([0.0, 0.4, 2.0, 30.0]),
            st.sampled_from(["open_for", "retry_after"]),
        ),
        st.tuples(
            st.just("set_state"),
            st.sampled_from(
                [
                    CircuitState.CLOSED,
                    CircuitState.FORCED_OPEN,
                    CircuitState.DISABLED,
                    CircuitState.METRICS_ONLY,
                ]
            ),
        ),
    ),
    max_size=30,
)


@hypothesis.settings(
    max_examples=200,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(rules=rules_strategy, steps=steps_strategy)
def test_random_sequences_agree(
    redis_url: str, rules: BreakerRules, steps: list[Step]
) -> None:
    """Any sequence of steps, under any rules, gives the same views in both."""
    anyio.run(run_steps, redis_url, rules, steps)
