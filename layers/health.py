"""Health checks: a registry of named checks, a report, and an ASGI app.

A :class:`HealthChecks` registry holds named async checks (a database ping,
or any observable layer: a downstream's circuit breaker, a limiter's
saturation, a drain; see :meth:`HealthChecks.add_layer`), each with a
timeout and a *critical* flag. :meth:`HealthChecks.run` runs them all
concurrently and returns a :class:`HealthReport`:

* ``healthy`` when every check passes;
* ``degraded`` when a non-critical check fails or any check reports
  ``degraded`` (a half-open breaker, a saturated limiter);
* ``unhealthy`` when a critical check fails.

Reports are cached for *cache_ttl* seconds, and callers that arrive while a
run is under way share it, so a busy health endpoint never hammers the
dependencies it checks. :class:`HealthApp` serves liveness and readiness
over HTTP as a tiny ASGI application (no web framework), answering 200 or
503 with a JSON body that shows statuses only, unless configured to show
error types.

Reports carry exception *types*, never messages, unless
:func:`~layers.set_error_messages` turned messages on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeAlias, cast, final

import anyio
import attrs

from . import events
from ._backend import base_time
from ._config import check_name, check_number, fail_value
from ._errors import ConfigurationError, type_name
from ._failures import reraise, split_failure
from ._lifespan import answer_lifespan
from ._observable import HealthStatus, Observable, Observation
from ._public import publish as _publish
from .asgi import Receive, Scope, Send

__all__ = [
    "CheckResult",
    "HealthApp",
    "HealthCheck",
    "HealthChecks",
    "HealthReport",
    "HealthStatus",
]


_HEALTHY: Final = HealthStatus.HEALTHY
_DEGRADED: Final = HealthStatus.DEGRADED
_UNHEALTHY: Final = HealthStatus.UNHEALTHY

HealthCheck: TypeAlias = Callable[[], Awaitable[HealthStatus | None]]
"""The type of a check, an async function of no argument. It passes by
returning ``None`` (or ``HealthStatus.HEALTHY``), reports ``DEGRADED`` or
``UNHEALTHY`` by returning that status, and fails by raising an exception or
by outlasting its timeout."""

Details: TypeAlias = Mapping[str, "str | int | float | None"]


@final
@attrs.frozen(kw_only=True)
class CheckResult:
    """The outcome of one check in a :class:`HealthReport`.

    Attributes:
        name: The check's name.
        status: ``healthy``, ``degraded`` or ``unhealthy`` (a check that
            raised or timed out is ``unhealthy``).
        critical: Whether an ``unhealthy`` status makes the whole report
            ``unhealthy`` (otherwise it makes it ``degraded``).
        duration: Seconds the check took.
        error: The type of the exception it raised (``"ConnectionError"``,
            ``"asyncpg.exceptions.ConnectionDoesNotExistError"``), or
            ``"TimeoutError"`` when it outlasted its timeout; ``None`` when
            it did not fail.
        message: The exception's message, only when
            :func:`~layers.set_error_messages` is on; ``None`` otherwise.
        details: Figures that explain the status (a breaker's state, a
            limiter's queue length), never payloads. :meth:`to_dict` gives
            a NaN or an infinite figure as ``None``, so that the JSON body
            stays valid.
    """

    name: str
    status: HealthStatus
    critical: bool
    duration: float
    error: str | None = None
    message: str | None = None
    details: Details = attrs.field(factory=lambda: dict[str, Any]())

    def to_dict(self, *, errors: bool = False) -> dict[str, Any]:
        """A JSON-ready dict: status and criticality; with *errors*, the rest."""
        out: dict[str, Any] = {"status": self.status.value, "critical": self.critical}
        if errors:
            out["duration"] = self.duration
            out["error"] = self.error
            if self.message is not None:
                out["message"] = self.message
            out["details"] = {k: _json_number(v) for k, v in self.details.items()}
        return out


def _json_number(value: str | float | None) -> str | float | None:
    """*value*, or ``None`` for a NaN or an infinity, which JSON cannot hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@final
@attrs.frozen(kw_only=True)
class HealthReport:
    """The outcome of a run of every check of a :class:`HealthChecks`.

    Attributes:
        status: The overall status: ``unhealthy`` if a critical check is
            unhealthy; else ``degraded`` if any check is not healthy; else
            ``healthy`` (also with no checks at all).
        checks: One result per check, in registration order.
        checked_at: When the run started (anyio's clock,
            :func:`anyio.current_time`).
        duration: Seconds the run took (the slowest check).
    """

    status: HealthStatus
    checks: tuple[CheckResult, ...]
    checked_at: float
    duration: float

    def __getitem__(self, name: str) -> CheckResult:
        """The result of the check called *name*."""
        for result in self.checks:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self, *, errors: bool = False) -> dict[str, Any]:
        """A JSON-ready dict of the report.

        By default it shows statuses only: ``{"status": "degraded",
        "checks": {"db": {"status": "unhealthy", "critical": false}}}``. With
        *errors*, each check also shows its duration, error type, details and
        (when recorded, see :func:`~layers.set_error_messages`) message.
        """
        return {
            "status": self.status.value,
            "checks": {r.name: r.to_dict(errors=errors) for r in self.checks},
        }


