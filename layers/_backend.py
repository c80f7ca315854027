"""BACKEND CORNER: the one module that speaks to asyncio and trio directly.

Everything else in ``layers`` uses anyio. This module exists for the success
path of hot layers, where anyio's portable primitives cost far more than the
backend's own (``anyio.fail_after`` is about 3x ``asyncio.timeout``, which is
itself mostly the cost of one timer handle per call). Keep it small; keep
every asyncio or trio detail here.

Timeout on asyncio: a timer wheel
---------------------------------
One :class:`_Wheel` per event loop keeps the calls in flight in *buckets* of
deadlines (1/64 s wide). A bucket owns one ``loop.call_at`` handle, set for
the earliest deadline in it, so a call costs a dict insert and a delete, not
a timer handle. When a bucket's timer fires, the calls whose deadline has
passed are cancelled with ``Task.cancel()`` (after one turn of the loop, see
below); the others get the timer set again for the next deadline. The call
then turns its own cancellation into :class:`~layers.Elapsed`, and only its
own: it counts ``Task.cancelling()`` as :func:`asyncio.timeout` does, so a
cancellation from outside (an anyio cancel scope, ``Task.cancel()``) that
lands at the same time still propagates as a cancellation.

*A response ready at the deadline wins* (as in tower): cancellation is
delivered one loop iteration after the deadline, and not while the task is
about to resume with a result (its awaited future is done) or already has a
cancellation pending; then it is retried on the next iteration, as anyio's
cancel scopes do. On a virtual clock (looptime), where the time stands still
while callbacks are ready, it also waits (a bounded number of iterations) for
the other work due at that instant, as trio's ``MockClock`` does: an event
set by a task that wakes exactly at the deadline still wins.

Timeout on trio: the same wheel, served by one system task per trio run
---------------------------------------------------------------------------
A call still needs a :class:`trio.CancelScope` of its own (the only way to
cancel part of a trio task), but not one with a deadline: registering a
deadline with trio costs a third of the scope. The call enters a plain scope
and files it in a bucket; the run's wheel task (:class:`_TrioWheel`) sleeps
until the earliest bucket and cancels the scopes that are due, one float
step after their deadline, as trio's own deadlines would (work finishing
exactly at the deadline completes first). When the run closes, the calls
still filed get a trio deadline instead.
"""

from __future__ import annotations

import sys
import time
import weakref
from asyncio import (
    AbstractEventLoop,
    BaseEventLoop,
    CancelledError,
    Task,
    TimerHandle,
    current_task,
)
from asyncio import _get_running_loop as get_running_loop  # pyright: ignore[reportPrivateUsage]
from asyncio import tasks as asyncio_tasks
from collections.abc import Awaitable, Callable
from contextvars import Context
from heapq import heappop, heappush
from math import floor, inf, nextafter
from threading import get_ident
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Final, Generic, NamedTuple, Protocol, TypeVar

from ._deadline import DEADLINE

__all__ = ["TimedService", "current_time", "get_running_loop", "timeout_call"]

Req = TypeVar("Req")
Res = TypeVar("Res")

_SLOTS_PER_SECOND: Final = 64
_CANCEL_MESSAGE: Final = "deadline exceeded (layers.Timeout)"
_NOT_IN_A_TASK: Final = (
    "layers.Timeout was called outside an asyncio task while an asyncio loop "
    "runs in this thread (a trio guest run on an asyncio loop is not "
    "supported: run trio in its own thread, or as a guest of another host)"
)
# asyncio runs a timer handle once the clock is within this of its time
# (BaseEventLoop._clock_resolution); a deadline so close to now has passed.
_CLOCK_RESOLUTION: Final = time.get_clock_info("monotonic").resolution
# How many loop iterations a due cancellation waits at most for the other
# work ready at the same instant of a virtual clock (see _Wheel._deliver).
_SETTLE_ROUNDS: Final = 64

# entry states
_WAITING: Final = 0
_DUE: Final = 1
_FIRED: Final = 2


class TimedService(Protocol[Req, Res]):
    """What :func:`timeout_call` needs from the Timeout layer's service."""

    inner: Callable[[Req], Awaitable[Res]]
    seconds: float

    def elapsed(self) -> BaseException:
        """Build the exception for an expired call (and report it)."""
        ...


# An entry: [task, deadline, task.cancelling() at entry, state]
_Entry = list[Any]


class _Bucket:
    __slots__ = ("end", "entries", "handle", "key", "when")

    def __init__(self, key: int) -> None:
        self.key = key
        # asyncio: id(entry) -> [task, deadline, cancelling, state];
        # trio: cancel scope -> deadline
        self.entries: dict[Any, Any] = {}
        self.when = inf  # its timer's time; no deadline in it is earlier
        # The end of its key's range; -inf once it left the wheel, so that a
        # new call never joins it: when <= deadline < end says "join".
        self.end = (key + 1) / _SLOTS_PER_SECOND
        self.handle: TimerHandle | None = None


