"""layers.redis.RedisConnection on a real redis-server: scripts, timeouts, guard."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("coredis")

import coredis
from redis_server import RedisServer

import layers
from layers import ConfigurationError, StoreError
from layers.redis import RedisConnection

pytestmark = [pytest.mark.anyio, pytest.mark.realtime, pytest.mark.timeout(60)]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends on the real clock: the tests wait on a real server."""
    return str(request.param)


SLOW = """
local start = redis.call('TIME')
local t0 = tonumber(start[1]) + tonumber(start[2]) / 1e6
while true do
  local now = redis.call('TIME')
  if tonumber(now[1]) + tonumber(now[2]) / 1e6 - t0 > tonumber(ARGV[1]) then break end
end
return 'done'
"""


async def test_a_script_runs_and_is_loaded_again_after_script_flush(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """EVALSHA, and NOSCRIPT (after a restart or SCRIPT FLUSH) loads it again."""
    script = redis.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    key = redis.key("test", "counter")
    assert await redis.run(script, [key], [2]) == 2
    redis_server.command("SCRIPT", "FLUSH")
    assert await redis.run(script, [key], [3]) == 5


def test_keys_carry_the_prefix_and_a_hash_tag() -> None:
    """<prefix>:<kind>:{<name>}: the braces are a cluster hash tag."""
    client: Any = coredis.Redis()
    connection = RedisConnection(client, prefix="app")
    assert connection.key("rate", "partner") == "app:rate:{partner}"
    assert connection.key("conc", "db", "leases") == "app:conc:{db}:leases"


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"prefix": ""}, "prefix"),
        ({"prefix": 3}, "prefix"),
        ({"prefix": "app{1}"}, "prefix"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"guard": object()}, "guard"),
    ],
)
def test_bad_options_name_the_parameter(
    options: dict[str, Any], parameter: str
) -> None:
    """Each bad option raises ConfigurationError naming it."""
    client: Any = coredis.Redis()
    with pytest.raises(ConfigurationError, match=parameter):
        RedisConnection(client, **options)


def test_a_client_that_is_not_coredis_is_refused() -> None:
    """Only a coredis client will do."""
    with pytest.raises(ConfigurationError, match="client"):
        RedisConnection(object())  # type: ignore[arg-type]


async def test_a_slow_command_times_out_as_a_store_error(redis_url: str) -> None:
    """A command that outlasts the timeout raises StoreError from TimeoutError."""
    async with RedisConnection.from_url(redis_url, timeout=0.05) as redis:
        slow = redis.script(SLOW)
        with pytest.raises(StoreError, match="timed out") as caught:
            await redis.run(slow, [redis.key("t", "slow")], [0.3])
        assert isinstance(caught.value.__cause__, TimeoutError)
        await anyio.sleep(0.4)  # let the script finish on the server
        # the connection is still usable, and its replies are in order
        echo = redis.script("return ARGV[1]")
        for word in ("a", "b", "c"):
            assert await redis.run(echo, [redis.key("t", "echo")], [word]) == word


async def test_cancelled_while_waiting_for_redis_leaves_the_connection_usable(
    redis: RedisConnection,
) -> None:
    """Cancellation passes through unchanged and loses no later reply."""
    slow = redis.script(SLOW)
    with anyio.move_on_after(0.05) as scope:
        await redis.run(slow, [redis.key("t", "slow")], [0.2])
    assert scope.cancelled_caught
    echo = redis.script("return ARGV[1]")
    assert await redis.run(echo, [redis.key("t", "e")], ["after"]) == "after"
    assert redis.guard.statistics().state == "closed"


async def test_a_dead_redis_costs_three_timeouts_then_none(
    own_redis_server: RedisServer,
) -> None:
    """The guard opens after 3 failures: later calls fail at once, then it recovers."""
    async with RedisConnection.from_url(own_redis_server.url, timeout=0.2) as redis:
        echo = redis.script("return ARGV[1]")
        key = redis.key("t", "e")
        assert await redis.run(echo, [key], ["up"]) == "up"
        own_redis_server.pause()  # frozen: every command times out
        try:
            for _ in range(3):
                with pytest.raises(StoreError, match="timed out"):
                    await redis.run(echo, [key], ["x"])
            start = anyio.current_time()
            for _ in range(20):
                with pytest.raises(StoreError, match="guard") as caught:
                    await redis.run(echo, [key], ["x"])
                assert isinstance(caught.value.__cause__, layers.CircuitOpen)
            assert anyio.current_time() - start < 0.2  # no timeout was waited out
        finally:
            own_redis_server.resume()
        await anyio.sleep(1.1)  # the guard's open duration: a probe goes through
        assert await redis.run(echo, [key], ["back"]) == "back"
        assert redis.guard.statistics().state == "closed"


async def test_a_stopped_redis_fails_fast_with_a_store_error(
    own_redis_server: RedisServer,
) -> None:
    """A refused connection is a StoreError too, and the client reconnects after."""
    async with RedisConnection.from_url(own_redis_server.url) as redis:
        echo = redis.script("return ARGV[1]")
        key = redis.key("t", "e")
        assert await redis.run(echo, [key], ["up"]) == "up"
        own_redis_server.stop()
        with pytest.raises(StoreError):
            await redis.run(echo, [key], ["down"])
        own_redis_server.start()
        with anyio.fail_after(10):
            while True:  # the guard may be open for a while: wait for a probe
                try:
                    assert await redis.run(echo, [key], ["again"]) == "again"
                    break
                except StoreError:
                    await anyio.sleep(0.1)


