"""Give each public class its public home as ``__module__``.

A class defined in a private module (``layers._errors.RateLimited``) and
re-exported by a public one is named by the public one, as httpx and trio
do: reprs, tracebacks, Sphinx, events (:func:`layers._errors.type_name`) and
pickle then say ``layers.RateLimited``, and pickle finds the class there.
Each public module calls :func:`publish` once, over its ``__all__``, at the
end of its body.

Event classes are left alone: ``layers.events`` gives them their home.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

__all__ = ["is_private", "publish"]


def is_private(module: str) -> bool:
    """Whether the dotted *module* name has a private part (``layers._errors``)."""
    return any(part.startswith("_") for part in module.split("."))


def publish(module: str, names: Iterable[str]) -> None:
    """Set ``__module__`` to *module* for each class in *names* defined privately.

    *names* are looked up in the module *module* (already in
    :data:`sys.modules`, as it is while its body runs). A class that already
    has a public home keeps it (``layers.health.HealthStatus``, re-exported
    by ``layers``), and so does an event class (a subclass of
    :class:`layers.events.Event`).
    """
    from .events import Event

    namespace = vars(sys.modules[module])
    for name in names:
        value = namespace.get(name)
        if (
            isinstance(value, type)
            and value.__qualname__ == name
            and is_private(value.__module__)
            and not issubclass(value, Event)
        ):
            value.__module__ = module
