"""RedisRateLimitStore: a RateLimit's GCRA state in Redis, one limit for every process.

The update is one Lua script (:data:`SCRIPT`), run with EVALSHA through
:meth:`RedisConnection.run <layers.redis.RedisConnection.run>` (loaded again
on NOSCRIPT), on the server's clock (``TIME``): the clocks of the processes
never enter the schedule. The state of a key is one Redis string of four
words separated by spaces (``-`` for none), read with one GET and written
with one ``SET ... PX`` (a hash would take a third command, PEXPIRE, and
cost about 4 % more per call on loopback):

``tat``
    The theoretical arrival time, on the server's clock, in seconds since
    1,700,000,000 s after the Unix epoch (2023-11-14 22:13:20 UTC: smaller
    numbers leave a double more bits for the fraction, a step of 15 ns
    until 2028), written with 17 significant digits so that it reads back
    exactly.
``wake``
    The end of the last turn pending (see "Waiters" in
    :class:`RedisRateLimitStore`).
``last``, ``prev``
    The token of the last call admitted and the ``tat`` before it, so that
    a call cancelled while its command was in flight can be taken back.

The key expires when its ``tat`` (or its last turn) has passed: ``PX`` in
milliseconds, rounded up, so Redis holds live keys only. Beside it,
``<key>:void`` is a sorted set of the tokens of calls voided before their
take ran (scored by when they expire, 60 s on; the take that finds its
token removes it), present only after such a cancellation; and
``<key>:turns``, the turns handed to waiters that none has come for yet,
a sorted set of the tokens of the calls they were given to, scored by
their ends, present only while calls wait: a waiter that comes for its
turn, or gives it up (:meth:`RedisRateLimitStore.forfeit`, or the void of
a take cut short), removes it, and ``wake`` is then the end of the last
one left.

One run of the script takes for one call or for a batch of calls on the
same key (see "Batches" in :class:`RedisRateLimitStore`): it reads the
state once, decides each take in turn as that many separate runs at the
same instant would, and writes the state once.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import secrets
from collections.abc import Hashable, Sequence
from contextvars import ContextVar
from typing import Final, Literal, cast, final
from urllib.parse import quote, quote_from_bytes

import anyio
import anyio.lowlevel

from .._backend import Waiter, new_waiter
from .._config import check_int, check_name, fail_value
from .._deadline import DEADLINE
from .._errors import CallbackError, ConfigurationError, StoreError
from .._store import STORE_POLICIES
from ._connection import RedisConnection, finite, tag

__all__ = ["RedisRateLimitStore"]

SCRIPT: Final = r"""
-- GCRA for layers.RateLimit (layers/redis/_ratelimit.py). KEYS[1]: the
-- limit's key, the string 'tat wake last prev' ('-' for none); KEYS[2]: its
-- void markers, a sorted set of tokens (scored by when they expire);
-- KEYS[3]: the turns handed out and not yet come for, a sorted set of the
-- tokens of the calls they were given to, scored by their ends (wake is the
-- last end).
-- ARGV[1]: the op. 'take': then one word per call (a batch of calls), each
-- 'need want interval tolerance patience waited token' (waited: '0' for
-- a newcomer, '1' for a waiter, or the token of the turn it comes for),
-- decided one after another as that many takes at the same instant would be
-- (but for turns: one per command); reply: 'granted wait' per call.
-- 'peek': need, interval, tolerance; reply: wait. 'void': token; reply: '1'
-- if taken back, else '0' (a turn it was given is dropped). 'unturn': the
-- token a turn was given to; reply: '1' if it was pending. Every reply is
-- one string of words, ending with TIME's seconds and microseconds (one
-- string: a client decodes it faster than an array, and a Lua number in a
-- reply would be truncated to an integer).
local key = KEYS[1]
local op = ARGV[1]
local clock = redis.call('TIME')
-- Seconds since 1,700,000,000 s after the Unix epoch: smaller numbers keep
-- more of a double's 53 bits for the fraction (a step of 15 ns until 2028).
local now = (tonumber(clock[1]) - 1700000000) + tonumber(clock[2]) / 1000000
local function fmt(x) return string.format('%.17g', x) end
local stamp = ' ' .. clock[1] .. ' ' .. clock[2]
local value = redis.call('GET', key)
local stored, wake, last, prev
if value then
  stored, wake, last, prev = string.match(value, '^(%S+) (%S+) (%S+) (%S+)$')
