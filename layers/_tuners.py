"""Tuners: how a limit changed at run time reaches the services it built.

A limit's success path reads its parameters from closure variables, which
cost less than an object's attributes. So that ``set_limit`` can change them,
``layer()`` registers, next to each service it builds, a function that reads
the limit's parameters into that closure again. The services are held
weakly: a service that is garbage collected takes its entry with it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, final

__all__ = ["Tuners"]


@final
class Tuners:
    """The services a limit built, each with its tuning function (held weakly)."""

    __slots__ = ("_tuners",)

    def __init__(self) -> None:
        self._tuners: dict[weakref.ref[Any], Callable[[], None]] = {}

    def add(self, service: object, tune: Callable[[], None]) -> None:
        """Call *tune* at each :meth:`tune` while *service* lives."""
        self._tuners[weakref.ref(service, self._tuners.pop)] = tune

    def tune(self) -> None:
        """Make every live service read the limit's parameters again."""
        for tune in tuple(self._tuners.values()):
            tune()

    def __len__(self) -> int:
        """The services registered that are still alive."""
        return len(self._tuners)
