"""The shared limits of layers.redis against a real redis-server on loopback.

Run::

    python benchmarks/bench_redis.py [--part accuracy|cost|peers|lease|
                                             concurrency|breaker|all]
                                     [--seconds S] [--processes P]
                                     [--tasks T] [--fast-tasks T]
                                     [--backend mixed|asyncio|trio]
                                     [--lease L] [--lease-ttl SECONDS]
                                     [--rate R] [--rounds N] [--trips N]
                                     [--redis-url URL]
                                     [--limits-python PATH]

It starts its own ``redis-server`` (Debian's package) on a free port in a
temporary directory unless ``--redis-url`` is given, and stops it at the
end. The multi-process parts start worker processes
(``_redis_workers.py``), each with its own event loop: by default the
fleet alternates asyncio and trio (``--backend`` to choose one). Every
figure is measured in this one run; ratios compare figures of the same
run. Six parts:

* **accuracy**: P processes (8) x T tasks (50) call in a loop through one
  ``RateLimit(2000, burst=20)`` (``--rate``) in wait mode with a
  ``RedisRateLimitStore`` for S seconds (10). Goals: the calls admitted
  are within 1 % of what GCRA allows (``rate x S + burst``), never above
  it, and no 100 ms window (at any offset) holds more than
  ``rate x 0.1 + burst = 220``. The
  admission times are read in the inner call, in each process
  (``time.time()``: one clock on one machine). Also reported: round trips
  (the server's count of EVALSHA) per admitted call, and the CPU time per
  admitted call of the workers and of redis-server (on a small machine
  the fleet is CPU-bound).
* **cost**: one task calls sequentially; an admitted call through
  ``RateLimit`` with a ``RedisRateLimitStore`` (a limit that never
  refuses) against a bare EVALSHA of a trivial script (``return 1``) on
  the same coredis client (``client.evalsha``, nothing around it), the
  floor of one round trip; and the same script through coredis's
  ``Script`` call (its retry and transform) and through
  ``RedisConnection.run`` (its timeout and guard); and two scripts sent
  bare, to part the server's work from layers' Python: the store's own
  GCRA script, and the least any exact GCRA on the server's clock does
  (``TIME``, ``GET``, ``SET``: one take, nothing else). Round-robin
  blocks of 100 calls for ``--rounds`` rounds (40), per-call latency, p50
  and p99, on asyncio and trio. Goal: at most 1.15x the bare EVALSHA at
  p50.
* **peers**: ``limits`` (its async moving-window and fixed-window
  strategies on its async Redis storage) and pyrate-limiter (its
  ``RedisBucket``, a sliding log, and its GCRA ``StateBucket`` on a
  ``RedisStateStore``), side by side with layers on the same server: the
  accuracy run's setting (2000/s; the window peers count per 1 s window)
  for the achieved rate, the busiest 1 s and 100 ms windows; and calls/s:
  P processes x ``--fast-tasks`` tasks (10) on a limit none reaches
  (1,000,000/s) for min(S, 3) seconds. The peers run on asyncio (their
  async clients are asyncio-only); so does layers in this part. ``limits``
  pins ``coredis < 6``: give it a venv of its own and pass its interpreter
  with ``--limits-python``. Goals: layers never above what its limit
  allows, and at least 2x each peer's calls/s.
* **lease**: lease mode (``lease=L``, ``--lease``, 100) against exact
  mode: calls/s as in the peers part (goal: at least 10x exact mode), and
  the calls admitted by P x T tasks on ``RateLimit(10000, burst=200)`` for
  S seconds (goal: within 2 % of ``rate x S + burst``, never above).
* **concurrency**: P processes x 5 tasks through one
  ``ConcurrencyLimit(10)`` with a ``RedisConcurrencyStore``, each call
  holding its permit 10 ms: the most calls in flight across the fleet
  (from the calls' enter and leave times on the machine's monotonic
  clock; goal: exactly 10). Then a process takes all 10 permits and is
  killed with SIGKILL while this process waits for 10 permits: the time
  until the permits are back (goal: within ``lease_ttl``,
  ``--lease-ttl``, 2 s here).
* **breaker**: a ``CircuitBreaker`` shared through a
  ``RedisBreakerStore``. *Cost*: in this process, on asyncio and trio,
  the success path of a closed shared breaker (count window; time window)
  against the same breaker in memory, timed as bench_core.py does (tight
  loops of 10,000 calls, round-robin, ``--rounds`` rounds, medians); the
  background work runs between the loops. Goal: at most 1.3x. *Commands*:
  P processes each calling at 10,000 calls/s for min(S, 5) seconds: the
  round trips per second per process, counted by the server (``INFO
  commandstats`` over the run, read by one worker) and by the stores
  (their steps), and the workers' CPU per call against the same run in
  memory. Goal: no round trip per call (under one EVALSHA per 1,000
  calls). *Propagation*: this process trips the breaker (``--trips``
  times, 30), P - 1 worker processes call it every 1 ms and note when they
  start rejecting; the delay from the trip (the script's ``TIME``, the
  machine's clock) to each worker's first rejection, p50 and p99 (at most
  3 x S trips). Goal: p99 at most 100 ms, and every worker rejects after
  every trip. The cost part also prints the ratio of the fastest rounds:
  on a loaded machine the medians of such short loops move by 30 % or
  more from run to run.

A call refused with ``StoreUnavailable`` (a command over the connection's
0.25 s timeout, under overload) is counted and reported, not admitted.

The script exits with status 1 when a goal fails.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import importlib.util
import itertools
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "_redis_workers.py"
sys.path.insert(0, str(HERE.parent / "tests"))

from _method import versions  # noqa: E402
from redis_server import RedisServer  # noqa: E402

PARTS = ("accuracy", "cost", "peers", "lease", "concurrency", "breaker")
FAILED: list[str] = []


def verdict(ok: bool, goal: str) -> str:
    if not ok:
        FAILED.append(goal)
    return "PASS" if ok else "FAIL"


def pct(value: float) -> str:
    return f"{value * 100:+.2f} %"


def busiest(stamps: list[float], width: float, *, closed: bool = True) -> int:
    """The most stamps in any window of *width* seconds (sorted stamps).

    Closed ``[t, t + width]`` by default (the workers' stamps); half-open
    ``[t, t + width)`` with ``closed=False``, the stretch of time GCRA's
    bound ``burst + width x rate`` is about (the server's stamps, where a
    batch's takes share one instant).
    """
    edge = bisect.bisect_right if closed else bisect.bisect_left
    most = 0
    for i, t in enumerate(stamps):
        most = max(most, edge(stamps, t + width) - i)
    return most


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


# ---------------------------------------------------------------- the server


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on the PATH (Debian: redis-server)")
    with (
        tempfile.TemporaryDirectory(prefix="bench-redis-") as directory,
        RedisServer(Path(directory)) as server,
    ):
        yield server.url


async def _admin(url: str, command: str) -> Any:
    import coredis

    async with coredis.Redis.from_url(url, decode_responses=True) as client:
        if command == "flush":
            return await client.flushall()
        if command == "reset-stats":
            return await client.config_resetstat()
        return await client.info(command)


def admin(url: str, command: str) -> Any:
    """``flush``, ``reset-stats``, or INFO of a section, on a client of its own."""
    return anyio.run(_admin, url, command)


def redis_cpu(url: str) -> float:
    """The CPU seconds redis-server has used (user + system)."""
    info = admin(url, "cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def evalsha_calls(url: str) -> int:
    """The server's count of EVALSHA commands since ``reset-stats``."""
    stats = admin(url, "commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0


# ----------------------------------------------------------------- the fleet


class WorkerFailed(RuntimeError):
    pass


def run_fleet(
    specs: list[dict[str, Any]],
    python: str = sys.executable,
    grace: float = 60.0,
    *,
    workers: Path = WORKERS,
    started: Callable[[float], None] | None = None,
) -> list[dict[str, Any]]:
    """Start one worker per spec, start them together, return their results.

    *workers* is the workers' script; *started* is called with the start
    instant once every worker has been told it.
    """
    processes: list[subprocess.Popen[str]] = []
    logs: list[Any] = []
    try:
        for spec in specs:
            log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed below)
            logs.append(log)
            processes.append(
                subprocess.Popen(
                    [python, str(workers), json.dumps(spec)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            )
        for process, log in zip(processes, logs, strict=True):
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if line != "ready":
                process.wait(timeout=30)
                log.seek(0)
                raise WorkerFailed(f"{line!r}\n{log.read()[-3000:]}")
        start = time.time() + 0.3
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(f"go {start!r}\n")
            process.stdin.close()
            process.stdin = None  # communicate() below only reads
        if started is not None:
            started(start)
        results = []
        seconds = max(spec["seconds"] for spec in specs)
        for process, log in zip(processes, logs, strict=True):
            try:
                out, _ = process.communicate(timeout=seconds + grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                log.seek(0)
                raise WorkerFailed(f"hung\n{log.read()[-3000:]}") from None
            lines = [x for x in out.splitlines() if x.startswith("result ")]
            if process.returncode != 0 or not lines:
                log.seek(0)
                raise WorkerFailed(f"exit {process.returncode}\n{log.read()[-3000:]}")
            results.append(json.loads(lines[-1].removeprefix("result ")))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def backends(option: str, count: int) -> list[str]:
    if option == "mixed":
        return [("asyncio", "trio")[i % 2] for i in range(count)]
    return [option] * count


def fleet_label(option: str) -> str:
    return "asyncio and trio alternating" if option == "mixed" else option


def rate_fleet(
    args: argparse.Namespace,
    kind: str,
    name: str,
    rate: float,
    burst: int,
    seconds: float,
    *,
    backend: str | None = None,
    lease: int | None = None,
    record: bool = True,
    tasks: int | None = None,
) -> dict[str, Any]:
    """A fleet on one rate limit; the merged result."""
    admin(args.url, "flush")
    admin(args.url, "reset-stats")
    server_cpu = redis_cpu(args.url)
    chosen = backends(backend or args.backend, args.processes)
    specs = [
        {
            "kind": kind,
            "url": args.url,
            "backend": chosen[i],
            "name": name,
            "rate": rate,
            "burst": burst,
            "lease": lease,
            "seconds": seconds,
            "tasks": tasks or args.tasks,
            "record": record,
        }
        for i in range(args.processes)
    ]
    python = args.limits_python if kind.startswith("limits-") else sys.executable
    results = run_fleet(specs, python=python)
    stamps = sorted(t for r in results for t in r["stamps"])
    admitted = sum(r["admitted"] for r in results)
    return {
        "admitted": admitted,
        "per_process": [r["admitted"] for r in results],
        "stamps": stamps,
        # layers' workers only: each permit at the server's time of its take
        "server_stamps": sorted(t for r in results for t in r.get("server_stamps", [])),
        "evalsha": evalsha_calls(args.url),
        "fallbacks": sum(r.get("fallbacks", 0) for r in results),
        "refused": sum(r.get("refused", 0) for r in results),
        "client_cpu": sum(r.get("cpu", 0.0) for r in results),
        "server_cpu": redis_cpu(args.url) - server_cpu,
    }


STORE = "StoreUnavailable (a command over the connection's 0.25 s timeout)"


def throughput(
    args: argparse.Namespace,
    kind: str,
    seconds: float,
    *,
    backend: str | None = None,
    lease: int | None = None,
) -> dict[str, Any]:
    """Calls/s of a fleet of ``--fast-tasks`` tasks per process, never limited."""
    run = rate_fleet(
        args,
        kind,
        f"fast-{kind}-{lease}",
        1_000_000,
        10**5,
        seconds,
        backend=backend,
        lease=lease,
        record=False,
        tasks=args.fast_tasks,
    )
    calls = max(1, run["admitted"])
    return {
        "calls": run["admitted"] / seconds,
        "refused": run["refused"],
        "evalsha_per_call": run["evalsha"] / calls,
        "client_us": run["client_cpu"] / calls * 1e6,
        "server_us": run["server_cpu"] / calls * 1e6,
    }


# ------------------------------------------------------------------ accuracy

RATE = 2000
BURST = 20


def accuracy(args: argparse.Namespace) -> None:
    seconds = args.seconds
    rate = args.rate
    print(
        f"accuracy: {args.processes} processes ({fleet_label(args.backend)}) x "
        f"{args.tasks} tasks, RateLimit({rate:g}/s, burst={BURST}) on Redis, "
        f"wait mode, {seconds:g} s"
    )
    run = rate_fleet(args, "layers-rate", "accuracy", rate, BURST, seconds)
    allowed = rate * seconds + BURST
    admitted = run["admitted"]
    off = admitted / allowed - 1
    ok = abs(off) <= 0.01 and admitted <= allowed
    print(
        f"  admitted: {admitted:,} of {allowed:,.0f} allowed (rate x {seconds:g} s "
        f"+ burst): {pct(off)}  goal within 1 %, never above: "
        f"{verdict(ok, 'accuracy: aggregate')}"
    )
    allowance = rate * 0.1 + BURST
    server = busiest(run["server_stamps"], 0.1, closed=False)
    print(
        f"  busiest 100 ms window by the server's clock (each take's TIME): "
        f"{server} (allowance rate x 0.1 s + burst = {allowance:.0f}): "
        f"{verdict(server <= allowance, 'accuracy: 100 ms window')}"
    )
    window = busiest(run["stamps"], 0.1)
    print(
        f"  busiest 100 ms window by the workers' clocks (when inner ran; the "
        f"replies' latency and scheduling move it): {window} (reported)"
    )
    per = run["per_process"]
    print(f"  per process: min {min(per):,}, max {max(per):,}")
    if admitted:
        print(
            f"  round trips (EVALSHA) per admitted call: "
            f"{run['evalsha'] / admitted:.2f}; store fallbacks: {run['fallbacks']}"
        )
    if run["refused"]:
        print(f"  {run['refused']:,} calls refused: {STORE}")
    print(f"  {cpu_per_call(run)}")


def cpu_per_call(run: dict[str, Any]) -> str:
    calls = max(1, run["admitted"])
    return (
        f"CPU per admitted call: {run['client_cpu'] / calls * 1e6:.0f} us in the "
        f"workers, {run['server_cpu'] / calls * 1e6:.0f} us in redis-server"
    )


# ---------------------------------------------------------------------- cost


# The least any exact GCRA on the server's clock does: read the clock, read
# the key, write it back (no batch, turns, cancellation markers or up_to).
# Sent bare, it shows how much of the cost goal the server's work alone
# takes, apart from the store's script and from layers' Python.
LEAST_GCRA = r"""
local clock = redis.call('TIME')
local now = (tonumber(clock[1]) - 1700000000) + tonumber(clock[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local interval = tonumber(ARGV[1])
if tat - now > tonumber(ARGV[2]) - interval then return '0' end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX',
           math.ceil((tat - now) * 1000))
return '1 ' .. clock[1] .. ' ' .. clock[2]
"""


async def cost_backend(url: str, rounds: int, block: int) -> dict[str, list[float]]:
    import layers
    from layers.redis import RedisConnection, RedisRateLimitStore
    from layers.redis._ratelimit import SCRIPT

    async def inner(x: Any) -> Any:
        return x

    async with RedisConnection.from_url(url) as redis:
        client = redis.client
        trivial = redis.script("return 1")
        key = redis.key("bench", "trivial")
        sha = await client.script_load(trivial.script)

        async def bare(x: Any) -> Any:
            # the floor: the client's own EVALSHA, nothing around it
            return await client.evalsha(sha, keys=[key], args=[])

        async def script_call(x: Any) -> Any:
            return await trivial(keys=[key], args=[], client=client)

        async def through_run(x: Any) -> Any:
            return await redis.run(trivial, [key], [])

        store = RedisRateLimitStore(redis, name="cost")
        # A limit that never refuses, with a T long enough (1 us) for each take
        # to move the key's tat, so that the script writes the key (SET) as
        # it does for a real limit (a T below a double's step would only DEL).
        limit = layers.RateLimit(1e6, burst=10**6, store=store)
        limited = limit.layer(inner)
        # The store's own script, as it sends it for this limit, bare: what
        # the server's work (TIME, GET, SET) costs, apart from the Python.
        gcra = await client.script_load(SCRIPT)
        gcra_key = redis.key("bench", "gcra")
        state = limit._state  # pyright: ignore[reportPrivateUsage]
        head = f"1.0 1.0 {state.interval!r} {state.tolerance!r} 1e+300 0 bench:"
        counter = itertools.count()

        async def bare_gcra(x: Any) -> Any:
            word = f"{head}{next(counter)}"
            keys = [gcra_key, f"{gcra_key}:void", f"{gcra_key}:turns"]
            return await client.evalsha(gcra, keys=keys, args=["take", word])

        least = await client.script_load(LEAST_GCRA)
        least_key = redis.key("bench", "least")
        least_args = [repr(state.interval), repr(state.tolerance)]

        async def least_gcra(x: Any) -> Any:
            return await client.evalsha(least, keys=[least_key], args=least_args)

        cases = {
            "bare EVALSHA (client.evalsha, `return 1`)": bare,
            "coredis Script call, same script": script_call,
            "RedisConnection.run, same script": through_run,
            "least exact GCRA (TIME, GET, SET), bare": least_gcra,
            "the store's GCRA script, bare EVALSHA": bare_gcra,
            "RateLimit + RedisRateLimitStore, admitted": limited,
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        clock = time.perf_counter_ns
        for round_ in range(rounds + 1):
            for name, case in cases.items():
                latencies = samples[name]
                for i in range(block):
                    begin = clock()
                    await case(i)
                    if round_:  # the first round warms up
                        latencies.append((clock() - begin) / 1000)
        return samples


def cost(args: argparse.Namespace) -> None:
    rounds, block = args.rounds, 100
    print(
        f"cost: one task, sequential calls, {rounds} rounds x {block} calls per "
        f"case, round-robin; per-call latency in us"
    )
    for backend in ("asyncio", "trio"):
        samples = anyio.run(cost_backend, args.url, rounds, block, backend=backend)
        rows = {}
        for name, values in samples.items():
            values.sort()
            rows[name] = (percentile(values, 0.5), percentile(values, 0.99))
        base50, base99 = next(iter(rows.values()))
        print(f"  {backend}:")
        for name, (p50, p99) in rows.items():
            print(
                f"    {name:44} p50 {p50:7.1f} us ({p50 / base50:.2f}x)   "
                f"p99 {p99:7.1f} us ({p99 / base99:.2f}x)"
            )
        admitted = rows["RateLimit + RedisRateLimitStore, admitted"][0]
        ratio = admitted / base50
        script = rows["the store's GCRA script, bare EVALSHA"][0]
        least = rows["least exact GCRA (TIME, GET, SET), bare"][0]
        print(
            f"    the least exact GCRA on the server's clock: {least / base50:.2f}x "
            f"the floor; the store's script: {script / base50:.2f}x; layers' "
            f"Python around it: {admitted / script:.2f}x the bare script"
        )
        print(
            f"    goal: an admitted call <= 1.15x a bare EVALSHA at p50: "
            f"{ratio:.2f}x {verdict(ratio <= 1.15, f'cost ({backend})')}"
        )


# --------------------------------------------------------------------- peers

PEERS = {
    "layers-rate": "layers RateLimit + RedisRateLimitStore (GCRA, burst 20)",
    "limits-moving": "limits, moving window (async, coredis)",
    "limits-fixed": "limits, fixed window (async, coredis)",
    "pyrate-log": "pyrate-limiter RedisBucket (sliding log)",
    "pyrate-gcra": "pyrate-limiter StateBucket(GCRA, burst 20) + RedisStateStore",
}


FLOORS = {
    "floor-coredis": "no limit: EVALSHA `return 1`, coredis (asyncio)",
    "floor-redispy": "no limit: EVALSHA `return 1`, redis-py (asyncio)",
}


def peer_available(args: argparse.Namespace, kind: str) -> str | None:
    """Why *kind* cannot run here, or None."""
    if kind.startswith("limits-"):
        if args.limits_python is None:
            return "not installed (give --limits-python, a venv with limits)"
        probe = subprocess.run(
            [args.limits_python, "-c", "import limits.aio, coredis"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode:
            return f"cannot import limits with {args.limits_python}"
        return None
    if kind.startswith(("pyrate-", "floor-redispy")):
        modules = ["redis.asyncio"]
        if kind.startswith("pyrate-"):
            modules.insert(0, "pyrate_limiter")
        for module in modules:
            with contextlib.suppress(ModuleNotFoundError):
                if importlib.util.find_spec(module) is not None:
                    continue
            return f"not installed ({module}: pip install 'pyrate-limiter[redis]')"
    return None


def peers(args: argparse.Namespace) -> None:
    seconds = args.seconds
    quick = min(seconds, 3.0)
    print(
        f"peers: {args.processes} processes (asyncio) x {args.tasks} tasks on one "
        f"shared limit of {RATE}/s for {seconds:g} s; calls/s: "
        f"{args.processes} x {args.fast_tasks} tasks, a limit of 1,000,000/s, "
        f"{quick:g} s"
    )
    print(
        "  allowance: GCRA rate x S + burst; the window peers promise at most "
        f"{RATE} per 1 s window"
    )
    rows: dict[str, dict[str, float]] = {}
    for kind, label in PEERS.items():
        missing = peer_available(args, kind)
        if missing:
            print(f"  {label}: {missing}")
            continue
        try:
            run = rate_fleet(
                args, kind, f"peer-{kind}", RATE, BURST, seconds, backend="asyncio"
            )
            fast = throughput(args, kind, quick, backend="asyncio")
        except WorkerFailed as error:
            print(f"  {label}: could not run: {str(error).strip()[-400:]}")
            continue
        stamps = run["stamps"]
        rows[kind] = {
            "rate": run["admitted"] / seconds,
            "1s": busiest(stamps, 1.0),
            "100ms": busiest(stamps, 0.1),
            "1s_server": busiest(run["server_stamps"], 1.0, closed=False),
            "calls": fast["calls"],
            "client_us": fast["client_us"],
            "server_us": fast["server_us"],
            "admitted": run["admitted"],
        }
        for what, result in (("2000/s", run), ("calls/s", fast)):
            if result["refused"]:
                print(
                    f"  {label}, {what}: {result['refused']:,} calls refused: {STORE}"
                )
    floors: dict[str, dict[str, Any]] = {}
    for kind in FLOORS:
        if peer_available(args, kind) is None:
            floors[kind] = throughput(args, kind, quick, backend="asyncio")
    if not rows:
        return
    print(
        f"  {'':62} {'rate/target':>11} {'busiest 1 s':>11} {'100 ms':>7} "
        f"{'calls/s':>8} {'CPU us/call: client':>19} {'server':>6}"
    )
    for kind, row in rows.items():
        print(
            f"  {PEERS[kind]:62} {row['rate'] / RATE:11.3f} {row['1s']:11,.0f} "
            f"{row['100ms']:7,.0f} {row['calls']:8,.0f} {row['client_us']:19,.0f} "
            f"{row['server_us']:6,.0f}"
        )
    for kind, floor in floors.items():
        print(
            f"  {FLOORS[kind]:62} {'':11} {'':11} {'':7} {floor['calls']:8,.0f} "
            f"{floor['client_us']:19,.0f} {floor['server_us']:6,.0f}"
        )
    ours = rows.get("layers-rate")
    if ours is None:
        return
    allowed = RATE * seconds + BURST
    ok = ours["admitted"] <= allowed and ours["1s_server"] <= RATE + BURST
    print(
        f"  layers: {ours['admitted']:,.0f} admitted of {allowed:,.0f} allowed, "
        f"busiest 1 s by the server's clock {ours['1s_server']:,.0f} (<= "
        f"{RATE + BURST}; by the workers' clocks {ours['1s']:,.0f}): "
        f"{verdict(ok, 'peers: layers exact')}"
    )
    for kind, row in rows.items():
        if kind == "layers-rate":
            continue
        over = row["1s"] > RATE
        ratio = ours["calls"] / row["calls"] if row["calls"] else float("inf")
        print(
            f"  vs {PEERS[kind]}: {'overshoots' if over else 'within'} its "
            f"{RATE}/s in 1 s ({row['1s']:,.0f}); layers {ratio:.1f}x its "
            f"calls/s (goal >= 2x): {verdict(ratio >= 2, f'peers: 2x {kind}')}"
        )


# --------------------------------------------------------------------- lease

LEASE_RATE = 10_000
LEASE_BURST = 200


def lease(args: argparse.Namespace) -> None:
    seconds = args.seconds
    quick = min(seconds, 3.0)
    size = args.lease
    print(
        f"lease: {args.processes} processes ({fleet_label(args.backend)}) x "
        f"{args.tasks} tasks; lease={size} against exact mode"
    )
    # Alternating runs, summed: the machine's load moves both figures.
    speed: dict[str, float] = {"exact": 0.0, f"lease={size}": 0.0}
    for _ in range(2):
        for label, lease_size in (("exact", None), (f"lease={size}", size)):
            fast = throughput(args, "layers-rate", quick, lease=lease_size)
            speed[label] += fast["calls"]
            print(
                f"  {label:10} {fast['calls']:10,.0f} calls/s ({args.processes} x "
                f"{args.fast_tasks} tasks, a limit of 1,000,000/s, {quick:g} s); "
                f"EVALSHA per call {fast['evalsha_per_call']:.3f}; CPU per call "
                f"{fast['client_us']:.0f} us (workers), {fast['server_us']:.0f} "
                "us (redis-server)"
            )
            if fast["refused"]:
                print(f"  {label}: {fast['refused']:,} calls refused: {STORE}")
    ratio = speed[f"lease={size}"] / speed["exact"]
    print(
        f"  lease mode / exact mode: {ratio:.1f}x, two runs of each (goal >= 10x): "
        f"{verdict(ratio >= 10, 'lease: 10x calls/s')}"
    )
    run = rate_fleet(
        args,
        "layers-rate",
        "lease-accuracy",
        LEASE_RATE,
        LEASE_BURST,
        seconds,
        lease=size,
    )
    allowed = LEASE_RATE * seconds + LEASE_BURST
    off = run["admitted"] / allowed - 1
    ok = abs(off) <= 0.02 and run["admitted"] <= allowed
    print(
        f"  RateLimit({LEASE_RATE}/s, burst={LEASE_BURST}), lease={size}, "
        f"{seconds:g} s: {run['admitted']:,} admitted of {allowed:,.0f} allowed: "
        f"{pct(off)}  goal within 2 %, never above: {verdict(ok, 'lease: aggregate')}"
    )
    if run["refused"]:
        print(f"  {run['refused']:,} calls refused: {STORE}")
    window = busiest(run["stamps"], 0.1)
    server = busiest(run["server_stamps"], 0.1, closed=False)
    print(
        f"  busiest 100 ms window: {window} by the workers' clocks, {server} "
        "permits granted by the server's clock (exact mode's allowance "
        f"{LEASE_RATE * 0.1 + LEASE_BURST:.0f}; reported: leased permits are "
        "spent after they are granted)"
    )


# --------------------------------------------------------------- concurrency

LIMIT = 10


def most_in_flight(intervals: list[tuple[float, float]]) -> int:
    events = sorted(
        [(enter, 1) for enter, _ in intervals]
        + [(leave, -1) for _, leave in intervals],
        key=lambda e: (e[0], e[1]),  # a leave before an enter at the same instant
    )
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


async def probe(url: str, name: str, ttl: float, hog: subprocess.Popen[str]) -> Any:
    import layers
    from layers.redis import RedisConcurrencyStore, RedisConnection

    async with RedisConnection.from_url(url) as redis:
        store = RedisConcurrencyStore(redis, name=name, lease_ttl=ttl)
        limited_layer = layers.ConcurrencyLimit(LIMIT, store=store)
        got: list[float] = []
        everyone = anyio.Event()

        async def inner(x: Any) -> Any:
            got.append(time.monotonic())
            if len(got) == LIMIT:
                everyone.set()
            await everyone.wait()
            return x

        limited = limited_layer.layer(inner)
        early = 0
        async with anyio.create_task_group() as group:
            for _ in range(LIMIT):
                group.start_soon(limited, None)
            await anyio.sleep(0.5)
            early = len(got)  # permits had while the hog held them all
            os.kill(hog.pid, signal.SIGKILL)
            killed = time.monotonic()
            with anyio.fail_after(ttl * 3 + 10):
                await everyone.wait()
        return early, got[0] - killed, got[-1] - killed


def concurrency(args: argparse.Namespace) -> None:
    seconds = args.seconds
    tasks = 5
    hold = 0.01
    print(
        f"concurrency: {args.processes} processes ({fleet_label(args.backend)}) x "
        f"{tasks} tasks, ConcurrencyLimit({LIMIT}) on Redis, each call holds "
        f"{hold * 1000:g} ms, {seconds:g} s"
    )
    admin(args.url, "flush")
    chosen = backends(args.backend, args.processes)
    specs = [
        {
            "kind": "layers-concurrency",
            "url": args.url,
            "backend": chosen[i],
            "name": "bench-db",
            "limit": LIMIT,
            "hold": hold,
            "seconds": seconds,
            "tasks": tasks,
        }
        for i in range(args.processes)
    ]
    results = run_fleet(specs)
    intervals = [tuple(x) for r in results for x in r["intervals"]]
    most = most_in_flight(intervals)  # type: ignore[arg-type]
    calls = len(intervals)
    print(
        f"  most in flight across the fleet: {most} (goal exactly {LIMIT}): "
        f"{verdict(most == LIMIT, 'concurrency: most in flight')}"
    )
    busy = sum(leave - enter for enter, leave in intervals) / (LIMIT * seconds)
    print(
        f"  calls: {calls:,}, {calls / seconds:,.0f}/s (at most {LIMIT / hold:,.0f}/s "
        f"with {hold * 1000:g} ms calls): the permits were inside a call "
        f"{busy:.0%} of the time"
    )
    ttl = args.lease_ttl
    hog_spec = {
        "kind": "layers-hog",
        "url": args.url,
        "backend": "asyncio",
        "name": "bench-crash",
        "limit": LIMIT,
        "lease_ttl": ttl,
    }
    hog = subprocess.Popen(
        [sys.executable, str(WORKERS), json.dumps(hog_spec)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hog.stdout is not None
        line = hog.stdout.readline().strip()
        if line != "held":
            raise WorkerFailed(f"the hog said {line!r}")
        early, first, last = anyio.run(probe, args.url, "bench-crash", ttl, hog)
    finally:
        if hog.poll() is None:
            hog.kill()
        hog.wait()
    print(
        f"  a process holding all {LIMIT} permits killed (SIGKILL), lease_ttl="
        f"{ttl:g} s: permits taken before the kill: {early}; the first back after "
        f"{first:.2f} s, all {LIMIT} after {last:.2f} s (goal within the TTL): "
        f"{verdict(early == 0 and last <= ttl, 'concurrency: crashed permits')}"
    )


# ------------------------------------------------------------------- breaker

BREAKER_WORKERS = HERE / "_breaker_workers.py"
BREAKER_LOAD = 10_000  # calls per second per process in the commands run
BREAKER_CALLS = 10_000  # calls per timing loop in the cost run
SHARED = "CircuitBreaker(store=RedisBreakerStore)"
SHARED_TIME = "CircuitBreaker(time window, store=RedisBreakerStore)"
# Commands that the breaker's scripts run inside Redis (commandstats counts
# them too); every other command is a round trip from a client.
IN_SCRIPT = frozenset({"time", "hgetall", "hset", "publish", "pexpire", "persist"})


async def breaker_cost_backend(
    url: str, rounds: int, calls: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Ns per call of each case per round; what Redis saw during the timing."""
    from _method import interleave

    import layers
    from layers.redis import RedisBreakerStore, RedisConnection

    async def f(x: Any) -> Any:
        return x

    async with RedisConnection.from_url(url) as redis:
        breakers: list[layers.CircuitBreaker] = []

        def shared(name: str, **options: Any) -> Any:
            store = RedisBreakerStore(redis, name=name)
            breaker = layers.CircuitBreaker(**options, store=store)
            breakers.append(breaker)
            return breaker.layer(f)

        time_window: dict[str, Any] = {"window_type": "time", "window_size": 60}
        cases = {
            "bare await f(x)": f,
            "CircuitBreaker() in memory": layers.CircuitBreaker().layer(f),
            SHARED: shared("cost-count"),
            "CircuitBreaker(time window) in memory": layers.CircuitBreaker(
                **time_window
            ).layer(f),
            SHARED_TIME: shared("cost-time", **time_window),
        }
        for case in cases.values():
            assert await case(7) == 7  # the first call joins the fleet
        await anyio.sleep(0.1)
        before = await redis.client.info("commandstats")
        started = time.monotonic()
        samples = await interleave(cases, rounds, calls, warmup=3)
        elapsed = time.monotonic() - started
        after = await redis.client.info("commandstats")
        evalsha = [
            int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
            for stats in (before, after)
        ]
        seen = {
            "evalsha": evalsha[1] - evalsha[0],
            "seconds": elapsed,
            "calls": (3 + rounds) * calls * 2,  # the two shared breakers
            "closed": all(b.state is layers.CircuitState.CLOSED for b in breakers),
            "fallbacks": sum(b.statistics().store_fallbacks for b in breakers),
        }
        return samples, seen


def breaker_cost(args: argparse.Namespace) -> None:
    from statistics import median

    rounds = args.rounds
    print(
        f"  success path, closed: tight loops of {BREAKER_CALLS:,} calls, "
        f"round-robin, {rounds} rounds (bench_core.py's method), median ns per call"
    )
    for backend in ("asyncio", "trio"):
        admin(args.url, "flush")
        samples, seen = anyio.run(
            breaker_cost_backend, args.url, rounds, BREAKER_CALLS, backend=backend
        )
        ns = {name: median(values) for name, values in samples.items()}
        fastest = {name: min(values) for name, values in samples.items()}
        bare = ns["bare await f(x)"]
        print(f"  {backend}:")
        for name, value in ns.items():
            print(f"    {name:54} {value:7.1f} ns  {value / bare:5.2f}x bare")
        for shared_case, memory in (
            (SHARED, "CircuitBreaker() in memory"),
            (SHARED_TIME, "CircuitBreaker(time window) in memory"),
        ):
            ratio = ns[shared_case] / ns[memory]
            print(
                f"    goal: {shared_case} <= 1.3x {memory}: {ratio:.2f}x "
                f"(fastest rounds: {fastest[shared_case] / fastest[memory]:.2f}x) "
                f"{verdict(ratio <= 1.3, f'breaker cost ({backend}, {memory})')}"
            )
        ok = seen["closed"] and seen["fallbacks"] == 0
        print(
            f"    round trips (EVALSHA) while timing: {seen['evalsha']} in "
            f"{seen['seconds']:.1f} s for {seen['calls']:,} shared calls; "
            f"both closed and joined, no fallback: "
            f"{verdict(ok, f'breaker cost ({backend}): joined')}"
        )


def breaker_outages(results: list[dict[str, Any]]) -> None:
    """Report the calls the workers' breakers decided locally (the store failed)."""
    fallbacks = sum(r["fallbacks"] for r in results)
    if not fallbacks:
        return
    errors = sorted({r["last_error"] for r in results if "last_error" in r})
    print(
        f"    calls decided locally (the store failed): {fallbacks:,} in "
        f"{sum(r['outages'] for r in results)} outages; "
        f"{'; '.join(errors)[:300]}"
    )


def breaker_commands(args: argparse.Namespace) -> None:
    seconds = min(args.seconds, 5.0)
    processes = args.processes
    chosen = backends(args.backend, processes)
    time_window: dict[str, Any] = {"window_type": "time", "window_size": 60}
    runs: list[tuple[str, bool, dict[str, Any], int | None]] = [
        ("in memory (no store), count window of 100", False, {}, None),
        ("RedisBreakerStore, count window of 100", True, {}, None),
        ("RedisBreakerStore, time window 60 s / 10 buckets", True, time_window, None),
        ("RedisBreakerStore, count window, 10 % failures", True, {}, 10),
    ]
    print(
        f"  commands: {processes} processes ({fleet_label(args.backend)}), each "
        f"{BREAKER_LOAD:,} calls/s ({BREAKER_LOAD // 100} every 10 ms) for "
        f"{seconds:g} s; sync_interval 1 s; commands counted by the server "
        "(INFO commandstats over the run) and by the stores (their steps)"
    )
    specs = [
        {
            "kind": "breaker-load",
            "url": args.url,
            "backend": chosen[i],
            "name": "bench-load",
            "rate": BREAKER_LOAD,
            "seconds": seconds,
            "server_stats": i == 0,
            "runs": [
                {
                    "name": f"bench-load-{k}",
                    "store": store,
                    "options": options,
                    "fail_every": fail_every,
                }
                for k, (_, store, options, fail_every) in enumerate(runs)
            ],
        }
        for i in range(processes)
    ]
    admin(args.url, "flush")
    fleet = run_fleet(
        specs, workers=BREAKER_WORKERS, grace=60.0 + len(runs) * (seconds + 2)
    )
    memory_cpu: float | None = None
    for k, (label, store, _, fail_every) in enumerate(runs):
        results = [worker["runs"][k] for worker in fleet]
        calls = sum(r["calls"] for r in results)
        cpu_us = sum(r["cpu"] for r in results) / max(1, calls) * 1e6
        server: dict[str, int] = results[0]["server"]
        server.pop("info", None)  # the worker's own two INFO
        trips = {k: v for k, v in server.items() if k not in IN_SCRIPT}
        round_trips = sum(trips.values())
        steps: dict[str, int] = {}
        for r in results:
            for step, count in r["steps"].items():
                steps[step] = steps.get(step, 0) + count
        per = processes * seconds
        print(f"  {label}:")
        print(
            f"    calls/s per process {calls / per:,.0f}; CPU per call "
            f"{cpu_us:.2f} us (workers, all their work)"
            + (
                ""
                if memory_cpu is None or fail_every
                else f", {cpu_us / memory_cpu:.2f}x the in-memory run's"
            )
        )
        if not store:
            memory_cpu = cpu_us
            continue
        inside = [f"{k} {v}" for k, v in sorted(server.items()) if k in IN_SCRIPT]
        print(
            f"    round trips per second per process: {round_trips / per:.2f} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(trips.items())) or 'none'}); "
            f"commands inside scripts: {sum(server.values()) - round_trips} "
            f"({', '.join(inside)})"
        )
        counted = sum(steps.values())
        print(
            f"    the stores' steps: {counted} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(steps.items()))}); "
            f"the server's EVALSHA: {server.get('evalsha', 0)}"
        )
        breaker_outages(results)
        ratio = server.get("evalsha", 0) / max(1, calls)
        print(
            f"    goal: batches, never a round trip per call (EVALSHA per call "
            f"< 0.001): {ratio:.6f} "
            f"{verdict(ratio < 0.001, f'breaker commands ({label})')}"
        )


async def trip_fleet(
    url: str,
    options: dict[str, Any],
    trips: int,
    start_of: Callable[[], float | None],
) -> tuple[list[float], int]:
    """Trip the shared breaker *trips* times; the trips' instants (server clock)."""
    import layers
    from layers.redis import RedisBreakerStore, RedisConnection

    async def failing(x: Any) -> Any:
        raise ConnectionError("down")

    # No "circuit opened" warnings on stderr (logging's last resort).
    logging.getLogger("layers").addHandler(logging.NullHandler())
    async with RedisConnection.from_url(url) as redis:
        store = RedisBreakerStore(redis, name="propagation")
        breaker = layers.CircuitBreaker(**options, ignore=KeyError, store=store)
        service = breaker.layer(failing)
        with anyio.fail_after(120):
            while (start := start_of()) is None:  # noqa: ASYNC110 (another thread)
                await anyio.sleep(0.05)
        await anyio.sleep(max(0.0, start + 0.5 - time.time()))
        listening = await redis.client.pubsub_numsub(store.channel)
        subscribers = int(next(iter(listening.values()), 0))
        instants = []
        for _ in range(trips):
            with anyio.fail_after(10):
                while True:
                    try:
                        await service(None)
                    except ConnectionError:
                        pass
                    except layers.CircuitOpen:
                        break
                    await anyio.sleep(0.001)
            since = await redis.client.hget(store.key, "since")
            assert since is not None
            # the scripts' clock: TIME - 1,700,000,000 s
            instants.append(float(since) + 1_700_000_000)
            await anyio.sleep(0.3)
            breaker.reset()
            await anyio.sleep(0.2)
        return instants, subscribers


def breaker_propagation(args: argparse.Namespace) -> None:
    import threading

    observers = args.processes - 1
    # (a short run, as the smoke test's --seconds 0.5, trips fewer times)
    trips = min(args.trips, max(2, round(args.seconds * 3)))
    interval = 0.001
    options: dict[str, Any] = {
        "window_size": 100,
        "min_calls": 5,
        "failure_rate_threshold": 0.5,
        "open_duration": 60,
    }
    print(
        f"  propagation: this process trips the breaker {trips} times (5 failures "
        f"in a row, count window); {observers} worker processes "
        f"({fleet_label(args.backend)}) call every {interval * 1000:g} ms (calls "
        "the breaker ignores) and note when they start rejecting; reset 0.3 s "
        "after each trip"
    )
    admin(args.url, "flush")
    chosen = backends(args.backend, observers)
    specs = [
        {
            "kind": "breaker-observer",
            "url": args.url,
            "backend": chosen[i],
            "name": "propagation",
            "store": True,
            "options": options,
            "interval": interval,
            "seconds": 1.5 + trips * 0.6,
        }
        for i in range(observers)
    ]
    box: dict[str, Any] = {}

    def fleet() -> None:
        try:
            box["results"] = run_fleet(
                specs,
                workers=BREAKER_WORKERS,
                started=lambda start: box.setdefault("start", start),
            )
        except BaseException as error:  # reported below
            box["error"] = error
            box.setdefault("start", None)

    thread = threading.Thread(target=fleet)
    thread.start()
    try:

        def start_of() -> float | None:
            if "error" in box:
                raise WorkerFailed(str(box["error"]))
            return box.get("start")

        instants, subscribers = anyio.run(
            trip_fleet, args.url, options, trips, start_of
        )
    finally:
        thread.join()
    if "error" in box:
        raise box["error"]
    delays: list[float] = []
    missed = 0
    bounds = [*instants[1:], float("inf")]
    for worker in box["results"]:
        stamps: list[float] = worker["runs"][0]["stamps"]
        for instant, bound in zip(instants, bounds, strict=True):
            seen = [t for t in stamps if instant - 0.001 <= t < bound]
            if seen:
                delays.append(max(0.0, seen[0] - instant))
            else:
                missed += 1
    delays.sort()
    print(
        f"    subscribers on the channel before the first trip: {subscribers} "
        f"(one per worker); trips {len(instants)}; samples {len(delays)}; "
        f"missed {missed}"
    )
    if not delays:
        print(f"    no sample: {verdict(False, 'breaker propagation')}")
        return
    p50 = percentile(delays, 0.5) * 1000
    p99 = percentile(delays, 0.99) * 1000
    print(
        f"    delay from the trip (the script's TIME) to a worker's first "
        f"rejection: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {delays[-1] * 1000:.1f} "
        f"ms (includes up to one {interval * 1000:g} ms call interval)"
    )
    ok = p99 <= 100 and missed == 0
    print(
        f"    goal: p99 <= 100 ms, every worker rejects after every trip: "
        f"{verdict(ok, 'breaker propagation p99')}"
    )


def breaker(args: argparse.Namespace) -> None:
    print(
        "breaker: CircuitBreaker shared through RedisBreakerStore (one hash, "
        "scripts, PUBLISH on every change)"
    )
    breaker_cost(args)
    breaker_commands(args)
    breaker_propagation(args)


# ---------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="length of a timed run (10)"
    )
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument(
        "--rate", type=float, default=2000, help="the accuracy part's rate (2000/s)"
    )
    parser.add_argument("--tasks", type=int, default=50, help="tasks per process")
    parser.add_argument(
        "--fast-tasks",
        type=int,
        default=10,
        help="tasks per process in the calls/s runs (10)",
    )
    parser.add_argument(
        "--backend",
        choices=["mixed", "asyncio", "trio"],
        default="mixed",
        help="the workers' event loop (mixed: asyncio and trio alternating)",
    )
    parser.add_argument(
        "--rounds", type=int, default=40, help="the cost part's rounds (40)"
    )
    parser.add_argument(
        "--lease", type=int, default=100, help="lease mode's lease (100)"
    )
    parser.add_argument(
        "--lease-ttl", type=float, default=2.0, help="the concurrency leases' TTL"
    )
    parser.add_argument(
        "--trips",
        type=int,
        default=30,
        help="the breaker part's trips (30; at most 3 per second of --seconds)",
    )
    parser.add_argument("--redis-url", help="a server to use (default: start one)")
    parser.add_argument(
        "--limits-python",
        help="an interpreter that has `limits` (its own venv: it pins coredis < 6)",
    )
    args = parser.parse_args()
    if args.limits_python is None and importlib.util.find_spec("limits") is not None:
        args.limits_python = sys.executable

    print(
        f"{platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable}); {os.cpu_count()} cores"
    )
    print(versions(["service-layers", "anyio", "trio", "coredis"]))
    print(versions(["pyrate-limiter", "redis"]))
    if args.limits_python:
        out = subprocess.run(
            [
                args.limits_python,
                "-c",
                "from importlib.metadata import version as v;"
                'print(f\'limits {v("limits")}, coredis {v("coredis")} '
                "(its own venv)')",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        print(out.stdout.strip() or out.stderr.strip()[-200:])
    parts = PARTS if args.part == "all" else (args.part,)
    with redis_server(args.redis_url) as url:
        args.url = url
        version = admin(url, "server").get("redis_version")
        print(f"redis-server {version} at {url}")
        for part in parts:
            print()
            globals()[part](args)
    print()
    if FAILED:
        print("goals failed: " + "; ".join(FAILED))
        return 1
    print("every goal passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
