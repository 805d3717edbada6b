"""A destination's rate limit and Retry-After shared by every shard of its pool, on any node.

A marketplace quota is per API key, not per connection: with ``scope: destination`` (the
default) the pool's shards together stay under ``rate_limit.per_second``, and a ``Retry-After``
answered to one shard pauses all of them. One small actor per destination
(``router/actors/destination_limits.py``) holds a ``SharedLimitsState``; each shard talks to it
through a ``SharedLimitsClient``, whose two faces fit the send policy's layers:

- ``LeasedTokenBucket`` (``await take()``): takes tokens from the shared bucket in small leases
  (``lease_size``: max(1, rate/20), so at 50/s a shard calls the actor about every 2 requests,
  at 2,000/s every 100) instead of one actor call per request. Leased tokens expire after
  ``LEASE_TTL``: a shard that leased and went idle cannot add its leftovers to a later burst.
- ``SharedRetryAfterGate`` (``await wait()``, ``hold_for(s)``, ``remaining()``): reports a
  Retry-After to the actor and pauses locally at once; the other shards learn the deadline on
  their next lease, or within ``REFRESH_EVERY`` when they wait on the gate without leasing.

Deadlines are wall-clock times (``time.time()``): the shards run on different nodes, and only the
wall clock means the same instant on each (NTP-synchronised nodes: within milliseconds, far below
any Retry-After). The bucket itself lives in one process and uses its monotonic clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Protocol

__all__ = ["LEASE_TTL", "REFRESH_EVERY", "LeasedTokenBucket", "SharedLimits", "SharedLimitsClient",
           "SharedLimitsState", "SharedRetryAfterGate", "lease_size"]

log = logging.getLogger(__name__)

LEASE_TTL = 1.0  # seconds a leased token stays usable
REFRESH_EVERY = 0.1  # seconds between deadline refreshes of a shard that is not leasing


def lease_size(per_second: float) -> int:
    """Tokens per lease: ~20 leases a second per busy shard, whatever the rate."""
    return max(1, int(per_second / 20))


class SharedLimitsState:
    """The shared side: one token bucket and one Retry-After deadline for a whole destination."""

    def __init__(self, per_second: float | None, burst: int = 1, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._clock, self._wall = clock, wall
        self.not_before = 0.0  # wall clock
        self.granted = 0
        self.configure(per_second, burst)

    def configure(self, per_second: float | None, burst: int = 1) -> None:
        """New limits (a live reload); tokens already in the bucket stay, up to the new burst."""
        self.rate = per_second
        self.burst = float(burst)
        tokens = getattr(self, "_tokens", float(burst))
        self._tokens = min(tokens, self.burst)
        self._last = self._clock()

    def lease(self, wanted: int) -> tuple[int, float, float]:
        """(tokens granted, seconds before the shard may use them, Retry-After deadline).

        The tokens are reserved at once, and the bucket may go below zero: the shard waits out
        the debt instead of asking again and again, and the shards are served in the order they
        asked. Whatever the shards do, the pool uses at most ``burst + per_second * t`` tokens
        in any ``t`` seconds, plus what the shards hold in leases."""
        if self.rate is None:  # no rate limit: only the deadline matters
            return wanted, 0.0, self.not_before
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= wanted
        self.granted += wanted
        return wanted, max(0.0, -self._tokens / self.rate), self.not_before

    def hold_until(self, deadline: float) -> float:
        """A shard was told to wait until ``deadline`` (wall clock); a shorter one never shortens it."""
        self.not_before = max(self.not_before, deadline)
        return self.not_before

    def deadline(self) -> float:
        return self.not_before


class SharedLimits(Protocol):
    """What a shard calls on its destination's limits actor (or a fake of it in tests)."""

    async def lease(self, wanted: int) -> tuple[int, float, float]: ...

    async def hold_until(self, deadline: float) -> float: ...

    async def deadline(self) -> float: ...


class SharedLimitsClient:
    """One shard's view of the shared limits: its leased tokens and the cached deadline."""

    def __init__(self, limits: SharedLimits, per_second: float | None, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._limits = limits
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self.lease_size = lease_size(per_second) if per_second else 1
        self._tokens = 0
        self._leased_at = 0.0
        self._lock = asyncio.Lock()  # one lease call at a time per shard
        self.not_before = 0.0  # wall clock, the latest deadline this shard knows
        self._refreshed = float("-inf")
        self.leases = 0  # actor calls made for tokens (a figure for tests and sizing)
        self._reports: set[asyncio.Task] = set()

    def _learn(self, deadline: float) -> None:
        self.not_before = max(self.not_before, deadline)
        self._refreshed = self._clock()

    async def take(self) -> None:
        """One token from the shared bucket, through this shard's lease."""
        async with self._lock:
            while True:
                if self._tokens and self._clock() - self._leased_at > LEASE_TTL:
                    self._tokens = 0  # stale leftovers: the bucket has refilled since
                if self._tokens:
                    self._tokens -= 1
                    return
                granted, wait, deadline = await self._call(self._limits.lease, self.lease_size)
                self.leases += 1
                self._learn(deadline)
                if wait > 0:
                    await self._sleep(wait)  # the pool's bucket is in debt: these tokens are ours after it
                    if self._clock() - self._refreshed >= REFRESH_EVERY:  # a Retry-After may have come meanwhile
                        self._learn(await self._call(self._limits.deadline))
                self._tokens, self._leased_at = granted, self._clock()

    async def _call(self, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """An actor call that outlives a restart of the actor (its node lost): retry until it answers."""
        delay = 0.05
        while True:
            try:
                return await method(*args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("destination limits unreachable (%s); retrying in %.2fs", str(exc).splitlines()[0], delay)
                await self._sleep(delay)
                delay = min(delay * 2, 1.0)

    def hold_for(self, seconds: float) -> None:
        deadline = self._wall() + seconds
        self.not_before = max(self.not_before, deadline)
        try:
            task = asyncio.get_running_loop().create_task(self._call(self._limits.hold_until, deadline))
        except RuntimeError:  # no loop (a synchronous unit test): the local pause still holds
            return
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    def remaining(self) -> float:
        return max(0.0, self.not_before - self._wall())

    async def wait(self) -> None:
        while True:
            if self._clock() - self._refreshed >= REFRESH_EVERY:
                self._learn(await self._call(self._limits.deadline))
            wait = self.not_before - self._wall()
            if wait <= 0:
                return
            await self._sleep(min(wait, 1.0))  # re-check: another shard may have been told longer


class LeasedTokenBucket:
    """The rate-limit face of a ``SharedLimitsClient`` (``await take()``, like ``TokenBucket``)."""

    def __init__(self, client: SharedLimitsClient) -> None:
        self.client = client

    async def take(self) -> None:
        await self.client.take()


class SharedRetryAfterGate:
    """The Retry-After face of a ``SharedLimitsClient`` (the ``RetryAfterGate`` interface)."""

    def __init__(self, client: SharedLimitsClient) -> None:
        self.client = client

    def hold_for(self, seconds: float) -> None:
        self.client.hold_for(seconds)

    def remaining(self) -> float:
        return self.client.remaining()

    async def wait(self) -> None:
        await self.client.wait()
