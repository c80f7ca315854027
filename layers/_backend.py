"""BACKEND CORNER: the one module that speaks to asyncio and trio directly.

Everything else in ``layers`` uses anyio. This module exists for the success
path of hot layers, where anyio's portable primitives cost far more than the
backend's own (``anyio.fail_after`` is about 3x ``asyncio.timeout``, which is
itself mostly the cost of one timer handle per call). It holds primitives
only; each layer's behaviour lives in the layer's own module.

The interface
-------------
* :func:`current_time`: the running loop's clock (:func:`anyio.current_time`,
  cheaper).
* :func:`base_time` and :func:`clock_source`: the same clock without its
  per-run offset, the time the stateful layers (rate limit, breaker, retry
  budget) keep. On a real clock it means the same in every run (see
  "Times across runs" below).
* :func:`timeout_call`: the Timeout layer's call (the timer wheels).
* :func:`new_waiter`: a parked task, woken once (the limits' queues).
* :func:`get_running_loop`: the running asyncio loop, or None.
* :func:`spawn_detached`: a task that no task group owns (Coalesce's shared
  calls), through public API only.

Private details relied on
-------------------------
Each one is checked against the public API before its first use in a run
(or at each use, where that is as cheap); a missing attribute, a failed
import or a disagreement makes that fast path give way to its portable
fallback, which behaves the same. Importing ``layers`` reads no private name.

+---------------------------+-------------------------------+------------------------+
| private detail, what for  | checked against, when         | fallback               |
+===========================+===============================+========================+
| ``loop._thread_id`` (stock| equals ``get_ident()`` while  | ``asyncio.get_running_ |
| loops): the cached loop   | ``asyncio.get_running_loop()``| loop()`` on every call |
| runs in this thread       | is that loop; when the loop is|                        |
|                           | cached (first use in a thread)|                        |
+---------------------------+-------------------------------+------------------------+
| ``BaseEventLoop.time()``  | ``monotonic() <= loop.time()  | ``loop.time()``        |
| is ``time.monotonic()``:  | <= monotonic()``; when the    |                        |
| one C call per read       | loop is cached                |                        |
+---------------------------+-------------------------------+------------------------+
| ``asyncio.tasks.          | ``get(loop) is asyncio.       | ``asyncio.             |
| _current_tasks`` (3.11):  | current_task(loop)``; when a  | current_task()``       |
| the current task, no frame| loop's wheel is made          |                        |
+---------------------------+-------------------------------+------------------------+
| ``Task._fut_waiter``,     | present, a future or None, and| deliver one loop       |
| ``Task._must_cancel``: do | a bool; at each delivery (off | iteration later: what  |
| not cancel a task about to| the success path)             | was ready to resume has|
| resume with its result    |                               | run by then            |
+---------------------------+-------------------------------+------------------------+
| ``loop._ready``: other    | a ``collections.deque``; at   | wait while the clock   |
| work is due at this       | each delivery                 | stands still, at most  |
| instant of a virtual clock|                               | 64 iterations          |
+---------------------------+-------------------------------+------------------------+
| trio's ``SystemClock``    | ``offset + perf_counter()``,  | the clock's own        |
| is ``offset +             | read before and after, must   | ``current_time()``     |
| perf_counter()``: one C   | bracket ``clock.current_time  |                        |
| call per read             | ()``; at the run's first use  |                        |
+---------------------------+-------------------------------+------------------------+
| the lean cancel-scope     | a scope it enters equals, in  | ``trio.CancelScope.    |
| entry (``GLOBAL_RUN_      | every attrs field, one entered| __enter__``            |
| CONTEXT.task``, ``Cancel  | by trio's ``__enter__``; when |                        |
| Status``, scope fields)   | the run's wheel starts        |                        |
+---------------------------+-------------------------------+------------------------+

The run's own state (its Timeout wheel, its clock) is found through public
API only: :class:`trio.lowlevel.RunVar`, :func:`trio.lowlevel.current_clock`
and an instrument (:func:`trio.lowlevel.add_instrument`) that forgets the run
when it ends.

The switch: ``LAYERS_NO_FAST_PATHS``
------------------------------------
Set the environment variable ``LAYERS_NO_FAST_PATHS`` to any value but
``0`` or the empty string (read once, at import) and no private detail is
used and no module-level cache is kept: every call finds its loop, its
clock and its task through the public API. The behaviour is the same;
only the cost differs. CI runs the test suite both ways.

The caches (the cached loop, trio run and clock in module globals) rely on
the GIL: one function stores them with no call in between, and a reader
loads them with no call in between, so under the GIL a thread never sees
a mix of two runs. On a free-threaded build with the GIL disabled
(``sys._is_gil_enabled()`` false) they are not used either.

Times across runs
-----------------
:func:`base_time` is the loop's clock without its per-run offset. asyncio's
clock has none: the stock loops' ``loop.time()`` is ``time.monotonic()``,
uvloop's is libuv's monotonic clock. trio's default clock is a random
offset plus ``time.perf_counter()``, a new offset per run; its base time is
that clock less the offset (measured once per run against
``perf_counter()`` through the public API, or read exactly when the fast
path's check holds). On Linux ``monotonic()`` and ``perf_counter()`` are
both ``CLOCK_MONOTONIC``, so the stateful layers' times mean the same in
every run, on either backend. A virtual clock (trio's ``MockClock``,
looptime's loop) is its own base: its times start again at its own start
in each run.

Timeout on asyncio: a timer wheel
---------------------------------
One :class:`_Wheel` per event loop keeps the calls in flight in *buckets* of
deadlines (1/64 s wide). A bucket has one ``loop.call_at`` timer, set for
the earliest deadline in it, so a call costs a dict insert and a delete, not
a timer handle. When a bucket's timer fires, the calls whose deadline has
passed are cancelled with ``Task.cancel()`` (after one turn of the loop, see
below); the others get the timer set again for the next deadline. The call
then turns its own cancellation into :class:`~layers.Elapsed`, and only its
own: it counts ``Task.cancelling()`` as :func:`asyncio.timeout` does, so a
cancellation from outside (an anyio cancel scope, ``Task.cancel()``) that
lands at the same time still propagates as a cancellation. The wheel holds
its loop by a weak reference and keeps no timer handle, so a closed loop is
collected once nothing else refers to it.

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

import importlib
import os
import sys
import time
import weakref
from asyncio import AbstractEventLoop, BaseEventLoop, CancelledError, Task, isfuture
from asyncio import current_task as _asyncio_current_task
from asyncio import get_running_loop as _running_loop
from asyncio import tasks as asyncio_tasks
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextvars import Context, copy_context
from heapq import heappop, heappush
from math import floor, inf, nextafter
from threading import get_ident
from time import monotonic, perf_counter
from typing import Any, Final, Protocol, TypeVar

from ._deadline import DEADLINE

__all__ = [
    "FAST_PATHS",
    "ClockSource",
    "Detached",
    "TimedService",
    "Waiter",
    "base_time",
    "clock_source",
    "current_time",
    "get_running_loop",
    "new_waiter",
    "spawn_detached",
    "timeout_call",
]

Req = TypeVar("Req")
Res = TypeVar("Res")


def _fast_paths_wanted(environ: Mapping[str, str]) -> bool:
    """False when ``LAYERS_NO_FAST_PATHS`` is set to anything but ``""``/``"0"``."""
    return environ.get("LAYERS_NO_FAST_PATHS", "") in ("", "0")


def _gil_enabled() -> bool:
    """Whether the GIL is on (always, before Python 3.13's free-threaded build)."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


FAST_PATHS: Final = _fast_paths_wanted(os.environ)
"""Whether the fast paths may be used (``LAYERS_NO_FAST_PATHS``, read at import)."""
_CACHES: Final = FAST_PATHS and _gil_enabled()
"""Whether the module-level caches may be used (they rely on the GIL)."""

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

_MISSING: Final[Any] = object()


def get_running_loop() -> AbstractEventLoop | None:
    """The running asyncio loop, or None (:func:`asyncio.get_running_loop`)."""
    try:
        return _running_loop()
    except RuntimeError:
        return None


def current_loop() -> object:
    """What identifies the running event loop: asyncio's loop, or trio's run token.

    Raises:
        RuntimeError: Outside a running asyncio loop or trio run.
    """
    loop = get_running_loop()
    if loop is not None:
        return loop
    token: object = (_trio or _import_trio()).lowlevel.current_trio_token()
    return token


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
    __slots__ = ("end", "entries", "key", "when")

    def __init__(self, key: int) -> None:
        self.key = key
        # asyncio: id(entry) -> [task, deadline, cancelling, state];
        # trio: cancel scope -> deadline
        self.entries: dict[Any, Any] = {}
        self.when = inf  # its timer's time; no deadline in it is earlier
        # The end of its key's range; -inf once it left the wheel, so that a
        # new call never joins it: when <= deadline < end says "join".
        self.end = (key + 1) / _SLOTS_PER_SECOND


_NO_BUCKET = _Bucket(0)
_NO_BUCKET.end = -inf


class _Buckets:
    """The deadlines of the calls in flight, in buckets 1/64 s wide (both backends).

    A subclass arms a bucket's timer (:meth:`_arm`) for the earliest deadline
    in it. When the timer fires, it takes the calls that are due, then
    :meth:`_settle` sets the timer again for the next deadline, or drops
    the bucket. A timer set again earlier leaves the older one to fire for
    nothing: a timer counts only while ``bucket.when`` is its time and the
    bucket is in the wheel.
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


def _current_task_getter(
    loop: AbstractEventLoop,
) -> Callable[[AbstractEventLoop], Task[Any] | None]:
    """``asyncio.current_task``, or Python 3.11's table of them if it agrees.

    On Python 3.11 :func:`asyncio.current_task` is a Python function over a
    dict; the dict's ``get`` is a C call. Checked in the running task (or
    callback) against the public function before it is used.
    """
    if not FAST_PATHS or sys.version_info >= (3, 12):
        return _asyncio_current_task
    table = getattr(asyncio_tasks, "_current_tasks", None)
    get = getattr(table, "get", None)
    if get is None:
        return _asyncio_current_task
    try:
        agrees = get(loop) is _asyncio_current_task(loop)
    except Exception:  # pragma: no cover - a table of another kind
        agrees = False
    return get if agrees else _asyncio_current_task


class _Wheel(_Buckets):
    """The asyncio wheel: a ``loop.call_at`` timer per bucket.

    It holds its loop by a weak reference and keeps no timer handle (the
    loop holds them, and through them the wheel), so nothing here keeps a
    closed loop alive.
    """

    __slots__ = ("__weakref__", "loop_ref", "task_of")

    def __init__(self, loop: AbstractEventLoop) -> None:
        super().__init__()
        try:
            self.loop_ref: Callable[[], AbstractEventLoop | None] = weakref.ref(loop)
        except TypeError:  # a loop that takes no weak references (not cached)
            self.loop_ref = lambda: loop
        self.task_of = _current_task_getter(loop)

    def _arm(self, bucket: _Bucket, when: float) -> None:
        loop = self.loop_ref()
        if loop is None:  # pragma: no cover - the loop is gone
            return
        bucket.when = when
        loop.call_at(when, self._fire, bucket, when)

    def _fire(self, bucket: _Bucket, when: float) -> None:
        if bucket.when != when or self.buckets.get(bucket.key) is not bucket:
            return  # a timer set again since, or a bucket that left
        loop = self.loop_ref()
        if loop is None:  # pragma: no cover - the loop is gone
            return
        now = loop.time() + _CLOCK_RESOLUTION
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
            loop.call_soon(self._deliver, bucket.entries, due)

    def _deliver(
        self,
        entries: dict[int, _Entry],
        due: list[tuple[int, _Entry]],
        rounds: int = 0,
    ) -> None:
        loop = self.loop_ref()
        if loop is None:  # pragma: no cover - the loop is gone
            return
        # On a virtual clock (looptime) the time stands still while callbacks
        # are ready: let the other work due at the deadline run first (a task
        # that wakes at the deadline and sets what the call waits for), as
        # trio's MockClock does. On a real clock the time has moved on by now.
        settle = rounds < _SETTLE_ROUNDS and _work_ready(loop)
        now = loop.time() - _CLOCK_RESOLUTION
        again: list[tuple[int, _Entry]] = []
        for token, entry in due:
            if entries.get(token) is not entry:
                continue  # the call has ended
            task: Task[Any] = entry[0]
            if task.done():
                continue
            if _about_to_resume(task, rounds) or (settle and now <= entry[1]):
                again.append((token, entry))  # let it run first
                continue
            entry[3] = _FIRED
            task.cancel(_CANCEL_MESSAGE)
        if again:
            loop.call_soon(self._deliver, entries, again, rounds + 1)


def _work_ready(loop: AbstractEventLoop) -> bool:
    """Whether other callbacks are ready now (or might be: the portable answer)."""
    if FAST_PATHS:
        ready: Any = getattr(loop, "_ready", None)
        if type(ready) is deque:
            return len(ready) > 0  # pyright: ignore[reportUnknownArgumentType]
    return True  # unknown: wait while the clock stands still


def _about_to_resume(task: Task[Any], rounds: int) -> bool:
    """Whether *task* is about to resume (its future done, or a cancel pending).

    The portable answer: on the first delivery, assume it may be, so that
    every resumption ready by then runs before the cancellation.
    """
    if FAST_PATHS:
        waiter = getattr(task, "_fut_waiter", _MISSING)
        must_cancel = getattr(task, "_must_cancel", _MISSING)
        if (waiter is None or isfuture(waiter)) and type(must_cancel) is bool:
            return must_cancel or (waiter is not None and waiter.done())
    return rounds == 0


_wheels: weakref.WeakKeyDictionary[AbstractEventLoop, _Wheel] = (
    weakref.WeakKeyDictionary()
)


def _wheel_for(loop: AbstractEventLoop) -> _Wheel:
    """The Timeout wheel of *loop* (made on its first use)."""
    try:
        wheel = _wheels.get(loop)
        if wheel is None:
            wheel = _wheels[loop] = _Wheel(loop)
    except TypeError:  # a loop that takes no weak references
        wheel = _Wheel(loop)
    return wheel


_get_deadline = DEADLINE.get
_set_deadline = DEADLINE.set
_reset_deadline = DEADLINE.reset


async def timeout_call(service: TimedService[Req, Res], request: Req, /) -> Res:
    """Call ``service.inner(request)``, cancelled ``service.seconds`` from now."""
    ident = get_ident()
    loop = _clock_loop
    if ident == loop._thread_id:  # asyncio, the loop cached
        wheel = _clock_wheel
        now = _clock_fn()
    elif ident == _trio_thread and _trio_run.wheel is not None:  # trio, cached
        return await _trio_wheel_call(
            _trio_run.wheel, _trio_offset + _trio_read(), service, request
        )
    else:
        try:
            loop = _running_loop()
        except RuntimeError:  # not asyncio: trio (or no event loop at all)
            return await _trio_timeout_call(service, request)
        wheel = _asyncio_wheel(loop)
        now = loop.time()
    deadline = now + service.seconds
    outer = _get_deadline()
    if outer is not None and outer < deadline:
        deadline = outer
    bucket = wheel.current
    if not bucket.when <= deadline < bucket.end:
        bucket = wheel.schedule(deadline)
    task = wheel.task_of(loop)
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


# The last loop whose wheel _asyncio_wheel() looked up, and that wheel, as
# one tuple (uvloop, whose loop is not cached, asks for it on every call).
_last_wheel: tuple[object, _Wheel | None] = (None, None)


def _asyncio_wheel(loop: AbstractEventLoop) -> _Wheel:
    """The wheel of *loop*, the running loop, off the cached path."""
    global _last_wheel
    last_loop, wheel = _last_wheel
    if last_loop is loop and wheel is not None:  # uvloop, after its first call
        return wheel
    if _remember_loop(loop):
        return _clock_wheel
    wheel = _wheel_for(loop)
    if _CACHES:
        _last_wheel = (loop, wheel)
    return wheel


async def _trio_wheel_call(
    wheel: _TrioWheel, now: float, service: TimedService[Req, Res], request: Req, /
) -> Res:
    """Timeout on trio: a plain cancel scope, filed in the run's wheel."""
    deadline = now + service.seconds
    outer = _get_deadline()
    if outer is not None and outer < deadline:
        if outer < now:  # already passed: trio's own deadline
            return await _trio_deadline_call(wheel.trio, now, service, request)
        deadline = outer
    bucket = wheel.current
    if not bucket.when <= deadline < bucket.end:
        bucket = wheel.schedule(deadline)
    scope = wheel.new_scope()
    entries = bucket.entries
    entries[scope] = deadline
    token = _set_deadline(deadline)
    try:
        wheel.enter(scope)  # `with scope:`, spelled out (see _lean_enter)
        try:
            response = await service.inner(request)
        except BaseException as error:
            if not scope.__exit__(type(error), error, error.__traceback__):
                raise
        else:
            scope.__exit__(None, None, None)
            return response
    finally:
        del entries[scope]
        _reset_deadline(token)
    # Only our own scope's cancellation is swallowed by its exit.
    raise service.elapsed()


