"""Retry policy as an object: exponential backoff with jitter, and ``Retry-After`` as a floor.

Own code rather than a library (tenacity, backoff): the delivery loop needs the delay as a
number it can combine with a destination's ``Retry-After`` and, later, its circuit breaker,
not a decorator that owns the loop. The random source is injected so tests are exact.
"""

from __future__ import annotations

import random
from typing import Callable

from router.config import RetryConfig

__all__ = ["RetryPolicy"]


class RetryPolicy:
    def __init__(self, cfg: RetryConfig, rand: Callable[[], float] = random.random) -> None:
        self.cfg = cfg
        self._rand = rand

    def may_retry(self, attempts_made: int) -> bool:
        return attempts_made < self.cfg.max_attempts

    def backoff(self, attempts_made: int, retry_after: float | None = None) -> float:
        """Delay before the next attempt; never shorter than what the destination asked for."""
        c = self.cfg
        base = min(c.max_backoff, c.initial_backoff * c.multiplier ** max(attempts_made - 1, 0))
        delay = base * (1.0 - c.jitter) + base * c.jitter * self._rand()
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay
