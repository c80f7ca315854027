"""The decorator door: a stack around an ``async def`` of any signature.

A stack is a service of one request. :meth:`ServiceBuilder.decorate
<layers.ServiceBuilder.decorate>` puts one around a function of any
signature: the call's arguments travel through the layers as one request,
an :class:`Arguments`, and the innermost service calls the function with
them. Everything a layer takes a function of the request for (``key=``,
``cost=``, ``filter``, ``map_request``, ``prepare=``, a custom layer) reads
the arguments by name from it.

The success path pays for one coroutine frame (the decorated function), one
small object (the :class:`Arguments`) and one plain call (the innermost
service, which returns the function's coroutine for the layer above to
await). Nothing is bound on that path: a name is looked up in the call's
own ``args`` and ``kwargs`` when a predicate asks for it, and
:meth:`inspect.Signature.bind` runs only for what needs every parameter
(:attr:`Arguments.arguments`, :meth:`Arguments.replace`, ``*args`` and
``**kwargs`` parameters, a call that does not fit the signature).
"""

# The door builds Arguments without their constructor (one per call), and
# reads them in the innermost service: the class's private slots are this
# module's business.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import functools
import inspect
import reprlib
import types
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar, cast, final

from ._config import check_callable
from ._core import Layer, Service, _built, describe, is_async_callable, wrap_in
from ._errors import CallbackError, ConfigurationError

__all__ = ["Arguments", "decorate", "takes_one_request"]

T = TypeVar("T")

_EMPTY: Final = inspect.Parameter.empty
# The lookup of a *args or **kwargs parameter: no index, no keyword, no
# default; its value is the bound one.
_VARIADIC: Final = object()

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40


