"""Limits shared by every process through Redis (the ``redis`` extra: coredis).

A :class:`RedisConnection` wraps the application's coredis client (or opens
one from a URL); the shared stores and layers take it. Every command runs
under a timeout and the caller's deadline, through a guard breaker, and a
layer whose store fails applies the store's policy (``"closed"``,
``"open"`` or ``"local"``; see :class:`layers.StoreUnavailable`).
"""

from __future__ import annotations

from .._public import publish as _publish
from ._concurrency import RedisConcurrencyStore
from ._connection import RedisConnection, default_guard
from ._ratelimit import RedisRateLimitStore

__all__ = [
    "RedisConcurrencyStore",
    "RedisConnection",
    "RedisRateLimitStore",
    "default_guard",
]

_publish(__name__, __all__)
