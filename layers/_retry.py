"""Retry: call the inner service again when it fails in a way you said is retryable.

See :class:`Retry` for the rules, and the how-to page "Retrying safely".
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, TypeVar, cast, final

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
from ._budget import BudgetState, RetryBudget, budget_or_none
from ._classify import Classification, classification, matcher
from ._config import (
    callable_or_none,
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
    "Attempt",
    "Retry",
    "RetryAttemptFailed",
    "RetryStopped",
    "current_attempt",
]

Req = TypeVar("Req")
Res = TypeVar("Res")
T = TypeVar("T")

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
            ``max_time``), ``"retry_after"`` (the delay hint of the error,
            or of the response *on_result* retries, was longer than the
            limit on hinted waits: ``max_delay``, by default the
            :class:`~layers.ExponentialBackoff`'s ``cap`` or 60 s),
            ``"deadline"`` (the deadline, :func:`~layers.current_deadline`,
            leaves no time for another attempt), ``"budget"`` (the
            :class:`~layers.RetryBudget` is empty) or ``"not_retryable"`` (a
            retry raised an error that ``on`` does not match, raised as it
            is).
        error: The type of the last exception, or ``None`` if the last
            attempt returned a retryable response.
        delay: The wait that the next attempt needed first, in seconds (the
            hint for ``"retry_after"``; ``0.0`` when none was left);
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
    3. the delay hint of the error or response (``retry_after``) is longer
       than the limit on hinted waits (*max_delay*; see there for its
       default): waiting that long is not worth it;
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

    **How long it waits** before attempt ``n + 1``: the delay hint of the
    error (*retry_after*, then :attr:`Rejected.retry_after
    <layers.Rejected.retry_after>`) or of the response that *on_result*
    retries (*retry_after*: an HTTP 429's ``Retry-After`` needs no
    exception), otherwise the next delay of *backoff* (clamped to
    *max_delay*). It sleeps with :func:`anyio.sleep`, so the
    wait can be cancelled; with no delay it still lets other tasks run.
    Each retry emits :class:`~layers.events.RetryAttemptFailed`.

    **The request** is sent again as it is (the same Python object). A
    request that cannot be replayed (a stream already read) is the
    caller's business; *prepare* can build a fresh one per attempt.
    :func:`~layers.current_attempt` tells the inner service which attempt
    it serves.

    **A block** is retried by the same rules: ``async for attempt in
    retry: with attempt: ...`` (see :meth:`attempts` and :class:`Attempt`).

    **State**: the retry budget is the layer's state. A ``Retry`` made with
    the default budget has its own one, shared by every service the layer
    wraps and every block it retries (and so by every service built from
    one builder); pass one :class:`RetryBudget` to several layers to share
    it wider, or ``budget=None`` for none.

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
        retry_after: A function ``retry_after(outcome) -> seconds | None``
            that reads a delay hint (an HTTP ``Retry-After`` header, say)
            from what the failed attempt gave: the retryable **error**, or
            the **response** that *on_result* wants retried (write it for
            both when you give both). ``None`` from it (or no function)
            falls back to :attr:`Rejected.retry_after
            <layers.Rejected.retry_after>` for an error, and to the backoff.
        on_result: A predicate ``on_result(response) -> bool``: true to
            retry that response. ``None`` (default): responses are returned.
            A retried block hands its response over with
            :meth:`Attempt.result`.
        prepare: A function ``prepare(request, attempt) -> request`` called
            before each retry (``attempt`` >= 2) to build the request to
            send, for requests that cannot be sent twice or that carry the
            attempt number. ``None`` (default): the same request again. A
            block has no request: :meth:`attempts` refuses a Retry with
            *prepare*.
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
        factory=RetryBudget, kw_only=True, validator=budget_or_none
    )
    max_delay: float | None = attrs.field(
        default=None, kw_only=True, validator=_optional_positive
    )
    min_attempt_time: float = attrs.field(
        default=0.0, kw_only=True, validator=seconds_at_least_zero
    )
    retry_after: Callable[[Any], float | None] | None = attrs.field(
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
        policy = _Policy(self)
        run = policy.run
        first_of_nested = policy.first_of_nested
        retryable = policy.retryable
        state = policy.state
        get_attempt = _get_attempt

        if self.max_time is None and self.on_result is None:
            # The default shape, kept as short as it can be: no clock, no
            # response check. The first attempt sets no context variable
            # (current_attempt() is 1 by default) unless an outer Retry has
            # set another number.
            if state is not None:

                async def retry_with_budget(request: Req, /) -> Res:
                    if get_attempt() != 1:
                        return await first_of_nested(retry_with_budget, request)
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
                    return await run(inner, request, failure, None, None)

                return mark_built(retry_with_budget, self, inner)

            async def retry(request: Req, /) -> Res:
                if get_attempt() != 1:
                    return await first_of_nested(retry, request)
                try:
                    return await inner(request)
                except Exception as error:
                    if not retryable(error):
                        raise
                    failure = error
                return await run(inner, request, failure, None, None)

            return mark_built(retry, self, inner)

        timed = self.max_time is not None
        on_result = self.on_result
        now = _backend.current_time

        async def retry_general(request: Req, /) -> Res:
            if get_attempt() != 1:
                return await first_of_nested(retry_general, request)
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
                return await run(inner, request, None, response, start)
            return await run(inner, request, failure, None, start)

        return mark_built(retry_general, self, inner)

    def attempts(self) -> AsyncIterator[Attempt]:
        """Retry a block: ``async for attempt in retry.attempts(): with attempt: ...``.

        Each iteration yields an :class:`Attempt`; run the block inside
        ``with attempt:``. The loop retries the block by the same rules as
        the service form (*on*, the limits, the budget, the deadline,
        delay hints, the events) and stops after a clean exit. A
        ``Retry`` is also its own async iterable: ``async for attempt in
        retry:`` is the same. Each loop is a new sequence of attempts; the
        budget is the layer's, shared with the services it wraps::

            retry = layers.Retry(on=ConnectionError, max_attempts=3)
            async for attempt in retry:
                with attempt:
                    row = await db.fetch_one(query)

        With *on_result*, hand the block's response over with
        :meth:`Attempt.result`.

        Raises:
            layers.ConfigurationError: If the Retry has *prepare*: a block
                has no request to rebuild (build what each attempt sends
                inside the block, from :attr:`Attempt.number`).
        """
        if self.prepare is not None:
            raise ConfigurationError(
                f"Retry {self.name!r}: attempts() with prepare={self.prepare!r}: "
                "a retried block has no request for prepare to rebuild; build "
                "what each attempt sends inside the block (attempt.number is "
                "its number), and use a Retry without prepare"
            )
        return _Block(_Policy(self))

    def __aiter__(self) -> AsyncIterator[Attempt]:
        """``async for attempt in retry:``, the same as :meth:`attempts`."""
        return self.attempts()


@final
class _Policy:
    """A Retry's options, ready for use: what both forms of a retry consult.

    :meth:`Retry.layer` makes one per wrapped service and
    :meth:`Retry.attempts` one per retried block; each call (or block) then
    keeps its own count in a :class:`_Run`.
    """

    __slots__ = (
        "backoff",
        "hint",
        "hint_limit",
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

    def __init__(self, config: Retry) -> None:
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
        self.hint_limit = self.max_delay if self.max_delay < math.inf else HINT_LIMIT
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

    def delay_hint(self, failure: Exception | None, response: object) -> float | None:
        """The delay hint of the failed attempt's error or response, or ``None``.

        *retry_after* reads the error, or the response when the attempt
        returned one that *on_result* wants retried; then a
        :class:`Rejected`'s own ``retry_after``.
        """
        hint: object = None
        outcome = response if failure is None else failure
        if self.hint is not None:
            hint = cast(object, self.hint(outcome))  # checked: user code
        if hint is None and isinstance(failure, Rejected):
            hint = failure.retry_after
        if hint is None:
            return None
        if isinstance(hint, bool) or not isinstance(hint, int | float):
            raise CallbackError(
                f"Retry {self.name!r}: the delay hint (retry_after=) for "
                f"{type_name(outcome)} must "
                f"be a number of seconds or None, got {hint!r}",
                layer=self.name,
                parameter="retry_after",
            ) from failure
        if math.isnan(hint):
            return math.inf
        return max(0.0, float(hint))

    async def run(
        self,
        inner: Callable[[Req], Awaitable[Res]],
        request: Req,
        failure: Exception | None,
        response: Res | None,
        start: float | None,
    ) -> Res:
        """Retry *inner* after a failed first attempt (*failure*, or a *response*).

        The service form's loop: each decision between attempts is the
        :class:`_Run`'s, as in the block form.
        """
        run = _Run(self, start)
        prepare = self.prepare
        on_result = self.on_result
        while True:
            if not run.retry(failure, response) or not await run.wait():
                if failure is None:
                    return cast(Res, response)
                raise failure
            attempt = run.attempt
            outgoing = request if prepare is None else prepare(request, attempt)
            token = _set_attempt(attempt)
            try:
                response = await inner(outgoing)
            except Exception as error:
                if not self.retryable(error):
                    run.not_retryable(error)
                    raise
                failure = error
                response = None
                continue
            finally:
                _reset_attempt(token)
            if on_result is None or not on_result(response):
                return response
            failure = None

    def hint_limit_text(self) -> str:
        """The limit on hinted waits, for the note of a stop at a long hint."""
        if self.max_delay < math.inf:
            return f"max_delay ({self.max_delay:g} s)"
        return (
            f"the default limit on hinted waits ({HINT_LIMIT:g} s; set "
            "max_delay to change it)"
        )

    def max_time_text(self) -> str:
        """The reason, for the note, of a stop at *max_time*."""
        return f"the next attempt could not start within max_time ({self.max_time:g} s)"


@final
class _Run:
    """One call's (or one block's) retries: every decision between its attempts.

    The service form (:meth:`_Policy.run`) and the block form
    (:class:`Attempt`) ask the same questions, here: after a failed
    attempt, :meth:`retry` (retry it, or give up and why, with the events
    and the note); then :meth:`wait` (sleep, and check again when it ends).
    """

    __slots__ = (
        "attempt",
        "computed",
        "deadline",
        "delay",
        "delays",
        "failure",
        "limit",
        "max_attempts",
        "policy",
        "testing",
    )

    def __init__(self, policy: _Policy, start: float | None) -> None:
        testing = TESTING.attempts
        max_attempts = policy.max_attempts
        if testing is not None:
            max_attempts = (
                testing if max_attempts is None else min(max_attempts, testing)
            )
        self.policy = policy
        self.testing = testing is not None
        self.max_attempts = max_attempts
        self.limit = (
            start + policy.max_time
            if start is not None and policy.max_time is not None
            else None
        )
        self.attempt = 1
        """The number of the attempt that ran last."""
        self.delays: Iterator[float] | None = None
        self.computed = 0.0
        self.delay = 0.0
        """The wait before the next attempt, once :meth:`retry` said yes."""
        self.deadline: float | None = None
        self.failure: Exception | None = None

    def retry(self, failure: Exception | None, response: object) -> bool:
        """Whether to retry after :attr:`attempt` failed (*failure*, or a *response*).

        True: retry after :attr:`delay` (the budget paid, the
        :class:`RetryAttemptFailed` event emitted). False: retrying stops
        (the :class:`RetryStopped` event emitted, *failure* noted).
        """
        policy = self.policy
        attempt = self.attempt
        max_attempts = self.max_attempts
        now = _backend.current_time()
        deadline = self.deadline = _get_deadline()
        self.failure = failure
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
            delays = self.delays
            if delays is None:
                delays = self.delays = iter(policy.backoff.delays())
            for value in delays:
                self.computed = min(
                    check_delay(
                        f"Retry {policy.name!r}",
                        policy.backoff,
                        attempt,
                        value,
                        failure,
                        layer=policy.name,
                    ),
                    policy.max_delay,
                )
                break
            hint = policy.delay_hint(failure, response)
            delay = self.computed if hint is None else hint
            if self.testing:
                delay = 0.0
            limit = self.limit
            if hint is not None and hint > policy.hint_limit:
                stop = "retry_after"
                source = "response" if failure is None else "error"
                text = (
                    f"the {source}'s retry_after ({hint:g} s) is longer than "
                    f"{policy.hint_limit_text()}"
                )
            elif limit is not None and now + delay > limit:
                stop, text = "max_time", policy.max_time_text()
            elif (
                deadline is not None
                and deadline - (now + delay) <= policy.min_attempt_time
            ):
                stop = "deadline"
                text = (
                    f"the deadline, {deadline - now:.3g} s away, leaves no time "
                    f"for another attempt after a {delay:.3g} s wait"
                )
            elif policy.state is not None and not policy.state.withdraw():
                stop, text = "budget", "the retry budget is exhausted"
        if stop is not None:
            wait = None if stop == "max_attempts" else delay
            remaining = None if deadline is None else deadline - now
            self.give_up(stop, text, wait, remaining)
            return False
        self.delay = delay
        if events.STATE.sinks:
            events.emit(
                RetryAttemptFailed(
                    layer=policy.name,
                    attempt=attempt,
                    delay=delay,
                    error=_type_name(failure),
                )
            )
        return True

    async def wait(self) -> bool:
        """Wait :attr:`delay`; whether the next attempt may start then.

        True: :attr:`attempt` now counts the next attempt. False: the
        deadline or *max_time* ran out meanwhile, and retrying stopped (as
        :meth:`retry` stops).
        """
        # a checkpoint even without a delay: a loop of failures that never
        # wait must still let other tasks run and be cancellable
        await anyio.sleep(self.delay)
        deadline = self.deadline
        limit = self.limit
        if deadline is not None or limit is not None:
            now = _backend.current_time()
            remaining = None if deadline is None else deadline - now
            # the sleep may have ended late (a busy loop, a clock jump)
            if remaining is not None and remaining <= self.policy.min_attempt_time:
                text = "the deadline leaves no time for another attempt"
                self.give_up("deadline", text, 0.0, remaining)
                return False
            if limit is not None and now > limit:
                self.give_up("max_time", self.policy.max_time_text(), 0.0, remaining)
                return False
        self.attempt += 1
        self.failure = None
        return True

    def not_retryable(self, error: Exception) -> None:
        """Report that retry :attr:`attempt` raised *error*, which is not retryable."""
        name = self.policy.name
        add_note_once(
            error,
            name,
            "not_retryable",
            f"retry {name!r}: attempt {self.attempt} raised an error "
            "that is not retryable",
        )
        if events.STATE.sinks:
            deadline = self.deadline
            remaining = None if deadline is None else deadline - _backend.current_time()
            events.emit(
                RetryStopped(
                    layer=name,
                    attempts=self.attempt,
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
        delay: float | None,
        remaining: float | None,
    ) -> None:
        """Report why retrying stopped: the event, and a note on the last error."""
        name = self.policy.name
        attempt = self.attempt
        failure = self.failure
        if events.STATE.sinks:
            events.emit(
                RetryStopped(
                    layer=name,
                    attempts=attempt,
                    reason=reason,
                    error=_type_name(failure),
                    delay=delay,
                    remaining=remaining,
                )
            )
        if failure is not None:
            plural = "attempt" if attempt == 1 else "attempts"
            add_note_once(
                failure,
                name,
                reason,
                f"retry {name!r} gave up after {attempt} {plural}: {text}",
            )


# ------------------------------------------------------------------ the block form

_NEW: Final = 0  # yielded, not entered yet
_ENTERED: Final = 1  # its block is running
_RETRY: Final = 2  # its block failed and another attempt follows
_JUDGE: Final = 3  # its block handed over a response for on_result to judge
_DONE: Final = 4  # the last attempt: the loop ends after it

_NO_RESPONSE: Final = object()


@final
class Attempt:
    """One attempt of a block retried by :class:`Retry`: ``with attempt:`` runs it.

    ``async for attempt in retry:`` (or ``retry.attempts()``) yields one
    per attempt. ``with attempt:`` (a plain ``with``: it never waits)
    records how the block ended, as the service form records what the
    inner service did:

    * a **clean exit** ends the loop (unless *on_result* wants the response
      handed over with :meth:`result` retried);
    * a **retryable error** (``on=``) is swallowed when another attempt
      follows: the loop waits, then yields the next attempt. When retrying
      stops, the error propagates out of the block unchanged, with the same
      note and the same :class:`~layers.events.RetryStopped` event as the
      service form;
    * **any other exception** (not retryable, cancellation, a
      :class:`BaseException`) propagates at once, never retried.

    Inside the block, :func:`~layers.current_attempt` is :attr:`number`.
    Enter each attempt the loop yields, once: the next iteration raises
    :class:`RuntimeError` if the last attempt was never entered.
    """

    __slots__ = ("_block", "_delay", "_number", "_response", "_state", "_token")

    def __init__(self, block: _Block, number: int, delay: float) -> None:
        self._block = block
        self._number = number
        self._delay = delay
        self._state = _NEW
        self._response: object = _NO_RESPONSE
        self._token: Token[int] | None = None

    @property
    def number(self) -> int:
        """Which attempt this is, counted from 1 (the first attempt)."""
        return self._number

    @property
    def delay(self) -> float:
        """Seconds waited before this attempt (0.0 for the first).

        The ``delay`` of the :class:`~layers.events.RetryAttemptFailed`
        event that announced it.
        """
        return self._delay

    def result(self, response: T, /) -> T:
        """Hand *response* to the retry as the block's result, and return it.

        For a :class:`Retry` with *on_result*: when the block has exited
        cleanly, the loop's next step asks ``on_result(response)``, as the
        service form asks of its response: true retries the block (after
        the response's delay hint, *retry_after*, or the backoff), and
        when retrying stops the loop ends, leaving you the last response.
        A block that hands over no response is a success. Without
        *on_result*, the response is not looked at.

        Keep the response in a variable and use it after the loop: a
        ``return`` or a ``break`` in the loop ends it with that response,
        never judged.

        Raises:
            RuntimeError: Outside ``with attempt:``.
        """
        if self._state != _ENTERED:
            raise RuntimeError(
                f"Retry {self._block.policy.name!r}: attempt {self._number}"
                ".result() was called outside its block: call it inside "
                "`with attempt:`"
            )
        self._response = response
        return response

    def __enter__(self) -> Attempt:
        if self._state != _NEW:
            raise RuntimeError(
                f"Retry {self._block.policy.name!r}: attempt {self._number} was "
                "already entered: enter each attempt once"
            )
        self._state = _ENTERED
        self._token = _set_attempt(self._number)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if self._token is not None:
            _reset_attempt(self._token)
            self._token = None
        self._state = _DONE
        return self._block.ended(self, error)

    def __repr__(self) -> str:
        return f"<Attempt number={self._number} delay={self._delay:g}>"


@final
class _Block:
    """The iterator of :meth:`Retry.attempts`: one :class:`Attempt` per attempt.

    Like the service form, it keeps nothing but the first attempt's start
    until that attempt fails: the :class:`_Run` that decides the retries
    is made then.
    """

    __slots__ = ("attempt", "policy", "run", "start")

    def __init__(self, policy: _Policy) -> None:
        self.policy = policy
        self.run: _Run | None = None
        self.attempt: Attempt | None = None
        self.start: float | None = None

    def __aiter__(self) -> _Block:
        return self

    async def __anext__(self) -> Attempt:
        current = self.attempt
        if current is None:
            # the first attempt: what the service form does before its first
            # call (the budget's deposit, the start of max_time), no checkpoint
            policy = self.policy
            if policy.state is not None:
                policy.state.deposit()
            if policy.max_time is not None:
                self.start = _backend.current_time()
            attempt = self.attempt = Attempt(self, 1, 0.0)
            return attempt
        state = current._state  # pyright: ignore[reportPrivateUsage]
        if state == _JUDGE:
            current._state = _DONE  # pyright: ignore[reportPrivateUsage]
            if not self.judged(current):
                raise StopAsyncIteration  # the response is the caller's
            state = _RETRY
        if state == _RETRY:
            current._state = _DONE  # pyright: ignore[reportPrivateUsage]
            run = cast(_Run, self.run)
            if not await run.wait():
                failure = run.failure
                if failure is None:
                    raise StopAsyncIteration  # the last response is the caller's
                raise failure
            attempt = self.attempt = Attempt(self, run.attempt, run.delay)
            return attempt
        if state != _DONE:
            current._state = _DONE  # pyright: ignore[reportPrivateUsage]
            raise RuntimeError(
                f"Retry {self.policy.name!r}: attempt {current.number} was never "
                "entered: write `with attempt:` around the block in each "
                "iteration of `async for attempt in retry`"
            )
        raise StopAsyncIteration

    def judged(self, attempt: Attempt) -> bool:
        """Whether the response *attempt* handed over is retried (*on_result*)."""
        response = attempt._response  # pyright: ignore[reportPrivateUsage]
        on_result = cast(Callable[[Any], bool], self.policy.on_result)
        return on_result(response) and self.retried(None, response)

    def retried(self, failure: Exception | None, response: object) -> bool:
        """Whether the attempt that gave *failure* or *response* is retried."""
        run = self.run
        if run is None:
            run = self.run = _Run(self.policy, self.start)
        return run.retry(failure, response)

    def ended(self, attempt: Attempt, error: BaseException | None) -> bool:
        """Record how *attempt*'s block ended; true to swallow *error* and retry."""
        policy = self.policy
        if error is None:
            if (
                policy.on_result is not None and attempt._response is not _NO_RESPONSE  # pyright: ignore[reportPrivateUsage]
            ):
                # judged by the loop's next step: a return or a break in the
                # loop keeps the response as it is, with no retry begun
                attempt._state = _JUDGE  # pyright: ignore[reportPrivateUsage]
            return False
        if not isinstance(error, Exception):
            return False  # cancellation, KeyboardInterrupt...: never retried
        if not policy.retryable(error):
            if self.run is not None:  # a retry raised it
                self.run.not_retryable(error)
            return False
        if self.retried(error, None):
            attempt._state = _RETRY  # pyright: ignore[reportPrivateUsage]
            return True
        return False  # retrying stopped: the error goes on, noted


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
