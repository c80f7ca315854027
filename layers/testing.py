"""Tools for testing your own services and layers.

* :class:`MockService`: a service that records every request and is answered
  either from a script (values, errors, delays) or by the test itself, one
  request at a time, as with tower-test's mock and handle.
* :func:`capture_events`: collect the events that layers emit.
* :func:`flaky` and :func:`slow`: a service that fails, or is slow, for a
  seeded share of its calls (the fault injection layers,
  :class:`~layers.InjectError` and :class:`~layers.InjectLatency`).
* :func:`set_retry_testing` and :func:`retry_testing`: no backoff waits and
  a cap on attempts for every :class:`~layers.Retry`, in your own tests.
* :func:`virtual_time_backend` and :func:`run`: run async tests on asyncio and
  trio on *virtual time*, so a test of a 30 s timeout takes no real time.
  Virtual time needs the ``testing`` extra (``pip install
  'service-layers[testing]'``: trio and looptime).

Running your tests on both backends and virtual time, with pytest and anyio's
plugin, takes one fixture in your ``conftest.py``::

    import pytest
    from layers.testing import virtual_time_backend


    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(request):
        return virtual_time_backend(request.param)

and ``-p no:looptime_plugin`` in pytest's ``addopts`` (looptime's own pytest
plugin clashes with anyio's). Mark tests with ``@pytest.mark.anyio``. Time
starts at 0 in each test and jumps to the next deadline whenever every task
waits, so ``await anyio.sleep(3600)`` returns at once with
``anyio.current_time() == 3600``. Tests that wait on real I/O (a socket, a
subprocess, a thread) must use the real clock instead: the virtual clock
would jump past their timeouts while they wait.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from contextlib import contextmanager
from typing import Any, Generic, Literal, final

import anyio
import attrs

from ._chaos import InjectError, InjectLatency
from ._config import check_int
from ._core import Service
from ._errors import ConfigurationError
from ._public import publish as _publish
from ._retry import TESTING as _RETRY_TESTING
from .events import Event, add_sink

# Type parameter defaults (PEP 696) are in typing from Python 3.13 on.
if sys.version_info >= (3, 13):
    from typing import TypeVar
else:
    from typing_extensions import TypeVar

__all__ = [
    "MockService",
    "MockStatistics",
    "PendingCall",
    "capture_events",
    "flaky",
    "retry_testing",
    "run",
    "set_retry_testing",
    "slow",
    "virtual_time_backend",
]

Req = TypeVar("Req")
Res = TypeVar("Res")
T = TypeVar("T")
# capture_events() with no class captures every Event.
E = TypeVar("E", bound=Event, default=Event)

Backend = Literal["asyncio", "trio"]


def virtual_time_backend(backend: Backend | str) -> tuple[str, dict[str, Any]]:
    """Return ``(backend, backend_options)`` for a fresh virtual clock.

    For anyio's pytest fixture ``anyio_backend`` (see the module docs) or
    for :func:`anyio.run`. Each call makes a new clock starting at 0:

    * ``"trio"``: :class:`trio.testing.MockClock` with ``autojump_threshold=0``;
    * ``"asyncio"``: an event loop from :func:`looptime.new_event_loop`.

    Raises:
        layers.ConfigurationError: For another backend name.
        ModuleNotFoundError: If trio or looptime is not installed.
    """
    if backend == "trio":
        import trio.testing

        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    if backend == "asyncio":
        import looptime

        def loop_factory() -> Any:
            return looptime.new_event_loop(start=0.0)

        return ("asyncio", {"loop_factory": loop_factory})
    raise ConfigurationError(
        f"virtual_time_backend(backend={backend!r}): backend must be 'asyncio' "
        "or 'trio'"
    )


def run(
    function: Callable[..., Awaitable[T]], *args: object, backend: Backend | str
) -> T:
    """Run ``function(*args)`` on *backend* on virtual time, and return its result.

    For tests that cannot use anyio's pytest plugin, such as hypothesis
    tests, which call the test body many times.
    """
    name, options = virtual_time_backend(backend)
    return anyio.run(function, *args, backend=name, backend_options=options)


@contextmanager
def capture_events(*types: type[E]) -> Generator[list[E]]:
    """Collect the events emitted inside the ``with`` block.

    Args:
        *types: Keep only events of these types (all events if none given).

    Yields:
        The list that receives the events, in order. Type checkers know its
        type without an annotation: ``list[Event]`` with no class given,
        ``list[SomeEvent]`` for ``capture_events(SomeEvent)``.

    Example:
        >>> import anyio, layers
        >>> from layers.testing import capture_events
        >>> async def slow(request):
        ...     await anyio.sleep(1)
        >>> svc = layers.Timeout(0.01, name="db").layer(slow)
        >>> with capture_events() as events:
        ...     try:
        ...         anyio.run(svc, None)
        ...     except layers.Elapsed:
        ...         pass
        >>> events
        [TimeoutElapsed(layer='db', timeout=0.01)]
    """
    captured: list[E] = []

    def sink(event: Event) -> None:
        if not types or isinstance(event, types):
            captured.append(event)  # type: ignore[arg-type]

    remove = add_sink(sink)
    try:
        yield captured
    finally:
        remove()


def flaky(
    service: Service[Req, Res],
    error: type[Exception] | Callable[[], Exception] = ConnectionError,
    *,
    rate: float = 0.5,
    seed: int = 0,
) -> Service[Req, Res]:
    """*service*, failing with *error* for a share *rate* of its calls.

    An :class:`~layers.InjectError` with a fixed *seed* (default 0), so the
    same calls fail on every run: a test of how a stack copes with a flaky
    downstream is repeatable. For a switch you can turn off, make the
    layer yourself.

    Example:
        >>> import anyio
        >>> from layers.testing import MockService, flaky
        >>> service = flaky(MockService[int, str]().respond_always("ok"), rate=0.5)
        >>> async def main() -> list[str]:
        ...     answers = []
        ...     for i in range(6):
        ...         try:
        ...             answers.append(await service(i))
        ...         except ConnectionError:
        ...             answers.append("failed")
        ...     return answers
        >>> anyio.run(main)
        ['ok', 'ok', 'failed', 'failed', 'ok', 'failed']

    Raises:
        layers.ConfigurationError: For a bad *error*, *rate* or *seed*.
    """
    return InjectError(error, rate=rate, seed=seed, name="flaky").layer(service)


def slow(
    service: Service[Req, Res], delay: float, *, rate: float = 1.0, seed: int = 0
) -> Service[Req, Res]:
    """*service*, *delay* seconds slower for a share *rate* of its calls.

    An :class:`~layers.InjectLatency` with a fixed *seed*; on virtual time
    the delay takes no real time.

    Raises:
        layers.ConfigurationError: For a bad *delay*, *rate* or *seed*.
    """
    return InjectLatency(delay, rate=rate, seed=seed, name="slow").layer(service)


def set_retry_testing(enabled: bool, *, max_attempts: int = 1) -> None:
    """Turn retry testing mode on or off, for the whole process.

    In your own test suite, retries with real backoff make tests slow and
    hide failures. With testing mode on, every :class:`~layers.Retry`
    waits 0 s between attempts (it still lets other tasks run) and makes
    at most *max_attempts* attempts (fewer if its own ``max_attempts`` is
    lower).
    The default, ``max_attempts=1``, turns retrying off: the first error is
    raised, with a note saying the limit was reached. Everything else
    (classification, deadlines, budgets, events) works as usual. The
    success path of a call does not look at the mode, so it costs nothing
    when off. As stamina's ``set_testing``; see also :func:`retry_testing`.

    Args:
        enabled: ``True`` to turn the mode on, ``False`` to turn it off.
        max_attempts: The most attempts per call while the mode is on, an
            integer >= 1.

    Raises:
        layers.ConfigurationError: If *max_attempts* is not an integer >= 1.
    """
    check_int("set_retry_testing", "max_attempts", max_attempts, 1, "an integer >= 1")
    _RETRY_TESTING.attempts = max_attempts if enabled else None


@contextmanager
def retry_testing(*, max_attempts: int = 1) -> Generator[None]:
    """Retry testing mode inside a ``with`` block (see :func:`set_retry_testing`).

    The mode in force before the block is restored after it.

    Example:
        >>> import anyio, layers
        >>> from layers.testing import MockService, retry_testing
        >>> mock = MockService[str, str]().fail(ConnectionError).respond("ok")
        >>> svc = layers.Retry(on=ConnectionError, max_attempts=5).layer(mock)
        >>> with retry_testing(max_attempts=2):
        ...     anyio.run(svc, "x")
        'ok'
    """
    previous = _RETRY_TESTING.attempts
    set_retry_testing(True, max_attempts=max_attempts)
    try:
        yield
    finally:
        _RETRY_TESTING.attempts = previous


@final
@attrs.frozen
class MockStatistics:
    """A snapshot of a :class:`MockService`'s counters."""

    calls: int
    """Calls received."""
    in_flight: int
    """Calls that have started and not yet ended."""
    completed: int
    """Calls that returned a response."""
    failed: int
    """Calls that raised an exception (scripted or answered)."""
    cancelled: int
    """Calls cancelled while they waited (for a delay or an answer)."""


