"""Tests of RetryBudget: Finagle/tower semantics, lazy filing, retry storms."""

from __future__ import annotations

import math

import anyio
import hypothesis
import pytest
from helpers import quiet_events as quiet_events  # autouse fixture
from hypothesis import strategies as st

import layers
from layers import RetryBudget
from layers.testing import MockService, capture_events

pytestmark = pytest.mark.anyio


async def test_the_reserve_allows_min_per_second_times_ttl_from_the_start() -> None:
    """With no traffic at all, min_per_second x ttl retries are allowed, then none."""
    budget = RetryBudget(ttl=10, min_per_second=2, ratio=0)
    results = [budget.withdraw() for _ in range(21)]
    assert results == [True] * 20 + [False]


async def test_ratio_of_deposits() -> None:
    """With no reserve, 50 % allows one retry per two requests."""
    budget = RetryBudget(min_per_second=0, ratio=0.5)
    for _ in range(10):
        budget.deposit()
    assert [budget.withdraw() for _ in range(6)] == [True] * 5 + [False]


async def test_a_ratio_is_not_rounded_to_all() -> None:
    """60 % allows 6 retries per 10 requests, not 10 (tower's bug #857)."""
    budget = RetryBudget(min_per_second=0, ratio=0.6)
    for _ in range(10):
        budget.deposit()
    assert sum(budget.withdraw() for _ in range(20)) == 6


async def test_more_than_one_retry_per_request() -> None:
    """A ratio above 1 allows several retries per request."""
    budget = RetryBudget(min_per_second=0, ratio=2.5)
    for _ in range(2):
        budget.deposit()
    assert sum(budget.withdraw() for _ in range(10)) == 5


async def test_withdrawals_expire_after_ttl_so_the_reserve_refills() -> None:
    """An emptied reserve is whole again ttl seconds later, not before."""
    budget = RetryBudget(ttl=5, min_per_second=1, ratio=0)
    assert sum(budget.withdraw() for _ in range(10)) == 5
    await anyio.sleep(4)
    assert not budget.withdraw()
    await anyio.sleep(1.01)
    assert sum(budget.withdraw() for _ in range(10)) == 5


async def test_deposits_expire_after_ttl() -> None:
    """Requests older than ttl no longer pay for retries."""
    budget = RetryBudget(ttl=2, min_per_second=0, ratio=1)
    for _ in range(3):
        budget.deposit()
    assert budget.withdraw()  # files the deposits at t=0
    await anyio.sleep(2.01)
    assert not budget.withdraw()


async def test_a_deposit_before_the_first_withdrawal_expires_on_time() -> None:
    """A deposit made before the budget ever read the clock still expires ttl later.

    The defect: it was dated at the first filing (30 s later) and paid for a
    retry that late.
    """
    budget = RetryBudget(ttl=1, min_per_second=0, ratio=1)
    budget.deposit()
    await anyio.sleep(30)
    assert not budget.withdraw()
    assert budget.statistics().deposits == 0


async def test_a_deposit_is_dated_at_the_last_clock_reading_never_later() -> None:
    """Deposits counted without the clock are dated at the reading before them."""
    budget = RetryBudget(ttl=2, min_per_second=0, ratio=1)
    budget.deposit()  # reads the clock: t=0
    budget.deposit()  # a burst at one instant: the next ones do not read it
    budget.deposit()
    await anyio.sleep(1.5)
    assert budget.statistics().deposits == 3  # made at 0, counted until t=2
    await anyio.sleep(0.6)
    assert budget.statistics().deposits == 0  # t=2.1: all three have expired
    await anyio.sleep(10)
    budget.deposit()  # after a quiet spell: reads the clock, dated t=12.1
    assert budget.withdraw()


async def test_sparse_deposits_are_each_dated() -> None:
    """When calls are rarer than the clock readings pay for, each one reads it."""
    budget = RetryBudget(ttl=1, min_per_second=0, ratio=1)
    for _ in range(5):
        budget.deposit()
        await anyio.sleep(0.3)
    # deposits at 0, .3, .6, .9, 1.2; now 1.5: the last three are in the window
    # (give or take the slot of 0.1 s that holds 0.6)
    assert budget.statistics().deposits in (2, 3)
    await anyio.sleep(0.25)  # 1.75: .9 and 1.2 left
    assert budget.statistics().deposits == 2


