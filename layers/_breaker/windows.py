"""The windows (by count, by time) and the half-open trial of a breaker."""

# The modules of layers._breaker share its private names.
# pyright: reportPrivateUsage=false, reportUnusedClass=false

from __future__ import annotations

import math

from .codes import _FAILED, _SLOW

# ---------------------------------------------------------------- windows


class _CountWindow:
    """The last *size* outcomes in a ring of outcome codes."""

    __slots__ = (
        "calls",
        "failures",
        "pos",
        "ring",
        "size",
        "slow",
        "streak",
    )

    def __init__(self, size: int) -> None:
        self.ring = bytearray(size)  # 0: empty slot
        self.size = size
        self.pos = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self.streak = 0  # failures in a row

    def add(self, code: int, now: float) -> None:
        ring = self.ring
        i = self.pos
        old = ring[i]
        if old:
            self.calls -= 1
            if old & _FAILED:
                self.failures -= 1
            if old & _SLOW:
                self.slow -= 1
        ring[i] = code
        i += 1
        self.pos = 0 if i == self.size else i
        self.calls += 1
        if code & _FAILED:
            self.failures += 1
            self.streak += 1
        else:
            self.streak = 0
        if code & _SLOW:
            self.slow += 1

    def counts(self, now: float | None) -> tuple[int, int, int]:
        return self.calls, self.failures, self.slow


class _TimeWindow:
    """The outcomes of the last *buckets* x *width* seconds.

    The current bucket's counters are plain attributes (the success path
    adds one to ``cur_calls``); older buckets are in lists, with their sums
    in ``old_*``.
    """

    __slots__ = (
        "bucket_end",
        "buckets",
        "calls",
        "clean_until",
        "cur",
        "cur_calls",
        "cur_failures",
        "cur_slow",
        "failures",
        "minimum",
        "old_calls",
        "old_failures",
        "old_slow",
        "slow",
        "streak",
        "width",
    )

    def __init__(self, seconds: float, buckets: int, minimum: int) -> None:
        self.width = seconds / buckets
        self.buckets = buckets
        self.minimum = minimum
        self.calls = [0] * buckets
        self.failures = [0] * buckets
        self.slow = [0] * buckets
        self.cur = -1  # the current bucket's number (time // width); none yet
        self.bucket_end = -math.inf  # the first outcome rotates
        # Until when a success can be counted by adding one to cur_calls:
        # the current bucket's end while a success can change no verdict
        # (no failure run, and no failure or slow call in a window still
        # short of min_calls), else -inf.
        self.clean_until = -math.inf
        self.cur_calls = self.cur_failures = self.cur_slow = 0
        self.old_calls = self.old_failures = self.old_slow = 0
        self.streak = 0

    def _bucket(self, now: float) -> int:
        width = self.width
        k = math.floor(now / width)
        while (k + 1) * width <= now:  # float rounding at a boundary
            k += 1
        return k

    def rotate(self, now: float) -> None:
        """Make the bucket that holds *now* current, evicting what fell out."""
        k = self._bucket(now)
        cur = self.cur
        if cur >= 0 and k > cur:
            size = self.buckets
            slot = cur % size
            self.calls[slot] = self.cur_calls
            self.failures[slot] = self.cur_failures
            self.slow[slot] = self.cur_slow
            self.old_calls += self.cur_calls
            self.old_failures += self.cur_failures
            self.old_slow += self.cur_slow
            if k - cur >= size:
                self.calls = [0] * size
                self.failures = [0] * size
                self.slow = [0] * size
                self.old_calls = self.old_failures = self.old_slow = 0
            else:
                for j in range(cur + 1, k + 1):
                    slot = j % size
                    self.old_calls -= self.calls[slot]
                    self.old_failures -= self.failures[slot]
                    self.old_slow -= self.slow[slot]
                    self.calls[slot] = self.failures[slot] = self.slow[slot] = 0
            self.cur_calls = self.cur_failures = self.cur_slow = 0
        if k > cur:
            self.cur = k
            self.bucket_end = (k + 1) * self.width
            if self.old_failures + self.old_slow == 0:
                self.streak = 0  # its failures have all left the window
        # k < cur: the clock read before an outcome that was recorded first;
        # count it in the current bucket.

    def add(self, code: int, now: float) -> None:
        if now >= self.bucket_end:
            self.rotate(now)
        self.cur_calls += 1
        if code & _FAILED:
            self.cur_failures += 1
            self.streak += 1
        else:
            self.streak = 0
        if code & _SLOW:
            self.cur_slow += 1
        bad = self.old_failures + self.old_slow + self.cur_failures + self.cur_slow
        if not self.streak and (
            not bad or self.old_calls + self.cur_calls >= self.minimum
        ):
            self.clean_until = self.bucket_end
        else:
            self.clean_until = -math.inf

    def counts(self, now: float | None) -> tuple[int, int, int]:
        """(calls, failures, slow) in the window at *now*, without changing it."""
        calls = self.old_calls + self.cur_calls
        failures = self.old_failures + self.cur_failures
        slow = self.old_slow + self.cur_slow
        if now is None or now < self.bucket_end or self.cur < 0:
            return calls, failures, slow
        k = self._bucket(now)
        size = self.buckets
        if k - self.cur >= size:
            return 0, 0, 0
        # buckets cur+1-size .. k-size leave; the current one is not in the lists
        for j in range(self.cur + 1, k + 1):
            slot = j % size
            calls -= self.calls[slot]
            failures -= self.failures[slot]
            slow -= self.slow[slot]
        return calls, failures, slow


_Window = _CountWindow | _TimeWindow


class _Trial:
    """The probes of one half-open period."""

    __slots__ = ("failures", "recorded", "since", "slow", "taken")

    def __init__(self, since: float) -> None:
        self.since = since
        self.taken = 0  # slots held: probes in flight + probes recorded
        self.recorded = 0
        self.failures = 0
        self.slow = 0
