"""examples/flagship.py (README command 1): the layered client beats the plain one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hypercorn")
pytest.importorskip("httpx")

FLAGSHIP = Path(__file__).resolve().parent.parent / "examples" / "flagship.py"

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(150)]


def run_flagship(backend: str) -> str:
    """Run the example on *backend* with this interpreter; return its output."""
    result = subprocess.run(
        [sys.executable, str(FLAGSHIP), "--backend", backend],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=FLAGSHIP.parent.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def row(output: str, label: str) -> tuple[str, str]:
    """The plain and layered cells of the table row *label*."""
    match = re.search(
        rf"^\s+{re.escape(label)}\s+(\S+(?: ms)?)\s+(\S+(?: ms)?)$", output, re.M
    )
    assert match, f"no row {label!r} in:\n{output}"
    return match[1], match[2]


def explanation(output: str) -> str:
    """The lines under the table that say how to read it, joined into one text."""
    assert "\nHow to read it:\n" in output, output
    return " ".join(output.split("\nHow to read it:\n", 1)[1].split())


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_flagship(backend: str) -> None:
    """On each backend the layered client succeeds more often, and never gets a 429.

    The table is followed by its explanation: why the layered client's
    latencies are higher (it waits for its quota instead of failing) and
    what varies from run to run.
    """
    output = run_flagship(backend)
    assert f"on {backend}, against a flaky API at http://127.0.0.1:" in output
    schedule = re.search(r"\((\d+) waves of (\d+) GETs, ", output)
    assert schedule, output
    total = int(schedule[1]) * int(schedule[2])
    assert re.search(r"^\s+plain\s+layered$", output, re.M), output
    plain, layered = (float(cell.rstrip("%")) for cell in row(output, "success rate"))
    assert layered > plain, output
    assert row(output, "answered 429 (over the rate)")[1] == "0", output
    reached = row(output, "calls that reached the server")
    assert reached[0] == str(total), output  # every plain call, counted by the server
    assert int(reached[1]) >= total, output
    assert int(row(output, "retries")[1]) > 0, output
    assert int(row(output, "breaker transitions")[1]) >= 2, output  # opened, and more
    assert int(row(output, "waits for the client's quota")[1]) > 0, output
    assert row(output, "  median wait")[1].endswith(" ms"), output
    assert all(cell.endswith(" ms") for cell in row(output, "calls sent late, at most"))
    assert "breaker: open at " in output, output
    for label in ["latency p50", "latency p99"]:
        assert all(cell.endswith(" ms") for cell in row(output, label)), output
    text = explanation(output)
    for phrase in [
        f"success rate: calls answered 200, out of {total}.",
        "The plain client sends each call when it comes and takes the first answer",
        "The layered client waits for its quota instead of failing",
        "Its latencies include all that waiting",
        "From run to run: the seed fixes the schedule",
        "Real time still varies",
    ]:
        assert phrase in text, f"{phrase!r} missing from the explanation:\n{output}"
