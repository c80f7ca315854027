"""Every script in examples/ runs to completion and prints what it promises."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(60)]


def run_example(name: str, *args: str) -> str:
    """Run examples/<name> with this interpreter; return its output."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def backend_section(output: str, backend: str, expected: Sequence[str] = ()) -> str:
    """The part of an example's output under its ``== <backend> ==`` heading.

    Each line of *expected* must be in it.
    """
    section = output.split(f"== {backend} ==", 1)[1].split("\n== ", 1)[0]
    for line in expected:
        assert line in section, f"{backend}: {line!r} missing from:\n{section}"
    return section


def only_backend_section(
    output: str, backend: str, expected: Sequence[str] = ()
) -> str:
    """Like :func:`backend_section`, and no other backend ran (``--backend``)."""
    other = {"asyncio": "trio", "trio": "asyncio"}[backend]
    assert f"== {other} ==" not in output, f"--backend {backend} ran {other}:\n{output}"
    return backend_section(output, backend, expected)


def test_every_example_is_tested() -> None:
    """A new script in examples/ gets a test here."""
    tested = {"quickstart.py", "custom_layer.py", "testing_with_mock.py"}
    tested |= {"retry_client.py"}
    tested |= {"circuit_breaker.py"}
    tested |= {"per_tenant_rate_limit.py"}
    tested |= {"health_endpoint.py"}
    tested |= {"metrics.py"}
    tested |= {"shutdown_server.py", "asgi_app.py"}
    tested |= {"httpx_client.py"}
    tested |= {"flagship.py"}  # in test_flagship.py
    tested |= {"shared_quota.py", "fleet_breaker.py"}
    tested |= {"degrade_gracefully.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def _check_quickstart_section(output: str, backend: str) -> None:
    section = backend_section(
        output,
        backend,
        [
            "-> Ada Lovelace (#1)",
            "-> Grace Hopper (#2)",
            "users_api(1) sees a deadline 0.20 s away",
            "event: elapsed layer='users-api' timeout=0.2",
            "-> Elapsed: request timed out after 0.2 s (layer 'users-api')",
            "-> Filtered: request refused by filter 'valid-id'",
            "-> UserNotFound: no user 9",
        ],
    )
    assert "users_api(0)" not in section  # the filter refused it before the API


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_quickstart_on_one_backend(backend: str) -> None:
    """quickstart.py --backend X runs the stack on X only."""
    output = run_example("quickstart.py", "--backend", backend)
    only_backend_section(output, backend)
    _check_quickstart_section(output, backend)


def test_quickstart_on_both_backends() -> None:
    """quickstart.py runs on asyncio, then trio, by default."""
    output = run_example("quickstart.py")
    assert output.index("== asyncio ==") < output.index("== trio ==")
    for backend in ["asyncio", "trio"]:
        _check_quickstart_section(output, backend)


CUSTOM_LAYER_LINES = [
    "-> 200 /users (authorized)",
    "/users/3 -> Overloaded: 2 calls already in flight",
    "/reports -> Overloaded: 2 calls already in flight",
    "event: load_shed layer='api-shed' max_in_flight=2",
    "in flight at the end: 0",
]


def test_custom_layer() -> None:
    """custom_layer.py: the auth header arrives and Shed refuses the extra call."""
    output = run_example("custom_layer.py")
    for backend in ["asyncio", "trio"]:
        section = backend_section(output, backend, CUSTOM_LAYER_LINES)
        assert section.count("(authorized)") == 5


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_custom_layer_on_one_backend(backend: str) -> None:
    """custom_layer.py --backend X runs on X only."""
    output = run_example("custom_layer.py", "--backend", backend)
    only_backend_section(output, backend, CUSTOM_LAYER_LINES)


def test_testing_with_mock() -> None:
    """testing_with_mock.py: its own pytest run passes on both backends."""
    output = run_example("testing_with_mock.py")
    assert "8 passed" in output


def test_retry_client() -> None:
    """retry_client.py: retries, the Retry-After hint, the deadline, the budget."""
    output = run_example("retry_client.py")
    for backend in ["asyncio", "trio"]:
        backend_section(
            output,
            backend,
            [
                "event: attempt 1 failed (ConnectionError), retrying in",
                "-> 200 widget: 12 in stock (attempt 3)",
                "event: attempt 2 failed (__main__.ServerBusy), retrying in 0.050 s",
                "-> 200 after 3 calls",
                "event: retry_stopped (deadline) after 3 attempts",
                "note: retry 'retry' gave up after 3 attempts: the deadline",
                "retries with the default budget: 160",
                "retries without a budget: 600",
            ],
        )


def test_circuit_breaker() -> None:
    """circuit_breaker.py: trips, rejects both endpoints, probes, closes."""
    output = run_example("circuit_breaker.py")
    for backend in ["asyncio", "trio"]:
        section = backend_section(
            output,
            backend,
            [
                "10: charged 10",
                "event: circuit_opened closed -> open",
                "60: CircuitOpen (retry after",
                "calls that reached the host while open: 0",
                "statistics: state=open calls=4 failure_rate=0.5",
                "event: circuit_half_opened open -> half_open",
                "80: charged 80",
                "event: circuit_closed half_open -> closed",
                "90: refunded 90",
                "state: closed",
            ],
        )
        assert section.count("event: circuit_call_rejected state=open") == 3


PER_TENANT_LINES = [
    "acme: 6 admitted, 2 refused",
    "globex: 2 admitted, 0 refused",
    "per-tenant: waited=4 rejected=2 waiting=0",
    "bulkhead: in flight at the end: 0, waiting: 0",
    "t3: 200 /",
    "t4: RateLimited, retry after 1.0 s",
    "t1: RateLimited, retry after 1.0 s",
    "free-tier: keys=3 table_full=1",
]


def test_per_tenant_rate_limit() -> None:
    """per_tenant_rate_limit.py: per-tenant waits and refusals, a full key table."""
    output = run_example("per_tenant_rate_limit.py")
    for backend in ["asyncio", "trio"]:
        backend_section(output, backend, PER_TENANT_LINES)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_per_tenant_rate_limit_on_one_backend(backend: str) -> None:
    """per_tenant_rate_limit.py --backend X runs on X only."""
    output = run_example("per_tenant_rate_limit.py", "--backend", backend)
    only_backend_section(output, backend, PER_TENANT_LINES)


def test_metrics() -> None:
    """metrics.py: OpenTelemetry data points for calls, retries, breaker state."""
    output = run_example("metrics.py")
    for line in [
        "plum: CircuitOpen",
        "layers.calls {layers.call.outcome=success, layers.layer.name=inventory-api} 2",
        "layers.calls {error.type=layers.CircuitOpen, layers.call.outcome=rejected, "
        "layers.layer.name=inventory-api} 1",
        "layers.retries {error.type=ConnectionError, layers.layer.name=retry} 1",
        "layers.circuit_breaker.transitions {layers.circuit_breaker.from_state=closed, "
        "layers.circuit_breaker.reason=consecutive_failures, "
        "layers.circuit_breaker.to_state=open, layers.layer.name=inventory} 1",
        "layers.rejections {layers.layer.kind=circuit_breaker, "
        "layers.layer.name=inventory, layers.rejection.reason=open} 1",
        "layers.circuit_breaker.state {layers.circuit_breaker.state=open, "
        "layers.layer.name=inventory} 1",
    ]:
        assert line in output, f"{line!r} missing from:\n{output}"
    assert "layers.call.duration {layers.call.outcome=success" in output


def test_health_endpoint() -> None:
    """health_endpoint.py: hypercorn serves 200, degraded 200, then 503."""
    output = run_example("health_endpoint.py")
    for backend in ["asyncio", "trio"]:
        section = backend_section(
            output,
            backend,
            [
                'GET /livez -> 200 {"status":"healthy","checks":{}}',
                'GET /readyz -> 200 {"status":"healthy",',
                'GET /readyz -> 200 {"status":"degraded",',
                '"payments-api":{"status":"unhealthy","critical":false}',
                'GET /readyz -> 503 {"status":"unhealthy",',
            ],
        )
        assert "s3cret" not in section


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_shutdown_server_example(backend: str) -> None:
    """shutdown_server.py: stopped by SIGTERM, it exits 0 (more in test_shutdown_*)."""
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "shutdown_server.py"), "--backend", backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=EXAMPLES.parent,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("job 1 started"):
            break
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "shutting down: signal SIGTERM" in output
    assert "new work rejected: ShuttingDown" in output


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_asgi_app(backend: str) -> None:
    """asgi_app.py: 200, 429 with Retry-After, 504, then a drained shutdown."""
    output = run_example("asgi_app.py", "--backend", backend)
    for line in [
        "GET / 200 hello from /",
        "GET / 429 Retry-After: 1",
        "GET /sleep/3 504 Gateway Timeout",
        "in flight during shutdown: 200 hello from /sleep/0.5",
        "  hypercorn: finished",
        "drained: DrainStatistics(in_flight=0, draining=True",
    ]:
        assert line in output, f"{line!r} missing from:\n{output}"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_httpx_client(backend: str) -> None:
    """httpx_client.py retries past a 503 and a 429, then a breaker opens per host."""
    output = run_example("httpx_client.py", "--backend", backend)
    assert "GET https://[redacted]@api.test/items -> 200" in output
    # real time: 0.1 s of backoff and the 2 s of Retry-After, and a busy machine
    waited = re.search(r"items: \[1, 2, 3\], after ([0-9.]+) s of retries", output)
    assert waited is not None, output
    assert 2.1 <= float(waited.group(1)) < 21
    assert "down.test attempt 1: 503" in output
    assert "attempt 2: circuit breaker 'https://down.test:443' is open" in output
    assert "s3cret" not in output
    assert "pw@" not in output


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_shared_quota(backend: str, redis_server_on_path: str) -> None:
    """shared_quota.py: 4 processes keep to one quota and one limit in Redis."""
    # It starts a redis-server of its own (skipped where none is installed,
    # a failure with LAYERS_REQUIRE_REDIS=1), runs 3 s of calls, stops it.
    output = run_example("shared_quota.py", "--backend", backend)
    section = only_backend_section(
        output,
        backend,
        ["OK: the fleet kept to the quota and to the concurrency limit"],
    )
    assert "LIMIT BROKEN" not in section
    processes = re.findall(r"process \d: (\d+) calls, [0-9.]+/s", section)
    assert len(processes) == 4, section
    assert all(int(calls) > 0 for calls in processes), section
    total = re.search(r"all 4: (\d+) calls in 3 s = ([0-9.]+)/s", section)
    assert total is not None, section
    assert sum(map(int, processes)) == int(total.group(1))
    # At most what GCRA allows (200 x 3 s + burst 10): exact whatever the
    # machine's speed. 4 x 10 callers on 5 permits of 5 ms calls can do more
    # than 200/s on a quiet machine, but on a loaded one (processes starting
    # late, slow round trips) they reached 55 % of the quota: the floor is
    # a tenth of it (a timing bound 10x below what is expected).
    assert 0.1 * 200 * 3 <= int(total.group(1)) <= 200 * 3 + 10, section
    fleet = re.search(r"in flight across the fleet: at most (\d+) \(limit 5\)", section)
    assert fleet is not None, section
    assert 1 <= int(fleet.group(1)) <= 5, section