async def _trio_timeout_call(service: TimedService[Req, Res], request: Req, /) -> Res:
    """Timeout on trio off the cached path: start the wheel, or use trio's deadline.

    The first call of a run starts the run's wheel. Trio's own deadline
    serves a run whose wheel has ended (its system tasks were cancelled:
    the run is closing).
    """
    trio = _trio or _import_trio()
    run = _trio_run_here(trio)  # RuntimeError outside a run
    if run.wheel is None and not run.wheel_ended:
        run.wheel = _TrioWheel(run, trio)
        trio.lowlevel.spawn_system_task(
            run.wheel.serve, name="layers.Timeout deadlines", context=Context()
        )
    now = trio.current_time()
    if run.wheel is not None:
        return await _trio_wheel_call(run.wheel, now, service, request)
    return await _trio_deadline_call(trio, now, service, request)


async def _trio_deadline_call(
    trio: Any, now: float, service: TimedService[Req, Res], request: Req, /
) -> Res:
    """Timeout on trio with trio's own deadline (no wheel)."""
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
    if not FAST_PATHS:
        return None
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
_run_var: Any = None  # trio.lowlevel.RunVar: the _TrioRun of each run


def _import_trio() -> Any:
    global _trio, _run_var
    trio = sys.modules.get("trio")
    if trio is None:
        raise RuntimeError("layers needs a running asyncio or trio event loop")
    importlib.import_module("trio.lowlevel")
    # Not trio.testing: importing it takes 0.15 s or more, with the loop
    # blocked (see _new_trio_run).
    run_var: Any = trio.lowlevel.RunVar("layers_backend_run")
    _run_var = run_var
    _trio = trio
    return trio


