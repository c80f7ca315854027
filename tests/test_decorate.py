"""Tests of ServiceBuilder.decorate and Arguments: a stack around any async def."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import layers
from layers import Arguments, ServiceBuilder

pytestmark = pytest.mark.anyio


def recorder() -> tuple[list[Arguments], layers.LayerFn[Any, Any, Any, Any]]:
    """A layer that records the requests that pass it."""
    seen: list[Arguments] = []

    def wrap(inner: Callable[[Any], Awaitable[Any]]) -> Any:
        async def record(request: Arguments) -> Any:
            seen.append(request)
            return await inner(request)

        return record

    return seen, layers.layer_fn(wrap)


# -- every kind of signature -----------------------------------------------------------


async def test_positional_keyword_only_and_defaults() -> None:
    """Positional, keyword-only and default parameters reach the function as given."""
    seen, record = recorder()

    @ServiceBuilder().timeout(5).layer(record).decorate
    async def get_user(
        session: str, user_id: int, *, fields: list[str] | None = None
    ) -> tuple[str, int, list[str] | None]:
        return session, user_id, fields

    assert await get_user("db", 42) == ("db", 42, None)
    assert await get_user("db", user_id=7, fields=["name"]) == ("db", 7, ["name"])
    first, second = seen
    assert first.args == ("db", 42)
    assert dict(first.kwargs) == {}
    assert first["session"] == "db"
    assert first["user_id"] == 42
    assert first["fields"] is None  # the default, applied
    assert second.args == ("db",)
    assert dict(second.kwargs) == {"user_id": 7, "fields": ["name"]}
    assert second["user_id"] == 7
    assert dict(second.arguments) == {
        "session": "db",
        "user_id": 7,
        "fields": ["name"],
    }


async def test_positional_only_and_variadic() -> None:
    """Positional-only parameters, *args and **kwargs bind as inspect binds them."""
    seen, record = recorder()

    @ServiceBuilder().layer(record).decorate
    async def send(
        channel: str, /, *messages: str, priority: int = 0, **headers: str
    ) -> tuple[Any, ...]:
        return channel, messages, priority, headers

    result = await send("ops", "a", "b", priority=2, trace="t1")
    assert result == ("ops", ("a", "b"), 2, {"trace": "t1"})
    (arguments,) = seen
    assert arguments["channel"] == "ops"
    assert arguments["messages"] == ("a", "b")
    assert arguments["priority"] == 2
    assert arguments["headers"] == {"trace": "t1"}
    assert list(arguments.arguments) == ["channel", "messages", "priority", "headers"]
    # a keyword named like the positional-only parameter goes to **headers
    assert await send("ops", channel="x") == ("ops", (), 0, {"channel": "x"})
    assert seen[-1]["channel"] == "ops"
    assert seen[-1]["headers"] == {"channel": "x"}


async def test_no_parameters() -> None:
    """A function of no arguments can be decorated too."""

    @ServiceBuilder().timeout(1).decorate
    async def ping() -> str:
        return "pong"

    assert await ping() == "pong"


async def test_errors_pass_through_unchanged() -> None:
    """The function's own exception reaches the caller as it was raised."""
    error = LookupError("no such user")

    @ServiceBuilder().timeout(5).concurrency_limit(2).decorate
    async def get(user_id: int) -> None:
        raise error

    with pytest.raises(LookupError) as caught:
        await get(1)
    assert caught.value is error


async def test_a_call_that_does_not_fit_raises_pythons_type_error() -> None:
    """A wrong call fails as the function's own call would, inside the stack."""

    @ServiceBuilder().timeout(5).decorate
    async def get(session: str, user_id: int) -> int:
        return user_id

    with pytest.raises(TypeError, match="user_id"):
        await get("db")  # type: ignore[call-arg]


# -- methods ---------------------------------------------------------------------------

api = ServiceBuilder().timeout(5).concurrency_limit(10)


class Users:
    """Methods of every kind, decorated."""

    def __init__(self, name: str) -> None:
        self.name = name

    @api.decorate
    async def get(self, user_id: int) -> tuple[str, int]:
        """Get a user."""
        return self.name, user_id

    @api.decorate
    @classmethod
    async def above_classmethod(cls, value: int) -> tuple[type[Users], int]:
        return cls, value

    @classmethod
    @api.decorate
    async def below_classmethod(cls, value: int) -> tuple[type[Users], int]:
        return cls, value

    @api.decorate
    @staticmethod
    async def above_staticmethod(value: int) -> int:
        return value

    @staticmethod
    @api.decorate
    async def below_staticmethod(value: int) -> int:
        return value


