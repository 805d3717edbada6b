"""Token bucket: ``per_second`` requests on average, ``burst`` at once after an idle spell."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.rate = per_second
        self.burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._last = clock()

    def try_take(self) -> float:
        """Take a token if one is there (returns 0), else return how long until one will be."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    async def take(self) -> None:
        while (wait := self.try_take()) > 0:
            await self._sleep(wait)