# ============================================================================
# THE CLOCK for layers that read it on every call.
#
# A rate limit, a time-window breaker or a retry budget reads the clock on
# every call, so their success path is mostly the cost of finding the
# running loop's clock. With the caches on (_CACHES), the answer is kept in
# module globals that one identity test per backend validates:
#
# * asyncio (stock loops and their subclasses, looptime included): the loop
#   that runs in this thread, its clock function and its Timeout wheel. The
#   loop records the thread it runs on (`_thread_id`, None once stopped), so
#   `_clock_loop._thread_id == get_ident()` is an exact test that it is the
#   running loop.
# * trio: the run in progress in this thread, kept in a _TrioRun: its
#   thread, and its clock as `offset + read()` (for trio's default
#   SystemClock, its offset and perf_counter once the formula is checked;
#   for any other clock, MockClock included, 0 and the clock's bound
#   current_time). The _TrioRun is also an instrument of the run: its
#   after_run() hook drops it from the cache when the run ends, so
#   `_trio_thread == get_ident()` is an exact test that the cached run is
#   the one in this thread. It also keeps the run's Timeout wheel.
# * anything else (uvloop, a loop that records no thread, the caches off):
#   the slow path, through the public API.
#
# _cache_trio_run() and _remember_loop() store the globals with no call or
# loop between the stores, and a reader loads them with no call or loop in
# between (under the GIL a thread switches at calls and backward jumps
# only), so a reader never mixes two runs. Without the GIL, no cache.
#
# A trio guest run on an asyncio loop shares that loop's thread: it would
# read asyncio's clock. It is not supported (Timeout refuses it).
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


