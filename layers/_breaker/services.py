"""The breaker's service functions: the general path and the fast closures."""

# The modules of layers._breaker share its private names.
# pyright: reportPrivateUsage=false, reportUnusedFunction=false

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, final

from .._backend import base_time as _now
from .._backend import clock_source
from .._core import Service
from .._failures import split_failure
from .codes import (
    _CLOSED,
    _DISABLED,
    _FAILED,
    _FORCED_OPEN,
    _HALF_OPEN,
    _KIND_FAILURE,
    _KIND_IGNORED,
    _KIND_SUCCESS,
    _METRICS_ONLY,
    _PRESENT,
    _SLOW,
    _SUCCESS,
)
from .core import _Core
from .windows import _CountWindow, _TimeWindow, _Trial, _Window

Req = TypeVar("Req")
Res = TypeVar("Res")


# ---------------------------------------------------------------- the services


class _Ticket(Protocol):
    """What an admitted call (or block) holds until its outcome is recorded.

    Made by :func:`_admit` (and ``fleet._admit_fleet``): the window, trial,
    batch or probe the call was admitted under, and its start time.
    """

    def failed(self, raised: BaseException, /) -> None:
        """The call raised *raised* (a cancellation included)."""
        ...

    def answered(
        self, response: object, check: Callable[[Any], bool] | None, /
    ) -> None:
        """The call returned *response*; *check* is ``on_result`` (or None)."""
        ...


def _admit(core: _Core) -> _Ticket | None:
    """Admit a call (or a block) that is not a plain closed-state call, or raise.

    ``None``: let it through unrecorded (disabled). Raises
    :class:`~layers.CircuitOpen` when open, forced open, or half-open with
    every probe slot taken.
    """
    state = core.state
    if state is _DISABLED:
        return None
    if state is _CLOSED or state is _METRICS_ONLY:
        # the start only matters with a slow-call threshold (else slow_after is inf)
        start = _now() if core.slow_after < math.inf else 0.0
        return _WindowTicket(core, core.window, start)
    if state is _FORCED_OPEN:
        raise core.reject(None)
    now = _now()
    core.catch_up(now)
    if core.state is _HALF_OPEN:
        trial = core.trial
        assert trial is not None
        if trial.taken < core.probes:
            trial.taken += 1  # the slot is held until the outcome or cancellation
            return _TrialTicket(core, trial, now)
    raise core.reject(now)


async def _run(
    ticket: _Ticket | None,
    inner: Service[Req, Res],
    request: Req,
    check: Callable[[Any], bool] | None,
) -> Res:
    """Call *inner* under *ticket* and record its outcome."""
    if ticket is None:
        return await inner(request)
    try:
        response = await inner(request)
    except BaseException as error:
        ticket.failed(error)
        raise
    ticket.answered(response, check)
    return response


async def _call_other(core: _Core, inner: Service[Req, Res], request: Req) -> Res:
    """Every call that is not a plain closed-state call.

    Written for clarity rather than speed: the fast paths below handle the
    closed state's calls. The block form (``CircuitBreaker.guard``) takes
    the same steps: :func:`_admit`, then the ticket's outcome.
    """
    return await _run(_admit(core), inner, request, core.breaker.on_result)


@final
class _WindowTicket:
    """A closed (or metrics-only) call: its outcome goes to *window*."""

    __slots__ = ("core", "start", "window")

    def __init__(self, core: _Core, window: _Window, start: float) -> None:
        self.core = core
        self.window = window
        self.start = start

    def failed(self, raised: BaseException, /) -> None:
        core = self.core
        timed = core.slow_after < math.inf
        _record_error(core, self.window, raised, self.start if timed else None)

    def answered(
        self, response: object, check: Callable[[Any], bool] | None, /
    ) -> None:
        core = self.core
        window = self.window
        end = _now()
        code = _SUCCESS
        failed = check is not None and check(response)
        if failed:
            code |= _FAILED
        if end >= self.start + core.slow_after:
            code |= _SLOW
        core.record(window, code, end)
        if failed and window is core.window:
            core.hinted(response, None)