def test_degrade_gracefully() -> None:
    """degrade_gracefully.py: a stampede coalesced, fallbacks, a game day."""
    output = run_example("degrade_gracefully.py")
    for backend in ["asyncio", "trio"]:
        backend_section(
            output,
            backend,
            [
                "stampede: 1000 requests, 1 database query",
                "every request got the same answer object: True",
                "shelf: [] in place of ConnectionError (error)",
                "shelf: [] in place of layers.CircuitOpen (rejected)",
                "breaker: open",
                "game day: 27 faults injected in 122 calls; 95 of 100 pages full, "
                "5 with the fallback",
                "switched off: 0 faults in 100 calls",
            ],
        )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_fleet_breaker(backend: str, redis_server_on_path: str) -> None:
    """fleet_breaker.py: one trip stops 4 processes; the probes close it for all."""
    # Like shared_quota.py: a redis-server of its own, 3 s of calls.
    output = run_example("fleet_breaker.py", "--backend", backend)
    section = only_backend_section(
        output,
        backend,
        ["OK: one trip stopped every process, and the probes closed it for all"],
    )
    processes = re.findall(
        r"process \d: (\d+) ok, (\d+) failed, (\d+) rejected; states: (.*)", section
    )
    assert len(processes) == 4, section
    for ok, failed, rejected, states in processes:
        assert int(ok) > 0, section
        assert int(failed) > 0, section
        assert int(rejected) > 0, section
        assert states.startswith("closed -> open"), section
        assert states.endswith("closed"), section
        assert "locally" not in states, section  # Redis answered throughout
    down = re.search(r"calls the API got while down: (\d+)", section)
    assert down is not None, section
    assert int(down.group(1)) < 4 * 10, section


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--processes", "0"),
        ("--processes", "x"),
        ("--seconds", "-1"),
        ("--seconds", "nan"),
    ],
)
def test_shared_quota_refuses_a_bad_option(option: str, value: str) -> None:
    """shared_quota.py --processes 0 / --seconds -1: a usage error, no traceback."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "shared_quota.py"), option, value],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"argument {option}" in result.stderr
    assert "Traceback" not in result.stderr


def test_shared_quota_says_when_its_redis_does_not_answer() -> None:
    """--redis-url of a Redis that is not running: one clear line, exit status 1."""
    with socket.socket() as sock:  # a port on loopback where nothing listens
        sock.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "shared_quota.py"), "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Redis at {url} does not answer" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