ClockSource = tuple[float, Callable[[], float]]
"""``(offset, read)``: the running loop's time is ``offset + read()``.

``read()`` is the base time (:func:`base_time`): the clock without its
per-run offset.
"""


class _Shifted:
    """A clock less a constant: trio's clock less its measured per-run offset."""

    __slots__ = ("offset", "read")

    def __init__(self, read: Callable[[], float], offset: float) -> None:
        self.read = read
        self.offset = offset

    def __call__(self) -> float:
        return self.read() - self.offset


class _TrioRun:
    """A trio run: its clock, its Timeout wheel, its thread (while cached).

    Found through a :class:`trio.lowlevel.RunVar`. Installed as an
    instrument of the run when it is cached (trio calls the hooks a class
    defines, no base class needed), so that the cache forgets it when the
    run ends.
    """

    __slots__ = ("offset", "read", "source", "thread", "wheel", "wheel_ended")

    def __init__(self, thread: int, offset: float, read: Callable[[], float]) -> None:
        self.thread = thread
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


_NO_TRIO_RUN: Final = _TrioRun(_NO_THREAD, 0.0, perf_counter)

_clock_loop: Any = _NoLoop()  # the stock asyncio loop whose clock is cached
_clock_fn: Callable[[], float] = monotonic
_clock_source: ClockSource = (0.0, monotonic)
_clock_wheel: _Wheel = _Wheel.__new__(_Wheel)  # the cached loop's wheel
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