async def test_the_callers_deadline_bounds_a_command(redis: RedisConnection) -> None:
    """Under a Timeout shorter than the store's, the caller's deadline wins."""
    slow = redis.script(SLOW)

    async def call(_: None) -> Any:
        return await redis.run(slow, [redis.key("t", "slow")], [0.3])

    service = layers.ServiceBuilder().timeout(0.05).service(call)
    start = anyio.current_time()
    with pytest.raises(layers.Elapsed):
        await service(None)
    assert anyio.current_time() - start < 0.2
    # The caller's deadline is not Redis's failure: the guard did not count it.
    assert redis.guard.statistics().consecutive_failures == 0
    await anyio.sleep(0.3)


async def test_a_connection_owns_a_task_group_for_background_work(
    redis_url: str,
) -> None:
    """Entered, it runs background work until its block ends, then cancels it."""
    ran = anyio.Event()
    ended: list[str] = []

    async def background(label: str) -> None:
        ran.set()
        try:
            await anyio.sleep_forever()
        finally:
            ended.append(label)

    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        connection = RedisConnection(client)
        assert not connection.entered
        with pytest.raises(RuntimeError, match=r"async with RedisConnection\(client\)"):
            connection.start_soon(functools.partial(background, "early"))
        async with connection as entered:
            assert entered is connection
            assert connection.entered
            with pytest.raises(RuntimeError, match="already entered"):
                await connection.__aenter__()
            connection.start_soon(functools.partial(background, "work"))
            with anyio.fail_after(5):
                await ran.wait()
            assert ended == []
        assert ended == ["work"]
        assert not connection.entered
        async with connection:  # once left, it may be entered again
            assert connection.entered


async def test_from_url_enters_the_connection(redis_url: str) -> None:
    """RedisConnection.from_url gives a connection that is already entered."""
    async with RedisConnection.from_url(redis_url) as redis:
        assert redis.entered
    assert not redis.entered


async def test_cancelled_while_connecting_is_a_cancellation_not_a_store_error(
    redis: RedisConnection, redis_url: str
) -> None:
    """A cancellation while coredis opens a connection is not Redis failing.

    coredis reports it as a ConnectionError; the connection lets the
    caller's cancellation through instead, and its guard does not count it.
    """
    busy = redis.script(SLOW)
    async with RedisConnection.from_url(redis_url, timeout=1.0) as fresh:
        echo = fresh.script("return ARGV[1]")
        async with anyio.create_task_group() as group:
            # Redis runs one script at a time: the new connection's
            # handshake waits behind this one.
            group.start_soon(redis.run, busy, [redis.key("t", "busy")], [0.2])
            await anyio.sleep(0.03)
            with anyio.move_on_after(0.05) as scope:
                await fresh.run(echo, [fresh.key("t", "e")], ["x"])
            assert scope.cancelled_caught
        assert fresh.guard.statistics().consecutive_failures == 0
        assert await fresh.run(echo, [fresh.key("t", "e")], ["y"]) == "y"


@pytest.mark.parametrize(
    ("url", "options", "parameter"),
    [
        (None, {}, "url"),
        (b"redis://127.0.0.1:6379/0", {}, "url"),
        ("", {}, "url"),
        ("127.0.0.1:6379", {}, "url"),  # no scheme
        ("http://127.0.0.1:6379/0", {}, "url"),
        ("redis+cluster://127.0.0.1:7000", {}, "url"),  # a URL of `limits`
        ("redis://127.0.0.1:6379/0", {"timeout": 0}, "timeout"),
        ("redis://127.0.0.1:6379/0", {"prefix": ""}, "prefix"),
        ("redis://127.0.0.1:6379/0", {"guard": "breaker"}, "guard"),
    ],
)
async def test_from_url_refuses_bad_arguments_before_connecting(
    url: Any, options: dict[str, Any], parameter: str
) -> None:
    """A bad URL or option is a plain ConfigurationError naming it, at once.

    Not an error at the first command (a URL coredis cannot use would fail
    every call as "Redis unavailable"), nor one wrapped in the client's
    exception groups.
    """
    with pytest.raises(
        ConfigurationError, match=rf"RedisConnection(\.from_url)?\({parameter}="
    ) as caught:
        async with RedisConnection.from_url(url, **options):
            pytest.fail("entered")  # pragma: no cover
    assert "RedisConnection" in str(caught.value)


async def test_from_url_takes_redis_and_unix_socket_urls(
    redis_server_on_path: str, tmp_path: Path
) -> None:
    """``redis://host:port/db`` and ``unix:///path?db=n`` both connect."""
    socket_path = tmp_path / "redis.sock"
    with RedisServer(tmp_path / "redis", unix_socket=socket_path) as server:
        for url in (server.url, f"unix://{socket_path}?db=2"):
            async with RedisConnection.from_url(url) as redis:
                echo = redis.script("return ARGV[1]")
                assert await redis.run(echo, [redis.key("t", "e")], [url]) == url


async def test_an_error_in_the_block_comes_out_as_it_was_raised(redis_url: str) -> None:
    """The connection's task group does not wrap the block's own exception.

    ``except`` around ``async with RedisConnection...`` sees the error the
    block raised, not an exception group of one (or two, from_url's client
    adding its own): the background work never raises.
    """
    with pytest.raises(KeyError, match="from the block"):
        async with RedisConnection.from_url(redis_url):
            raise KeyError("from the block")
    group = ExceptionGroup("the block's own", [KeyError(1), ValueError(2)])
    with pytest.raises(ExceptionGroup) as caught:
        async with RedisConnection.from_url(redis_url):
            raise group
    assert caught.value is group
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        with pytest.raises(layers.StoreUnavailable):
            async with RedisConnection(client):
                raise layers.StoreUnavailable("refused")
