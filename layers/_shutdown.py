"""Graceful shutdown: wait for signals, supervise long-running tasks.

:func:`wait_for_signal` waits for SIGINT or SIGTERM on either backend.
:class:`Supervisor` runs a program's long-running tasks, tells them when
shutdown begins, gives them a grace period, cancels what is left and
reports what happened to each (:class:`ShutdownReport`).
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, ClassVar, Literal, Self, TypeVarTuple, Unpack, cast, final

import anyio
import anyio.abc
import attrs

from . import events
from ._config import check_name, check_number
from ._drain import Drain
from ._errors import ConfigurationError
from ._failures import is_cancellation, reraise, split_failure
from .events import Event, Level

__all__ = [
    "ShutdownCompleted",
    "ShutdownReport",
    "ShutdownStarted",
    "Supervisor",
    "TaskOutcome",
    "wait_for_signal",
]

Ts = TypeVarTuple("Ts")

TaskStatus = Literal["running", "finished", "failed", "cancelled"]

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


def _check_signals(owner: str, signals: object) -> tuple[signal.Signals, ...]:
    checked: list[signal.Signals] = []
    valid = isinstance(signals, list | tuple | set | frozenset)
    if valid:
        for each in cast("Iterable[object]", signals):
            if isinstance(each, bool) or not isinstance(each, int):
                valid = False
                break
            try:
                checked.append(signal.Signals(each))
            except ValueError:
                valid = False
                break
    if not valid:
        raise ConfigurationError(
            f"{owner}(signals={signals!r}): signals must be a sequence of signal "
            f"numbers (signal.SIGINT, signal.SIGTERM...), got {signals!r}"
        )
    return tuple(checked)


async def wait_for_signal(
    *signals: signal.Signals | int,
) -> signal.Signals:
    """Wait until the process receives one of *signals*; return it.

    Works on asyncio and trio (through :func:`anyio.open_signal_receiver`),
    in the main thread only. While it waits, the signals are handled by it:
    a Ctrl-C does not raise :class:`KeyboardInterrupt`. The previous
    handlers come back when it returns.

    Args:
        *signals: The signals to wait for; SIGINT and SIGTERM if none given.

    Returns:
        The signal received, as a :class:`signal.Signals`.

    Raises:
        layers.ConfigurationError: If a value is not a signal number.
    """
    wanted = _check_signals("wait_for_signal", signals) or DEFAULT_SIGNALS
    with anyio.open_signal_receiver(*wanted) as received:
        async for signum in received:
            return signal.Signals(signum)
    raise AssertionError(
        "unreachable: the signal receiver never ends"
    )  # pragma: no cover


@final
@attrs.frozen(kw_only=True)
class TaskOutcome:
    """What happened to one task of a :class:`Supervisor`.

    Attributes:
        name: The task's name (given to ``start_soon``, or its function's).
        status: ``"finished"`` (returned), ``"failed"`` (raised an
            exception, in :attr:`error`), ``"cancelled"`` (still running when
            the grace period ended, or at a second signal, or cancelled from
            outside) or ``"running"`` (in a report taken while it runs).
        error: The exception a failed task raised, else ``None``. A task
            whose child tasks failed while it was being cancelled raised
            their errors and the cancellation together: *error* is the
            :class:`ExceptionGroup` of the errors, without the cancellation.
        started: When it started, on the event loop's clock.
        ended: When it ended, or ``None`` while it runs.
    """

    name: str
    status: TaskStatus
    error: Exception | None = None
    started: float
    ended: float | None = None


@final
@attrs.frozen(kw_only=True)
class ShutdownReport:
    """What a :class:`Supervisor` saw, from the start to the last task's end.

    Attributes:
        tasks: One outcome per task, in the order they were started.
        reason: Why shutdown began: ``"signal SIGTERM"``, ``"requested"``
            (:meth:`Supervisor.shutdown`), ``"task 'x' failed"``,
            ``"error in the supervisor's body"``; or ``None`` when every task
            ended on its own before any shutdown.
        signal: The signal that began shutdown, if one did.
        forced: Whether the grace period was cut short (a second signal,
            :meth:`Supervisor.cancel`, an exception in the body of the
            ``async with`` block).
        grace: The grace period in seconds.
        shutdown_started: When shutdown began (event loop's clock), or
            ``None``.
        shutdown_took: Seconds from the start of shutdown to the end of the
            last task, or ``None``.
    """

    tasks: tuple[TaskOutcome, ...]
    reason: str | None
    signal: signal.Signals | None
    forced: bool
    grace: float
    shutdown_started: float | None
    shutdown_took: float | None

    def _named(self, status: TaskStatus) -> tuple[str, ...]:
        return tuple(task.name for task in self.tasks if task.status == status)

    @property
    def finished(self) -> tuple[str, ...]:
        """The names of the tasks that returned."""
        return self._named("finished")

    @property
    def failed(self) -> tuple[str, ...]:
        """The names of the tasks that raised an exception."""
        return self._named("failed")

    @property
    def cancelled(self) -> tuple[str, ...]:
        """The names of the tasks that were cancelled."""
        return self._named("cancelled")

    @property
    def errors(self) -> dict[str, Exception]:
        """The exception of each failed task, by name."""
        return {task.name: task.error for task in self.tasks if task.error is not None}

    @property
    def clean(self) -> bool:
        """Whether every task finished (none failed, none was cancelled)."""
        return all(task.status == "finished" for task in self.tasks)

    @property
    def exit_code(self) -> int:
        """``0`` if :attr:`clean`, else ``1``: for ``sys.exit``."""
        return 0 if self.clean else 1

    def summary(self) -> str:
        """A few lines for a log or a terminal: the reason, then each task.

        Failed tasks show their exception's type, not its message (a
        message can hold a payload); :attr:`errors` has the exceptions.
        """
        took = "" if self.shutdown_took is None else f" in {self.shutdown_took:.3f} s"
        forced = " (forced)" if self.forced else ""
        lines = [f"shutdown: {self.reason or 'no shutdown'}{forced}{took}"]
        for task in self.tasks:
            detail = ""
            if task.error is not None:
                detail = f" ({type(task.error).__qualname__})"
            lines.append(f"  {task.name}: {task.status}{detail}")
        return "\n".join(lines)


@attrs.frozen(kw_only=True)
class ShutdownStarted(Event):
    """A :class:`~layers.Supervisor` began shutting down.

    Attributes:
        reason: Why (see :attr:`~layers.ShutdownReport.reason`).
        running: Tasks still running at that moment.
        grace: The grace period in seconds.
    """

    event: ClassVar[str] = "shutdown_started"
    kind: ClassVar[str] = "supervisor"
    level: ClassVar[Level] = "warning"

    reason: str
    running: int
    grace: float


@attrs.frozen(kw_only=True)
class ShutdownCompleted(Event):
    """The last task of a :class:`~layers.Supervisor` ended.

    Attributes:
        finished: How many tasks returned.
        failed: How many raised.
        cancelled: How many were cancelled (the grace period ran out, or
            shutdown was forced).
        forced: Whether the grace period was cut short.
    """

    event: ClassVar[str] = "shutdown_completed"
    kind: ClassVar[str] = "supervisor"
    level: ClassVar[Level] = "info"

    finished: int
    failed: int
    cancelled: int
    forced: bool


@final
class _Task:
    __slots__ = ("ended", "error", "name", "scope", "started", "status")

    def __init__(self, name: str, started: float) -> None:
        self.name = name
        self.started = started
        self.ended: float | None = None
        self.status: TaskStatus = "running"
        self.error: Exception | None = None
        self.scope = anyio.CancelScope()

    def outcome(self) -> TaskOutcome:
        return TaskOutcome(
            name=self.name,
            status=self.status,
            error=self.error,
            started=self.started,
            ended=self.ended,
        )


@final
class Supervisor:
    """Run a program's long-running tasks; stop them gracefully.

    An async context manager. Tasks started with :meth:`start_soon` run
    until they return, or until shutdown: a signal (SIGINT or SIGTERM by
    default), a call to :meth:`shutdown`, or a task that fails. When
    shutdown begins:

    1. the tasks are told: :attr:`shutting_down` (an :class:`anyio.Event`)
       is set, :meth:`wait_shutdown` returns, and the cancel scopes of
       :meth:`cancel_on_shutdown` are cancelled (for the parts of a task
       that should simply stop, such as an accept loop); the
       :class:`~layers.Drain` layers given in *drains* start draining;
    2. the supervisor waits up to *grace* seconds for every task to end;
    3. it cancels the tasks still running and waits for them to unwind.

    A second signal during the grace period (or :meth:`cancel`) skips the
    rest of it: the tasks are cancelled at once. The ``async with`` block
    ends when every task has ended; :attr:`report` then says which tasks
    finished, failed (with their exceptions) or were cancelled.

    A failing task never takes the others down abruptly: its exception is
    kept in the report (also one raised while the task was being cancelled,
    on asyncio and trio alike) and, with ``on_failure="shutdown"`` (the default),
    graceful shutdown begins. An exception raised by the body of the
    ``async with`` block cancels the tasks at once and propagates.
    Cancellation from outside cancels the tasks and propagates.

    Signals are handled while the supervisor runs (so Ctrl-C does not raise
    :class:`KeyboardInterrupt` in the middle of the tasks), on asyncio and
    trio, in the main thread only; pass ``signals=()`` elsewhere. A task
    that does not return when cancelled (a blocking call, a shielded scope)
    holds the supervisor up: nothing can end it from the outside.

    Args:
        grace: The longest wait for the tasks after shutdown begins, in
            seconds, a finite number >= 0 (default 10).
        signals: The signals that begin shutdown (default SIGINT and
            SIGTERM); ``()`` for none.
        drains: :class:`~layers.Drain` layers to start when shutdown begins.
        on_failure: ``"shutdown"`` (the default): a task that raises begins
            graceful shutdown; ``"continue"``: the others run on.
        name: A name for events (default ``"supervisor"``).

    Raises:
        layers.ConfigurationError: For an invalid value, naming it.

    Example::

        async def main() -> int:
            drain = layers.Drain()
            async with layers.Supervisor(grace=10, drains=[drain]) as supervisor:
                supervisor.start_soon(consume, supervisor, name="consumer")
            print(supervisor.report.summary())
            return supervisor.report.exit_code
    """

    def __init__(
        self,
        *,
        grace: float = 10.0,
        signals: Sequence[signal.Signals | int] = DEFAULT_SIGNALS,
        drains: Sequence[Drain] = (),
        on_failure: Literal["shutdown", "continue"] = "shutdown",
        name: str = "supervisor",
    ) -> None:
        check_number(
            "Supervisor",
            "grace",
            grace,
            "a finite number of seconds >= 0",
            lambda v: v >= 0,
        )
        self._signals = _check_signals("Supervisor", signals)
        drains = tuple(drains)
        for drain in drains:
            if not isinstance(drain, Drain):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise ConfigurationError(
                    f"Supervisor(drains={drains!r}): drains must be layers.Drain "
                    f"objects, got {type(drain).__name__}"
                )
        if on_failure not in ("shutdown", "continue"):
            raise ConfigurationError(
                f"Supervisor(on_failure={on_failure!r}): on_failure must be "
                f"'shutdown' or 'continue', got {on_failure!r}"
            )
        check_name("Supervisor", "name", name)
        self.grace = float(grace)
        self.drains = drains
        self.on_failure = on_failure
        self.name = name
        self._tasks: list[_Task] = []
        self._running = 0
        self._group: anyio.abc.TaskGroup | None = None
        self._shutting_down: anyio.Event | None = None
        self._changed: anyio.Event | None = None
        self._watchers: set[anyio.CancelScope] = set()
        self._body_done = False
        self._reason: str | None = None
        self._signal: signal.Signals | None = None
        self._forced = False
        self._shutdown_started: float | None = None
        self._shutdown_took: float | None = None
        self._report: ShutdownReport | None = None
        self._entered = False

    def __repr__(self) -> str:
        return (
            f"<Supervisor {self.name!r} grace={self.grace:g} "
            f"running={self._running} reason={self._reason!r}>"
        )

    # -- what tasks watch ---------------------------------------------------------

    @property
    def shutting_down(self) -> anyio.Event:
        """Set when shutdown begins. Only inside ``async with``."""
        if self._shutting_down is None:
            raise RuntimeError("Supervisor.shutting_down: enter the supervisor first")
        return self._shutting_down

    @property
    def is_shutting_down(self) -> bool:
        """Whether shutdown has begun."""
        return self._reason is not None

    async def wait_shutdown(self) -> None:
        """Return when shutdown begins.

        Pass it as a server's shutdown trigger: ``hypercorn``'s ``serve(app,
        config, shutdown_trigger=supervisor.wait_shutdown)`` on either
        backend.
        """
        await self.shutting_down.wait()

    @contextmanager
    def cancel_on_shutdown(self) -> Generator[anyio.CancelScope]:
        """A cancel scope that the start of shutdown cancels.

        For the part of a task that should stop as soon as shutdown begins
        (waiting for the next job, an accept loop) while the rest of the
        task (finishing the current job) runs on within the grace period.
        Entered after shutdown began, the scope is cancelled at once.
        """
        scope = anyio.CancelScope()
        if self.is_shutting_down:
            scope.cancel()
        self._watchers.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._watchers.discard(scope)

    # -- control ------------------------------------------------------------------

    def start_soon(
        self,
        function: Callable[[Unpack[Ts]], Awaitable[Any]],
        *args: *Ts,
        name: str | None = None,
    ) -> None:
        """Start ``function(*args)`` as a supervised task.

        Args:
            function: An async function.
            *args: Its positional arguments.
            name: The task's name in the report (default: the function's
                qualified name).

        Raises:
            RuntimeError: Outside ``async with``, or once shutdown has begun.
        """
        group = self._group
        if group is None or self._report is not None:
            raise RuntimeError("Supervisor.start_soon: enter the supervisor first")
        if self.is_shutting_down:
            raise RuntimeError(
                f"Supervisor.start_soon: {self.name!r} is shutting down "
                f"({self._reason}); no new task is started"
            )
        task_name = name or str(getattr(function, "__qualname__", repr(function)))
        task = _Task(task_name, anyio.current_time())
        self._tasks.append(task)
        self._running += 1
        group.start_soon(self._run, task, function, args, name=task_name)

    def shutdown(self, reason: str = "requested") -> None:
        """Begin graceful shutdown (does nothing if it has begun).

        Args:
            reason: Why, for the report and the event.
        """
        self._begin(reason, None)

    def cancel(self) -> None:
        """Cancel every task now, beginning shutdown first if needed."""
        self._begin("cancelled", None)
        if self._running:
            self._forced = True
        for task in self._tasks:
            task.scope.cancel()
        self._notify()

    @property
    def report(self) -> ShutdownReport:
        """What happened (final after ``async with``; a snapshot before)."""
        if self._report is not None:
            return self._report
        return self._make_report()

    # -- the context manager --------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a Supervisor can be entered only once")
        self._entered = True
        self._shutting_down = anyio.Event()
        self._changed = anyio.Event()
        group = anyio.create_task_group()
        await group.__aenter__()
        try:
            if self._signals:
                await group.start(self._watch_signals)
            group.start_soon(self._manage)
        except BaseException as error:
            group.cancel_scope.cancel()
            await group.__aexit__(type(error), error, error.__traceback__)
            raise
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        group = self._group
        assert group is not None
        self._body_done = True
        body_failed = exc is not None and not isinstance(
            exc, anyio.get_cancelled_exc_class()
        )
        if body_failed:
            self._begin("error in the supervisor's body", None)
            self.cancel()
        self._notify()
        try:
            if body_failed:
                # The tasks never raise (their errors go to the report), so
                # the body's exception propagates as it is, not in a group.
                await group.__aexit__(None, None, None)
                return None
            return await group.__aexit__(exc_type, exc, traceback)
        finally:
            self._report = self._make_report()
            if events.STATE.sinks and self._tasks:
                report = self._report
                events.emit(
                    ShutdownCompleted(
                        layer=self.name,
                        finished=len(report.finished),
                        failed=len(report.failed),
                        cancelled=len(report.cancelled),
                        forced=report.forced,
                    )
                )

    # -- inside -------------------------------------------------------------------

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = anyio.Event()
            changed.set()

    def _begin(self, reason: str, signum: signal.Signals | None) -> None:
        if self._reason is not None:
            return
        if self._shutting_down is None:
            raise RuntimeError(f"Supervisor: enter {self.name!r} first")
        self._reason = reason
        self._signal = signum
        self._shutdown_started = anyio.current_time()
        if events.STATE.sinks:
            events.emit(
                ShutdownStarted(
                    layer=self.name,
                    reason=reason,
                    running=self._running,
                    grace=self.grace,
                )
            )
        for drain in self.drains:
            drain.start()
        for scope in self._watchers:
            scope.cancel()
        self._shutting_down.set()
        self._notify()

    async def _run(
        self,
        task: _Task,
        function: Callable[[Unpack[Ts]], Awaitable[Any]],
        args: tuple[*Ts],
    ) -> None:
        try:
            with task.scope:
                try:
                    await function(*args)
                except BaseException as raised:
                    # A task whose child fails while the task is cancelled
                    # raises both at once, in a group: the error goes to the
                    # report, the cancellation on to the scope it belongs to.
                    failure, rest = split_failure(raised)
                    if failure is not None:
                        task.status = "failed"
                        task.error = failure
                    elif is_cancellation(rest):
                        task.status = "cancelled"
                    if rest is not None:
                        reraise(rest)
                else:
                    # A task that swallowed its cancellation still was cancelled.
                    task.status = (
                        "cancelled" if task.scope.cancel_called else "finished"
                    )
        finally:
            task.ended = anyio.current_time()
            self._running -= 1
            if task.status == "running":  # a BaseException such as KeyboardInterrupt
                task.status = "failed"
            elif task.status == "failed" and self.on_failure == "shutdown":
                self._begin(f"task {task.name!r} failed", None)
            self._notify()

    async def _manage(self) -> None:
        # Phase 1: until every task has ended (and the body too), or shutdown.
        while not (self._body_done and not self._running) and not self._reason:
            await self._wait_change()
        if self._reason is not None:
            # Phase 2: the grace period.
            assert self._shutdown_started is not None
            with anyio.move_on_after(
                self._shutdown_started + self.grace - anyio.current_time()
            ):
                while self._running and not self._forced:
                    await self._wait_change()
            # Phase 3: cancel what is left, then wait for it to unwind.
            for task in self._tasks:
                if task.status == "running":
                    task.scope.cancel()
            while self._running or not self._body_done:
                await self._wait_change()
            self._shutdown_took = anyio.current_time() - self._shutdown_started
        self._stop_watching_signals()

    async def _wait_change(self) -> None:
        assert self._changed is not None
        await self._changed.wait()

    _signal_scope: anyio.CancelScope | None = None

    def _stop_watching_signals(self) -> None:
        if self._signal_scope is not None:
            self._signal_scope.cancel()

    async def _watch_signals(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with (
            anyio.CancelScope() as self._signal_scope,
            anyio.open_signal_receiver(*self._signals) as received,
        ):
            task_status.started()
            async for signum in received:
                if self._reason is None:
                    received_signal = signal.Signals(signum)
                    self._begin(f"signal {received_signal.name}", received_signal)
                else:
                    self.cancel()

    def _make_report(self) -> ShutdownReport:
        return ShutdownReport(
            tasks=tuple(task.outcome() for task in self._tasks),
            reason=self._reason,
            signal=self._signal,
            forced=self._forced,
            grace=self.grace,
            shutdown_started=self._shutdown_started,
            shutdown_took=self._shutdown_took,
        )