@final
class _Target:
    """What every call of one decorated function shares, computed once."""

    __slots__ = ("function", "lookup", "name", "signature")

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.name = describe(function)
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):  # no signature to read: any arguments
            any_parameter = inspect.Parameter
            signature = inspect.Signature(
                [
                    any_parameter("args", any_parameter.VAR_POSITIONAL),
                    any_parameter("kwargs", any_parameter.VAR_KEYWORD),
                ]
            )
        self.signature = signature
        # name -> (position or None, may be given by keyword, default)
        self.lookup: dict[str, tuple[int | None, bool, object]] = {}
        entry: tuple[int | None, bool, object]
        for index, parameter in enumerate(signature.parameters.values()):
            kind = parameter.kind
            if kind is parameter.POSITIONAL_ONLY:
                entry = (index, False, parameter.default)
            elif kind is parameter.POSITIONAL_OR_KEYWORD:
                entry = (index, True, parameter.default)
            elif kind is parameter.KEYWORD_ONLY:
                entry = (None, True, parameter.default)
            else:
                entry = (None, False, _VARIADIC)
            self.lookup[parameter.name] = entry

    def bind(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> inspect.BoundArguments:
        """A new binding of a call, defaults applied; TypeError if it does not fit."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{self.name}(): {error}") from None
        bound.apply_defaults()
        return bound

    def no_parameter(self, name: str) -> str:
        names = ", ".join(self.lookup) or "none"
        return f"{self.name}() has no parameter {name!r} (its parameters: {names})"


@final
class Arguments:
    """The arguments of one call of a decorated function: its stack's request.

    :meth:`ServiceBuilder.decorate <layers.ServiceBuilder.decorate>` turns
    each call of the decorated function into one ``Arguments``, which passes
    through the layers as the request; the innermost service calls the
    function with :attr:`args` and :attr:`kwargs`. So a function given to a
    layer (a rate limit's ``key=`` or ``cost=``, a ``filter``, a retry's
    ``prepare=``, ``map_request``, your own layer) reads the arguments by
    parameter name, as :class:`inspect.BoundArguments` holds them:

        >>> import layers
        >>> async def get_user(session, user_id: int, *, fields=None): ...
        >>> arguments = layers.Arguments(get_user, "db", 42)
        >>> arguments["user_id"], arguments["fields"]
        (42, None)
        >>> arguments.value("user_id", int)
        42
        >>> arguments.replace(fields=["name"])
        Arguments(get_user('db', 42, fields=['name']))

    A name is looked up in the call's own arguments when it is asked for,
    a default applied if the call left it out; the whole signature is bound
    (:meth:`inspect.Signature.bind`) only for :attr:`arguments`,
    :meth:`replace`, the value of a ``*args`` or ``**kwargs`` parameter, or
    a call that does not fit the signature (which raises the
    :class:`TypeError` that the call itself would). An ``Arguments`` does
    not change; :meth:`replace` makes another.

    A method's ``self`` (a classmethod's ``cls``) is its first argument, as
    in the call of the function itself.

    Args:
        function: The function whose call this is.
        *args: The call's positional arguments.
        **kwargs: The call's keyword arguments.
    """

    __slots__ = ("_args", "_bound", "_kwargs", "_target")

    _args: tuple[Any, ...]
    _kwargs: dict[str, Any]
    _target: _Target
    _bound: inspect.BoundArguments

    def __init__(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any):
        check_callable("Arguments", "function", function)
        self._args = args
        self._kwargs = kwargs
        self._target = _Target(function)

    @property
    def args(self) -> tuple[Any, ...]:
        """The call's positional arguments, as given."""
        return self._args

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """The call's keyword arguments, as given (read-only)."""
        return types.MappingProxyType(self._kwargs)

    @property
    def function(self) -> Callable[..., Any]:
        """The function called (for a method, the function defined in the class)."""
        return self._target.function

    @property
    def signature(self) -> inspect.Signature:
        """The signature of :attr:`function`."""
        return self._target.signature

    @property
    def arguments(self) -> Mapping[str, Any]:
        """Every parameter's value in this call, in order, defaults applied.

        A read-only mapping from parameter name to value (a ``*args``
        parameter's value is a tuple, a ``**kwargs`` one's a dict), as
        :attr:`inspect.BoundArguments.arguments` after
        :meth:`~inspect.BoundArguments.apply_defaults`.

        Raises:
            TypeError: If the call does not fit the function's signature.
        """
        return types.MappingProxyType(self._bind().arguments)

    def __getitem__(self, name: str) -> Any:
        """The value of the parameter *name* in this call (its default if left out).

        Raises:
            KeyError: If the function has no parameter *name*.
            TypeError: If the call does not fit the signature (a required
                argument missing, one given twice).
        """
        try:
            index, by_keyword, default = self._target.lookup[name]
        except KeyError:
            raise KeyError(self._target.no_parameter(name)) from None
        args = self._args
        if index is not None and index < len(args):
            if not (by_keyword and name in self._kwargs):
                return args[index]
        elif by_keyword and name in self._kwargs:
            return self._kwargs[name]
        elif default is not _EMPTY and default is not _VARIADIC:
            return default
        return self._bind().arguments[name]

    def get(self, name: str, default: Any = None) -> Any:
        """The value of the parameter *name*, or *default* if it has none.

        *default* when the function has no parameter *name* (a predicate
        shared by functions of different signatures) and when the call
        gives it no value (the call itself then fails with Python's
        :class:`TypeError`).
        """
        try:
            return self[name]
        except (KeyError, TypeError):
            return default

    def value(self, name: str, kind: type[T], /) -> T:
        """The value of the parameter *name*, checked to be a *kind*.

        The typed accessor: ``arguments.value("user_id", int)`` is an
        ``int`` to a type checker, and is checked at run time.

        Raises:
            KeyError: If the function has no parameter *name*.
            TypeError: If the value is not an instance of *kind* (the
                message names the parameter and the value's type, not the
                value), or the call does not fit the signature.
        """
        found = self[name]
        if not isinstance(found, kind):
            raise TypeError(
                f"{self._target.name}(): argument {name!r} is "
                f"{type(found).__name__}, not {kind.__name__}"
            )
        return found

    def replace(self, **changes: Any) -> Arguments:
        """A copy of these arguments with the parameters in *changes* set.

        For a ``map_request`` (or a retry's ``prepare=``) that changes
        what the function is called with::

            builder.map_request(lambda a: a.replace(fields=a["fields"] or ["id"]))

        The copy holds every parameter (defaults made explicit); a ``*args``
        parameter is replaced by a tuple, a ``**kwargs`` one by a dict.

        Raises:
            TypeError: If the function has no parameter named in *changes*,
                or the call does not fit the signature.
        """
        for name in changes:
            if name not in self._target.lookup:
                raise TypeError(f"Arguments.replace: {self._target.no_parameter(name)}")
        bound = self._target.bind(self._args, self._kwargs)
        bound.arguments.update(changes)
        copy = Arguments.__new__(Arguments)
        copy._args = bound.args
        copy._kwargs = bound.kwargs
        copy._target = self._target
        copy._bound = bound
        return copy

    def _bind(self) -> inspect.BoundArguments:
        try:
            return self._bound
        except AttributeError:
            pass
        bound = self._bound = self._target.bind(self._args, self._kwargs)
        return bound

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Arguments):
            return NotImplemented
        return (
            self._target.function == other._target.function
            and self._args == other._args
            and self._kwargs == other._kwargs
        )

    __hash__ = None  # type: ignore[assignment]  # it holds any values

    def __repr__(self) -> str:
        parts = [*map(_repr.repr, self._args)]
        parts += [f"{key}={_repr.repr(value)}" for key, value in self._kwargs.items()]
        return f"Arguments({self._target.name}({', '.join(parts)}))"


