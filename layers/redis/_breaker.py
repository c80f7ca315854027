"""RedisBreakerStore: the state of a CircuitBreaker shared by a fleet, in Redis.

Each step of the reference "server" (``layers._breaker.server``) is one Lua
script here, written to follow the Python step for step (the tests run the
same sequences of steps through both and compare every reply and notice).
A script reads the server's clock once (``TIME``, in seconds since
1,700,000,000 s after the Unix epoch, so that a double keeps microseconds),
and when the fleet's state changes it publishes the new view on the
breaker's channel in the same script, so a notice is never sent for a
change that was not made, nor a change made without its notice.

**Keys.** The record is one hash, ``<prefix>:breaker:{<name>}``: its
numbers as fields (floats written with 17 significant digits, so that they
read back exactly; ``''`` for none), and its short lists (the count
window's chunks, the time window's buckets, the probes and their leases)
as fields too, space-separated (the probe ids as a JSON array). One key
per breaker: one ``HGETALL`` per step, one ``HSET`` per step that
may write (``read`` writes only to make the record) and one ``PEXPIRE``
(or ``PERSIST``) per step. The record is made
by the first step that finds none, with an *epoch* chosen by the process
that asks; a record lost (Redis restarted empty, or the key deleted) is
made again with another epoch, which every process adopts. Notices go to
the channel ``<prefix>:breaker:{<name>}:changed`` as a JSON array of
strings (the fields of a :class:`~layers.BreakerView`).

**Expiry.** Every step sets the record's time to live (``PEXPIRE``):
*idle_ttl* (a day by default), and never less than what the record still
holds (the rest of an open period; a time window's length). Every process
re-reads the state every ``sync_interval``, so a record lives as long as
one process uses the breaker, and leaves Redis *idle_ttl* after the last
one stopped; a record that expired is made again by the next step, as a
fresh closed breaker with a new epoch (every process adopts it). A manual
state (``force_open()``, ``force_closed()``, ``metrics_only()``) has no
expiry (``PERSIST``): it holds until it is changed, however long the fleet
is idle; ``reset()`` lets the record expire again. Delete the key to
forget a breaker at once.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import anyio
import anyio.lowlevel
from coredis.retry import NoRetryPolicy

from .._breaker.records import BreakerBatch, BreakerRules, BreakerView
from .._breaker.server import ProbeOutcome
from .._breaker.statistics import CircuitState
from .._breaker.store import check_store_options
from .._config import check_number, fail_value
from .._errors import StoreError
from ._connection import RedisConnection

__all__ = ["RedisBreakerStore"]

# The prelude of every step: KEYS[1] the record (a hash). ARGV[1] the
# channel, ARGV[2] the epoch of a record made now, ARGV[3] the clock ('' :
# TIME; a number: that time, for the tests that compare the scripts with
# the Python reference), ARGV[4..16] the rules, ARGV[17...] the step's, and
# last of all (ARGV[#ARGV]) the idle TTL in seconds. Each step ends with
# finish(reply, notice): the record is written with its TTL, the notice (if
# any) published, and {reply, notice or {}} returned.
PRELUDE: Final = r"""
local key = KEYS[1]
local channel = ARGV[1]
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = (tonumber(t[1]) - 1700000000) + tonumber(t[2]) / 1000000
end
local function optnum(s) if s == '' then return nil end return tonumber(s) end
local R = {
  window_type = ARGV[4], window_size = tonumber(ARGV[5]),
  buckets = tonumber(ARGV[6]), min_calls = tonumber(ARGV[7]),
  frt = tonumber(ARGV[8]), srt = tonumber(ARGV[9]),
  consecutive = optnum(ARGV[10]), open_duration = tonumber(ARGV[11]),
  growth = tonumber(ARGV[12]), max_open = tonumber(ARGV[13]),
  healthy = tonumber(ARGV[14]), probes = tonumber(ARGV[15]),
  max_half_open = optnum(ARGV[16]),
}
local idle_ttl = tonumber(ARGV[#ARGV])
local function fmt(x) return string.format('%.17g', x) end
local function int(x) return string.format('%d', x) end
local function opt(x) if x == nil then return '' end return fmt(x) end
local function numbers(s)
  local list = {}
  for word in string.gmatch(s or '', '%S+') do list[#list + 1] = tonumber(word) end
  return list
end
local function words(list, f)
  local out = {}
  for i = 1, #list do out[i] = f(list[i]) end
  return table.concat(out, ' ')
end
local function sum(list)
  local s = 0
  for i = 1, #list do s = s + list[i] end
  return s
end
local function zeros(n) local list = {} for i = 1, n do list[i] = 0 end return list end

local rec
local h = redis.call('HGETALL', key)
if #h == 0 then
  rec = {epoch = ARGV[2], state = 'closed', generation = 0, since = nil,
    reason = 'initial', open_until = 0, open_duration = 0, trips = 0,
    ofr = nil, osr = nil, exceeded = false, streak = 0, chunks = {},
    bucket = -1, calls = {}, failures = {}, slow = {}, trial_since = 0,
    probes = {}, leases = {}, recorded = 0, trial_failures = 0, trial_slow = 0}
else
  local f = {}
  for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
  rec = {epoch = f.epoch, state = f.state, generation = tonumber(f.generation),
    since = optnum(f.since), reason = f.reason,
    open_until = tonumber(f.open_until), open_duration = tonumber(f.open_duration),
    trips = tonumber(f.trips), ofr = optnum(f.ofr), osr = optnum(f.osr),
    exceeded = f.exceeded == '1', streak = tonumber(f.streak),
    chunks = numbers(f.chunks), bucket = tonumber(f.bucket),
    calls = numbers(f.calls), failures = numbers(f.failures), slow = numbers(f.slow),
    trial_since = tonumber(f.trial_since), probes = cjson.decode(f.probes),
    leases = numbers(f.leases), recorded = tonumber(f.recorded),
    trial_failures = tonumber(f.trial_failures), trial_slow = tonumber(f.trial_slow)}
end

-- The record's time to live: idle_ttl after this step, and at least what
-- it still holds; none in a manual state (it holds until changed).
local function keep()
  local state = rec.state
  if state == 'forced_open' or state == 'disabled' or state == 'metrics_only' then
    redis.call('PERSIST', key)
    return
  end
  local ttl = idle_ttl
  if R.window_type == 'time' then ttl = math.max(ttl, R.window_size) end
  if state == 'open' then ttl = math.max(ttl, rec.open_until - now) end
  redis.call('PEXPIRE', key, math.ceil(ttl * 1000))
end

local function save()
  redis.call('HSET', key, 'epoch', rec.epoch, 'state', rec.state,
    'generation', int(rec.generation), 'since', opt(rec.since),
    'reason', rec.reason, 'open_until', fmt(rec.open_until),
    'open_duration', fmt(rec.open_duration), 'trips', int(rec.trips),
    'ofr', opt(rec.ofr), 'osr', opt(rec.osr),
    'exceeded', rec.exceeded and '1' or '0', 'streak', int(rec.streak),
    'chunks', words(rec.chunks, int), 'bucket', int(rec.bucket),
    'calls', words(rec.calls, int), 'failures', words(rec.failures, int),
    'slow', words(rec.slow, int), 'trial_since', fmt(rec.trial_since),
    'probes', #rec.probes == 0 and '[]' or cjson.encode(rec.probes),
    'leases', words(rec.leases, fmt), 'recorded', int(rec.recorded),
    'trial_failures', int(rec.trial_failures), 'trial_slow', int(rec.trial_slow))
  keep()
end

local function bucket_of(t)
  local width = R.window_size / R.buckets
  local k = math.floor(t / width)
  while (k + 1) * width <= t do k = k + 1 end
  return k
end

local function counts(t)
  if R.window_type == 'count' then
    local ch = rec.chunks
    local c, f, s = 0, 0, 0
    for i = 1, #ch, 3 do c = c + ch[i]; f = f + ch[i + 1]; s = s + ch[i + 2] end
    return c, f, s
  end
  local size = R.buckets
  local cur = rec.bucket
  if cur < 0 or #rec.calls ~= size then return 0, 0, 0 end
  local oldest = bucket_of(t) - size
  local c, f, s = 0, 0, 0
  for n = cur - size + 1, cur do
    if n > oldest then
      local slot = n % size + 1
      c = c + rec.calls[slot]; f = f + rec.failures[slot]; s = s + rec.slow[slot]
    end
  end
  return c, f, s
end

local function view(t, probe, exceeded)
  local c, f, s = counts(t)
  local is_open = rec.state == 'open'
  return {rec.epoch, int(rec.generation), rec.state, rec.reason,
    is_open and fmt(rec.open_until - t) or '',
    is_open and fmt(rec.open_duration) or '',
    is_open and opt(rec.ofr) or '', is_open and opt(rec.osr) or '',
    int(rec.trips), int(c), int(f), int(s), int(rec.streak),
    int(#rec.probes), int(rec.recorded), probe and '1' or '0', exceeded or ''}
end

local function finish(reply, notice)
  save()
  if notice then
    redis.call('PUBLISH', channel, cjson.encode(notice))
    return {reply, notice}
  end
  return {reply, {}}
end

local function enter(state, at, reason)
  rec.state = state
  rec.since = at
  rec.generation = rec.generation + 1
  rec.reason = reason
end

local function clear_trial()
  rec.probes = {}; rec.leases = {}
  rec.recorded = 0; rec.trial_failures = 0; rec.trial_slow = 0
end

local function clear_window()
  rec.chunks = {}; rec.bucket = -1
  rec.calls = {}; rec.failures = {}; rec.slow = {}
  rec.streak = 0
end

local function open_duration_for(trips)
  return math.min(R.max_open, R.open_duration * R.growth ^ trips)
end

local function trip(at, reason, failure_rate, slow_rate)
  if rec.state == 'closed' and rec.since ~= nil and at - rec.since >= R.healthy then
    rec.trips = 0
  end
  local duration = open_duration_for(rec.trips)
  rec.trips = rec.trips + 1
  rec.open_until = at + duration
  rec.open_duration = duration
  rec.ofr = failure_rate
  rec.osr = slow_rate
  clear_trial()
  enter('open', at, reason)
end

local function catch_up(t)
  local changed = false
  if rec.state == 'half_open' and R.max_half_open ~= nil then
    local expiry = rec.trial_since + R.max_half_open
    if t >= expiry then
      trip(expiry, 'half_open_timeout', nil, nil)
      changed = true
    end
  end
  if rec.state == 'open' and t >= rec.open_until then
    clear_window()
    clear_trial()
    rec.trial_since = t
    enter('half_open', t, 'open_duration_elapsed')
    changed = true
  end
  return changed
end

local function reclaim(t)
  local i = 1
  while i <= #rec.probes do
    if rec.leases[i] <= t then
      table.remove(rec.probes, i); table.remove(rec.leases, i)
    else
      i = i + 1
    end
  end
end

local function share(part, keep, whole)
  return math.floor((2 * part * keep + whole) / (2 * whole))
end

local function add_chunk(calls, failures, slow)
  local ch = rec.chunks
  local size = math.floor(R.window_size)
  local chunk = math.max(1, math.ceil(size / R.buckets))
  local n = #ch
  if n > 0 and ch[n - 2] < chunk then
    ch[n - 2] = ch[n - 2] + calls
    ch[n - 1] = ch[n - 1] + failures
    ch[n] = ch[n] + slow
  else
    ch[n + 1] = calls; ch[n + 2] = failures; ch[n + 3] = slow
  end
  local total = 0
  for i = 1, #ch, 3 do total = total + ch[i] end
  local excess = total - size
  while excess > 0 do
    local first = ch[1]
    if first <= excess then
      table.remove(ch, 1); table.remove(ch, 1); table.remove(ch, 1)
      excess = excess - first
    else
      local keep = first - excess
      ch[1] = keep
      ch[2] = share(ch[2], keep, first)
      ch[3] = share(ch[3], keep, first)
      excess = 0
    end
  end
end

local function rotate(t)
  local size = R.buckets
  local k = bucket_of(t)
  if rec.bucket < 0 or #rec.calls ~= size then
    rec.calls = zeros(size); rec.failures = zeros(size); rec.slow = zeros(size)
    rec.bucket = k
    return
  end
  local cur = rec.bucket
  if k <= cur then return end
  for n = cur + 1, math.min(k, cur + size) do
    local slot = n % size + 1
    rec.calls[slot] = 0; rec.failures[slot] = 0; rec.slow[slot] = 0
  end
  rec.bucket = k
  if sum(rec.failures) + sum(rec.slow) == 0 then rec.streak = 0 end
end
"""

READ: Final = (
    PRELUDE
    + r"""
-- read: only the record's TTL is written, unless the record is made now.
if #h == 0 then save() else keep() end
return {view(now, false, nil), {}}
"""
)

# ARGV[17...]: generation, calls, failures, slow, leading, trailing, longest.
REPORT: Final = (
    PRELUDE
    + r"""
local gen, calls, failures, slow = tonumber(ARGV[17]), tonumber(ARGV[18]),
  tonumber(ARGV[19]), tonumber(ARGV[20])
local leading, trailing, longest = tonumber(ARGV[21]), tonumber(ARGV[22]),
  tonumber(ARGV[23])
if gen ~= rec.generation or not (rec.state == 'closed' or rec.state == 'metrics_only')
    or calls <= 0 then
  return finish(view(now, false, nil), nil)
end
if R.window_type == 'count' then
  add_chunk(calls, failures, slow)
else
  rotate(now)
  local slot = rec.bucket % R.buckets + 1
  rec.calls[slot] = rec.calls[slot] + calls
  rec.failures[slot] = rec.failures[slot] + failures
  rec.slow[slot] = rec.slow[slot] + slow
end
local peak
if failures >= calls then
  rec.streak = rec.streak + failures
  peak = rec.streak
else
  peak = math.max(rec.streak + leading, longest)
  rec.streak = trailing
end
local c, f, s = counts(now)
local reason, failure_rate, slow_rate = nil, nil, nil
if c >= R.min_calls then
  failure_rate = f / c
  slow_rate = s / c
  if failure_rate >= R.frt then
    reason = 'failure_rate'
  elseif slow_rate >= R.srt then
    reason = 'slow_call_rate'
  end
end
if reason == nil and R.consecutive ~= nil and peak >= R.consecutive then
  reason = 'consecutive_failures'
end
if rec.state == 'metrics_only' then
  local exceeded = nil
  if reason == nil then
    rec.exceeded = false
  elseif not rec.exceeded then
    rec.exceeded = true
    exceeded = reason
  end
  return finish(view(now, false, exceeded), nil)
end
if reason == nil then return finish(view(now, false, nil), nil) end
trip(now, reason, failure_rate, slow_rate)
local v = view(now, false, nil)
return finish(v, v)
"""
)

# ARGV[17]: the probe's id, ARGV[18]: its lease (seconds).
TAKE_PROBE: Final = (
    PRELUDE
    + r"""
local changed = catch_up(now)
local granted = false
if rec.state == 'half_open' then
  reclaim(now)
  if #rec.probes + rec.recorded < R.probes then
    rec.probes[#rec.probes + 1] = ARGV[17]
    rec.leases[#rec.leases + 1] = now + tonumber(ARGV[18])
    granted = true
  end
end
local notice = nil
if changed then notice = view(now, false, nil) end
return finish(view(now, granted, nil), notice)
"""
)

# ARGV[17]: the probe's id, ARGV[18]: 'success', 'failure' or 'released',
# ARGV[19]: '1' if slow.
REPORT_PROBE: Final = (
    PRELUDE
    + r"""
local probe, outcome, slow = ARGV[17], ARGV[18], ARGV[19] == '1'
local changed = catch_up(now)
local i = nil
if rec.state == 'half_open' then
  for j = 1, #rec.probes do
    if rec.probes[j] == probe then i = j; break end
  end
end
if i == nil then
  local v = view(now, false, nil)
  if changed then return finish(v, v) end
  return finish(v, nil)
end
table.remove(rec.probes, i); table.remove(rec.leases, i)
if outcome == 'released' then
  local v = view(now, false, nil)
  return finish(v, v)
end
rec.recorded = rec.recorded + 1
if outcome == 'failure' then rec.trial_failures = rec.trial_failures + 1 end
if slow then rec.trial_slow = rec.trial_slow + 1 end
if rec.recorded < R.probes then
  local v = view(now, false, nil)
  if changed then return finish(v, v) end
  return finish(v, nil)
end
local failure_rate = rec.trial_failures / R.probes
local slow_rate = rec.trial_slow / R.probes
if failure_rate >= R.frt then
  trip(now, 'failure_rate', failure_rate, slow_rate)
elseif slow_rate >= R.srt then
  trip(now, 'slow_call_rate', failure_rate, slow_rate)
else
  clear_window()
  clear_trial()
  enter('closed', now, 'probes_succeeded')
end
local v = view(now, false, nil)
return finish(v, v)
"""
)

# ARGV[17]: the state ('closed': reset).
SET_STATE: Final = (
    PRELUDE
    + r"""
local state = ARGV[17]
local reasons = {closed = 'reset', forced_open = 'force_open',
  disabled = 'force_closed', metrics_only = 'metrics_only'}
local previous = rec.state
if state == previous and state ~= 'closed' then
  return finish(view(now, false, nil), nil)
end
clear_window()
clear_trial()
rec.exceeded = false
local reason = reasons[state]
if state == 'closed' then
  rec.trips = 0
  rec.open_until = 0
  if previous == 'closed' then
    rec.generation = rec.generation + 1
    rec.reason = reason
    local v = view(now, false, nil)
    return finish(v, v)
  end
end
enter(state, now, reason)
local v = view(now, false, nil)
return finish(v, v)
"""
)

# ARGV[17]: seconds, ARGV[18]: the reason ('open_for' or 'retry_after').
OPEN_FOR: Final = (
    PRELUDE
    + r"""
local seconds, reason = tonumber(ARGV[17]), ARGV[18]
local state = rec.state
local regular = state == 'closed' or state == 'open' or state == 'half_open'
local till = now + seconds
if (not regular and reason == 'retry_after')
    or (state == 'open' and rec.open_until >= till) then
  return finish(view(now, false, nil), nil)
end
if not regular then
  clear_window()
  rec.exceeded = false
end
rec.open_until = till
rec.open_duration = seconds
rec.ofr = nil
rec.osr = nil
clear_trial()
enter('open', now, reason)
local v = view(now, false, nil)
return finish(v, v)
"""
)

_MANUAL: Final = frozenset(
    {
        CircuitState.CLOSED,
        CircuitState.FORCED_OPEN,
        CircuitState.DISABLED,
        CircuitState.METRICS_ONLY,
    }
)


def _text(value: Any) -> str:
    """A reply's string (a client may not decode replies)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(text: str) -> float | None:
    return None if text == "" else float(text)


def parse_view(fields: Sequence[Any]) -> BreakerView:
    """A :class:`~layers.BreakerView` from a script's reply or a notice."""
    f = [_text(field) for field in fields]
    return BreakerView(
        epoch=f[0],
        generation=int(f[1]),
        state=CircuitState(f[2]),
        reason=f[3],
        open_for=_optional(f[4]),
        open_duration=_optional(f[5]),
        opened_failure_rate=_optional(f[6]),
        opened_slow_call_rate=_optional(f[7]),
        trips=int(f[8]),
        calls=int(f[9]),
        failures=int(f[10]),
        slow=int(f[11]),
        consecutive_failures=int(f[12]),
        probes_in_flight=int(f[13]),
        probes_recorded=int(f[14]),
        probe=f[15] == "1",
        exceeded=f[16] or None,
    )


def _number(value: float) -> str:
    return repr(float(value))


def rules_args(rules: BreakerRules) -> list[str]:
    """The rules as the scripts' ARGV[4..16]."""
    return [
        rules.window_type,
        _number(rules.window_size),
        str(rules.window_buckets),
        str(rules.min_calls),
        _number(rules.failure_rate_threshold),
        _number(rules.slow_call_rate_threshold),
        "" if rules.consecutive_failures is None else str(rules.consecutive_failures),
        _number(rules.open_duration),
        _number(rules.open_duration_growth),
        _number(rules.max_open_duration),
        _number(rules.healthy_duration),
        str(rules.probes),
        ""
        if rules.max_half_open_duration is None
        else _number(rules.max_half_open_duration),
    ]


class RedisBreakerStore:
    """The state of a :class:`~layers.CircuitBreaker` shared by a fleet, in Redis.

    Give it to the breaker as ``store=``; every process that makes a
    breaker with the same options and a store of the same *name* on the
    same Redis shares one breaker (see "Shared by a fleet" in
    :class:`~layers.CircuitBreaker`)::

        async with RedisConnection.from_url("redis://127.0.0.1:6379/0") as redis:
            breaker = layers.CircuitBreaker(
                failure_rate_threshold=0.5,
                store=RedisBreakerStore(redis, name="payments"),
            )

    Each step of :class:`~layers.BreakerStore` is one Lua script, atomic
    on the server and on its clock; a step that changes the fleet's state
    publishes the new view on the breaker's channel in the same script.
    Each process holds one subscription per breaker (a background task of
    the connection, which must be entered: :meth:`RedisConnection.from_url
    <layers.redis.RedisConnection.from_url>` enters it); it re-reads the
    state every *sync_interval* and whenever it subscribes again.

    When Redis fails (an error, a timeout, the connection's guard open),
    every step raises :class:`~layers.StoreError` and the breaker falls
    back to its own local logic until Redis answers again (see
    :class:`~layers.CircuitBreaker`).

    Keys: the hash ``<prefix>:breaker:{<name>}``, which expires *idle_ttl*
    after the last step of any process (every process re-reads the state
    every *sync_interval*, so it lives while one process uses the
    breaker), never before an open period or a time window it holds has
    passed, and never in a manual state; channel
    ``<prefix>:breaker:{<name>}:changed``. A record that expired is made
    again as a fresh closed breaker (generation 0, a new epoch), which
    every process adopts.

    Args:
        redis: The :class:`~layers.redis.RedisConnection` to use.
        name: The breaker's name in Redis (a non-empty string).
        sync_interval: Seconds between two re-reads of the state by a
            process (> 0; default 1): the backstop for a lost notice, and
            how often a count window's outcomes are sent.
        probe_lease: Seconds a half-open probe holds its slot unless its
            outcome is reported first (> 0; default 60): a process that
            died holding one does not keep the fleet half-open for good.
        idle_ttl: Seconds the record stays in Redis after the last step of
            any process (at least twice *sync_interval*; default 86,400: a
            day, so that a fleet stopped for a night's deploy finds its
            breaker as it left it, and a breaker nobody calls any more, such
            as one per host of a host that is gone, leaves Redis).

    Raises:
        layers.ConfigurationError: For any invalid value, naming it.
    """

    __slots__ = (
        "_channel",
        "_key",
        "_scripts",
        "idle_ttl",
        "name",
        "probe_lease",
        "redis",
        "sync_interval",
    )

    def __init__(
        self,
        redis: RedisConnection,
        *,
        name: str,
        sync_interval: float = 1.0,
        probe_lease: float = 60.0,
        idle_ttl: float = 86_400.0,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(redis, RedisConnection):  # pyright: ignore[reportUnnecessaryIsInstance]
            fail_value(owner, "redis", redis, "a layers.redis.RedisConnection")
        self.redis = redis
        self.name, self.sync_interval, self.probe_lease = check_store_options(
            owner, name, sync_interval, probe_lease
        )
        least = 2 * self.sync_interval
        self.idle_ttl = check_number(
            owner,
            "idle_ttl",
            idle_ttl,
            f"a finite number of seconds >= 2 x sync_interval ({least!r})",
            lambda v: v >= least,
        )
        self._key = redis.key("breaker", name)
        self._channel = redis.key("breaker", name, "changed")
        self._scripts = {
            "read": redis.script(READ),
            "report": redis.script(REPORT),
            "take_probe": redis.script(TAKE_PROBE),
            "report_probe": redis.script(REPORT_PROBE),
            "set_state": redis.script(SET_STATE),
            "open_for": redis.script(OPEN_FOR),
        }

    @property
    def key(self) -> str:
        """The record's key in Redis, ``<prefix>:breaker:{<name>}``."""
        return self._key

    @property
    def channel(self) -> str:
        """The channel of the notices, ``<prefix>:breaker:{<name>}:changed``."""
        return self._channel

    # -- hosting ------------------------------------------------------------------

    def start_soon(
        self,
        function: Callable[[], Coroutine[Any, Any, None]],
        /,
        *,
        name: str | None = None,
    ) -> None:
        """Run *function* in the connection's task group (see the protocol).

        Raises:
            RuntimeError: The connection is not entered.
        """
        self.redis.start_soon(function, name=name)

    # -- the steps ------------------------------------------------------------------

    async def _step(
        self,
        step: str,
        rules: BreakerRules,
        args: Sequence[str],
        *,
        now: float | None = None,
    ) -> tuple[BreakerView, BreakerView | None]:
        """Run the script of *step*: its reply and the notice it published.

        *now* replaces the server's clock (seconds since 1,700,000,000 s
        after the Unix epoch): for tests that compare the scripts with the
        reference steps; the store's methods leave it None.
        """
        reply = await self.redis.run(
            self._scripts[step],
            [self._key],
            [
                self._channel,
                uuid.uuid4().hex,
                "" if now is None else repr(float(now)),
                *rules_args(rules),
                *args,
                repr(self.idle_ttl),
            ],
        )
        view = parse_view(reply[0])
        notice = parse_view(reply[1]) if reply[1] else None
        return view, notice

    async def read(self, rules: BreakerRules, /) -> BreakerView:
        """See :meth:`layers.BreakerStore.read` (makes the record if there is none)."""
        return (await self._step("read", rules, []))[0]

    async def report(self, rules: BreakerRules, batch: BreakerBatch, /) -> BreakerView:
        """See :meth:`layers.BreakerStore.report`."""
        args = [
            str(batch.generation),
            str(batch.calls),
            str(batch.failures),
            str(batch.slow),
            str(batch.leading_failures),
            str(batch.trailing_failures),
            str(batch.longest_run),
        ]
        return (await self._step("report", rules, args))[0]

    async def take_probe(self, rules: BreakerRules, probe: str, /) -> BreakerView:
        """See :meth:`layers.BreakerStore.take_probe`."""
        args = [probe, repr(self.probe_lease)]
        return (await self._step("take_probe", rules, args))[0]

    async def report_probe(
        self, rules: BreakerRules, probe: str, outcome: ProbeOutcome, slow: bool, /
    ) -> BreakerView:
        """See :meth:`layers.BreakerStore.report_probe`."""
        args = [probe, outcome, "1" if slow else "0"]
        return (await self._step("report_probe", rules, args))[0]

    async def set_state(
        self, rules: BreakerRules, state: CircuitState, /
    ) -> BreakerView:
        """See :meth:`layers.BreakerStore.set_state`.

        Raises:
            ValueError: *state* is not a manual state.
        """
        if state not in _MANUAL:
            raise ValueError(f"not a manual state: {state!r}")
        return (await self._step("set_state", rules, [state.value]))[0]

    async def open_for(
        self, rules: BreakerRules, seconds: float, reason: str, /
    ) -> BreakerView:
        """See :meth:`layers.BreakerStore.open_for`."""
        args = [repr(float(seconds)), reason]
        return (await self._step("open_for", rules, args))[0]

    # -- notices --------------------------------------------------------------------

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[BreakerView]]:
        """Receive the views published on the breaker's channel (coredis pub/sub).

        Entering subscribes, within ``max(1 s, the connection's timeout)``;
        a failure to subscribe, or of the subscription later (Redis down, a
        reply that is not a view), raises :class:`~layers.StoreError`.
        """
        return self._subscription()

    @contextlib.asynccontextmanager
    async def _subscription(self) -> AsyncGenerator[AsyncIterator[BreakerView]]:
        try:
            async with self.redis.client.pubsub(
                channels=[self._channel],
                retry_policy=NoRetryPolicy(),
                subscription_timeout=max(1.0, self.redis.timeout),
            ) as pubsub:
                yield _Notices(pubsub, self._channel, self.name)
        except StoreError:
            raise
        except Exception as error:
            # A cancellation reported as a connection error is a cancellation.
            await anyio.lowlevel.checkpoint_if_cancelled()
            raise StoreError(
                f"the subscription to {self._channel!r} failed "
                f"({type(error).__name__})",
                store=self.name,
            ) from error

    def __repr__(self) -> str:
        return (
            f"RedisBreakerStore(name={self.name!r}, "
            f"sync_interval={self.sync_interval!r}, probe_lease={self.probe_lease!r}, "
            f"idle_ttl={self.idle_ttl!r})"
        )


class _Notices:
    """The views heard on a breaker's channel.

    An iterator, not a generator: a caller may stop reading at any point
    without leaving a generator to be closed.
    """

    __slots__ = ("_channel", "_messages", "_store")

    def __init__(self, pubsub: Any, channel: str, store: str) -> None:
        self._messages: Any = pubsub.__aiter__()
        self._channel = channel
        self._store = store

    def __aiter__(self) -> _Notices:
        return self

    async def __anext__(self) -> BreakerView:
        while True:
            try:
                message: Any = await self._messages.__anext__()
                if message["type"] != "message":
                    continue
                return parse_view(json.loads(message["data"]))
            except StopAsyncIteration:
                raise StoreError(
                    f"the subscription to {self._channel!r} ended", store=self._store
                ) from None
            except Exception as error:
                raise StoreError(
                    f"the subscription to {self._channel!r} failed "
                    f"({type(error).__name__})",
                    store=self._store,
                ) from error
