"""examples/shutdown_server.py in a real subprocess, stopped by real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "shutdown_server.py"

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(60)]

BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


def start(backend: str, *args: str) -> subprocess.Popen[str]:
    """Start the example; return once it has started a job."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--backend", backend, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # blocks; the test's timeout bounds it
        seen.append(line)
        if line.startswith("job 2 started"):
            return process
    pytest.fail("the example never started a job:\n" + "".join(seen))


def stop(process: subprocess.Popen[str], signum: signal.Signals) -> tuple[str, float]:
    """Send *signum*; return the rest of the output and how long the exit took."""
    begun = time.monotonic()
    process.send_signal(signum)
    output, _ = process.communicate(timeout=30)
    return output, time.monotonic() - begun


@BACKENDS
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_graceful_exit(backend: str, signum: signal.Signals) -> None:
    """A signal: jobs in flight finish, new work is refused, exit 0 within grace."""
    process = start(backend, "--grace", "5")
    output, took = stop(process, signum)
    assert process.returncode == 0, output
    assert f"shutting down: signal {signum.name}" in output
    assert "job 2 done" in output  # the job in flight at the signal finished
    assert "new work rejected: ShuttingDown" in output
    assert "worker: finished" in output
    assert "in flight at exit: 0" in output
    assert "Traceback" not in output
    # A job takes 0.5 s: the exit is well within the 5 s grace.
    assert took < 5, output


@BACKENDS
def test_stuck_task_is_reported_and_exit_is_non_zero(backend: str) -> None:
    """A task that ignores shutdown is cancelled at the grace; exit 1 names it."""
    process = start(backend, "--grace", "1", "--stuck")
    output, took = stop(process, signal.SIGTERM)
    assert process.returncode == 1, output
    assert "stuck: cancelled" in output
    assert "worker: finished" in output
    assert 1 <= took < 10, output