_RANK: Final = {_HEALTHY: 0, _DEGRADED: 1, _UNHEALTHY: 2}


def _worst(one: HealthStatus, other: HealthStatus) -> HealthStatus:
    return one if _RANK[one] >= _RANK[other] else other


def _observed(layer: Observable) -> Observation:
    """``layer.observe()``, checked: a wrong return is a clear TypeError."""
    observation = cast(object, layer.observe())
    if not isinstance(observation, Observation):
        raise TypeError(
            f"{layer.name!r}.observe() must return a layers.Observation, "
            f"got {type(observation).__name__}"
        )
    return observation


def _overall(results: tuple[CheckResult, ...]) -> HealthStatus:
    status = _HEALTHY
    for result in results:
        if result.status is _UNHEALTHY and result.critical:
            return _UNHEALTHY
        if result.status is not _HEALTHY:
            status = _DEGRADED
    return status


@final
@attrs.frozen
class _Check:
    name: str
    function: (
        Callable[[], Awaitable[HealthStatus | None]]
        | Callable[[], Awaitable[tuple[HealthStatus, Details]]]
    )
    timeout: float
    critical: bool
    with_details: bool


@final
class _Flight:
    """A run under way, shared by every caller that arrives meanwhile."""

    __slots__ = ("done", "report")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.report: HealthReport | None = None


def _check_name(owner: str, name: object) -> str:
    return check_name(owner, "name", name)


def _check_seconds(owner: str, parameter: str, value: object, *, zero: bool) -> float:
    if zero:
        rule, accept = "a finite number of seconds >= 0", _at_least_zero
    else:
        rule, accept = "a finite number of seconds > 0", _above_zero
    return float(check_number(owner, parameter, value, rule, accept))


def _at_least_zero(value: float) -> bool:
    return value >= 0


def _above_zero(value: float) -> bool:
    return value > 0


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _require(owner: str, parameter: str, value: object, kind: Any, rule: str) -> None:
    if not isinstance(value, kind):
        fail_value(owner, parameter, value, rule)


def _check_bool(owner: str, parameter: str, value: object) -> bool:
    if not isinstance(value, bool):
        fail_value(owner, parameter, value, "True or False")
    return value


