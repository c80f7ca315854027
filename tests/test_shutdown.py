"""Tests of the Supervisor: telling tasks, the grace period, cancelling, reports."""

from __future__ import annotations

import os
import signal

import anyio
import pytest

import layers
from layers.testing import capture_events

pytestmark = pytest.mark.anyio


def now() -> float:
    """The event loop's (virtual) clock."""
    return anyio.current_time()


async def polite(supervisor: layers.Supervisor, cleanup: float) -> None:
    """Work until shutdown begins, then spend *cleanup* seconds finishing."""
    await supervisor.wait_shutdown()
    await anyio.sleep(cleanup)


async def stubborn() -> None:
    """Ignore shutdown: run until cancelled."""
    await anyio.sleep_forever()


async def test_tasks_that_end_on_their_own() -> None:
    """Without shutdown the block ends with the last task; all finished, clean."""
    async with layers.Supervisor(signals=()) as supervisor:
        supervisor.start_soon(anyio.sleep, 1, name="one")
        supervisor.start_soon(anyio.sleep, 2, name="two")
    assert now() == pytest.approx(2, abs=1e-6)
    report = supervisor.report
    assert report.finished == ("one", "two")
    assert report.reason is None
    assert report.clean
    assert report.exit_code == 0
    assert not supervisor.shutting_down.is_set()


async def test_shutdown_tells_tasks_and_waits_for_them() -> None:
    """shutdown() sets the event; tasks finishing within the grace are 'finished'."""
    async with layers.Supervisor(grace=10, signals=()) as supervisor:
        supervisor.start_soon(polite, supervisor, 1, name="fast")
        supervisor.start_soon(polite, supervisor, 3, name="slow")
        await anyio.sleep(5)
        supervisor.shutdown()
        assert supervisor.is_shutting_down
    assert now() == pytest.approx(8, abs=1e-6)
    report = supervisor.report
    assert report.finished == ("fast", "slow")
    assert report.reason == "requested"
    assert report.shutdown_started == pytest.approx(5, abs=1e-6)
    assert report.shutdown_took == pytest.approx(3, abs=1e-6)
    assert report.clean


async def test_stuck_task_is_cancelled_at_the_end_of_the_grace() -> None:
    """A task that ignores shutdown is cancelled at grace; the report names it."""
    log: list[str] = []

    async def stuck() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            log.append("finally ran")

    async with layers.Supervisor(grace=4, signals=()) as supervisor:
        supervisor.start_soon(stuck, name="stuck")
        supervisor.start_soon(polite, supervisor, 1, name="polite")
        await anyio.sleep(1)
        supervisor.shutdown("deploy")
    assert now() == pytest.approx(5, abs=1e-6)
    report = supervisor.report
    assert report.cancelled == ("stuck",)
    assert report.finished == ("polite",)
    assert not report.clean
    assert report.exit_code == 1
    assert report.shutdown_took == pytest.approx(4, abs=1e-6)
    assert log == ["finally ran"]
    assert report.summary() == (
        "shutdown: deploy in 4.000 s\n  stuck: cancelled\n  polite: finished"
    )


async def _cleanup_fails() -> None:
    """Wait until cancelled, then fail while unwinding."""
    try:
        await anyio.sleep_forever()
    finally:
        raise RuntimeError("cleanup failed")


async def parent_of_a_failing_child() -> None:
    """A task whose child raises while the task's cancellation unwinds it."""
    async with anyio.create_task_group() as group:
        group.start_soon(_cleanup_fails)
        await anyio.sleep_forever()


def only_runtime_errors(error: BaseException | None) -> bool:
    """Whether *error* is an ExceptionGroup whose every leaf is a RuntimeError."""
    if not isinstance(error, ExceptionGroup):
        return False
    matched, rest = error.split(RuntimeError)
    return matched is not None and rest is None


async def test_child_failing_while_the_grace_cancellation_unwinds() -> None:
    """A child fails as the grace ends: 'failed' with its group, nothing escapes."""
    async with layers.Supervisor(grace=2, signals=()) as supervisor:
        supervisor.start_soon(parent_of_a_failing_child, name="parent")
        supervisor.start_soon(polite, supervisor, 1, name="polite")
        await anyio.sleep(1)
        supervisor.shutdown()
    assert now() == pytest.approx(3, abs=1e-6)
    report = supervisor.report
    assert report.failed == ("parent",)
    assert report.finished == ("polite",)
    assert only_runtime_errors(report.errors["parent"])
    assert "parent: failed (ExceptionGroup)" in report.summary()
    assert report.shutdown_took == pytest.approx(2, abs=1e-6)