@final
class _TrialTicket:
    """A half-open trial call: it holds one slot until it is counted or freed."""

    __slots__ = ("core", "start", "trial")

    def __init__(self, core: _Core, trial: _Trial, start: float) -> None:
        self.core = core
        self.trial = trial
        self.start = start

    def failed(self, raised: BaseException, /) -> None:
        core = self.core
        error = split_failure(raised)[0]
        kind = _KIND_IGNORED if error is None else core.kind_of(error)
        code = 0  # not counted (cancelled, ignored): frees the slot
        if kind == _KIND_FAILURE:
            code = _FAILED | _PRESENT
        elif kind == _KIND_SUCCESS:
            code = _SUCCESS
        current = self.trial is core.trial
        self._record(code)
        if code & _FAILED and current:
            core.hinted(error, raised)

    def answered(
        self, response: object, check: Callable[[Any], bool] | None, /
    ) -> None:
        core = self.core
        try:
            failed = check is not None and check(response)
        except BaseException:
            self._record(0)  # a predicate that raises: the slot is freed, uncounted
            raise
        current = self.trial is core.trial
        self._record(_SUCCESS | _FAILED if failed else _SUCCESS)
        if failed and current:
            core.hinted(response, None)

    def _record(self, code: int) -> None:
        core = self.core
        end = _now()
        if code and end >= self.start + core.slow_after:
            code |= _SLOW
        core.record_probe(self.trial, code, end)


def _record_error(
    core: _Core, window: _Window, raised: BaseException, start: float | None
) -> None:
    """Record what a closed-state call admitted under *window* raised.

    *start* is the call's start time when slow calls are tracked, else None.
    A cancellation is not an outcome; the errors in a group that also holds
    one (a child task that failed while the call was cancelled, on trio)
    are, as they are on asyncio, where the group holds only the errors.
    """
    error = split_failure(raised)[0]
    if error is None or window is not core.window:
        return  # a cancellation; or admitted before a half-open period or a reset
    kind = core.kind_of(error)
    if kind == _KIND_IGNORED:
        return
    code = _FAILED | _PRESENT if kind == _KIND_FAILURE else _SUCCESS
    now = _now()  # the time of a trip, if this outcome trips the breaker
    if start is not None and now >= start + core.slow_after:
        code |= _SLOW
    core.record(window, code, now)
    if kind == _KIND_FAILURE:
        core.hinted(error, raised)


# The services are closures rather than objects with __call__: a closure's
# variables are cheaper to reach than an object's attributes, and the success
# path is counted in nanoseconds (see benchmarks/README.md). ``core.fast`` is
# the window while the breaker is closed, else None: one load decides. Each
# window kind has two closures, chosen in CircuitBreaker.layer(): without a
# on_result predicate, and with one (*check*), which records a
# response it calls a failure as the general path does. Every time is the
# base time (layers._backend.base_time), which keeps its meaning across runs.


def _record_failed_response(
    core: _Core, window: _Window, response: object, now: float, slow: bool
) -> None:
    """Record a response that ``on_result`` calls a failure."""
    core.record(window, _FAILED | _PRESENT | _SLOW if slow else _FAILED | _PRESENT, now)
    if window is core.window:
        core.hinted(response, None)


def _count_service(
    core: _Core, inner: Service[Req, Res], check: Callable[[Any], bool] | None
) -> Service[Req, Res]:
    """A count window, no slow-call threshold: no clock on the success path."""

    async def circuit_breaker(request: Req, /) -> Res:
        window: _CountWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, None)
            raise
        i = window.pos
        if window.ring[i] == _SUCCESS and not window.streak:
            # a success replaces a success: only the position moves
            i += 1
            window.pos = 0 if i == window.size else i
        else:
            core.record(window, _SUCCESS, _now())
        return response

    if check is None:
        return circuit_breaker

    async def checked_circuit_breaker(request: Req, /) -> Res:
        window: _CountWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, None)
            raise
        if check(response):
            _record_failed_response(core, window, response, _now(), False)
            return response
        i = window.pos
        if window.ring[i] == _SUCCESS and not window.streak:
            i += 1
            window.pos = 0 if i == window.size else i
        else:
            core.record(window, _SUCCESS, _now())
        return response

    return checked_circuit_breaker


