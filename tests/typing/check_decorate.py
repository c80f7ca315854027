"""Type checks: ServiceBuilder.decorate keeps the signature (mypy and pyright)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, assert_type

from layers import Arguments, ServiceBuilder

api = ServiceBuilder().timeout(2.0).retry(on=ConnectionError, max_attempts=3)


class Session:
    """A stand-in for a database session."""


@api.decorate
async def get_user(
    session: Session, user_id: int, *, fields: list[str] | None = None
) -> dict[str, str]:
    """Positional, keyword-only, a default."""
    return {"id": str(user_id)}


# An async function of the same parameters: a coroutine function still.
as_callable: Callable[[Session, int], Coroutine[Any, Any, dict[str, str]]] = get_user
wrong_parameters: Callable[[int], Coroutine[Any, Any, dict[str, str]]] = get_user  # type: ignore[assignment]
wrong_return: Callable[[Session, int], Coroutine[Any, Any, int]] = get_user  # type: ignore[assignment]


async def uses_get_user(session: Session) -> None:
    """The decorated function keeps its parameters and its return type."""
    user = await get_user(session, 42, fields=["name"])
    assert_type(user, dict[str, str])
    assert_type(await get_user(session, user_id=7), dict[str, str])
    await get_user(session, "42")  # type: ignore[arg-type]
    await get_user(session)  # type: ignore[call-arg]
    await get_user(session, 42, colour="red")  # type: ignore[call-arg]
    await get_user(session, 42, ["name"])  # type: ignore[call-arg]


@api.decorate
async def total(*amounts: float, **labels: str) -> float:
    """*args and **kwargs."""
    return sum(amounts)


async def uses_total() -> None:
    """Variadic parameters keep their types."""
    assert_type(await total(1.0, 2.5, currency="EUR"), float)
    await total("one")  # type: ignore[arg-type]


class Users:
    """Methods, classmethods and staticmethods, decorated."""

    @api.decorate
    async def get(self, user_id: int) -> str:
        """A method: self is bound per instance."""
        return str(user_id)

    @api.decorate
    @classmethod
    async def create(cls, name: str) -> Users:
        """The decorator above @classmethod."""
        return cls()

    @classmethod
    @api.decorate
    async def find(cls, name: str) -> Users | None:
        """The decorator below @classmethod."""
        return None

    @api.decorate
    @staticmethod
    async def normalise(name: str) -> str:
        """A staticmethod."""
        return name.lower()


async def uses_users(users: Users) -> None:
    """Bound methods lose self (and cls) as plain methods do."""
    assert_type(await users.get(1), str)
    assert_type(await Users.create("ann"), Users)
    assert_type(await Users.find("ann"), Users | None)
    assert_type(await Users.normalise("Ann"), str)
    assert_type(await users.normalise("Ann"), str)
    await users.get("1")  # type: ignore[arg-type]
    await Users.create(1)  # type: ignore[arg-type]
    await Users.normalise(1)  # type: ignore[arg-type]


# The request inside the stack is an Arguments: predicates read it by name.
keyed = (
    ServiceBuilder()
    .rate_limit(10, key=lambda a: a["tenant"])
    .filter(lambda a: a.get("user_id") != 0)
)


@keyed.decorate
async def by_tenant(tenant: str, user_id: int) -> bytes:
    """A builder whose functions read the arguments."""
    return b""


def set_fields(arguments: Arguments) -> Arguments:
    """A typed map_request from Arguments to Arguments."""
    return arguments.replace(fields=["id"])


replaced = ServiceBuilder().map_request(set_fields).timeout(1)


@replaced.decorate
async def with_fields(user_id: int, fields: list[str] | None = None) -> list[str]:
    """A builder that maps Arguments to Arguments keeps the signature too."""
    return fields or []


async def uses_arguments(arguments: Arguments) -> None:
    """Arguments' accessors, and the typed one."""
    assert_type(await by_tenant("acme", 1), bytes)
    assert_type(await with_fields(1), list[str])
    assert_type(arguments.value("user_id", int), int)
    assert_type(arguments.args, tuple[Any, ...])
    assert_type(arguments.replace(user_id=2), Arguments)


def length(text: str) -> int:
    """Maps the response."""
    return len(text)


@ServiceBuilder().map_response(length).timeout(1).decorate
async def describe(user_id: int, *, verbose: bool = False) -> str:
    """A builder that changes the response type: the function returns that type."""
    return str(user_id)


async def uses_describe() -> None:
    """The parameters are the function's, the result the builder's."""
    assert_type(await describe(1, verbose=True), int)
    await describe("1")  # type: ignore[arg-type]


@ServiceBuilder().map_response(length).decorate  # type: ignore[arg-type]
async def not_text(user_id: int) -> bytes:
    """map_response(length) takes a str: a function returning bytes is refused."""
    return b""


def parse(body: bytes) -> int:
    """Maps the request to another type."""
    return int(body)


# A builder that changes the request type cannot decorate: the function's
# arguments would not be what its layers expect.
ServiceBuilder().map_request(parse).decorate(get_user)  # type: ignore[misc]
api.decorate(len)  # type: ignore[arg-type]