# ------------------------------------------------- tower's TpsBudget tests
# Ported from tower (tower/src/retry/budget/tps_budget.rs): ttl, min_per_sec
# and retry_percent (a fraction there, as our ratio).


async def test_tower_tps_empty() -> None:
    """tps_empty: no reserve and no deposit allow no retry."""
    budget = RetryBudget(ttl=1, min_per_second=0, ratio=1)
    assert not budget.withdraw()


async def test_tower_tps_leaky() -> None:
    """tps_leaky: one deposit, 3 s later (ttl 1 s) it pays for nothing."""
    budget = RetryBudget(ttl=1, min_per_second=0, ratio=1)
    budget.deposit()
    await anyio.sleep(3)
    assert not budget.withdraw()


async def test_tower_tps_slots() -> None:
    """tps_slots: deposits expire slot by slot, each ttl after it was made."""
    budget = RetryBudget(ttl=1, min_per_second=0, ratio=0.5)
    budget.deposit()
    budget.deposit()
    await anyio.sleep(0.901)
    assert budget.withdraw()  # 900 ms later the deposits still count

    await anyio.sleep(2.001)  # a blank slate
    budget.deposit()
    await anyio.sleep(0.301)
    budget.deposit()
    await anyio.sleep(0.801)
    budget.deposit()
    # the first of the three has expired; the second and third pay for one
    assert budget.withdraw()
    assert budget.statistics().deposits == 2


async def test_tower_tps_reserve() -> None:
    """tps_reserve: min_per_second x ttl retries with no deposit at all."""
    budget = RetryBudget(ttl=1, min_per_second=5, ratio=1)
    assert [budget.withdraw() for _ in range(6)] == [True] * 5 + [False]


async def test_steady_traffic_counts_without_withdrawals() -> None:
    """Deposits are filed every 64 even with no retry, so steady traffic counts."""
    budget = RetryBudget(ttl=2, min_per_second=0, ratio=1)
    for _ in range(1_000):  # 100 requests per second for 10 s
        budget.deposit()
        await anyio.sleep(0.01)
    counted = budget.statistics().deposits
    # the last 2 s hold 200 requests; at most one slot (0.2 s) and one batch
    # of 64 (0.64 s) of them may count as older than they are
    assert 200 - 20 - 64 <= counted <= 200