class Admins(Users):
    """A subclass: cls is the class the method is called on."""


async def test_a_method_binds_per_instance() -> None:
    """Each instance's calls carry their own self, first among the arguments."""
    seen, record = recorder()

    class Repo:
        def __init__(self, name: str) -> None:
            self.name = name

        @ServiceBuilder().layer(record).decorate
        async def get(self, user_id: int) -> tuple[str, int]:
            return self.name, user_id

    a, b = Repo("a"), Repo("b")
    assert await a.get(1) == ("a", 1)
    assert await b.get(user_id=2) == ("b", 2)
    assert await Repo.get(a, 3) == ("a", 3)
    assert [each["self"] for each in seen] == [a, b, a]
    assert seen[0].args == (a, 1)
    assert inspect.signature(a.get) == inspect.signature(Repo("x").get)
    assert list(inspect.signature(a.get).parameters) == ["user_id"]


async def test_classmethods_and_staticmethods_either_order() -> None:
    """@decorate above or below @classmethod/@staticmethod: both work, cls is bound."""
    users = Users("u")
    assert await users.get(5) == ("u", 5)
    assert await Users.above_classmethod(1) == (Users, 1)
    assert await Admins.above_classmethod(1) == (Admins, 1)
    assert await users.above_classmethod(2) == (Users, 2)
    assert await Users.below_classmethod(3) == (Users, 3)
    assert await Admins.below_classmethod(3) == (Admins, 3)
    assert await Users.above_staticmethod(4) == 4
    assert await users.above_staticmethod(4) == 4
    assert await Users.below_staticmethod(5) == 5
    assert isinstance(vars(Users)["above_classmethod"], classmethod)
    assert isinstance(vars(Users)["above_staticmethod"], staticmethod)
    assert list(inspect.signature(Users.above_classmethod).parameters) == ["value"]
    assert list(inspect.signature(Users.above_staticmethod).parameters) == ["value"]


async def test_the_classmethod_sees_cls_among_the_arguments() -> None:
    """A classmethod's cls is the first argument in the request."""
    seen, record = recorder()

    class Repo:
        @ServiceBuilder().layer(record).decorate
        @classmethod
        async def make(cls, name: str) -> str:
            return f"{cls.__name__}:{name}"

    assert await Repo.make("x") == "Repo:x"
    assert seen[0]["cls"] is Repo
    assert seen[0]["name"] == "x"


async def test_bound_methods_and_async_callables() -> None:
    """A bound method or an object with an async __call__ is decorated as it is."""
    seen, record = recorder()

    class Client:
        async def get(self, path: str) -> str:
            return f"got {path}"

    class Handler:
        async def __call__(self, job: str, *, urgent: bool = False) -> str:
            return f"{job} {urgent}"

    builder = ServiceBuilder().layer(record)
    get = builder.decorate(Client().get)
    handle = builder.decorate(Handler())
    partial = builder.decorate(functools.partial(Handler(), urgent=True))
    assert await get("/a") == "got /a"
    assert await handle("j") == "j False"
    assert await partial("p") == "p True"
    assert seen[0]["path"] == "/a"
    assert seen[1]["urgent"] is False
    assert seen[2]["urgent"] is True
    assert list(inspect.signature(handle).parameters) == ["job", "urgent"]


# -- what the decorated function is ----------------------------------------------------


async def test_each_function_keeps_its_own_name_doc_and_signature() -> None:
    """Each keeps its __name__, __qualname__, __doc__, __wrapped__ and signature."""
    builder = ServiceBuilder().timeout(5)

    async def fetch(url: str, *, retries: int = 1) -> bytes:
        """Fetch a URL."""
        return url.encode()

    async def store(key: str, value: bytes) -> None:
        """Store a value."""

    decorated_fetch = builder.decorate(fetch)
    decorated_store = builder.decorate(store)
    for decorated, original in ((decorated_fetch, fetch), (decorated_store, store)):
        assert decorated is not original
        assert decorated.__name__ == original.__name__
        assert decorated.__qualname__ == original.__qualname__
        assert decorated.__doc__ == original.__doc__
        assert decorated.__module__ == original.__module__
        assert decorated.__wrapped__ is original  # type: ignore[attr-defined]
        assert inspect.signature(decorated) == inspect.signature(original)
        assert inspect.iscoroutinefunction(decorated)
    assert decorated_fetch.__qualname__.endswith("<locals>.fetch")
    assert await decorated_fetch("u") == b"u"