def _time_service(
    core: _Core, inner: Service[Req, Res], check: Callable[[Any], bool] | None
) -> Service[Req, Res]:
    """A time window, no slow-call threshold: one clock read per call.

    A success read at ``now < window.clean_until`` adds one to
    ``window.cur_calls`` (it can change no verdict); otherwise it is
    recorded in full.
    """
    clock = _now

    async def circuit_breaker(request: Req, /) -> Res:
        window: _TimeWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, None)
            raise
        now = clock()
        if now < window.clean_until:
            window.cur_calls += 1
        else:
            core.record(window, _SUCCESS, now)
        return response

    if check is None:
        return circuit_breaker

    async def checked_circuit_breaker(request: Req, /) -> Res:
        window: _TimeWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, None)
            raise
        now = clock()
        if check(response):
            _record_failed_response(core, window, response, now, False)
        elif now < window.clean_until:
            window.cur_calls += 1
        else:
            core.record(window, _SUCCESS, now)
        return response

    return checked_circuit_breaker


def _slow_time_service(
    core: _Core, inner: Service[Req, Res], check: Callable[[Any], bool] | None
) -> Service[Req, Res]:
    """A time window and a slow-call threshold: two clock reads per call.

    As :func:`_time_service`, and a call that took ``slow_after`` or more
    (``end >= start + slow_after``) is recorded as slow. The clock source
    is found once per call: a coroutine never changes event loop.
    """
    slow_after = core.slow_after

    async def circuit_breaker(request: Req, /) -> Res:
        window: _TimeWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        read = clock_source()[1]
        start = read()
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, start)
            raise
        end = read()
        if end >= start + slow_after:
            core.record(window, _SUCCESS | _SLOW, end)
        elif end < window.clean_until:
            window.cur_calls += 1
        else:
            core.record(window, _SUCCESS, end)
        return response

    if check is None:
        return circuit_breaker

    async def checked_circuit_breaker(request: Req, /) -> Res:
        window: _TimeWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        read = clock_source()[1]
        start = read()
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, start)
            raise
        end = read()
        slow = end >= start + slow_after
        if check(response):
            _record_failed_response(core, window, response, end, slow)
        elif slow:
            core.record(window, _SUCCESS | _SLOW, end)
        elif end < window.clean_until:
            window.cur_calls += 1
        else:
            core.record(window, _SUCCESS, end)
        return response

    return checked_circuit_breaker


def _slow_count_service(
    core: _Core, inner: Service[Req, Res], check: Callable[[Any], bool] | None
) -> Service[Req, Res]:
    """A count window and a slow-call threshold: two clock reads per call.

    A slow call is recorded as slow. A success that replaces a success
    outside a failure run only moves the ring's position.
    """
    slow_after = core.slow_after

    async def circuit_breaker(request: Req, /) -> Res:
        window: _CountWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        read = clock_source()[1]
        start = read()
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, start)
            raise
        end = read()
        if end >= start + slow_after:
            core.record(window, _SUCCESS | _SLOW, end)
            return response
        i = window.pos
        if window.ring[i] == _SUCCESS and not window.streak:
            i += 1
            window.pos = 0 if i == window.size else i
        else:
            core.record(window, _SUCCESS, end)
        return response

    if check is None:
        return circuit_breaker

    async def checked_circuit_breaker(request: Req, /) -> Res:
        window: _CountWindow | None = core.fast  # type: ignore[assignment]
        if window is None:
            return await _call_other(core, inner, request)
        read = clock_source()[1]
        start = read()
        try:
            response = await inner(request)
        except BaseException as error:
            _record_error(core, window, error, start)
            raise
        end = read()
        slow = end >= start + slow_after
        if check(response):
            _record_failed_response(core, window, response, end, slow)
            return response
        if slow:
            core.record(window, _SUCCESS | _SLOW, end)
            return response
        i = window.pos
        if window.ring[i] == _SUCCESS and not window.streak:
            i += 1
            window.pos = 0 if i == window.size else i
        else:
            core.record(window, _SUCCESS, end)
        return response

    return checked_circuit_breaker
