"""A destination's ``Retry-After``: no request of the shard goes out before it has passed.

One gate per shard, shared by every request in flight: a 429 answered to one request pauses
the others too, instead of each of them finding out with a 429 of its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

__all__ = ["RetryAfterGate"]


class RetryAfterGate:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._not_before = 0.0

    def hold_for(self, seconds: float) -> None:
        """The destination asked for a pause; a later, shorter request never shortens it."""
        self._not_before = max(self._not_before, self._clock() + seconds)

    def remaining(self) -> float:
        return max(0.0, self._not_before - self._clock())

    async def wait(self) -> None:
        while (wait := self._not_before - self._clock()) > 0:
            await self._sleep(wait)