@attrs.frozen
class _Answer(Generic[Res]):
    value: Res | None = None
    error: BaseException | type[BaseException] | None = None
    delay: float = 0.0


class PendingCall(Generic[Req, Res]):
    """A call to a :class:`MockService` that waits for the test to answer it."""

    request: Req
    """The request of this call."""

    def __init__(self, request: Req) -> None:
        self.request = request
        self._event = anyio.Event()
        self._answer: _Answer[Res] | None = None
        self._cancelled = False

    @property
    def answered(self) -> bool:
        """Whether :meth:`respond` or :meth:`fail` was called."""
        return self._answer is not None

    @property
    def cancelled(self) -> bool:
        """Whether the caller was cancelled while waiting for the answer."""
        return self._cancelled

    def respond(self, value: Res) -> None:
        """Make the call return *value*."""
        self._settle(_Answer(value=value))

    def fail(self, error: BaseException | type[BaseException]) -> None:
        """Make the call raise *error* (an exception or exception class)."""
        self._settle(_Answer(error=error))

    def _settle(self, answer: _Answer[Res]) -> None:
        if self._answer is not None:
            raise RuntimeError(
                f"the call with request {self.request!r} was answered already"
            )
        self._answer = answer
        self._event.set()

    def __repr__(self) -> str:
        state = (
            "cancelled"
            if self._cancelled
            else "answered"
            if self.answered
            else "waiting"
        )
        return f"<PendingCall {self.request!r} {state}>"


