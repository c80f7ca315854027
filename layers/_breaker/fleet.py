"""A breaker shared by a fleet: this process's view, its batches, its background work.

A breaker given a :class:`~layers.BreakerStore` keeps a *view* of the
fleet's state (state, generation, open until) in its ``_Core``, and decides
each call from it without any I/O while closed or open:

* **Closed** (or metrics-only): a call goes through and its outcome is
  counted into the pending batch of the view's generation (a success adds
  one to a counter, as cheap as the in-memory breaker's success path). A
  background task sends the batch every bucket of a time window (every
  ``store.sync_interval`` for a count window), and at once after a failure
  or slow call when a trip may be near: when the fleet's window as last
  seen plus the unsent outcomes reach **half** of a trip threshold (the
  failure or slow-call rate, counted over at least ``min_calls``, or the
  failures in a row). The store merges it and trips the fleet if a rule
  holds.
* **Open**: calls are rejected locally until the view's open period ends
  (on this process's clock, from the duration the store reported).
* **Half-open** (or open and due): a call asks the store for a probe (one
  round trip; one at a time per process, the other calls are rejected
  meanwhile). A granted probe runs; its outcome is sent by the background
  task (a cancelled or ignored probe gives its slot back). A process that
  got no probe rejects calls until a notice says a slot is free, or
  ``sync_interval`` has passed.
* **Manual states** apply here at once and are sent to the store at once
  (in the background): they hold for the whole fleet. While one is being
  sent, a closed breaker's calls are not counted.

The view follows the store's notices (every change of the fleet's state is
published), a re-read every ``sync_interval`` without other contact (the
backstop for a lost notice) and a re-read when the subscription starts
again. A view of an older generation is ignored; one of another epoch (the
stored state was lost and made again) is adopted.

The background work (two tasks: a sender and a listener) is hosted by the
store (:meth:`~layers.BreakerStore.start_soon`) and started by the first
call (or a manual call in an event loop). The first call *joins* the fleet
(reads the state, or sends a manual state set before, and adopts it; the
calls that come meanwhile wait for it, then are decided as calls arriving
then: in half-open, one that runs after the first call's probe reply may
take a spare probe); the sender joins too if no call has. When the host
ends, the next call starts it again and joins again.

**When the store fails** (:class:`~layers.StoreError` from any step), the
breaker falls back to its own local logic (the in-memory breaker's, from
the state it was in), emits :class:`~layers.events.StoreFailed`, and
counts the calls it decides in ``statistics().store_fallbacks``. The
sender tries to read the state every ``sync_interval``; when the store
answers, the breaker adopts the fleet's state (its local outcomes
meanwhile are not sent) and emits :class:`~layers.events.StoreRecovered`.
"""

# The modules of layers._breaker share its private names.
# pyright: reportPrivateUsage=false, reportUnusedFunction=false

from __future__ import annotations

import math
import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, final

import anyio

from .. import events
from .._backend import base_time as _now
from .._backend import clock_source
from .._core import Service
from .._errors import StoreError
from .._failures import split_failure
from .._store import StoreHealth
from .codes import (
    _CLOSED,
    _DISABLED,
    _FALLBACK,
    _FORCED_OPEN,
    _HALF_OPEN,
    _JOINED,
    _KIND_FAILURE,
    _KIND_IGNORED,
    _KIND_SUCCESS,
    _METRICS_ONLY,
    _OPEN,
    _UNJOINED,
)
from .events import CircuitThresholdExceeded
from .records import BreakerBatch, BreakerRules, BreakerView
from .server import ProbeOutcome
from .services import _admit, _run, _Ticket
from .statistics import CircuitState

if TYPE_CHECKING:
    from .core import _Core
    from .store import BreakerStore

Req = TypeVar("Req")
Res = TypeVar("Res")


@final
class _Opening:
    """An opening for a fleet, not yet sent: until when (this process's clock), why."""

    __slots__ = ("reason", "until")

    def __init__(self, until: float, reason: str) -> None:
        self.until = until
        self.reason = reason


