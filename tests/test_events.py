"""Events: sinks, emit, a broken sink, and the default logging sink."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
import structlog.testing
from helpers import package_events

import layers
from layers import events
from layers.events import Event, TimeoutElapsed

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def default_sinks() -> Iterator[None]:
    """Each test starts with and leaves the default state: logging on, no sink."""
    saved = events.STATE.sinks
    events.set_logging(True)
    yield
    events.STATE.sinks = saved
    events.set_logging(True)


def event() -> TimeoutElapsed:
    """A sample event."""
    return TimeoutElapsed(layer="db", timeout=2.5)


def test_add_sink_receives_events() -> None:
    """A sink added with add_sink gets every emitted event."""
    received: list[Event] = []
    layers.add_sink(received.append)
    sent = event()
    events.emit(sent)
    assert received == [sent]
    assert received[0] is sent


def test_remove_sink_stops_events() -> None:
    """remove_sink stops a sink; removing an unknown sink is no error."""
    received: list[Event] = []

    def sink(e: Event) -> None:
        received.append(e)

    layers.add_sink(sink)
    events.emit(event())
    layers.remove_sink(sink)
    events.emit(event())
    assert len(received) == 1
    layers.remove_sink(sink)


def test_remove_sink_removes_a_bound_method_sink() -> None:
    """remove_sink(obj.method) removes the sink added as add_sink(obj.method)."""
    received: list[Event] = []
    layers.add_sink(received.append)
    layers.remove_sink(received.append)
    events.emit(event())
    assert received == []


def test_add_sink_returns_a_remover() -> None:
    """The function add_sink returns removes that sink."""
    received: list[Event] = []
    remove = layers.add_sink(received.append)
    events.emit(event())
    remove()
    events.emit(event())
    assert len(received) == 1
    assert received.append not in events.STATE.sinks


def test_add_sink_refuses_a_non_callable() -> None:
    """add_sink with a non-callable raises TypeError."""
    with pytest.raises(TypeError, match="sink"):
        layers.add_sink(42)  # type: ignore[arg-type]


def test_emit_calls_sinks_in_order() -> None:
    """Sinks are called in the order they were added."""
    calls: list[str] = []
    layers.set_logging(False)
    layers.add_sink(lambda e: calls.append("first"))
    layers.add_sink(lambda e: calls.append("second"))
    layers.add_sink(lambda e: calls.append("third"))
    events.emit(event())
    assert calls == ["first", "second", "third"]


def test_a_raising_sink_does_not_break_emit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sink that raises is reported to sys.unraisablehook; later sinks still run."""
    reports: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reports.append)
    error = RuntimeError("sink broke")

    def broken(_: Event) -> None:
        raise error

    received: list[Event] = []
    layers.set_logging(False)
    layers.add_sink(broken)
    layers.add_sink(received.append)
    sent = event()
    events.emit(sent)

    assert received == [sent]
    assert len(reports) == 1
    report = reports[0]
    assert report.exc_type is RuntimeError
    assert report.exc_value is error
    assert report.exc_traceback is error.__traceback__
    assert report.object is sent
    assert "sink" in report.err_msg


def test_event_fields_carry_the_layer_and_timeout() -> None:
    """TimeoutElapsed's fields are its layer name and timeout; its name is elapsed."""
    assert event().fields() == {"layer": "db", "timeout": 2.5}
    assert TimeoutElapsed.event == "elapsed"
    assert TimeoutElapsed.level == "warning"


def test_logging_on_logs_events_with_structlog() -> None:
    """With structlog configured, an event is logged with its name, level, fields."""
    with structlog.testing.capture_logs() as logs:
        events.emit(event())
    assert logs == [
        {
            "event": "elapsed",
            "log_level": "warning",
            "layer_kind": "timeout",
            "layer": "db",
            "timeout": 2.5,
        }
    ]


def test_set_logging_false_removes_the_default_sink() -> None:
    """set_logging(False) stops the logging sink; other sinks still get events."""
    received: list[Event] = []
    layers.add_sink(received.append)
    layers.set_logging(False)
    with structlog.testing.capture_logs() as logs:
        events.emit(event())
    assert logs == []
    assert len(received) == 1


def test_set_logging_false_leaves_no_sink_by_default() -> None:
    """With logging off and no sink added, nobody listens (STATE.sinks is falsy)."""
    layers.set_logging(False)
    assert not events.STATE.sinks


