"""Retry: call the inner service again when it fails in a way you said is retryable.

See :class:`Retry` for the rules, and the how-to page "Retrying safely".
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, ClassVar, Final, Generic, Literal, TypeVar, cast, final

import anyio
import attrs

from . import _backend, events
from ._backoff import (
    Backoff,
    BackoffSpec,
    ExponentialBackoff,
    check_delay,
    to_backoff,
)
from ._budget import BudgetState, RetryBudget
from ._classify import Classification, classification, matcher
from ._config import (
    callable_or_none,
    fail,
    int_at_least,
    name_value,
    optional_positive_seconds,
    seconds_at_least_zero,
)
from ._core import Service, mark_built
from ._deadline import DEADLINE
from ._errors import CallbackError, ConfigurationError, Rejected, type_name
from .events import Event, Level

__all__ = [
    "ATTEMPT",
    "TESTING",
    "Retry",
    "RetryAttemptFailed",
    "RetryStopped",
    "current_attempt",
]

Req = TypeVar("Req")
Res = TypeVar("Res")

HINT_LIMIT: Final = 60.0
"""The default limit on a hinted wait (``retry_after``), seconds, when neither
``max_delay`` nor an :class:`ExponentialBackoff`'s ``cap`` gives one."""

ATTEMPT: Final[ContextVar[int]] = ContextVar("layers_attempt", default=1)
"""The attempt number of the innermost Retry; 1 when nothing has retried."""

_get_attempt = ATTEMPT.get
_set_attempt = ATTEMPT.set
_reset_attempt = ATTEMPT.reset
_get_deadline = DEADLINE.get


def current_attempt() -> int:
    """Return the number of the attempt in progress: 1, then 2, 3...

    Inside a service wrapped by :class:`Retry`, this is the number of the
    current attempt of the innermost ``Retry`` (1 for the first attempt, and
    outside any ``Retry``). Send it on if the server wants to know, as gRPC
    sends ``grpc-previous-rpc-attempts``::

        async def call_api(request: Request) -> Response:
            headers = {"x-attempt": str(layers.current_attempt())}
            ...

    It is a :mod:`contextvars` variable: tasks started inside the attempt
    inherit it.
    """
    return _get_attempt()


@final
class _Testing:
    """Process-wide retry testing mode (see :func:`layers.testing.retry_testing`)."""

    __slots__ = ("attempts",)

    def __init__(self) -> None:
        self.attempts: int | None = None
        """The attempt cap while testing mode is on; ``None`` when it is off."""


TESTING: Final = _Testing()


# ------------------------------------------------------------------ events


@attrs.frozen(kw_only=True)
class RetryAttemptFailed(Event):
    """An attempt failed and :class:`~layers.Retry` will try again after *delay*.

    Attributes:
        attempt: The number of the attempt that failed (1 for the first).
        delay: Seconds Retry waits before the next attempt.
        error: The type of the exception, such as ``"ConnectionError"`` or
            ``"httpx.ConnectError"`` (never its message, which may hold a
            payload); ``None`` when a response was retried (``on_result``).
    """

    event: ClassVar[str] = "retry_attempt_failed"
    kind: ClassVar[str] = "retry"
    level: ClassVar[Level] = "info"

    attempt: int
    delay: float
    error: str | None


@attrs.frozen(kw_only=True)
class RetryStopped(Event):
    """:class:`~layers.Retry` stopped retrying: the last error is raised.

    If the last attempt returned a response that *on_result* wanted
    retried, that response is returned instead.

    Attributes:
        attempts: Attempts made.
        reason: Why it stopped: ``"max_attempts"`` (the attempts limit was
            reached), ``"max_time"`` (the next attempt could not start within
            ``max_time``), ``"retry_after"`` (the error's delay hint was
            longer than the limit on hinted waits: ``max_delay``, by default
            the :class:`~layers.ExponentialBackoff`'s ``cap`` or 60 s),
            ``"deadline"`` (the deadline, :func:`~layers.current_deadline`,
            leaves no time for another attempt), ``"budget"`` (the
            :class:`~layers.RetryBudget` is empty) or ``"not_retryable"`` (a
            retry raised an error that ``on`` does not match, raised as it
            is).
        error: The type of the last exception, or ``None`` if the last
            attempt returned a retryable response.
        delay: The wait that the next attempt needed first, in seconds (the
            error's hint for ``"retry_after"``; ``0.0`` when none was left);
            ``None`` when Retry stopped before it knew it (``"max_attempts"``,
            ``"not_retryable"``).
        remaining: Seconds that were left before the deadline (``<= 0`` when
            it had passed); ``None`` when no deadline was in force.
    """

    event: ClassVar[str] = "retry_stopped"
    kind: ClassVar[str] = "retry"
    level: ClassVar[Level] = "warning"

    attempts: int
    reason: Literal[
        "max_attempts",
        "max_time",
        "retry_after",
        "deadline",
        "budget",
        "not_retryable",
    ]
    error: str | None
    delay: float | None
    remaining: float | None


