"""Every script in examples/ runs to completion and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
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


def test_every_example_is_tested() -> None:
    """A new script in examples/ gets a test here."""
    tested = {"quickstart.py", "custom_layer.py", "testing_with_mock.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def _check_quickstart_section(output: str, backend: str) -> None:
    section = output.split(f"== {backend} ==", 1)[1].split("\n== ", 1)[0]
    for line in [
        "-> Ada Lovelace (#1)",
        "-> Grace Hopper (#2)",
        "users_api(1) sees a deadline 0.20 s away",
        "event: elapsed layer='users-api' timeout=0.2",
        "-> Elapsed: request timed out after 0.2 s (layer 'users-api')",
        "-> Filtered: request refused by filter 'valid-id'",
        "-> UserNotFound: no user 9",
    ]:
        assert line in section, f"{backend}: {line!r} missing from:\n{section}"
    assert "users_api(0)" not in section  # the filter refused it before the API


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_quickstart_on_one_backend(backend: str) -> None:
    """quickstart.py --backend X runs the stack on X only."""
    output = run_example("quickstart.py", "--backend", backend)
    _check_quickstart_section(output, backend)
    other = {"asyncio": "trio", "trio": "asyncio"}[backend]
    assert f"== {other} ==" not in output


def test_quickstart_on_both_backends() -> None:
    """quickstart.py runs on asyncio, then trio, by default."""
    output = run_example("quickstart.py")
    assert output.index("== asyncio ==") < output.index("== trio ==")
    for backend in ["asyncio", "trio"]:
        _check_quickstart_section(output, backend)


def test_custom_layer() -> None:
    """custom_layer.py: the auth header arrives and Shed refuses the extra call."""
    output = run_example("custom_layer.py")
    for backend in ["asyncio", "trio"]:
        section = output.split(f"== {backend} ==", 1)[1].split("\n== ", 1)[0]
        for line in [
            "-> 200 /users (authorized)",
            "/users/3 -> Overloaded: 2 calls already in flight",
            "/reports -> Overloaded: 2 calls already in flight",
            "event: load_shed layer='api-shed' max_in_flight=2",
            "in flight at the end: 0",
        ]:
            assert line in section, f"{backend}: {line!r} missing from:\n{section}"
        assert section.count("(authorized)") == 5


def test_testing_with_mock() -> None:
    """testing_with_mock.py: its own pytest run passes on both backends."""
    output = run_example("testing_with_mock.py")
    assert "8 passed" in output
