"""The circuit breaker against a simple reference model (hypothesis state machine).

Hypothesis drives a breaker with bursts of calls that succeed, fail, are slow,
are ignored, return a "bad" response or are cancelled; with time advancing;
and with the manual controls. A plain model of the documented rules (lists
of outcomes, no buckets or rings, no fast paths) runs alongside; after every
step the two must agree on which calls were let through, each rejection's
``retry_after``, the state and the window.

Each step runs in its own ``layers.testing.run`` on virtual time, first
sleeping to the machine's current time, so the breaker (which keeps absolute
times) sees one clock across steps. The machine runs once per backend.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, ClassVar

import anyio
import attrs
import hypothesis
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

import layers
from layers.testing import run

# How long each kind of call takes (multiples of 0.5 s: exact binary floats).
DURATION = {
    "ok": 0.5,
    "fail": 0.5,
    "ignored": 0.5,
    "bad": 0.5,
    "slow": 3.0,
    "slowfail": 3.0,
    "cancel": 1.0,  # the caller gives up after 1 s
}
SLOW_AFTER = 2.0


class Failure(Exception):
    """A failure of the test service."""


class Ignored(Exception):
    """An exception the breaker ignores."""


async def inner(kind: str) -> str:
    """The guarded service: sleeps, then answers as *kind* says."""
    await anyio.sleep(math.inf if kind == "cancel" else DURATION[kind])
    if kind in ("fail", "slowfail"):
        raise Failure(kind)
    if kind == "ignored":
        raise Ignored(kind)
    return kind


# ------------------------------------------------------------------ the model


@attrs.define
class Model:
    """The documented rules, written as plainly as possible."""

    cfg: dict[str, Any]
    state: str = "closed"
    outcomes: list[tuple[int, bool, bool]] = attrs.Factory(list)  # (bucket, fail, slow)
    last_bucket: int | None = None
    window_id: int = 0
    streak: int = 0
    trial: dict[str, Any] | None = None
    trial_id: int = 0
    trips: int = 0
    open_until: float = -math.inf
    closed_since: float | None = None

    @property
    def minimum(self) -> int:
        minimum: int | None = self.cfg["min_calls"]
        if minimum is not None:
            return minimum
        return (
            min(100, self.cfg["window_size"])
            if self.cfg["window_type"] == "count"
            else 100
        )

    @property
    def width(self) -> float:
        return float(self.cfg["window_size"]) / self.cfg["window_buckets"]

    def bucket(self, t: float) -> int:
        k = math.floor(t / self.width)
        while (k + 1) * self.width <= t:
            k += 1
        return k

    def open_duration(self, trips: int) -> float:
        base: float = self.cfg["open_duration"]
        cap = self.cfg["max_open_duration"] or 10 * base
        return float(min(cap, base * self.cfg["open_duration_growth"] ** trips))

    # transitions
    def new_window(self) -> None:
        self.outcomes = []
        self.last_bucket = None
        self.window_id += 1
        self.streak = 0

    def trip(self, at: float) -> None:
        healthy = self.cfg["healthy_duration"] or (
            self.cfg["max_open_duration"] or 10 * self.cfg["open_duration"]
        )
        if (
            self.state == "closed"
            and self.closed_since is not None
            and at - self.closed_since >= healthy
        ):
            self.trips = 0
        self.open_until = at + self.open_duration(self.trips)
        self.trips += 1
        self.trial = None
        self.state = "open"

    def half_open(self, t: float) -> None:
        self.new_window()
        self.trial_id += 1
        self.trial = {
            "id": self.trial_id,
            "since": t,
            "taken": 0,
            "recorded": 0,
            "failures": 0,
            "slow": 0,
        }
        self.state = "half_open"

    def close(self, t: float) -> None:
        self.new_window()
        self.trial = None
        self.closed_since = t
        self.state = "closed"

    def manual(self, state: str, t: float) -> None:
        # A manual state set again changes nothing; reset() of a closed
        # breaker empties the window and the trips, but is no transition.
        if state == self.state and state != "closed":
            return
        self.new_window()
        self.trial = None
        if state == "closed":
            self.trips = 0
            self.open_until = -math.inf
            if self.state != "closed":
                self.closed_since = t
        self.state = state

    def open_for(self, seconds: float, t: float) -> None:
        # Open now for seconds, from any state; never shortens an open period.
        if self.state == "open" and self.open_until >= t + seconds:
            return
        if self.state not in ("closed", "open", "half_open"):
            self.new_window()
        self.open_until = t + seconds
        self.trial = None
        self.state = "open"

    def catch_up(self, t: float) -> None:
        limit = self.cfg["max_half_open_duration"]
        if self.state == "half_open" and limit is not None:
            assert self.trial is not None
            expiry = self.trial["since"] + limit
            if t >= expiry:
                self.trip(expiry)
        if self.state == "open" and t >= self.open_until:
            self.half_open(t)

    # calls
    def admit(self, t: float) -> tuple[str, Any]:
        """('call', token) or ('rejected', retry_after)."""
        if self.state == "disabled":
            return "call", None
        if self.state == "forced_open":
            return "rejected", None
        if self.state in ("closed", "metrics_only"):
            return "call", ("window", self.window_id)
        self.catch_up(t)
        if self.state == "half_open":
            assert self.trial is not None
            if self.trial["taken"] < self.cfg["probes"]:
                self.trial["taken"] += 1
                return "call", ("trial", self.trial["id"])
            return "rejected", None
        return "rejected", self.open_until - t

    def outcome(self, kind: str) -> tuple[bool, bool] | None:
        """(failed, slow), or None if the call is not counted."""
        if kind in ("cancel", "ignored"):
            return None
        failed = kind in ("fail", "slowfail") or (
            kind == "bad" and self.cfg["on_result"]
        )
        slow = (
            self.cfg["slow_call_duration"] is not None and DURATION[kind] >= SLOW_AFTER
        )
        return failed, slow

    def complete(self, token: Any, kind: str, t: float) -> None:
        if token is None:
            return  # disabled: nothing recorded
        outcome = self.outcome(kind)
        if token[0] == "window":
            if outcome is None or token[1] != self.window_id:
                return
            self.add(outcome, t)
            if self.state in ("closed", "metrics_only"):
                self.evaluate(t)
            return
        if self.state != "closed":
            self.catch_up(t)
        trial = self.trial
        if trial is None or trial["id"] != token[1]:
            return
        if outcome is None:
            trial["taken"] -= 1
            return
        trial["recorded"] += 1
        trial["failures"] += outcome[0]
        trial["slow"] += outcome[1]
        probes = self.cfg["probes"]
        if trial["recorded"] == probes:
            if (
                trial["failures"] / probes >= self.cfg["failure_rate_threshold"]
                or trial["slow"] / probes >= self.cfg["slow_call_rate_threshold"]
            ):
                self.trip(t)
            else:
                self.close(t)

    def add(self, outcome: tuple[bool, bool], t: float) -> None:
        failed, slow = outcome
        if self.cfg["window_type"] == "count":
            self.outcomes.append((0, failed, slow))
            del self.outcomes[: -self.cfg["window_size"]]
        else:
            k = self.bucket(t)
            if self.last_bucket is None or k > self.last_bucket:
                buckets = self.cfg["window_buckets"]
                self.outcomes = [o for o in self.outcomes if o[0] > k - buckets]
                self.last_bucket = k
                if not any(o[1] or o[2] for o in self.outcomes):
                    self.streak = 0
            self.outcomes.append((k, failed, slow))
        self.streak = self.streak + 1 if failed else 0

    def evaluate(self, t: float) -> None:
        if self.state != "closed":
            return  # metrics-only: it never trips
        calls = len(self.outcomes)
        tripped = False
        if calls >= self.minimum:
            failures = sum(o[1] for o in self.outcomes)
            slow = sum(o[2] for o in self.outcomes)
            tripped = (
                failures / calls >= self.cfg["failure_rate_threshold"]
                or slow / calls >= self.cfg["slow_call_rate_threshold"]
            )
        limit = self.cfg["consecutive_failures"]
        if tripped or (limit is not None and self.streak >= limit):
            self.trip(t)

    def window_at(self, t: float) -> tuple[int, int, int]:
        outcomes = self.outcomes
        if self.cfg["window_type"] == "time" and self.last_bucket is not None:
            k = self.bucket(t)
            if k > self.last_bucket:
                outcomes = [
                    o for o in outcomes if o[0] > k - self.cfg["window_buckets"]
                ]
        return (
            len(outcomes),
            sum(o[1] for o in outcomes),
            sum(o[2] for o in outcomes),
        )


# ----------------------------------------------------------- configurations


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """Breaker options whose times are all multiples of 0.5 s."""
    window_type = draw(st.sampled_from(["count", "time"]))
    if window_type == "count":
        size: float = draw(st.integers(1, 5))
        minimum = draw(st.none() | st.integers(1, int(size)))
    else:
        size = draw(st.sampled_from([2.0, 4.0]))
        minimum = draw(st.integers(1, 5))
    return {
        "window_type": window_type,
        "window_size": size,
        "window_buckets": draw(st.sampled_from([1, 2, 4])),
        "min_calls": minimum,
        "failure_rate_threshold": draw(st.sampled_from([0.25, 0.5, 1.0])),
        "slow_call_duration": draw(st.sampled_from([None, SLOW_AFTER])),
        "slow_call_rate_threshold": draw(st.sampled_from([0.5, 1.0])),
        "consecutive_failures": draw(st.sampled_from([None, 1, 2, 3])),
        "open_duration": draw(st.sampled_from([1.0, 2.0, 5.0])),
        "open_duration_growth": draw(st.sampled_from([1.0, 2.0])),
        "max_open_duration": draw(st.sampled_from([None, 8.0])),
        "healthy_duration": draw(st.sampled_from([None, 3.0])),
        "probes": draw(st.integers(1, 3)),
        "max_half_open_duration": draw(st.sampled_from([None, 2.0, 4.0])),
        "on_result": draw(st.booleans()),
    }


# ------------------------------------------------------------ the machine


class BreakerMachine(RuleBasedStateMachine):
    """Drives a breaker and the model together; they must agree at every step."""

    backend: ClassVar[str] = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.time = 0.0
        self.model: Model | None = None
        self.breaker: layers.CircuitBreaker | None = None
        self.svc: layers.Service[str, str] | None = None
        self.inner_calls = 0

    @initialize(cfg=configs())
    def build(self, cfg: dict[str, Any]) -> None:
        options = dict(cfg)
        if options.pop("on_result"):
            options["on_result"] = lambda response: response == "bad"
        self.breaker = layers.CircuitBreaker(name="model", ignore=Ignored, **options)

        async def counted(kind: str) -> str:
            self.inner_calls += 1
            return await inner(kind)

        self.svc = self.breaker.layer(counted)
        self.model = Model(cfg)

    def _run(self, step: Any) -> Any:
        async def at_time() -> Any:
            if self.time:
                await anyio.sleep(self.time)
            assert anyio.current_time() == self.time
            return await step()

        return run(at_time, backend=self.backend)

    @rule(
        kind=st.sampled_from(sorted(DURATION)),
        count=st.integers(1, 4),
    )
    def calls(self, kind: str, count: int) -> None:
        """A burst of *count* identical calls started at the same instant."""
        assert self.svc is not None
        assert self.model is not None
        svc = self.svc
        results: list[tuple[str, float | None]] = []

        async def one() -> None:
            limit = DURATION["cancel"] if kind == "cancel" else math.inf
            try:
                with anyio.move_on_after(limit):
                    await svc(kind)
                results.append(("called", None))  # returned, or was cancelled
            except layers.CircuitOpen as error:
                results.append(("rejected", error.retry_after))
            except (Failure, Ignored):
                results.append(("called", None))

        async def burst() -> None:
            async with anyio.create_task_group() as group:
                for _ in range(count):
                    group.start_soon(one)

        before = self.inner_calls
        self._run(burst)
        start = self.time
        end = start + DURATION[kind]
        expected: list[tuple[str, float | None]] = []
        tokens = []
        for _ in range(count):
            verdict, value = self.model.admit(start)
            if verdict == "call":
                tokens.append(value)
                expected.append(("called", None))
            else:
                expected.append(("rejected", value))
        for token in tokens:
            self.model.complete(token, kind, end)
        self.time = end
        assert self.inner_calls - before == len(tokens)
        assert Counter(r for r, _ in results) == Counter(r for r, _ in expected)
        got = sorted(v for r, v in results if r == "rejected" and v is not None)
        want = sorted(v for r, v in expected if r == "rejected" and v is not None)
        assert got == pytest.approx(want)
        assert sum(v is None for r, v in results if r == "rejected") == sum(
            v is None for r, v in expected if r == "rejected"
        )

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0]))
    def advance(self, seconds: float) -> None:
        """Time passes without calls."""
        self.time += seconds

    @rule(
        action=st.sampled_from(["force_open", "force_closed", "metrics_only", "reset"])
    )
    def manual(self, action: str) -> None:
        """A manual control, called inside the event loop at the current time."""
        assert self.breaker is not None
        assert self.model is not None
        breaker = self.breaker

        async def act() -> None:
            getattr(breaker, action)()

        self._run(act)
        state = {
            "force_open": "forced_open",
            "force_closed": "disabled",
            "metrics_only": "metrics_only",
            "reset": "closed",
        }[action]
        self.model.manual(state, self.time)

    @rule(seconds=st.sampled_from([0.5, 2.0, 10.0, 30.0]))
    def open_for(self, seconds: float) -> None:
        """The breaker is opened by hand for some seconds, at the current time."""
        assert self.breaker is not None
        assert self.model is not None
        breaker = self.breaker

        async def act() -> None:
            breaker.open_for(seconds)

        self._run(act)
        self.model.open_for(seconds, self.time)

    @invariant()
    def agree(self) -> None:
        """The breaker's state and window equal the model's."""
        if self.model is None:
            return
        assert self.breaker is not None
        breaker = self.breaker

        async def snapshot() -> layers.CircuitBreakerStatistics:
            return breaker.statistics()

        stats = self._run(snapshot)
        model = self.model
        assert stats.state.value == model.state
        assert (stats.calls, stats.failed_calls, stats.slow_calls) == model.window_at(
            self.time
        )
        assert stats.trips == model.trips
        if model.state == "open":
            assert stats.retry_after == pytest.approx(
                max(0.0, model.open_until - self.time)
            )
        trial = model.trial
        if trial is None:
            assert stats.probes_in_flight == 0
            assert stats.probes_recorded == 0
        else:
            assert stats.probes_recorded == trial["recorded"]
            assert stats.probes_in_flight == trial["taken"] - trial["recorded"]


SETTINGS = hypothesis.settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No event sinks: the default log sink would print thousands of lines."""
    monkeypatch.setattr(layers.events.STATE, "sinks", ())


class AsyncioMachine(BreakerMachine):
    backend = "asyncio"


class TrioMachine(BreakerMachine):
    backend = "trio"


TestModelOnAsyncio = AsyncioMachine.TestCase
TestModelOnAsyncio.settings = SETTINGS
TestModelOnTrio = TrioMachine.TestCase
TestModelOnTrio.settings = SETTINGS