_NO_BUCKET = _Bucket(0)
_NO_BUCKET.end = -inf


class _Buckets:
    """The deadlines of the calls in flight, in buckets 1/64 s wide (both backends).

    A subclass arms a bucket's timer (:meth:`_arm`) for the earliest deadline
    in it. When the timer fires, it takes the calls that are due, then
    :meth:`_settle` sets the timer again for the next deadline, or drops
    the bucket.
    """

    __slots__ = ("buckets", "current")

    def __init__(self) -> None:
        self.buckets: dict[int, _Bucket] = {}
        # The bucket the last call joined: the next call most likely joins it.
        self.current = _NO_BUCKET

    def schedule(self, deadline: float) -> _Bucket:
        """Return the bucket for *deadline*, its timer set no later than it."""
        key = floor(deadline * _SLOTS_PER_SECOND)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket(key)
            # Calls arrive in time order, mostly with the same timeout: the
            # first deadline is usually the earliest, and the timer wakes no
            # earlier than some call needs it.
            self._arm(bucket, deadline)
        elif deadline < bucket.when:
            self._arm(bucket, deadline)
        self.current = bucket
        return bucket

    def _arm(self, bucket: _Bucket, when: float) -> None:
        raise NotImplementedError

    def _settle(self, bucket: _Bucket, earliest: float) -> None:
        """Set the bucket's timer for *earliest*, its next deadline, or drop it.

        A dropped bucket's calls still in flight keep their entries until
        they end; no new call joins it.
        """
        if earliest < inf:
            self._arm(bucket, earliest)
        else:
            bucket.when = inf
            bucket.end = -inf
            if self.buckets.get(bucket.key) is bucket:
                del self.buckets[bucket.key]


class _Wheel(_Buckets):
    """The asyncio wheel: a ``loop.call_at`` handle per bucket."""

    __slots__ = ("__weakref__", "clock", "loop", "native")

    def __init__(self, loop: AbstractEventLoop | None) -> None:
        super().__init__()
        self.loop: Any = loop
        # The stock loops record the thread they run on: a cheap, exact test
        # that this wheel's loop is the running one (get_running_loop() makes
        # a getpid() system call per call on Python 3.11).
        self.native = loop is not None and hasattr(loop, "_thread_id")
        # loop.time() is time.monotonic() unless the loop has its own clock
        # (looptime's virtual clock): call the C function directly then.
        self.clock: Callable[[], float] = (
            monotonic
            if loop is None or type(loop).time is BaseEventLoop.time
            else loop.time
        )

    def _arm(self, bucket: _Bucket, when: float) -> None:
        assert self.loop is not None
        if bucket.handle is not None:
            bucket.handle.cancel()
        bucket.when = when
        bucket.handle = self.loop.call_at(when, self._fire, bucket)

    def _fire(self, bucket: _Bucket) -> None:
        assert self.loop is not None
        bucket.handle = None
        now = self.loop.time() + _CLOCK_RESOLUTION
        due: list[tuple[int, _Entry]] = []
        earliest = inf
        for token, entry in bucket.entries.items():
            if entry[3] != _WAITING:
                continue
            if entry[1] <= now:
                entry[3] = _DUE
                due.append((token, entry))
            elif entry[1] < earliest:
                earliest = entry[1]
        self._settle(bucket, earliest)
        if due:
            self.loop.call_soon(self._deliver, bucket.entries, due)

    def _deliver(
        self,
        entries: dict[int, _Entry],
        due: list[tuple[int, _Entry]],
        rounds: int = 0,
    ) -> None:
        assert self.loop is not None
        # On a virtual clock (looptime) the time stands still while callbacks
        # are ready: let the other work due at the deadline run first (a task
        # that wakes at the deadline and sets what the call waits for), as
        # trio's MockClock does. On a real clock the time has moved on by now.
        settle = rounds < _SETTLE_ROUNDS and bool(getattr(self.loop, "_ready", None))
        now = self.loop.time() - _CLOCK_RESOLUTION
        again: list[tuple[int, _Entry]] = []
        for token, entry in due:
            if entries.get(token) is not entry:
                continue  # the call has ended
            task: Task[Any] = entry[0]
            if task.done():
                continue
            waiter = getattr(task, "_fut_waiter", None)
            if (
                getattr(task, "_must_cancel", False)
                or (waiter is not None and waiter.done())
                or (settle and now <= entry[1])
            ):
                again.append((token, entry))  # about to resume: let it run first
                continue
            entry[3] = _FIRED
            task.cancel(_CANCEL_MESSAGE)
        if again:
            self.loop.call_soon(self._deliver, entries, again, rounds + 1)


