"""Limits and breakers shared by every process through Redis (the ``redis`` extra).

A :class:`RedisConnection` wraps the application's coredis client (or opens
one from a URL); the shared stores and layers take it. Every command runs
under a timeout and the caller's deadline, through a guard breaker, and a
layer whose store fails applies the store's policy (``"closed"``,
``"open"`` or ``"local"``; see :class:`layers.StoreUnavailable`). A
:class:`~layers.CircuitBreaker` given a :class:`RedisBreakerStore` is one
breaker for every process; when Redis fails, each process's breaker falls
back to its own local logic.
"""

from __future__ import annotations

from .._public import publish as _publish
from ._breaker import RedisBreakerStore
from ._concurrency import RedisConcurrencyStore
from ._connection import RedisConnection, default_guard
from ._ratelimit import RedisRateLimitStore

__all__ = [
    "RedisBreakerStore",
    "RedisConcurrencyStore",
    "RedisConnection",
    "RedisRateLimitStore",
    "default_guard",
]

_publish(__name__, __all__)
