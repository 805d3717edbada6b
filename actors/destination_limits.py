"""One destination's shared limits: the token bucket and the Retry-After deadline every shard of
its pool, on whichever node, takes from (see ``router/policies/shared_limits.py``).

It holds no durable state: if its node is lost, Ray restarts it elsewhere with a full bucket and
no deadline, and the shards' calls (retried until it answers) carry on. A lost deadline costs at
most one more 429 from the destination, which sets it again.
"""

from __future__ import annotations

import asyncio

import ray

from router.policies.shared_limits import SharedLimitsState

__all__ = ["DestinationLimits", "RayLimits"]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class DestinationLimits:
    def __init__(self, per_second: float | None, burst: int = 1) -> None:
        self.state = SharedLimitsState(per_second, burst)

    async def configure(self, per_second: float | None, burst: int = 1) -> None:
        self.state.configure(per_second, burst)

    async def lease(self, wanted: int) -> tuple[int, float, float]:
        """Reserve tokens; answer when they may be used, with the Retry-After deadline as it is then
        (so a shard that waited for its tokens learns of a 429 that came meanwhile)."""
        granted, wait, _ = self.state.lease(wanted)
        if wait > 0:
            await asyncio.sleep(wait)
        return granted, 0.0, self.state.deadline()

    async def hold_until(self, deadline: float) -> float:
        return self.state.hold_until(deadline)

    async def deadline(self) -> float:
        return self.state.deadline()

    async def granted(self) -> int:
        return self.state.granted


class RayLimits:
    """A ``DestinationLimits`` handle as the ``SharedLimits`` a shard's client calls."""

    def __init__(self, handle: "ray.actor.ActorHandle") -> None:
        self.handle = handle

    async def lease(self, wanted: int) -> tuple[int, float, float]:
        return await self.handle.lease.remote(wanted)

    async def hold_until(self, deadline: float) -> float:
        return await self.handle.hold_until.remote(deadline)

    async def deadline(self) -> float:
        return await self.handle.deadline.remote()
