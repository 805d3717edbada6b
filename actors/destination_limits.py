"""One destination's shared limits: the token bucket and the Retry-After deadline every shard of
its pool, on whichever node, takes from (see ``router/policies/shared_limits.py``).

It holds no durable state: if its node is lost, Ray restarts it elsewhere with a full bucket and
no deadline, and the shards' calls (retried until it answers) carry on. A lost deadline costs at
most one more 429 from the destination, which sets it again.
"""

from __future__ import annotations

import asyncio
from typing import Any

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
    """A pool's ``DestinationLimits`` actor, found by name, as the ``SharedLimits`` a shard's client
    calls. By name and not by handle: a handle passed to a sink actor's constructor is kept in the
    object store, and Ray cannot restart the sink actor if that copy is lost (ray-project/ray#53727);
    a name is looked up again wherever and whenever the sink actor restarts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._handle: Any = None

    async def _call(self, method: str, *args: Any) -> Any:
        if self._handle is None:
            self._handle = ray.get_actor(self.name)
        try:
            return await getattr(self._handle, method).remote(*args)
        except Exception:
            self._handle = None  # look it up again on the next call
            raise

    async def lease(self, wanted: int) -> tuple[int, float, float]:
        return await self._call("lease", wanted)

    async def hold_until(self, deadline: float) -> float:
        return await self._call("hold_until", deadline)

    async def deadline(self) -> float:
        return await self._call("deadline")

    async def configure(self, per_second: float | None, burst: int) -> None:
        await self._call("configure", per_second, burst)
