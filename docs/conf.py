"""Sphinx configuration for the layers documentation."""

from __future__ import annotations

import builtins
from importlib.metadata import version as _version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sphinx.application import Sphinx

project = "layers"
author = "The layers authors"
copyright = "%Y, The layers authors"  # Sphinx substitutes the current year.
release = _version("service-layers")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc + napoleon (Google style docstrings)
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_preprocess_types = True

# Every cross-reference must resolve (-n). There is no intersphinx (the build
# has no network), so names from the standard library and from dependencies
# cannot resolve: ignore them here by module prefix.
nitpicky = True
nitpick_ignore_regex = [
    # Standard library and third-party modules.
    (
        r"py:.*",
        r"(typing|typing_extensions|collections\.abc|contextvars|types|enum|"
        r"abc|datetime|logging|anyio|trio|asyncio|attrs|attr|structlog|"
        r"opentelemetry|httpx|sys|functools|inspect|contextlib|looptime|"
        r"pytest|signal|coredis|random)(\..*)?",
    ),
    # The seam between ConcurrencyLimit and its shared store: not public
    # (RedisConcurrencyStore is the one store), but it types store=.
    (r"py:class", r"layers\._concurrency\.ConcurrencyStore"),
    # The private base that hosts a store's background work (its methods are
    # documented on each public class that has it).
    (r"py:class", r"layers\._host\.BackgroundHost"),
    # The private mixin that makes ``async with layer:`` enter layer.guard()
    # (each layer documents its guard()).
    (r"py:class", r"layers\._guard\.GuardShorthand"),
    # The private base of the three fault injection layers (its methods are
    # documented on each of them).
    (r"py:class", r"layers\._chaos\._Injection"),
]

# Builtins (int, float, TimeoutError, ...): listed by name, so that a bare
# name that should resolve to a layers object still warns.
nitpick_ignore = [
    (role, name)
    for name in dir(builtins)
    for role in ("py:class", "py:exc", "py:obj", "py:data", "py:func")
] + [("py:class", "None"), ("py:obj", "None")]


def _type_parameters() -> list[tuple[str, str]]:
    """TypeVars and ParamSpecs of every layers module, which have no page.

    They appear in signatures as class references (``layers._core.ReqT``);
    they are found by type, so any other broken link still warns.
    """
    import importlib
    import pkgutil
    import typing

    import layers

    kinds = (typing.TypeVar, typing.ParamSpec, typing.TypeVarTuple)
    found: list[tuple[str, str]] = []
    modules = [layers.__name__] + [
        info.name
        for info in pkgutil.walk_packages(
            layers.__path__, "layers.", onerror=lambda _name: None
        )
    ]
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # an optional dependency (otel, httpx) is missing
            continue
        for attr, value in vars(module).items():
            if isinstance(value, kinds):
                for target in (f"{module_name}.{attr}", attr):
                    for role in ("py:class", "py:obj", "py:data"):
                        found.append((role, target))
                        if isinstance(value, typing.ParamSpec):
                            found.append((role, f"{target}.args"))
                            found.append((role, f"{target}.kwargs"))
    return found


nitpick_ignore += _type_parameters()

# doctest
# Docstring examples (run by `-b doctest` too) see the public names unqualified.
# The default structlog sink is turned off: its lines carry timestamps, and
# the examples show return values, not logs.
doctest_global_setup = """
import anyio
import layers
from layers import *
layers.set_logging(False)
"""
doctest_global_cleanup = """
layers.set_logging(True)
"""

# sphinx-copybutton: a copy button on every code block. In a ">>>" session it
# copies the code only: the prompts (">>> ", "... ") are left out, and so are
# the lines without one (the output). A block without prompts (a script, a
# shell command) is copied whole.
copybutton_prompt_text = r">>> |\.\.\. "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True
copybutton_remove_prompts = True
copybutton_exclude = ".linenos"  # not ".gp": the prompts must reach the pattern

# HTML
html_theme = "furo"
html_title = f"layers {release}"


# Public homes. Every public class has its public module as ``__module__``
# (``layers.RateLimited``, see layers/_public.py), but its source, with the
# docstrings of its attributes, the order of its members and its overloads,
# is in a private module (layers/_errors.py). Sphinx reads the source of the
# module that ``__module__`` names: give it, for each public module, an
# analyzer that also knows what the private modules define, and send the
# source links ([source]) to the module that defines each class.
def _public_analyzers() -> None:
    from sphinx.pycode import ModuleAnalyzer

    from layers._public import ORIGINS

    origins: dict[str, set[str]] = {}
    for public_name, origin in ORIGINS.items():
        origins.setdefault(public_name.rpartition(".")[0], set()).add(origin)
    for public, privates in origins.items():
        analyzer = ModuleAnalyzer.for_module(public)
        analyzer.analyze()
        for private in sorted(privates):
            source = ModuleAnalyzer.for_module(private)
            source.analyze()
            for mine, theirs in (
                (analyzer.attr_docs, source.attr_docs),
                (analyzer.annotations, source.annotations),
                (analyzer.overloads, source.overloads),
                (analyzer.tagorder, source.tagorder),
            ):
                for key, value in theirs.items():
                    mine.setdefault(key, value)
            analyzer.finals.extend(source.finals)


def _defining_module(app: Sphinx, modname: str, fullname: str) -> str | None:
    from layers._public import ORIGINS

    return ORIGINS.get(f"{modname}.{fullname.partition('.')[0]}")


def setup(app: Sphinx) -> None:
    _public_analyzers()
    app.connect("viewcode-follow-imported", _defining_module)
