"""A plain httpx client and a layered one, side by side, against a flaky API.

The script starts a real HTTP server in this process: hypercorn on
127.0.0.1 (a free port), on the backend you choose. Its API misbehaves the
way real ones do:

* a fraction of the answers are ``503 Service Unavailable``;
* some answers are slow (latency spikes of up to a second);
* above a rate of calls per second it answers ``429 Too Many Requests``
  with a ``Retry-After`` header;
* for about a second it is down (an outage: every call gets a 503).

Two clients then send the same load, one after the other: waves of GET
requests on a fixed schedule, faster than the server takes them. One is a
plain ``httpx.AsyncClient``; the other is the same client behind a
``layers`` stack (a deadline per call, retries that honour ``Retry-After``,
a circuit breaker, a rate limit under the server's and a concurrency limit,
with a timeout per attempt). The table at the end compares them, and the
lines under it say how to read it. Needs ``hypercorn`` and ``httpx`` (the
``flagship`` extra) and, for trio, the ``trio`` extra; no network. It takes
about 15 s.

**Reproducible, as far as real time allows.** Everything random is drawn
from the seed and the call's number (and the attempt), never from the order
in which calls happen to arrive: whether the server fails a call or answers
it slowly, and how long the layered client backs off before a retry. Calls
leave on a fixed schedule; the server counts its rate limit in one-second
windows, each wave at the start of one, and its outage spans the whole
second wave, so a call a little late still lands where the schedule put it:
on a quiet machine the plain client meets the same 429s and 503s in every
run. What still varies is real time: how late calls leave and how long they
take (milliseconds; on a busy machine, where client and server, both in
this process, wait for a CPU, up to a second, and then calls spill into the
next second of the server's limit and meet fewer 429s), and so the
latencies; and the layered client's retries, breaker transitions and
queueing follow the timing of its calls. The table shows how late calls
left, and a line under it warns when a run fell behind its schedule.

Run: ``python examples/flagship.py [--backend asyncio|trio] [--seed N]``.
"""

from __future__ import annotations

import argparse
import email.utils
import importlib
import math
import random
import socket
import statistics
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

import anyio
import httpx
from hypercorn.config import Config
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    Scope,
)

import layers
from layers.events import (
    CircuitCallRejected,
    CircuitStateChanged,
    ConcurrencyLimitRejected,
    RateLimitRejected,
    RateLimitWaited,
    RetryAttemptFailed,
)

# ------------------------------------------------------------------ scenario

WAVES = 3
"""Waves of requests..."""
WAVE_SIZE = 60
"""...of this many requests each..."""
WAVE_EVERY = 2.0
"""...one every this many seconds (a whole number: each wave starts a window
of the server's rate limit)..."""
SEND_RATE = 240.0
"""...sent at this many calls per second: a quarter of a second per wave."""

SERVER_LIMIT = 48
"""Calls the server takes per second, counted in fixed one-second windows
(as many APIs count: "48 calls a second"); past that it answers 429 until
the next window. A wave is more than that: the plain client meets 429s.
"""
ERROR_RATE = 0.08
"""The fraction of calls answered 503 at random."""
SPIKE_RATE = 0.04
"""The fraction of calls that are slow..."""
SPIKE = (0.4, 1.0)
"""...taking this long (seconds, uniform)."""
LATENCY = (0.002, 0.015)
"""How long the other calls take (seconds, uniform)."""
OUTAGE = (1.9, 3.0)
"""Seconds after the start of a run during which every call gets a 503.

It covers the whole of the second wave, which leaves between 2.0 s and 2.25 s.
"""

QUOTA = 40.0
"""The layered client's own rate limit, calls per second, with a burst of 4:
at most 44 calls in any second, so the server's limit is never reached.
"""

LATE = 0.1
"""Seconds behind the schedule past which the output warns that the run lagged."""

RETRYABLE = frozenset({429, 502, 503, 504})
"""The statuses worth sending a GET again for."""


def send_time(number: int) -> float:
    """When call *number* leaves, in seconds after the start of a run."""
    wave, index = divmod(number, WAVE_SIZE)
    return wave * WAVE_EVERY + index / SEND_RATE


# -------------------------------------------------------------- the server


