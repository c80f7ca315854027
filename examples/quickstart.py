"""Quickstart: one stack of layers around a slow, unreliable service.

The service is a fake users API that lives in this file: most lookups take
50 ms, user 3 takes a full second, and unknown users raise ``KeyError``.
``ServiceBuilder`` wraps it in five layers, outermost first:

1. ``map_request`` parses the caller's text (``"42"``) into an ``int``;
2. ``filter`` refuses ids below 1 without calling the API (``Filtered``);
3. ``timeout`` gives each call 0.2 s, then cancels it (``Elapsed``);
4. ``map_err`` turns the API's ``KeyError`` into our own ``UserNotFound``;
5. ``map_response`` turns the API's record into a display name.

The same stack runs on asyncio and on trio (``pip install -e
'.[trio]'`` from the checkout)::

    python examples/quickstart.py                    # both backends
    python examples/quickstart.py --backend trio     # or asyncio

Each run takes well under a second of real time.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import anyio

import layers

USERS = {1: "Ada Lovelace", 2: "Grace Hopper", 3: "Barbara Liskov"}
SLOW_USERS = {3}  # these take 1 s: longer than the timeout


class UserNotFound(LookupError):
    """Our own error for an unknown user (the API raises KeyError)."""


async def users_api(user_id: int) -> dict[str, str]:
    """The fake downstream service: a plain ``async def`` is a service."""
    deadline = layers.current_deadline()  # set by the Timeout layer outside us
    if deadline is not None:
        remaining = deadline - anyio.current_time()
        print(f"    users_api({user_id}) sees a deadline {remaining:.2f} s away")
    await anyio.sleep(1.0 if user_id in SLOW_USERS else 0.05)
    return {"id": str(user_id), "name": USERS[user_id]}  # KeyError if unknown


def parse_user_id(text: str) -> int:
    return int(text.strip())


def is_valid_id(user_id: int) -> bool:
    return user_id >= 1


def not_found(error: Exception) -> Exception:
    if isinstance(error, KeyError):
        return UserNotFound(f"no user {error.args[0]}")
    return error  # anything else passes through untouched


def display_name(record: dict[str, str]) -> str:
    return f"{record['name']} (#{record['id']})"


# The first layer added is the outermost: a request passes the layers top to
# bottom, the response comes back bottom to top.
get_user: layers.Service[str, str] = (
    layers.ServiceBuilder()
    .map_request(parse_user_id)
    .filter(is_valid_id, name="valid-id")
    .timeout(0.2, name="users-api")
    .map_err(not_found)
    .map_response(display_name)
    .service(users_api)
)  # mypy and pyright follow the types: str in, int to the API, str out


def print_event(event: layers.Event) -> None:
    """An event sink: layers call it with every event they emit."""
    fields = " ".join(f"{k}={v!r}" for k, v in event.fields().items())
    print(f"    event: {event.event} {fields}")


async def main() -> None:
    started = anyio.current_time()
    for text in ["1", "2", "3", "0", "9"]:
        print(f"  get_user({text!r})")
        try:
            name = await get_user(text)
        except layers.Elapsed as error:  # also a builtin TimeoutError
            print(f"    -> Elapsed: {error} (layer {error.layer!r})")
        except layers.Filtered as error:  # a Rejected: the API was not called
            print(f"    -> Filtered: {error}")
        except UserNotFound as error:
            print(f"    -> UserNotFound: {error}")
        else:
            print(f"    -> {name}")
    print(f"  took {anyio.current_time() - started:.2f} s")


def run(backend: str) -> None:
    print(f"== {backend} ==")
    anyio.run(main, backend=backend)


def cli() -> int:
    parser = argparse.ArgumentParser(description="Run the quickstart stack.")
    parser.add_argument(
        "--backend", choices=["asyncio", "trio", "both"], default="both"
    )
    backend: str = parser.parse_args().backend

    # By default layers logs every event with logging (logger "layers").
    # Here we print events ourselves, to keep the output short.
    layers.set_logging(False)
    layers.add_sink(print_event)

    has_trio = importlib.util.find_spec("trio") is not None
    if backend == "trio" and not has_trio:
        print("trio is not installed: pip install -e '.[trio]'")
        return 1
    run_on = ["asyncio", "trio"] if backend == "both" else [backend]
    for name in run_on:
        if name == "trio" and not has_trio:
            print("== trio == skipped: pip install -e '.[trio]'")
            continue
        run(name)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