_wheels: weakref.WeakKeyDictionary[AbstractEventLoop, _Wheel] = (
    weakref.WeakKeyDictionary()
)
_last_wheel = _Wheel(None)


def _wheel_for(loop: AbstractEventLoop) -> _Wheel:
    global _last_wheel
    try:
        wheel = _wheels[loop]
    except KeyError:
        wheel = _wheels[loop] = _Wheel(loop)
    except TypeError:  # a loop that takes no weak references
        wheel = _Wheel(loop)
    _last_wheel = wheel
    return wheel


# Python 3.11's current_task() is a Python function; its table is a dict.
_current_task: Callable[[AbstractEventLoop], Task[Any] | None] = (
    getattr(asyncio_tasks, "_current_tasks", {}).get
    if sys.version_info < (3, 12) and hasattr(asyncio_tasks, "_current_tasks")
    else current_task
)

_get_deadline = DEADLINE.get
_set_deadline = DEADLINE.set
_reset_deadline = DEADLINE.reset


async def timeout_call(service: TimedService[Req, Res], request: Req, /) -> Res:
    """Call ``service.inner(request)``, cancelled ``service.seconds`` from now."""
    wheel = _last_wheel
    ident = get_ident()
    if not wheel.native or wheel.loop._thread_id != ident:
        trio_wheel = _trio_run.wheel
        if ident == _trio_thread and trio_wheel is not None:
            # trio, its run cached: the trio wheel (kept inline: no extra
            # coroutine on the success path)
            now = _trio_offset + _trio_read()
            deadline = now + service.seconds
            outer = _get_deadline()
            if outer is not None and outer < deadline:
                if outer < now:  # already passed: trio's own deadline
                    return await _trio_timeout_call(service, request)
                deadline = outer
            bucket = trio_wheel.current
            if not bucket.when <= deadline < bucket.end:
                bucket = trio_wheel.schedule(deadline)
            scope = trio_wheel.new_scope()
            trio_entries = bucket.entries
            trio_entries[scope] = deadline
            token = _set_deadline(deadline)
            try:
                trio_wheel.enter(scope)  # `with scope:`, spelled out (see _lean_enter)
                try:
                    response = await service.inner(request)
                except BaseException as error:
                    if not scope.__exit__(type(error), error, error.__traceback__):
                        raise
                else:
                    scope.__exit__(None, None, None)
                    return response
            finally:
                del trio_entries[scope]
                _reset_deadline(token)
            # Only our own scope's cancellation is swallowed by its exit.
            raise service.elapsed()
        loop = get_running_loop()
        if loop is None:  # not asyncio: trio, the run's first call (or guest)
            return await _trio_timeout_call(service, request)
        if wheel.loop is not loop:
            wheel = _wheel_for(loop)
    deadline = wheel.clock() + service.seconds
    outer = _get_deadline()
    if outer is not None and outer < deadline:
        deadline = outer
    bucket = wheel.current
    if not bucket.when <= deadline < bucket.end:
        bucket = wheel.schedule(deadline)
    task = _current_task(wheel.loop)
    if task is None:  # a callback of the loop: a trio guest run on asyncio
        raise RuntimeError(_NOT_IN_A_TASK)
    entry: _Entry = [task, deadline, task.cancelling(), 0]  # 0: _WAITING
    key = id(entry)
    entries = bucket.entries
    entries[key] = entry
    token = _set_deadline(deadline)
    try:
        response = await service.inner(request)
    except BaseException as error:
        if entry[3] == 2:  # _FIRED
            entry[3] = _WAITING
            if task.uncancel() <= entry[2] and isinstance(error, CancelledError):
                raise service.elapsed() from error
        raise
    finally:
        del entries[key]
        _reset_deadline(token)
    if entry[3] == 2:  # _FIRED: the inner call swallowed our cancellation
        task.uncancel()
    return response


async def _trio_timeout_call(service: TimedService[Req, Res], request: Req, /) -> Res:
    """Timeout on trio off the wheel's path: start the wheel, or use trio's deadline.

    The first call of a run starts the run's wheel and takes the wheel's
    path. Trio's own deadline serves a run that cannot be cached (trio's
    internals moved), a run whose wheel has ended (its system tasks were
    cancelled: the run is closing), and a deadline that has already passed
    (trio cancels the scope at once).
    """
    trio = _trio or _import_trio()
    now = _current_time_slow()  # caches the run where it can
    run = _trio_run
    if _trio_thread == get_ident() and run.wheel is None and not run.wheel_ended:
        run.wheel = _TrioWheel(run, trio)
        trio.lowlevel.spawn_system_task(
            run.wheel.serve, name="layers.Timeout deadlines", context=Context()
        )
        return await timeout_call(service, request)
    deadline = now + service.seconds
    outer = _get_deadline()
    if outer is not None and outer < deadline:
        deadline = outer
    token = _set_deadline(deadline)
    try:
        with trio.CancelScope(deadline=nextafter(deadline, inf)):
            return await service.inner(request)
    finally:
        _reset_deadline(token)
    # Only our own scope's cancellation ends the block without a return.
    raise service.elapsed()


