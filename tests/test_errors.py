"""The exception hierarchy: classes, attributes, messages, pickling, drawn tree."""

from __future__ import annotations

import pickle

import pytest

import layers
from layers import (
    CallbackError,
    CircuitOpen,
    ConfigurationError,
    Elapsed,
    Filtered,
    LayersError,
    Overloaded,
    RateLimited,
    Rejected,
    ShuttingDown,
    _errors,
)

REJECTIONS = [Filtered, Overloaded, RateLimited, CircuitOpen, ShuttingDown]


@pytest.mark.parametrize("cls", REJECTIONS)
def test_rejections_are_rejected_and_layers_errors(cls: type[Rejected]) -> None:
    """Every rejection subclasses Rejected and LayersError."""
    assert issubclass(cls, Rejected)
    assert issubclass(cls, LayersError)
    assert not issubclass(cls, TimeoutError)


def test_rejected_is_a_layers_error() -> None:
    """Rejected derives from LayersError, which is an Exception."""
    assert issubclass(Rejected, LayersError)
    assert issubclass(LayersError, Exception)


def test_elapsed_is_a_timeout_error_not_a_rejection() -> None:
    """Elapsed is a builtin TimeoutError and a LayersError, but not Rejected."""
    assert issubclass(Elapsed, TimeoutError)
    assert issubclass(Elapsed, LayersError)
    assert not issubclass(Elapsed, Rejected)
    with pytest.raises(TimeoutError):
        raise Elapsed(timeout=1.0)


@pytest.mark.parametrize("cls", [ConfigurationError, CallbackError])
def test_configuration_and_callback_errors_are_value_and_type_errors(
    cls: type[LayersError],
) -> None:
    """Both are LayersErrors and both builtins (a wrong type or a bad value)."""
    assert issubclass(cls, ValueError)
    assert issubclass(cls, TypeError)
    assert issubclass(cls, LayersError)
    assert not issubclass(cls, Rejected)
    assert not issubclass(ConfigurationError, CallbackError)
    assert not issubclass(CallbackError, ConfigurationError)


def test_callback_error_attributes() -> None:
    """A CallbackError carries layer and parameter, both None by default."""
    error = CallbackError("bad key", layer="limit", parameter="key")
    assert (str(error), error.layer, error.parameter) == ("bad key", "limit", "key")
    bare = CallbackError()
    assert (bare.layer, bare.parameter) == (None, None)


@pytest.mark.parametrize("cls", [Rejected, *REJECTIONS])
def test_rejected_attributes(cls: type[Rejected]) -> None:
    """A rejection carries retry_after, layer (None) and reason ("") by default."""
    error = cls("no", retry_after=2.5, layer="limit", reason="max_wait")
    assert str(error) == "no"
    assert error.retry_after == 2.5
    assert error.layer == "limit"
    assert error.reason == "max_wait"
    bare = cls()
    assert bare.retry_after is None
    assert bare.layer is None
    assert bare.reason == ""


@pytest.mark.parametrize("cls", [Rejected, *REJECTIONS])
def test_rejected_default_message_is_the_docstring_summary(
    cls: type[Rejected],
) -> None:
    """Without a message, a rejection's message is its docstring's first line."""
    assert cls.__doc__ is not None
    assert str(cls()) == cls.__doc__.strip().splitlines()[0]
    assert str(cls())


def test_elapsed_attributes_and_default_messages() -> None:
    """Elapsed carries timeout and layer; its default message gives the timeout."""
    error = Elapsed(timeout=0.5, layer="db")
    assert error.timeout == 0.5
    assert error.layer == "db"
    assert str(error) == "request timed out after 0.5 s"
    bare = Elapsed()
    assert bare.timeout is None
    assert bare.layer is None
    assert str(bare) == "request timed out"
    assert str(Elapsed("custom", timeout=1)) == "custom"


@pytest.mark.parametrize("cls", [Rejected, *REJECTIONS])
@pytest.mark.parametrize("message", ["", "busy"])
def test_rejected_pickles(cls: type[Rejected], message: str) -> None:
    """A rejection survives pickling with its message, retry_after, layer, reason."""
    error = cls(message, retry_after=1.25, layer="limit", reason="limited")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert copy.retry_after == 1.25
    assert copy.layer == "limit"
    assert copy.reason == "limited"


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(Elapsed(timeout=2.0, layer="api"), id="default-message"),
        pytest.param(Elapsed("late", timeout=2.0, layer="api"), id="message"),
    ],
)
def test_elapsed_pickles(error: Elapsed) -> None:
    """Elapsed survives pickling with its message, timeout and layer."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is Elapsed
    assert str(copy) == str(error)
    assert copy.timeout == 2.0
    assert copy.layer == "api"


@pytest.mark.parametrize("cls", [LayersError, ConfigurationError, CallbackError])
def test_plain_errors_pickle(cls: type[LayersError]) -> None:
    """LayersError, ConfigurationError, CallbackError pickle with their message."""
    copy = pickle.loads(pickle.dumps(cls("bad value")))
    assert type(copy) is cls
    assert str(copy) == "bad value"


def test_errors_docstring_draws_every_exception() -> None:
    """The errors module's drawn tree names every exception class it exports."""
    doc = _errors.__doc__
    assert doc is not None
    drawn = {
        line.split("── ", 1)[1].split()[0] for line in doc.splitlines() if "── " in line
    }
    assert set(_errors.__all__) <= drawn


def test_every_exception_is_exported_from_layers() -> None:
    """Each exception in layers._errors is re-exported by layers."""
    for name in _errors.__all__:
        assert getattr(layers, name) is getattr(_errors, name)
        assert name in layers.__all__
