"""RedisConcurrencyStore: the permits of a ConcurrencyLimit, shared through Redis.

**Permits are leases.** The permits of one limit are the members of a sorted
set, each scored by the time its lease expires on the *server's* clock
(``TIME`` inside the scripts, in milliseconds), so the clocks of the
processes do not matter. Taking a permit is one script: drop the expired
leases, then add this permit if fewer than ``max_in_flight`` remain. The
permit's id is made by the client, so asking again for the same id (after a
timeout whose reply was lost) takes nothing twice. While a call runs, one
loop per store and process renews every permit the process holds, in one
script call every ``lease_ttl / 3``; a process that crashes or freezes stops
renewing, and its permits expire within ``lease_ttl``. A call that ends (or
is cancelled) gives its permit back at once, in a script shielded from the
cancellation and bounded by the connection's timeout; if Redis does not
answer, the permit is released by the renewal loop once Redis answers, and
expires after ``lease_ttl`` in any case. The key expires when the last lease
does, so an idle limit leaves nothing in Redis.

**Waiting: pub/sub, one channel per limit.** A call that finds every permit
taken waits in its process's queue; only the first waiter of the process
asks Redis again, when it hears that a permit was released. Releases are
announced with ``PUBLISH`` on the limit's channel, by the release script
itself, and only while someone waits (a refused call sets a short-lived
"waiting" key). Each process holds one subscription per limit. Pub/sub was
chosen over the other two ways:

* a notification list with ``BLPOP`` hands each token to one blocked
  connection: a connection per waiting process, and a token taken by a
  waiter that was cancelled or crashed at that moment is lost;
* keyspace notifications need ``notify-keyspace-events`` set on the server
  (which managed services and the application's own configuration may not
  allow) and would fire on every renewal too.

Pub/sub is at most once: a message sent while the subscription is down (a
reconnection) is lost. So every (re)subscription counts as a release (the
waiters ask again), and a waiter also asks again when the nearest lease
expires (the script says when: that is how a crashed holder's permit is
found), and at least every ``lease_ttl`` (every ``lease_ttl / 10`` while the
subscription is down). A release wakes one waiter in each process that has
some; the first to ask gets the permit: there is no order across processes,
only within one.

A lease can be lost: if a process freezes for longer than ``lease_ttl``
(or Redis restarts empty), its permits expire while its calls still run.
The renewal then takes them again if there is room; if not, those calls run
on uncounted until they end. Choose ``lease_ttl`` well above the longest
pause a healthy process can take.
"""

from __future__ import annotations

import itertools
import os
import secrets
from typing import Any, Final

import anyio
from coredis.retry import NoRetryPolicy

from .._config import check_int, check_name, check_number, fail_value
from .._deadline import DEADLINE
from .._errors import CircuitOpen, StoreError
from .._store import STORE_POLICIES, StorePolicy
from ._connection import RedisConnection, tag

__all__ = ["RedisConcurrencyStore"]

# KEYS: leases, waiting. ARGV: permit, limit, ttl (ms).
# Reply {1, free permits left} or {0, ms until the nearest lease expires}.
ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, permit = KEYS[1], ARGV[1]
local limit, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local held = redis.call('ZSCORE', key, permit)
local count = redis.call('ZCARD', key)
if held or count < limit then
  redis.call('ZADD', key, now + ttl, permit)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  if not held then count = count + 1 end
  return {1, limit - count}
end
redis.call('SET', KEYS[2], '1', 'PX', 2 * ttl)
local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now}
"""

# KEYS: leases, waiting. ARGV: channel, permits... Reply: permits removed.
RELEASE: Final = """
local removed = 0
for i = 2, #ARGV do removed = removed + redis.call('ZREM', KEYS[1], ARGV[i]) end
if removed > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[1], removed)
end
return removed
"""

# KEYS: leases, waiting. ARGV: limit, ttl (ms), channel, n, n held permits,
# then permits to drop. Renews the held permits (taking a lost one again if
# there is room) and drops the others. Reply {retaken permits, lost permits}.
RENEW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local limit, ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local missing = {}
for i = 5, 4 + n do
  if redis.call('ZSCORE', key, ARGV[i]) then
    redis.call('ZADD', key, now + ttl, ARGV[i])
  else
    missing[#missing + 1] = ARGV[i]
  end
end
local removed = 0
for i = 5 + n, #ARGV do removed = removed + redis.call('ZREM', key, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local retaken, lost = {}, {}
for _, permit in ipairs(missing) do
  if redis.call('ZCARD', key) < limit then
    redis.call('ZADD', key, now + ttl, permit)
    retaken[#retaken + 1] = permit
  else
    lost[#lost + 1] = permit
  end
end
if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
if removed > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[3], removed)
end
return {retaken, lost}
"""