def _remember_loop(loop: AbstractEventLoop) -> bool:
    """Cache *loop*, the running loop (from the public API), if it checks out.

    It must record this thread in ``_thread_id`` (the stock loops do); its
    clock is read with ``time.monotonic()`` if it is ``BaseEventLoop.time``
    and agrees with ``monotonic()``, else with ``loop.time``.
    """
    global _clock_loop, _clock_fn, _clock_source, _clock_wheel
    if not _CACHES:
        return False
    ident = get_ident()
    if getattr(loop, "_thread_id", None) != ident:  # not a stock loop, or moved
        return False
    read: Callable[[], float] = loop.time
    if type(loop).time is BaseEventLoop.time:
        before = monotonic()
        now = loop.time()
        if before <= now <= monotonic():
            read = monotonic
    wheel = _wheel_for(loop)
    _clock_loop = _NO_LOOP
    _clock_fn = read
    _clock_source = (0.0, read)
    _clock_wheel = wheel
    _clock_loop = loop
    return True


_NO_LOOP: Final = _NoLoop()


def _trio_run_here(trio: Any) -> _TrioRun:
    """The :class:`_TrioRun` of the trio run in this thread (made on first use).

    Caches it in the module globals where the caches are on. Raises
    RuntimeError outside a trio run.
    """
    run: _TrioRun | None = _run_var.get(None)
    if run is None:
        run = _new_trio_run(trio)
        _run_var.set(run)
        if _CACHES:
            trio.lowlevel.add_instrument(run)
    if _CACHES:
        _cache_trio_run(run)
    return run


