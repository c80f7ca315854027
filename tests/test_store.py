"""StoreHealth: one layer's account of a failing shared store (no Redis needed)."""

from __future__ import annotations

import pickle

import anyio
import pytest

import layers
from layers import StoreError, StoreUnavailable
from layers._store import StoreHealth
from layers.events import StoreFailed, StoreRecovered
from layers.testing import capture_events

pytestmark = pytest.mark.anyio


def failure() -> StoreError:
    """A StoreError raised from an OSError, as RedisConnection raises one."""
    try:
        try:
            raise ConnectionRefusedError("refused")
        except OSError as cause:
            raise StoreError("a Redis command failed", store="app") from cause
    except StoreError as error:
        return error


async def test_one_event_per_outage_and_one_when_it_ends() -> None:
    """StoreFailed at the first failure only; StoreRecovered counts the outage."""
    health = StoreHealth("quota", "app", "open")
    with capture_events() as seen:
        assert health.failed(failure()) == "open"
        await anyio.sleep(2)
        assert health.failed(failure()) == "open"
        assert health.failed(failure()) == "open"
        health.answered()
        health.answered()  # no outage: nothing
        health.failed(failure())
    assert [type(event) for event in seen] == [
        StoreFailed,
        StoreRecovered,
        StoreFailed,
    ]
    first, recovered, _ = seen
    assert first == StoreFailed(
        layer="quota", store="app", policy="open", error="ConnectionRefusedError"
    )
    assert isinstance(recovered, StoreRecovered)
    assert recovered.fallbacks == 3
    assert recovered.down_for == pytest.approx(2)
    assert health.fallbacks == 4


async def test_an_outage_begun_in_the_background_counts_no_call() -> None:
    """began() emits StoreFailed once and counts nothing; failed() counts calls."""
    health = StoreHealth("breaker", "app", "local")
    with capture_events() as seen:
        health.began(failure())
        health.began(failure())
        assert health.fallbacks == 0
        health.failed(failure())
        await anyio.sleep(3)
        health.answered()
    assert [type(e) for e in seen] == [StoreFailed, StoreRecovered]
    recovered = seen[1]
    assert isinstance(recovered, StoreRecovered)
    assert (recovered.down_for, recovered.fallbacks) == (3, 1)
    assert health.fallbacks == 1


def test_refuse_raises_store_unavailable_from_the_store_error() -> None:
    """Fail closed: a Rejected with reason "store_unavailable", chained."""
    health = StoreHealth("quota", "app", "closed")
    error = failure()
    with pytest.raises(StoreUnavailable, match="'quota'") as caught:
        health.refuse(error, retry_after=1.0)
    assert isinstance(caught.value, layers.Rejected)
    assert caught.value.reason == "store_unavailable"
    assert caught.value.layer == "quota"
    assert caught.value.retry_after == 1.0
    assert caught.value.__cause__ is error


def test_store_errors_pickle_with_their_fields() -> None:
    """Both errors survive pickling (a worker process may send them on)."""
    error = pickle.loads(pickle.dumps(StoreError("down", store="app")))
    assert (str(error), error.store) == ("down", "app")
    refused = pickle.loads(
        pickle.dumps(StoreUnavailable("no", layer="q", reason="store_unavailable"))
    )
    assert (refused.layer, refused.reason) == ("q", "store_unavailable")