async def test_the_stack_shows_in_layers_of_and_describe_stack() -> None:
    """The decorated function carries the stack's marks; its repr keeps its name."""
    timeout, limit = layers.Timeout(5), layers.ConcurrencyLimit(3)

    @ServiceBuilder().layer(timeout).layer(limit).decorate
    async def get_user(user_id: int) -> int:
        return user_id

    assert layers.layers_of(get_user) == (timeout, limit)
    assert layers.describe_stack(get_user).splitlines() == [
        repr(timeout),
        f"└─ {limit!r}",
        "   └─ test_the_stack_shows_in_layers_of_and_describe_stack.<locals>.get_user",
    ]
    assert "get_user at" in repr(get_user)
    assert " > " not in get_user.__qualname__

    @ServiceBuilder().decorate
    async def bare(x: int) -> int:
        return x

    assert layers.layers_of(bare) == ()
    assert await bare(3) == 3


async def test_a_sync_function_or_non_callable_is_refused() -> None:
    """ServiceBuilder.decorate refuses what it cannot await, naming it."""

    def sync(x: int) -> int:
        return x

    with pytest.raises(layers.ConfigurationError, match=r"decorate\(function=.*sync"):
        ServiceBuilder().decorate(sync)  # type: ignore[arg-type]
    with pytest.raises(layers.ConfigurationError, match="got int"):
        ServiceBuilder().decorate(3)  # type: ignore[call-overload]


# -- @builder (the service form) refuses what it cannot call ---------------------------


def test_builder_as_decorator_refuses_a_function_of_several_arguments() -> None:
    """@builder on a multi-argument function fails at once, pointing to decorate."""
    with pytest.raises(layers.ConfigurationError) as caught:

        @ServiceBuilder().timeout(2)  # type: ignore[arg-type]
        async def get(session: str, user_id: int, *, fields: Any = None) -> None: ...

    message = str(caught.value)
    assert "ServiceBuilder.service(inner=" in message
    assert "(session: 'str', user_id: 'int', *, fields: 'Any' = None)" in message
    assert "decorate" in message


def test_builder_as_decorator_refuses_a_method_in_a_class_body() -> None:
    """A method (self, request) written in a class body cannot be a service."""
    with pytest.raises(layers.ConfigurationError, match="decorate"):

        class Api:
            @ServiceBuilder().timeout(2)  # type: ignore[arg-type]
            async def get(self, request: str) -> str:
                return request

    with pytest.raises(layers.ConfigurationError, match="one request"):

        @ServiceBuilder()  # type: ignore[arg-type]
        async def nothing() -> None: ...


async def test_builder_as_decorator_keeps_the_one_request_form() -> None:
    """A function of one parameter (or with optional extras) is still a service."""

    @ServiceBuilder().timeout(2)
    async def echo(request: str) -> str:
        return request

    async def extras(request: str, suffix: str = "!", *rest: Any) -> str:
        return request + suffix

    assert await echo("x") == "x"
    assert await ServiceBuilder().timeout(2).service(extras)("y") == "y!"
    assert not isinstance(echo, type(extras))  # a built service, not a function


# -- Arguments -------------------------------------------------------------------------


async def get_user(
    session: str, user_id: int, *, fields: list[str] | None = None
) -> Any:
    """A function whose arguments the tests read."""
    return session, user_id, fields