end
local function save(tat, turn, token, before)
  -- Keep the state until its tat and its last turn have passed.
  local live = tonumber(tat) or now
  local until_turn = tonumber(turn)
  if until_turn ~= nil and until_turn > live then live = until_turn end
  local ms = math.ceil((live - now) * 1000)
  if ms > 0 then
    redis.call('SET', key, tat .. ' ' .. turn .. ' ' .. token .. ' ' .. before,
               'PX', ms)
  else
    redis.call('DEL', key)
  end
end
-- Drop the turn given to the call with this token, if it is pending: nobody
-- comes for it. If it was the last one, the turns now end with the last one
-- left (the state is to be saved then). Whether a turn was dropped.
local function drop_turn(token)
  local ending = redis.call('ZSCORE', KEYS[3], token)
  if not ending then return false end
  redis.call('ZREM', KEYS[3], token)
  if tonumber(wake) == tonumber(ending) then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
    wake = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')[2] or '-'
  end
  return true
end
if op == 'void' then
  -- Take back the call with this token, if nothing was taken since; if its
  -- take ran and was told to wait, drop its turn; if its take has not run
  -- yet, mark it void so that it takes nothing (a marker lives 60 s; the
  -- take that finds it removes it).
  if drop_turn(ARGV[2]) then
    save(stored or '-', wake, last or '-', prev or '-')
    return '0' .. stamp
  end
  if last ~= ARGV[2] then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    redis.call('ZADD', KEYS[2], now + 60, ARGV[2])
    redis.call('PEXPIRE', KEYS[2], 60000)
    return '0' .. stamp
  end
  save(prev, wake, '-', '-')
  return '1' .. stamp
end
if op == 'unturn' then
  if not drop_turn(ARGV[2]) then return '0' .. stamp end
  save(stored or '-', wake, last or '-', prev or '-')
  return '1' .. stamp
end
if op == 'peek' then
  local tat = tonumber(stored)
  if tat == nil or tat < now then tat = now end
  local wait = (tat - now) - (tonumber(ARGV[4]) - tonumber(ARGV[2]) * tonumber(ARGV[3]))
  if wait < 0 then wait = 0 end
  return fmt(wait) .. stamp
end
-- The takes change the state in these variables; it is written once, at
-- the end, as the last of that many separate takes would have written it.
local changed = false
local function put(tat, turn, token, before)
  stored, wake, last, prev = tat, turn, token, before
  changed = true