def _public_enter(scope: Any) -> object:
    return scope.__enter__()


def _lean_enter(trio: Any) -> Callable[[Any], None] | None:
    """``trio.CancelScope.__enter__`` for a new scope with no deadline, or None.

    trio's ``__enter__`` reads the clock twice and runs two context
    managers that change nothing for such a scope (they register a changed
    deadline with the run); they are a third of the cost of a Timeout on
    trio. This does the rest: mark the scope entered, and make a new
    ``CancelStatus`` under the task's current one the task's. The exit is
    trio's own ``__exit__``. It reads trio's internals, so it is checked
    against them first: if any attribute it uses is missing, or if a scope
    it enters differs from one trio enters (:func:`_enters_alike`), None
    (the wheel then uses ``__enter__``). It is KI-protected, as trio's is.
    """
    try:
        import attrs
        from trio._core._run import GLOBAL_RUN_CONTEXT, CancelScope, CancelStatus

        scope_fields = {field.name for field in attrs.fields(CancelScope)}
        status_fields = {field.alias for field in attrs.fields(CancelStatus)}
    except Exception:  # pragma: no cover - trio internals moved
        return None
    if not (
        {"_has_been_entered", "_cancel_status", "_deadline", "_cancel_called"}
        <= scope_fields
        and {"scope", "parent"} <= status_fields
        and hasattr(trio.lowlevel.Task, "_activate_cancel_status")
    ):  # pragma: no cover - trio internals moved
        return None
    context: Any = GLOBAL_RUN_CONTEXT

    def enter(scope: Any) -> None:
        task = context.task
        scope._has_been_entered = True
        status = CancelStatus(scope=scope, parent=task._cancel_status)
        scope._cancel_status = status
        task._activate_cancel_status(status)

    protected: Callable[[Any], None] = trio.lowlevel.enable_ki_protection(enter)
    return protected if _enters_alike(protected, trio) else None


def _enters_alike(enter: Callable[[Any], None], trio: Any) -> bool:
    """Whether *enter* leaves a scope as trio's ``__enter__`` does (in a task).

    Enters one scope each way, one after the other, and compares every
    attrs field of the scopes and of their cancel statuses (but the status's
    own scope); both scopes are exited with trio's ``__exit__``. A trio that
    sets up a scope in some new way fails this, and the wheel then uses
    trio's ``__enter__``.
    """
    import attrs

    def state(scope: Any) -> dict[str, object]:
        fields: dict[str, object] = {}
        scope_type: Any = scope.__class__
        for field in attrs.fields(scope_type):
            value: Any = getattr(scope, field.name)
            value_type: Any = value.__class__
            if attrs.has(value_type) and getattr(value, "_scope", None) is scope:
                value = {  # the scope's CancelStatus, but its back reference
                    inner.name: getattr(value, inner.name)
                    for inner in attrs.fields(value_type)
                    if inner.name != "_scope"
                }
            fields[field.name] = value
        return fields

    try:
        public = trio.CancelScope()
        public.__enter__()
        try:
            expected = state(public)
        finally:
            public.__exit__(None, None, None)
        lean = trio.CancelScope()
        enter(lean)
        try:
            found = state(lean)
        finally:
            lean.__exit__(None, None, None)
    except Exception:  # pragma: no cover - trio internals moved
        return False
    return found == expected


