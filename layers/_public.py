"""Give each public class its public home as ``__module__``.

A class defined in a private module (``layers._errors.RateLimited``) and
re-exported by a public one is named by the public one, as httpx and trio
do: reprs, tracebacks, Sphinx, events (:func:`layers._errors.type_name`) and
pickle then say ``layers.RateLimited``, and pickle finds the class there.
Each public module calls :func:`publish` once, over its ``__all__``, at the
end of its body.

``layers.events`` calls it too, for the event classes that the layers'
modules define.

A class's string annotations (``from __future__ import annotations``) are
resolved first, in the module that defines the class: ``typing.get_type_hints``
looks names up in the module ``__module__`` names, which would no longer be
the one whose imports the annotations use (svcs met this, hynek/svcs#52).

:data:`ORIGINS` remembers where each class is defined, for tools that read
the source (Sphinx's attribute docstrings and source links, see
docs/conf.py).
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Iterable

__all__ = ["ORIGINS", "is_private", "publish"]

ORIGINS: dict[str, str] = {}
"""``"layers.RateLimited"`` -> ``"layers._errors"``: the module that defines
each class :func:`publish` moved, by the class's public dotted name."""


def is_private(module: str) -> bool:
    """Whether the dotted *module* name has a private part (``layers._errors``)."""
    return any(part.startswith("_") for part in module.split("."))


def publish(module: str, names: Iterable[str]) -> None:
    """Set ``__module__`` to *module* for each class in *names* defined privately.

    *names* are looked up in the module *module* (already in
    :data:`sys.modules`, as it is while its body runs). A class that already
    has a public home keeps it (``layers.health.HealthStatus``, re-exported
    by ``layers``).
    """
    namespace = vars(sys.modules[module])
    moved: list[tuple[type[object], str]] = []
    for name in names:
        value: object = namespace.get(name)
        if not isinstance(value, type):
            continue
        cls: type[object] = value
        if cls.__qualname__ == name and is_private(cls.__module__):
            ORIGINS[f"{module}.{name}"] = cls.__module__
            moved.append((cls, cls.__module__))
            cls.__module__ = module
    # after the moves, so that a generic alias made here (Service[Req, Res])
    # takes its origin's public module
    for cls, origin in moved:
        _resolve_annotations(cls, origin)


def _resolve_annotations(cls: type[object], origin: str) -> None:
    """Replace *cls*'s own string annotations by what they name in *origin*.

    A class whose annotations do not all resolve at run time (a name
    imported only for type checkers) keeps them as they are.
    """
    own: dict[str, object] | None = vars(cls).get("__annotations__")
    if not own or not any(isinstance(value, str) for value in own.values()):
        return
    # A stand-in with the class's own annotations only, in the defining module.
    stand_in = type(
        cls.__name__, (), {"__annotations__": dict(own), "__module__": origin}
    )
    try:
        hints = typing.get_type_hints(stand_in, include_extras=True)
    except Exception:  # best effort: left as strings
        return
    own.update(hints)
