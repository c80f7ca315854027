"""The core: Service, layer_fn, Identity, Stack and service_fn."""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.from_thread
import pytest
from helpers import recording

import layers
from layers import (
    ConfigurationError,
    Identity,
    Service,
    ServiceBuilder,
    Stack,
    layer_fn,
    service_fn,
)
from layers._core import check_layer

pytestmark = pytest.mark.anyio

# Bound on every real wait in the thread tests: generous, never reached.
REAL_WAIT = 10.0


async def double(request: int) -> int:
    """Double the request."""
    return request * 2


class AsyncCallable:
    async def __call__(self, request: int) -> int:
        return request + 1


# -- Service ------------------------------------------------------------------


async def test_async_def_is_a_service() -> None:
    """A plain async def is a Service as it is, with no wrapper."""
    svc: Service[int, int] = double
    assert await svc(21) == 42


async def test_async_callable_object_is_a_service() -> None:
    """An object with an async __call__ is a Service too."""
    svc: Service[int, int] = AsyncCallable()
    assert await svc(1) == 2


# -- layer_fn -----------------------------------------------------------------


async def test_layer_fn_makes_a_custom_layer() -> None:
    """A custom layer is a few lines with layer_fn, and it wraps the inner service."""

    def add_one(inner: Service[int, int]) -> Service[int, int]:
        async def call(request: int) -> int:
            return await inner(request + 1)

        return call

    layer = layer_fn(add_one)
    assert isinstance(layer, layers.LayerFn)
    assert layer.function is add_one
    assert await layer.layer(double)(1) == 4


def test_layer_fn_repr_names_the_function() -> None:
    """layer_fn's repr shows the function it was made from."""

    def add_header(inner: Service[Any, Any]) -> Service[Any, Any]:
        return inner

    text = repr(layer_fn(add_header))
    assert text.startswith("layer_fn(")
    assert "add_header" in text


@pytest.mark.parametrize("bad", [None, 42, "inner"])
def test_layer_fn_rejects_a_non_callable(bad: Any) -> None:
    """layer_fn with a non-callable raises ConfigurationError naming `function`."""
    with pytest.raises(ConfigurationError, match="function") as info:
        layer_fn(bad)
    assert repr(bad) in str(info.value)


# -- Identity -----------------------------------------------------------------


def test_identity_returns_the_same_service() -> None:
    """Identity().layer(s) is s itself."""
    assert Identity().layer(double) is double
    assert repr(Identity()) == "Identity()"


# -- Stack --------------------------------------------------------------------


async def test_stack_first_layer_is_outermost() -> None:
    """Stack(a, b).layer(s): the request passes a, then b; the response b, then a."""
    seen: list[str] = []
    a, b = recording("a", seen), recording("b", seen)
    stack = Stack(a, b)
    assert stack.layers == (a, b)

    async def handler(request: str) -> str:
        seen.append("handler")
        return request

    assert await stack.layer(handler)("x") == "x"
    assert seen == ["a in", "b in", "handler", "b out", "a out"]


def test_empty_stack_is_identity() -> None:
    """A Stack of no layers returns the inner service unchanged."""
    assert Stack().layer(double) is double


@pytest.mark.parametrize("bad", [42, None, double])
def test_stack_rejects_a_non_layer_naming_its_index(bad: Any) -> None:
    """A member without .layer raises TypeError naming layers[i]."""
    with pytest.raises(TypeError, match=r"layers\[1\]"):
        Stack(Identity(), bad)


async def test_stack_takes_a_builder_as_its_layers() -> None:
    """A ServiceBuilder in a Stack stands for its into_layer(), order kept."""
    seen: list[str] = []
    builder = ServiceBuilder().layer(recording("b", seen)).layer(recording("c", seen))
    stack = Stack(recording("a", seen), builder)

    async def handler(request: str) -> str:
        seen.append("handler")
        return request

    assert await stack.layer(handler)("x") == "x"
    assert seen == ["a in", "b in", "c in", "handler", "c out", "b out", "a out"]


def test_stack_refuses_a_layer_class_pointing_to_an_instance() -> None:
    """Stack(layers.Timeout), the class, raises TypeError asking for an instance."""
    with pytest.raises(TypeError, match=r"layers\[0\].*Timeout\(\.\.\.\)"):
        Stack(layers.Timeout)  # type: ignore[arg-type]


def test_a_builder_is_not_a_layer_where_one_is_checked() -> None:
    """Where a layer is checked, not converted, a builder points to into_layer()."""
    with pytest.raises(TypeError, match=r"into_layer\(\)"):
        check_layer("PerKey", "factory(key)", ServiceBuilder().timeout(1))


def test_stack_repr_lists_its_layers() -> None:
    """Stack's repr lists its layers in order."""
    assert repr(Stack(Identity(), Identity())) == "Stack(Identity(), Identity())"


# -- service_fn: async callables are returned unchanged -----------------------


def test_service_fn_returns_an_async_def_unchanged() -> None:
    """service_fn(async def) is the function itself, at no cost per call."""
    assert service_fn(double) is double


