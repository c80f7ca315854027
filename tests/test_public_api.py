"""The public surface: __all__, docstrings, __version__ and py.typed."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import types
from pathlib import Path

import pytest
from helpers import package_events

import layers


def explicitly_imported_submodules() -> set[str]:
    """The submodules that layers/__init__.py imports by name (``from . import x``)."""
    source = Path(inspect.getfile(layers)).read_text(encoding="utf-8")
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and not node.module:
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def test_all_is_complete() -> None:
    """Every public name in the layers namespace is listed in __all__."""
    explicit = explicitly_imported_submodules()
    public = {
        name
        for name, value in vars(layers).items()
        if not name.startswith("_")
        # A submodule appears here once anything imports it (import
        # layers.testing): only the ones __init__ imports itself are API.
        and not (isinstance(value, types.ModuleType) and name not in explicit)
    }
    assert public <= set(layers.__all__), public - set(layers.__all__)


def test_all_has_no_duplicates() -> None:
    """__all__ lists each name once."""
    assert len(layers.__all__) == len(set(layers.__all__))


@pytest.mark.parametrize("name", layers.__all__)
def test_every_exported_name_exists(name: str) -> None:
    """Every name in __all__ is an attribute of layers."""
    assert hasattr(layers, name)


@pytest.mark.parametrize("name", [n for n in layers.__all__ if n != "__version__"])
def test_every_exported_name_has_a_docstring(name: str) -> None:
    """Every name in __all__ (but the version string) has a docstring of its own."""
    value = getattr(layers, name)
    # a class's own, not one inherited (inspect.getdoc would take the base's)
    doc = vars(value).get("__doc__") if inspect.isclass(value) else value.__doc__
    assert doc, f"layers.{name} has no docstring"
    assert doc.strip(), f"layers.{name} has an empty docstring"


def test_version_matches_the_installed_metadata() -> None:
    """layers.__version__ is a str equal to the installed distribution's version."""
    assert isinstance(layers.__version__, str)
    assert layers.__version__ == importlib.metadata.version("service-layers")


def test_package_is_typed() -> None:
    """The package ships a py.typed marker."""
    assert (Path(inspect.getfile(layers)).parent / "py.typed").is_file()


# -------------------------------------------------------------------- events

# The integrations that need an extra keep their events in their own module
# (layers.events cannot import httpx); every other event is in layers.events.
INTEGRATIONS = ("layers.httpx",)


def test_the_top_level_has_no_event_class_but_event() -> None:
    """layers.__all__ holds the base class Event and no event class."""
    exported = {
        name
        for name in layers.__all__
        if isinstance(value := getattr(layers, name), type)
        and issubclass(value, layers.Event)
    }
    assert exported == {"Event"}


def test_every_event_is_public_in_layers_events() -> None:
    """Every event class of the package is layers.events.X (an extra's: its module)."""
    found = package_events()
    assert len(found) >= 17  # the walk found them
    for cls in found:
        home = cls.__module__
        assert home == "layers.events" or home in INTEGRATIONS, cls
        module = importlib.import_module(home)
        assert getattr(module, cls.__qualname__) is cls
        assert cls.__qualname__ in module.__all__


@pytest.mark.parametrize("name", layers.events.__all__)
def test_every_name_of_layers_events_is_documented(name: str) -> None:
    """Every name in layers.events.__all__ exists and has a docstring of its own."""
    value = getattr(layers.events, name)
    if inspect.isclass(value) or inspect.isfunction(value):
        doc = vars(value).get("__doc__") if inspect.isclass(value) else value.__doc__
        assert doc, f"layers.events.{name} has no docstring"