_Reason = Literal[
    "max_attempts",
    "max_time",
    "retry_after",
    "deadline",
    "budget",
    "not_retryable",
]
"""Why Retry stopped (:attr:`RetryStopped.reason`), as the code spells it."""


def _type_name(error: BaseException | None) -> str | None:
    return None if error is None else type_name(error)


# ------------------------------------------------------------------ config

_classification = classification("retried")


_attempts = int_at_least(1, "None or an integer >= 1", optional=True)


_optional_positive = optional_positive_seconds


_optional_callable = callable_or_none("None or callable")


def _budget(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, RetryBudget):
        fail(instance, attribute, value, "a RetryBudget or None (no budget)")


def _to_backoff(value: BackoffSpec) -> Backoff:
    return to_backoff("Retry", value)


@final
@attrs.frozen
class Retry:
    """Call the inner service again when it fails in a way you said is retryable.

    **What is retried** is explicit: *on* names the exception types (or a
    predicate on the exception), and *on_result* optionally a predicate on
    the response (an HTTP 503, say). There is no "retry everything" default;
    ``on=Exception`` says so when you mean it. Whatever *on* says, these are
    never retried: cancellation (``asyncio.CancelledError``,
    ``trio.Cancelled``, anyio's cancellation), any :class:`BaseException`
    that is not an :class:`Exception` (``KeyboardInterrupt``...), and any
    failure once the deadline (:func:`~layers.current_deadline`) has
    passed. A :class:`~layers.Rejected` from a layer below (rate limited,
    overloaded, circuit open) is retried only if *on* matches it, and then
    not before its ``retry_after``.

    **When it stops.** At least one limit is required: *max_attempts* (all
    attempts, the first included) and/or *max_time*. Before every retry,
    Retry decides, in this order, and stops at the first that applies:

    1. the attempts limit is reached (``max_attempts``);
    2. the deadline has passed;
    3. the delay hint of the error (``retry_after``) is longer than the
       limit on hinted waits (*max_delay*; see there for its default):
       waiting that long is not worth it;
    4. the next attempt could not start within *max_time* of the first
       attempt's start;
    5. the deadline would leave at most *min_attempt_time* seconds for the
       next attempt after the wait (with the default 0: no time at all).
       Retry never sleeps past the deadline, and never starts an attempt at
       or after it;
    6. the :class:`RetryBudget` is empty.

    It then raises the **last error itself**: the same object, its
    traceback kept, never wrapped, with a note (:pep:`678`,
    ``add_note``) such as ``retry 'users-api' gave up after 3 attempts:
    the attempts limit (3) was reached``; and emits
    :class:`~layers.events.RetryStopped`, whose ``reason`` says which
    limit it was. If the last attempt returned a response that *on_result*
    wanted retried, that response is returned. An exception that *on* does
    not match is raised at once, unchanged (after a first retry it gets a
    note too, and ``RetryStopped`` says ``"not_retryable"``).

    **One note per reason.** A ``Retry`` notes an exception at most once
    per reason (the attempts limit, *max_time*, a delay hint, the
    deadline, the budget, an error that is not retryable), whatever the
    attempt count: an exception object that many calls share (one failed
    future awaited by 100 tasks) carries one note per reason that stopped
    them, not one per call. Nested ``Retry`` layers that give up on the same
    exception each add their own note, outer after inner; they are told
    apart by *name*, so two nested layers with the same name and the same
    reason add one note.

    **How long it waits** before attempt ``n + 1``: the error's delay hint
    if it has one (*retry_after*, then :attr:`Rejected.retry_after
    <layers.Rejected.retry_after>`), otherwise the next delay of *backoff*
    (clamped to *max_delay*). It sleeps with :func:`anyio.sleep`, so the
    wait can be cancelled; with no delay it still lets other tasks run.
    Each retry emits :class:`~layers.events.RetryAttemptFailed`.

    **The request** is sent again as it is (the same Python object). A
    request that cannot be replayed (a stream already read) is the
    caller's business; *prepare* can build a fresh one per attempt.
    :func:`~layers.current_attempt` tells the inner service which attempt
    it serves.

    **State**: the retry budget is the layer's state. A ``Retry`` made with
    the default budget has its own one, shared by every service the layer
    wraps (and so by every service built from one builder); pass one
    :class:`RetryBudget` to several layers to share it wider, or
    ``budget=None`` for none.

    Args:
        on: What to retry: an :class:`Exception` subclass, a tuple of them,
            or a predicate ``on(error) -> bool``.
        max_attempts: The most attempts, the first included, an integer >= 1
            (``max_attempts=1`` never retries), or ``None`` for no count limit.
        max_time: Seconds from the start of the first attempt after which no
            new attempt starts, or ``None``. It never cancels an attempt in
            progress: put a :class:`~layers.Timeout` outside the retry for
            a hard limit (Retry respects its deadline too).
        backoff: How long to wait before each retry: a :class:`Backoff`
            (default ``ExponentialBackoff()``: full jitter, 0.1 s doubling
            up to 10 s), a function ``backoff(attempt) -> seconds`` of the
            number of the attempt that failed, or a sequence of delays (the
            last one repeats).
        budget: The :class:`RetryBudget` that retries draw on (default: a
            new one with Finagle's defaults), or ``None`` for no budget.
        max_delay: The longest wait, seconds > 0: computed delays are
            clamped to it, and a longer ``retry_after`` hint ends retrying
            at once. Default: the ``cap`` of an :class:`ExponentialBackoff`
            (10 s by default). With another backoff, computed delays are
            not clamped, and hinted waits are limited to 60 s: a hint from
            the network (a ``Retry-After`` header) never makes a call wait
            for hours; set *max_delay* to wait longer.
        min_attempt_time: Seconds >= 0 that must remain before the deadline
            for a new attempt to start after its wait (default 0: any time
            at all). Set it to what an attempt needs at least.
        retry_after: A function ``retry_after(error) -> seconds | None``
            that reads a delay hint from a retryable error (an HTTP
            ``Retry-After`` header, say). ``None`` from it (or no function)
            falls back to :attr:`Rejected.retry_after
            <layers.Rejected.retry_after>`.
        on_result: A predicate ``on_result(response) -> bool``: true to
            retry that response. ``None`` (default): responses are returned.
        prepare: A function ``prepare(request, attempt) -> request`` called
            before each retry (``attempt`` >= 2) to build the request to
            send, for requests that cannot be sent twice or that carry the
            attempt number. ``None`` (default): the same request again.
        name: A name for events and notes (default ``"retry"``).

    Raises:
        layers.ConfigurationError: At construction, for any invalid value
            (no limit at all, an attempts count below 1, a negative delay,
            an *on* that is not an exception type or a predicate...).

    Example:
        >>> import anyio, layers
        >>> answers = iter([ConnectionError("reset"), ConnectionError("reset"), "ok"])
        >>> async def flaky(request: str) -> str:
        ...     answer = next(answers)
        ...     if isinstance(answer, Exception):
        ...         raise answer
        ...     return f"{answer} on attempt {layers.current_attempt()}"
        >>> svc = layers.Retry(
        ...     on=ConnectionError, max_attempts=3, backoff=layers.ConstantBackoff(0.01)
        ... ).layer(flaky)
        >>> anyio.run(svc, "GET /")
        'ok on attempt 3'
    """

    on: Classification = attrs.field(validator=_classification)
    max_attempts: int | None = attrs.field(
        default=None, kw_only=True, validator=_attempts
    )
    max_time: float | None = attrs.field(
        default=None, kw_only=True, validator=_optional_positive
    )
    backoff: Backoff = attrs.field(
        default=attrs.Factory(ExponentialBackoff), kw_only=True, converter=_to_backoff
    )
    budget: RetryBudget | None = attrs.field(
        factory=RetryBudget, kw_only=True, validator=_budget
    )
    max_delay: float | None = attrs.field(
        default=None, kw_only=True, validator=_optional_positive
    )
    min_attempt_time: float = attrs.field(
        default=0.0, kw_only=True, validator=seconds_at_least_zero
    )
    retry_after: Callable[[Exception], float | None] | None = attrs.field(
        default=None, kw_only=True, validator=_optional_callable
    )
    on_result: Callable[[Any], bool] | None = attrs.field(
        default=None, kw_only=True, validator=_optional_callable
    )
    prepare: Callable[[Any, int], Any] | None = attrs.field(
        default=None, kw_only=True, validator=_optional_callable
    )
    name: str = attrs.field(default="retry", kw_only=True, validator=name_value)

    def __attrs_post_init__(self) -> None:
        if self.max_attempts is None and self.max_time is None:
            raise ConfigurationError(
                "Retry(max_attempts=None, max_time=None): give at least one limit, "
                "max_attempts (an integer >= 1) and/or max_time (seconds > 0)"
            )

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        """Wrap *inner* with this retry policy."""
        loop = _Loop[Req, Res](self, inner)
        run = loop.run
        retryable = loop.retryable
        state = loop.state
        get_attempt = _get_attempt

        if self.max_time is None and self.on_result is None:
            # The default shape, kept as short as it can be: no clock, no
            # response check. The first attempt sets no context variable
            # (current_attempt() is 1 by default) unless an outer Retry has
            # set another number.
            if state is not None:

                async def retry_with_budget(request: Req, /) -> Res:
                    if get_attempt() != 1:
                        return await loop.first_of_nested(retry_with_budget, request)
                    # the budget's deposit (BudgetState.deposit), inlined
                    left = state.left
                    if left:
                        state.left = left - 1
                    else:
                        state.deposit_and_read()
                    try:
                        return await inner(request)
                    except Exception as error:
                        if not retryable(error):
                            raise
                        failure = error
                    return await run(request, failure, None, None)

                return mark_built(retry_with_budget, self, inner)

            async def retry(request: Req, /) -> Res:
                if get_attempt() != 1:
                    return await loop.first_of_nested(retry, request)
                try:
                    return await inner(request)
                except Exception as error:
                    if not retryable(error):
                        raise
                    failure = error
                return await run(request, failure, None, None)

            return mark_built(retry, self, inner)

        timed = self.max_time is not None
        on_result = self.on_result
        now = _backend.current_time

        async def retry_general(request: Req, /) -> Res:
            if get_attempt() != 1:
                return await loop.first_of_nested(retry_general, request)
            if state is not None:
                state.deposit()
            start = now() if timed else None
            try:
                response = await inner(request)
            except Exception as error:
                if not retryable(error):
                    raise
                failure = error
            else:
                if on_result is None or not on_result(response):
                    return response
                return await run(request, None, response, start)
            return await run(request, failure, None, start)

        return mark_built(retry_general, self, inner)


