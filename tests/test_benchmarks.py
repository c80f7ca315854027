"""The benchmarks stay runnable: a fraction of a second of each part.

The benchmarks themselves are not part of the suite (they take minutes and
measure the machine); this only shows that bench_core.py still runs every
case on asyncio and trio, and that bench_redis.py still runs every part
against a real redis-server, and that both print their figures. Their goals
are not checked here: a run this short measures nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
BENCH = BENCHMARKS / "bench_redis.py"

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(120)]


def run_bench(*args: str, script: Path = BENCH) -> subprocess.CompletedProcess[str]:
    """Run *script* (benchmarks/bench_redis.py by default) with this interpreter.

    The checkout's own ``layers`` comes first on the path (the script's
    directory is benchmarks/, so an installed copy would be found first).
    """
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
    )


def test_bench_core_runs_every_case() -> None:
    """bench_core.py runs each case briefly on asyncio and trio and prints its rows."""
    result = run_bench(
        *("--backend", "asyncio", "--rounds", "2", "--calls", "20", "--warmup", "0"),
        script=BENCHMARKS / "bench_core.py",
    )
    # 1: a goal failed, which a run this short may do; anything else is a crash.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for line in [
        "five layers, service",
        "five layers, decorated",
        "timeout(10), decorated",
        "five layers decorated vs as a service (goal <= 1.2x)",
    ]:
        assert line in result.stdout, f"{line!r} missing from:\n{result.stdout}"
    trio = run_bench(
        *("--backend", "trio", "--rounds", "1", "--calls", "20", "--warmup", "0"),
        script=BENCHMARKS / "bench_core.py",
    )
    assert trio.returncode in (0, 1), trio.stdout + trio.stderr
    assert "five layers, decorated" in trio.stdout


def test_sim_hedge_prints_the_figure() -> None:
    """sim_hedge.py runs on virtual time and prints the hedging figure."""
    for backend in ("trio", "asyncio"):
        result = run_bench(
            *("--calls", "400", "--backend", backend),
            script=BENCHMARKS / "sim_hedge.py",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "p99" in result.stdout
        assert "x lower with" in result.stdout


def test_bench_redis_help() -> None:
    """bench_redis.py --help names its parts."""
    pytest.importorskip("coredis")
    result = run_bench("--help")
    assert result.returncode == 0, result.stderr
    for part in ["accuracy", "cost", "peers", "lease", "concurrency"]:
        assert part in result.stdout


def test_bench_redis_runs_every_part(redis_server_on_path: str) -> None:
    """Every part of bench_redis.py runs briefly and prints its figures."""
    pytest.importorskip("coredis")
    result = run_bench(
        "--seconds",
        "0.5",
        "--processes",
        "2",
        "--tasks",
        "5",
        "--rounds",
        "2",
        "--lease-ttl",
        "0.6",
    )
    output = result.stdout
    # 1: a goal failed, which a run this short may do; anything else is a crash.
    assert result.returncode in (0, 1), output + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for line in [
        "admitted: ",
        "busiest 100 ms window: ",
        "RateLimit + RedisRateLimitStore, admitted",
        "goal: an admitted call <= 1.15x a bare EVALSHA at p50",
        "layers RateLimit + RedisRateLimitStore (GCRA, burst 20)",
        "lease mode / exact mode: ",
        "most in flight across the fleet: ",
        "killed (SIGKILL)",
    ]:
        assert line in output, f"{line!r} missing from:\n{output}"
    assert "could not run" not in output, output  # a worker that crashed
    assert ("every goal passed" in output) != ("goals failed: " in output)


def test_bench_redis_breaker_part(redis_server_on_path: str) -> None:
    """--part breaker runs briefly: cost, commands, propagation, each with its goal."""
    assert "breaker" in run_bench("--help").stdout
    result = run_bench(
        "--part",
        "breaker",
        "--seconds",
        "0.5",
        "--processes",
        "2",
        "--rounds",
        "2",
        "--trips",
        "2",
    )
    output = result.stdout
    assert result.returncode in (0, 1), output + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for line in [
        "goal: CircuitBreaker(store=RedisBreakerStore) <= 1.3x CircuitBreaker() "
        "in memory: ",
        "round trips (EVALSHA) while timing: ",
        "round trips per second per process: ",
        "the stores' steps: ",
        "goal: batches, never a round trip per call",
        "subscribers on the channel before the first trip: 1 (one per worker)",
        "delay from the trip (the script's TIME) to a worker's first rejection: ",
        "goal: p99 <= 100 ms",
    ]:
        assert line in output, f"{line!r} missing from:\n{output}"
    assert ("every goal passed" in output) != ("goals failed: " in output)