def test_set_logging_true_restores_the_default_sink_once() -> None:
    """set_logging(True) restores logging; calling it twice logs each event once."""
    layers.set_logging(False)
    layers.set_logging(True)
    layers.set_logging(True)
    with structlog.testing.capture_logs() as logs:
        events.emit(event())
    assert [entry["event"] for entry in logs] == ["elapsed"]


async def test_timeout_expiry_is_logged() -> None:
    """A Timeout that expires logs an "elapsed" warning with its name and timeout."""

    async def slow(request: str) -> str:
        await anyio.sleep(10)
        return request

    svc = layers.Timeout(1.5, name="api").layer(slow)
    with structlog.testing.capture_logs() as logs, pytest.raises(layers.Elapsed):
        await svc("x")
    assert logs == [
        {
            "event": "elapsed",
            "log_level": "warning",
            "layer_kind": "timeout",
            "layer": "api",
            "timeout": 1.5,
        }
    ]


async def test_timeout_expiry_with_logging_off_logs_nothing() -> None:
    """With logging off, an expiring Timeout logs nothing and still raises."""

    async def slow(request: str) -> str:
        await anyio.sleep(10)
        return request

    layers.set_logging(False)
    svc = layers.Timeout(1.5, name="api").layer(slow)
    with structlog.testing.capture_logs() as logs, pytest.raises(layers.Elapsed):
        await svc("x")
    assert logs == []


async def test_timeout_expiry_reaches_a_sink() -> None:
    """A sink receives a TimeoutElapsed event when a Timeout expires."""
    received: list[Event] = []
    layers.add_sink(received.append)

    async def slow(request: str) -> str:
        await anyio.sleep(10)
        return request

    with pytest.raises(layers.Elapsed):
        await layers.Timeout(1, name="api").layer(slow)("x")
    assert received == [TimeoutElapsed(layer="api", timeout=1)]


class _Private(Exception):
    """Stands for an exception class that no package re-exports."""


def test_type_name_is_the_public_name() -> None:
    """type_name: builtins bare, layers' exceptions by public name, others whole."""
    from layers._errors import type_name

    assert type_name(OSError("x")) == "OSError"
    assert type_name(layers.Elapsed()) == "layers.Elapsed"
    assert type_name(layers.RateLimited("x")) == "layers.RateLimited"
    for name in layers._errors.__all__:
        cls = getattr(layers, name)
        assert type_name(cls.__new__(cls)) == f"layers.{name}"
    assert type_name(_Private()) == f"{__name__}._Private"
    _Private.__module__ = "layers._nowhere"  # private, and not re-exported
    try:
        assert type_name(_Private()) == "layers._nowhere._Private"
    finally:
        _Private.__module__ = __name__


def events_table() -> dict[str, list[str]]:
    """The rows of the table in docs/howto/events.md, by the class they name."""
    page = Path(__file__).parent.parent / "docs" / "howto" / "events.md"
    rows: dict[str, list[str]] = {}
    for line in page.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 5:
            match = re.fullmatch(r"\{class\}`([\w.]+)`", cells[1])
            assert match, line
            rows[match[1]] = cells
    return rows


def test_the_events_table_lists_every_event() -> None:
    """docs/howto/events.md has a row per event: its home, name, level and fields."""
    rows = events_table()
    expected = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in package_events()}
    assert set(rows) == set(expected)
    for path, cls in expected.items():
        name, _, level, fields, _ = rows[path]
        assert name == f"`{cls.event}`", path
        assert level == cls.level, path
        own = [f"`{f.name}`" for f in attrs.fields(cls) if f.name != "layer"]
        assert fields == ", ".join(own), path


# Quoted words shaped like event names that are not events.
NOT_EVENTS: set[str] = {"force_closed", "response_started"}


def test_docs_name_no_event_that_does_not_exist() -> None:
    """Every event name that the docs, docstrings or examples quote exists."""
    names = {cls.event for cls in package_events()}
    root = Path(__file__).parent.parent
    pages = [*(root / "docs").rglob("*.md"), *(root / "layers").rglob("*.py")]
    pages += [*(root / "examples").glob("*.py"), root / "README.md"]
    suffixes = ("_rejected", "_exhausted", "_reached", "_scheduled", "_failed")
    suffixes += ("_opened", "_closed", "_started", "_completed", "_waited")
    suffixes += ("_refused", "_stopped", "_changed", "_exceeded")
    stale = [
        (page.name, word)
        for page in pages
        for word in re.findall(r"[`\"]([a-z][a-z_]*)[`\"]", page.read_text("utf-8"))
        if word.endswith(suffixes) and word not in names | NOT_EVENTS
    ]
    assert stale == []