@final
class _Loop(Generic[Req, Res]):
    """What a Retry service does once its first attempt has failed."""

    __slots__ = (
        "backoff",
        "hint",
        "hint_limit",
        "hint_limit_text",
        "inner",
        "max_attempts",
        "max_delay",
        "max_time",
        "min_attempt_time",
        "name",
        "on_result",
        "prepare",
        "retryable",
        "state",
    )

    def __init__(self, config: Retry, inner: Service[Req, Res]) -> None:
        self.inner: Callable[[Req], Awaitable[Res]] = inner
        self.name = config.name
        self.max_attempts = config.max_attempts
        self.max_time = config.max_time
        self.backoff = config.backoff
        self.state: BudgetState | None = (
            config.budget._state if config.budget is not None else None  # pyright: ignore[reportPrivateUsage]
        )
        if config.max_delay is not None:
            self.max_delay = float(config.max_delay)
        elif isinstance(config.backoff, ExponentialBackoff):
            self.max_delay = float(config.backoff.cap)
        else:
            self.max_delay = math.inf
        if self.max_delay < math.inf:
            self.hint_limit = self.max_delay
            self.hint_limit_text = f"max_delay ({self.max_delay:g} s)"
        else:
            self.hint_limit = HINT_LIMIT
            self.hint_limit_text = (
                f"the default limit on hinted waits ({HINT_LIMIT:g} s; set "
                "max_delay to change it)"
            )
        self.min_attempt_time = float(config.min_attempt_time)
        self.hint = config.retry_after
        self.on_result = config.on_result
        self.prepare = config.prepare
        self.retryable: Callable[[Exception], bool] = matcher(config.on)

    async def first_of_nested(
        self, call: Callable[[Req], Awaitable[Res]], request: Req
    ) -> Res:
        """Run *call* as a first attempt inside an outer Retry's retry."""
        token = _set_attempt(1)
        try:
            return await call(request)
        finally:
            _reset_attempt(token)

    def delay_hint(self, error: Exception) -> float | None:
        """The error's own delay hint, in seconds, or ``None``."""
        hint: object = None
        if self.hint is not None:
            hint = cast(object, self.hint(error))  # checked: user code
        if hint is None and isinstance(error, Rejected):
            hint = error.retry_after
        if hint is None:
            return None
        if isinstance(hint, bool) or not isinstance(hint, int | float):
            raise CallbackError(
                f"Retry {self.name!r}: the delay hint (retry_after=) for "
                f"{_type_name(error)} must "
                f"be a number of seconds or None, got {hint!r}",
                layer=self.name,
                parameter="retry_after",
            ) from error
        if math.isnan(hint):
            return math.inf
        return max(0.0, float(hint))

    async def run(
        self,
        request: Req,
        failure: Exception | None,
        response: Res | None,
        start: float | None,
    ) -> Res:
        """Retry after a failed first attempt (*failure*, or a *response*)."""
        testing = TESTING.attempts
        max_attempts = self.max_attempts
        if testing is not None:
            max_attempts = (
                testing if max_attempts is None else min(max_attempts, testing)
            )
        limit = (
            start + self.max_time
            if start is not None and self.max_time is not None
            else None
        )
        state = self.state
        delays: Iterator[float] | None = None
        computed = 0.0
        attempt = 1
        while True:
            now = _backend.current_time()
            deadline = _get_deadline()
            delay = 0.0
            stop: _Reason | None = None
            text = ""
            if max_attempts is not None and attempt >= max_attempts:
                stop, text = (
                    "max_attempts",
                    f"the attempts limit ({max_attempts}) was reached",
                )
            elif deadline is not None and now >= deadline:
                stop, text = "deadline", "the deadline has passed"
            else:
                if delays is None:
                    delays = iter(self.backoff.delays())
                for value in delays:
                    computed = min(
                        check_delay(
                            f"Retry {self.name!r}",
                            self.backoff,
                            attempt,
                            value,
                            failure,
                            layer=self.name,
                        ),
                        self.max_delay,
                    )
                    break
                hint = self.delay_hint(failure) if failure is not None else None
                delay = computed if hint is None else hint
                if testing is not None:
                    delay = 0.0
                if hint is not None and hint > self.hint_limit:
                    stop = "retry_after"
                    text = (
                        f"the error's retry_after ({hint:g} s) is longer than "
                        f"{self.hint_limit_text}"
                    )
                elif limit is not None and now + delay > limit:
                    stop, text = "max_time", self.max_time_text()
                elif (
                    deadline is not None
                    and deadline - (now + delay) <= self.min_attempt_time
                ):
                    stop = "deadline"
                    text = (
                        f"the deadline, {deadline - now:.3g} s away, leaves no time "
                        f"for another attempt after a {delay:.3g} s wait"
                    )
                elif state is not None and not state.withdraw():
                    stop, text = "budget", "the retry budget is exhausted"
            if stop is not None:
                wait = None if stop == "max_attempts" else delay
                remaining = None if deadline is None else deadline - now
                return self.give_up(
                    stop, text, attempt, failure, response, wait, remaining
                )
            if events.STATE.sinks:
                events.emit(
                    RetryAttemptFailed(
                        layer=self.name,
                        attempt=attempt,
                        delay=delay,
                        error=_type_name(failure),
                    )
                )
            # a checkpoint even without a delay: a loop of failures that
            # never wait must still let other tasks run and be cancellable
            await anyio.sleep(delay)
            if deadline is not None or limit is not None:
                now = _backend.current_time()
                remaining = None if deadline is None else deadline - now
                # the sleep may have ended late (a busy loop, a clock jump)
                if remaining is not None and remaining <= self.min_attempt_time:
                    text = "the deadline leaves no time for another attempt"
                    return self.give_up(
                        "deadline", text, attempt, failure, response, 0.0, remaining
                    )
                if limit is not None and now > limit:
                    text = self.max_time_text()
                    return self.give_up(
                        "max_time", text, attempt, failure, response, 0.0, remaining
                    )
            attempt += 1
            outgoing = (
                request if self.prepare is None else self.prepare(request, attempt)
            )
            token = _set_attempt(attempt)
            try:
                response = await self.inner(outgoing)
            except Exception as error:
                if not self.retryable(error):
                    self.not_retryable(error, attempt, deadline)
                    raise
                failure = error
                response = None
                continue
            finally:
                _reset_attempt(token)
            if self.on_result is None or not self.on_result(response):
                return response
            failure = None

    def max_time_text(self) -> str:
        """The reason, for the note, of a stop at *max_time*."""
        return f"the next attempt could not start within max_time ({self.max_time:g} s)"

    def not_retryable(
        self, error: Exception, attempt: int, deadline: float | None
    ) -> None:
        """Report that a retry raised *error*, which is not retryable."""
        add_note_once(
            error,
            self.name,
            "not_retryable",
            f"retry {self.name!r}: attempt {attempt} raised an error "
            "that is not retryable",
        )
        if events.STATE.sinks:
            remaining = None if deadline is None else deadline - _backend.current_time()
            events.emit(
                RetryStopped(
                    layer=self.name,
                    attempts=attempt,
                    reason="not_retryable",
                    error=_type_name(error),
                    delay=None,
                    remaining=remaining,
                )
            )

    def give_up(
        self,
        reason: _Reason,
        text: str,
        attempt: int,
        failure: Exception | None,
        response: Res | None,
        delay: float | None,
        remaining: float | None,
    ) -> Res:
        """Report why retrying stopped; raise the last error or return the response."""
        if events.STATE.sinks:
            events.emit(
                RetryStopped(
                    layer=self.name,
                    attempts=attempt,
                    reason=reason,
                    error=_type_name(failure),
                    delay=delay,
                    remaining=remaining,
                )
            )
        if failure is None:
            return cast(Res, response)
        plural = "attempt" if attempt == 1 else "attempts"
        add_note_once(
            failure,
            self.name,
            reason,
            f"retry {self.name!r} gave up after {attempt} {plural}: {text}",
        )
        raise failure