class _Batch:
    """The outcomes not yet sent, of calls admitted under one generation."""

    __slots__ = ("calls", "failures", "generation", "head", "run", "slow", "tail")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.calls = 0  # outcomes: successes and failures
        self.failures = 0
        self.slow = 0
        self.head = -1  # failures before the first success; -1: no success yet
        self.tail = 0  # failures since the last success
        self.run = 0  # the longest run of failures

    def snapshot(self) -> BreakerBatch:
        """The batch to send; the counters start again from zero."""
        calls = self.calls
        failures = self.failures
        # no success: all the failures lead; else those before the first one
        head = failures if failures >= calls else max(self.head, 0)
        batch = BreakerBatch(
            generation=self.generation,
            calls=calls,
            failures=failures,
            slow=self.slow,
            leading_failures=head,
            trailing_failures=self.tail,
            longest_run=self.run,
        )
        self.calls = self.failures = self.slow = self.tail = self.run = 0
        self.head = -1
        return batch


def _end_run(batch: _Batch) -> None:
    """A success after failures: the run of failures ends."""
    if batch.head < 0:
        batch.head = batch.tail
    batch.tail = 0


class _Fleet:
    """One process's membership of a shared breaker (see the module docs)."""

    __slots__ = (
        "core",
        "epoch",
        "fast",
        "generation",
        "health",
        "hosted",
        "joining",
        "last_contact",
        "last_error",
        "last_report",
        "manual_pending",
        "mode",
        "probe_count",
        "probe_reports",
        "probe_retry_at",
        "probing",
        "report_interval",
        "rules",
        "store",
        "sync_interval",
        "token",
        "urgent",
        "view",
        "wake",
    )

    def __init__(self, core: _Core, store: BreakerStore, rules: BreakerRules) -> None:
        self.core = core
        self.store = store
        self.rules = rules
        self.health = StoreHealth(core.name, store.name, "local")
        self.sync_interval = store.sync_interval
        self.report_interval = (
            rules.window_size / rules.window_buckets
            if rules.window_type == "time"
            else self.sync_interval
        )
        self.mode = _UNJOINED
        self.hosted = False
        self.joining: anyio.Event | None = None
        self.epoch: str = ""
        self.generation: int = -1
        self.view: BreakerView | None = None
        # The pending batch while joined and closed or metrics-only, else
        # None: the success path's one test.
        self.fast: _Batch | None = None
        # A manual state, or an opening (open_for, a failure's retry_after),
        # set here and not yet sent to the store.
        self.manual_pending: CircuitState | _Opening | None = None
        self.probe_reports: deque[tuple[str, ProbeOutcome, bool]] = deque()
        self.probing = False  # a take_probe of this process is in flight
        self.probe_retry_at = -math.inf
        self.urgent = False
        self.wake: anyio.Event | None = None
        self.last_report = -math.inf
        self.last_contact = -math.inf
        self.last_error: StoreError | None = None
        self.token = secrets.token_hex(6)
        self.probe_count = 0

    # -- the view -----------------------------------------------------------------

    def adopt(self, view: BreakerView, now: float, *, force: bool = False) -> None:
        """Make *view* this process's view, unless it is older (or not wanted).

        Without *force*, a view is ignored while not joined or while a
        manual state is being sent, and if it is of an older generation.
        """
        if not force:
            if self.mode != _JOINED or self.manual_pending is not None:
                return
            if view.epoch == self.epoch and view.generation < self.generation:
                return
        self.view = view
        core = self.core
        if (
            not force
            and view.epoch == self.epoch
            and view.generation == self.generation
        ):
            if view.open_for is not None:
                core.open_until = now + view.open_for
            elif view.state is _HALF_OPEN:
                self.probe_retry_at = -math.inf  # a slot may be free
            return
        self.epoch = view.epoch
        self.generation = view.generation
        open_until = -math.inf if view.open_for is None else now + view.open_for
        core.adopt(view, open_until, now)
        state = view.state
        self.fast = (
            _Batch(view.generation)
            if state is _CLOSED or state is _METRICS_ONLY
            else None
        )
        self.probe_retry_at = -math.inf

    def contact(self) -> None:
        self.last_contact = _now()

    def fail(self, error: StoreError) -> None:
        """The store failed: fall back to the local breaker (once per outage)."""
        self.last_error = error
        self.contact()  # try again in sync_interval
        if self.mode == _FALLBACK:
            return
        self.mode = _FALLBACK
        self.fast = None
        self.health.began(error)
        self.core.fall_back(_now())

    def wake_up(self) -> None:
        wake = self.wake
        if wake is not None:
            wake.set()

    # -- outcomes -----------------------------------------------------------------

    def add(self, batch: _Batch, failed: bool, slow: bool) -> None:
        """Count an outcome (any but a fast-path success) into *batch*."""
        if failed:
            if batch.head < 0 and batch.calls > batch.failures:
                batch.head = 0  # a success came first
            batch.failures += 1
            tail = batch.tail = batch.tail + 1
            if tail > batch.run:
                batch.run = tail
        elif batch.tail:
            _end_run(batch)
        batch.calls += 1
        if slow:
            batch.slow += 1
        if (failed or slow) and batch is self.fast and self.near(batch):
            self.urgent = True
            self.wake_up()

    def near(self, batch: _Batch) -> bool:
        """Whether the fleet's last known window plus *batch* is half-way to a trip."""
        rules = self.rules
        view = self.view
        calls = batch.calls
        failures = batch.failures
        slow = batch.slow
        streak = 0
        if view is not None and view.generation == batch.generation:
            calls += view.calls
            failures += view.failures
            slow += view.slow
            streak = view.consecutive_failures
        basis = max(calls, rules.min_calls)
        if 2 * failures >= rules.failure_rate_threshold * basis:
            return True
        if 2 * slow >= rules.slow_call_rate_threshold * basis:
            return True
        limit = rules.consecutive_failures
        if limit is None:
            return False
        if batch.failures >= batch.calls:
            run = streak + batch.failures
        else:
            run = max(streak + max(batch.head, 0), batch.run)
        return 2 * run >= limit

    def queue_probe(self, probe: str, outcome: ProbeOutcome, slow: bool) -> None:
        """Have the background send a probe's outcome (or give its slot back)."""
        self.probe_reports.append((probe, outcome, slow))
        self.urgent = True
        self.wake_up()

    def manual(self, state: CircuitState) -> None:
        """A manual state was set here: send it to the fleet at once."""
        self.manual_pending = state
        self.fast = None
        self.urgent = True
        self.wake_up()

    def open_for(self, seconds: float, reason: str, *, manual: bool = False) -> None:
        """Open this process's view now for *seconds*; send it to the fleet at once.

        *reason*: ``"retry_after"`` (a failure's hint, only while joined)
        or ``"open_for"`` (the manual call, *manual*: also before joining
        and in fallback, sent when the store answers). Nothing is sent if
        the view did not change (a manual state, or open for longer).
        """
        now = _now()
        if not self.core.open_for(seconds, now, reason):
            return
        if not manual and self.mode != _JOINED:
            return
        self.manual_pending = _Opening(now + seconds, reason)
        self.fast = None
        self.urgent = True
        self.wake_up()

    async def send_manual(self, manual: CircuitState | _Opening) -> BreakerView:
        """Send a pending manual state or opening to the store (StoreError)."""
        if isinstance(manual, _Opening):
            seconds = max(0.0, manual.until - _now())
            return await self.store.open_for(self.rules, seconds, manual.reason)
        return await self.store.set_state(self.rules, manual)

    def new_probe(self) -> str:
        self.probe_count += 1
        return f"{self.token}-{self.probe_count}"

    # -- joining ---------------------------------------------------------------------

    def host(self) -> None:
        """Start the background work in the store's host (RuntimeError if none)."""
        self.store.start_soon(self.run, name=f"layers breaker {self.core.name!r}")
        self.hosted = True

    def host_if_running(self) -> None:
        """In an event loop, start the background work (RuntimeError if no host).

        Outside one (a manual state set before the first call), it starts
        with the first call.
        """
        if self.hosted:
            return
        try:
            _now()
        except RuntimeError:
            return  # no event loop
        self.host()

    async def join(self) -> None:
        """Join the fleet (the first call does; the others wait for it)."""
        joining = self.joining
        if joining is not None:
            await joining.wait()
            return
        joining = self.joining = anyio.Event()
        try:
            await self.rejoin()
        finally:
            self.joining = None
            joining.set()

    async def rejoin(self) -> None:
        """Read the fleet's state (or send the pending manual state) and adopt it."""
        manual = self.manual_pending
        try:
            if manual is not None:
                view = await self.send_manual(manual)
            else:
                view = await self.store.read(self.rules)
        except StoreError as error:
            self.fail(error)
            return
        self.contact()
        self.health.answered()
        self.mode = _JOINED
        if self.manual_pending is manual:
            self.manual_pending = None
            self.adopt(view, _now(), force=True)
        self.wake_up()

    async def take_probe(self, probe: str) -> BreakerView | None:
        """Ask the store for a probe; None if the store failed (now in fallback)."""
        self.probing = True
        try:
            view = await self.store.take_probe(self.rules, probe)
        except StoreError as error:
            self.queue_probe(probe, "released", False)  # in case the step ran
            self.fail(error)
            return None
        except BaseException:
            self.queue_probe(probe, "released", False)  # cancelled: give it back
            raise
        finally:
            self.probing = False
        self.contact()
        self.adopt(view, _now())
        return view

    # -- the background work --------------------------------------------------------

    async def run(self) -> None:
        """The background work, hosted by the store until its host ends."""
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self.listen)
                await self.send_loop()
        finally:
            self.hosted = False
            self.wake = None
            if self.mode == _JOINED:
                self.mode = _UNJOINED
                self.fast = None

    def due(self, now: float) -> float:
        """Seconds until the sender has something to do."""
        mode = self.mode
        if mode == _UNJOINED:
            return 0.0  # join now
        due = self.last_contact + self.sync_interval
        if mode == _FALLBACK:
            return due - now
        if self.urgent or self.manual_pending is not None or self.probe_reports:
            return 0.0
        if self.fast is not None:
            due = min(due, self.last_report + self.report_interval)
        return due - now

    async def send_loop(self) -> None:
        self.wake = anyio.Event()
        while True:
            now = _now()
            delay = self.due(now)
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self.wake.wait()
                if self.wake.is_set():
                    self.wake = anyio.Event()
                continue
            if self.mode == _UNJOINED:
                await self.join()
                continue
            urgent = self.urgent
            self.urgent = False
            report = urgent or now >= self.last_report + self.report_interval
            read = now >= self.last_contact + self.sync_interval
            await self.sync(report=report, read=read)
            if report:
                self.last_report = now

    async def sync(self, *, report: bool, read: bool) -> None:
        """One round of background work.

        Joined: send the pending manual state and probe outcomes, the
        pending batch if *report*, and read the state if *read* and nothing
        else was sent. In fallback: try to rejoin.
        """
        mode = self.mode
        if mode == _FALLBACK:
            await self.rejoin()
            return
        if mode == _UNJOINED:
            await self.join()
            return
        try:
            sent = await self.flush(report)
        except StoreError as error:
            self.fail(error)
            return
        if read and not sent:
            await self.read()

    async def read(self) -> None:
        """Read the fleet's state and adopt it (the store failing: fall back)."""
        try:
            view = await self.store.read(self.rules)
        except StoreError as error:
            self.fail(error)
            return
        self.contact()
        self.adopt(view, _now())

    async def flush(self, report: bool) -> bool:
        """Send what is pending; whether anything was sent. Raises StoreError."""
        store = self.store
        rules = self.rules
        sent = False
        manual = self.manual_pending
        if manual is not None:
            view = await self.send_manual(manual)
            sent = True
            self.contact()
            if self.manual_pending is manual:  # not set again meanwhile
                self.manual_pending = None
                self.adopt(view, _now(), force=True)
        reports = self.probe_reports
        while reports:
            probe, outcome, slow = reports[0]
            view = await store.report_probe(rules, probe, outcome, slow)
            reports.popleft()
            sent = True
            self.contact()
            self.adopt(view, _now())
        batch = self.fast
        if report and batch is not None and batch.calls:
            view = await store.report(rules, batch.snapshot())
            sent = True
            self.contact()
            self.adopt(view, _now())
            if view.exceeded is not None and events.STATE.sinks:
                failure_rate, slow_rate = self.core.rates(
                    view.calls, view.failures, view.slow
                )
                events.emit(
                    CircuitThresholdExceeded(
                        layer=self.core.name,
                        reason=view.exceeded,
                        failure_rate=failure_rate,
                        slow_call_rate=slow_rate,
                    )
                )
        return sent

    async def listen(self) -> None:
        """Follow the store's notices; re-read the state on every (re)subscription."""
        while True:
            try:
                async with self.store.subscribe() as notices:
                    if self.mode == _JOINED:
                        await self.read()
                    async for view in notices:
                        self.adopt(view, _now())
            except StoreError:
                pass  # the sender's re-reads keep the view meanwhile
            await anyio.sleep(self.sync_interval)