class _TrioWheel(_Buckets):
    """The trio wheel: one system task per run sleeps until the earliest bucket.

    A call enters a plain ``trio.CancelScope()`` and files it in a bucket:
    registering a deadline with trio costs about 1.2 us a call (trio keeps
    a heap of deadlines and two context managers around each change), a
    bucket a dict insert. When the task wakes, it cancels the scopes whose
    deadline has passed, as trio would: one float step after the deadline,
    so that work finishing exactly at the deadline completes first.

    When the run's system tasks are cancelled (the run is closing), the
    calls still filed get their deadline from trio itself, and later calls
    in that run use trio's deadlines directly.
    """

    __slots__ = ("enter", "heap", "new_scope", "run", "sleep", "trio", "wake_at")

    def __init__(self, run: _TrioRun, trio: Any) -> None:
        super().__init__()
        self.run = run
        self.trio = trio
        self.new_scope: Callable[[], Any] = trio.CancelScope
        self.enter: Callable[[Any], object] = _lean_enter(trio) or _public_enter
        # (when, key) of each bucket timer set; an entry whose bucket left
        # or whose timer moved since is skipped when it comes up.
        self.heap: list[tuple[float, int]] = []
        self.sleep: Any = None  # the task's cancel scope while it sleeps
        self.wake_at = inf  # when it wakes, while it sleeps

    def _arm(self, bucket: _Bucket, when: float) -> None:
        bucket.when = when
        heappush(self.heap, (when, bucket.key))
        if when < self.wake_at and self.sleep is not None:
            self.wake_at = when
            self.sleep.deadline = nextafter(when, inf)

    async def serve(self) -> None:
        """The system task: sleep until the earliest timer, cancel what is due."""
        trio = self.trio
        heap = self.heap
        try:
            while True:
                while heap:  # drop the timers that moved or left
                    when, key = heap[0]
                    bucket = self.buckets.get(key)
                    if bucket is not None and bucket.when == when:
                        break
                    heappop(heap)
                when = heap[0][0] if heap else inf
                with trio.CancelScope(deadline=nextafter(when, inf)) as sleep:
                    self.wake_at = when
                    self.sleep = sleep
                    await trio.sleep_forever()
                self.sleep = None
                self.wake_at = inf
                now = trio.current_time()
                while heap and heap[0][0] < now:
                    when, key = heappop(heap)
                    bucket = self.buckets.get(key)
                    if bucket is not None and bucket.when == when:
                        self._fire(bucket, now)
        finally:
            self.sleep = None
            self._hand_over()

    def _fire(self, bucket: _Bucket, now: float) -> None:
        """Cancel the scopes whose deadline is before *now* (trio's own rule)."""
        due: list[Any] = []
        earliest = inf
        for scope, deadline in bucket.entries.items():
            if deadline < now:
                if not scope.cancel_called:
                    due.append(scope)
            elif deadline < earliest:
                earliest = deadline
        self._settle(bucket, earliest)
        for scope in due:
            scope.cancel()

    def _hand_over(self) -> None:
        """Give the calls still filed their deadline from trio; stop filing."""
        self.run.wheel = None
        self.run.wheel_ended = True
        for bucket in self.buckets.values():
            for scope, deadline in bucket.entries.items():
                if not scope.cancel_called:
                    scope.deadline = nextafter(deadline, inf)
        self.buckets.clear()
        self.heap.clear()
        self.current = _NO_BUCKET


_trio: Any = None


def _import_trio() -> Any:
    global _trio
    _trio = sys.modules.get("trio")
    if _trio is None:
        raise RuntimeError("layers needs a running asyncio or trio event loop")
    return _trio


# ============================================================================
# THE CLOCK for layers that read it on every call, and the RateLimit
# success path.
#
# A rate limit, a time-window breaker or a retry budget reads the clock on
# every call, so their success path is mostly the cost of finding the
# running loop's clock. current_time() keeps that answer in module globals
# that one identity test per backend validates, trio's first:
#
# * trio: the run in progress in this thread, kept in a _TrioRun: its
#   thread, and its clock as `offset + read()` (for trio's default
#   SystemClock, its frozen offset and perf_counter, which
#   trio.current_time() reaches through three Python calls; for any other
#   clock, MockClock included, 0 and the clock's bound current_time). The
#   _TrioRun is also an instrument of the run: its after_run() hook drops
#   it from the cache when the run ends, so `_trio_thread == get_ident()`
#   is an exact test that the cached run is the one in this thread. It
#   also keeps the run's Timeout wheel. The hot paths read the thread, the
#   offset and the read function from module globals (about 15 ns less
#   than from the object's slots): _cache_trio_run() stores them, and no
#   call or loop between its stores, or between a reader's loads, lets
#   another thread run in between (under the GIL a thread switches at
#   calls and backward jumps only), so a reader never mixes two runs.
# * asyncio (stock loops and their subclasses, looptime included): the loop
#   that runs in this thread and its clock function. The loop records the
#   thread it runs on (`_thread_id`, None once stopped), so
#   `_clock_loop._thread_id == get_ident()` is an exact test that it is the
#   running loop, as for the timer wheel above.
# * anything else (uvloop, a loop that records no thread): the slow path,
#   get_running_loop().
#
# A trio guest run on an asyncio loop shares that loop's thread: it would
# read asyncio's clock. It is not supported (Timeout refuses it).
#
# rate_limit_call() builds the RateLimit success path here, where these
# globals are one LOAD_GLOBAL away (about 50 ns less than calling
# current_time() from the layer's module on Python 3.11).
# ============================================================================


# No thread's ident (get_ident() is never 0). An int, not None: comparing an
# ident with None takes Python's slow path for mixed types, about 10 ns more
# on every call that fails the first test.
_NO_THREAD: Final = 0


class _NoLoop:
    # An instance attribute: Python 3.11 specialises reading it, not a class
    # attribute read through an instance.
    def __init__(self) -> None:
        self._thread_id: int | None = _NO_THREAD