async def test_task_failing_while_the_grace_cancellation_unwinds() -> None:
    """A task whose own cleanup raises when cancelled is 'failed' with that error."""
    async with layers.Supervisor(grace=2, signals=()) as supervisor:
        supervisor.start_soon(_cleanup_fails, name="task")
        supervisor.shutdown()
    report = supervisor.report
    assert report.failed == ("task",)
    assert isinstance(report.errors["task"], RuntimeError)


async def test_child_failing_at_cancel_and_at_a_body_error() -> None:
    """A body error propagates alone (no group); the task's failure is in the report."""
    with pytest.raises(KeyError):  # noqa: PT012
        async with layers.Supervisor(grace=10, signals=()) as supervisor:
            supervisor.start_soon(parent_of_a_failing_child, name="parent")
            await anyio.sleep(1)
            raise KeyError("body")
    assert only_runtime_errors(supervisor.report.errors["parent"])
    assert supervisor.report.forced


async def test_child_failing_at_an_outside_cancellation() -> None:
    """Outside cancellation as a child fails: it propagates (no group); failed."""
    with anyio.move_on_after(3) as scope:
        async with layers.Supervisor(grace=10, signals=()) as supervisor:
            supervisor.start_soon(parent_of_a_failing_child, name="parent")
    assert scope.cancelled_caught
    assert now() == pytest.approx(3, abs=1e-6)
    assert supervisor.report.failed == ("parent",)
    assert only_runtime_errors(supervisor.report.errors["parent"])


class Stop(BaseException):
    """A BaseException that is not a cancellation (as SystemExit is)."""


async def test_group_with_a_failure_and_a_base_exception() -> None:
    """A BaseException beside an error: the error is reported, the other propagates."""

    async def interrupted() -> None:
        raise BaseExceptionGroup("both", [ValueError("x"), Stop()])

    with pytest.raises(BaseExceptionGroup) as caught:
        async with layers.Supervisor(grace=10, signals=()) as supervisor:
            supervisor.start_soon(interrupted, name="task")
    assert caught.group_contains(Stop)
    assert not caught.group_contains(ValueError)
    report = supervisor.report
    assert report.failed == ("task",)
    error = report.errors["task"]
    assert isinstance(error, ExceptionGroup)
    assert isinstance(error.exceptions[0], ValueError)


async def test_zero_grace_cancels_at_once() -> None:
    """grace=0: the tasks still running are cancelled the moment shutdown begins."""
    async with layers.Supervisor(grace=0, signals=()) as supervisor:
        supervisor.start_soon(polite, supervisor, 1, name="polite")
        await anyio.sleep(1)
        supervisor.shutdown()
    assert now() == pytest.approx(1, abs=1e-6)
    assert supervisor.report.cancelled == ("polite",)


async def test_failing_task_begins_shutdown_and_is_reported() -> None:
    """A task that raises is 'failed' with its error; the others are told to stop."""
    error = ConnectionError("db gone")

    async def broken() -> None:
        await anyio.sleep(2)
        raise error

    async with layers.Supervisor(grace=10, signals=()) as supervisor:
        supervisor.start_soon(broken, name="db")
        supervisor.start_soon(polite, supervisor, 1, name="web")
    assert now() == pytest.approx(3, abs=1e-6)
    report = supervisor.report
    assert report.reason == "task 'db' failed"
    assert report.failed == ("db",)
    assert report.errors == {"db": error}
    assert report.finished == ("web",)
    assert report.exit_code == 1
    # Types only, never messages, in the summary.
    assert "db: failed (ConnectionError)" in report.summary()
    assert "db gone" not in report.summary()


async def test_on_failure_continue_keeps_the_others_running() -> None:
    """on_failure='continue': a failure is recorded and the others run on."""

    async def broken() -> None:
        raise ValueError("bad")

    async with layers.Supervisor(signals=(), on_failure="continue") as supervisor:
        supervisor.start_soon(broken, name="broken")
        supervisor.start_soon(anyio.sleep, 5, name="worker")
    assert now() == pytest.approx(5, abs=1e-6)
    assert supervisor.report.reason is None
    assert supervisor.report.failed == ("broken",)
    assert supervisor.report.finished == ("worker",)