# ---------------------------------------------------------------- the calls


async def _admit_fleet(fleet: _Fleet) -> _Ticket | None:
    """Admit a call (or a block) that is not a closed joined breaker's, or raise.

    May wait: to join the fleet, or for the store's answer to a probe
    request (cancelled meanwhile, it holds nothing). ``None``: let it
    through uncounted (disabled, or a manual state being sent).
    """
    core = fleet.core
    while True:
        if not fleet.hosted:
            fleet.host()
        mode = fleet.mode
        if mode == _UNJOINED:
            await fleet.join()
            continue
        if mode == _FALLBACK:
            error = fleet.last_error
            assert error is not None
            fleet.health.failed(error)
            return _admit(core)
        batch = fleet.fast
        if batch is not None:
            timed = core.slow_after < math.inf
            return _BatchTicket(fleet, batch, _now() if timed else None)
        state = core.state
        if state is _FORCED_OPEN:
            raise core.reject(None)
        if (
            state is _DISABLED
            or state is _CLOSED
            or state is _METRICS_ONLY  # a manual state being sent: not counted
        ):
            return None
        now = _now()
        if (
            (state is _OPEN and now < core.open_until)
            or fleet.probing
            or now < fleet.probe_retry_at
        ):
            raise core.reject(now)
        probe = fleet.new_probe()
        view = await fleet.take_probe(probe)
        if view is None:
            continue  # the store failed: the local breaker decides
        if view.probe:
            return _ProbeTicket(fleet, probe, _now())
        state = core.state
        now = _now()
        if state is _HALF_OPEN:
            fleet.probe_retry_at = now + fleet.sync_interval
        if state is _OPEN or state is _HALF_OPEN or state is _FORCED_OPEN:
            raise core.reject(now)
        # closed, metrics-only or disabled now: go round once more