@dataclass
class FlakyApi:
    """An ASGI app: ``GET /items/<n>`` answers 200, unless it misbehaves.

    Whether call *n* fails, and how slowly it answers, is drawn from a
    random generator seeded with the seed, *n* and the attempt number (the
    ``x-attempt`` header; 1 without it), never from the order of arrival:
    both clients meet the same faults on their first attempts, and a retry
    rolls the dice again. The 429s and the outage depend on the time since
    :meth:`begin` (real time: the one thing that varies between runs), in
    steps wide enough that a call a little late still lands where the
    schedule put it.
    """

    seed: int
    origin: float = 0.0
    window: int = 0  # the rate limit's current one-second window...
    taken: int = 0  # ...and the calls it took in it
    statuses: Counter[int] = field(default_factory=Counter[int])

    def begin(self) -> None:
        """Start a run: the clock of the outage, the counters and the limit."""
        self.origin = anyio.current_time()
        self.window = self.taken = 0
        self.statuses = Counter()

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        number = int(scope["path"].rsplit("/", 1)[-1])
        attempt = int(headers.get(b"x-attempt", b"1"))
        # This call's dice, all thrown now, whatever the answer is.
        dice = random.Random(f"{self.seed}:{number}:{attempt}")
        failed = dice.random() < ERROR_RATE
        duration = dice.uniform(*(SPIKE if dice.random() < SPIKE_RATE else LATENCY))
        elapsed = anyio.current_time() - self.origin
        extra: list[tuple[bytes, bytes]] = []

        # An API gateway: SERVER_LIMIT calls per one-second window.
        window = math.floor(elapsed)
        if window != self.window:
            self.window, self.taken = window, 0
        if self.taken >= SERVER_LIMIT:
            status = 429
            wait = window + 1 - elapsed  # until the next window
            extra.append((b"retry-after", str(max(1, math.ceil(wait))).encode()))
        else:
            self.taken += 1
            outage = OUTAGE[0] <= elapsed < OUTAGE[1]
            status = 503 if outage or failed else 200
        # Counted on arrival: a client may give up on a slow answer.
        self.statuses[status] += 1
        if status != 429:
            await anyio.sleep(duration)
        body = f'{{"item": {number}}}' if status == 200 else f'{{"error": {status}}}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *extra],
            }
        )
        await send(
            {"type": "http.response.body", "body": body.encode(), "more_body": False}
        )


async def serve(
    app: ASGIFramework, sock: socket.socket, backend: str, stop: anyio.Event
) -> None:
    """Serve *app* on *sock* with hypercorn on *backend* until *stop* is set."""
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.errorlog = None
    config.graceful_timeout = 2.0

    async def shutdown_trigger() -> None:
        await stop.wait()

    # hypercorn.asyncio.serve or hypercorn.trio.serve: the same call on both.
    module = importlib.import_module(f"hypercorn.{backend}")
    serve_on: Callable[..., Awaitable[None]] = module.serve
    await serve_on(app, config, shutdown_trigger=shutdown_trigger)


# ------------------------------------------------------- the layered client


class RetryableStatus(Exception):
    """A 429/502/503/504 answer, as an error that Retry and the breaker see."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.status_code} {response.reason_phrase}")
        self.status = response.status_code
        self.retry_after = parse_retry_after(response.headers.get("retry-after"))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delay-seconds or an HTTP-date."""
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


CALL: ContextVar[int] = ContextVar("CALL")
"""The number of the call in progress (set by :func:`drive`, for the backoff)."""


def backoff(seed: int) -> Callable[[int], float]:
    """Exponential backoff with full jitter: 50 ms, doubling, at most 1 s.

    The jitter is drawn from the seed, the call's number and the attempt, so
    a call waits as long in every run, whichever calls failed before it.
    """

    def delay(attempt: int) -> float:
        dice = random.Random(f"{seed}:{CALL.get()}:{attempt}:backoff")
        return dice.uniform(0.0, min(1.0, 0.05 * 2 ** (attempt - 1)))

    return delay


def retry_after(error: Exception) -> float | None:
    """Retry's delay hint: the server's Retry-After (``None``: the backoff)."""
    return error.retry_after if isinstance(error, RetryableStatus) else None


def is_failure(error: BaseException) -> bool:
    """What the breaker counts against the server: 5xx, no answer, too slow.

    A 429 is not: the server is healthy, we were too fast.
    """
    if isinstance(error, RetryableStatus):
        return error.status >= 500
    return isinstance(error, httpx.TransportError | layers.Elapsed)