async def test_cancel_during_the_grace_cancels_at_once() -> None:
    """cancel() (what a second signal does) ends the grace period at once."""
    async with layers.Supervisor(grace=100, signals=()) as supervisor:
        supervisor.start_soon(stubborn, name="stuck")
        await anyio.sleep(1)
        supervisor.shutdown()
        await anyio.sleep(2)
        supervisor.cancel()
    assert now() == pytest.approx(3, abs=1e-6)
    assert supervisor.report.cancelled == ("stuck",)
    assert supervisor.report.forced
    assert supervisor.report.summary().startswith("shutdown: requested (forced)")


async def test_signal_begins_shutdown_and_a_second_one_forces_it() -> None:
    """A first signal begins shutdown, a second one cancels at once."""
    sent: list[float] = []

    async def send_signals() -> None:
        await anyio.sleep(1)
        os.kill(os.getpid(), signal.SIGUSR1)
        await anyio.sleep(1)
        sent.append(now())
        os.kill(os.getpid(), signal.SIGUSR1)

    async with layers.Supervisor(grace=100, signals=[signal.SIGUSR1]) as supervisor:
        supervisor.start_soon(stubborn, name="stuck")
        supervisor.start_soon(send_signals, name="sender")
    report = supervisor.report
    assert report.reason == "signal SIGUSR1"
    assert report.signal is signal.SIGUSR1
    assert report.forced
    assert report.cancelled == ("stuck",)
    assert report.finished == ("sender",)
    assert now() < 50  # not the grace period
    assert now() == pytest.approx(sent[0])  # at the second signal


async def test_wait_for_signal_returns_the_signal() -> None:
    """wait_for_signal returns the signal the process received."""

    async def send() -> None:
        await anyio.sleep(1)
        os.kill(os.getpid(), signal.SIGUSR2)

    async with anyio.create_task_group() as group:
        group.start_soon(send)
        received = await layers.wait_for_signal(signal.SIGUSR1, signal.SIGUSR2)
    assert received is signal.SIGUSR2


async def test_drains_start_when_shutdown_begins() -> None:
    """A Drain given to the supervisor refuses new calls once shutdown begins."""
    drain = layers.Drain()

    async def handler(request: str) -> str:
        await anyio.sleep(2)
        return request

    svc = drain.layer(handler)
    results: list[str] = []

    async def serve(supervisor: layers.Supervisor) -> None:
        results.append(await svc("in flight"))
        await supervisor.wait_shutdown()
        assert await drain.wait_idle()

    async with layers.Supervisor(grace=10, signals=(), drains=[drain]) as supervisor:
        supervisor.start_soon(serve, supervisor, name="server")
        await anyio.sleep(1)
        assert not drain.draining
        supervisor.shutdown()
        assert drain.draining
        with pytest.raises(layers.ShuttingDown):
            await svc("late")
    assert results == ["in flight"]
    assert supervisor.report.clean


async def test_cancel_on_shutdown_scope() -> None:
    """cancel_on_shutdown() stops the waiting part; the cleanup part still runs."""
    steps: list[str] = []

    async def consumer(supervisor: layers.Supervisor) -> None:
        with supervisor.cancel_on_shutdown() as scope:
            await anyio.sleep_forever()
        assert scope.cancelled_caught
        steps.append(f"stopped waiting at {now():g}")
        await anyio.sleep(1)
        steps.append(f"cleaned up at {now():g}")
        with supervisor.cancel_on_shutdown() as late:
            await anyio.sleep_forever()  # cancelled at once: shutdown has begun
        assert late.cancelled_caught

    async with layers.Supervisor(grace=5, signals=()) as supervisor:
        supervisor.start_soon(consumer, supervisor, name="consumer")
        await anyio.sleep(2)
        supervisor.shutdown()
    assert steps == ["stopped waiting at 2", "cleaned up at 3"]
    assert supervisor.report.finished == ("consumer",)


async def test_body_error_cancels_tasks_and_propagates() -> None:
    """An exception in the async-with body cancels the tasks and propagates."""
    with pytest.raises(KeyError):  # noqa: PT012
        async with layers.Supervisor(grace=10, signals=()) as supervisor:
            supervisor.start_soon(stubborn, name="stuck")
            await anyio.sleep(1)
            raise KeyError("body")
    assert now() == pytest.approx(1, abs=1e-6)
    assert supervisor.report.cancelled == ("stuck",)
    assert supervisor.report.reason == "error in the supervisor's body"


async def test_outside_cancellation_cancels_tasks_and_propagates() -> None:
    """Cancelled from outside while it waits: the tasks are cancelled, nothing leaks."""
    log: list[str] = []

    async def task() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            log.append("task cleaned up")

    with anyio.move_on_after(3) as scope:
        async with layers.Supervisor(grace=10, signals=()) as supervisor:
            supervisor.start_soon(task, name="task")
    assert scope.cancelled_caught
    assert now() == pytest.approx(3, abs=1e-6)
    assert log == ["task cleaned up"]
    assert supervisor.report.cancelled == ("task",)