async def _call_fleet(fleet: _Fleet, inner: Service[Req, Res], request: Req) -> Res:
    """Every call that is not a closed (or metrics-only) joined breaker's."""
    ticket = await _admit_fleet(fleet)
    return await _run(ticket, inner, request, fleet.core.breaker.on_result)


@final
class _BatchTicket:
    """A closed-state call whose outcome goes to *batch* (the general path)."""

    __slots__ = ("batch", "fleet", "start")

    def __init__(self, fleet: _Fleet, batch: _Batch, start: float | None) -> None:
        self.fleet = fleet
        self.batch = batch
        self.start = start  # None: slow calls are not timed

    def failed(self, raised: BaseException, /) -> None:
        _fleet_error(self.fleet, self.batch, raised, self.start)

    def answered(
        self, response: object, check: Callable[[Any], bool] | None, /
    ) -> None:
        fleet = self.fleet
        core = fleet.core
        batch = self.batch
        start = self.start
        failed = check is not None and check(response)
        fleet.add(
            batch, failed, start is not None and _now() >= start + core.slow_after
        )
        if failed and batch is fleet.fast:
            core.hinted(response, None)


@final
class _ProbeTicket:
    """A half-open trial call holding the fleet's probe *probe*."""

    __slots__ = ("fleet", "probe", "start")

    def __init__(self, fleet: _Fleet, probe: str, start: float) -> None:
        self.fleet = fleet
        self.probe = probe
        self.start = start

    def failed(self, raised: BaseException, /) -> None:
        core = self.fleet.core
        error = split_failure(raised)[0]
        kind = _KIND_IGNORED if error is None else core.kind_of(error)
        outcome: ProbeOutcome = "released"  # not counted: the slot is given back
        if kind == _KIND_FAILURE:
            outcome = "failure"
        elif kind == _KIND_SUCCESS:
            outcome = "success"
        self._queue(outcome)
        if outcome == "failure":
            core.hinted(error, raised)

    def answered(
        self, response: object, check: Callable[[Any], bool] | None, /
    ) -> None:
        try:
            failed = check is not None and check(response)
        except BaseException:
            self._queue("released")  # a predicate that raises: the slot is given back
            raise
        self._queue("failure" if failed else "success")
        if failed:
            self.fleet.core.hinted(response, None)

    def _queue(self, outcome: ProbeOutcome) -> None:
        fleet = self.fleet
        slow = outcome != "released" and _now() >= self.start + fleet.core.slow_after
        fleet.queue_probe(self.probe, outcome, slow)