def layered(
    client: httpx.AsyncClient, seed: int
) -> layers.Service[str, httpx.Response]:
    """The client behind layers, outermost first."""

    async def get(path: str) -> httpx.Response:
        # The server sees which attempt this is (and rolls its dice again).
        attempt = str(layers.current_attempt())
        response = await client.get(path, headers={"x-attempt": attempt})
        if response.status_code in RETRYABLE:
            raise RetryableStatus(response)
        return response

    return (
        layers.ServiceBuilder()
        # At most 10 s per call, retries and waits included.
        .timeout(10.0, name="call")
        # GET is idempotent: retry what failed in passing, and what a layer
        # below refused (the breaker, the limits), not before its hint. For
        # up to 8 s rather than a number of attempts: each call the breaker
        # refuses is an attempt too, and a count would run out in the outage.
        .retry(
            on=(httpx.TransportError, RetryableStatus, layers.Elapsed, layers.Rejected),
            max_time=8.0,
            backoff=backoff(seed),
            max_delay=2.0,
            retry_after=retry_after,
            # The breaker keeps retries off the server during the outage and
            # the rate limit paces the rest, so no retry budget here.
            budget=None,
            name="api-retry",
        )
        .circuit_breaker(
            name="api",
            window_size=20,
            min_calls=10,
            failure_rate_threshold=0.5,
            on=is_failure,
            ignore=layers.Rejected,
            open_duration=0.25,
            open_duration_growth=2.0,
            max_open_duration=0.5,
            probes=3,
        )
        # Under the server's limit: its 429s never come.
        .rate_limit(QUOTA, burst=4, name="api-quota")
        .concurrency_limit(50, name="api-bulkhead")
        .timeout(0.3, name="attempt")
        .service(get)
    )


# ----------------------------------------------------------------- the runs


@dataclass
class Run:
    """What one client saw, and what the layers reported meanwhile."""

    latencies: list[float] = field(default_factory=list[float])
    late: list[float] = field(default_factory=list[float])  # behind the schedule
    failures: Counter[str] = field(default_factory=Counter[str])
    retries: int = 0
    retries_after_rejection: int = 0
    breaker_rejections: int = 0
    limit_rejections: int = 0
    quota_waits: list[float] = field(default_factory=list[float])
    transitions: list[str] = field(default_factory=list[str])
    statuses: Counter[int] = field(default_factory=Counter[int])
    origin: float = 0.0

    def sink(self, event: layers.Event) -> None:
        """Count what the layers do (an events sink)."""
        if isinstance(event, RetryAttemptFailed):
            self.retries += 1
            if event.error is not None and event.error.endswith("CircuitOpen"):
                self.retries_after_rejection += 1
        elif isinstance(event, CircuitStateChanged):
            at = anyio.current_time() - self.origin
            self.transitions.append(f"{event.to_state} at {at:.2f} s")
        elif isinstance(event, CircuitCallRejected):
            self.breaker_rejections += 1
        elif isinstance(event, RateLimitRejected | ConcurrencyLimitRejected):
            self.limit_rejections += 1
        elif isinstance(event, RateLimitWaited):
            self.quota_waits.append(event.waited)


async def drive(
    call: Callable[[str], Awaitable[httpx.Response]], api: FlakyApi, run: Run
) -> None:
    """Send WAVES waves of WAVE_SIZE GETs through *call*, on the fixed schedule."""

    async def one(number: int) -> None:
        CALL.set(number)  # this task's call, for the backoff's dice
        start = anyio.current_time()
        run.late.append(start - api.origin - send_time(number))
        try:
            response = await call(f"/items/{number}")
        except Exception as error:  # what a caller would see
            run.failures[type(error).__name__] += 1
        else:
            if response.status_code != 200:
                run.failures[str(response.status_code)] += 1
        run.latencies.append(anyio.current_time() - start)

    api.begin()
    run.origin = api.origin
    async with anyio.create_task_group() as group:
        for number in range(WAVES * WAVE_SIZE):
            await anyio.sleep_until(api.origin + send_time(number))
            group.start_soon(one, number)
    run.statuses = api.statuses


def percentile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[
        round(fraction * 100) - 1
    ]


