"""A server-like program that stops gracefully on SIGTERM or SIGINT.

A worker takes a job every 0.1 s and hands it to a handler (0.5 s per job)
behind a :class:`layers.Drain`. On the first signal the supervisor tells the
worker, which stops taking jobs; the drain refuses new calls; the jobs in
flight finish within the grace period; the program prints its report and
exits 0. A second signal cancels at once. With ``--stuck``, one more task
ignores shutdown: it is cancelled when the grace period ends and the
program exits 1, naming it.

Run it, then press Ctrl-C (or ``kill -TERM <pid>``)::

    python examples/shutdown_server.py --backend trio
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio

import layers


def say(*parts: object) -> None:
    print(*parts, flush=True)


async def handle(job: int) -> str:
    await anyio.sleep(0.5)
    return f"job {job} done"


async def worker(
    supervisor: layers.Supervisor, handler: layers.Service[int, str]
) -> None:
    async def run(job: int) -> None:
        say(f"job {job} started")
        try:
            say(await handler(job))
        except layers.ShuttingDown:  # taken just as shutdown began
            say(f"job {job} refused: shutting down")

    async with anyio.create_task_group() as jobs:
        job = 0
        # Stop taking jobs the moment shutdown begins; the jobs in flight
        # (in the task group) run on to their end.
        with supervisor.cancel_on_shutdown():
            while not supervisor.is_shutting_down:
                job += 1
                jobs.start_soon(run, job)
                await anyio.sleep(0.1)
        say("worker: no new jobs")
        try:
            await handler(job + 1)
        except layers.ShuttingDown as error:
            say(f"new work rejected: {type(error).__name__}")


async def stuck() -> None:
    await anyio.sleep_forever()  # never looks at the supervisor


async def main(grace: float, with_stuck_task: bool) -> int:
    drain = layers.Drain(retry_after=5, name="jobs")
    handler = layers.ServiceBuilder().layer(drain).timeout(5).service(handle)
    async with layers.Supervisor(grace=grace, drains=[drain]) as supervisor:
        supervisor.start_soon(worker, supervisor, handler, name="worker")
        if with_stuck_task:
            supervisor.start_soon(stuck, name="stuck")
        say(f"ready pid={os.getpid()} backend={anyio_backend_name()}")
        await supervisor.wait_shutdown()
        say(f"shutting down: {supervisor.report.reason}")
    report = supervisor.report
    say(report.summary())
    say(f"in flight at exit: {drain.in_flight}")
    return report.exit_code


def anyio_backend_name() -> str:
    import sniffio

    return sniffio.current_async_library()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--stuck", action="store_true", help="add a stuck task")
    arguments = parser.parse_args()
    sys.exit(
        anyio.run(main, arguments.grace, arguments.stuck, backend=arguments.backend)
    )
