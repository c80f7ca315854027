"""benchmarks/sim_overload.py: the model's laws on a short run, on both backends.

A run of a fifth of the script's length with a fifth of its capacity (the
durations and the load scale together, so the phases hold a few hundred
calls each). The seeds are fixed and the margins wide: the script's own
run (benchmarks/README.md) gives the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import sim_overload

pytestmark = pytest.mark.anyio

MODEL = sim_overload.Model(capacity=20.0, servers=4, timeout=1.0, scale=0.4)


async def test_no_limit_collapses_under_3c() -> None:
    """Without a limit, the queue outgrows the timeout: goodput falls at 3 C."""
    run = await sim_overload.run_overload(MODEL, "none")
    calm, peak = MODEL.window(0), MODEL.window(2)
    assert run.goodput(*calm) > 0.3 * MODEL.capacity  # 0.5 C offered, all served
    assert run.goodput(*peak) < 0.5 * MODEL.capacity
    assert run.timeouts(*peak) > 0
    assert run.refused(*peak) == 0


async def test_static_limit_at_the_knee_holds_goodput() -> None:
    """A load-shedding limit at 2c keeps goodput near C and p99 bounded at 3 C."""
    run = await sim_overload.run_overload(MODEL, "static")
    calm, peak, after = MODEL.window(0), MODEL.window(2), MODEL.window(4)
    assert run.goodput(*peak) >= 0.8 * MODEL.capacity
    assert run.p99(*peak) <= 4 * run.p99(*calm)
    assert run.refused(*peak) > 0
    assert run.goodput(*after) >= 0.8 * run.offered(*after)
    limits = {b.limit for b in run.buckets}
    assert limits == {2 * MODEL.servers}


async def test_static_limit_2x_too_high_does_not_recover() -> None:
    """A limit above what fits in the timeout collapses and stays down."""
    run = await sim_overload.run_overload(MODEL, "static-2x")
    after = MODEL.window(4)
    assert run.goodput(*after) < 0.5 * run.offered(*after)
    assert run.buckets[-1].backlog > 2 * MODEL.max_useful


async def test_the_unloaded_p99_is_measured_over_a_steady_minute() -> None:
    """0.5 C held for 60 s (x scale), no limit: p99 near the service time."""
    steady = sim_overload.Model(
        capacity=20.0, servers=4, timeout=1.0, scale=0.4, steady=0.5
    )
    assert steady.duration == pytest.approx(24)
    assert steady.offered(3) == steady.offered(20) == 10
    p99 = await sim_overload.unloaded_p99(MODEL)
    assert MODEL.service_time <= p99 < 5 * MODEL.service_time


async def test_coalesce_makes_one_downstream_call() -> None:
    """1,000 concurrent identical requests: 1,000 calls without Coalesce, 1 with."""
    result = await sim_overload.run_coalesce(MODEL, callers=1000)
    assert result.downstream_plain == 1000
    assert result.downstream_coalesced == 1
    assert result.latency_coalesced == pytest.approx(MODEL.service_time)


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_plots_are_written(tmp_path: Path) -> None:
    """The overload and coalescing figures are PNG files."""
    pytest.importorskip("matplotlib")
    runs = [await sim_overload.run_overload(MODEL, name) for name in ("none", "static")]
    sim_overload.plot_overload(runs, tmp_path / "overload.png")
    sim_overload.plot_bars("t", ["a", "b"], [1000, 1], "calls", tmp_path / "bars.png")
    for name in ("overload.png", "bars.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG"), name
        assert len(data) > 5_000


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_throttle_and_hedge_plots_are_written(tmp_path: Path) -> None:
    """The throttle's and the hedge's figures over time are PNG files."""
    pytest.importorskip("matplotlib")
    import sim_hedge
    import sim_throttle

    partial = await sim_throttle.simulate(
        offered=20, capacity=5, window=10, overload=2, after=1
    )
    outage = await sim_throttle.simulate(
        offered=20, capacity=0, window=10, overload=2, after=4
    )
    sim_overload.plot_throttle(
        [("partial", partial), ("outage", outage)], tmp_path / "throttle.png"
    )
    plain = await sim_hedge.simulate(hedged=False, calls=500, interval=1.0)
    hedged = await sim_hedge.simulate(hedged=True, calls=500, interval=1.0)
    sim_overload.plot_hedge(plain, hedged, "500 calls", tmp_path / "hedge.png")
    for name in ("throttle.png", "hedge.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG"), name
        assert len(data) > 20_000, name


def test_main_prints_each_goal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The script prints PASS/FAIL per goal and exits 0 when all pass."""
    args = ["--scenario", "coalesce", "--no-plots", "--out", str(tmp_path)]
    assert sim_overload.main(args) == 0
    out = capsys.readouterr().out
    assert "PASS  coalescing: 1000 concurrent identical requests make 1" in out


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names each option with a line of help, and the known stacks."""
    with pytest.raises(SystemExit):
        sim_overload.parse(["--help"])
    out = capsys.readouterr().out
    for option in [
        "--backend",
        "--scenario",
        "--stacks",
        "--capacity",
        "--servers",
        "--timeout",
        "--scale",
        "--seed",
        "--out",
        "--no-plots",
    ]:
        assert option in out, option
    for stack in sim_overload.STACKS:
        assert stack in out, stack