class _TrioRun:
    """A trio run, cached for the thread it runs in: its clock and Timeout wheel.

    Installed as an instrument of the run (trio calls the hooks a class
    defines, no base class needed), so that the cache forgets it when the
    run ends.
    """

    __slots__ = ("offset", "read", "runner", "source", "thread", "wheel", "wheel_ended")

    def __init__(
        self, thread: int, runner: Any, offset: float, read: Callable[[], float]
    ) -> None:
        self.thread = thread
        self.runner = runner
        self.offset = offset
        self.read = read
        self.source: ClockSource = (offset, read)
        self.wheel: _TrioWheel | None = None
        self.wheel_ended = False

    def after_run(self) -> None:
        """The run ended (a trio instrument hook): forget it."""
        self.thread = _NO_THREAD
        if _trio_run is self:
            _cache_trio_run(_NO_TRIO_RUN)


_NO_TRIO_RUN: Final = _TrioRun(_NO_THREAD, None, 0.0, perf_counter)

_clock_loop: Any = _NoLoop()  # the stock asyncio loop whose clock is cached
_clock_fn: Callable[[], float] = monotonic
# the trio run whose clock is cached, and its thread and clock
_trio_run = _NO_TRIO_RUN
_trio_thread: int = _NO_THREAD
_trio_offset = 0.0
_trio_read: Callable[[], float] = perf_counter


def _cache_trio_run(run: _TrioRun) -> None:
    global _trio_run, _trio_thread, _trio_offset, _trio_read
    _trio_thread = _NO_THREAD
    _trio_run = run
    _trio_offset = run.offset
    _trio_read = run.read
    _trio_thread = run.thread


def current_time() -> float:
    """The running event loop's clock: :func:`anyio.current_time`, but cheaper.

    For layers whose success path reads the clock (rate limits, breakers,
    budgets): about 100 ns on asyncio and trio instead of anyio's 700 ns.
    The answer's source is cached in module globals that one identity test
    validates (see the section comment above).
    """
    ident = get_ident()
    if ident == _trio_thread:
        return _trio_offset + _trio_read()
    if ident == _clock_loop._thread_id:
        return _clock_fn()
    return _current_time_slow()


ClockSource = tuple[float, Callable[[], float]]
"""``(offset, read)``: the running loop's time is ``offset + read()``."""

_asyncio_source: ClockSource = (0.0, monotonic)


def clock_source() -> ClockSource:
    """The running loop's clock as ``(offset, read)``: its time is ``offset + read()``.

    For a layer that reads the clock twice in one call (a breaker timing
    slow calls): validate once, then read with a bare C call. A coroutine
    never changes event loop, so the source stays right for the whole call.
    """
    source = _cached_source()
    if source is None:
        _current_time_slow()  # caches the source where it can
        source = _cached_source()
    if source is not None:
        return source
    loop = get_running_loop()
    if loop is not None:  # a loop that records no thread (uvloop)
        return (0.0, loop.time)
    return (0.0, (_trio or _import_trio()).current_time)  # pragma: no cover


def _cached_source() -> ClockSource | None:
    ident = get_ident()
    if ident == _trio_thread:
        return _trio_run.source
    if ident == _clock_loop._thread_id:
        return _asyncio_source
    return None


def _remember_loop(loop: AbstractEventLoop) -> bool:
    """Cache *loop* as the one running in this thread, if it records its thread."""
    global _clock_loop, _clock_fn, _asyncio_source
    if not hasattr(loop, "_thread_id"):  # not a stock loop or a subclass
        return False
    _clock_fn = monotonic if type(loop).time is BaseEventLoop.time else loop.time
    _asyncio_source = (0.0, _clock_fn)
    _clock_loop = loop
    return True


def _current_time_slow() -> float:
    loop = get_running_loop()
    if loop is not None:
        if _remember_loop(loop):
            return _clock_fn()
        now: float = loop.time()
        return now
    trio = _trio or _import_trio()
    now = trio.current_time()  # trio, or RuntimeError
    _remember_trio_run(trio)
    return now


def _remember_trio_run(trio: Any) -> None:
    """Cache the trio run in this thread (no asyncio loop runs here)."""
    try:
        from trio._core._run import GLOBAL_RUN_CONTEXT, SystemClock
    except ImportError:  # pragma: no cover - trio internals moved
        return
    runner = getattr(GLOBAL_RUN_CONTEXT, "runner", None)
    if runner is None:  # pragma: no cover - trio.current_time() answered
        return
    for instrument in runner.instruments.get("after_run", ()):
        if type(instrument) is _TrioRun:  # seen before (another thread ran since)
            _cache_trio_run(instrument)
            return
    clock = runner.clock
    if type(clock) is SystemClock:
        run = _TrioRun(get_ident(), runner, clock.offset, perf_counter)
    else:
        run = _TrioRun(get_ident(), runner, 0.0, clock.current_time)
    trio.lowlevel.add_instrument(run)
    _cache_trio_run(run)


if TYPE_CHECKING:
    from ._core import Service