def report(plain: Run, layered: Run) -> None:
    def row(label: str, left: str, right: str) -> None:
        print(f"  {label:<34}{left:>10}{right:>10}")

    def rate(run: Run) -> str:
        total = len(run.latencies)
        return f"{100 * (total - sum(run.failures.values())) / total:.1f}%"

    def ms(seconds: float) -> str:
        return f"{1000 * seconds:.0f} ms"

    def say(text: str) -> None:
        print(textwrap.fill(text, 79, initial_indent="  ", subsequent_indent="    "))

    quota_wait = statistics.median(layered.quota_waits or [0.0])
    late = max(plain.late + layered.late)
    print()
    row("", "plain", "layered")
    row("success rate", rate(plain), rate(layered))
    row(
        "calls that reached the server",
        *(str(r.statuses.total()) for r in (plain, layered)),
    )
    row(
        "  answered 429 (over the rate)",
        *(str(r.statuses[429]) for r in (plain, layered)),
    )
    row(
        "  answered 503 (errors, outage)",
        *(str(r.statuses[503]) for r in (plain, layered)),
    )
    for label, fraction in [("latency p50", 0.5), ("latency p99", 0.99)]:
        row(label, *(ms(percentile(r.latencies, fraction)) for r in (plain, layered)))
    row("calls sent late, at most", *(ms(max(r.late)) for r in (plain, layered)))
    row("retries", "-", str(layered.retries))
    row("  after a breaker rejection", "-", str(layered.retries_after_rejection))
    row("rejected by the breaker", "-", str(layered.breaker_rejections))
    row("rejected by the limits", "-", str(layered.limit_rejections))
    row("waits for the client's quota", "-", str(len(layered.quota_waits)))
    row("  median wait", "-", ms(quota_wait))
    row("breaker transitions", "-", str(len(layered.transitions)))
    print()
    for name, run in (("plain", plain), ("layered", layered)):
        failed = ", ".join(f"{kind} x{n}" for kind, n in run.failures.most_common())
        print(f"  {name} client's failed calls: {failed or 'none'}")
    say(f"breaker: {', '.join(layered.transitions) or 'stayed closed'}")
    print("\nHow to read it:")
    for paragraph in [
        f"success rate: calls answered 200, out of {WAVES * WAVE_SIZE}. Latency: "
        "from a call's start to its answer or its error, failed calls included.",
        "The plain client sends each call when it comes and takes the first "
        "answer: a 429 (over the server's rate) or a 503 (a fault, the "
        "outage) is a failed call, and a fast one, so its latencies stay low.",
        f"The layered client waits for its quota instead of failing: it sends "
        f"at most {QUOTA:g} calls/s, under the server's {SERVER_LIMIT}, so while "
        f"a wave comes at {SEND_RATE:g} calls/s its calls queue (median wait "
        f"{ms(quota_wait)}). It retries what failed after a backoff, and waits "
        "out the outage behind its breaker. Its latencies include all that "
        "waiting: higher than the plain client's, for calls that get an "
        "answer. Its slowest calls are the second wave's: they wait out the "
        "outage, then queue for the quota.",
        "From run to run: the seed fixes the schedule, each call's faults and "
        "slow answers, and each retry's backoff, so the plain client meets the "
        "same 429s and 503s. Real time still varies: how late calls leave and "
        f"arrive (here, up to {ms(late)} late), so latencies move, and the "
        "layered client's retries, breaker transitions and queueing follow the "
        "timing of its calls. On a busy machine, where client and server (both "
        "in this process) wait for a CPU, calls leave and arrive later, and "
        "those that spill into the next second of the server's limit meet "
        "fewer 429s.",
    ]:
        say(paragraph)
    if late > LATE:
        say(
            f"This run fell behind its schedule (by up to {late:.2f} s): its "
            "counts may differ from a run on a quieter machine."
        )


async def main(backend: str, seed: int) -> None:
    api = FlakyApi(seed)
    # A socket on a free port, handed to hypercorn: no race for the port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    print(
        f"A plain httpx client vs the same client behind layers, on {backend}, "
        f"against a flaky API at {url}\n"
        f"({WAVES} waves of {WAVE_SIZE} GETs, {WAVE_EVERY:g} s apart, each sent at "
        f"{SEND_RATE:g} calls/s; the API: {ERROR_RATE:.0%} 503s, {SPIKE_RATE:.0%} "
        f"slow answers,\n429 above {SERVER_LIMIT} calls/s, an outage from "
        f"{OUTAGE[0]:g} s to {OUTAGE[1]:g} s; seed {seed})"
    )
    stop = anyio.Event()
    plain, stacked = Run(), Run()
    async with anyio.create_task_group() as group:
        group.start_soon(serve, api, sock, backend, stop)
        async with httpx.AsyncClient(base_url=url) as client:
            await drive(client.get, api, plain)
        remove = layers.add_sink(stacked.sink)
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                await drive(layered(client, seed), api, stacked)
        finally:
            remove()
        stop.set()
    report(plain, stacked)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    layers.set_logging(False)  # the table at the end says what matters here
    anyio.run(main, args.backend, args.seed, backend=args.backend)
