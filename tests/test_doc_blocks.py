"""Every plain ```python block in the docs runs.

The docs promise that every code block is a doctest (run by ``sphinx-build -b
doctest``) or an included example (run by test_examples.py). The other
Python blocks of docs/**/*.md, fenced as ``python``, ``py`` or ``python3``
(or a MyST ``{code-block} python``), are found here automatically: a new one
is a new test, which fails if the block does not run.

How a block runs:

* in a fresh namespace that has imported ``anyio`` and ``layers`` (as the
  docs' ``doctest_global_setup`` does), then run its page's :data:`SETUP`:
  honest stand-ins for the names the page's prose takes as given (the
  service being wrapped, a breaker made earlier on the page...);
* a block that awaits at top level runs on virtual time, on asyncio and on
  trio; an ``async def`` named in :data:`ENTRY_POINTS` is called the same way;
* a block that starts with ``.`` continues a ``layers.ServiceBuilder()``;
* a block that imports a library compared with in the migration guide
  (:data:`OTHER_LIBRARIES`, not a dependency of layers) is skipped when that
  library is not installed.

Whatever a block changes globally (sinks, logging, structlog's configuration)
is put back afterwards.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog

import layers
import layers.events
from layers.testing import run

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLES = DOCS.parent / "examples"
BACKENDS = ("asyncio", "trio")

PYTHON = {"python", "py", "python3"}
# MyST directives that show code in the language given after them.
CODE_DIRECTIVES = {"{code-block}", "{code}", "{sourcecode}"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")

# Mirrors doctest_global_setup in docs/conf.py.
PRELUDE = "import anyio\nimport layers\n"

# The libraries that docs/howto/migrating.md compares layers with; their side
# of the comparison runs only where they are installed.
OTHER_LIBRARIES = {"tenacity", "stamina", "backoff", "pybreaker"}

# Per page (relative to docs/): run before each of its blocks, in the same
# namespace. Stand-ins for what the page's prose assumes exists, no more.
SETUP: dict[str, str] = {
    "explanation/ordering-and-deadlines.md": """
builder = layers.ServiceBuilder()
""",
    "howto/asgi.md": """
import layers.asgi


async def app(scope, receive, send):  # your ASGI application
    ...
""",
    "howto/circuit-breaker.md": """
breaker = layers.CircuitBreaker(name="users-api")


async def fetch(request): ...
""",
    "howto/events.md": """
class MetricCounter:  # a counter of your metrics library
    def inc(self) -> None: ...


payments_timeouts = MetricCounter()
""",
    "howto/health.md": """
checks = layers.HealthChecks()
payments_breaker = layers.CircuitBreaker(name="payments")
ledger_breaker = layers.CircuitBreaker(name="ledger")
bulkhead = layers.ConcurrencyLimit(10)
drain = layers.Drain()
""",
    "howto/limits.md": """
async def call_api(request): ...
async def handler(request): ...
async def get(request): ...
async def put(request): ...
""",
    "howto/logging.md": """
import pytest
import structlog.testing


async def slow(request):
    await anyio.sleep(10)


service = layers.Timeout(0.5, name="api").layer(slow)
""",
    "howto/metrics.md": """
breaker = layers.CircuitBreaker(name="users-api")
pool = layers.ConcurrencyLimit(10)


async def fetch_user(user_id): ...
""",
    "howto/migrating.md": """
import contextlib

with contextlib.suppress(ImportError):
    import pybreaker

    class MyListener(pybreaker.CircuitBreakerListener):
        pass


class FlakySession:  # shown on the page
    def __init__(self) -> None:
        self.calls = 0

    async def get(self, path: str) -> str:
        self.calls += 1
        if self.calls < 3:
            raise ConnectionError("connection reset")
        return f"{path}: ok after {self.calls} attempts"
""",
    "howto/retry.md": """
import httpx

builder = layers.ServiceBuilder()


async def get(request): ...
async def put(request): ...
async def call_api(request): ...
def load_body() -> bytes: ...
""",
    "howto/shutdown.md": """
async def handle(job):
    await anyio.sleep(1)


async def consume(supervisor, handler):
    await handler("job 1")


async def report_metrics():
    await anyio.sleep(1)


async def jobs():
    yield "job 1"
    yield "job 2"


queue = jobs()
""",
    "howto/testing.md": """
import attrs
import pytest

from layers.testing import MockService, capture_events


async def my_async_check():
    await anyio.sleep(3600)  # an hour, on the virtual clock


service = layers.Timeout(5, name="api").layer(
    MockService[str, str]().respond_always("ok", delay=30)
)


@attrs.frozen
class Request:
    path: str


@attrs.frozen
class Response:
    status: int


ok_response = Response(200)


class ApiError(Exception):
    pass


def to_api_error(error):
    return ApiError(type(error).__name__)


async def real_api(request: Request) -> Response: ...
""",
    "howto/timeouts.md": """
import attrs


@attrs.frozen
class Request:
    url: str
    headers: dict[str, str]
    body: bytes


@attrs.frozen
class Response:
    status: int


async def fetch(user_id):
    await anyio.sleep(10)  # slower than the timeout


async def save_to_disk(request):
    await anyio.sleep(0.1)


client = layers.ServiceBuilder().timeout(2.0, name="users-api").service(fetch)
user_id = 1
""",
    "howto/writing-a-layer.md": f"""
import runpy

_custom_layer = runpy.run_path({str(EXAMPLES / "custom_layer.py")!r})
Shed = _custom_layer["Shed"]
bearer_auth = _custom_layer["bearer_auth"]
token = "s3cret"