class TatCell(Protocol):
    """The GCRA state of a rate limit without a key (see layers._ratelimit)."""

    tat: float


def rate_limit_call(
    inner: Callable[[Req], Awaitable[Res]],
    cell: TatCell,
    interval: float,
    slack: float,
    slow: Callable[[float], Awaitable[None]],
) -> Service[Req, Res]:
    """Build the success path of a RateLimit without key or cost function.

    One GCRA update of cost 1 (see layers._ratelimit): admitted when the
    limit is idle (``tat <= now``) or its lead fits in *slack*
    (``tau - T``); otherwise ``await slow(now)`` queues or raises.
    ``cell.tat`` is ``+inf`` while anyone waits, so nobody overtakes them.
    """

    async def rate_limit(request: Req, /) -> Res:
        # current_time(), inline
        ident = get_ident()
        if ident == _trio_thread:  # trio
            now = _trio_offset + _trio_read()
        elif ident == _clock_loop._thread_id:  # asyncio
            now = _clock_fn()
        else:
            now = _current_time_slow()
        tat = cell.tat
        if tat <= now:  # idle: admitted
            cell.tat = now + interval
            return await inner(request)
        if tat - now <= slack:
            cell.tat = tat + interval
            return await inner(request)
        await slow(now)
        return await inner(request)

    return rate_limit


class Waiter(Protocol):
    """One parked task, woken at most once (see :func:`new_waiter`)."""

    woken: bool
    """Whether :meth:`wake` was called (even if the task was cancelled first)."""

    def wait(self) -> Awaitable[None]:
        """Park until :meth:`wake`; raises the backend's cancellation if cancelled."""
        ...

    def wake(self) -> None:
        """Let the waiting task resume (no effect once it was cancelled)."""
        ...


class _AsyncioWaiter:
    # A bare future, as anyio's own asyncio Semaphore uses: awaiting it
    # directly costs no coroutine, and Task.cancel() (anyio's cancel scopes
    # included) cancels it.
    __slots__ = ("future", "woken")

    def __init__(self, loop: AbstractEventLoop) -> None:
        self.future = loop.create_future()
        self.woken = False

    def wait(self) -> Awaitable[None]:
        return self.future

    def wake(self) -> None:
        self.woken = True
        if not self.future.done():
            self.future.set_result(None)


class _TrioWaiter:
    __slots__ = ("aborted", "task", "woken")

    def __init__(self) -> None:
        self.task: Any = None
        self.woken = False
        self.aborted = False

    async def wait(self) -> None:
        if self.woken:
            return
        lowlevel = _trio_lowlevel()
        self.task = lowlevel.current_task()

        def abort(_: Any) -> Any:
            self.aborted = True
            return lowlevel.Abort.SUCCEEDED

        await lowlevel.wait_task_rescheduled(abort)
        # Woken, but our scope may have been cancelled since: trio would
        # deliver that at the next checkpoint, inside the caller's work.
        await lowlevel.checkpoint_if_cancelled()

    def wake(self) -> None:
        if self.woken:
            return
        self.woken = True
        if self.task is not None and not self.aborted:
            _trio_lowlevel().reschedule(self.task)


def _trio_lowlevel() -> Any:
    return (_trio or _import_trio()).lowlevel


def new_waiter() -> Waiter:
    """A waiter for the running backend: the limits' queues park tasks on it.

    anyio's Event costs several objects and a coroutine per wait on asyncio;
    under contention (every call queues) that doubled the cost of a
    ConcurrencyLimit against anyio's own Semaphore.

    A task woken and cancelled in the same step: on trio, :meth:`wait`
    raises the cancellation (the caller passes its turn on). On asyncio, a
    ``Task.cancel()`` does the same; an anyio cancel scope cancelled then is
    delivered at the task's next ``await`` instead (anyio does not cancel a
    task whose future is already done), as with anyio's own primitives.
    """
    ident = get_ident()
    if ident == _trio_thread:
        return _TrioWaiter()
    if ident == _clock_loop._thread_id:
        return _AsyncioWaiter(_clock_loop)
    loop = get_running_loop()
    if loop is not None:
        _remember_loop(loop)
        return _AsyncioWaiter(loop)
    return _TrioWaiter()


# ============================================================================
# THE CIRCUIT BREAKER's clocked success paths (see layers._breaker).
#
# A closed breaker with a time window reads the clock once per call; with a
# slow-call threshold, twice (start and end). As for rate_limit_call(), the
# success path is built here, where current_time()'s cached source is one
# LOAD_GLOBAL away: the validation (the same exact identity tests) and the
# reads are inlined in the closure, and the breaker's own code is called
# back only off the fast path (another state, an exception, an outcome
# that may change a verdict). A call validates the source once: a coroutine
# never changes event loop, so it stays right for the second read.
# ============================================================================