class MockService(Generic[Req, Res]):
    """A service for tests: it records requests and answers as told.

    Every call appends its request to :attr:`requests`. It is then answered:

    1. from the script, first in first out: :meth:`respond` and :meth:`fail`
       queue answers, each with an optional delay (virtual time in tests);
    2. when the script is empty, with the default answer, if
       :meth:`respond_always` set one;
    3. otherwise the call waits until the test takes it with
       :meth:`next_call` and answers it (:meth:`PendingCall.respond`,
       :meth:`PendingCall.fail`), as with tower-test's handle, so a test of
       a layer controls exactly when each inner call finishes.

    Example:
        >>> import anyio
        >>> from layers.testing import MockService
        >>> mock = MockService[str, str]().respond("a").fail(ValueError("boom"))
        >>> async def main():
        ...     first = await mock("x")
        ...     try:
        ...         await mock("y")
        ...     except ValueError as error:
        ...         return first, str(error), mock.requests
        >>> anyio.run(main)
        ('a', 'boom', ['x', 'y'])
    """

    requests: list[Req]
    """Every request received, in order."""

    def __init__(self) -> None:
        self.requests = []
        self._script: deque[_Answer[Res]] = deque()
        self._default: _Answer[Res] | None = None
        self._unanswered: deque[PendingCall[Req, Res]] = deque()
        self._arrival: anyio.Event | None = None
        self._in_flight = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0

    def respond(self, value: Res, *, delay: float = 0.0) -> MockService[Req, Res]:
        """Queue an answer: the next unscripted call returns *value* after *delay* s."""
        self._script.append(_Answer(value=value, delay=_delay("respond", delay)))
        return self

    def fail(
        self, error: BaseException | type[BaseException], *, delay: float = 0.0
    ) -> MockService[Req, Res]:
        """Queue a failure: the next call raises *error* after *delay* s.

        Pass an exception class to raise a fresh instance each time (a
        raised instance keeps its traceback, which grows if it is reused).
        """
        self._script.append(_Answer(error=error, delay=_delay("fail", delay)))
        return self

    def respond_always(
        self, value: Res, *, delay: float = 0.0
    ) -> MockService[Req, Res]:
        """Answer every call with *value* (after *delay*) once the script is empty."""
        self._default = _Answer(value=value, delay=_delay("respond_always", delay))
        return self

    @property
    def calls(self) -> int:
        """The number of calls received."""
        return len(self.requests)

    def statistics(self) -> MockStatistics:
        """Return a snapshot of the counters."""
        return MockStatistics(
            calls=len(self.requests),
            in_flight=self._in_flight,
            completed=self._completed,
            failed=self._failed,
            cancelled=self._cancelled,
        )

    async def next_call(self) -> PendingCall[Req, Res]:
        """Wait for the next call that has no scripted answer, and return it."""
        while not self._unanswered:
            if self._arrival is None:
                self._arrival = anyio.Event()
            await self._arrival.wait()
        return self._unanswered.popleft()

    async def __call__(self, request: Req, /) -> Res:
        """Record *request*, then answer it (see the class docs)."""
        self.requests.append(request)
        self._in_flight += 1
        try:
            answer = self._script.popleft() if self._script else self._default
            if answer is None:
                pending = PendingCall[Req, Res](request)
                self._unanswered.append(pending)
                if self._arrival is not None:
                    self._arrival.set()
                    self._arrival = None
                try:
                    await pending._event.wait()  # pyright: ignore[reportPrivateUsage]
                except anyio.get_cancelled_exc_class():
                    pending._cancelled = True  # pyright: ignore[reportPrivateUsage]
                    raise
                answer = pending._answer  # pyright: ignore[reportPrivateUsage]
                assert answer is not None
            elif answer.delay:
                await anyio.sleep(answer.delay)
            if answer.error is not None:
                raise answer.error
            self._completed += 1
            return answer.value  # type: ignore[return-value]
        except anyio.get_cancelled_exc_class():
            self._cancelled += 1
            raise
        except BaseException:
            self._failed += 1
            raise
        finally:
            self._in_flight -= 1

    def __repr__(self) -> str:
        return f"<MockService calls={self.calls} in_flight={self._in_flight}>"


def _delay(method: str, delay: object) -> float:
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
        raise ConfigurationError(
            f"MockService.{method}(delay={delay!r}): delay must be a number of "
            f"seconds >= 0, got {delay!r}"
        )
    return float(delay)


_publish(__name__, __all__)