def _new_trio_run(trio: Any) -> _TrioRun:
    """Find how to read this run's clock, and its offset from the base time.

    A virtual clock (``trio.testing.MockClock``) is its own base. Any other
    clock (trio's ``SystemClock``, whose time is a random offset plus
    ``perf_counter()``) is measured once against ``perf_counter()``: its
    base time is ``perf_counter()``'s. If its formula is exactly trio's
    (``offset + perf_counter()`` brackets ``current_time()``), the fast
    path reads ``perf_counter()`` itself.
    """
    clock = trio.lowlevel.current_clock()
    thread = get_ident()
    # A MockClock's module is imported by whoever made the clock.
    testing = sys.modules.get("trio.testing")
    if testing is not None and isinstance(clock, testing.MockClock):
        return _TrioRun(thread, 0.0, clock.current_time)
    before = perf_counter()
    now = clock.current_time()
    after = perf_counter()
    offset = getattr(clock, "offset", None) if FAST_PATHS else None
    if type(offset) is float and offset + before <= now <= offset + after:
        return _TrioRun(thread, offset, perf_counter)
    measured = now - (before + after) / 2
    return _TrioRun(thread, measured, _Shifted(clock.current_time, measured))


def current_time() -> float:
    """The running event loop's clock: :func:`anyio.current_time`, but cheaper.

    About 100 ns on asyncio and trio instead of anyio's 700 ns, with the
    caches on (see the section comment above).
    """
    ident = get_ident()
    if ident == _trio_thread:
        return _trio_offset + _trio_read()
    if ident == _clock_loop._thread_id:
        return _clock_fn()
    return _current_time_slow()


def _current_time_slow() -> float:
    try:
        loop = _running_loop()
    except RuntimeError:  # not asyncio: trio, or no event loop (RuntimeError)
        trio = _trio or _import_trio()
        now: float = trio.current_time()
        if _CACHES:
            _trio_run_here(trio)
        return now
    if _remember_loop(loop):
        return _clock_fn()
    now = loop.time()
    return now