class BreakerHooks(NamedTuple, Generic[Req, Res]):
    """What a breaker's clocked success path calls back, and its constants."""

    other: Callable[[Req], Awaitable[Res]]
    """The call in any state but closed."""
    record: Callable[[Any, int, float], None]
    """``record(window, outcome, now)``: an outcome that may change a verdict."""
    record_error: Callable[[Any, Exception, float | None], None]
    """``record_error(window, error, start)``: an exception from the call."""
    success: int
    """The outcome code of a success."""
    slow: int
    """The outcome code of a slow success."""
    slow_after: float
    """The slow-call threshold in seconds (with one)."""


class BreakerCore(Protocol):
    """What the breaker's success paths read from its state (layers._breaker)."""

    @property
    def fast(self) -> object:
        """The window while the breaker is closed, else None."""
        ...


class TimeWindowCell(Protocol):
    """A breaker's time window, as its success path sees it."""

    clean_until: float
    cur_calls: int


class CountWindowCell(Protocol):
    """A breaker's count window, as its success path sees it."""

    ring: bytearray
    pos: int
    size: int
    streak: int


def breaker_time_call(
    core: BreakerCore,
    inner: Callable[[Req], Awaitable[Res]],
    hooks: BreakerHooks[Req, Res],
) -> Service[Req, Res]:
    """A time window, no slow-call threshold: one clock read per call.

    While ``core.fast`` is None, the call is ``other(request)``. A success
    read at ``now < window.clean_until`` adds one to ``window.cur_calls``;
    otherwise ``record(window, success, now)``. An exception goes to
    ``record_error(window, error, None)`` and propagates.
    """
    other, record, record_error, success = hooks[:4]

    async def circuit_breaker(request: Req, /) -> Res:
        window: TimeWindowCell | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await other(request)
        try:
            response = await inner(request)
        except Exception as error:
            record_error(window, error, None)
            raise
        # current_time(), inline
        ident = get_ident()
        if ident == _trio_thread:  # trio
            now = _trio_offset + _trio_read()
        elif ident == _clock_loop._thread_id:  # asyncio
            now = _clock_fn()
        else:
            now = _current_time_slow()
        if now < window.clean_until:
            window.cur_calls += 1
        else:
            record(window, success, now)
        return response

    return circuit_breaker


def breaker_slow_time_call(
    core: BreakerCore,
    inner: Callable[[Req], Awaitable[Res]],
    hooks: BreakerHooks[Req, Res],
) -> Service[Req, Res]:
    """A time window and a slow-call threshold: two clock reads per call.

    As :func:`breaker_time_call`, and a call that took ``slow_after`` or
    more (``end >= start + slow_after``) is ``record(window, slow, end)``.
    The two reads are taken without the clock's offset (the duration is
    the same), which is added where a time is recorded.
    """
    other, record, record_error, success, slow, slow_after = hooks

    async def circuit_breaker(request: Req, /) -> Res:
        window: TimeWindowCell | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await other(request)
        # clock_source(), inline
        ident = get_ident()
        if ident == _trio_thread:  # trio
            offset = _trio_offset
            read = _trio_read
        elif ident == _clock_loop._thread_id:  # asyncio
            offset = 0.0
            read = _clock_fn
        else:
            offset, read = clock_source()
        start = read()  # without the offset: a float addition less
        try:
            response = await inner(request)
        except Exception as error:
            record_error(window, error, offset + start)
            raise
        end = read()
        if end >= start + slow_after:
            record(window, slow, offset + end)
            return response
        now = offset + end
        if now < window.clean_until:
            window.cur_calls += 1
        else:
            record(window, success, now)
        return response

    return circuit_breaker


def breaker_slow_count_call(
    core: BreakerCore,
    inner: Callable[[Req], Awaitable[Res]],
    hooks: BreakerHooks[Req, Res],
) -> Service[Req, Res]:
    """A count window and a slow-call threshold: two clock reads per call.

    A slow call is ``record(window, slow, end)``. A success that replaces a
    success (``window.ring[window.pos] == success``) outside a failure run
    only moves ``window.pos``; otherwise ``record(window, success, end)``.
    """
    other, record, record_error, success, slow, slow_after = hooks

    async def circuit_breaker(request: Req, /) -> Res:
        window: CountWindowCell | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await other(request)
        # not a goal of the benchmarks: the call, not the inline copy
        offset, read = clock_source()
        start = read()
        try:
            response = await inner(request)
        except Exception as error:
            record_error(window, error, offset + start)
            raise
        end = read()
        if end >= start + slow_after:
            record(window, slow, offset + end)
            return response
        i = window.pos
        if window.ring[i] == success and not window.streak:
            # a success replaces a success: only the position moves
            i += 1
            window.pos = 0 if i == window.size else i
        else:
            record(window, success, offset + end)
        return response

    return circuit_breaker
