"""The examples in layers' docstrings run under plain doctest.

The docs build runs them too (``sphinx-build -b doctest``, the nox ``docs``
session); this test runs them with the standard library's doctest, with the
same option flags as Sphinx, so a broken example fails the test suite.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import layers
import layers.events

# Sphinx's doctest builder defaults (doctest_default_flags).
FLAGS = (
    doctest.ELLIPSIS | doctest.IGNORE_EXCEPTION_DETAIL | doctest.DONT_ACCEPT_TRUE_FOR_1
)


def _module_names() -> list[str]:
    names = [layers.__name__]
    names += [
        info.name
        for info in pkgutil.walk_packages(layers.__path__, f"{layers.__name__}.")
    ]
    return sorted(names)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:  # an optional extra is not installed
        pytest.skip(f"{name} needs {error.name}")


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``>>>`` example in the module's docstrings gives its shown output."""
    # No sinks: the default structlog sink would print timestamped log lines
    # into the examples' output. Restored after the test.
    monkeypatch.setattr(layers.events.STATE, "sinks", ())
    module = _import(name)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_some_examples_exist() -> None:
    """The package has docstring examples at all (the test above is not vacuous)."""
    finder = doctest.DocTestFinder()
    total = 0
    for name in _module_names():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:  # an optional extra is not installed
            continue
        total += sum(len(test.examples) for test in finder.find(module))
    assert total >= 10


def test_api_reference_lists_every_public_name() -> None:
    """docs/reference/api.md documents every name in ``layers.__all__``."""
    page = (Path(__file__).resolve().parent.parent / "docs/reference/api.md").read_text(
        encoding="utf-8"
    )
    documented = set(re.findall(r"^\.\. \w+:: (?:layers\.)?(\w+)", page, re.M))
    # Modules documented as modules, and the version, documented as data.
    missing = set(layers.__all__) - documented - {"events"}
    assert not missing, f"add these to docs/reference/api.md: {sorted(missing)}"


@pytest.mark.parametrize(
    "module_name", ["events", "otel", "health", "asgi", "httpx", "testing", "redis"]
)
def test_api_reference_lists_every_public_name_of_the_submodules(
    module_name: str,
) -> None:
    """docs/reference/api.md documents every name in each public module's __all__.

    A name counts as documented under its module's path, as the same object
    documented at the top level, or by an ``automodule`` with ``:members:``.
    """
    try:
        module = importlib.import_module(f"layers.{module_name}")
    except ModuleNotFoundError:  # an optional extra is not installed
        pytest.skip(f"layers.{module_name} needs an extra")
    page = (Path(__file__).resolve().parent.parent / "docs/reference/api.md").read_text(
        encoding="utf-8"
    )
    if re.search(
        rf"^\.\. automodule:: layers\.{module_name}\n\s+:members:", page, re.M
    ):
        return
    documented = set(re.findall(r"^\.\. \w+:: ([\w.]+)", page, re.M))
    missing = [
        name
        for name in module.__all__
        if f"layers.{module_name}.{name}" not in documented
        and not (
            name in documented and getattr(layers, name, None) is getattr(module, name)
        )
    ]
    assert not missing, f"add these to docs/reference/api.md: {missing}"


def test_readme_opens_with_the_two_commands() -> None:
    """README's first sh block runs the flagship example, its second the tests.

    Both are commands as written (no prompts or output lines), each one
    installing into a fresh venv; .ci/run runs the second one.
    """
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```", readme, flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 2, "the README must open with its two commands"
    flagship, tests = (block.strip().splitlines() for block in blocks[:2])
    for lines in (flagship, tests):
        assert lines[0] == "python3 -m venv .venv"
        assert not [line for line in lines if line.startswith(("$", ">"))]
    assert ".[trio,flagship]" in flagship[1]
    assert flagship[-1] == ".venv/bin/python examples/flagship.py"
    assert (Path(__file__).parent.parent / "examples/flagship.py").is_file()
    assert ".[tests]" in tests[1]
    assert tests[-1] == ".venv/bin/python -m pytest"


@pytest.mark.realtime
def test_readme_python_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    """Every ```python block of the README runs as written, on the real clock."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(
        r"^```python\n(.*?)^```", readme, flags=re.MULTILINE | re.DOTALL
    )
    assert blocks, "the README shows no Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    assert "Ada" in capsys.readouterr().out