def test_arguments_accessors() -> None:
    """[name], get, value, arguments, function and signature."""
    arguments = Arguments(get_user, "db", 42)
    assert arguments["user_id"] == 42
    assert arguments["fields"] is None
    assert arguments.get("user_id") == 42
    assert arguments.get("tenant") is None
    assert arguments.get("tenant", "acme") == "acme"
    assert arguments.value("user_id", int) == 42
    assert arguments.value("session", str) == "db"
    assert arguments.function is get_user
    assert arguments.signature == inspect.signature(get_user)
    assert dict(arguments.arguments) == {
        "session": "db",
        "user_id": 42,
        "fields": None,
    }
    with pytest.raises(TypeError):
        arguments.arguments["user_id"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        arguments.kwargs["x"] = 1  # type: ignore[index]
    assert arguments == Arguments(get_user, "db", 42)
    assert arguments != Arguments(get_user, "db", user_id=42)
    assert arguments != ("db", 42)


def test_arguments_errors_name_the_parameter() -> None:
    """An unknown name is a KeyError, a wrong type a TypeError; both name it."""
    arguments = Arguments(get_user, "db", "42")
    with pytest.raises(KeyError, match=r"get_user\(\) has no parameter 'tenant'"):
        arguments["tenant"]
    with pytest.raises(
        TypeError, match=r"get_user\(\): argument 'user_id' is str, not int"
    ):
        arguments.value("user_id", int)
    with pytest.raises(KeyError, match="session, user_id, fields"):
        arguments.value("tenant", str)


def test_a_call_that_does_not_fit_the_signature() -> None:
    """A missing or doubled argument raises TypeError when the name is read."""
    missing = Arguments(get_user, "db")
    with pytest.raises(TypeError, match=r"get_user\(\): missing a required argument"):
        missing["user_id"]
    assert missing.get("user_id", -1) == -1
    assert missing["session"] == "db"
    twice = Arguments(get_user, "db", 1, user_id=2)
    with pytest.raises(TypeError, match="multiple values"):
        twice["user_id"]


def test_replace_makes_a_changed_copy() -> None:
    """replace() sets parameters by name; the original is unchanged."""
    arguments = Arguments(get_user, "db", 42)
    changed = arguments.replace(fields=["name"], user_id=7)
    assert changed["fields"] == ["name"]
    assert changed["user_id"] == 7
    assert changed.function is get_user
    assert arguments["user_id"] == 42
    assert arguments["fields"] is None
    assert changed.args == ("db", 7)
    assert dict(changed.kwargs) == {"fields": ["name"]}
    with pytest.raises(TypeError, match="has no parameter 'tenant'"):
        arguments.replace(tenant="acme")
    with pytest.raises(TypeError, match=r"get_user\(\): missing a required argument"):
        Arguments(get_user, "db").replace(fields=[])


def test_arguments_of_a_non_callable_are_refused() -> None:
    """Arguments(function, ...) names a function that is not callable."""
    with pytest.raises(layers.ConfigurationError, match=r"Arguments\(function=3\)"):
        Arguments(3)  # type: ignore[arg-type]


def test_arguments_repr_reads_like_the_call() -> None:
    """The repr is the call, with long values shortened."""
    assert repr(Arguments(get_user, "db", 42, fields=["a"])) == (
        "Arguments(get_user('db', 42, fields=['a']))"
    )
    long = repr(Arguments(get_user, "x" * 1000, 1))
    assert len(long) < 100
    assert "..." in long


async def test_the_success_path_does_not_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signature.bind runs only when every parameter is needed, never per call."""
    calls: list[object] = []
    original = inspect.Signature.bind

    def counting_bind(self: inspect.Signature, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(self, *args, **kwargs)

    seen, record = recorder()

    @ServiceBuilder().timeout(5).layer(record).decorate
    async def get(session: str, user_id: int, *, fields: Any = None) -> int:
        return user_id

    monkeypatch.setattr(inspect.Signature, "bind", counting_bind)
    assert await get("db", 1) == 1
    assert await get("db", user_id=2, fields=3) == 2
    assert [seen[0]["user_id"], seen[1]["user_id"], seen[1]["fields"]] == [1, 2, 3]
    assert seen[0]["fields"] is None
    assert calls == []
    assert seen[0].arguments["user_id"] == 1  # the whole mapping binds, once
    assert seen[0].arguments["session"] == "db"
    assert len(calls) == 1


# -- the layers read the arguments -----------------------------------------------------


async def test_rate_limit_key_and_cost_read_the_arguments() -> None:
    """key= and cost= read parameters by name: one quota per tenant, cost by size."""
    builder = ServiceBuilder().rate_limit(
        1,
        10.0,
        burst=4,
        mode="reject",
        key=lambda a: a["tenant"],
        cost=lambda a: len(a["items"]),
    )

    @builder.decorate
    async def upload(tenant: str, items: list[int]) -> int:
        return len(items)

    assert await upload("acme", [1, 2, 3]) == 3
    with pytest.raises(layers.RateLimited):
        await upload("acme", [1, 2])  # 3 + 2 > burst 4
    assert await upload(tenant="globex", items=[1, 2]) == 2
    assert await upload("acme", [1]) == 1


async def test_filter_reads_the_arguments() -> None:
    """A filter predicate refuses calls by an argument's value."""

    @ServiceBuilder().filter(lambda a: a.value("user_id", int) > 0).decorate
    async def get(session: str, user_id: int) -> int:
        return user_id

    assert await get("db", 3) == 3
    with pytest.raises(layers.Filtered):
        await get("db", 0)


async def test_retry_classifies_errors_and_prepares_arguments() -> None:
    """Retry's on= predicate and prepare= work on a decorated function's calls."""
    attempts: list[tuple[int, int]] = []

    builder = ServiceBuilder().retry(
        on=lambda error: isinstance(error, ConnectionError) and "reset" in str(error),
        max_attempts=4,
        backoff=layers.ConstantBackoff(0.1),
        budget=None,
        prepare=lambda a, attempt: a.replace(attempt=attempt),
    )

    @builder.decorate
    async def fetch(path: str, attempt: int = 1) -> str:
        attempts.append((attempt, len(attempts)))
        if attempt < 3:
            raise ConnectionError("connection reset")
        return f"{path} on attempt {attempt}"

    assert await fetch("/a") == "/a on attempt 3"
    assert [attempt for attempt, _ in attempts] == [1, 2, 3]

    @builder.decorate
    async def refused(path: str) -> str:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError, match="refused"):
        await refused("/b")