def _fleet_error(
    fleet: _Fleet, batch: _Batch, raised: BaseException, start: float | None
) -> None:
    """Count what a closed-state call admitted under *batch* raised."""
    error = split_failure(raised)[0]
    if error is None or batch is not fleet.fast:
        return  # a cancellation; or admitted under an older generation
    core = fleet.core
    kind = core.kind_of(error)
    if kind == _KIND_IGNORED:
        return
    slow = start is not None and _now() >= start + core.slow_after
    fleet.add(batch, kind == _KIND_FAILURE, slow)
    if kind == _KIND_FAILURE:
        core.hinted(error, raised)


def _fleet_failed_response(
    fleet: _Fleet, batch: _Batch, response: object, slow: bool
) -> None:
    """Count a response that ``on_result`` calls a failure."""
    fleet.add(batch, True, slow)
    if batch is fleet.fast:
        fleet.core.hinted(response, None)


# The success path of a joined, closed breaker: one load of fleet.fast (the
# pending batch, else None), the inner call, one added to the batch's calls,
# one test of its run of failures. No clock (the store dates the batch),
# unless slow calls are timed.


def _fleet_service(
    fleet: _Fleet, inner: Service[Req, Res], check: Callable[[Any], bool] | None
) -> Service[Req, Res]:
    """A shared breaker without a slow-call threshold: no clock on the success path."""

    async def circuit_breaker(request: Req, /) -> Res:
        batch = fleet.fast
        if batch is None:
            return await _call_fleet(fleet, inner, request)
        try:
            response = await inner(request)
        except BaseException as error:
            _fleet_error(fleet, batch, error, None)
            raise
        batch.calls += 1
        if batch.tail:
            _end_run(batch)
        return response

    if check is None:
        return circuit_breaker

    async def checked_circuit_breaker(request: Req, /) -> Res:
        batch = fleet.fast
        if batch is None:
            return await _call_fleet(fleet, inner, request)
        try:
            response = await inner(request)
        except BaseException as error:
            _fleet_error(fleet, batch, error, None)
            raise
        if check(response):
            _fleet_failed_response(fleet, batch, response, False)
            return response
        batch.calls += 1
        if batch.tail:
            _end_run(batch)
        return response

    return checked_circuit_breaker


