"""Adaptive request concurrency (AIMD), after Vector's: grow by one per round trip while the
destination keeps up, cut multiplicatively when it pushes back (408 / 429 / 5xx / timeouts) or
when its round-trip time climbs well above its own recent average. ``max`` is the ceiling from
the config; the clock is injected so tests run in microseconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

__all__ = ["AdaptiveConcurrency"]


class AdaptiveConcurrency:
    def __init__(self, max_limit: int, initial: int | None = None, *, adaptive: bool = True,
                 decrease_ratio: float = 0.5, rtt_growth: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_limit = max_limit
        self.adaptive = adaptive
        self.limit = float(max_limit if not adaptive else min(max_limit, initial or 2))
        self.decrease_ratio = decrease_ratio
        self.rtt_growth = rtt_growth
        self.in_flight = 0
        self.rtt_avg: float | None = None  # slow-moving average: the destination's normal
        self._clock = clock
        self._last_decrease = -1e9
        self._cond: asyncio.Condition | None = None

    @property
    def current(self) -> int:
        return max(1, int(self.limit))

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def acquire(self) -> None:
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self.in_flight < self.current)
            self.in_flight += 1

    async def release(self) -> None:
        cond = self._condition()
        async with cond:
            self.in_flight -= 1
            cond.notify_all()

    async def reconfigure(self, max_limit: int, adaptive: bool) -> None:
        """A new ceiling (live reload): requests in flight keep their slots; waiters see the new limit."""
        self.max_limit, self.adaptive = max_limit, adaptive
        self.limit = float(max_limit) if not adaptive else min(self.limit, float(max_limit))
        cond = self._condition()
        async with cond:
            cond.notify_all()

    def adjust(self, rtt: float, backpressure: bool) -> None:
        """The AIMD step for one answered request (call it while the request still holds its slot)."""
        if not self.adaptive:
            return
        now = self._clock()
        # At most one decrease per round trip: many requests failing together are one signal.
        may_decrease = now - self._last_decrease >= (self.rtt_avg or rtt)
        if backpressure:
            if may_decrease:
                self.limit = max(1.0, self.limit * self.decrease_ratio)
                self._last_decrease = now
            return
        if self.rtt_avg is not None and rtt > self.rtt_avg * self.rtt_growth and may_decrease:
            self.limit = max(1.0, self.limit * 0.9)
            self._last_decrease = now
        elif self.in_flight >= self.current:
            # Using the whole window and keeping up: +1 per window's worth of successes.
            self.limit = min(float(self.max_limit), self.limit + 1.0 / self.current)
        self.rtt_avg = rtt if self.rtt_avg is None else self.rtt_avg * 0.9 + rtt * 0.1
