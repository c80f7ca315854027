"""A real ``redis-server`` for the tests: on a free port, in its own directory.

The fixtures in conftest.py use it. No fake Redis: the shared layers' Lua
scripts and the server's ``TIME`` are what must be tested. Tests that need
Redis are skipped where ``redis-server`` is not on the PATH, except with
``LAYERS_REQUIRE_REDIS=1`` (set by ``.ci/run``), where that is an error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

REQUIRE_ENV = "LAYERS_REQUIRE_REDIS"


def redis_server_path() -> str | None:
    """The ``redis-server`` executable, or None if it is not on the PATH."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process that a test can stop, start, freeze and thaw.

    It keeps its port across restarts, so clients reconnect to the same URL.
    Nothing is persisted (no RDB, no AOF): a restart starts empty, as a
    crashed Redis without persistence would.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        unix_socket: Path | None = None,
    ) -> None:
        self.directory = directory
        self.port = free_port() if port is None else port
        self.unix_socket = unix_socket  # also listen on this Unix socket
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until it answers PING."""
        executable = redis_server_path()
        if executable is None:
            raise RuntimeError("redis-server is not on the PATH")
        self.directory.mkdir(parents=True, exist_ok=True)
        unix = []
        if self.unix_socket is not None:
            unix = ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        self.process = subprocess.Popen(
            [
                executable,
                *unix,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        give_up = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"redis-server exited ({code}), port {self.port}")
            try:
                if self.command("PING") == b"+PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > give_up:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server (SIGKILL: as a crash) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # if frozen
            process.kill()
        process.wait(timeout=20)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a frozen server (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def command(self, *parts: str) -> bytes:
        """Send one command over a fresh socket; the first line of the reply."""
        payload = f"*{len(parts)}\r\n".encode()
        for part in parts:
            data = part.encode()
            payload += b"$%d\r\n%s\r\n" % (len(data), data)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(payload)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        return reply.split(b"\r\n", 1)[0]

    def flush(self) -> None:
        """Empty every database and forget every script."""
        self.command("FLUSHALL")
        self.command("SCRIPT", "FLUSH")

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_required() -> bool:
    """Whether a missing redis-server is an error (``LAYERS_REQUIRE_REDIS=1``)."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


class Worker:
    """A worker process of a multi-process test, and its output lines."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None
        self.stdout = BufferedByteReceiveStream(process.stdout)

    async def line(self, within: float = 20.0) -> str:
        """The next line it prints, within *within* seconds."""
        with anyio.fail_after(within):
            return (await self.stdout.receive_until(b"\n", 4096)).decode()


async def spawn_worker(script: Path, options: dict[str, Any]) -> Worker:
    """Start *script* as a worker process (its own event loop), *options* as JSON."""
    process = await anyio.open_process(
        [sys.executable, str(script), json.dumps(options)], stderr=None
    )
    return Worker(process)


async def stop_workers(workers: list[Worker]) -> None:
    """Kill the workers still running and wait for every one (shielded)."""
    for worker in workers:
        if worker.process.returncode is None:
            worker.process.kill()
        with anyio.CancelScope(shield=True):
            await worker.process.wait()
            await worker.process.aclose()