def _slow_fleet_service(
    fleet: _Fleet, inner: Service[Req, Res], check: Callable[[Any], bool] | None
) -> Service[Req, Res]:
    """A shared breaker with a slow-call threshold: two clock reads per call."""
    slow_after = fleet.core.slow_after

    async def circuit_breaker(request: Req, /) -> Res:
        batch = fleet.fast
        if batch is None:
            return await _call_fleet(fleet, inner, request)
        read = clock_source()[1]
        start = read()
        try:
            response = await inner(request)
        except BaseException as error:
            _fleet_error(fleet, batch, error, start)
            raise
        if read() >= start + slow_after:
            fleet.add(batch, False, True)
            return response
        batch.calls += 1
        if batch.tail:
            _end_run(batch)
        return response

    if check is None:
        return circuit_breaker

    async def checked_circuit_breaker(request: Req, /) -> Res:
        batch = fleet.fast
        if batch is None:
            return await _call_fleet(fleet, inner, request)
        read = clock_source()[1]
        start = read()
        try:
            response = await inner(request)
        except BaseException as error:
            _fleet_error(fleet, batch, error, start)
            raise
        slow = read() >= start + slow_after
        if check(response):
            _fleet_failed_response(fleet, batch, response, slow)
        elif slow:
            fleet.add(batch, False, True)
        else:
            batch.calls += 1
            if batch.tail:
                _end_run(batch)
        return response

    return checked_circuit_breaker
