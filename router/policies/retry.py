"""Retry policy as an object: exponential backoff with jitter, and ``Retry-After`` as a floor.

Own code rather than a library (tenacity, backoff): the delivery loop needs the delay as a
number it can combine with a destination's ``Retry-After``, its circuit breaker and parking,
not a decorator that owns the loop. The random source is injected so tests are exact.
``retry_until_done`` is the same policy for the router's own writes to JetStream (the dedup
journal, dead letters), which must land before a source message is acked.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Awaitable, Callable, TypeVar

from router.config import RetryConfig

__all__ = ["STORE_RETRY", "RetryPolicy", "retry_until_done"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# The router's own JetStream writes: quick at first, then every 5 s, for about an hour and a half
# (NATS restarting, a leader election); after that the error reaches the caller, whose source
# messages are NAKed and come back.
STORE_RETRY = RetryConfig(max_attempts=1000, initial_backoff=0.1, max_backoff=5.0, multiplier=2.0, jitter=0.2)


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


async def retry_until_done(op: Callable[[], Awaitable[T]], what: str, policy: RetryPolicy | None = None,
                           sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> T:
    """Run ``op`` until it succeeds or ``policy`` gives up (then its last error is raised)."""
    policy = policy or RetryPolicy(STORE_RETRY)
    attempts = 0
    while True:
        attempts += 1
        try:
            return await op()
        except Exception as exc:
            if not policy.may_retry(attempts):
                raise
            delay = policy.backoff(attempts)
            log.warning("%s failed (%s: %s); retry %d in %.1fs", what, exc.__class__.__name__, exc, attempts, delay)
            await sleep(delay)