async def test_outside_cancellation_during_the_grace() -> None:
    """Cancelled from outside during the grace period: everything unwinds."""
    with anyio.move_on_after(3) as scope:
        async with layers.Supervisor(grace=10, signals=()) as supervisor:
            supervisor.start_soon(stubborn, name="stuck")
            supervisor.shutdown()
    assert scope.cancelled_caught
    assert now() == pytest.approx(3, abs=1e-6)
    assert supervisor.report.cancelled == ("stuck",)


async def test_start_soon_is_refused_outside_or_after_shutdown() -> None:
    """start_soon before entering, or after shutdown began, raises RuntimeError."""
    supervisor = layers.Supervisor(signals=())
    with pytest.raises(RuntimeError, match="enter the supervisor first"):
        supervisor.start_soon(anyio.sleep, 1)
    with pytest.raises(RuntimeError, match="enter the supervisor first"):
        supervisor.shutting_down  # noqa: B018
    async with supervisor:
        supervisor.shutdown()
        with pytest.raises(RuntimeError, match="is shutting down"):
            supervisor.start_soon(anyio.sleep, 1)
    with pytest.raises(RuntimeError, match="entered only once"):
        async with supervisor:
            pass


async def test_default_task_name_and_report_snapshot() -> None:
    """Unnamed tasks take their function's name; report works during the run."""
    async with layers.Supervisor(signals=()) as supervisor:
        supervisor.start_soon(stubborn)
        await anyio.sleep(1)
        snapshot = supervisor.report
        supervisor.shutdown()
    assert snapshot.tasks[0].name == "stubborn"
    assert snapshot.tasks[0].status == "running"
    assert snapshot.tasks[0].started == 0
    assert supervisor.report.tasks[0].ended == pytest.approx(11, abs=1e-6)


async def test_events_started_and_completed() -> None:
    """Shutdown emits ShutdownStarted then ShutdownCompleted with the counts."""
    with capture_events(
        layers.events.ShutdownStarted, layers.events.ShutdownCompleted
    ) as seen:
        async with layers.Supervisor(grace=1, signals=(), name="app") as supervisor:
            supervisor.start_soon(stubborn, name="a")
            supervisor.start_soon(polite, supervisor, 0.5, name="b")
            supervisor.shutdown("test")
    assert seen == [
        layers.events.ShutdownStarted(layer="app", reason="test", running=2, grace=1.0),
        layers.events.ShutdownCompleted(
            layer="app", finished=1, failed=0, cancelled=1, forced=False
        ),
    ]


async def test_many_tasks() -> None:
    """50 tasks, cleanups around the grace: those inside finish, others cancelled."""
    async with layers.Supervisor(grace=5, signals=()) as supervisor:
        for i in range(50):
            supervisor.start_soon(polite, supervisor, 0.1 + i * 0.2, name=f"t{i}")
        supervisor.shutdown()
    report = supervisor.report
    assert len(report.finished) == 25  # cleanups 0.1 .. 4.9 s fit the 5 s grace
    assert len(report.cancelled) == 25
    assert now() == pytest.approx(5, abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grace": -1}, r"Supervisor\(grace=-1\): grace must be a finite number"),
        ({"grace": float("inf")}, r"grace must be a finite number of seconds >= 0"),
        ({"grace": "10"}, r"grace must be"),
        ({"signals": "SIGTERM"}, r"Supervisor\(signals='SIGTERM'\): signals must"),
        ({"signals": [99999]}, r"signals must be a sequence of signal numbers"),
        ({"drains": [object()]}, r"drains must be layers\.Drain objects"),
        ({"on_failure": "explode"}, r"on_failure must be 'shutdown' or 'continue'"),
        ({"name": ""}, r"Supervisor\(name=''\): name must be a non-empty string"),
    ],
)
def test_bad_configuration(kwargs: dict[str, object], message: str) -> None:
    """Invalid options raise ConfigurationError naming the parameter and value."""
    with pytest.raises(layers.ConfigurationError, match=message):
        layers.Supervisor(**kwargs)  # type: ignore[arg-type]


async def test_wait_for_signal_refuses_non_signals() -> None:
    """wait_for_signal('x') raises ConfigurationError."""
    with pytest.raises(layers.ConfigurationError, match=r"wait_for_signal\(signals="):
        await layers.wait_for_signal("x")  # type: ignore[arg-type]
