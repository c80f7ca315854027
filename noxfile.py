"""Development sessions: `nox` runs them all, `nox -l` lists them.

Sessions use plain `venv` (no uv or virtualenv needed) and install the
project's extras from pyproject.toml, so the tools are pinned in one place.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False
if hasattr(nox.options, "download_python"):  # nox >= 2025.10: never fetch Pythons
    nox.options.download_python = "never"

# pyright's Python wrapper would otherwise ask PyPI for a newer version.
PYRIGHT_ENV = {"PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"}

CANDIDATES = ("3.11", "3.12", "3.13", "3.14")


def _works(executable: str, version: str) -> bool:
    """Whether `executable` runs and is Python `version`.

    A pyenv shim for a version that is not activated exists on PATH but fails.
    """
    try:
        out = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == version


def _pyenv_root() -> str:
    root = os.environ.get("PYENV_ROOT")
    if root:
        return root
    pyenv = shutil.which("pyenv")
    if pyenv:
        out = subprocess.run(
            [pyenv, "root"], capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return os.path.expanduser("~/.pyenv")


def _find_pythons() -> list[str]:
    """Find every Python 3.11+ on this machine, on PATH or installed by pyenv.

    Nox looks interpreters up by name on PATH, so the directory of each one
    found only under pyenv is put at the front of PATH, where it wins over
    pyenv's shims.
    """
    found: list[str] = []
    front: list[str] = []
    pyenv_versions = os.path.join(_pyenv_root(), "versions")
    for version in CANDIDATES:
        name = f"python{version}"
        on_path = shutil.which(name)
        if on_path and _works(on_path, version):
            found.append(version)
            continue
        # Newest patch release first.
        for bindir in sorted(
            glob.glob(os.path.join(pyenv_versions, f"{version}.*", "bin")),
            reverse=True,
        ):
            executable = os.path.join(bindir, name)
            if _works(executable, version):
                front.append(bindir)
                found.append(version)
                break
    if front:
        os.environ["PATH"] = os.pathsep.join([*front, os.environ.get("PATH", "")])
    return found


PYTHONS = _find_pythons() or ["3.11"]
LATEST = PYTHONS[-1]

nox.options.sessions = ["tests", "portable", "typing", "lint", "docs", "coverage"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite on every Python found."""
    session.install("-e", ".[tests]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=LATEST)
def portable(session: nox.Session) -> None:
    """Run the test suite with every backend fast path off (LAYERS_NO_FAST_PATHS)."""
    session.install("-e", ".[tests]")
    session.run(
        "python", "-m", "pytest", *session.posargs, env={"LAYERS_NO_FAST_PATHS": "1"}
    )


@nox.session(python=PYTHONS[0])
def typing(session: nox.Session) -> None:
    """Type-check the package, tests/typing and examples (mypy and pyright)."""
    session.install("-e", ".[typing]")
    session.run("mypy", "--strict")
    session.run("pyright", env=PYRIGHT_ENV)


@nox.session(python=LATEST)
def lint(session: nox.Session) -> None:
    """Check lint rules and formatting with ruff."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=LATEST)
def docs(session: nox.Session) -> None:
    """Build the HTML docs (warnings are errors) and run their doctests."""
    session.install("-e", ".[docs,testing]")
    common = ["-W", "--keep-going", "-n", "-E"]
    session.run("sphinx-build", *common, "-b", "html", "docs", "docs/_build/html")
    session.run("sphinx-build", *common, "-b", "doctest", "docs", "docs/_build/doctest")


@nox.session(python=LATEST)
def audit(session: nox.Session) -> None:
    """Audit the dependencies for known vulnerabilities (pip-audit; needs network).

    Not in the default sessions, so that a plain `nox` stays offline: run it
    with `nox -s audit`. It installs the package with every extra and checks
    the resulting environment against PyPI's vulnerability data.
    """
    session.install("-e", ".[trio,testing,tests,audit]")
    session.run("pip-audit", "--skip-editable", "--progress-spinner", "off")


@nox.session(python=LATEST)
def coverage(session: nox.Session) -> None:
    """Measure branch coverage of the test suite."""
    session.install("-e", ".[coverage]")
    session.run("coverage", "erase")
    session.run("coverage", "run", "--branch", "-m", "pytest", *session.posargs)
    session.run("coverage", "report")