@final
class HealthChecks:
    """A registry of named health checks, run together into a :class:`HealthReport`.

    Checks run concurrently, each under its own timeout; a check that
    raises or outlasts its timeout is ``unhealthy`` (its exception type is
    recorded, its message only if :func:`~layers.set_error_messages`
    is on). A failing *critical* check makes the report ``unhealthy``; a
    failing non-critical check makes it ``degraded``.

    The last report is reused for *cache_ttl* seconds, and callers that ask
    while a run is under way wait for that run instead of starting another
    one: however many requests a health endpoint gets, each dependency sees
    at most one check per *cache_ttl* (and never two at once). If the caller
    whose task runs the checks is cancelled, the run is abandoned and the
    next waiting caller starts a fresh one.

    A registry belongs to one event loop at a time, as anyio's own
    primitives do; it is not thread-safe.

    Args:
        cache_ttl: Seconds a report is reused, a finite number >= 0
            (default 1; 0 turns caching off, but concurrent callers still
            share one run).
        default_timeout: The timeout of a check added without one, a finite
            number of seconds > 0 (default 5).

    Raises:
        layers.ConfigurationError: For an invalid value, naming it.

    Example:
        >>> import anyio
        >>> from layers.health import HealthChecks
        >>> checks = HealthChecks(cache_ttl=5)
        >>> async def database() -> None:
        ...     pass  # await pool.execute("SELECT 1")
        >>> async def search() -> None:
        ...     raise ConnectionError("search.internal:9200 refused")
        >>> checks.add("database", database, timeout=2)
        >>> checks.add("search", search, critical=False)
        >>> report = anyio.run(checks.run)
        >>> report.status, report["search"].status, report["search"].error
        (<HealthStatus.DEGRADED: 'degraded'>, <HealthStatus.UNHEALTHY: 'unhealthy'>, 'ConnectionError')
        >>> print(report["search"].message)
        None
    """  # noqa: E501

    __slots__ = (
        "_cache_ttl",
        "_cached",
        "_checks",
        "_default_timeout",
        "_expires",
        "_flight",
    )

    def __init__(self, *, cache_ttl: float = 1.0, default_timeout: float = 5.0) -> None:
        self._cache_ttl = _check_seconds(
            "HealthChecks", "cache_ttl", cache_ttl, zero=True
        )
        self._default_timeout = _check_seconds(
            "HealthChecks", "default_timeout", default_timeout, zero=False
        )
        self._checks: dict[str, _Check] = {}
        self._cached: HealthReport | None = None
        self._expires = -math.inf
        self._flight: _Flight | None = None

    @property
    def cache_ttl(self) -> float:
        """Seconds a report is reused."""
        return self._cache_ttl

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the checks, in registration order."""
        return tuple(self._checks)

    def _register(
        self,
        owner: str,
        name: object,
        function: Any,
        timeout: float | None,
        critical: object,
        with_details: bool,
    ) -> None:
        name = _check_name(owner, name)
        if name in self._checks:
            raise ConfigurationError(
                f"{owner}(name={name!r}): a check named {name!r} is already "
                f"registered; names must be unique"
            )
        seconds = (
            self._default_timeout
            if timeout is None
            else _check_seconds(owner, "timeout", timeout, zero=False)
        )
        self._checks[name] = _Check(
            name,
            function,
            seconds,
            _check_bool(owner, "critical", critical),
            with_details,
        )
        self.invalidate()

    def add(
        self,
        name: str,
        check: HealthCheck,
        *,
        timeout: float | None = None,
        critical: bool = True,
    ) -> None:
        """Register *check* under *name*.

        Args:
            name: A unique, non-empty name (the key in the report).
            check: An async function of no argument; see
                :data:`~layers.health.HealthCheck`.
            timeout: Seconds the check may take, a finite number > 0
                (default: the registry's *default_timeout*).
            critical: Whether its failure makes the report ``unhealthy``
                (default ``True``) rather than ``degraded``.

        Raises:
            layers.ConfigurationError: For a bad or duplicate name, a check
                that is not callable, or a bad timeout.
        """
        if not callable(check):
            raise ConfigurationError(
                f"HealthChecks.add(check={check!r}): check must be an async "
                f"callable of no argument, got {check!r}"
            )
        self._register("HealthChecks.add", name, check, timeout, critical, False)

    def check(
        self, name: str, *, timeout: float | None = None, critical: bool = True
    ) -> Callable[[HealthCheck], HealthCheck]:
        """Register the decorated function, as :meth:`add` does.

        Example::

            @checks.check("database", timeout=2)
            async def database() -> None:
                await pool.execute("SELECT 1")
        """

        def register(function: HealthCheck) -> HealthCheck:
            self.add(name, function, timeout=timeout, critical=critical)
            return function

        return register

    def add_layer(
        self,
        layer: Observable,
        *,
        name: str | None = None,
        max_waiting: int | None = None,
        critical: bool = False,
    ) -> None:
        """Register a check that reports the state of an observable *layer*.

        Any :class:`~layers.Observable` will do: a
        :class:`~layers.CircuitBreaker`, a :class:`~layers.RateLimit`, a
        :class:`~layers.ConcurrencyLimit`, a :class:`~layers.Drain`, a
        :class:`~layers.RetryBudget`, a :class:`~layers.PerKey`, or a layer
        of your own. Each run reads ``layer.observe()``
        (an :class:`~layers.Observation`); the check's status is the worst of:

        * the layer's own verdict (``Observation.status``): an open breaker
          is ``unhealthy``, a half-open one ``degraded``; a started drain is
          ``unhealthy`` (the instance is leaving); a retry budget that
          retries have used up is ``degraded``; a limit is ``healthy``;
        * ``degraded`` if the layer refused calls since the previous run of
          the check (since registration, the first time): a limit that
          sheds load is working as designed, so refusals alone never make
          the check ``unhealthy``;
        * ``degraded`` if more than *max_waiting* calls wait to get in.

        An ``unhealthy`` check makes the report ``unhealthy`` only with
        *critical*; otherwise ``degraded``, since the service answers,
        without that downstream (give a :class:`~layers.Drain`
        ``critical=True`` so that readiness fails once shutdown begins).
        The details give the layer's state and figures (calls in flight
        and waiting, refusals so far and since the previous run, a breaker's
        failure rate, the keys in a table).

        Args:
            layer: The layer to watch.
            name: The check's name (default: the layer's ``name``).
            max_waiting: The most waiting calls that still count as healthy,
                an int >= 0, or ``None`` (the default) to ignore the queue.
            critical: Whether an ``unhealthy`` layer makes the report
                ``unhealthy`` (default ``False``: ``degraded``).

        Raises:
            layers.ConfigurationError: If *layer* is not observable, for a
                bad or duplicate name, or a bad *max_waiting*.
        """
        owner = "HealthChecks.add_layer"
        if not isinstance(cast(object, layer), Observable):
            fail_value(
                owner,
                "layer",
                layer,
                "an Observable layer (a name, a kind and an observe() method)",
            )
        if max_waiting is not None and not _is_count(max_waiting):
            raise ConfigurationError(
                f"{owner}(max_waiting={max_waiting!r}): max_waiting "
                f"must be None or an int >= 0, got {max_waiting!r}"
            )
        first = _observed(layer)
        seen = [first.rejected or 0]

        async def layer_check() -> tuple[HealthStatus, Details]:
            observation = _observed(layer)
            status = observation.status
            details: dict[str, str | int | float | None] = {}
            if observation.state is not None:
                details["state"] = str(observation.state)
            if observation.in_flight is not None:
                details["in_flight"] = observation.in_flight
            waiting = observation.waiting
            if waiting is not None:
                details["waiting"] = waiting
                if max_waiting is not None and waiting > max_waiting:
                    status = _worst(status, _DEGRADED)
            rejected = observation.rejected
            if rejected is not None:
                refused = rejected - seen[0]
                seen[0] = rejected
                details["rejected"] = rejected
                details["rejected_since_last_check"] = refused
                if refused > 0:
                    status = _worst(status, _DEGRADED)
            details.update(observation.figures)
            return status, details

        self._register(
            owner,
            layer.name if name is None else name,
            layer_check,
            None,
            critical,
            True,
        )

    def remove(self, name: str) -> None:
        """Unregister the check called *name* (no error if there is none)."""
        if self._checks.pop(name, None) is not None:
            self.invalidate()

    def invalidate(self) -> None:
        """Forget the cached report: the next :meth:`run` checks again."""
        self._cached = None
        self._expires = -math.inf

    async def run(self) -> HealthReport:
        """Return a fresh or cached report (see the class docstring).

        Never raises for a failing check: the failure is in the report.
        """
        while True:
            cached = self._cached
            if cached is not None and base_time() < self._expires:
                return cached
            flight = self._flight
            if flight is None:
                return await self._lead()
            await flight.done.wait()
            if flight.report is not None:
                return flight.report
            # The caller that ran the checks was cancelled: start over.

    async def _lead(self) -> HealthReport:
        flight = self._flight = _Flight()
        try:
            report = await self._run_all()
            self._cached = report
            # on the base time, which keeps its meaning in a later run
            self._expires = base_time() + self._cache_ttl
            flight.report = report
        finally:
            self._flight = None
            flight.done.set()
        return report

    async def _run_all(self) -> HealthReport:
        checks = tuple(self._checks.values())
        results: list[CheckResult | None] = [None] * len(checks)
        started = anyio.current_time()
        async with anyio.create_task_group() as group:
            for index, check in enumerate(checks):
                group.start_soon(_run_one, check, results, index)
        done = tuple(r for r in results if r is not None)
        return HealthReport(
            status=_overall(done),
            checks=done,
            checked_at=started,
            duration=anyio.current_time() - started,
        )


async def _run_one(
    check: _Check, results: list[CheckResult | None], index: int
) -> None:
    started = anyio.current_time()
    status: HealthStatus = _UNHEALTHY
    details: Details = {}
    error: str | None = None
    message: str | None = None
    failure: Exception | None = None
    with anyio.move_on_after(check.timeout) as scope:
        try:
            outcome: Any = await check.function()
            if check.with_details:
                status, details = outcome
            elif outcome is None:
                status = _HEALTHY
            elif isinstance(outcome, HealthStatus):
                status = outcome
            else:
                error = "TypeError"
                if events.STATE.error_messages:
                    message = (
                        f"the check returned {outcome!r}; expected None or a "
                        f"HealthStatus"
                    )
        except BaseException as raised:
            # A failing check is a result, not an error. Cancelled while a
            # child task fails, a check raises both in a group: the failure
            # is the result, the cancellation goes on to its scope (ours at
            # the timeout, the caller's otherwise: never swallowed).
            failure, rest = split_failure(raised)
            if failure is not None:
                error = type_name(failure)
                if events.STATE.error_messages:
                    message = str(failure)
            if rest is not None:
                reraise(rest)
    if scope.cancel_called:
        # Still running at the timeout: whatever its cancellation raised (or
        # if it swallowed the cancellation), the check outlasted its timeout.
        status = _UNHEALTHY
        error = "TimeoutError"
        if events.STATE.error_messages:
            message = f"the check took longer than {check.timeout} s"
            if failure is not None:
                message += f"; cancelled, it raised {type_name(failure)}"
    results[index] = CheckResult(
        name=check.name,
        status=status,
        critical=check.critical,
        duration=anyio.current_time() - started,
        error=error,
        message=message,
        details=details,
    )


# ------------------------------------------------------------------- the app


def _path_value(owner: str, parameter: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigurationError(
            f"{owner}({parameter}={value!r}): {parameter} must be a path that "
            f"starts with '/', got {value!r}"
        )
    return value


def _status_code(value: object, attribute: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not (100 <= value <= 599)
    ):
        raise ConfigurationError(
            f"HealthApp({attribute}={value!r}): {attribute} must be an HTTP "
            f"status code (an int from 100 to 599), got {value!r}"
        )
    return value


@final
class HealthApp:
    """A tiny ASGI application that serves liveness and readiness probes.

    ``GET`` (or ``HEAD``) on *readiness_path* runs the *readiness* checks
    (through their cache) and answers 200 when the report is healthy or
    degraded, 503 when it is unhealthy (*degraded_status* changes the
    former). *liveness_path* does the same with the *liveness* checks; with
    none, it answers 200 as long as the event loop serves requests, which
    is what a liveness probe should ask (a dependency that is down must not
    get the process restarted).

    The body is JSON: ``{"status": "unhealthy", "checks": {"db":
    {"status": "unhealthy", "critical": true}}}``. It shows statuses only;
    with *expose_errors*, also each check's duration, details and error
    type (and message, if recorded: see
    :func:`~layers.set_error_messages`). Responses carry
    ``Cache-Control: no-store``.

    It needs no web framework and mounts anywhere: serve it alone, or mount
    it under Starlette or FastAPI (``app.mount("/health", HealthApp(...))``);
    paths are matched after the mount's ``root_path``. Any other path is a
    404, any other method a 405. It answers the ASGI lifespan protocol, so
    it can be served on its own by hypercorn (asyncio and trio) or uvicorn.

    Args:
        readiness: The checks behind *readiness_path*.
        liveness: The checks behind *liveness_path* (default: none).
        readiness_path: Default ``"/readyz"``.
        liveness_path: Default ``"/livez"``.
        expose_errors: Show error types and details in the body (default
            ``False``: statuses only).
        degraded_status: The HTTP status of a degraded report (default 200).
    """

    __slots__ = (
        "degraded_status",
        "expose_errors",
        "liveness",
        "liveness_path",
        "readiness",
        "readiness_path",
    )

    def __init__(
        self,
        readiness: HealthChecks,
        *,
        liveness: HealthChecks | None = None,
        readiness_path: str = "/readyz",
        liveness_path: str = "/livez",
        expose_errors: bool = False,
        degraded_status: int = 200,
    ) -> None:
        _require("HealthApp", "readiness", readiness, HealthChecks, "a HealthChecks")
        _require(
            "HealthApp",
            "liveness",
            liveness,
            (HealthChecks, type(None)),
            "None or a HealthChecks",
        )
        self.readiness = readiness
        self.liveness = liveness
        self.readiness_path = _path_value("HealthApp", "readiness_path", readiness_path)
        self.liveness_path = _path_value("HealthApp", "liveness_path", liveness_path)
        if self.readiness_path == self.liveness_path:
            raise ConfigurationError(
                f"HealthApp(readiness_path={readiness_path!r}, liveness_path="
                f"{liveness_path!r}): the two paths must differ"
            )
        self.expose_errors = _check_bool("HealthApp", "expose_errors", expose_errors)
        self.degraded_status = _status_code(degraded_status, "degraded_status")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (``http`` or ``lifespan``)."""
        kind = scope["type"]
        if kind == "lifespan":
            await answer_lifespan(receive, send)
            return
        if kind != "http":
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path == self.readiness_path:
            checks: HealthChecks | None = self.readiness
        elif path == self.liveness_path:
            checks = self.liveness
        else:
            await _respond(send, 404, {"error": "not found"}, scope)
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(
                send, 405, {"error": "method not allowed"}, scope, allow=True
            )
            return
        if checks is None:
            body: dict[str, Any] = {"status": _HEALTHY.value, "checks": {}}
            code = 200
        else:
            report = await checks.run()
            body = report.to_dict(errors=self.expose_errors)
            code = {
                _HEALTHY: 200,
                _DEGRADED: self.degraded_status,
                _UNHEALTHY: 503,
            }[report.status]
        await _respond(send, code, body, scope)


async def _respond(
    send: Send, code: int, body: Mapping[str, Any], scope: Scope, *, allow: bool = False
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if allow:
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    head = scope.get("method") == "HEAD"
    await send({"type": "http.response.body", "body": b"" if head else payload})


_publish(__name__, __all__)