_MAX_ORPHANS = 10_000


def _text(value: Any) -> str:
    """A reply's string (a client may not decode replies)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisConcurrencyStore:
    """The permits of a :class:`~layers.ConcurrencyLimit`, shared by every process.

    Give it to the layer as ``store=``; every process that uses the same
    *name* on the same Redis shares the layer's ``max_in_flight`` permits
    (give them all the same ``max_in_flight``)::

        async with RedisConnection.from_url("redis://127.0.0.1:6379/0") as redis:
            db = layers.ConcurrencyLimit(
                10, store=RedisConcurrencyStore(redis, name="db")
            )

    A permit is a lease that expires after *lease_ttl* seconds unless this
    process renews it; it renews every permit it holds every
    ``lease_ttl / 3``, in the background, so the connection must be
    entered (:meth:`RedisConnection.from_url
    <layers.redis.RedisConnection.from_url>` enters it; enter
    ``RedisConnection(client)`` with ``async with``). The permits of a
    process that crashed or froze come back within *lease_ttl*. A call that
    ends or is cancelled gives its permit back at once; if Redis does not
    answer then, the permit is given back when it answers again, or expires.
    Waiters hear of a release through pub/sub (one subscription per store
    and process) and also ask again when the nearest lease expires (see
    :doc:`/howto/limits` for why, and what that costs).

    When Redis fails (an error, a timeout, or the connection's guard is
    open), *fail* decides each call the store could not: ``"closed"``
    refuses it with :class:`~layers.StoreUnavailable`, ``"open"`` lets it
    in uncounted, ``"local"`` gives it a permit of a limit kept in this
    process, of ``max(1, max_in_flight // processes)`` permits (released
    locally, even after Redis is back). Each such call counts in the
    layer's ``statistics().store_fallbacks``; the layer emits
    :class:`~layers.events.StoreFailed` once per outage and
    :class:`~layers.events.StoreRecovered` after it.

    Keys: ``<prefix>:concurrency:{<name>}:leases`` (the sorted set) and
    ``...:waiting`` (set while someone waits); channel
    ``<prefix>:concurrency:{<name>}:released``. *name* is percent-encoded
    there as UTF-8, letters, digits and ``_.-~`` left as they are (``db``
    stays ``db``, ``orders db`` is ``orders%20db``), so that the braces are
    the keys' cluster hash tag whatever the name.

    Args:
        redis: The :class:`~layers.redis.RedisConnection` to use.
        name: The limit's name in Redis (a non-empty string).
        fail: ``"closed"`` (the default), ``"open"`` or ``"local"``.
        processes: The expected number of processes, an int >= 1; required
            with ``fail="local"`` (else unused).
        lease_ttl: Seconds a permit lives unless renewed (default 10): at
            least twice the connection's timeout, so that a renewal that
            times out is tried again before the lease expires.

    Raises:
        layers.ConfigurationError: For any invalid value, naming it.
    """

    __slots__ = (
        "_acquire",
        "_changes",
        "_channel",
        "_counter",
        "_event",
        "_held",
        "_leases",
        "_limit",
        "_orphans",
        "_process",
        "_release",
        "_renew",
        "_running",
        "_subscribed",
        "_tag",
        "_ttl_ms",
        "_waiting",
        "fail",
        "lease_ttl",
        "name",
        "processes",
        "redis",
    )

    def __init__(
        self,
        redis: RedisConnection,
        *,
        name: str,
        fail: StorePolicy = "closed",
        processes: int | None = None,
        lease_ttl: float = 10.0,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(redis, RedisConnection):  # pyright: ignore[reportUnnecessaryIsInstance]
            fail_value(owner, "redis", redis, "a layers.redis.RedisConnection")
        self.redis = redis
        self.name = check_name(owner, "name", name)
        if fail not in STORE_POLICIES:
            fail_value(owner, "fail", fail, "'closed', 'open' or 'local'")
        self.fail: StorePolicy = fail
        if processes is not None:
            check_int(owner, "processes", processes, 1, "None or an int >= 1")
        elif fail == "local":
            fail_value(
                owner,
                "processes",
                processes,
                "an int >= 1 with fail='local' (the local limit is "
                "max_in_flight // processes)",
            )
        self.processes = processes
        floor = 2 * redis.timeout
        self.lease_ttl = check_number(
            owner,
            "lease_ttl",
            lease_ttl,
            f"a finite number of seconds >= {floor:g} (2 x the connection's "
            "timeout, so that a renewal that times out is tried again in time)",
            lambda v: v >= floor,
        )
        self._ttl_ms = max(1, round(self.lease_ttl * 1000))
        self._tag = tag(name)
        self._leases = redis.key("concurrency", self._tag, "leases")
        self._waiting = redis.key("concurrency", self._tag, "waiting")
        self._channel = redis.key("concurrency", self._tag, "released")
        self._acquire = redis.script(ACQUIRE)
        self._release = redis.script(RELEASE)
        self._renew = redis.script(RENEW)
        self._process = f"{os.getpid()}.{secrets.token_hex(6)}"
        self._counter = itertools.count()
        self._limit = 0
        # The permits this process holds (renewed), and those it may hold
        # without knowing (a lost reply) or failed to release, with the
        # time (event loop clock) after which they have expired anyway.
        self._held: dict[str, None] = {}
        self._orphans: dict[str, float] = {}
        self._changes = 0
        self._event: anyio.Event | None = None
        self._running = False
        self._subscribed = False

    # ------------------------------------------------ what the layer calls

    @property
    def label(self) -> str:
        """The store's name in events: ``<prefix>:concurrency:{<name>}``."""
        return self.redis.key("concurrency", self._tag)

    @property
    def policy(self) -> StorePolicy:
        """The failure policy (*fail*)."""
        return self.fail

    @property
    def changes(self) -> int:
        """How often a permit may have come free (releases heard, resubscribing)."""
        return self._changes

    def start(self) -> None:
        """Start the background work (renewal, subscription) if it is not running.

        Raises:
            RuntimeError: The connection is not entered.
        """
        if self._running:
            return
        if not self.redis.entered:
            raise RuntimeError(
                f"RedisConcurrencyStore {self.name!r} renews the permits it holds "
                "in the background, in its connection's task group, but the "
                "connection is not entered: use `async with RedisConnection(client) "
                "as redis:` (or `async with RedisConnection.from_url(url) as "
                "redis:`) around the code that uses the limit"
            )
        self.redis.start_soon(self._background, name=f"layers.redis:{self.label}")
        self._running = True

    def permit(self) -> str:
        """A new permit id: this process's random id and a counter."""
        return f"{self._process}:{next(self._counter)}"

    async def acquire(self, permit: str, limit: int) -> tuple[bool, float]:
        """Take *permit* if fewer than *limit* permits are held (one script).

        Returns ``(True, free permits left)``, or ``(False, seconds until
        the nearest lease expires)``. Raises :class:`~layers.StoreError` if
        Redis fails; a permit the script may have taken all the same is
        released later. Cancelled while the script runs, it releases the
        permit before the cancellation goes on.
        """
        self._limit = limit
        try:
            reply = await self.redis.run(
                self._acquire,
                [self._leases, self._waiting],
                [permit, limit, self._ttl_ms],
            )
        except StoreError as error:
            if not isinstance(error.__cause__, CircuitOpen):  # it may have run
                self._orphan(permit)
            raise
        except BaseException:
            # Cancelled: the script may run after the release (on another
            # connection), so the renewal drops the permit again.
            self._orphan(permit)
            await self.release(permit)
            raise
        if int(reply[0]):
            self._held[permit] = None
            return True, float(reply[1])
        return False, max(int(reply[1]), 1) / 1000

    def use_limit(self, limit: int) -> None:
        """Hold the permits to *limit* from now on (``ConcurrencyLimit.set_limit``).

        Each :meth:`acquire` passes the limit too; this tells the renewal
        (which takes a lost permit again only if fewer than *limit* are
        held) before the next acquire.
        """
        self._limit = limit

    async def release(self, permit: str) -> None:
        """Give *permit* back now and announce it (never raises).

        Shielded from cancellation, under the connection's timeout only (not
        the caller's deadline, which may have passed). If Redis fails, the
        renewal loop releases it later, or it expires.
        """
        self._held.pop(permit, None)
        token = DEADLINE.set(None)
        try:
            with anyio.CancelScope(shield=True):
                await self.redis.run(
                    self._release,
                    [self._leases, self._waiting],
                    [self._channel, permit],
                )
        except StoreError:
            self._orphan(permit)
            self._bump()  # the waiters ask now, and apply the policy if need be
        finally:
            DEADLINE.reset(token)

    async def changed(self, since: int, at_most: float) -> None:
        """Return when :attr:`changes` is no longer *since*, or after *at_most* s.

        *at_most* is capped at *lease_ttl* (at ``lease_ttl / 10`` while the
        subscription is down).
        """
        if self._changes != since:
            return
        cap = self.lease_ttl if self._subscribed else self.lease_ttl / 10
        event = self._event
        if event is None:
            event = self._event = anyio.Event()
        with anyio.move_on_after(min(at_most, cap)):
            await event.wait()

    # ------------------------------------------------------ background work

    def _bump(self) -> None:
        self._changes += 1
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def _orphan(self, permit: str) -> None:
        orphans = self._orphans
        if len(orphans) >= _MAX_ORPHANS:  # they expire anyway: forget the oldest
            del orphans[next(iter(orphans))]
        orphans[permit] = anyio.current_time() + self.lease_ttl

    async def _background(self) -> None:
        # Started from a call: not under its deadline.
        DEADLINE.set(None)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._subscribe)
                period = self.lease_ttl / 3
                while True:
                    await anyio.sleep(period)
                    await self._renew_held()
        finally:
            self._running = False
            self._subscribed = False

    async def _renew_held(self) -> None:
        # Renew the permits held here and drop the orphans, in one script;
        # a failure is left for the next time (a lease outlives two).
        now = anyio.current_time()
        orphans = self._orphans
        for permit in [p for p, until in orphans.items() if until <= now]:
            del orphans[permit]
        held = list(self._held)
        if not held and not orphans:
            return
        dropped = list(orphans)
        try:
            reply = await self.redis.run(
                self._renew,
                [self._leases, self._waiting],
                [self._limit, self._ttl_ms, self._channel, len(held), *held, *dropped],
            )
        except StoreError:
            return
        for permit in dropped:
            orphans.pop(permit, None)
        for value in reply[0]:
            permit = _text(value)
            if permit not in self._held:  # released while the renewal ran
                self._orphan(permit)

    async def _subscribe(self) -> None:
        backoff = 0.05
        while True:
            try:
                async with self.redis.client.pubsub(
                    channels=[self._channel],
                    retry_policy=NoRetryPolicy(),
                    subscription_timeout=max(1.0, self.redis.timeout),
                ) as pubsub:
                    self._subscribed = True
                    self._bump()  # a release may have gone unheard: ask again
                    backoff = 0.05
                    async for message in pubsub:
                        if message["type"] == "message":
                            self._bump()
            except Exception:  # Redis is down: try again
                pass
            finally:
                self._subscribed = False
            # The waiters ask now, and apply the policy if Redis is down.
            self._bump()
            await anyio.sleep(backoff)
            backoff = min(2 * backoff, 1.0)

    def __repr__(self) -> str:
        return (
            f"RedisConcurrencyStore(name={self.name!r}, fail={self.fail!r}, "
            f"processes={self.processes!r}, lease_ttl={self.lease_ttl!r})"
        )