async def api(request): ...
async def reports_api(request): ...
""",
}

# Per page: an async function of no argument that a block of the page
# defines; it is called on virtual time, on each backend.
ENTRY_POINTS: dict[str, str] = {"howto/shutdown.md": "main"}


@attrs.frozen
class Block:
    """One fenced Python block of a docs page."""

    page: str  # relative to docs/, with forward slashes
    line: int  # of the opening fence, from 1
    source: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def _is_python(info: str) -> bool:
    words = info.split()
    if not words:
        return False
    if words[0] in CODE_DIRECTIVES:
        return len(words) > 1 and words[1] in PYTHON
    return words[0] in PYTHON


def _strip_directive_options(lines: list[str]) -> list[str]:
    """Drop a MyST directive's ``:option:`` lines or ``---`` front matter."""
    if lines and lines[0].strip() == "---":
        end = lines.index("---", 1) if "---" in lines[1:] else 0
        return lines[end + 1 :]
    while lines and re.match(r"^:[\w-]+:", lines[0]):
        lines = lines[1:]
    return lines


def page_blocks(path: Path) -> list[Block]:
    """The Python blocks of one page, with their fence's indentation removed."""
    page = path.relative_to(DOCS).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}} *$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if _is_python(opening["info"]):
            body = [
                line[indent:] if line.startswith(" " * indent) else line.lstrip()
                for line in lines[index + 1 : end]
            ]
            if opening["info"].split()[0] in CODE_DIRECTIVES:
                body = _strip_directive_options(body)
            blocks.append(Block(page, index + 1, "\n".join(body) + "\n"))
        index = end + 1
    return blocks


def doc_blocks() -> list[Block]:
    """Every Python block of every page under docs/, except the build output."""
    pages = sorted(DOCS.rglob("*.md"))
    return [
        block
        for path in pages
        if "_build" not in path.relative_to(DOCS).parts
        for block in page_blocks(path)
    ]


BLOCKS = doc_blocks()


def _compile(block: Block) -> Any:
    """Compile *block*, with its line numbers as in the page."""
    source = block.source
    if source.lstrip().startswith("."):  # a builder method chain
        source = f"(layers.ServiceBuilder()\n{source})\n"
    else:
        source = "\n" + source
    return compile(
        "\n" * (block.line - 1) + source,
        str(DOCS / block.page),
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )


def _namespace(block: Block) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "doc_block"}
    setup = PRELUDE + SETUP.get(block.page, "")
    exec(compile(setup, f"<setup of {block.page}>", "exec"), namespace)
    return namespace


async def _await(code: Any, namespace: dict[str, Any]) -> None:
    await eval(code, namespace)


def _imported_modules(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a chain fragment: compiled as a whole later
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.partition(".")[0])
    return names


@contextlib.contextmanager
def _global_state_kept() -> Iterator[None]:
    """Put back what a block may change: sinks, switches, logging config."""
    sinks, messages = layers.events.STATE.sinks, layers.events.STATE.error_messages
    configured, config = structlog.is_configured(), structlog.get_config()
    root, ours = logging.getLogger(), logging.getLogger("layers")
    handlers, root_level, our_level = list(root.handlers), root.level, ours.level
    try:
        yield
    finally:
        layers.events.STATE.sinks = sinks
        layers.events.STATE.error_messages = messages
        if configured:
            structlog.configure(**config)
        else:
            structlog.reset_defaults()
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(root_level)
        ours.setLevel(our_level)


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_python_block_runs(block: Block) -> None:
    """The docs' Python block runs as shown, with its page's stand-ins."""
    for library in sorted(_imported_modules(block.source) & OTHER_LIBRARIES):
        pytest.importorskip(library, reason=f"{block} shows {library}")
    code = _compile(block)
    entry_point = ENTRY_POINTS.get(block.page)
    with _global_state_kept():
        if code.co_flags & inspect.CO_COROUTINE:  # awaits at top level
            for backend in BACKENDS:
                run(_await, code, _namespace(block), backend=backend)
            return
        namespace = _namespace(block)
        defined_before = set(namespace)
        exec(code, namespace)
        if entry_point and entry_point in set(namespace) - defined_before:
            for backend in BACKENDS:
                namespace = _namespace(block)
                exec(code, namespace)
                run(namespace[entry_point], backend=backend)


def test_blocks_are_found() -> None:
    """The collection finds the docs' plain Python blocks (the test is not vacuous)."""
    assert len(BLOCKS) >= 30


def test_every_setup_belongs_to_a_page_with_blocks() -> None:
    """SETUP and ENTRY_POINTS name only pages that still have Python blocks."""
    pages = {block.page for block in BLOCKS}
    assert set(SETUP) <= pages
    assert set(ENTRY_POINTS) <= pages


def test_fences_name_a_language() -> None:
    """No fenced block is left without a language (Sphinx would guess Python)."""
    bare = []
    for path in sorted(DOCS.rglob("*.md")):
        if "_build" in path.relative_to(DOCS).parts:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        inside: str | None = None
        for number, line in enumerate(lines, 1):
            fence = FENCE.match(line)
            if fence is None:
                continue
            if inside is None:
                inside = fence["fence"]
                if not fence["info"].strip():
                    bare.append(f"{path.relative_to(DOCS).as_posix()}:{number}")
            elif fence["fence"].startswith(inside) and not fence["info"].strip():
                inside = None
    assert not bare, f"give these fenced blocks a language: {bare}"