def test_service_fn_returns_an_async_callable_object_unchanged() -> None:
    """service_fn(object with async __call__) is the object itself."""
    obj = AsyncCallable()
    assert service_fn(obj) is obj


async def test_service_fn_returns_a_partial_of_an_async_def_unchanged() -> None:
    """service_fn(functools.partial(async def, ...)) is the partial itself."""

    async def add(offset: int, request: int) -> int:
        return offset + request

    partial = functools.partial(add, 10)
    assert service_fn(partial) is partial
    assert await service_fn(partial)(1) == 11


def test_service_fn_rejects_a_non_callable() -> None:
    """service_fn with a non-callable raises ConfigurationError naming `function`."""
    with pytest.raises(ConfigurationError, match="function"):
        service_fn(42)  # type: ignore[call-overload]


# -- service_fn: sync callables run in a worker thread (real clock) -----------


@pytest.mark.realtime
class TestSyncInWorkerThread:
    """Real threads: these tests run on the real clock, not on virtual time."""

    @pytest.fixture(
        params=[
            pytest.param("asyncio", id="asyncio"),
            pytest.param("trio", id="trio"),
        ]
    )
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    async def test_sync_function_runs_in_a_worker_thread(self) -> None:
        """A sync function runs in a thread other than the event loop's."""
        loop_thread = threading.get_ident()

        def work(request: int) -> tuple[int, int]:
            return request * 2, threading.get_ident()

        response, worker_thread = await service_fn(work)(21)
        assert response == 42
        assert worker_thread != loop_thread

    async def test_sync_function_does_not_block_the_event_loop(self) -> None:
        """While the sync function waits, an event-loop task runs and releases it."""
        started = anyio.Event()
        release = threading.Event()

        def work(request: str) -> bool:
            anyio.from_thread.run_sync(started.set)
            return release.wait(REAL_WAIT)

        async def releaser() -> None:
            await started.wait()
            release.set()

        with anyio.fail_after(REAL_WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(releaser)
                released = await service_fn(work)("x")
        assert released is True

    async def test_timeout_waits_for_the_thread_by_default(self) -> None:
        """abandon_on_cancel=False: Elapsed comes only after the thread returned."""
        finished = threading.Event()

        def work(request: str) -> str:
            threading.Event().wait(0.2)
            finished.set()
            return request

        svc = layers.Timeout(0.05).layer(service_fn(work))
        try:
            with anyio.fail_after(REAL_WAIT), pytest.raises(layers.Elapsed):
                await svc("x")
            assert finished.is_set()
        finally:
            # If the thread was abandoned after all, do not leak it.
            await anyio.to_thread.run_sync(finished.wait, REAL_WAIT)

    async def test_timeout_abandons_the_thread_when_asked(self) -> None:
        """abandon_on_cancel=True: Elapsed comes at once; the thread runs on."""
        release = threading.Event()
        finished = threading.Event()

        def work(request: str) -> str:
            release.wait(REAL_WAIT)
            finished.set()
            return request

        svc = layers.Timeout(0.05).layer(service_fn(work, abandon_on_cancel=True))
        try:
            with anyio.fail_after(REAL_WAIT), pytest.raises(layers.Elapsed):
                await svc("x")
            assert not finished.is_set()
        finally:
            release.set()
            # Do not leak the thread into the next test.
            assert await anyio.to_thread.run_sync(finished.wait, REAL_WAIT)

    async def test_sync_callable_returning_a_coroutine_is_refused(self) -> None:
        """A sync callable returning a coroutine: TypeError, the coroutine closed."""
        made: list[Any] = []

        async def fetch(request: int) -> int:
            return request

        def wrong(request: int) -> Awaitable[int]:
            coroutine = fetch(request)
            made.append(coroutine)
            return coroutine

        with pytest.raises(TypeError):
            await service_fn(wrong)(1)
        # Closed, so no "coroutine was never awaited" warning (warnings are errors).
        assert made[0].cr_frame is None

    async def test_coroutine_from_a_sync_callable_error_names_the_callable(
        self,
    ) -> None:
        """The TypeError names the user's callable and says to write an async def."""

        async def fetch(request: int) -> int:
            return request

        def wrong_callable(request: int) -> Awaitable[int]:
            return fetch(request)

        with pytest.raises(TypeError, match="wrong_callable") as info:
            await service_fn(wrong_callable)(1)
        assert "async def" in str(info.value)

    async def test_limiter_bounds_the_worker_threads(self) -> None:
        """With CapacityLimiter(1), two concurrent calls run one thread at a time."""
        lock = threading.Lock()
        running = 0
        most = 0

        def work(request: int) -> int:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            threading.Event().wait(0.05)
            with lock:
                running -= 1
            return request

        svc: Callable[[int], Awaitable[int]] = service_fn(
            work, limiter=anyio.CapacityLimiter(1)
        )
        results: list[int] = []

        async def call(request: int) -> None:
            results.append(await svc(request))

        with anyio.fail_after(REAL_WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, 1)
                tg.start_soon(call, 2)
        assert sorted(results) == [1, 2]
        assert most == 1