end
local marked = redis.call('EXISTS', KEYS[2]) == 1
local reply = {}
-- One turn per command: to its first call told to wait. The others queue
-- behind that one in their process, so a burst cancelled together leaves
-- at most one turn that nobody comes for.
local turned = false
for a = 2, #ARGV do
  local need_s, want_s, interval_s, tolerance_s, patience_s, waited, token =
    string.match(ARGV[a], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
  if marked and redis.call('ZREM', KEYS[2], token) == 1 then
    reply[a - 1] = '0 -1'  -- voided before it ran: take nothing
  else
    if waited ~= '0' and waited ~= '1' and drop_turn(waited) then
      -- A waiter came for its turn: it is no longer pending.
      put(stored or '-', wake, last or '-', prev or '-')
    end
    local need = tonumber(need_s)
    local interval = tonumber(interval_s)
    local tolerance = tonumber(tolerance_s)
    local tat = tonumber(stored)
    if tat == nil or tat < now then tat = now end
    local backlog = tat - now
    local slack = tolerance - need * interval
    local turn = tonumber(wake)
    -- A newcomer does not overtake the waiters that were given turns.
    local queued = waited == '0' and turn ~= nil and turn > now
    if backlog <= slack and not queued then
      local granted = need
      local want = tonumber(want_s)
      if want > need then
        if backlog <= tolerance - want * interval then
          granted = want
        else
          local fit = math.floor((tolerance - backlog) / interval)
          if fit > need and backlog <= tolerance - fit * interval then
            granted = fit
          end
        end
      end
      local new_tat = tat + granted * interval
      if new_tat <= now then  -- nothing to remember but the turns
        put('-', wake or '-', '-', '-')
      else
        put(fmt(new_tat), wake or '-', token, stored or '-')
      end
      if granted == need then
        reply[a - 1] = need_s .. ' 0'
      else
        reply[a - 1] = fmt(granted) .. ' 0'
      end
    else
      local wait = backlog - slack
      if turn ~= nil and turn - now > wait then
        -- A refused call waits for the turns pending: after the last one,
        -- or, if turns were dropped before it (their calls gave up), after
        -- as many turns of its cost as are pending, whichever is sooner.
        redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
        local behind = wait + redis.call('ZCARD', KEYS[3]) * need * interval
        wait = turn - now
        if behind < wait then wait = behind end
      end
      local patience = tonumber(patience_s)
      if not turned and patience > 0 and wait <= patience then
        -- A turn for this waiter: the next one gets the turn after it.
        local ending = now + wait + need * interval
        local ends = fmt(ending)
        if turn == nil or ending > turn then  -- wake: the last turn's end
          put(stored or '-', ends, last or '-', prev or '-')
        else
          changed = true
        end
        redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
        redis.call('ZADD', KEYS[3], ends, token)
        redis.call('PEXPIRE', KEYS[3],
                   math.ceil((math.max(ending, turn or ending) - now) * 1000))
        turned = true
      end
      reply[a - 1] = '0 ' .. fmt(wait)
    end
  end
end
if changed then save(stored, wake, last, prev) end
return table.concat(reply, ' ') .. stamp
"""
"""The Lua script: GCRA take, peek and void on the server's clock."""

_MAX_PART: Final = 128


def key_part(key: object) -> str:
    """The part of a Redis key that stands for a user's key (see the class docs).

    Stable across processes and runs, and free of ``{`` and ``}`` (so the
    hash tag holds). Raises TypeError for a type it cannot keep.
    """
    part = _part(key)
    if len(part) > _MAX_PART:
        digest = hashlib.blake2b(part.encode("ascii"), digest_size=16).hexdigest()
        part = f"h:{digest}"
    return part


def _part(key: object) -> str:
    if isinstance(key, str):
        return "s:" + quote(key, safe="", errors="surrogatepass")
    if isinstance(key, int):
        number = int(key)
        if -(2**63) <= number < 2**63:
            return f"i:{number}"
        return f"x:{number:x}"
    if isinstance(key, float):
        if key.is_integer():
            return _part(int(key))
        return f"f:{float(key)!r}"
    if isinstance(key, bytes):
        return "b:" + quote_from_bytes(key, safe="")
    if key is None:
        return "n"
    if isinstance(key, tuple):
        items = cast("tuple[object, ...]", key)
        return "t:(" + ",".join(_part(item) for item in items) + ")"
    raise TypeError(type(key).__name__)


def _turned(patience: float, granted: str, wait: str) -> bool:
    """Whether the script could give a take (its *patience*, its reply) a turn.

    As the script decides: a take refused (``0`` and a wait, not ``-1``,
    the void mark) whose wait its patience covers gets the turn if it is
    the first such take of its command (the caller checks that).
    """
    if granted != "0" or patience <= 0:
        return False
    waited = float(wait)
    return 0 < waited <= patience


def _keys(redis_key: str) -> tuple[str, str, str]:
    """The script's keys for a limit's key: it, its void markers, its turns."""
    return (redis_key, f"{redis_key}:void", f"{redis_key}:turns")


def _time(words: Sequence[str]) -> float:
    """The server's time in a reply (its last two words), as the script computed it."""
    return (float(words[-2]) - 1700000000) + float(words[-1]) / 1000000


BATCH: Final = 64
"""The most takes one round trip carries (see "Batches" in RedisRateLimitStore)."""


_HELD: ContextVar[tuple[str, str] | None] = ContextVar(
    "layers_redis_turn", default=None
)
"""The turn the calling task holds: its limit's Redis key, and the token of
the take it was given to.

Set in the task of the call the script gave the turn to (its waiter then
sleeps in that task), read when it comes for it or gives it up.
"""


@final
class _Take:
    """One call's take: its word for the script, and what came back for it."""

    __slots__ = (
        "error",
        "patience",
        "reply",
        "sent",
        "token",
        "turn",
        "waiter",
        "word",
    )

    def __init__(self, token: str, word: str, patience: float) -> None:
        self.token = token
        self.word = word  # 'need want interval tolerance patience waited token'
        self.patience = patience  # as sent: whether it could get a turn
        self.turn = False  # the script gave it the command's turn
        self.sent = False  # part of a command sent to Redis
        self.waiter: Waiter | None = None  # set while it waits in a queue
        self.reply: tuple[float, float, float] | None = None  # granted, wait, time
        self.error: StoreError | None = None


@final
class RedisRateLimitStore:
    """Keep a :class:`~layers.RateLimit`'s state in Redis: one limit for every process.

    Give it to ``RateLimit(..., store=...)``: the limit then holds for every
    process whose layer uses a store of the same *name* on the same Redis
    (and key prefix), with the same options and meaning as in memory (GCRA,
    ``burst``, weighted ``cost``, per-key limits, wait and reject modes).
    The processes must configure the limit alike (rate, period, burst).

    ``async with RedisConnection.from_url(url) as redis:``
    ``quota = layers.RateLimit(100, burst=10, store=RedisRateLimitStore(redis,
    name="partner_api"))``.

    **Exact by default.** Each call is decided by a Lua script that reads
    the server's clock (``TIME``) and does the GCRA step atomically, as
    :meth:`MemoryRateLimitStore.take <layers.MemoryRateLimitStore.take>`
    does in memory: for any sequence of calls, the same answers (and the
    same exact ``retry_after`` in reject mode). The clocks of the processes
    never enter the schedule. Over any stretch of time ``d`` the fleet is
    admitted at most ``burst + d / T`` calls (``T = period / rate``).

    **Batches.** A call sends its take at once when no command for its key
    is in flight from this process, so a lone call costs one round trip
    and nothing more. Calls on the same key that arrive while one is in
    flight queue here (first come, first served), and the next command
    carries all of them, up to 64, in one run of the
    script, which decides each take in that order, atomically, exactly as
    that many separate takes at that instant would (each call keeps its
    own cost, ``up_to``, turn and void marker): so under load a process
    costs about one round trip per key per reply, however many of its
    tasks call. The bound keeps one script run short (a few microseconds
    per take: Redis runs nothing else meanwhile) and leaves no queue
    unbounded in effect (beyond 64, the rest go in the next command).
    Only takes for the same Redis key share a command: the keys of a
    per-key limit may live in different cluster slots.

    The command is sent by the first of the queued calls, the batch's
    *leader*, itself a member, rather than by a task of the connection:
    a task would need the connection to be entered (a rate limit does not
    need it otherwise) and would cost a task switch on every batch. Once
    sent, a batch's command runs to its end even if its leader is
    cancelled (shielded, and bounded by the connection's *timeout* instead
    of the leader's deadline), so every member gets its reply or, if Redis
    fails, a :class:`~layers.StoreError` each (then the store's failure
    policy decides each call); the leader's own cancellation is delivered
    once the reply is in, by at most the timeout late, and its take is
    then taken back as below. A lone call's command is not shielded: it
    runs under the caller's deadline as before. ``round_trips`` counts
    commands, so under load it grows slower than the calls.

    **Keys.** A limit without a key function is the Redis key
    ``<prefix>:rate:{<name>}``; with one, each user key ``k`` is
    ``<prefix>:rate:{<name>:<part>}`` (:meth:`redis_key` gives it), the
    same in every process and every run (Python's ``hash()`` is never
    used), where ``<part>`` is:

    * for a ``str`` (or a subclass, such as a ``StrEnum``): ``s:`` and the
      string percent-encoded as UTF-8, letters, digits and ``_.-~`` left as
      they are (``"acme"`` is ``s:acme``, ``"a b"`` is ``s:a%20b``);
    * for ``bytes``: ``b:`` and the bytes percent-encoded;
    * for an ``int`` (a ``bool``, an ``IntEnum``) or an integral ``float``:
      ``i:`` and its decimal digits, so ``1``, ``1.0`` and ``True`` are one
      key, as they are one key in a ``dict`` (beyond 64 bits: ``x:`` and
      hexadecimal digits);
    * for another ``float``: ``f:`` and its ``repr`` (``f:0.5``);
    * for ``None``: ``n``; for a ``tuple`` of these: ``t:(`` and the parts
      joined by ``,``, then ``)`` (``t:(s:acme,i:42)``);
    * a part longer than 128 characters becomes ``h:`` and its BLAKE2b-128
      digest in hex, so a long key (from the network, say) makes a short
      Redis key.

    A key of another type (an object, a ``UUID``, a ``Decimal``) raises
    :class:`~layers.CallbackError` naming ``key``, before anything is sent:
    have the key function return a ``str``. The braces are a Redis Cluster
    hash tag per limit and user key, so a cluster spreads the keys of a
    per-key limit over its nodes. *name* is percent-encoded the same way
    (``partner_api`` stays as it is). A key expires when its limit is idle
    again (its ``tat`` has passed): it is written with ``PX`` set to the
    time until then, in milliseconds rounded up.

    **Waiters.** In wait mode the calls of one process queue per key (FIFO)
    and only the first of a queue asks Redis. A call told to wait is also
    given a *turn* by the script: turns are handed out one after another
    (each one ``cost x T`` after the previous one), so waiters of different
    processes sleep until different instants, each plus a jitter of up to
    ``min(T, 1 ms)``, instead of all waking together and asking again. A
    newcomer (one that has not waited) is not admitted while turns are
    pending, even if the limit has room, so across processes waiters are
    served roughly in the order they were first told to wait. A turn is
    only a hint: capacity is never reserved, so a waiter that is cancelled
    or dies leaves nothing taken. One command (a batch) gives one turn, to
    its first call told to wait; the others queue behind that call in the
    process and ask again when they head the queue. A waiter that leaves
    without coming for its turn (cancelled, say) gives it back
    (:meth:`forfeit`; a take cut short by a cancellation gives back its
    turn with its void), and a new turn comes after the last one pending
    or after as many turns as are pending, whichever is sooner: so turns
    that nobody comes for never pile up ahead of time, however many calls
    give up (a turn whose process died stays until it ends). Under
    contention an admitted call costs about two round trips (one to be
    told its turn, one to be admitted).

    **Cancellation.** A call cancelled while it waits (in the layer's
    queue, or queued here for the next batch) takes nothing. One
    cancelled while its command is in flight sends, shielded and within
    the connection's timeout, a second command that takes its call back
    (if no call was admitted since on that key) or marks it void (if it has
    not run yet). Either way it takes nothing, unless another call was
    admitted on the key in between: its share is then lost, which only
    admits fewer calls. A take whose reply is lost to a timeout (a
    :class:`~layers.StoreError`) may have been counted, with the same
    effect.

    **Lease mode** (``lease=n``): a process takes up to ``n`` permits in one
    round trip (as many as fit, and at least what the call needs) and spends
    them locally, so most calls cost no round trip at all. Leased permits
    count against the limit when they are taken, not when they are spent,
    so the fleet may run ahead of the exact schedule: in any stretch of
    time, by at most the permits each process held unspent when it began,
    fewer than ``n`` per process and key, that is ``processes x (n - 1)``
    calls of cost 1 above ``burst + d / T``. Permits a process leaves
    unspent (it goes idle or stops) are lost, which only admits fewer. A
    waiting call waits for a whole lease (under contention, a lease of
    whatever came back meanwhile would be a permit or two, and save no
    round trip) unless ``max_wait`` or the deadline cannot cover it; a call
    in reject mode takes what fits, up to a lease. The permits of a lease go
    first to the calls of this process that queued for it, in their order,
    all at once (each leaves the queue admitted), so the next calls find no
    queue and spend the rest without waiting. ``lease`` must be at
    most the limit's ``burst``. Measured (4 processes of 10 tasks, 2 on
    asyncio and 2 on trio, at 1,000 calls/s, burst 20, lease 10, for 1.5 s,
    calling flat out or in bursts): 0.20 round trips per call (1.6 to 1.9
    exact), and the busiest window at most 1.3 calls above
    ``burst + d / T`` by the workers' clocks, against 6.9 for the exact
    mode by the same clocks (the latency of replies; 0 on the server's
    clock): far inside the bound of 36, which needs every process to hold
    ``n - 1`` permits and spend them together.

    **When Redis fails** (an error, a timeout, or the connection's guard
    breaker open after repeated failures, so that a dead Redis costs no
    timeout per call), the layer applies *fail*: ``"closed"`` refuses the
    call with :class:`~layers.StoreUnavailable`; ``"open"`` admits it;
    ``"local"`` decides it with a limit in this process at ``rate /
    processes`` calls per period, with the same ``burst`` (so during an
    outage the fleet may start up to ``processes x burst`` calls at once).
    Each such call counts in ``RateLimit.statistics().store_fallbacks``;
    :class:`~layers.events.StoreFailed` and
    :class:`~layers.events.StoreRecovered` mark each outage.

    Args:
        redis: The connection (:class:`~layers.redis.RedisConnection`).
        name: The limit's name in Redis keys, a non-empty string. Every
            process that shares the limit uses the same name.
        fail: ``"closed"`` (the default), ``"open"`` or ``"local"``: what
            the layer does with a call when Redis fails.
        processes: The number of processes expected to share the limit, an
            int >= 1; required with ``fail="local"`` (the local limit is
            ``rate / processes``), unused otherwise.
        lease: ``None`` (the default: exact, every call decided on the
            server, batched as above) or an int >= 1: the permits a process
            takes at once in lease mode.

    Raises:
        layers.ConfigurationError: For an invalid argument, naming it (and
            from ``RateLimit`` for a *lease* above its ``burst``).
    """

    __slots__ = (
        "_counter",
        "_lanes",
        "_root",
        "_script",
        "_tag",
        "_token",
        "fail",
        "lease",
        "name",
        "processes",
        "redis",
        "round_trips",
    )

    def __init__(
        self,
        redis: RedisConnection,
        *,
        name: str,
        fail: Literal["closed", "open", "local"] = "closed",
        processes: int | None = None,
        lease: int | None = None,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(cast(object, redis), RedisConnection):
            fail_value(owner, "redis", redis, "a layers.redis.RedisConnection")
        check_name(owner, "name", name)
        if fail not in STORE_POLICIES:
            fail_value(owner, "fail", fail, "'closed', 'open' or 'local'")
        if processes is not None:
            check_int(owner, "processes", processes, 1, "None or an int >= 1")
        elif fail == "local":
            raise ConfigurationError(
                f"{owner}(fail='local', processes=None): processes must be an "
                "int >= 1 with fail='local' (the local limit is rate / "
                "processes), got None"
            )
        if lease is not None:
            check_int(owner, "lease", lease, 1, "None or an int >= 1")
        self.redis = redis
        """The connection."""
        self.name = name
        """The limit's name in Redis keys and in events."""
        self.fail: Literal["closed", "open", "local"] = fail
        """The failure policy, ``"closed"``, ``"open"`` or ``"local"``."""
        self.processes = processes
        """The processes expected to share the limit (for ``fail="local"``)."""
        self.lease = lease
        """Permits taken per round trip in lease mode, or ``None`` (exact)."""
        self.round_trips = 0
        """Scripts this store sent to Redis so far (round trips)."""
        self._tag = tag(name)
        self._root = redis.key("rate", self._tag)
        self._script = redis.script(SCRIPT)
        self._token = secrets.token_hex(6) + ":"
        self._counter = itertools.count()
        # Per Redis key with a command in flight: the takes queued for the next.
        self._lanes: dict[str, list[_Take]] = {}

    def redis_key(self, key: Hashable) -> str:
        """The Redis key of the user key *key* (see "Keys" above).

        Raises:
            layers.CallbackError: If *key* is of a type that cannot be kept.
        """
        if key is None:
            return self._root
        try:
            part = key_part(key)
        except (TypeError, UnicodeError):
            raise CallbackError(
                f"RedisRateLimitStore {self.name!r}: the key function (key=) "
                "must return a str, bytes, int, float, None or a tuple of "
                f"these to be kept in Redis, got a {type(key).__name__}",
                layer=self.name,
                parameter="key",
            ) from None
        return self.redis.key("rate", f"{self._tag}:{part}")

    async def take(
        self,
        key: Hashable,
        cost: float,
        interval: float,
        tolerance: float,
        /,
        *,
        up_to: float | None = None,
        waited: bool = False,
        patience: float = 0.0,
    ) -> tuple[float, float]:
        """Take *cost* units for *key*: ``(granted, wait)``.

        See :meth:`SharedRateLimitStore.take <layers.SharedRateLimitStore.take>`.
        One round trip; :class:`~layers.StoreError` if Redis fails.
        """
        granted, wait, _ = await self._take(
            key, cost, interval, tolerance, up_to, waited, patience
        )
        return granted, wait

    async def peek(
        self, key: Hashable, cost: float, interval: float, tolerance: float, /
    ) -> float:
        """The wait :meth:`take` would return now, taking nothing (one round trip).

        As :meth:`MemoryRateLimitStore.peek <layers.MemoryRateLimitStore.peek>`:
        ``max(0, backlog - (tolerance - cost * interval))``; a *cost* above
        the tolerance (the cost of a whole queue) is allowed.
        """
        wait, _ = await self._peek(key, cost, interval, tolerance)
        return wait

    async def _peek(
        self, key: Hashable, cost: float, interval: float, tolerance: float
    ) -> tuple[float, float]:
        """:meth:`peek`, and the server's time it read (for tests)."""
        redis_key = self.redis_key(key)
        args = (
            "peek",
            repr(float(cost)),
            repr(float(interval)),
            repr(float(tolerance)),
        )
        self.round_trips += 1
        reply: str = await self.redis.run(self._script, _keys(redis_key), args)
        words = reply.split()
        return float(words[0]), _time(words)

    async def _take(
        self,
        key: Hashable,
        cost: float,
        interval: float,
        tolerance: float,
        up_to: float | None = None,
        waited: bool = False,
        patience: float = 0.0,
    ) -> tuple[float, float, float]:
        """:meth:`take`, and the server's time it read (for tests)."""
        redis_key = self.redis_key(key)
        token = f"{self._token}{next(self._counter)}"
        need = float(cost)
        want = need if up_to is None or up_to < need else float(up_to)
        patience = finite(float(patience))
        if not waited:
            came = "0"
        else:  # a waiter: it comes for its turn, if it holds one
            held = _HELD.get()
            if held is not None and held[0] == redis_key:
                _HELD.set(None)
                came = held[1]
            else:
                came = "1"
        word = (
            f"{need!r} {want!r} {float(interval)!r} {float(tolerance)!r} "
            f"{patience!r} {came} {token}"
        )
        lanes = self._lanes
        queue = lanes.get(redis_key)
        if queue is None:
            # Nothing in flight for this key: send at once, alone.
            lanes[redis_key] = []
            return await self._alone(redis_key, word, token, patience)
        # A command for this key is in flight: wait for the next one, which
        # carries every take queued meanwhile (up to BATCH).
        take = _Take(token, word, patience)
        waiter = take.waiter = new_waiter()
        queue.append(take)
        try:
            await waiter.wait()
        except anyio.get_cancelled_exc_class():
            if take.sent:
                # Its batch is in flight (or answered): take it back, or
                # give back the turn it was given.
                reply = take.reply
                if reply is None or reply[0]:
                    await self._void(redis_key, token)
                elif take.turn:
                    await self._unturn(redis_key, token)
            else:
                queue.remove(take)  # it takes nothing
                if waiter.woken:  # it was to send the next batch: pass that on
                    self._next(redis_key)
            raise
        if take.reply is not None:
            if take.turn:  # this task now holds the turn
                _HELD.set((redis_key, token))
            return take.reply
        if take.error is not None:
            raise take.error
        # Woken to send: this call heads the queue, and its batch.
        assert queue[0] is take
        batch = queue[:BATCH]
        del queue[:BATCH]
        if len(batch) == 1:
            take.sent = True
            return await self._alone(redis_key, word, token, patience)
        return await self._send(redis_key, batch)

    def _next(self, redis_key: str) -> None:
        """The command for *redis_key* is done: wake the next queued take to send."""
        queue = self._lanes[redis_key]
        if queue:
            waiter = queue[0].waiter
            assert waiter is not None
            waiter.wake()
        else:
            del self._lanes[redis_key]

    async def _alone(
        self, redis_key: str, word: str, token: str, patience: float
    ) -> tuple[float, float, float]:
        """Send one take alone, under the caller's deadline: its reply."""
        self.round_trips += 1
        try:
            reply = await self.redis.run(self._script, _keys(redis_key), ("take", word))
        except anyio.get_cancelled_exc_class():
            self._next(redis_key)
            await self._void(redis_key, token)
            raise
        except BaseException:
            self._next(redis_key)
            raise
        self._next(redis_key)
        words = reply.split()
        now = _time(words)
        if _turned(patience, words[0], words[1]):  # this task now holds the turn
            _HELD.set((redis_key, token))
        return float(words[0]), float(words[1]), now

    async def _send(
        self, redis_key: str, batch: list[_Take]
    ) -> tuple[float, float, float]:
        """Send *batch* (2 takes or more, the first this call's) in one command."""
        own = batch[0]
        for take in batch:
            take.sent = True
        keys = _keys(redis_key)
        self.round_trips += 1
        args = ["take"]
        args.extend(take.word for take in batch)
        # The command carries other calls' takes: it runs to its end (bounded
        # by the connection's timeout, not this call's deadline), so that each
        # gets its reply; this call's own cancellation is delivered after.
        answered = False
        words: list[str] = []
        try:
            with anyio.CancelScope(shield=True):
                reset = DEADLINE.set(None)
                try:
                    reply: str = await self.redis.run(self._script, keys, args)
                    words = reply.split()
                finally:
                    DEADLINE.reset(reset)
            if len(words) != 2 * len(batch) + 2:
                # (a shielded scope ends only with the command; a reply
                # always answers every take: this is a safeguard)
                raise StoreError(
                    "a Redis command's reply did not answer its takes",
                    store=self.redis.prefix,
                )
            now = _time(words)
            for index, take in enumerate(batch):
                granted, wait = words[2 * index], words[2 * index + 1]
                take.reply = (float(granted), float(wait), now)
            for index, take in enumerate(batch):  # the command's one turn
                take.turn = _turned(
                    take.patience, words[2 * index], words[2 * index + 1]
                )
                if take.turn:
                    break
            if own.turn:
                _HELD.set((redis_key, own.token))
            answered = True
        except StoreError as error:
            self._fail(batch, error)
            raise
        except BaseException:  # unexpected: still, nobody is left hanging
            self._fail(
                batch, StoreError("a Redis command failed", store=self.redis.prefix)
            )
            raise
        finally:
            for take in batch[1:]:
                assert take.waiter is not None
                take.waiter.wake()
            if not answered:
                self._next(redis_key)
        # Let the members just woken run first: those that call again on this
        # key queue for the next command, which then carries them all (else
        # the first of them would find no command in flight and send alone).
        await anyio.lowlevel.cancel_shielded_checkpoint()
        self._next(redis_key)
        result = own.reply
        assert result is not None
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except anyio.get_cancelled_exc_class():
            if result[0]:
                await self._void(redis_key, own.token)
            elif own.turn:
                _HELD.set(None)
                await self._unturn(redis_key, own.token)
            raise
        return result

    @staticmethod
    def _fail(batch: list[_Take], error: StoreError) -> None:
        """Fail the other takes of *batch* with *error* (each its own copy)."""
        for take in batch[1:]:
            copy = StoreError(str(error), store=error.store)
            copy.__cause__ = error.__cause__
            take.error = copy

    async def forfeit(self, key: Hashable) -> None:
        """Give back the turn the calling task holds for *key*, if it holds one.

        The layer calls it, in the waiter's task, when one of its waiters
        for *key* leaves without coming for its turn (cancelled, refused
        after a change of the limit, or paid from a lease), so that the
        turn holds nobody back: the script drops it from the turns pending,
        and if it was the last one, the turns then end with the last one
        left (newcomers do not wait for it). One shielded round trip,
        within the connection's timeout, and only when the task holds such
        a turn; a failure of Redis is ignored (the turn then stays until it
        ends, delaying newcomers by its ``cost x T`` at most).
        """
        held = _HELD.get()
        if held is not None and held[0] == self.redis_key(key):
            _HELD.set(None)
            await self._unturn(*held)

    async def _unturn(self, redis_key: str, token: str) -> None:
        """Give back the turn the call *token* was given (it will not come)."""
        await self._shielded(redis_key, ("unturn", token))

    async def _void(self, redis_key: str, token: str) -> None:
        """Take back (or void) the call *token*, whose command was cut short."""
        await self._shielded(redis_key, ("void", token))

    async def _shielded(self, redis_key: str, args: tuple[str, ...]) -> None:
        """Run the script for *redis_key*, shielded, within the timeout; no error."""
        keys = _keys(redis_key)
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.redis.timeout):
            self.round_trips += 1
            with contextlib.suppress(StoreError):
                await self.redis.run(self._script, keys, args)

    def __repr__(self) -> str:
        return (
            f"RedisRateLimitStore(name={self.name!r}, fail={self.fail!r}, "
            f"processes={self.processes!r}, lease={self.lease!r}, "
            f"prefix={self.redis.prefix!r})"
        )