def base_time() -> float:
    """The running loop's clock without its per-run offset (see the module docs).

    What the stateful layers keep their times on: a rate limit's schedule,
    a breaker's window and open period, a retry budget's window. On a real
    clock it means the same in every run; a virtual clock starts again at
    its own start. Differences of two readings are the loop's durations.
    """
    ident = get_ident()
    if ident == _trio_thread:
        return _trio_read()
    if ident == _clock_loop._thread_id:
        return _clock_fn()
    return clock_source()[1]()


def clock_source() -> ClockSource:
    """The running loop's clock as ``(offset, read)``: its time is ``offset + read()``.

    ``read()`` is :func:`base_time`. For a layer that reads the clock twice
    in one call (a breaker timing slow calls), or that converts between the
    loop's time and the base time (a rate limit sleeping until a base time):
    a coroutine never changes event loop, so the source stays right for the
    whole call. Raises RuntimeError outside an event loop.
    """
    global _last_source
    ident = get_ident()
    if ident == _trio_thread:
        return _trio_run.source
    if ident == _clock_loop._thread_id:
        return _clock_source
    try:
        loop = _running_loop()
    except RuntimeError:  # not asyncio: trio, or no event loop (RuntimeError)
        return _trio_run_here(_trio or _import_trio()).source
    last_loop, source = _last_source
    if last_loop is loop:  # uvloop, after its first call
        return source
    if _remember_loop(loop):
        return _clock_source
    source = (0.0, loop.time)
    if _CACHES:
        _last_source = (loop, source)
    return source


# The last loop that clock_source() found uncacheable (uvloop), and its
# source, as one tuple.
_last_source: tuple[object, ClockSource] = (None, (0.0, monotonic))


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
# DETACHED TASKS: a task that no task group owns, for work whose life is
# bound to several callers at once (a Coalesce's shared call). Public API
# only: asyncio's loop.create_task, trio's spawn_system_task.
# ============================================================================

# Strong references to the detached asyncio tasks (the loop keeps weak ones).
_detached: set[Task[None]] = set()


class Detached(Protocol):
    """A task started by :func:`spawn_detached`."""

    def cancel(self) -> object:
        """Cancel the task at its current ``await`` (it must have started)."""
        ...


def spawn_detached(
    function: Callable[[], Coroutine[Any, Any, None]], *, name: str
) -> Detached:
    """Run ``function()`` in a new task that no task group owns, from now on.

    The task runs in a copy of the current context. anyio has no such task:
    the caller owns its life instead. *function* must return normally or
    raise only the backend's cancellation (a trio system task that raises
    anything else crashes the run), and the code that spawned it must
    cancel it (:meth:`Detached.cancel`, once *function* has started: on
    asyncio a task cancelled before its first step never runs) and wait for
    its end before the last of its users leaves, so that nothing is left
    running. On asyncio it is ``loop.create_task`` and ``Task.cancel()``;
    on trio a system task (:func:`trio.lowlevel.spawn_system_task`) inside
    a :class:`trio.CancelScope` of its own, with ``KeyboardInterrupt``
    protection off as in any user task. Both are cancelled when the run
    ends. (An anyio cancel scope entered in a task that anyio did not start
    costs about as much as the task itself on asyncio: hence this.)

    Raises:
        RuntimeError: Outside a running asyncio loop or trio run.
    """
    loop = get_running_loop()
    if loop is not None:
        task = loop.create_task(function(), name=name, context=copy_context())
        _detached.add(task)
        task.add_done_callback(_detached.discard)
        return task
    trio = _trio or _import_trio()
    lowlevel = trio.lowlevel
    handle = _TrioDetached()
    lowlevel.spawn_system_task(
        lowlevel.disable_ki_protection(_run_detached),
        trio,
        function,
        handle,
        name=name,
        context=copy_context(),
    )
    return handle


class _TrioDetached:
    __slots__ = ("cancelled", "scope")

    def __init__(self) -> None:
        self.scope: Any = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


async def _run_detached(
    trio: Any, function: Callable[[], Coroutine[Any, Any, None]], handle: _TrioDetached
) -> None:
    with trio.CancelScope() as scope:
        handle.scope = scope
        if handle.cancelled:
            scope.cancel()
        await function()