async def test_map_request_replaces_arguments() -> None:
    """map_request with Arguments.replace changes what the function is called with."""

    def default_fields(arguments: Arguments) -> Arguments:
        return arguments.replace(fields=arguments["fields"] or ["id"])

    @ServiceBuilder().map_request(default_fields).timeout(5).decorate
    async def get(user_id: int, fields: list[str] | None = None) -> Any:
        return user_id, fields

    assert await get(1) == (1, ["id"])
    assert await get(2, ["name"]) == (2, ["name"])


async def test_map_response_changes_what_the_decorated_function_returns() -> None:
    """A builder that maps the response applies to a decorated function's result."""

    @ServiceBuilder().map_response(len).timeout(5).decorate
    async def name_of(user_id: int, *, suffix: str = "") -> str:
        return f"user-{user_id}{suffix}"

    assert await name_of(7, suffix="!") == len("user-7!")


async def test_a_map_request_that_drops_the_arguments_is_reported() -> None:
    """The innermost service names what reached it when it is not an Arguments."""

    @ServiceBuilder().map_request(lambda a: a["user_id"]).decorate
    async def get(user_id: int) -> int:
        return user_id

    with pytest.raises(layers.CallbackError, match=r"get\(\) is int, not layers.Arg"):
        await get(1)


# -- one builder, shared layers --------------------------------------------------------


async def test_functions_decorated_by_one_builder_share_its_layers() -> None:
    """One builder, two functions: one concurrency limit and one breaker for both."""
    builder = ServiceBuilder().circuit_breaker(consecutive_failures=2).load_shed(1)
    release = anyio.Event()

    @builder.decorate
    async def slow(x: int) -> int:
        await release.wait()
        return x

    @builder.decorate
    async def fail() -> None:
        raise ConnectionError("down")

    async with anyio.create_task_group() as group:
        group.start_soon(slow, 1)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(layers.Overloaded):  # the one permit is slow's
            await fail()
        release.set()
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await fail()
    with pytest.raises(layers.CircuitOpen):  # fail's failures opened slow's breaker
        await slow(2)
    assert layers.layers_of(slow) == layers.layers_of(fail)


async def test_a_builder_method_per_function_gives_each_its_own_layers() -> None:
    """A builder method called per function: each function its own breaker."""

    def users_api() -> ServiceBuilder:
        return ServiceBuilder().circuit_breaker(consecutive_failures=1)

    @users_api().decorate
    async def fail() -> None:
        raise ConnectionError("down")

    @users_api().decorate
    async def works() -> str:
        return "ok"

    with pytest.raises(ConnectionError):
        await fail()
    with pytest.raises(layers.CircuitOpen):
        await fail()
    assert await works() == "ok"
    assert layers.layers_of(fail)[0] is not layers.layers_of(works)[0]


# -- cancellation ----------------------------------------------------------------------


async def test_cancelling_a_waiting_call_releases_its_place() -> None:
    """A decorated call cancelled while a concurrency limit holds it takes nothing."""
    limit = layers.ConcurrencyLimit(1)
    release = anyio.Event()

    @ServiceBuilder().layer(limit).decorate
    async def work(job: str) -> str:
        await release.wait()
        return job

    async with anyio.create_task_group() as group:
        group.start_soon(work, "first")
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(1) as scope:
            await work("second")  # waits for the permit, then is cancelled
        assert scope.cancelled_caught
        assert limit.statistics().waiting == 0
        assert limit.statistics().in_flight == 1
        release.set()
    assert limit.statistics().in_flight == 0
    assert await work("third") == "third"


async def test_cancelling_a_running_call_releases_its_permit() -> None:
    """A decorated call cancelled inside the function gives its permit back."""
    limit = layers.ConcurrencyLimit(1)

    @ServiceBuilder().timeout(5).layer(limit).decorate
    async def hang(job: str) -> str:
        await anyio.sleep_forever()
        return job

    with anyio.move_on_after(1):
        await hang("x")
    assert limit.statistics().in_flight == 0
    with pytest.raises(layers.Elapsed):
        await hang("y")
    assert limit.statistics().in_flight == 0
    assert anyio.current_time() == pytest.approx(6)
