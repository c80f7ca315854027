"""Per-tenant rate limits in front of one shared API, with a bulkhead.

A fake API serves many tenants. The stack around it, outermost first:

1. ``rate_limit`` per tenant (``key=``): 5 calls per second each, a burst
   of 2, in wait mode with ``max_wait=0.9`` s. A tenant that sends more
   than it may waits its turn (the schedule: 2 at once, then one every
   200 ms); what would wait longer than 0.9 s is refused at once with
   ``RateLimited``. Tenants never slow each other down. (The 0.9 s falls
   halfway between two turns, so a call that starts 100 ms late on a busy
   machine is still decided the same way.)
2. ``concurrency_limit``: at most 3 calls inside the API at once, whoever
   they come from (a bulkhead), with a bounded queue.

A second, "free tier" limit shows reject mode and the bounded table of
keys: 1 call per second per tenant, at most 3 tenants tracked at once. A
fourth tenant arriving while the three are still live is refused until the
earliest entry expires (a live entry is never evicted, so fresh tenant ids
cannot reset anybody's limit).

Run it on both backends (trio needs ``pip install -e '.[trio]'``)::

    python examples/per_tenant_rate_limit.py                  # both backends
    python examples/per_tenant_rate_limit.py --backend trio   # or asyncio

Each run takes about half a second of real time.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import anyio
import attrs

import layers


@attrs.frozen
class Request:
    """A call to the API on behalf of a tenant."""

    tenant: str
    path: str


async def api(request: Request) -> str:
    """The shared downstream: 10 ms per call."""
    await anyio.sleep(0.01)
    return f"200 {request.path}"


async def paid_tier() -> None:
    per_tenant = layers.RateLimit(
        5, 1.0, burst=2, key=lambda r: r.tenant, max_wait=0.9, name="per-tenant"
    )
    bulkhead = layers.ConcurrencyLimit(3, max_waiting=50, name="api-bulkhead")
    client = layers.ServiceBuilder().layer(per_tenant).layer(bulkhead).service(api)

    outcomes: dict[str, list[str]] = {"acme": [], "globex": []}

    async def call(request: Request) -> None:
        try:
            await client(request)
            outcomes[request.tenant].append("ok")
        except layers.RateLimited as error:
            outcomes[request.tenant].append(f"refused ({error.retry_after:.2f} s)")

    # acme sends 8 calls at once; globex 2 at the same moment.
    async with anyio.create_task_group() as group:
        for i in range(8):
            group.start_soon(call, Request("acme", f"/orders/{i}"))
        for i in range(2):
            group.start_soon(call, Request("globex", f"/users/{i}"))
    for tenant, results in outcomes.items():
        admitted = results.count("ok")
        refused = len(results) - admitted
        print(f"  {tenant}: {admitted} admitted, {refused} refused")
    stats = per_tenant.statistics()
    print(
        f"  per-tenant: waited={stats.waited} rejected={stats.rejected} "
        f"waiting={stats.waiting}"
    )
    bulk = bulkhead.statistics()
    print(
        f"  bulkhead: in flight at the end: {bulk.in_flight}, waiting: {bulk.waiting}"
    )


async def free_tier() -> None:
    free = layers.RateLimit(
        1, 1.0, mode="reject", key=lambda r: r.tenant, max_keys=3, name="free-tier"
    )
    client = layers.ServiceBuilder().layer(free).service(api)
    for tenant in ["t1", "t2", "t3", "t4", "t1"]:
        try:
            print(f"  {tenant}: {await client(Request(tenant, '/'))}")
        except layers.RateLimited as error:
            print(f"  {tenant}: RateLimited, retry after {error.retry_after:.1f} s")
    stats = free.statistics()
    print(f"  free-tier: keys={stats.keys} table_full={stats.table_full}")


async def main() -> None:
    print(" paid tier (wait mode, per tenant):")
    await paid_tier()
    print(" free tier (reject mode, 3 tenants tracked at most):")
    await free_tier()


def cli() -> int:
    parser = argparse.ArgumentParser(description="Run the per-tenant rate limits.")
    parser.add_argument(
        "--backend", choices=["asyncio", "trio", "both"], default="both"
    )
    backend: str = parser.parse_args().backend
    layers.set_logging(False)  # keep the output to what this script prints
    has_trio = importlib.util.find_spec("trio") is not None
    if backend == "trio" and not has_trio:
        print("trio is not installed: pip install -e '.[trio]'")
        return 1
    run_on = ["asyncio", "trio"] if backend == "both" else [backend]
    for name in run_on:
        if name == "trio" and not has_trio:
            print("== trio == skipped: pip install -e '.[trio]'")
            continue
        print(f"== {name} ==")
        anyio.run(main, backend=name)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
