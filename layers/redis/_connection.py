"""The connection the shared layers use: a coredis client, keys, guarded scripts."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, cast, final
from urllib.parse import quote, urlsplit

import anyio
import anyio.lowlevel
import coredis
import coredis.exceptions
from coredis.commands.script import Script
from coredis.retry import NoRetryPolicy

from .._backend import current_time, timeout_call
from .._breaker import CircuitBreaker
from .._config import check_name, check_number, fail_value
from .._core import Service
from .._deadline import current_deadline
from .._errors import CircuitOpen, StoreError
from .._failures import reraise, wraps_only
from .._host import BackgroundHost

__all__ = ["RedisConnection"]

Client: TypeAlias = "coredis.Redis[Any] | coredis.RedisCluster[Any]"
"""A coredis client: a single server (or sentinel-managed) or a cluster."""

Value: TypeAlias = "str | bytes | int | float"

Command: TypeAlias = "tuple[Script[Any], Sequence[str], Sequence[Value]]"
"""One EVALSHA: the script, its keys, its arguments."""


# What a failing Redis raises through coredis: its own errors, the socket's,
# and our own timeout on each command (a TimeoutError).
_FAILURES = (coredis.exceptions.RedisError, OSError, TimeoutError)

DEFAULT_TIMEOUT = 0.25


def default_guard() -> CircuitBreaker:
    """The breaker that guards a connection unless one is given.

    It opens after 3 failures in a row (an error or a timeout), so a dead
    Redis costs three timeouts and then none: while it is open, a call
    fails at once and the layer applies its policy. It lets one probe
    through after 1 s, then after twice as long each time the probe fails,
    up to 30 s.
    """
    return CircuitBreaker(
        name="redis_guard",
        on=StoreError,
        consecutive_failures=3,
        failure_rate_threshold=1.0,
        open_duration=1.0,
        open_duration_growth=2.0,
        max_open_duration=30.0,
        probes=1,
    )


class RedisConnection(BackgroundHost):
    """A coredis client, made ready for the shared layers.

    The application owns its client and its pool: pass a connected
    ``coredis.Redis`` (or ``coredis.RedisCluster``) client, entered with
    ``async with`` as coredis requires; or open one from a URL for the
    simple case with :meth:`from_url`. One connection serves every shared
    layer of a process.

    Every command a layer sends runs under *timeout* and under the caller's
    deadline (:func:`~layers.current_deadline`, whichever is sooner), and
    through a breaker, *guard*, that fails fast while Redis is down: a
    layer then applies its store's failure policy at once instead of
    waiting out a timeout per call. Scripts are sent with EVALSHA and
    loaded again if the server answers NOSCRIPT (after a restart, say).

    Keys are ``<prefix>:<kind>:{<name>}...``: the part in braces is a
    Redis Cluster hash tag, so the keys of one limit share a slot.

    A connection is also an async context manager that owns a task group
    for the shared layers' background work (the renewal of the permits of
    a :class:`~layers.redis.RedisConcurrencyStore`, its subscription to
    releases). :meth:`from_url` enters it for you; with a client of your
    own, enter the connection too, for as long as the layers are used::

        async with coredis.Redis(...) as client:
            async with RedisConnection(client) as redis:
                ...

    Leaving the block cancels the background work. A store that needs it
    raises :class:`RuntimeError` when used with a connection that is not
    entered. A connection may be entered once at a time.

    Give your client ``retry_policy=NoRetryPolicy()`` (``coredis.retry``),
    as :meth:`from_url` does: coredis's default sends a command again after
    a connection error, and a script that ran but whose reply was lost
    would be charged twice. Its replies may be decoded or not.

    Args:
        client: A coredis client, already entered.
        prefix: The first part of every key (a non-empty string).
        timeout: Seconds each command may take (> 0; default 0.25).
        guard: The breaker that guards the commands (default: opens after 3
            failures in a row, see :func:`default_guard`); its ``on=``
            should cover :class:`~layers.StoreError`, which every failure
            is raised as.

    Raises:
        ConfigurationError: An argument is of the wrong type or out of range.
    """

    __slots__ = ("_guarded", "_timed", "client", "guard", "prefix", "timeout")

    enter_hint: ClassVar[str] = (
        "use `async with RedisConnection(client) as redis:` around the code that "
        "uses the shared layers (RedisConnection.from_url(url) enters it for you)"
    )

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "layers",
        timeout: float = DEFAULT_TIMEOUT,
        guard: CircuitBreaker | None = None,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(cast(object, client), (coredis.Redis, coredis.RedisCluster)):
            fail_value(
                owner,
                "client",
                client,
                "a coredis.Redis or coredis.RedisCluster client",
            )
        self.client: Client = client
        self.prefix = check_name(owner, "prefix", prefix)
        if "{" in prefix or "}" in prefix:
            # A brace would make the prefix the keys' cluster hash tag.
            fail_value(owner, "prefix", prefix, "a non-empty string without braces")
        self.timeout = check_number(
            owner, "timeout", timeout, "a finite number of seconds > 0", lambda v: v > 0
        )
        if guard is not None and not isinstance(cast(object, guard), CircuitBreaker):
            fail_value(owner, "guard", guard, "None or a CircuitBreaker")
        self.guard = default_guard() if guard is None else guard
        self._guarded: Service[Command, Any] = self.guard.layer(self._evalsha)
        self._timed = _CommandTimeout(self._command, self.timeout)
        super().__init__()

    @classmethod
    @contextlib.asynccontextmanager
    async def from_url(
        cls,
        url: str,
        *,
        prefix: str = "layers",
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (each command's)
        guard: CircuitBreaker | None = None,
    ) -> AsyncGenerator[RedisConnection]:
        """Open a client for *url* for the block.

        ``async with RedisConnection.from_url(url) as redis: ...``; the
        client is closed when the block ends. *url* is
        ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...``
        (TLS) or ``unix:///path/to/redis.sock[?db=n]``, with coredis's
        query options. The client decodes replies and does not retry a
        failed command (coredis's default retries twice: a script that ran
        but whose reply was lost would count twice). The other arguments
        are those of the class. An exception raised in the block comes out
        of it as it was raised (not in an exception group).

        Raises:
            ConfigurationError: *url* is not such a URL, or an argument is
                of the wrong type or out of range (before connecting).
        """
        if not isinstance(cast(object, url), str) or urlsplit(url).scheme not in (
            "redis",
            "rediss",
            "unix",
        ):
            fail_value(
                "RedisConnection.from_url",
                "url",
                url,
                "a str URL whose scheme is redis://, rediss:// or unix:// (for "
                "a cluster or a sentinel, make the coredis client and pass it "
                "to RedisConnection(client))",
            )
        # No retry inside the client: a script that ran but whose reply was
        # lost would be charged twice; the layers' own policy decides instead.
        client: coredis.Redis[Any] = coredis.Redis.from_url(
            url, decode_responses=True, retry_policy=NoRetryPolicy()
        )
        # Checked before the client is entered: a bad option is a plain error.
        connection = cls(client, prefix=prefix, timeout=timeout, guard=guard)
        raised: BaseException | None = None
        try:
            async with client, connection:
                try:
                    yield connection
                except BaseException as error:
                    raised = error
                    raise
        except BaseExceptionGroup as failed:
            # The client's own task group wraps the block's exception.
            if raised is None or not wraps_only(failed, raised):
                raise
            reraise(raised)

    def key(self, kind: str, name: str, *rest: str) -> str:
        """The key ``<prefix>:<kind>:{<name>}[:<rest>...]`` (``{...}``: a hash tag)."""
        tail = "".join(f":{part}" for part in rest)
        return f"{self.prefix}:{kind}:{{{name}}}{tail}"

    def script(self, source: str) -> Script[Any]:
        """Register a Lua script with the client; run it with :meth:`run`."""
        return self.client.register_script(source)

    async def run(
        self,
        script: Script[Any],
        keys: Sequence[str],
        args: Sequence[Value],
    ) -> Any:
        """Run *script* on the server: its reply, or :class:`~layers.StoreError`.

        Under the connection's *timeout* and the caller's deadline, through
        the guard.
        Cancellation passes through unchanged (coredis drops the reply of a
        cancelled command, so the connection stays usable).
        """
        try:
            return await self._guarded((script, keys, args))
        except CircuitOpen as error:
            raise StoreError(
                f"Redis is failing; its guard breaker {self.guard.name!r} is open",
                store=self.prefix,
            ) from error

    async def _evalsha(self, request: Command, /) -> Any:
        deadline = current_deadline()
        # Under a caller's deadline sooner than our timeout, the caller's own
        # cancel scope (its Timeout layer) ends the command, as cancellation:
        # that is not a failure of Redis, and the guard does not count it.
        try:
            if deadline is None or deadline - current_time() >= self.timeout:
                return await self._timed(request)
            return await self._command(request)
        except _FAILURES as error:
            # coredis reports a cancellation that arrives while it opens a
            # connection as a ConnectionError: if the caller was cancelled,
            # let that cancellation through instead (it is not Redis's fault).
            await anyio.lowlevel.checkpoint_if_cancelled()
            kind = "timed out" if isinstance(error, TimeoutError) else "failed"
            raise StoreError(
                f"a Redis command {kind} ({type(error).__name__})", store=self.prefix
            ) from error

    async def _command(self, request: Command, /) -> Any:
        # EVALSHA straight on the client (a Script's own call wraps the
        # command in a retry and a transform: 80 us more CPU per call,
        # measured); NOSCRIPT loads the script and sends it again.
        script, keys, args = request
        client = self.client
        try:
            return await client.evalsha(script.sha, keys=keys, args=args)
        except coredis.exceptions.NoScriptError:
            await client.script_load(script.script)
            return await client.evalsha(script.sha, keys=keys, args=args)

    def __repr__(self) -> str:
        return (
            f"RedisConnection({self.client!r}, prefix={self.prefix!r}, "
            f"timeout={self.timeout!r})"
        )


@final
class _CommandTimeout:
    """The connection's own timeout on each command: layers' timer wheel.

    :func:`~layers._backend.timeout_call` as the Timeout layer uses it (no
    cancel scope per command: anyio's ``fail_after`` cost 10-20 us more per
    command here), without the layer's event: the failure is reported once,
    as the store's.
    """

    __slots__ = ("inner", "seconds")

    def __init__(
        self, inner: Callable[[Command], Awaitable[Any]], seconds: float
    ) -> None:
        self.inner: Callable[[Command], Awaitable[Any]] = inner
        self.seconds: float = seconds

    if TYPE_CHECKING:

        async def __call__(self, request: Command, /) -> Any:
            """Run the command under the timeout."""
            ...

    else:
        __call__ = timeout_call

    def elapsed(self) -> BaseException:
        return TimeoutError(f"a Redis command took more than {self.seconds} s")


def tag(name: str) -> str:
    """*name* as it stands in a key's hash tag: percent-encoded as UTF-8.

    Letters, digits and ``_.-~`` stay as they are; a brace cannot end the
    hash tag early (``}db`` would make it empty, so that Redis Cluster would
    hash each key of the limit to its own slot).
    """
    return quote(name, safe="", errors="surrogatepass")


def finite(value: float) -> float:
    """*value*, or a large finite number for an infinite one (no inf in Lua)."""
    return value if math.isfinite(value) else 1e300