@final
class RetryNote(str):
    """A :pep:`678` note added by a :class:`Retry`: a ``str`` that knows its origin.

    It records the ``layer`` (the Retry's name) and the ``reason`` that
    wrote it, so that the same layer and reason never note one exception
    twice.
    """

    layer: str
    reason: str

    def __new__(cls, text: str, layer: str, reason: str) -> RetryNote:
        """Make the note *text*, written by *layer* for *reason*."""
        note = super().__new__(cls, text)
        note.layer = layer
        note.reason = reason
        return note

    def __reduce__(self) -> tuple[type[RetryNote], tuple[str, str, str]]:
        """Pickle (and copy) as the same note."""
        return (RetryNote, (str(self), self.layer, self.reason))


def add_note_once(error: BaseException, layer: str, reason: str, text: str) -> None:
    """Add *text* to *error*'s notes unless *layer* already noted it for *reason*.

    An exception object can reach a Retry many times: one failed future
    awaited by many calls, or nested Retry layers that both give up on it.
    One note per layer and reason says it all; a note per call would grow
    without limit.
    """
    notes: object = getattr(error, "__notes__", None)
    if isinstance(notes, list):
        for note in cast("list[object]", notes):
            if (
                isinstance(note, RetryNote)
                and note.layer == layer
                and note.reason == reason
            ):
                return
    error.add_note(RetryNote(text, layer, reason))