def takes_one_request(function: object) -> inspect.Signature | None:
    """None if *function* takes one positional argument, else its signature.

    A callable whose signature cannot be read is given the benefit of the
    doubt (None).
    """
    try:
        signature = inspect.signature(cast("Callable[..., Any]", function))
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(None)
    except TypeError:
        return signature
    return None


def decorate(
    owner: str, layers: Sequence[Layer[Any, Any, Any, Any]], function: Any
) -> Any:
    """*function* with *layers* around its calls; see ServiceBuilder.decorate."""
    # (By its type: function stays Any, whose __func__ a checker takes as is.)
    wrapper = cast("type[object]", type(function))
    if issubclass(wrapper, classmethod):
        return classmethod(decorate(owner, layers, function.__func__))
    if issubclass(wrapper, staticmethod):
        return staticmethod(decorate(owner, layers, function.__func__))
    _check_async(owner, function)
    target = _Target(function)
    service = wrap_in(layers, _innermost(target))
    new = object.__new__

    async def decorated(*args: Any, **kwargs: Any) -> Any:
        arguments = new(Arguments)
        arguments._args = args
        arguments._kwargs = kwargs
        arguments._target = target
        return await service(arguments)

    functools.update_wrapper(decorated, function)
    marks = cast(Any, decorated)
    marks.__signature__ = target.signature
    # The stack's marks (see layers.mark_built), those of its outermost
    # service, so layers_of() and describe_stack() show the stack; the
    # function keeps its own __qualname__. (update_wrapper copied the
    # function's __dict__: marks in it describe the function, not this.)
    built = _built(service)
    if built is not None:
        marks.built_by, marks.inner = built
    else:
        vars(decorated).pop("built_by", None)
        vars(decorated).pop("inner", None)
    return decorated


def _check_async(owner: str, function: object) -> None:
    if not callable(function):
        raise ConfigurationError(
            f"{owner}(function={function!r}): function must be an async "
            f"function, got {type(function).__name__}"
        )
    if not is_async_callable(function):
        raise ConfigurationError(
            f"{owner}(function={describe(function)}): function must be an async "
            "function (an async def, or an object with an async def __call__); "
            "a stack is awaited, so a sync function cannot be decorated: make it "
            "an async def"
        )


def _innermost(target: _Target) -> Service[Arguments, Any]:
    """The innermost service: calls the function, returns its coroutine.

    A plain function, not a coroutine: the layer above awaits what it
    returns, which saves a frame per call.
    """
    function = target.function

    def call(arguments: Arguments, /) -> Awaitable[Any]:
        try:
            args, kwargs = arguments._args, arguments._kwargs
        except AttributeError:
            raise CallbackError(
                f"the request that reached {target.name}() is "
                f"{type(arguments).__name__}, not layers.Arguments: a "
                "map_request or layer in a decorated stack must pass on an "
                "Arguments (arguments.replace(...) makes a changed one)"
            ) from None
        awaitable: Awaitable[Any] = function(*args, **kwargs)
        return awaitable

    call.__name__ = getattr(function, "__name__", call.__name__)
    call.__qualname__ = target.name
    call.__module__ = getattr(function, "__module__", call.__module__)
    # A Service to the layers: they await what it returns.
    return cast("Service[Arguments, Any]", call)