@hypothesis.settings(
    max_examples=25, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
@hypothesis.given(
    gaps=st.lists(st.floats(min_value=0, max_value=3), min_size=1, max_size=300),
    withdraw_every=st.integers(min_value=1, max_value=100),
)
# deposits left pending across a gap longer than ttl, filed by a withdrawal
# in the loop and by the one after it
@hypothesis.example(gaps=[0.0, 0.0, 3.0], withdraw_every=2)
@hypothesis.example(gaps=[0.0, 1.0, 3.0], withdraw_every=100)
# a deposit made before the budget first read the clock (tower's tps_leaky)
@hypothesis.example(gaps=[0.0, 3.0], withdraw_every=2)
def test_deposits_never_count_longer_than_ttl(
    gaps: list[float], withdraw_every: int
) -> None:
    """Whatever the timing, the window never counts a request older than ttl."""
    ttl = 2.0

    async def scenario() -> None:
        budget = RetryBudget(ttl=ttl, min_per_second=0, ratio=0)
        times: list[float] = []

        def check() -> None:
            # files the deposits pending since the last filing, some of them
            # perhaps made more than ttl ago (statistics() files too, so it
            # is read only here: deposits stay pending in between)
            budget.withdraw()
            now = anyio.current_time()
            recent = sum(1 for t in times if t > now - ttl)
            assert budget.statistics().deposits <= recent

        for index, gap in enumerate(gaps):
            await anyio.sleep(gap)
            budget.deposit()
            times.append(anyio.current_time())
            if (index + 1) % withdraw_every == 0:
                check()
        check()

    layers.testing.run(scenario, backend="trio")


async def test_statistics() -> None:
    """statistics() counts the window's requests, retries and what is left."""
    budget = RetryBudget(ttl=10, min_per_second=1, ratio=0.2)
    for _ in range(10):
        budget.deposit()
    assert budget.withdraw()
    assert budget.statistics() == layers.RetryBudgetStatistics(
        deposits=10, retries=1, available=11
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_budget_outlives_its_event_loop(backend: str) -> None:
    """A budget used by a later event loop, whose clock starts again, still works."""
    budget = RetryBudget(ttl=1, min_per_second=2, ratio=0)

    async def first() -> bool:
        await anyio.sleep(100)
        return budget.withdraw()

    async def later() -> list[bool]:
        # a new virtual clock at 0, earlier than the budget has seen
        return [budget.withdraw() for _ in range(2)]

    assert layers.testing.run(first, backend=backend)
    assert layers.testing.run(later, backend=backend) == [True, False]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_deposits_from_an_earlier_event_loop_no_longer_count(backend: str) -> None:
    """A later loop's clock says nothing about how old earlier deposits are: dropped."""
    budget = RetryBudget(ttl=10, min_per_second=0, ratio=1)

    async def first() -> bool:
        await anyio.sleep(100)
        budget.deposit()
        budget.deposit()
        return budget.withdraw()

    async def later() -> bool:
        # a new virtual clock at 0: the deposit left from t=100 is not counted
        return budget.withdraw()

    assert layers.testing.run(first, backend=backend)
    assert not layers.testing.run(later, backend=backend)
    assert layers.testing.run(first, backend=backend)


# ------------------------------------------------------------- retry storms


async def storm(budget: RetryBudget | None) -> tuple[int, float]:
    """1,000 calls, one every 10 ms, to a service that always fails, max_attempts=5.

    Returns the number of retries and the virtual time elapsed.
    """
    mock = MockService[int, int]()
    for _ in range(5_000):
        mock.fail(ConnectionError)
    svc = layers.Retry(
        on=ConnectionError,
        max_attempts=5,
        backoff=layers.ConstantBackoff(0.05),
        budget=budget,
    ).layer(mock)
    start = anyio.current_time()

    async def one(request: int) -> None:
        with pytest.raises(ConnectionError):
            await svc(request)

    async with anyio.create_task_group() as group:
        for request in range(1_000):
            group.start_soon(one, request)
            await anyio.sleep(0.01)
    return mock.calls - 1_000, anyio.current_time() - start


async def test_retry_storm_with_the_default_budget() -> None:
    """Against a dead service, retries stay within 20 % of calls plus the floor."""
    budget = RetryBudget()
    with capture_events(layers.events.RetryStopped) as stopped:
        retries, elapsed = await storm(budget)
    bound = 0.2 * 1_000 + 10 * (10 + elapsed)
    print(f"retries with the default budget: {retries} (bound {bound:.0f})")
    assert 100 < retries <= bound
    # every call ended once: its retries used up, or refused by the budget
    assert len(stopped) == 1_000
    refused = [e for e in stopped if e.reason == "budget"]
    assert len(refused) > 500
    assert math.isclose(elapsed, 10.2, abs_tol=0.1)


async def test_retry_storm_without_a_budget() -> None:
    """Without a budget, 1,000 calls with max_attempts=5 make exactly 4,000 retries."""
    retries, _ = await storm(None)
    print(f"retries without a budget: {retries}")
    assert retries == 4_000


# ----------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"ttl": 0.5},
            "RetryBudget(ttl=0.5): ttl must be a number of seconds from 1 to 60",
        ),
        ({"ttl": 61}, "ttl must be a number of seconds from 1 to 60, got 61"),
        ({"min_per_second": -1}, "min_per_second must be a finite number >= 0, got -1"),
        ({"min_per_second": math.inf}, "min_per_second must be a finite number >= 0"),
        (
            {"ratio": -0.05},
            "RetryBudget(ratio=-0.05): ratio must be a fraction from 0 to 10",
        ),
        ({"ratio": 10.01}, "ratio must be a fraction from 0 to 10 (0.2 is 20 %), got"),
        ({"ratio": math.nan}, "ratio must be a fraction from 0 to 10 (0.2 is 20 %)"),
    ],
)
def test_bad_budget_configuration(kwargs: dict[str, float], message: str) -> None:
    """Out-of-range ttl, floor or ratio fail at construction with a clear message."""
    import re

    with pytest.raises(layers.ConfigurationError, match=re.escape(message)):
        RetryBudget(**kwargs)


def test_defaults_are_finagles() -> None:
    """The defaults: 10 s ttl, 10 retries per second, 20 %."""
    budget = RetryBudget()
    assert (budget.ttl, budget.min_per_second, budget.ratio) == (10.0, 10.0, 0.2)
